"""Launch programs: the eager network path's per-shape launch state, recorded once and replayed.

The first eager forward of a model on the network path (network.fused_forward_triton) for an
input signature (shape, strides, dtype, device) runs as always (argument checks, folded-weight
caches, launch plans, path choices) while a :class:`Recorder` notes what it does: every Triton
launch (the kernel, its grid, its scalar and constexpr arguments, and for each tensor argument
either a slot, i.e. the input or a buffer this forward allocated, or a constant: a folded weight
or something derived from one), every allocation (shape, strides, dtype) and the ATen steps
(cuDNN's conv1 when measured faster, the library head).  The result is a :class:`Program`;
later forwards with that signature replay it: allocate the buffers (each right before its first
use, released after its last, as the caching allocator saw them), fill the tensor slots of each
launch's stored arguments and launch, through ``kernel[grid](**kwargs)`` (Triton's own launcher:
no custom-op dispatch, no ``wrap_triton`` higher-order op, no checks, no plans, no fold keys).

Never stale: a replay first checks, in one pass over flat lists (C-level ``map``), a
:class:`ModelState` taken when the program was recorded, and falls back to the recording path
on any difference:

* the module tree: every ``_modules`` / ``_parameters`` / ``_buffers`` entry of every module
  still the same object (a swapped module, ``load_state_dict(assign=True)``, a replaced
  parameter), no module added or removed anywhere, and every folded-weight cache entry still the one the program read
  (``clear_folded_cache()``, a refold, googlenet_fast.graph_folds' refresh);
* every parameter and buffer: version counter (in-place updates, ``load_state_dict``) and data
  pointer (``.data = ...``, ``.to()``);
* forward (pre-)hooks: how many each module has, and whether global ones exist;
* the attributes the path reads: train/eval of the model, its variant and transform_input,
  each convolution's geometry, each max pool's, each LRN's constants, each BatchNorm's eps,
  the average pool's output size;
* process state: the optimizer-step count of googlenet_fast.fold_cache (fused optimizers do
  not bump version counters), TF32 and the test flags that change launch arguments
  (FORCE_INT64, FORCE_TILE), autotuning on or off, interpreter mode, and the path choices of
  googlenet_fast.autotune_table the program was recorded with;
* the call: no grad needed (grad mode off, or no input or parameter requiring grad), autocast
  off, not compiling, not tracing (no fake/functional tensor or tracing dispatch mode, not
  ``torch.jit.trace``), not capturing a CUDA graph (a capture through
  googlenet_fast.cuda_graph must register the folded weights it reads: it takes the recording
  path), and on the CPU (Triton's interpreter) no module with ``verify_folded_cache``.

Not seen, as by the folded-weight caches: writes through ``param.data`` (``p.data.mul_(2)``),
which bump no version counter of the parameter; call ``model.clear_folded_cache()`` after them
(it drops the programs too).  ``.to()`` / ``.cuda()`` / ``.half()``, ``clear_folded_cache()``,
pickling and deepcopy drop a model's programs.  A program holds its constants (the folded
weights it launches with) until it is replaced or dropped.
"""
import threading
from contextlib import contextmanager, nullcontext
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from ... import autotune_table, fold_cache
from ...model_state import LAUNCH_PROGRAMS_ATTR as PROGRAMS_ATTR
from ...model_state import ModelState, _safe_version, needs_grad, programs_for, signature
from . import plan as _plan

_STATE = threading.local()

def _launcher(fn, grid):
    """The callable that launches ``fn`` over ``grid``: Triton's ``kernel[grid]`` (a JITFunction,
    an Autotuner or an interpreted kernel; the same public API in Triton 3.6 and 3.8).
    benchmarks/host_overhead.py replaces it with a recording stub."""
    return fn[grid]


def no_hop():
    """Context for the ops' Python bodies called directly in eager (network._network_ops): their
    ``wrap_triton`` launches go straight to the kernel, as inside the registered triton_op
    (torch's ``set_wrap_triton_enabled(False)``), not through the higher-order op, whose eager
    dispatch torch documents as costly.  A no-op where torch lacks the switch."""
    try:
        from torch._library.triton import set_wrap_triton_enabled
    except ImportError:  # pragma: no cover - older torch
        return nullcontext()
    return set_wrap_triton_enabled(False)


# ----------------------------------------------------------------------------------------------
# Recording (the slow path calls these; each is a no-op unless a Recorder is active)

def _recorder():
    if torch.compiler.is_compiling():
        return None
    return getattr(_STATE, "rec", None)


def register(t: Tensor) -> Tensor:
    """Mark ``t`` as allocated by the forward being recorded (a buffer the program allocates on
    each replay); returns ``t``."""
    rec = _recorder()
    if rec is not None:
        rec.buffer(t)
    return t


def launch(fn, grid, kwargs: dict, interpret: bool) -> None:
    """Launch ``fn[grid](**kwargs)``: through ``torch.library.wrap_triton`` (CUDA; what
    torch.compile and CUDA graph capture see) or, under the interpreter, directly with one BLAS
    thread.  Recorded as one step of the program when a recording is active."""
    rec = _recorder()
    if rec is not None:
        rec.launch(fn, grid, kwargs, interpret)
    if interpret:
        with _plan._single_threaded_blas():
            fn[grid](**kwargs)
    else:
        torch.library.wrap_triton(fn)[grid](**kwargs)


