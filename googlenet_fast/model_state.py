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
* every module's train/eval flag and its ``fused`` switch (GoogLeNet's, the Inception modules',
  the stem's BasicConv2d);
* the attributes the forward reads: the model's variant and transform_input, each
  convolution's geometry, each max pool's, each LRN's constants, each BatchNorm's eps, the average
  pool's output size;
* the optimizer-step count of googlenet_fast.fold_cache (fused optimizers bump no version counter);
* any module with ``verify_folded_cache`` set (``verify``: its content checks must run, no replay).

Not seen, as by the folded-weight caches: writes through ``param.data`` (``p.data.mul_(2)``), which
bump no version counter; call ``model.clear_folded_cache()`` after them.
"""
from itertools import repeat
from operator import attrgetter, is_
from typing import Dict

import torch
import torch.nn as nn
from torch import Tensor

from . import fold_cache

_VERSION = attrgetter("_version")
_TRAINING = attrgetter("training")
_REQUIRES_GRAD = attrgetter("requires_grad")
_DATA_PTR = Tensor.data_ptr
_GET = dict.get

# The attributes of each module type that the network path reads (fused_forward_supported,
# the folds, the forward's pool and LRN arguments).
_ATTRS = {
    nn.Conv2d: attrgetter("kernel_size", "stride", "padding", "dilation", "groups", "padding_mode"),
    nn.MaxPool2d: attrgetter("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
    nn.LocalResponseNorm: attrgetter("size", "alpha", "beta", "k"),
    nn.BatchNorm2d: attrgetter("eps"),
    nn.AdaptiveAvgPool2d: attrgetter("output_size"),
}
_MODEL_ATTRS = attrgetter("training", "variant", "transform_input")


class ModelState:
    """The model state a set of programs was recorded against (see the module docstring);
    :meth:`same` compares it with the model's current state in one pass of flat comparisons."""

    def __init__(self, model: nn.Module):
        mods = list(model.modules())
        dicts, keys, objs = [], [], []
        tensors, seen = [], set()
        hooks = []
        attr_mods: Dict[object, list] = {}
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
                dicts.append(m.__dict__)
                keys.append("_fold_cache")
                objs.append(m.__dict__.get("_fold_cache"))
            hooks += (m._forward_hooks, m._forward_pre_hooks)
            getter = _ATTRS.get(type(m))
            if getter is not None:
                attr_mods.setdefault(getter, []).append(m)
        self.model = model
        self.dicts, self.keys, self.objs = tuple(dicts), tuple(keys), tuple(objs)
        self.tensors = tuple(tensors)
        self.versions = _versions(self.tensors)
        self.ptrs = tuple(map(_DATA_PTR, self.tensors))
        self.children = tuple(m._modules for m in mods)  # their sizes: a module added anywhere
        self.child_counts = tuple(map(len, self.children))
        self.hooks = tuple(hooks)
        self.hook_counts = tuple(map(len, self.hooks))
        self.attr_groups = tuple((g, tuple(ms)) for g, ms in attr_mods.items())
        self.attrs = tuple(tuple(map(g, ms)) for g, ms in self.attr_groups)
        self.model_attrs = _MODEL_ATTRS(model)
        self.mods = tuple(mods)
        self.mod_dicts = tuple(m.__dict__ for m in mods)
        self.flags = self._flags()
        self.global_hooks = fold_cache._has_global_hooks()
        self._steps = fold_cache._OPTIMIZER_STEPS
        self.optimizer_steps = self._steps[0]
        self.verify = any(getattr(m, "verify_folded_cache", False) for m in mods
                          if isinstance(m, fold_cache._FoldedWeightsCache))
        self._global_hooks = fold_cache._has_global_hooks

    def _flags(self) -> tuple:
        """Every module's training flag and its ``fused`` / ``_fused`` switch (None: none)."""
        n = len(self.mods)
        return (tuple(map(_TRAINING, self.mods)), tuple(map(_GET, self.mod_dicts, repeat("fused", n))),
                tuple(map(_GET, self.mod_dicts, repeat("_fused", n))))

    def same(self) -> bool:
        """True when nothing a program depends on changed in the model (one pass, no keys)."""
        return (self._steps[0] == self.optimizer_steps
                and _MODEL_ATTRS(self.model) == self.model_attrs
                and self._flags() == self.flags
                and all(map(is_, map(_GET, self.dicts, self.keys), self.objs))
                and _versions(self.tensors) == self.versions
                and tuple(map(_DATA_PTR, self.tensors)) == self.ptrs
                and tuple(map(len, self.children)) == self.child_counts
                and tuple(map(len, self.hooks)) == self.hook_counts
                and all(tuple(map(g, ms)) == a for (g, ms), a in zip(self.attr_groups, self.attrs))
                and self._global_hooks() == self.global_hooks)


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
