"""The Triton backend against the reference, on CPU under Triton's interpreter (CI) and, marked
``gpu``, at real sizes on a CUDA device.

Interpreter: each CPU test sets TRITON_INTERPRET=1 through the ``interp`` fixture (monkeypatch,
so no other test sees it).  The backend reads the variable at every call and builds its kernels
for that mode (googlenet_fast/backends/triton/__init__.py: kernels()), so triton may have been
imported before.  The interpreter costs ~2 ms per program step: the cases use batch 1-2 and maps
of at most 5x5, and the backend shrinks its fixed interpreter tile to them.

Accuracy: the reference (googlenet_fast.backends.reference) runs in float64 on the same inputs.
float32 (TF32 off): per output branch, max |err| <= 1e-4 * max |ref|.  float16/bfloat16: per
branch, max |err| <= 2 * (the same error of the reference run in that dtype) + one unit of the
dtype's precision at the branch's scale.  Outputs passed as ``out=`` are poisoned with NaN first,
and every element must then be written (and nothing outside the output's slice).
"""
import math
import os

import pytest
import torch

triton = pytest.importorskip("triton")

import googlenet_fast  # noqa: E402
from googlenet_fast.backends import triton as tb  # noqa: E402
from googlenet_fast.backends.reference import inception_reference  # noqa: E402
from googlenet_fast.backends.triton import configs  # noqa: E402

from googlenet_fast.table1 import TABLE1  # noqa: E402  (the paper's Table 1, one copy)
EPS = {torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}


@pytest.fixture
def no_autotune(monkeypatch):
    monkeypatch.setenv(tb.AUTOTUNE_ENV, "0")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    yield


# ----------------------------------------------------------------------------------------------
# Inputs

def make_weights(name, k3=3, k5=3, dtype=torch.float32, device="cpu", bias=True, merged=True,
                 kxk_channels_last=False, seed=0):
    """The 12 weight/bias arguments of one Table-1 module, ~unit-variance outputs.  ``merged``:
    the three sibling 1x1 weights as adjacent row blocks of one buffer (the model's layout)."""
    cin, c1, r3, c3, r5, c5, cp, _ = TABLE1[name]
    g = torch.Generator().manual_seed(seed)

    def w(*shape):
        fan_in = shape[1] * shape[2] * shape[3]
        return (torch.randn(*shape, generator=g) * (2.0 / fan_in) ** 0.5).to(dtype).to(device)

    def b(n):
        return (torch.randn(n, generator=g) * 0.1).to(dtype).to(device) if bias else None

    if merged:
        wm = w(c1 + r3 + r5, cin, 1, 1)
        w1, w3r, w5r = wm[:c1], wm[c1:c1 + r3], wm[c1 + r3:]
    else:
        w1, w3r, w5r = w(c1, cin, 1, 1), w(r3, cin, 1, 1), w(r5, cin, 1, 1)
    w3, w5 = w(c3, r3, k3, k3), w(c5, r5, k5, k5)
    if kxk_channels_last:
        w3 = w3.contiguous(memory_format=torch.channels_last)
        w5 = w5.contiguous(memory_format=torch.channels_last)
    return [w1, b(c1), w3r, b(r3), w3, b(c3), w5r, b(r5), w5, b(c5), w(cp, cin, 1, 1), b(cp)]


