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
import functools
import os
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from . import forward_ad, ops, pool_train  # noqa: F401  (pool_train: the tap ops' fake kernels)
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


# Whether eager CPU training runs :func:`inception_bn_relu_train` (False: the op + F.batch_norm
# composition that torch.compile traces; tests compare a compiled step with that eager twin).
CPU_FAST_PATH = True
# The train-mode Inception's BatchNorms through bn_relu_apply_into where it gives ATen's bits
# (:func:`_apply_into_exact`); False: the cat + native_batch_norm composition (A/B, tests).
APPLY_INTO = True
# The Inception's convolutions on a 1x1 map as GEMMs (:func:`_conv`); False: oneDNN's convolution
# there too (A/B, tests).
ONE_PIXEL_GEMM = True
# The Inception's 1x1 convolutions (the merged ch1x1 + ch3x3red + ch5x5red one and pool_proj) on
# channels_last inputs as GEMMs over the pixels (:func:`_conv`, :func:`_conv_backward`); False:
# oneDNN's convolution forward, dgrad and wgrad (A/B, tests).
ONE_BY_ONE_GEMM = True
# float32 batch statistics through the extension's bn_batch_stats (ATen's bits at memory speed,
# csrc/cpu/bn_stats_cpu.cpp); False: ATen's batch_norm_update_stats (A/B, tests).
FAST_BATCH_STATS = True
# The stem's max_pool2d(relu(batch_norm(pre))) backward (float32) as one op,
# ``max_pool2d_tap_bn_relu_backward``: the pool's input gradient gathered where the BatchNorm
# backward's two passes read it, never written; False: ``max_pool2d_tap_backward_`` then
# ``bn_relu_backward`` (A/B, tests).
FUSED_POOL_BN_BACKWARD = True
# (not bfloat16: its gather rounds after every add and is compute-bound; gathering in both passes
# made the two stem pools' backward slower there, 2-core Xeon, 2026-12-06)
_FUSED_POOL_BN_DTYPES = (torch.float32,)


def cpu_fast_path_applies(x: Tensor) -> bool:
    """Whether :func:`inception_bn_relu_train` runs for ``x``: a float32/float64/bfloat16 CPU
    tensor in eager mode (not under torch.compile, which sees :func:`inception_bn_train` and one
    ``F.batch_norm``) with the extension built, :data:`CPU_FAST_PATH` set, and no forward-mode
    AD level open (its autograd Functions have no jvp: googlenet_fast/forward_ad.py)."""
    return (CPU_FAST_PATH and x.device.type == "cpu" and x.numel() > 0
            and x.dtype in (torch.float32, torch.float64, torch.bfloat16)
            and not torch.compiler.is_compiling() and native.available() and not forward_ad.level_active())


def _autocast_bf16_bn(pre: Tensor, gamma: Tensor, beta: Tensor, running_mean, running_var) -> bool:
    """bfloat16 activations with float32 BatchNorm parameters and running statistics (what
    autocast trains with): the case the extension's exact bfloat16 apply covers."""
    return (pre.dtype == torch.bfloat16 and running_mean is not None and running_var is not None
            and all(t is not None and t.dtype == torch.float32 for t in (gamma, beta, running_mean, running_var)))


def _bn_relu_forward(pre: Tensor, gamma: Tensor, beta: Tensor, running_mean: Tensor, running_var: Tensor,
                     momentum: float, eps: float):
    """``relu(native_batch_norm(pre, gamma, beta, running_mean, running_var, True, momentum, eps))``
    -> (y, mean, invstd, mask_beta), the running statistics updated in place: ATen's bits (NaN:
    NaN, its payload bits aside).

    bfloat16 activations in a dense layout with float32 BatchNorm parameters and running
    statistics (autocast): ATen's statistics (``batch_norm_update_stats``) and the extension's
    apply + ReLU in one pass (``bn_relu_apply``, csrc/cpu/bn_relu_train_cpu.cpp) instead of
    ATen's apply and a separate in-place ReLU pass; ``mask_beta`` is then ``beta`` (for
    ``bn_relu_backward``: the ReLU mask may be recomputed from ``pre``).  float32: ATen's ops, and
    ``mask_beta`` is ``beta`` for a dense ``pre`` where ATen's float32 apply is the fma the
    backward recomputes (``bn_relu_mask_from_pre(torch.float32)``).  Otherwise None (y is read)."""
    dense = pre.is_contiguous() or pre.is_contiguous(memory_format=torch.channels_last)
    if dense and _autocast_bf16_bn(pre, gamma, beta, running_mean, running_var):
        mean, var = torch.batch_norm_update_stats(pre, running_mean, running_var, momentum)
        y, invstd = torch.ops.googlenet_fast.bn_relu_apply(pre, mean, var, gamma, beta, eps)
        return y, mean, invstd, beta
    y, mean, invstd = torch.native_batch_norm(pre, gamma, beta, running_mean, running_var, True, momentum, eps)
    # float32: ATen's own forward; the backward may still recompute the mask from a dense pre where
    # ATen's float32 apply is fma(x, alpha, beta) (checked once per process by the extension)
    if pre.dtype == torch.float32 and dense and _exact_apply(pre.dtype, (gamma, beta, running_mean, running_var)):
        return y.relu_(), mean, invstd, beta
    return y.relu_(), mean, invstd, None


