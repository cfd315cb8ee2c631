"""Shared helpers of the ahead-of-time Triton compile tests (tests/test_triton_compile.py,
tests/test_triton_network_compile.py): the launcher's argument specialization, one compile for a
GPU target, the cubin's resources (cuobjdump, nvdisasm), the process-pool compile of all cases,
and the checks every compiled kernel gets.  No GPU needed."""
import os
import re
import subprocess
import tempfile
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch
import triton

from googlenet_fast.backends.triton import configs

BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
ARCHS = (90, 80)
TL_DTYPE = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.int8: "i8"}


def specialize(fn, args, meta=None, float_type="fp32"):
    """(signature, constexprs, attrs) as Triton's launcher would build them for these args (and
    the tile's ``meta`` values, constexprs): ints equal to 1 become constants, multiples of 16
    and pointers (allocations are 16-byte aligned) carry the divisibility hint.  Python floats
    are ``float_type`` arguments: "fp32" from Triton's own launcher, "fp64" as torch.compile's
    launcher of user-defined Triton kernels declares them."""
    meta = meta or {}
    sig, constexprs, attrs = {}, {}, {}
    for i, p in enumerate(fn.params):
        name = p.name
        v = meta[name] if name in meta else args[name]
        if p.is_constexpr or name in meta:
            sig[name], constexprs[name] = "constexpr", v
        elif isinstance(v, torch.Tensor):
            sig[name] = "*" + TL_DTYPE[v.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(v, bool):
            sig[name] = "i1"
        elif isinstance(v, float):
            sig[name] = float_type
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


def resources(cubin: bytes):
    """Registers, stack, local memory and the dot units (HGMMA/HMMA/FFMA, first MMA ops) of a cubin."""
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
    mma_ops = sorted(set(re.findall(r"\b((?:HGMMA|HMMA)\.[\w.]+)", sass)))[:3]
    fp64_ops = sorted(set(re.findall(r"\b(DADD|DMUL|DFMA|DSETP|F2F\.F64\.F32)\b", sass)))
    return dict(reg=int(m[1]), stack=int(m[2]), local=int(m[4]), units=units, mma_ops=mma_ops, fp64_ops=fp64_ops)


def compile_for(fn, args, arch, num_warps, num_stages, meta=None, float_type="fp32"):
    """Compile ``fn`` for sm_``arch`` with the specialization of ``args``; its resources, shared
    memory and the number of async copies to shared memory in the TTGIR (a software-pipelined
    GEMM loop: its operand loads became asynchronous copies, which needs provably aligned and
    contiguous loads)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig, constexprs, attrs = specialize(fn, args, meta, float_type)
    compiled = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs),
                              target=GPUTarget("cuda", arch, 32),
                              options=dict(num_warps=num_warps, num_stages=num_stages))
    r = resources(compiled.asm["cubin"])
    r["shared"] = int(compiled.metadata.shared)
    r["async_copies"] = compiled.asm["ttgir"].count("async_copy_global_to_local")
    return r


def compile_all(compile_case, cases):
    """{case: compile_case(case) or the exception it raised}, compiled in a process pool (one
    worker per core); skips when the CUDA binary tools are missing."""
    if not (os.path.exists(os.path.join(BIN, "cuobjdump")) and os.path.exists(os.path.join(BIN, "nvdisasm"))):
        pytest.skip(f"cuobjdump/nvdisasm not found in {BIN}")
    workers = max(1, min(len(cases), os.cpu_count() or 1))
    results = {}
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {c: pool.submit(compile_case, c) for c in cases}
        for c, f in futures.items():
            try:
                results[c] = f.result()
            except Exception as e:  # reported by the test of that case
                results[c] = e
    return results


def print_compile_summary(title, cases, results, case_id, *, width=64, async_copies=False, err_chars=200):
    """Print one line per compiled case (``pytest -s`` shows it): registers, spill stack, shared
    memory, optionally the cp.async count, and the MMA instructions (else the dot units)."""
    head = f"{'case':{width}s} {'REG':>4s} {'STACK':>5s} {'SHARED':>7s}" + (f" {'ASYNC':>5s}" if async_copies else "")
    lines = [head + "  MMA"]
    for c in cases:
        r = results[c]
        if isinstance(r, Exception):
            lines.append(f"{case_id(c):{width}s} FAILED: {type(r).__name__}: {str(r)[:err_chars]}")
            continue
        cols = f"{case_id(c):{width}s} {r['reg']:4d} {r['stack']:5d} {r['shared']:7d}"
        if async_copies:
            cols += f" {r['async_copies']:5d}"
        lines.append(f"{cols}  {','.join(r.get('mma_ops') or ()) or ','.join(r['units'])}")
    print(f"\nTriton AOT compile summary{title}\n" + "\n".join(lines))


def check_fits(r, arch):
    """No register spills, shared memory within the architecture's per-block limit."""
    assert r["stack"] == 0 and r["local"] == 0, f"register spills: {r}"
    assert r["shared"] <= configs.SMEM_LIMIT[arch], f"shared memory {r['shared']} over the sm_{arch} limit"


def check_dot_units(r, arch, dtype_name, block_m, tf32=False):
    """The dots on the expected units: half precision on tensor cores (HGMMA = wgmma on sm_90
    for tiles of 64+ rows, HMMA otherwise), fp32 with TF32 allowed on tensor cores, fp32 with
    TF32 off on the FMA units."""
    if dtype_name in ("bfloat16", "float16"):
        expected = "HGMMA" if (arch == 90 and block_m >= 64) else "HMMA"
        assert expected in r["units"], f"expected {expected} tensor-core dots, SASS has {r['units']}"
    elif tf32:
        assert "HGMMA" in r["units"] or "HMMA" in r["units"], f"TF32 dots expected on tensor cores: {r}"
    else:
        assert "HGMMA" not in r["units"] and "HMMA" not in r["units"], \
            f"fp32 with TF32 off must not use tensor cores (TF32): {r}"
        assert "FFMA" in r["units"]
