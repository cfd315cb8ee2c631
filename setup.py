"""Build googlenet_fast and its torch extension googlenet_fast._C.

The extension always carries the op schema and the C++ CPU kernels (csrc/ops.cpp, csrc/cpu/).
The CUDA kernels (csrc/cuda/) are compiled whenever a CUDA toolkit is found, GPU or not, unless
GOOGLENET_FAST_NO_CUDA=1.  Install after torch is present:

    pip install --no-build-isolation -e .

Environment switches:
    GOOGLENET_FAST_NO_CUDA=1   build the CPU part only, even if a toolkit is found
    CUDA_HOME / CUDA_PATH      the toolkit root (otherwise found from nvcc on PATH, then /usr/local/cuda)
    TORCH_CUDA_ARCH_LIST       target archs (default with no GPU visible: "8.0;9.0+PTX")
    MAX_JOBS                   parallel compile jobs for ninja

`python setup.py --print-build-config` prints the resolved configuration and exits (builds nothing).
"""
import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS = "8.0;9.0+PTX"  # sm_80 and sm_90 SASS, plus PTX that newer GPUs JIT-compile


def _log(msg):
    print(f"[googlenet_fast setup] {msg}", flush=True)


def _is_toolkit_root(path):
    return bool(path) and os.path.isfile(os.path.join(path, "bin", "nvcc")) and os.path.isfile(
        os.path.join(path, "include", "cuda_runtime.h"))


def _toolkit_from_nvcc(nvcc):
    """The toolkit root behind an nvcc on PATH, also when that nvcc is a wrapper script.

    A wrapper (e.g. /usr/local/bin/nvcc exec'ing /usr/local/cuda-13.0/bin/nvcc) makes torch guess
    CUDA_HOME=/usr/local, where no cudart lives.  nvcc itself knows where it runs from: its
    --dryrun output names the real bin directory as _HERE_.
    """
    try:
        out = subprocess.run([nvcc, "--dryrun", "-E", "-x", "cu", os.devnull], capture_output=True, text=True,
                             timeout=60)
        text = out.stdout + out.stderr
    except (OSError, subprocess.SubprocessError):
        text = ""
    m = re.search(r"_HERE_=(\S+)", text)
    candidates = []
    if m:
        candidates.append(os.path.dirname(os.path.normpath(m.group(1))))
    candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for c in candidates:
        if _is_toolkit_root(c):
            return c
    return None


def resolve_cuda_home():
    """Return (cuda_home or None, how it was found)."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        v = os.environ.get(var)
        if v:
            if _is_toolkit_root(v):
                return v, f"${var}"
            _log(f"warning: ${var}={v} holds no bin/nvcc and include/cuda_runtime.h; ignoring it")
    nvcc = shutil.which("nvcc")
    if nvcc:
        root = _toolkit_from_nvcc(nvcc)
        if root:
            return root, f"nvcc on PATH ({nvcc})"
    for c in ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True):
        if _is_toolkit_root(c):
            return c, "default location"
    return None, "no nvcc on PATH, no CUDA_HOME, nothing in /usr/local/cuda*"


def toolkit_version(cuda_home):
    out = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--version"],
                         capture_output=True, text=True, check=True).stdout
    m = re.search(r"release (\d+)\.(\d+)", out)
    if not m:
        raise RuntimeError(f"cannot read the CUDA version from `nvcc --version`:\n{out}")
    return int(m.group(1)), int(m.group(2))


no_cuda = os.environ.get("GOOGLENET_FAST_NO_CUDA", "0").lower() in ("1", "true", "yes", "on")
cuda_home, cuda_how = (None, "disabled by GOOGLENET_FAST_NO_CUDA") if no_cuda else resolve_cuda_home()
if cuda_home:
    # torch.utils.cpp_extension reads CUDA_HOME once, at import: set it first.
    os.environ["CUDA_HOME"] = cuda_home

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

build_cuda = False
cuda_skip_reason = cuda_how
if cuda_home and torch.version.cuda is None:
    cuda_skip_reason = f"torch {torch.__version__} is a CPU-only build"
elif cuda_home:
    tk_major, tk_minor = toolkit_version(cuda_home)
    torch_major = int(torch.version.cuda.split(".")[0])
    if tk_major != torch_major:
        sys.exit(
            f"[googlenet_fast setup] error: the CUDA toolkit at {cuda_home} is {tk_major}.{tk_minor} "
            f"but torch {torch.__version__} was built with CUDA {torch.version.cuda}; their major "
            f"versions must match. Point CUDA_HOME at a CUDA {torch_major}.x toolkit, or build "
            f"without CUDA: GOOGLENET_FAST_NO_CUDA=1 pip install --no-build-isolation -e .")
    build_cuda = True

cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
if build_cuda and not cuda_sources:
    build_cuda, cuda_skip_reason = False, "no CUDA sources in csrc/cuda"

arch_list = None
if build_cuda:
    arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if not arch_list:
        if torch.cuda.is_available():
            caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
            arch_list = ";".join(f"{a}.{b}" for a, b in caps)
        else:
            arch_list = DEFAULT_ARCHS
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list

# torch.utils.cpp_extension picks the C++ standard torch needs.  -fopenmp: at::parallel_for is
# expanded in our own translation units (ATen/ParallelOpenMP.h); without it the loops run serially.
# The link flag makes _C need libgomp.so.1, which resolves to the one torch has already loaded.
cxx_flags = ["-O3", "-fopenmp"]
link_flags = ["-fopenmp"]
sources = [os.path.join("csrc", "ops.cpp"), os.path.join("csrc", "state_check.cpp"),
           os.path.join("csrc", "program_run.cpp")] + sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
define_macros = []
if build_cuda:
    sources += cuda_sources
    define_macros.append(("GOOGLENET_FAST_WITH_CUDA", "1"))
    ext = CUDAExtension(
        "googlenet_fast._C", sources, define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--expt-relaxed-constexpr",
                                                        "-lineinfo"]},
        extra_link_args=link_flags)
else:
    ext = CppExtension("googlenet_fast._C", sources, define_macros=define_macros,
                       extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags)

# The resolved configuration, printed now and shipped with the package for `googlenet_fast info`.
build_info = {
    "torch_built_against": torch.__version__,
    "cuda_built": build_cuda,
    "cuda_home": cuda_home,
    "cuda_home_from": cuda_how,
    "cuda_skip_reason": None if build_cuda else cuda_skip_reason,
    "cuda_arch_list": arch_list,
}
for k, v in build_info.items():
    _log(f"{k:20s} = {v}")
if not build_cuda:
    _log(f"building the CPU part only: {cuda_skip_reason}")
if "--print-build-config" in sys.argv:
    sys.exit(0)
with open(os.path.join(HERE, "googlenet_fast", "_build_info.py"), "w") as f:
    f.write("# Written by setup.py at build time; do not edit.\nBUILD_INFO = " + repr(build_info) + "\n")

setup(
    name="googlenet_fast",
    version="0.1.0",
    description="Fused Inception-module kernels (C++/CUDA/Triton) for GoogLeNet (Inception v1)",
    packages=find_packages(include=["googlenet_fast", "googlenet_fast.*"]),
    package_data={"googlenet_fast": ["*.json"]},
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    python_requires=">=3.10",
    install_requires=["torch", "torchvision"],
    entry_points={"console_scripts": ["googlenet-fast=googlenet_fast.cli:main"]},
)
