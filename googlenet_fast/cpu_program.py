"""CPU op programs: GoogLeNet(fused=True)'s eval forward on the CPU, recorded once per input
signature at the dispatcher and replayed without the modules' Python.

Why: at batch 1 the fused CPU forward's ops take ~4-8 ms on 2 cores, and the Python around them
(module calls, folded-weight cache keys, prepacking contexts, argument checks: ~40-80 us a module)
added ~0.8-1.5 ms more (thread CPU time, 1 thread, 2026-12-04, /tmp measurement in the issue #14
note).  A program runs the same ops (googlenet_fast::conv2d_relu / max_pool_nhwc / inception and
ATen's head) with the same arguments, straight from a list.

Recording: the first eager eval forward with warm folded-weight caches for an input signature
(shape, strides, dtype, device) runs under a TorchDispatchMode that notes each op it dispatches
(the OpOverload, its arguments: each tensor either a slot, i.e. the input or a tensor an earlier op
of this forward returned, or a constant: a folded weight, a parameter, anything else, kept alive
by the program), and the weight-prepacking setting of each of our ops' calls.  A forward that
folded weights (cold caches: the folding ops would become steps), returned something other than
tensors from an op (``.item()``: data-dependent Python), or ran under another dispatch mode gives no
program; nor does a model with forward hooks (they must fire: the modules run) or with
``verify_folded_cache`` set.

Replay: only while :class:`googlenet_fast.model_state.ModelState` (taken before the recorded
forward) is the same (module tree, parameters' and buffers' versions and pointers, folded-weight
cache entries, hooks, train/eval and fused flags, the attributes the forward reads, optimizer
steps; one program per input signature and process flags: autocast state,
GOOGLENET_FAST_BACKEND), no autograd history
needed (grad off, or nothing requires grad), not compiling, exporting or tracing, a plain tensor
input, no active dispatch mode.  Otherwise the modules run as before (and record anew).  Each op
is called below the Autograd key (no history is needed), as the modules' own eval calls do.
"""
import os
from typing import List, Optional

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode

from . import fold_cache, forward_ad, ops
from .backends import native
from .model_state import CPU_PROGRAMS_ATTR as PROGRAMS_ATTR
from .model_state import ModelState, needs_grad, programs_for, signature


def _key(x: Tensor) -> tuple:
    """What a program is recorded for: the input's signature and the process state that changes
    which ops the forward runs (autocast, GOOGLENET_FAST_BACKEND)."""
    return signature(x) + (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"),
                           os.environ.get(ops.BACKEND_ENV, ""))


def _prepacking() -> bool:
    previous = native._C._set_weight_prepacking(False)
    native._C._set_weight_prepacking(previous)
    return previous


# Replay in C++ (csrc/program_run.cpp) where every step's arguments are tensors, scalars, int
# lists, dtypes, memory formats and layouts, as the fused model's programs' are; False: the
# Python loop below (tests compare both).
CPP_REPLAY = True


def _cpp_program(nslots: int, steps: tuple, out: int):
    """The program made replayable by the extension (``_C._program_make``), or None where a step
    has tensor-list arguments, or anything else the C++ replay does not take."""
    made = []
    for op, template, slots, lists, kwargs, outs, prepack, frees in steps:
        args = _positional(op, template, kwargs) if isinstance(op, torch._ops.OpOverload) else None
        if lists or args is None:
            return None
        made.append((op._schema.name, op._schema.overload_name, args, tuple(slots), tuple(outs), bool(prepack),
                     tuple(frees)))
    return native._C._program_make(nslots, out, tuple(made))


def _positional(op, template: tuple, kwargs: dict) -> Optional[tuple]:
    """A call's arguments as the leading positional arguments of ``op``'s schema: keyword
    arguments put in their places, the schema's defaults in the gaps before them; None where a
    keyword is not the schema's or a gap has no default."""
    if not kwargs:
        return tuple(template)
    formals = op._schema.arguments
    names = [a.name for a in formals]
    if any(k not in names[len(template):] for k in kwargs):
        return None
    args = list(template)
    for a in formals[len(template): 1 + max(names.index(k) for k in kwargs)]:
        if a.name in kwargs:
            args.append(kwargs[a.name])
        elif a.has_default_value():
            args.append(a.default_value)
        else:
            return None
    return tuple(args)


