"""The CUDA backend's kernels, run on the CPU.

tests/cuda_emulation/harness.cpp compiles csrc/cuda/inception_cuda.cu as plain C++ (with a small
shim for the CUDA language, and ldmatrix / mma.sync emulated lane by lane with the PTX fragment
layouts) and runs every block's 128 threads as std::threads that meet at __syncthreads.  The host code, the tile loaders, the implicit-GEMM gather, the
pool-in-loader, the epilogue routing and every bounds check are the real source; UBSan's
alignment check aborts on any 16-byte access the kernel makes through a misaligned address, and
the ldmatrix shim checks that every row address is 16-byte aligned.  What only hardware shows
(the memory model, speed) is left to the GPU suite, test_cuda_backend.py.
"""
import glob
import os
import tempfile

import pytest
import torch

from cuda_parity import SMALL, TABLE1, check_parity

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CU_SOURCE = os.path.join(REPO, "csrc", "cuda", "inception_cuda.cu")
HARNESS = os.path.join(HERE, "cuda_emulation", "harness.cpp")


def _cuda_include_dir():
    """A CUDA toolkit include directory (the harness needs cuda_runtime_api.h and cuda_fp16.h)."""
    roots = []
    try:
        from googlenet_fast._build_info import BUILD_INFO
        roots.append(BUILD_INFO.get("cuda_home"))
    except ImportError:
        pass
    roots += [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    roots += sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for r in roots:
        if r and all(os.path.isfile(os.path.join(r, "include", f))
                     for f in ("cuda_runtime_api.h", "cuda_fp16.h", "cuda_bf16.h")):
            return os.path.join(r, "include")
    return None


@pytest.fixture(scope="module")
def emu():
    if not os.path.isfile(CU_SOURCE):
        pytest.skip("csrc/cuda/inception_cuda.cu is absent")
    inc = _cuda_include_dir()
    if inc is None:
        pytest.skip("no CUDA toolkit headers (cuda_runtime_api.h, cuda_fp16.h) found")
    from torch.utils.cpp_extension import load
    build_dir = os.path.join(tempfile.gettempdir(), f"googlenet_fast_cuda_emulation_{os.getuid()}")
    os.makedirs(build_dir, exist_ok=True)
    main = os.path.join(build_dir, "emulation_main.cpp")
    text = f'#define GF_CUDA_SOURCE "{CU_SOURCE}"\n#include "{HARNESS}"\n'
    if not os.path.isfile(main) or open(main).read() != text:
        with open(main, "w") as f:
            f.write(text)
    # load() rebuilds when any source or flag changes: its hash covers the included files too.
    return load(name="googlenet_fast_cuda_emulation", sources=[main],
                extra_include_paths=[os.path.join(HERE, "cuda_emulation", "shim"), inc],
                extra_cflags=["-std=c++20", "-O1", "-fsanitize=alignment", "-fno-sanitize-recover=alignment"],
                extra_ldflags=["-fsanitize=alignment"], build_directory=build_dir, verbose=False)


def _run(emu):
    return lambda x, *rest: emu.inception_out(x, *rest)


ALL_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]



@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("name", list(SMALL))
def test_small_shapes(emu, name, dtype):
    check_parity(_run(emu), SMALL[name], dtype=dtype, device="cpu")


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("relu,bias", [(False, True), (True, False), (False, False)])
def test_epilogue_flags(emu, relu, bias, dtype):
    check_parity(_run(emu), SMALL["n-tails"], dtype=dtype, device="cpu", relu=relu, bias=bias)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("k5", [3, 5])
@pytest.mark.parametrize("cfg", list(TABLE1))
def test_table1_channels(emu, cfg, k5, dtype):
    """Every Table-1 channel configuration (both reduce branches, N and K tails) at a small map."""
    cin, c1, r3, c3, r5, c5, cp, _ = TABLE1[cfg]
    check_parity(_run(emu), (2, cin, 5, 6, c1, r3, c3, 3, r5, c5, k5, cp), dtype=dtype, device="cpu")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=lambda d: str(d).split(".")[-1])
def test_table1_full_map(emu, dtype):
    """3a at its real 28x28 map: 13 pixel tiles, several images' rows per tile."""
    cin, c1, r3, c3, r5, c5, cp, hw = TABLE1["3a"]
    check_parity(_run(emu), (1, cin, hw, hw, c1, r3, c3, 3, r5, c5, 5, cp), dtype=dtype, device="cpu")


LAYOUT_SHAPE = (2, 16, 5, 6, 16, 8, 24, 3, 8, 16, 5, 8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64],
                         ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("x_layout", ["nchw", "strided", "channel_slice", "expanded", "misaligned"])
def test_input_layouts(emu, x_layout, dtype):
    check_parity(_run(emu), LAYOUT_SHAPE, dtype=dtype, device="cpu", x_layout=x_layout)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("out_layout", ["nchw", "slice", "misaligned"])
def test_output_layouts(emu, out_layout, dtype):
    check_parity(_run(emu), LAYOUT_SHAPE, dtype=dtype, device="cpu", out_layout=out_layout)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("w_layout", ["channels_last", "misaligned"])
def test_weight_layouts(emu, w_layout, dtype):
    check_parity(_run(emu), LAYOUT_SHAPE, dtype=dtype, device="cpu", w_layout=w_layout)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_pool_pads_with_minus_inf(emu, dtype):
    """Strictly negative input, no ReLU: a zero-padded pool would give 0 at every border pixel."""
    check_parity(_run(emu), SMALL["mult8"], dtype=dtype, device="cpu", relu=False, sign=-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: str(d).split(".")[-1])
def test_nan_propagates(emu, dtype):
    check_parity(_run(emu), SMALL["mult8"], dtype=dtype, device="cpu", nan_at=(1, 3, 2, 4))
