"""The CPU ops around the Inception modules (googlenet_fast::conv2d_relu, max_pool_nhwc), the
prepacked-weight cache (ops.weight_prepacking) and how GoogLeNet(fused=True) uses them in eval."""
import copy
import gc

import pytest
import torch
import torch.nn.functional as F

from googlenet_fast import GoogLeNet, ops
from googlenet_fast.backends import native
from model_helpers import OpLog, make_input, ours_from, rel_err, tv_model

pytestmark = pytest.mark.skipif(not native.available(), reason=f"extension not built: {native.LOAD_ERROR}")


def conv_ref(x, w, b, stride, padding, relu=True):
    y = F.conv2d(x.double(), w.double(), None if b is None else b.double(), stride, padding)
    return torch.relu(y) if relu else y


# ------------------------------------------------------------------------------------------------
# conv2d_relu

# (Cin, Cout, k, stride, padding, H): the stem's three convolutions at small sizes, and odd ones
STEM = [(3, 64, 7, 2, 3, 23), (64, 64, 1, 1, 0, 6), (64, 192, 3, 1, 1, 6), (5, 7, 3, 2, 0, 8), (4, 6, 5, 1, 2, 5)]


@pytest.mark.parametrize("cin,cout,k,stride,padding,h", STEM)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("relu", [True, False])
def test_conv2d_relu_matches_conv2d(cin, cout, k, stride, padding, h, layout, relu):
    x = make_input(2, cin, h, h + 1, seed=3)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    w = make_input(cout, cin, k, k, seed=4) / (cin * k * k) ** 0.5
    b = make_input(cout, seed=5)
    with ops.weight_prepacking():
        y = ops.conv2d_relu(x, w, b, stride, padding, relu)
        y2 = ops.conv2d_relu(x, w, b, stride, padding, relu)  # the packed copy's second use
    ref = conv_ref(x, w, b, stride, padding, relu)
    assert y.shape == ref.shape
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(y, ref) <= 1e-5
    assert torch.equal(y, y2)
    if relu:
        assert (y >= 0).all()


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.bfloat16, 2e-2)])
def test_conv2d_relu_other_dtypes(dtype, tol):
    x = make_input(1, 8, 9, 9, seed=6).to(dtype)
    w = (make_input(16, 8, 3, 3, seed=7) / 8).to(dtype)
    y = ops.conv2d_relu(x, w, None, 1, 1)
    assert y.dtype == dtype
    assert rel_err(y, conv_ref(x, w, None, 1, 1)) <= tol


def test_conv2d_relu_keeps_nan():
    x = make_input(1, 4, 6, 6, seed=8)
    x[0, 1, 2, 2] = float("nan")
    w, b = make_input(5, 4, 3, 3, seed=9), make_input(5, seed=10)
    y = ops.conv2d_relu(x, w, b, 1, 1)
    ref = torch.relu(F.conv2d(x, w, b, 1, 1))
    assert torch.equal(y.isnan(), ref.isnan()) and y.isnan().sum() == 9 * 5
    torch.testing.assert_close(y.nan_to_num(), ref.nan_to_num(), rtol=1e-5, atol=1e-5)


def test_conv2d_relu_gradcheck_and_opcheck():
    x = make_input(1, 3, 7, 7, seed=11, dtype=torch.float64).requires_grad_()
    w = make_input(4, 3, 3, 3, seed=12, dtype=torch.float64).requires_grad_()
    b = make_input(4, seed=13, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w, b: ops.conv2d_relu(x, w, b, 2, 1), (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w: ops.conv2d_relu(x, w, None, 1, 0, False), (x, w))
    args = (make_input(2, 3, 9, 9, seed=14), make_input(4, 3, 3, 3, seed=15), make_input(4, seed=16), 2, 1, True)
    torch.library.opcheck(torch.ops.googlenet_fast.conv2d_relu.default, args)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: ops.conv2d_relu(torch.randn(3, 5, 5), torch.randn(2, 3, 3, 3)), ValueError, "x: expected a 4-D"),
    (lambda: ops.conv2d_relu(torch.randn(1, 3, 5, 5), torch.randn(2, 4, 3, 3)), ValueError, "weight: expected 3 input"),
    (lambda: ops.conv2d_relu(torch.randn(1, 3, 5, 5), torch.randn(2, 3, 2, 2)), ValueError, "weight: expected a square"),
    (lambda: ops.conv2d_relu(torch.randn(1, 3, 5, 5), torch.randn(2, 3, 3, 3).double()), TypeError, "weight: expected dtype"),
    (lambda: ops.conv2d_relu(torch.randn(1, 3, 5, 5), torch.randn(2, 3, 3, 3), torch.randn(3)), ValueError, "bias: expected shape"),
    (lambda: ops.conv2d_relu(torch.randn(1, 3, 5, 5), torch.randn(2, 3, 3, 3), stride=0), ValueError, "stride"),
    (lambda: ops.conv2d_relu(torch.randn(1, 3, 5, 5), torch.randn(2, 3, 3, 3), padding=-1), ValueError, "padding"),
    (lambda: ops.conv2d_relu(torch.randn(1, 3, 2, 2), torch.randn(2, 3, 7, 7)), ValueError, "x: spatial size 2x2"),
    (lambda: ops.conv2d_relu(torch.randn(1, 3, 5, 5).int(), torch.randn(2, 3, 3, 3)), TypeError, "x: expected a floating"),
])
def test_conv2d_relu_bad_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ------------------------------------------------------------------------------------------------
# max_pool_nhwc

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("k,s,h,w,c", [(3, 2, 15, 15, 5), (3, 2, 7, 8, 70), (2, 2, 7, 7, 130),
                                       (3, 2, 5, 6, 64), (3, 1, 4, 4, 3), (2, 2, 2, 3, 65), (3, 2, 2, 2, 8)])
