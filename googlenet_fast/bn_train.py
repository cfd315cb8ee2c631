"""Train-mode BatchNorm through the fused kernels (torchvision's Inception in train mode).

In train mode torchvision's BasicConv2d is ``relu(bn(conv(x)))`` with batch statistics, so the
BatchNorm cannot be folded into the convolution.  The fused path (issue #5, DESIGN.md) is:

1. :func:`inception_bn_train` (op ``googlenet_fast::inception_bn_train``): stage 1 writes the
   pre-BatchNorm outputs of branch 1 and the pool projection into their channel slices of one
   concatenated buffer ``out`` and the two reduce convolutions' pre-BN outputs into ``reduce``;
   the reduce outputs' batch mean and variance are taken; stage 2 reads ``reduce`` through the
   reduce branches' BatchNorm + ReLU *in its loader* (never stored) and writes the KxK branches'
   pre-BN outputs into ``out``.
2. The caller (``googlenet_fast.model.Inception``) runs ONE ``F.batch_norm`` + ReLU over all of
   ``out``'s channels (the four branches' BatchNorm parameters and running statistics
   concatenated), and updates every module's running statistics exactly as ``nn.BatchNorm2d``.

Autograd (registered here for every backend's op): the backward is a composition of ATen ops
(conv dgrad/wgrad via ``aten.convolution_backward`` for the KxK convolutions, the reduce branches'
BatchNorm + ReLU backward via ``aten.native_batch_norm_backward``, the three sibling 1x1 dgrads as
ONE GEMM over ``[dY1 | dR3 | dR5]`` and their wgrads as ONE GEMM, the pool projection's dgrad
routed through ``max_pool2d_with_indices_backward``).  It recomputes the reduce activations from
the saved pre-BN ``reduce`` (one elementwise pass) instead of storing them.  Differentiable
once: backward with create_graph=True raises a clear error.

Backends: ``cpu`` (C++ kernel, csrc/cpu/inception_cpu.cpp), ``triton`` (the Triton stage kernels,
googlenet_fast/backends/triton/bn_train.py, when present), ``reference`` (plain PyTorch,
googlenet_fast/backends/reference.py).  On CUDA without Triton the C++ op's CUDA kernel is the
reference composition (no CUDA C++ kernel for this stage).
"""
import os
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import ops
from .backends import native
from .backends.reference import inception_bn_train_reference

OP = "googlenet_fast::inception_bn_train"
TRITON_OP = "googlenet_fast::inception_bn_train_triton"
_NUM_INPUTS = 10  # x, six weights, reduce_weight, reduce_bias, eps


