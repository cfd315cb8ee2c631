"""CPU benchmarks (pytest-benchmark): the providers side by side, eval, fp32, channels_last.

    mkdir -p benchmarks/results
    pytest benchmarks/test_bench_cpu.py --benchmark-json benchmarks/results/cpu.json
    python benchmarks/ratios.py benchmarks/results/cpu.json

Groups (one table each in pytest-benchmark's output):
    network b=1, network b=8          fused | fused=False | torchvision eager | torch.compile
    inception 3a|4a|5a b=1|8          fused op (folded weights) | torchvision Inception eager |
                                      reference backend | torch.compile
torch.compile (inductor freezing, ~40 s per compile) only with BENCH_COMPILE=1.

Not part of the test suite (pytest.ini: testpaths = tests).  Every provider's output is checked
against torchvision's in the same run before it is timed.
"""
import os

import pytest
import torch

pytest.importorskip("pytest_benchmark")

from googlenet_fast import bench as B  # noqa: E402
from googlenet_fast import data  # noqa: E402
from googlenet_fast.ops import inception  # noqa: E402

BATCH_SIZES = (1, 8)
COMPILE = os.environ.get("BENCH_COMPILE", "0") == "1"
WARMUP = 3
RTOL = 1e-4  # max abs error / max |reference|, fp32

NETWORK_PROVIDERS = [B.FUSED, B.UNFUSED, B.TORCHVISION] + ([B.COMPILE] if COMPILE else [])
BLOCK_PROVIDERS = [B.FUSED, B.TORCHVISION, B.REFERENCE] + ([B.COMPILE] if COMPILE else [])


@pytest.fixture(autouse=True)
def _eval_mode_no_grad():
    with torch.no_grad():
        yield


@pytest.fixture(scope="module")
def photos():
    try:
        return data.preprocess(data.sample_photos())
    except data.ImageLoadError:  # scikit-image missing: timing does not depend on the pixels
        return torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def nets(photos):
    with torch.no_grad():
        return B.build_networks(seed=0, calibration=photos)


@pytest.fixture(scope="module")
def compiled():
    """One torch.compile wrapper per module, reused across batch sizes (static shapes)."""
    return {}


def _close(out, ref):
    err = B.compare_logits(out.reshape(out.shape[0], -1), ref.reshape(ref.shape[0], -1))
    assert err["max_rel_err"] <= RTOL, err


def _warm(fn, x, compiles=False):
    with B.freezing_context() if compiles else torch.no_grad():
        for _ in range(WARMUP):
            out = fn(x)
    return out


def _tag(benchmark, group, provider, batch_size, **extra):
    benchmark.group = group
    benchmark.extra_info.update(provider=provider, batch_size=batch_size, baseline=B.TORCHVISION,
                                threads=torch.get_num_threads(), **extra)


@pytest.mark.parametrize("provider", NETWORK_PROVIDERS)
@pytest.mark.parametrize("batch_size", BATCH_SIZES, ids=lambda b: f"b{b}")
def test_network(benchmark, nets, photos, compiled, batch_size, provider):
    x = data.fill_batch(photos, batch_size).contiguous(memory_format=torch.channels_last)
    if provider == B.COMPILE:
        fn = compiled.setdefault("network", B.compile_with_freezing(nets.torchvision))
    else:
        fn = {B.FUSED: nets.fused, B.UNFUSED: nets.unfused, B.TORCHVISION: nets.torchvision}[provider]
    out = _warm(fn, x, compiles=provider == B.COMPILE)
    _close(out, nets.torchvision(x))
    _tag(benchmark, f"network b={batch_size}", provider, batch_size)
    benchmark(fn, x)


@pytest.fixture(scope="module")
def blocks(nets):
    """stage -> (torchvision Inception in eval, channels_last; the fused op's 12 weight/bias
    arguments: the model's folded weights, BatchNorm folded, sibling 1x1s in one buffer)."""
    return {stage: (getattr(nets.torchvision, attr), getattr(nets.fused, attr).folded_params())
            for stage, (attr, _, _) in B.STAGE_BLOCKS.items()}


@pytest.mark.parametrize("provider", BLOCK_PROVIDERS)
@pytest.mark.parametrize("batch_size", BATCH_SIZES, ids=lambda b: f"b{b}")
@pytest.mark.parametrize("stage", list(B.STAGE_BLOCKS))
def test_inception_block(benchmark, blocks, compiled, stage, batch_size, provider):
    _, cin, hw = B.STAGE_BLOCKS[stage]
    block, args = blocks[stage]
    g = torch.Generator().manual_seed(1)
    # Inputs of an Inception block come out of a ReLU (or a max pool of one): non-negative.
    x = torch.randn(batch_size, cin, hw, hw, generator=g).relu_().contiguous(memory_format=torch.channels_last)
    if provider == B.FUSED:
        def fn(x):
            return inception(x, *args, backend="cpu")
    elif provider == B.REFERENCE:
        def fn(x):
            return inception(x, *args, backend="reference")
    elif provider == B.TORCHVISION:
        fn = block
    else:
        fn = compiled.setdefault(stage, B.compile_with_freezing(block))
    out = _warm(fn, x, compiles=provider == B.COMPILE)
    _close(out, block(x))
    if provider in (B.FUSED, B.REFERENCE):
        assert out.is_contiguous(memory_format=torch.channels_last)
    _tag(benchmark, f"inception {stage} b={batch_size}", provider, batch_size, stage=stage,
         input_shape=list(x.shape))
    benchmark(fn, x)
