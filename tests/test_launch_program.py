"""Launch programs of the eager network path (googlenet_fast/backends/triton/program.py): recorded
once per input signature, replayed while nothing they depend on changed, never stale.

Most tests run the CUDA launch code on meta tensors with the launches stubbed
(benchmarks/host_overhead.py's stubbed_cuda_path): whether a program is valid, recorded again,
or refused is structural.  The interpreter tests (CPU, small maps) compare a replay's numbers with
the recording path's."""
import copy
import os
import pickle
import sys

import pytest
import torch
import torch.nn as nn

pytest.importorskip("triton")

from googlenet_fast import GoogLeNet, autotune_table, fold_cache, graph_folds  # noqa: E402
from googlenet_fast.backends.triton import AUTOTUNE_ENV, network as nw, program as pg  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import host_overhead  # noqa: E402

BF16 = torch.bfloat16


@pytest.fixture
def stub():
    with host_overhead.stubbed_cuda_path(), torch.no_grad():
        host_overhead.StubLauncher.launches.clear()
        yield host_overhead.StubLauncher.launches


def _meta(variant="torchvision", batch=1):
    return host_overhead.build(variant, BF16), torch.empty(batch, 3, 224, 224, device="meta", dtype=BF16)


def _recorded(model, x):
    assert nw.forward_or_none(model, x) is not None
    prog = nw.launch_program(model, x)
    assert prog is not None
    return prog


def test_recorded_once_then_replayed(stub):
    model, x = _meta()
    y = nw.forward_or_none(model, x)
    recorded = list(stub)
    prog = nw.launch_program(model, x)
    assert prog is not None and prog.launches == 21 and y.shape == (1, 1000)
    stub.clear()
    assert nw.forward_or_none(model, x).shape == (1, 1000)
    assert stub == recorded  # the same launches, in order
    assert nw.launch_program(model, x) is prog  # not rebuilt
    assert nw.fused_forward_triton(model, x).shape == (1, 1000) and nw.launch_program(model, x) is prog


def test_recording_launches_skip_the_higher_order_op(stub, monkeypatch):
    """The ops' bodies run directly in eager: their wrap_triton launches must not go through
    torch's triton_kernel_wrapper HOP (as inside the registered triton_op)."""
    from torch._library.triton import is_wrap_triton_enabled
    import torch.library as tl
    seen = []
    real = tl.wrap_triton

    def spy(fn):
        seen.append(is_wrap_triton_enabled())
        return real(fn)

    monkeypatch.setattr(tl, "wrap_triton", spy)
    model, x = _meta()
    nw.forward_or_none(model, x)
    assert len(seen) == 21 and not any(seen)


def _param(model):
    return model.inception4b.branch2[1].conv.weight


def _swap_module(model):
    model.inception4c = copy.deepcopy(model.inception4c)


def _load(model, assign):
    model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, assign=assign)


def _refresh_folds(model):
    m = model.inception5a
    entry = fold_cache.cache_entry(m, BF16)
    graph_folds.refresh([graph_folds.FoldEntry(m, BF16, "a key from an older state", entry[2])])


def _optimizer_step(model):
    torch.optim.SGD([model.fc.weight], lr=0.1).step()


# (change, still on the network path afterwards)
CHANGES = {
    "param updated in place": (lambda m: _param(m).mul_(2), True),
    "BatchNorm statistic updated": (lambda m: m.conv2.bn.running_var.add_(1), True),
    "num_batches_tracked": (lambda m: m.inception3a.branch1.bn.num_batches_tracked.add_(1), True),
    "fc bias updated": (lambda m: m.fc.bias.zero_(), True),
    "load_state_dict": (lambda m: _load(m, False), True),
    "load_state_dict(assign=True)": (lambda m: _load(m, True), True),
    "parameter replaced": (lambda m: setattr(m.inception3a.branch1.conv, "weight",
                                             nn.Parameter(m.inception3a.branch1.conv.weight.clone())), True),
    "module swapped": (_swap_module, True),
    "module appended to a branch": (lambda m: m.inception4c.branch2.append(nn.ReLU()), False),
    "forward hook on a conv": (lambda m: m.inception4c.branch3[0].conv.register_forward_hook(lambda *a: None), False),
    "forward pre-hook on a pool": (lambda m: m.maxpool1.register_forward_pre_hook(lambda *a: None), True),
    "train()": (lambda m: m.train(), False),
    # (a BatchNorm in train mode inside an eval model normalizes with batch statistics, as in
    # torchvision's model: not foldable, the module path runs)
    "one BatchNorm in train mode": (lambda m: m.inception4a.branch1.bn.train(), False),
    "conv stride": (lambda m: setattr(m.conv3.conv, "stride", (2, 2)), False),
    "pool ceil_mode": (lambda m: setattr(m.maxpool3, "ceil_mode", False), False),
    "BatchNorm eps": (lambda m: setattr(m.conv2.bn, "eps", 1e-5), True),
    "transform_input": (lambda m: setattr(m, "transform_input", True), True),
    "a module's clear_folded_cache": (lambda m: m.inception5a.clear_folded_cache(), True),
    "graph_folds refresh": (_refresh_folds, True),
    "optimizer step": (_optimizer_step, True),
}


