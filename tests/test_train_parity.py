"""Train-mode parity of the whole network (issue #5, item 3): gradients, outputs, running
statistics and num_batches_tracked of GoogLeNet(fused=True) after one training step, against an
independent reference with the same state:

* variant="torchvision": ``torchvision.models.googlenet`` (state_dict loaded strictly);
* variant="paper": the same GoogLeNet with ``fused=False`` (torchvision has no paper network).

Loss: CE(logits) + 0.3 * (CE(aux1) + CE(aux2)); the same dropout masks (torch.manual_seed reset
before each forward).  Written against the public API: it tests whichever train path runs.

Why two precisions.  In float32 a full-network train-mode gradient is NOT reproducible to 1e-4
per parameter, not even by torchvision against itself: measured on this machine (2026-11-30),
torchvision float32 vs torchvision float64 with identical weights and inputs differs by
1e-4..4e-4 of max|grad| on its worst parameter (fc.weight, BatchNorm weights deep in the net), and
by 3e-2..1.2e-1 when one activation lands within fp32 rounding of a ReLU kink or a max-pool tie
(the gradient is discontinuous there: one of only 32..64 positions of a 4x4 map switches its
route), which happened for 6 of 10 (batch, size, seed) configurations at 48..96 px.  float32
NCHW vs channels_last torchvision differs the same way.  Hence:

* float64 (``*_float64``): exact parity.  Both models computed in float64 (the fused kernels run
  in float64); measured max error 3e-13..1.6e-12 relative per parameter; asserted at 1e-10.
  This is the test that proves the fused train path's gradients are right.
* float32 (``*_float32``): the fused model's float32 gradient must be as accurate as the
  reference's own float32 gradient, both measured against the float64 reference in the same run:
  ``err(fused32) <= 2 * err(reference32) + 1e-4 * max|grad|`` per parameter.  At (4, 3, 32, 32)
  no kink flip occurred in 4 seeds (largest excess over 2x measured: 5e-5 of max|grad|).
  Outputs 1e-4 relative, running_mean/var 1e-5, against the float32 reference directly.
"""
import copy

import pytest
import torch
import torch._dynamo
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from googlenet_fast import GoogLeNet, bn_train
# autouse: no TF32 (not used on CPU, but fp32 must mean fp32) and the deterministic oneDNN path
from model_helpers import _fp32_exact  # noqa: F401

N_BN = 3 + 9 * 6 + 2  # stem, nine Inception modules, two aux heads

# The float32 configuration (see the module docstring) and the float64 one.
X32 = (4, 3, 32, 32)
X64 = (4, 3, 64, 64)
RTOL32 = 1e-4     # brief: 1e-4 relative; the floor of the float32 gradient criterion
RTOL64 = 1e-10    # measured <= 1.6e-12
DROPOUT_SEED = 7


# ------------------------------------------------------------------------------------------------
# helpers


def make_pair(variant, seed=0, **kwargs):
    """(fused model, independent reference) with the same state, both in train mode."""
    torch.manual_seed(seed)
    if variant == "torchvision":
        ref = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True, **kwargs)
        fused = GoogLeNet(aux_logits=True, init_weights=False, fused=True, **kwargs)
        fused.load_state_dict(ref.state_dict(), strict=True)
        ref.load_state_dict(fused.state_dict(), strict=True)  # both ways
    else:
        fused = GoogLeNet(aux_logits=True, init_weights=True, variant="paper", fused=True, **kwargs)
        ref = GoogLeNet(aux_logits=True, init_weights=False, variant="paper", fused=False, **kwargs)
        ref.load_state_dict(fused.state_dict(), strict=True)
    return fused.train(), ref.train()


def batch(shape, num_classes=1000, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g)
    y = torch.randint(0, num_classes, (shape[0],), generator=g)
    return x.to(dtype), y


def loss_of(out, y):
    return F.cross_entropy(out.logits, y) + 0.3 * (F.cross_entropy(out.aux_logits1, y)
                                                  + F.cross_entropy(out.aux_logits2, y))


