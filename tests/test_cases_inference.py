"""The inference cases of /work/shared/cases.md, at the model level: each one against torchvision's
model (or the unfused reference) computed in the same run.  fp32 with TF32 off: max relative
error (max|a-b| / max|b|) <= 1e-4 on logits; bf16 within 2x torchvision's own bf16 error."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.models.googlenet import Inception as TVInception

from googlenet_fast import ops
from googlenet_fast.model import GoogLeNet, GoogLeNetOutputs, Inception, googlenet



from model_helpers import (TOL, _fp32_exact, make_input, ours_from, pair, randomize_,  # noqa: F401
                           rel_err, tv_model)


def assert_logits_match(tv, ours, x, ref_x=None):
    ref = tv(x if ref_x is None else ref_x)
    out = ours(x)
    assert isinstance(out, torch.Tensor) and out.shape == (x.shape[0], 1000) and out.dtype == ref.dtype
    err = rel_err(out, ref)
    assert err <= TOL, err
    return out, ref


# ------------------------------------------------------------------------------------------------
# branch3-kernel

def test_branch3_kernel():
    m = GoogLeNet(variant="torchvision", aux_logits=False, init_weights=False)
    assert m.inception3a.branch3[1].conv.weight.shape == (32, 16, 3, 3)
    assert sum(p.numel() for p in m.parameters()) == 6_624_904
    m_aux = GoogLeNet(variant="torchvision", aux_logits=True, init_weights=False)
    assert sum(p.numel() for p in m_aux.parameters()) == 13_004_888
    for ours, aux in ((m, False), (m_aux, True)):
        tv = torchvision.models.googlenet(init_weights=False, aux_logits=aux)
        assert sum(p.numel() for p in tv.parameters()) == sum(p.numel() for p in ours.parameters())
        ours.load_state_dict(tv.state_dict(), strict=True)
        tv.load_state_dict(ours.state_dict(), strict=True)
    paper = GoogLeNet(variant="paper", aux_logits=False, init_weights=False)
    assert paper.inception3a.branch3[1].conv.weight.shape == (32, 16, 5, 5)
    assert all(getattr(paper, f"inception{n}").branch3[1].conv.kernel_size == (5, 5)
               for n in ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b"))


# ------------------------------------------------------------------------------------------------
# aux-keys

def test_aux_keys(monkeypatch):
    tv_aux = tv_model(aux_logits=True, seed=3)
    sd = tv_aux.state_dict()
    assert any(k.startswith("aux1.") for k in sd)
    # a plain strict load names the unexpected aux keys, as torchvision's model does
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\) in state_dict: .*\"aux1\.conv\.conv\.weight\""):
        GoogLeNet(aux_logits=False, init_weights=False).load_state_dict(sd)
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\) in state_dict: .*aux1\.conv\.conv\.weight"):
        torchvision.models.googlenet(aux_logits=False, init_weights=False).load_state_dict(sd)

    # the builder: build with aux heads, load, drop them -- as torchvision's builder
    W = torchvision.models.GoogLeNet_Weights
    monkeypatch.setattr(W, "get_state_dict", lambda self, *a, **k: copy.deepcopy(sd))
    ours = googlenet(weights=W.IMAGENET1K_V1).eval()
    tv = torchvision.models.googlenet(weights=W.IMAGENET1K_V1).eval()
    assert ours.aux1 is None and ours.aux2 is None and ours.aux_logits is False
    assert tv.aux1 is None and tv.aux_logits is False
    assert list(ours.state_dict()) == list(tv.state_dict())
    assert not any(k.startswith("aux") for k in ours.state_dict())
    assert_logits_match(tv, ours, make_input(1, 3, 64, 64))
    ours.train()
    out = ours(make_input(2, 3, 64, 64))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 1000)


# ------------------------------------------------------------------------------------------------
# train-eval-type

def test_train_eval_type():
    tv = tv_model(aux_logits=True, seed=4)
    ours = ours_from(tv)
    x = make_input(2, 3, 224, 224)
    tv.train()
    ours.train()
    with torch.no_grad():
        torch.manual_seed(0)
        ref = tv(x)
        torch.manual_seed(0)  # the same dropout masks: train mode runs the same ops in the same order
        out = ours(x)
    assert type(out) is GoogLeNetOutputs and type(out) is torchvision.models.GoogLeNetOutputs
    assert isinstance(out, tuple) and out._fields == ("logits", "aux_logits2", "aux_logits1")
    for a, b in zip(out, ref):
        assert a.shape == (2, 1000)
        assert rel_err(a, b) <= TOL
    assert rel_err(ours.inception4e.branch1.bn.running_mean, tv.inception4e.branch1.bn.running_mean) <= 1e-5
    ours.eval()
    tv.eval()
    out, _ = assert_logits_match(tv, ours, x)
    assert type(out) is torch.Tensor
    no_aux = ours_from(tv_model(aux_logits=False))
    no_aux.train()
    with torch.no_grad():
        y = no_aux(x)
    assert type(y) is torch.Tensor and y.shape == (2, 1000)


# ------------------------------------------------------------------------------------------------
# transform-input

@pytest.mark.parametrize("fused", [True, False])
def test_transform_input(fused):
    assert GoogLeNet(init_weights=False, aux_logits=False).transform_input is False
    assert torchvision.models.googlenet(init_weights=False).transform_input is False
    tv = tv_model(transform_input=True, seed=5)
    ours = ours_from(tv, fused=fused)
    seen = {}
    tv.conv1.register_forward_pre_hook(lambda m, args: seen.__setitem__("tv", args[0].detach().clone()))
    ours.conv1.register_forward_pre_hook(lambda m, args: seen.__setitem__("ours", args[0].detach().clone()))
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    assert_logits_match(tv, ours, x)
    assert torch.equal(seen["ours"], seen["tv"])
    expected = torch.cat([x[:, 0:1] * (0.229 / 0.5) + (0.485 - 0.5) / 0.5,
                          x[:, 1:2] * (0.224 / 0.5) + (0.456 - 0.5) / 0.5,
                          x[:, 2:3] * (0.225 / 0.5) + (0.406 - 0.5) / 0.5], 1)
    torch.testing.assert_close(seen["ours"], expected, rtol=0, atol=1e-6)
    assert not torch.allclose(seen["ours"], x)
    assert seen["ours"].is_contiguous(memory_format=torch.channels_last) == fused


# ------------------------------------------------------------------------------------------------
# bn-eps

def test_bn_eps():
    """Every running_var = 1e-3 = eps: folding with a wrong eps (1e-5) scales each layer by ~1.4."""
    tv = tv_model(seed=6)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for m in tv.modules():
            if isinstance(m, nn.Conv2d):  # conv outputs of variance ~1e-3, which BN restores to ~1
                m.weight.mul_(1e-3 ** 0.5)
            if isinstance(m, nn.BatchNorm2d):
                assert m.eps == 0.001
                m.running_var.fill_(1e-3)
                m.running_mean.copy_(torch.empty(m.running_mean.shape).uniform_(-0.01, 0.01, generator=g))
                m.weight.copy_(torch.empty(m.weight.shape).uniform_(0.5, 1.5, generator=g))
    ours = ours_from(tv)
    assert all(m.eps == 0.001 for m in ours.modules() if isinstance(m, nn.BatchNorm2d))
    x = make_input(2, 3, 64, 64)
    out, ref = assert_logits_match(tv, ours, x)
    with torch.no_grad():
        ours.fused = False
        assert rel_err(ours(x), ref) <= 1e-6
        ours.fused = True
        assert (ref[0] - ref[1]).abs().max() > 100 * TOL * ref.abs().max()
        # the test can tell a wrong eps: fold with 1e-5 and the logits are far off
        wrong = copy.deepcopy(ours)
        for m in wrong.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eps = 1e-5
        assert rel_err(wrong(x), ref) > 0.5


# ------------------------------------------------------------------------------------------------
# small-input

@pytest.mark.parametrize("fused", [True, False])
def test_small_input(pair, fused):
    tv, ours = pair
    ours = copy.deepcopy(ours).set_fused(fused)
    maps = []
    ours.inception5b.register_forward_hook(lambda m, i, o: maps.append(tuple(o.shape[-2:])))
    for size, map5 in ((15, (1, 1)), (32, (1, 1))):
        assert_logits_match(tv, ours, make_input(1, 3, size, size))
        assert maps[-1] == map5
    maps4 = []
    ours.inception4a.register_forward_hook(lambda m, i, o: maps4.append(tuple(o.shape[-2:])))
    with torch.no_grad():
        ours(make_input(1, 3, 32, 32))
    assert maps4[-1] == (2, 2)  # a 2x2 map in stage 4, 1x1 in stage 5
    x14 = make_input(1, 3, 14, 14)
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="Output size is too small"):
            tv(x14)
        with pytest.raises(ValueError, match=r"x: expected a spatial size of at least 15x15 .*got 14x14.*too small") as e:
            ours(x14)
        assert isinstance(e.value, RuntimeError)  # caught by code written against torchvision too


# ------------------------------------------------------------------------------------------------
# ceil-mode

@pytest.mark.parametrize("h, after_pool1", [(224, 56), (225, 56), (231, 58)])
def test_ceil_mode(pair, h, after_pool1):
    tv, ours = pair
    sizes = {}
    hooks = [tv.maxpool1.register_forward_hook(lambda m, i, o: sizes.__setitem__("tv", tuple(o.shape[-2:]))),
             ours.maxpool1.register_forward_hook(lambda m, i, o: sizes.__setitem__("ours", tuple(o.shape[-2:])))]
    try:
        assert_logits_match(tv, ours, make_input(1, 3, h, h))
    finally:
        for hk in hooks:
            hk.remove()
    assert sizes["ours"] == sizes["tv"] == (after_pool1, after_pool1)
    assert all(m.ceil_mode for m in ours.modules() if isinstance(m, nn.MaxPool2d))


# ------------------------------------------------------------------------------------------------
# pool-padding

def test_pool_padding_is_minus_inf():
    cin = 8
    tvi = randomize_(TVInception(cin, 4, 4, 4, 4, 4, cin), seed=8).eval()
    with torch.no_grad():  # pool projection = identity, BN = +1 shift: branch4 = relu(maxpool(x) + 1)
        proj = tvi.branch4[1]
        proj.conv.weight.copy_(torch.eye(cin).view(cin, cin, 1, 1))
        proj.bn.weight.fill_(1.0)
        proj.bn.bias.fill_(1.0)
        proj.bn.running_mean.zero_()
        proj.bn.running_var.fill_(1.0 - proj.bn.eps)
    inc = Inception(cin, 4, 4, 4, 4, 4, cin)
    inc.load_state_dict(tvi.state_dict(), strict=True)
    inc.eval()
    g = torch.Generator().manual_seed(9)
    x = -(torch.rand(2, cin, 6, 7, generator=g) * 0.5 + 0.5)  # strictly negative, in [-1, -0.5)
    assert (x < 0).all()
    with torch.no_grad():
        ref = tvi(x)
        out = inc(x)
        assert rel_err(out, ref) <= TOL
        b4 = out[:, -cin:]
        expected = F.max_pool2d(x, 3, stride=1, padding=1) + 1.0  # -inf padding
        torch.testing.assert_close(b4, expected, rtol=1e-6, atol=1e-6)
        assert b4.max() < 0.51  # never the 1.0 a zero-padded border would give
        # a 0-padded pool would differ, by ~0.5 on every border pixel
        zero_padded = F.max_pool2d(F.pad(x, (1, 1, 1, 1), value=0.0), 3, stride=1)
        wrong = tvi.branch4[1](zero_padded)
        assert (wrong - ref[:, -cin:]).abs().max() > 0.4
        # the raw op, no ReLU, identity projection: the pooled values themselves
        w = inc.folded_params()
        y = ops.inception(x, *w, relu=False)
        torch.testing.assert_close(y[:, -cin:], expected, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# grayscale

def test_grayscale(pair):
    tv, ours = pair
    gray = make_input(1, 1, 224, 224)
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"x: expected 3 input channels \(RGB\).*got 1"):
            ours(gray)
    expanded = gray.expand(-1, 3, -1, -1)
    assert expanded.stride(1) == 0
    repeated = gray.repeat(1, 3, 1, 1)
    out_e, _ = assert_logits_match(tv, ours, expanded, ref_x=repeated)
    with torch.no_grad():
        out_r = ours(repeated)
    assert rel_err(out_e, out_r) <= TOL


# ------------------------------------------------------------------------------------------------
# strided-input

@pytest.mark.parametrize("kind", ["channels_last", "every_other_pixel", "offset_column", "channels_last_sliced"])
@pytest.mark.parametrize("fused", [True, False])
def test_strided_input(pair, kind, fused):
    tv, ours = pair
    base = make_input(1, 3, 224, 224, seed=12)
    x = {"channels_last": lambda: base.contiguous(memory_format=torch.channels_last),
         "every_other_pixel": lambda: base[:, :, ::2, ::2],
         "offset_column": lambda: base[..., 1:],
         "channels_last_sliced": lambda: base.contiguous(memory_format=torch.channels_last)[:, :, 3:, ::3]}[kind]()
    if kind != "channels_last":
        assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    ours.set_fused(fused)
    try:
        out, ref = assert_logits_match(tv, ours, x)
    finally:
        ours.set_fused(True)
    with torch.no_grad():
        assert rel_err(out, tv(x.contiguous())) <= TOL


# ------------------------------------------------------------------------------------------------
# precision

def test_precision_fp32_vs_fp64(pair):
    tv, ours = pair
    x = make_input(1, 3, 224, 224, seed=13)
    tv64 = copy.deepcopy(tv).double()
    with torch.no_grad():
        ref64 = tv64(x.double())
        out = ours(x)
    assert rel_err(out, ref64) <= TOL


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_precision_half(pair, dtype):
    """Half precision: our error vs the fp64 reference at most 2x torchvision's own error in the
    same dtype (float16 on the CPU runs the plain path: the C++ kernel has no float16)."""
    tv, ours = pair
    size = 224 if dtype == torch.bfloat16 else 64
    x = make_input(1, 3, size, size, seed=14)
    with torch.no_grad():
        ref64 = copy.deepcopy(tv).double()(x.double())
        tv_h = copy.deepcopy(tv).to(dtype)(x.to(dtype))
        m = copy.deepcopy(ours).to(dtype)
        out = m(x.to(dtype))
    assert out.dtype == tv_h.dtype == dtype
    err_tv, err = rel_err(tv_h, ref64), rel_err(out, ref64)
    assert err <= 2 * err_tv, (err, err_tv)
    if dtype == torch.bfloat16:
        assert m.inception3a.folded_params()[0].dtype == torch.bfloat16


def test_precision_autocast_eval(pair):
    tv, ours = pair
    x = make_input(1, 3, 64, 64, seed=15)
    with torch.no_grad():
        ref64 = copy.deepcopy(tv).double()(x.double())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            tv_a = tv(x)
            out = ours(x)
    assert out.dtype == tv_a.dtype
    assert rel_err(out, ref64) <= 2 * rel_err(tv_a, ref64)


# ------------------------------------------------------------------------------------------------
# compile

def test_compile_fullgraph(pair):
    _, ours = pair
    m = copy.deepcopy(ours).eval()
    x = make_input(1, 3, 64, 64, seed=16)
    torch._dynamo.reset()
    compiled = torch.compile(m, fullgraph=True)
    with torch.no_grad():
        ref = m(x)
        out = compiled(x)
        out2 = compiled(make_input(1, 3, 64, 64, seed=17))
        ref2 = m(make_input(1, 3, 64, 64, seed=17))
    assert rel_err(out, ref) <= TOL
    assert rel_err(out2, ref2) <= TOL
    # the compiled graph runs the fused op for each of the nine Inception modules, no BatchNorm
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        compiled(x)
    names = [e.name for e in prof.events()]
    assert sum(n.startswith("googlenet_fast::inception") for n in names) == 9, sorted(set(names))
    assert not any("batch_norm" in n for n in names)
    torch._dynamo.reset()


@pytest.mark.parametrize("shape,match", [
    ((2, 4, 32, 32), r"x: expected 3 input channels \(RGB\) in dim 1 of \(N, 3, H, W\), got 4"),
    ((2, 1, 32, 32), r"got 1 .*for grayscale images use x\.expand\(-1, 3, -1, -1\)"),
    ((2, 3, 32, 32, 1), r"x: expected a 4-D tensor of shape \(N, 3, H, W\)"),
])
def test_compile_fullgraph_dynamic_bad_input_keeps_our_message(pair, shape, match):
    """Under torch.compile(fullgraph=True) with dynamic shapes the input checks still raise with
    our message (a str + str of formatted strings made dynamo raise its own "missing sq_concat"
    error instead).  Dynamo reports the user's ValueError inside its own exception; the eager
    backend suffices (the failure was in tracing)."""
    _, ours = pair
    m = copy.deepcopy(ours).eval()
    torch._dynamo.reset()
    compiled = torch.compile(m, fullgraph=True, dynamic=True, backend="eager")
    try:
        with torch.no_grad():
            assert rel_err(compiled(make_input(2, 3, 32, 32, seed=18)), m(make_input(2, 3, 32, 32, seed=18))) <= TOL
            with pytest.raises(Exception, match=match):
                compiled(make_input(*shape, seed=19))
    finally:
        torch._dynamo.reset()
