"""googlenet_fast.model: GoogLeNet against torchvision's model (and the unfused reference path)
computed in the same run.  fp32 with TF32 off; max relative error (max|a-b| / max|b|) <= 1e-4."""
import copy
import pickle
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.models.googlenet import Inception as TVInception

from googlenet_fast import ops
from googlenet_fast.model import (BasicConv2d, ConvReLU, GoogLeNet, GoogLeNetOutputs, Inception,
                                  InceptionAux, PaperInceptionAux, googlenet)



from model_helpers import (TOL, _fp32_exact, make_input, ours_from, pair, randomize_,  # noqa: F401
                           rel_err, tv_model)
@torch.no_grad()
def check_against_tv(tv, ours, x):
    ref = tv(x)
    out = ours(x)
    assert isinstance(out, torch.Tensor) and out.shape == (x.shape[0], 1000)
    err = rel_err(out, ref)
    assert err <= TOL, err
    return out, ref


# ------------------------------------------------------------------------------------------------
# construction, init, state_dict

@pytest.mark.parametrize("aux_logits", [False, True])
def test_init_and_state_dict_identical_to_torchvision(aux_logits):
    torch.manual_seed(123)
    tv = torchvision.models.googlenet(init_weights=True, aux_logits=aux_logits)
    torch.manual_seed(123)
    ours = GoogLeNet(init_weights=True, aux_logits=aux_logits)
    sd_tv, sd = tv.state_dict(), ours.state_dict()
    assert list(sd) == list(sd_tv)
    for k in sd_tv:
        assert sd[k].shape == sd_tv[k].shape and torch.equal(sd[k], sd_tv[k]), k
    # module tree is torchvision's, name for name and type for type
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in tv.named_modules()]
    tv.load_state_dict(sd, strict=True)
    ours.load_state_dict(sd_tv, strict=True)


