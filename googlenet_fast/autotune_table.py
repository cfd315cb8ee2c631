"""Which GPU backend ``backend="auto"`` runs for a CUDA tensor: triton or cuda, per Inception
configuration, dtype and batch size.

The choice is a one-time measurement, cached: the first eager call with a new key runs both
backends on the caller's own tensors (a few warm runs each, timed with CUDA events on the current
stream) and keeps the faster.  Choices live in memory and, unless GOOGLENET_FAST_BACKEND_CACHE is
set to an empty string, in a JSON file (default ``~/.cache/googlenet_fast/gpu_backends.json``) so
that later processes skip the measurement.  Keys: device name, dtype, the module's channel
configuration and kernel sizes, spatial size, and the batch size rounded up to a power of two.

No measurement happens while tracing (torch.compile) or capturing a CUDA graph, nor when only
one GPU backend is usable: then triton is chosen when it is importable, cuda otherwise.

The whole network has a choice of its own (:func:`pick_network_path`): GoogLeNet(fused=True) in
eval on CUDA runs either the Triton network kernels ("network": 21 Triton launches) or its
modules one by one ("modules": the fused Inception op with its own backend choice, cuDNN for the
stem).  That choice is measured by wall clock of whole eager forwards, host time included: on
the H200 (2026-12-04) batch 1 took 4.89 ms on the network path, host-bound by its Python
launches, and 1.55 ms on the module path with the CUDA backend, while at batch 256 the network
path won, 6.33 ms against 16.70.
"""
import json
import os
import time
import threading
from typing import Callable, Dict, Optional, Sequence

import torch

CACHE_ENV = "GOOGLENET_FAST_BACKEND_CACHE"
GPU_BACKENDS = ("triton", "cuda")
NETWORK_PATHS = ("network", "modules")   # the whole network: Triton network kernels or the modules
POOL_PATHS = ("pooled", "separate")      # a transition pool: in the next module's loaders, or its own kernel
STEM_PATHS = ("triton", "cudnn")         # conv1

_lock = threading.Lock()
_choices: Dict[str, str] = {}
_loaded_file: Optional[str] = None


def cache_path() -> Optional[str]:
    """The JSON file holding measured choices, or None when persistence is switched off."""
    p = os.environ.get(CACHE_ENV)
    if p is not None:
        return p or None
    return os.path.join(os.path.expanduser("~"), ".cache", "googlenet_fast", "gpu_backends.json")


def _load():
    global _loaded_file
    path = cache_path()
    if path == _loaded_file:
        return
    _loaded_file = path
    if path and os.path.isfile(path):
        try:
            with open(path) as f:
                data = json.load(f)
            _choices.update({k: v for k, v in data.items() if v in _valid(k)})
        except (OSError, ValueError):
            pass  # an unreadable cache is re-measured, never fatal


def _valid(key: str) -> Sequence[str]:
    """The values a cached choice may take, by the kind of key."""
    if key.startswith("network|"):
        return NETWORK_PATHS
    if key.startswith("pool|"):
        return POOL_PATHS
    if key.startswith("stem|"):
        return STEM_PATHS
    return GPU_BACKENDS


