"""googlenet_fast::max_pool2d_tap / max_pool2d_tap_backward_ (csrc/cpu/max_pool_train_cpu.cpp) and
googlenet_fast.pool_train: ATen's max_pool2d_with_indices forward and backward, bit for bit, with
one-byte argmax taps; their argument checks; and their use by GoogLeNet(fused=True) in train mode.
On a CPU with AVX-512BW the ops run max_pool_tap_avx512.h's kernels; tests/test_portable_loops.py
runs the parity checks again with the portable loops."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from googlenet_fast import GoogLeNet, pool_train

gf = torch.ops.googlenet_fast
aten = torch.ops.aten
CL = torch.channels_last

# (kernel, stride, padding, ceil_mode): GoogLeNet's (3/1/1 in every Inception module's pool branch,
# 3/2/0 and 2/2/0 ceil between the stages) and others nn.MaxPool2d allows.
WINDOWS = [(3, 1, 1, True), (3, 2, 0, True), (2, 2, 0, True), (3, 2, 1, False), (3, 3, 0, True),
           (5, 2, 2, True), (2, 1, 0, False), (1, 1, 0, False), (16, 4, 8, True),
           (2, 3, 0, False)]  # stride > kernel: input pixels no window reaches (gradient +0)
SHAPES = [(2, 70, 9, 11), (1, 3, 7, 7), (3, 64, 6, 5), (1, 200, 4, 4)]
DTYPES = [torch.float32, torch.bfloat16, torch.float64]


def _bits(t):
    t = t.contiguous()
    return t.view({torch.bfloat16: torch.int16, torch.float32: torch.int32, torch.float64: torch.int64}[t.dtype])


def _input(shape, dtype, seed=0):
    """Small integers (many ties: the argmax rule decides), a NaN, -inf, -0.0; channels_last."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-3, 4, shape, generator=g).to(dtype)
    x[0, 0, 0, 0] = float("nan")
    x[-1, -1, -1, -1] = float("-inf")
    x[0, min(1, shape[1] - 1), min(1, shape[2] - 1), min(1, shape[3] - 1)] = -0.0
    return x.contiguous(memory_format=CL)


def _tap_of(idx, x_shape, window):
    """ATen's flat input index -> our tap, (ih - oh * s + p) * k + (iw - ow * s + p)."""
    k, s, p, _ = window
    w = x_shape[3]
    oh = torch.arange(idx.shape[2]).view(1, 1, -1, 1)
    ow = torch.arange(idx.shape[3]).view(1, 1, 1, -1)
    ih, iw = idx // w, idx % w
    return ((ih - oh * s + p) * k + (iw - ow * s + p)).to(torch.uint8)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window", WINDOWS)
def test_forward_and_taps_match_aten(dtype, window):
    k, s, p, ceil = window
    for shape in SHAPES:
        x = _input(shape, dtype)
        y_ref, idx = aten.max_pool2d_with_indices(x, [k, k], [s, s], [p, p], [1, 1], ceil)
        y, tap = gf.max_pool2d_tap(x, k, s, p, ceil)
        assert y.shape == y_ref.shape and tap.dtype == torch.uint8 and tap.shape == y.shape
        assert y.is_contiguous(memory_format=CL) and tap.is_contiguous(memory_format=CL)
        nan = torch.isnan(y_ref)
        assert torch.equal(nan, torch.isnan(y))
        # every value bit for bit (-0.0 included); a NaN max is a NaN (ATen's vectorized bfloat16
        # store sets other payload bits than its scalar tail: only NaN-ness is compared there)
        assert torch.equal(_bits(y_ref)[~nan], _bits(y)[~nan]), (shape, window)
        assert torch.equal(_tap_of(idx, shape, window), tap), (shape, window)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window", WINDOWS)
