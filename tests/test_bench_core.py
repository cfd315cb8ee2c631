"""The measurement core every table uses (googlenet_fast.bench): one speedup, one geomean, one
device timer (the CLI, report.py, gpu_blocks.py, ratios.py and the device smoke stage)."""
import math

import pytest

from googlenet_fast import bench


def test_speedup_is_baseline_over_provider():
    assert bench.speedup(12.35, 6.33) == pytest.approx(1.951, abs=1e-3)  # the H200's batch-256 network
    assert bench.speedup(None, 1.0) is None and bench.speedup(1.0, None) is None and bench.speedup(0.0, 1.0) is None


def test_geomean():
    assert bench.geomean([2.0, 0.5]) == pytest.approx(1.0)
    assert bench.geomean([1.25, 1.34, 2.13]) == pytest.approx(math.exp((math.log(1.25) + math.log(1.34) + math.log(2.13)) / 3))
    assert bench.geomean([]) is None


def test_device_timer_on_cpu_times_the_call():
    calls = []
    ms = bench.device_timer(lambda: calls.append(1), "cpu")
    assert len(calls) == 4 and 0 <= ms < 50  # one warm-up, the median of three
