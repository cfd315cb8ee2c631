"""Parity checks of the CUDA backend (csrc/cuda/inception_cuda.cu), shared by the GPU suite
(test_cuda_backend.py) and the CPU emulation suite (test_cuda_emulation.py).

Every check poisons the output with NaN before the kernel runs, asserts that every element was
written (and nothing outside it), and compares against the `reference` backend computed in the
same run: float64 for float32/float64 runs, float32 for float16/bfloat16 runs, where the bound
is twice the reference's own error in that dtype plus a floor of half an ulp (relative to the
output's largest magnitude).
"""
import torch

from googlenet_fast.backends.reference import inception_reference

from googlenet_fast.table1 import TABLE1  # noqa: E402  (the paper's Table 1, one copy)

# Small shapes that reach every path: (n, cin, h, w, ch1x1, ch3x3red, ch3x3, k3, ch5x5red, ch5x5,
# k5, pool_proj).  Channel counts that are not multiples of 16 bytes take the element-wise loader
# and epilogue paths; the rest the 16-byte ones.
SMALL = {
    "mult8": (2, 16, 5, 7, 8, 8, 16, 3, 8, 8, 5, 8),
    "1x1-map-cin3": (1, 3, 1, 1, 5, 3, 7, 3, 2, 3, 5, 1),
    "2x2-map": (2, 8, 2, 2, 8, 8, 8, 3, 8, 8, 5, 8),
    "odd-channels": (3, 20, 4, 5, 10, 12, 9, 3, 6, 5, 3, 11),
    "all-odd": (2, 7, 4, 6, 5, 5, 7, 3, 3, 9, 5, 3),
    "n-tails": (2, 24, 6, 6, 70, 24, 72, 3, 16, 24, 5, 8),   # 70+24+16 = 110 merged columns
    "m-tails": (3, 16, 7, 7, 16, 8, 16, 5, 8, 8, 3, 16),      # 147 pixels = 2 tiles + 19
    "k1-k7": (1, 16, 9, 8, 8, 16, 8, 1, 8, 16, 7, 8),
    "cin-not-16B": (2, 12, 3, 5, 12, 4, 12, 3, 4, 12, 5, 12),
}

FP32_TOL = 1e-4   # DESIGN.md: fp32 (TF32 off) max relative error
FP64_TOL = 1e-10


def make_weights(cin, c1, r3, c3, k3, r5, c5, k5, cp, *, bias=True, dtype=torch.float32, device="cpu",
                 layout="contiguous", seed=0):
    """The op's 12 weight/bias arguments, He-scaled so activations stay O(1).

    layout: "contiguous" | "channels_last" | "misaligned" (each tensor a view one element into
    its storage, so no base address is 16-byte aligned).
    """
    g = torch.Generator().manual_seed(seed)
    out = []
    for o, i, k in ((c1, cin, 1), (r3, cin, 1), (c3, r3, k3), (r5, cin, 1), (c5, r5, k5), (cp, cin, 1)):
        w = torch.randn(o, i, k, k, generator=g, dtype=torch.float64) * (2.0 / max(1, i * k * k)) ** 0.5
        b = torch.randn(o, generator=g, dtype=torch.float64) * 0.1 if bias else None
        w = _place(w.to(dtype), layout, device)
        if b is not None:
            b = _place(b.to(dtype), "misaligned" if layout == "misaligned" else "contiguous", device)
        out += [w, b]
    return out


def _place(t, layout, device):
    if layout == "channels_last" and t.dim() == 4:
        return t.to(device).contiguous(memory_format=torch.channels_last)
    if layout == "misaligned":
        buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=device)
        v = buf[1:].view(t.shape)
        v.copy_(t)
        return v
    return t.to(device).contiguous()


def make_input(n, c, h, w, *, dtype=torch.float32, device="cpu", layout="channels_last", seed=1, sign=0):
    """x in one of several layouts, all with the same values.

    layout: "channels_last" | "nchw" | "strided" (every other row and column of a larger tensor)
    | "channel_slice" (channels 1..c of a larger channels_last tensor) | "expanded" (one channel
    expanded to c, stride 0) | "misaligned" (channels_last, one element into its storage).
    sign: 0 random, -1 strictly negative (the pool must pad with -inf, not 0).
    """
    g = torch.Generator(device=device).manual_seed(seed)
    base = torch.randn(n, 1 if layout == "expanded" else c, h, w, generator=g, dtype=torch.float64,
                       device=device)
    if sign < 0:
        base = -base.abs() - 0.5
    base = base.to(dtype)
    if layout == "channels_last":
        return base.to(device).contiguous(memory_format=torch.channels_last)
    if layout == "nchw":
        return base.to(device).contiguous()
    if layout == "strided":
        big = torch.zeros(n, c, 2 * h, 2 * w, dtype=dtype, device=device)
        big[:, :, ::2, ::2] = base.to(device)
        return big[:, :, ::2, ::2]
    if layout == "channel_slice":
        big = torch.zeros(n, c + 3, h, w, dtype=dtype, device=device).contiguous(memory_format=torch.channels_last)
        big[:, 1:c + 1] = base.to(device)
        return big[:, 1:c + 1]
    if layout == "expanded":
        return base.to(device).expand(n, c, h, w)
    if layout == "misaligned":
        buf = torch.empty(n * c * h * w + 1, dtype=dtype, device=device)
        v = buf[1:].view(n, h, w, c).permute(0, 3, 1, 2)
        v.copy_(base.to(device))
        return v
    raise ValueError(layout)


