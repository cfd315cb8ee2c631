"""The Triton backend of the fused Inception op: two launches per module.

    stage 1 (stage1.py): the merged 1x1 GEMM over x (ch1x1 + ch3x3red + ch5x5red columns; x read
             once) and the pool projection, whose A loader computes the 3x3/s1/p1 max (-inf
             padding); branch 1 and the pool projection go straight into their channel slices of
             the output, the two reduce outputs into a scratch matrix red[N*H*W, r3 + r5];
    stage 2 (stage2.py): the KxK convolutions of both reduce branches as implicit GEMMs over red,
             written into their channel slices.

Pooled variant: ``torch.ops.googlenet_fast.inception_pooled_triton`` (:func:`inception_pooled`):
the same module over ``max_pool2d(x, pool_k, pool_s, ceil_mode=True)``, the pool computed by stage
1's loaders (stage1.py, IN_POOL_K) so that GoogLeNet's stage-transition pools (maxpool2/3/4) cost
no pass of their own; eval only (it has no backward: it raises when grads are required), output
channels_last on the pooled grid, its own stage-1 tile configurations (configs.py).

Registered as ``torch.ops.googlenet_fast.inception_triton`` (same arguments as the C++
``googlenet_fast::inception``) and ``torch.ops.googlenet_fast.inception_triton_out`` (the out=
variant: mutates ``out``, returns nothing) through ``torch.library.triton_op`` with every launch
wrapped in ``wrap_triton``: the fake (meta) kernel is the op's own Python traced on fake tensors,
and torch.compile / make_fx see the two kernel launches.  :func:`inception_op` returns the pair in
the form ``googlenet_fast.ops`` calls.

Layouts read in place, without a copy (so that a module call is exactly two launches):
  * x: any strides (channels_last is the fast one: unit stride along channels);
  * out: any strides (a channel slice of a larger channels_last buffer is the intended use);
  * 1x1 weights (Cout, Cin, 1, 1) with unit stride along Cin (contiguous, or channels_last),
    the three siblings (w_1x1, w_3x3red, w_5x5red) as adjacent row blocks of one buffer, so that
    they are the merged GEMM operand [ch1x1 + ch3x3red + ch5x5red, Cin] in place (the model's
    folded-weight cache holds them so).  Otherwise they are concatenated per call (one small copy
    kernel), and always while the op is traced (torch.compile, make_fx);
  * KxK weights: channels_last (OHWI in memory) on CUDA.  Other KxK layouts are repacked to
    channels_last per call on CUDA (one small copy kernel; the model caches channels_last
    weights, so it avoids it); under the interpreter they are read with their own strides (one
    input-channel stride for both, else both are repacked).
Bias: any 1-D tensor or None (per-branch flags; a None bias costs nothing).
Scratch: red[N*H*W, r3 + r5 rounded up to 16] in x's dtype, allocated per call (the caching
allocator; inside CUDA graph capture, the graph's pool).

dtypes: float32 (IEEE fp32 products unless ``torch.backends.cuda.matmul`` allows TF32), float16,
bfloat16; fp32 accumulation.  Offsets are 64-bit (a constexpr switch) whenever a tensor spans
2**31 elements or more.

Tile configurations (configs.py) are autotuned per shape on first call (Triton's autotuner:
it benchmarks every configuration, so the first call of a shape must not be inside CUDA graph
capture; warm up first).  $GOOGLENET_FAST_TRITON_AUTOTUNE=0 picks one by a size heuristic
instead.  :func:`precompile` fills Triton's cache ahead of time (in parallel processes).

Autograd: the fused Triton backward (backward.py), registered as the triton_op
``googlenet_fast::inception_backward_triton`` (same arguments as the C++
``googlenet_fast::inception_backward``; returns the requested gradients only, as a list, in
argument order).  Saved for it: x (when a requested gradient reads it), the weights and biases,
and the forward output when relu is on (its ReLU masks); the reduce activations are recomputed.
Differentiable once (the backward op's own backward raises).

Devices: CUDA tensors; CPU tensors only under Triton's interpreter (TRITON_INTERPRET=1), which is
how CI runs these kernels.  The interpreter mode is read at each call: the kernels are built for
whichever mode the environment says (a private copy of the kernel modules is loaded for the
other mode), so TRITON_INTERPRET may be set after import.  Under the interpreter the launches go
through a private opaque op (``googlenet_fast::_inception_triton_interpreted``) so that fake
tensors, opcheck and torch.compile work there too (wrap_triton does not trace interpreted
kernels).
"""
import importlib
import importlib.machinery
import importlib.util
import inspect
import os
import sys
from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

