"""The network kernels (backends/triton/network.py: conv1, conv with maxpool/LRN in its loader, NHWC
max pool with optional LRN, avgpool+linear head) and fused_forward_triton, against the PyTorch
composition, on CPU under Triton's interpreter (small odd maps where ceil mode matters) and,
marked ``gpu``, at real sizes on a CUDA device.

Accuracy: the reference is the PyTorch composition (conv2d, max_pool2d(ceil_mode=True),
local_response_norm, adaptive_avg_pool2d + linear) in float64 on the same (rounded) inputs.
float32: max |err| <= 1e-4 * max |ref| (TF32 off).  float16/bfloat16: max |err| <= 2 * (the error
of the same composition run in that dtype, LRN in fp32 rounded per layer where torch has no half
kernel) + one unit of the dtype's precision at the output's scale.  Outputs are poisoned (NaN)
before the kernels run, so an unwritten element fails.
"""
import time

import pytest
import torch
import torch.nn.functional as F

triton = pytest.importorskip("triton")

from googlenet_fast.backends.triton import network as nw  # noqa: E402
from googlenet_fast.model import GoogLeNet  # noqa: E402

EPS = {torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}
LRN = (5, 1e-4, 0.75, 1.0)


@pytest.fixture
def poison(monkeypatch):
    """Every output the network ops allocate starts as NaN."""
    real = nw._nhwc_empty

    def nan_empty(n, c, h, w, x):
        return real(n, c, h, w, x).fill_(float("nan"))

    monkeypatch.setattr(nw, "_nhwc_empty", nan_empty)
    yield


def _layout(t, layout):
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # every other column of a wider NCHW map
        wide = torch.repeat_interleave(t, 2, dim=3)
        wide[..., 1::2] = float("nan")
        return wide[..., ::2]
    return t.contiguous()


