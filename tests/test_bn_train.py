"""googlenet_fast.bn_train.inception_bn_train: the train-mode BatchNorm stage of an Inception module
(pre-BN branch outputs, reduce BN + ReLU inside stage 2), its autograd and its argument checks,
against the plain PyTorch composition (backends/reference.py) on every CPU-runnable backend."""
import os

import pytest
import torch

from googlenet_fast import bn_train
from googlenet_fast.backends.reference import inception_bn_train_reference

# (n, cin, h, w, ch1x1, ch3x3red, ch3x3, k3, ch5x5red, ch5x5, k5, pool_proj)
CONFIGS = [
    (2, 16, 5, 4, 8, 6, 10, 3, 4, 6, 5, 5),
    (3, 12, 7, 7, 5, 4, 6, 3, 3, 5, 3, 4),
    (2, 8, 1, 2, 3, 2, 3, 3, 2, 2, 1, 3),   # 1-pixel-high maps, a 1x1 "KxK"
]


def _args(cfg, dtype=torch.float32, seed=0):
    n, cin, h, w, c1, r3, c3, k3, r5, c5, k5, cp = cfg
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    x = rnd(n, cin, h, w)
    weights = [rnd(c1, cin, 1, 1, scale=cin ** -0.5), rnd(r3, cin, 1, 1, scale=cin ** -0.5),
               rnd(c3, r3, k3, k3, scale=(r3 * k3 * k3) ** -0.5), rnd(r5, cin, 1, 1, scale=cin ** -0.5),
               rnd(c5, r5, k5, k5, scale=(r5 * k5 * k5) ** -0.5), rnd(cp, cin, 1, 1, scale=cin ** -0.5)]
    pdt = torch.float64 if dtype == torch.float64 else torch.float32
    gamma = (torch.rand(r3 + r5, generator=g, dtype=torch.float64) + 0.5).to(pdt)
    beta = (torch.randn(r3 + r5, generator=g, dtype=torch.float64) * 0.3).to(pdt)
    return [x] + weights + [gamma, beta]


