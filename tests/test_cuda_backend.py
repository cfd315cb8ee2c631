"""GPU parity suite of the CUDA C++ backend (csrc/cuda/inception_cuda.cu); skipped without a GPU.

Against the reference backend computed in the same run (float64 for float32 runs with TF32 off,
float32 for float16/bfloat16 runs; see tests/cuda_parity.py for the bounds), with NaN-poisoned
outputs: all nine Table-1 configurations at their spatial sizes, K = 3 and 5, batch 1/32/256,
float32/float16/bfloat16; strided, sliced, expanded and misaligned inputs; output slices of a
larger buffer; bad input; streams, CUDA graphs, no hidden synchronization; 64-bit indexing.
"""
import pytest
import torch

import googlenet_fast
from googlenet_fast.backends import native
from googlenet_fast.backends.reference import inception_reference

from cuda_parity import SMALL, TABLE1, check_parity, make_input, make_output, make_weights, rel_err

pytestmark = pytest.mark.gpu

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
dtype_id = lambda d: str(d).split(".")[-1]  # noqa: E731


@pytest.fixture(autouse=True)
def _cuda_backend_built():
    assert native.available(), f"googlenet_fast._C did not load: {native.LOAD_ERROR}"
    assert native.BUILD_INFO.get("cuda_built"), (
        f"googlenet_fast._C was built without CUDA kernels ({native.BUILD_INFO.get('cuda_skip_reason')})")
    cudnn_tf32, mm_tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 reference
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn_tf32, mm_tf32


def run_out(x, *rest):
    """The CUDA kernel through the op's out= overload: run_out(x, *12 weights, relu, out)."""
    *ws, relu, out = rest
    torch.ops.googlenet_fast.inception.out(x, *ws, relu, out=out)
    torch.cuda.synchronize()


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("batch", [1, 32, 256])
@pytest.mark.parametrize("k5", [3, 5])
@pytest.mark.parametrize("cfg", list(TABLE1))
def test_table1_parity(cfg, k5, batch, dtype):
    cin, c1, r3, c3, r5, c5, cp, hw = TABLE1[cfg]
    check_parity(run_out, (batch, cin, hw, hw, c1, r3, c3, 3, r5, c5, k5, cp), dtype=dtype, device="cuda")


@pytest.mark.parametrize("dtype", DTYPES + [torch.float64], ids=dtype_id)
@pytest.mark.parametrize("name", list(SMALL))
def test_small_shapes(name, dtype):
    check_parity(run_out, SMALL[name], dtype=dtype, device="cuda")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("relu,bias", [(False, True), (True, False), (False, False)])
def test_epilogue_flags(relu, bias, dtype):
    cin, c1, r3, c3, r5, c5, cp, hw = TABLE1["4b"]
    check_parity(run_out, (4, cin, hw, hw, c1, r3, c3, 3, r5, c5, 5, cp), dtype=dtype, device="cuda",
                 relu=relu, bias=bias)


_4B = TABLE1["4b"]  # ch5x5red = 24: 16-byte chunks straddle K steps of the 5x5 branch
LAYOUT_SHAPE = (4, _4B[0], 14, 14, _4B[1], _4B[2], _4B[3], 3, _4B[4], _4B[5], 5, _4B[6])


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("x_layout", ["nchw", "strided", "channel_slice", "expanded", "misaligned"])
def test_input_layouts(x_layout, dtype):
    check_parity(run_out, LAYOUT_SHAPE, dtype=dtype, device="cuda", x_layout=x_layout)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("out_layout", ["nchw", "slice", "misaligned"])
def test_output_layouts(out_layout, dtype):
    check_parity(run_out, LAYOUT_SHAPE, dtype=dtype, device="cuda", out_layout=out_layout)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("w_layout", ["channels_last", "misaligned"])
def test_weight_layouts(w_layout, dtype):
    check_parity(run_out, LAYOUT_SHAPE, dtype=dtype, device="cuda", w_layout=w_layout)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_pool_pads_with_minus_inf(dtype):
    check_parity(run_out, SMALL["mult8"], dtype=dtype, device="cuda", relu=False, sign=-1)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_nan_propagates(dtype):
    check_parity(run_out, SMALL["mult8"], dtype=dtype, device="cuda", nan_at=(1, 3, 2, 4))


def _module(dtype=torch.float16, n=2, cfg="3a", k5=5, hw=None, layout="channels_last"):
    cin, c1, r3, c3, r5, c5, cp, size = TABLE1[cfg]
    hw = hw or size
    x = make_input(n, cin, hw, hw, dtype=dtype, device="cuda", layout=layout)
    ws = make_weights(cin, c1, r3, c3, 3, r5, c5, k5, cp, dtype=dtype, device="cuda")
    return x, ws


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_public_api_functional(dtype):
    """backend="cuda" through googlenet_fast.inception: channels_last in, channels_last out."""
    x, ws = _module(dtype)
    y = googlenet_fast.inception(x, *ws, backend="cuda")
    assert y.is_contiguous(memory_format=torch.channels_last) and y.dtype == dtype and y.is_cuda
    out, _ = make_output(tuple(y.shape), dtype=dtype, device="cuda")
    torch.ops.googlenet_fast.inception.out(x, *ws, True, out=out)
    assert torch.equal(y, out), "the functional and out= overloads disagree"
    up = lambda t: None if t is None else t.to(torch.float64)  # noqa: E731
    ref = inception_reference(up(x), *[up(t) for t in ws])
    assert rel_err(y, ref) <= 2 * rel_err(inception_reference(x, *ws), ref) + torch.finfo(dtype).eps / 2


