"""bfloat16 CPU inference (issue #14): the fused model in bfloat16 and under
torch.autocast("cpu", bfloat16) runs the extension's bfloat16 path (oneDNN convolutions and inner
products with prepacked weights, vectorized bfloat16 element loops), with an error against
float32 at most twice torchvision's own bfloat16 error, and exact bfloat16 rounding in the loops."""
import pytest
import torch
import torch.nn.functional as F
import torchvision

from googlenet_fast import GoogLeNet, ops
from googlenet_fast.backends import native
from googlenet_fast.bench import calibrate_batchnorm
from googlenet_fast.data import fill_batch, preprocess, sample_photos
from model_helpers import OpLog

pytestmark = pytest.mark.skipif(not native.available(), reason=f"extension not built: {native.LOAD_ERROR}")

BF16 = torch.bfloat16


def rel_err(out, ref):
    out, ref = out.detach().double(), ref.detach().double()
    scale = ref.abs().max().item()
    assert scale > 1e-3, "reference is ~zero: the comparison would prove nothing"
    return (out - ref).abs().max().item() / scale


@pytest.fixture(scope="module")
def photo_models():
    """torchvision's googlenet (seeded weights, BatchNorm statistics from real photos) and the
    fused model with the same state_dict, float32, eval; 2 photos at 224 x 224."""
    photos = preprocess(sample_photos())
    torch.manual_seed(0)
    tv = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True)
    calibrate_batchnorm(tv, photos)
    ours = GoogLeNet(aux_logits=False, init_weights=False, fused=True)
    ours.load_state_dict(tv.state_dict())
    ours.eval()
    x = fill_batch(photos, 2).contiguous()
    with torch.no_grad():
        ref = tv(x)
    # the logits depend on the image (not only fc's bias): the comparison means something
    assert (ref[0] - ref[1]).abs().max() > 1e-2 * ref.abs().max()
    return tv, ours, x, ref


def test_bf16_model_error_within_twice_torchvision(photo_models):
    tv, ours, x, ref = photo_models
    tv16 = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False)
    tv16.load_state_dict(tv.state_dict())
    tv16 = tv16.eval().to(BF16)
    ours16 = GoogLeNet(aux_logits=False, init_weights=False, fused=True)
    ours16.load_state_dict(tv.state_dict())
    ours16 = ours16.eval().to(BF16)
    x16 = x.to(BF16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), OpLog() as mode:
        y = ours16(x16)
    with torch.no_grad():
        y_tv = tv16(x16)
    assert y.dtype == BF16
    e_ours, e_tv = rel_err(y, ref), rel_err(y_tv, ref)
    assert e_tv > 0
    assert e_ours <= 2 * e_tv, (e_ours, e_tv)
    assert (y.float().argmax(1) == ref.argmax(1)).all()
    # the whole network ran through the extension's bfloat16 ops
    assert mode.count("googlenet_fast.inception", BF16) == 9
    assert mode.count("googlenet_fast.conv2d_relu", BF16) == 1  # conv2
    assert mode.count("googlenet_fast.conv2d_relu_max_pool", BF16) == 2  # conv1 + maxpool1, conv3 + maxpool2
    assert mode.count("googlenet_fast.max_pool_nhwc", BF16) == 2  # maxpool3, maxpool4
    assert mode.count("googlenet_fast.avgpool_linear", BF16) == 1
    assert mode.count("aten.convolution") == 0


