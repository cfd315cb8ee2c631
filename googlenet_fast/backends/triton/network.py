"""Triton kernels for the rest of GoogLeNet in eval mode, and a whole-network fused forward.

The Inception modules run the fused Inception op (``googlenet_fast::inception_triton``, this
package's __init__.py), or, right after a stage-transition max pool, its pooled variant
(``googlenet_fast::inception_pooled_triton``), whose stage-1 loaders compute that pool.  This
module covers everything around them (kernels in
network_kernels.py, tiles in network_configs.py), NHWC throughout, fp32/fp16/bf16 with fp32
accumulation, BatchNorm folded (eval):

=====================  ========================================================================
network layers         kernel (torch op) and what is fused where
=====================  ========================================================================
conv1 7x7/2 + ReLU     :func:`conv_stem` (``googlenet_fast::conv_stem_triton``): implicit GEMM
                       whose loader gathers the NCHW (or any-stride) input in place: no layout
                       copy of the image; NHWC (channels_last) output.
maxpool1 [+ lrn1]      fused into conv2's A loader (the previous layer's output is pooled, and
-> conv2 1x1 + ReLU    in the paper variant local-response-normalized, while it is loaded):
                       :func:`conv_nhwc` with ``pool=(3, 2)`` [``lrn=...``]
                       (``googlenet_fast::conv_nhwc_triton``).  No pooled tensor exists.
conv3 3x3 + ReLU       :func:`conv_nhwc` (implicit GEMM over (tap, channel chunk)).
maxpool2 -> 3a         torchvision: fused into inception3a's stage-1 loaders
                       (:func:`inception_pooled`, ``googlenet_fast::inception_pooled_triton``
                       with pool 3x3/2).  Paper: lrn2 -> maxpool2 stays one pass of
                       :func:`max_pool_nhwc` (``googlenet_fast::max_pool_nhwc_triton``), the
                       LRN applied at every tap before the max (LRN, then pool, as the network
                       does), and inception3a runs the plain op.
maxpool3 -> 4a,        fused into inception4a's / inception5a's stage-1 loaders
maxpool4 -> 5a         (:func:`inception_pooled`: 3x3/2; maxpool4 2x2/2 in torchvision, 3x3/2
                       in the paper).  No pooled tensor exists.
avgpool + flatten +    CUDA: ATen's ``adaptive_avg_pool2d`` + ``linear`` (cuBLAS), exactly
dropout + fc           torchvision's head.  The Triton :func:`avgpool_linear`
                       (``googlenet_fast::avgpool_linear_triton``, the pool computed in the GEMM's
                       operand loader) took 384 us at batch 256 on an H200 (2026-12-04) for ~10 us
                       of traffic and math; the library pair should take ~20 us (prediction, not
                       yet measured).  Under the interpreter (CPU) the Triton head still runs.
=====================  ========================================================================

conv2 -> conv3 stay two launches.  One kernel would have to recompute conv2 (and maxpool1)
inside conv3's loader for each of the nine taps: +205 MFLOP per image (+21% of the stem's 956,
with one 192-channel N tile; more with narrower tiles) to save conv2's 56x56x64 round trip
(0.8 MB per image in bf16, written once and read once).  At batch 256 on an H200 that is ~0.08 ms
of extra bf16 math against ~0.05 ms of traffic saved (roofline estimate, not measured: no GPU
has run this code); at batch 1 it would save one launch.  A halo tile (conv2 computed once per
CTA into shared memory for its pixels plus a 1-pixel border) avoids the recompute but needs
gathers from shared memory that Triton does not express; left for the CUDA backend.

So a 2-D forward on CUDA is 3 stem launches + 9 x 2 Inception launches + the head's 2 library
kernels = 23 kernels in the torchvision variant, 24 in the paper's (its lrn2 + maxpool2 pass)
(torchvision's eager eval: 334 kernels at batch 256 on the H200, 57 convolutions among them).

The pool fusion (formerly the HOOK here; done): ``inception_stage1_kernel`` in stage1.py takes
constexprs ``IN_POOL_K``/``IN_POOL_S`` (0: no pool, the plain module's code) and runtime XH, XW
(the pre-pool map; H, W are the pooled grid): the merged 1x1 tile's A loader returns the max over
each pooled pixel's ceil-mode window, and the pool projection's 3x3/s1/p1 max of pooled values is
the max over the union of the valid neighbouring windows (a (2*IN_POOL_S + IN_POOL_K)^2 window of
the pre-pool tensor, clipped).  Stage 2 reads ``red`` on the pooled grid, unchanged.  The paper's
lrn2 -> maxpool2 -> 3a is not fused into 3a: that would need the LRN-before-pool loader
(``_pool_lrn_tile`` with LRN_FIRST: 5 channel loads per tap) in stage 1; it stays one
max_pool_nhwc pass.

Entry points check their arguments (messages name the argument) and run the kernels on CUDA
tensors, or on CPU tensors under Triton's interpreter (TRITON_INTERPRET=1, read at each call).
Registration as in __init__.py: each op is a ``torch.library.triton_op`` whose launches go
through ``wrap_triton`` (so torch.compile and CUDA graph capture see the kernels); under the
interpreter the launches go through one private opaque op,
``googlenet_fast::_network_triton_interpreted`` (wrap_triton does not trace interpreted kernels).
No autotuning (network_configs.py): CUDA graph capture may happen on a shape's first call.

Eager host work: :func:`fused_forward_triton` records the launches of its first eager forward
per input signature into a launch program (program.py) and replays it on later forwards after
one flat check that nothing it depends on changed (GoogLeNet.forward's CUDA branch: ~1.4 ->
~0.17 ms of host work per batch-1 forward beside the launches on the 2-core EPYC, torchvision
bf16; benchmarks/host_overhead.py).
"""
import contextlib
from typing import NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import (EAGER_IMPLS, MAX_POOL_K, SUPPORTED_DTYPES, _allow_tf32, _mode_module, autotuning,
               _single_threaded_blas, _span, _triton_op, eager_direct, interpreting,
               pool_out_size, pooled_hw)
