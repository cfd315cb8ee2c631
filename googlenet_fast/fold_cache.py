"""BatchNorm folding and the folded-weight cache of the eval-mode fused modules.

Contract: a module using :class:`_FoldedWeightsCache` defines ``_fold_sources()`` (every tensor its
folded weights depend on, or None when its structure is not one the fold reads: reworked conv
blocks, hooks that must fire), ``_fold(dtype)`` (the folded tensors) and optionally
``_fold_extra_key()``; ``_cached_fold(dtype)`` then returns folded tensors that are never stale
for any change the key sees: each source's identity, storage and version counter, the count of
``torch.optim`` optimizer steps in the process, dtype; ``load_state_dict`` and ``.to()`` clear the
cache.  Inline (uncached) folds under torch.compile, torch.jit.trace, plain CUDA graph capture and
when gradients must reach the parameters; under ``googlenet_fast.cuda_graph.capture`` the cached
tensors become the graph's static buffers (googlenet_fast/graph_folds.py).  Used by
googlenet_fast/model.py (BasicConv2d, Inception).
"""
import contextlib
import functools
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor
from torch.nn.modules import module as _nn_module
from torch.optim.optimizer import register_optimizer_step_post_hook

from . import graph_folds, ops
from .backends import native

FOLD_OP = "googlenet_fast::fold_conv_weight"


def _fold_dtype(dtype: torch.dtype) -> torch.dtype:
    """Precision the folding is computed in: float64 for float32/float64 parameters, else float32."""
    return torch.float64 if dtype in (torch.float32, torch.float64) else torch.float32


def _fold_conv_block(block: nn.Module, dtype: torch.dtype) -> Tuple[Tensor, Optional[Tensor]]:
    """(weight, bias) of ``block.conv`` with ``block.bn`` (if any, eval statistics) folded in.

    ``w * gamma / sqrt(var + eps)`` and ``beta + (b - mean) * gamma / sqrt(var + eps)``, computed
    in float64 (float32 for half-precision parameters) with the BatchNorm module's own eps, then
    cast to ``dtype``.  Differentiable and traceable.
    """
    conv = block.conv
    bn = getattr(block, "bn", None)
    w, b = conv.weight, conv.bias
    if bn is None:
        return w.to(dtype), (None if b is None else b.to(dtype))
    acc = _fold_dtype(dtype)
    scale = 1.0 / torch.sqrt(bn.running_var.to(acc) + bn.eps)
    if bn.weight is not None:
        scale = bn.weight.to(acc) * scale
    shift = -bn.running_mean.to(acc) * scale
    if bn.bias is not None:
        shift = shift + bn.bias.to(acc)
    if b is not None:
        shift = shift + b.to(acc) * scale
    return fold_weight(w, scale, dtype), shift.to(dtype)


