"""Launch plans of the two Inception stages: the scratch matrix and both kernels' arguments,
their scalar part built once per shape/stride/flag signature.  Also the flags tests set:
FORCE_INT64 (64-bit offsets at any size) and FORCE_TILE (one (stage-1, stage-2) tile pair, no
autotuning)."""
from typing import NamedTuple, Tuple

import torch
from torch import Tensor

# Tests set this to force the 64-bit offset path at small sizes.
FORCE_INT64 = False
# Tests set this to a (stage-1 Tile, stage-2 Tile) pair to run one configuration (autotuning off).
FORCE_TILE = None


def _span(t: Tensor) -> int:
    """Elements between the first and one past the last element a view can touch."""
    span = 1
    for s, st in zip(t.shape, t.stride()):
        if s == 0:
            return 0
        span += (s - 1) * abs(st)
    return span


def _allow_tf32() -> bool:
    """Whether torch's own flags allow TF32 for fp32 matmuls (the new fp32_precision API first;
    the legacy allow_tf32 flag when that says "none")."""
    m = torch.backends.cuda.matmul
    prec = getattr(m, "fp32_precision", None)
    if prec is not None and prec != "none":
        return prec == "tf32"
    try:
        return bool(m.allow_tf32)
    except RuntimeError:  # torch refuses to read it after a mix of the two APIs
        return False


def _out_memory_format(x: Tensor):
    try:
        from torch._prims_common import suggest_memory_format
        return suggest_memory_format(x)
    except ImportError:  # pragma: no cover
        return (torch.channels_last if x.is_contiguous(memory_format=torch.channels_last)
                and not x.is_contiguous() else torch.contiguous_format)


def _unit_k(w: Tensor) -> Tensor:
    """A 1x1 weight as a [Cout, Cin] matrix with unit stride along Cin (a view when it has it)."""
    m = w.reshape(w.shape[0], w.shape[1])
    if m.shape[1] > 1 and m.stride(1) != 1:
        m = m.contiguous()
    return m


def _tracing(*tensors) -> bool:
    """True while the op is being traced (fake/functional tensors, or a proxy/fake/functional
    dispatch mode): decisions taken from where tensors live in memory must not be baked into a
    graph that will run on other tensors."""
    from torch._subclasses.fake_tensor import FakeTensor
    from torch._subclasses.functional_tensor import FunctionalTensor
    if any(isinstance(t, (FakeTensor, FunctionalTensor)) for t in tensors):
        return True
    return _tracing_mode()


_TRACING_MODE_KEYS = tuple(getattr(torch._C._TorchDispatchModeKey, k) for k in ("PROXY", "FAKE", "FUNCTIONAL")
                           if hasattr(torch._C._TorchDispatchModeKey, k))


def _tracing_mode() -> bool:
    """True while a proxy, fake or functional dispatch mode is active (make_fx, torch.export,
    AOTAutograd)."""
    get = torch._C._get_dispatch_mode
    return any(get(k) is not None for k in _TRACING_MODE_KEYS)


def _merged_1x1(w1: Tensor, w3r: Tensor, w5r: Tensor) -> Tensor:
    """The merged 1x1 weight [ch1x1 + ch3x3red + ch5x5red, Cin] (unit stride along Cin).

    Read in place when the three [Cout, Cin] weights are adjacent row blocks of one buffer with
    one row stride (what the model's folded-weight cache holds); concatenated per call (one copy
    kernel) otherwise, and always while tracing (adjacency of the traced tensors says nothing
    about the tensors the graph will run on)."""
    rows = w1.shape[0] + w3r.shape[0] + w5r.shape[0]
    ld = w1.stride(0)
    if (not _tracing(w1, w3r, w5r) and w1.device.type != "meta"
            and w1.numel() > 0 and w3r.numel() > 0 and w5r.numel() > 0):
        es = w1.element_size()
        p = w1.data_ptr()
        if (w3r.stride(0) == ld and w5r.stride(0) == ld and ld >= w1.shape[1]
                and w3r.untyped_storage().data_ptr() == w1.untyped_storage().data_ptr()
                and w5r.untyped_storage().data_ptr() == w1.untyped_storage().data_ptr()
                and w3r.data_ptr() == p + w1.shape[0] * ld * es
                and w5r.data_ptr() == p + (w1.shape[0] + w3r.shape[0]) * ld * es):
            return w1.as_strided((rows, w1.shape[1]), (ld, 1))
    return torch.cat([w1, w3r, w5r], 0)


