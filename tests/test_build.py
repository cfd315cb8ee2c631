"""setup.py's build configuration: CUDA_HOME resolution behind an nvcc wrapper, the CUDA switch,
the default arch list, and the toolkit/torch version check (the `build` case of cases.md)."""
import glob
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_TOOLKIT = next((p for p in ["/usr/local/cuda-13.0", "/usr/local/cuda"]
                     if os.path.isfile(os.path.join(p, "bin", "nvcc"))), None)


def config(env_updates, path=None):
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_HOME", "CUDA_PATH", "TORCH_CUDA_ARCH_LIST",
                                                            "GOOGLENET_FAST_NO_CUDA")}
    env.update(env_updates)
    if path is not None:
        env["PATH"] = path
    r = subprocess.run([sys.executable, "setup.py", "--print-build-config"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    return r.returncode, r.stdout + r.stderr


def field(text, name):
    for line in text.splitlines():
        if f"] {name} " in line:
            return line.split("=", 1)[1].strip()
    raise AssertionError(f"{name} not printed:\n{text}")


@pytest.mark.skipif(REAL_TOOLKIT is None or torch.version.cuda is None, reason="needs a CUDA toolkit and a CUDA torch")
def test_cuda_home_resolved_through_an_nvcc_wrapper(tmp_path):
    wrapper = tmp_path / "nvcc"
    wrapper.write_text(f"#!/bin/sh\nexec {os.path.realpath(REAL_TOOLKIT)}/bin/nvcc \"$@\"\n")
    wrapper.chmod(0o755)
    rc, out = config({}, path=f"{tmp_path}:/usr/bin:/bin")
    assert rc == 0, out
    assert field(out, "cuda_home") == os.path.realpath(REAL_TOOLKIT)  # not the wrapper's /tmp/... parent
    assert "nvcc on PATH" in field(out, "cuda_home_from")
    has_cuda_sources = bool(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
    assert field(out, "cuda_built") == str(has_cuda_sources)
    if has_cuda_sources and not torch.cuda.is_available():
        assert field(out, "cuda_arch_list") == "8.0;9.0+PTX"


def test_cuda_switched_off_builds_cpu_only():
    rc, out = config({"GOOGLENET_FAST_NO_CUDA": "1"})
    assert rc == 0, out
    assert field(out, "cuda_built") == "False"
    assert "GOOGLENET_FAST_NO_CUDA" in out


def test_no_toolkit_anywhere_builds_cpu_only(tmp_path):
    rc, out = config({"CUDA_HOME": str(tmp_path / "nothing")}, path="/usr/bin:/bin")
    assert rc == 0, out
    if not any(os.path.isfile(os.path.join(p, "bin", "nvcc")) for p in ["/usr/local/cuda"]):
        assert field(out, "cuda_built") == "False"
    assert "holds no bin/nvcc" in out  # the bad CUDA_HOME is named, not silently used


@pytest.mark.skipif(torch.version.cuda is None, reason="needs a CUDA build of torch")
def test_toolkit_major_version_mismatch_is_a_clear_error(tmp_path):
    fake = tmp_path / "cuda-99"
    (fake / "bin").mkdir(parents=True)
    (fake / "include").mkdir()
    (fake / "include" / "cuda_runtime.h").write_text("")
    nvcc = fake / "bin" / "nvcc"
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 99.1, V99.1.0'\n")
    nvcc.chmod(0o755)
    rc, out = config({"CUDA_HOME": str(fake)})
    assert rc != 0
    assert "99.1" in out and f"CUDA {torch.version.cuda}" in out and "major versions must match" in out


def test_import_without_gpu_reports_build_info():
    import googlenet_fast  # noqa: F401
    from googlenet_fast.backends import native
    assert native.available(), native.LOAD_ERROR
    assert set(native.BUILD_INFO) >= {"cuda_built", "cuda_arch_list", "cuda_home"}