BAD_INPUT_CASES = {  # name: (call(x, ws, y), exception, message); one test each, so that a crash
    # (a segfault in one of these on the H200 machine, torch 2.11, 2026-12-04: the out-shape case's
    # line, see benchmarks/results/h200-2026-12-04/diag) names its case
    "weight-on-cpu": (lambda x, ws, y: torch.ops.googlenet_fast.inception(x, ws[0].cpu(), *ws[1:], True),
                      ValueError, "w_1x1: expected a tensor on"),
    "x-on-cpu": (lambda x, ws, y: torch.ops.googlenet_fast.inception(x.cpu(), *ws, True),
                 ValueError, "expected a tensor on"),
    "out-shape": (lambda x, ws, y: torch.ops.googlenet_fast.inception.out(x, *ws, True, out=torch.empty_like(y)[:, 1:]),
                  ValueError, "out: expected shape"),
    "out-dtype": (lambda x, ws, y: torch.ops.googlenet_fast.inception.out(
        x, *ws, True, out=torch.empty_like(y, dtype=torch.float16)), TypeError, "out: expected dtype"),
    "out-on-cpu": (lambda x, ws, y: torch.ops.googlenet_fast.inception.out(
        x, *ws, True, out=torch.empty_like(y, device="cpu")), ValueError, "out: expected a tensor on"),
    "x-int": (lambda x, ws, y: torch.ops.googlenet_fast.inception(x.to(torch.int32), *ws, True),
              TypeError, "x: expected a floating dtype"),
    "x-3d": (lambda x, ws, y: torch.ops.googlenet_fast.inception(x[0], *ws, True), ValueError, "x: expected a 4-D tensor"),
    "public-api-cpu-tensors": (lambda x, ws, y: googlenet_fast.inception(
        x.cpu(), *[None if t is None else t.cpu() for t in ws], backend="cuda"), ValueError, "cuda"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT_CASES))
def test_bad_input(case):
    call, exc, match = BAD_INPUT_CASES[case]
    x, ws = _module(torch.float32)
    y = torch.ops.googlenet_fast.inception(x, *ws, True)
    with pytest.raises(exc, match=match):
        call(x, ws, y)


def test_current_stream_no_sync():
    """Launches go to the current stream and never synchronize the host."""
    x, ws = _module(torch.float16)
    ref = torch.ops.googlenet_fast.inception(x, *ws, True)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.cuda.stream(side):
            y = torch.ops.googlenet_fast.inception(x, *ws, True)
            out = torch.empty_like(y).contiguous()  # NCHW: the temp + copy path
            torch.ops.googlenet_fast.inception.out(x.contiguous(), *ws, True, out=out)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    side.synchronize()
    assert torch.equal(y, ref) and torch.equal(out, ref)


def test_cuda_graph_capture():
    x, ws = _module(torch.bfloat16)
    static_x = x.clone()
    out = torch.empty_like(torch.ops.googlenet_fast.inception(x, *ws, True))
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm-up outside capture, as the CUDA graph docs prescribe
        torch.ops.googlenet_fast.inception.out(static_x, *ws, True, out=out)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        torch.ops.googlenet_fast.inception.out(static_x, *ws, True, out=out)
    x2 = make_input(*x.shape, dtype=x.dtype, device="cuda", seed=7)
    static_x.copy_(x2)
    out.fill_(float("nan"))
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, torch.ops.googlenet_fast.inception(x2, *ws, True))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_second_device():
    """Tensors on cuda:1 while cuda:0 is current: the device guard must switch."""
    x, ws = _module(torch.float16)
    ref = torch.ops.googlenet_fast.inception(x, *ws, True)
    x1, ws1 = x.to("cuda:1"), [None if t is None else t.to("cuda:1") for t in ws]
    with torch.cuda.device(0):
        y1 = torch.ops.googlenet_fast.inception(x1, *ws1, True)
    assert y1.device == torch.device("cuda:1") and torch.equal(y1.cpu(), ref.cpu())


def test_64bit_indexing():
    """An output of more than 2^31 elements: the last images' offsets only fit in 64 bits."""
    free, _ = torch.cuda.mem_get_info()
    if free < 12 * 2**30:
        pytest.skip("needs ~12 GiB of free GPU memory")
    n, cin, hw = 64, 16, 512
    c1, r3, c3, r5, c5, cp = 64, 16, 48, 16, 32, 16  # 160 output channels
    assert n * (c1 + c3 + c5 + cp) * hw * hw > 2**31
    x = make_input(n, cin, hw, hw, dtype=torch.float16, device="cuda")
    ws = make_weights(cin, c1, r3, c3, 3, r5, c5, 5, cp, dtype=torch.float16, device="cuda")
    y = torch.ops.googlenet_fast.inception(x, *ws, True)
    up = lambda t: None if t is None else t.to(torch.float32)  # noqa: E731
    for i in (0, n // 2, n - 1):
        ref = inception_reference(up(x[i:i + 1]), *[up(t) for t in ws])
        ref_half = inception_reference(x[i:i + 1], *ws)
        err, ref_err = rel_err(y[i:i + 1], ref), rel_err(ref_half, ref)
        assert err <= 2 * ref_err + torch.finfo(torch.float16).eps / 2, f"image {i}: {err:.3g} vs {ref_err:.3g}"
