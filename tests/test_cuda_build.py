"""CI checks of the built CUDA kernels, without a GPU: read the cubins in googlenet_fast._C.

- one cubin per target architecture of the build (sm_80 and sm_90 by default);
- no kernel uses a stack frame or local memory (no register spills);
- the fp16/bf16 kernels run on tensor cores (HMMA in their SASS) and the fp32/fp64 kernels do not
  (plain FFMA/DFMA: no TF32 rounding in the float32 path).

cuobjdump comes from $PATH, the CUDA toolkit, or Triton's bundled copy.
"""
import glob
import os
import re
import shutil
import subprocess

import pytest

from googlenet_fast.backends import native

KERNEL_MARK = "stage_kernel_"  # the CUDA backend's kernels: stage_kernel_tc<T>, stage_kernel_fma<T>


def _find_tool(name):
    found = shutil.which(name)
    if found:
        return found
    roots = [native.BUILD_INFO.get("cuda_home"), os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
             "/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for r in roots:
        if r and os.access(os.path.join(r, "bin", name), os.X_OK):
            return os.path.join(r, "bin", name)
    try:
        import triton
        p = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
        if os.access(p, os.X_OK):
            return p
    except ImportError:
        pass
    return None


@pytest.fixture(scope="module")
def so():
    if not native.available():
        pytest.fail(f"googlenet_fast._C did not load: {native.LOAD_ERROR}")
    if not native.BUILD_INFO.get("cuda_built"):
        pytest.skip(f"built without CUDA kernels: {native.BUILD_INFO.get('cuda_skip_reason')}")
    return native._C.__file__


@pytest.fixture(scope="module")
def cuobjdump():
    tool = _find_tool("cuobjdump")
    if tool is None:
        pytest.skip("no cuobjdump (CUDA toolkit or triton's bundled copy) found")
    return tool


def _run(*cmd):
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stderr}"
    return res.stdout


def _expected_archs():
    """sm_XX names of the build's TORCH_CUDA_ARCH_LIST ("8.0;9.0" -> sm_80, sm_90)."""
    archs = set()
    for a in re.split(r"[;\s]+", native.BUILD_INFO.get("cuda_arch_list") or ""):
        a = a.replace("+PTX", "").strip()
        if a:
            major, minor = a.split(".")
            archs.add(f"sm_{major}{minor}")
    return archs


def _sections(text, header):
    """Split `cuobjdump` output into (arch, function, body) per function; `header` is the regex
    of a function's first line with the name as group 1."""
    out, arch = [], None
    for line in text.splitlines():
        m = re.search(r"arch = (sm_\w+)", line)
        if m:
            arch = m.group(1)
            continue
        m = re.match(header, line)
        if m:
            out.append([arch, m.group(1), []])
        elif out:
            out[-1][2].append(line)
    return [(a, n, "\n".join(b)) for a, n, b in out]


def test_cubins_for_every_target_arch(so, cuobjdump):
    listing = _run(cuobjdump, "--list-elf", so)
    found = set(re.findall(r"\.(sm_\w+)\.cubin", listing))
    expected = _expected_archs()
    assert expected, "BUILD_INFO names no target architecture"
    assert expected <= found, f"cubins for {sorted(found)}, expected {sorted(expected)}:\n{listing}"
    if native.BUILD_INFO.get("cuda_arch_list") == "8.0;9.0":  # the default build of CI
        assert {"sm_80", "sm_90"} <= found


def test_no_spills(so, cuobjdump):
    usage = _run(cuobjdump, "-res-usage", so)
    funcs = [(arch, name, body) for arch, name, body in _sections(usage, r"\s*Function (\S+):$")
             if KERNEL_MARK in name]
    archs = {a for a, _, _ in funcs}
    assert _expected_archs() <= archs, f"no kernels found for some arch in:\n{usage}"
    for arch, name, body in funcs:
        m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", body)
        assert m, f"no resource line for {name} ({arch})"
        reg, stack, shared, local = map(int, m.groups())
        assert stack == 0 and local == 0, f"{name} ({arch}) spills: STACK:{stack} LOCAL:{local} REG:{reg}"
        assert shared <= 48 * 1024, f"{name} ({arch}) uses {shared} B of static shared memory"
    kinds = {re.search(KERNEL_MARK + r"(\w+?)I", n).group(1) for _, n, _ in funcs}
    assert kinds == {"tc", "fma"}, kinds
    assert len(funcs) == 4 * len(archs), f"expected 4 kernels per arch, got {[n for _, n, _ in funcs]}"


def test_tensor_cores_for_half_types_only(so, cuobjdump):
    sass = _run(cuobjdump, "-sass", so)
    funcs = [(arch, name, body) for arch, name, body in _sections(sass, r"\s*Function : (\S+)$")
             if KERNEL_MARK in name]
    assert _expected_archs() <= {a for a, _, _ in funcs}
    for arch, name, body in funcs:
        hmma = len(re.findall(r"\bHMMA\.", body))
        if "stage_kernel_tc" in name:  # fp16 (6__half) and bf16 (13__nv_bfloat16)
            dtype = "BF16" if "bfloat16" in name else "F16"
            assert hmma > 0, f"{name} ({arch}) has no HMMA instruction"
            assert re.search(r"HMMA\.16816\.F32(\.BF16)?\b", body), f"{name} ({arch}): no fp32-accumulating HMMA"
            if dtype == "BF16":
                assert "HMMA.16816.F32.BF16" in body
            # Operands from shared memory through ldmatrix (8 LDSM per K step: 2 A + 2 B x4 loads
            # per 16-wide k slice), for bf16 as for fp16: nvcuda::wmma's bf16 fragment loads had
            # compiled to generic loads (48 LD.E per K step, no LDSM).
            ldsm = len(re.findall(r"\bLDSM\.16\.M88\.4\b", body))
            assert ldsm >= 8, f"{name} ({arch}): {ldsm} LDSM.16.M88.4, expected the fragment loads through ldmatrix"
            generic = len(re.findall(r"\bLD\.E", body))
            assert generic <= 16, f"{name} ({arch}): {generic} generic LD.E (only the epilogue's bias loads expected)"
        else:  # fp32 / fp64: exact FMA, never tensor cores (no TF32)
            assert hmma == 0, f"{name} ({arch}) uses tensor cores"
            op = "DFMA" if "fmaId" in name else "FFMA"
            assert re.search(rf"\b{op}\b", body), f"{name} ({arch}) has no {op}"
