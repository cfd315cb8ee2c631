"""Argument checks shared by the ops (messages name the argument and say what was expected)."""
from torch import Tensor


def check_4d_tensor(x, name: str = "x") -> None:
    """TypeError unless ``x`` is a Tensor, ValueError unless it is 4-D (N, C, H, W)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name}: expected a 4-D tensor (N, C, H, W), got shape {tuple(x.shape)}")


def check_like_x(name: str, t: Tensor, x: Tensor) -> None:
    """TypeError unless ``t`` has x's dtype, ValueError unless it is on x's device."""
    if t.dtype != x.dtype:
        raise TypeError(f"{name}: expected dtype {x.dtype} (the dtype of x), got {t.dtype}")
    if t.device != x.device:
        raise ValueError(f"{name}: expected a tensor on {x.device} (the device of x), got {t.device}")