def make_input(n, cin, h, w, layout="channels_last", dtype=torch.float32, device="cpu", seed=1):
    """x of shape (n, cin, h, w) laid out as asked:
    nchw | channels_last | strided (every other pixel of a channels_last map) |
    sliced (x[..., 1:] of a wider map) | expand (batch stride 0) | nchw_sliced_c (channel slice)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(dtype).to(device)  # noqa: E731
    if layout == "nchw":
        x = r(n, cin, h, w)
    elif layout == "channels_last":
        x = r(n, cin, h, w).contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = r(n, cin, 2 * h, 2 * w).contiguous(memory_format=torch.channels_last)[:, :, ::2, ::2]
    elif layout == "sliced":
        x = r(n, cin, h, w + 1).contiguous(memory_format=torch.channels_last)[..., 1:]
    elif layout == "expand":
        x = r(1, cin, h, w).contiguous(memory_format=torch.channels_last).expand(n, cin, h, w)
    elif layout == "nchw_sliced_c":
        x = r(n, cin + 3, h, w)[:, 2:cin + 2]
    else:
        raise ValueError(layout)
    assert x.shape == (n, cin, h, w)
    return x


def poisoned_out(n, c, h, w, dtype, device, kind):
    """(out, buffer, (c0, c1)): ``out`` to pass as out=, inside ``buffer`` at channels [c0, c1);
    everything NaN."""
    if kind == "slice":  # a channel slice of a larger channels_last buffer (a concat's slot)
        big = torch.full((n, c + 24, h, w), float("nan"), dtype=dtype, device=device)
        big = big.contiguous(memory_format=torch.channels_last)
        return big[:, 16:16 + c], big, (16, 16 + c)
    if kind == "nchw":
        big = torch.full((n, c, h, w), float("nan"), dtype=dtype, device=device)
        return big, big, (0, c)
    big = torch.full((n, c, h, w), float("nan"), dtype=dtype, device=device).contiguous(
        memory_format=torch.channels_last)
    return big, big, (0, c)


# ----------------------------------------------------------------------------------------------
# Checks

def branch_slices(args):
    c1, c3, c5, cp = args[0].shape[0], args[4].shape[0], args[8].shape[0], args[10].shape[0]
    edges = [0, c1, c1 + c3, c1 + c3 + c5, c1 + c3 + c5 + cp]
    return [(name, edges[i], edges[i + 1]) for i, name in enumerate(("1x1", "3x3", "5x5", "pool_proj"))]


def reference(x, args, relu, dtype):
    return inception_reference(x.to(dtype), *[a.to(dtype) if a is not None else None for a in args],
                               relu=relu)


def check_close(y, x, args, relu, truth_dtype=torch.float64):
    """Compare y to the reference in ``truth_dtype`` branch by branch (see the module docstring)."""
    assert y.dtype == x.dtype
    truth = reference(x, args, relu, truth_dtype)
    assert not torch.isnan(y).any(), "unwritten (NaN) or NaN-producing output elements"
    own = None if x.dtype == torch.float32 else reference(x, args, relu, x.dtype)
    for name, c0, c1 in branch_slices(args):
        t = truth[:, c0:c1].double()
        scale = max(t.abs().max().item(), 1e-6)
        err = (y[:, c0:c1].double() - t).abs().max().item()
        if x.dtype == torch.float32:
            tol = 1e-4 * scale
            assert err <= tol, f"branch {name}: max error {err:.3g} > {tol:.3g} (1e-4 of {scale:.3g})"
        else:
            own_err = (own[:, c0:c1].double() - t).abs().max().item()
            tol = 2 * own_err + EPS[x.dtype] * scale
            assert err <= tol, (f"branch {name}: max error {err:.3g} > {tol:.3g} (2x the reference's own "
                                f"{x.dtype} error {own_err:.3g} + {EPS[x.dtype]:.2g} x scale {scale:.3g})")


def run_case(name, hw, dtype, k5, bias, relu, layout, out_kind, n=1, merged=True, kxk_cl=False,
             device="cpu"):
    cin, c1, r3, c3, r5, c5, cp, _ = TABLE1[name]
    h, w = hw
    args = make_weights(name, k5=k5, dtype=dtype, device=device, bias=bias, merged=merged,
                        kxk_channels_last=kxk_cl)
    x = make_input(n, cin, h, w, layout, dtype, device)
    if out_kind == "new":
        y = googlenet_fast.inception(x, *args, relu=relu, backend="triton")
        assert y.shape == (n, c1 + c3 + c5 + cp, h, w)
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            assert y.is_contiguous(memory_format=torch.channels_last)
    else:
        out, big, (o0, o1) = poisoned_out(n, c1 + c3 + c5 + cp, h, w, dtype, device, out_kind)
        y = googlenet_fast.inception(x, *args, relu=relu, out=out, backend="triton")
        assert y is out
        outside = torch.cat([big[:, :o0], big[:, o1:]], 1)
        assert torch.isnan(outside).all(), "wrote outside the output's channel slice"
    check_close(y, x, args, relu)
    return y


# ----------------------------------------------------------------------------------------------
# Interpreter tests (CPU)

# Each Table-1 module twice (fp32 and fp16), the features spread over the cases so that every one
# of them (1x1 / 2x2 / odd non-square maps, batch 2, K5 = 3 and 5, bias or not, relu or not, the
# input layouts, out= slices and NCHW outputs, merged or separate 1x1 weights, OIHW or
# channels_last KxK weights) meets several modules and both dtypes.
CASES = [
    # name, (h, w), dtype, k5, bias, relu, input layout, out, batch, merged 1x1, KxK channels_last
    ("3a", (1, 1), torch.float32, 3, True, True, "channels_last", "slice", 1, True, True),
    ("3a", (3, 5), torch.float16, 5, False, False, "strided", "new", 2, False, False),
    ("3b", (2, 2), torch.float16, 5, True, True, "nchw", "new", 1, True, False),
    ("3b", (5, 3), torch.float32, 3, False, True, "sliced", "slice", 1, False, True),
    ("4a", (3, 5), torch.float32, 5, True, False, "strided", "slice", 1, True, False),
    ("4a", (1, 1), torch.float16, 3, True, True, "expand", "cl", 2, True, True),
    ("4b", (5, 3), torch.float16, 3, True, True, "channels_last", "slice", 1, False, True),
    ("4b", (2, 2), torch.float32, 5, True, True, "nchw_sliced_c", "nchw", 2, True, False),
    ("4c", (2, 3), torch.float32, 3, False, False, "channels_last", "new", 1, True, True),
    ("4c", (3, 5), torch.float16, 5, True, True, "sliced", "slice", 1, True, False),
    ("4d", (3, 5), torch.float16, 5, True, True, "strided", "new", 1, False, False),
    ("4d", (1, 1), torch.float32, 3, True, False, "nchw", "nchw", 1, True, True),
    ("4e", (2, 2), torch.float32, 5, True, True, "expand", "slice", 2, True, True),
    ("4e", (5, 3), torch.float16, 3, False, True, "channels_last", "cl", 1, True, False),
    ("5a", (1, 1), torch.float16, 3, True, False, "channels_last", "slice", 1, True, True),
    ("5a", (3, 5), torch.float32, 5, True, True, "channels_last", "new", 1, False, False),
    ("5b", (3, 5), torch.float32, 3, True, True, "channels_last", "slice", 1, True, True),
    ("5b", (2, 2), torch.float16, 5, False, False, "nchw", "new", 2, True, False),
]


def _case_id(c):
    name, (h, w), dtype, k5, bias, relu, layout, out, n, merged, cl = c
    return (f"{name}-{n}x{h}x{w}-{str(dtype)[6:]}-k5={k5}-{'bias' if bias else 'nobias'}-"
            f"{'relu' if relu else 'norelu'}-{layout}-out={out}-{'merged' if merged else 'sep'}-"
            f"{'kxkcl' if cl else 'oihw'}")


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_table1_interpreter(interp, case):
    name, hw, dtype, k5, bias, relu, layout, out, n, merged, cl = case
    run_case(name, hw, dtype, k5, bias, relu, layout, out, n=n, merged=merged, kxk_cl=cl)


def test_bfloat16_interpreter(interp):
    """bf16 under the interpreter (computed in fp32 there, rounded to nearest even like the GPU)."""
    run_case("4b", (3, 5), torch.bfloat16, 5, True, True, "channels_last", "slice", n=1)
    run_case("3a", (2, 2), torch.bfloat16, 3, False, False, "nchw", "new", n=2)


def test_pool_padding_is_minus_inf(interp):
    """Strictly negative input, no ReLU: a zero-padded max pool would give 0 at the borders."""
    args = make_weights("3a", bias=False)
    x = -(make_input(1, 192, 3, 5).abs() + 1.0)
    y = googlenet_fast.inception(x, *args, relu=False, backend="triton")
    check_close(y, x, args, relu=False)
    # and the pool branch really differs from what zero padding gives
    cp0 = 64 + 128 + 32
    zero_pad = torch.nn.functional.conv2d(
        torch.nn.functional.pad(x.double(), (1, 1, 1, 1)).unfold(2, 3, 1).unfold(3, 3, 1).amax((-1, -2)),
        args[10].double())
    assert (y[:, cp0:].double() - zero_pad).abs().max() > 0.1


def test_nan_propagates(interp):
    """NaN in x propagates through the pool's max and the ReLU as in PyTorch."""
    args = make_weights("3a")
    x = make_input(1, 192, 3, 5).clone()
    x[0, 5, 1, 2] = float("nan")
    y = googlenet_fast.inception(x, *args, relu=True, backend="triton")
    ref = reference(x, args, True, torch.float64)
    assert torch.equal(torch.isnan(y), torch.isnan(ref))
    assert torch.isnan(y).any()
    keep = ~torch.isnan(ref)
    assert (y.double()[keep] - ref[keep]).abs().max() <= 1e-4 * ref[keep].abs().max()


