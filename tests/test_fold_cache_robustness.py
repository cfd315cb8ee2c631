"""GoogLeNet(fused=True) eval on the CPU stays equal to the plain modules when weights change in
ways version counters miss, and when users rework the model (found by a new-user trial)."""
import copy

import pytest
import torch
import torch.nn.utils.prune as prune

from googlenet_fast import GoogLeNet
from googlenet_fast.backends import native
from model_helpers import make_input, ours_from, randomize_, rel_err, tv_model

pytestmark = pytest.mark.skipif(not native.available(), reason=f"extension not built: {native.LOAD_ERROR}")

X = make_input(2, 3, 40, 40, seed=7)


def fused_and_plain(model):
    """(fused logits, plain logits) of the same model under no_grad."""
    with torch.no_grad():
        a = model(X)
        model.set_fused(False)
        b = model(X)
        model.set_fused(True)
    return a, b


@pytest.mark.parametrize("opt", ["Adam", "SGD"])
def test_fused_optimizer_steps_are_seen(opt):
    """torch.optim's fused optimizers update parameters without bumping their version counters."""
    torch.manual_seed(0)
    m = ours_from(tv_model())  # eval mode: frozen BatchNorm while fine-tuning
    with torch.no_grad():
        m(X)  # fills the folded-weight cache
    o = getattr(torch.optim, opt)(m.parameters(), lr=0.05, fused=True)
    versions = [p._version for p in m.parameters()]
    for _ in range(2):
        o.zero_grad()
        m(X).square().mean().backward()
        o.step()
    assert [p._version for p in m.parameters()] == versions  # what the cache key cannot see
    a, b = fused_and_plain(m)
    assert rel_err(a, b) <= 1e-4


def test_paper_variant_train_validate_loop_with_fused_sgd():
    m = randomize_(GoogLeNet(variant="paper", aux_logits=False, init_weights=False, fused=True))
    o = torch.optim.SGD(m.parameters(), lr=0.05, fused=True)
    for _ in range(2):
        m.train()
        o.zero_grad()
        m(X).square().mean().backward()
        o.step()
        m.eval()
        a, b = fused_and_plain(m)
        assert rel_err(a, b) <= 1e-4


def test_inference_mode_builds_version_counted_parameters():
    """Built, converted or standalone under inference_mode, the modules' parameters and buffers
    are normal tensors (fold_cache.version_counted): in-place updates bump their versions."""
    from googlenet_fast.model import BasicConv2d, Inception
    with torch.inference_mode():
        m = GoogLeNet(aux_logits=True, init_weights=True).to(torch.float64)
        parts = [m, Inception(192, 64, 96, 128, 16, 32, 32), BasicConv2d(3, 8, kernel_size=3)]
        for t in [t for p in parts for t in (*p.parameters(), *p.buffers())]:
            assert not t.is_inference()
            v = t._version
            t.add_(0)
            assert t._version == v + 1
        assert torch.zeros(1).is_inference()  # the context itself is left as it was


def test_inference_tensor_parameters_reloaded():
    """A model whose parameters were assigned inference tensors: no version counter."""
    tv, tv2 = tv_model(seed=0), tv_model(seed=1)
    with torch.inference_mode():
        m = GoogLeNet(init_weights=False, aux_logits=False)
        m.load_state_dict({k: v.clone() for k, v in tv.state_dict().items()}, assign=True)  # inference tensors
        m.eval()
        assert m.conv1.conv.weight.is_inference()
        m(X)
        m.load_state_dict(tv2.state_dict())
        y = m(X)
        ref = tv2(X)
    assert rel_err(y, ref) <= 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("made", ["built", "assigned"])
def test_inference_mode_parameters_updated_in_place(made, dtype):
    """A model built under inference_mode ("built": version-counted parameters) or given
    inference tensors ("assigned": no version counters, content-checked folds), updated in place
    there: the next forward uses the new weights and BatchNorm statistics, without
    clear_folded_cache() (found by a stress test: it returned the old logits, max error 1.12)."""
    tv = tv_model()
    x = X.to(dtype)
    with torch.inference_mode():
        if made == "built":
            m = ours_from(tv).to(dtype)
        else:
            m = GoogLeNet(init_weights=False, aux_logits=False).eval()
            m.load_state_dict({k: v.to(dtype, copy=True) if v.is_floating_point() else v.clone()
                               for k, v in tv.state_dict().items()}, assign=True)  # inference tensors
        assert m.inception4a.branch2[1].conv.weight.is_inference() == (made == "assigned")
        for _ in range(3):  # fills the folded-weight caches; a recorded forward would replay now
            before = m(x)
        m.inception4a.branch2[1].conv.weight.mul_(1.5)
        m.inception4b.branch3[0].bn.running_var.mul_(2.0)
        m.conv1.bn.bias.add_(0.25)
        after = [m(x) for _ in range(2)]
        m.set_fused(False)
        want = m(x)
    fresh = ours_from(m.float()).to(dtype)  # the updated weights folded from scratch
    with torch.no_grad():
        want_fused = fresh(x)
    assert rel_err(before, want.float()) > 1e-2  # the update changed the logits
    for y in after:
        assert torch.equal(y, want_fused)
        assert rel_err(y.float(), want.float()) <= (1e-4 if dtype == torch.float32 else 3e-2)