@pytest.mark.parametrize("relu", [False, True])
def test_max_pool_nhwc_matches_max_pool2d(dtype, k, s, h, w, c, relu):
    x = make_input(2, c, h, w, seed=20).to(dtype)
    x[0, 1, 1, 1] = float("nan")
    x[1, 2, 0, 0] = float("-inf")
    x[1, -1, -1, -1] = float("inf")
    y = ops.max_pool_nhwc(x, k, s, relu)
    # a max is exact in any dtype; ATen's CPU max pool has no float16 channels_last path: compare in fp32
    ref = F.max_pool2d(x.float(), k, s, ceil_mode=True).to(dtype)
    if relu:
        ref = torch.relu(ref)
    assert y.shape == ref.shape and y.dtype == dtype
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y.isnan(), ref.isnan()) and y.isnan().any()
    assert torch.equal(y.nan_to_num(), ref.nan_to_num())


def test_max_pool_nhwc_relu_equals_pool_of_relu():
    """What the model relies on to move the stem convolutions' ReLU after the pool."""
    x = make_input(2, 64, 15, 15, seed=21)
    x[0, 3, 4, 4] = float("nan")
    a = ops.max_pool_nhwc(x, 3, 2, relu=True)
    b = F.max_pool2d(torch.relu(x), 3, 2, ceil_mode=True)
    assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


def test_max_pool_nhwc_strided_input():
    x = make_input(2, 96, 9, 9, seed=22)[:, 16:80]  # a channel slice, read through a copy
    assert torch.equal(ops.max_pool_nhwc(x, 3, 2), F.max_pool2d(x, 3, 2, ceil_mode=True))


# ------------------------------------------------------------------------------------------------
# conv2d_relu_max_pool (the stem's conv -> max pool pairs)

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("n,cin,cout,k,stride,padding,h,pk,ps", [
    (8, 3, 64, 7, 2, 3, 64, 3, 2),    # conv1 + maxpool1's geometry
    (3, 16, 24, 3, 1, 1, 23, 3, 2),   # odd sizes: the ceil-mode pool's last window hangs over
    (2, 8, 16, 1, 1, 0, 9, 2, 2),
    (40, 64, 64, 3, 1, 1, 28, 3, 2),  # 40 x 28x28x64 fp32 = 8 MB of conv output: more than one group
])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_conv2d_relu_max_pool_equals_the_two_ops(dtype, n, cin, cout, k, stride, padding, h, pk, ps, layout):
    x = make_input(n, cin, h, h, seed=n + cin).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x[0, 0, 1, 1] = float("nan")
    g = torch.Generator().manual_seed(cout)
    w = (torch.randn(cout, cin, k, k, generator=g) / (cin * k * k) ** 0.5).to(dtype)
    b = torch.randn(cout, generator=g).to(dtype)
    y = ops.conv2d_relu_max_pool(x, w, b, stride, padding, pk, ps)
    two = ops.max_pool_nhwc(ops.conv2d_relu(x, w, b, stride, padding, relu=False), pk, ps, relu=True)
    assert y.is_contiguous(memory_format=torch.channels_last) and y.shape == two.shape
    assert torch.equal(y.isnan(), two.isnan()) and y.isnan().any()
    assert torch.equal(y.nan_to_num(), two.nan_to_num())  # the same oneDNN convolution per image
    ref = F.max_pool2d(torch.relu(F.conv2d(x.double(), w.double(), b.double(), stride, padding)), pk, ps,
                       ceil_mode=True)
    finite = ~ref.isnan()
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
    assert ((y.double() - ref).abs()[finite].max() / ref[finite].abs().max()).item() <= tol


def test_conv2d_relu_max_pool_without_bias_and_with_prepacking():
    x = make_input(5, 8, 20, 20, seed=60).contiguous(memory_format=torch.channels_last)
    w = torch.randn(12, 8, 3, 3) * 0.2
    with ops.weight_prepacking():
        y1 = ops.conv2d_relu_max_pool(x, w, None, 1, 1, 3, 2)
        y2 = ops.conv2d_relu_max_pool(x, w, None, 1, 1, 3, 2)  # the packed copy reused
    ref = F.max_pool2d(torch.relu(F.conv2d(x, w, None, 1, 1)), 3, 2, ceil_mode=True)
    assert torch.equal(y1, y2) and rel_err(y1, ref) <= 1e-5


def test_conv2d_relu_max_pool_gradcheck_and_opcheck():
    x = make_input(2, 3, 9, 9, seed=61, dtype=torch.float64).requires_grad_()
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: ops.conv2d_relu_max_pool(x, w, b, 2, 1, 3, 2), (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w: ops.conv2d_relu_max_pool(x, w, None, 1, 1, 2, 2), (x, w))
    torch.library.opcheck(torch.ops.googlenet_fast.conv2d_relu_max_pool.default,
                          (make_input(2, 3, 9, 9, seed=62), torch.randn(4, 3, 3, 3), torch.randn(4), 1, 1, 3, 2))


