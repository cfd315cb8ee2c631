"""Max pooling for eager CPU training with one-byte argmax taps (issue #15).

ATen's ``max_pool2d_with_indices`` writes an int64 flat index per output value (8 bytes beside a
4-byte float32 or 2-byte bfloat16 value), and its backward zero-fills a full-size gradient before
scattering into it.  ``googlenet_fast::max_pool2d_tap`` (csrc/cpu/max_pool_train_cpu.cpp) stores
the argmax's position inside its window in one byte; ``max_pool2d_tap_backward_`` accumulates each
image's input-row gradients in a ring of ``kernel`` rows held in cache and writes (or adds) each
row once (float32 and bfloat16 on AVX-512: each input pixel's sum gathered in registers, stored once).  Both
give ATen's results bit for bit: the same window scan and NaN rule forward, the same sums in the
same order, rounded in the tensor's dtype, backward.

Used by ``GoogLeNet(fused=True)`` in train mode on the CPU fast path
(:func:`googlenet_fast.bn_train.cpu_fast_path_applies`): the network's max pools through
:func:`max_pool2d_train`, and the Inception modules' pool branches inside their autograd node
(googlenet_fast/bn_train.py), where the pool's input gradient is added straight into the merged
1x1 convolutions' dgrad.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from .backends import native
from .backends.reference import pool_output_size


def _square(v) -> Optional[int]:
    """The int of an nn.MaxPool2d size argument given as n, (n,), (n, n) or [n, n]; else None."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, (tuple, list)) and len(v) in (1, 2) and all(type(e) is int for e in v) and len(set(v)) == 1:
        return v[0]
    return None


def max_pool_args(pool: nn.Module) -> Optional[Tuple[int, int, int, bool]]:
    """(kernel, stride, padding, ceil_mode) of a plain square ``nn.MaxPool2d`` without dilation
    or returned indices (sizes as ints, 1- or 2-sequences; an absent or empty stride is the
    kernel, as in F.max_pool2d), else None.  What the extension's max pools can compute; the
    fused model's eval (ceil mode, no padding) and train paths each add their own bounds."""
    if type(pool) is not nn.MaxPool2d or pool.return_indices:
        return None
    stride = pool.stride
    if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
        stride = pool.kernel_size
    k, s, p, d = (_square(v) for v in (pool.kernel_size, stride, pool.padding, pool.dilation))
    if None in (k, s, p, d) or d != 1 or k < 1 or s < 1 or p < 0:
        return None
    return k, s, p, bool(pool.ceil_mode)


def pool_window(pool: nn.Module) -> Optional[Tuple[int, int, int, bool]]:
    """(kernel, stride, padding, ceil_mode) of a plain square ``nn.MaxPool2d`` the tap ops compute
    (:func:`max_pool_args`, with kernel <= 16 and padding <= kernel / 2), else None (the module
    then runs as it is)."""
    args = max_pool_args(pool)
    if args is None or args[0] > 16 or args[2] > args[0] // 2:
        return None
    return args


class _MaxPool2dTap(torch.autograd.Function):
    """``F.max_pool2d(x, kernel, stride, padding, ceil_mode=ceil_mode)`` as one autograd node: the
    tap ops forward and backward (once differentiable)."""

    @staticmethod
    def forward(ctx, x, kernel, stride, padding, ceil_mode):
        y, tap = torch.ops.googlenet_fast.max_pool2d_tap(x, kernel, stride, padding, ceil_mode)
        ctx.window = (kernel, stride, padding)
        ctx.x_shape = x.shape
        ctx.save_for_backward(tap)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):
        (tap,) = ctx.saved_tensors
        gx = torch.empty(ctx.x_shape, dtype=gy.dtype, memory_format=torch.channels_last)
        torch.ops.googlenet_fast.max_pool2d_tap_backward_(gx, gy, tap, *ctx.window, False)
        return gx, None, None, None, None


def max_pool2d_train(x: Tensor, window: Tuple[int, int, int, bool]) -> Tensor:
    """``F.max_pool2d(x, kernel, stride, padding, ceil_mode=ceil_mode)`` (``window`` as
    :func:`pool_window` gives it) with the tap ops: the same values and gradients as ATen's,
    bit for bit.

    Args:
        x: (N, C, H, W) float32, float64 or bfloat16 CPU tensor, any layout.
        window: (kernel, stride, padding, ceil_mode).
    Returns (N, C, OH, OW), channels_last.  Once differentiable (double backward raises).
    Raises ValueError / TypeError naming the argument (size too small, dtype, device).
    """
    native.require()
    return _MaxPool2dTap.apply(x, *window)


def _register_fakes():
    if not native.available():
        return

    @torch.library.register_fake("googlenet_fast::max_pool2d_tap")
    def _fake(x, kernel, stride, padding, ceil_mode):
        shape = (x.shape[0], x.shape[1]) + tuple(pool_output_size(n, kernel, stride, padding, ceil_mode)
                                                 for n in (x.shape[2], x.shape[3]))
        cl = torch.channels_last
        return (torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=cl),
                torch.empty(shape, dtype=torch.uint8, device=x.device, memory_format=cl))

    @torch.library.register_fake("googlenet_fast::max_pool2d_tap_backward_")
    def _fake_backward(grad_x, grad_y, tap, kernel, stride, padding, accumulate):
        return None


_register_fakes()