def test_int64_offsets_interpreter(interp, monkeypatch):
    """The 64-bit offset variant computes the same values (forced at a small size here; the GPU
    test below runs it on tensors over 2**31 elements)."""
    monkeypatch.setattr(tb.plan, "FORCE_INT64", True)
    run_case("4e", (3, 5), torch.float32, 5, True, True, "channels_last", "slice", n=2)


def test_zero_batch(interp):
    args = make_weights("3a")
    x = make_input(1, 192, 3, 5)[:0]
    y = googlenet_fast.inception(x, *args, backend="triton")
    assert y.shape == (0, 256, 3, 5)


def test_env_var_selects_triton(interp, monkeypatch):
    """GOOGLENET_FAST_BACKEND=triton routes backend='auto' calls to the Triton op."""
    calls = []
    real = tb.forward_op._launch

    def spy(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(tb.forward_op, "_launch", spy)
    monkeypatch.setenv("GOOGLENET_FAST_BACKEND", "triton")
    args = make_weights("3a")
    x = make_input(1, 192, 2, 2)
    y = googlenet_fast.inception(x, *args)
    assert calls, "the triton backend did not run"
    check_close(y, x, args, True)


def test_merged_weight_read_in_place():
    """Adjacent sibling 1x1 weights are the merged GEMM operand without a copy; others are
    concatenated."""
    args = make_weights("3a", merged=True)
    w1, w3r, w5r = (tb._unit_k(args[i]) for i in (0, 2, 6))
    m = tb._merged_1x1(w1, w3r, w5r)
    assert m.data_ptr() == args[0].data_ptr() and m.shape == (64 + 96 + 16, 192)
    assert torch.equal(m, torch.cat([w1, w3r, w5r]))
    sep = make_weights("3a", merged=False)
    m2 = tb._merged_1x1(*(tb._unit_k(sep[i]) for i in (0, 2, 6)))
    assert m2.data_ptr() not in (sep[0].data_ptr(), sep[2].data_ptr())


def test_opcheck_interpreter(interp):
    """torch.library.opcheck on both ops (schema, fake kernel, autograd registration,
    AOTAutograd), CPU tensors under the interpreter."""
    args = make_weights("3a", bias=True)
    x = make_input(1, 192, 1, 2)
    torch.library.opcheck(torch.ops.googlenet_fast.inception_triton.default, (x, *args, True))
    out = torch.empty(1, 256, 1, 2).contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.googlenet_fast.inception_triton_out.default, (x, *args, True, out))


def test_torch_compile_interpreter(interp):
    """torch.compile(fullgraph=True) traces the op (under the interpreter the launches stay an
    opaque op; on a GPU they are triton kernel nodes, see the next test) and matches eager."""
    args = make_weights("3a")
    x = make_input(1, 192, 2, 3)

    def f(x, *a):
        return googlenet_fast.inception(x, *a, relu=True, backend="triton") * 2

    torch._dynamo.reset()
    y = torch.compile(f, fullgraph=True, backend="aot_eager")(x, *args)
    torch.testing.assert_close(y, f(x, *args), rtol=0, atol=0)
    check_close(y / 2, x, args, True)


