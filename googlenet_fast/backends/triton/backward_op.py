"""The fused Triton backward of the Inception op (kernels in backward.py): its launches, the
registered op ``googlenet_fast::inception_backward_triton`` and the autograd registration of the
forward op."""
from typing import List, NamedTuple, Optional

import torch
from torch import Tensor

from . import configs, plan as _plan
from ...arg_checks import check_like_x
from ..autograd_ctx import NUM_GRADS, save_inputs
from .checks import SUPPORTED_DTYPES, _WEIGHT_NAMES, _shape
from .forward_op import OP_NAME
from .modes import _mode_module, interpreting
from .plan import RED_ALIGN, _allow_tf32, _merged_1x1, _out_memory_format, _single_threaded_blas, _span, _unit_k

# ----------------------------------------------------------------------------------------------
# Backward (backward.py's kernels): googlenet_fast::inception_backward_triton

BWD_OP_NAME = "googlenet_fast::inception_backward_triton"
(_GX, _GW1, _GB1, _GW3R, _GB3R, _GW3, _GB3, _GW5R, _GB5R, _GW5, _GB5, _GWP, _GBP) = range(NUM_GRADS)
BWD_DTYPES = SUPPORTED_DTYPES + (torch.float64,)  # float64: under the interpreter only
_BWD_MODULES = {}


def backward_kernels(interpret: Optional[bool] = None):
    """The backward.py module built for the current (or given) interpreter mode."""
    if interpret is None:
        interpret = interpreting()
    return _mode_module("backward", "inception_bwd_dx_kernel", interpret, _BWD_MODULES)


class BackwardPlan(NamedTuple):
    """What one backward call computes (from output_mask, the biases present and relu)."""
    g: tuple      # 13 bools: gradient i is returned
    dY1: bool     # dA's dY1 columns
    dR3: bool     # dA's dR3 columns (KxK dgrad of branch 2)
    dR5: bool
    R: bool       # recompute the reduce activations
    dA: bool      # the [dY1 | dR3 | dR5] matrix
    x: bool       # x's values are read


def backward_plan(mask, biases_present, relu: bool) -> BackwardPlan:
    """``biases_present``: six bools (b_1x1, b_3x3red, b_3x3, b_5x5red, b_5x5, b_pool_proj).
    Keep in sync with make_plan in csrc/cpu/inception_backward_cpu.cpp (same rule for x)."""
    present = dict(zip((_GB1, _GB3R, _GB3, _GB5R, _GB5, _GBP), biases_present))
    g = tuple(bool(mask[i]) and present.get(i, True) for i in range(NUM_GRADS))
    dR3 = g[_GX] or g[_GW3R] or g[_GB3R]
    dR5 = g[_GX] or g[_GW5R] or g[_GB5R]
    dY1 = g[_GX] or g[_GW1] or g[_GB1]
    R = (relu and (dR3 or dR5)) or g[_GW3] or g[_GW5]
    x = R or g[_GX] or g[_GW1] or g[_GW3R] or g[_GW5R] or g[_GWP]
    return BackwardPlan(g, dY1, dR3, dR5, R, dY1 or dR3 or dR5, x)


def backward_needs_x(mask, relu: bool) -> bool:
    """Whether the backward reads x's values for the gradients in ``mask`` (biases counted as
    present): what the autograd must save."""
    return backward_plan(mask, (True,) * 6, relu).x


def _bwd_alloc(x, weights, mask):
    """The requested gradients, allocated as the C++ kernel (and its fake) does: each like its
    tensor, in its suggested memory format."""
    full = (x,) + tuple(weights)
    return [torch.empty(t.shape, dtype=t.dtype, device=t.device, memory_format=_out_memory_format(t))
            for i, t in enumerate(full) if mask[i] and t is not None]


