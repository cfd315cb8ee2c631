"""The state of a model that a recorded forward depends on, compared in one pass.

A :class:`ModelState` is taken when a forward is recorded (the CPU op programs of
googlenet_fast/cpu_program.py, the CUDA launch programs of googlenet_fast/backends/triton/program.py);
:meth:`ModelState.same` says whether anything that forward read may have changed since:

* the module tree: every ``_modules`` / ``_parameters`` / ``_buffers`` entry of every module still
  the same object (a swapped module, ``load_state_dict(assign=True)``, a replaced parameter), no
  module added or removed anywhere, every folded-weight cache entry still the one recorded
  (``clear_folded_cache()``, a refold, googlenet_fast.graph_folds' refresh);
* every parameter and buffer: version counter (in-place updates, ``load_state_dict``) and data
  pointer (``.data = ...``, ``.to()``);
* forward (pre-)hooks: how many each module has, and whether global ones exist;
* every module's train/eval flag, any ``forward`` set on the instance (a patched forward), and
  its ``fused`` switch (GoogLeNet's, the Inception modules', the stem's BasicConv2d);
* the attributes the forward reads: the model's variant and transform_input, each
  convolution's geometry, each max pool's, each LRN's constants, each BatchNorm's eps, the average
  pool's output size;
* the optimizer-step count of googlenet_fast.fold_cache (fused optimizers bump no version counter);
* any module with ``verify_folded_cache`` set, or any parameter or buffer that is an inference
  tensor (``verifying``: the folded-weight caches' content checks must run, no replay).

Not seen, as by the folded-weight caches: writes through ``param.data`` (``p.data.mul_(2)``), which
bump no version counter; call ``model.clear_folded_cache()`` after them.
"""
from array import array
from itertools import repeat
from operator import attrgetter, contains, is_

import torch
import torch.nn as nn
from torch import Tensor

from . import fold_cache
from .backends import native

# The comparisons of same() in one C++ pass (csrc/state_check.cpp): after a forward has evicted
# the model's objects from the caches, the Python loops below wait on one cache miss after
# another (200-540 us after a batch-1 CPU forward vs 83 us hot, 2-core EPYC, 2026-12-05); the C++
# pass prefetches them first.  None without the compiled extension: the Python comparisons run.
_SAME_C = getattr(native._C, "_model_state_same", None)

_VERSION = attrgetter("_version")
_REQUIRES_GRAD = attrgetter("requires_grad")
_DATA_PTR = Tensor.data_ptr
_GET = dict.get

# The attributes of each module type that the recorded forwards read (the structure checks, the
# folds, the pool and LRN arguments), compared through the modules' __dict__.
_ATTRS = {
    nn.Conv2d: ("kernel_size", "stride", "padding", "dilation", "groups", "padding_mode"),
    nn.MaxPool2d: ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
    nn.LocalResponseNorm: ("size", "alpha", "beta", "k"),
    nn.BatchNorm2d: ("eps",),
    nn.AdaptiveAvgPool2d: ("output_size",),
}
_MODEL_ATTRS = ("variant", "transform_input")
# Every module's train/eval flag, and the fused switches of the model's own modules (GoogLeNet's
# ``_fused``, Inception's and BasicConv2d's ``fused``) where a module has them.
_FLAGS = ("fused", "_fused")


