"""benchmarks/host_overhead.py: the stubbed CUDA path runs the network's real launch sequence."""
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import host_overhead  # noqa: E402


@pytest.mark.parametrize("variant,triton_launches", [("torchvision", 21), ("paper", 22)])
def test_stubbed_forward_makes_the_network_launches(variant, triton_launches):
    """The benchmark's core on a few forwards: the recording forward and a replay make the
    network's launches (its Triton kernels + the head's two ATen calls), the launch program has
    one step per Triton launch plus the head, and later forwards replay it (not rebuilt)."""
    r = host_overhead.measure(variant=variant, dtype=torch.bfloat16, batch=1, iters=3, record_iters=2)
    for kinds in (r["launch_kernels"], r["recorded_launch_kernels"]):
        assert kinds.count("aten::adaptive_avg_pool2d") == 1 and kinds.count("aten::linear") == 1
        assert len(kinds) - 2 == triton_launches, kinds
        assert kinds.count("inception_stage1_kernel") == 9 and kinds.count("inception_stage2_kernel") == 9
    assert r["launch_kernels"] == r["recorded_launch_kernels"]
    assert r["program_launches"] == triton_launches and r["program_steps"] == triton_launches + 1
    assert r["rebuilt"] is False
    assert r["median_ms"] > 0 and r["first_ms"] > 0 and r["record_median_ms"] > 0


def test_stubs_are_removed_afterwards():
    import torch.library as tl
    from googlenet_fast.backends import triton as tb
    from googlenet_fast.backends.triton import network as nw, program as pg

    def current():
        return (tl.wrap_triton, tb.forward_op._run, nw._run, nw._network_device, pg._launcher,
                tb.plan._merged_1x1, nw.F, os.environ.get(tb.AUTOTUNE_ENV))

    before = current()
    with host_overhead.stubbed_cuda_path():
        assert current() != before
    assert current() == before


@pytest.mark.parametrize("args,message", [
    (["--batch", "0"], "--batch: expected a positive batch size"),
    (["--iters", "-1"], "--iters: expected at least 1"),
    (["--profile", "-1"], "--profile: expected a number of functions >= 0"),
    (["--json", "/nonexistent/dir/x.json"], "--json: the folder of"),
])
def test_cli_bad_arguments(args, message):
    p = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "host_overhead.py"), *args],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr, p.stderr