@pytest.mark.parametrize("call,exc,match", [
    (lambda: ops.conv2d_relu_max_pool(torch.randn(3, 5, 5), torch.randn(2, 3, 3, 3), None, 1, 1, 3, 2),
     ValueError, "x: expected a 4-D"),
    (lambda: ops.conv2d_relu_max_pool(torch.randn(1, 3, 5, 5), torch.randn(2, 4, 3, 3), None, 1, 1, 3, 2),
     ValueError, "weight: expected 3 input channels"),
    (lambda: ops.conv2d_relu_max_pool(torch.randn(1, 3, 5, 5), torch.randn(2, 3, 3, 3), torch.randn(3), 1, 1, 3, 2),
     ValueError, r"bias: expected shape \[2\]"),
    (lambda: ops.conv2d_relu_max_pool(torch.randn(1, 3, 5, 5), torch.randn(2, 3, 3, 3), None, 0, 1, 3, 2),
     ValueError, "stride: expected >= 1"),
    (lambda: ops.conv2d_relu_max_pool(torch.randn(1, 3, 5, 5), torch.randn(2, 3, 3, 3), None, 1, 1, 0, 2),
     ValueError, "pool_kernel: expected >= 1"),
    (lambda: ops.conv2d_relu_max_pool(torch.randn(1, 3, 5, 5), torch.randn(2, 3, 3, 3), None, 1, 1, 3, 0),
     ValueError, "pool_stride: expected >= 1"),
    (lambda: ops.conv2d_relu_max_pool(torch.randn(1, 3, 2, 2), torch.randn(2, 3, 3, 3), None, 1, 0, 3, 2),
     ValueError, "x: spatial size 2x2 is smaller than the 3x3 kernel"),
    (lambda: ops.conv2d_relu_max_pool(torch.randn(1, 3, 3, 3), torch.randn(2, 3, 3, 3), None, 1, 0, 3, 2),
     ValueError, r"the convolution's output 1x1 is too small for a 3x3 / 2 ceil-mode max pool"),
])
def test_conv2d_relu_max_pool_bad_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ------------------------------------------------------------------------------------------------
# avgpool_linear (the classifier head)

def head_ref(x, w, b):
    return F.linear(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1), w, b)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 0.0), (torch.float64, 1e-13)])
@pytest.mark.parametrize("n,c,h,w,out", [(1, 1024, 7, 7, 1000), (3, 70, 2, 3, 10), (2, 16, 1, 1, 5)])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_avgpool_linear_matches_the_modules(dtype, tol, n, c, h, w, out, layout, with_bias):
    g = torch.Generator().manual_seed(n * 1000 + c)
    x = torch.randn(n, c, h, w * (2 if layout == "strided" else 1), generator=g).to(dtype)
    if layout == "strided":
        x = x[..., ::2]  # every other column: neither layout's dense strides
    elif layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    weight = (torch.randn(out, c, generator=g) / c ** 0.5).to(dtype)
    bias = torch.randn(out, generator=g).to(dtype) if with_bias else None
    y = ops.avgpool_linear(x, weight, bias)
    ref = head_ref(x, weight, bias)
    assert y.shape == (n, out) and y.dtype == dtype
    if tol == 0.0:
        assert torch.equal(y, ref)  # bfloat16: ATen's mean rounding and the same oneDNN GEMM
    else:
        assert rel_err(y, ref) <= tol


def test_avgpool_linear_keeps_nan_and_inf():
    x = make_input(2, 8, 3, 3, seed=31)
    x[0, 2, 1, 1] = float("nan")
    x[1, 5, 0, 2] = float("inf")
    weight, bias = torch.randn(4, 8), torch.randn(4)
    y, ref = ops.avgpool_linear(x, weight, bias), head_ref(x, weight, bias)
    assert torch.equal(y.isnan(), ref.isnan()) and y.isnan().any()
    assert torch.equal(y.isinf(), ref.isinf())


def test_avgpool_linear_gradcheck_and_opcheck():
    x = make_input(2, 6, 3, 4, seed=32, dtype=torch.float64).requires_grad_()
    w = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ops.avgpool_linear, (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w: ops.avgpool_linear(x, w, None), (x, w))
    y = ops.avgpool_linear(x.detach(), w, None)  # only the weight needs a gradient
    y.sum().backward()
    assert torch.allclose(w.grad, F.adaptive_avg_pool2d(x.detach(), 1).flatten(1).sum(0).expand(5, 6))
    torch.library.opcheck(torch.ops.googlenet_fast.avgpool_linear.default,
                          (make_input(2, 6, 3, 4, seed=33), torch.randn(5, 6), torch.randn(5)))