def call(fn: Callable, *args):
    """``fn(*args)``: ATen work of the forward (e.g. the library head), recorded as one step whose
    result is a new buffer of the program."""
    out = fn(*args)
    rec = _recorder()
    if rec is not None:
        rec.call(fn, args, out)
    return out


def choice(key: str, value: str) -> None:
    """Note a path choice (googlenet_fast.autotune_table) the recorded forward follows: the
    program replays only while the table still holds it."""
    rec = _recorder()
    if rec is not None:
        rec.choices.append((key, value))


def unrecordable(why: str) -> None:
    """The forward being recorded did something a replay would not repeat: no program."""
    rec = _recorder()
    if rec is not None:
        rec.failed = why


@contextmanager
def paused():
    """No recording inside (a path measurement runs the candidates several times)."""
    rec = getattr(_STATE, "rec", None)
    _STATE.rec = None
    try:
        yield
    finally:
        _STATE.rec = rec


class Recorder:
    """What one forward does, in program form (see the module docstring)."""

    def __init__(self, x: Tensor):
        self.slot_of: Dict[int, int] = {id(x): 0}
        self.tensors: List[Tensor] = [x]          # keeps every slot's tensor alive (ids stay unique)
        self.specs: List[Optional[tuple]] = [None]  # per slot: (size, stride, dtype, device) of a buffer
        self.steps: List[tuple] = []               # (kind, fn/launcher, static, slots, extra)
        self.first_use: Dict[int, int] = {}
        self.last_use: Dict[int, int] = {0: -1}
        self.consts: List[Tensor] = []
        self.choices: List[Tuple[str, str]] = []
        self.interpret: Optional[bool] = None
        self.failed: Optional[str] = None
        self.versions: Dict[int, Optional[int]] = {}  # buffer slot -> version counter when allocated

    def _new_slot(self, t: Tensor, spec) -> int:
        s = len(self.tensors)
        self.slot_of[id(t)] = s
        self.tensors.append(t)
        self.specs.append(spec)
        return s

    def buffer(self, t: Tensor) -> None:
        if id(t) not in self.slot_of:
            self._new_slot(t, (tuple(t.shape), t.stride(), t.dtype, t.device))
            self.versions[len(self.tensors) - 1] = _safe_version(t)

    def _use(self, s: int) -> None:
        i = len(self.steps)
        self.first_use.setdefault(s, i)
        self.last_use[s] = i

    def _map(self, value):
        """('slot', s) for a tensor of this forward, the value itself otherwise (a constant)."""
        if isinstance(value, Tensor):
            s = self.slot_of.get(id(value))
            if s is not None:
                self._use(s)
                return s, None
            self.consts.append(value)
        return None, value

    def launch(self, fn, grid, kwargs, interpret) -> None:
        if self.interpret is None:
            self.interpret = interpret
        elif self.interpret != interpret:
            self.failed = "launches in two interpreter modes"
        static, slots = {}, []
        for name, v in kwargs.items():
            s, c = self._map(v)
            if s is None:
                static[name] = c
            else:
                slots.append((name, s))
        self.steps.append(("launch", _launcher(fn, grid), static, tuple(slots), None))

    def call(self, fn, args, out) -> None:
        mapped = [self._map(a) for a in args]
        if not isinstance(out, Tensor):
            self.failed = f"{getattr(fn, '__name__', fn)} returned a {type(out).__name__}"
            return
        i = len(self.steps)
        s = self._new_slot(out, None)  # produced by the step itself
        self.first_use[s] = i
        self.last_use[s] = i
        self.steps.append(("call", fn, tuple(c for _, c in mapped), tuple(s_ for s_, _ in mapped), s))

    def program(self, y: Tensor, flags: tuple) -> Tuple[Optional["Program"], Optional[str]]:
        """The program of the recorded forward whose result is ``y`` (``flags``: the process state
        it was recorded under, see :func:`lookup`), or (None, why not)."""
        if self.failed:
            return None, self.failed
        out = self.slot_of.get(id(y))
        if out is None:
            return None, "the result is not a tensor the forward allocated"
        if self.interpret is None and not any(st[0] == "launch" for st in self.steps):
            return None, "no launches"
        # Kernels write through raw pointers (no version bump); an ATen write into a buffer (a
        # fill, a copy) is not a step of the program: refuse rather than replay without it.  (Not
        # under the interpreter, whose launches go through an op that declares its mutation.)
        if not self.interpret and any(v is not None and _safe_version(self.tensors[s]) != v
                                      for s, v in self.versions.items()):
            return None, "a buffer was written by something other than a recorded launch"
        x = self.tensors[0]
        if x.device.type != "meta":
            # A constant sharing memory with the input or a buffer would be a view of this
            # forward's data taken for a weight: refuse rather than replay stale data.
            mine = {t.untyped_storage().data_ptr() for t in self.tensors}
            if any(c.untyped_storage().data_ptr() in mine for c in self.consts):
                return None, "a launch argument is a view of the forward's own data"
        allocs: Dict[int, list] = {}
        frees: Dict[int, list] = {}
        for s in range(1, len(self.tensors)):
            if s not in self.first_use:
                if s != out:
                    continue  # allocated, never launched with (an output nothing wrote): not replayed
                return None, "the result is written by no step"
            if self.specs[s] is not None:
                allocs.setdefault(self.first_use[s], []).append((s,) + self.specs[s])
            if s != out:
                frees.setdefault(self.last_use[s], []).append(s)
        steps = []
        for i, (kind, fn, static, slots, extra) in enumerate(self.steps):
            steps.append((tuple(allocs.get(i, ())), kind == "launch", fn, static, slots, extra,
                          tuple(frees.get(i, ()))))
        return Program(len(self.tensors), tuple(steps), out, bool(self.interpret), tuple(self.choices),
                       flags), None