try:
    import triton  # noqa: F401
except ImportError as e:  # pragma: no cover - triton ships with CUDA builds of torch
    raise ImportError("backend='triton' needs the `triton` package, which is not importable "
                      f"here ({e}); use backend='cuda' or backend='reference'") from e

from . import configs, interpreter_compat
from ..reference import pool_output_size

interpreter_compat.apply()  # Triton < 3.8 + NumPy >= 2.4 (the H200 image): see interpreter_compat.py

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
OP_NAME = "googlenet_fast::inception_triton"
OUT_OP_NAME = "googlenet_fast::inception_triton_out"

# Tests set this to force the 64-bit offset path at small sizes.
FORCE_INT64 = False
# Tests set this to a (stage-1 Tile, stage-2 Tile) pair to run one configuration (autotuning off).
FORCE_TILE = None
AUTOTUNE_ENV = "GOOGLENET_FAST_TRITON_AUTOTUNE"


def autotuning() -> bool:
    """Autotune the tile configuration per shape (default), unless $GOOGLENET_FAST_TRITON_AUTOTUNE
    is 0 (then a size heuristic picks one configuration: no benchmarking on first call, fewer
    compiles; what the GPU tests use) or FORCE_TILE is set."""
    return FORCE_TILE is None and os.environ.get(AUTOTUNE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


# ----------------------------------------------------------------------------------------------
# Kernel modules per mode (compiled vs interpreted)

def interpreting() -> bool:
    """True when Triton's interpreter is on (TRITON_INTERPRET, read as triton reads it)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on", "y")


def _is_interpreted(fn) -> bool:
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover
        return False
    return isinstance(fn, InterpretedFunction)


def _private_package(interpret: bool) -> str:
    """The name of the private package of one mode (``._interpreted`` or ``._compiled``): an empty
    package whose __path__ is this folder, so that a kernel module loaded in it imports its
    shared helpers (``from .kernel_common import ...``) from that package's own copy of
    kernel_common, built in the same mode as the kernel module."""
    pkgname = f"{__name__}._{'interpreted' if interpret else 'compiled'}"
    if pkgname not in sys.modules:
        spec = importlib.machinery.ModuleSpec(pkgname, None, is_package=True)
        spec.submodule_search_locations = [os.path.dirname(os.path.abspath(__file__))]
        sys.modules[pkgname] = importlib.util.module_from_spec(spec)
    return pkgname


def _load_private(name: str, interpret: bool):
    """A fresh copy of kernel module ``name`` whose @triton.jit functions, and those of the
    kernel_common copy it imports, are built for the requested mode (triton.jit reads
    TRITON_INTERPRET when it decorates)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), name + ".py")
    modname = f"{_private_package(interpret)}.{name}"
    spec = importlib.util.spec_from_file_location(modname, path)
    mod = importlib.util.module_from_spec(spec)
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
    try:
        spec.loader.exec_module(mod)
    finally:
        if old is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = old
    sys.modules[modname] = mod
    return mod


def _mode_module(name: str, probe: str, interpret: bool, cache: Optional[dict] = None):
    """Kernel module ``name`` built for the mode: the package's own module when its kernel
    ``probe`` and the shared helpers it imported from kernel_common (``_load``) were both built
    for it (the two may have been imported under different TRITON_INTERPRET values), otherwise
    a private copy (_load_private).  With ``cache``: memoized there per mode."""
    mod = None if cache is None else cache.get(interpret)
    if mod is None:
        mod = importlib.import_module(f"{__name__}.{name}")
        if _is_interpreted(getattr(mod, probe)) != interpret or _is_interpreted(mod._load) != interpret:
            mod = _load_private(name, interpret)
        if cache is not None:
            cache[interpret] = mod
    return mod