@pytest.mark.parametrize("call,exc,match", [
    (lambda: ops.avgpool_linear(torch.randn(3, 5, 5), torch.randn(2, 3)), ValueError, "x: expected a 4-D"),
    (lambda: ops.avgpool_linear(torch.randn(1, 3, 5, 5).long(), torch.randn(2, 3)), TypeError, "x: expected a floating"),
    (lambda: ops.avgpool_linear(torch.randn(1, 3, 5, 5), torch.randn(2, 4)), ValueError,
     r"weight: expected shape \[out_features, 3\]"),
    (lambda: ops.avgpool_linear(torch.randn(1, 3, 5, 5), torch.randn(2, 3).double()), TypeError, "weight: expected dtype"),
    (lambda: ops.avgpool_linear(torch.randn(1, 3, 5, 5), torch.randn(2, 3), torch.randn(3)), ValueError,
     r"bias: expected shape \[2\]"),
    (lambda: ops.avgpool_linear(torch.randn(1, 3, 0, 5), torch.randn(2, 3)), ValueError, "x: expected a non-empty"),
])
def test_avgpool_linear_bad_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_model_head_runs_as_one_op_only_where_the_modules_allow():
    """GoogLeNet(fused=True)'s eval head on the CPU is one avgpool_linear call; a hook on any of
    avgpool / dropout / fc, or autocast (fc would compute in bfloat16), runs the modules."""
    tv = tv_model()
    ours = ours_from(tv)
    x = make_input(2, 3, 40, 40, seed=46)
    with torch.no_grad():
        ref = tv(x)
        with OpLog() as mode:
            y = ours(x)
        assert mode.names.count("googlenet_fast.avgpool_linear") == 1 and rel_err(y, ref) <= 1e-4
        for m in (ours.avgpool, ours.dropout, ours.fc):
            handle = m.register_forward_hook(lambda *a: None)
            try:
                with OpLog() as mode:
                    y_hooked = ours(x)
            finally:
                handle.remove()
            assert "googlenet_fast.avgpool_linear" not in mode.names and rel_err(y_hooked, ref) <= 1e-4
        with torch.autocast("cpu", torch.bfloat16), OpLog() as mode:
            y_amp = ours(x)
        assert "googlenet_fast.avgpool_linear" not in mode.names and y_amp.dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_model_head_packs_fc_weight_once(dtype, monkeypatch):
    """The eval head hands oneDNN fc.weight packed once (model.HEAD_PREPACK): the same bits as the
    plain weight, one packed copy made by the first forward and reused by the next; an in-place
    update under no_grad (version counter), a write through .data followed by
    clear_folded_cache(), and an optimizer step each reach the logits.  With gradients to
    fc.weight nothing is packed."""
    from googlenet_fast import model as gm
    ours = ours_from(tv_model()).to(dtype)
    x = make_input(2, 3, 40, 40, seed=47).to(dtype)
    fc = ours.fc

    def logits(prepack):
        monkeypatch.setattr(gm, "HEAD_PREPACK", prepack)
        ours.clear_folded_cache()
        with torch.no_grad():
            return ours(x)

    def packed_by_one_forward():
        before = native._C._prepacked_weight_count()
        with torch.no_grad():
            y = ours(x)
        return y, native._C._prepacked_weight_count() - before

    for change in (None, "in_place", "data_then_clear", "sgd_step"):
        if change == "in_place":
            with torch.no_grad():
                fc.weight.mul_(-0.5)
        elif change == "data_then_clear":
            fc.weight.data.add_(0.25)
            ours.clear_folded_cache()
        elif change == "sgd_step":
            opt = torch.optim.SGD([fc.weight], lr=1.0)
            fc.weight.grad = torch.full_like(fc.weight, 0.5)
            opt.step()
            fc.weight.grad = None
        monkeypatch.setattr(gm, "HEAD_PREPACK", True)
        y, made_first = packed_by_one_forward()  # (re)packs where the weight changed
        if change == "in_place":
            assert made_first == 1  # fc.weight alone changed: the head's copy, no module refolds
        y_again, made = packed_by_one_forward()
        assert made == 0, change
        plain = logits(False)
        assert torch.equal(y, plain) and torch.equal(y_again, plain), change
    monkeypatch.setattr(gm, "HEAD_PREPACK", True)
    ours.clear_folded_cache()
    with torch.no_grad():
        ours(x)  # the modules' folds and packed copies
    with torch.enable_grad():
        before = native._C._prepacked_weight_count()
        ours(x)  # gradients to the parameters: folds inline, nothing packed
        assert native._C._prepacked_weight_count() == before


def test_max_pool_nhwc_gradcheck_and_opcheck():
    x = make_input(1, 3, 7, 7, seed=23, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: ops.max_pool_nhwc(x, 3, 2, True), (x,))
    assert torch.autograd.gradcheck(lambda x: ops.max_pool_nhwc(x, 2, 2), (x,))
    torch.library.opcheck(torch.ops.googlenet_fast.max_pool_nhwc.default, (make_input(2, 5, 7, 7, seed=24), 3, 2, True))


@pytest.mark.parametrize("call,exc,match", [
    (lambda: ops.max_pool_nhwc(torch.randn(3, 5, 5), 3, 2), ValueError, "x: expected a 4-D"),
    (lambda: ops.max_pool_nhwc(torch.randn(1, 3, 5, 5).long(), 3, 2), TypeError, "x: expected a floating"),
    (lambda: ops.max_pool_nhwc(torch.randn(1, 3, 5, 5), 0, 2), ValueError, "kernel: expected >= 1"),
    (lambda: ops.max_pool_nhwc(torch.randn(1, 3, 5, 5), 3, 0), ValueError, "stride: expected >= 1"),
    (lambda: ops.max_pool_nhwc(torch.randn(1, 3, 1, 5), 3, 2), ValueError, "x: spatial size 1x5 is too small"),
])
def test_max_pool_nhwc_bad_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ------------------------------------------------------------------------------------------------
# weight_prepacking