def test_autocast_bf16_takes_the_bf16_path(photo_models):
    tv, ours, x, ref = photo_models
    with torch.no_grad(), torch.autocast("cpu", dtype=BF16):
        with OpLog() as mode:
            y = ours(x)
        y_tv = tv(x)
    assert y.dtype == y_tv.dtype == BF16
    e_ours, e_tv = rel_err(y, ref), rel_err(y_tv, ref)
    assert e_ours <= 2 * e_tv, (e_ours, e_tv)
    assert mode.count("googlenet_fast.inception", BF16) == 9
    assert mode.count("googlenet_fast.conv2d_relu", BF16) == 1  # conv2
    assert mode.count("googlenet_fast.conv2d_relu_max_pool", BF16) == 2  # conv1 + maxpool1, conv3 + maxpool2
    assert mode.count("googlenet_fast.max_pool_nhwc", BF16) == 2  # maxpool3, maxpool4
    assert mode.count("googlenet_fast.avgpool_linear") == 0  # fc: nn.Linear under autocast, as torchvision's
    assert mode.count("googlenet_fast.inception", torch.float32) == 0
    assert mode.count("aten.convolution") == 0
    # the float32 weights stay what they were: autocast does not convert the model
    assert ours.inception3a.branch1.conv.weight.dtype == torch.float32
    with torch.no_grad():
        assert rel_err(ours(x), ref) <= 1e-4  # and float32 afterwards is float32 again


def test_bf16_epilogue_rounds_to_nearest_even_and_keeps_nan():
    """The bfloat16 epilogue (GEMM result + float32 bias, rounded to bfloat16) against torch's own
    rounding, bit for bit: identity 1x1 weights make each output channel x + b exactly before
    rounding, with bias values that put many sums on rounding ties; NaN inputs stay NaN and the
    max pool branch keeps -inf padding."""
    c, h, w = 16, 5, 6
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, c, h, w, generator=g).to(BF16)
    x[0, 3, 2, 2] = float("nan")
    x[0, 5, 0, 0] = float("inf")
    # b = x-scaled half-ulps: x + b lands on a tie between two bfloat16 values
    # b: odd multiples of half an ulp of x at pixel (1, 1): x + b lands on rounding ties there
    ulp = torch.ldexp(torch.ones(c), torch.frexp(x[0, :, 1, 1].float())[1] - 8)
    b = (ulp * (2 * torch.randint(-3, 3, (c,), generator=g) + 1) / 2).to(BF16)
    eye = torch.eye(c, dtype=BF16).reshape(c, c, 1, 1)
    z = torch.zeros(1, c, 1, 1, dtype=BF16)
    zk = torch.zeros(1, 1, 3, 3, dtype=BF16)
    xc = x.contiguous(memory_format=torch.channels_last)
    y = ops.inception(xc, eye, b, z, None, zk, None, z, None, zk, None, eye, b, relu=False, backend="cpu")
    # float32 references, exact before the one rounding: a one-hot 1x1 conv is x itself (NaN
    # and inf spread over the pixel's channels as in any convolution: inf * 0 is NaN), + b
    want1 = F.conv2d(x.float(), eye.float(), b.float()).to(BF16)
    want4 = F.conv2d(F.max_pool2d(x.float(), 3, 1, 1), eye.float(), b.float()).to(BF16)
    got1, got4 = y[:, :c], y[:, c + 2:]
    assert torch.equal(got1.isnan(), want1.isnan()) and got1.isnan().any()
    assert torch.equal(got1.nan_to_num(), want1.nan_to_num())
    assert torch.equal(got4.isnan(), want4.isnan())
    assert torch.equal(got4.nan_to_num(), want4.nan_to_num())
    exact = F.conv2d(x.double(), eye.double(), b.double())
    rounded = (exact - want1.double()).abs()
    assert (rounded[torch.isfinite(rounded)] > 0).sum() > 10  # rounding really happened


@pytest.mark.parametrize("relu", [False, True])
def test_bf16_max_pool_bitwise(relu):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 72, 9, 11, generator=g).to(BF16)
    x[0, 7, 4, 4] = float("nan")
    x[1, 70, 0, 0] = float("-inf")
    y = ops.max_pool_nhwc(x.contiguous(memory_format=torch.channels_last), 3, 2, relu=relu)
    ref = F.max_pool2d(x.float(), 3, 2, ceil_mode=True)
    ref = (torch.relu(ref) if relu else ref).to(BF16)
    assert torch.equal(y.isnan(), ref.isnan()) and y.isnan().any()
    assert torch.equal(y.nan_to_num(), ref.nan_to_num())