class Kernels(NamedTuple):
    interpret: bool
    stage1: object          # the stage1 module
    stage2: object          # the stage2 module
    stage1_half: object     # autotuned kernels (None under the interpreter)
    stage1_fp32: object
    stage2_half: object
    stage2_fp32: object
    stage1_pooled_half: object  # stage 1 with a max pool in its loaders (its own configurations)
    stage1_pooled_fp32: object


_KERNELS = {}


def _autotune_bench(fn, quantiles=None):
    """Time one configuration for the autotuner: 5 ms of warm-up, 25 ms of runs (the kernels take
    microseconds to a millisecond; Triton's default spends 125 ms per configuration and shape)."""
    from triton.testing import do_bench
    return do_bench(fn, warmup=5, rep=25, quantiles=quantiles)


def kernels(interpret: Optional[bool] = None) -> Kernels:
    """The stage modules and autotuned kernels for the current (or given) interpreter mode."""
    if interpret is None:
        interpret = interpreting()
    k = _KERNELS.get(interpret)
    if k is not None:
        return k
    stage1 = _mode_module("stage1", "inception_stage1_kernel", interpret)
    stage2 = _mode_module("stage2", "inception_stage2_kernel", interpret)
    if interpret:
        k = Kernels(True, stage1, stage2, None, None, None, None, None, None)
    else:
        import triton as _triton

        def tune(fn, stage, half, pooled=False):
            key = (configs.STAGE1_POOLED_KEY if pooled else configs.STAGE1_KEY) if stage == 1 else configs.STAGE2_KEY
            kw = {}
            if "do_bench" in inspect.signature(_triton.autotune).parameters:
                kw["do_bench"] = _autotune_bench  # shorter than Triton's 25 ms + 100 ms per config
            return _triton.autotune(configs=configs.triton_configs(stage, half, pooled), key=key, **kw)(fn)

        k1, k2 = stage1.inception_stage1_kernel, stage2.inception_stage2_kernel
        k = Kernels(False, stage1, stage2, tune(k1, 1, True), tune(k1, 1, False),
                    tune(k2, 2, True), tune(k2, 2, False), tune(k1, 1, True, True), tune(k1, 1, False, True))
    _KERNELS[interpret] = k
    return k


# ----------------------------------------------------------------------------------------------
# Argument checks of the Triton path (googlenet_fast.ops.check_inception_args does the shapes)