@pytest.mark.parametrize("convert", ["double", "bfloat16"])
def test_converted_after_assigning_inference_tensors(convert):
    """Parameters assigned from inference tensors, then converted outside inference_mode
    (``param.data = ...``): tensors that are not is_inference() yet have no version counter.
    The model state check and the packed-weight cache read them without a counter (found by a
    stress test: the second forward raised "Inference tensors do not track version counter")."""
    tv = tv_model()
    m = GoogLeNet(init_weights=False, aux_logits=False).eval()
    with torch.inference_mode():
        m.load_state_dict({k: v.clone() for k, v in tv.state_dict().items()}, assign=True)
    dtype = getattr(torch, convert)
    m.to(dtype)
    w = m.inception4a.branch2[1].conv.weight
    assert not w.is_inference()
    with pytest.raises(RuntimeError, match="version counter"):
        w._version
    x = X.to(dtype)
    with torch.no_grad():
        ys = [m(x) for _ in range(3)]
        ref = tv.to(dtype)(x)
    tol = 1e-10 if dtype == torch.float64 else 3e-2
    for y in ys:
        assert rel_err(y.float(), ref.float()) <= tol
    # (torchvision's model in this state raises in F.linear, grad mode or not: PyTorch's own limit)
    with torch.inference_mode():  # (in place only there; no counter to bump: the content checks see it)
        w.mul_(0.5)
    tv2 = tv_model()
    with torch.no_grad():
        tv2.inception4a.branch2[1].conv.weight.mul_(0.5)
        want = tv2.to(dtype)(x)
        assert rel_err(m(x).float(), want.float()) <= tol


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_paper_variant_data_write_then_clear(layout):
    """Without BatchNorm the fold passed some parameters through unchanged, and the CPU op's
    prepacked copies were keyed on them: a .data write + clear_folded_cache() stayed stale."""
    m = randomize_(GoogLeNet(variant="paper", aux_logits=False, init_weights=False, fused=True)).eval()
    if layout == "channels_last":
        m = m.to(memory_format=torch.channels_last)
    with torch.no_grad():
        m(X)
        for p in m.parameters():
            p.data.mul_(-0.5)
    m.clear_folded_cache()
    a, b = fused_and_plain(m)
    assert rel_err(a, b) <= 1e-4


SURGERY = {
    "prune": lambda m: prune.l1_unstructured(m.conv1.conv, "weight", 0.3),
    "weight_norm": lambda m: torch.nn.utils.parametrizations.weight_norm(m.inception4a.branch2[1].conv),
    "fuse_modules": lambda m: torch.ao.quantization.fuse_modules(
        m, [["inception3a.branch1.conv", "inception3a.branch1.bn"]], inplace=True),
    "wrapped_branch": lambda m: setattr(m.inception3b, "branch2", Wrap(m.inception3b.branch2)),
    "sequential_branch1": lambda m: setattr(m.inception3b, "branch1", torch.nn.Sequential(m.inception3b.branch1)),
}