@pytest.mark.parametrize("pooled", [False, True], ids=["plain", "pooled"])
@pytest.mark.parametrize("autotune", ["1", "0"])
def test_aot_graph_has_two_triton_launches(monkeypatch, autotune, pooled):
    """Traced for CUDA (fake tensors; no GPU needed), the op decomposes into exactly two triton
    kernel launches: stage 1 and stage 2 (autotuned kernels, or one configuration each); the
    pooled op too (its max pool is in stage 1: no third launch)."""
    monkeypatch.setenv(tb.AUTOTUNE_ENV, autotune)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    from torch._functorch.aot_autograd import aot_function
    from torch._subclasses.fake_tensor import FakeTensorMode
    import logging

    graphs = []

    def compiler(gm, _):
        graphs.append(gm)
        return gm

    # Without a GPU, torch cannot run Triton's mutation analysis and says so (then assumes every
    # input is mutated, which is safe); keep that warning out of the test log.
    wrap_log = logging.getLogger("torch._higher_order_ops.triton_kernel_wrap")
    wrap_log.disabled = True
    try:
        with FakeTensorMode():
            args = [a.to("cuda") if a is not None else None for a in make_weights("4b", k5=5)]
            if pooled:  # maxpool3's 28x28 -> 14x14 in stage 1's loaders
                x = torch.empty(2, 512, 28, 28, device="cuda").contiguous(memory_format=torch.channels_last)
                f = lambda x, *a: torch.ops.googlenet_fast.inception_pooled_triton(x, *a, True, 3, 2)  # noqa: E731
            else:
                x = torch.empty(2, 512, 14, 14, device="cuda").contiguous(memory_format=torch.channels_last)
                f = lambda x, *a: torch.ops.googlenet_fast.inception_triton(x, *a, True)  # noqa: E731
            y = aot_function(f, fw_compiler=compiler)(x, *args)
    finally:
        wrap_log.disabled = False
    assert y.shape == (2, 160 + 224 + 64 + 64, 14, 14) and y.device.type == "cuda"
    assert y.is_contiguous(memory_format=torch.channels_last)
    code = graphs[0].code
    assert code.count("triton_kernel_wrapper_functional(") == 2, code


# ----------------------------------------------------------------------------------------------
# Bad input

def test_bad_dtype(interp):
    args = make_weights("3a", dtype=torch.float64)
    x = make_input(1, 192, 2, 2, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"x: the triton backend supports float32, float16 and bfloat16"):
        googlenet_fast.inception(x, *args, backend="triton")
    with pytest.raises(TypeError, match=r"^x: "):
        tb.inception_op().default(x, *args, True)


def test_integer_input(interp):
    args = make_weights("3a")
    x = torch.zeros(1, 192, 2, 2, dtype=torch.uint8)
    with pytest.raises(TypeError, match=r"^x: "):
        googlenet_fast.inception(x, *args, backend="triton")


def test_weight_dtype_mismatch(interp):
    args = make_weights("3a")
    args[4] = args[4].half()
    x = make_input(1, 192, 2, 2)
    with pytest.raises(TypeError, match=r"w_3x3: expected dtype torch.float32"):
        tb.inception_op().default(x, *args, True)


def test_cpu_tensor_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    args = make_weights("3a")
    x = make_input(1, 192, 2, 2)
    with pytest.raises(ValueError, match=r"needs CUDA tensors.*TRITON_INTERPRET=1"):
        googlenet_fast.inception(x, *args, backend="triton")
    with pytest.raises(ValueError, match=r"^x: the triton backend needs CUDA tensors"):
        tb.inception_op().default(x, *args, True)


def test_non_4d_input(interp):
    args = make_weights("3a")
    x = make_input(1, 192, 2, 2)[0]
    with pytest.raises(ValueError, match=r"^x: expected a 4-D tensor"):
        googlenet_fast.inception(x, *args, backend="triton")
    with pytest.raises(ValueError, match=r"^x: expected a 4-D tensor"):
        tb.inception_op().default(x, *args, True)


def test_bad_out(interp):
    args = make_weights("3a")
    x = make_input(1, 192, 2, 2)
    out = torch.empty(1, 255, 2, 2)
    with pytest.raises(ValueError, match=r"^out: expected shape"):
        tb.inception_op().out(x, *args, True, out=out)
    out = torch.empty(1, 256, 2, 2, dtype=torch.float16)
    with pytest.raises(TypeError, match=r"^out: expected dtype"):
        tb.inception_op().out(x, *args, True, out=out)


def test_unsupported_device(interp):
    args = [a.to("meta") if a is not None else None for a in make_weights("3a")]
    x = torch.empty(1, 192, 2, 2, device="meta")
    with pytest.raises(ValueError, match=r"triton.*needs CUDA tensors"):
        googlenet_fast.inception(x, *args, backend="triton")


def test_tf32_follows_torch_flags():
    """fp32 dots are IEEE unless torch.backends.cuda.matmul allows TF32; half dtypes ignore it."""
    def plan(dtype):
        args = [a.to("meta") if a is not None else None for a in make_weights("3a", dtype=dtype)]
        x = torch.empty(1, 192, 2, 2, device="meta", dtype=dtype)
        return tb.plan_launch(x, *args, True, torch.empty(1, 256, 2, 2, device="meta", dtype=dtype),
                              interpret=False)

    # Saved and restored by hand: cuBLASModule answers fp32_precision through __getattr__, which
    # monkeypatch's teardown cannot always undo (it tried delattr in a fresh process).
    matmul = torch.backends.cuda.matmul
    old = matmul.fp32_precision
    try:
        matmul.fp32_precision = "ieee"
        assert plan(torch.float32).args1["ALLOW_TF32"] is False
        matmul.fp32_precision = "tf32"
        assert plan(torch.float32).args1["ALLOW_TF32"] is True
        assert plan(torch.float32).args2["ALLOW_TF32"] is True
        assert plan(torch.bfloat16).args1["ALLOW_TF32"] is False
    finally:
        matmul.fp32_precision = old


def test_interpreter_tiles_shrink():
    t = configs.interpret_tile(1, 15, 96, 16)
    assert t.BLOCK_M == 16 and t.BLOCK_K == configs.INTERPRET_STAGE1.BLOCK_K
    t = configs.interpret_tile(2, 1000, 96, 16)
    assert t.BLOCK_M == 64 and t.BLOCK_K == 128


# ----------------------------------------------------------------------------------------------
# The pooled op (googlenet_fast::inception_pooled_triton): the module over
# max_pool2d(x, k, s, ceil_mode=True), the pool computed in stage 1's loaders.  Reference: torch's
# max_pool2d (exact in any dtype), then the reference module in float64 (check_close).