def check_bn_train_args(x, w_1x1, w_3x3red, w_3x3, w_5x5red, w_5x5, w_pool_proj,
                        reduce_weight, reduce_bias, eps) -> "ops.InceptionShape":
    """Validate :func:`inception_bn_train`'s arguments (messages name the argument); return the
    module's sizes.  Raises TypeError (dtype) or ValueError (shape, device, eps)."""
    shape = ops.check_inception_args(x, w_1x1, None, w_3x3red, None, w_3x3, None, w_5x5red, None,
                                     w_5x5, None, w_pool_proj, None)
    rr = shape.ch3x3red + shape.ch5x5red
    for name, t in (("reduce_weight", reduce_weight), ("reduce_bias", reduce_bias)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a Tensor, got {type(t).__name__}")
        if t.dim() != 1 or t.shape[0] != rr:
            raise ValueError(f"{name}: expected shape ({rr},) (ch3x3red + ch5x5red), got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name}: expected a floating dtype, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{name}: expected a tensor on {x.device} (the device of x), got {t.device}")
    eps = float(eps)
    if not (eps >= 0 and eps != float("inf")):
        raise ValueError(f"eps: expected a finite value >= 0, got {eps}")
    return shape


def inception_bn_train(
    x: Tensor, w_1x1: Tensor, w_3x3red: Tensor, w_3x3: Tensor, w_5x5red: Tensor, w_5x5: Tensor,
    w_pool_proj: Tensor, reduce_weight: Tensor, reduce_bias: Tensor, eps: float,
    *, backend: str = "auto", validate: bool = True,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The Inception module's convolutions for train-mode BatchNorm (torchvision's Inception,
    each BasicConv2d = conv (no bias) -> BatchNorm2d with batch statistics -> ReLU).

    Args:
        x: (N, Cin, H, W) float32/float64/bfloat16 (float16 on GPU backends), any strides.
        w_1x1, w_3x3red, w_5x5red, w_pool_proj: (C, Cin, 1, 1) conv weights, x's dtype/device.
        w_3x3: (ch3x3, ch3x3red, K3, K3); w_5x5: (ch5x5, ch5x5red, K5, K5); K odd.
        reduce_weight, reduce_bias: (ch3x3red + ch5x5red,) the two reduce branches' BatchNorm
            gamma and beta, concatenated (any floating dtype: float32 under autocast).
        eps: the reduce BatchNorms' eps (torchvision: 0.001).
        backend: "auto" | "cpu" | "cuda" | "triton" | "reference" (as :func:`googlenet_fast.inception`).

    Returns ``(out, reduce, reduce_mean, reduce_var)``:
        out: (N, ch1x1 + ch3x3 + ch5x5 + pool_proj, H, W), channels_last, x's dtype: the four
            branches' PRE-BatchNorm conv outputs in torchvision's concatenation order, where the
            KxK convolutions consumed ``relu(batch_norm(reduce))`` with batch statistics.
        reduce: (N, ch3x3red + ch5x5red, H, W), channels_last: the reduce convs' pre-BN outputs.
        reduce_mean, reduce_var: (ch3x3red + ch5x5red,) float32 (float64 for float64 x): batch
            mean and biased variance of ``reduce`` over N, H, W (what BatchNorm normalizes with;
            the running estimate uses the unbiased one, see googlenet_fast.model).
        Only ``out`` is differentiable (w.r.t. x, the six weights, reduce_weight, reduce_bias).

    Raises:
        TypeError / ValueError as :func:`googlenet_fast.inception`, naming the argument;
        ValueError for a reduce_weight/reduce_bias of the wrong shape or device, or a bad eps.
    """
    args = (x, w_1x1, w_3x3red, w_3x3, w_5x5red, w_5x5, w_pool_proj, reduce_weight, reduce_bias)
    if validate:
        shape = check_bn_train_args(*args, eps)
    else:
        shape = None
    if backend == "auto" and x.device.type == "cuda" and not os.environ.get(ops.BACKEND_ENV):
        # No one-time measurement here: Triton's stage kernels when present, else the composition.
        name = "triton" if _triton_stage_available() else "cuda"
    else:
        name = ops.resolve_backend(backend, x, shape, run=None)
    eps = float(eps)
    if name == "reference":
        return inception_bn_train_reference(*args, eps)
    if name == "triton":
        if not _triton_stage_available():
            raise RuntimeError("backend='triton': triton is not installed")
        return torch.ops.googlenet_fast.inception_bn_train_triton(*args, eps)
    return torch.ops.googlenet_fast.inception_bn_train(*args, eps)


def _triton_stage_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("triton") is not None


def _fake(x, w_1x1, w_3x3red, w_3x3, w_5x5red, w_5x5, w_pool_proj, reduce_weight, reduce_bias, eps):
    """Fake kernel: the shapes, dtypes and (channels_last) strides the kernels return."""
    s = check_bn_train_args(x, w_1x1, w_3x3red, w_3x3, w_5x5red, w_5x5, w_pool_proj,
                            reduce_weight, reduce_bias, eps)
    cl = torch.channels_last
    rr = s.ch3x3red + s.ch5x5red
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    out = x.new_empty((x.shape[0], s.out_channels, x.shape[2], x.shape[3])).contiguous(memory_format=cl)
    reduce = x.new_empty((x.shape[0], rr, x.shape[2], x.shape[3])).contiguous(memory_format=cl)
    return out, reduce, x.new_empty((rr,), dtype=acc), x.new_empty((rr,), dtype=acc)


def _setup_context(ctx, inputs, output):
    x, w_1x1, w_3x3red, w_3x3, w_5x5red, w_5x5, w_pool_proj, gamma, beta, eps = inputs
    _, reduce, mean, var = output
    ctx.eps = float(eps)
    ctx.mark_non_differentiable(reduce, mean, var)
    ctx.save_for_backward(x, w_1x1, w_3x3red, w_3x3, w_5x5red, w_5x5, w_pool_proj, gamma, beta,
                          reduce, mean, var)


def _nhwc_matrix(t: Tensor) -> Tensor:
    """(N, C, H, W) -> the [N*H*W, C] matrix of its NHWC view (a view when channels_last)."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def _backward(ctx, grad_out, *_non_differentiable):
    """Gradients of ``out`` w.r.t. (x, w_1x1, w_3x3red, w_3x3, w_5x5red, w_5x5, w_pool_proj,
    reduce_weight, reduce_bias); see the module docstring for the composition."""
    if torch.is_grad_enabled():
        # create_graph=True: the composition below is made of differentiable ATen ops, but the
        # saved batch statistics are constants to it, so its own gradient would be wrong.
        raise RuntimeError(
            "googlenet_fast.inception_bn_train is not twice differentiable: its backward treats the "
            "saved batch statistics as constants. Use GoogLeNet(fused=False) (or backend='reference') "
            "for double backward, e.g. gradient penalties.")
    (x, w1, w3r, w3, w5r, w5, wp, gamma, beta, reduce, mean, var) = ctx.saved_tensors
    need = ctx.needs_input_grad
    aten = torch.ops.aten
    n, cin, h, w = x.shape
    c1, c3, c5, cp = w1.shape[0], w3.shape[0], w5.shape[0], wp.shape[0]
    r3 = w3r.shape[0]
    g1, g2, g3, g4 = grad_out.split([c1, c3, c5, cp], 1)
    # Which intermediate gradients are needed: dR (through the KxK dgrad and the reduce BN) feeds
    # x, the reduce weights and the reduce BN's gamma/beta.
    need_dred = need[0] or need[2] or need[4] or need[7] or need[8]
    acc = mean.dtype
    invstd = torch.rsqrt(var + ctx.eps)
    act = None
    if need_dred or need[3] or need[5]:
        scale = gamma.to(acc) * invstd
        shift = beta.to(acc) - mean * scale
        act = torch.relu(reduce.to(acc) * scale[:, None, None] + shift[:, None, None]).to(x.dtype)

    def kxk_backward(g, a, wk, need_w):
        p = wk.shape[-1] // 2
        gi, gw, _ = aten.convolution_backward(g, a, wk, None, [1, 1], [p, p], [1, 1], False, [0, 0], 1,
                                              [need_dred, need_w, False])
        return gi, gw

    gx = gw1 = gw3r = gw3 = gw5r = gw5 = gwp = ggamma = gbeta = None
    dred = None
    if act is not None:
        da3, gw3 = kxk_backward(g2, act[:, :r3], w3, need[3])
        da5, gw5 = kxk_backward(g3, act[:, r3:], w5, need[5])
        if need_dred:
            dact = aten.threshold_backward(torch.cat([da3, da5], 1), act, 0)
            dred, ggamma, gbeta = aten.native_batch_norm_backward(
                dact, reduce, gamma, None, None, mean, invstd, True, ctx.eps, [True, need[7], need[8]])
    # Stage 1: the three sibling 1x1 convolutions as one GEMM each way.
    if need[0] or need[1] or need_dred:
        parts = [g1] + ([dred] if dred is not None else [])
        da = _nhwc_matrix(torch.cat(parts, 1) if len(parts) > 1 else g1)     # [P, c1 (+ r3 + r5)]
        wm = torch.cat([w1, w3r, w5r] if dred is not None else [w1], 0).reshape(-1, cin)
        if need[0]:
            gx = (da @ wm).view(n, h, w, cin).permute(0, 3, 1, 2)
        if need[1] or need[2] or need[4]:
            gwm = (da.t() @ _nhwc_matrix(x)).view(-1, cin, 1, 1)
            gw1 = gwm[:c1] if need[1] else None
            if dred is not None:
                gw3r = gwm[c1:c1 + r3] if need[2] else None
                gw5r = gwm[c1 + r3:] if need[4] else None
    # Pool branch: the pool projection's dgrad routed through the max pool's argmax.
    if need[0] or need[6]:
        pooled, idx = F.max_pool2d(x, 3, 1, 1, ceil_mode=True, return_indices=True)
        g4m = _nhwc_matrix(g4)
        if need[6]:
            gwp = (g4m.t() @ _nhwc_matrix(pooled)).view(cp, cin, 1, 1)
        if need[0]:
            dpooled = (g4m @ wp.reshape(cp, cin)).view(n, h, w, cin).permute(0, 3, 1, 2)
            gpool = aten.max_pool2d_with_indices_backward(dpooled, x, [3, 3], [1, 1], [1, 1], [1, 1], True, idx)
            gx = gpool if gx is None else gx + gpool
    grads = (gx, gw1, gw3r, gw3, gw5r, gw5, gwp, ggamma, gbeta)
    return tuple(g if need[i] else None for i, g in enumerate(grads)) + (None,)


def _cuda_composition(x, w_1x1, w_3x3red, w_3x3, w_5x5red, w_5x5, w_pool_proj, reduce_weight,
                      reduce_bias, eps):
    # The C++ op's CUDA kernel: the reference composition (no CUDA C++ kernel for this stage).
    with torch._C._AutoDispatchBelowAutograd():
        return tuple(t.clone() if t is x else t for t in inception_bn_train_reference(
            x, w_1x1, w_3x3red, w_3x3, w_5x5red, w_5x5, w_pool_proj, reduce_weight, reduce_bias, eps))


def _register():
    if native.available():
        torch.library.register_fake(OP, _fake)
        torch.library.register_autograd(OP, _backward, setup_context=_setup_context)
        if native.BUILD_INFO.get("cuda_built"):
            torch.library.impl(OP, "CUDA")(_cuda_composition)

    # The Triton stage as an opaque op of its own (any device: CUDA, or CPU tensors under
    # TRITON_INTERPRET=1); triton is imported on first use, not with googlenet_fast.
    @torch.library.custom_op(TRITON_OP, mutates_args=())
    def _triton_op(x: Tensor, w_1x1: Tensor, w_3x3red: Tensor, w_3x3: Tensor, w_5x5red: Tensor,
                   w_5x5: Tensor, w_pool_proj: Tensor, reduce_weight: Tensor, reduce_bias: Tensor,
                   eps: float) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        from .backends.triton.bn_train import inception_bn_train_triton
        return tuple(inception_bn_train_triton(x, w_1x1, w_3x3red, w_3x3, w_5x5red, w_5x5, w_pool_proj,
                                               reduce_weight, reduce_bias, eps))

    torch.library.register_fake(TRITON_OP, _fake)
    torch.library.register_autograd(TRITON_OP, _backward, setup_context=_setup_context)


_register()
