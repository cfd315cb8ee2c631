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