@pytest.fixture
def poison_pooled(monkeypatch):
    """The pooled op's output starts as NaN (every element must be written)."""
    real = tb.forward_op._new_pooled_output
    monkeypatch.setattr(tb.forward_op, "_new_pooled_output", lambda *a: real(*a).fill_(float("nan")))
    yield


def run_pooled_case(name, xhw, pool, dtype, layout, n=1, bias=True, relu=True, k5=3, x=None):
    """The pooled op on a Table-1 module's weights and an (n, cin, *xhw) input laid out as asked
    (or ``x``), against max_pool2d + the reference; returns (y, x, args)."""
    cin, c1, r3, c3, r5, c5, cp, _ = TABLE1[name]
    args = make_weights(name, k5=k5, dtype=dtype, bias=bias)
    if x is None:
        x = make_input(n, cin, xhw[0], xhw[1], layout, dtype)
    y = tb.inception_pooled(x, *args, relu, pool=pool)
    pooled = torch.nn.functional.max_pool2d(x, pool[0], pool[1], ceil_mode=True)
    assert y.shape == (x.shape[0], c1 + c3 + c5 + cp) + tuple(pooled.shape[2:])
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    check_close(y, pooled, args, relu)
    return y, x, args


# Pre-pool maps where ceil mode adds a partial last window (7, 5: 3x3/2 and 2x2/2; 8: 3x3/2) and
# where it does not (8, 6: 2x2/2), a window hanging over a 2-pixel map, the input layouts.
POOLED_CASES = [
    # name, pre-pool (h, w), (k, s), dtype, layout, batch, bias, relu, k5
    ("4a", (7, 7), (3, 2), torch.float32, "channels_last", 2, True, True, 3),
    ("4a", (8, 8), (3, 2), torch.float16, "nchw", 1, True, False, 5),
    ("5a", (5, 6), (2, 2), torch.float32, "nchw_sliced_c", 1, False, True, 3),
    ("5a", (8, 7), (2, 2), torch.float16, "strided", 2, True, True, 5),
    ("3a", (6, 5), (3, 2), torch.float16, "sliced", 1, True, True, 3),
    ("3a", (7, 7), (2, 2), torch.float32, "expand", 2, True, True, 3),
    ("3a", (2, 3), (3, 2), torch.float32, "channels_last", 1, True, False, 3),
]


@pytest.mark.parametrize("case", POOLED_CASES, ids=[
    f"{c[0]}-{c[1][0]}x{c[1][1]}-{c[2][0]}x{c[2][0]}s{c[2][1]}-{str(c[3])[6:]}-{c[4]}" for c in POOLED_CASES])
def test_pooled_interpreter(interp, poison_pooled, case):
    name, xhw, pool, dtype, layout, n, bias, relu, k5 = case
    run_pooled_case(name, xhw, pool, dtype, layout, n=n, bias=bias, relu=relu, k5=k5)


def test_pooled_bfloat16_interpreter(interp, poison_pooled):
    """bf16 (computed in fp32 under the interpreter, UPCAST)."""
    run_pooled_case("4a", (7, 7), (3, 2), torch.bfloat16, "channels_last")


def test_pooled_padding_is_minus_inf(interp, poison_pooled):
    """Strictly negative input, no ReLU: a tap past the map's edge (or a union tap outside the
    neighbouring windows) counted as 0 would win the max."""
    x = -(make_input(1, 192, 8, 7, "channels_last").abs() + 1.0)
    run_pooled_case("3a", None, (3, 2), torch.float32, None, relu=False, x=x)
    run_pooled_case("3a", None, (2, 2), torch.float32, None, relu=False, x=x)


def test_pooled_nan_propagates(interp):
    """A NaN in x reaches the pooled values whose window holds it, and from there the outputs,
    as through torch's max_pool2d and the module."""
    args = make_weights("3a")
    x = make_input(1, 192, 7, 7, "channels_last").clone()
    x[0, 5, 3, 4] = float("nan")
    y = tb.inception_pooled(x, *args, True, pool=(3, 2))
    ref = reference(torch.nn.functional.max_pool2d(x, 3, 2, ceil_mode=True), args, True, torch.float64)
    assert torch.equal(torch.isnan(y), torch.isnan(ref))
    assert torch.isnan(y).any() and not torch.isnan(y).all()
    keep = ~torch.isnan(ref)
    assert (y.double()[keep] - ref[keep]).abs().max() <= 1e-4 * ref[keep].abs().max()


def test_pooled_bad_arguments(interp):
    args = make_weights("3a")
    x = make_input(1, 192, 7, 7)
    op = torch.ops.googlenet_fast.inception_pooled_triton
    with pytest.raises(ValueError, match=r"^pool_k: expected a max pool kernel size in \[1, 5\], got 0"):
        op(x, *args, True, 0, 1)
    with pytest.raises(ValueError, match=r"^pool_k: .*got 6"):
        tb.inception_pooled(x, *args, pool=(6, 2))
    with pytest.raises(ValueError, match=r"^pool_s: expected a stride in \[1, pool_k = 3\]"):
        op(x, *args, True, 3, 0)
    with pytest.raises(ValueError, match=r"^pool_s: .*got 3"):
        tb.inception_pooled(x, *args, pool=(2, 3))
    with pytest.raises(ValueError, match=r"^x: a 3x3/2 ceil-mode max pool of a 1x7 map has an empty output"):
        tb.inception_pooled(make_input(1, 192, 1, 7), *args, pool=(3, 2))
    with pytest.raises(ValueError, match=r"^w_1x1: expected shape \(out, 191, 1, 1\)"):
        tb.inception_pooled(make_input(1, 191, 7, 7), *args)
    with pytest.raises(ValueError, match=r"^x: expected a 4-D tensor"):
        tb.inception_pooled(x[0], *args)
    bad = list(args)
    bad[10] = bad[10].half()
    with pytest.raises(TypeError, match=r"^w_pool_proj: expected dtype torch.float32"):
        tb.inception_pooled(x, *bad)
    with pytest.raises(TypeError, match=r"^x: the triton backend supports"):
        tb.inception_pooled(x.double(), *[a.double() if a is not None else None for a in args])


