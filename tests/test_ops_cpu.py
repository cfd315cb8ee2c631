"""The fused Inception op on the CPU backend (C++), against the float64 reference."""
import math

import pytest
import torch
from hypothesis import given, settings, HealthCheck, strategies as st

import googlenet_fast as gf
from googlenet_fast import ops
from googlenet_fast.backends import native
from inception_cases import TABLE1, make_weights, make_input, reference64, rel_err, as64

pytestmark = pytest.mark.skipif(not native.available(), reason=f"extension not built: {native.LOAD_ERROR}")

FP32_TOL = 1e-4


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def run(x, ws, **kw):
    return gf.inception(x, *ws, backend="cpu", **kw)


@pytest.mark.parametrize("name", list(TABLE1))
@pytest.mark.parametrize("k5", [3, 5])
def test_table1_configs_at_real_size(name, k5):
    cfg = TABLE1[name]
    cin, hw = cfg[0], cfg[7]
    ws = make_weights(cfg, k5=k5)
    x = make_input(2, cin, hw, hw).contiguous(memory_format=torch.channels_last)
    y = run(x, ws)
    ref = reference64(x, ws)
    assert y.shape == ref.shape == (2, cfg[1] + cfg[3] + cfg[5] + cfg[6], hw, hw)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(y, ref) <= FP32_TOL


@pytest.mark.parametrize("name", list(TABLE1))
@pytest.mark.parametrize("hw", [(1, 1), (2, 2), (3, 5), (6, 4)])
@pytest.mark.parametrize("bias,relu", [(True, True), (False, True), (True, False)])
def test_table1_configs_small_maps(name, hw, bias, relu):
    cfg = TABLE1[name]
    ws = make_weights(cfg, k5=5, bias=bias, seed=hash(name) % 1000)
    x = make_input(3, cfg[0], *hw)
    y = run(x, ws, relu=relu)
    assert rel_err(y, reference64(x, ws, relu=relu)) <= FP32_TOL
    if relu:
        assert (y >= 0).all()


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided_hw", "sliced_w", "expanded_c",
                                    "permuted_batch"])
def test_input_layouts(layout):
    cfg = TABLE1["3a"]
    ws = make_weights(cfg)
    base = make_input(2, cfg[0], 10, 12)
    if layout == "nchw":
        x = base
    elif layout == "channels_last":
        x = base.contiguous(memory_format=torch.channels_last)
    elif layout == "strided_hw":
        x = base[:, :, ::2, ::2]
    elif layout == "sliced_w":
        x = base.contiguous(memory_format=torch.channels_last)[..., 1:]
    elif layout == "expanded_c":
        x = base[:, :1].expand(-1, cfg[0], -1, -1)  # channel stride 0
        assert x.stride(1) == 0
    else:
        x = base.flip(0)
    y = run(x, ws)
    assert rel_err(y, reference64(x, ws)) <= FP32_TOL
    # Output keeps the input's memory format.
    if layout in ("channels_last", "sliced_w"):
        assert y.is_contiguous(memory_format=torch.channels_last)
    if layout in ("nchw", "strided_hw", "permuted_batch"):
        assert y.is_contiguous()


@pytest.mark.parametrize("where", ["slice_of_channels_last", "nchw_buffer", "slice_of_nchw"])
def test_out_into_slice_of_larger_buffer_is_fully_written(where):
    cfg = TABLE1["4b"]
    ws = make_weights(cfg, k5=5)
    cout = cfg[1] + cfg[3] + cfg[5] + cfg[6]
    x = make_input(2, cfg[0], 5, 7).contiguous(memory_format=torch.channels_last)
    if where == "slice_of_channels_last":
        big = torch.full((2, cout + 40, 5, 7), float("nan")).contiguous(memory_format=torch.channels_last)
        out = big[:, 24:24 + cout]
    elif where == "nchw_buffer":
        big = torch.full((2, cout, 5, 7), float("nan"))
        out = big
    else:
        big = torch.full((2, cout + 8, 5, 7), float("nan"))
        out = big[:, 8:]
    ret = run(x, ws, out=out)
    assert ret.data_ptr() == out.data_ptr()
    assert not torch.isnan(out).any(), "some output elements were never written"
    assert rel_err(out, reference64(x, ws)) <= FP32_TOL
    # Outside the slice nothing was touched.
    if where == "slice_of_channels_last":
        assert torch.isnan(big[:, :24]).all() and torch.isnan(big[:, 24 + cout:]).all()
    elif where == "slice_of_nchw":
        assert torch.isnan(big[:, :8]).all()


