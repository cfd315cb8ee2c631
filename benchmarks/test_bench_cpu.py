"""CPU benchmarks (pytest-benchmark): the providers side by side, eval (and opt-in train step),
fp32, channels_last.

    mkdir -p benchmarks/results
    pytest benchmarks/test_bench_cpu.py --benchmark-json benchmarks/results/cpu.json
    python benchmarks/ratios.py benchmarks/results/cpu.json

Groups (one table each in pytest-benchmark's output):
    network b=1, network b=8          fused | fused=False | torchvision eager | torch.compile
    inception 3a|4a|5a b=1|8          fused op (folded weights) | torchvision Inception eager |
                                      reference backend | torch.compile
    train step b=8, b=32              fused | fused=False | torchvision eager | torch.compile
                                      (one SGD step: train-mode forward with aux heads, loss
                                      main + 0.3 aux, backward, SGD momentum; bench.TrainStep)
torch.compile (inductor freezing, ~40 s per compile) only with BENCH_COMPILE=1.  The train-step
groups (a 2-core CPU needs ~0.5 s per b=8 step, ~2 s per b=32 step) only with BENCH_TRAIN=1, so
that the default run stays as fast as before; their torch.compile provider (inductor, no freezing,
several minutes per batch size) needs BENCH_COMPILE=1 as well:

    BENCH_TRAIN=1 pytest benchmarks/test_bench_cpu.py -k train --benchmark-json benchmarks/results/cpu-train.json

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
TRAIN_BATCH_SIZES = (8, 32)
COMPILE = os.environ.get("BENCH_COMPILE", "0") == "1"
TRAIN = os.environ.get("BENCH_TRAIN", "0") == "1"
WARMUP = 3
RTOL = 1e-4  # max abs error / max |reference|, fp32

NETWORK_PROVIDERS = [B.FUSED, B.UNFUSED, B.TORCHVISION] + ([B.COMPILE] if COMPILE else [])
BLOCK_PROVIDERS = [B.FUSED, B.TORCHVISION, B.REFERENCE] + ([B.COMPILE] if COMPILE else [])
TRAIN_PROVIDERS = [B.FUSED, B.UNFUSED, B.TORCHVISION] + ([B.COMPILE] if COMPILE else [])


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


# ------------------------------------------------------------------------------------------------
# Train step (BENCH_TRAIN=1)


@pytest.fixture(scope="module")
def train_steps(photos):
    """provider -> bench.TrainStep over bench.build_train_networks (each its own network and SGD
    optimizer; lr 0, see bench.TRAIN_LR), after checking the fused train-mode outputs against
    torchvision's on the photos."""
    with torch.enable_grad():
        nets = B.build_train_networks(seed=0)
        x = photos.contiguous(memory_format=torch.channels_last)
        res = B.check_train_step(nets, x)[B.FUSED]
        for k in ("logits", "aux_logits1", "aux_logits2"):
            assert res[k]["max_rel_err"] <= RTOL, (k, res[k])
        assert res["loss_rel_err"] <= RTOL, res
        return {p.name: p for p in B.train_providers(nets, compile=COMPILE)}


@pytest.mark.skipif(not TRAIN, reason="train-step benchmarks: set BENCH_TRAIN=1")
@pytest.mark.parametrize("provider", TRAIN_PROVIDERS)
@pytest.mark.parametrize("batch_size", TRAIN_BATCH_SIZES, ids=lambda b: f"b{b}")
def test_train_step(benchmark, train_steps, photos, batch_size, provider):
    x = data.fill_batch(photos, batch_size).contiguous(memory_format=torch.channels_last)
    p = train_steps[provider]
    with torch.enable_grad():  # the autouse fixture runs every test under no_grad
        with B.quiet_compile_context() if p.compiles else torch.enable_grad():
            for _ in range(WARMUP):
                loss = p.fn(x)
        assert torch.isfinite(loss), loss
        _tag(benchmark, f"train step b={batch_size}", provider, batch_size, lr=B.TRAIN_LR,
             momentum=B.TRAIN_MOMENTUM, aux_weight=B.AUX_WEIGHT)
        benchmark(p.fn, x)