@contextmanager
def recording(x: Tensor):
    """Record the forward run inside (yields the :class:`Recorder`)."""
    prev = getattr(_STATE, "rec", None)
    rec = Recorder(x)
    _STATE.rec = rec
    try:
        yield rec
    finally:
        _STATE.rec = prev


# ----------------------------------------------------------------------------------------------
# Replay

class Program:
    """The launches of one recorded forward (see the module docstring); :meth:`run` replays it."""

    __slots__ = ("nslots", "steps", "out", "interpret", "choices", "flags", "network_key", "x_sig",
                 "launches")

    def __init__(self, nslots, steps, out, interpret, choices, flags):
        self.nslots, self.steps, self.out, self.interpret = nslots, steps, out, interpret
        self.choices, self.flags = choices, flags
        self.network_key = None  # set by network.py: the autotune_table key of the network path
        self.x_sig = None        # the signature of the input after transform and cast
        self.launches = sum(1 for st in steps if st[1])

    def run(self, x: Tensor) -> Tensor:
        """Replay on ``x`` (of the recorded signature); returns the forward's result."""
        env = [None] * self.nslots
        env[0] = x
        empty = torch.empty_strided
        for allocs, is_launch, fn, static, slots, extra, frees in self.steps:
            for s, size, stride, dtype, device in allocs:
                env[s] = empty(size, stride, dtype=dtype, device=device)
            if is_launch:
                kw = static.copy()
                for name, s in slots:
                    kw[name] = env[s]
                fn(**kw)
            else:
                env[extra] = fn(*[c if s is None else env[s] for c, s in zip(static, slots)])
            for s in frees:
                env[s] = None
        return env[self.out]


# ----------------------------------------------------------------------------------------------
# What a program depends on

def replayable(x: Tensor) -> bool:
    """Whether this call may replay (or record) a program: not compiling, not tracing (a plain
    tensor, no tracing dispatch mode, not torch.jit.trace), no autocast, not capturing a CUDA graph."""
    if torch.compiler.is_compiling() or type(x) is not Tensor or torch.jit.is_tracing():
        return False
    if _plan._tracing_mode():
        return False
    return not autocast_enabled(x) and not fold_cache._capturing(x.device)


def autocast_enabled(x: Tensor) -> bool:
    """Autocast on for x's device type (meta, CUDA's stand-in in benchmarks/host_overhead.py,
    asks CUDA's)."""
    dev = x.device.type
    return torch.is_autocast_enabled("cuda" if dev == "meta" else dev)


def lookup(model: nn.Module, x: Tensor, flags: Callable[[], tuple]) -> Optional[Program]:
    """The model's valid program for ``x``, or None (no program, or anything it depends on
    changed: see the module docstring).  ``flags()``: the process state that changes launch
    arguments or kernels (TF32, autotuning, interpreter mode, test flags), compared with the
    program's.  Programs whose model state is stale are dropped."""
    if torch.compiler.is_compiling():
        return None
    progs = model.__dict__.get(PROGRAMS_ATTR)
    if progs is None:
        return None
    prog = progs.by_sig.get(signature(x))
    if prog is None or not replayable(x):
        return None
    if needs_grad(progs.state, x):
        return None
    if not progs.state.same():
        model.__dict__.pop(PROGRAMS_ATTR, None)
        return None
    # (On CUDA, inference-tensor parameters are folded on every call: googlenet_fast/fold_cache.py.)
    if prog.flags != flags() or progs.state.uncounted or (x.device.type == "cpu" and progs.state.verifying()):
        return None
    if prog.choices:
        if any(autotune_table.cached_choice(k) != v for k, v in prog.choices):
            return None
    progs.used(signature(x))
    return prog


def store(model: nn.Module, x: Tensor, prog: Program) -> None:
    """Keep ``prog`` as the model's program for ``x``'s signature (the model state is taken
    now: after the recorded forward, whose folded-weight caches it read)."""
    programs_for(model, PROGRAMS_ATTR, lambda: ModelState(model)).by_sig[signature(x)] = prog


def drop(model: nn.Module) -> None:
    """Forget the model's programs (the next forward records again)."""
    model.__dict__.pop(PROGRAMS_ATTR, None)