def _rand(*shape, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


def _lrn_ref(u, lrn, dtype):
    """local_response_norm; in fp32 rounded to dtype where torch has no half kernel."""
    if u.dtype in (torch.float16, torch.bfloat16):
        return F.local_response_norm(u.float(), *lrn).to(u.dtype)
    return F.local_response_norm(u, *lrn)


def _check(y, composition, args, dtype):
    """y against composition(*args) in float64 (and, for half dtypes, the composition's own error
    in dtype).  args: float32 tensors (already holding dtype-representable values) or others."""
    assert not torch.isnan(y).any(), "an output element was not written (NaN poison left)"
    ref = composition(*[a.double() if isinstance(a, torch.Tensor) else a for a in args])
    err = (y.double() - ref).abs().max().item()
    scale = ref.abs().max().item()
    if dtype == torch.float32:
        assert err <= 1e-4 * scale, f"max |err| {err:.3g} over 1e-4 * {scale:.3g}"
    else:
        own = composition(*[a.to(dtype) if isinstance(a, torch.Tensor) else a for a in args])
        own_err = (own.double() - ref).abs().max().item()
        tol = 2 * own_err + EPS[dtype] * scale
        assert err <= tol, f"max |err| {err:.3g} over {tol:.3g} (torch in {dtype}: {own_err:.3g})"


def _q(t, dtype):
    """t rounded to dtype, kept in float32 (the reference's inputs)."""
    return t.to(dtype).float()


# ----------------------------------------------------------------------------------------------
# conv1: 7x7/2 pad 3 gather implicit GEMM

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("layout,shape,cout", [
    ("nchw", (2, 3, 17, 15), 64), ("channels_last", (1, 3, 33, 20), 24), ("strided", (1, 3, 15, 16), 40),
])
def test_conv_stem(interp, poison, dtype, layout, shape, cout):
    x = _q(_rand(*shape), dtype)
    w = _q(_rand(cout, shape[1], 7, 7, scale=0.1, seed=1), dtype)
    b = _q(_rand(cout, scale=0.1, seed=2), dtype)
    y = nw.conv_stem(_layout(x.to(dtype), layout), w.to(dtype), b.to(dtype))
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    _check(y, lambda x, w, b: F.relu(F.conv2d(x, w, b, 2, 3)), (x, w, b), dtype)


def test_conv_stem_no_bias_no_relu_other_stride(interp, poison):
    x, w = _rand(2, 5, 11, 13), _rand(16, 5, 3, 3, seed=1)
    y = nw.conv_stem(x, w, None, stride=1, padding=1, relu=False)
    _check(y, lambda x, w: F.conv2d(x, w, None, 1, 1), (x, w), torch.float32)


# ----------------------------------------------------------------------------------------------
# conv2 (1x1 with maxpool1 [+ lrn1] in its loader) and conv3 (3x3)

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("layout,shape,pool,lrn", [
    ("channels_last", (2, 64, 15, 17), (3, 2), None),
    ("channels_last", (1, 64, 33, 33), (3, 2), LRN),
    ("nchw", (2, 24, 17, 15), (3, 2), LRN),
    ("nchw", (1, 20, 16, 15), (2, 2), None),
    ("channels_last", (2, 12, 9, 7), None, LRN),
])
def test_conv_pool_lrn_1x1(interp, poison, dtype, layout, shape, pool, lrn):
    x = _q(_rand(*shape, scale=3.0), dtype)
    cout = 64 if shape[1] == 64 else 40
    w = _q(_rand(cout, shape[1], 1, 1, scale=0.2, seed=1), dtype)
    b = _q(_rand(cout, scale=0.1, seed=2), dtype)
    y = nw.conv_nhwc(_layout(x.to(dtype), layout), w.to(dtype), b.to(dtype), pool=pool, lrn=lrn)
    assert y.is_contiguous(memory_format=torch.channels_last)

    def comp(x, w, b):
        u = x
        if pool is not None:
            u = F.max_pool2d(u, pool[0], pool[1], ceil_mode=True)
        if lrn is not None:
            u = _lrn_ref(u, lrn, x.dtype)
        return F.relu(F.conv2d(u, w, b))

    _check(y, comp, (x, w, b), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("layout,shape,cout", [
    ("channels_last", (2, 64, 15, 17), 48), ("nchw", (1, 20, 9, 11), 24),
])
def test_conv3x3(interp, poison, dtype, layout, shape, cout):
    x = _q(_rand(*shape), dtype)
    w = _q(_rand(cout, shape[1], 3, 3, scale=0.1, seed=1), dtype)
    b = _q(_rand(cout, scale=0.1, seed=2), dtype)
    y = nw.conv_nhwc(_layout(x.to(dtype), layout), w.to(dtype), b.to(dtype))
    _check(y, lambda x, w, b: F.relu(F.conv2d(x, w, b, padding=1)), (x, w, b), dtype)


def test_conv_bfloat16(interp, poison):
    """bf16 under the interpreter (UPCAST path): conv2 with pool and LRN, conv1."""
    dt = torch.bfloat16
    x = _q(_rand(1, 16, 15, 13, scale=3.0), dt)
    w, b = _q(_rand(32, 16, 1, 1, scale=0.2, seed=1), dt), _q(_rand(32, scale=0.1, seed=2), dt)
    y = nw.conv_nhwc(x.to(dt), w.to(dt), b.to(dt), pool=(3, 2), lrn=LRN)
    _check(y, lambda x, w, b: F.relu(F.conv2d(_lrn_ref(F.max_pool2d(x, 3, 2, ceil_mode=True), LRN, x.dtype), w, b)),
           (x, w, b), dt)
    x = _q(_rand(1, 3, 15, 15), dt)
    w, b = _q(_rand(16, 3, 7, 7, scale=0.1, seed=1), dt), _q(_rand(16, scale=0.1, seed=2), dt)
    y = nw.conv_stem(x.to(dt), w.to(dt), b.to(dt))
    _check(y, lambda x, w, b: F.relu(F.conv2d(x, w, b, 2, 3)), (x, w, b), dt)


# ----------------------------------------------------------------------------------------------
# Max pool (maxpool2/3/4) with optional LRN before it (lrn2 -> maxpool2)

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("layout,shape,k,s,lrn", [
    ("channels_last", (2, 24, 15, 17), 3, 2, None),
    ("nchw", (1, 8, 33, 33), 3, 2, LRN),
    ("channels_last", (2, 70, 17, 15), 3, 2, LRN),
    ("strided", (1, 16, 15, 14), 2, 2, None),
    ("channels_last", (1, 16, 2, 3), 3, 2, None),  # window hanging over a 2-pixel map
])
def test_max_pool(interp, poison, dtype, layout, shape, k, s, lrn):
    x = _q(_rand(*shape, scale=10.0), dtype)
    y = nw.max_pool_nhwc(_layout(x.to(dtype), layout), k, s, lrn=lrn)
    assert y.is_contiguous(memory_format=torch.channels_last)

    def comp(x):
        u = _lrn_ref(x, lrn, x.dtype) if lrn is not None else x
        return F.max_pool2d(u, k, s, ceil_mode=True)

    _check(y, comp, (x,), dtype)


def test_max_pool_nan_and_lrn_module(interp, poison):
    x = _rand(1, 8, 7, 7)
    x[0, 3, 2, 2] = float("nan")
    y = nw.max_pool_nhwc(x, 3, 2, lrn=torch.nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0))
    r = F.max_pool2d(F.local_response_norm(x, 5, 1e-4, 0.75, 1.0), 3, 2, ceil_mode=True)
    assert torch.equal(torch.isnan(y), torch.isnan(r))
    ok = ~torch.isnan(r)
    assert torch.allclose(y[ok], r[ok], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Head: global avg pool + linear

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("layout,shape,classes", [
    ("channels_last", (2, 40, 3, 5), 10), ("nchw", (3, 64, 1, 1), 37), ("strided", (1, 20, 4, 3), 5),
])
def test_avgpool_linear(interp, dtype, layout, shape, classes):
    x = _q(_rand(*shape), dtype)
    w, b = _q(_rand(classes, shape[1], scale=0.2, seed=1), dtype), _q(_rand(classes, seed=2), dtype)
    y = nw.avgpool_linear(_layout(x.to(dtype), layout), w.to(dtype), b.to(dtype))
    assert y.shape == (shape[0], classes) and y.dtype == dtype

    def comp(x, w, b):
        p = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return F.linear(p, w, b)

    _check(y, comp, (x, w, b), dtype)


def test_avgpool_linear_no_bias(interp):
    x, w = _rand(2, 16, 3, 3), _rand(7, 16, seed=1)
    y = nw.avgpool_linear(x, w)
    _check(y, lambda x, w: F.linear(F.adaptive_avg_pool2d(x, 1).flatten(1), w), (x, w), torch.float32)


# ----------------------------------------------------------------------------------------------
# The whole network

def _model(variant, seed=0, **kw):
    torch.manual_seed(seed)
    m = GoogLeNet(num_classes=10, variant=variant, init_weights=True, fused=False, **kw).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in m.modules():  # non-trivial BatchNorm statistics, so folding matters
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.copy_(torch.rand(mod.num_features, generator=g) * 0.4 - 0.2)
                mod.running_var.copy_(torch.rand(mod.num_features, generator=g) * 1.5 + 0.5)
                mod.weight.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
                mod.bias.copy_(torch.rand(mod.num_features, generator=g) * 0.4 - 0.2)
    return m


@pytest.mark.parametrize("variant,kw,shape,layout", [
    ("torchvision", dict(transform_input=True), (2, 3, 40, 40), "nchw"),
    ("paper", {}, (1, 3, 33, 35), "channels_last"),
])
def test_fused_forward_matches_model(interp, monkeypatch, variant, kw, shape, layout):
    """The fused forward against the model, and which ops compute the stage-transition pools:
    no standalone max pool for maxpool3/maxpool4 (nor maxpool2 in torchvision), the pooled
    Inception op at 4a and 5a (and 3a in torchvision); the paper's lrn2 -> maxpool2 is one
    max_pool_nhwc pass with the LRN."""
    m = _model(variant, **kw)
    x = _layout(_rand(*shape), layout)
    pools, pooled = [], []
    real_ops = nw._network_ops

    def observed(x):
        ops = dict(real_ops(x))
        pool, pooled_op = ops["max_pool_nhwc_triton"], ops["inception_pooled_triton"]
        ops["max_pool_nhwc_triton"] = lambda y, k, s, size, *lrn: pools.append(
            (tuple(y.shape), k, s, size > 0)) or pool(y, k, s, size, *lrn)
        ops["inception_pooled_triton"] = lambda y, *a: pooled.append(
            (y.shape[1], tuple(a[-2:]))) or pooled_op(y, *a)
        return ops

    monkeypatch.setattr(nw, "_network_ops", observed)
    with torch.no_grad():
        assert nw.fused_forward_supported(m, x) is None
        ref = m(x)
        y = nw.fused_forward_triton(m, x)
        ref64 = m.double()(x.double())
    if variant == "paper":
        assert [p[1:] for p in pools] == [(3, 2, True)]  # lrn2 + maxpool2
        assert pooled == [(480, (3, 2)), (832, (3, 2))]  # maxpool3 -> 4a, maxpool4 (3x3/2) -> 5a
    else:
        assert pools == []
        assert pooled == [(192, (3, 2)), (480, (3, 2)), (832, (2, 2))]
    assert y.shape == ref.shape and y.dtype == torch.float32
    scale = ref64.abs().max().item()
    assert (y.double() - ref64).abs().max().item() <= 1e-4 * scale
    assert (y - ref).abs().max().item() <= 1e-4 * ref.abs().max().item()


def test_fused_forward_supported_says_why(interp):
    m = _model("torchvision", aux_logits=False)
    x = _rand(1, 3, 32, 32)
    m.train()
    assert "train" in nw.fused_forward_supported(m, x)
    with pytest.raises(ValueError, match="train mode"):
        nw.fused_forward_triton(m, x)
    m.eval()
    assert "gradients" in nw.fused_forward_supported(m, x)
    with torch.no_grad():
        assert nw.fused_forward_supported(m, x) is None
    m.maxpool3 = torch.nn.MaxPool2d(3, 2, ceil_mode=False)
    with torch.no_grad():
        assert "maxpool3" in nw.fused_forward_supported(m, x)
    m.maxpool3 = torch.nn.MaxPool2d(3, 2, ceil_mode=True)
    m.maxpool4 = torch.nn.MaxPool2d(2, 3, ceil_mode=True)  # stride > kernel: not the pooled op's
    with torch.no_grad():
        assert "maxpool4 is a 2x2/3 pool" in nw.fused_forward_supported(m, x)
        assert "CUDA" in nw.fused_forward_supported(_model("paper"), torch.empty(1, 3, 32, 32, device="meta"))


# ----------------------------------------------------------------------------------------------
# Registration: opcheck, torch.compile

def _op_cases():
    x = _rand(1, 8, 9, 7).contiguous(memory_format=torch.channels_last)
    return [
        (torch.ops.googlenet_fast.conv_stem_triton.default, (_rand(1, 3, 9, 11), _rand(8, 3, 7, 7, seed=1),
                                                             _rand(8, seed=2), 2, 3, True)),
        (torch.ops.googlenet_fast.conv_nhwc_triton.default, (x, _rand(16, 8, 1, 1, seed=1), _rand(16, seed=2),
                                                             3, 2, 5, 1e-4, 0.75, 1.0, True)),
        (torch.ops.googlenet_fast.conv_nhwc_triton.default, (x, _rand(16, 8, 3, 3, seed=1), None,
                                                             0, 0, 0, 0.0, 0.0, 1.0, False)),
        (torch.ops.googlenet_fast.max_pool_nhwc_triton.default, (x, 3, 2, 5, 1e-4, 0.75, 1.0)),
        (torch.ops.googlenet_fast.avgpool_linear_triton.default, (x, _rand(5, 8, seed=1), _rand(5, seed=2))),
    ]


def test_opcheck(interp):
    for op, args in _op_cases():
        torch.library.opcheck(op, args)
    x = _rand(1, 8, 5, 5)
    out = torch.empty(1, 8, 2, 2).contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.googlenet_fast._network_triton_interpreted.default,
                          ("pool", x, None, None, [3, 2, 0], [0.0, 0.0, 1.0], out))


def test_torch_compile(interp):
    def f(x, w1, b1, w2, wf):
        y = nw.conv_stem(x, w1, b1)
        y = nw.conv_nhwc(y, w2, None, pool=(3, 2), lrn=LRN)
        y = nw.max_pool_nhwc(y, 2, 2)
        return nw.avgpool_linear(y, wf)

    args = (_rand(1, 3, 21, 19), _rand(8, 3, 7, 7, scale=0.1, seed=1), _rand(8, seed=2),
            _rand(16, 8, 1, 1, scale=0.3, seed=3), _rand(4, 16, seed=4))
    eager = f(*args)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")(*args)
    assert torch.equal(eager, compiled)


def test_torch_compile_fused_forward(interp):
    """The whole fused forward traces with fullgraph=True (the folded weights inline, every
    kernel an op of its own)."""
    m = _model("paper")
    x = _rand(1, 3, 32, 32)
    with torch.no_grad():
        eager = nw.fused_forward_triton(m, x)
        compiled = torch.compile(lambda x: nw.fused_forward_triton(m, x), fullgraph=True, backend="aot_eager")(x)
    assert (compiled - eager).abs().max().item() <= 1e-6 * eager.abs().max().item()


def test_int64_offsets(interp, poison, monkeypatch):
    monkeypatch.setattr(nw, "FORCE_INT64", True)
    x = _rand(2, 12, 9, 7, scale=3.0)
    w, b = _rand(16, 12, 3, 3, scale=0.2, seed=1), _rand(16, seed=2)
    _check(nw.conv_nhwc(x, w, b), lambda x, w, b: F.relu(F.conv2d(x, w, b, padding=1)), (x, w, b), torch.float32)
    _check(nw.conv_nhwc(x, w[:, :, :1, :1], b, pool=(3, 2), lrn=LRN),
           lambda x, w, b: F.relu(F.conv2d(F.local_response_norm(F.max_pool2d(x, 3, 2, ceil_mode=True), *LRN), w, b)),
           (x, w[:, :, :1, :1], b), torch.float32)
    _check(nw.max_pool_nhwc(x, 3, 2, lrn=LRN), lambda x: F.max_pool2d(F.local_response_norm(x, *LRN), 3, 2, ceil_mode=True),
           (x,), torch.float32)
    _check(nw.conv_stem(x[:, :3], w[:, :3, :, :].repeat(1, 1, 3, 3)[:, :, :7, :7]),
           lambda x, w: F.relu(F.conv2d(x, w, None, 2, 3)), (x[:, :3], w[:, :3].repeat(1, 1, 3, 3)[:, :, :7, :7]),
           torch.float32)
    wf = _rand(5, 12, seed=3)
    _check(nw.avgpool_linear(x, wf), lambda x, w: F.linear(F.adaptive_avg_pool2d(x, 1).flatten(1), w), (x, wf),
           torch.float32)


# ----------------------------------------------------------------------------------------------
# Bad input

def test_bad_inputs(interp):
    x = _rand(1, 3, 15, 15)
    w = _rand(8, 3, 7, 7)
    with pytest.raises(ValueError, match="^x: expected a 4-D"):
        nw.conv_stem(x[0], w)
    with pytest.raises(ValueError, match="^weight: expected 3 input channels"):
        nw.conv_stem(x, _rand(8, 4, 7, 7))
    with pytest.raises(TypeError, match="^x: .*float64"):
        nw.conv_stem(x.double(), w.double())
    with pytest.raises(TypeError, match="^x: .*int"):
        nw.max_pool_nhwc(x.to(torch.int32))
    with pytest.raises(TypeError, match="^weight: expected dtype torch.float32"):
        nw.conv_nhwc(x, _rand(8, 3, 1, 1).half())
    with pytest.raises(ValueError, match="^bias: expected shape"):
        nw.conv_nhwc(x, _rand(8, 3, 1, 1), _rand(9))
    with pytest.raises(ValueError, match="^weight: expected an odd kernel"):
        nw.conv_nhwc(x, _rand(8, 3, 2, 2))
    with pytest.raises(ValueError, match="^weight: expected a tensor on cpu"):
        nw.conv_nhwc(x, torch.empty(8, 3, 1, 1, device="meta"))
    with pytest.raises(ValueError, match="^weight: expected shape \\(num_classes, 3\\)"):
        nw.avgpool_linear(x, _rand(10, 4))
    with pytest.raises(ValueError, match="^x: .*empty output"):
        nw.max_pool_nhwc(_rand(1, 3, 1, 5), 3, 2)
    with pytest.raises(ValueError, match="^pool: expected"):
        nw.conv_nhwc(x, _rand(8, 3, 1, 1), pool=(0, 2))
    with pytest.raises(ValueError, match="^weight: expected a tensor on meta"):
        nw.conv_stem(torch.empty(1, 3, 15, 15, device="meta"), w)


def test_cpu_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="^x: the triton network kernels need CUDA tensors, got x on cpu"):
        nw.max_pool_nhwc(_rand(1, 3, 9, 9))