from . import network_configs as nc
from . import program
from ...arg_checks import check_4d_tensor

__all__ = ["conv_stem", "conv_nhwc", "max_pool_nhwc", "avgpool_linear", "fused_forward_triton",
           "fused_forward_supported", "pool_out_size", "launch_plan"]

# Tests set this to force the 64-bit offset variant at small sizes.
FORCE_INT64 = False

_MODULES = {}


def kernels(interpret: Optional[bool] = None):
    """network_kernels built for the current (or given) interpreter mode."""
    if interpret is None:
        interpret = interpreting()
    return _mode_module("network_kernels", "conv_nhwc_kernel", interpret, _MODULES)


# ----------------------------------------------------------------------------------------------
# Sizes and checks

def _check_x(x, name="x", channels=None, what=""):
    check_4d_tensor(x, name)
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name}: the triton network kernels support float32, float16 and bfloat16, "
                        f"got {x.dtype}")
    dev = x.device.type
    if dev == "cpu":
        if not interpreting():
            raise ValueError(f"{name}: the triton network kernels need CUDA tensors, got {name} on cpu; "
                             "Triton runs CPU tensors only under its interpreter (TRITON_INTERPRET=1)")
    elif dev not in ("cuda", "meta"):
        raise ValueError(f"{name}: the triton network kernels need CUDA tensors, got {name} on {x.device}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name}: expected {channels} channels in dim 1{what}, got shape {tuple(x.shape)}")


def _check_like(name, t, x, shape=None):
    if t is None:
        return
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a Tensor or None, got {type(t).__name__}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(t.shape)}")
    if t.dtype != x.dtype:
        raise TypeError(f"{name}: expected dtype {x.dtype} (the dtype of x), got {t.dtype}")
    if t.device != x.device:
        raise ValueError(f"{name}: expected a tensor on {x.device} (the device of x), got {t.device}")


def _check_weight(weight, x, odd=False):
    if not isinstance(weight, Tensor):
        raise TypeError(f"weight: expected a Tensor, got {type(weight).__name__}")
    if weight.dim() != 4 or weight.shape[2] != weight.shape[3]:
        raise ValueError(f"weight: expected a 4-D square conv weight (Cout, Cin, K, K), got shape "
                         f"{tuple(weight.shape)}")
    if odd and weight.shape[2] % 2 == 0:
        raise ValueError(f"weight: expected an odd kernel size (a 'same' stride-1 conv), got shape "
                         f"{tuple(weight.shape)}")
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"weight: expected {x.shape[1]} input channels in dim 1 (the channels of x), "
                         f"got shape {tuple(weight.shape)}")
    _check_like("weight", weight, x)


def _check_lrn(lrn_size, lrn_alpha, lrn_beta, lrn_k):
    if lrn_size < 0:
        raise ValueError(f"lrn: expected size >= 0 (0: no LRN), got {lrn_size}")
    if lrn_size > 0 and not (lrn_k > 0 or (lrn_k == 0 and lrn_alpha > 0)):
        raise ValueError(f"lrn: expected k > 0, got k={lrn_k}")


def _check_pool(kernel, stride, name="pool"):
    if kernel < 1 or stride < 1:
        raise ValueError(f"{name}: expected kernel_size >= 1 and stride >= 1, got ({kernel}, {stride})")


def _nhwc_empty(n, c, h, w, x):
    return program.register(torch.empty((n, c, h, w), dtype=x.dtype, device=x.device,
                                        memory_format=torch.channels_last))


# ----------------------------------------------------------------------------------------------
# Launch plans: (kernel, arguments, tile, grid) per launch; work on meta tensors (the AOT tests)

class Launch(NamedTuple):
    kind: str     # network_configs kind
    fn: object    # the @triton.jit kernel
    args: dict    # kernel arguments without the tile's
    tile: nc.Tile
    grid: tuple

    def meta(self):
        t = self.tile
        if self.kind in ("pool", "pool_lrn"):
            return dict(BLOCK_M=t.BLOCK_M, BLOCK_C=t.BLOCK_N)
        if self.kind == "head":
            return dict(BLOCK_J=t.BLOCK_M, BLOCK_B=t.BLOCK_N, BLOCK_K=t.BLOCK_K)
        return dict(BLOCK_M=t.BLOCK_M, BLOCK_N=t.BLOCK_N, BLOCK_K=t.BLOCK_K)


