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
    r = host_overhead.measure(variant=variant, dtype=torch.bfloat16, batch=1, iters=3)
    kinds = r["launch_kernels"]
    assert kinds.count("aten::adaptive_avg_pool2d") == 1 and kinds.count("aten::linear") == 1
    assert len(kinds) - 2 == triton_launches, kinds
    assert kinds.count("inception_stage1_kernel") == 9 and kinds.count("inception_stage2_kernel") == 9
    assert r["median_ms"] > 0


def test_stubs_are_removed_afterwards():
    import torch.library as tl
    from googlenet_fast.backends import triton as tb
    from googlenet_fast.backends.triton import network as nw
    before = (tl.wrap_triton, tb.forward_op._run, nw._run, nw.fused_forward_supported, tb.plan._merged_1x1, nw.F)
    with host_overhead.stubbed_cuda_path():
        pass
    assert (tl.wrap_triton, tb.forward_op._run, nw._run, nw.fused_forward_supported, tb.plan._merged_1x1,
            nw.F) == before


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
