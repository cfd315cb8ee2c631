"""Ahead-of-time compile checks of the Triton kernels (no GPU needed).

Every kernel is compiled for sm_90 (H100/H200) and sm_80 (A100) with each tile configuration the
autotuner can launch it with, through ``triton.compile(ASTSource(...), target=GPUTarget(...))``,
with the argument specialization the runtime would use (built by the backend's own
``plan_launch`` on meta tensors of a real module's shape: ints equal to 1 become constants,
multiples of 16 carry the divisibility hint, as Triton's launcher does).  That catches what only
the GPU compiler rejects (types, layouts, shared memory) and reads the cubin:
  * ``cuobjdump -res-usage``: STACK 0 (no register spills), registers reported;
  * shared memory within the architecture's per-block limit;
  * the GEMM loops are software-pipelined (TTGIR has async copies to shared memory);
  * ``nvdisasm``: half-precision dots run on tensor cores (HGMMA = wgmma on sm_90 for tiles of
    64+ rows, HMMA on sm_80), fp32 dots with TF32 off stay on the FMA units (no HMMA/HGMMA).
Compiles run in a process pool (one per core) before the checks; Triton's cache makes reruns
fast.  The summary table (registers, stack, shared memory, MMA instruction) is printed with
``pytest -s`` and written to $TRITON_AOT_REPORT when set.
"""
import json
import os

import pytest
import torch

triton = pytest.importorskip("triton")

from aot_helpers import (ARCHS, check_dot_units, check_fits, compile_all, compile_for,  # noqa: E402
                         print_compile_summary)

from googlenet_fast.backends import triton as tb  # noqa: E402
from googlenet_fast.backends.triton import configs  # noqa: E402

# Shapes whose runtime specialization the compiles use (batch 32, channels_last):
#   stage 1 at 3a; stage 2 at 4b of the paper variant (K5 = 5, ch5x5red = 24: the widest kernel
#   and the scratch row stride that needs padding), plus torchvision's 3/3 once.
SHAPES = {
    "3a": dict(cin=192, h=28, w=28, c1=64, r3=96, c3=128, k3=3, r5=16, c5=32, k5=3, cp=32),
    "4b-paper": dict(cin=512, h=14, w=14, c1=160, r3=112, c3=224, k3=3, r5=24, c5=64, k5=5, cp=64),
    "4b": dict(cin=512, h=14, w=14, c1=160, r3=112, c3=224, k3=3, r5=24, c5=64, k5=3, cp=64),
    # the pooled op's pre-pool maps: maxpool3 -> 4a (28x28), maxpool4 -> 5a (14x14)
    "4a-pre": dict(cin=480, h=28, w=28, c1=192, r3=96, c3=208, k3=3, r5=16, c5=48, k5=3, cp=64),
    "5a-pre": dict(cin=832, h=14, w=14, c1=256, r3=160, c3=320, k3=3, r5=32, c5=128, k5=3, cp=128),
}
BATCH = 32


def _meta_tensors(shape, dtype):
    """x, the twelve weights and biases, and out of a real module's shape (meta, channels_last)."""
    s = SHAPES[shape]
    m = dict(device="meta", dtype=dtype)
    x = torch.empty(BATCH, s["cin"], s["h"], s["w"], **m).contiguous(memory_format=torch.channels_last)
    ws = [torch.empty(s["c1"], s["cin"], 1, 1, **m), torch.empty(s["c1"], **m),
          torch.empty(s["r3"], s["cin"], 1, 1, **m), torch.empty(s["r3"], **m),
          torch.empty(s["c3"], s["r3"], s["k3"], s["k3"], **m), torch.empty(s["c3"], **m),
          torch.empty(s["r5"], s["cin"], 1, 1, **m), torch.empty(s["r5"], **m),
          torch.empty(s["c5"], s["r5"], s["k5"], s["k5"], **m), torch.empty(s["c5"], **m),
          torch.empty(s["cp"], s["cin"], 1, 1, **m), torch.empty(s["cp"], **m)]
    out = torch.empty(BATCH, s["c1"] + s["c3"] + s["c5"] + s["cp"], s["h"], s["w"], **m).contiguous(
        memory_format=torch.channels_last)
    return x, ws, out


def _meta_plan(shape, dtype, tf32=False, int64=False):
    x, ws, out = _meta_tensors(shape, dtype)
    old = tb.plan.FORCE_INT64
    tb.plan.FORCE_INT64 = int64
    try:
        plan = tb.plan_launch(x, *ws, True, out, interpret=False)
    finally:
        tb.plan.FORCE_INT64 = old
    if tf32:
        plan.args1["ALLOW_TF32"] = plan.args2["ALLOW_TF32"] = True
    return plan


def _compile_case(case):
    """Compile one (stage, shape, dtype, tile, arch, flags) case; return its resource summary."""
    stage, shape, dtype_name, tile_tuple, arch, tf32, int64 = case
    dtype = getattr(torch, dtype_name)
    tile = configs.Tile(*tile_tuple)
    plan = _meta_plan(shape, dtype, tf32=tf32, int64=int64)
    k = tb.kernels(interpret=False)
    fn = k.stage1.inception_stage1_kernel if stage == 1 else k.stage2.inception_stage2_kernel
    args = plan.args1 if stage == 1 else plan.args2
    return _compile(fn, args, tile, arch)


