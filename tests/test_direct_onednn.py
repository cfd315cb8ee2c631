"""The CPU path's convolutions and inner products as oneDNN primitives the extension keeps, in the
oneDNN torch carries (csrc/cpu/onednn_api.h, onednn_direct.h; issue #14): available with the
pinned torch, bit-equal to ATen's mkldnn ops (the same kernels) for the whole model and each op,
under weight updates, thread-count changes and parallel stage-1 blocks, and switchable off."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import googlenet_fast as gf
from googlenet_fast import GoogLeNet, ops
from googlenet_fast.backends import native

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import cpu_direct_onednn  # noqa: E402

pytestmark = pytest.mark.skipif(not native.available(), reason=f"extension not built: {native.LOAD_ERROR}")

PINNED_TORCH = "2.14.1"  # README's install command: its wheel keeps libtorch_cpu.so's symbol table


@pytest.fixture
def direct():
    """Yields a function running a callable with the direct path on, then off (ATen's ops), and
    returning both results; restores the setting."""
    previous = ops.set_direct_onednn(True)

    def both(fn):
        ops.set_direct_onednn(True)
        on = fn()
        ops.set_direct_onednn(False)
        off = fn()
        ops.set_direct_onednn(True)
        return on, off

    yield both
    ops.set_direct_onednn(previous)


def test_available_with_the_pinned_torch():
    status = ops.direct_onednn_status()
    if torch.__version__.split("+")[0] != PINNED_TORCH:
        pytest.skip(f"torch {torch.__version__} is not the pinned {PINNED_TORCH} (status: {status})")
    assert status == "enabled", status


def _model(seed=0):
    torch.manual_seed(seed)
    m = GoogLeNet(fused=True, aux_logits=False, init_weights=True).eval()
    # non-trivial BatchNorm statistics, so the folded weights differ from the raw ones
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
    return m


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 3])
def test_model_bit_equal_to_aten_path(direct, dtype, batch):
    if ops.direct_onednn_status() != "enabled":
        pytest.skip(ops.direct_onednn_status())
    m = _model()
    x = torch.randn(batch, 3, 224, 224)

    def run():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            m(x)  # records the CPU program; the second call replays it
            return m(x)

    on, off = direct(run)
    assert native._C._direct_onednn_primitive_count() > 0
    assert on.dtype == off.dtype and on.shape == (batch, 1000)
    assert on.abs().max() > 0
    assert torch.equal(on, off)
    # and against torchvision's arithmetic (the fold) within the model tests' fp32 rule
    if dtype == torch.float32:
        import torchvision
        tv = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False).eval()
        tv.load_state_dict(m.state_dict())
        with torch.no_grad():
            want = tv(x)
        assert (on - want).abs().max() <= 1e-4 * want.abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", ["conv1_nchw", "conv1_cl", "conv3_no_bias", "sliced_input", "stride3_pad0"])
@pytest.mark.parametrize("prepack", [False, True])
def test_conv2d_relu_bit_equal(direct, dtype, case, prepack):
    torch.manual_seed(1)
    if case.startswith("conv1"):
        x, w, stride, pad = torch.randn(2, 3, 37, 41), torch.randn(64, 3, 7, 7) * 0.1, 2, 3
        if case == "conv1_cl":
            x = x.contiguous(memory_format=torch.channels_last)
    elif case == "sliced_input":  # neither NCHW- nor NHWC-dense: ATen's op runs
        x, w, stride, pad = torch.randn(2, 16, 12, 14)[:, :, :, 1:], torch.randn(8, 16, 3, 3) * 0.1, 1, 1
    elif case == "stride3_pad0":
        x, w, stride, pad = torch.randn(1, 8, 11, 11).contiguous(memory_format=torch.channels_last), \
            torch.randn(5, 8, 3, 3) * 0.1, 3, 0
    else:
        x, w, stride, pad = torch.randn(1, 64, 9, 9).contiguous(memory_format=torch.channels_last), \
            torch.randn(192, 64, 3, 3) * 0.1, 1, 1
    b = None if case == "conv3_no_bias" else torch.randn(w.shape[0])
    x, w = x.to(dtype), w.to(dtype)
    if b is not None:
        b = b.to(dtype)

    def run():
        with ops.weight_prepacking(prepack):
            return ops.conv2d_relu(x, w, b, stride, pad, relu=True)

    on, off = direct(run)
    assert torch.equal(on, off)
    ref = F.relu(F.conv2d(x.double(), w.double(), None if b is None else b.double(), stride, pad))
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert (on.double() - ref).abs().max() <= tol * ref.abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("prepack", [False, True])
def test_inception_op_parallel_blocks_bit_equal(direct, dtype, prepack):
    """Stage 1 runs its 512-pixel blocks on both threads at once: each executes the same inner
    product primitive (the plain-weight one packs its weight in the scratchpad: one shared by the
    threads gave garbage before the scratchpad became the caller's)."""
    torch.manual_seed(2)
    cin, c1, r3, c3, r5, c5, pp = 192, 64, 96, 128, 16, 32, 32
    ws = []
    for cout, ci, k in [(c1, cin, 1), (r3, cin, 1), (c3, r3, 3), (r5, cin, 1), (c5, r5, 5), (pp, cin, 1)]:
        ws += [(torch.randn(cout, ci, k, k) * 0.1).to(dtype), torch.randn(cout).to(dtype)]
    x = torch.randn(3, cin, 28, 28).to(dtype).contiguous(memory_format=torch.channels_last)  # 2352 px: 5 blocks

    def run():
        with ops.weight_prepacking(prepack):
            return gf.inception(x, *ws, backend="cpu")

    on, off = direct(run)
    assert torch.equal(on, off)
    from googlenet_fast.backends.reference import inception_reference
    ref = inception_reference(x.double(), *[w.double() for w in ws])
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    assert (on.double() - ref).abs().max() <= tol * ref.abs().max()


def test_weight_update_and_thread_change(direct):
    """A packed copy follows in-place weight updates (version counter) and a primitive is made per
    thread count: outputs stay equal to ATen's path after both."""
    if ops.direct_onednn_status() != "enabled":
        pytest.skip(ops.direct_onednn_status())
    m = _model(3)
    x = torch.randn(2, 3, 96, 96)

    def run():
        with torch.no_grad():
            m(x)
            return m(x)

    on, off = direct(run)
    assert torch.equal(on, off)
    with torch.no_grad():
        m.inception4a.branch2[1].conv.weight.mul_(1.5)
    on2, off2 = direct(run)
    assert torch.equal(on2, off2) and not torch.equal(on2, on)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        on3, off3 = direct(run)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(on3, off3)
    assert (on3 - on2).abs().max() <= 1e-4 * on2.abs().max()


def test_primitives_made_once_per_shape():
    if ops.direct_onednn_status() != "enabled":
        pytest.skip(ops.direct_onednn_status())
    m = _model(4)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        m(x)
        m(x)
        count = native._C._direct_onednn_primitive_count()
        for _ in range(3):
            m(x)
    assert native._C._direct_onednn_primitive_count() == count


def test_argument_memories_rebound_and_bounded(direct):
    """Each thread keeps one set of oneDNN memory objects per primitive and re-points it at every
    call's buffers: a second call of one primitive on other tensors gets its own result, and past
    1024 primitives on one thread the sets are rebuilt, not grown (results stay ATen's)."""
    if ops.direct_onednn_status() != "enabled":
        pytest.skip(ops.direct_onednn_status())
    torch.manual_seed(5)
    w, b = torch.randn(8, 4, 3, 3), torch.randn(8)
    cl = torch.channels_last  # (NCHW inputs of 4 channels get oneDNN's reference kernel: ATen's op runs)
    xa, xb = (torch.randn(1, 4, 6, 7).contiguous(memory_format=cl) for _ in range(2))
    before = native._C._direct_onednn_thread_memory_sets()
    ya = ops.conv2d_relu(xa, w, b, 1, 1, relu=True)
    yb = ops.conv2d_relu(xb, w, b, 1, 1, relu=True)  # the same primitive, other buffers
    for x, y in ((xa, ya), (xb, yb)):
        assert torch.allclose(y, F.relu(F.conv2d(x, w, b, 1, 1)), rtol=1e-5, atol=1e-5)
    assert not torch.equal(ya, yb)
    assert native._C._direct_onednn_thread_memory_sets() in (before + 1, 1)  # one set, or a rebuilt one
    counts = []
    for i in range(1100):  # 1100 input sizes: 1100 primitives on this thread
        x = torch.randn(1, 4, 3 + i % 40, 3 + i // 40).contiguous(memory_format=cl)
        on, off = direct(lambda: ops.conv2d_relu(x, w, b, 1, 1, relu=True))
        assert torch.equal(on, off), i
        counts.append(native._C._direct_onednn_thread_memory_sets())
    assert max(counts) <= 1024, max(counts)
    assert any(later < earlier for earlier, later in zip(counts, counts[1:])), "the sets were never rebuilt"


@pytest.mark.parametrize("value", ["0", " Off "])
def test_switched_off_by_environment(value):
    code = ("import torch; from googlenet_fast import ops, GoogLeNet; print(ops.direct_onednn_status()); "
            "torch.manual_seed(0); m = GoogLeNet(fused=True, aux_logits=False, init_weights=True).eval(); "
            "x = torch.randn(1, 3, 64, 64)\n"
            "with torch.no_grad(): y = m(x); ops.set_direct_onednn(True); z = m(x)\n"
            "print(ops.direct_onednn_status(), torch.equal(y, z))")
    env = dict(os.environ, GOOGLENET_FAST_ONEDNN=value)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "switched off"
    if ops.direct_onednn_status() == "enabled":
        assert lines[1] == "enabled True"


def test_unknown_environment_value_warns_and_stays_on():
    code = "from googlenet_fast import ops; print(ops.direct_onednn_status())"
    env = dict(os.environ, GOOGLENET_FAST_ONEDNN="banana")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "GOOGLENET_FAST_ONEDNN=banana: expected 0/false/off/no or 1/true/on/yes" in out.stderr
    assert out.stdout.strip() == ops.direct_onednn_status()


def test_set_direct_onednn_takes_a_bool():
    with pytest.raises(TypeError, match="enabled: expected a bool, got str '0'"):
        ops.set_direct_onednn("0")


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("view", ["transpose", "expand"])
def test_prepacked_copy_not_shared_between_views_at_one_address(direct, layout, view):
    """A view of a weight at the same address with other strides (transposed, expanded) holds other
    values: its packed copy must not be the first view's, though oneDNN picks the same layout
    (found by a fresh-user trial: the ATen path returned the untransposed weight's result)."""
    torch.manual_seed(5)
    if view == "transpose":
        w = torch.randn(16, 8, 3, 3)
        other = w.transpose(2, 3)
    else:
        w = torch.randn(16, 8, 3, 3)
        other = w[:, :1].expand(16, 8, 3, 3)
    x = torch.randn(1, 8, 10, 10)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    want = F.relu(F.conv2d(x.double(), other.double(), None, 1, 1))

    def run():
        with torch.no_grad(), ops.weight_prepacking():
            ops.conv2d_relu(x, w, None, 1, 1)
            return ops.conv2d_relu(x, other, None, 1, 1)

    on, off = direct(run)
    for got in (on, off):
        assert (got.double() - want).abs().max() <= 1e-5 * want.abs().max()


def test_set_direct_onednn_returns_previous():
    previous = ops.set_direct_onednn(False)
    try:
        assert ops.set_direct_onednn(True) is False
        assert ops.set_direct_onednn(True) is True
    finally:
        ops.set_direct_onednn(previous)


def test_benchmark_script_prints_both_paths_and_the_ratio(capsys):
    rc = cpu_direct_onednn.main(["--dtype", "float32", "--batch-sizes", "1", "--rounds", "1", "--forwards", "1"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "direct (" in out and "ATen   (switched off)" in out
    ratio = [line for line in out.splitlines() if line.startswith("batch 1: direct")]
    assert len(ratio) == 1 and float(ratio[0].split("ATen / direct ")[1].split()[0]) > 0


def test_benchmark_script_rejects_bad_sizes():
    with pytest.raises(SystemExit) as e:
        cpu_direct_onednn.main(["--batch-sizes", "0"])
    assert e.value.code == 2