def _cdiv(a, b):
    return -(-a // b)


def _common(x, interpret, *tensors):
    int64 = FORCE_INT64 or any(_span(t) >= 2 ** 31 for t in tensors if t is not None)
    return dict(INT64=bool(int64), UPCAST=bool(interpret and x.dtype == torch.bfloat16))


def _tile(kind, x, interpret, m, n, k):
    if interpret:
        return nc.interpret_tile(kind, m, n, k)
    return nc.gpu_tile(kind, x.dtype != torch.float32)


def _bias_arg(bias, dummy):
    if bias is None:
        return dummy, False
    return (bias if bias.stride(0) == 1 else bias.contiguous()), True


def launch_plan(kind: str, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                ints: Sequence[int], floats: Sequence[float], out: Tensor, interpret: bool) -> Launch:
    """The launch of one op call (no checks, nothing run).  ``kind``/``ints``/``floats``:
      conv_gather: ints (stride, padding, relu);
      conv:        ints (pool_kernel, pool_stride, lrn_size, relu) (pool_kernel 0: no pool),
                   floats (lrn_alpha, lrn_beta, lrn_k);
      pool:        ints (kernel, stride, lrn_size), floats (lrn_alpha, lrn_beta, lrn_k);
      head:        none."""
    k = kernels(interpret)
    sx, so = x.stride(), out.stride()
    xs = dict(sxn=sx[0], sxc=sx[1], sxh=sx[2], sxw=sx[3])
    tf32 = _allow_tf32() and x.dtype == torch.float32
    if kind == "head":
        nb, c, h, w = x.shape
        ncls = weight.shape[0]
        b, has_b = _bias_arg(bias, weight)
        t = _tile("head", x, interpret, ncls, nb, c)
        args = dict(x_ptr=x, w_ptr=weight, b_ptr=b, out_ptr=out, NB=nb, HW=h * w, W=w, C=c, NCLS=ncls,
                    inv_hw=1.0 / (h * w), **xs, swj=weight.stride(0), swc=weight.stride(1),
                    son=so[0], soj=so[1], HAS_BIAS=has_b, ALLOW_TF32=tf32, **_common(x, interpret, x, weight, out))
        return Launch("head", k.head_kernel, args, t, (_cdiv(nb, t.BLOCK_N) * _cdiv(ncls, t.BLOCK_M),))
    n, _, oh, ow = out.shape
    P = n * oh * ow
    os_ = dict(son=so[0], soc=so[1], soh=so[2], sow=so[3])
    if kind == "pool":
        kern, stride, lrn_size = ints
        alpha, beta, kk = floats
        c = x.shape[1]
        pkind = "pool_lrn" if lrn_size else "pool"
        t = _tile(pkind, x, interpret, P, c, 0)
        args = dict(x_ptr=x, out_ptr=out, P=P, OH=oh, OW=ow, C=c, XH=x.shape[2], XW=x.shape[3], **xs, **os_,
                    lrn_alpha_n=float(alpha) / max(lrn_size, 1), lrn_beta=float(beta), lrn_k=float(kk),
                    POOL_K=int(kern), POOL_S=int(stride), LRN_SIZE=int(lrn_size), **_common(x, interpret, x, out))
        return Launch(pkind, k.max_pool_nhwc_kernel, args, t, (_cdiv(P, t.BLOCK_M) * _cdiv(c, t.BLOCK_N),))
    cout, cin, ks = weight.shape[0], weight.shape[1], weight.shape[2]
    b, has_b = _bias_arg(bias, weight)
    sw = weight.stride()
    ws = dict(swo=sw[0], swi=sw[1], swh=sw[2], sww=sw[3])
    if kind == "conv_gather":
        stride, padding, relu = ints
        ktot = cin * ks * ks
        t = _tile("conv_gather", x, interpret, P, cout, ktot)
        args = dict(x_ptr=x, w_ptr=weight, b_ptr=b, out_ptr=out, P=P, OH=oh, OW=ow, CIN=cin, COUT=cout,
                    IH=x.shape[2], IW=x.shape[3], KTOT=ktot, **xs, **ws, **os_,
                    KS=int(ks), STRIDE=int(stride), PAD=int(padding), HAS_BIAS=has_b, RELU=bool(relu),
                    ALLOW_TF32=tf32, **_common(x, interpret, x, weight, out))
        return Launch("conv_gather", k.conv_gather_kernel, args, t, (_cdiv(P, t.BLOCK_M) * _cdiv(cout, t.BLOCK_N),))
    if kind == "conv":
        pool_k, pool_s, lrn_size, relu = ints
        alpha, beta, kk = floats
        if lrn_size and not pool_k:
            pool_k, pool_s = 1, 1  # the LRN alone: a 1x1/1 "pool"
        kind2 = ("conv_pool_lrn" if lrn_size else "conv_pool") if pool_k else "conv"
        t = _tile(kind2, x, interpret, P, cout, cin)
        args = dict(x_ptr=x, w_ptr=weight, b_ptr=b, out_ptr=out, P=P, OH=oh, OW=ow, CIN=cin, COUT=cout,
                    XH=x.shape[2], XW=x.shape[3], **xs, **ws, **os_,
                    lrn_alpha_n=float(alpha) / max(lrn_size, 1), lrn_beta=float(beta), lrn_k=float(kk),
                    KS=int(ks), POOL_K=int(pool_k), POOL_S=int(pool_s), LRN_SIZE=int(lrn_size),
                    HAS_BIAS=has_b, RELU=bool(relu), ALLOW_TF32=tf32, **_common(x, interpret, x, weight, out))
        return Launch(kind2, k.conv_nhwc_kernel, args, t, (_cdiv(P, t.BLOCK_M) * _cdiv(cout, t.BLOCK_N),))
    raise ValueError(f"kind: unknown launch kind {kind!r}")


def _launch(kind, x, weight, bias, ints, floats, out, interpret):
    if out.numel() == 0:
        program.unrecordable("an empty output")
        return
    if x.shape[1] == 0:  # no input channels: the output is the (activated) bias
        program.unrecordable("a convolution without input channels")
        fill = bias if bias is not None else out.new_zeros(out.shape[1])
        if kind != "head" and ints[-1]:
            fill = torch.relu(fill)
        out.copy_(fill.view((1, -1) + (1,) * (out.dim() - 2)).expand_as(out))
        return
    if kind == "conv" and x.device.type == "cuda" and weight.shape[1] > 1 and weight.stride(1) != 1:
        # The fast B layout: unit stride along the input channels (OHWI in memory), one small copy.
        weight = weight.contiguous(memory_format=torch.channels_last)
    plan = launch_plan(kind, x, weight, bias, ints, floats, out, interpret)
    if interpret:
        program.launch(plan.fn, plan.grid, dict(plan.args, **plan.meta()), True)
        return
    t = plan.tile
    program.launch(plan.fn, plan.grid, dict(plan.args, **plan.meta(), num_warps=t.num_warps,
                                            num_stages=t.num_stages), False)


@torch.library.custom_op("googlenet_fast::_network_triton_interpreted", mutates_args=("out",))
def _network_triton_interpreted(kind: str, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                                ints: Sequence[int], floats: Sequence[float], out: Tensor) -> None:
    """One network-kernel launch under Triton's interpreter (opaque to tracing; CPU tensors)."""
    _launch(kind, x, weight, bias, list(ints), list(floats), out, interpret=True)


@_network_triton_interpreted.register_fake
def _(kind, x, weight, bias, ints, floats, out):
    return None


def _run(kind, x, weight, bias, ints, floats, out):
    if x.device.type == "meta":
        return
    if interpreting() and x.device.type == "cpu":
        torch.ops.googlenet_fast._network_triton_interpreted(kind, x, weight, bias, list(ints),
                                                             [float(f) for f in floats], out)
    else:
        _launch(kind, x, weight, bias, list(ints), list(floats), out, interpret=interpreting())


# ----------------------------------------------------------------------------------------------
# The ops

@_triton_op("googlenet_fast::conv_stem_triton", mutates_args=())
def conv_stem_triton(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: int, padding: int,
                     relu: bool) -> Tensor:
    """See :func:`conv_stem`."""
    _check_x(x)
    _check_weight(weight, x)
    _check_like("bias", bias, x, (weight.shape[0],))
    if stride < 1 or padding < 0:
        raise ValueError(f"stride/padding: expected stride >= 1 and padding >= 0, got {stride}, {padding}")
    n, _, h, w = x.shape
    ks = weight.shape[2]
    oh, ow = (h + 2 * padding - ks) // stride + 1, (w + 2 * padding - ks) // stride + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"x: a {ks}x{ks}/{stride} pad {padding} convolution of a {h}x{w} map has an empty output")
    out = _nhwc_empty(n, weight.shape[0], oh, ow, x)
    _run("conv_gather", x, weight, bias, [stride, padding, int(relu)], [], out)
    return out


@_triton_op("googlenet_fast::conv_nhwc_triton", mutates_args=())
def conv_nhwc_triton(x: Tensor, weight: Tensor, bias: Optional[Tensor], pool_kernel: int, pool_stride: int,
                     lrn_size: int, lrn_alpha: float, lrn_beta: float, lrn_k: float, relu: bool) -> Tensor:
    """See :func:`conv_nhwc`."""
    _check_x(x)
    _check_weight(weight, x, odd=True)
    _check_like("bias", bias, x, (weight.shape[0],))
    _check_lrn(lrn_size, lrn_alpha, lrn_beta, lrn_k)
    n, _, h, w = x.shape
    if pool_kernel:
        _check_pool(pool_kernel, pool_stride)
        h, w = pooled_hw(x, pool_kernel, pool_stride, "x")
    out = _nhwc_empty(n, weight.shape[0], h, w, x)
    _run("conv", x, weight, bias, [pool_kernel, pool_stride if pool_kernel else 0, lrn_size, int(relu)],
         [lrn_alpha, lrn_beta, lrn_k], out)
    return out


@_triton_op("googlenet_fast::max_pool_nhwc_triton", mutates_args=())
def max_pool_nhwc_triton(x: Tensor, kernel_size: int, stride: int, lrn_size: int, lrn_alpha: float,
                         lrn_beta: float, lrn_k: float) -> Tensor:
    """See :func:`max_pool_nhwc`."""
    _check_x(x)
    _check_pool(kernel_size, stride, "kernel_size/stride")
    _check_lrn(lrn_size, lrn_alpha, lrn_beta, lrn_k)
    ph, pw = pooled_hw(x, kernel_size, stride, "x")
    out = _nhwc_empty(x.shape[0], x.shape[1], ph, pw, x)
    _run("pool", x, None, None, [kernel_size, stride, lrn_size], [lrn_alpha, lrn_beta, lrn_k], out)
    return out


@torch.library.triton_op("googlenet_fast::avgpool_linear_triton", mutates_args=())
def avgpool_linear_triton(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """See :func:`avgpool_linear`."""
    _check_x(x)
    if not isinstance(weight, Tensor):
        raise TypeError(f"weight: expected a Tensor, got {type(weight).__name__}")
    if weight.dim() != 2 or weight.shape[1] != x.shape[1]:
        raise ValueError(f"weight: expected shape (num_classes, {x.shape[1]}) (in features = the channels "
                         f"of x), got {tuple(weight.shape)}")
    _check_like("weight", weight, x)
    _check_like("bias", bias, x, (weight.shape[0],))
    if x.shape[2] * x.shape[3] == 0:
        raise ValueError(f"x: expected a non-empty map to average, got shape {tuple(x.shape)}")
    out = program.register(torch.empty((x.shape[0], weight.shape[0]), dtype=x.dtype, device=x.device))
    _run("head", x, weight, bias, [], [], out)
    return out


# ----------------------------------------------------------------------------------------------
# Python entry points

def _lrn_tuple(lrn) -> Tuple[int, float, float, float]:
    if lrn is None:
        return 0, 0.0, 0.0, 1.0
    if hasattr(lrn, "size") and hasattr(lrn, "alpha"):  # an nn.LocalResponseNorm
        return int(lrn.size), float(lrn.alpha), float(lrn.beta), float(lrn.k)
    size, alpha, beta, k = lrn
    return int(size), float(alpha), float(beta), float(k)


def conv_stem(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride: int = 2, padding: int = 3,
              relu: bool = True) -> Tensor:
    """GoogLeNet's conv1: ``relu(conv2d(x, weight, bias, stride, padding))`` in one implicit-GEMM
    launch (any square kernel; 7x7/2 pad 3 in the network).

    Args:
        x: (N, Cin, H, W) float32/float16/bfloat16, any strides: NCHW (the image as it comes) is
            read in place by the kernel's gathering loader, no layout copy.
        weight: (Cout, Cin, K, K), any strides, x's dtype and device (BatchNorm folded in, e.g.
            ``BasicConv2d.folded_params()``).  bias: (Cout,) or None.
        relu: ReLU epilogue.
    Returns:
        (N, Cout, OH, OW), OH = (H + 2*padding - K) // stride + 1, channels_last (NHWC) memory.
    Raises:
        TypeError (dtype), ValueError (rank, channels, shapes, device, empty output), each naming
        the argument.
    """
    return torch.ops.googlenet_fast.conv_stem_triton(x, weight, bias, int(stride), int(padding), bool(relu))


def conv_nhwc(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, *, pool=None, lrn=None,
              relu: bool = True) -> Tensor:
    """``relu(conv2d(u, weight, bias, padding=K//2))`` (stride 1, odd K) with
    ``u = local_response_norm(max_pool2d(x, k, s, ceil_mode=True))``, the pool and the LRN being
    optional and computed in the GEMM's operand loader (no pooled tensor is written).  GoogLeNet's
    conv2 is ``conv_nhwc(conv1_out, w2, b2, pool=(3, 2)[, lrn=model.lrn1])``, conv3 is
    ``conv_nhwc(conv2_out, w3, b3)``.

    Args:
        x: (N, Cin, H, W) float32/float16/bfloat16, any strides (channels_last is the fast one).
        weight: (Cout, Cin, K, K), K odd; any strides (on CUDA a weight without unit stride along
            Cin is repacked to channels_last per call: pass channels_last to avoid the copy).
        bias: (Cout,) or None.
        pool: None or (kernel_size, stride): ceil-mode max pool without padding.
        lrn: None, an ``nn.LocalResponseNorm``, or (size, alpha, beta, k) as its arguments.
    Returns:
        (N, Cout, PH, PW) channels_last, (PH, PW) the pooled size (H, W without a pool).
    Raises:
        TypeError / ValueError naming the argument (x, weight, bias, pool, lrn).
    """
    size, alpha, beta, k = _lrn_tuple(lrn)
    pk, ps = (0, 0) if pool is None else (int(pool[0]), int(pool[1]))
    if pool is not None and (pk < 1 or ps < 1):
        raise ValueError(f"pool: expected (kernel_size >= 1, stride >= 1), got {tuple(pool)}")
    return torch.ops.googlenet_fast.conv_nhwc_triton(x, weight, bias, pk, ps, size, alpha, beta, k, bool(relu))


def max_pool_nhwc(x: Tensor, kernel_size: int = 3, stride: int = 2, *, lrn=None) -> Tensor:
    """``max_pool2d(local_response_norm(x), kernel_size, stride, ceil_mode=True)`` (no padding; the
    LRN optional, applied to every tap in the same pass).

    Args:
        x: (N, C, H, W) float32/float16/bfloat16, any strides.
        lrn: None, an ``nn.LocalResponseNorm``, or (size, alpha, beta, k).
    Returns:
        (N, C, PH, PW) channels_last.
    Raises:
        TypeError / ValueError naming the argument; ValueError when the output would be empty.
    """
    size, alpha, beta, k = _lrn_tuple(lrn)
    return torch.ops.googlenet_fast.max_pool_nhwc_triton(x, int(kernel_size), int(stride), size, alpha, beta, k)


def avgpool_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """GoogLeNet's head in one launch: ``linear(flatten(adaptive_avg_pool2d(x, 1), 1), weight,
    bias)`` (eval: dropout is the identity).

    Args:
        x: (N, C, H, W) float32/float16/bfloat16, any strides (channels_last is the fast one).
        weight: (num_classes, C); bias: (num_classes,) or None; x's dtype and device.
    Returns:
        (N, num_classes), contiguous, x's dtype (the pooled features are rounded to x's dtype
        before the product, as torch's own layers do; fp32 accumulation).
    """
    return torch.ops.googlenet_fast.avgpool_linear_triton(x, weight, bias)


# ----------------------------------------------------------------------------------------------
# The whole network

def _block_params(block, dtype):
    """(weight, bias) of a BasicConv2d (BatchNorm folded: folded_params) or a ConvReLU."""
    if hasattr(block, "folded_params"):
        return block.folded_params(dtype)
    conv = block.conv
    return conv.weight.to(dtype), (None if conv.bias is None else conv.bias.to(dtype))


def _pool_args(pool):
    k, s = pool.kernel_size, pool.stride
    k = k[0] if isinstance(k, (tuple, list)) else k
    s = s[0] if isinstance(s, (tuple, list)) else s
    return int(k), int(s)


def _network_device(x: Tensor) -> bool:
    """x is where the network kernels run: CUDA, or the CPU under Triton's interpreter
    (benchmarks/host_overhead.py adds meta, as CUDA)."""
    return x.device.type == "cuda" or (x.device.type == "cpu" and interpreting())


def fused_forward_supported(model, x: Tensor) -> Optional[str]:
    """None when :func:`fused_forward_triton` computes ``model(x)`` for this model and input;
    otherwise why not (a sentence).  Checks: eval mode; the layers are the ones GoogLeNet builds
    (plain conv blocks with the stem's kernel sizes/strides, ceil-mode max pools without padding,
    square kernels, LRNs where the paper variant has them, Inception modules that fold);
    x a CUDA tensor (or CPU under TRITON_INTERPRET=1) of a supported dtype, no autocast; no
    gradient required (grad mode off, or neither x nor a parameter requires grad: these ops
    have no autograd formula)."""
    import torch.nn as nn
    if getattr(model, "training", False):
        return "the model is in train mode (the fused forward is eval only)"
    variant = getattr(model, "variant", None)
    if variant not in ("torchvision", "paper"):
        return f"unknown variant {variant!r}"
    if not isinstance(x, Tensor) or x.dim() != 4:
        return "x is not a 4-D tensor"
    if not _network_device(x):
        return f"x is on {x.device} (CUDA, or CPU under TRITON_INTERPRET=1)"
    if program.autocast_enabled(x):
        return "autocast is enabled"
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in model.parameters())):
        return ("gradients are required (the network kernels have no backward): run under "
                "torch.no_grad() / torch.inference_mode()")
    try:
        dtype = model.conv1.conv.weight.dtype
        if dtype not in SUPPORTED_DTYPES:
            return f"parameters are {dtype}"
        for name, k, s, p in (("conv1", 7, 2, 3), ("conv2", 1, 1, 0), ("conv3", 3, 1, 1)):
            block = getattr(model, name)
            conv = block.conv
            if type(conv) is not nn.Conv2d or conv.kernel_size != (k, k) or conv.stride != (s, s) \
                    or conv.padding != (p, p) or conv.dilation != (1, 1) or conv.groups != 1 \
                    or conv.padding_mode != "zeros":
                return f"{name} is not the network's {k}x{k}/{s} convolution"
            if type(block).__name__ not in ("BasicConv2d", "ConvReLU"):
                return f"{name} is a {type(block).__name__}"
            if type(block).__name__ == "BasicConv2d" and not block._can_fold():
                return f"{name}'s BatchNorm cannot be folded"
        for name in ("maxpool1", "maxpool2", "maxpool3", "maxpool4"):
            pool = getattr(model, name)
            if type(pool) is not nn.MaxPool2d or not pool.ceil_mode or pool.padding not in (0, (0, 0)) \
                    or pool.dilation not in (1, (1, 1)) or (isinstance(pool.kernel_size, tuple)
                                                           and pool.kernel_size[0] != pool.kernel_size[1]) \
                    or (isinstance(pool.stride, tuple) and pool.stride[0] != pool.stride[1]):
                return f"{name} is not a square ceil-mode max pool without padding"
            k, s = _pool_args(pool)
            if name != "maxpool1" and not (variant == "paper" and name == "maxpool2") \
                    and not 1 <= s <= k <= MAX_POOL_K:
                return (f"{name} is a {k}x{k}/{s} pool; the pooled Inception op that computes it takes "
                        f"1 <= stride <= kernel_size <= {MAX_POOL_K}")
        if variant == "paper":
            for name in ("lrn1", "lrn2"):
                if type(getattr(model, name)) is not nn.LocalResponseNorm:
                    return f"{name} is not an nn.LocalResponseNorm"
        for name in ("inception3a", "inception3b", "inception4a", "inception4b", "inception4c",
                     "inception4d", "inception4e", "inception5a", "inception5b"):
            m = getattr(model, name)
            if not hasattr(m, "_can_fuse") or not m._can_fuse():
                return f"{name} is not a module the fused Inception op computes"
            if hasattr(m, "_bns_in_eval") and not m._bns_in_eval():
                return f"{name} has a BatchNorm in train mode (batch statistics: not foldable)"
        if type(model.avgpool) is not nn.AdaptiveAvgPool2d or model.avgpool.output_size not in (1, (1, 1)):
            return "avgpool is not a global average pool"
        if type(model.fc) is not nn.Linear or type(model.dropout) is not nn.Dropout:
            return "the head is not dropout + nn.Linear"
    except AttributeError as e:
        return f"not a GoogLeNet ({e})"
    return None