def _save():
    path = cache_path()
    if not path:
        return
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(_choices, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass  # read-only home: keep the in-memory choice


def _bucket(n: int) -> int:
    """The batch size rounded up to a power of two (choices are shared within a bucket)."""
    bucket = 1
    while bucket < max(1, n):
        bucket *= 2
    return bucket


def choice_key(shape, dtype: torch.dtype, device_name: str) -> str:
    """The cache key of an Inception call (see the module docstring)."""
    bucket = _bucket(shape.n)
    cfg = (shape.in_channels, shape.ch1x1, shape.ch3x3red, shape.ch3x3, shape.k3, shape.ch5x5red,
           shape.ch5x5, shape.k5, shape.pool_proj, shape.h, shape.w)
    return f"{device_name}|{str(dtype).replace('torch.', '')}|{'x'.join(map(str, cfg))}|n<={bucket}"


def default_gpu_backend() -> str:
    """triton when importable, else cuda."""
    try:
        import triton  # noqa: F401
        return "triton"
    except ImportError:
        return "cuda"


def cuda_event_timer(fn: Callable[[], None], reps: int = 5) -> float:
    """Median milliseconds of ``fn`` on the current CUDA stream (after two warm-up calls)."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def pick_gpu_backend(shape, dtype: torch.dtype, device_name: str, usable: Sequence[str],
                     run: Callable[[str], None], timer: Callable[[Callable[[], None]], float] = cuda_event_timer,
                     can_measure: bool = True) -> str:
    """Return the backend for this call: the cached choice, else a fresh measurement.

    Args:
        shape: the call's InceptionShape.
        dtype, device_name: the input's dtype and ``torch.cuda.get_device_name``.
        usable: the GPU backends that can run here (subset of ("triton", "cuda")).
        run: ``run(name)`` runs the call once with backend ``name`` (into a scratch output).
        timer: ``timer(fn) -> ms``; CUDA events by default.
        can_measure: False while tracing or capturing a CUDA graph.
    Raises:
        RuntimeError: no GPU backend is usable.
    """
    usable = [b for b in GPU_BACKENDS if b in usable]
    if not usable:
        raise RuntimeError("backend='auto': no GPU backend is usable for a CUDA tensor (triton is not "
                           "importable and googlenet_fast._C has no CUDA kernels)")
    if len(usable) == 1:
        return usable[0]
    default = default_gpu_backend() if default_gpu_backend() in usable else usable[0]
    return pick_path(choice_key(shape, dtype, device_name), usable, run, timer, can_measure, default)


def network_key(variant: str, n: int, h: int, w: int, dtype: torch.dtype, device_name: str) -> str:
    """The cache key of a whole-network forward: variant, input size, dtype, device and the batch
    size rounded up to a power of two."""
    bucket = _bucket(n)
    return f"network|{device_name}|{variant}|{str(dtype).replace('torch.', '')}|{h}x{w}|n<={bucket}"


def wall_clock_timer(fn: Callable[[], None], reps: int = 5) -> float:
    """Median wall-clock milliseconds of ``fn`` followed by a device synchronization (after two
    warm-up calls): what an eager caller waits, host time included."""
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def pick_path(key: str, options: Sequence[str], run: Callable[[str], None],
              timer: Callable[[Callable[[], None]], float] = cuda_event_timer,
              can_measure: bool = True, default: Optional[str] = None) -> str:
    """One of ``options`` for the call identified by ``key``: the cached choice, else a fresh
    measurement of each (``run(option)`` runs the call once; ``timer(fn) -> ms``), cached in
    memory and in the JSON file; without a measurement (``can_measure`` False: tracing or
    capturing a CUDA graph) ``default`` (the first option when None)."""
    with _lock:
        _load()
        cached = _choices.get(key)
    if cached in options:
        return cached
    if not can_measure:
        return default if default is not None else options[0]
    times = {o: timer(lambda o=o: run(o)) for o in options}
    best = min(times, key=times.get)
    with _lock:
        _choices[key] = best
        _save()
    return best


def pick_network_path(key: str, run: Callable[[str], None],
                      timer: Callable[[Callable[[], None]], float] = wall_clock_timer,
                      can_measure: bool = True) -> str:
    """"network" or "modules" for a whole-network forward with this :func:`network_key`: the
    cached choice, else a fresh wall-clock measurement of both (``run(path)`` runs one forward),
    else (``can_measure`` False: tracing or capturing a CUDA graph, where host time is not paid
    per replay) "network"."""
    return pick_path(key, NETWORK_PATHS, run, timer, can_measure, default="network")


def stem_key(n: int, h: int, w: int, dtype: torch.dtype, device_name: str) -> str:
    """The cache key of the network path's conv1 (7x7/2 over the 3-channel input)."""
    bucket = _bucket(n)
    return f"stem|{device_name}|{str(dtype).replace('torch.', '')}|{h}x{w}|n<={bucket}"


def pooled_key(shape_key: str, n: int, xh: int, xw: int, pool, dtype: torch.dtype, device_name: str) -> str:
    """The cache key of one stage-transition pool + Inception module of the network path."""
    bucket = _bucket(n)
    return (f"pool|{device_name}|{str(dtype).replace('torch.', '')}|{shape_key}|{xh}x{xw}|"
            f"{pool[0]}/{pool[1]}|n<={bucket}")


def cached_choice(key: str) -> Optional[str]:
    """The choice held in memory for ``key`` (None when none is): what :func:`pick_path` would
    return for it without measuring.  No file is read (the launch programs of
    googlenet_fast/backends/triton/program.py check their recorded choices with it per forward)."""
    return _choices.get(key)


def clear_choices() -> None:
    """Forget every measured choice (in memory; the JSON file stays)."""
    global _loaded_file
    with _lock:
        _choices.clear()
        _loaded_file = None
