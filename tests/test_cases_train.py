"""Train-mode cases of cases.md (bn-train, autocast, train-eval-type's train side) for the model
as it stands: train mode runs the plain modules, and must equal the unfused model exactly."""
import copy

import pytest
import torch

from googlenet_fast import GoogLeNet


def _pair(seed=0):
    torch.manual_seed(seed)
    fused = GoogLeNet(aux_logits=True, init_weights=True, fused=True)
    unfused = copy.deepcopy(fused)
    unfused.fused = False
    return fused, unfused


def test_bn_train_one_forward_equal_outputs_and_running_stats():
    fused, unfused = _pair()
    x = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    fused.train()
    unfused.train()
    torch.manual_seed(5)  # the same dropout masks for both
    out_f = fused(x)
    torch.manual_seed(5)
    out_u = unfused(x)
    for a, b in zip(out_f, out_u):  # GoogLeNetOutputs(logits, aux_logits2, aux_logits1)
        assert a.shape == (8, 1000)
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())
    bns_f = [m for m in fused.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    bns_u = [m for m in unfused.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns_f) == len(bns_u) == 3 + 9 * 6 + 2  # stem, nine modules, two aux heads
    for a, b in zip(bns_f, bns_u):
        assert int(a.num_batches_tracked) == 1 == int(b.num_batches_tracked)
        assert torch.allclose(a.running_mean, b.running_mean, rtol=0, atol=1e-5)
        assert torch.allclose(a.running_var, b.running_var, rtol=1e-5, atol=1e-5)
        assert (a.running_var != 1).any(), "running_var was not updated"
    # Folding is never used in train mode.
    assert not any("_fold_cache" in m.__dict__ for m in fused.modules())


def test_autocast_bf16_forward_backward():
    fused, unfused = _pair(2)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    for model in (fused, unfused):
        model.train()
        torch.manual_seed(4)  # the same dropout masks for both
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
            loss = out.logits.float().logsumexp(1).mean() + 0.3 * (out.aux_logits1.float().mean()
                                                                    + out.aux_logits2.float().mean())
        loss.backward()
        assert out.logits.dtype == torch.bfloat16
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in fused.parameters())
    for (n, a), (_, b) in zip(fused.named_parameters(), unfused.named_parameters()):
        assert torch.equal(a.grad, b.grad), n