_NETWORK_OPS = ("conv_stem_triton", "conv_nhwc_triton", "max_pool_nhwc_triton", "inception_triton",
                "inception_pooled_triton")
_OPS_CACHE = {}


def _network_ops(x: Tensor) -> dict:
    """The callables the fused forward runs, by op name: in eager on a GPU the ops' Python bodies
    (:func:`eager_direct`: no custom-op dispatch, ~10 us a call saved), otherwise the registered
    ops (torch.compile, tracing, the interpreter's CPU tensors)."""
    direct = eager_direct(x)
    ops = _OPS_CACHE.get(direct)
    if ops is None:
        ops = _OPS_CACHE[direct] = {
            n: EAGER_IMPLS[f"googlenet_fast::{n}"] if direct else getattr(torch.ops.googlenet_fast, n).default
            for n in _NETWORK_OPS}
    return ops


def can_measure(x: Tensor) -> bool:
    """Whether a one-time path measurement may run now: a CUDA tensor, eager (not compiling, not
    tracing), not capturing a CUDA graph.  Used by every path choice of the network
    (googlenet_fast.ops.fused_network_forward's, conv1's and the transition pools')."""
    return (x.device.type == "cuda" and not torch.compiler.is_compiling()
            and not torch.cuda.is_current_stream_capturing() and eager_direct(x))


