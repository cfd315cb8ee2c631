"""The GPU parity helper (tests/cuda_parity.check_parity) on the CPU: a correct kernel passes,
whatever the half-precision reference's own NaN artifacts; a kernel with a wrong NaN map fails."""
import pytest
import torch

import cuda_parity
from cuda_parity import SMALL, check_parity
from googlenet_fast.backends.reference import inception_reference

NAN_AT = (1, 3, 2, 4)


def exact_kernel(x, *rest):
    """A correct 'kernel': the float64 reference rounded to x's dtype, written into out."""
    *ws, relu, out = rest
    up = lambda t: None if t is None else t.double()  # noqa: E731
    out.copy_(inception_reference(x.double(), *[up(t) for t in ws], relu=relu))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_spurious_nan_in_half_reference_does_not_fail_a_correct_kernel(monkeypatch, dtype):
    """As torch 2.11's CPU bf16 convolution did on the H200 machine (2026-12-04): NaNs in the
    half-precision reference beyond the NaN's receptive field."""
    real = cuda_parity.inception_reference

    def with_artifact(x, *ws, relu=True):
        y = real(x, *ws, relu=relu)
        if x.dtype == dtype:  # the half-precision reference run only
            y = y.clone()
            y[0, 0, 0, 0] = float("nan")  # image 0 holds no NaN input
        return y

    monkeypatch.setattr(cuda_parity, "inception_reference", with_artifact)
    check_parity(exact_kernel, SMALL["mult8"], dtype=dtype, device="cpu", nan_at=NAN_AT)


def test_wrong_nan_map_fails():
    def drops_nans(x, *rest):
        exact_kernel(x, *rest)
        rest[-1].nan_to_num_(0.0)

    with pytest.raises(AssertionError, match="NaN propagation differs"):
        check_parity(drops_nans, SMALL["mult8"], dtype=torch.bfloat16, device="cpu", nan_at=NAN_AT)