class Program:
    """One recorded forward: ``steps`` of (op, argument template, tensor slots, tensor-list
    arguments, kwargs, output slots, prepacking, slots released after the step) and the slot of
    the result; :meth:`run` replays it on a new input (in C++ where the steps allow, see
    :data:`CPP_REPLAY`)."""

    __slots__ = ("nslots", "steps", "out", "cpp")

    def __init__(self, nslots: int, steps: tuple, out: int):
        self.nslots, self.out = nslots, out
        # Release each intermediate after its last use (as the modules' Python does by rebinding
        # x): the allocator then hands the next layer memory that is still in cache, instead of
        # every activation of the forward staying alive to its end.
        last = {}
        for i, (_, _, slots, lists, _, outs, _) in enumerate(steps):
            for s in outs:
                last[s] = i  # an output nothing reads is released right away
            for _, s in slots:
                last[s] = i
            for _, items in lists:
                for _, s in items:
                    if s is not None:
                        last[s] = i
        frees = [[] for _ in steps]
        for s, i in last.items():
            if s not in (0, out):
                frees[i].append(s)
        self.steps = tuple(step + (tuple(f),) for step, f in zip(steps, frees))
        self.cpp = _cpp_program(nslots, self.steps, out)

    def run(self, x: Tensor) -> Tensor:
        if self.cpp is not None and CPP_REPLAY:
            return native._C._program_run(self.cpp, x)
        env: List[Optional[Tensor]] = [None] * self.nslots
        env[0] = x
        set_prepacking = native._C._set_weight_prepacking
        previous = set_prepacking(False)
        try:
            with torch._C._AutoDispatchBelowAutograd():
                for op, template, slots, lists, kwargs, outs, prepack, frees in self.steps:
                    args = step_args(template, slots, lists, env)
                    set_prepacking(prepack)
                    y = op(*args, **kwargs)
                    if len(outs) == 1:
                        env[outs[0]] = y
                    else:
                        for s, t in zip(outs, y):
                            env[s] = t
                    y = None
                    for s in frees:
                        env[s] = None
        finally:
            set_prepacking(previous)
        return env[self.out]


def step_args(template: tuple, slots: tuple, lists: tuple, env: list) -> list:
    """A recorded step's positional arguments: its constants (``template``) with the tensors of
    this forward filled in from ``env`` (the slots' current tensors), also inside list arguments."""
    args = list(template)
    for i, s in slots:
        args[i] = env[s]
    for i, items in lists:
        args[i] = [c if s is None else env[s] for c, s in items]
    return args


class _Recorder(TorchDispatchMode):
    """Notes every op dispatched inside (see the module docstring)."""

    def __init__(self, x: Tensor):
        super().__init__()
        self.slot_of = {id(x): 0}
        self.keep: List[Tensor] = [x]   # every slot's tensor alive while recording (ids stay unique)
        self.steps: List[tuple] = []
        self.failed: Optional[str] = None

    def _slot(self, t: Tensor) -> int:
        s = self.slot_of.get(id(t))
        if s is None:
            s = len(self.keep)
            self.slot_of[id(t)] = s
            self.keep.append(t)
        return s

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        prepack = _prepacking() if func.namespace == "googlenet_fast" else False
        out = func(*args, **kwargs)
        if self.failed is not None:
            return out
        if any(isinstance(v, Tensor) for v in kwargs.values()):
            self.failed = f"{func}: tensor keyword arguments"
            return out
        template, slots, lists = list(args), [], []
        for i, a in enumerate(args):
            if isinstance(a, Tensor):
                s = self.slot_of.get(id(a))
                if s is not None:
                    slots.append((i, s))
                    template[i] = None
            elif isinstance(a, (list, tuple)) and any(isinstance(v, Tensor) for v in a):
                items = [(None, self.slot_of[id(v)]) if isinstance(v, Tensor) and id(v) in self.slot_of
                         else (v, None) for v in a]
                lists.append((i, tuple(items)))
                template[i] = None
        if isinstance(out, Tensor):
            outs = (self._slot(out),)
        elif isinstance(out, (tuple, list)) and out and all(isinstance(t, Tensor) for t in out):
            outs = tuple(self._slot(t) for t in out)
        else:
            self.failed = f"{func} returned {type(out).__name__}"
            return out
        self.steps.append((func, tuple(template), tuple(slots), tuple(lists), dict(kwargs), outs, prepack))
        return out


def _replayable(x: Tensor) -> bool:
    return (type(x) is Tensor and not torch.compiler.is_compiling() and not torch.jit.is_tracing()
            and not torch.compiler.is_exporting() and _get_current_dispatch_mode() is None
            and not forward_ad.level_active() and native.available())