# ----------------------------------------------------------------------------------------------
# GPU, real sizes

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_kernels_gpu(dtype):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    d = "cuda"
    x = _q(_rand(8, 3, 224, 224), dtype).to(d)
    w1, b1 = _q(_rand(64, 3, 7, 7, scale=0.1, seed=1), dtype).to(d), _q(_rand(64, scale=0.1, seed=2), dtype).to(d)
    _check(nw.conv_stem(x.to(dtype), w1.to(dtype), b1.to(dtype)),
           lambda x, w, b: F.relu(F.conv2d(x, w, b, 2, 3)), (x, w1, b1), dtype)
    y1 = _q(_rand(8, 64, 112, 112, scale=3.0, seed=3), dtype).to(d).contiguous(memory_format=torch.channels_last)
    w2, b2 = _q(_rand(64, 64, 1, 1, scale=0.2, seed=4), dtype).to(d), _q(_rand(64, scale=0.1, seed=5), dtype).to(d)
    for lrn in (None, LRN):
        _check(nw.conv_nhwc(y1.to(dtype), w2.to(dtype), b2.to(dtype), pool=(3, 2), lrn=lrn),
               lambda x, w, b: F.relu(F.conv2d(_lrn_ref(F.max_pool2d(x, 3, 2, ceil_mode=True), lrn, x.dtype)
                                               if lrn else F.max_pool2d(x, 3, 2, ceil_mode=True), w, b)),
               (y1, w2, b2), dtype)
    y2 = y1[:, :, :56, :56]
    w3, b3 = _q(_rand(192, 64, 3, 3, scale=0.05, seed=6), dtype).to(d), _q(_rand(192, scale=0.1, seed=7), dtype).to(d)
    _check(nw.conv_nhwc(y2.to(dtype), w3.to(dtype), b3.to(dtype)),
           lambda x, w, b: F.relu(F.conv2d(x, w, b, padding=1)), (y2, w3, b3), dtype)
    y3 = _q(_rand(8, 192, 56, 56, scale=10.0, seed=8), dtype).to(d).contiguous(memory_format=torch.channels_last)
    for lrn in (None, LRN):
        _check(nw.max_pool_nhwc(y3.to(dtype), 3, 2, lrn=lrn),
               lambda x: F.max_pool2d(_lrn_ref(x, lrn, x.dtype) if lrn else x, 3, 2, ceil_mode=True), (y3,), dtype)
    y4 = _q(_rand(8, 1024, 7, 7, seed=9), dtype).to(d).contiguous(memory_format=torch.channels_last)
    wf, bf = _q(_rand(1000, 1024, scale=0.05, seed=10), dtype).to(d), _q(_rand(1000, seed=11), dtype).to(d)
    _check(nw.avgpool_linear(y4.to(dtype), wf.to(dtype), bf.to(dtype)),
           lambda x, w, b: F.linear(F.adaptive_avg_pool2d(x, 1).flatten(1), w, b), (y4, wf, bf), dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["torchvision", "paper"])