def check_triton_args(x, weights, out=None) -> None:
    """Dtype and device checks the Triton kernels need, with messages naming the argument."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x: expected a 4-D tensor (N, C, H, W), got shape {tuple(x.shape)}")
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
        if t is None:
            continue
        if t.dtype != x.dtype:
            raise TypeError(f"{name}: expected dtype {x.dtype} (the dtype of x), got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{name}: expected a tensor on {x.device} (the device of x), got {t.device}")
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
    keys = torch._C._TorchDispatchModeKey
    return any(torch._C._get_dispatch_mode(getattr(keys, k)) is not None
               for k in ("PROXY", "FAKE", "FUNCTIONAL") if hasattr(keys, k))


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


def precompile(plan: LaunchPlan, which: str = "launch") -> int:
    """Compile, without running, the kernels a call with this plan would launch on the current
    CUDA device, and return how many variants were built.  ``plan`` may come from meta tensors
    (plan_launch works on them): a kernel's specialization depends on its tensors' dtypes and
    16-byte alignment only, so small stand-ins are passed.  ``which``: "launch" (what the call
    would use: every autotuning configuration, or the heuristic/forced tile) or "all" (every
    configuration).  Run in worker processes sharing TRITON_CACHE_DIR, this fills Triton's
    on-disk cache in parallel (benchmarks/gpu_blocks.py --prewarm, the GPU tests)."""
    k = kernels(interpret=False)
    pooled = bool(plan.args1["IN_POOL_K"])
    count = 0
    for stage, fn, args in ((1, k.stage1.inception_stage1_kernel, plan.args1),
                            (2, k.stage2.inception_stage2_kernel, plan.args2)):
        pooled_stage = pooled and stage == 1
        if which == "all" or autotuning():
            tiles = configs.tiles(stage, plan.half, pooled_stage)
        elif FORCE_TILE:
            tiles = [FORCE_TILE[stage - 1]]
        else:
            tiles = [configs.heuristic_tile(stage, plan.P, plan.half, pooled_stage)]
        args = {n: (torch.empty(64, dtype=v.dtype, device="cuda") if isinstance(v, Tensor) else v)
                for n, v in args.items()}
        for t in tiles:
            fn.warmup(**args, **t.meta(stage), num_warps=t.num_warps, num_stages=t.num_stages, grid=(1,))
            count += 1
    return count


def _launch(x, w_1x1, b_1x1, w_3x3red, b_3x3red, w_3x3, b_3x3, w_5x5red, b_5x5red, w_5x5, b_5x5,
            w_pool_proj, b_pool_proj, relu: bool, out: Tensor, interpret: bool,
            pool: Tuple[int, int] = (0, 0)) -> None:
    """Run both stages, writing the module's output into ``out`` (any strides); ``pool``: see
    :func:`plan_launch`."""
    from torch.library import wrap_triton

    n, _, h, w = x.shape
    if n * h * w == 0 or out.numel() == 0:
        return
    plan = plan_launch(x, w_1x1, b_1x1, w_3x3red, b_3x3red, w_3x3, b_3x3, w_5x5red, b_5x5red,
                       w_5x5, b_5x5, w_pool_proj, b_pool_proj, relu, out, interpret, pool)
    pooled = bool(pool[0])
    k = kernels(interpret)
    g1 = k.stage1.grid(plan.P, plan.NM, plan.CP)
    g2 = k.stage2.grid(plan.P, plan.C3, plan.C5)
    if interpret:
        t1 = configs.interpret_tile(1, plan.P, plan.R3, plan.R5)
        t2 = configs.interpret_tile(2, plan.P, plan.R3, plan.R5)
        with _single_threaded_blas():
            k.stage1.inception_stage1_kernel[g1](**plan.args1, **t1.meta(1))
            k.stage2.inception_stage2_kernel[g2](**plan.args2, **t2.meta(2))
        return
    if autotuning():
        if pooled:
            kernel1 = k.stage1_pooled_half if plan.half else k.stage1_pooled_fp32
        else:
            kernel1 = k.stage1_half if plan.half else k.stage1_fp32
        kernel2 = k.stage2_half if plan.half else k.stage2_fp32
        wrap_triton(kernel1)[g1](**plan.args1)
        wrap_triton(kernel2)[g2](**plan.args2)
        return
    t1 = FORCE_TILE[0] if FORCE_TILE else configs.heuristic_tile(1, plan.P, plan.half, pooled)
    t2 = FORCE_TILE[1] if FORCE_TILE else configs.heuristic_tile(2, plan.P, plan.half)
    wrap_triton(k.stage1.inception_stage1_kernel)[g1](
        **plan.args1, **t1.meta(1), num_warps=t1.num_warps, num_stages=t1.num_stages)
    wrap_triton(k.stage2.inception_stage2_kernel)[g2](
        **plan.args2, **t2.meta(2), num_warps=t2.num_warps, num_stages=t2.num_stages)


# ----------------------------------------------------------------------------------------------
# Registration

# The Python bodies of the triton_ops, by op name: GoogLeNet's eager forward on CUDA calls them
# directly (no custom-op dispatch, ~10 us a call; see network.fused_forward_triton), everything
# else goes through the registered ops.
EAGER_IMPLS = {}


def _triton_op(name: str, mutates_args):
    """torch.library.triton_op, also keeping the Python body in EAGER_IMPLS."""
    def register(fn):
        EAGER_IMPLS[name] = fn
        return torch.library.triton_op(name, mutates_args=mutates_args)(fn)
    return register


def eager_direct(x: Tensor) -> bool:
    """True when an eager caller may run the ops' Python bodies directly: x on a GPU (or meta),
    not compiling, not tracing, no dispatch mode active (what the registered op would add there:
    fake/functional/proxy handling)."""
    return (x.device.type != "cpu" and not torch.compiler.is_compiling() and not _tracing(x))


def _new_output(x, w_1x1, w_3x3, w_5x5, w_pool_proj):
    n, _, h, w = x.shape
    c = w_1x1.shape[0] + w_3x3.shape[0] + w_5x5.shape[0] + w_pool_proj.shape[0]
    return torch.empty((n, c, h, w), dtype=x.dtype, device=x.device,
                       memory_format=_out_memory_format(x))


def _check(x, args, out=None):
    check_triton_args(x, list(zip(_WEIGHT_NAMES, args)), out)
    _shape(x, *(args[i] for i in (0, 2, 4, 6, 8, 10)))
    if out is not None:
        n, _, h, w = x.shape
        c = args[0].shape[0] + args[4].shape[0] + args[8].shape[0] + args[10].shape[0]
        if tuple(out.shape) != (n, c, h, w):
            raise ValueError(f"out: expected shape {(n, c, h, w)}, got {tuple(out.shape)}")


def _run(x, w_1x1, b_1x1, w_3x3red, b_3x3red, w_3x3, b_3x3, w_5x5red, b_5x5red, w_5x5, b_5x5,
         w_pool_proj, b_pool_proj, relu, out, pool=(0, 0)):
    args = (w_1x1, b_1x1, w_3x3red, b_3x3red, w_3x3, b_3x3, w_5x5red, b_5x5red, w_5x5, b_5x5,
            w_pool_proj, b_pool_proj)
    if x.device.type == "meta":
        return
    if interpreting() and x.device.type == "cpu":
        torch.ops.googlenet_fast._inception_triton_interpreted(x, *args, relu, out, int(pool[0]), int(pool[1]))
    else:
        _launch(x, *args, relu, out, interpret=interpreting(), pool=pool)


@torch.library.custom_op("googlenet_fast::_inception_triton_interpreted", mutates_args=("out",))
def _inception_triton_interpreted(
        x: Tensor, w_1x1: Tensor, b_1x1: Optional[Tensor], w_3x3red: Tensor, b_3x3red: Optional[Tensor],
        w_3x3: Tensor, b_3x3: Optional[Tensor], w_5x5red: Tensor, b_5x5red: Optional[Tensor],
        w_5x5: Tensor, b_5x5: Optional[Tensor], w_pool_proj: Tensor, b_pool_proj: Optional[Tensor],
        relu: bool, out: Tensor, pool_k: int = 0, pool_s: int = 0) -> None:
    """Both stages under Triton's interpreter (opaque to tracing; used for CPU tensors); pool_k > 0:
    over the (pool_k, pool_s) max pool of x (the pooled op)."""
    _launch(x, w_1x1, b_1x1, w_3x3red, b_3x3red, w_3x3, b_3x3, w_5x5red, b_5x5red, w_5x5, b_5x5,
            w_pool_proj, b_pool_proj, relu, out, interpret=True, pool=(pool_k, pool_s))


@_inception_triton_interpreted.register_fake
def _(x, w_1x1, b_1x1, w_3x3red, b_3x3red, w_3x3, b_3x3, w_5x5red, b_5x5red, w_5x5, b_5x5,
      w_pool_proj, b_pool_proj, relu, out, pool_k=0, pool_s=0):
    return None


@_triton_op(OP_NAME, mutates_args=())
def inception_triton(
        x: Tensor, w_1x1: Tensor, b_1x1: Optional[Tensor], w_3x3red: Tensor, b_3x3red: Optional[Tensor],
        w_3x3: Tensor, b_3x3: Optional[Tensor], w_5x5red: Tensor, b_5x5red: Optional[Tensor],
        w_5x5: Tensor, b_5x5: Optional[Tensor], w_pool_proj: Tensor, b_pool_proj: Optional[Tensor],
        relu: bool = True) -> Tensor:
    """The fused Inception forward (Triton): same arguments and result as
    ``torch.ops.googlenet_fast.inception``; output in x's suggested memory format."""
    _check(x, (w_1x1, b_1x1, w_3x3red, b_3x3red, w_3x3, b_3x3, w_5x5red, b_5x5red, w_5x5, b_5x5,
               w_pool_proj, b_pool_proj))
    out = _new_output(x, w_1x1, w_3x3, w_5x5, w_pool_proj)
    _run(x, w_1x1, b_1x1, w_3x3red, b_3x3red, w_3x3, b_3x3, w_5x5red, b_5x5red, w_5x5, b_5x5,
         w_pool_proj, b_pool_proj, relu, out)
    return out


