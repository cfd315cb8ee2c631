"""Whether forward-mode AD is active (``torch.autograd.forward_ad.dual_level``).

The fused ops carry no forward-AD formulas, and the CPU eval path calls them below autograd (no
history is needed there), so dual inputs would lose their tangents silently: while a dual level
is open, GoogLeNet runs its plain modules (googlenet_fast/model.py) and replays no CPU op
program (googlenet_fast/cpu_program.py).  ``torch.func.jvp`` (functorch) wraps tensors instead
and reaches the fused ops, which then raise."""
import torch.autograd.forward_ad as _fwad


def level_active() -> bool:
    """True inside ``torch.autograd.forward_ad.dual_level()`` (a module global of torch's: ~50 ns)."""
    return _fwad._current_level >= 0
