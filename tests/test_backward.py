"""The fused Inception backward on the CPU: googlenet_fast::inception_backward and the autograd of
googlenet_fast::inception (issue 5, items 1 and 3).

Every gradient is checked against the reference module's autograd (backends/reference.py) run in
float64 on the same values; gradcheck covers the op's own Jacobian in float64.
"""
import pytest
import torch
from torch import Tensor

from googlenet_fast import ops
from googlenet_fast.backends import native
from googlenet_fast.backends.reference import inception_reference
from googlenet_fast.ops import inception

from inception_cases import make_module_args

from googlenet_fast.table1 import TABLE1 as PAPER_TABLE1  # noqa: E402

pytestmark = pytest.mark.skipif(not native.available(), reason="googlenet_fast._C is not built")

# Table 1 of the paper: name -> (in_channels, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj).
TABLE1 = {name: cfg[:7] for name, cfg in PAPER_TABLE1.items()}
# Small maps per configuration (odd, even, non-square, tiny), and the 5x5 branch's kernel
# (5: the paper; 3: torchvision).
SMALL_MAPS = {"3a": (6, 5), "3b": (4, 7), "4a": (5, 5), "4b": (3, 4), "4c": (7, 3), "4d": (2, 2),
              "4e": (5, 6), "5a": (1, 1), "5b": (3, 3)}
K5 = {"3a": 5, "3b": 3, "4a": 5, "4b": 5, "4c": 3, "4d": 5, "4e": 5, "5a": 3, "5b": 5}

# n, cin, h, w, ch1x1, ch3x3red, ch3x3, k3, ch5x5red, ch5x5, k5, pool_proj
TINY = (2, 4, 5, 6, 3, 2, 3, 3, 2, 3, 5, 2)
NAMES = ("x",) + ops.WEIGHT_NAMES


make = make_module_args  # x and the 12 weight/bias arguments (tests/inception_cases.py)


def table1_args(name, dtype=torch.float32, bias=True, seed=0, n=2):
    cin, c1, r3, c3, r5, c5, cp = TABLE1[name]
    h, w = SMALL_MAPS[name]
    return make(n, cin, h, w, c1, r3, c3, 3, r5, c5, K5[name], cp, bias=bias, dtype=dtype, seed=seed)


def leaves(x, ws, which=None):
    """Detached copies that require grad (all present tensors, or the indices in `which`)."""
    out = []
    for i, t in enumerate([x] + list(ws)):
        if t is None:
            out.append(None)
        else:
            out.append(t.detach().clone(memory_format=torch.preserve_format).requires_grad_(
                which is None or i in which))
    return out[0], out[1:]


def grads_of(y_fn, x, ws, loss_fn):
    """Gradients of loss_fn(y_fn(x, ws)) for every argument that requires grad (None elsewhere)."""
    args = [x] + list(ws)
    wanted = [t for t in args if t is not None and t.requires_grad]
    gs = iter(torch.autograd.grad(loss_fn(y_fn(x, ws)), wanted))
    return [next(gs) if (t is not None and t.requires_grad) else None for t in args]


def fused(relu):
    return lambda x, ws: inception(x, *ws, relu=relu, backend="cpu")


def reference(relu):
    return lambda x, ws: inception_reference(x, *ws, relu=relu)


def to64(x, ws):
    """float64 leaves with the same values and the same requires_grad flags."""
    def c(t):
        if t is None:
            return None
        return t.detach().to(torch.float64).requires_grad_(t.requires_grad)
    return c(x), [c(t) for t in ws]


def rel_err(a: Tensor, ref: Tensor) -> float:
    ref = ref.to(torch.float64)
    scale = ref.abs().max().item()
    assert scale > 0, "reference gradient is all zeros: the comparison would prove nothing"
    return (a.to(torch.float64) - ref).abs().max().item() / scale


def assert_grads_match(got, ref, tol, names=NAMES):
    assert len(got) == len(ref)
    for name, g, r in zip(names, got, ref):
        assert (g is None) == (r is None), f"{name}: gradient presence differs ({g is None} vs {r is None})"
        if g is None:
            continue
        assert g.shape == r.shape, f"{name}: shape {tuple(g.shape)} vs {tuple(r.shape)}"
        assert torch.isfinite(g).all(), f"{name}: non-finite gradient"
        err = rel_err(g, r)
        assert err <= tol, f"{name}: max relative error {err:.3g} > {tol:g}"