def forward_backward(model, x, y):
    """One train-mode forward (fixed dropout masks) and backward: (outputs, loss, {name: grad})."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(DROPOUT_SEED)
    out = model(x)
    loss = loss_of(out, y)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    assert all(g is not None for g in grads.values())
    return out, loss.detach(), grads


def max_rel(a, b):
    """max|a - b| / max|b| in float64 (b is the reference; must not be ~0)."""
    a, b = a.detach().double(), b.detach().double()
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    scale = b.abs().max().item()
    assert scale > 0, "reference is zero: the comparison would prove nothing"
    return (a - b).abs().max().item() / scale


def bns(model):
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def check_outputs(out, ref_out, rtol):
    assert type(out).__name__ == "GoogLeNetOutputs" and len(out) == 3
    for name, a, b in zip(("logits", "aux_logits2", "aux_logits1"), out, ref_out):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        err = max_rel(a, b)
        assert err <= rtol, f"{name}: max rel err {err:.3g} > {rtol:g}"


def check_running_stats(model, ref, atol, rtol):
    a_bns, b_bns = bns(model), bns(ref)
    assert len(a_bns) == len(b_bns) == N_BN
    for i, (a, b) in enumerate(zip(a_bns, b_bns)):
        assert int(a.num_batches_tracked) == int(b.num_batches_tracked) == 1, i
        assert (b.running_var != 1).any() and (b.running_mean != 0).any(), "reference stats not updated"
        torch.testing.assert_close(a.running_mean, b.running_mean, rtol=0, atol=atol, msg=f"bn {i} mean")
        torch.testing.assert_close(a.running_var, b.running_var, rtol=rtol, atol=atol, msg=f"bn {i} var")


def grad_errors(grads, ref_grads):
    assert grads.keys() == ref_grads.keys()
    return {n: max_rel(grads[n], ref_grads[n]) for n in ref_grads}


# ------------------------------------------------------------------------------------------------
# float64: exact parity


@pytest.mark.parametrize("shape", [X64, X32], ids=["64px", "32px"])
@pytest.mark.parametrize("variant", ["torchvision", "paper"])
def test_train_step_parity_float64(variant, shape):
    """(32 px: inception5a/5b see 1x1 maps, where the fused train path's convolutions are GEMMs.)"""
    fused, ref = make_pair(variant)
    fused, ref = fused.double(), ref.double()
    x, y = batch(shape, dtype=torch.float64)
    out, loss, grads = forward_backward(fused, x, y)
    ref_out, ref_loss, ref_grads = forward_backward(ref, x, y)
    assert abs(loss.item() - ref_loss.item()) <= RTOL64 * abs(ref_loss.item())
    check_outputs(out, ref_out, RTOL64)
    errs = grad_errors(grads, ref_grads)
    bad = {n: e for n, e in errs.items() if e > RTOL64}
    assert not bad, f"gradients off by more than {RTOL64:g} of max|grad| (float64): {bad}"
    if variant == "torchvision":
        check_running_stats(fused, ref, atol=1e-12, rtol=1e-10)
    else:
        assert not bns(fused) and not bns(ref)


# ------------------------------------------------------------------------------------------------
# float32: as accurate as the reference's own float32 step


@pytest.mark.parametrize("variant", ["torchvision", "paper"])
def test_train_step_parity_float32(variant):
    fused, ref = make_pair(variant)
    truth = copy.deepcopy(ref).double()
    x, y = batch(X32)
    out, loss, grads = forward_backward(fused, x, y)
    ref_out, ref_loss, ref_grads = forward_backward(ref, x, y)
    _, _, true_grads = forward_backward(truth, x.double(), y)

    assert abs(loss.item() - ref_loss.item()) <= RTOL32 * abs(ref_loss.item())
    check_outputs(out, ref_out, RTOL32)
    for g in grads.values():
        assert g.dtype == torch.float32
    fused_err = grad_errors(grads, true_grads)
    ref_err = grad_errors(ref_grads, true_grads)
    # The reference's own float32 error is small here (no kink flip): a float32 run that is off
    # for another reason cannot hide behind it.
    assert max(ref_err.values()) < 1e-3, ref_err
    bad = {n: (fused_err[n], ref_err[n]) for n in fused_err if fused_err[n] > 2 * ref_err[n] + RTOL32}
    assert not bad, ("float32 gradients less accurate than the reference's float32 gradients "
                     f"(param: (fused err, reference err) vs float64): {bad}")
    if variant == "torchvision":
        check_running_stats(fused, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("seed", [0, 3])
def test_train_step_float32_as_accurate_as_torchvision_channels_last(seed):
    """At 64 px kink flips happen (see the module docstring), and which ones depends on the
    memory format: the fused model computes in channels_last (its kernels' layout), where
    torchvision's own channels_last float32 step flips the same way (measured 2026-12-05 with
    this test's seed 0: fused worst 6.7e-2 of max|grad| off float64, NCHW torchvision 1.1e-4, so
    68 of 173 parameters over the rule against NCHW torchvision, none against channels_last;
    seed 3: NCHW torchvision flips, 1.4e-1).  So at this size the fused float32 gradient is held to torchvision's
    in channels_last, per parameter: err(fused32) <= 2 * err(torchvision32, channels_last) +
    1e-4 * max|grad|, both against float64."""
    fused, ref = make_pair("torchvision", seed=seed)
    truth = copy.deepcopy(ref).double()
    ref_cl = copy.deepcopy(ref).to(memory_format=torch.channels_last)
    x, y = batch(X64, seed=seed + 1)
    _, _, grads = forward_backward(fused, x, y)
    _, _, cl_grads = forward_backward(ref_cl, x.contiguous(memory_format=torch.channels_last), y)
    _, _, true_grads = forward_backward(truth, x.double(), y)
    fused_err, cl_err = grad_errors(grads, true_grads), grad_errors(cl_grads, true_grads)
    bad = {n: (fused_err[n], cl_err[n]) for n in fused_err if fused_err[n] > 2 * cl_err[n] + RTOL32}
    assert not bad, ("float32 gradients less accurate than torchvision's channels_last float32 gradients "
                     f"(param: (fused err, torchvision channels_last err) vs float64): {bad}")


def test_torchvision_float32_gradient_is_not_reproducible_to_1e4():
    """Documents why the float32 criterion is relative to the reference's own error: at 64 px the
    float32 torchvision gradient itself is off from its float64 gradient by far more than 1e-4 of
    max|grad| on some parameter (a kink flip; measured 6.7e-2 for this seed)."""
    torch.manual_seed(0)
    tv = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True).train()
    tv64 = copy.deepcopy(tv).double()
    x, y = batch(X64)
    _, _, g32 = forward_backward(tv, x, y)
    _, _, g64 = forward_backward(tv64, x.double(), y)
    assert max(grad_errors(g32, g64).values()) > 1e-4


# ------------------------------------------------------------------------------------------------
# torch.compile of a whole training step


def test_compiled_train_step_fullgraph(monkeypatch):
    """forward + loss (aux heads 0.3) + backward + SGD(momentum) step in ONE graph
    (fullgraph=True raises on any graph break), equal to the eager step.

    backend="aot_eager": inductor's compile of this step took 344 s on this 2-core machine (cold
    cache, 2026-11-30), far over the test budget; aot_eager traces the same graph (Dynamo +
    AOTAutograd, so graph breaks and the ops' fake/autograd registrations are exercised) and runs
    it eagerly.  Two Dynamo settings a full step needs in torch 2.14: trace_autograd_ops=True
    (else Tensor.backward() is a graph break), and the functional torch.optim.sgd.sgd instead of
    SGD.step() (Optimizer.step() calls torch._dynamo.graph_break() on purpose; zero_grad() is
    skipped by Dynamo).  Dropout 0: compiled and eager random streams differ.
    """
    from torch.optim.sgd import sgd
    torch.manual_seed(0)
    model = GoogLeNet(num_classes=10, aux_logits=True, init_weights=True, fused=True, dropout=0.0,
                      dropout_aux=0.0).train()
    eager = copy.deepcopy(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x, y = batch((4, 3, 64, 64), num_classes=10)
    lr, momentum = 0.01, 0.9

    params = list(model.parameters())
    bufs = [torch.zeros_like(p) for p in params]  # first step: buf = 0 * momentum + grad = grad

    def step(x, y):
        for p in params:
            p.grad = None
        loss = loss_of(model(x), y)
        loss.backward()
        with torch.no_grad():
            sgd(params, [p.grad for p in params], bufs, lr=lr, momentum=momentum, weight_decay=0.0,
                dampening=0.0, nesterov=False, maximize=False, foreach=False)
        return loss.detach()

    # The eager twin of the compiled graph: torch.compile traces the op + F.batch_norm composition
    # (bn_train.CPU_FAST_PATH is eager-only), so the eager step runs that composition too; the
    # eager fast path is held to torchvision by the parity tests above (another float32 path at
    # this size differs by float32 rounding at ReLU kinks, as much as torchvision's own step does).
    opt = torch.optim.SGD(eager.parameters(), lr=lr, momentum=momentum)
    opt.zero_grad()
    with monkeypatch.context() as mp:
        mp.setattr(bn_train, "CPU_FAST_PATH", False)
        eager_loss = loss_of(eager(x), y)
        eager_loss.backward()
    opt.step()

    torch._dynamo.reset()
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
        loss = compiled(x, y)

    assert abs(loss.item() - eager_loss.item()) <= 1e-5 * abs(eager_loss.item())
    eager_params = dict(eager.named_parameters())
    for n, p in model.named_parameters():
        # The update (lr * grad) is compared, not only the parameter: a wrong gradient would hide
        # under the much larger weights.
        delta, eager_delta = p.detach() - before[n], eager_params[n].detach() - before[n]
        assert eager_delta.abs().max() > 0, n
        assert max_rel(delta, eager_delta) <= 1e-4, n
        torch.testing.assert_close(p.detach(), eager_params[n].detach(), rtol=1e-5, atol=1e-7)
    for a, b in zip(bns(model), bns(eager)):
        assert int(a.num_batches_tracked) == int(b.num_batches_tracked) == 1
        torch.testing.assert_close(a.running_mean, b.running_mean, rtol=0, atol=1e-5)
        torch.testing.assert_close(a.running_var, b.running_var, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# autocast bf16


def test_autocast_bf16_train_step():
    """bf16 autocast train step: no dtype error; logits in the unfused model's dtype; float32
    parameter gradients; the fused bf16 gradient no less accurate than the unfused bf16 gradient
    (both against the float64 gradient): err(fused) <= 2 * err(unfused) + 1e-2 * max|grad|
    (1e-2: a few bf16 roundings, 2^-8 = 3.9e-3 each, of the largest gradient entry)."""
    torch.manual_seed(0)
    fused = GoogLeNet(aux_logits=True, init_weights=True, fused=True).train()
    unfused = copy.deepcopy(fused)
    unfused.fused = False
    truth = copy.deepcopy(unfused).double()
    x, y = batch(X32)
    results = {}
    for name, model in (("fused", fused), ("unfused", unfused)):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(DROPOUT_SEED)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
            loss = loss_of(out, y)
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        assert all(g is not None and g.dtype == torch.float32 for g in grads.values()), name
        assert all(p.dtype == torch.float32 for p in model.parameters())
        results[name] = (out, grads)
    assert results["fused"][0].logits.dtype == results["unfused"][0].logits.dtype
    for a, b in zip(results["fused"][0], results["unfused"][0]):
        assert a.dtype == b.dtype
    _, _, true_grads = forward_backward(truth, x.double(), y)
    fused_err = grad_errors(results["fused"][1], true_grads)
    unfused_err = grad_errors(results["unfused"][1], true_grads)
    assert max(unfused_err.values()) > 1e-4, "bf16 had no effect: the comparison would prove nothing"
    bad = {n: (fused_err[n], unfused_err[n]) for n in fused_err if fused_err[n] > 2 * unfused_err[n] + 1e-2}
    assert not bad, f"bf16 gradients (fused err, unfused err) vs float64: {bad}"


# ------------------------------------------------------------------------------------------------
# SyncBatchNorm


def test_sync_batchnorm_conversion_single_process():
    """convert_sync_batchnorm on the fused model: every BatchNorm2d becomes SyncBatchNorm, the
    state_dict keys and values are unchanged, eval equals the unconverted model, and a train step
    (no process group: torch's SyncBatchNorm runs plain batch_norm, see SyncBatchNorm.forward's
    need_sync) equals fused=False's (float64).  torch 2.14's SyncBatchNorm raises ValueError for CPU tensors
    once a process group is initialized (only GPU/XPU/privateuse1): the multi-process case is in
    tests/test_ddp.py with a CPU all-reduce stand-in."""
    import torch.distributed as dist
    assert not (dist.is_available() and dist.is_initialized())
    torch.manual_seed(0)
    model = GoogLeNet(aux_logits=True, init_weights=True, fused=True)
    with torch.no_grad():  # non-trivial running statistics, so eval depends on them
        for bn in bns(model):
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
    plain = copy.deepcopy(model)
    state = model.state_dict()
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    sync = [m for m in converted.modules() if isinstance(m, nn.SyncBatchNorm)]
    assert len(sync) == N_BN
    assert not any(type(m) is nn.BatchNorm2d for m in converted.modules())
    new_state = converted.state_dict()
    assert list(new_state) == list(state)
    for k in state:
        assert torch.equal(new_state[k], state[k]), k

    x, y = batch((2, 3, 64, 64))
    converted.eval()
    plain.eval()
    with torch.no_grad():
        a, b = converted(x), plain(x)
    assert a.shape == (2, 1000)
    assert max_rel(a, b) <= 1e-4

    # Train mode in float64 (exact; the fused model runs its layers on channels_last, the
    # unfused one on NCHW, so float32 orderings differ, see the module docstring).
    unfused = copy.deepcopy(plain).double()
    unfused.fused = False
    converted = converted.double().train()
    unfused.train()
    x = x.double()
    out, loss, grads = forward_backward(converted, x, y)
    ref_out, ref_loss, ref_grads = forward_backward(unfused, x, y)
    check_outputs(out, ref_out, RTOL64)
    bad = {n: e for n, e in grad_errors(grads, ref_grads).items() if e > RTOL64}
    assert not bad, bad
    for m, r in zip(bns(converted), bns(unfused)):
        assert isinstance(m, nn.SyncBatchNorm)
        assert int(m.num_batches_tracked) == int(r.num_batches_tracked) == 1
        torch.testing.assert_close(m.running_mean, r.running_mean, rtol=0, atol=1e-12)
        torch.testing.assert_close(m.running_var, r.running_var, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", ["train_model_eval_bns", "eval_model_train_bns", "mixed"])
def test_batchnorm_mode_differs_from_the_model_float64(case):
    """A BatchNorm whose mode differs from the model's: frozen statistics while fine-tuning
    (model.train(), BatchNorms .eval()), test-time adaptation (model.eval(), BatchNorms .train()),
    and every other BatchNorm flipped.  The fused model follows each BatchNorm's own mode as
    torchvision's does: outputs, gradients, running statistics and num_batches_tracked (float64,
    1e-10; the fused paths step aside for such modules)."""
    fused, ref = make_pair("torchvision")
    fused, ref = fused.double(), ref.double()
    for m in (fused, ref):
        m.train(case != "eval_model_train_bns")
        for i, bn in enumerate(b for b in m.modules() if isinstance(b, nn.BatchNorm2d)):
            bn.train({"train_model_eval_bns": False, "eval_model_train_bns": True, "mixed": i % 2 == 0}[case])
    x, y = batch(X64, dtype=torch.float64)
    if case == "eval_model_train_bns":
        out, ref_out = fused(x), ref(x)
        assert (out - ref_out).abs().max().item() <= RTOL64 * ref_out.abs().max().item()
    else:
        out, _, grads = forward_backward(fused, x, y)
        ref_out, _, ref_grads = forward_backward(ref, x, y)
        check_outputs(out, ref_out, RTOL64)
        errs = grad_errors(grads, ref_grads)
        assert max(errs.values()) <= RTOL64, {n: e for n, e in errs.items() if e > RTOL64}
    for a, b in zip(bns(fused), bns(ref)):
        assert int(a.num_batches_tracked) == int(b.num_batches_tracked)
        torch.testing.assert_close(a.running_mean, b.running_mean, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(a.running_var, b.running_var, rtol=1e-10, atol=1e-12)
