"""ModelState.same() (googlenet_fast/model_state.py): the check before every program replay.  Its
comparisons run in one C++ pass (csrc/state_check.cpp); every change a program depends on must be
seen by it exactly as by the Python comparisons (same_python), on a CPU model whose folded-weight
caches and CPU op program are warm."""
import copy
from array import array

import pytest
import torch
import torch.nn as nn

from googlenet_fast import GoogLeNet, model_state
from googlenet_fast.backends import native


def _warm_model():
    torch.manual_seed(0)
    model = GoogLeNet(aux_logits=False, init_weights=True, fused=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model(x)
        model(x)  # folds cached, CPU op program recorded
    return model


def _load(model, assign):
    model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, assign=assign)


def _swap_data(model):
    w = model.inception4d.branch4[1].conv.weight
    w.data = w.data.clone()  # no version bump: the data pointer tells


CHANGES = {
    "param updated in place": lambda m: m.inception4b.branch2[1].conv.weight.mul_(2),
    "BatchNorm statistic updated": lambda m: m.conv2.bn.running_var.add_(1),
    "num_batches_tracked": lambda m: m.inception3a.branch1.bn.num_batches_tracked.add_(1),
    "fc bias updated": lambda m: m.fc.bias.zero_(),
    "load_state_dict": lambda m: _load(m, False),
    "load_state_dict(assign=True)": lambda m: _load(m, True),
    "parameter replaced": lambda m: setattr(m.inception3a.branch1.conv, "weight",
                                            nn.Parameter(m.inception3a.branch1.conv.weight.clone())),
    "data swapped": _swap_data,
    "dtype converted": lambda m: m.fc.double(),
    "module swapped": lambda m: setattr(m, "inception4c", copy.deepcopy(m.inception4c)),
    "module appended to a branch": lambda m: m.inception4c.branch2.append(nn.ReLU()),
    "forward hook on a conv": lambda m: m.inception4c.branch3[0].conv.register_forward_hook(lambda *a: None),
    "forward pre-hook on a pool": lambda m: m.maxpool1.register_forward_pre_hook(lambda *a: None),
    "train()": lambda m: m.train(),
    "one BatchNorm in train mode": lambda m: m.inception4a.branch1.bn.train(),
    "fused switch of one module": lambda m: setattr(m.inception5a, "fused", False),
    "conv stride": lambda m: setattr(m.conv3.conv, "stride", (2, 2)),
    "pool ceil_mode": lambda m: setattr(m.maxpool3, "ceil_mode", False),
    "BatchNorm eps": lambda m: setattr(m.conv2.bn, "eps", 1e-5),
    "transform_input": lambda m: setattr(m, "transform_input", True),
    "a module's clear_folded_cache": lambda m: m.inception5a.clear_folded_cache(),
    "optimizer step": lambda m: torch.optim.SGD([m.fc.weight], lr=0.1).step(),
}


def test_the_compiled_check_is_used():
    assert native.available() and model_state._SAME_C is not None


@pytest.mark.parametrize("name", list(CHANGES))
def test_every_change_is_seen_by_both_checks(name):
    model = _warm_model()
    state = model_state.ModelState(model)
    assert state.same() is True and state.same_python() is True
    with torch.no_grad():
        CHANGES[name](model)
    assert state.same() is False, name
    assert state.same_python() is False, name


def test_unchanged_after_forwards_and_copies_elsewhere():
    model = _warm_model()
    state = model_state.ModelState(model)
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    copy.deepcopy(model)  # a copy's changes are not the model's
    assert state.same() is True and state.same_python() is True


def test_inference_tensors():
    with torch.inference_mode():  # parameters made as normal tensors (fold_cache.version_counted),
        model = GoogLeNet(aux_logits=False, init_weights=True).eval()
        assert not model_state.ModelState(model).uncounted
        model.conv2.bn.running_mean = model.conv2.bn.running_mean.clone()  # an inference tensor
    state = model_state.ModelState(model)
    assert None in state.versions and state.uncounted and state.verifying()
    assert state.same() is True and state.same_python() is True
    model.conv1.conv.weight = nn.Parameter(torch.zeros_like(model.conv1.conv.weight))
    assert state.same() is False and state.same_python() is False


def test_bad_arguments_name_what_was_expected():
    same = native._C._model_state_same
    state = model_state.ModelState(nn.Sequential(nn.Linear(2, 2)))
    args = list(state._compared)
    assert same(*args) is True
    with pytest.raises(TypeError, match="expected 11 arguments, got 10"):
        same(*args[:10])
    bad = list(args)
    bad[0] = list(bad[0])
    with pytest.raises(TypeError, match="dicts: expected a tuple, got list"):
        same(*bad)
    bad = list(args)
    bad[8] = array("Q", list(bad[8]) * 2)
    with pytest.raises(TypeError, match=r"ptrs: expected array\('Q'\) of 2 items"):
        same(*bad)
    bad = list(args)
    bad[6] = (1, 2)
    with pytest.raises(TypeError, match=r"tensors\[0\]: expected a Tensor, got int"):
        same(*bad)
    bad = list(args)
    bad[0] = (1,) * len(bad[0])
    with pytest.raises(TypeError, match="expected dicts, got int"):
        same(*bad)
