"""Keep freed memory in the process (glibc malloc), for CPU training at ImageNet sizes.

PyTorch's CPU tensors come from malloc.  glibc serves blocks above a threshold (at most 32 MiB)
with their own mmap, unmapped again when freed, and returns the free top of its heap to the
kernel once it exceeds another (at most 64 MiB).  A training step at 224x224 frees hundreds of
megabytes of activations and gradients at its end, so the next step takes them back page by page
(4 KiB each, zero-filled by the kernel).  GoogLeNet on the 2-core EPYC, 2026-12-05
(benchmarks/results/train-allocator-cpu-2026-12-05.md): batch 8, 17,000-78,000 page faults and
320-340 ms per step -> 0 and 240 ms; batch 32, 291,000 faults and 1187 ms -> 0 and 898 ms;
torchvision's model and the fused one alike; peak resident memory 2.15 -> 2.37 GB at batch 32.

:func:`keep_freed_memory` sets glibc's malloc once for the process (``mallopt``): no block is
served by its own mmap (M_MMAP_MAX 0: all from the heap), and up to 2 GiB of free heap stays
mapped (M_TRIM_THRESHOLD), so a step reuses the pages the previous one touched.  The cost is
resident memory: the process keeps its peak heap.  The ``train`` command and ``bench --mode
train`` call it on the CPU; library users call it themselves (a process-wide setting, never
made on import).  Elsewhere (not glibc: musl, macOS, Windows) it does nothing and returns False.
jemalloc or tcmalloc (LD_PRELOAD) are the usual alternative.
"""
import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1   # glibc's mallopt parameters (malloc.h)
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2 ** 31 - 1   # mallopt takes an int: its largest

_applied = False


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018  (glibc only)
        return libc
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory in the process (see the module docstring).

    Returns True when the thresholds are set (glibc), False where nothing was done.  Idempotent;
    process-wide (it also affects every other library's allocations).
    """
    global _applied
    if _applied:
        return True
    libc = _glibc()
    if libc is None:
        return False
    ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    _applied = ok
    return ok


def applied() -> bool:
    """Whether :func:`keep_freed_memory` has set the thresholds in this process."""
    return _applied