def test_pool_pads_with_minus_infinity():
    """pool-padding case: on strictly negative input a 0-padded pool would differ at the border."""
    cfg = (8, 2, 3, 4, 2, 3, 5)
    ws = make_weights(cfg, k5=5)
    x = -(make_input(1, 8, 4, 5).abs() + 0.5)
    y = run(x, ws, relu=False)
    ref = reference64(x, ws, relu=False)
    assert rel_err(y, ref) <= FP32_TOL
    # The same with a zero-padded pool gives a different pool branch: the test can tell them apart.
    x64, wp, bp = x.double(), ws[10].double(), ws[11].double()
    zero_padded = torch.nn.functional.max_pool2d(torch.nn.functional.pad(x64, (1, 1, 1, 1)), 3, 1)
    wrong = torch.nn.functional.conv2d(zero_padded, wp, bp)
    assert (wrong - ref[:, -cfg[6]:]).abs().max() > 0.1


def test_nan_propagates_through_pool_like_torch():
    cfg = (4, 2, 2, 2, 2, 2, 3)
    ws = make_weights(cfg)
    x = make_input(1, 4, 3, 3)
    x[0, 1, 1, 1] = float("nan")
    y = run(x, ws, relu=False)
    ref = reference64(x, ws, relu=False)
    assert torch.equal(torch.isnan(y), torch.isnan(ref))


def test_float64_matches_tightly():
    cfg = TABLE1["4e"]
    ws = [None if w is None else w.double() for w in make_weights(cfg, k5=5)]
    x = make_input(1, cfg[0], 6, 6, dtype=torch.float64)
    assert rel_err(run(x, ws), reference64(x, ws)) <= 1e-12