def _check_backward_args(grad_out, x, weights, relu, out, output_mask):
    if len(output_mask) != NUM_GRADS:
        raise ValueError(f"output_mask: expected {NUM_GRADS} booleans, got {len(output_mask)}")
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"x: expected a 4-D tensor (N, C, H, W), got {getattr(x, 'shape', x)}")
    if x.dtype not in BWD_DTYPES:
        raise TypeError(f"x: the triton backward supports float32, float16 and bfloat16, got {x.dtype}")
    if x.dtype == torch.float64 and x.device.type == "cuda":
        raise TypeError("x: float64 runs only under Triton's interpreter (CPU tensors); use "
                        "backend='cpu' or 'reference' for float64 on CUDA")
    dev = x.device.type
    if dev == "cpu" and not interpreting():
        raise ValueError("x: the triton backward needs CUDA tensors, got x on cpu; Triton runs CPU "
                         "tensors only under its interpreter (TRITON_INTERPRET=1)")
    for name, t in list(zip(_WEIGHT_NAMES, weights)) + [("grad_out", grad_out), ("out", out)]:
        if t is not None:
            check_like_x(name, t, x)
    _shape(x, *(weights[i] for i in (0, 2, 4, 6, 8, 10)))
    n, _, h, w = x.shape
    c = weights[0].shape[0] + weights[4].shape[0] + weights[8].shape[0] + weights[10].shape[0]
    for name, t in (("grad_out", grad_out), ("out", out)):
        if t is not None and tuple(t.shape) != (n, c, h, w):
            raise ValueError(f"{name}: expected shape {[n, c, h, w]} (the forward output's), got {list(t.shape)}")
    if out is None and relu and any(output_mask):
        raise ValueError("out: the forward output is required when relu=True (its ReLU masks), got None")


# When a list: _bwd_run records (kind, kernel, args, tile, grid) instead of launching (and
# _backward_launch runs on meta tensors): backward_launches() for the AOT compile tests.
_BWD_RECORD = None


def _bwd_run(fn, grid, args, tile, interpret, kind):
    from torch.library import wrap_triton
    if _BWD_RECORD is not None:
        _BWD_RECORD.append((kind, fn, dict(args), tile, grid))
        return
    meta = dict(BLOCK_M=tile.BLOCK_M, BLOCK_N=tile.BLOCK_N, BLOCK_K=tile.BLOCK_K)
    if interpret:
        fn[grid](**args, **meta)
    else:
        wrap_triton(fn)[grid](**args, **meta, num_warps=tile.num_warps, num_stages=tile.num_stages)