def test_backward_matches_aten(dtype, window):
    k, s, p, ceil = window
    for i, shape in enumerate(SHAPES):
        x = _input(shape, dtype, seed=i)
        _, idx = aten.max_pool2d_with_indices(x, [k, k], [s, s], [p, p], [1, 1], ceil)
        _, tap = gf.max_pool2d_tap(x, k, s, p, ceil)
        g = torch.Generator().manual_seed(10 + i)
        gy = torch.randn(idx.shape, generator=g).to(dtype).contiguous(memory_format=CL)
        ref = aten.max_pool2d_with_indices_backward(gy, x, [k, k], [s, s], [p, p], [1, 1], ceil, idx)
        gx = torch.full_like(x, 7.0)  # overwritten: rows no window reaches get 0
        gf.max_pool2d_tap_backward_(gx, gy, tap, k, s, p, False)
        assert torch.equal(_bits(ref), _bits(gx)), (shape, window)
        base = torch.randn(x.shape, generator=g).to(dtype).contiguous(memory_format=CL)
        acc = base.clone()
        gf.max_pool2d_tap_backward_(acc, gy, tap, k, s, p, True)
        assert torch.equal(_bits(base + ref), _bits(acc)), (shape, window)


def test_backward_channel_groups_and_many_images():
    """Batch 1 splits the channels between the threads, a large batch does not: same sums."""
    for shape in [(1, 300, 10, 10), (9, 130, 5, 6)]:
        x = torch.randn(shape).contiguous(memory_format=CL)
        y_ref, idx = aten.max_pool2d_with_indices(x, [3, 3], [1, 1], [1, 1], [1, 1], True)
        _, tap = gf.max_pool2d_tap(x, 3, 1, 1, True)
        gy = torch.randn(y_ref.shape).contiguous(memory_format=CL)
        ref = aten.max_pool2d_with_indices_backward(gy, x, [3, 3], [1, 1], [1, 1], [1, 1], True, idx)
        for threads in (1, 2):
            prev = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                gx = torch.empty_like(x)
                gf.max_pool2d_tap_backward_(gx, gy, tap, 3, 1, 1, False)
            finally:
                torch.set_num_threads(prev)
            assert torch.equal(ref, gx)


def test_any_input_layout():
    x = torch.randn(2, 5, 8, 9)  # contiguous (NCHW): made channels_last inside
    y_ref = F.max_pool2d(x, 3, 2, 1, ceil_mode=True)
    y, _ = gf.max_pool2d_tap(x, 3, 2, 1, True)
    assert torch.equal(y_ref, y)


