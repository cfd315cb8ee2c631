"""Folded weights as static buffers of a captured CUDA graph (googlenet_fast/graph_folds.py).

The logic runs on the CPU: fold_cache._capturing is patched to say "inside a capture", so these tests
check what gets folded when, what the graph would read, and that a parameter change after capture
is folded into the static buffers before the next replay (never a stale replay).  The GPU test
counts the kernels of one real replay."""
import pytest
import torch
from torch import nn

import googlenet_fast
from googlenet_fast import GoogLeNet, fold_cache, graph_folds, model as model_mod
from googlenet_fast.cuda_graph import CapturedForward


def _module():
    torch.manual_seed(0)
    m = model_mod.Inception(16, 8, 4, 8, 4, 8, 8).eval()
    with torch.no_grad():
        for bn in (mod for mod in m.modules() if isinstance(mod, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 1.5)
    return m


@pytest.fixture
def fold_calls(monkeypatch):
    calls = []
    real = model_mod.Inception._fold

    def counting(self, dtype):
        calls.append(dtype)
        return real(self, dtype)

    monkeypatch.setattr(model_mod.Inception, "_fold", counting)
    return calls


@pytest.fixture
def capturing(monkeypatch):
    state = {"on": False}
    monkeypatch.setattr(fold_cache, "_capturing", lambda device: state["on"])
    return state


def _read(m):
    """The eval forward's read of the folded weights (no_grad, as under inference)."""
    with torch.no_grad():
        return m.folded_params()


def _warm_and_capture(m, capturing):
    """The capture helper's sequence: a warm-up read, then the read during a recorded capture;
    (the warm cached tensors, the recorded entries)."""
    warm = _read(m)
    capturing["on"] = True
    with graph_folds.recording() as entries:
        _read(m)
    capturing["on"] = False
    return warm, entries


def _fresh(m):
    with torch.no_grad():
        return model_mod.Inception._fold(m, torch.float32)


def test_warm_cache_is_read_by_the_graph_not_refolded(fold_calls, capturing):
    m = _module()
    warm = _read(m)  # the warm-up (capture() runs the model eagerly first)
    assert len(fold_calls) == 1
    capturing["on"] = True
    with graph_folds.recording() as entries:
        inside = _read(m)
        _read(m)  # a second read in the same capture registers nothing new
    assert inside is warm, "the graph must read the cached tensors (static buffers)"
    assert len(fold_calls) == 1, "no fold may be captured into the graph"
    assert len(entries) == 1 and entries[0].module is m and entries[0].static is warm


def test_without_recording_or_cold_cache_the_fold_is_captured(fold_calls, capturing):
    m = _module()
    _read(m)
    capturing["on"] = True
    _read(m)  # a plain torch.cuda.graph capture (no recording): folded in the graph
    assert len(fold_calls) == 2
    cold = _module()
    with graph_folds.recording() as entries:
        _read(cold)  # never warmed up: folded in the graph, nothing to refresh
    assert len(fold_calls) == 3 and entries == []


def test_refresh_does_nothing_when_nothing_moved(fold_calls, capturing):
    _, entries = _warm_and_capture(_module(), capturing)
    assert graph_folds.refresh(entries) == 0 and len(fold_calls) == 1


@pytest.mark.parametrize("change", ["running_var", "conv_weight", "optimizer_step", "load_state_dict"])
def test_refresh_folds_a_change_into_the_static_buffers(fold_calls, capturing, change):
    m = _module()
    static, entries = _warm_and_capture(m, capturing)
    before = [None if t is None else t.clone() for t in static]
    if change == "running_var":
        with torch.no_grad():
            m.branch2[1].bn.running_var.mul_(2.0)
    elif change == "conv_weight":
        with torch.no_grad():
            m.branch1.conv.weight.add_(0.5)
    elif change == "optimizer_step":  # a fused optimizer bumps no version counter
        params = [p for p in m.parameters()]
        for p in params:
            p.grad = torch.ones_like(p)
        opt = torch.optim.SGD(params, lr=0.1)
        opt.step()
    else:
        sd = {k: (v * 1.5 if v.is_floating_point() else v) for k, v in m.state_dict().items()}
        m.load_state_dict(sd)
    assert graph_folds.refresh(entries) == 1
    expected = _fresh(m)
    for s, b, e in zip(static, before, expected):
        if s is None:
            continue
        assert torch.equal(s, e), "static buffer not refreshed to the current parameters"
    assert any(s is not None and not torch.equal(s, b) for s, b in zip(static, before))
    # refreshed in place (the graph holds these tensors) and the module's cache agrees
    assert _read(m) is static
    assert graph_folds.refresh(entries) == 0


def test_refresh_refuses_a_reworked_module(capturing):
    m = _module()
    _, entries = _warm_and_capture(m, capturing)
    m.branch1.bn = nn.Identity()  # e.g. conv+bn fused by a deployment tool
    with pytest.raises(RuntimeError, match="capture the graph again"):
        graph_folds.refresh(entries)


def test_captured_forward_refreshes_before_replaying(capturing, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    m = _module()
    static, entries = _warm_and_capture(m, capturing)
    seen = []

    class FakeGraph:  # what the graph would read at replay time
        def replay(self):
            seen.append(static[0].clone())

    cf = CapturedForward(FakeGraph(), torch.zeros(1, 16, 4, 4), torch.zeros(1), clone=False, folds=entries)
    cf(torch.zeros(1, 16, 4, 4))
    with torch.no_grad():
        m.branch1.conv.weight.mul_(3.0)
    cf(torch.zeros(1, 16, 4, 4))
    assert not torch.equal(seen[0], seen[1])
    assert torch.equal(seen[1], _fresh(m)[0])


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_replay_runs_only_the_compute_kernels(backend, monkeypatch):
    """One replay of the captured torchvision-variant network: the kernels of a warm eager forward
    (23 on the Triton network path: 21 Triton launches + the head's average pool and linear),
    no BatchNorm folding; a weight change after capture is honoured."""
    from torch.profiler import ProfilerActivity, profile
    monkeypatch.setenv("GOOGLENET_FAST_BACKEND", backend)
    torch.manual_seed(0)
    net = GoogLeNet(aux_logits=False, init_weights=True).eval().cuda().to(torch.bfloat16)
    x = torch.randn(1, 3, 224, 224, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        net(x)  # warm-up: the folds are cached
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            net(x)
            torch.cuda.synchronize()
    eager_kernels = sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    g = googlenet_fast.capture_cuda_graph(net, x, clone=True)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        g.graph.replay()
        torch.cuda.synchronize()
    replay_kernels = sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert replay_kernels == eager_kernels, (replay_kernels, eager_kernels)
    assert not [n for n in names if "sqrt" in n or "reciprocal" in n], "BatchNorm folding ran in the replay"
    with torch.no_grad():
        net.inception4b.branch1.bn.running_var.mul_(4.0)
        ref = net(x)
    assert torch.allclose(g(x).float(), ref.float(), rtol=1e-2, atol=1e-2 * ref.abs().max().item())
