"""googlenet_fast::fold_conv_weight (csrc/cpu/fold_cpu.cpp) and fold_cache.fold_weight: the same
bits and gradients as the composition `(w.to(scale.dtype) * scale[:, None, ...]).to(dtype)` that
the folded-weight caches used before, in one pass."""
import pytest
import torch

from googlenet_fast import fold_cache
from googlenet_fast.backends import native

pytestmark = pytest.mark.skipif(not native.available(), reason=f"extension not built: {native.LOAD_ERROR}")


def composition(w, scale, dtype):
    return (w.to(scale.dtype) * scale.reshape((-1,) + (1,) * (w.dim() - 1))).to(dtype)


def case(wdtype, acc, shape=(24, 5, 3, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(shape, generator=g) * 3).to(wdtype)
    scale = (torch.rand(shape[0], generator=g, dtype=torch.float64) * 2 - 0.5).to(acc)
    return w, scale


# (weight dtype, accumulation dtype, target dtype): what _fold_conv_block asks for
DTYPES = [(torch.float32, torch.float64, torch.float32), (torch.float64, torch.float64, torch.float64),
          (torch.float32, torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32, torch.bfloat16),
          (torch.float32, torch.float64, torch.bfloat16), (torch.float16, torch.float32, torch.float16)]


@pytest.mark.parametrize("wdtype,acc,dtype", DTYPES)
@pytest.mark.parametrize("shape", [(24, 5, 3, 3), (7, 832, 1, 1), (64, 3, 7, 7), (3, 4)])
def test_same_bits_as_the_composition(wdtype, acc, dtype, shape):
    w, scale = case(wdtype, acc, shape)
    w.view(-1)[:3] = torch.tensor([float("nan"), float("inf"), -0.0]).to(wdtype)  # special values
    got = torch.ops.googlenet_fast.fold_conv_weight(w, scale, dtype)
    want = composition(w, scale, dtype)
    assert got.dtype == dtype and got.shape == w.shape and got.is_contiguous()
    assert torch.equal(got.view(-1)[3:], want.view(-1)[3:])
    assert got.view(-1)[0].isnan() and want.view(-1)[0].isnan()
    assert torch.equal(got.view(-1)[1:3], want.view(-1)[1:3])
    assert torch.equal(got.view(-1)[2:3].signbit(), want.view(-1)[2:3].signbit())  # -0 * s: the sign kept


def test_non_contiguous_weight():
    w, scale = case(torch.float32, torch.float64, (16, 6, 3, 3))
    wt = w.permute(0, 2, 3, 1)  # a strided view
    assert torch.equal(torch.ops.googlenet_fast.fold_conv_weight(wt, scale, torch.float32),
                       composition(wt, scale, torch.float32))


@pytest.mark.parametrize("wdtype,acc,dtype", [DTYPES[0], DTYPES[1], DTYPES[3]])
def test_gradients_equal_the_composition(wdtype, acc, dtype):
    w, scale = case(wdtype, acc, seed=1)
    grad = torch.randn(w.shape, generator=torch.Generator().manual_seed(2)).to(dtype)
    outs = []
    for f in (fold_cache.fold_weight, composition):
        wl, sl = w.clone().requires_grad_(), scale.clone().requires_grad_()
        f(wl, sl, dtype).backward(grad)
        outs.append((wl.grad, sl.grad))
    (gw, gs), (rw, rs) = outs
    assert gw.dtype == w.dtype and gs.dtype == scale.dtype
    assert torch.equal(gw, rw)
    assert torch.equal(gs, rs)  # the same ops in the same order


def test_registered_autograd_and_fake_kernel():
    w, scale = case(torch.float64, torch.float64, (6, 4, 3, 3))
    torch.library.opcheck(torch.ops.googlenet_fast.fold_conv_weight.default,
                          (w.requires_grad_(), scale.requires_grad_(), torch.float64))
    assert torch.autograd.gradcheck(lambda a, b: torch.ops.googlenet_fast.fold_conv_weight(a, b, torch.float64),
                                    (w, scale))


@pytest.mark.parametrize("call,exc,match", [
    (lambda: torch.ops.googlenet_fast.fold_conv_weight(torch.ones(4, 2), torch.ones(3, dtype=torch.float64),
                                                       torch.float32), ValueError, "scale: expected shape \\(4,\\)"),
    (lambda: torch.ops.googlenet_fast.fold_conv_weight(torch.ones(4, 2, dtype=torch.float64), torch.ones(4),
                                                       torch.float32), TypeError, "scale: expected a dtype at least as wide"),
    (lambda: torch.ops.googlenet_fast.fold_conv_weight(torch.ones(4, 2), torch.ones(4, dtype=torch.int64),
                                                       torch.float32), TypeError, "scale: expected float64 or float32"),
    (lambda: torch.ops.googlenet_fast.fold_conv_weight(torch.ones(4, 2), torch.ones(4, dtype=torch.float64),
                                                       torch.int32), TypeError, "dtype: expected float32, float64, bfloat16 or float16"),
    (lambda: torch.ops.googlenet_fast.fold_conv_weight(torch.ones(4, 2, dtype=torch.int32),
                                                       torch.ones(4, dtype=torch.float64), torch.float32),
     ValueError, "weight: expected a float32, float64, bfloat16 or float16 tensor"),
    (lambda: torch.ops.googlenet_fast.fold_conv_weight(torch.ones(4, 2), torch.ones(4, dtype=torch.float64),
                                                       torch.float8_e4m3fn), TypeError, "dtype: expected float32"),
    (lambda: torch.ops.googlenet_fast.fold_conv_weight(torch.ones(4, 2), torch.ones(4, dtype=torch.float64, device="meta"),
                                                       torch.float32), ValueError, "scale: expected a tensor on weight's device"),
    (lambda: torch.ops.googlenet_fast.fold_conv_weight(torch.ones(4, 2, device="meta"), torch.ones(4, dtype=torch.float64),
                                                       torch.float32), ValueError, "scale: expected a tensor on weight's device"),
])
def test_bad_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
