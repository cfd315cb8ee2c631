"""Ahead-of-time compile checks of the network kernels (backends/triton/network_kernels.py), no
GPU needed, as tests/test_triton_compile.py does for the Inception kernels: each launch of a
224x224 batch-32 forward (conv1 from an NCHW image, conv2 with maxpool1 [+ lrn1] in its loader,
conv3, the max pools with and without the LRN, the head), built by network.launch_plan on meta
tensors, is compiled for sm_90 and sm_80 with its GPU tile and the specialization Triton's
launcher would use; the cubin is read with cuobjdump (STACK 0: no spills) and nvdisasm (half
dots on tensor cores: HGMMA on sm_90 for tiles of 64+ rows, HMMA on sm_80; fp32 with TF32 off on
FFMA).  Summary table with ``pytest -s``.
"""
import pytest
import torch

triton = pytest.importorskip("triton")

from aot_helpers import (ARCHS, check_dot_units, check_fits, compile_all, compile_for,  # noqa: E402
                         print_compile_summary)

from googlenet_fast.backends.triton import network as nw  # noqa: E402
from googlenet_fast.backends.triton import network_configs as nc  # noqa: E402

BATCH = 32
LRN = (5, 1e-4, 0.75, 1.0)

# name: (kind, has a dot)
LAUNCHES = ("conv1", "conv2_pool", "conv2_pool_lrn", "conv3", "maxpool2", "maxpool2_lrn", "maxpool4_2x2", "head")


def _launch(name, dtype):
    m = dict(device="meta", dtype=dtype)
    cl = torch.channels_last

    def nhwc(*s):
        return torch.empty(*s, **m).contiguous(memory_format=cl)

    if name == "conv1":
        x = torch.empty(BATCH, 3, 224, 224, **m)  # NCHW, read in place
        return nw.launch_plan("conv_gather", x, torch.empty(64, 3, 7, 7, **m), torch.empty(64, **m),
                              [2, 3, 1], [], nhwc(BATCH, 64, 112, 112), interpret=False)
    if name.startswith("conv2"):
        lrn = LRN if name.endswith("lrn") else (0, 0.0, 0.0, 1.0)
        return nw.launch_plan("conv", nhwc(BATCH, 64, 112, 112), torch.empty(64, 64, 1, 1, **m),
                              torch.empty(64, **m), [3, 2, lrn[0], 1], list(lrn[1:]),
                              nhwc(BATCH, 64, 56, 56), interpret=False)
    if name == "conv3":
        return nw.launch_plan("conv", nhwc(BATCH, 64, 56, 56), nhwc(192, 64, 3, 3), torch.empty(192, **m),
                              [0, 0, 0, 1], [0.0, 0.0, 1.0], nhwc(BATCH, 192, 56, 56), interpret=False)
    if name.startswith("maxpool2"):
        lrn = LRN if name.endswith("lrn") else (0, 0.0, 0.0, 1.0)
        return nw.launch_plan("pool", nhwc(BATCH, 192, 56, 56), None, None, [3, 2, lrn[0]], list(lrn[1:]),
                              nhwc(BATCH, 192, 28, 28), interpret=False)
    if name == "maxpool4_2x2":
        return nw.launch_plan("pool", nhwc(BATCH, 832, 14, 14), None, None, [2, 2, 0], [0.0, 0.0, 1.0],
                              nhwc(BATCH, 832, 7, 7), interpret=False)
    if name == "head":
        return nw.launch_plan("head", nhwc(BATCH, 1024, 7, 7), torch.empty(1000, 1024, **m),
                              torch.empty(1000, **m), [], [], torch.empty(BATCH, 1000, **m), interpret=False)
    raise KeyError(name)


def _compile_case(case):
    name, dtype_name, arch, tf32 = case[:4]
    float_type = case[4] if len(case) > 4 else "fp32"
    plan = _launch(name, getattr(torch, dtype_name))
    args = dict(plan.args, **plan.meta())
    if tf32:
        args["ALLOW_TF32"] = True
    r = compile_for(plan.fn, args, arch, plan.tile.num_warps, plan.tile.num_stages, float_type=float_type)
    r["block_m"] = plan.tile.BLOCK_M
    r["kind"] = plan.kind
    return r


CASES = ([(n, dt, a, False) for n in LAUNCHES for dt in ("bfloat16", "float32") for a in ARCHS]
         + [(n, "float16", 90, False) for n in ("conv1", "conv2_pool_lrn", "conv3", "head")]
         + [(n, "float32", 90, True) for n in ("conv1", "conv3", "head")])


def _case_id(c):
    name, dt, arch, tf32 = c[:4]
    return f"{name}-{dt}-sm{arch}" + ("-tf32" if tf32 else "")


@pytest.fixture(scope="module")
def compiled():
    results = compile_all(_compile_case, CASES)
    print_compile_summary(" (network kernels)", CASES, results, _case_id, width=40, err_chars=300)
    return results


# torch.compile's launcher of user-defined Triton kernels declares Python floats as fp64 arguments
# (seen on the H200, torch 2.11 + triton 3.6, 2026-12-04: maxpool2 + LRN failed to compile under
# torch.compile, "Loop-carried variable v ... re-assigned to fp64").  Every kernel with float
# arguments must compile that way too and do its arithmetic in fp32.
FP64_ARG_CASES = [(n, "bfloat16", 90, False, "fp64") for n in ("conv2_pool_lrn", "maxpool2_lrn", "head")]


@pytest.mark.parametrize("case", FP64_ARG_CASES, ids=[_case_id(c) + "-fp64args" for c in FP64_ARG_CASES])
def test_aot_compile_fp64_float_arguments(case):
    r = _compile_case(case)
    # (F2F.F32.F64, the one cast of each fp64 argument down to fp32, is allowed)
    assert not r["fp64_ops"], f"fp64 arithmetic in the SASS ({r['fp64_ops']}): a float argument was not cast to fp32"
    check_fits(r, 90)


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_aot_compile_network(compiled, case):
    name, dtype_name, arch, tf32 = case
    r = compiled[case]
    if isinstance(r, Exception):
        raise r
    check_fits(r, arch)
    if r["kind"] in ("pool", "pool_lrn"):
        assert not {"HGMMA", "HMMA"} & set(r["units"]), r
        return
    check_dot_units(r, arch, dtype_name, r["block_m"], tf32)


def test_gpu_tiles_cover_every_kind():
    for kind in nc.KINDS:
        for half in (True, False):
            t = nc.gpu_tile(kind, half)
            assert t.num_warps % 4 == 0 or t.num_warps < 4
            if not kind.startswith("pool") and half:
                assert t.BLOCK_M >= 64, f"{kind}: wgmma needs BLOCK_M >= 64 on sm_90"
