"""Helpers shared by the model-level tests (test_model.py, test_cases_inference.py): TF32 off,
randomized weights that make every layer matter, and a torchvision/googlenet_fast model pair."""
import pytest
import torch
import torch.nn as nn
import torchvision
from torch.utils._python_dispatch import TorchDispatchMode

from googlenet_fast.model import GoogLeNet

TOL = 1e-4


@pytest.fixture(autouse=True, scope="module")
def _fp32_exact():
    prev = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
            torch.get_float32_matmul_precision())
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev[:2]
    torch.set_float32_matmul_precision(prev[2])


# ------------------------------------------------------------------------------------------------
# helpers

def randomize_(model, seed=0):
    """He-scaled conv weights and perturbed BatchNorm statistics, so that activations stay O(1)
    through all 22 layers and the logits depend on every layer (torchvision's std-0.01 init
    would leave logits ~ the fc bias, and a comparison on them would prove little)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / m.weight[0].numel()) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.empty(m.bias.shape).uniform_(-0.1, 0.1, generator=g))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.empty(m.weight.shape).uniform_(0.8, 1.2, generator=g))
                m.bias.copy_(torch.empty(m.bias.shape).uniform_(-0.1, 0.1, generator=g))
                m.running_mean.copy_(torch.empty(m.running_mean.shape).uniform_(-0.1, 0.1, generator=g))
                m.running_var.copy_(torch.empty(m.running_var.shape).uniform_(0.8, 1.25, generator=g))
            elif isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (1.0 / m.in_features) ** 0.5)
                m.bias.zero_()
    return model


def rel_err(out, ref):
    """max|out - ref| / max|ref|, on finite, non-trivial values of the same shape."""
    assert out.shape == ref.shape, (out.shape, ref.shape)
    out, ref = out.detach().double(), ref.detach().double()
    assert torch.isfinite(ref).all() and torch.isfinite(out).all()
    scale = ref.abs().max().item()
    assert scale > 1e-3, "reference is ~zero: the comparison would prove nothing"
    return (out - ref).abs().max().item() / scale


def make_input(*shape, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def tv_model(aux_logits=False, transform_input=False, seed=0):
    tv = torchvision.models.googlenet(init_weights=False, aux_logits=aux_logits, transform_input=transform_input)
    return randomize_(tv, seed).eval()


def ours_from(tv, **kwargs):
    m = GoogLeNet(init_weights=False, aux_logits=tv.aux_logits, transform_input=tv.transform_input, **kwargs)
    m.load_state_dict(tv.state_dict(), strict=True)
    return m.eval()


@pytest.fixture(scope="module")
def pair():
    tv = tv_model(aux_logits=False)
    return tv, ours_from(tv)


class OpLog(TorchDispatchMode):
    """Records (op name, dtype of its first tensor argument) of every op dispatched inside."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        first = next((a for a in args if isinstance(a, torch.Tensor)), None)
        self.calls.append((str(func.overloadpacket), None if first is None else first.dtype))
        return func(*args, **(kwargs or {}))

    @property
    def names(self):
        return [n for n, _ in self.calls]

    def count(self, name, dtype=None):
        return sum(n == name and (dtype is None or d == dtype) for n, d in self.calls)