def test_pooled_cpu_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match=r"^x: the triton backend needs CUDA tensors"):
        tb.inception_pooled(make_input(1, 192, 7, 7), *make_weights("3a"))


def test_pooled_is_eval_only(interp):
    """No backward: a call that would record one raises (at the call); without grad mode it runs."""
    args = make_weights("3a")
    x = make_input(1, 192, 5, 4)
    with pytest.raises(RuntimeError, match=r"inception_pooled_triton is eval-only"):
        tb.inception_pooled(x.clone().requires_grad_(), *args)
    wp = args[10].clone().requires_grad_()
    with pytest.raises(RuntimeError, match=r"eval-only"):
        tb.inception_pooled(x, *args[:10], wp, args[11])
    with torch.no_grad():
        y = tb.inception_pooled(x.clone().requires_grad_(), *args[:10], wp, args[11])
    assert not y.requires_grad
    check_close(y, torch.nn.functional.max_pool2d(x, 3, 2, ceil_mode=True), args, True)


def test_pooled_opcheck_interpreter(interp):
    """torch.library.opcheck (schema, fake kernel, autograd registration, AOTAutograd)."""
    args = make_weights("3a", bias=True)
    torch.library.opcheck(torch.ops.googlenet_fast.inception_pooled_triton.default,
                          (make_input(1, 192, 5, 4), *args, True, 3, 2))
    torch.library.opcheck(torch.ops.googlenet_fast.inception_pooled_triton.default,
                          (make_input(2, 192, 4, 5, "nchw"), *args, False, 2, 2))


def test_pooled_torch_compile_interpreter(interp):
    args = make_weights("4a")
    x = make_input(1, 480, 7, 6)

    def f(x, *a):
        return tb.inception_pooled(x, *a, pool=(3, 2)) * 2

    torch._dynamo.reset()
    y = torch.compile(f, fullgraph=True, backend="aot_eager")(x, *args)
    torch.testing.assert_close(y, f(x, *args), rtol=0, atol=0)
    check_close(y / 2, torch.nn.functional.max_pool2d(x, 3, 2, ceil_mode=True), args, True)


def test_pooled_plan():
    """The pooled launch plan: stage 1 reads the pre-pool map (XH, XW) and covers the pooled
    pixels; stage 2 runs on the pooled grid; the plain plan has IN_POOL_K = 0 and XH, XW = H, W."""
    args = [a.to("meta") if a is not None else None for a in make_weights("4a", dtype=torch.bfloat16)]
    x = torch.empty(2, 480, 28, 28, device="meta", dtype=torch.bfloat16)
    out = torch.empty(2, 512, 14, 14, device="meta", dtype=torch.bfloat16)
    plan = tb.plan_launch(x, *args, True, out, interpret=False, pool=(3, 2))
    assert plan.P == 2 * 14 * 14
    assert (plan.args1["XH"], plan.args1["XW"], plan.args1["H"], plan.args1["W"]) == (28, 28, 14, 14)
    assert (plan.args1["IN_POOL_K"], plan.args1["IN_POOL_S"]) == (3, 2)
    assert (plan.args2["H"], plan.args2["W"]) == (14, 14)
    plain = tb.plan_launch(out[:, :480], *args, True, out, interpret=False)
    assert (plain.args1["IN_POOL_K"], plain.args1["XH"], plain.args1["H"]) == (0, 14, 14)
    assert configs.heuristic_tile(1, plan.P, True, pooled=True) in configs.STAGE1_POOLED_HALF


# ----------------------------------------------------------------------------------------------
# GPU: the same checks at real sizes (Table-1 maps, batch 1/32/256)

# bf16 (the dtype the network runs in) everywhere; fp16 and fp32 on a subset (each distinct
# shape costs Triton compiles, and the GPU check has minutes, not hours).
GPU_CASES = ([(name, n, torch.bfloat16) for name in TABLE1 for n in (1, 32, 256)]
             + [(name, 32, torch.float16) for name in ("3a", "4b", "5b")]
             + [(name, 1, torch.float32) for name in TABLE1]
             + [(name, 32, torch.float32) for name in ("3b", "4e")])


def _meta_plan(name, n, hw, dtype, k5, layout="channels_last", out_kind="slice", merged=True, kxk_cl=True,
               relu=True):
    """The launch plan of a GPU case, built on meta tensors laid out as the case lays them out."""
    cin, c1, r3, c3, r5, c5, cp, _ = TABLE1[name]
    args = make_weights(name, k5=k5, dtype=dtype, device="meta", merged=merged, kxk_channels_last=kxk_cl)
    x = make_input(n, cin, hw[0], hw[1], layout, dtype, "meta")
    out = poisoned_out(n, c1 + c3 + c5 + cp, hw[0], hw[1], dtype, "meta", out_kind)[0]
    return tb.plan_launch(x, *args, relu, out, interpret=False)


def _precompile_job(job):
    """Worker: compile (into the shared Triton cache) what one GPU case will launch."""
    plan_kwargs, force_tile, autotune = job
    try:
        os.environ.pop("TRITON_INTERPRET", None)
        os.environ[tb.AUTOTUNE_ENV] = "1" if autotune else "0"
        tb.plan.FORCE_TILE = force_tile
        return tb.precompile(_meta_plan(**plan_kwargs))
    except Exception as e:  # the test itself will then compile (and report) it
        return f"{job}: {type(e).__name__}: {e}"