def _compile(fn, args, tile, arch):
    """Compile a kernel with a tile configuration (its META values are constexprs)."""
    meta = tile.meta(1 if "POOL_BLOCK_K" in fn.arg_names else 2)
    return compile_for(fn, args, arch, tile.num_warps, tile.num_stages, meta=meta)


def _cases():
    cases = []
    for stage in (1, 2):
        shape = "3a" if stage == 1 else "4b-paper"
        for arch in ARCHS:
            for t in configs.tiles(stage, half=True):
                cases.append((stage, shape, "bfloat16", tuple(t), arch, False, False))
            cases.append((stage, shape, "float16", tuple(configs.tiles(stage, True)[0]), arch, False, False))
            for t in configs.tiles(stage, half=False):
                cases.append((stage, shape, "float32", tuple(t), arch, False, False))
        # TF32 allowed by torch's flags, 64-bit offsets, torchvision's 3/3 kernel sizes: once each.
        cases.append((stage, shape, "float32", tuple(configs.tiles(stage, False)[0]), 90, True, False))
        cases.append((stage, shape, "bfloat16", tuple(configs.tiles(stage, True)[0]), 90, False, True))
    cases.append((2, "4b", "bfloat16", tuple(configs.tiles(2, True)[0]), 90, False, False))
    cases.append((2, "3a", "bfloat16", tuple(configs.tiles(2, True)[0]), 80, False, False))
    return cases


CASES = _cases()


def _case_id(c):
    stage, shape, dt, t, arch, tf32, int64 = c
    tile = "x".join(map(str, t[:3])) + f"w{t[3]}s{t[4]}" + (f"p{t[5]}" if len(t) > 5 and t[5] else "")
    return f"stage{stage}-{shape}-{dt}-{tile}-sm{arch}" + ("-tf32" if tf32 else "") + ("-int64" if int64 else "")


@pytest.fixture(scope="module")
def compiled():
    results = compile_all(_compile_case, CASES)
    print_compile_summary("", CASES, results, _case_id, async_copies=True)
    report = [dict(case=_case_id(c), **results[c]) for c in CASES if not isinstance(results[c], Exception)]
    if os.environ.get("TRITON_AOT_REPORT"):
        with open(os.environ["TRITON_AOT_REPORT"], "w") as f:
            json.dump(report, f, indent=1)
    return results


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_aot_compile(compiled, case):
    stage, shape, dtype_name, tile_tuple, arch, tf32, int64 = case
    r = compiled[case]
    if isinstance(r, Exception):
        raise r
    tile = configs.Tile(*tile_tuple)
    check_fits(r, arch)
    assert r["async_copies"] > 0, "the GEMM loop is not software-pipelined (no async copies)"
    check_dot_units(r, arch, dtype_name, tile.BLOCK_M, tf32)


def test_autotune_configs_fit_both_archs():
    """The estimate used to size the configurations agrees: every half config's pipelined
    operand buffers fit sm_80's shared memory (the pooled stage 1's too)."""
    for stage, pooled in ((1, False), (2, False), (1, True)):
        for t in configs.tiles(stage, half=True, pooled=pooled):
            assert configs.smem_estimate(t, 2) <= configs.SMEM_LIMIT[80], t
        for t in configs.tiles(stage, half=False, pooled=pooled):
            assert configs.smem_estimate(t, 4) <= configs.SMEM_LIMIT[80], t


# ----------------------------------------------------------------------------------------------
# Stage 1 over a max-pooled input (the pooled op, IN_POOL_K > 0): every pooled configuration for
# sm_90 and sm_80, for maxpool3 -> 4a (28x28 -> 14x14, 3x3/2) and maxpool4 -> 5a (14x14 -> 7x7,
# torchvision's 2x2/2), batch 32, channels_last.  No spills; dots on tensor cores (HGMMA on
# sm_90 for 64+ rows) or, fp32, on the FMA units.  (Not pipelined: no async-copy check.)

def _pooled_meta_plan(shape, pool, dtype, int64=False):
    x, ws, out = _meta_tensors(shape, dtype)
    ph, pw = (tb.pool_out_size(v, *pool) for v in x.shape[2:])
    out = torch.empty(BATCH, out.shape[1], ph, pw, device="meta", dtype=dtype).contiguous(
        memory_format=torch.channels_last)
    old = tb.plan.FORCE_INT64
    tb.plan.FORCE_INT64 = int64
    try:
        return tb.plan_launch(x, *ws, True, out, interpret=False, pool=pool)
    finally:
        tb.plan.FORCE_INT64 = old


def _compile_pooled_case(case):
    shape, pool, dtype_name, tile_tuple, arch, int64 = case
    plan = _pooled_meta_plan(shape, pool, getattr(torch, dtype_name), int64)
    fn = tb.kernels(interpret=False).stage1.inception_stage1_kernel
    return _compile(fn, plan.args1, configs.Tile(*tile_tuple), arch)