# Every kind of bfloat16 value the integer-key max pool must order as float32 does: negative and
# positive NaNs with payloads, both infinities, both zeros, subnormals, the extreme finite values.
SPECIAL_BF16_BITS = [0xFFC1, 0x7F81, 0x7FC0, 0xFF80, 0x7F80, 0x8000, 0x0000, 0x0001, 0x8001,
                     0x7F7F, 0xFF7F, 0x3F80, 0xBF80, 0x007F, 0x807F]


def _special_bf16_input(c, h, w, seed, bits=SPECIAL_BF16_BITS):
    """Random bfloat16 values with the special bit patterns scattered in, and one all-negative
    image (every window's max negative: ReLU must give +0 there)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, c, h, w, generator=g).to(BF16)
    flat = x.view(torch.int16).view(-1)
    where = torch.randperm(flat.numel() // 3, generator=g)[:4 * len(bits)]
    pattern = torch.tensor(bits * 4, dtype=torch.int32).to(torch.int16)
    flat[where] = pattern
    x[2] = -x[2].abs() - 0.5
    return x


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("k,s,c", [(3, 2, 72), (3, 2, 136), (2, 2, 40), (3, 1, 16)])
def test_bf16_max_pool_special_values(relu, k, s, c):
    x = _special_bf16_input(c, 9, 11, seed=k * 100 + c)
    y = ops.max_pool_nhwc(x.contiguous(memory_format=torch.channels_last), k, s, relu=relu)
    ref = F.max_pool2d(x.float(), k, s, ceil_mode=True)
    ref = (torch.relu(ref) if relu else ref).to(BF16)
    assert torch.equal(y.isnan(), ref.isnan()) and y.isnan().any()
    assert torch.equal(y.nan_to_num(), ref.nan_to_num())  # -0 == +0: the one liberty taken
    if relu:
        assert (y[2] == 0).all() and not y[2].signbit().any()


def test_bf16_pool_branch_special_values():
    """The Inception pool branch's 3x3/s1 max (padding -inf) on the same values: one-hot pool_proj
    weights make the branch output the pooled input plus zero bias, exactly.  No subnormals:
    oneDNN's bfloat16 GEMM flushes them to zero (as torch's own bfloat16 convolution does)."""
    c = 24
    normal = [b for b in SPECIAL_BF16_BITS if (b & 0x7F80) != 0 or (b & 0x7F) == 0]
    x = _special_bf16_input(c, 6, 7, seed=5, bits=normal)
    eye = torch.eye(c, dtype=BF16).reshape(c, c, 1, 1)
    z = torch.zeros(1, c, 1, 1, dtype=BF16)
    zk = torch.zeros(1, 1, 3, 3, dtype=BF16)
    y = ops.inception(x.contiguous(memory_format=torch.channels_last), z, None, z, None, zk, None, z, None, zk,
                      None, eye, torch.zeros(c, dtype=BF16), relu=False, backend="cpu")
    want = F.conv2d(F.max_pool2d(x.float(), 3, 1, 1), eye.float()).to(BF16)
    got = y[:, -c:]
    # NaN and inf spread over the pixel's channels through the one-hot GEMM (inf * 0 is NaN)
    assert torch.equal(got.isnan(), want.isnan()) and got.isnan().any()
    assert torch.equal(got.nan_to_num(), want.nan_to_num())


@pytest.mark.parametrize("shape", [(1, 16, 15, 13), (3, 8, 9, 11), (1, 24, 7, 7)])
def test_bf16_pool_branch_pads_with_minus_inf_across_blocks(shape):
    """cases.md pool-padding in bfloat16: on strictly negative input the pool branch equals
    F.max_pool2d(x, 3, 1, 1) exactly (-inf padding, never 0), also where stage 1's pixel blocks
    (two here, the first ending inside a row) start or end inside a row or an image: the keys
    each block converts must cover every tap its windows read.  Values rise along each image's
    raster order (-H*W .. -1, exact in bfloat16), so every window's maximum is its last in-image
    tap: a key left out at a block's edge changes the result."""
    n, c, h, w = shape
    ramp = -(h * w - torch.arange(h * w, dtype=torch.float32)).reshape(1, 1, h, w)
    x = ramp.expand(n, c, h, w) - torch.rand(n, c, 1, 1, generator=torch.Generator().manual_seed(c)).round()
    x = x.to(BF16).contiguous(memory_format=torch.channels_last)
    assert (x < 0).all()
    eye = torch.eye(c, dtype=BF16).reshape(c, c, 1, 1)
    z = torch.zeros(1, c, 1, 1, dtype=BF16)
    zk = torch.zeros(1, 1, 3, 3, dtype=BF16)
    y = ops.inception(x, z, None, z, None, zk, None, z, None, zk, None, eye, torch.zeros(c, dtype=BF16),
                      relu=False, backend="cpu")
    want = F.max_pool2d(x.float(), 3, 1, 1).to(BF16)
    assert torch.equal(y[:, -c:], want)
    assert (y[:, -c:] < 0).all()