def _gpu_precompile_jobs():
    jobs = [(dict(name=name, n=n, hw=(TABLE1[name][-1],) * 2, dtype=dtype, k5=5 if n == 32 else 3), None, False)
            for name, n, dtype in GPU_CASES]
    jobs += [(dict(name="4b", n=8, hw=(14, 14), dtype=torch.bfloat16, k5=5), (t1, t2), False)
             for t1, t2 in zip(configs.STAGE1_HALF, configs.STAGE2_HALF)]
    jobs += [(dict(name="3b", n=2, hw=(28, 28), dtype=torch.float32, k5=5, layout="strided", out_kind="nchw",
                   relu=False), (t1, t2), False)
             for t1, t2 in zip(configs.STAGE1_FP32, configs.STAGE2_FP32)]
    jobs.append((dict(name="4e", n=32, hw=(14, 14), dtype=torch.bfloat16, k5=3), None, True))
    return jobs


def test_gpu_precompile_plans_build():
    """The GPU precompile jobs describe valid launches (checked here without a GPU)."""
    for plan_kwargs, _, _ in _gpu_precompile_jobs():
        plan = _meta_plan(**plan_kwargs)
        assert plan.P == plan_kwargs["n"] * plan_kwargs["hw"][0] * plan_kwargs["hw"][1]


@pytest.fixture(scope="module")
def gpu_precompiled():
    """Compile the GPU tests' Triton kernels in parallel first (one process per core, up to 16;
    Triton's on-disk cache then serves the tests), so that the GPU check's few minutes go to
    running them.  Best effort: whatever fails here is compiled by the test that needs it."""
    if not torch.cuda.is_available() or os.environ.get("GOOGLENET_FAST_NO_PRECOMPILE") == "1":
        return
    import multiprocessing as mp
    import time
    from concurrent.futures import ProcessPoolExecutor
    jobs = _gpu_precompile_jobs()
    t0 = time.time()
    with ProcessPoolExecutor(max_workers=min(16, os.cpu_count() or 1),
                             mp_context=mp.get_context("spawn")) as pool:
        results = list(pool.map(_precompile_job, jobs))
    errors = [r for r in results if isinstance(r, str)]
    print(f"\n[precompile] {sum(r for r in results if isinstance(r, int))} kernel variants for "
          f"{len(jobs)} GPU cases in {time.time() - t0:.1f} s ({len(errors)} failed)")
    for e in errors[:3]:
        print("[precompile]", e)