class Wrap(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


@pytest.mark.parametrize("case", list(SURGERY))
def test_model_surgery_torchvision_accepts(case):
    tv = tv_model()
    ours = ours_from(tv)
    for m in (tv, ours):
        SURGERY[case](m)
    with torch.no_grad():
        assert rel_err(ours(X), tv(X)) <= 1e-4


def test_hooks_on_inner_modules_fire():
    tv = tv_model()
    ours = ours_from(tv)
    names = ["conv1.bn", "inception3a.branch2", "inception3a.branch4.0", "inception5b.branch1.conv"]
    seen = []
    for name in names:
        ours.get_submodule(name).register_forward_hook(lambda mod, a, out, name=name: seen.append(name))
    with torch.no_grad():
        y = ours(X)
    assert sorted(seen) == sorted(names)
    with torch.no_grad():
        assert rel_err(y, tv(X)) <= 1e-4


def test_global_hook_sees_every_module():
    tv = tv_model()
    ours = ours_from(tv)

    def count(model):
        seen = set()
        h = torch.nn.modules.module.register_module_forward_hook(lambda mod, a, out: seen.add(id(mod)))
        try:
            with torch.no_grad():
                y = model(X)
        finally:
            h.remove()
        return y, sum(id(m) in seen for m in model.modules())

    (y, n_ours), (ref, n_tv) = count(ours), count(tv)
    assert n_ours == n_tv and rel_err(y, ref) <= 1e-4


def test_eval_with_parameter_grads_does_not_fill_the_packed_weight_cache():
    tv = tv_model()
    ours = ours_from(tv)
    with torch.no_grad():
        ours(X)
    before = native._C._prepacked_weight_count()
    for _ in range(2):
        ours(X).sum().backward()
    assert native._C._prepacked_weight_count() == before
    tv(X).sum().backward()
    g, ref = ours.inception4a.branch2[1].conv.weight.grad, tv.inception4a.branch2[1].conv.weight.grad
    assert rel_err(g, 2 * ref) <= 1e-3  # two backward passes accumulated on ours, one on tv


def test_deepcopy_and_pickle_keep_working():
    import io
    ours = ours_from(tv_model())
    with torch.no_grad():
        ref = ours(X)
    buf = io.BytesIO()
    torch.save(ours, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    with torch.no_grad():
        assert torch.equal(copy.deepcopy(ours)(X), ref) and torch.equal(loaded(X), ref)


def test_float32_and_autocast_bfloat16_calls_alternate_without_refolding():
    """One folded copy per target dtype: eval calls switching between float32 and autocast bfloat16
    reuse both (before: each switch refolded every module and re-recorded the CPU program, 3.5-4.4x
    slower calls on the 2-core EPYC).  A parameter update refolds its module in both dtypes."""
    from googlenet_fast import fold_cache
    torch.manual_seed(0)
    m = ours_from(tv_model())
    x = X.contiguous(memory_format=torch.channels_last)
    folds = []
    for mod in m.modules():
        if isinstance(mod, fold_cache._FoldedWeightsCache):
            fold = mod._fold
            mod._fold = lambda dtype, fold=fold: folds.append(dtype) or fold(dtype)

    def call(amp):
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=amp):
            return m(x)

    fp32, bf16 = call(False), call(True)
    modules = folds.count(torch.float32)
    assert modules > 0 and folds.count(torch.bfloat16) == modules
    caches = [c for c in (mod.__dict__.get("_fold_cache") for mod in m.modules()) if c is not None]
    assert all({e[0][0] for e in c} == {torch.float32, torch.bfloat16} for c in caches)
    del folds[:]
    for _ in range(3):
        assert torch.equal(call(False), fp32)
        assert torch.equal(call(True), bf16)
    assert folds == []  # neither dtype folded again
    with torch.no_grad():
        m.inception4a.branch2[1].conv.weight.mul_(0.5)
    fresh = ours_from(m)  # folds the updated weights from scratch
    for amp in (False, True, False):
        got = call(amp)
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=amp):
            want = fresh(x)
        assert torch.equal(got, want)
    assert folds == [torch.float32, torch.bfloat16]  # the changed module, once per dtype


def test_head_data_write_seen_under_verify_folded_cache(monkeypatch):
    """With verify_folded_cache set (content checks instead of clear_folded_cache() after .data
    writes) the eval head does not pack fc.weight: a .data write to it alone reaches the logits."""
    from googlenet_fast import model as gm
    from googlenet_fast.model import BasicConv2d, Inception
    monkeypatch.setattr(gm, "HEAD_PREPACK", True)  # the opt-in packing
    monkeypatch.setattr(Inception, "verify_folded_cache", True)
    monkeypatch.setattr(BasicConv2d, "verify_folded_cache", True)
    m = ours_from(tv_model())
    with torch.no_grad():
        m(X)
        m.fc.weight.data.mul_(-2.0)
        m.fc.bias.data.add_(0.5)
    a, b = fused_and_plain(m)
    assert rel_err(a, b) <= 1e-4


def test_head_data_write_seen_by_default():
    """By default (model.HEAD_PREPACK off) the eval head hands oneDNN fc.weight itself: a write
    through fc.weight.data alone, without clear_folded_cache() (fine-tuning code does this to the
    classifier), reaches the logits (found by a new-user trial: with the packing on it did not)."""
    m = ours_from(tv_model())
    with torch.no_grad():
        m(X)
        m.fc.weight.data.mul_(0.5)
    a, b = fused_and_plain(m)
    assert rel_err(a, b) <= 1e-4
