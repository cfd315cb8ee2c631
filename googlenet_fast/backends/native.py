"""The compiled extension ``googlenet_fast._C``: loading it registers the C++ ops
``torch.ops.googlenet_fast.*`` (schema, CPU kernels, Meta kernels and, when built, CUDA kernels).
"""
import torch

try:
    from googlenet_fast import _C  # noqa: F401  (registers the ops)
    LOAD_ERROR = None
except ImportError as e:  # not built, or built for another Python/torch
    _C = None
    LOAD_ERROR = e

try:
    from googlenet_fast._build_info import BUILD_INFO
except ImportError:
    BUILD_INFO = {"cuda_built": False, "cuda_arch_list": None, "cuda_skip_reason": "not built"}


def available() -> bool:
    """True when the extension loaded (its CPU kernels are then usable)."""
    return _C is not None


def cuda_available() -> bool:
    """True when the extension carries CUDA kernels and a CUDA device is visible."""
    return _C is not None and bool(BUILD_INFO.get("cuda_built")) and torch.cuda.is_available()


def require():
    """Raise a clear error when the extension is missing."""
    if _C is None:
        raise RuntimeError(
            "googlenet_fast._C is not built or failed to load "
            f"({LOAD_ERROR}); install with `pip install --no-build-isolation -e .`")
