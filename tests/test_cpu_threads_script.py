"""benchmarks/cpu_threads.py: the fused CPU eval forward timed across thread counts in one process."""
import os
import re
import sys

import pytest
import torch

from googlenet_fast.backends import native

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import cpu_threads  # noqa: E402

pytestmark = pytest.mark.skipif(not native.available(), reason=f"extension not built: {native.LOAD_ERROR}")


def test_prints_a_time_per_thread_count(capsys):
    threads = torch.get_num_threads()
    try:
        cpu_threads.main(["--threads", "1", "2", "--forwards", "1", "--dtype", "float32"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("# float32, batch 1, median of 1 forwards")
    times = re.findall(r"(\d+) threads (\d+\.\d+) ms", out[1])
    assert [t for t, _ in times] == ["1", "2"]
    assert all(float(ms) > 0 for _, ms in times)


def test_bad_arguments_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as e:
        cpu_threads.main(["--threads", "0"])
    assert e.value.code == 2
    assert "--threads value must be >= 1" in capsys.readouterr().err