@functools.lru_cache(maxsize=None)
def _apply_is_atens(dtype: torch.dtype) -> bool:
    """``bn_relu_mask_from_pre(dtype)``, asked once per dtype: whether the extension's BatchNorm
    apply (bn_relu_apply_into, max_pool2d_tap_bn_relu, bn_relu_backward's mask from pre) is
    ATen's train-mode arithmetic for activations of ``dtype`` (float32: ATen's float32 apply is
    the fma, bfloat16: the exact bfloat16 apply; checked per process by the extension)."""
    return bool(torch.ops.googlenet_fast.bn_relu_mask_from_pre(dtype))


def _exact_apply(dtype: torch.dtype, params) -> bool:
    """Whether the extension's apply gives ATen's bits for activations of ``dtype`` with these
    BatchNorm tensors (weight, bias, running statistics...): all float32 (a model's own, or
    autocast's for bfloat16 activations) and :func:`_apply_is_atens`."""
    return all(t is not None and t.dtype == torch.float32 for t in params) and _apply_is_atens(dtype)


def _batch_stats(x: Tensor, running_mean, running_var, momentum: float):
    """``torch.batch_norm_update_stats(x, running_mean, running_var, momentum)``: (mean, biased
    var), running statistics updated in place.  float32 channels_last through the extension's
    ``bn_batch_stats`` (ATen's summation order and epilogue, its two read passes at memory speed
    instead of ATen's per-pixel buffer updates; checked bit for bit against ATen once per
    process, else ATen's op runs inside it); everything else ATen's op."""
    if FAST_BATCH_STATS and x.dtype == torch.float32:
        return torch.ops.googlenet_fast.bn_batch_stats(x, running_mean, running_var, momentum)
    return torch.batch_norm_update_stats(x, running_mean, running_var, momentum)


def _pixels(t: Tensor):
    """(N*H*W, C) view of a dense channels_last (N, C, H, W) tensor (NHWC rows), else None."""
    if not t.is_contiguous(memory_format=torch.channels_last):
        return None
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def _nchw_view(rows: Tensor, like: Tensor) -> Tensor:
    """The (N*H*W, C') GEMM result ``rows`` as a channels_last (N, C', H, W) tensor of ``like``'s
    N, H, W (a view)."""
    n, _, h, w = like.shape
    return rows.view(n, h, w, rows.shape[1]).permute(0, 3, 1, 2)