def fold_weight(w: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    """``(w.to(scale.dtype) * scale.reshape(-1, 1, ..., 1)).to(dtype)``: a conv weight (O, ...)
    scaled per output channel in ``scale``'s dtype (the fold's accumulation type), as ``dtype``.

    On the CPU with the extension loaded: its one-pass op ``googlenet_fast::fold_conv_weight``
    (csrc/cpu/fold_cpu.cpp: the same bits; the same gradients, registered below), instead of three
    passes with two temporaries of the accumulation type: eval with gradients to the parameters
    folds on every call (benchmarks/results/cpu-eval-grad-2026-12-05.md).  Elsewhere, and while
    compiling or tracing, the composition.  Errors: the op's (``weight``, ``scale``, ``dtype``).
    """
    if (w.device.type == "cpu" and scale.device.type == "cpu" and native.available()
            and not torch.compiler.is_compiling() and not torch.jit.is_tracing()):
        return torch.ops.googlenet_fast.fold_conv_weight(w, scale, dtype)
    return (w.to(scale.dtype) * scale.reshape((-1,) + (1,) * (w.dim() - 1))).to(dtype)


def _fold_fake(w, scale, dtype):
    if scale.device != w.device:  # (one meta argument reaches this kernel with the other on the CPU)
        raise ValueError(f"scale: expected a tensor on weight's device {w.device}, got {scale.device}")
    if dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        raise TypeError(f"dtype: expected float32, float64, bfloat16 or float16, got {dtype}")
    return w.new_empty(w.shape, dtype=dtype)


def _fold_setup_context(ctx, inputs, output):
    w, scale, _ = inputs
    ctx.w_dtype = w.dtype
    ctx.save_for_backward(w if ctx.needs_input_grad[1] else None, scale)


def _fold_backward(ctx, grad):
    # the composition's formula, op by op: to(dtype)'s backward casts grad to the accumulation
    # type, mul's gives grad * scale and (grad * w).sum_to_size(scale's shape), to(acc)'s casts back
    w, scale = ctx.saved_tensors
    g = grad.to(scale.dtype)
    shape = (-1,) + (1,) * (grad.dim() - 1)
    gw = (g * scale.reshape(shape)).to(ctx.w_dtype) if ctx.needs_input_grad[0] else None
    gs = None
    if ctx.needs_input_grad[1]:
        gs = (g * w.to(scale.dtype)).sum_to_size(scale.reshape(shape).shape).reshape(-1)
    return gw, gs, None


if native.available():
    torch.library.register_fake(FOLD_OP, _fold_fake)
    torch.library.register_autograd(FOLD_OP, _fold_backward, setup_context=_fold_setup_context)


def _has_module_hooks(m: nn.Module) -> bool:
    """Whether ``m`` has forward (pre-)hooks or a ``forward`` of its own (set on the instance,
    e.g. a patched one): either must run, so the fused paths then call the modules."""
    return bool(m._forward_hooks or m._forward_pre_hooks) or "forward" in m.__dict__


def _has_global_hooks() -> bool:
    """Whether global forward (pre-)hooks are registered (nn.modules.module.register_module_forward_hook):
    they must see every module run, so the fused paths then call the modules."""
    return bool(_nn_module._global_forward_hooks or _nn_module._global_forward_pre_hooks)


def _block_sources(block: nn.Module) -> Optional[List[Optional[Tensor]]]:
    """Every tensor the folded weights of a conv block depend on; None when the block is not one
    the fold can read as plain tensors: a conv whose weight is not a plain parameter
    (parametrizations such as weight_norm, pruning's weight_orig), a ``bn`` that is not a
    BatchNorm2d with running statistics (e.g. fused away into nn.Identity), or forward hooks on
    the conv or the bn (they must fire: the block then runs its modules).

    BatchNorm's num_batches_tracked is included although folding does not read it: a train-mode
    forward updates running_mean/var in place inside the kernel without bumping their version
    counters (torch 2.14, CPU), while ``num_batches_tracked += 1`` does bump its own.
    """
    # Read the modules' own dicts: nn.Module.__getattr__ costs ~0.5 us a lookup, and this runs
    # for every conv of every fused forward.
    if _has_global_hooks():
        return None  # a global hook must see the conv and the bn run
    conv = block._modules.get("conv")
    if type(conv) is not nn.Conv2d or _has_module_hooks(conv):
        return None
    p = conv._parameters
    w = p.get("weight")
    if w is None:
        return None
    out = [w, p.get("bias")]
    bn = block._modules.get("bn")
    if bn is not None:
        bp, bb = bn._parameters, bn._buffers
        mean, var = bb.get("running_mean"), bb.get("running_var")
        if not isinstance(bn, nn.BatchNorm2d) or mean is None or var is None or _has_module_hooks(bn):
            return None
        out += [bp.get("weight"), bp.get("bias"), mean, var, bb.get("num_batches_tracked")]
    return out


def version_counted(fn):
    """Decorator for the ``__init__`` and ``_apply`` of the modules with folded-weight caches (and
    GoogLeNet's): run inside ``torch.inference_mode()``, they still make their parameters and
    buffers as normal tensors, with version counters that in-place updates bump (inference
    tensors have none, and their updates would reach the cache only through content checks:
    ~7 ms per batch-1 forward on a 2-core Xeon, 40% of its time).  torchvision's modules built
    there would hold inference tensors; ours also stay usable for training later."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if torch.is_inference_mode_enabled():
            with torch.inference_mode(False):
                return fn(*args, **kwargs)
        return fn(*args, **kwargs)
    return wrapper


def _capturing(device: torch.device) -> bool:
    """True inside a CUDA graph capture on ``device``'s current stream."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _tensor_key(t: Optional[Tensor]):
    """What identifies a source tensor's state, cheaply (this runs on every fused forward):
    the object (a replaced parameter, ``assign=True`` loads), its storage (``.data = ...``) and
    its version counter (in-place updates)."""
    if t is None:
        return None
    try:
        version = t._version
    except RuntimeError:  # inference tensors carry no version counter: the content check decides
        version = None
    return (id(t), t.data_ptr(), version)


def cache_entries(module: nn.Module) -> tuple:
    """The module's folded-weight cache: a tuple of entries ``(key, snapshot, value)``, at most one
    per target dtype (``key[0]``), all folded from the same source state (``key[1:]``); () when
    empty.  A new tuple whenever an entry is added or replaced, so that identity comparisons
    (googlenet_fast/model_state.py) see every refold, and none when calls only switch between
    dtypes already folded (float32 and autocast-bfloat16 eval calls alternating)."""
    return module.__dict__.get("_fold_cache") or ()


def cache_entry(module: nn.Module, dtype: torch.dtype):
    """The cache entry of ``module`` for target ``dtype``, or None."""
    for e in cache_entries(module):
        if e[0][0] == dtype:
            return e
    return None


def store_entry(module: nn.Module, key: tuple, snapshot, value) -> None:
    """Put ``(key, snapshot, value)`` into ``module``'s cache, replacing the entry of its dtype and
    dropping the entries of other dtypes folded from another source state (stale)."""
    keep = tuple(e for e in cache_entries(module) if e[0][0] != key[0] and e[0][1:] == key[1:])
    module.__dict__["_fold_cache"] = keep + ((key, snapshot, value),)


# Optimizer steps taken in this process: part of every folded-weight cache key (see
# _FoldedWeightsCache).  A list, so the hook below can bump it in place.
_OPTIMIZER_STEPS = [0]


def _count_optimizer_step(optimizer, args, kwargs) -> None:
    _OPTIMIZER_STEPS[0] += 1
    clear_packed_parameters()


def verifying(modules) -> bool:
    """Whether any of these folded-weight cache modules checks its sources' contents on every hit
    (``verify_folded_cache``): then nothing may bypass those checks (a recorded program, a packed
    parameter)."""
    return any(getattr(m, "verify_folded_cache", False) for m in modules)


def clear_packed_parameters() -> None:
    """Drop the CPU ops' packed weight copies (csrc/cpu/packed_weights.h): the eval head packs
    ``fc.weight``, a parameter itself, which fused optimizers and writes through ``.data`` change
    without bumping its version counter.  Called after every optimizer step and by
    ``GoogLeNet.clear_folded_cache()``; a no-op without the extension."""
    clear = getattr(native._C, "_clear_prepacked_weights", None) if native.available() else None
    if clear is not None:
        clear()


register_optimizer_step_post_hook(_count_optimizer_step)


def _clear_fold_cache_after_load(module: nn.Module, incompatible_keys) -> None:
    module.clear_folded_cache()


class _FoldedWeightsCache:
    """Mixin: caches ``self._fold(dtype)`` (a tuple of tensors) until one of ``self._fold_sources()``
    changes, one fold per target dtype (:func:`cache_entries`: eval calls that alternate between
    float32 and autocast bfloat16 each find their own).

    The key holds each source tensor's ``data_ptr`` and ``_version`` (in-place updates bump it:
    ``load_state_dict``, in-place ops under ``no_grad``), dtype, device, shape and strides
    (``.to()``, ``.double()``, ``assign=True`` loads), the target dtype, any BatchNorm eps, and a
    count of optimizer steps taken in the process (a global ``torch.optim`` step hook: the fused
    optimizers, ``Adam(fused=True)`` etc., update parameters without bumping their version
    counters).  ``load_state_dict`` also clears the cache (a post hook).  ``param.data.mul_()``
    and the like write through a tensor with its own version counter, invisible to the key: after
    such writes call :meth:`clear_folded_cache` (or ``GoogLeNet.clear_folded_cache()``).  Opt-in
    on CPU tensors: with the class or instance attribute ``verify_folded_cache = True`` every hit
    is also checked against a snapshot of the sources (``torch.equal``), which catches ``.data``
    writes at ~7 ms per batch-1 224x224 GoogLeNet forward on a 2-core Xeon (2026-12-06: 18.2 vs
    10.9 ms; the CPU programs do not replay either; hence off by default).  On CUDA the check is
    never made (it would synchronize the device on every call).

    Sources that are inference tensors have no version counter, so no key sees their in-place
    updates: on the CPU such a module's hits are always content-checked as above, on CUDA it
    folds on every call (not cached).  Our modules built or converted under
    ``torch.inference_mode()`` make normal tensors (:func:`version_counted`); inference tensors
    come in through ``load_state_dict(..., assign=True)`` or assigned parameters.

    During CUDA graph capture through ``googlenet_fast.cuda_graph.capture`` (which warms the
    cache up first) the cached tensors become the graph's static buffers, refreshed before each
    replay when a source moved (googlenet_fast/graph_folds.py).  Not cached (folded inline on
    every call): under ``torch.compile`` (traceable, no graph break), during any other CUDA graph
    capture (each replay then folds the parameters as they are), and when
    gradients are enabled and a source requires grad (so eval-mode gradients reach the
    parameters).  The cache is not part of the state_dict, is dropped by ``.to()``/``.cuda()``/
    ``.double()`` and by pickling/deepcopy.
    """

    verify_folded_cache: bool = False

    def _fold_sources(self) -> List[Optional[Tensor]]:
        raise NotImplementedError

    def _fold_extra_key(self) -> tuple:
        return ()

    def _fold(self, dtype: torch.dtype) -> Tuple[Optional[Tensor], ...]:
        raise NotImplementedError

    def _fold_key(self, dtype: torch.dtype, sources: List[Optional[Tensor]]) -> tuple:
        """The cache key of a fold of ``sources`` to ``dtype`` (see the class docstring)."""
        return self._fold_key_counted(dtype, sources)[0]

    def _fold_key_counted(self, dtype: torch.dtype, sources: List[Optional[Tensor]]) -> Tuple[tuple, bool]:
        """(:meth:`_fold_key`, whether every source has a version counter): False when one is an
        inference tensor, whose in-place updates no key can see."""
        counted = True
        try:  # (the common case inlined: this runs for every fused module on every call)
            state = tuple([None if s is None else (id(s), s.data_ptr(), s._version) for s in sources])
        except RuntimeError:  # an inference tensor (no version counter) among them
            state = tuple(_tensor_key(s) for s in sources)
            counted = False
        return (dtype, _OPTIMIZER_STEPS[0], self._fold_extra_key(), state), counted

    def _cached_fold(self, dtype: torch.dtype) -> Optional[Tuple[Optional[Tensor], ...]]:
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            # Traced into the graph: torch.jit.trace's check runs the model twice and compares
            # the graphs, which a cache built by the first run would make differ.
            return self._fold(dtype)
        sources = self._fold_sources()
        if sources is None:  # not a structure the fold reads (see _block_sources)
            return None
        if torch.is_grad_enabled() and any(s is not None and s.requires_grad for s in sources):
            return self._fold(dtype)
        device = sources[0].device
        key, counted = self._fold_key_counted(dtype, sources)
        if not counted and device.type != "cpu":
            # An inference tensor among the sources: in-place updates bump no version counter,
            # and a content check would synchronize the device: fold on every call (inside a
            # CUDA graph capture too, so that each replay folds the parameters as they are).
            self.clear_folded_cache()  # (entries folded before then: stale, never hit again)
            return self._fold(dtype)
        entry = cache_entry(self, dtype)
        if _capturing(device):
            # Inside CUDA graph capture.  Through googlenet_fast.cuda_graph.capture (recording
            # active) with a warm cache: the graph reads the cached tensors as static buffers,
            # which the replay helper refreshes outside the graph when a source moves
            # (googlenet_fast/graph_folds.py).  Otherwise fold in the graph, so that every replay
            # reads the parameters as they are then (a cached tensor would go stale).
            if entry is not None and entry[0] == key and graph_folds.active():
                graph_folds.record(self, dtype, key, entry[2])
                return entry[2]
            return self._fold(dtype)
        # Content checks would synchronize a GPU on every call: CPU tensors only.  Always made
        # where a source is an inference tensor (no version counter to see in-place updates).
        verify = (not counted or bool(self.verify_folded_cache)) and device.type == "cpu"
        if entry is not None and entry[0] == key:
            snapshot = entry[1]
            if not verify or (snapshot is not None and all(
                    s is None or torch.equal(s, c) for s, c in zip(sources, snapshot))):
                return entry[2]
        # Normal (non-inference) tensors even when filled under inference_mode, so that they can
        # be used later in autograd-recording code; no_grad inside (inference_mode(False) enables grad).
        with torch.inference_mode(False), torch.no_grad():
            value = self._fold(dtype)
            if value is not None:
                # Never hand out a parameter itself (a fold without BatchNorm passes weights
                # through): cached values must change identity when the cache is rebuilt, since
                # the CPU op's prepacked copies are keyed on them (see ops.weight_prepacking).
                storages = {s.untyped_storage().data_ptr() for s in sources if s is not None}
                value = tuple(v.clone() if isinstance(v, Tensor) and v.untyped_storage().data_ptr() in storages
                              else v for v in value)
            snapshot = [None if s is None else s.detach().clone() for s in sources] if verify else None
        store_entry(self, key, snapshot, value)
        return value

    def clear_folded_cache(self) -> None:
        """Drop the cached folded weights (they are rebuilt on the next fused call)."""
        self.__dict__.pop("_fold_cache", None)

    def _prepacking(self, folded: Tuple[Optional[Tensor], ...]):
        """``ops.weight_prepacking()`` when ``folded`` is this cache's own value (its tensors are
        written by nobody but the cache, so oneDNN may keep packed copies of them); a no-op
        context otherwise: folded inline (under torch.compile, CUDA graph capture, or with
        gradients to the parameters), where a packed copy would be made for one use."""
        if torch.compiler.is_compiling():
            return contextlib.nullcontext()
        if any(e[2] is folded for e in cache_entries(self)):
            return ops.weight_prepacking()
        return contextlib.nullcontext()

    def _register_fold_cache_hooks(self) -> None:
        self.register_load_state_dict_post_hook(_clear_fold_cache_after_load)

    @version_counted
    def _apply(self, *args, **kwargs):
        self.clear_folded_cache()
        return super()._apply(*args, **kwargs)

    def __getstate__(self):
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        state = dict(state)
        state.pop("_fold_cache", None)
        return state