def test_fused_forward_gpu(variant):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    m = _model(variant).cuda()
    x = _rand(4, 3, 224, 224).cuda()
    with torch.no_grad():
        ref = m(x)
        y = nw.fused_forward_triton(m, x)
        assert (y - ref).abs().max().item() <= 1e-4 * ref.abs().max().item()
        # CUDA graph capture of the whole fused forward (no autotuning in these kernels; the
        # Inception op's is done by the warm-up above)
        g = torch.cuda.CUDAGraph()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            nw.fused_forward_triton(m, x)
        torch.cuda.current_stream().wait_stream(s)
        with torch.cuda.graph(g):
            out = nw.fused_forward_triton(m, x)
        g.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, y)
    # bf16: against the model's own bf16 error
    mb = _model(variant).cuda().to(torch.bfloat16)
    with torch.no_grad():
        ref64 = _model(variant).cuda().double()(x.double())
        own = mb(x.to(torch.bfloat16)).double()
        yb = nw.fused_forward_triton(mb, x).double()
    own_err = (own - ref64).abs().max().item()
    assert (yb - ref64).abs().max().item() <= 2 * own_err + EPS[torch.bfloat16] * ref64.abs().max().item()


@pytest.mark.gpu
def test_compile_gpu():
    m = _model("paper").cuda()
    x = _rand(2, 3, 224, 224).cuda()
    with torch.no_grad():
        eager = nw.fused_forward_triton(m, x)
        compiled = torch.compile(lambda x: nw.fused_forward_triton(m, x), fullgraph=True)(x)
    assert (compiled - eager).abs().max().item() <= 1e-5 * eager.abs().max().item()


