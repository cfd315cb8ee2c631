"""The CPU training kernels' portable loops (what CPUs without AVX-512BW run, and what runs here
with GOOGLENET_FAST_PORTABLE_LOOPS set): the max pool and BatchNorm + ReLU backward parity checks
of test_pool_train.py and test_bn_train.py, run again in a process where the variable is set.
On an AVX-512BW CPU the in-process runs of those files check the vectorized loops
(csrc/cpu/avx512_lanes.h, max_pool_tap_avx512.h, bn_relu_train_cpu.cpp)."""
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def test_parity_checks_with_the_portable_loops():
    env = dict(os.environ, GOOGLENET_FAST_PORTABLE_LOOPS="1")
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         os.path.join(HERE, "test_pool_train.py"), os.path.join(HERE, "test_bn_train.py"),
         "-k", "match_aten or matches_aten or channel_groups or minus_zero or bn_relu_backward or bn_relu_forward "
               "or bn_relu_apply or exact_apply or mask_from_pre or bn_relu_max_pool or stem_bn_relu_pool or tap_bn_relu "
               "or bn_batch_stats"],
        env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # every selected test ran: pool forward and backward (10 windows x 3 dtypes each), channel groups,
    # -0 accumulation; BatchNorm + ReLU backward vs ATen (3 dtypes x 2 channel counts), its argument
    # errors, its opcheck, thread-count independence (3 shapes x 2 dtypes), its bf16 and float32
    # masks from pre (2 shapes each: off here, y read), the float32 forward's offer of it and its
    # switch (off here); the bf16 forward apply vs ATen (4 shapes x 2 layouts: ATen's
    # own here), its eps 0 / slice case, its signed zero / NaN / errors, its opcheck (2 layouts);
    # the exact-apply switch (off here); the fused BatchNorm + ReLU + max pool node (4 windows:
    # its op refuses here, its opcheck test; float32 and bfloat16; its backward as one op or two)
    # and the stem's use of it (not taken here); the fused backward op (12 cases and its errors
    # test: it refuses here); bn_relu_apply_into's formula from channel lists (2 dtypes: the portable loop
    # here), its argument errors and opcheck; bn_batch_stats vs ATen (6 shapes x 2 thread counts:
    # ATen's own op inside it here), its other inputs / errors, its opcheck
    assert re.search(r"^144 passed", r.stdout, re.M), r.stdout[-500:]


_OUTPUTS = r'''
import sys, torch
import googlenet_fast  # noqa: F401  (loads the ops)
gf = torch.ops.googlenet_fast
cl = torch.channels_last
out = []
for dtype in (torch.float32, torch.bfloat16):
    for i, (shape, window) in enumerate([((3, 48, 13, 11), (3, 1, 1, True)), ((2, 37, 12, 12), (3, 2, 0, True)),
                                         ((1, 200, 9, 9), (5, 2, 2, False)), ((4, 16, 7, 7), (2, 2, 0, True))]):
        g = torch.Generator().manual_seed(i)
        x = torch.randint(-4, 5, shape, generator=g).to(dtype).contiguous(memory_format=cl)
        y, tap = gf.max_pool2d_tap(x, *window)
        gy = torch.randn(y.shape, generator=g).to(dtype).contiguous(memory_format=cl)
        gx = torch.randn(shape, generator=g).to(dtype).contiguous(memory_format=cl)
        gf.max_pool2d_tap_backward_(gx, gy, tap, *window[:3], True)
        out += [y, tap, gx]
# BatchNorm + ReLU backward: pieces of 5 and 32 channels (tails and whole registers)
for dtype in (torch.float32, torch.bfloat16):
    g = torch.Generator().manual_seed(7)
    shape = (4, 37, 9, 9)
    pre = torch.randn(shape, generator=g).to(dtype).contiguous(memory_format=cl)
    grad = torch.randn(shape, generator=g).to(dtype).contiguous(memory_format=cl)
    mean, invstd, gamma = torch.randn(37, generator=g) * 0.1, torch.rand(37, generator=g) + 0.5, torch.randn(37, generator=g)
    y = torch.relu((pre.float() - mean[:, None, None]) * invstd[:, None, None]).to(dtype).contiguous(memory_format=cl)
    dx = torch.empty_like(pre)
    gg, gb = gf.bn_relu_backward([grad[:, :5], grad[:, 5:]], [y], [pre], mean, invstd, gamma, [dx])
    out += [dx, gg, gb]
# the eval Inception's ReLU epilogues (stage 1 and 2 rows of 3-45 channels: register tails) on
# values with NaN payloads, both infinities, both zeros, subnormals: branch 1 a one-hot 1x1
# convolution, so its output is the input itself
from googlenet_fast import ops
for dtype in (torch.float32, torch.bfloat16):
    g = torch.Generator().manual_seed(11)
    c = 24
    x = torch.randn(2, c, 7, 9, generator=g).to(dtype)
    bits = torch.int32 if dtype == torch.float32 else torch.int16
    special = ([0x7FC00001, -0x7FFFFF, 0x7F800000, -0x800000, -0x80000000, 0, 1, -0x7FFFFFFF]
               if dtype == torch.float32 else [0x7FC1, -0x7F, 0x7F80, -0x80, -0x8000, 0, 1, -0x7FFF])
    flat = x.view(bits).view(-1)
    flat[torch.randperm(flat.numel(), generator=g)[:4 * len(special)]] = torch.tensor(special * 4).to(bits)
    w = lambda o, i, k: (torch.randn(o, i, k, k, generator=g) * 0.3).to(dtype)
    y = ops.inception(x.contiguous(memory_format=cl), torch.eye(c, dtype=dtype).reshape(c, c, 1, 1), None,
                      w(5, c, 1), None, w(37, 5, 3), None, w(3, c, 1), None, w(19, 3, 5), None, w(45, c, 1), None,
                      relu=True, backend="cpu")
    out.append(y)
torch.save(out, sys.argv[1])
'''


def test_vectorized_and_portable_loops_give_the_same_bits(tmp_path):
    """Where the CPU has AVX-512 this compares its loops with the portable ones bit for bit
    (max pool values, taps and accumulated gradients, BatchNorm + ReLU backward, the eval
    Inception's ReLU epilogues on special values; float32 and bfloat16; channel counts with
    tails); elsewhere both runs are portable."""
    import torch
    files = {}
    for name, env in (("default", {}), ("portable", {"GOOGLENET_FAST_PORTABLE_LOOPS": "1"})):
        files[name] = str(tmp_path / f"{name}.pt")
        r = subprocess.run([sys.executable, "-c", _OUTPUTS, files[name]], env=dict(os.environ, **env),
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
    a, b = torch.load(files["default"]), torch.load(files["portable"])
    assert len(a) == len(b) == 32
    for i, (u, v) in enumerate(zip(a, b)):
        assert u.dtype == v.dtype and u.shape == v.shape
        bits = {torch.bfloat16: torch.int16, torch.float32: torch.int32, torch.uint8: torch.uint8}[u.dtype]
        assert torch.equal(u.contiguous().view(bits), v.contiguous().view(bits)), i
