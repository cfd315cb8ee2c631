"""googlenet_fast.cpu_alloc.keep_freed_memory: with it, memory a step freed is reused without page
faults (glibc); without it, a 64 MiB tensor allocated and freed again is faulted in every time.
Each case in a fresh process (the setting is process-wide and cannot be undone)."""
import subprocess
import sys

import pytest

from googlenet_fast import cpu_alloc

SCRIPT = r"""
import resource, sys, torch
from googlenet_fast import cpu_alloc
kept = cpu_alloc.keep_freed_memory() if sys.argv[1] == "keep" else False
assert cpu_alloc.applied() == kept and (not kept or cpu_alloc.keep_freed_memory())  # idempotent
faults = []
for _ in range(5):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.empty(16 << 20)   # 64 MiB of float32
    t.fill_(1.0)
    del t
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(kept, min(faults[2:]))
"""


def _run(mode):
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    kept, faults = out.stdout.split()
    return kept == "True", int(faults)


@pytest.mark.skipif(cpu_alloc._glibc() is None, reason="glibc's mallopt only (Linux with glibc)")
def test_freed_memory_is_reused_without_page_faults():
    kept, faults = _run("keep")
    assert kept
    assert faults < 1000, faults            # the pages stay mapped
    kept, faults = _run("default")
    assert not kept
    assert faults > 10000, faults           # 16384 pages faulted in again every time