def test_max_pool2d_train_autograd_matches_torch():
    """pool_train.max_pool2d_train: values and input gradient as F.max_pool2d's (float64, exact);
    once differentiable."""
    x = torch.randn(2, 6, 11, 11, dtype=torch.float64).contiguous(memory_format=CL)
    for window in [(3, 2, 0, True), (3, 1, 1, True), (2, 2, 0, True)]:
        k, s, p, ceil = window
        a = x.clone().requires_grad_()
        b = x.clone().requires_grad_()
        ya = pool_train.max_pool2d_train(a, window)
        yb = F.max_pool2d(b, k, s, p, ceil_mode=ceil)
        assert torch.equal(ya, yb)
        gy = torch.randn(ya.shape, dtype=torch.float64)
        ya.backward(gy)
        yb.backward(gy)
        assert torch.equal(a.grad, b.grad)
    a = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(pool_train.max_pool2d_train(a, (3, 2, 0, True)).square().sum(), a, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        g.sum().backward()


def test_pool_window():
    assert pool_train.pool_window(nn.MaxPool2d(3, 2, ceil_mode=True)) == (3, 2, 0, True)
    assert pool_train.pool_window(nn.MaxPool2d(3, 1, padding=1, ceil_mode=True)) == (3, 1, 1, True)
    assert pool_train.pool_window(nn.MaxPool2d(2)) == (2, 2, 0, False)
    assert pool_train.pool_window(nn.MaxPool2d(3, 2, dilation=2)) is None
    assert pool_train.pool_window(nn.MaxPool2d((3, 2), 2)) is None
    assert pool_train.pool_window(nn.MaxPool2d(3, 2, return_indices=True)) is None
    assert pool_train.pool_window(nn.AvgPool2d(3)) is None
    assert pool_train.pool_window(nn.MaxPool2d(17, 1)) is None


def test_argument_errors():
    x = torch.randn(1, 4, 6, 6)
    with pytest.raises(ValueError, match="kernel: expected 1 to 16"):
        gf.max_pool2d_tap(x, 17, 1, 0, False)
    with pytest.raises(ValueError, match="padding: expected 0 to kernel / 2"):
        gf.max_pool2d_tap(x, 3, 1, 2, False)
    with pytest.raises(ValueError, match="stride: expected a positive value"):
        gf.max_pool2d_tap(x, 3, 0, 1, False)
    with pytest.raises(TypeError, match="x: expected float32, float64 or bfloat16"):
        gf.max_pool2d_tap(x.to(torch.int32), 3, 1, 1, False)
    with pytest.raises(ValueError, match="x: expected a 4-D"):
        gf.max_pool2d_tap(x[0], 3, 1, 1, False)
    with pytest.raises(ValueError, match="x: input of spatial size 2x2 is too small"):
        gf.max_pool2d_tap(torch.randn(1, 4, 2, 2), 3, 1, 0, False)
    y, tap = gf.max_pool2d_tap(x, 3, 2, 0, True)
    gx = torch.empty_like(x, memory_format=CL)
    with pytest.raises(TypeError, match="tap: expected uint8"):
        gf.max_pool2d_tap_backward_(gx, y, tap.to(torch.int64), 3, 2, 0, False)
    with pytest.raises(ValueError, match="tap: expected grad_y's shape"):
        gf.max_pool2d_tap_backward_(gx, y, tap[:, :, :1], 3, 2, 0, False)
    with pytest.raises(TypeError, match="grad_y: expected Float"):
        gf.max_pool2d_tap_backward_(gx, y.double(), tap, 3, 2, 0, False)
    with pytest.raises(ValueError, match="grad_y: spatial size 3x3 is not the 3x3 / stride 1"):
        gf.max_pool2d_tap_backward_(gx, y, tap, 3, 1, 1, False)
    with pytest.raises(ValueError, match="grad_x: expected a channels_last tensor"):
        gf.max_pool2d_tap_backward_(torch.empty(1, 4, 6, 6)[:, :, :, :], y, tap, 3, 2, 0, False)


def test_fused_train_mode_runs_the_tap_pools():
    """GoogLeNet(fused=True) in train mode on the CPU: the 4 network max pools and the 9 pool
    branches run the tap ops forward (the stem's two with BatchNorm + ReLU inside) and backward, ATen's max pool none (the values and gradients
    against torchvision's model: tests/test_train_parity.py)."""
    torch.manual_seed(0)
    model = GoogLeNet(fused=True, init_weights=True, aux_logits=False).train()
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=CL)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model(x).square().mean().backward()
    names = [e.name for e in prof.events()]
    # the stem's conv1 -> maxpool1 and conv3 -> maxpool2 pool relu(batch_norm(pre)) computed in
    # their window scan where the extension's float32 apply is ATen's (tests/test_bn_train.py)
    stem_bn = 2 if gf.bn_relu_mask_from_pre(torch.float32) else 0
    assert names.count("googlenet_fast::max_pool2d_tap_bn_relu") == stem_bn
    assert names.count("googlenet_fast::max_pool2d_tap") == 13 - stem_bn
    # their backward: the pool's and the BatchNorm's in one op (float32, bn_train.FUSED_POOL_BN_BACKWARD)
    assert names.count("googlenet_fast::max_pool2d_tap_bn_relu_backward") == stem_bn
    assert names.count("googlenet_fast::max_pool2d_tap_backward_") == 13 - stem_bn
    assert not any("max_pool2d_with_indices" in n for n in names)
    model.eval()  # eval: the extension's inference ops, no tap pools
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model(x)
    assert not any("max_pool2d_tap" in e.name for e in prof.events())


