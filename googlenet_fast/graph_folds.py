"""Folded weights as static buffers of a captured CUDA graph (googlenet_fast.cuda_graph).

Eval-mode fused modules run on BatchNorm-folded weights that they cache (fold_cache._FoldedWeightsCache).
Folding inside a CUDA graph would put ~15 small kernels per conv block into every replay (943
kernels per replay of GoogLeNet against its 22 compute kernels, measured on an H200 on
2026-12-04: 2.1 ms per batch-1 replay).  Instead, while :func:`recording` is active around a
capture, a module whose cache is warm hands the graph its cached tensors and registers them here
(:func:`record`); the graph reads them as static buffers.  Before each replay,
:func:`refresh` compares every registered module's sources (parameter and buffer identities,
storages, version counters, the optimizer-step count: the cache's own key) with their state at
capture, and where one moved, folds again outside the graph and copies the result into the
static buffers in place, so that a replay never runs on stale weights.  A module whose structure
changed so that its fold no longer fits the buffers (another shape, a reworked conv block) makes
:func:`refresh` raise: capture again.

A capture made without :func:`recording` (a plain ``torch.cuda.graph`` around the model) still
folds inside the graph, as before: slower replays, never stale.
"""
import threading
from contextlib import contextmanager
from typing import List, Optional, Tuple

import torch
from torch import Tensor

_STATE = threading.local()


class FoldEntry:
    """One module's folded weights baked into a graph: the module, the dtype folded to, the
    cache key at capture (or at the last refresh) and the static tensors the graph reads."""

    __slots__ = ("module", "dtype", "key", "static")

    def __init__(self, module, dtype: torch.dtype, key, static: Tuple[Optional[Tensor], ...]):
        self.module, self.dtype, self.key, self.static = module, dtype, key, static


@contextmanager
def recording():
    """Collect the folded-weight buffers that modules hand to a capture in progress; yields the
    list of :class:`FoldEntry` (one per module and dtype)."""
    entries: List[FoldEntry] = []
    prev = getattr(_STATE, "entries", None)
    _STATE.entries = entries
    try:
        yield entries
    finally:
        _STATE.entries = prev


def active() -> bool:
    """True while :func:`recording` is collecting (in this thread)."""
    return getattr(_STATE, "entries", None) is not None


def record(module, dtype: torch.dtype, key, static: Tuple[Optional[Tensor], ...]) -> None:
    """Register ``static`` (the module's cached folded weights, read by the graph) with the cache
    key they were folded under.  Recorded once per (module, dtype)."""
    entries = _STATE.entries
    for e in entries:
        if e.module is module and e.dtype == dtype:
            return
    entries.append(FoldEntry(module, dtype, key, static))


def refresh(entries: List[FoldEntry]) -> int:
    """Bring every entry's static buffers up to date with its module's current parameters and
    buffers (outside any graph, on the current stream); returns how many modules were folded
    again (0 when nothing moved: a few microseconds per module).

    Raises RuntimeError when a module can no longer be folded into the captured buffers (its conv
    blocks were reworked, or the fold changed shape or dtype): capture the graph again.
    """
    from . import fold_cache  # (fold_cache imports this module)

    refolded = 0
    for e in entries:
        m = e.module
        sources = m._fold_sources()
        if sources is None:
            raise RuntimeError(f"CUDA graph replay: {type(m).__name__} was changed since capture (a conv block "
                               "is no longer a plain conv + BatchNorm, or has hooks now); capture the graph again")
        key = m._fold_key(e.dtype, sources)
        if key == e.key:
            continue
        with torch.inference_mode(False), torch.no_grad():
            fresh = m._fold(e.dtype)
        if fresh is None or len(fresh) != len(e.static) or any(
                (a is None) != (b is None) or (a is not None and (a.shape != b.shape or a.dtype != b.dtype))
                for a, b in zip(e.static, fresh)):
            raise RuntimeError(f"CUDA graph replay: the folded weights of {type(m).__name__} changed shape or "
                               "dtype since capture; capture the graph again")
        with torch.no_grad():
            for s, f in zip(e.static, fresh):
                if s is not None:
                    s.copy_(f)
        e.key = key
        cache = fold_cache.cache_entry(m, e.dtype)
        if cache is None or cache[2] is e.static:  # the module's eager calls may read them too
            fold_cache.store_entry(m, key, None, e.static)
        refolded += 1
    return refolded