def test_bf16_element_loops_are_avx512bw_vectorized():
    """The x86-64-v4 clones of the bfloat16 pooling and ReLU loops, and the AVX-512 ReLU row of the
    epilogues, work on 32 16-bit lanes per instruction (vpmaxsw / 16-bit compares on zmm
    registers), the point of their integer keys."""
    import re
    import shutil
    import subprocess
    from googlenet_fast import _C
    tool = shutil.which("objdump")
    assert tool, "objdump (binutils) is needed to read the extension's machine code"
    asm = subprocess.run([tool, "-d", "-C", "--no-show-raw-insn", _C.__file__], check=True,
                         capture_output=True, text=True).stdout
    bodies = {}
    for m in re.finditer(r"^[0-9a-f]+ <(.*?)>:\n(.*?)(?=\n\n)", asm, re.S | re.M):
        bodies[m.group(1)] = m.group(2)

    def clone(name):
        # the function's own body, not its out-of-line paths ("[clone .cold]", e.g. a failed new[])
        hits = [b for k, b in bodies.items() if f"::{name}(" in k and "BFloat16" in k and "arch_x86_64_v4" in k
                and ".cold]" not in k]
        assert len(hits) == 1, f"expected one x86-64-v4 clone of {name}(BFloat16) in {_C.__file__}, found {len(hits)}"
        return hits[0]

    for name in ("max_pool_rows", "pool3x3_block"):
        assert re.search(r"vpmaxsw\s.*zmm", clone(name)), name
    assert re.search(r"vpcmp\w*w\s.*zmm|vpblendmw\s.*zmm|vpandn?\w*\s.*zmm", clone("relu_inplace_clones"))
    # the epilogue's ReLU row (AVX-512 intrinsics, not a clone: what AVX-512 CPUs run) on zmm,
    # its tail in one masked 16-bit store
    avx = [b for k, b in bodies.items() if "::store_row_relu_avx512(" in k and ".cold]" not in k]
    assert len(avx) == 1, "expected one store_row_relu_avx512 in the extension"
    assert re.search(r"vpcmp\w*uw\s.*zmm", avx[0]) and re.search(r"vmovdqu16\s.*zmm.*\{%k", avx[0])


@pytest.mark.parametrize("autocast_dtype", [BF16, torch.float16])
@pytest.mark.parametrize("train", [False, True])
def test_float64_model_under_autocast_stays_float64(autocast_dtype, train):
    """Autocast leaves float64 alone: nn.Conv2d computes a float64 model in float64 under it, and
    so must the fused paths (they once took the autocast dtype and then failed in the fold:
    'scale: expected a dtype at least as wide as weight's Double')."""
    torch.manual_seed(0)
    tv = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True)
    calibrate_batchnorm(tv, torch.rand(2, 3, 64, 64))
    tv = tv.double()
    ours = GoogLeNet(aux_logits=False, init_weights=False, fused=True)
    ours.load_state_dict(tv.state_dict())
    ours = ours.double().train(train)
    tv.train(train)
    x = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    with torch.set_grad_enabled(train), torch.autocast("cpu", dtype=autocast_dtype):
        torch.manual_seed(1)  # the same dropout masks in train mode
        y = ours(x)
        torch.manual_seed(1)
        y_tv = tv(x)
    assert y.dtype == y_tv.dtype == torch.float64
    assert (y - y_tv).abs().max() <= 1e-10 * y_tv.abs().max()