def test_init_weights_none_warns_like_torchvision():
    with pytest.warns(FutureWarning, match="default weight initialization of GoogleNet"):
        torchvision.models.googlenet()
    with pytest.warns(FutureWarning, match="default weight initialization of GoogleNet"):
        m = GoogLeNet(aux_logits=False)
    w = m.inception3a.branch1.conv.weight
    assert abs(w.mean()) < 1e-3 and 0.009 < w.std() < 0.011  # trunc_normal(std=0.01, a=-2, b=2)
    assert torch.all(m.inception3a.branch1.bn.weight == 1) and torch.all(m.inception3a.branch1.bn.bias == 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GoogLeNet(init_weights=False, aux_logits=False)
        GoogLeNet(init_weights=True, aux_logits=False)
        p = GoogLeNet(variant="paper", aux_logits=False)  # no torchvision notice for the paper's init
    assert torch.all(p.conv1.conv.bias == 0.2)


def test_module_types_and_defaults():
    m = GoogLeNet(init_weights=False)
    assert m.transform_input is False and m.aux_logits is True and m.fused is True
    assert isinstance(m.conv1, BasicConv2d) and isinstance(m.inception3a, Inception)
    assert isinstance(m.aux1, InceptionAux) and isinstance(m.aux2, InceptionAux)
    assert m.conv1.bn.eps == 0.001 and m.conv1.conv.bias is None
    assert m.maxpool4.kernel_size == 2 and m.maxpool4.stride == 2 and m.maxpool4.ceil_mode
    assert all(p.ceil_mode for p in m.modules() if isinstance(p, nn.MaxPool2d))
    assert m.dropout.p == 0.2 and m.aux1.dropout.p == 0.7
    assert GoogLeNet(init_weights=False, dropout=0.5, dropout_aux=0.3).dropout.p == 0.5
    with pytest.raises(ValueError, match="variant"):
        GoogLeNet(init_weights=False, variant="inception_v3")
    with pytest.raises(ValueError, match="blocks length should be 3"):
        GoogLeNet(init_weights=False, blocks=[BasicConv2d, Inception])


def test_conv_blocks():
    b = BasicConv2d(4, 6, kernel_size=3, padding=1)
    assert b.conv.bias is None and b.bn.eps == 0.001
    c = ConvReLU(4, 6, kernel_size=3, padding=1)
    assert c.conv.bias is not None and not hasattr(c, "bn")
    x = make_input(2, 4, 5, 5)
    with torch.no_grad():
        assert torch.equal(c(x), F.relu(F.conv2d(x, c.conv.weight, c.conv.bias, padding=1)))
        randomize_(b)
        b.eval()
        ref = F.relu(b.bn(b.conv(x)))
        assert torch.equal(b(x), ref)
        b.fused = True  # folded BN
        assert rel_err(b(x), ref) <= 1e-6
        b.bn = nn.Identity()  # not foldable any more: the plain path, no crash
        assert torch.equal(b(x), F.relu(b.conv(x)))


# ------------------------------------------------------------------------------------------------
# fused forward == torchvision

@pytest.mark.parametrize("shape", [(2, 3, 224, 224), (1, 3, 15, 15), (1, 3, 32, 32), (1, 3, 225, 225),
                                   (1, 3, 231, 231), (1, 3, 160, 200)], ids=lambda s: "x".join(map(str, s)))
def test_fused_matches_torchvision(pair, shape):
    tv, ours = pair
    x = make_input(*shape)
    out, ref = check_against_tv(tv, ours, x)
    if shape[0] == 2:  # the logits depend on the input (not just on the fc bias)
        assert (ref[0] - ref[1]).abs().max() > 100 * TOL * ref.abs().max()
    assert out.is_contiguous()


@pytest.mark.parametrize("fmt", ["nchw", "channels_last"])
def test_unfused_and_fused_both_match(pair, fmt):
    tv, ours = pair
    x = make_input(1, 3, 64, 80)
    if fmt == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    ours = copy.deepcopy(ours)
    check_against_tv(tv, ours, x)
    ours.fused = False
    with torch.no_grad():
        assert rel_err(ours(x), tv(x)) <= 1e-6  # the plain path is torchvision's computation


def test_fused_path_really_runs_the_op(pair, monkeypatch):
    tv, ours = pair
    calls = []
    real = ops.inception

    def spy(*a, **k):
        calls.append(k.get("backend", "auto"))
        return real(*a, **k)

    monkeypatch.setattr(ops, "inception", spy)
    m = copy.deepcopy(ours)
    x = make_input(2, 3, 32, 32)
    with torch.no_grad():
        m(x)
        assert len(calls) == 9
        m.fused = False
        m(x)
        assert len(calls) == 9
        m.fused = True
        m.train()
        m(x)  # train mode: the reference path (no fused backward yet)
        assert len(calls) == 9


def test_fused_property_propagates():
    m = GoogLeNet(init_weights=False, fused=False)
    incs = [mod for mod in m.modules() if isinstance(mod, Inception)]
    assert len(incs) == 9 and not any(i.fused for i in incs)
    assert not m.conv1.fused and not m.conv3.fused
    m.fused = True
    assert m.fused and all(i.fused for i in incs) and m.conv1.fused and m.conv2.fused and m.conv3.fused
    assert m.set_fused(False) is m and not m.fused and not any(i.fused for i in incs) and not m.conv2.fused
    # the branch convs inside Inception and the aux convs are never folded one by one
    assert not m.inception3a.branch1.fused and not m.aux1.conv.fused


# ------------------------------------------------------------------------------------------------
# folded weights: values, layout, cache

def test_folded_params_values_and_layout(pair):
    _, ours = pair
    inc = ours.inception4a
    with torch.no_grad():  # with grad enabled and parameters requiring grad, folding is inline
        folded = inc.folded_params()
    assert len(folded) == 12
    blocks = [inc.branch1, inc.branch2[0], inc.branch2[1], inc.branch3[0], inc.branch3[1], inc.branch4[1]]
    for i, blk in enumerate(blocks):
        w, b = folded[2 * i], folded[2 * i + 1]
        bn = blk.bn
        s = bn.weight.double() / torch.sqrt(bn.running_var.double() + 0.001)
        assert w.dtype == torch.float32 and b.dtype == torch.float32
        torch.testing.assert_close(w.double(), blk.conv.weight.double() * s.view(-1, 1, 1, 1), rtol=1e-6, atol=0)
        torch.testing.assert_close(b.double(), bn.bias.double() - bn.running_mean.double() * s,
                                   rtol=1e-6, atol=1e-7)
    w1, w3r, w5r = folded[0], folded[2], folded[6]
    cin = w1.shape[1]
    assert w1.untyped_storage().data_ptr() == w3r.untyped_storage().data_ptr() == w5r.untyped_storage().data_ptr()
    assert w3r.data_ptr() == w1.data_ptr() + w1.shape[0] * cin * 4
    assert w5r.data_ptr() == w3r.data_ptr() + w3r.shape[0] * cin * 4
    assert w1.is_contiguous() and w3r.is_contiguous() and w5r.is_contiguous()
    assert folded[4].is_contiguous(memory_format=torch.channels_last) and not folded[4].is_contiguous()
    assert folded[8].is_contiguous(memory_format=torch.channels_last)
    # cached: the very same tensors come back while nothing changed
    with torch.no_grad():
        again = inc.folded_params()
    assert all(a is b for a, b in zip(folded, again))
    inline = inc.folded_params()  # grad mode: folded inline, differentiable, not the cache
    assert inline[0].requires_grad and inline[0] is not folded[0] and torch.equal(inline[0], folded[0])
    # the stem's folded conv
    with torch.no_grad():
        w, b = ours.conv1.folded_params()
        assert ours.conv1.folded_params()[0] is w
    s = ours.conv1.bn.weight.double() / torch.sqrt(ours.conv1.bn.running_var.double() + 0.001)
    torch.testing.assert_close(w.double(), ours.conv1.conv.weight.double() * s.view(-1, 1, 1, 1), rtol=1e-6, atol=0)


def test_folded_cache_not_in_state_dict_and_dropped_by_copy(pair):
    tv, ours = pair
    x = make_input(1, 3, 32, 32)
    with torch.no_grad():
        ours(x)
    assert "_fold_cache" in ours.inception3a.__dict__
    assert list(ours.state_dict()) == list(tv.state_dict())
    clone = pickle.loads(pickle.dumps(ours))
    assert "_fold_cache" not in clone.inception3a.__dict__
    dc = copy.deepcopy(ours)
    assert "_fold_cache" not in dc.inception3a.__dict__
    with torch.no_grad():
        assert rel_err(clone(x), tv(x)) <= TOL and rel_err(dc(x), tv(x)) <= TOL


def _changed_and_correct(model, x, before):
    """Fused output after a change: differs from before, equals the unfused reference path."""
    with torch.no_grad():
        out = model(x)
        model.fused = False
        ref = model(x)
        model.fused = True
    assert rel_err(out, ref) <= TOL
    assert (before.double() - ref.double()).abs().max() > 100 * TOL * ref.abs().max(), "the change changed nothing"
    return out


@pytest.fixture
def fresh(pair):
    tv, ours = pair
    m = copy.deepcopy(ours)
    x = make_input(2, 3, 48, 48)
    with torch.no_grad():
        y0 = m(x)  # fills every cache
    assert rel_err(y0, tv(x).detach()) <= TOL
    return m, x, y0


def test_cache_after_optimizer_step(fresh):
    m, x, y0 = fresh
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    g = torch.Generator().manual_seed(5)
    for p in m.parameters():
        p.grad = torch.randn(p.shape, generator=g) * p.detach().abs().mean()
    opt.step()
    _changed_and_correct(m, x, y0)


def test_cache_after_load_state_dict(fresh):
    m, x, y0 = fresh
    other = randomize_(GoogLeNet(init_weights=False, aux_logits=False), seed=7)
    m.load_state_dict(other.state_dict())
    _changed_and_correct(m, x, y0)


def test_cache_after_data_mutation(fresh, monkeypatch):
    """.data has a version counter of its own: the key alone would miss this; the opt-in content
    check catches it."""
    m, x, y0 = fresh
    monkeypatch.setattr(Inception, "verify_folded_cache", True)
    monkeypatch.setattr(BasicConv2d, "verify_folded_cache", True)
    v = m.inception4b.branch2[1].conv.weight._version
    m.inception4b.branch2[1].conv.weight.data.mul_(-1.5)
    m.conv1.bn.running_var.data.mul_(3.0)
    assert m.inception4b.branch2[1].conv.weight._version == v
    y1 = _changed_and_correct(m, x, y0)
    with torch.no_grad():  # in-place under no_grad bumps _version
        m.inception5b.branch4[1].bn.weight.mul_(2.0)
    _changed_and_correct(m, x, y1)


def test_cache_without_content_check_and_clear(fresh, monkeypatch):
    """verify_folded_cache=False (the default): only the key (data_ptr, _version, ...) decides; a
    write through .data then needs clear_folded_cache()."""
    m, x, y0 = fresh
    monkeypatch.setattr(Inception, "verify_folded_cache", False)
    monkeypatch.setattr(BasicConv2d, "verify_folded_cache", False)
    with torch.no_grad():
        m(x)
        m.inception4b.branch2[1].conv.weight.data.mul_(-1.5)
        stale = m(x)
    assert torch.equal(stale, y0)  # documented: the key cannot see .data writes
    m.clear_folded_cache()
    assert not any("_fold_cache" in mod.__dict__ for mod in m.modules())
    y1 = _changed_and_correct(m, x, y0)
    with torch.no_grad():  # in-place on the parameter itself bumps _version: seen without the check
        m.inception5b.branch4[1].bn.weight.mul_(2.0)
    _changed_and_correct(m, x, y1)


def test_cache_after_double_and_mode_switch(fresh):
    m, x, y0 = fresh
    m.train()
    with torch.no_grad():
        m(x)  # train-mode forward updates every running_mean/var in place
    m.eval()
    y1 = _changed_and_correct(m, x, y0)
    m.double()
    assert "_fold_cache" not in m.inception3a.__dict__
    xd = x.double()
    with torch.no_grad():
        out = m(xd)
        m.fused = False
        ref = m(xd)
        m.fused = True
    assert out.dtype == torch.float64 and m.inception3a.folded_params()[0].dtype == torch.float64
    assert (out - ref).abs().max() / ref.abs().max() <= 1e-10
    assert rel_err(out, y1) <= TOL


def test_eval_mode_gradients_reach_parameters(pair):
    """With grad enabled the folding is inline and differentiable (no cached constants)."""
    tv, ours = pair
    m = copy.deepcopy(ours)
    x = make_input(1, 3, 32, 32).requires_grad_()
    out = m(x)
    out.square().sum().backward()
    x2 = x.detach().clone().requires_grad_()
    tv2 = copy.deepcopy(tv)
    ref = tv2(x2)
    ref.square().sum().backward()
    assert rel_err(out, ref) <= TOL
    assert rel_err(x.grad, x2.grad) <= TOL
    for name in ("inception4c.branch2.1.conv.weight", "inception3a.branch4.1.bn.bias", "conv1.conv.weight"):
        g, gr = m.get_parameter(name).grad, tv2.get_parameter(name).grad
        assert g is not None, name
        assert rel_err(g, gr) <= TOL, name
    assert "_fold_cache" not in m.inception4c.__dict__


# ------------------------------------------------------------------------------------------------
# single Inception module

@pytest.mark.parametrize("fmt", ["nchw", "channels_last"])
def test_inception_module_matches_torchvision(fmt):
    tvi = randomize_(TVInception(192, 64, 96, 128, 16, 32, 32), 3).eval()
    inc = Inception(192, 64, 96, 128, 16, 32, 32)
    inc.load_state_dict(tvi.state_dict(), strict=True)
    tvi.load_state_dict(inc.state_dict(), strict=True)
    inc.eval()
    x = make_input(2, 192, 9, 11)
    if fmt == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = tvi(x)
        out = inc(x)
        assert rel_err(out, ref) <= TOL
        assert out.is_contiguous(memory_format=torch.channels_last) == (fmt == "channels_last")
        inc.fused = False
        assert torch.equal(inc(x), ref)


def test_inception_custom_conv_block_falls_back():
    class Tanh(nn.Module):
        def __init__(self, i, o, **kw):
            super().__init__()
            self.conv = nn.Conv2d(i, o, **kw)

        def forward(self, x):
            return torch.tanh(self.conv(x))

    inc = Inception(8, 4, 4, 4, 4, 4, 4, conv_block=Tanh).eval()
    x = make_input(1, 8, 5, 5)
    with torch.no_grad():
        assert torch.equal(inc(x), torch.cat(inc._forward(x), 1))
    with pytest.raises(RuntimeError, match="plain BasicConv2d"):
        inc.folded_params()


def test_inception_under_autocast_matches_unfused_dtype():
    tvi = randomize_(TVInception(64, 16, 16, 32, 8, 16, 16), 4).eval()
    inc = Inception(64, 16, 16, 32, 8, 16, 16)
    inc.load_state_dict(tvi.state_dict())
    inc.eval()
    x = make_input(1, 64, 8, 8)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ref = tvi(x)
        out = inc(x)
    assert out.dtype == ref.dtype == torch.bfloat16
    with torch.no_grad():
        exact = copy.deepcopy(tvi).double()(x.double())
    assert rel_err(out, exact) <= 2 * rel_err(ref, exact) + 1e-3


# ------------------------------------------------------------------------------------------------
# the paper variant (Table 1)

TABLE1 = {  # layer -> (out H=W, out C, channels (1x1, 3x3red, 3x3, 5x5red, 5x5, pool proj), params K, ops M)
    "inception3a": (28, 256, (64, 96, 128, 16, 32, 32), 159, 128),
    "inception3b": (28, 480, (128, 128, 192, 32, 96, 64), 380, 304),
    "inception4a": (14, 512, (192, 96, 208, 16, 48, 64), 364, 73),
    "inception4b": (14, 512, (160, 112, 224, 24, 64, 64), 437, 88),
    "inception4c": (14, 512, (128, 128, 256, 24, 64, 64), 463, 100),
    "inception4d": (14, 528, (112, 144, 288, 32, 64, 64), 580, 119),
    "inception4e": (14, 832, (256, 160, 320, 32, 128, 128), 840, 170),
    "inception5a": (7, 832, (256, 160, 320, 32, 128, 128), 1072, 54),
    "inception5b": (7, 1024, (384, 192, 384, 48, 128, 128), 1388, 71),
}
# rows where the paper's params column disagrees with its own channels: the value counted from them (K)
PARAMS_FROM_CHANNELS = {"inception4c": 497.5, "inception4d": 590.5, "inception5a": 1018.0, "inception5b": 1409.0}
OPS_FROM_CHANNELS = {"inception5a": 51.1}


@pytest.fixture(scope="module")
def paper():
    torch.manual_seed(0)
    m = GoogLeNet(variant="paper", init_weights=True)
    return randomize_(m, seed=11).eval()


def test_paper_structure(paper):
    m = paper
    names = dict(m.named_children())
    for n in ("conv1", "maxpool1", "lrn1", "conv2", "conv3", "lrn2", "maxpool2", "inception3a", "inception5b",
              "aux1", "aux2", "avgpool", "dropout", "fc"):
        assert n in names, n
    assert not any(isinstance(x, nn.BatchNorm2d) for x in m.modules())
    convs = [x for x in m.modules() if isinstance(x, nn.Conv2d)]
    assert all(c.bias is not None for c in convs)
    assert all(isinstance(x, ConvReLU) for x in m.modules() if hasattr(x, "conv") and isinstance(x.conv, nn.Conv2d))
    for lrn in (m.lrn1, m.lrn2):
        assert (lrn.size, lrn.alpha, lrn.beta, lrn.k) == (5, 1e-4, 0.75, 1.0)
    assert m.inception3a.branch3[1].conv.weight.shape == (32, 16, 5, 5)
    assert m.inception3a.branch3[1].conv.padding == (2, 2)
    assert all(p.kernel_size == 3 and p.stride == 2 and p.ceil_mode
               for p in (m.maxpool1, m.maxpool2, m.maxpool3, m.maxpool4))
    assert isinstance(m.aux1, PaperInceptionAux) and m.aux1.dropout.p == 0.7 and m.dropout.p == 0.4
    assert GoogLeNet(variant="paper", init_weights=False, dropout=0.3).dropout.p == 0.3
    assert m.min_input_size == 31
    # Caffe-style init: xavier uniform, conv bias 0.2
    fresh = GoogLeNet(variant="paper", init_weights=True, aux_logits=False)
    w = fresh.inception3a.branch1.conv.weight
    assert w.abs().max() <= (3 / 192) ** 0.5 and torch.all(fresh.inception3a.branch1.conv.bias == 0.2)


def test_paper_table1_counts_and_shapes(paper):
    m = copy.deepcopy(paper)
    m.fused = False  # count every conv through its own module's hook
    macs, shapes = {}, {}
    hooks = []
    for name, mod in m.named_modules():
        if isinstance(mod, nn.Conv2d):
            hooks.append(mod.register_forward_hook(
                lambda mod, i, o, name=name: macs.__setitem__(name, mod.weight.numel() * o.shape[-2] * o.shape[-1])))
    for name in ["maxpool1", "conv2", "conv3", "maxpool2"] + list(TABLE1):
        hooks.append(getattr(m, name).register_forward_hook(
            lambda mod, i, o, name=name: shapes.__setitem__(name, tuple(o.shape[1:]))))
    with torch.no_grad():
        m(make_input(1, 3, 224, 224))
    for h in hooks:
        h.remove()

    def stage(prefix):
        convs = [(n, mod) for n, mod in m.named_modules() if isinstance(mod, nn.Conv2d) and n.startswith(prefix)]
        return sum(mod.weight.numel() for _, mod in convs) / 1024, sum(macs[n] for n, _ in convs) / 1e6

    # conv 3x3/1 (reduce 64): 56x56x192, 112K params, 360M ops
    assert shapes["maxpool1"] == (64, 56, 56) and shapes["conv2"] == (64, 56, 56)
    assert shapes["conv3"] == (192, 56, 56) and shapes["maxpool2"] == (192, 28, 28)
    p2, o2 = stage("conv2.")
    p3, o3 = stage("conv3.")
    assert abs((p2 + p3) - 112) <= 0.01 * 112 and abs((o2 + o3) - 360) <= 0.01 * 360
    assert m.conv3.conv.weight.shape == (192, 64, 3, 3) and m.conv2.conv.weight.shape == (64, 64, 1, 1)

    for name, (hw, cout, ch, params_k, ops_m) in TABLE1.items():
        assert shapes[name] == (cout, hw, hw), name
        c1, r3, c3, r5, c5, pp = ch
        cin = getattr(m, name).branch1.conv.in_channels
        assert c1 + c3 + c5 + pp == cout
        from_channels = (cin * (c1 + r3 + r5 + pp) + r3 * c3 * 9 + r5 * c5 * 25) / 1024
        p, o = stage(name + ".")
        assert p == from_channels, name
        assert o == pytest.approx(from_channels * 1024 * hw * hw / 1e6, rel=1e-12), name
        if name in PARAMS_FROM_CHANNELS:
            assert p == PARAMS_FROM_CHANNELS[name], (name, p)
            assert abs(p - params_k) > 0.01 * params_k, name  # the paper's own inconsistency
        else:
            assert abs(p - params_k) <= 0.01 * params_k, (name, p, params_k)
        if name in OPS_FROM_CHANNELS:
            assert round(o, 1) == OPS_FROM_CHANNELS[name], (name, o)
        else:
            assert abs(o - ops_m) <= 0.01 * ops_m, (name, o, ops_m)


def test_paper_fused_matches_unfused(paper):
    m = copy.deepcopy(paper)
    x = make_input(2, 3, 224, 224)
    with torch.no_grad():
        out = m(x)
        m.fused = False
        ref = m(x)
    assert rel_err(out, ref) <= TOL
    assert (ref[0] - ref[1]).abs().max() > 100 * TOL * ref.abs().max()


@pytest.mark.parametrize("size", [31, 100])
def test_paper_other_sizes_and_train_outputs(paper, size):
    m = copy.deepcopy(paper)
    x = make_input(1, 3, size, size)
    with torch.no_grad():
        out = m(x)
        m.fused = False
        assert rel_err(out, m(x)) <= TOL
        m.train()
        res = m(make_input(2, 3, size, size))
    assert isinstance(res, torchvision.models.GoogLeNetOutputs)
    assert [t.shape for t in res] == [(2, 1000)] * 3
    with pytest.raises(ValueError, match="at least 31x31"):
        m(make_input(1, 3, 30, 30))


def test_paper_aux_head_pool():
    aux = PaperInceptionAux(16, 10).eval()
    x = make_input(2, 16, 14, 14)
    with torch.no_grad():
        pooled = F.avg_pool2d(x, 5, stride=3)
        assert pooled.shape[-2:] == (4, 4)
        ref = aux.fc2(F.relu(aux.fc1(torch.flatten(F.relu(aux.conv.conv(pooled)), 1))))
        assert rel_err(aux(x), ref) <= 1e-6
        assert aux(make_input(1, 16, 9, 9)).shape == (1, 10)  # adaptive 4x4 pool


# ------------------------------------------------------------------------------------------------
# the builder

@pytest.fixture(scope="module")
def tv_checkpoint():
    return tv_model(aux_logits=True, seed=21).state_dict()


@pytest.fixture
def fake_weights(monkeypatch, tv_checkpoint):
    """GoogLeNet_Weights.IMAGENET1K_V1 without the network: get_state_dict returns a locally built
    torchvision state_dict (with aux heads, as the real checkpoint)."""
    W = torchvision.models.GoogLeNet_Weights
    sd = tv_checkpoint
    calls = []

    def get_state_dict(self, *args, **kwargs):
        calls.append((self, args, kwargs))
        return copy.deepcopy(sd)

    monkeypatch.setattr(W, "get_state_dict", get_state_dict)
    return W, sd, calls


@pytest.mark.parametrize("weights", ["enum", "IMAGENET1K_V1", "DEFAULT"])
def test_googlenet_builder_with_weights(fake_weights, weights):
    W, sd, calls = fake_weights
    w = W.IMAGENET1K_V1 if weights == "enum" else weights
    m = googlenet(weights=w, progress=False).eval()
    assert calls and calls[-1][0] is W.IMAGENET1K_V1 and calls[-1][2] == {"progress": False, "check_hash": True}
    assert m.transform_input is True and m.aux_logits is False and m.aux1 is None and m.aux2 is None
    assert m.fc.out_features == 1000 and m.fused
    tv = torchvision.models.googlenet(weights=W.IMAGENET1K_V1, progress=False).eval()
    x = make_input(1, 3, 64, 64)
    check_against_tv(tv, m, x)


def test_googlenet_builder_keeps_aux_when_asked(fake_weights):
    W, sd, calls = fake_weights
    with pytest.warns(UserWarning, match="NOT pretrained"):
        m = googlenet(weights=W.IMAGENET1K_V1, aux_logits=True)
    assert m.aux_logits and isinstance(m.aux1, InceptionAux)
    assert torch.equal(m.aux1.fc1.weight, sd["aux1.fc1.weight"])
    m2 = googlenet(weights=W.IMAGENET1K_V1, transform_input=False, fused=False)
    assert m2.transform_input is False and not m2.fused
    with pytest.raises(ValueError, match="num_classes"):
        googlenet(weights=W.IMAGENET1K_V1, num_classes=10)
    with pytest.raises(ValueError, match="variant='torchvision'"):
        googlenet(weights=W.IMAGENET1K_V1, variant="paper")


def test_googlenet_builder_without_weights():
    m = googlenet(init_weights=False)
    assert m.aux_logits and m.transform_input is False and m.variant == "torchvision"
    m = googlenet(weights=None, init_weights=False, variant="paper", aux_logits=False, num_classes=10)
    assert m.variant == "paper" and m.fc.out_features == 10 and m.aux1 is None
    with pytest.raises(ValueError):
        googlenet(weights="NOT_A_WEIGHT")


# ------------------------------------------------------------------------------------------------
# bad input

@pytest.mark.parametrize("fused", [True, False])
def test_bad_input_errors(pair, fused):
    _, ours = pair
    ours.fused = fused
    try:
        with torch.no_grad():
            with pytest.raises(ValueError, match=r"x: expected a 4-D tensor of shape \(N, 3, H, W\)"):
                ours(make_input(3, 224, 224))
            with pytest.raises(ValueError, match=r"x: expected 3 input channels \(RGB\).*got 1"):
                ours(make_input(1, 1, 64, 64))
            with pytest.raises(ValueError, match=r"x: expected 3 input channels \(RGB\).*got 4"):
                ours(make_input(1, 4, 64, 64))
            with pytest.raises(TypeError, match="x: expected a floating-point tensor.*integer images must be converted"):
                ours(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
            with pytest.raises(ValueError, match="x: expected a spatial size of at least 15x15.*got 14x14"):
                ours(make_input(1, 3, 14, 14))
            with pytest.raises(ValueError, match="at least 15x15.*got 64x9"):
                ours(make_input(1, 3, 64, 9))
            with pytest.raises(TypeError, match="x: expected a Tensor"):
                ours([[1.0]])
            for dtype in (torch.float16, torch.float64, torch.bfloat16):  # a float32 model
                with pytest.raises(TypeError, match=rf"x: expected dtype torch.float32 \(the model's parameters\), "
                                                    rf"got {dtype}; convert the input"):
                    ours(make_input(1, 3, 64, 64).to(dtype))
            with torch.autocast("cpu", torch.bfloat16):  # autocast: a bf16 input on a float32 model is fine
                assert ours(make_input(1, 3, 64, 64).to(torch.bfloat16)).shape == (1, 1000)
    finally:
        ours.fused = True


@pytest.mark.parametrize("training", [False, True])
def test_standalone_inception_bad_input_names_x(pair, training):
    """An Inception module called on its own: a wrong channel count or rank is reported against
    x and the module's input channels (the fused op's own check would name the weight w_1x1)."""
    _, ours = pair
    block = copy.deepcopy(ours.inception3a).train(training)
    for x in (make_input(2, 100, 7, 7), make_input(192, 7, 7)):
        with pytest.raises(ValueError, match=r"x: expected a 4-D tensor \(N, 192, H, W\) for this Inception "
                                             r"module \(192 input channels\), got shape \(" + ", ".join(map(str, x.shape))):
            block(x)
    y = block(make_input(2, 192, 7, 7))  # the right input still runs
    assert y.shape == (2, 256, 7, 7)


# ------------------------------------------------------------------------------------------------
# GPU (skipped without CUDA)

@pytest.mark.gpu
def test_gpu_fused_matches_torchvision_fp32_bf16_and_graph_capture():
    dev = "cuda"
    tv = tv_model(aux_logits=False, seed=31).to(dev)
    ours = ours_from(tv).to(dev)
    x = make_input(2, 3, 224, 224, seed=32).to(dev)
    check_against_tv(tv, ours, x)
    check_against_tv(tv, ours, x.contiguous(memory_format=torch.channels_last))
    check_against_tv(tv, ours, make_input(1, 3, 15, 15).to(dev))
    with torch.no_grad():
        ref64 = copy.deepcopy(tv).double()(x.double())
        for dtype in (torch.bfloat16, torch.float16):
            tv_h = copy.deepcopy(tv).to(dtype)(x.to(dtype))
            out = copy.deepcopy(ours).to(dtype)(x.to(dtype))
            assert out.dtype == dtype
            assert rel_err(out, ref64) <= 2 * rel_err(tv_h, ref64), dtype
    # CUDA graph capture: folding is captured too, so a replay sees later parameter updates
    m = copy.deepcopy(ours)
    static_x = x.clone()
    with torch.no_grad():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                m(static_x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_y = m(static_x)
        graph.replay()
        torch.cuda.synchronize()
        assert rel_err(static_y, tv(x)) <= TOL
        m.inception4a.branch2[1].bn.running_var.mul_(3.0)
        graph.replay()
        m.fused = False
        ref = m(static_x)
        assert rel_err(static_y, ref) <= TOL
        assert (static_y - tv(x)).abs().max() > 100 * TOL * ref.abs().max()


@pytest.mark.parametrize("make,tv_type", [
    (lambda: torch.zeros(1, 3, 64, 64, dtype=torch.uint8), RuntimeError),
    (lambda: torch.zeros(1, 3, 64, 64, dtype=torch.int64), RuntimeError),
    (lambda: make_input(1, 1, 64, 64), RuntimeError),
    (lambda: make_input(1, 3, 64, 64).double(), RuntimeError),
    (lambda: make_input(1, 3, 64, 64).half(), RuntimeError),
])
def test_bad_input_is_also_what_torchvision_raises(pair, make, tv_type):
    """Code written for torchvision catches our errors too: torchvision's model raises a
    RuntimeError for an integer dtype, a wrong channel count or a missing batch dimension; ours
    is that type as well as the TypeError/ValueError that names the argument.  (A 3-D input, which
    torchvision's convolutions take as unbatched, stays a ValueError here.)"""
    tv, ours = pair
    x = make()
    with torch.no_grad():
        with pytest.raises(tv_type):
            tv(x)
        with pytest.raises(tv_type) as e:
            ours(x)
    assert str(e.value).startswith("x: expected")
    assert isinstance(e.value, (TypeError, ValueError))


def test_jit_trace_with_its_default_check(pair):
    """torch.jit.trace's default check (two runs, graphs compared) passes: the folded weights are
    traced into the graph, not read from a cache the first run builds."""
    _, ours = pair
    x, x2 = make_input(2, 3, 64, 64), make_input(2, 3, 64, 64, seed=7)
    with torch.no_grad():
        traced = torch.jit.trace(ours.eval(), x)
        for inp in (x, x2):
            assert torch.allclose(traced(inp), ours(inp), rtol=1e-5, atol=1e-6)


def test_meta_device_forward_gives_shapes_like_torchvision():
    """A model and input on the meta device (shape inference without memory): torchvision's
    model gives (N, 1000); so does the fused one (autocast has no 'meta' setting to read)."""
    import torchvision
    tv = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False).eval().to("meta")
    ours = GoogLeNet(fused=True, aux_logits=False, init_weights=False).eval().to("meta")
    x = torch.empty(2, 3, 64, 64, device="meta")
    assert tv(x).shape == ours(x).shape == (2, 1000)
    assert ours(x).device.type == "meta"


@pytest.mark.parametrize("sizes", [(160, 112, 224, 24, 64, 64), (128, 128, 256, 24, 64, 64), (64, 96, 128, 16, 32, 32)])
def test_bf16_merged_1x1_weight_padding_changes_no_bit(sizes, monkeypatch):
    """bfloat16 folds append zero rows to the merged 1x1 weight where ch1x1 + ch3x3red + ch5x5red
    is not a multiple of 16 (4b: 296 -> 320, 4c: 280 -> 288; 3a's 176: none), so stage 1's GEMM
    runs with oneDNN's well-blocked column counts; the module's views keep their shapes and the
    output keeps its bits (padding on vs off, eval, batch 1 and 3)."""
    from googlenet_fast import model as gm
    c1, r3, c3, r5, c5, cp = sizes
    torch.manual_seed(0)
    inc = gm.Inception(512, c1, r3, c3, r5, c5, cp).eval()
    for mod in inc.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(mod.running_var, 0.5, 1.5)
            torch.nn.init.normal_(mod.running_mean, 0, 0.2)
    inc = inc.to(torch.bfloat16)
    nm = c1 + r3 + r5
    outs = {}
    for pad in (True, False):
        monkeypatch.setattr(gm, "PAD_MERGED_ROWS", pad)
        inc.clear_folded_cache()
        with torch.no_grad():
            w1, _, w3r, _, _, _, w5r, *_ = inc.folded_params()
            assert (w1.shape[0], w3r.shape[0], w5r.shape[0]) == (c1, r3, r5)
            rows = w1.untyped_storage().nbytes() // (512 * 2)
            assert rows == (nm + (-nm % 32) if pad and nm % 16 else nm)
            if rows > nm:
                assert torch.equal(w1.new_empty(0).set_(w1.untyped_storage()).view(rows, 512)[nm:],
                                   torch.zeros(rows - nm, 512, dtype=torch.bfloat16))
            outs[pad] = [inc(torch.randn(b, 512, 7, 7, generator=torch.Generator().manual_seed(b)).to(
                torch.bfloat16).contiguous(memory_format=torch.channels_last)) for b in (1, 3)]
    for a, b in zip(outs[True], outs[False]):
        assert torch.equal(a, b)


def test_merged_1x1_weight_rows_past_the_views_are_never_read():
    """The fused op reads the merged 1x1 weight's buffer past the three views (up to a multiple of
    32 rows, bfloat16) where the buffer has room: NaN there changes no output value."""
    from googlenet_fast import ops
    g = torch.Generator().manual_seed(0)
    c1, r3, c3, r5, c5, cp, cin = 40, 24, 32, 8, 16, 16, 64  # 72 rows: read as 96
    rnd = lambda *s: (torch.randn(*s, generator=g) * 0.1).to(torch.bfloat16)
    x = rnd(2, cin, 5, 5).contiguous(memory_format=torch.channels_last)
    buf = torch.full((96, cin, 1, 1), float("nan"), dtype=torch.bfloat16)
    buf[:72] = rnd(72, cin, 1, 1)
    w1, w3r, w5r = buf[:c1], buf[c1:c1 + r3], buf[c1 + r3:72]
    rest = [rnd(c3, r3, 3, 3), rnd(c5, r5, 5, 5), rnd(cp, cin, 1, 1)]
    biases = [rnd(c) for c in (c1, r3, c3, r5, c5, cp)]
    args = [w1, biases[0], w3r, biases[1], rest[0], biases[2], w5r, biases[3], rest[1], biases[4], rest[2], biases[5]]
    y = ops.inception(x, *args)
    y_ref = ops.inception(x, *[a.clone() for a in args])  # separate buffers: no room, no padding
    assert not torch.isnan(y).any() and torch.equal(y, y_ref)