def replay(model, x: Tensor) -> Optional[Tensor]:
    """``model(x)`` by the model's valid program for x's signature, or None (nothing recorded
    for it, or not valid now: then the caller checks the input and calls :func:`record`).
    GoogLeNet.forward asks this before its input checks: a valid program implies them (its
    recorded forward passed them for an input of the same shape, dtype, device and autocast
    state, and the model state check covers the parameters' dtypes and the variant)."""
    if not _replayable(x):  # (first: under torch.compile nothing else here is traced)
        return None
    progs = model.__dict__.get(PROGRAMS_ATTR)
    if progs is None:
        return None
    key = _key(x)
    prog = progs.by_sig.get(key)
    if prog is None or needs_grad(progs.state, x) or progs.state.verifying() or not progs.state.same():
        return None
    progs.used(key)
    return prog.run(x)


def record(model, x: Tensor) -> Optional[Tensor]:
    """The eval forward of ``model`` (GoogLeNet, fused, eval) on the CPU input ``x``, recorded as
    the program for ``x``'s signature while the modules run (when the folded-weight caches are
    warm), after :func:`replay` found no valid program to run.  None where no program is to be
    recorded: programs do not apply (see the module docstring), or the signature's entry is still
    valid and :func:`replay` declined it (unrecordable, gradients needed, content checks on); the
    caller then runs the modules.

    x: the model's input, (N, 3, H, W) on the CPU, already checked by the caller.
    """
    if not _replayable(x):
        return None
    progs = model.__dict__.get(PROGRAMS_ATTR)
    key = _key(x)
    if progs is not None and key in progs.by_sig:
        if progs.state.same():
            return None
        model.__dict__.pop(PROGRAMS_ATTR, None)
    return _record(model, x, key)


def _ruled_out(model, x: Tensor) -> bool:
    """What rules a program out, from the modules in one pass, before :func:`_record` takes the
    model's state (0.8 ms for GoogLeNet on the 2-core Xeon, 3.8 ms with inference-tensor
    parameters; eval forwards with gradients enabled used to pay it on every call: bfloat16
    batch 1 17.8 -> 16.8 ms, 2026-12-06): autograd history (grad mode on and the input or a
    parameter requires grad), forward (pre-)hooks and forwards set on an instance (they must
    run), content checks (``verify_folded_cache``)."""
    if torch.is_grad_enabled() and (x.requires_grad or any(t.requires_grad for t in model.parameters())
                                    or any(t.requires_grad for t in model.buffers())):
        return True  # (as model_state.needs_grad: parameters and buffers)
    if fold_cache._has_global_hooks():
        return True
    for m in model.modules():
        if fold_cache._has_module_hooks(m):  # (hooks, or a forward set on the instance: they must run)
            return True
        if isinstance(m, fold_cache._FoldedWeightsCache) and m.verify_folded_cache:
            return True
    return False


def _record(model, x: Tensor, key: tuple) -> Optional[Tensor]:
    if _ruled_out(model, x):
        return None  # each call runs the modules
    state = ModelState(model)
    if state.uncounted:
        # Inference-tensor parameters: the folds' content checks must run on every call (no
        # replay); marked, so that the next calls skip taking the state (~4 ms) until it changes.
        programs_for(model, PROGRAMS_ATTR, lambda: state).by_sig[key] = None
        return None
    rec = _Recorder(x)
    with rec:
        y = model._forward_modules(x)
    if not state.same():  # the forward folded (cold caches) or changed the model: record later
        return y
    if rec.failed is not None or not isinstance(y, Tensor) or id(y) not in rec.slot_of:
        programs_for(model, PROGRAMS_ATTR, lambda: state).by_sig[key] = None
        return y
    # A constant sharing memory with the input would be this forward's data taken for a weight:
    # no program rather than a replay of stale data.  (Intermediates cached for later use would
    # have changed the model state: folded-weight cache entries are part of it.)
    mine = x.untyped_storage().data_ptr()
    for step in rec.steps:
        template, lists = step[1], step[3]
        consts = [a for a in template if isinstance(a, Tensor)]
        consts += [c for _, items in lists for c, s in items if isinstance(c, Tensor)]
        if any(c.untyped_storage().data_ptr() == mine for c in consts):
            programs_for(model, PROGRAMS_ATTR, lambda: state).by_sig[key] = None
            return y
    programs_for(model, PROGRAMS_ATTR, lambda: state).by_sig[key] = Program(len(rec.keep), tuple(rec.steps),
                                                                            rec.slot_of[id(y)])
    return y


def drop(model) -> None:
    """Forget the model's programs (the next forward records again)."""
    model.__dict__.pop(PROGRAMS_ATTR, None)