def _measured(x: Tensor, key, options, default: str, run, measure: bool):
    """``run(option)`` for the option a one-time measurement found fastest (cached under
    ``key(device_name)``; see autotune_table.pick_path); ``run(default)`` off CUDA.  The
    measurement runs are not recorded into a launch program; the choice is (program.choice)."""
    if x.device.type != "cuda":
        return run(default)
    from ... import autotune_table
    k = key(torch.cuda.get_device_name(x.device))

    def measured_run(option):
        with program.paused():
            return run(option)

    choice = autotune_table.pick_path(k, options, measured_run, can_measure=measure, default=default)
    if autotune_table.cached_choice(k) == choice:
        program.choice(k, choice)
    else:  # the default, not cached (no measurement allowed): replaying would not re-ask
        program.unrecordable(f"path {k} not measured")
    return run(choice)


def _conv1_cudnn(x: Tensor, w: Tensor, b: Optional[Tensor]) -> Tensor:
    """conv1 7x7/2 + ReLU by cuDNN on channels_last x; fp32 as our kernels compute it (TF32 only
    when torch's matmul flags allow it)."""
    xc = x.contiguous(memory_format=torch.channels_last)
    if x.dtype != torch.float32:
        return F.relu(F.conv2d(xc, w, b, 2, 3))
    cudnn = torch.backends.cudnn
    prev = cudnn.allow_tf32
    cudnn.allow_tf32 = _allow_tf32()
    try:
        return F.relu(F.conv2d(xc, w, b, 2, 3))
    finally:
        cudnn.allow_tf32 = prev