def test_model_hook_not_used_on_cpu_or_with_grad(monkeypatch):
    # GoogLeNet.forward takes the whole-network Triton path only for CUDA inputs in eval mode.
    from googlenet_fast import GoogLeNet, ops
    from googlenet_fast.backends.triton import network as tn
    calls = []
    monkeypatch.setattr(tn, "fused_forward_triton", lambda m, x: calls.append(1))
    model = GoogLeNet(aux_logits=False, init_weights=True).eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert calls == []
    assert ops.fused_network_forward(model, torch.randn(1, 3, 32, 32)) is None


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["torchvision", "paper"])
def test_gpu_model_forward_uses_network_kernels(variant, monkeypatch):
    from googlenet_fast import GoogLeNet
    from googlenet_fast.backends.triton import network as tn
    monkeypatch.setenv("GOOGLENET_FAST_BACKEND", "triton")  # no network-path measurement ("auto")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    calls = []
    real = tn.fused_forward_triton
    monkeypatch.setattr(tn, "fused_forward_triton", lambda m, x: calls.append(1) or real(m, x))
    torch.manual_seed(0)
    model = GoogLeNet(aux_logits=False, init_weights=True, variant=variant).eval().cuda()
    x = torch.randn(2, 3, 224, 224, device="cuda")
    with torch.no_grad():
        got = model(x)
        model.fused = False
        ref = model(x)
    assert calls == [1]
    assert ((got - ref).abs().max() / ref.abs().max()).item() <= 1e-4