def _check_outputs(got, args, eps, rtol):
    ref = inception_bn_train_reference(*[t.double() for t in args], eps)
    names = ("out", "reduce", "reduce_mean", "reduce_var")
    for name, a, r in zip(names, got, ref):
        assert a.shape == r.shape, name
        scale = r.abs().max().clamp_min(1e-30)
        err = ((a.double() - r).abs().max() / scale).item()
        assert err <= rtol, (name, err)
    out, reduce, mean, var = got
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert reduce.is_contiguous(memory_format=torch.channels_last)
    assert mean.dtype == var.dtype == (torch.float64 if args[0].dtype == torch.float64 else torch.float32)


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-12), (torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_cpu_forward_matches_reference(cfg, dtype, rtol):
    args = _args(cfg, dtype)
    _check_outputs(bn_train.inception_bn_train(*args, 1e-3, backend="cpu"), args, 1e-3, rtol)


def test_cpu_forward_any_input_strides():
    args = _args(CONFIGS[0])
    x = args[0]
    big = torch.randn(x.shape[0], x.shape[1], 2 * x.shape[2], 2 * x.shape[3] + 1)
    for variant in (x.contiguous(memory_format=torch.channels_last), big[:, :, ::2, 1::2],
                    x[:, :1].expand_as(x)):
        a = [variant] + args[1:]
        _check_outputs(bn_train.inception_bn_train(*a, 1e-3, backend="cpu"), a, 1e-3, 1e-5)


def test_bf16_bn_params_in_float32_autocast_style():
    # Under autocast the convolutions run in bf16 while BatchNorm's gamma/beta stay float32.
    args = _args(CONFIGS[1], torch.bfloat16)
    gamma, beta = args[7].float(), args[8].float()
    got = bn_train.inception_bn_train(*args[:7], gamma, beta, 1e-3, backend="cpu")
    _check_outputs(got, args[:7] + [gamma, beta], 1e-3, 3e-2)


@pytest.mark.parametrize("cfg", [(2, 4, 3, 3, 2, 2, 3, 3, 2, 2, 5, 2), (1, 3, 2, 4, 1, 2, 2, 3, 1, 2, 1, 1)])
def test_cpu_gradcheck_float64(cfg):
    args = [t.requires_grad_() for t in _args(cfg, torch.float64)]
    assert torch.autograd.gradcheck(
        lambda *a: bn_train.inception_bn_train(*a, 1e-3, backend="cpu")[0], args, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("cfg", CONFIGS)
def test_gradients_match_reference_fp32(backend, cfg, monkeypatch):
    if backend == "triton":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    args = _args(cfg, torch.float32, seed=1)
    leaves = [t.clone().requires_grad_() for t in args]
    out = bn_train.inception_bn_train(*leaves, 1e-3, backend=backend)
    if backend == "triton":
        _check_outputs([t.detach() for t in out], args, 1e-3, 1e-5)
    go = torch.randn(out[0].shape, generator=torch.Generator().manual_seed(2))
    grads = torch.autograd.grad(out[0], leaves, go)
    ref_leaves = [t.double().requires_grad_() for t in args]
    ref = torch.autograd.grad(inception_bn_train_reference(*ref_leaves, 1e-3)[0], ref_leaves, go.double())
    names = ("x", "w_1x1", "w_3x3red", "w_3x3", "w_5x5red", "w_5x5", "w_pool_proj", "reduce_weight", "reduce_bias")
    for name, a, r in zip(names, grads, ref):
        assert a.dtype == args[names.index(name)].dtype
        err = ((a.double() - r).abs().max() / r.abs().max()).item()
        assert err <= 1e-4, (name, err)


def test_partial_gradients_only_weights():
    args = _args(CONFIGS[0], torch.float64, seed=3)
    leaves = [t.clone().requires_grad_(i in (3, 6, 7)) for i, t in enumerate(args)]
    out = bn_train.inception_bn_train(*leaves, 1e-3, backend="cpu")[0]
    go = torch.randn_like(out)
    got = torch.autograd.grad(out, [leaves[i] for i in (3, 6, 7)], go)
    ref_leaves = [t.clone().requires_grad_(i in (3, 6, 7)) for i, t in enumerate(args)]
    ref = torch.autograd.grad(inception_bn_train_reference(*ref_leaves, 1e-3)[0],
                              [ref_leaves[i] for i in (3, 6, 7)], go)
    for a, r in zip(got, ref):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12)


def test_only_out_is_differentiable():
    args = [t.requires_grad_() for t in _args(CONFIGS[0])]
    out, reduce, mean, var = bn_train.inception_bn_train(*args, 1e-3, backend="cpu")
    assert out.requires_grad
    assert not (reduce.requires_grad or mean.requires_grad or var.requires_grad)


def test_opcheck_cpu_op():
    args = _args(CONFIGS[1])
    torch.library.opcheck(torch.ops.googlenet_fast.inception_bn_train.default, tuple(args) + (1e-3,))


def test_opcheck_bn_relu_backward():
    cl = torch.channels_last
    g = torch.Generator().manual_seed(0)
    pre = torch.randn(2, 6, 3, 4, generator=g).contiguous(memory_format=cl)
    grad = torch.randn(2, 6, 3, 4, generator=g).contiguous(memory_format=cl)
    mean, invstd, gamma = pre.mean((0, 2, 3)), torch.rand(6, generator=g) + 0.5, torch.rand(6, generator=g) + 0.5
    y = torch.relu((pre - mean[:, None, None]) * invstd[:, None, None])
    outs = [torch.empty(2, c, 3, 4, memory_format=cl) for c in (2, 4)]
    torch.library.opcheck(torch.ops.googlenet_fast.bn_relu_backward.default,
                          ([grad], [y], [pre], mean, invstd, gamma, outs))


def test_opcheck_triton_op_interpreted(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    args = _args(CONFIGS[1])
    torch.library.opcheck(torch.ops.googlenet_fast.inception_bn_train_triton.default, tuple(args) + (1e-3,))


def test_compile_fullgraph_forward_backward():
    args = _args(CONFIGS[0], seed=4)
    leaves = [t.clone().requires_grad_() for t in args]

    def f(*a):
        out = bn_train.inception_bn_train(*a, 1e-3, backend="cpu", validate=False)[0]
        return torch.nn.functional.batch_norm(out, None, None, training=True).relu().square().sum()

    eager = torch.autograd.grad(f(*leaves), leaves)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(*leaves), leaves)
    for a, b in zip(got, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("index,value,exc,match", [
    (7, torch.ones(3), ValueError, r"reduce_weight: expected shape \(10,\)"),
    (8, torch.ones(10, 1), ValueError, r"reduce_bias: expected shape \(10,\)"),
    (8, torch.ones(10, dtype=torch.int64), TypeError, "reduce_bias: expected a floating dtype"),
    (8, torch.ones(10, device="meta"), ValueError, "reduce_bias: expected a tensor on cpu"),
    (3, torch.ones(10, 5, 3, 3), ValueError, "w_3x3: expected 6 input channels"),
    (0, torch.ones(2, 16, 5), ValueError, "x: expected a 4-D tensor"),
])
def test_bad_arguments_name_the_argument(index, value, exc, match):
    args = _args(CONFIGS[0])
    args[index] = value
    with pytest.raises(exc, match=match):
        bn_train.inception_bn_train(*args, 1e-3, backend="cpu")


@pytest.mark.parametrize("eps", [-1.0, float("inf"), float("nan")])
def test_bad_eps(eps):
    args = _args(CONFIGS[0])
    with pytest.raises(ValueError, match="eps: expected a finite value >= 0"):
        bn_train.inception_bn_train(*args, eps, backend="cpu")
    with pytest.raises(ValueError, match="eps: expected a finite value >= 0"):  # the C++ op checks too
        torch.ops.googlenet_fast.inception_bn_train(*args, eps)


def test_cpp_op_checks_reduce_weight_shape():
    args = _args(CONFIGS[0])
    args[7] = torch.ones(4)
    with pytest.raises(ValueError, match=r"reduce_weight: expected shape \[10\]"):
        torch.ops.googlenet_fast.inception_bn_train(*args, 1e-3)


def _check_4a_against_reference(backend, dtype, rtol, device):
    """Table 1's inception 4a at batch 8: forward outputs and gradients against the float64
    reference.  float32: within 1e-4 of max |grad|.  bfloat16: within twice the error of the
    reference itself run in bfloat16 on the same inputs and device (plus half an ulp): BatchNorm's
    backward subtracts per-channel means, and PyTorch's own bf16 autograd of the module is off by
    7-9% of max |grad x| (measured here on the CPU, seeds 5 and 6; 6-9% for our kernels on the H200,
    benchmarks/results/h200-2026-12-04), so no fixed bf16 bound near 5% can hold."""
    cfg = (8, 480, 14, 14, 192, 96, 208, 3, 16, 48, 3, 64)
    args = [t.to(device) for t in _args(cfg, dtype, seed=5)]
    leaves = [t.clone().requires_grad_() for t in args]
    got = bn_train.inception_bn_train(*leaves, 1e-3, backend=backend)
    _check_outputs([t.detach().cpu() for t in got], [t.cpu() for t in args], 1e-3, rtol)
    go = torch.randn(got[0].shape, generator=torch.Generator().manual_seed(7), dtype=torch.float32).to(device, dtype)
    grads = torch.autograd.grad(got[0], leaves, go)
    ref_leaves = [t.double().requires_grad_() for t in args]
    ref = torch.autograd.grad(inception_bn_train_reference(*ref_leaves, 1e-3)[0], ref_leaves, go.double())
    if dtype != torch.float32:
        own_leaves = [t.clone().requires_grad_() for t in args]
        own = torch.autograd.grad(inception_bn_train_reference(*own_leaves, 1e-3)[0], own_leaves, go)

    def err(a, r):
        return ((a.double() - r).abs().max() / r.abs().max()).item()

    for i, (a, r) in enumerate(zip(grads, ref)):
        bound = 1e-4 if dtype == torch.float32 else 2 * err(own[i], r) + torch.finfo(dtype).eps / 2
        assert err(a, r) <= bound, (i, err(a, r), bound)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda", "auto"])
@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
def test_gpu_inception_4a_matches_reference(backend, dtype, rtol):
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    _check_4a_against_reference(backend, dtype, rtol, "cuda")


def test_cpu_inception_4a_bfloat16_matches_reference():
    """The GPU test's bf16 yardstick on the CPU op (the x gradient's error, ~7% of max |grad x|, is
    over a fixed 5% bound and within twice the bf16 reference's own)."""
    _check_4a_against_reference("cpu", torch.bfloat16, 3e-2, "cpu")


def test_double_backward_is_a_clear_error():
    args = [t.requires_grad_() for t in _args(CONFIGS[0], torch.float64)]
    out = bn_train.inception_bn_train(*args, 1e-3, backend="cpu")[0]
    with pytest.raises(RuntimeError, match="not twice differentiable"):
        torch.autograd.grad(out.square().sum(), args[0], create_graph=True)


# ------------------------------------------------------------------------------------------------
# The eager CPU fast path (issue #15): the whole module as one autograd node, and the
# googlenet_fast::bn_relu_backward op it and the stem's blocks use.


def _module_and_input(dtype=torch.float64, seed=0):
    from googlenet_fast.model import Inception
    torch.manual_seed(seed)
    m = Inception(12, 5, 4, 6, 3, 5, 4).to(dtype).train()
    for bn in (mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)):
        torch.nn.init.uniform_(bn.weight, 0.5, 1.5)
        torch.nn.init.normal_(bn.bias, 0, 0.3)
    x = torch.randn(3, 12, 6, 5, dtype=dtype).contiguous(memory_format=torch.channels_last).requires_grad_()
    return m, x


def test_fast_path_module_equals_plain_modules_float64():
    """One autograd node (bn_train.inception_bn_relu_train) == the plain branches + cat: output,
    every gradient, running statistics and num_batches_tracked (float64, 1e-12)."""
    import copy
    m, x = _module_and_input()
    ref = copy.deepcopy(m)
    ref.fused = False
    assert bn_train.cpu_fast_path_applies(x)
    x2 = x.detach().clone().requires_grad_()
    y, y_ref = m(x), ref(x2)
    assert y.grad_fn is not None and "InceptionBnReluTrain" in type(y.grad_fn).__name__
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-12, atol=1e-12)
    for (n, p), (_, q) in zip(m.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-12, msg=n)
    for (n, b), (_, c) in zip(m.named_buffers(), ref.named_buffers()):
        torch.testing.assert_close(b, c, rtol=1e-12, atol=1e-12, msg=n)