def make_output(shape, *, dtype, device, layout="channels_last"):
    """A NaN-poisoned output and the buffer that holds it (to check nothing outside was written).

    layout: "channels_last" | "nchw" (the kernel goes through a temporary) | "slice" (channels
    3..3+C of a larger channels_last buffer) | "misaligned" (channels_last, one element into its
    storage).
    """
    n, c, h, w = shape
    nan = float("nan")
    if layout == "channels_last":
        out = torch.full(shape, nan, dtype=dtype, device=device).contiguous(memory_format=torch.channels_last)
        return out, out
    if layout == "nchw":
        out = torch.full(shape, nan, dtype=dtype, device=device)
        return out, out
    if layout == "slice":
        big = torch.full((n, c + 5, h, w), nan, dtype=dtype, device=device).contiguous(
            memory_format=torch.channels_last)
        return big[:, 3:3 + c], big
    if layout == "misaligned":
        buf = torch.full((n * c * h * w + 2,), nan, dtype=dtype, device=device)
        return buf[1:-1].view(n, h, w, c).permute(0, 3, 1, 2), buf
    raise ValueError(layout)


def rel_err(y, ref):
    """max |y - ref| / max |ref|, in float64 (never on zeros: the reference must be non-trivial)."""
    ref = ref.to(torch.float64)
    scale = ref.abs().max().item()
    assert scale > 0, "reference is all zeros: the comparison would prove nothing"
    return (y.to(torch.float64) - ref).abs().max().item() / scale


def check_parity(run, shape, *, dtype, device, x_layout="channels_last", out_layout="channels_last",
                 w_layout="contiguous", relu=True, bias=True, sign=0, nan_at=None, seed=0):
    """Run the kernel through ``run(x, *weights, relu, out)`` (it must write ``out``) and check it.

    shape: (n, cin, h, w, ch1x1, ch3x3red, ch3x3, k3, ch5x5red, ch5x5, k5, pool_proj).
    nan_at: (image, channel, row, col) of x to set to NaN (the pool and the convs must propagate
    it exactly as the reference does).  Returns the measured error (and the bound for half runs).
    """
    n, cin, h, w, c1, r3, c3, k3, r5, c5, k5, cp = shape
    x = make_input(n, cin, h, w, dtype=dtype, device=device, layout=x_layout, seed=seed + 1, sign=sign)
    if nan_at is not None:
        x[nan_at] = float("nan")
    ws = make_weights(cin, c1, r3, c3, k3, r5, c5, k5, cp, bias=bias, dtype=dtype, device=device,
                      layout=w_layout, seed=seed)
    cout = c1 + c3 + c5 + cp
    out, holder = make_output((n, cout, h, w), dtype=dtype, device=device, layout=out_layout)
    before = holder.clone()

    run(x, *ws, relu, out)

    # Nothing outside `out` was touched (it is still NaN there), every element of `out` written.
    mask = torch.zeros_like(holder, dtype=torch.bool)
    if holder is out:
        mask.fill_(True)
    elif out_layout == "slice":
        mask[:, 3:3 + cout] = True
    else:  # misaligned: out covers holder[1:-1]
        mask[1:-1] = True
    assert holder[~mask].isnan().all() and before[~mask].isnan().all(), "the kernel wrote outside `out`"

    truth_dtype = torch.float64 if dtype in (torch.float32, torch.float64) else torch.float32
    # With a NaN in x the references run on the CPU: a GPU reference goes through cuDNN, whose
    # Winograd/FFT algorithms spread one NaN over whole tiles, so its NaN map would depend on the
    # algorithm cuDNN picks, not on the function (a correct kernel would fail against it).
    ref_device = "cpu" if nan_at is not None else x.device
    up = lambda t: None if t is None else t.to(device=ref_device, dtype=truth_dtype)  # noqa: E731
    ref = inception_reference(up(x), *[up(t) for t in ws], relu=relu).to(out.device)
    ref_nan = ref.isnan()
    if nan_at is None:
        assert not ref_nan.any()
        assert not out.isnan().any(), f"{int(out.isnan().sum())} output elements were never written"
    else:
        assert ref_nan.any(), "the NaN did not reach the reference output"
        assert torch.equal(out.isnan(), ref_nan), "NaN propagation differs from the reference"
        out = torch.where(ref_nan, torch.zeros_like(out), out)
        ref = torch.where(ref_nan, torch.zeros_like(ref), ref)
    err = rel_err(out, ref)
    if dtype == torch.float32:
        assert err <= FP32_TOL, f"float32 max relative error {err:.3g} > {FP32_TOL}"
        return err
    if dtype == torch.float64:
        assert err <= FP64_TOL, f"float64 max relative error {err:.3g} > {FP64_TOL}"
        return err
    # Half precision: at most twice the reference's own error in this dtype (same inputs, same
    # device), plus half an ulp.
    on_ref = lambda t: None if t is None else t.to(ref_device)  # noqa: E731
    ref_half = inception_reference(on_ref(x), *[on_ref(t) for t in ws], relu=relu).to(out.device)
    if nan_at is not None:
        # The yardstick is the reference's own rounding error, read where both references are
        # finite: torch 2.11's CPU bf16 convolution put NaNs beyond the NaN's receptive field
        # (H200 machine, 2026-12-04: "max relative error 0.00377 > nan"), which says nothing
        # about the kernel under test (its NaN map was checked against the float reference).
        spurious = ~torch.isfinite(ref_half) & ~ref_nan
        ref_half = torch.where(ref_nan | spurious, torch.zeros_like(ref_half), ref_half)
        ref = torch.where(spurious, torch.zeros_like(ref), ref)
    ref_err = rel_err(ref_half, ref)
    bound = 2 * ref_err + 0.5 * torch.finfo(dtype).eps
    assert err <= bound, f"{dtype} max relative error {err:.3g} > {bound:.3g} (reference's own: {ref_err:.3g})"
    return err, bound
