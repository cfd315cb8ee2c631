"""backend="auto" on a CUDA tensor: the one-time measured choice between triton and cuda
(googlenet_fast.autotune_table), tested with a stand-in timer so it runs without a GPU."""
import json

import pytest
import torch

from googlenet_fast import autotune_table as at
from googlenet_fast.ops import InceptionShape

SHAPE = InceptionShape(32, 480, 14, 14, 192, 96, 208, 3, 16, 48, 3, 64)


@pytest.fixture(autouse=True)
def _fresh(tmp_path, monkeypatch):
    monkeypatch.setenv(at.CACHE_ENV, str(tmp_path / "choices.json"))
    at.clear_choices()
    yield
    at.clear_choices()


def fake_timer(ms):
    return lambda fn: (fn(), ms[fn.__defaults__[0]])[1]


def test_measures_once_picks_faster_and_persists(tmp_path):
    runs = []
    pick = lambda: at.pick_gpu_backend(SHAPE, torch.bfloat16, "H200", ["triton", "cuda"], runs.append,
                                       timer=fake_timer({"triton": 2.0, "cuda": 1.5}))
    assert pick() == "cuda"
    assert runs == ["triton", "cuda"]
    assert pick() == "cuda" and runs == ["triton", "cuda"]  # cached: no second measurement
    saved = json.loads((tmp_path / "choices.json").read_text())
    assert saved == {at.choice_key(SHAPE, torch.bfloat16, "H200"): "cuda"}
    at.clear_choices()  # a new process reads the file instead of measuring
    assert pick() == "cuda" and runs == ["triton", "cuda"]


def test_key_separates_dtype_device_and_batch_bucket():
    k = at.choice_key(SHAPE, torch.bfloat16, "H200")
    assert k != at.choice_key(SHAPE, torch.float16, "H200")
    assert k != at.choice_key(SHAPE, torch.bfloat16, "A100")
    assert k == at.choice_key(SHAPE._replace(n=17), torch.bfloat16, "H200")  # 17 and 32 share n<=32
    assert k != at.choice_key(SHAPE._replace(n=33), torch.bfloat16, "H200")


def test_no_measurement_while_tracing_or_capturing():
    runs = []
    got = at.pick_gpu_backend(SHAPE, torch.bfloat16, "H200", ["triton", "cuda"], runs.append,
                              timer=fake_timer({"triton": 9.0, "cuda": 1.0}), can_measure=False)
    assert got == at.default_gpu_backend() and runs == []


def test_single_usable_backend_and_none():
    assert at.pick_gpu_backend(SHAPE, torch.float32, "H200", ["cuda"], lambda b: None) == "cuda"
    with pytest.raises(RuntimeError, match="no GPU backend is usable"):
        at.pick_gpu_backend(SHAPE, torch.float32, "H200", [], lambda b: None)


def test_unreadable_cache_file_is_remeasured(tmp_path):
    (tmp_path / "choices.json").write_text("{not json")
    got = at.pick_gpu_backend(SHAPE, torch.float32, "H200", ["triton", "cuda"], lambda b: None,
                              timer=fake_timer({"triton": 1.0, "cuda": 2.0}))
    assert got == "triton"


@pytest.mark.gpu
def test_auto_on_cuda_runs_and_matches_reference():
    from inception_cases import TABLE1, make_weights, make_input, reference64, rel_err
    import googlenet_fast as gf
    cfg = TABLE1["4a"]
    ws = make_weights(cfg, device="cuda")
    x = make_input(2, cfg[0], 14, 14, device="cuda").contiguous(memory_format=torch.channels_last)
    torch.backends.cuda.matmul.allow_tf32 = False
    assert rel_err(gf.inception(x, *ws), reference64(x, ws)) <= 1e-4


# ------------------------------------------------------------------------------------------------
# The whole network: Triton network kernels vs the per-module path, by wall clock

NET_KEY = at.network_key("torchvision", 1, 224, 224, torch.bfloat16, "NVIDIA H200")