@pytest.mark.parametrize("name", list(CHANGES))
def test_every_change_is_seen(stub, name):
    change, supported = CHANGES[name]
    model, x = _meta()
    prog = _recorded(model, x)
    change(model)
    assert nw.launch_program(model, x) is None, f"{name}: the old program would replay"
    if supported:
        assert nw.fused_forward_supported(model, x) is None
        assert nw.forward_or_none(model, x) is not None
        new = nw.launch_program(model, x)
        assert new is not None and new is not prog
        assert nw.forward_or_none(model, x) is not None and nw.launch_program(model, x) is new
    else:
        assert nw.fused_forward_supported(model, x) is not None
        assert nw.forward_or_none(model, x) is None  # the module path


def test_global_hook_is_seen(stub):
    model, x = _meta()
    _recorded(model, x)
    handle = nn.modules.module.register_module_forward_hook(lambda *a: None)
    try:
        assert nw.launch_program(model, x) is None
        assert nw.forward_or_none(model, x) is None
    finally:
        handle.remove()
    assert nw.forward_or_none(model, x) is not None and nw.launch_program(model, x) is not None


def test_new_constants_after_a_change(stub):
    """A program recorded after a change launches with the new values (the paper's lrn1 alpha is
    an argument of conv2's launch)."""
    model, x = _meta("paper")
    prog = _recorded(model, x)

    def alpha_n(p):
        (static,) = [st[3] for st in p.steps if st[1] and "lrn_alpha_n" in st[3] and st[3]["LRN_SIZE"] and "CIN" in st[3]
                     and st[3]["POOL_K"] == 3]
        return static["lrn_alpha_n"]

    assert alpha_n(prog) == pytest.approx(1e-4 / 5)
    model.lrn1.alpha = 2e-4
    assert nw.launch_program(model, x) is None
    assert alpha_n(_recorded(model, x)) == pytest.approx(2e-4 / 5)


def test_unrecorded_buffer_writes_refuse_the_program(stub, monkeypatch):
    """An ATen write into a buffer of the forward (here: every network-op output filled) is no
    step of a program: no program is kept, every forward takes the recording path."""
    real = nw._nhwc_empty
    monkeypatch.setattr(nw, "_nhwc_empty", lambda *a: real(*a).fill_(0.0))
    model, x = _meta()
    assert nw.forward_or_none(model, x) is not None
    assert nw.launch_program(model, x) is None


def test_model_level_drops(stub):
    model, x = _meta()
    _recorded(model, x)
    model.clear_folded_cache()
    assert pg.PROGRAMS_ATTR not in model.__dict__
    _recorded(model, x)
    clone = copy.deepcopy(model)
    assert pg.PROGRAMS_ATTR not in clone.__dict__ and pg.PROGRAMS_ATTR in model.__dict__
    pickle.loads(pickle.dumps(model))
    model.to(torch.float16)
    assert pg.PROGRAMS_ATTR not in model.__dict__


def test_signatures_and_call_conditions(stub, monkeypatch):
    model, x = _meta()
    prog = _recorded(model, x)
    x2 = torch.empty(2, 3, 224, 224, device="meta", dtype=BF16)
    assert nw.launch_program(model, x2) is None  # another shape: its own program
    prog2 = _recorded(model, x2)
    assert nw.launch_program(model, x) is prog and nw.launch_program(model, x2) is prog2
    assert nw.launch_program(model, x.contiguous(memory_format=torch.channels_last)) is None
    # gradients required
    model.fc.weight.requires_grad_(True)
    with torch.enable_grad():
        assert nw.launch_program(model, x) is None
        assert "gradients" in nw.fused_forward_supported(model, x)
    assert nw.launch_program(model, x) is prog  # under no_grad again: nothing changed
    model.fc.weight.requires_grad_(False)
    # process flags that change launch arguments or kernels
    monkeypatch.setattr(nw, "FORCE_INT64", True)
    assert nw.launch_program(model, x) is None
    new = _recorded(model, x)
    assert all(st[3]["INT64"] for st in new.steps if st[1] and "P" in st[3] and "KS" in st[3])
    monkeypatch.setattr(nw, "FORCE_INT64", False)
    monkeypatch.setenv(AUTOTUNE_ENV, "1")  # Triton's autotuner instead of the heuristic tile
    assert nw.launch_program(model, x) is None
    monkeypatch.setenv(AUTOTUNE_ENV, "0")
    # capturing a CUDA graph: the recording path (registers the folded weights it reads), no program
    from googlenet_fast import fold_cache
    monkeypatch.setattr(fold_cache, "_capturing", lambda device: True)
    assert nw.launch_program(model, x) is None
    pg.drop(model)
    nw.fused_forward_triton(model, x)
    monkeypatch.setattr(fold_cache, "_capturing", lambda device: False)
    assert nw.launch_program(model, x) is None  # nothing recorded while capturing