@torch.library.triton_op(OUT_OP_NAME, mutates_args=("out",))
def inception_triton_out(
        x: Tensor, w_1x1: Tensor, b_1x1: Optional[Tensor], w_3x3red: Tensor, b_3x3red: Optional[Tensor],
        w_3x3: Tensor, b_3x3: Optional[Tensor], w_5x5red: Tensor, b_5x5red: Optional[Tensor],
        w_5x5: Tensor, b_5x5: Optional[Tensor], w_pool_proj: Tensor, b_pool_proj: Optional[Tensor],
        relu: bool, out: Tensor) -> None:
    """The out= variant: writes the module's output into ``out`` (N, Cout, H, W), any strides
    (e.g. a channel slice of a larger channels_last buffer)."""
    _check(x, (w_1x1, b_1x1, w_3x3red, b_3x3red, w_3x3, b_3x3, w_5x5red, b_5x5red, w_5x5, b_5x5,
               w_pool_proj, b_pool_proj), out)
    _run(x, w_1x1, b_1x1, w_3x3red, b_3x3red, w_3x3, b_3x3, w_5x5red, b_5x5red, w_5x5, b_5x5,
         w_pool_proj, b_pool_proj, relu, out)


# ----------------------------------------------------------------------------------------------
# The pooled op: a stage-transition max pool fused into the next module's stage 1