def _cdiv(a, b):
    return -(-a // b)


def _backward_launch(grad_out, x, weights, relu, out, output_mask, grads, interpret):
    """Compute the requested gradients into ``grads`` (as _bwd_alloc returned them)."""
    w1, b1, w3r, b3r, w3, b3, w5r, b5r, w5, b5, wp, bp = weights
    full = (x,) + tuple(weights)
    plan = backward_plan(output_mask, tuple(t is not None for t in (b1, b3r, b3, b5r, b5, bp)), relu)
    result = {}
    it = iter(grads)
    for i, t in enumerate(full):
        if output_mask[i] and t is not None:
            result[i] = next(it)
    if (x.device.type == "meta" and _BWD_RECORD is None) or not result:
        return
    n, cin, h, wd = x.shape
    P = n * h * wd
    if P == 0 or cin == 0:
        for t in result.values():
            t.zero_()
        return
    k = backward_kernels(interpret)
    c1, r3, r5, cp = w1.shape[0], w3r.shape[0], w5r.shape[0], wp.shape[0]
    c3, c5, k3, k5 = w3.shape[0], w5.shape[0], w3.shape[2], w5.shape[2]
    nm = c1 + r3 + r5
    dt = x.dtype
    f64 = dt == torch.float64
    acc_dt = torch.float64 if f64 else torch.float32
    half = dt in (torch.float16, torch.bfloat16)
    tile_of = (lambda kind, rows, cols, kk: configs.bwd_interpret_tile(kind, P, rows, cols, kk)) if interpret \
        else (lambda kind, rows, cols, kk: configs.bwd_tile(kind, half))
    dev = x.device
    dummy = x if x.numel() else torch.empty(1, dtype=dt, device=dev)
    o = out if (relu and out is not None) else grad_out
    rr = _cdiv(r3 + r5, RED_ALIGN) * RED_ALIGN
    red = torch.empty((P, rr), dtype=dt, device=dev) if plan.R else dummy
    # dA's columns not computed (a partial request) are zeros: the sibling wgrad GEMM reads every
    # row block of it, and garbage there could overflow (the rows are not returned).
    alloc = torch.empty if (plan.dY1 and plan.dR3 and plan.dR5) else torch.zeros
    da = alloc((P, nm), dtype=dt, device=dev) if plan.dA else dummy
    gx = plan.g[_GX]
    dpool = torch.empty((P, cin), dtype=acc_dt, device=dev) if gx else dummy
    code = torch.empty((P, cin), dtype=torch.int8, device=dev) if gx else dummy
    w1m, w3rm, w5rm, wpm = (_unit_k(t) for t in (w1, w3r, w5r, wp))
    wm = _merged_1x1(w1m, w3rm, w5rm)
    if dev.type != "cpu":
        w3 = w3.contiguous(memory_format=torch.channels_last)
        w5 = w5.contiguous(memory_format=torch.channels_last)
    dx = result.get(_GX)
    big = max(_span(grad_out), _span(o), _span(x), _span(dx) if dx is not None else 0,
              P * max(nm, cin, rr), wm.numel(), _span(wpm), w3.numel(), w5.numel())
    int64 = _plan.FORCE_INT64 or big >= 2 ** 31
    common = dict(INT64=bool(int64), ALLOW_TF32=_allow_tf32() and dt == torch.float32,
                  UPCAST=bool(interpret and dt == torch.bfloat16), F64=bool(f64))
    sg, so, sx = grad_out.stride(), o.stride(), x.stride()
    gstr = dict(sgn=sg[0], sgc=sg[1], sgh=sg[2], sgw=sg[3], son=so[0], soc=so[1], soh=so[2], sow=so[3])
    xstr = dict(sxn=sx[0], sxc=sx[1], sxh=sx[2], sxw=sx[3])
    ctx = _single_threaded_blas() if interpret else __import__("contextlib").nullcontext()
    with ctx:
        # 0. reduce activations
        if plan.R:
            wr = wm[c1:]
            t = tile_of("reduce", 0, r3 + r5, cin)
            bb3, bb5 = (b if b is None or b.stride(0) == 1 else b.contiguous() for b in (b3r, b5r))
            args = dict(x_ptr=x, wr_ptr=wr, b3r_ptr=dummy if bb3 is None else bb3,
                        b5r_ptr=dummy if bb5 is None else bb5, red_ptr=red,
                        P=P, H=h, W=wd, CIN=cin, R3=r3, NR=r3 + r5, RR=rr, **xstr, swr=wr.stride(0),
                        HAS_B3R=bb3 is not None, HAS_B5R=bb5 is not None, RELU=bool(relu), **common)
            grid = (_cdiv(P, t.BLOCK_M) * _cdiv(r3 + r5, t.BLOCK_N),)
            _bwd_run(k.inception_bwd_reduce_kernel, grid, args, t, interpret, "reduce")
        # 1. dA and dPooled
        s3, s5 = w3.stride(), w5.stride()
        dg_args = dict(g_ptr=grad_out, o_ptr=o, x_ptr=x, red_ptr=red, w3_ptr=w3, w5_ptr=w5, wp_ptr=wpm,
                       da_ptr=da, dpool_ptr=dpool, code_ptr=code,
                       P=P, H=h, W=wd, CIN=cin, C1=c1, R3=r3, R5=r5, C3=c3, C5=c5, CP=cp, NM=nm, RR=rr,
                       OFF_3=c1, OFF_5=c1 + c3, OFF_P=c1 + c3 + c5, **gstr, **xstr,
                       sw3o=s3[0], sw3i=s3[1], sw3h=s3[2], sw3w=s3[3],
                       sw5o=s5[0], sw5i=s5[1], sw5h=s5[2], sw5w=s5[3], swp=wpm.stride(0),
                       K3=k3, K5=k5, RELU=bool(relu), **common)
        if plan.dA:
            t = tile_of("dgrad", 0, max(c1 if plan.dY1 else 0, r3 if plan.dR3 else 0,
                                           r5 if plan.dR5 else 0), max(c3, c5))
            nt1 = _cdiv(c1, t.BLOCK_N) if plan.dY1 else 0
            nt3 = _cdiv(r3, t.BLOCK_N) if plan.dR3 else 0
            nt5 = _cdiv(r5, t.BLOCK_N) if plan.dR5 else 0
            if nt1 + nt3 + nt5:
                grid = (_cdiv(P, t.BLOCK_M) * (nt1 + nt3 + nt5),)
                _bwd_run(k.inception_bwd_dgrad_kernel, grid, dict(dg_args, NT1=nt1, NT3=nt3, NT5=nt5, MODE=0),
                         t, interpret, "dgrad")
        if gx:
            t = tile_of("dpool", 0, cin, cp)
            grid = (_cdiv(P, t.BLOCK_M) * _cdiv(cin, t.BLOCK_N),)
            _bwd_run(k.inception_bwd_dgrad_kernel, grid, dict(dg_args, NT1=0, NT3=0, NT5=0, MODE=1),
                     t, interpret, "dpool")
            # 2. dx
            t = tile_of("dx", 0, cin, nm)
            sd = dx.stride()
            args = dict(da_ptr=da, wm_ptr=wm, dpool_ptr=dpool, code_ptr=code, dx_ptr=dx,
                        P=P, H=h, W=wd, CIN=cin, NM=nm, swm=wm.stride(0),
                        sdn=sd[0], sdc=sd[1], sdh=sd[2], sdw=sd[3], HAS_POOL=True, **common)
            grid = (_cdiv(P, t.BLOCK_M) * _cdiv(cin, t.BLOCK_N),)
            _bwd_run(k.inception_bwd_dx_kernel, grid, args, t, interpret, "dx")
        # 3. weight and bias gradients
        wg_args = dict(g_ptr=grad_out, o_ptr=o, x_ptr=x, da_ptr=da, red_ptr=red,
                       P=P, H=h, W=wd, CIN=cin, NM=nm, RR=rr, CP=cp, R3=r3, R5=r5, C3=c3, C5=c5,
                       OFF_3=c1, OFF_5=c1 + c3, OFF_P=c1 + c3 + c5, **gstr, **xstr,
                       K3=k3, K5=k5, RELU=bool(relu), **common)
        g = plan.g

        if any(g[i] for i in (_GW1, _GB1, _GW3R, _GB3R, _GW5R, _GB5R)):
            t = tile_of("wgrad", nm, cin, P)
            bias_only = not (g[_GW1] or g[_GW3R] or g[_GW5R])
            nt_n = 1 if bias_only else _cdiv(cin, t.BLOCK_N)
            ws = _wgrad_launch(k, t, 0, _cdiv(nm, t.BLOCK_M) * nt_n, nm * cin + nm, wg_args, interpret,
                               dict(NT_N=nt_n, NT3=0, OW_A=0, OB_A=nm * cin, BIAS_ONLY=bias_only),
                               P, acc_dt, dev)
            wmg = ws[:nm * cin].view(nm, cin)
            for gi, bi, r0, r1 in ((_GW1, _GB1, 0, c1), (_GW3R, _GB3R, c1, c1 + r3), (_GW5R, _GB5R, c1 + r3, nm)):
                if gi in result:
                    result[gi].copy_(wmg[r0:r1].view(r1 - r0, cin, 1, 1))
                if bi in result:
                    result[bi].copy_(ws[nm * cin + r0:nm * cin + r1])
        if g[_GWP] or g[_GBP]:
            t = tile_of("wgrad_pool", cp, cin, P)
            nt_n = _cdiv(cin, t.BLOCK_N) if g[_GWP] else 1
            ws = _wgrad_launch(k, t, 1, _cdiv(cp, t.BLOCK_M) * nt_n, cp * cin + cp, wg_args, interpret,
                               dict(NT_N=nt_n, NT3=0, OW_A=0, OB_A=cp * cin, BIAS_ONLY=not g[_GWP]),
                               P, acc_dt, dev)
            if _GWP in result:
                result[_GWP].copy_(ws[:cp * cin].view(cp, cin, 1, 1))
            if _GBP in result:
                result[_GBP].copy_(ws[cp * cin:])
        do3, do5 = g[_GW3] or g[_GB3], g[_GW5] or g[_GB5]
        if do3 or do5:
            t = tile_of("wgrad_kxk", max(c3 if do3 else 0, c5 if do5 else 0),
                        max(r3 if do3 else 0, r5 if do5 else 0), P)
            # Bias gradients only (no KxK weight gradient, so R may not exist): the first tap's
            # tiles, which sum dY without reading R.
            bias_only = not (g[_GW3] or g[_GW5])
            nt3 = (1 if bias_only else k3 * k3) * _cdiv(c3, t.BLOCK_M) * _cdiv(r3, t.BLOCK_N) if do3 else 0
            nt5 = (1 if bias_only else k5 * k5) * _cdiv(c5, t.BLOCK_M) * _cdiv(r5, t.BLOCK_N) if do5 else 0
            ow5 = c3 * r3 * k3 * k3
            ob3 = ow5 + c5 * r5 * k5 * k5
            ws = _wgrad_launch(k, t, 2, nt3 + nt5, ob3 + c3 + c5, wg_args, interpret,
                               dict(NT_N=1, NT3=nt3, OW_3=0, OW_5=ow5, OB_3=ob3, OB_5=ob3 + c3,
                                    BIAS_ONLY=bias_only), P, acc_dt, dev)
            if _GW3 in result:
                result[_GW3].copy_(ws[:ow5].view(c3, r3, k3, k3))
            if _GW5 in result:
                result[_GW5].copy_(ws[ow5:ob3].view(c5, r5, k5, k5))
            if _GB3 in result:
                result[_GB3].copy_(ws[ob3:ob3 + c3])
            if _GB5 in result:
                result[_GB5].copy_(ws[ob3 + c3:])


def _wgrad_launch(k, t, mode, tiles, size, wg_args, interpret, extra, P, acc_dt, dev):
    """One weight-gradient launch (split-K over pixels); returns the partials summed in split
    order, a 1-D tensor of ``size``."""
    split = configs.bwd_split(P, tiles, t.BLOCK_K, interpret)
    chunk = _cdiv(_cdiv(P, split), t.BLOCK_K) * t.BLOCK_K
    split = _cdiv(P, chunk)
    ws = torch.empty((split, size), dtype=acc_dt, device=dev)
    offs = dict(OW_A=0, OB_A=0, OW_3=0, OW_5=0, OB_3=0, OB_5=0, NT_N=1, NT3=0, BIAS_ONLY=False)
    offs.update(extra)
    args = dict(wg_args, ws_ptr=ws, WS_STRIDE=size, K_CHUNK=chunk, MODE=mode, **offs)
    args["INT64"] = bool(args["INT64"] or split * size >= 2 ** 31)
    _bwd_run(k.inception_bwd_wgrad_kernel, (tiles, split), args, t, interpret, ("wgrad", "wgrad_pool", "wgrad_kxk")[mode])
    return ws[0] if split == 1 else ws.sum(0)


def backward_launches(grad_out, x, weights, relu, out, output_mask):
    """The backward's launches for these (meta) tensors without running them: a list of
    (kind, kernel, arguments, tile, grid), kernels built for the GPU (tests/test_triton_compile.py
    compiles each for sm_90 and sm_80)."""
    global _BWD_RECORD
    _BWD_RECORD = []
    try:
        grads = _bwd_alloc(x, weights, output_mask)
        _backward_launch(grad_out, x, weights, relu, out, output_mask, grads, interpret=False)
        return _BWD_RECORD
    finally:
        _BWD_RECORD = None


@torch.library.custom_op("googlenet_fast::_inception_backward_triton_interpreted", mutates_args=())
def _inception_backward_triton_interpreted(
        grad_out: Tensor, x: Tensor, w_1x1: Tensor, b_1x1: Optional[Tensor], w_3x3red: Tensor,
        b_3x3red: Optional[Tensor], w_3x3: Tensor, b_3x3: Optional[Tensor], w_5x5red: Tensor,
        b_5x5red: Optional[Tensor], w_5x5: Tensor, b_5x5: Optional[Tensor], w_pool_proj: Tensor,
        b_pool_proj: Optional[Tensor], relu: bool, out: Optional[Tensor],
        output_mask: List[bool]) -> List[Tensor]:
    """The backward's launches under Triton's interpreter (opaque to tracing; CPU tensors)."""
    weights = (w_1x1, b_1x1, w_3x3red, b_3x3red, w_3x3, b_3x3, w_5x5red, b_5x5red, w_5x5, b_5x5,
               w_pool_proj, b_pool_proj)
    grads = _bwd_alloc(x, weights, output_mask)
    _backward_launch(grad_out, x, weights, relu, out, output_mask, grads, interpret=True)
    return grads


@_inception_backward_triton_interpreted.register_fake
def _(grad_out, x, w_1x1, b_1x1, w_3x3red, b_3x3red, w_3x3, b_3x3, w_5x5red, b_5x5red, w_5x5, b_5x5,
      w_pool_proj, b_pool_proj, relu, out, output_mask):
    return _bwd_alloc(x, (w_1x1, b_1x1, w_3x3red, b_3x3red, w_3x3, b_3x3, w_5x5red, b_5x5red, w_5x5,
                          b_5x5, w_pool_proj, b_pool_proj), output_mask)


@torch.library.triton_op(BWD_OP_NAME, mutates_args=())
def inception_backward_triton(
        grad_out: Tensor, x: Tensor, w_1x1: Tensor, b_1x1: Optional[Tensor], w_3x3red: Tensor,
        b_3x3red: Optional[Tensor], w_3x3: Tensor, b_3x3: Optional[Tensor], w_5x5red: Tensor,
        b_5x5red: Optional[Tensor], w_5x5: Tensor, b_5x5: Optional[Tensor], w_pool_proj: Tensor,
        b_pool_proj: Optional[Tensor], relu: bool, out: Optional[Tensor],
        output_mask: List[bool]) -> List[Tensor]:
    """The fused Inception backward (Triton): the arguments of the C++
    ``googlenet_fast::inception_backward``; returns the gradients that output_mask asks for and
    whose tensor exists (a None bias has none), in argument order (x, w_1x1, b_1x1, ...), each
    in its tensor's dtype and suggested memory format.  ``out`` (the forward output) is read for
    the ReLU masks when relu is on; x's values only when a requested gradient needs them
    (backward_needs_x: otherwise any tensor of x's sizes, e.g. an expanded scalar)."""
    weights = (w_1x1, b_1x1, w_3x3red, b_3x3red, w_3x3, b_3x3, w_5x5red, b_5x5red, w_5x5, b_5x5,
               w_pool_proj, b_pool_proj)
    _check_backward_args(grad_out, x, weights, relu, out, output_mask)
    if interpreting() and x.device.type == "cpu":
        return torch.ops.googlenet_fast._inception_backward_triton_interpreted(
            grad_out, x, *weights, relu, out, list(output_mask))
    grads = _bwd_alloc(x, weights, output_mask)
    _backward_launch(grad_out, x, weights, relu, out, output_mask, grads, interpret=False)
    return grads


def _bwd_not_twice_differentiable(ctx, *grads):
    raise RuntimeError(
        "googlenet_fast inception (backend='triton') is not twice differentiable: its backward "
        "(googlenet_fast::inception_backward_triton) has no derivative. Use backend='reference' "
        "(or GoogLeNet(fused=False)) for double backward, e.g. gradient penalties or "
        "torch.autograd.gradgradcheck.")


torch.library.register_autograd(BWD_OP_NAME, _bwd_not_twice_differentiable,
                                setup_context=lambda ctx, inputs, output: None)


# Autograd of inception_triton: the fused backward above.

def _setup_context(ctx, inputs, output):
    save_inputs(ctx, inputs, output, backward_needs_x)


def _backward(ctx, grad):
    saved = ctx.saved_tensors
    x, weights, out = saved[0], saved[1:NUM_GRADS], saved[NUM_GRADS]
    mask = ctx.mask
    result = [None] * (NUM_GRADS + 1)
    if not any(mask):
        return tuple(result)
    if x is None:  # no requested gradient reads x's values: one element of the right sizes
        shape, dtype, device = ctx.x_meta
        x = torch.zeros((), dtype=dtype, device=device).expand(shape)
    grads = torch.ops.googlenet_fast.inception_backward_triton(grad, x, *weights, ctx.relu, out, list(mask))
    it = iter(grads)
    for i in range(NUM_GRADS):
        if mask[i]:
            result[i] = next(it)
    return tuple(result)


def register_backward_autograd(qualname: str = OP_NAME):
    """Attach the Triton backward to an op with the fused op's signature ``(x, 12 weights/biases,
    relu) -> Tensor`` (inception_triton here; the lead may reuse it)."""
    torch.library.register_autograd(qualname, _backward, setup_context=_setup_context)


register_backward_autograd(OP_NAME)