def _library_head(y: Tensor, w: Tensor, b: Optional[Tensor]) -> Tensor:
    """GoogLeNet's head on CUDA: ATen's global average pool + linear (cuBLAS)."""
    return F.linear(F.adaptive_avg_pool2d(y, 1).flatten(1), w, b)


def _program_flags() -> tuple:
    """The process state that changes a forward's launch arguments or kernels: TF32, autotuning,
    interpreter mode, the FORCE_INT64 / FORCE_TILE test flags (launch programs compare it)."""
    from . import plan as _plan
    return (_allow_tf32(), autotuning(), interpreting(), _plan.FORCE_INT64, _plan.FORCE_TILE, FORCE_INT64)


def _device_name(x: Tensor) -> str:
    return torch.cuda.get_device_name(x.device) if x.device.type == "cuda" else x.device.type


def _input(model, x: Tensor) -> Tensor:
    """x as conv1 reads it: the model's input transform, the parameters' dtype."""
    x = model._transform_input(x)
    dtype = model.conv1.conv.weight.dtype
    return x if x.dtype == dtype else x.to(dtype)


def _replay(model, x: Tensor, choice: bool = False) -> Optional[Tensor]:
    """``model(x)`` by the model's launch program for x's signature (program.py), or None when
    it has none that is valid now.  ``choice``: also require that the network path is what
    googlenet_fast.autotune_table holds for this forward (backend "auto")."""
    prog = program.lookup(model, x, _program_flags)
    if prog is None:
        return None
    if choice:
        from ... import autotune_table
        cached = autotune_table.cached_choice(prog.network_key)
        if cached != "network" and (cached is not None or can_measure(x)):
            return None
    xt = _input(model, x)
    if xt is not x and program.signature(xt) != prog.x_sig:
        return None
    if prog.interpret:
        with _single_threaded_blas():
            return prog.run(xt)
    return prog.run(xt)