def test_network_path_choice(stub):
    """backend "auto": a program replays only while the network path is the table's choice (or
    no choice can be measured: meta, tracing, capturing)."""
    model, x = _meta()
    prog = _recorded(model, x)
    try:
        autotune_table._choices[prog.network_key] = "modules"
        assert nw.forward_or_none(model, x) is None  # the module path
        assert nw.forward_or_none(model, x, forced=True) is not None  # $GOOGLENET_FAST_BACKEND=triton
        assert nw.launch_program(model, x) is prog
        autotune_table._choices[prog.network_key] = "network"
        assert nw.forward_or_none(model, x) is not None
    finally:
        autotune_table._choices.pop(prog.network_key, None)


def test_recorded_path_choices(stub):
    model, x = _meta()
    prog = _recorded(model, x)
    prog.choices = (("stem|test|bfloat16|224x224|n<=1", "cudnn"),)  # as recorded on CUDA
    assert nw.launch_program(model, x) is None  # the table does not hold it
    try:
        autotune_table._choices["stem|test|bfloat16|224x224|n<=1"] = "cudnn"
        assert nw.launch_program(model, x) is prog
    finally:
        autotune_table._choices.pop("stem|test|bfloat16|224x224|n<=1", None)


# ----------------------------------------------------------------------------------------------
# The model state check on CPU tensors (data pointers are real here)

def test_state_sees_data_swaps_and_conversions():
    torch.manual_seed(0)
    model = GoogLeNet(aux_logits=False, init_weights=True).eval()
    state = pg.ModelState(model)
    assert state.same()
    w = model.inception4d.branch4[1].conv.weight
    version = w._version
    w.data = w.data.clone()  # no version bump: the data pointer tells
    assert w._version == version and not state.same()
    state = pg.ModelState(model)
    model.fc.double()
    assert not state.same()


def test_state_of_inference_tensors():
    with torch.inference_mode():
        model = GoogLeNet(aux_logits=False, init_weights=True).eval()
        model.conv3.bn.running_var = model.conv3.bn.running_var.clone()  # an inference tensor
    state = pg.ModelState(model)
    assert None in state.versions and state.uncounted and state.same()  # (uncounted: never replayed)
    model.conv1.conv.weight = nn.Parameter(torch.zeros_like(model.conv1.conv.weight))
    assert not state.same()


def test_inference_tensor_sources_fold_every_call_and_never_replay(stub):
    """A source without version counter (an inference tensor put in by the user) on the CUDA
    path: its module folds on every call (content checks would synchronize) and no program
    replays (its constants could be stale)."""
    model, x = _meta()
    assert nw.forward_or_none(model, x) is not None and nw.launch_program(model, x) is not None
    bn = model.inception3a.branch1.bn
    with torch.inference_mode():
        bn.running_var = bn.running_var.clone()
    assert bn.running_var.is_inference()
    for _ in range(2):
        assert nw.forward_or_none(model, x) is not None
        assert nw.launch_program(model, x) is None
        assert fold_cache.cache_entries(model.inception3a) == ()
        assert fold_cache.cache_entries(model.inception3b) != ()  # its neighbours keep theirs


def test_not_replayable_while_tracing_or_under_autocast():
    x = torch.randn(1, 3, 32, 32)
    assert pg.replayable(x)
    with torch.autocast("cpu"):
        assert not pg.replayable(x)
    assert not pg.replayable(nn.Parameter(x))
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode() as mode:
        fake = mode.from_tensor(x)
        assert not pg.replayable(fake)
    from torch.fx.experimental.proxy_tensor import make_fx
    seen = []
    make_fx(lambda t: seen.append(pg.replayable(t)) or t + 1)(x)
    assert seen == [False]


# ----------------------------------------------------------------------------------------------
# Numbers, under Triton's interpreter (CPU)

def _interp_model(variant):
    torch.manual_seed(0)
    m = GoogLeNet(aux_logits=False, init_weights=True, variant=variant).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 2.0)
    return m


@pytest.mark.parametrize("variant", ["torchvision", "paper"])
def test_replay_computes_what_the_recording_path_does(interp, variant):
    m = _interp_model(variant)
    x1, x2 = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        y1 = nw.fused_forward_triton(m, x1)
        prog = nw.launch_program(m, x1)
        assert prog is not None and prog.launches == (22 if variant == "torchvision" else 23)
        y2 = nw.fused_forward_triton(m, x2)  # replayed on other data
        assert nw.launch_program(m, x1) is prog
        pg.drop(m)
        ref2 = nw.fused_forward_triton(m, x2)  # the recording path
    assert torch.equal(y2, ref2) and not torch.equal(y1, y2)


def test_replay_after_an_inplace_update(interp):
    m = _interp_model("torchvision")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        nw.fused_forward_triton(m, x)
        before = nw.fused_forward_triton(m, x)  # replayed
        m.inception4e.branch2[0].bn.running_var.mul_(4.0)
        m.fc.bias.add_(1.0)
        after = nw.fused_forward_triton(m, x)
        ref = m._forward_modules(x)
    assert not torch.equal(before, after)
    assert (after - ref).abs().max().item() <= 1e-4 * ref.abs().max().item()