class ModelState:
    """The model state a set of programs was recorded against (see the module docstring);
    :meth:`same` compares it with the model's current state in one pass of flat comparisons."""

    def __init__(self, model: nn.Module):
        mods = list(model.modules())
        dicts, keys, objs = [], [], []
        tensors, seen = [], set()
        sized = [m._modules for m in mods]  # a module added anywhere
        attr_dicts, attr_names = [model.__dict__] * len(_MODEL_ATTRS), list(_MODEL_ATTRS)
        fold_mods = []
        for m in mods:
            for d in (m._modules, m._parameters, m._buffers):
                for k, v in d.items():
                    dicts.append(d)
                    keys.append(k)
                    objs.append(v)
                    if isinstance(v, Tensor) and id(v) not in seen:
                        seen.add(id(v))
                        tensors.append(v)
            if isinstance(m, fold_cache._FoldedWeightsCache):
                fold_mods.append(m)
                dicts.append(m.__dict__)
                keys.append("_fold_cache")
                objs.append(m.__dict__.get("_fold_cache"))
            sized += (m._forward_hooks, m._forward_pre_hooks)
            # ("forward": one set on the instance, a patched forward, must run: the modules then run)
            names = ("training", "forward") + _ATTRS.get(type(m), ()) + tuple(f for f in _FLAGS if f in m.__dict__)
            attr_dicts += [m.__dict__] * len(names)
            attr_names += names
        self.dicts, self.keys, self.objs = tuple(dicts), tuple(keys), tuple(objs)
        self.tensors = tuple(tensors)
        self.versions = _versions(self.tensors)
        # Inference tensors (assigned by the user: our modules make normal ones even under
        # inference_mode) have no version counter: their in-place updates are seen only by the
        # folded-weight caches' content checks.
        self.uncounted = None in self.versions
        self.ptrs = tuple(map(_DATA_PTR, self.tensors))
        self.sized = tuple(sized)
        self.sizes = tuple(map(len, self.sized))
        self.attr_dicts, self.attr_names = tuple(attr_dicts), tuple(attr_names)
        self.attrs = tuple(map(_GET, self.attr_dicts, self.attr_names))
        self.fold_modules = tuple(fold_mods)
        self._fold_dicts = tuple(m.__dict__ for m in fold_mods)
        self._fold_classes = tuple({type(m): None for m in fold_mods})
        self.global_hooks = fold_cache._has_global_hooks()
        self._steps = fold_cache._OPTIMIZER_STEPS
        self.optimizer_steps = self._steps[0]
        self._compared = (self.dicts, self.keys, self.objs, self.attr_dicts, self.attr_names, self.attrs,
                          self.tensors, array("q", (-1 if v is None else v for v in self.versions)),
                          array("Q", self.ptrs), self.sized, self.sizes)

    def same(self) -> bool:
        """True when nothing a program depends on changed in the model (one pass, no keys)."""
        if self._steps[0] != self.optimizer_steps or fold_cache._has_global_hooks() != self.global_hooks:
            return False
        if _SAME_C is not None:
            return _SAME_C(*self._compared)
        return self.same_python()

    def same_python(self) -> bool:
        """:meth:`same` in Python (where the compiled extension is missing; tests compare both)."""
        return (self._steps[0] == self.optimizer_steps
                and tuple(map(_GET, self.attr_dicts, self.attr_names)) == self.attrs
                and all(map(is_, map(_GET, self.dicts, self.keys), self.objs))
                and _versions(self.tensors) == self.versions
                and tuple(map(_DATA_PTR, self.tensors)) == self.ptrs
                and tuple(map(len, self.sized)) == self.sizes
                and fold_cache._has_global_hooks() == self.global_hooks)

    def verifying(self) -> bool:
        """Whether a folded-weight cache of the model checks its sources' contents on every hit
        (``verify_folded_cache``, CPU only; always where a parameter or buffer is an inference
        tensor, :attr:`uncounted`): the program must not bypass that."""
        if self.uncounted:
            return True
        # (checked on every replay: the common all-off case in ~1 us, from the classes' flags
        # and whether any instance has its own)
        if (not any(c.verify_folded_cache for c in self._fold_classes)
                and not any(map(contains, self._fold_dicts, repeat("verify_folded_cache")))):
            return False
        return fold_cache.verifying(self.fold_modules)


def _safe_version(t: Tensor):
    try:
        return t._version
    except RuntimeError:  # an inference tensor: no version counter (as fold_cache._tensor_key)
        return None


def _versions(tensors) -> tuple:
    try:
        return tuple(map(_VERSION, tensors))
    except RuntimeError:
        return tuple(map(_safe_version, tensors))


def needs_grad(state: ModelState, x: Tensor) -> bool:
    """Whether a forward of the model on ``x`` would record autograd history (grad mode on and
    the input or a parameter requires grad): recorded forwards replay without it."""
    return torch.is_grad_enabled() and (x.requires_grad or any(map(_REQUIRES_GRAD, state.tensors)))


# ----------------------------------------------------------------------------------------------
# A model's programs (the CPU op programs and the CUDA launch programs keep theirs alike)

# Keys (input signatures) per model and kind of program; past it the least recently used is
# dropped.  Was 16, starting over when full: a server cycling through batch sizes 1-20 recorded
# again on nearly every call (a batch-1 CPU forward 4.6 -> 8.2 ms; 2026-12-05,
# benchmarks/results/cpu-batch-cycling-2026-12-05.md).  A program holds references to the
# model's folded weights and its list of steps, no activations.
MAX_PROGRAMS = 64

# GoogLeNet.__dict__ keys of its programs: the CUDA launch programs (backends/triton/program.py)
# and the CPU op programs (cpu_program.py).  clear_folded_cache(), .to() and pickling drop both.
LAUNCH_PROGRAMS_ATTR = "_launch_programs"
CPU_PROGRAMS_ATTR = "_cpu_programs"
PROGRAM_ATTRS = (LAUNCH_PROGRAMS_ATTR, CPU_PROGRAMS_ATTR)


def signature(x: Tensor) -> tuple:
    """What a program is recorded for: the input's shape, strides, dtype and device."""
    return (x.shape, x.stride(), x.dtype, x.device)


class Programs:
    """A model's programs by key (the input's :func:`signature`, and whatever else the kind of
    program depends on) and the :class:`ModelState` they were recorded against.  ``by_sig`` is
    in order of use, least recent first (:meth:`used`)."""

    __slots__ = ("state", "by_sig")

    def __init__(self, state: ModelState):
        self.state = state
        self.by_sig = {}

    def used(self, key) -> None:
        """Mark ``key``'s program as the most recently used (a replay)."""
        self.by_sig[key] = self.by_sig.pop(key)


def programs_for(model: nn.Module, attr: str, state) -> Programs:
    """``model.__dict__[attr]``, the model's programs of one kind, started over (with the
    ModelState ``state()`` returns) when they were recorded against another state; when full, the
    least recently used program is dropped to make room for one more."""
    progs = model.__dict__.get(attr)
    if progs is None or not progs.state.same():
        progs = Programs(state())
        model.__dict__[attr] = progs
    while len(progs.by_sig) >= MAX_PROGRAMS:
        del progs.by_sig[next(iter(progs.by_sig))]
    return progs
