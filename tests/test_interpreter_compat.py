"""The Triton < 3.8 + NumPy >= 2.4 interpreter workaround (googlenet_fast/backends/triton/interpreter_compat.py)."""
import numpy as np
import pytest
import triton

from googlenet_fast.backends.triton import interpreter_compat as ic


@pytest.mark.parametrize("triton_v,numpy_v,needed", [
    ("3.6.0", "2.4.6", True), ("3.6.0", "2.5.2", True), ("3.7.1", "2.4.0", True),
    ("3.6.0", "2.3.5", False), ("3.8.0", "2.4.6", False), ("3.10.0", "2.5.0", False), ("3.6.0+git1", "2.4.0rc1", True),
])
def test_needed_only_for_old_triton_with_new_numpy(monkeypatch, triton_v, numpy_v, needed):
    monkeypatch.setattr(triton, "__version__", triton_v)
    monkeypatch.setattr(np, "__version__", numpy_v)
    assert ic.needed() is needed


def test_patch_squeezes_the_index(monkeypatch):
    """On an interpreter module shaped like Triton 3.6's, the patched __index__ reads a shape-(1,)
    array the way Triton 3.8 does (int() of it is a TypeError under NumPy >= 2.4)."""
    import triton.runtime.interpreter as interp
    monkeypatch.setattr(ic, "needed", lambda: True)

    class Scope:
        def __init__(self):
            self.attrs = {}

        def set_attr(self, obj, name, value):
            self.attrs[name] = value

    def old_patch(tensor, scope):  # Triton 3.6's line
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data))

    monkeypatch.setattr(interp, "_patch_lang_tensor", old_patch)
    assert ic.apply() and ic.apply()  # idempotent
    scope = Scope()
    interp._patch_lang_tensor(object(), scope)

    class T:
        class handle:
            data = np.array([7], dtype=np.int32)

    assert scope.attrs["__index__"](T()) == 7