def test_accumulate_turns_minus_zero_into_plus_zero_as_add_does():
    """Rows and columns no window reaches: grad_x + 0 there too (-0.0 -> +0.0, as ATen's add_)."""
    for dtype in DTYPES:
        x = torch.randn(1, 4, 5, 5).to(dtype).contiguous(memory_format=CL)
        for k, s, p in [(1, 2, 0), (2, 3, 0), (3, 1, 1)]:
            _, idx = aten.max_pool2d_with_indices(x, [k, k], [s, s], [p, p], [1, 1], False)
            _, tap = gf.max_pool2d_tap(x, k, s, p, False)
            gy = torch.randn(idx.shape).to(dtype).contiguous(memory_format=CL)
            ref = aten.max_pool2d_with_indices_backward(gy, x, [k, k], [s, s], [p, p], [1, 1], False, idx)
            base = torch.full_like(x, -0.0)
            gx = base.clone()
            gf.max_pool2d_tap_backward_(gx, gy, tap, k, s, p, True)
            assert torch.equal(_bits(base.add_(ref)), _bits(gx)), (dtype, k, s, p)


def test_opcheck():
    x = torch.randn(2, 5, 9, 9).contiguous(memory_format=CL)
    torch.library.opcheck(gf.max_pool2d_tap.default, (x, 3, 2, 1, True))
    y, tap = gf.max_pool2d_tap(x, 3, 2, 1, True)
    torch.library.opcheck(gf.max_pool2d_tap_backward_.default,
                          (torch.empty_like(x, memory_format=CL), torch.randn_like(y), tap, 3, 2, 1, False))


def test_pool_window_size_arguments():
    """Sizes as lists, 1-tuples or an empty stride (= kernel, as F.max_pool2d): the window; anything
    the tap ops do not compute: None (the module runs)."""
    assert pool_train.pool_window(nn.MaxPool2d([3, 3], [2, 2], ceil_mode=True)) == (3, 2, 0, True)
    assert pool_train.pool_window(nn.MaxPool2d((3,), (2,))) == (3, 2, 0, False)
    assert pool_train.pool_window(nn.MaxPool2d(3, stride=())) == (3, 3, 0, False)
    assert pool_train.pool_window(nn.MaxPool2d(3, stride=[])) == (3, 3, 0, False)
    assert pool_train.pool_window(nn.MaxPool2d([3, 2], 2)) is None
    assert pool_train.pool_window(nn.MaxPool2d(3, [2, 1])) is None


def test_fused_train_model_with_list_sized_pool():
    torch.manual_seed(0)
    model = GoogLeNet(fused=True, init_weights=True, aux_logits=False).train()
    model.maxpool1 = nn.MaxPool2d([3, 3], [2, 2], ceil_mode=True)
    model(torch.randn(2, 3, 64, 64)).sum().backward()


def test_standalone_inception_train_any_layout():
    """A train-mode Inception module on an NCHW input (the network converts its input to
    channels_last; a module used on its own gets whatever layout): its gradients equal
    torchvision's block's (float64)."""
    import importlib

    tvg = importlib.import_module("torchvision.models.googlenet")  # the module (the package's name is the builder)
    from googlenet_fast import Inception

    torch.manual_seed(0)
    ours = Inception(192, 64, 96, 128, 16, 32, 32).double().train()
    ref = tvg.Inception(192, 64, 96, 128, 16, 32, 32).double().train()
    ref.load_state_dict(ours.state_dict())
    for layout in (torch.contiguous_format, CL):
        x = torch.randn(2, 192, 7, 7, dtype=torch.float64).contiguous(memory_format=layout)
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        gy = torch.randn(2, 256, 7, 7, dtype=torch.float64)
        ours(a).backward(gy)
        ref(b).backward(gy)
        assert (a.grad - b.grad).abs().max() <= 1e-10 * b.grad.abs().max()
        for (n, p), q in zip(ours.named_parameters(), ref.parameters()):
            assert (p.grad - q.grad).abs().max() <= 1e-10 * q.grad.abs().max().clamp_min(1e-30), n
        ours.zero_grad()
        ref.zero_grad()