def test_prepacked_weight_follows_in_place_updates_and_input_shapes():
    w = make_input(8, 4, 3, 3, seed=30)
    b = make_input(8, seed=31)
    with ops.weight_prepacking():
        for batch in (1, 3, 1):  # one packed copy per input shape
            x = make_input(batch, 4, 6, 6, seed=32 + batch)
            assert rel_err(ops.conv2d_relu(x, w, b, 1, 1), conv_ref(x, w, b, 1, 1)) <= 1e-5
        w.mul_(-2)  # bumps the version counter: repacked
        assert rel_err(ops.conv2d_relu(x, w, b, 1, 1), conv_ref(x, w, b, 1, 1)) <= 1e-5
        w2 = w.clone()  # same values, another storage
        assert torch.equal(ops.conv2d_relu(x, w2, b, 1, 1), ops.conv2d_relu(x, w, b, 1, 1))


def test_without_prepacking_untracked_writes_are_seen():
    """Outside weight_prepacking nothing is cached: a write through .data (no version bump) counts."""
    w = make_input(8, 4, 3, 3, seed=33)
    x = make_input(1, 4, 6, 6, seed=34)
    ops.conv2d_relu(x, w, None, 1, 1)
    w.data.mul_(-1)
    assert rel_err(ops.conv2d_relu(x, w, None, 1, 1), conv_ref(x, w, None, 1, 1)) <= 1e-5


def test_packed_copies_of_freed_weights_are_dropped():
    x = make_input(1, 4, 6, 6, seed=36)
    with ops.weight_prepacking():
        ws = [make_input(8, 4, 3, 3, seed=37 + i) for i in range(5)]
        for w in ws:
            ops.conv2d_relu(x, w, None, 1, 1)
        held = native._C._prepacked_weight_count()
        assert held >= 5
        del ws, w  # freed: their copies go when the next one is made
        keep = make_input(8, 4, 3, 3, seed=50)
        ops.conv2d_relu(x, keep, None, 1, 1)
        assert native._C._prepacked_weight_count() <= held - 5 + 1


def _reorders_in(capfd, call):
    """oneDNN reorder primitives executed by ``call()`` (its verbose log, captured at the fd)."""
    capfd.readouterr()
    with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
        call()
    lines = [ln for ln in capfd.readouterr().out.splitlines() if ",exec," in ln]
    assert lines  # the capture works
    return [ln for ln in lines if ",reorder," in ln]


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prepacked_weight_follows_the_thread_count(capfd, restore_threads, dtype):
    """oneDNN's blocked weight layout depends on the threads a call runs with: a copy packed under
    2 threads, used after torch.set_num_threads(1), was reordered on every call (3b's 3x3 weight
    in bfloat16 on the 2-core EPYC: AcdB48a2b -> AcdB64a2b, 8.9 ms a call).  Each thread count
    gets its own copy: no reorder runs in a steady-state call, whatever the order of counts."""
    x = make_input(1, 128, 28, 28, seed=60).to(dtype).contiguous(memory_format=torch.channels_last)
    w = (make_input(192, 128, 3, 3, seed=61) / 34).to(dtype)
    b = make_input(192, seed=62).to(dtype)
    ref = ops.conv2d_relu(x, w, b, 1, 1)  # unpacked: oneDNN reorders the plain weight per call
    with ops.weight_prepacking():
        for threads in (2, 1, 2, 1):
            torch.set_num_threads(threads)
            before = native._C._prepacked_weight_count()
            ops.conv2d_relu(x, w, b, 1, 1)  # packed for this thread count (first time) or reused
            assert _reorders_in(capfd, lambda: ops.conv2d_relu(x, w, b, 1, 1)) == []
            y = ops.conv2d_relu(x, w, b, 1, 1)
            assert native._C._prepacked_weight_count() <= before + 1
            assert torch.equal(y, ref)


def test_prepacked_copies_in_one_layout_share_a_tensor(capfd):
    """Keys (input shapes) whose packed layout is the same share one packed tensor: memory grows
    with the layouts, so the cache can hold many keys."""
    if native._C._prepacked_weight_capacity() == 256:
        pytest.skip("this torch build has no mkldnn::_get_mkldnn_serialized_md: nothing is shared")
    w = make_input(48, 32, 3, 3, seed=63)
    with ops.weight_prepacking():
        keep = make_input(4, 32, 1, 1, seed=64)  # a new copy first drops the copies of freed weights
        ops.conv2d_relu(make_input(1, 32, 5, 5, seed=65), keep, None, 1, 0)
        keys, tensors = native._C._prepacked_weight_count(), native._C._prepacked_weight_tensors()
        xs = [make_input(n, 32, 9, 9, seed=66 + n) for n in range(1, 9)]
        for x in xs:  # eight input shapes: eight keys
            ops.conv2d_relu(x, w, None, 1, 1)
        assert native._C._prepacked_weight_count() == keys + 8
        assert native._C._prepacked_weight_tensors() < tensors + 8  # some layouts shared
        for x in xs:  # all hits: no reorder, the right values
            assert _reorders_in(capfd, lambda: ops.conv2d_relu(x, w, None, 1, 1)) == []
            assert rel_err(ops.conv2d_relu(x, w, None, 1, 1), conv_ref(x, w, None, 1, 1)) <= 1e-5