def test_network_path_measured_once_by_wall_clock_and_persisted(tmp_path):
    """As on the H200 at batch 1 (2026-12-04): network path 4.89 ms (host-bound), modules 1.55 ms."""
    runs = []
    pick = lambda: at.pick_network_path(NET_KEY, runs.append, timer=fake_timer({"network": 4.89, "modules": 1.55}))
    assert pick() == "modules" and runs == ["network", "modules"]
    assert pick() == "modules" and runs == ["network", "modules"]  # cached
    saved = json.loads((tmp_path / "choices.json").read_text())
    assert saved == {NET_KEY: "modules"}
    at.clear_choices()  # another process: read from the file, and kept apart from backend keys
    assert pick() == "modules" and runs == ["network", "modules"]
    runs.clear()
    big = at.network_key("torchvision", 256, 224, 224, torch.bfloat16, "NVIDIA H200")
    assert at.pick_network_path(big, runs.append, timer=fake_timer({"network": 6.33, "modules": 16.7})) == "network"


def test_network_path_defaults_to_network_kernels_while_capturing():
    runs = []
    assert at.pick_network_path(NET_KEY, runs.append, timer=fake_timer({"network": 9.0, "modules": 1.0}),
                                can_measure=False) == "network"
    assert runs == []


def test_network_key_separates_what_changes_the_answer():
    k = NET_KEY
    assert k != at.network_key("paper", 1, 224, 224, torch.bfloat16, "NVIDIA H200")
    assert k != at.network_key("torchvision", 1, 256, 224, torch.bfloat16, "NVIDIA H200")
    assert k != at.network_key("torchvision", 1, 224, 224, torch.float32, "NVIDIA H200")
    assert k != at.network_key("torchvision", 2, 224, 224, torch.bfloat16, "NVIDIA H200")
    assert at.network_key("torchvision", 3, 224, 224, torch.bfloat16, "X") == \
        at.network_key("torchvision", 4, 224, 224, torch.bfloat16, "X")


def test_file_with_bad_network_value_is_remeasured(tmp_path):
    (tmp_path / "choices.json").write_text(json.dumps({NET_KEY: "cuda", "network|junk": 3}))
    runs = []
    assert at.pick_network_path(NET_KEY, runs.append, timer=fake_timer({"network": 1.0, "modules": 2.0})) == "network"
    assert runs == ["network", "modules"]


def test_pick_path_generic_and_pooled_keys(tmp_path):
    """The stage-transition pool + module choice (network path): measured once by CUDA-event time,
    cached; "pooled" without a measurement."""
    key = at.pooled_key("480x192x96x16x208x48x3x64", 256, 28, 28, (3, 2), torch.bfloat16, "NVIDIA H200")
    assert key != at.pooled_key("480x192x96x16x208x48x3x64", 1, 28, 28, (3, 2), torch.bfloat16, "NVIDIA H200")
    runs = []
    # as on the H200 for 4a at batch 256: pooled 0.871 ms, pool kernel + op 0.684 ms
    timer = fake_timer({"pooled": 0.871, "separate": 0.684})
    assert at.pick_path(key, at.POOL_PATHS, runs.append, timer=timer, can_measure=False, default="pooled") == "pooled"
    assert runs == []
    assert at.pick_path(key, at.POOL_PATHS, runs.append, timer=timer) == "separate"
    assert at.pick_path(key, at.POOL_PATHS, runs.append, timer=timer) == "separate" and runs == ["pooled", "separate"]
    at.clear_choices()
    assert json.loads((tmp_path / "choices.json").read_text()) == {key: "separate"}
    assert at.pick_path(key, at.POOL_PATHS, runs.append, timer=timer, can_measure=False) == "separate"
    stem = at.stem_key(256, 224, 224, torch.bfloat16, "NVIDIA H200")
    assert stem != at.stem_key(1, 224, 224, torch.bfloat16, "NVIDIA H200")
    assert at.pick_path(stem, at.STEM_PATHS, runs.append, timer=fake_timer({"triton": 1.35, "cudnn": 0.2})) == "cudnn"
    at.clear_choices()
    assert at.pick_path(stem, at.STEM_PATHS, runs.append, can_measure=False) == "cudnn"  # read back from the file