@pytest.mark.gpu
@pytest.mark.parametrize("name,n,dtype", GPU_CASES, ids=[f"{c[0]}-b{c[1]}-{str(c[2])[6:]}" for c in GPU_CASES])
def test_table1_gpu(gpu_precompiled, no_autotune, monkeypatch, name, n, dtype):
    """Real sizes, channels_last in and a channel slice out, poisoned; half precision against the
    fp32 reference (TF32 off) with the reference's own half error as the yardstick."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    cin, c1, r3, c3, r5, c5, cp, hw = TABLE1[name]
    k5 = 5 if n == 32 else 3  # the paper's 5x5 at batch 32, torchvision's 3x3 otherwise
    args = make_weights(name, k5=k5, dtype=dtype, device="cuda", kxk_channels_last=True)
    x = make_input(n, cin, hw, hw, "channels_last", dtype, "cuda")
    out, big, (o0, o1) = poisoned_out(n, c1 + c3 + c5 + cp, hw, hw, dtype, "cuda", "slice")
    y = tb.inception_op().out(x, *args, True, out=out)
    torch.cuda.synchronize()
    assert torch.isnan(torch.cat([big[:, :o0], big[:, o1:]], 1)).all()
    check_close(y, x, args, True, truth_dtype=torch.float64 if dtype == torch.float32 else torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("i", range(len(configs.STAGE1_HALF)))
def test_every_half_tile_gpu(gpu_precompiled, monkeypatch, i):
    """Each autotuning configuration computes the same result (bf16, paper 4b, batch 8)."""
    monkeypatch.setattr(tb.plan, "FORCE_TILE", (configs.STAGE1_HALF[i], configs.STAGE2_HALF[i]))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    run_case("4b", (14, 14), torch.bfloat16, 5, True, True, "channels_last", "slice", n=8,
             kxk_cl=True, device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("i", range(len(configs.STAGE1_FP32)))
def test_every_fp32_tile_gpu(gpu_precompiled, monkeypatch, i):
    monkeypatch.setattr(tb.plan, "FORCE_TILE", (configs.STAGE1_FP32[i], configs.STAGE2_FP32[i]))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    run_case("3b", (28, 28), torch.float32, 5, True, False, "strided", "nchw", n=2, device="cuda")


@pytest.mark.gpu
def test_layouts_gpu(no_autotune):
    """Strided, sliced, expanded and NCHW inputs; NCHW and new outputs; separate 1x1 weights and
    OIHW KxK weights (repacked per call)."""
    for layout, out in (("strided", "new"), ("sliced", "nchw"), ("expand", "slice"), ("nchw", "new")):
        run_case("4d", (14, 14), torch.bfloat16, 5, True, True, layout, out, n=4, merged=False,
                 device="cuda")


@pytest.mark.gpu
def test_int64_offsets_gpu(no_autotune):
    """An output of more than 2**31 elements (5b at 7x7, batch 42,800: 4.4 GB in bf16): the 64-bit
    offset variant runs, and the first and last images equal the reference."""
    cin, c1, r3, c3, r5, c5, cp, hw = TABLE1["5b"]
    cout = c1 + c3 + c5 + cp
    n = math.ceil(2 ** 31 / (cout * hw * hw)) + 1
    args = make_weights("5b", dtype=torch.bfloat16, device="cuda", kxk_channels_last=True)
    x = torch.empty(n, cin, hw, hw, dtype=torch.bfloat16, device="cuda").contiguous(
        memory_format=torch.channels_last)
    x[:2].copy_(make_input(2, cin, hw, hw, "channels_last", torch.bfloat16, "cuda", seed=3))
    x[2:-2].zero_()
    x[-2:].copy_(make_input(2, cin, hw, hw, "channels_last", torch.bfloat16, "cuda", seed=4))
    out = torch.full((n, cout, hw, hw), float("nan"), dtype=torch.bfloat16, device="cuda").contiguous(
        memory_format=torch.channels_last)
    assert out.numel() >= 2 ** 31
    tb.inception_op().out(x, *args, True, out=out)
    torch.cuda.synchronize()
    for sl in (slice(0, 2), slice(n - 2, n)):
        check_close(out[sl], x[sl], args, True, truth_dtype=torch.float32)
    assert not torch.isnan(out[n // 2]).any()
    del x, out
    torch.cuda.empty_cache()


@pytest.mark.gpu
def test_compile_and_cuda_graph_gpu(no_autotune):
    """torch.compile(fullgraph=True) with inductor, and CUDA graph capture, match eager."""
    args = make_weights("4a", dtype=torch.bfloat16, device="cuda", kxk_channels_last=True)
    x = make_input(8, 480, 14, 14, "channels_last", torch.bfloat16, "cuda")

    def f(x, *a):
        return torch.ops.googlenet_fast.inception_triton(x, *a, True)

    eager = f(x, *args)
    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True)(x, *args)
    torch.testing.assert_close(compiled, eager)
    g = torch.cuda.CUDAGraph()
    static_out = torch.empty_like(eager)
    tb.inception_op().out(x, *args, True, out=static_out)  # warm up (compile) outside capture
    torch.cuda.synchronize()
    static_out.fill_(float("nan"))
    with torch.cuda.graph(g):
        tb.inception_op().out(x, *args, True, out=static_out)
    g.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(static_out, eager, rtol=0, atol=0)


@pytest.mark.gpu
def test_opcheck_gpu(no_autotune):
    args = make_weights("3a", dtype=torch.float16, device="cuda", kxk_channels_last=True)
    x = make_input(2, 192, 5, 7, "channels_last", torch.float16, "cuda")
    torch.library.opcheck(torch.ops.googlenet_fast.inception_triton.default, (x, *args, True))


@pytest.mark.gpu
def test_autotuned_gpu(gpu_precompiled, monkeypatch):
    """The autotuned path (default) agrees with the reference too."""
    monkeypatch.delenv(tb.AUTOTUNE_ENV, raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    run_case("4e", (14, 14), torch.bfloat16, 3, True, True, "channels_last", "slice", n=32,
             kxk_cl=True, device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_pooled_gpu(no_autotune, monkeypatch, dtype):
    """Real sizes: maxpool3 -> 4a (batch 8, 28x28x480 -> 14x14) and maxpool4 -> 5a (2x2/2 and
    the paper's 3x3/2, 14x14x832 -> 7x7), poisoned output, against max_pool2d + the reference as
    test_table1_gpu checks (half precision against the fp32 reference, TF32 off)."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(tb.forward_op, "_new_pooled_output", lambda *a, real=tb.forward_op._new_pooled_output: real(*a).fill_(float("nan")))
    truth = torch.float64 if dtype == torch.float32 else torch.float32
    for name, xhw, pool in (("4a", 28, (3, 2)), ("5a", 14, (2, 2)), ("5a", 14, (3, 2))):
        args = make_weights(name, dtype=dtype, device="cuda", kxk_channels_last=True)
        x = make_input(8, TABLE1[name][0], xhw, xhw, "channels_last", dtype, "cuda")
        y = tb.inception_pooled(x, *args, True, pool=pool)
        torch.cuda.synchronize()
        assert y.shape[2:] == (xhw // 2, xhw // 2) and y.is_contiguous(memory_format=torch.channels_last)
        check_close(y, torch.nn.functional.max_pool2d(x, *pool, ceil_mode=True), args, True, truth_dtype=truth)


@pytest.mark.gpu
@pytest.mark.parametrize("half", [True, False], ids=["half", "fp32"])
def test_pooled_every_tile_gpu(monkeypatch, half):
    """Each pooled stage-1 configuration (the autotuner's set) computes the same result: 4a over
    a 26x26 pre-pool map (ceil mode's partial last window), NCHW input, batch 4."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    dtype = torch.bfloat16 if half else torch.float32
    args = make_weights("4a", dtype=dtype, device="cuda", kxk_channels_last=True)
    x = make_input(4, 480, 26, 26, "nchw", dtype, "cuda")
    pooled = torch.nn.functional.max_pool2d(x, 3, 2, ceil_mode=True)
    for t1 in configs.tiles(1, half, pooled=True):
        monkeypatch.setattr(tb.plan, "FORCE_TILE", (t1, configs.tiles(2, half)[0]))
        y = tb.inception_pooled(x, *args, True, pool=(3, 2))
        check_close(y, pooled, args, True, truth_dtype=torch.float64 if not half else torch.float32)


@pytest.mark.gpu
def test_pooled_autotuned_gpu(monkeypatch):
    """The autotuned pooled kernels (the default path) agree with the reference too."""
    monkeypatch.delenv(tb.AUTOTUNE_ENV, raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    args = make_weights("4a", dtype=torch.bfloat16, device="cuda", kxk_channels_last=True)
    x = make_input(32, 480, 28, 28, "channels_last", torch.bfloat16, "cuda")
    y = tb.inception_pooled(x, *args, True, pool=(3, 2))
    check_close(y, torch.nn.functional.max_pool2d(x, 3, 2, ceil_mode=True), args, True, truth_dtype=torch.float32)