def test_prepacked_cache_holds_more_keys_than_a_batch_size_cycle_needs(capfd):
    """A server cycling through batch sizes 1-8 made ~270 keys for GoogLeNet: with the former 256
    every call evicted and repacked.  Past 256 keys the first is still a hit."""
    if native._C._prepacked_weight_capacity() == 256:
        pytest.skip("this torch build has no mkldnn::_get_mkldnn_serialized_md: 256 keys")
    w = make_input(8, 4, 3, 3, seed=70)
    xs = [make_input(1, 4, 4, h, seed=71) for h in range(4, 4 + 300)]  # 300 input shapes
    with ops.weight_prepacking():
        for x in xs:
            ops.conv2d_relu(x, w, None, 1, 1)
        assert native._C._prepacked_weight_count() >= 300
        assert _reorders_in(capfd, lambda: ops.conv2d_relu(xs[0], w, None, 1, 1)) == []


def test_prepacking_setting_is_restored():
    with ops.weight_prepacking():
        with ops.weight_prepacking(False):
            assert native._C._set_weight_prepacking(False) is False
        assert native._C._set_weight_prepacking(True) is True
    assert native._C._set_weight_prepacking(False) is False


def test_inception_op_prepacked_weights_follow_updates():
    from inception_cases import TABLE1, make_weights, reference64
    ws = list(make_weights(TABLE1["4e"], k5=5))
    x = make_input(1, TABLE1["4e"][0], 5, 5, seed=35).contiguous(memory_format=torch.channels_last)
    with ops.weight_prepacking():
        for _ in range(2):
            assert rel_err(ops.inception(x, *ws, backend="cpu"), reference64(x, ws)) <= 1e-4
        for i in (0, 4, 8, 10):  # merged 1x1 (w_1x1), w_3x3, w_5x5, w_pool_proj
            ws[i].mul_(0.5)
            assert rel_err(ops.inception(x, *ws, backend="cpu"), reference64(x, ws)) <= 1e-4
        # the model's layout: the three 1x1 weights as adjacent row slices of one buffer, which
        # the op reads in place (one packed copy of the merged weight)
        merged = torch.cat([ws[0], ws[2], ws[6]])
        c1, r3 = ws[0].shape[0], ws[2].shape[0]
        ws[0], ws[2], ws[6] = merged[:c1], merged[c1:c1 + r3], merged[c1 + r3:]
        for i in (2, 6, 0):
            assert rel_err(ops.inception(x, *ws, backend="cpu"), reference64(x, ws)) <= 1e-4
            ws[i].mul_(-1)  # a view's in-place update bumps the buffer's shared version counter
            assert rel_err(ops.inception(x, *ws, backend="cpu"), reference64(x, ws)) <= 1e-4


# ------------------------------------------------------------------------------------------------
# the model

def count_ops(model, x):
    """The model's output and the extension ops its steady-state eval forward runs (the third
    call: the first folds the weights, the second records the CPU op program, whose dispatch
    mode the profiler would count twice)."""
    with torch.no_grad():
        model(x)
        model(x)
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        y = model(x)
    names = [e.name for e in prof.events()]
    kinds = ("conv2d_relu", "conv2d_relu_max_pool", "max_pool_nhwc", "avgpool_linear")
    return y, {k: sum(n == f"googlenet_fast::{k}" for n in names) for k in kinds}, names


def test_model_cpu_eval_runs_stem_and_pools_through_the_ops():
    tv = tv_model()
    ours = ours_from(tv)
    x = make_input(2, 3, 40, 40, seed=40)
    y, counts, names = count_ops(ours, x)
    with torch.no_grad():
        ref = tv(x)
    assert rel_err(y, ref) <= 1e-4
    # conv2; conv1 + maxpool1 and conv3 + maxpool2; maxpool3 and maxpool4; the head
    assert counts == {"conv2d_relu": 1, "conv2d_relu_max_pool": 2, "max_pool_nhwc": 2, "avgpool_linear": 1}
    assert not any(n in ("aten::max_pool2d_with_indices", "aten::addmm", "aten::mean") for n in names)
    unfused = ours_from(tv, fused=False)
    _, counts, _ = count_ops(unfused, x)
    assert counts == {"conv2d_relu": 0, "conv2d_relu_max_pool": 0, "max_pool_nhwc": 0, "avgpool_linear": 0}


def test_model_paper_variant_pools_through_the_op():
    torch.manual_seed(0)
    fused = GoogLeNet(variant="paper", aux_logits=False, init_weights=True, fused=True).eval()
    plain = copy.deepcopy(fused).set_fused(False)
    x = make_input(1, 3, 40, 40, seed=41)
    y, counts, _ = count_ops(fused, x)
    with torch.no_grad():
        assert rel_err(y, plain(x)) <= 1e-4
    # ConvReLU stem: plain convolutions; the paper's head: fc on the pooled features
    assert counts == {"conv2d_relu": 0, "conv2d_relu_max_pool": 0, "max_pool_nhwc": 4, "avgpool_linear": 1}


