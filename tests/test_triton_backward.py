"""The Triton fused Inception backward (googlenet_fast::inception_backward_triton, issue 5 item 1)
on CPU tensors under Triton's interpreter.

Every gradient is compared with the reference module's vjp (backends/reference.py under
torch.func.vjp) computed in float64 on the same values; torch.autograd.gradcheck checks the
backward's float64 Jacobian against finite differences of the reference forward.  Shapes are tiny
(the interpreter costs ~2 ms per program step): a few channels, maps of at most 5x5.
"""
import pytest
import torch

triton = pytest.importorskip("triton")

import googlenet_fast  # noqa: E402
from googlenet_fast.backends import triton as tb  # noqa: E402
from googlenet_fast.backends.reference import inception_reference  # noqa: E402
from inception_cases import make_module_args as make  # noqa: E402  (x and the 12 weight/bias arguments)

NAMES = ("x", "w_1x1", "b_1x1", "w_3x3red", "b_3x3red", "w_3x3", "b_3x3", "w_5x5red", "b_5x5red",
         "w_5x5", "b_5x5", "w_pool_proj", "b_pool_proj")
# n, cin, h, w, ch1x1, ch3x3red, ch3x3, k3, ch5x5red, ch5x5, k5, pool_proj
TINY = (2, 5, 4, 3, 3, 4, 5, 3, 2, 3, 5, 2)
EPS = {torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}


