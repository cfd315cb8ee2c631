"""Argument checks of the Triton Inception ops (messages name the argument) and the pooled
grid's size rule."""
from typing import Tuple

import torch
from torch import Tensor

from ...arg_checks import check_4d_tensor, check_like_x
from ..reference import pool_output_size
from .modes import interpreting

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# ----------------------------------------------------------------------------------------------
# Argument checks of the Triton path (googlenet_fast.ops.check_inception_args does the shapes)

def check_triton_args(x, weights, out=None) -> None:
    """Dtype and device checks the Triton kernels need, with messages naming the argument."""
    check_4d_tensor(x)
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"x: the triton backend supports float32, float16 and bfloat16, got {x.dtype}"
                        + (" (use backend='cpu' or 'reference' for float64)" if x.dtype == torch.float64 else ""))
    dev = x.device.type
    if dev == "cpu":
        if not interpreting():
            raise ValueError("x: the triton backend needs CUDA tensors, got x on cpu; Triton runs CPU "
                             "tensors only under its interpreter (TRITON_INTERPRET=1)")
    elif dev != "cuda" and dev != "meta":
        raise ValueError(f"x: the triton backend needs CUDA tensors, got x on {x.device}")
    for name, t in weights:
        if t is not None:
            check_like_x(name, t, x)
    if out is not None:
        if out.dtype != x.dtype:
            raise TypeError(f"out: expected dtype {x.dtype} (the dtype of x), got {out.dtype}")
        if out.device != x.device:
            raise ValueError(f"out: expected a tensor on {x.device} (the device of x), got {out.device}")


_WEIGHT_NAMES = ("w_1x1", "b_1x1", "w_3x3red", "b_3x3red", "w_3x3", "b_3x3",
                 "w_5x5red", "b_5x5red", "w_5x5", "b_5x5", "w_pool_proj", "b_pool_proj")


def _shape(x, w_1x1, w_3x3red, w_3x3, w_5x5red, w_5x5, w_pool_proj):
    n, cin, h, w = x.shape
    for name, wt in (("w_1x1", w_1x1), ("w_3x3red", w_3x3red), ("w_5x5red", w_5x5red),
                     ("w_pool_proj", w_pool_proj)):
        if wt.dim() != 4 or wt.shape[1] != cin or wt.shape[2] != 1 or wt.shape[3] != 1:
            raise ValueError(f"{name}: expected shape (out, {cin}, 1, 1), got {tuple(wt.shape)}")
    for name, wt, red in (("w_3x3", w_3x3, w_3x3red), ("w_5x5", w_5x5, w_5x5red)):
        if (wt.dim() != 4 or wt.shape[1] != red.shape[0] or wt.shape[2] != wt.shape[3]
                or wt.shape[2] % 2 == 0):
            raise ValueError(f"{name}: expected shape (out, {red.shape[0]}, K, K) with K odd, "
                             f"got {tuple(wt.shape)}")
    return n, cin, h, w


def _check(x, args, out=None):
    check_triton_args(x, list(zip(_WEIGHT_NAMES, args)), out)
    _shape(x, *(args[i] for i in (0, 2, 4, 6, 8, 10)))
    if out is not None:
        n, _, h, w = x.shape
        c = args[0].shape[0] + args[4].shape[0] + args[8].shape[0] + args[10].shape[0]
        if tuple(out.shape) != (n, c, h, w):
            raise ValueError(f"out: expected shape {(n, c, h, w)}, got {tuple(out.shape)}")
# Largest pool window: stage 1's loaders unroll it (pool_k**2 taps in the merged 1x1 tile,
# 2*pool_s + pool_k per row of the pool projection's window union).
MAX_POOL_K = 5


def pool_out_size(size: int, kernel: int, stride: int) -> int:
    """Output length of a ceil-mode max pool without padding (ATen's pooling_output_shape)."""
    return pool_output_size(size, kernel, stride)


def _check_pooled(x, args, pool_k, pool_s):
    """The pooled op's checks; returns the pooled (H, W)."""
    _check(x, args)
    if not 1 <= pool_k <= MAX_POOL_K:
        raise ValueError(f"pool_k: expected a max pool kernel size in [1, {MAX_POOL_K}], got {pool_k}")
    if not 1 <= pool_s <= pool_k:
        raise ValueError(f"pool_s: expected a stride in [1, pool_k = {pool_k}] (neighbouring windows must "
                         f"touch or overlap), got {pool_s}")
    return pooled_hw(x, pool_k, pool_s, "x")


def pooled_hw(x: Tensor, kernel: int, stride: int, name: str) -> Tuple[int, int]:
    """(H, W) after a kernel x kernel / stride ceil-mode max pool (no padding) of x's map;
    ValueError naming ``name`` when that is empty."""
    h, w = x.shape[2], x.shape[3]
    ph, pw = pool_out_size(h, kernel, stride), pool_out_size(w, kernel, stride)
    if ph < 1 or pw < 1:
        raise ValueError(f"{name}: a {kernel}x{kernel}/{stride} ceil-mode max pool of a {h}x{w} map has an "
                         "empty output (the pre-pool map is too small)")
    return ph, pw