def test_model_hooks_still_fire():
    """A hook on a stem conv or a pool makes the model call that module (the fast path would skip it)."""
    tv = tv_model()
    ours = ours_from(tv)
    x = make_input(1, 3, 40, 40, seed=42)
    seen = []
    handles = [ours.conv1.register_forward_hook(lambda m, a, out: seen.append(("conv1", out.shape))),
               ours.maxpool3.register_forward_pre_hook(lambda m, a: seen.append(("maxpool3", a[0].shape)))]
    y, counts, _ = count_ops(ours, x)
    assert [s[0] for s in seen] == ["conv1", "maxpool3"] * 3  # in each of count_ops' three calls
    # conv1 runs as a module (conv2d_relu, its ReLU before the pool; then maxpool1 as max_pool_nhwc),
    # maxpool3 as nn.MaxPool2d; conv2, conv3 + maxpool2, maxpool4 and the head as before
    assert counts == {"conv2d_relu": 2, "conv2d_relu_max_pool": 1, "max_pool_nhwc": 2, "avgpool_linear": 1}
    with torch.no_grad():
        assert rel_err(y, tv(x)) <= 1e-4
    for h in handles:
        h.remove()


def test_model_nan_input_matches_torchvision():
    tv = tv_model()
    ours = ours_from(tv)
    x = make_input(2, 3, 40, 40, seed=43)
    x[0, 0, 5, 5] = float("nan")
    with torch.no_grad():
        y, ref = ours(x), tv(x)
    assert y[0].isnan().all() and ref[0].isnan().all()
    assert rel_err(y[1:], ref[1:]) <= 1e-4


def test_model_weights_updated_between_eval_calls():
    """Folded weights are rebuilt after an in-place update; the packed copies follow them."""
    tv = tv_model()
    ours = ours_from(tv)
    x = make_input(1, 3, 40, 40, seed=44)
    with torch.no_grad():
        ours(x)
        for m in (ours, tv):
            m.conv1.conv.weight.mul_(1.5)
            m.inception5b.branch2[1].conv.weight.mul_(-1)
        assert rel_err(ours(x), tv(x)) <= 1e-4


def test_model_no_grad_eval_runs_below_autograd_with_normal_outputs():
    """Under no_grad the CPU eval path calls the extension's ops below the Autograd dispatch key
    (what each op's autograd kernel would do itself): same logits as with grad enabled and under inference_mode,
    an ordinary output tensor usable in later autograd code, and dispatch modes still see the
    extension's ops."""

    tv = tv_model()
    ours = ours_from(tv)
    x = make_input(2, 3, 40, 40, seed=45)
    with torch.no_grad():
        y = ours(x)
        ref = tv(x)
    with torch.inference_mode():
        y_inf = ours(x)
    y_grad = ours(x)  # grad enabled: parameters require grad, folded inline, autograd records
    assert rel_err(y, ref) <= 1e-4
    assert torch.equal(y, y_inf)
    assert rel_err(y, y_grad.detach()) <= 1e-6 and y_grad.requires_grad
    assert not y.is_inference() and y.grad_fn is None and not y.requires_grad
    w = torch.ones_like(y, requires_grad=True)
    (y * w).sum().backward()  # an ordinary tensor: usable (and saved) in autograd afterwards
    assert torch.equal(w.grad, y)
    with torch.no_grad(), OpLog() as mode:
        y_mode = ours(x)
    assert torch.equal(y_mode, y)
    assert mode.names.count("googlenet_fast.inception") == 9
    assert mode.names.count("googlenet_fast.max_pool_nhwc") == 2
    assert mode.names.count("googlenet_fast.conv2d_relu_max_pool") == 2
    assert mode.names.count("googlenet_fast.avgpool_linear") == 1 and "aten.addmm" not in mode.names

    # Only the extension's op calls skip the Autograd key: a hook that turns grad back on inside
    # a no_grad forward (feature-visualization code does) still records and differentiates.
    grads = []

    def hook(module, args, out):
        with torch.enable_grad():
            t = out.detach().requires_grad_()
            (t * 3).sum().backward()
            grads.append(t.grad)

    handle = ours.avgpool.register_forward_hook(hook)
    try:
        with torch.no_grad():
            y_hooked = ours(x)
    finally:
        handle.remove()
    # the hooked avgpool makes the head run as modules (mean + addmm) instead of
    # googlenet_fast::avgpool_linear: the same values up to float32 rounding, as y_grad above
    assert rel_err(y_hooked, y) <= 1e-6
    assert len(grads) == 1 and torch.equal(grads[0], torch.full_like(grads[0], 3.0))


def test_standalone_modules_prepack_their_own_folded_weights():
    """An Inception or BasicConv2d module used on its own (not inside GoogLeNet) also lets oneDNN
    keep packed copies of its cached folded weights: the first eval call packs them, the next
    reuses them, and the outputs are the plain modules'."""
    from googlenet_fast.model import BasicConv2d, Inception

    torch.manual_seed(0)
    block = Inception(32, 16, 8, 16, 4, 8, 8).eval()
    conv = BasicConv2d(32, 24, kernel_size=3, padding=1).eval()
    conv.fused = True  # (GoogLeNet sets it on its stem; a BasicConv2d alone defaults to False)
    for m in (block, conv):
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
    x = make_input(2, 32, 9, 9, seed=46).contiguous(memory_format=torch.channels_last)
    keep = make_input(4, 32, 1, 1, seed=47)
    # oneDNN copies per module: Inception = merged 1x1 + pool projection (inner products) + the
    # two KxK convolutions; BasicConv2d = its convolution
    for m, copies in ((block, 4), (conv, 1)):
        plain = copy.deepcopy(m)
        plain.fused = False
        gc.collect()
        with torch.no_grad():
            with ops.weight_prepacking():  # a new copy first drops the copies of freed weights
                ops.conv2d_relu(x, keep, None, 1, 0)
            before = native._C._prepacked_weight_count()
            assert before < 200  # room left: no least-recently-used eviction below
            y1 = m(x)
            packed = native._C._prepacked_weight_count()
            y2 = m(x)
            assert native._C._prepacked_weight_count() == packed  # reused, not packed again
            ref = plain(x)
        assert packed == before + copies
        assert torch.equal(y1, y2)
        assert rel_err(y1, ref) <= 1e-5


