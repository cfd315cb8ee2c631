"""Which GPU backend ``backend="auto"`` runs for a CUDA tensor.

Until a measured per-configuration table ships, triton is chosen when it is importable and
the CUDA C++ backend otherwise.
"""
from typing import Optional


def pick_gpu_backend(shape: Optional[object] = None) -> str:
    """Return "triton" or "cuda" for an Inception call of the given InceptionShape."""
    try:
        import triton  # noqa: F401
        return "triton"
    except ImportError:
        return "cuda"
