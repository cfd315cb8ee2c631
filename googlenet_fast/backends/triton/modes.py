"""The Triton kernel modules, built for the interpreter mode of the moment (TRITON_INTERPRET is read
at each call: a private copy of the kernel modules serves the other mode), and the autotuned
kernels of the forward stages (configs.py)."""
import importlib
import importlib.machinery
import importlib.util
import inspect
import os
import sys
from typing import NamedTuple, Optional

from . import configs, plan

PACKAGE = __package__  # googlenet_fast.backends.triton: the kernel modules' package

AUTOTUNE_ENV = "GOOGLENET_FAST_TRITON_AUTOTUNE"


def autotuning() -> bool:
    """Autotune the tile configuration per shape (default), unless $GOOGLENET_FAST_TRITON_AUTOTUNE
    is 0 (then a size heuristic picks one configuration: no benchmarking on first call, fewer
    compiles; what the GPU tests use) or FORCE_TILE is set."""
    return plan.FORCE_TILE is None and os.environ.get(AUTOTUNE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


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
    pkgname = f"{PACKAGE}._{'interpreted' if interpret else 'compiled'}"
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
        mod = importlib.import_module(f"{PACKAGE}.{name}")
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