# ------------------------------------------------------------------------------------------------
# Biases that are not dense vectors (a strided slice, an expanded scalar): oneDNN reads a bias as a
# dense vector, so the ops hand it a dense copy (found by a fresh-user check, 2026-12-05: values
# read past an expanded bias's one-element storage)

def _odd_biases(n, dtype):
    return {"strided": (torch.arange(2.0 * n) / n).to(dtype)[::2],
            "expanded": torch.tensor([0.75]).to(dtype).expand(n)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("kind", ["strided", "expanded"])
def test_ops_read_non_dense_biases_as_pytorch_does(dtype, kind):
    x = make_input(2, 4, 8, 8, seed=70).to(dtype).contiguous(memory_format=torch.channels_last)
    w = (torch.randn(6, 4, 3, 3, generator=torch.Generator().manual_seed(70)) * 0.3).to(dtype)
    b = _odd_biases(6, dtype)[kind]
    assert not b.is_contiguous() or b.stride() == (0,)
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
    dense = b.contiguous()
    assert rel_err(ops.conv2d_relu(x, w, b, 1, 1), ops.conv2d_relu(x, w, dense, 1, 1)) == 0
    assert rel_err(ops.conv2d_relu_max_pool(x, w, b, 1, 1, 3, 2), ops.conv2d_relu_max_pool(x, w, dense, 1, 1, 3, 2)) == 0
    ref = F.max_pool2d(torch.relu(F.conv2d(x.double(), w.double(), dense.double(), 1, 1)), 3, 2, ceil_mode=True)
    assert rel_err(ops.conv2d_relu_max_pool(x, w, b, 1, 1, 3, 2), ref) <= tol
    wl = (torch.randn(6, 4, generator=torch.Generator().manual_seed(71))).to(dtype)
    assert torch.equal(ops.avgpool_linear(x, wl, b), ops.avgpool_linear(x, wl, dense))
    assert rel_err(ops.avgpool_linear(x, wl, b), head_ref(x.double(), wl.double(), dense.double())) <= tol


def test_model_with_a_non_dense_fc_bias_matches_torchvision():
    tv = tv_model()
    ours = ours_from(tv)
    with torch.no_grad():
        for m in (tv, ours):
            m.fc.bias = torch.nn.Parameter((torch.arange(2000.0) / 1000)[::2])  # strided
    assert not ours.fc.bias.is_contiguous()
    x = make_input(2, 3, 40, 40, seed=72)
    with torch.no_grad():
        ours(x)
        assert rel_err(ours(x), tv(x)) <= 1e-4


def test_avgpool_linear_float16_and_no_channels():
    x, w, b = make_input(2, 3, 4, 4, seed=73).half(), torch.randn(5, 3).half(), torch.randn(5).half()
    y = ops.avgpool_linear(x, w, b)
    assert y.dtype == torch.float16 and rel_err(y, head_ref(x.float(), w.float(), b.float())) <= 2e-3
    # no channels: an empty sum, the bias alone (as F.linear)
    e = ops.avgpool_linear(torch.randn(2, 0, 4, 4), torch.randn(5, 0), torch.arange(5.0))
    assert torch.equal(e, torch.arange(5.0).expand(2, 5))
    assert torch.equal(ops.avgpool_linear(torch.randn(2, 0, 4, 4), torch.randn(5, 0), None), torch.zeros(2, 5))


@pytest.mark.parametrize("op", [lambda x, w: ops.conv2d_relu(x, w, None, 1, 1),
                                lambda x, w: ops.conv2d_relu_max_pool(x, w, None, 1, 1, 3, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_convolutions_without_input_channels_are_refused(op, dtype):
    with pytest.raises(ValueError, match="x: expected at least one input channel"):
        op(torch.randn(2, 0, 8, 8, dtype=dtype), torch.randn(4, 0, 3, 3, dtype=dtype))


def test_eval_pools_given_as_lists():
    """nn.MaxPool2d sizes given as lists ([3, 3], [2, 2]) are the same pool as 3, 2: the fused CPU
    eval path runs them through its ops (it raised a schema error before) with the same output."""
    import torch.nn as nn
    from googlenet_fast import GoogLeNet

    torch.manual_seed(0)
    model = GoogLeNet(fused=True, init_weights=True).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        ref = model(x)
        model.maxpool3 = nn.MaxPool2d([3, 3], [2, 2], ceil_mode=True)
        model.maxpool4 = nn.MaxPool2d((2,), stride=[])
        model.maxpool4.ceil_mode = True
        assert torch.equal(model(x), ref)