def test_bfloat16_within_twice_reference_error():
    cfg = TABLE1["4d"]
    ws64 = make_weights(cfg, k5=5, dtype=torch.float64)
    x64 = make_input(2, cfg[0], 14, 14, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    ref64 = reference64(x64, ws64)
    ws16 = [None if w is None else w.to(torch.bfloat16) for w in ws64]
    x16 = x64.to(torch.bfloat16)
    from googlenet_fast.backends.reference import inception_reference
    ref_err = rel_err(inception_reference(x16, *ws16), ref64)
    ours = rel_err(run(x16, ws16), ref64)
    assert ours <= 2 * ref_err + 1e-3, (ours, ref_err)


def test_adjacent_sibling_weights_are_read_in_place_and_agree():
    """The model's cache passes the three sibling 1x1 weights as slices of one buffer."""
    cfg = TABLE1["3b"]
    ws = make_weights(cfg)
    merged = torch.cat([ws[0], ws[2], ws[6]], 0)
    c1, r3, r5 = cfg[1], cfg[2], cfg[4]
    adj = list(ws)
    adj[0], adj[2], adj[6] = merged[:c1], merged[c1:c1 + r3], merged[c1 + r3:]
    adj[4] = ws[4].contiguous(memory_format=torch.channels_last)
    x = make_input(1, cfg[0], 7, 9)
    assert torch.equal(run(x, adj), run(x, ws))
    assert rel_err(run(x, adj), reference64(x, ws)) <= FP32_TOL


def test_empty_batch():
    cfg = TABLE1["3a"]
    ws = make_weights(cfg)
    y = run(torch.empty(0, cfg[0], 5, 5), ws)
    assert y.shape == (0, cfg[1] + cfg[3] + cfg[5] + cfg[6], 5, 5)


def test_float16_is_refused_with_a_clear_error():
    cfg = (4, 2, 2, 2, 2, 2, 3)
    ws = [None if w is None else w.half() for w in make_weights(cfg)]
    with pytest.raises(TypeError, match="float16"):
        run(make_input(1, 4, 3, 3).half(), ws)


# ---------------------------------------------------------------------------------------------
# Bad input: every error names the argument and what was expected, from Python and from C++.

def _bad_cases():
    cfg = (6, 2, 3, 4, 2, 3, 5)
    ws = make_weights(cfg, k5=5)
    x = make_input(1, 6, 4, 4)
    cases = {
        "rank": ((x[0], ws), {}, ValueError, r"x: expected a 4-D tensor"),
        "int_images": ((x.to(torch.uint8), ws), {}, TypeError, r"x: expected a floating dtype"),
        "channels": ((make_input(1, 5, 4, 4), ws), {}, ValueError, r"w_1x1: expected 5 input channels \(dim 1, the channels of x\)"),
        "spatial": ((torch.empty(1, 6, 0, 4), ws), {}, ValueError, r"x: expected a spatial size of at least 1x1"),
        "w_dtype": ((x, ws[:4] + [ws[4].double()] + ws[5:]), {}, TypeError, r"w_3x3: expected dtype torch.float32"),
        "w_3x3_in": ((x, ws[:4] + [ws[4][:, :2]] + ws[5:]), {}, ValueError, r"w_3x3: expected 3 input channels"),
        "even_kernel": ((x, ws[:8] + [torch.zeros(3, 2, 4, 4)] + ws[9:]), {}, ValueError, r"w_5x5: expected a square kernel of odd size"),
        "bias_shape": ((x, ws[:1] + [torch.zeros(3)] + ws[2:]), {}, ValueError, r"b_1x1: expected shape \(2,\)"),
        "out_shape": ((x, ws), {"out": torch.empty(1, 13, 4, 4)}, ValueError, r"out: expected shape \(1, 14, 4, 4\)"),
        "out_dtype": ((x, ws), {"out": torch.empty(1, 14, 4, 4, dtype=torch.float64)}, TypeError, r"out: expected dtype"),
        "backend": ((x, ws), {"backend": "tpu"}, ValueError, r"backend: expected one of"),
    }
    return cases


@pytest.mark.parametrize("case", list(_bad_cases()))
def test_bad_input_python_entry(case):
    (x, ws), kw, exc, msg = _bad_cases()[case]
    with pytest.raises(exc, match=msg):
        gf.inception(x, *ws, **kw)


@pytest.mark.parametrize("case", [c for c in _bad_cases() if c != "backend"])
def test_bad_input_cpp_op(case):
    """The same checks in C++, for callers of torch.ops.googlenet_fast.inception directly."""
    (x, ws), kw, exc, msg = _bad_cases()[case]
    msg = msg.replace(r"\(1, 14, 4, 4\)", r"\[1, 14, 4, 4\]").replace(r"\(2,\)", r"\[2\]")
    with pytest.raises(exc, match=msg):
        if "out" in kw:
            torch.ops.googlenet_fast.inception.out(x, *ws, True, out=kw["out"])
        else:
            torch.ops.googlenet_fast.inception(x, *ws, True)


def test_backend_choice_and_errors(monkeypatch):
    cfg = (4, 2, 2, 2, 2, 2, 3)
    ws = make_weights(cfg)
    x = make_input(1, 4, 3, 3)
    assert ops.resolve_backend("auto", x) == "cpu"
    monkeypatch.setenv("GOOGLENET_FAST_BACKEND", "reference")
    assert ops.resolve_backend("auto", x) == "reference"
    assert ops.resolve_backend("cpu", x) == "cpu"  # an explicit choice wins over the environment
    assert rel_err(gf.inception(x, *ws), reference64(x, ws)) <= FP32_TOL
    monkeypatch.setenv("GOOGLENET_FAST_BACKEND", "bogus")
    with pytest.raises(ValueError, match="GOOGLENET_FAST_BACKEND"):
        gf.inception(x, *ws)
    monkeypatch.delenv("GOOGLENET_FAST_BACKEND")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="backend='triton' needs CUDA tensors"):
        gf.inception(x, *ws, backend="triton")
    with pytest.raises(ValueError, match="backend='cuda' needs CUDA tensors"):
        gf.inception(x, *ws, backend="cuda")