@pytest.fixture(autouse=True)
def interp(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("GOOGLENET_FAST_BACKEND", raising=False)
    yield


def reference_grads(x, ws, gy, relu):
    """The reference module's vjp in float64: 13 gradients (None for absent biases)."""
    full = [t if t is None else t.double() for t in [x] + list(ws)]
    present = [i for i, t in enumerate(full) if t is not None]

    def f(*ts):
        args = list(full)
        for i, t in zip(present, ts):
            args[i] = t
        return inception_reference(*args, relu=relu)

    _, vjp = torch.func.vjp(f, *[full[i] for i in present])
    grads = vjp(gy.double())
    out = [None] * 13
    for i, g in zip(present, grads):
        out[i] = g
    return out


def check_grad(name, got, truth, dtype, own=None):
    """float32/float64: max |err| <= 1e-5 (1e-12) of the gradient's scale.  Half: <= 2x the
    reference's own error in that dtype + one unit of the dtype at the gradient's scale."""
    assert got.dtype == dtype, (name, got.dtype)
    assert got.shape == truth.shape, (name, got.shape, truth.shape)
    scale = max(truth.abs().max().item(), 1e-6)
    err = (got.double() - truth).abs().max().item()
    if dtype in (torch.float32, torch.float64):
        tol = (1e-5 if dtype == torch.float32 else 1e-12) * scale
    else:
        own_err = (own.double() - truth).abs().max().item()
        tol = 2 * own_err + EPS[dtype] * scale
    assert err <= tol, f"{name}: max error {err:.3g} > {tol:.3g} (scale {scale:.3g})"


def leaves(x, ws, dtype, x_layout="nchw"):
    xs = x.to(dtype)
    if x_layout == "channels_last":
        xs = xs.contiguous(memory_format=torch.channels_last)
    xs = xs.detach().requires_grad_()
    wl = [None if t is None else t.to(dtype).detach().requires_grad_() for t in ws]
    return xs, wl


def run_autograd(cfg, dtype=torch.float32, relu=True, bias=True, grad_kind="dense", ties=False,
                 x_layout="nchw", seed=0):
    """Forward with backend='triton' then backward through the op's autograd; compare every
    gradient with the float64 reference vjp."""
    x0, ws0 = make(*cfg, bias=bias, seed=seed, ties=ties)
    x, ws = leaves(x0, ws0, dtype, x_layout)
    y = googlenet_fast.inception(x, *ws, relu=relu, backend="triton")
    g = torch.Generator().manual_seed(seed + 7)
    if grad_kind == "expand":   # zero strides: one pixel's gradient broadcast over the map
        gy = torch.randn(1, y.shape[1], 1, 1, generator=g, dtype=torch.float64).expand(y.shape)
    elif grad_kind == "channels_last":
        gy = torch.randn(y.shape, generator=g, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    else:
        gy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    gyd = gy.to(dtype)
    if grad_kind == "expand":
        gyd = gy[:1, :, :1, :1].to(dtype).expand(y.shape)
        assert gyd.stride() == (0, 1, 0, 0) or 0 in gyd.stride()
    leaves_ = [x] + [t for t in ws if t is not None]
    grads = torch.autograd.grad(y, leaves_, gyd)
    truth = reference_grads(x0, ws0, gyd.double(), relu)
    idx = [i for i, t in enumerate([x] + ws) if t is not None]
    got = dict(zip(idx, grads))
    owns = {}
    if dtype in EPS:  # the reference's own error in this dtype sets the tolerance
        own_leaves = [t.detach().clone().requires_grad_() for t in leaves_]
        it = iter(own_leaves[1:])
        yo = inception_reference(own_leaves[0], *[None if t is None else next(it) for t in ws], relu=relu)
        owns = dict(zip(idx, torch.autograd.grad(yo, own_leaves, gyd)))
    for i, gt in got.items():
        check_grad(NAMES[i], gt, truth[i], dtype, owns.get(i))
    if x_layout == "channels_last":
        assert got[0].is_contiguous(memory_format=torch.channels_last)
    return got


# ----------------------------------------------------------------------------------------------
# Jacobian

class _RefForwardTritonBackward(torch.autograd.Function):
    """The reference forward with the Triton backward: gradcheck then checks the backward alone
    (the Triton forward has no float64)."""

    @staticmethod
    def forward(ctx, relu, x, *ws):
        y = inception_reference(x, *ws, relu=relu)
        ctx.relu = relu
        ctx.save_for_backward(x, *[w if w is not None else torch.empty(0) for w in ws], y)
        ctx.none = [w is None for w in ws]
        return y

    @staticmethod
    def backward(ctx, gy):
        saved = ctx.saved_tensors
        x, ws, y = saved[0], [None if n else t for t, n in zip(saved[1:13], ctx.none)], saved[13]
        mask = [bool(r) for r in ctx.needs_input_grad[1:]]
        grads = torch.ops.googlenet_fast.inception_backward_triton(gy, x, *ws, ctx.relu, y, mask)
        it = iter(grads)
        out = [next(it) if (m and t is not None) else None for m, t in zip(mask, [x] + ws)]
        return (None, *out)


@pytest.mark.parametrize("relu", [True, False])
def test_gradcheck_float64(relu):
    """float64 under the interpreter: the backward's Jacobian against finite differences."""
    x, ws = make(1, 3, 3, 3, 2, 2, 2, 3, 2, 2, 3, 2, bias=True, seed=3)
    args = [x.requires_grad_()] + [t.requires_grad_() for t in ws]
    assert torch.autograd.gradcheck(lambda *a: _RefForwardTritonBackward.apply(relu, *a), args,
                                    fast_mode=True, eps=1e-6, atol=1e-7, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# Against the reference vjp

@pytest.mark.parametrize("relu", [True, False])
def test_float32_all_grads(relu):
    run_autograd(TINY, torch.float32, relu=relu)


def test_float64_all_grads_op():
    """The op itself in float64 (interpreter): all 13 gradients at 1e-12."""
    x, ws = make(*TINY, seed=1)
    y = inception_reference(x, *ws, relu=True)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    grads = torch.ops.googlenet_fast.inception_backward_triton(gy, x, *ws, True, y, [True] * 13)
    truth = reference_grads(x, ws, gy, True)
    assert len(grads) == 13
    for i, g in enumerate(grads):
        check_grad(NAMES[i], g, truth[i], torch.float64)


def test_no_biases():
    run_autograd(TINY, torch.float32, relu=True, bias=False)


@pytest.mark.parametrize("k3,k5", [(1, 1), (3, 5), (5, 3)])
def test_kernel_sizes(k3, k5):
    n, cin, h, w, c1, r3, c3, _, r5, c5, _, cp = TINY
    run_autograd((n, cin, h, w, c1, r3, c3, k3, r5, c5, k5, cp), torch.float32, relu=True, seed=k3 + k5)


def test_expanded_grad_out():
    run_autograd(TINY, torch.float32, relu=True, grad_kind="expand")


def test_channels_last_grad_and_input():
    run_autograd(TINY, torch.float32, relu=False, grad_kind="channels_last", x_layout="channels_last")


def test_pool_ties_follow_torch():
    """Equal maxima in the pooling windows: the first maximum in row-major scan order gets the
    gradient, as torch's max_pool2d backward (the reference)."""
    run_autograd((1, 3, 5, 5, 2, 2, 2, 3, 2, 2, 3, 3), torch.float32, relu=False, ties=True)


def test_float16():
    run_autograd(TINY, torch.float16, relu=True, seed=4)


def test_bfloat16():
    run_autograd(TINY, torch.bfloat16, relu=True, seed=5)


def test_larger_channels():
    """Channels over one interpreter tile in the K loops (> 16 channels, several chunks)."""
    run_autograd((1, 40, 3, 4, 24, 20, 36, 3, 18, 20, 5, 17), torch.float32, relu=True, seed=6)


@pytest.mark.parametrize("which", [
    (0,),                       # grad x only
    (5, 9),                     # KxK weights only
    (2, 6, 10, 12),             # biases only (x's values not read)
    (4, 8),                     # reduce biases only (relu: their masks need x)
    (1, 3, 7, 11),              # 1x1 weights only
])
@pytest.mark.parametrize("relu", [True, False])
def test_output_mask_subsets(which, relu):
    """The op returns exactly the requested gradients, equal to the reference's; with a
    placeholder x (an expanded scalar) when none of them reads x."""
    x, ws = make(*TINY, dtype=torch.float32, seed=8)
    y = inception_reference(x, *ws, relu=relu)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(9))
    mask = [i in which for i in range(13)]
    xin = x
    if not tb.backward_needs_x(mask, relu):
        xin = torch.zeros((), dtype=x.dtype).expand(x.shape)
    grads = torch.ops.googlenet_fast.inception_backward_triton(gy, xin, *ws, relu, y if relu else None, mask)
    truth = reference_grads(x, ws, gy, relu)
    assert len(grads) == len(which)
    for i, g in zip(which, grads):
        check_grad(NAMES[i], g, truth[i], torch.float32)


def test_requires_grad_subset_autograd():
    """Only some leaves require grad: the autograd asks for those only (and the others stay None)."""
    x0, ws0 = make(*TINY, dtype=torch.float32, seed=10)
    ws = [t.clone() for t in ws0]
    ws[4].requires_grad_()   # w_3x3
    ws[11].requires_grad_()  # b_pool_proj
    y = googlenet_fast.inception(x0, *ws, relu=True, backend="triton")
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(11))
    g3, gbp = torch.autograd.grad(y, [ws[4], ws[11]], gy)
    truth = reference_grads(x0, ws0, gy, True)
    check_grad("w_3x3", g3, truth[5], torch.float32)
    check_grad("b_pool_proj", gbp, truth[12], torch.float32)


def test_zero_batch():
    x, ws = make(0, 3, 3, 3, 2, 2, 2, 3, 2, 2, 3, 2, dtype=torch.float32)
    y = inception_reference(x, *ws, relu=True)
    grads = torch.ops.googlenet_fast.inception_backward_triton(torch.zeros_like(y), x, *ws, True, y, [True] * 13)
    assert grads[0].shape == x.shape
    for g in grads[1:]:
        assert torch.equal(g, torch.zeros_like(g))


def test_int64_offsets(monkeypatch):
    monkeypatch.setattr(tb.plan, "FORCE_INT64", True)
    run_autograd(TINY, torch.float32, relu=True, seed=12)


# ----------------------------------------------------------------------------------------------
# Registration

def test_opcheck_backward_op():
    x, ws = make(*TINY, dtype=torch.float32, seed=13)
    y = inception_reference(x, *ws, relu=True)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(14))
    mask = [True] * 13
    mask[3] = False
    torch.library.opcheck(torch.ops.googlenet_fast.inception_backward_triton.default,
                          (gy, x, *ws, True, y, mask),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


def test_not_twice_differentiable():
    x0, ws0 = make(*TINY, dtype=torch.float32, seed=15)
    x = x0.requires_grad_()
    y = googlenet_fast.inception(x, *ws0, relu=True, backend="triton")
    (gx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="not twice differentiable"):
        gx.sum().backward()


def test_torch_compile_forward_backward():
    """torch.compile(fullgraph=True) traces forward and backward (aot_eager; under the
    interpreter the launches stay opaque ops)."""
    x0, ws0 = make(*TINY, dtype=torch.float32, seed=16)
    x = x0.clone().requires_grad_()
    ws = [t.clone().requires_grad_() for t in ws0]

    def f(x, *ws):
        return tb.inception_op().default(x, *ws, True).square().sum()

    loss = torch.compile(f, fullgraph=True, backend="aot_eager")(x, *ws)
    grads = torch.autograd.grad(loss, [x] + ws)
    y = inception_reference(x0, *ws0, relu=True)
    truth = reference_grads(x0, ws0, 2 * y, True)
    for i, g in enumerate(grads):
        check_grad(NAMES[i], g, truth[i], torch.float32)


def test_bad_arguments():
    x, ws = make(*TINY, dtype=torch.float32)
    y = inception_reference(x, *ws, relu=True)
    with pytest.raises(ValueError, match="out: the forward output is required"):
        torch.ops.googlenet_fast.inception_backward_triton(y, x, *ws, True, None, [True] * 13)
    with pytest.raises(ValueError, match="grad_out: expected shape"):
        torch.ops.googlenet_fast.inception_backward_triton(y[:, 1:], x, *ws, True, y, [True] * 13)
    with pytest.raises(TypeError, match="grad_out: expected dtype"):
        torch.ops.googlenet_fast.inception_backward_triton(y.double(), x, *ws, True, y, [True] * 13)


# ----------------------------------------------------------------------------------------------
# Train-mode BatchNorm forward stage (bn_train.py, issue 5 item 2)

def _bn_train_reference(x, ws, rw, rb, eps, dtype):
    """The plain PyTorch composition in ``dtype`` (statistics in at least float32)."""
    import torch.nn.functional as F
    w1, _, w3r, _, w3, _, w5r, _, w5, _, wp, _ = [None if t is None else t.to(dtype) for t in ws]
    x = x.to(dtype)
    r3 = w3r.shape[0]
    b1 = F.conv2d(x, w1)
    red = F.conv2d(x, torch.cat([w3r, w5r]))
    sdt = torch.float64 if dtype == torch.float64 else torch.float32
    var, mean = torch.var_mean(red.to(sdt), dim=(0, 2, 3), correction=0)
    a = F.relu((red.to(sdt) - mean[:, None, None]) * torch.rsqrt(var + eps)[:, None, None]
               * rw.to(sdt)[:, None, None] + rb.to(sdt)[:, None, None]).to(dtype)
    b2 = F.conv2d(a[:, :r3], w3, padding=w3.shape[-1] // 2)
    b3 = F.conv2d(a[:, r3:], w5, padding=w5.shape[-1] // 2)
    b4 = F.conv2d(F.max_pool2d(x, 3, 1, 1, ceil_mode=True), wp)
    return torch.cat([b1, b2, b3, b4], 1), red, mean, var


@pytest.mark.parametrize("dtype,k5,layout", [(torch.float32, 5, "nchw"), (torch.float16, 3, "channels_last"),
                                             (torch.float32, 3, "channels_last")])
def test_bn_train_forward(dtype, k5, layout):
    from googlenet_fast.backends.triton.bn_train import inception_bn_train_triton
    n, cin, h, w, c1, r3, c3, k3, r5, c5, _, cp = (2, 20, 4, 3, 6, 18, 20, 3, 7, 9, 5, 5)
    x0, ws0 = make(n, cin, h, w, c1, r3, c3, k3, r5, c5, k5, cp, bias=False, seed=20)
    x0 = x0 * 2 + 0.5   # batch statistics far from (0, 1)
    g = torch.Generator().manual_seed(21)
    rw = torch.rand(r3 + r5, generator=g, dtype=torch.float64) + 0.5
    rb = torch.randn(r3 + r5, generator=g, dtype=torch.float64) * 0.3
    eps = 1e-3
    x = x0.to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    ws = [None if t is None else t.to(dtype) for t in ws0]
    out, red, mean, var = inception_bn_train_triton(x, ws[0], ws[2], ws[4], ws[6], ws[8], ws[10],
                                                    rw.float(), rb.float(), eps)
    assert out.shape == (n, c1 + c3 + c5 + cp, h, w) and out.dtype == dtype
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert red.shape == (n, r3 + r5, h, w) and red.dtype == dtype
    assert red.is_contiguous(memory_format=torch.channels_last)
    assert mean.dtype == torch.float32 and var.dtype == torch.float32 and mean.shape == (r3 + r5,)
    # Truth: the composition in float64 on the same (rounded) values; half also against its own.
    t_out, t_red, t_mean, t_var = _bn_train_reference(x, ws, rw, rb, eps, torch.float64)
    own = _bn_train_reference(x, ws, rw, rb, eps, dtype) if dtype in EPS else None
    for i, (name, got, truth) in enumerate((("out", out, t_out), ("reduce", red, t_red),
                                            ("mean", mean, t_mean), ("var", var, t_var))):
        scale = max(truth.abs().max().item(), 1e-6)
        err = (got.double() - truth).abs().max().item()
        if dtype == torch.float32:
            tol = 1e-5 * scale
        else:
            tol = 2 * (own[i].double() - truth).abs().max().item() + EPS[dtype] * scale
        assert err <= tol, f"{name}: max error {err:.3g} > {tol:.3g} (scale {scale:.3g})"
