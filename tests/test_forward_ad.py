"""Forward-mode AD through GoogLeNet(fused=True): the output's tangent is torchvision's jvp (the
fused ops have no forward-AD formulas; inside ``torch.autograd.forward_ad.dual_level`` the plain
modules run, googlenet_fast/forward_ad.py).  Found by a stress test: the fused model returned a
tangent of None, eval and train alike, with no error."""
import pytest
import torch
import torch.autograd.forward_ad as fwAD

from googlenet_fast.backends import native
from model_helpers import make_input, ours_from, rel_err, tv_model

pytestmark = pytest.mark.skipif(not native.available(), reason=f"extension not built: {native.LOAD_ERROR}")


def _jvp(model, x, t):
    with fwAD.dual_level():
        out = fwAD.unpack_dual(model(fwAD.make_dual(x, t)))
    return out.primal, out.tangent


@pytest.mark.parametrize("mode", ["eval", "eval_no_grad", "train"])
def test_tangent_is_torchvisions(mode):
    tv = tv_model()
    ours = ours_from(tv)
    x, t = make_input(2, 3, 48, 48, seed=3), make_input(2, 3, 48, 48, seed=4)
    if mode == "train":  # (no aux heads: tv_model has none; batch statistics, no dropout effect compared)
        tv.train()
        ours.train()
        tv.dropout.p = ours.dropout.p = 0.0
    ctx = torch.no_grad() if mode == "eval_no_grad" else torch.enable_grad()
    with ctx:
        for _ in range(3):  # (a recorded CPU program must not answer a dual input either;
            y, ty = _jvp(ours, x, t)  # train mode: both update running statistics alike)
            y_ref, ty_ref = _jvp(tv, x, t)
    assert ty is not None
    assert rel_err(y, y_ref) <= 1e-4
    assert rel_err(ty, ty_ref) <= 1e-4
    with torch.no_grad():  # outside the dual level the fused path (and its programs) run again
        assert rel_err(ours.eval()(x), tv.eval()(x)) <= 1e-4
