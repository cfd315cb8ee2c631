"""What the fused Inception op's autograd saves for its backward (``setup_context``), shared by
the op's registrations: googlenet_fast.ops (C++ backward, or the reference recompute) and the
Triton backend's (googlenet_fast/backends/triton/backward_op.py)."""
from typing import Callable, Optional, Sequence

NUM_GRADS = 13  # x and the twelve weights/biases, in the op's argument order


def save_inputs(ctx, inputs: Sequence, output, needs_x: Optional[Callable[[tuple, bool], bool]]) -> None:
    """Set ``ctx.relu``, ``ctx.mask`` (the gradients to compute: requested and, for a bias,
    present; needs_input_grad may carry trailing entries for the autograd wrapper's own
    arguments) and ``ctx.x_meta`` (x's shape, dtype, device), and save (x or None, the twelve
    weights/biases, the output or None).

    needs_x: ``needs_x(mask, relu)``, whether a fused backward reads x's values (else x is not
    kept); None for a backward that recomputes the forward (reads x whenever a gradient is asked
    for, and not the output).  The output is kept for a fused backward's ReLU masks when relu is on.
    """
    tensors, relu = inputs[:NUM_GRADS], bool(inputs[NUM_GRADS])
    x = tensors[0]
    mask = tuple(bool(n) and t is not None for n, t in zip(ctx.needs_input_grad[:NUM_GRADS], tensors))
    ctx.relu = relu
    ctx.mask = mask
    ctx.x_meta = (tuple(x.shape), x.dtype, x.device)
    need_x = any(mask) if needs_x is None else needs_x(mask, relu)
    saved_out = output if (relu and needs_x is not None and any(mask)) else None
    ctx.save_for_backward(x if need_x else None, *tensors[1:], saved_out)