POOLED_OP_NAME = "googlenet_fast::inception_pooled_triton"
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


def _new_pooled_output(x, w_1x1, w_3x3, w_5x5, w_pool_proj, ph, pw):
    c = w_1x1.shape[0] + w_3x3.shape[0] + w_5x5.shape[0] + w_pool_proj.shape[0]
    return torch.empty((x.shape[0], c, ph, pw), dtype=x.dtype, device=x.device,
                       memory_format=torch.channels_last)


@_triton_op(POOLED_OP_NAME, mutates_args=())
def inception_pooled_triton(
        x: Tensor, w_1x1: Tensor, b_1x1: Optional[Tensor], w_3x3red: Tensor, b_3x3red: Optional[Tensor],
        w_3x3: Tensor, b_3x3: Optional[Tensor], w_5x5red: Tensor, b_5x5red: Optional[Tensor],
        w_5x5: Tensor, b_5x5: Optional[Tensor], w_pool_proj: Tensor, b_pool_proj: Optional[Tensor],
        relu: bool, pool_k: int, pool_s: int) -> Tensor:
    """See :func:`inception_pooled`."""
    args = (w_1x1, b_1x1, w_3x3red, b_3x3red, w_3x3, b_3x3, w_5x5red, b_5x5red, w_5x5, b_5x5,
            w_pool_proj, b_pool_proj)
    ph, pw = _check_pooled(x, args, pool_k, pool_s)
    out = _new_pooled_output(x, w_1x1, w_3x3, w_5x5, w_pool_proj, ph, pw)
    _run(x, *args, relu, out, (pool_k, pool_s))
    return out


def _pooled_eval_only(*_, **__):
    raise RuntimeError(
        "googlenet_fast::inception_pooled_triton is eval-only: it has no backward, and an input "
        "requires grad. Run it under torch.no_grad() / torch.inference_mode(), or for training use "
        "max_pool2d followed by googlenet_fast.inception (backend='triton' has a backward).")


# Raised in setup_context, i.e. by the forward call itself when grad mode is on and an input
# requires grad (not later, at backward time).
torch.library.register_autograd(POOLED_OP_NAME, _pooled_eval_only, setup_context=_pooled_eval_only)