def _conv(a: Tensor, w: Tensor) -> Tensor:
    """``conv2d(a, w, padding=k // 2)`` (stride 1, k odd), channels_last: oneDNN's convolution as
    torchvision's ``F.conv2d``; for a 1x1 map a GEMM of the pixels with the centre tap (the only
    tap that sees the pixel).  There ATen hands oneDNN NCHW-blocked tensors (a 1x1 map is
    contiguous in both layouts) and its 1x1 path ran 4-5x slower than the GEMM (64x832x1x1 with
    624 output channels, 2-core Xeon, 2026-12-06: 1.03 ms in oneDNN, weight reorder 0.16 ms).
    A 1x1 convolution of a dense channels_last ``a`` is the GEMM (N*H*W, Cin) x (Cin, Cout)
    (:data:`ONE_BY_ONE_GEMM`): no weight reorder per call (the weights change every step); the
    module's 1x1 shapes ran 4% (float32) and 28% (bfloat16) faster than oneDNN's convolution
    with its reorder (2-core Xeon, 2026-12-06, batch 8)."""
    k = w.shape[-1]
    if ONE_PIXEL_GEMM and a.shape[-2:] == (1, 1) and a.shape[0] > 0:
        n = a.shape[0]
        return torch.mm(a.reshape(n, a.shape[1]), w[:, :, k // 2, k // 2].t()).view(n, w.shape[0], 1, 1)
    rows = _pixels(a) if ONE_BY_ONE_GEMM and k == 1 and a.numel() > 0 else None
    if rows is not None:
        return _nchw_view(torch.mm(rows, w.reshape(w.shape[0], w.shape[1]).t()), a)
    return F.conv2d(a, w, padding=k // 2).contiguous(memory_format=torch.channels_last)


def _conv_backward(g: Tensor, a: Tensor, w: Tensor, need_input: bool):
    """(grad of a or None, grad of w) of :func:`_conv`: ``aten.convolution_backward`` (oneDNN's
    dgrad + wgrad in one call), for a 1x1 map the two GEMMs (the weight gradient is zero off the
    centre tap), for a 1x1 convolution of dense channels_last tensors the two GEMMs over the
    pixels (dgrad dY W, wgrad dY^T X: 15% (float32) and 31% (bfloat16) faster than oneDNN's
    backward on the module's shapes, its 1x1 wgrad ran at 75-85% of its 3x3 wgrad's FLOP rate)."""
    k = w.shape[-1]
    if ONE_PIXEL_GEMM and a.shape[-2:] == (1, 1) and a.shape[0] > 0:
        n, o, i = a.shape[0], w.shape[0], w.shape[1]
        g2 = g.reshape(n, o)
        ga = torch.mm(g2, w[:, :, k // 2, k // 2]).view(n, i, 1, 1) if need_input else None
        gwc = torch.mm(g2.t(), a.reshape(n, i))
        if k == 1:
            return ga, gwc.view(o, i, 1, 1)
        gw = torch.zeros_like(w, memory_format=torch.contiguous_format)
        gw[:, :, k // 2, k // 2] = gwc
        return ga, gw
    if ONE_BY_ONE_GEMM and k == 1 and a.numel() > 0:
        a_rows, g_rows = _pixels(a), _pixels(g)
        if a_rows is not None and g_rows is not None:
            w2 = w.reshape(w.shape[0], w.shape[1])
            ga = _nchw_view(torch.mm(g_rows, w2), a) if need_input else None
            return ga, torch.mm(g_rows.t(), a_rows).view(w.shape)
    ga, gw, _ = torch.ops.aten.convolution_backward(g, a, w, None, [1, 1], [k // 2] * 2, [1, 1], False, [0, 0],
                                                    1, [need_input, True, False])
    return ga, gw


def _apply_into_exact(m: Tensor, gammas: Tensor, bns) -> bool:
    """Whether the Inception's BatchNorms may run as ATen's statistics + ``bn_relu_apply_into``
    with ATen's bits: float32 activations and parameters where ATen's float32 apply is the fma
    the op computes (``bn_relu_mask_from_pre(torch.float32)``), or bfloat16 activations with
    float32 parameters (autocast) where the exact bfloat16 apply is on."""
    return APPLY_INTO and _exact_apply(m.dtype, [gammas] + [t for bn in bns for t in (bn.running_mean, bn.running_var)])


def _bn_relu_pieces(m, yp, w3, w5, sizes, g, b, bns, eps, momentum):
    """The Inception's six train-mode BatchNorm + ReLUs from where the convolutions left their
    outputs (see :func:`_apply_into_exact` for when): ATen's statistics per convolution output
    (``batch_norm_update_stats``: the merged 1x1 output ``m`` once for its three BatchNorms, the
    KxK and pool-projection outputs each; a channel's statistics do not depend on its
    neighbours), then ``bn_relu_apply_into``: the reduce channels of ``m`` -> the KxK convolutions'
    dense inputs; ``m``'s branch-1 channels and the three other outputs -> the concatenated
    output.  No cat of the pre-BN outputs, no separate ReLU pass; the same bits as
    :func:`_bn_relu_cat`."""
    gf = torch.ops.googlenet_fast
    c1, r3, c3, r5, c5, cp = sizes
    n, _, h, w = m.shape
    cl = torch.channels_last
    m_bns = (bns[0], bns[1], bns[3])
    rm = torch.cat([bn.running_mean for bn in m_bns])
    rv = torch.cat([bn.running_var for bn in m_bns])
    mean_m, var_m = _batch_stats(m, rm, rv, momentum)
    for bn, a, v in zip(m_bns, rm.split([c1, r3, r5]), rv.split([c1, r3, r5])):
        bn.running_mean.copy_(a)
        bn.running_var.copy_(v)
    act3, act5 = (torch.empty((n, c, h, w), dtype=m.dtype, memory_format=cl) for c in (r3, r5))
    gamma_r, beta_r = torch.cat([g[1], g[3]]), torch.cat([b[1], b[3]])
    mean_r = mean_m[c1:]
    invstd_r = gf.bn_relu_apply_into([m[:, c1:]], mean_r, var_m[c1:], gamma_r, beta_r, eps, [act3, act5])
    y3, y5 = _conv(act3, w3), _conv(act5, w5)
    stats = [_batch_stats(t, bn.running_mean, bn.running_var, momentum)
             for t, bn in ((y3, bns[2]), (y5, bns[4]), (yp, bns[5]))]
    mean_o = torch.cat([mean_m[:c1]] + [s[0] for s in stats])
    var_o = torch.cat([var_m[:c1]] + [s[1] for s in stats])
    gamma_o, beta_o = torch.cat([g[0], g[2], g[4], g[5]]), torch.cat([b[0], b[2], b[4], b[5]])
    pre_o = (m[:, :c1], y3, y5, yp)
    # (on a 1x1 map both layouts are dense: the one _bn_relu_cat's output has there, float32
    # native_batch_norm's contiguous one, bfloat16 bn_relu_apply's channels_last one, so that what
    # reads y next, e.g. an aux head's average pool and its bfloat16 wgrad, sees the same strides)
    one_px_nchw = h * w == 1 and m.dtype != torch.bfloat16
    y = torch.empty((n, c1 + c3 + c5 + cp, h, w), dtype=m.dtype,
                    memory_format=torch.contiguous_format if one_px_nchw else cl)
    invstd_o = gf.bn_relu_apply_into(list(pre_o), mean_o, var_o, gamma_o, beta_o, eps, [y])
    return y, (act3, act5, mean_o, invstd_o, gamma_o, beta_o, mean_r, invstd_r, gamma_r, beta_r, (True, True),
               pre_o)


def _bn_relu_cat(m, yp, w3, w5, sizes, g, b, bns, eps, momentum):
    """The Inception's six train-mode BatchNorm + ReLUs where :func:`_apply_into_exact` does not
    hold (float64, mixed parameter dtypes): ATen's ``native_batch_norm`` (through
    :func:`_bn_relu_forward`) on dense copies of the reduce channels and on the concatenated
    pre-BN outputs."""
    c1, r3, c3, r5, c5, cp = sizes
    cl = torch.channels_last
    # The reduce branches' BatchNorm (ATen's, running statistics included) + ReLU in place:
    # the KxK convolutions' dense inputs, saved for their wgrad.
    acts, red_stats = [], []
    for lo, hi, i in ((c1, c1 + r3, 1), (c1 + r3, c1 + r3 + r5, 3)):
        # (a dense copy first: ATen's batch_norm on a channel slice is ~4x slower than the copy
        # and the batch_norm of the dense tensor together)
        a, mean, invstd, mb = _bn_relu_forward(m[:, lo:hi].contiguous(memory_format=cl), g[i], b[i],
                                               bns[i].running_mean, bns[i].running_var, momentum, eps)
        acts.append(a.contiguous(memory_format=cl))
        red_stats.append((mean, invstd, mb))
    y3, y5 = _conv(acts[0], w3), _conv(acts[1], w5)
    gamma_o, beta_o = torch.cat([g[0], g[2], g[4], g[5]]), torch.cat([b[0], b[2], b[4], b[5]])
    # ONE BatchNorm over all output channels: ATen's (its float32 rounding is torchvision's:
    # a ReLU input near 0 goes the same way), its running statistics concatenated.
    out = torch.cat([m[:, :c1], y3, y5, yp], 1)
    out_bns = (bns[0], bns[2], bns[4], bns[5])
    running_mean = torch.cat([bn.running_mean for bn in out_bns])
    running_var = torch.cat([bn.running_var for bn in out_bns])
    y, mean_o, invstd_o, mask_beta_o = _bn_relu_forward(out, gamma_o, beta_o, running_mean, running_var,
                                                        momentum, eps)
    osizes = [c1, c3, c5, cp]
    for bn, rm, rv in zip(out_bns, running_mean.split(osizes), running_var.split(osizes)):
        bn.running_mean.copy_(rm)
        bn.running_var.copy_(rv)
    mask_from_pre = (mask_beta_o is not None, red_stats[0][2] is not None and red_stats[1][2] is not None)
    mean_r = torch.cat([red_stats[0][0], red_stats[1][0]])
    invstd_r = torch.cat([red_stats[0][1], red_stats[1][1]])
    return y, (acts[0], acts[1], mean_o, invstd_o, gamma_o, beta_o, mean_r, invstd_r, torch.cat([g[1], g[3]]),
               torch.cat([b[1], b[3]]), mask_from_pre, (out,))


class _InceptionBnReluTrain(torch.autograd.Function):
    """The whole train-mode torchvision Inception module as one autograd node (eager CPU).

    The KxK convolutions run through oneDNN as torchvision's do (``F.conv2d`` forward,
    ``aten.convolution_backward`` dgrad + wgrad, channels_last), the 1x1 ones and those on a 1x1
    map as GEMMs (:func:`_conv`, :func:`_conv_backward`); the forward's BatchNorms are
    ATen's bits (their rounding is torchvision's, so a ReLU input near 0 goes the same way:
    ATen's statistics and the extension's exact apply + ReLU from the convolutions' outputs where
    they lie, :func:`_bn_relu_pieces`, or ATen's ops, :func:`_bn_relu_cat`); the backward
    between the convolutions is the extension's
    ``bn_relu_backward`` (csrc/cpu/bn_relu_train_cpu.cpp; bfloat16: its ReLU mask recomputed
    from the pre-BatchNorm values, y not read).

    Forward: ONE 1x1 convolution for the three sibling 1x1s (x read once, weights concatenated)
    -> ``m``; the max pool with its argmax as one-byte taps (``max_pool2d_tap``, saved: no
    recompute in backward) and the pool projection; BatchNorm + ReLU of the two reduce branches
    (dense activations, saved for the KxK wgrad); the two KxK convolutions; ONE BatchNorm + ReLU
    over all output channels, written into the concatenated output (from the four pre-BN branch
    outputs where they lie, or from their cat).  Running statistics of all six BatchNorms as
    nn.BatchNorm2d's (ATen updates them).

    Backward: ``bn_relu_backward`` over all output channels (ReLU mask and BatchNorm backward in
    two passes) writes branch 1's gradient into the first columns of the merged 1x1 gradient
    buffer ``da`` and the other branches' into dense buffers (no split copies); the KxK dgrad +
    wgrad; the reduce branches' ``bn_relu_backward`` straight into ``da``'s other columns; ONE
    dgrad + wgrad for the three sibling 1x1s; the pool projection's, routed through the saved
    taps and added into the 1x1s' input gradient in the same pass (``max_pool2d_tap_backward_``).
    """

    @staticmethod
    def forward(ctx, x, w1, w3r, w3, w5r, w5, wp, gammas, betas, bns, eps, momentum):
        # gammas / betas: the six BatchNorms' weights and biases concatenated in block order
        # (branch1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool projection).
        c1, r3, c3, r5, c5, cp = sizes = [w.shape[0] for w in (w1, w3r, w3, w5r, w5, wp)]
        g, b = gammas.split(sizes), betas.split(sizes)
        wm = torch.cat([w1, w3r, w5r])
        m = _conv(x, wm)
        # the pool branch's max pool with one-byte argmax taps (googlenet_fast/pool_train.py)
        pooled, tap = torch.ops.googlenet_fast.max_pool2d_tap(x, 3, 1, 1, True)
        yp = _conv(pooled, wp)
        if _apply_into_exact(m, gammas, bns):
            y, saved = _bn_relu_pieces(m, yp, w3, w5, sizes, g, b, bns, eps, momentum)
        else:
            y, saved = _bn_relu_cat(m, yp, w3, w5, sizes, g, b, bns, eps, momentum)
        (act3, act5, mean_o, invstd_o, gamma_o, beta_o, mean_r, invstd_r, gamma_r, beta_r, mask_from_pre,
         pre_o) = saved
        ctx.sizes = sizes
        # the betas for bn_relu_backward's mask from pre where the forward computed y exactly so
        ctx.mask_from_pre = mask_from_pre
        ctx.save_for_backward(x, w3, w5, wp, wm, m, pooled, tap, act3, act5, y, mean_o, invstd_o, gamma_o, beta_o,
                              mean_r, invstd_r, gamma_r, beta_r, *pre_o)
        return y

    @staticmethod
    def backward(ctx, gy):
        (x, w3, w5, wp, wm, m, pooled, tap, act3, act5, y, mean_o, invstd_o, gamma_o, beta_o,
         mean_r, invstd_r, gamma_r, beta_r, *pre_o) = ctx.saved_tensors
        gf = torch.ops.googlenet_fast
        c1, r3, c3, r5, c5, cp = ctx.sizes
        n, cin, h, w = x.shape
        need_x = ctx.needs_input_grad[0]
        cl = torch.channels_last
        dt = y.dtype
        # allocated channels_last (an NCHW empty made channels_last would be a copy of garbage)
        da = torch.empty((n, c1 + r3 + r5, h, w), dtype=dt, memory_format=cl)
        g2, g3, g4 = (torch.empty((n, c, h, w), dtype=dt, memory_format=cl) for c in (c3, c5, cp))
        # (beta: the ReLU mask recomputed from the pre-BatchNorm values where ATen's forward
        # arithmetic is reproduced exactly, instead of reading y; csrc/cpu/bn_relu_train_cpu.cpp)
        out_pre, red_pre = ctx.mask_from_pre
        gg_o, gb_o = gf.bn_relu_backward([gy], [y], pre_o, mean_o, invstd_o, gamma_o,
                                         [da[:, :c1], g2, g3, g4], beta_o if out_pre else None)
        da3, gw3 = _conv_backward(g2, act3, w3, True)
        da5, gw5 = _conv_backward(g3, act5, w5, True)
        gg_r, gb_r = gf.bn_relu_backward([da3, da5], [act3, act5], [m[:, c1:]], mean_r, invstd_r, gamma_r,
                                         [da[:, c1:]], beta_r if red_pre else None)
        gx, gwm = _conv_backward(da, x, wm, need_x)
        dpooled, gwp = _conv_backward(g4, pooled, wp, need_x)
        if need_x:
            # gx += the pool's input gradient (ATen's max pool backward + add_, bit for bit), in
            # cache; gx is channels_last from the GEMM, x's layout from oneDNN's dgrad (made
            # channels_last here: the op writes it)
            gx = gx.contiguous(memory_format=cl)
            gf.max_pool2d_tap_backward_(gx, dpooled, tap, 3, 1, 1, True)
        gw1, gw3r, gw5r = gwm.split([c1, r3, r5])
        go, bo = gg_o.split([c1, c3, c5, cp]), gb_o.split([c1, c3, c5, cp])
        gr, br = gg_r.split([r3, r5]), gb_r.split([r3, r5])
        ggam = torch.cat([go[0], gr[0], go[1], gr[1], go[2], go[3]])
        gbet = torch.cat([bo[0], br[0], bo[1], br[1], bo[2], bo[3]])
        return gx, gw1, gw3r, gw3, gw5r, gw5, gwp, ggam, gbet, None, None, None


class _BnReluTrain(torch.autograd.Function):
    """relu(batch_norm(pre)) with batch statistics as one autograd node: forward ATen's
    native_batch_norm (running statistics included) and an in-place ReLU, as torchvision's
    block computes them (:func:`_bn_relu_forward`: for bfloat16 the same bits); backward the
    extension's ``bn_relu_backward`` (ReLU mask and BatchNorm backward in two passes instead of
    threshold_backward's one and native_batch_norm_backward's two, no gradient tensor in
    between)."""

    @staticmethod
    def forward(ctx, pre, gamma, beta, bn, eps, momentum):
        y, mean, invstd, mask_beta = _bn_relu_forward(pre, gamma, beta, bn.running_mean, bn.running_var,
                                                      momentum, eps)
        ctx.mask_from_pre = mask_beta is not None
        ctx.save_for_backward(pre, y, mean, invstd, gamma, beta)
        return y

    @staticmethod
    def backward(ctx, gy):
        pre, y, mean, invstd, gamma, beta = ctx.saved_tensors
        dpre = torch.empty_like(pre)
        gg, gb = torch.ops.googlenet_fast.bn_relu_backward([gy], [y], [pre], mean, invstd, gamma, [dpre],
                                                           beta if ctx.mask_from_pre else None)
        return dpre, gg, gb, None, None, None


class _BnReluMaxPoolTrain(torch.autograd.Function):
    """``max_pool2d(relu(batch_norm(pre)))`` with batch statistics as one autograd node, float32
    or bfloat16 where the extension's apply gives ATen's bits (see
    :func:`bn_relu_max_pool_train_applies`): ATen's statistics, then ``max_pool2d_tap_bn_relu`` computes each
    window value as ``bn_relu_apply`` would and pools it, so relu(batch_norm(pre)) is never
    written; backward: the pool's gradient through the saved taps, then ``bn_relu_backward`` with
    the ReLU mask recomputed from ``pre`` (float32: in one op, ``max_pool2d_tap_bn_relu_backward``,
    see :data:`FUSED_POOL_BN_BACKWARD`).  The same bits as ``bn_relu_train`` + the tap max pool."""

    @staticmethod
    def forward(ctx, pre, gamma, beta, bn, eps, momentum, window):
        mean, var = _batch_stats(pre, bn.running_mean, bn.running_var, momentum)
        k, s, p, ceil = window
        y, tap, invstd = torch.ops.googlenet_fast.max_pool2d_tap_bn_relu(pre, mean, var, gamma, beta, eps, k, s, p,
                                                                         ceil)
        ctx.window = (k, s, p)
        ctx.save_for_backward(pre, tap, mean, invstd, gamma, beta)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gp):
        pre, tap, mean, invstd, gamma, beta = ctx.saved_tensors
        gf = torch.ops.googlenet_fast
        if FUSED_POOL_BN_BACKWARD and pre.dtype in _FUSED_POOL_BN_DTYPES:
            dpre, gg, gb = gf.max_pool2d_tap_bn_relu_backward(gp, tap, pre, mean, invstd, gamma, beta, *ctx.window)
            return dpre, gg, gb, None, None, None, None
        dy = torch.empty_like(pre, memory_format=torch.channels_last)
        gf.max_pool2d_tap_backward_(dy, gp, tap, *ctx.window, False)
        dpre = torch.empty_like(pre, memory_format=torch.channels_last)
        # y is not read (mask from pre; bn_relu_max_pool_train_applies checked it): pre stands in
        gg, gb = gf.bn_relu_backward([dy], [pre], [pre], mean, invstd, gamma, [dpre], beta)
        return dpre, gg, gb, None, None, None, None


def bn_relu_max_pool_train_applies(pre: Tensor, bn: nn.BatchNorm2d) -> bool:
    """Whether :func:`bn_relu_max_pool_train` computes ``pool(bn_relu_train(pre, bn))`` for
    ``pre``: channels_last on the CPU, float32 BatchNorm parameters and running statistics, and
    the extension's apply giving ATen's bits for pre's dtype: bfloat16 (autocast) where
    the exact bfloat16 apply is on, float32 where ATen's apply is the fma (both
    :func:`_exact_apply`: ``bn_relu_mask_from_pre(dtype)``);
    :data:`APPLY_INTO` set."""
    return (APPLY_INTO and pre.device.type == "cpu" and pre.is_contiguous(memory_format=torch.channels_last)
            and _exact_apply(pre.dtype, (bn.weight, bn.bias, bn.running_mean, bn.running_var)))


def bn_relu_max_pool_train(pre: Tensor, bn: nn.BatchNorm2d, window) -> Tensor:
    """``F.max_pool2d(relu(bn(pre)), *window)`` for a train-mode ``nn.BatchNorm2d`` as one
    autograd node where :func:`bn_relu_max_pool_train_applies` (the stem's conv1 -> maxpool1 and
    conv3 -> maxpool2, float32 or under bf16 autocast): relu(bn(pre)) is never written (its write and the
    pool's read of it saved).  ``window``: (kernel, stride, padding, ceil_mode) as
    :func:`googlenet_fast.pool_train.pool_window` gives it.  Updates ``bn``'s running statistics
    and num_batches_tracked as ``bn(pre)`` would; values, taps and gradients are those of
    :func:`bn_relu_train` followed by the tap max pool, bit for bit."""
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
    return _BnReluMaxPoolTrain.apply(pre, bn.weight, bn.bias, bn, bn.eps, bn.momentum, tuple(window))


def bn_relu_train(pre: Tensor, bn: nn.BatchNorm2d) -> Tensor:
    """``relu(bn(pre))`` for a train-mode ``nn.BatchNorm2d`` (affine, running statistics, numeric
    momentum) as one autograd node on the CPU (see :func:`cpu_fast_path_applies`): the backward
    in two passes instead of three and without the ReLU's gradient tensor.  Updates ``bn``'s
    running statistics and num_batches_tracked as ``bn(pre)`` would."""
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
    return _BnReluTrain.apply(pre, bn.weight, bn.bias, bn, bn.eps, bn.momentum)


def inception_bn_relu_train(x: Tensor, weights, bns, eps: float, momentum: float) -> Tensor:
    """``cat(branches)`` of a train-mode torchvision Inception module, BatchNorm + ReLU applied,
    as one autograd node (eager CPU: see :func:`cpu_fast_path_applies`).

    Args:
        x: (N, Cin, H, W) channels_last, float32/float64/bfloat16.
        weights: the six conv weights (w_1x1, w_3x3red, w_3x3, w_5x5red, w_5x5, w_pool_proj) in
            x's dtype.
        bns: the six ``nn.BatchNorm2d`` in the same order (gamma, beta, running statistics; one
            eps and momentum).  Their running statistics are updated as nn.BatchNorm2d's;
            num_batches_tracked is the caller's.
    Returns the module's output (N, ch1x1 + ch3x3 + ch5x5 + pool_proj, H, W), channels_last.
    """
    gammas = torch.cat([bn.weight for bn in bns])
    betas = torch.cat([bn.bias for bn in bns])
    return _InceptionBnReluTrain.apply(x, *weights, gammas, betas, tuple(bns), eps, momentum)


def _cuda_composition(x, w_1x1, w_3x3red, w_3x3, w_5x5red, w_5x5, w_pool_proj, reduce_weight,
                      reduce_bias, eps):
    # The C++ op's CUDA kernel: the reference composition (no CUDA C++ kernel for this stage).
    with torch._C._AutoDispatchBelowAutograd():
        return tuple(t.clone() if t is x else t for t in inception_bn_train_reference(
            x, w_1x1, w_3x3red, w_3x3, w_5x5red, w_5x5, w_pool_proj, reduce_weight, reduce_bias, eps))


def _register():
    if native.available():
        torch.library.register_fake(OP, _fake)

        @torch.library.register_fake("googlenet_fast::max_pool2d_tap_bn_relu")
        def _fake_max_pool2d_tap_bn_relu(x, mean, var, gamma, beta, eps, kernel, stride, padding, ceil_mode):
            from .backends.reference import pool_output_size
            shape = (x.shape[0], x.shape[1]) + tuple(pool_output_size(n, kernel, stride, padding, ceil_mode)
                                                     for n in (x.shape[2], x.shape[3]))
            cl = torch.channels_last
            return (torch.empty(shape, dtype=x.dtype, memory_format=cl),
                    torch.empty(shape, dtype=torch.uint8, memory_format=cl), torch.empty_like(mean))

        @torch.library.register_fake("googlenet_fast::max_pool2d_tap_bn_relu_backward")
        def _fake_max_pool2d_tap_bn_relu_backward(grad_y, tap, pre, mean, invstd, gamma, beta, kernel, stride,
                                                  padding):
            return (torch.empty_like(pre, memory_format=torch.channels_last), torch.empty_like(gamma),
                    torch.empty_like(gamma))

        @torch.library.register_fake("googlenet_fast::bn_relu_apply")
        def _fake_bn_relu_apply(x, mean, var, gamma, beta, eps):
            return torch.empty_like(x), torch.empty_like(mean)

        @torch.library.register_fake("googlenet_fast::bn_batch_stats")
        def _fake_bn_batch_stats(x, running_mean, running_var, momentum):
            return x.new_empty((x.shape[1],)), x.new_empty((x.shape[1],))

        @torch.library.register_fake("googlenet_fast::bn_relu_apply_into")
        def _fake_bn_relu_apply_into(xs, mean, var, gamma, beta, eps, outs):
            return torch.empty_like(mean)

        @torch.library.register_fake("googlenet_fast::bn_relu_backward")
        def _fake_bn_relu_backward(grads, y, pre, mean, invstd, gamma, outs, beta=None):
            # (grad_gamma, grad_beta): gamma's shape and dtype; `outs` are written in place
            return torch.empty_like(gamma), torch.empty_like(gamma)

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