@pytest.mark.gpu
def test_gpu_auto_picks_a_network_path_by_measurement(monkeypatch, tmp_path):
    """backend "auto": the first eager forward measures the network and module paths once (wall
    clock), caches the faster, and either gives the module path's logits."""
    from googlenet_fast import GoogLeNet
    from googlenet_fast import autotune_table as at
    monkeypatch.delenv("GOOGLENET_FAST_BACKEND", raising=False)
    monkeypatch.setenv(at.CACHE_ENV, str(tmp_path / "choices.json"))
    at.clear_choices()
    torch.manual_seed(0)
    model = GoogLeNet(aux_logits=False, init_weights=True).eval().cuda().to(torch.bfloat16)
    x = torch.randn(1, 3, 224, 224, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        got = model(x)
        ref = model._forward_modules(x)
    key = at.network_key("torchvision", 1, 224, 224, torch.bfloat16, torch.cuda.get_device_name())
    assert at._choices.get(key) in at.NETWORK_PATHS
    # the network path's first run (inside the measurement) chose each transition pool's path
    assert sorted(v for k, v in at._choices.items() if k.startswith("pool|")) != [] and \
        len([k for k in at._choices if k.startswith("pool|")]) == 3
    assert ((got.float() - ref.float()).abs().max() / ref.float().abs().max()).item() <= 2e-2
    at.clear_choices()