def test_fast_path_off_switch_and_conditions(monkeypatch):
    x = torch.zeros(1, 3, 2, 2)
    assert bn_train.cpu_fast_path_applies(x)
    assert not bn_train.cpu_fast_path_applies(x.half())
    monkeypatch.setattr(bn_train, "CPU_FAST_PATH", False)
    assert not bn_train.cpu_fast_path_applies(x)


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-12), (torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("c", [7, 37])
def test_bn_relu_backward_matches_aten(dtype, rtol, c):
    """bn_relu_backward over channel lists == threshold_backward + native_batch_norm_backward:
    grads split in two tensors, pre a channel slice of a larger channels_last buffer, the result
    written into a channel slice and a dense tensor; NaN in y passes the gradient as
    threshold_backward does.  37 channels: pieces of 4 and 33 (two full 16-lane registers and a
    partial one in the AVX-512 loops)."""
    aten = torch.ops.aten
    g = torch.Generator().manual_seed(0)
    n, h, w = 3, 5, 4
    big = torch.randn(n, c + 3, h, w, generator=g, dtype=torch.float64).to(dtype).contiguous(
        memory_format=torch.channels_last)
    pre = big[:, 2:2 + c]
    gamma = torch.rand(c, generator=g, dtype=torch.float64).float() + 0.5
    beta = torch.randn(c, generator=g, dtype=torch.float64).float()
    if dtype == torch.float64:
        gamma, beta = gamma.double(), beta.double()
    y, mean, invstd = torch.native_batch_norm(pre, gamma, beta, None, None, True, 0.1, 1e-3)
    y = y.relu_().contiguous(memory_format=torch.channels_last)
    y[0, 1, 0, 0] = float("nan")
    grad = torch.randn(n, c, h, w, generator=g, dtype=torch.float64).to(dtype)
    dz = aten.threshold_backward(grad, y, 0)
    ref_dx, ref_gg, ref_gb = aten.native_batch_norm_backward(dz, pre.contiguous(), gamma, None, None, mean, invstd,
                                                             True, 1e-3, [True, True, True])
    out_big = torch.zeros(n, c + 5, h, w, dtype=dtype).contiguous(memory_format=torch.channels_last)
    dense = torch.empty(n, c - 4, h, w, dtype=dtype).contiguous(memory_format=torch.channels_last)
    gg, gb = torch.ops.googlenet_fast.bn_relu_backward(
        [grad[:, :4].contiguous(memory_format=torch.channels_last), grad[:, 4:]], [y], [pre], mean, invstd, gamma,
        [out_big[:, 1:5], dense])
    dx = torch.cat([out_big[:, 1:5], dense], 1)
    for a, r in ((dx, ref_dx), (gg, ref_gg), (gb, ref_gb)):
        assert a.dtype == r.dtype
        assert ((a.double() - r.double()).abs().max() / r.double().abs().max()).item() <= rtol
    assert (out_big[:, 0] == 0).all() and (out_big[:, 5:] == 0).all()  # nothing outside the slice


def test_bn_relu_backward_argument_errors():
    f = torch.ops.googlenet_fast.bn_relu_backward
    t = torch.randn(2, 4, 3, 3).contiguous(memory_format=torch.channels_last)
    v = torch.ones(4)
    with pytest.raises(ValueError, match="channels in all"):
        f([t[:, :3]], [t], [t], v, v, v, [torch.empty_like(t)])
    with pytest.raises(ValueError, match="channels_last"):
        f([t], [t], [t], v, v, v, [torch.empty(2, 4, 3, 3)])  # NCHW: not NHWC rows


@pytest.mark.parametrize("shape", [(8, 40, 7, 7), (2, 24, 14, 14), (1, 16, 33, 35)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bn_relu_backward_does_not_depend_on_the_thread_count(shape, dtype):
    """Its pixel blocks are a function of the pixel count alone, summed in block order: 1 and 2
    threads give the same bits."""
    cl = torch.channels_last
    g = torch.Generator().manual_seed(1)
    pre = torch.randn(*shape, generator=g).to(dtype).contiguous(memory_format=cl)
    grad = torch.randn(*shape, generator=g).to(dtype).contiguous(memory_format=cl)
    c = shape[1]
    mean, invstd, gamma = pre.mean((0, 2, 3)), torch.rand(c, generator=g) + 0.5, torch.rand(c, generator=g) + 0.5
    y = torch.relu((pre - mean[:, None, None]) * invstd[:, None, None]).to(dtype).contiguous(memory_format=cl)
    results = []
    prev = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = torch.empty_like(pre)
            gg, gb = torch.ops.googlenet_fast.bn_relu_backward([grad], [y], [pre], mean, invstd, gamma, [out])
            results.append((out, gg, gb))
    finally:
        torch.set_num_threads(prev)
    for a, b in zip(*results):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------
# bfloat16: the forward's BatchNorm apply + ReLU in one pass (bn_relu_apply) and the backward's
# ReLU mask recomputed from the pre-BatchNorm values (bn_relu_backward's beta), both exactly ATen's
# arithmetic where googlenet_fast::bn_relu_bf16_exact_apply() (checked against ATen per process).


def _bits(t):
    t = t.contiguous()
    return t.view({torch.bfloat16: torch.int16, torch.float32: torch.int32, torch.float64: torch.int64}[t.dtype])


def _bf16_case(shape, seed, layout=torch.channels_last):
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    x = (torch.randn(shape, generator=g) * 2 + 0.1).to(torch.bfloat16).contiguous(memory_format=layout)
    flat = x.permute(0, 2, 3, 1)  # zeros, -0.0 and values whose BatchNorm output is exactly 0
    flat[..., ::7] = 0.0
    flat[..., 5::11] = -0.0
    gamma, beta = torch.rand(c, generator=g) + 0.5, torch.randn(c, generator=g) * 0.2
    return x, gamma, beta, torch.randn(c, generator=g), torch.rand(c, generator=g) + 0.5


@pytest.mark.parametrize("shape", [(8, 96, 14, 14), (2, 37, 3, 5), (3, 20, 7, 7), (2, 5, 9, 9)])
@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_bn_relu_forward_bf16_equals_aten_bit_for_bit(shape, layout):
    """bn_train._bn_relu_forward (batch_norm_update_stats + bn_relu_apply) == ATen's
    native_batch_norm(..., training=True) + relu_: output, mean, invstd and both running
    statistics bit for bit (channel tails: 37, 20, 5 channels)."""
    x, gamma, beta, rm, rv = _bf16_case(shape, seed=shape[1], layout=layout)
    rm2, rv2 = rm.clone(), rv.clone()
    y, mean, invstd = torch.native_batch_norm(x, gamma, beta, rm, rv, True, 0.1, 1e-3)
    y = y.relu_()
    y2, mean2, invstd2, mask_beta = bn_train._bn_relu_forward(x, gamma, beta, rm2, rv2, 0.1, 1e-3)
    assert y2.dtype == torch.bfloat16 and y2.shape == y.shape and y2.stride() == y.stride()
    assert mask_beta is beta  # dense: the backward may recompute the mask from x
    for a, b in ((y, y2), (mean, mean2), (invstd, invstd2), (rm, rm2), (rv, rv2)):
        assert torch.equal(_bits(a), _bits(b))


def test_bn_relu_apply_signed_zero_nan_and_errors():
    """-0.0 stays -0.0 as in ATen's ReLU (x < 0 ? 0 : x): channel 0 has mean exactly 0 and beta
    -0.0, so its -0.0 inputs give -0.0; a NaN input channel gives NaN (ATen's vectorized store
    writes other NaN payload bits: only NaN-ness is compared); bad statistics shapes / dtypes and
    eps raise ValueError naming them."""
    x, gamma, beta, rm, rv = _bf16_case((2, 37, 3, 5), seed=3)
    ch0 = torch.tensor([1.0, -1.0] * 14 + [-0.0, -0.0]).view(2, 3, 5)  # sums to exactly 0
    x[:, 0] = ch0.to(torch.bfloat16)
    beta[0] = -0.0
    y0, *_ = bn_train._bn_relu_forward(x, gamma, beta, rm.clone(), rv.clone(), 0.1, 1e-3)
    assert torch.signbit(y0[:, 0][ch0 == 0]).all() and (y0[:, 0][ch0 == 0] == 0).all()
    x[0, 4, 1, 1] = float("nan")
    y, *_ = torch.native_batch_norm(x, gamma, beta, rm.clone(), rv.clone(), True, 0.1, 1e-3)
    y2, *_ = bn_train._bn_relu_forward(x, gamma, beta, rm.clone(), rv.clone(), 0.1, 1e-3)
    y = y.relu_()
    assert torch.equal(torch.isnan(y), torch.isnan(y2)) and torch.isnan(y2[:, 4]).all()
    ok = ~torch.isnan(y)
    assert torch.equal(_bits(y[ok]), _bits(y2[ok]))
    f = torch.ops.googlenet_fast.bn_relu_apply
    v = torch.ones(37)
    with pytest.raises(ValueError, match="mean, var, gamma, beta"):
        f(x, v[:5], v, v, v, 1e-3)
    with pytest.raises(ValueError, match="mean, var, gamma, beta"):
        f(x, v.double(), v, v, v, 1e-3)
    with pytest.raises(ValueError, match="eps"):
        f(x, v, v, v, v, -1.0)


def test_bn_relu_forward_bf16_eps0_zero_variance_and_slices():
    """eps 0 with a constant channel: invstd 0 and y = relu(beta) as ATen's InvStd gives (not
    1 / sqrt(0)); a channel slice (not dense): ATen's own ops (its non-dense path rounds
    differently), the same bits, and no mask from pre for the backward."""
    x, gamma, beta, rm, rv = _bf16_case((2, 37, 5, 5), seed=6)
    x[:, 3] = 1.5
    y, mean, invstd = torch.native_batch_norm(x, gamma, beta, rm.clone(), rv.clone(), True, 0.1, 0.0)
    y2, mean2, invstd2, _ = bn_train._bn_relu_forward(x, gamma, beta, rm.clone(), rv.clone(), 0.1, 0.0)
    assert invstd2[3] == 0 and not torch.isnan(y2).any()
    for a, b in ((y.relu_(), y2), (mean, mean2), (invstd, invstd2)):
        assert torch.equal(_bits(a), _bits(b))
    big, gamma, beta, rm, rv = _bf16_case((2, 40, 5, 5), seed=7)
    sl, gamma, beta, rm, rv = big[:, 2:39], gamma[2:39], beta[2:39], rm[2:39], rv[2:39]
    y, *_ = torch.native_batch_norm(sl, gamma, beta, rm.clone(), rv.clone(), True, 0.1, 1e-3)
    y2, _, _, mask_beta = bn_train._bn_relu_forward(sl, gamma, beta, rm.clone(), rv.clone(), 0.1, 1e-3)
    assert mask_beta is None and torch.equal(_bits(y.relu_()), _bits(y2))


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_opcheck_bn_relu_apply(layout):
    x, gamma, beta, rm, rv = _bf16_case((2, 6, 3, 4), seed=4, layout=layout)
    mean, var = torch.batch_norm_update_stats(x, rm, rv, 0.1)  # float32 statistics (autocast's)
    torch.library.opcheck(torch.ops.googlenet_fast.bn_relu_apply.default, (x, mean, var, gamma, beta, 1e-3))


@pytest.mark.parametrize("shape", [(8, 96, 14, 14), (2, 37, 3, 5)])
def test_bn_relu_backward_mask_from_pre_bf16(shape):
    """With beta, the bfloat16 ReLU mask comes from pre (y not read) where
    bn_relu_bf16_exact_apply(): the same bits as the mask read from y; a wrong y then changes
    nothing.  Where it is off, y is read (a wrong y changes the result)."""
    x, gamma, beta, _, _ = _bf16_case(shape, seed=shape[1] + 1)
    y, mean, invstd = torch.native_batch_norm(x, gamma, beta, None, None, True, 0.1, 1e-3)
    y = y.relu_()
    g = torch.Generator().manual_seed(9)
    grad = torch.randn(shape, generator=g).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    f = torch.ops.googlenet_fast.bn_relu_backward

    def run(yy, b):
        out = torch.empty_like(x, memory_format=torch.channels_last)
        gg, gb = f([grad], [yy], [x], mean, invstd, gamma, [out], b)
        return out, gg, gb

    ref = run(y, None)
    for a, b in zip(run(y, beta), ref):
        assert torch.equal(_bits(a), _bits(b))
    wrong_y = torch.full_like(y, -1.0)  # every gradient masked if y were read
    same = all(torch.equal(_bits(a), _bits(b)) for a, b in zip(run(wrong_y, beta), ref))
    assert same == torch.ops.googlenet_fast.bn_relu_bf16_exact_apply()


@pytest.mark.parametrize("shape", [(8, 96, 14, 14), (2, 37, 3, 5)])
def test_bn_relu_backward_mask_from_pre_float32(shape):
    """float32 with beta: the forward stays ATen's native_batch_norm + relu_, and where
    bn_relu_mask_from_pre(float32) (ATen's float32 apply is fma(x, alpha, beta), checked per
    process) the backward's ReLU mask is recomputed from pre: the same bits as the mask read from
    y, and a wrong y then changes nothing.  Where it is off, y is read."""
    c = shape[1]
    g = torch.Generator().manual_seed(c + 3)
    x = (torch.randn(shape, generator=g) * 1.7 + 0.2).contiguous(memory_format=torch.channels_last)
    gamma, beta = torch.randn(c, generator=g), torch.randn(c, generator=g) * 0.5
    y, mean, invstd = torch.native_batch_norm(x, gamma, beta, None, None, True, 0.1, 1e-3)
    y = y.relu_()
    assert (y == 0).float().mean() > 0.2 and (y > 0).float().mean() > 0.2  # both sides of the mask
    grad = torch.randn(shape, generator=g).contiguous(memory_format=torch.channels_last)
    f = torch.ops.googlenet_fast.bn_relu_backward

    def run(yy, b):
        out = torch.empty_like(x, memory_format=torch.channels_last)
        gg, gb = f([grad[:, :5], grad[:, 5:]], [yy], [x], mean, invstd, gamma, [out], b)
        return out, gg, gb

    ref = run(y, None)
    for a, b in zip(run(y, beta), ref):
        assert torch.equal(a.view(torch.int32), b.view(torch.int32))
    wrong_y = torch.full_like(y, -1.0)  # every gradient masked if y were read
    same = all(torch.equal(a.view(torch.int32), b.view(torch.int32)) for a, b in zip(run(wrong_y, beta), ref))
    assert same == torch.ops.googlenet_fast.bn_relu_mask_from_pre(torch.float32)


def test_float32_bn_relu_forward_offers_the_mask_from_pre():
    """_bn_relu_forward hands beta to the float32 backward exactly where the extension says the
    mask may be recomputed (a dense pre), and never for a channel slice (ATen normalized a copy)."""
    c = 6
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, c, 4, 4, generator=g).contiguous(memory_format=torch.channels_last)
    gamma, beta = torch.randn(c, generator=g), torch.randn(c, generator=g)
    on = torch.ops.googlenet_fast.bn_relu_mask_from_pre(torch.float32)
    *_, mask_beta = bn_train._bn_relu_forward(x, gamma, beta, torch.zeros(c), torch.ones(c), 0.1, 1e-3)
    assert (mask_beta is beta) == on
    wide = torch.randn(2, 2 * c, 4, 4, generator=g).contiguous(memory_format=torch.channels_last)
    *_, mask_beta = bn_train._bn_relu_forward(wide[:, :c], gamma, beta, torch.zeros(c), torch.ones(c), 0.1, 1e-3)
    assert mask_beta is None


def test_float32_mask_from_pre_is_on_with_avx512():
    """On a CPU where the AVX-512 loops run and ATen's float32 BatchNorm uses FMAs, the float32
    backward recomputes its ReLU mask (y not read); with the portable loops it does not."""
    from googlenet_fast.backends import native
    on = torch.ops.googlenet_fast.bn_relu_mask_from_pre(torch.float32)
    portable = os.environ.get("GOOGLENET_FAST_PORTABLE_LOOPS", "") not in ("", "0")
    if torch.backends.cpu.get_cpu_capability() == "AVX512" and not portable and native.available():
        assert on
    if portable:
        assert not on
    assert not torch.ops.googlenet_fast.bn_relu_mask_from_pre(torch.float64)


def test_bf16_exact_apply_is_on_with_avx512():
    """On a CPU where the AVX-512 loops run (not GOOGLENET_FAST_PORTABLE_LOOPS) and ATen's
    BatchNorm kernels use FMAs (its AVX2 / AVX-512 builds), the exact bfloat16 apply is on."""
    from googlenet_fast.backends import native
    on = torch.ops.googlenet_fast.bn_relu_bf16_exact_apply()
    portable = os.environ.get("GOOGLENET_FAST_PORTABLE_LOOPS", "") not in ("", "0")
    if torch.backends.cpu.get_cpu_capability() == "AVX512" and not portable and native.available():
        assert on
    if portable:
        assert not on


@pytest.mark.parametrize("fused_backward", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape,window", [((4, 64, 28, 28), (3, 2, 0, True)), ((2, 37, 9, 11), (3, 2, 0, True)),
                                          ((3, 20, 7, 7), (3, 1, 1, True)), ((2, 5, 6, 6), (2, 2, 0, False))])
def test_bn_relu_max_pool_train_equals_the_two_nodes(shape, window, dtype, fused_backward, monkeypatch):
    """bn_relu_max_pool_train (the pool reads relu(batch_norm(pre)) computed in its window scan)
    == bn_relu_train followed by the tap max pool: pooled values, every gradient, running
    statistics and num_batches_tracked bit for bit (stem windows 3/2/0 ceil, a padded stride-1
    window, channel tails), its backward as one op (float32, FUSED_POOL_BN_BACKWARD) or as the
    two.  float32: bn_relu_train's forward is ATen's native_batch_norm + relu_, so this also
    holds the op's fma to ATen's float32 apply."""
    import copy
    monkeypatch.setattr(bn_train, "FUSED_POOL_BN_BACKWARD", fused_backward)
    from googlenet_fast import pool_train
    exact = (torch.ops.googlenet_fast.bn_relu_bf16_exact_apply() if dtype == torch.bfloat16
             else torch.ops.googlenet_fast.bn_relu_mask_from_pre(torch.float32))
    if not exact:
        with pytest.raises(ValueError, match="exact"):
            x, *_ = _bf16_case(shape, seed=1)
            x = x.to(dtype)
            m, v = torch.batch_norm_update_stats(x, torch.zeros(shape[1]), torch.ones(shape[1]), 0.1)
            torch.ops.googlenet_fast.max_pool2d_tap_bn_relu(x, m, v, m, m, 1e-3, 3, 2, 0, True)
        return
    x, gamma, beta, rm, rv = _bf16_case(shape, seed=shape[1])
    if dtype == torch.float32:  # bfloat16 values widened, then a float32 tail (more mantissa bits)
        x = (x.float() + torch.randn(x.shape, generator=torch.Generator().manual_seed(9)) * 1e-3).contiguous(
            memory_format=torch.channels_last)
    bn = torch.nn.BatchNorm2d(shape[1], eps=1e-3)
    with torch.no_grad():
        bn.weight.copy_(gamma)
        bn.bias.copy_(beta)
        bn.running_mean.copy_(rm)
        bn.running_var.copy_(rv)
    bn2 = copy.deepcopy(bn)
    assert bn_train.bn_relu_max_pool_train_applies(x, bn)
    pre1, pre2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1 = bn_train.bn_relu_max_pool_train(pre1, bn, window)
    y2 = pool_train.max_pool2d_train(bn_train.bn_relu_train(pre2, bn2), window)
    assert y1.grad_fn is not None and "BnReluMaxPool" in type(y1.grad_fn).__name__
    assert torch.equal(_bits(y1), _bits(y2))
    g = torch.Generator().manual_seed(5)
    gy = torch.randn(y1.shape, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    y1.backward(gy)
    y2.backward(gy)
    for a, b in ((pre1.grad, pre2.grad), (bn.weight.grad, bn2.weight.grad), (bn.bias.grad, bn2.bias.grad),
                 (bn.running_mean, bn2.running_mean), (bn.running_var, bn2.running_var)):
        assert torch.equal(_bits(a), _bits(b))
    assert int(bn.num_batches_tracked) == int(bn2.num_batches_tracked) == 1


def _pool_bn_case(shape, window, dtype, seed):
    """pre, its statistics, gamma, beta, the forward's taps and a gradient of the pooled output
    for max_pool2d_tap_bn_relu_backward."""
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    pre = (torch.randn(shape, generator=g) * 2 + 0.3).to(dtype).contiguous(memory_format=torch.channels_last)
    gamma = torch.rand(c, generator=g) + 0.5
    beta = torch.randn(c, generator=g) * 0.5
    mean, var = torch.batch_norm_update_stats(pre, None, None, 0.1)
    y, tap, invstd = torch.ops.googlenet_fast.max_pool2d_tap_bn_relu(pre, mean.float(), var.float(), gamma, beta,
                                                                     1e-3, *window)
    gy = torch.randn(y.shape, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    return pre, mean.float(), invstd, gamma, beta, tap, gy


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,window", [((2, 64, 28, 28), (3, 2, 0, True)), ((2, 37, 15, 13), (3, 2, 0, True)),
                                          ((1, 80, 9, 11), (2, 2, 0, False)), ((3, 19, 8, 8), (3, 1, 1, True)),
                                          ((2, 70, 17, 17), (3, 2, 1, False)), ((1, 1030, 5, 6), (3, 2, 0, True))])
def test_max_pool2d_tap_bn_relu_backward_equals_the_two_ops(shape, window, dtype):
    """The fused stem backward == max_pool2d_tap_backward_ then bn_relu_backward (mask from pre),
    bit for bit: grad_pre, dgamma, dbeta; channel tails (37, 19, 70 = 64 + 6, 80), more channels
    than its row buffer on the stack holds (1030 > 1024: the heap row), padded and stride-1
    windows, ceil_mode, 1 and 2 threads (the pixel blocks fix the sums' order)."""
    gf = torch.ops.googlenet_fast
    k, s, p, ceil = window
    if not gf.bn_relu_mask_from_pre(dtype):  # (portable loops, a CPU without AVX-512): the op refuses
        pre = torch.randn(shape).to(dtype).contiguous(memory_format=torch.channels_last)
        gy, tap = gf.max_pool2d_tap(pre, k, s, p, ceil)
        v = torch.ones(shape[1])
        with pytest.raises(ValueError, match="bn_relu_mask_from_pre"):
            gf.max_pool2d_tap_bn_relu_backward(gy, tap, pre, v, v, v, v, k, s, p)
        return
    pre, mean, invstd, gamma, beta, tap, gy = _pool_bn_case(shape, window, dtype, seed=shape[1])
    dy, want = torch.empty_like(pre), torch.empty_like(pre)
    gf.max_pool2d_tap_backward_(dy, gy, tap, k, s, p, False)
    want_gamma, want_beta = gf.bn_relu_backward([dy], [pre], [pre], mean, invstd, gamma, [want], beta)
    threads = torch.get_num_threads()
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            got, got_gamma, got_beta = gf.max_pool2d_tap_bn_relu_backward(gy, tap, pre, mean, invstd, gamma, beta,
                                                                          k, s, p)
            assert got.is_contiguous(memory_format=torch.channels_last) and got.dtype == dtype
            assert torch.equal(_bits(got), _bits(want)), t
            assert torch.equal(_bits(got_gamma), _bits(want_gamma)) and torch.equal(_bits(got_beta), _bits(want_beta))
    finally:
        torch.set_num_threads(threads)
    assert want.abs().sum() > 0 and want_gamma.abs().sum() > 0  # not a vacuous comparison


def test_max_pool2d_tap_bn_relu_backward_errors_and_opcheck():
    """Each argument checked with a ValueError naming it; the fake kernel and schema (opcheck)."""
    gf = torch.ops.googlenet_fast
    op = gf.max_pool2d_tap_bn_relu_backward
    if not gf.bn_relu_mask_from_pre(torch.float32):
        pre = torch.randn(2, 6, 7, 7).contiguous(memory_format=torch.channels_last)
        v = torch.ones(6)
        with pytest.raises(ValueError, match="bn_relu_mask_from_pre"):
            op(torch.zeros(2, 6, 3, 3), torch.zeros(2, 6, 3, 3, dtype=torch.uint8), pre, v, v, v, v, 3, 2, 0)
        return
    pre, mean, invstd, gamma, beta, tap, gy = _pool_bn_case((2, 6, 7, 7), (3, 2, 0, True), torch.float32, seed=3)
    args = (gy, tap, pre, mean, invstd, gamma, beta, 3, 2, 0)
    torch.library.opcheck(op.default, args)
    with pytest.raises(ValueError, match="pre: expected a channels_last"):
        op(gy, tap, pre.contiguous(), *args[3:])
    with pytest.raises(ValueError, match="pre: expected a channels_last"):
        op(gy.double(), tap, pre.double(), *args[3:])
    with pytest.raises(ValueError, match="grad_y: expected"):
        op(gy.bfloat16(), tap, *args[2:])
    with pytest.raises(ValueError, match="tap: expected a uint8"):
        op(gy, tap.int(), *args[2:])
    with pytest.raises(ValueError, match="grad_y: spatial size"):
        op(gy, tap, *args[2:7], 3, 1, 1)
    with pytest.raises(ValueError, match="grad_y: spatial size"):  # one row more than either mode's output
        op(torch.cat([gy, gy[:, :, :1]], 2), torch.cat([tap, tap[:, :, :1]], 2), *args[2:])
    with pytest.raises(ValueError, match="mean, invstd, gamma, beta"):
        op(gy, tap, pre, mean[:5], *args[4:])
    with pytest.raises(ValueError, match="padding: expected 0 to kernel / 2"):
        op(gy, tap, *args[2:7], 3, 2, 2)


def test_bf16_train_step_takes_the_stem_bn_relu_pool_node(monkeypatch):
    """Under bf16 autocast the fused model's stem (conv1 -> maxpool1, conv3 -> maxpool2) runs
    bn_relu_max_pool_train where the exact apply is on (exactness: the test above; accuracy of
    the whole bf16 step against float64: tests/test_train_parity.py's bf16 test, which runs it),
    and bn_relu_train + the pool where bn_relu_max_pool_train_applies says no.  (Two runs of
    one bf16 step are not bit-identical here: oneDNN's bf16 reductions vary run to run.)"""
    from googlenet_fast import GoogLeNet
    torch.manual_seed(0)
    model = GoogLeNet(aux_logits=False, init_weights=True, fused=True).train()
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    calls = []
    real = bn_train.bn_relu_max_pool_train
    monkeypatch.setattr(bn_train, "bn_relu_max_pool_train", lambda *a: calls.append(1) or real(*a))

    def step():
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        out.float().sum().backward()
        assert all(p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
                   for p in model.parameters())

    step()
    assert len(calls) == (2 if torch.ops.googlenet_fast.bn_relu_bf16_exact_apply() else 0)
    assert int(model.conv1.bn.num_batches_tracked) == 1
    monkeypatch.setattr(bn_train, "bn_relu_max_pool_train_applies", lambda pre, bn: False)
    calls.clear()
    step()
    assert not calls and int(model.conv1.bn.num_batches_tracked) == 2


def test_opcheck_max_pool2d_tap_bn_relu():
    """The op's fake kernel and schema (where the exact apply is on; elsewhere it refuses with a
    ValueError naming the switch)."""
    x, gamma, beta, rm, rv = _bf16_case((2, 6, 7, 7), seed=8)
    mean, var = torch.batch_norm_update_stats(x, rm, rv, 0.1)
    args = (x, mean, var, gamma, beta, 1e-3, 3, 2, 0, True)
    if torch.ops.googlenet_fast.bn_relu_bf16_exact_apply():
        torch.library.opcheck(torch.ops.googlenet_fast.max_pool2d_tap_bn_relu.default, args)
    else:
        with pytest.raises(ValueError, match="bn_relu_mask_from_pre"):
            torch.ops.googlenet_fast.max_pool2d_tap_bn_relu(*args)
    with pytest.raises(ValueError, match="channels_last float32 or bfloat16"):
        torch.ops.googlenet_fast.max_pool2d_tap_bn_relu(x.double(), *args[1:])
    with pytest.raises(ValueError, match="channels_last float32 or bfloat16"):
        torch.ops.googlenet_fast.max_pool2d_tap_bn_relu(x.contiguous(), *args[1:])
    if torch.ops.googlenet_fast.bn_relu_mask_from_pre(torch.float32):
        xf = x.float().contiguous(memory_format=torch.channels_last)
        torch.library.opcheck(torch.ops.googlenet_fast.max_pool2d_tap_bn_relu.default, (xf,) + args[1:])


# ------------------------------------------------------------------------------------------------
# bn_relu_apply_into: the train-mode Inception's BatchNorm + ReLU from where the convolutions
# left their outputs (no cat of the pre-BatchNorm outputs, no separate ReLU pass).


def _apply_into_exact(dtype):
    gf = torch.ops.googlenet_fast
    return bool(gf.bn_relu_bf16_exact_apply() if dtype == torch.bfloat16 else gf.bn_relu_mask_from_pre(dtype))


def _apply_formula(x, mean, invstd, gamma, beta):
    """relu(fma(x, alpha, fma(-mean, alpha, beta))), alpha = invstd * gamma, rounded to x's dtype
    through float32: float32 products are exact in float64, so the float64 sums rounded to float32
    are the fmas (barring a double-rounding tie, absent from these seeded inputs)."""
    sh = (1, -1, 1, 1)
    alpha = invstd * gamma
    b = (-mean.double() * alpha.double() + beta.double()).float()
    v = (x.double() * alpha.double().view(sh) + b.double().view(sh)).float().to(x.dtype)
    return torch.where(v.float() < 0, torch.zeros_like(v), v)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bn_relu_apply_into_equals_aten_on_the_cat(dtype):
    """Statistics of each piece (batch_norm_update_stats; one of them a channel slice's parent,
    read whole) + bn_relu_apply_into from the pieces into one output: the op's formula bit for bit
    (AVX-512 or portable loop), invstd ATen's; where the extension's apply is ATen's (always on an
    AVX-512 CPU with this ATen, the switch the model checks) == ATen's native_batch_norm
    (training) + relu_ on the concatenated tensor: output, mean, invstd, running statistics (channel
    counts with tails: 37, 5, 20; a channel-slice input; zeros and -0.0)."""
    parent, g0, b0, rm0, rv0 = _bf16_case((2, 45, 6, 7), seed=11)
    a, g1, b1, rm1, rv1 = _bf16_case((2, 5, 6, 7), seed=12)
    b, g2, b2, rm2, rv2 = _bf16_case((2, 20, 6, 7), seed=13)
    noise = torch.Generator().manual_seed(3)
    parent, a, b = ((t.float() + torch.randn(t.shape, generator=noise) * 1e-3).to(dtype).contiguous(
        memory_format=torch.channels_last) if dtype == torch.float32 else t for t in (parent, a, b))
    sl = parent[:, :37]  # the branch-1 channels of the merged 1x1 output
    gamma, beta = torch.cat([g0[:37], g1, g2]), torch.cat([b0[:37], b1, b2])
    rm, rv = torch.cat([rm0[:37], rm1, rm2]), torch.cat([rv0[:37], rv1, rv2])
    cat = torch.cat([sl, a, b], 1)
    y_ref, mean_ref, invstd_ref = torch.native_batch_norm(cat, gamma, beta, rm, rv, True, 0.1, 1e-3)
    y_ref = y_ref.relu_()
    stats = [torch.batch_norm_update_stats(parent, rm0, rv0, 0.1), torch.batch_norm_update_stats(a, rm1, rv1, 0.1),
             torch.batch_norm_update_stats(b, rm2, rv2, 0.1)]
    mean = torch.cat([stats[0][0][:37], stats[1][0], stats[2][0]])
    var = torch.cat([stats[0][1][:37], stats[1][1], stats[2][1]])
    y = torch.empty(cat.shape, dtype=dtype).contiguous(memory_format=torch.channels_last)
    invstd = torch.ops.googlenet_fast.bn_relu_apply_into([sl, a, b], mean, var, gamma, beta, 1e-3, [y])
    formula = _apply_formula(cat, mean, invstd, gamma, beta)
    assert (y == 0).any() and (y > 0).any()
    for got, want in ((y, formula), (mean, mean_ref), (invstd, invstd_ref),
                      (torch.cat([rm0[:37], rm1, rm2]), rm), (torch.cat([rv0[:37], rv1, rv2]), rv)):
        assert torch.equal(_bits(got), _bits(want))
    if _apply_into_exact(dtype):
        assert torch.equal(_bits(y), _bits(y_ref))
    # into several outputs (the reduce branches: one slice in, two dense KxK inputs out)
    o1, o2 = (torch.empty((2, c, 6, 7), dtype=dtype).contiguous(memory_format=torch.channels_last) for c in (30, 7))
    torch.ops.googlenet_fast.bn_relu_apply_into([sl], mean[:37], var[:37], gamma[:37], beta[:37], 1e-3, [o1, o2])
    assert torch.equal(_bits(torch.cat([o1, o2], 1)), _bits(formula[:, :37]))


def test_bn_relu_apply_into_argument_errors():
    f = torch.ops.googlenet_fast.bn_relu_apply_into
    x = torch.randn(2, 8, 3, 3).contiguous(memory_format=torch.channels_last)
    v = torch.ones(8)
    out = torch.empty_like(x)
    with pytest.raises(ValueError, match="xs: expected float32 or bfloat16"):
        f([x.double()], v, v, v, v, 1e-3, [out.double()])
    with pytest.raises(ValueError, match="outs: expected 8 channels"):
        f([x], v, v, v, v, 1e-3, [out[:, :5]])
    with pytest.raises(ValueError, match="outs: expected channels_last tensors"):
        f([x], v, v, v, v, 1e-3, [out.contiguous()])
    with pytest.raises(ValueError, match=r"mean: expected a float32 tensor of shape \(8,\), got Float \[3\]"):
        f([x], v[:3], v, v, v, 1e-3, [out])
    with pytest.raises(ValueError, match="var: expected a float32 tensor .* got Double"):
        f([x], v, v.double(), v, v, 1e-3, [out])
    with pytest.raises(ValueError, match="eps"):
        f([x], v, v, v, v, -1.0, [out])
    with pytest.raises(ValueError, match="outs: expected tensors that do not require grad"):
        f([x], v, v, v, v, 1e-3, [out.requires_grad_()])
    with pytest.raises(ValueError, match="xs: expected"):
        f([x, torch.randn(3, 2, 3, 3)], torch.ones(10), torch.ones(10), torch.ones(10), torch.ones(10), 1e-3,
          [torch.empty(2, 10, 3, 3).contiguous(memory_format=torch.channels_last)])


def test_opcheck_bn_relu_apply_into():
    x = torch.randn(2, 6, 3, 4).contiguous(memory_format=torch.channels_last)
    mean, var = torch.batch_norm_update_stats(x, None, None, 0.1)
    out = torch.empty_like(x)
    torch.library.opcheck(torch.ops.googlenet_fast.bn_relu_apply_into.default,
                          ([x[:, :4], x[:, 4:]], mean, var, torch.ones(6), torch.zeros(6), 1e-3, [out]))


@pytest.mark.parametrize("amp,size", [(False, 64), (True, 64), (False, 32), (False, 17), (True, 17)])
def test_train_step_apply_into_switch_changes_no_bit(amp, size, monkeypatch):
    """The fused train step with bn_train.APPLY_INTO (statistics per convolution output, the
    Inception's BatchNorms applied from the pieces, float32 stem BatchNorm + ReLU inside the max
    pool) and without it (the cat + native_batch_norm composition): the same outputs (main and
    both aux heads), every gradient, running statistics and num_batches_tracked, bit for bit;
    float32 and bf16 autocast; 32 px: inception5a/5b on 1x1 maps (their convolutions GEMMs); 17 px:
    4a-4e on 1x1 maps too (the output's strides there are the cat's: the aux heads read them)."""
    import copy
    from googlenet_fast import GoogLeNet, bench
    torch.manual_seed(0)
    base = GoogLeNet(aux_logits=True, init_weights=True, fused=True).train()
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1)).contiguous(
        memory_format=torch.channels_last)
    calls = []
    for name in ("_bn_relu_pieces", "bn_relu_max_pool_train"):
        real = getattr(bn_train, name)
        monkeypatch.setattr(bn_train, name, lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    exact = _apply_into_exact(torch.bfloat16 if amp else torch.float32)
    runs = []
    for flag in (True, False):
        calls.clear()
        bn_train.APPLY_INTO = flag
        try:
            model = copy.deepcopy(base)
            torch.manual_seed(5)  # dropout
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                out = model(x)
                loss = bench.train_loss(out, bench.train_labels(3))
            loss.backward()
        finally:
            bn_train.APPLY_INTO = True
        runs.append((out, model))
        # on: nine Inception modules from the pieces, the two stem pools with BatchNorm + ReLU
        expected = 9 * ["_bn_relu_pieces"] + 2 * ["bn_relu_max_pool_train"] if flag and exact else []
        assert sorted(calls) == sorted(expected)
    (out_a, ma), (out_b, mb) = runs
    for a, b in zip(out_a, out_b):
        assert torch.equal(_bits(a), _bits(b))
    for (n, p), (_, q) in zip(ma.named_parameters(), mb.named_parameters()):
        assert torch.equal(_bits(p.grad), _bits(q.grad)), n
    for (n, p), (_, q) in zip(ma.named_buffers(), mb.named_buffers()):
        assert torch.equal(p, q), n


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("hw", [1, 3])
def test_conv_and_its_backward_one_pixel_gemm(k, hw):
    """bn_train._conv / _conv_backward == F.conv2d(padding=k // 2) / aten.convolution_backward
    (float64, 1e-12): on a 1x1 map the GEMM with the centre tap (weight gradient zero off it),
    on a larger map oneDNN's convolution itself; the input gradient only when asked for."""
    g = torch.Generator().manual_seed(k + hw)
    a = torch.randn(5, 12, hw, hw, generator=g, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    w = torch.randn(7, 12, k, k, generator=g, dtype=torch.float64)
    y = bn_train._conv(a, w)
    ref = torch.nn.functional.conv2d(a, w, padding=k // 2)
    assert y.shape == ref.shape and y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    gy = torch.randn(ref.shape, generator=g, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    ga_ref, gw_ref, _ = torch.ops.aten.convolution_backward(gy, a, w, None, [1, 1], [k // 2] * 2, [1, 1], False,
                                                            [0, 0], 1, [True, True, False])
    ga, gw = bn_train._conv_backward(gy, a, w, True)
    torch.testing.assert_close(ga, ga_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gw, gw_ref, rtol=1e-12, atol=1e-12)
    assert bn_train._conv_backward(gy, a, w, False)[0] is None
    if hw == 1 and k > 1:
        assert (gw[:, :, 0, 0] == 0).all() and (gw[:, :, k // 2, k // 2] != 0).all()


# ------------------------------------------------------------------------------------------------
# bn_batch_stats: ATen's train-mode batch statistics of float32 channels_last tensors, faster.


@pytest.mark.parametrize("threads", [2, 1])
@pytest.mark.parametrize("shape", [(8, 64, 28, 28), (3, 37, 5, 7), (2, 300, 7, 7), (1, 5, 1, 2), (2, 9, 1, 1),
                                   (1, 130, 3, 1)])
def test_bn_batch_stats_equals_aten_bit_for_bit(shape, threads):
    """mean, biased var and both running statistics == torch.batch_norm_update_stats bit for bit:
    ATen's row split across threads (2 and 1), its scalar path (rows <= threads), channel tails,
    two momenta, no running statistics; a 1x1 map (NCHW-contiguous too) goes to ATen's op."""
    gf = torch.ops.googlenet_fast
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(shape[1])
        x = (torch.randn(shape, generator=g) * 3 + 1).contiguous(memory_format=torch.channels_last)
        c = shape[1]
        rm, rv = torch.randn(c, generator=g), torch.rand(c, generator=g) + 0.5
        rm2, rv2 = rm.clone(), rv.clone()
        for momentum in (0.1, 0.37):
            want = torch.batch_norm_update_stats(x, rm, rv, momentum)
            got = gf.bn_batch_stats(x, rm2, rv2, momentum)
            for a, b in zip(want + (rm, rv), got + (rm2, rv2)):
                assert torch.equal(_bits(a), _bits(b))
        want = torch.batch_norm_update_stats(x, None, None, 0.1)
        got = gf.bn_batch_stats(x, None, None, 0.1)
        assert all(torch.equal(_bits(a), _bits(b)) for a, b in zip(want, got))
    finally:
        torch.set_num_threads(previous)


def test_bn_batch_stats_other_inputs_and_errors():
    """Other dtypes and layouts: ATen's op (same results); running statistics of the wrong shape
    or dtype: ValueError naming them; on an AVX-512 CPU with this ATen the own loops run."""
    gf = torch.ops.googlenet_fast
    x = torch.randn(2, 6, 4, 5)
    for t in (x, x.double().contiguous(memory_format=torch.channels_last),
              x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)):
        assert all(torch.equal(a, b) for a, b in zip(gf.bn_batch_stats(t, None, None, 0.1),
                                                     torch.batch_norm_update_stats(t, None, None, 0.1)))
    xc = x.contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="running_mean, running_var"):
        gf.bn_batch_stats(xc, torch.zeros(5), torch.ones(6), 0.1)
    with pytest.raises(ValueError, match="running_mean, running_var"):
        gf.bn_batch_stats(xc, torch.zeros(6), torch.ones(6).double(), 0.1)
    portable = os.environ.get("GOOGLENET_FAST_PORTABLE_LOOPS", "") not in ("", "0")
    if torch.backends.cpu.get_cpu_capability() == "AVX512" and not portable:
        assert gf.bn_batch_stats_exact()
    if portable:
        assert not gf.bn_batch_stats_exact()


def test_opcheck_bn_batch_stats():
    x = torch.randn(2, 6, 3, 4).contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.googlenet_fast.bn_batch_stats.default, (x, torch.zeros(6), torch.ones(6), 0.1))


def test_train_step_fast_batch_stats_switch_changes_no_bit():
    """The float32 fused train step with bn_train.FAST_BATCH_STATS on and off: outputs, every
    gradient, running statistics, bit for bit."""
    import copy
    from googlenet_fast import GoogLeNet, bench
    torch.manual_seed(0)
    base = GoogLeNet(aux_logits=True, init_weights=True, fused=True).train()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2)).contiguous(
        memory_format=torch.channels_last)
    runs = []
    for flag in (True, False):
        bn_train.FAST_BATCH_STATS = flag
        try:
            model = copy.deepcopy(base)
            torch.manual_seed(5)
            out = model(x)
            bench.train_loss(out, bench.train_labels(2)).backward()
        finally:
            bn_train.FAST_BATCH_STATS = True
        runs.append((out, model))
    (out_a, ma), (out_b, mb) = runs
    assert all(torch.equal(a, b) for a, b in zip(out_a, out_b))
    for (n, p), (_, q) in zip(ma.named_parameters(), mb.named_parameters()):
        assert torch.equal(p.grad, q.grad), n
    for (n, p), (_, q) in zip(ma.named_buffers(), mb.named_buffers()):
        assert torch.equal(p, q), n


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [True, False])
def test_one_by_one_conv_gemm(dtype, channels_last):
    """bn_train._conv / _conv_backward of a 1x1 convolution on a 4x4 map: with ONE_BY_ONE_GEMM and
    dense channels_last tensors the GEMMs over the pixels (aten::mm, no oneDNN convolution; output
    and input gradient channels_last), else oneDNN's convolution; equal to F.conv2d /
    aten.convolution_backward (float64 1e-12, float32 1e-5, bfloat16 one rounding of the float32
    sum: 1e-2 relative)."""
    from torch.profiler import ProfilerActivity, profile
    g = torch.Generator().manual_seed(7)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    a = torch.randn(3, 40, 4, 4, generator=g, dtype=torch.float64).to(dtype).contiguous(memory_format=fmt)
    w = torch.randn(24, 40, 1, 1, generator=g, dtype=torch.float64).to(dtype)
    gy = torch.randn(3, 24, 4, 4, generator=g, dtype=torch.float64).to(dtype).contiguous(memory_format=fmt)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        y = bn_train._conv(a, w)
        ga, gw = bn_train._conv_backward(gy, a, w, True)
        _, gw_only = bn_train._conv_backward(gy, a, w, False)
    names = {e.key for e in prof.key_averages()}
    assert ("aten::convolution_backward" in names) != channels_last
    assert ("aten::mm" in names) == channels_last
    assert y.is_contiguous(memory_format=torch.channels_last)
    if channels_last:
        assert ga.is_contiguous(memory_format=torch.channels_last)
    a64, w64, gy64 = (t.double() for t in (a, w, gy))
    ga_ref, gw_ref, _ = torch.ops.aten.convolution_backward(gy64, a64, w64, None, [1, 1], [0, 0], [1, 1], False,
                                                            [0, 0], 1, [True, True, False])
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2}[dtype]
    for got, ref in ((y, torch.nn.functional.conv2d(a64, w64)), (ga, ga_ref), (gw, gw_ref), (gw_only, gw_ref)):
        assert got.dtype == dtype and got.shape == ref.shape
        assert (got.double() - ref).abs().max().item() <= tol * ref.abs().max().item()