POOLED_CASES = ([(shape, pool, "bfloat16", tuple(t), arch, False)
                 for shape, pool in (("4a-pre", (3, 2)), ("5a-pre", (2, 2)))
                 for t in configs.tiles(1, True, pooled=True) for arch in ARCHS]
                + [(shape, pool, "float32", tuple(t), arch, False)
                   for shape, pool in (("4a-pre", (3, 2)), ("5a-pre", (2, 2)))
                   for t in configs.tiles(1, False, pooled=True) for arch in ARCHS]
                + [("4a-pre", (3, 2), "float16", tuple(configs.STAGE1_POOLED_HALF[0]), 90, False),
                   ("5a-pre", (3, 2), "bfloat16", tuple(configs.STAGE1_POOLED_HALF[2]), 90, False),  # paper's maxpool4
                   ("4a-pre", (3, 2), "bfloat16", tuple(configs.STAGE1_POOLED_HALF[0]), 90, True)])


def _pooled_case_id(c):
    shape, pool, dt, t, arch, int64 = c
    tile = "x".join(map(str, t[:3])) + f"w{t[3]}s{t[4]}p{t[5]}"
    return f"pooled-{shape}-{pool[0]}x{pool[0]}s{pool[1]}-{dt}-{tile}-sm{arch}" + ("-int64" if int64 else "")


@pytest.fixture(scope="module")
def compiled_pooled():
    results = compile_all(_compile_pooled_case, POOLED_CASES)
    print_compile_summary(" (pooled stage 1)", POOLED_CASES, results, _pooled_case_id)
    return results


@pytest.mark.parametrize("case", POOLED_CASES, ids=[_pooled_case_id(c) for c in POOLED_CASES])
def test_aot_compile_pooled(compiled_pooled, case):
    shape, pool, dtype_name, tile_tuple, arch, int64 = case
    r = compiled_pooled[case]
    if isinstance(r, Exception):
        raise r
    check_fits(r, arch)
    check_dot_units(r, arch, dtype_name, tile_tuple[0])


# ----------------------------------------------------------------------------------------------
# The backward kernels (backward.py) and stage 2's train-mode BatchNorm loader (BN=True): each
# launch of a full backward (every gradient requested, relu on) of 4b-paper at batch 32,
# channels_last, as backends/triton's backward_launches() records it on meta tensors.

BWD_KINDS = ("reduce", "dgrad", "dpool", "dx", "wgrad", "wgrad_pool", "wgrad_kxk")


def _bwd_launches(dtype_name):
    x, ws, out = _meta_tensors("4b-paper", getattr(torch, dtype_name))
    return {kind: (fn, args, tile)
            for kind, fn, args, tile, _ in tb.backward_launches(out, x, ws, True, out, [True] * 13)}


def _compile_bwd_case(case):
    """Compile one (kind, dtype, arch) backward case (kind "stage2-bn": stage 2 with BN=True)."""
    kind, dtype_name, arch = case
    if kind == "stage2-bn":
        plan = _meta_plan("4b-paper", getattr(torch, dtype_name))
        fn = tb.kernels(interpret=False).stage2.inception_stage2_kernel
        args = dict(plan.args2, BN=True, HAS_B3=False, HAS_B5=False, RELU=False,
                    ss_ptr=torch.empty(64, dtype=torch.float32, device="meta"))
        tile = configs.tiles(2, dtype_name != "float32")[0]
    else:
        fn, args, tile = _bwd_launches(dtype_name)[kind]
    r = _compile(fn, args, tile, arch)
    r["block_m"] = tile.BLOCK_M
    return r


BWD_CASES = ([(k, "bfloat16", a) for a in ARCHS for k in BWD_KINDS]
             + [(k, "float32", a) for a in ARCHS for k in BWD_KINDS]
             + [("dgrad", "float16", 90), ("stage2-bn", "bfloat16", 90), ("stage2-bn", "float32", 80)])


def _bwd_case_id(c):
    kind, dt, arch = c
    return f"{kind}-{dt}-sm{arch}"


@pytest.fixture(scope="module")
def compiled_bwd():
    results = compile_all(_compile_bwd_case, BWD_CASES)
    print_compile_summary(" (backward, BN stage 2)", BWD_CASES, results, _bwd_case_id, width=40, async_copies=True)
    return results


@pytest.mark.parametrize("case", BWD_CASES, ids=[_bwd_case_id(c) for c in BWD_CASES])
def test_aot_compile_backward(compiled_bwd, case):
    kind, dtype_name, arch = case
    r = compiled_bwd[case]
    if isinstance(r, Exception):
        raise r
    check_fits(r, arch)
    if kind != "wgrad_pool":  # (its B loader's nine loads run unpipelined, as stage 1's pool tile)
        assert r["async_copies"] > 0, "the GEMM loop is not software-pipelined (no async copies)"
    check_dot_units(r, arch, dtype_name, r["block_m"])