def preactivations(x, ws):
    """The pre-ReLU values of the six convolutions (to keep gradcheck away from ReLU kinks)."""
    import torch.nn.functional as F
    w1, b1, w3r, b3r, w3, b3, w5r, b5r, w5, b5, wp, bp = ws
    r3 = F.conv2d(x, w3r, b3r)
    r5 = F.conv2d(x, w5r, b5r)
    pooled = F.max_pool2d(x, 3, 1, 1)
    return [F.conv2d(x, w1, b1), r3, F.conv2d(r3.relu(), w3, b3, padding=w3.shape[-1] // 2), r5,
            F.conv2d(r5.relu(), w5, b5, padding=w5.shape[-1] // 2), F.conv2d(pooled, wp, bp)]


@pytest.fixture
def one_thread():
    """gradcheck calls the op ~10^3 times on tensors of a few hundred elements, where OpenMP/BLAS
    threads only add wake-up latency (severe on a loaded 2-core machine); run it on one thread.
    The multi-threaded paths are checked at sizes that use them (test_parallel_paths)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------------------------
# gradcheck (float64)

@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [TINY, (1, 3, 1, 1, 2, 2, 2, 3, 1, 2, 3, 2), (2, 5, 2, 3, 2, 3, 2, 5, 2, 2, 3, 3)],
                         ids=["tiny-k3k5", "1x1map", "2x3map-k5k3"])
def test_gradcheck_float64(shape, bias, relu, one_thread):
    for seed in range(3, 100):
        x, ws = make(*shape, bias=bias, seed=seed)
        if not relu:
            break
        # relu: the finite differences (eps 1e-6) must not straddle a ReLU kink, so take the first
        # seed whose pre-activations all keep away from 0 (ReLU kinks are checked separately).
        with torch.no_grad():
            if min(p.abs().min().item() for p in preactivations(x, ws)) > 1e-3:
                break
    else:
        pytest.fail("no seed keeps the pre-activations away from the ReLU kink")
    x, ws = leaves(x, ws)
    present = [i for i, t in enumerate([x] + ws) if t is not None]

    def f(*ts):
        args = [None] * 13
        for i, t in zip(present, ts):
            args[i] = t
        return inception(args[0], *args[1:], relu=relu, backend="cpu")

    assert torch.autograd.gradcheck(f, [([x] + ws)[i] for i in present], eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
def test_relu_gradients_equal_reference_autograd_float64(bias):
    # relu=True at a size where some pre-activations sit near 0: the masks must be the forward's.
    x, ws = make(3, 6, 7, 5, 4, 3, 5, 3, 2, 4, 5, 3, bias=bias, seed=11)
    x, ws = leaves(x, ws)
    g = torch.randn(3, 4 + 5 + 4 + 3, 7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    loss = lambda y: (y * g).sum()  # noqa: E731
    assert_grads_match(grads_of(fused(True), x, ws, loss), grads_of(reference(True), x, ws, loss), 1e-10)


# ----------------------------------------------------------------------------------------------
# Table 1, fp32 against the float64 reference

@pytest.mark.parametrize("name", sorted(TABLE1))
def test_table1_fp32_gradients_equal_reference(name):
    x, ws = table1_args(name)
    if name in ("3b", "4e"):
        x = x.contiguous(memory_format=torch.channels_last)
    x, ws = leaves(x, ws)
    y_shape = inception_reference(x.detach(), *[None if t is None else t.detach() for t in ws]).shape
    g = torch.randn(y_shape, generator=torch.Generator().manual_seed(1))
    loss = lambda y: (y * g.to(y.dtype)).sum()  # noqa: E731
    got = grads_of(fused(True), x, ws, loss)
    ref = grads_of(reference(True), *to64(x, ws), loss)
    assert_grads_match(got, ref, 1e-4)


@pytest.mark.parametrize("threads", [1, 3])
def test_parallel_paths(threads):
    # Enough pixels (2156) for every pass to split into several blocks and chunks, whether
    # at::parallel_for runs them on threads (an OpenMP build; an odd thread count splits unevenly)
    # or in order; chunk borders fall inside image rows, so the pool routing crosses them.
    n = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        cin, c1, r3, c3, r5, c5, cp = TABLE1["4a"]
        x, ws = make(11, cin, 14, 14, c1, r3, c3, 3, r5, c5, 5, cp, dtype=torch.float32, seed=12)
        x, ws = leaves(x.contiguous(memory_format=torch.channels_last), ws)
        g = torch.randn(11, 512, 14, 14, generator=torch.Generator().manual_seed(3))
        loss = lambda y: (y * g.to(y.dtype)).sum()  # noqa: E731
        got = grads_of(fused(True), x, ws, loss)
        again = grads_of(fused(True), x, ws, loss)
        ref = grads_of(reference(True), *to64(x, ws), loss)
    finally:
        torch.set_num_threads(n)
    assert_grads_match(got, ref, 1e-4)
    for a, b in zip(got, again):  # per-thread partial sums are reduced in a fixed order
        assert torch.equal(a, b), "run-to-run differences"


MASKS = {
    "only-x": [0],
    "only-weights": [1, 3, 5, 7, 9, 11],
    "only-biases": [2, 4, 6, 8, 10, 12],
    "x-and-pool-proj": [0, 11, 12],
    "one-reduce-weight": [3],
    "kxk-weights": [5, 9],
}


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("subset", sorted(MASKS))
def test_output_mask_subsets(subset, relu):
    x, ws = table1_args("4a")
    x, ws = leaves(x, ws, which=set(MASKS[subset]))
    g = torch.randn(2, 512, 5, 5, generator=torch.Generator().manual_seed(2))
    loss = lambda y: (y * g.to(y.dtype)).sum()  # noqa: E731
    got = grads_of(fused(relu), x, ws, loss)
    ref = grads_of(reference(relu), *to64(x, ws), loss)
    assert [i for i, t in enumerate(got) if t is not None] == MASKS[subset]
    assert_grads_match(got, ref, 1e-4)


def test_op_returns_none_for_unrequested_and_missing_gradients():
    x, ws = make(*TINY, bias=True)
    ws[5] = None  # no b_3x3 (gradient slot 6)
    y = torch.ops.googlenet_fast.inception(x, *ws, True)
    gy = torch.randn_like(y)
    mask = [True, False, True, True, False, False, True, False, False, True, False, False, True]
    out = torch.ops.googlenet_fast.inception_backward(gy, x, *ws, True, y, mask)
    assert len(out) == 13
    for i, (g, m) in enumerate(zip(out, mask)):
        expect = m and ([x] + ws)[i] is not None
        assert (g is not None) == expect, f"{NAMES[i]}: expected {'a tensor' if expect else 'None'}"
    # the computed ones equal the all-gradients call
    full = torch.ops.googlenet_fast.inception_backward(gy, x, *ws, True, y, [True] * 13)
    for g, f in zip(out, full):
        if g is not None:
            torch.testing.assert_close(g, f, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------
# strides of grad_out and x (cases.md: strided-grad, strided-input)

def test_sum_backward_expanded_zero_stride_grad():
    x, ws = table1_args("3a")
    x, ws = leaves(x, ws)
    seen = []

    def f(x, ws):
        y = inception(x, *ws, backend="cpu")
        y.register_hook(lambda g: seen.append(g.stride()))
        return y

    got = grads_of(f, x, ws, lambda y: y.sum())
    assert seen and all(s == 0 for s in seen[0]), f"grad_out was not the expanded one: strides {seen}"
    ref = grads_of(reference(True), *to64(x, ws), lambda y: y.sum())
    assert_grads_match(got, ref, 1e-4)


def test_loss_on_channels_last_permute():
    # A per-pixel loss on the NHWC view: its gradient reaches y in channels_last strides.
    import torch.nn.functional as F
    x, ws = table1_args("4b")
    x, ws = leaves(x, ws)
    labels = torch.randint(0, 512, (2 * 3 * 4,), generator=torch.Generator().manual_seed(4))
    seen = []

    def f(x, ws):
        y = inception(x, *ws, backend="cpu")
        y.register_hook(lambda g: seen.append(g))
        return y

    loss = lambda y: F.cross_entropy(y.permute(0, 2, 3, 1).reshape(-1, 512).float(), labels)  # noqa: E731
    got = grads_of(f, x, ws, loss)
    assert seen[0].is_contiguous(memory_format=torch.channels_last) and not seen[0].is_contiguous()
    ref = grads_of(reference(True), *to64(x, ws), loss)
    assert_grads_match(got, ref, 1e-4)


@pytest.mark.parametrize("layout", ["channels_last", "strided", "offset"])
def test_strided_inputs(layout):
    x, ws = table1_args("4c", n=2)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = torch.randn(2, 512, 14, 6, generator=torch.Generator().manual_seed(9))[:, :, ::2, ::2]
    else:
        x = torch.randn(2, 512, 7, 4, generator=torch.Generator().manual_seed(9))[..., 1:]
    x.requires_grad_()
    ws = leaves(x, ws)[1]
    loss = lambda y: (y * y).sum()  # noqa: E731
    got = grads_of(fused(True), x, ws, loss)
    ref = grads_of(reference(True), *to64(x, ws), loss)
    assert_grads_match(got, ref, 1e-4)
    if layout == "channels_last":
        assert got[0].is_contiguous(memory_format=torch.channels_last)


# ----------------------------------------------------------------------------------------------
# max pool: ties, -inf padding, NaN

@pytest.mark.parametrize("values,relu", [("ties", False), ("ties", True), ("negative", False)])
def test_max_pool_routing_matches_reference(values, relu):
    gen = torch.Generator().manual_seed(6)
    x, ws = make(2, 6, 6, 7, 3, 3, 4, 3, 2, 3, 5, 5, seed=6)
    if values == "ties":  # integers in float: most windows hold repeated maxima
        x = torch.randint(-2, 3, x.shape, generator=gen).to(torch.float64)
        x[0, 0] = 1.0  # a whole channel of one value: every window ties everywhere
    else:  # strictly negative: padding must act as -inf, never 0
        x = -1.0 - torch.rand(x.shape, generator=gen, dtype=torch.float64)
    x, ws = leaves(x, ws)
    g = torch.randn(2, 3 + 4 + 3 + 5, 6, 7, dtype=torch.float64, generator=gen)
    loss = lambda y: (y * g).sum()  # noqa: E731
    got = grads_of(fused(relu), x, ws, loss)
    ref = grads_of(reference(relu), x, ws, loss)
    assert_grads_match(got, ref, 1e-12)


def test_ties_fp32_route_like_reference():
    # Only the pool-projection path, so a wrongly routed tie cannot hide in other terms.
    gen = torch.Generator().manual_seed(8)
    x, ws = make(2, 16, 5, 5, 2, 2, 2, 3, 2, 2, 3, 8, dtype=torch.float32, seed=8)
    x = torch.randint(0, 2, x.shape, generator=gen).float().requires_grad_()
    ws = leaves(x, ws)[1]
    for i in range(10):  # zero the other branches' weights: grad x comes from the pool only
        if ws[i] is not None:
            ws[i] = torch.zeros_like(ws[i]).requires_grad_()
    loss = lambda y: (y[:, -8:] * torch.arange(1.0, 9.0).view(1, 8, 1, 1)).sum()  # noqa: E731
    got = grads_of(fused(False), x, ws, loss)[0]
    ref = grads_of(reference(False), x, ws, loss)[0]
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)


def test_nan_input_routes_like_torch():
    x, ws = make(1, 3, 5, 5, 2, 2, 2, 3, 2, 2, 3, 3, seed=7)
    x[0, 1, 2, 2] = float("nan")
    x[0, 1, 2, 3] = float("nan")  # two NaNs in one window: torch keeps the last one scanned
    x[0, 2, 0, 0] = float("nan")
    x, ws = leaves(x, ws)
    g = torch.randn(1, 2 + 2 + 2 + 3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for relu in (False, True):
        got = grads_of(fused(relu), x, ws, lambda y: (y * g).sum())
        ref = grads_of(reference(relu), x, ws, lambda y: (y * g).sum())
        for name, a, b in zip(NAMES, got, ref):
            assert torch.equal(torch.isnan(a), torch.isnan(b)), f"{name} (relu={relu}): NaN pattern differs"
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, equal_nan=True,
                                       msg=lambda m: f"{name} (relu={relu}): {m}")


# ----------------------------------------------------------------------------------------------
# dtypes, saved tensors, fallback, errors

def test_bfloat16_gradients_within_twice_reference_error():
    # relu=False: a bfloat16 forward flips ReLU masks against the float64 one, which says nothing
    # about the backward; without masks the error is the backward's own rounding.
    x, ws = table1_args("4d", dtype=torch.bfloat16)
    x = torch.randn(2, 512, 5, 6, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    x, ws = leaves(x, ws)
    g = torch.randn(2, 528, 5, 6, generator=torch.Generator().manual_seed(1))
    loss = lambda y: (y.float() * g).sum()  # noqa: E731
    got = grads_of(fused(False), x, ws, loss)
    ref_bf16 = grads_of(reference(False), x, ws, loss)
    exact = grads_of(reference(False), *to64(x, ws), loss)
    for name, a, b, e in zip(NAMES, got, ref_bf16, exact):
        assert a.dtype == torch.bfloat16
        assert rel_err(a, e) <= 2 * rel_err(b, e), f"{name}: {rel_err(a, e):.3g} vs reference {rel_err(b, e):.3g}"


def test_bfloat16_backward_op_equals_float32_on_the_same_forward():
    # relu=True: the same bfloat16 forward output (same masks) for both; the bfloat16 op computes
    # in float32 and rounds once, so it is the float32 result within bfloat16 rounding.
    x, ws = table1_args("4d", dtype=torch.bfloat16)
    y = torch.ops.googlenet_fast.inception(x, *ws, True)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    got = torch.ops.googlenet_fast.inception_backward(gy, x, *ws, True, y, [True] * 13)
    f32 = lambda t: None if t is None else t.float()  # noqa: E731
    ref = torch.ops.googlenet_fast.inception_backward(f32(gy), f32(x), *[f32(w) for w in ws], True, f32(y),
                                                      [True] * 13)
    for name, a, r in zip(NAMES, got, ref):
        assert a.dtype == torch.bfloat16
        assert rel_err(a, r) <= 2 ** -7, f"{name}: {rel_err(a, r):.3g}"


def _saved_during_forward(x, ws, relu):
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = inception(x, *ws, relu=relu, backend="cpu")
    return y, saved


@pytest.mark.parametrize("relu", [False, True])
def test_saves_only_what_requested_gradients_need(relu):
    x, ws = make(*TINY, dtype=torch.float32)
    # only the branch biases (not the reduce ones): neither x nor, without relu, the output
    _, frozen = leaves(x, ws, which={2, 6, 10, 12})
    y, saved = _saved_during_forward(x, frozen, relu)
    assert not any(t.data_ptr() == x.data_ptr() for t in saved), "x saved though no gradient reads it"
    assert any(t.data_ptr() == y.data_ptr() for t in saved) == relu
    y.sum().backward()
    ref = grads_of(reference(relu), *leaves(x, ws, which={2, 6, 10, 12}), lambda y: y.sum())
    assert_grads_match([None] + [None if w is None else w.grad for w in frozen], ref, 1e-5)
    # x's gradient needs x
    xx, ws2 = leaves(x, ws, which={0})
    _, saved = _saved_during_forward(xx, ws2, relu)
    assert any(t.data_ptr() == xx.data_ptr() for t in saved)


def test_reference_vjp_fallback_for_devices_without_a_backward_kernel(monkeypatch):
    # CUDA (until csrc/cuda registers inception_backward) takes the reference composition; run
    # that path on the CPU to check it.
    monkeypatch.setattr(ops, "_has_fused_backward", lambda device: False)
    x, ws = table1_args("5b")
    x, ws = leaves(x, ws, which={0, 1, 4, 9, 12})
    loss = lambda y: (y * y).sum()  # noqa: E731
    got = grads_of(fused(True), x, ws, loss)
    ref = grads_of(reference(True), *to64(x, ws), loss)
    assert_grads_match(got, ref, 1e-4)


def test_empty_batch():
    x, ws = make(0, 4, 5, 6, 3, 2, 3, 3, 2, 3, 5, 2, dtype=torch.float32)
    x, ws = leaves(x, ws)
    y = inception(x, *ws, backend="cpu")
    y.sum().backward()
    assert x.grad.shape == x.shape
    for w in ws:
        assert torch.equal(w.grad, torch.zeros_like(w))


def test_bad_input_errors_name_the_argument():
    x, ws = make(*TINY, dtype=torch.float32)
    y = torch.ops.googlenet_fast.inception(x, *ws, True)
    bw = torch.ops.googlenet_fast.inception_backward
    with pytest.raises(ValueError, match=r"out: the forward output is required when relu=True"):
        bw(torch.ones_like(y), x, *ws, True, None, [True] * 13)
    with pytest.raises(ValueError, match=r"grad_out: expected shape \[2, 11, 5, 6\]"):
        bw(torch.ones(2, 10, 5, 6), x, *ws, True, y, [True] * 13)
    with pytest.raises(TypeError, match=r"grad_out: expected dtype Float"):
        bw(torch.ones_like(y, dtype=torch.float64), x, *ws, True, y, [True] * 13)
    with pytest.raises(ValueError, match=r"out: expected shape"):
        bw(torch.ones_like(y), x, *ws, True, y[:, :5], [True] * 13)
    with pytest.raises(ValueError, match=r"w_3x3: expected 2 input channels"):
        bw(torch.ones_like(y), x, *ws[:4], ws[4][:, :1], *ws[5:], True, y, [True] * 13)
    # relu=False needs no output
    out = bw(torch.ones_like(y), x, *ws, False, None, [True] * 13)
    assert all(t is not None for t in out)


# ----------------------------------------------------------------------------------------------
# double backward, opcheck, torch.compile

def test_double_backward_raises_a_clear_error():
    x, ws = make(*TINY)
    x, ws = leaves(x, ws)
    y = inception(x, *ws, backend="cpu")
    (gx,) = torch.autograd.grad((y * y).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="googlenet_fast.inception is not twice differentiable"):
        gx.sum().backward()


def test_opcheck_forward_with_requires_grad():
    x, ws = make(*TINY, dtype=torch.float32)
    x, ws = leaves(x, ws)
    torch.library.opcheck(torch.ops.googlenet_fast.inception.default, (x, *ws, True))
    x, ws = make(*TINY, bias=False, dtype=torch.float32)
    x, ws = leaves(x.contiguous(memory_format=torch.channels_last), ws)
    torch.library.opcheck(torch.ops.googlenet_fast.inception.default, (x, *ws, False))


@pytest.mark.parametrize("case", ["all", "relu-off-no-out", "subset", "no-bias-cl"])
def test_opcheck_backward(case):
    x, ws = make(*TINY, bias=case != "no-bias-cl", dtype=torch.float32)
    if case == "no-bias-cl":
        x = x.contiguous(memory_format=torch.channels_last)
    relu = case != "relu-off-no-out"
    y = torch.ops.googlenet_fast.inception(x, *ws, relu)
    mask = [True] * 13 if case != "subset" else [i % 3 == 0 for i in range(13)]
    torch.library.opcheck(torch.ops.googlenet_fast.inception_backward.default,
                          (torch.randn_like(y), x, *ws, relu, y if relu else None, mask))


def test_torch_compile_fullgraph_forward_backward_matches_eager():
    import torch._dynamo
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    x, ws = table1_args("3a", n=2)
    x = x.contiguous(memory_format=torch.channels_last)

    def train_loss(x, *ws):
        return (inception(x, *ws, backend="cpu") ** 2).mean()

    def run(fn):
        xx, ww = leaves(x, ws)
        fn(xx, *ww).backward()
        return [xx.grad] + [w.grad for w in ww if w is not None]

    eager = run(train_loss)
    graphs = []

    def keep(gm, example_inputs):
        graphs.append(gm.code)
        return make_boxed_func(gm.forward)

    torch._dynamo.reset()
    recorded = run(torch.compile(train_loss, fullgraph=True, backend=aot_autograd(fw_compiler=keep, bw_compiler=keep)))
    assert len(graphs) == 2 and "googlenet_fast.inception_backward" in graphs[1], "fused backward not in the graph"
    torch._dynamo.reset()
    inductor = run(torch.compile(train_loss, fullgraph=True))
    torch._dynamo.reset()
    dynamic = run(torch.compile(train_loss, fullgraph=True, dynamic=True))
    for got in (recorded, inductor, dynamic):
        for a, b in zip(got, eager):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
