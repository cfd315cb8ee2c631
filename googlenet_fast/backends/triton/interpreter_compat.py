"""Triton < 3.8's interpreter under NumPy >= 2.4: a workaround applied at import.

Triton 3.6's interpreter (what the H200 image carries, with NumPy 2.5) gives its tensors
``__index__ = lambda self: int(self.handle.data)``, where the data is a shape-(1,) array; NumPy
2.4 made ``int()`` of such an array a TypeError ("only 0-dimensional arrays can be converted to
Python scalars"), so every ``range()`` / ``tl.range()`` with a runtime bound fails under
TRITON_INTERPRET=1 (73 of our interpreter tests, seen with triton 3.6.0 + NumPy 2.4.6 on
2026-12-04).  Triton 3.8 squeezes the array first; this module makes older versions do the same.
It touches nothing on Triton >= 3.8 or NumPy < 2.4, and nothing outside the interpreter.
"""
import numpy as np
import triton


def _version(v: str):
    parts = []
    for p in v.split(".")[:2]:
        digits = "".join(c for c in p if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def needed() -> bool:
    """True for Triton < 3.8 with NumPy >= 2.4 (the combination whose interpreter fails)."""
    return _version(triton.__version__) < (3, 8) and _version(np.__version__) >= (2, 4)


def apply() -> bool:
    """Patch the interpreter's tensor ``__index__`` (idempotent); True when the patch is in place."""
    if not needed():
        return False
    try:
        import triton.runtime.interpreter as interp
    except ImportError:  # pragma: no cover
        return False
    orig = getattr(interp, "_patch_lang_tensor", None)
    if orig is None:
        return False
    if getattr(orig, "_googlenet_fast_index_fix", False):
        return True

    def _patch_lang_tensor(tensor, scope, *args, **kwargs):
        orig(tensor, scope, *args, **kwargs)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    _patch_lang_tensor._googlenet_fast_index_fix = True
    interp._patch_lang_tensor = _patch_lang_tensor
    return True
