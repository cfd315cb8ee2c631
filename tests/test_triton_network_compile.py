"""Ahead-of-time compile checks of the network kernels (backends/triton/network_kernels.py), no
GPU needed, as tests/test_triton_compile.py does for the Inception kernels: each launch of a
224x224 batch-32 forward (conv1 from an NCHW image, conv2 with maxpool1 [+ lrn1] in its loader,
conv3, the max pools with and without the LRN, the head), built by network.launch_plan on meta
tensors, is compiled for sm_90 and sm_80 with its GPU tile and the specialization Triton's
launcher would use; the cubin is read with cuobjdump (STACK 0: no spills) and nvdisasm (half
dots on tensor cores: HGMMA on sm_90 for tiles of 64+ rows, HMMA on sm_80; fp32 with TF32 off on
FFMA).  Summary table with ``pytest -s``.
"""
import os
import re
import subprocess
import tempfile
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch

triton = pytest.importorskip("triton")

from googlenet_fast.backends.triton import network as nw  # noqa: E402
from googlenet_fast.backends.triton import network_configs as nc  # noqa: E402
from googlenet_fast.backends.triton import configs  # noqa: E402

BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
ARCHS = (90, 80)
TL_DTYPE = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
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


def _specialize(fn, args):
    sig, constexprs, attrs = {}, {}, {}
    for i, p in enumerate(fn.params):
        name = p.name
        v = args[name]
        if p.is_constexpr:
            sig[name], constexprs[name] = "constexpr", v
        elif isinstance(v, torch.Tensor):
            sig[name] = "*" + TL_DTYPE[v.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(v, bool):
            sig[name] = "i1"
        elif isinstance(v, float):
            sig[name] = "fp32"
        elif isinstance(v, int):
            if v == 1:
                sig[name], constexprs[name] = "constexpr", 1
            else:
                sig[name] = "i32" if -2 ** 31 <= v < 2 ** 31 else "i64"
                if v % 16 == 0:
                    attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            raise TypeError(f"{name}: unexpected argument {v!r}")
    return sig, constexprs, attrs


def _resources(cubin: bytes):
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
        path = f.name
    try:
        res = subprocess.run([os.path.join(BIN, "cuobjdump"), "-res-usage", path],
                             capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([os.path.join(BIN, "nvdisasm"), "-c", path],
                              capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(path)
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", res)
    assert m, res
    units = sorted(set(re.findall(r"\b(HGMMA|HMMA|FFMA)\b", sass)))
    return dict(reg=int(m[1]), stack=int(m[2]), local=int(m[4]), units=units)


def _compile_case(case):
    name, dtype_name, arch, tf32 = case
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    plan = _launch(name, getattr(torch, dtype_name))
    args = dict(plan.args, **plan.meta())
    if tf32:
        args["ALLOW_TF32"] = True
    sig, constexprs, attrs = _specialize(plan.fn, args)
    compiled = triton.compile(ASTSource(fn=plan.fn, signature=sig, constexprs=constexprs, attrs=attrs),
                              target=GPUTarget("cuda", arch, 32),
                              options=dict(num_warps=plan.tile.num_warps, num_stages=plan.tile.num_stages))
    r = _resources(compiled.asm["cubin"])
    r["shared"] = int(compiled.metadata.shared)
    r["block_m"] = plan.tile.BLOCK_M
    r["kind"] = plan.kind
    return r


CASES = ([(n, dt, a, False) for n in LAUNCHES for dt in ("bfloat16", "float32") for a in ARCHS]
         + [(n, "float16", 90, False) for n in ("conv1", "conv2_pool_lrn", "conv3", "head")]
         + [(n, "float32", 90, True) for n in ("conv1", "conv3", "head")])


def _case_id(c):
    name, dt, arch, tf32 = c
    return f"{name}-{dt}-sm{arch}" + ("-tf32" if tf32 else "")


@pytest.fixture(scope="module")
def compiled():
    if not (os.path.exists(os.path.join(BIN, "cuobjdump")) and os.path.exists(os.path.join(BIN, "nvdisasm"))):
        pytest.skip(f"cuobjdump/nvdisasm not found in {BIN}")
    workers = max(1, min(len(CASES), os.cpu_count() or 1))
    results = {}
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {c: pool.submit(_compile_case, c) for c in CASES}
        for c, f in futures.items():
            try:
                results[c] = f.result()
            except Exception as e:  # reported by the test of that case
                results[c] = e
    lines = [f"{'case':40s} {'REG':>4s} {'STACK':>5s} {'SHARED':>7s}  UNITS"]
    for c in CASES:
        r = results[c]
        if isinstance(r, Exception):
            lines.append(f"{_case_id(c):40s} FAILED: {type(r).__name__}: {str(r)[:300]}")
        else:
            lines.append(f"{_case_id(c):40s} {r['reg']:4d} {r['stack']:5d} {r['shared']:7d}  {','.join(r['units'])}")
    print("\nTriton AOT compile summary (network kernels)\n" + "\n".join(lines))
    return results


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_aot_compile_network(compiled, case):
    name, dtype_name, arch, tf32 = case
    r = compiled[case]
    if isinstance(r, Exception):
        raise r
    assert r["stack"] == 0 and r["local"] == 0, f"register spills: {r}"
    assert r["shared"] <= configs.SMEM_LIMIT[arch], f"shared memory {r['shared']} over the sm_{arch} limit"
    if r["kind"] in ("pool", "pool_lrn"):
        assert not {"HGMMA", "HMMA"} & set(r["units"]), r
        return
    if dtype_name in ("bfloat16", "float16"):
        expected = "HGMMA" if (arch == 90 and r["block_m"] >= 64) else "HMMA"
        assert expected in r["units"], f"expected {expected} tensor-core dots, SASS has {r['units']}"
    elif tf32:
        assert "HGMMA" in r["units"] or "HMMA" in r["units"], f"TF32 dots expected on tensor cores: {r}"
    else:
        assert "HGMMA" not in r["units"] and "HMMA" not in r["units"], \
            f"fp32 with TF32 off must not use tensor cores (TF32): {r}"
        assert "FFMA" in r["units"]


def test_gpu_tiles_cover_every_kind():
    for kind in nc.KINDS:
        for half in (True, False):
            t = nc.gpu_tile(kind, half)
            assert t.num_warps % 4 == 0 or t.num_warps < 4
            if not kind.startswith("pool") and half:
                assert t.BLOCK_M >= 64, f"{kind}: wgmma needs BLOCK_M >= 64 on sm_90"