def forward_or_none(model, x: Tensor, forced: bool = False) -> Optional[Tensor]:
    """What GoogLeNet's eager forward runs for a CUDA x (googlenet_fast.ops.fused_network_forward):
    ``model(x)`` on the network path, or None where it does not apply (fused_forward_supported)
    or where the module path measured faster (``forced``: $GOOGLENET_FAST_BACKEND=triton, no
    choice).  A valid launch program answers first, without any of those checks."""
    y = _replay(model, x, choice=not forced)
    if y is not None:
        return y
    if fused_forward_supported(model, x) is not None:
        return None
    if not forced:
        from ... import autotune_table
        n, _, h, w = x.shape
        key = autotune_table.network_key(model.variant, n, h, w, model.conv1.conv.weight.dtype, _device_name(x))

        def run(path):
            if path == "network":
                fused_forward_triton(model, x)
            else:
                model._forward_modules(x)

        if autotune_table.pick_network_path(key, run, can_measure=can_measure(x)) == "modules":
            return None
    return fused_forward_triton(model, x)


def launch_program(model, x: Tensor) -> Optional["program.Program"]:
    """The model's valid launch program for x (what the next eager forward would replay), or None."""
    return program.lookup(model, x, _program_flags)


def fused_forward_triton(model, x: Tensor) -> Tensor:
    """Eval-mode ``model(x)`` of a googlenet_fast GoogLeNet (either variant) with the Triton
    kernels: conv1 (:func:`conv_stem`, reading x in place), maxpool1 [+ lrn1] fused into conv2's
    loader, conv3, the head (:func:`avgpool_linear`), and ``googlenet_fast::inception_triton``
    (what ``googlenet_fast.ops.inception(..., backend="triton")`` runs) on each module's
    ``folded_params(dtype)``, except that inception4a and inception5a (and inception3a in the
    torchvision variant) run ``googlenet_fast::inception_pooled_triton`` on the pre-pool map,
    maxpool3 / maxpool4 (/ maxpool2) computed in their stage-1 loaders.  The paper's lrn2 ->
    maxpool2 is one :func:`max_pool_nhwc` pass.  On CUDA each pooled module may instead run the
    pool kernel then the plain op, whichever a one-time measurement per shape found faster
    (googlenet_fast.autotune_table.pick_path; no measurement while compiling or capturing: the
    pooled op unless a measurement chose otherwise).  The head: ATen's average pool + linear on CUDA
    (torchvision's own head), :func:`avgpool_linear` under the interpreter.  23 kernels
    (torchvision), 24 (paper), plus whatever the folded-weight caches rebuild.

    Eager calls (not compiling, tracing or capturing a CUDA graph) record a launch program per
    input signature on their first call and replay it on later ones while the model is
    unchanged (backends/triton/program.py): the same launches without the checks, folded-weight
    cache keys and launch plans.

    Args:
        model: a GoogLeNet in eval mode (aux heads, unused in eval, are ignored).
        x: (N, 3, H, W), H, W >= model.min_input_size, any strides; CUDA (or CPU under
            TRITON_INTERPRET=1).  Cast to the parameters' dtype (float32/float16/bfloat16).
    Returns:
        logits (N, num_classes) in the parameters' dtype.
    Raises:
        ValueError when :func:`fused_forward_supported` says no; the model's own input checks.
    """
    y = _replay(model, x)
    if y is not None:
        return y
    why = fused_forward_supported(model, x)
    if why is not None:
        raise ValueError(f"fused_forward_triton: {why}")
    model._check_input(x)
    xt = _input(model, x)
    if not program.replayable(xt):
        return _forward(model, xt)
    with program.recording(xt) as rec, (program.no_hop() if eager_direct(xt) else contextlib.nullcontext()):
        y = _forward(model, xt)
    prog, _ = rec.program(y, _program_flags())
    if prog is not None:
        from ... import autotune_table
        n, _, h, w = x.shape
        prog.network_key = autotune_table.network_key(model.variant, n, h, w, xt.dtype, _device_name(x))
        prog.x_sig = program.signature(xt)
        program.store(model, x, prog)
    return y