def test_out_with_grad_is_refused():
    cfg = (4, 2, 2, 2, 2, 2, 3)
    ws = make_weights(cfg)
    x = make_input(1, 4, 3, 3).requires_grad_()
    with pytest.raises(RuntimeError, match="out=.*automatic differentiation"):
        gf.inception(x, *ws, out=torch.empty(1, 9, 3, 3))


# ---------------------------------------------------------------------------------------------
# Registration: opcheck and torch.compile.

def test_opcheck():
    cfg = (6, 2, 3, 4, 2, 3, 5)
    for bias in (True, False):
        ws = make_weights(cfg, k5=5, bias=bias)
        for x in (make_input(2, 6, 4, 5), make_input(2, 6, 4, 5).contiguous(memory_format=torch.channels_last)):
            torch.library.opcheck(torch.ops.googlenet_fast.inception.default, (x, *ws, True))
            out = torch.empty(2, 14, 4, 5).contiguous(memory_format=torch.channels_last)
            torch.library.opcheck(torch.ops.googlenet_fast.inception.out, (x, *ws, False), {"out": out})


def test_torch_compile_fullgraph_matches_eager():
    cfg = TABLE1["5a"]
    ws = make_weights(cfg, k5=5)
    x = make_input(1, cfg[0], 7, 7).contiguous(memory_format=torch.channels_last)

    def f(x, *ws):
        return gf.inception(x, *ws) * 2.0

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        assert torch.allclose(compiled(x, *ws), f(x, *ws), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# Property test: random configurations, sizes, layouts and strides.

@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 3), cin=st.integers(1, 24), h=st.integers(1, 9), w=st.integers(1, 9),
    c1=st.integers(1, 12), r3=st.integers(1, 10), c3=st.integers(1, 12), k3=st.sampled_from([1, 3, 5]),
    r5=st.integers(1, 10), c5=st.integers(1, 12), k5=st.sampled_from([3, 5]), cp=st.integers(1, 12),
    bias=st.booleans(), relu=st.booleans(),
    layout=st.sampled_from(["nchw", "channels_last", "strided", "sliced"]),
    seed=st.integers(0, 2**16),
)
def test_property_fused_equals_reference(n, cin, h, w, c1, r3, c3, k3, r5, c5, k5, cp, bias, relu, layout, seed):
    cfg = (cin, c1, r3, c3, r5, c5, cp)
    ws = make_weights(cfg, k3=k3, k5=k5, bias=bias, seed=seed)
    if layout == "strided":
        x = make_input(n, cin, 2 * h, 2 * w, seed=seed)[:, :, ::2, ::2]
    elif layout == "sliced":
        x = make_input(n, cin + 2, h, w + 1, seed=seed).contiguous(memory_format=torch.channels_last)[:, 1:-1, :, 1:]
    else:
        x = make_input(n, cin, h, w, seed=seed)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
    ref = reference64(x, ws, relu=relu)
    y = run(x, ws, relu=relu)
    if ref.abs().max() == 0:  # all-ReLU-dead corner: compare exactly
        assert torch.equal(y, ref.float())
    else:
        assert rel_err(y, ref) <= FP32_TOL