def _single_threaded_blas():
    """The interpreter runs each tl.dot as a small numpy matmul between bursts of Python; a
    multi-threaded BLAS then spends ~40 ms per call waking its threads (measured on 2 cores).
    One BLAS thread makes the interpreter's dots ~100x faster.  No-op without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        import contextlib
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


class LaunchPlan(NamedTuple):
    """The arguments of both kernel launches of one module call (see :func:`plan_launch`)."""
    args1: dict   # stage 1 kernel arguments, tile sizes excluded
    args2: dict   # stage 2 kernel arguments, tile sizes excluded
    P: int
    NM: int
    CP: int
    C3: int
    C5: int
    R3: int
    R5: int
    half: bool


# Row stride of the scratch matrix red: ch3x3red + ch5x5red rounded up to this many elements, so
# that every row starts 16-element aligned (Triton then knows it and vectorizes stage 2's loads;
# ch5x5red = 24 in 4b/4c would otherwise leave rows 8-aligned).
RED_ALIGN = 16


def _pow2_divisor(*values, cap=16) -> int:
    """The largest power of two (<= cap) dividing every value (0 counts as divisible)."""
    d = cap
    while d > 1 and any(int(v) % d for v in values):
        d //= 2
    return d


def plan_launch(x, w_1x1, b_1x1, w_3x3red, b_3x3red, w_3x3, b_3x3, w_5x5red, b_5x5red, w_5x5,
                b_5x5, w_pool_proj, b_pool_proj, relu: bool, out: Tensor, interpret: bool,
                pool: Tuple[int, int] = (0, 0)) -> LaunchPlan:
    """Allocate the scratch matrix and build both stages' kernel arguments (works on meta tensors,
    which is how tests/test_triton_compile.py gets the runtime specialization of each kernel).
    ``pool`` = (kernel_size, stride): the module's input is the ceil-mode max pool of x, computed
    by stage 1's loaders; ``out`` is then on the pooled grid, and so are P and stage 2 ((0, 0):
    no pool)."""
    n, cin, xh, xw = x.shape
    h, w = (out.shape[2], out.shape[3]) if pool[0] else (xh, xw)
    P = n * h * w
    c1, r3, r5, cp = w_1x1.shape[0], w_3x3red.shape[0], w_5x5red.shape[0], w_pool_proj.shape[0]
    c3, c5 = w_3x3.shape[0], w_5x5.shape[0]
    nm = c1 + r3 + r5
    rr = -(-(r3 + r5) // RED_ALIGN) * RED_ALIGN
    red = torch.empty((P, rr), dtype=x.dtype, device=x.device)

    w1, w3r, w5r, wp = (_unit_k(t) for t in (w_1x1, w_3x3red, w_5x5red, w_pool_proj))
    wm = _merged_1x1(w1, w3r, w5r)
    if x.device.type != "cpu" or w_3x3.stride(1) != w_5x5.stride(1):
        # CUDA (and meta, as CUDA): the fast KxK layout, OHWI; and stage 2 takes one input-channel
        # stride for both KxK weights.
        w_3x3 = w_3x3.contiguous(memory_format=torch.channels_last)
        w_5x5 = w_5x5.contiguous(memory_format=torch.channels_last)
    biases = [b if b is None or b.stride(0) == 1 else b.contiguous()
              for b in (b_1x1, b_3x3red, b_5x5red, b_pool_proj, b_3x3, b_5x5)]
    b1, b3r, b5r, bp, b3, b5 = (wp if b is None else b for b in biases)  # dummy when absent
    has = [b is not None for b in biases]

    # Everything but the tensors depends on shapes, strides, dtypes and flags only: built once
    # per signature (per-shape launch state; ~20 us a call saved) and merged with this call's
    # tensors.
    key = (x.shape, x.stride(), x.dtype, out.shape, out.stride(), wm.shape, wm.stride(), wp.shape,
           wp.stride(), w_3x3.shape, w_3x3.stride(), w_5x5.shape, w_5x5.stride(), tuple(has),
           bool(relu), bool(interpret), tuple(pool), FORCE_INT64, _allow_tf32())
    scalars = _PLAN_SCALARS.get(key)
    if scalars is None:
        scalars = _plan_scalars(x, out, red, wm, wp, w_3x3, w_5x5, has, relu, interpret, pool,
                                (n, cin, xh, xw, h, w, P, c1, r3, r5, cp, c3, c5, nm, rr))
        if len(_PLAN_SCALARS) > 4096:  # many shapes (e.g. dynamic resolutions): start over
            _PLAN_SCALARS.clear()
        _PLAN_SCALARS[key] = scalars
    s1, s2, half = scalars
    args1 = dict(s1, x_ptr=x, wm_ptr=wm, wp_ptr=wp, b1_ptr=b1, b3r_ptr=b3r, b5r_ptr=b5r, bp_ptr=bp,
                 out_ptr=out, red_ptr=red)
    args2 = dict(s2, red_ptr=red, w3_ptr=w_3x3, w5_ptr=w_5x5, b3_ptr=b3, b5_ptr=b5, out_ptr=out, ss_ptr=red)
    return LaunchPlan(args1, args2, P, nm, cp, c3, c5, r3, r5, half)


_PLAN_SCALARS = {}


def _plan_scalars(x, out, red, wm, wp, w_3x3, w_5x5, has, relu, interpret, pool, sizes):
    """(stage-1 scalar arguments, stage-2 scalar arguments, half) of :func:`plan_launch`, the
    tensor arguments left out (they are this call's)."""
    n, cin, xh, xw, h, w, P, c1, r3, r5, cp, c3, c5, nm, rr = sizes
    # 64-bit offsets when a view reaches 2**31 elements or more: x and out may be views into
    # larger buffers (their span counts); the scratch and the weights are dense.
    int64 = (FORCE_INT64 or _span(x) >= 2 ** 31 or _span(out) >= 2 ** 31
             or red.numel() >= 2 ** 31 or wm.numel() >= 2 ** 31 or _span(wp) >= 2 ** 31
             or w_3x3.numel() >= 2 ** 31 or w_5x5.numel() >= 2 ** 31)
    half = x.dtype != torch.float32
    common = dict(RELU=bool(relu), INT64=bool(int64), ALLOW_TF32=_allow_tf32() and not half,
                  UPCAST=bool(interpret and x.dtype == torch.bfloat16))
    so = out.stride()
    sx = x.stride()
    args1 = dict(
        P=P, H=h, W=w, CIN=cin, NM=nm, C1=c1, R3=r3, CP=cp, RR=rr, OFF_P=c1 + c3 + c5, XH=xh, XW=xw,
        sxn=sx[0], sxc=sx[1], sxh=sx[2], sxw=sx[3],
        swm=wm.stride(0), swp=wp.stride(0),
        son=so[0], soc=so[1], soh=so[2], sow=so[3],
        HAS_B1=has[0], HAS_B3R=has[1], HAS_B5R=has[2], HAS_BP=has[3],
        IN_POOL_K=int(pool[0]), IN_POOL_S=int(pool[1]) if pool[0] else 0, **common)
    s3, s5 = w_3x3.stride(), w_5x5.stride()
    args2 = dict(
        P=P, H=h, W=w, R3=r3, R5=r5, RR=rr, C3=c3, C5=c5, OFF_3=c1, OFF_5=c1 + c3,
        sw3o=s3[0], sw3h=s3[2], sw3w=s3[3],
        sw5o=s5[0], sw5h=s5[2], sw5w=s5[3], swi=s3[1],
        son=so[0], soc=so[1], soh=so[2], sow=so[3],
        K3=w_3x3.shape[2], K5=w_5x5.shape[2], HAS_B3=has[4], HAS_B5=has[5],
        W_ALIGN=_pow2_divisor(s3[0], s3[2], s3[3], s5[0], s5[2], s5[3]),
        C_ALIGN=_pow2_divisor(r3, r5), BN=False, **common)
    return args1, args2, half