def inception_pooled(x: Tensor, w_1x1: Tensor, b_1x1: Optional[Tensor], w_3x3red: Tensor,
                     b_3x3red: Optional[Tensor], w_3x3: Tensor, b_3x3: Optional[Tensor], w_5x5red: Tensor,
                     b_5x5red: Optional[Tensor], w_5x5: Tensor, b_5x5: Optional[Tensor], w_pool_proj: Tensor,
                     b_pool_proj: Optional[Tensor], relu: bool = True, *, pool=(3, 2)) -> Tensor:
    """``inception(max_pool2d(x, k, s, ceil_mode=True), *weights, relu)`` in the Inception op's two
    launches, the max pool computed by stage 1's loaders (no pooled tensor is written): the
    stage-transition pools of GoogLeNet fused into the module after them (torchvision's
    ``models/googlenet.py``: ``maxpool2 = MaxPool2d(3, 2, ceil_mode=True)`` before inception3a,
    ``maxpool3 = MaxPool2d(3, 2, ceil_mode=True)`` before inception4a, ``maxpool4 =
    MaxPool2d(2, 2, ceil_mode=True)`` before inception5a; the paper's maxpool4 is 3x3/2).  Runs
    ``torch.ops.googlenet_fast.inception_pooled_triton`` (a triton_op: torch.compile and CUDA
    graph capture see its two kernels).

    Args:
        x: (N, Cin, XH, XW) float32/float16/bfloat16, the pre-pool map, any strides (channels_last
            is the fast one); CUDA, or CPU under TRITON_INTERPRET=1.
        w_1x1 ... b_pool_proj: the twelve weights and biases of ``googlenet_fast.inception`` (same
            shapes, layouts and rules; e.g. ``Inception.folded_params(dtype)``), x's dtype and device.
        relu: ReLU after every branch.
        pool: (kernel_size k, stride s), 1 <= s <= k <= 5: a k x k / s max pool without padding
            in ceil mode (the last window may hang over the edge, its outside taps excluded; it
            must start inside the map, as PyTorch's rule), NaN propagating as in torch.
    Returns:
        (N, ch1x1 + ch3x3 + ch5x5 + pool_proj, PH, PW), channels_last (NHWC) memory, x's dtype;
        PH = ceil((XH - k) / s) + 1 (minus one if that window would start past the map), PW alike.
    Raises:
        TypeError / ValueError naming the argument: x or a weight (dtype, device, rank, channels,
        as googlenet_fast.inception), pool_k / pool_s (out of range), x (a pre-pool map too small
        for one window); RuntimeError when grad mode is on and an input requires grad (eval only:
        no backward).
    """
    return torch.ops.googlenet_fast.inception_pooled_triton(
        x, w_1x1, b_1x1, w_3x3red, b_3x3red, w_3x3, b_3x3, w_5x5red, b_5x5red, w_5x5, b_5x5,
        w_pool_proj, b_pool_proj, bool(relu), int(pool[0]), int(pool[1]))


# ----------------------------------------------------------------------------------------------
# Backward (backward.py's kernels): googlenet_fast::inception_backward_triton

BWD_OP_NAME = "googlenet_fast::inception_backward_triton"
NUM_GRADS = 13  # x and the twelve weights/biases, in argument order
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
        if t is None:
            continue
        if t.dtype != x.dtype:
            raise TypeError(f"{name}: expected dtype {x.dtype} (the dtype of x), got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{name}: expected a tensor on {x.device} (the device of x), got {t.device}")
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
    int64 = FORCE_INT64 or big >= 2 ** 31
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
    tensors, relu = inputs[:NUM_GRADS], bool(inputs[NUM_GRADS])
    x = tensors[0]
    mask = tuple(bool(n) and t is not None for n, t in zip(ctx.needs_input_grad[:NUM_GRADS], tensors))
    ctx.relu = relu
    ctx.mask = mask
    ctx.x_meta = (tuple(x.shape), x.dtype, x.device)
    need_x = backward_needs_x(mask, relu)
    saved_out = output if (relu and any(mask)) else None
    ctx.save_for_backward(x if need_x else None, *tensors[1:], saved_out)


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


class _Op(NamedTuple):
    default: object
    out: object


def _out_call(x, w_1x1, b_1x1, w_3x3red, b_3x3red, w_3x3, b_3x3, w_5x5red, b_5x5red, w_5x5, b_5x5,
              w_pool_proj, b_pool_proj, relu=True, *, out):
    torch.ops.googlenet_fast.inception_triton_out(
        x, w_1x1, b_1x1, w_3x3red, b_3x3red, w_3x3, b_3x3, w_5x5red, b_5x5red, w_5x5, b_5x5,
        w_pool_proj, b_pool_proj, relu, out)
    return out


def inception_op() -> _Op:
    """The Triton op as googlenet_fast.ops calls it: ``.default(x, *weights, relu)`` returns a new
    output; ``.out(x, *weights, relu, out=out)`` writes ``out`` and returns it."""
    return _Op(torch.ops.googlenet_fast.inception_triton.default, _out_call)