def _forward(model, x: Tensor) -> Tensor:
    """The network's launches on x (transformed and cast: see :func:`fused_forward_triton`)."""
    dtype = x.dtype
    paper = model.variant == "paper"
    ops = _network_ops(x)
    inception, pooled_op = ops["inception_triton"], ops["inception_pooled_triton"]

    measure = can_measure(x)

    def conv1(x, w, b):
        """conv1 7x7/2 + ReLU: the Triton gather kernel (reads x in place, any layout) or cuDNN on
        channels_last x, whichever a one-time CUDA-event measurement per shape found faster (on the
        H200 at batch 256 the gather kernel took 1.35 ms, ~7% of the bf16 ceiling)."""
        def run(path):
            if path == "triton":
                return ops["conv_stem_triton"](x, w, b, 2, 3, True)
            return program.call(_conv1_cudnn, x, w, b)

        from ... import autotune_table as at
        return _measured(x, lambda dev: at.stem_key(x.shape[0], x.shape[2], x.shape[3], x.dtype, dev),
                         at.STEM_PATHS, "triton", run, measure)

    def pooled_inception(y, name, pool):
        """maxpool -> module: the pooled op (the pool in stage 1's loaders) or the pool kernel then
        the plain op, whichever measured faster for this shape (cached; see autotune_table).  On
        the H200 (2026-12-04) the pooled op won for 4a at batch 1 (0.225 vs 0.302 ms) and lost at
        batch 256 (0.871 vs 0.684 ms)."""
        ws = getattr(model, name).folded_params(dtype)
        k, s = _pool_args(pool)

        def run(path):
            if path == "pooled":
                return pooled_op(y, *ws, True, k, s)
            return inception(ops["max_pool_nhwc_triton"](y, k, s, 0, 0.0, 0.0, 1.0), *ws, True)

        from ... import autotune_table as at
        cfg = "x".join(str(v) for v in (y.shape[1], ws[0].shape[0], ws[2].shape[0], ws[4].shape[0],
                                         ws[6].shape[0], ws[8].shape[0], ws[8].shape[2], ws[10].shape[0]))
        return _measured(y, lambda dev: at.pooled_key(cfg, y.shape[0], y.shape[2], y.shape[3], (k, s), y.dtype, dev),
                         at.POOL_PATHS, "pooled", run, measure)

    def conv(y, block, pool=None, lrn=None):
        w, b = _block_params(block, dtype)
        pk, ps = pool if pool else (0, 0)
        size, alpha, beta, k = _lrn_tuple(lrn)
        return ops["conv_nhwc_triton"](y, w, b, pk, ps, size, alpha, beta, k, True)

    w, b = _block_params(model.conv1, dtype)
    y = conv1(x, w, b)
    y = conv(y, model.conv2, pool=_pool_args(model.maxpool1), lrn=model.lrn1 if paper else None)
    y = conv(y, model.conv3)
    if paper:  # lrn2 -> maxpool2 in one pass, then the plain module
        y = ops["max_pool_nhwc_triton"](y, *_pool_args(model.maxpool2), *_lrn_tuple(model.lrn2))
        y = inception(y, *model.inception3a.folded_params(dtype), True)
    else:
        y = pooled_inception(y, "inception3a", model.maxpool2)
    y = inception(y, *model.inception3b.folded_params(dtype), True)
    y = pooled_inception(y, "inception4a", model.maxpool3)
    for name in ("inception4b", "inception4c", "inception4d", "inception4e"):
        y = inception(y, *getattr(model, name).folded_params(dtype), True)
    y = pooled_inception(y, "inception5a", model.maxpool4)
    y = inception(y, *model.inception5b.folded_params(dtype), True)
    fc = model.fc
    w, b = fc.weight.to(dtype), (None if fc.bias is None else fc.bias.to(dtype))
    if y.device.type != "cpu":  # CUDA (and meta, as CUDA): the library head
        return program.call(_library_head, y, w, b)
    return avgpool_linear(y, w, b)
