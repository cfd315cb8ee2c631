"""The Triton backend of the fused Inception op: two launches per module.

    stage 1 (stage1.py): the merged 1x1 GEMM over x (ch1x1 + ch3x3red + ch5x5red columns; x read
             once) and the pool projection, whose A loader computes the 3x3/s1/p1 max (-inf
             padding); branch 1 and the pool projection go straight into their channel slices of
             the output, the two reduce outputs into a scratch matrix red[N*H*W, r3 + r5];
    stage 2 (stage2.py): the KxK convolutions of both reduce branches as implicit GEMMs over red,
             written into their channel slices.

Pooled variant: ``torch.ops.googlenet_fast.inception_pooled_triton`` (:func:`inception_pooled`):
the same module over ``max_pool2d(x, pool_k, pool_s, ceil_mode=True)``, the pool computed by stage
1's loaders (stage1.py, IN_POOL_K) so that GoogLeNet's stage-transition pools (maxpool2/3/4) cost
no pass of their own; eval only (it has no backward: it raises when grads are required), output
channels_last on the pooled grid, its own stage-1 tile configurations (configs.py).

Registered as ``torch.ops.googlenet_fast.inception_triton`` (same arguments as the C++
``googlenet_fast::inception``) and ``torch.ops.googlenet_fast.inception_triton_out`` (the out=
variant: mutates ``out``, returns nothing) through ``torch.library.triton_op`` with every launch
wrapped in ``wrap_triton``: the fake (meta) kernel is the op's own Python traced on fake tensors,
and torch.compile / make_fx see the two kernel launches.  :func:`inception_op` returns the pair in
the form ``googlenet_fast.ops`` calls.

Layouts read in place, without a copy (so that a module call is exactly two launches):
  * x: any strides (channels_last is the fast one: unit stride along channels);
  * out: any strides (a channel slice of a larger channels_last buffer is the intended use);
  * 1x1 weights (Cout, Cin, 1, 1) with unit stride along Cin (contiguous, or channels_last),
    the three siblings (w_1x1, w_3x3red, w_5x5red) as adjacent row blocks of one buffer, so that
    they are the merged GEMM operand [ch1x1 + ch3x3red + ch5x5red, Cin] in place (the model's
    folded-weight cache holds them so).  Otherwise they are concatenated per call (one small copy
    kernel), and always while the op is traced (torch.compile, make_fx);
  * KxK weights: channels_last (OHWI in memory) on CUDA.  Other KxK layouts are repacked to
    channels_last per call on CUDA (one small copy kernel; the model caches channels_last
    weights, so it avoids it); under the interpreter they are read with their own strides (one
    input-channel stride for both, else both are repacked).
Bias: any 1-D tensor or None (per-branch flags; a None bias costs nothing).
Scratch: red[N*H*W, r3 + r5 rounded up to 16] in x's dtype, allocated per call (the caching
allocator; inside CUDA graph capture, the graph's pool).

dtypes: float32 (IEEE fp32 products unless ``torch.backends.cuda.matmul`` allows TF32), float16,
bfloat16; fp32 accumulation.  Offsets are 64-bit (a constexpr switch) whenever a tensor spans
2**31 elements or more.

Tile configurations (configs.py) are autotuned per shape on first call (Triton's autotuner:
it benchmarks every configuration, so the first call of a shape must not be inside CUDA graph
capture; warm up first).  $GOOGLENET_FAST_TRITON_AUTOTUNE=0 picks one by a size heuristic
instead.  :func:`precompile` fills Triton's cache ahead of time (in parallel processes).

Autograd: the fused Triton backward (backward.py), registered as the triton_op
``googlenet_fast::inception_backward_triton`` (same arguments as the C++
``googlenet_fast::inception_backward``; returns the requested gradients only, as a list, in
argument order).  Saved for it: x (when a requested gradient reads it), the weights and biases,
and the forward output when relu is on (its ReLU masks); the reduce activations are recomputed.
Differentiable once (the backward op's own backward raises).

Devices: CUDA tensors; CPU tensors only under Triton's interpreter (TRITON_INTERPRET=1), which is
how CI runs these kernels.  The interpreter mode is read at each call: the kernels are built for
whichever mode the environment says (a private copy of the kernel modules is loaded for the
other mode), so TRITON_INTERPRET may be set after import.  Under the interpreter the launches go
through a private opaque op (``googlenet_fast::_inception_triton_interpreted``) so that fake
tensors, opcheck and torch.compile work there too (wrap_triton does not trace interpreted
kernels).

Files: modes.py (the kernel modules per interpreter mode, the autotuned kernels), checks.py
(argument checks), plan.py (launch plans; the FORCE_INT64 / FORCE_TILE test flags), forward_op.py
(the forward launcher, the registered forward ops, precompile), backward_op.py (the backward
launches, its op, the autograd registration), network.py (the rest of the network), program.py
(the eager network path's launch programs: recorded once per input signature, replayed); the kernels in
stage1.py, stage2.py, backward.py, network_kernels.py, bn_train.py.
"""
try:
    import triton  # noqa: F401
except ImportError as e:  # pragma: no cover - triton ships with CUDA builds of torch
    raise ImportError("backend='triton' needs the `triton` package, which is not importable "
                      f"here ({e}); use backend='cuda' or backend='reference'") from e

from . import interpreter_compat

interpreter_compat.apply()  # Triton < 3.8 + NumPy >= 2.4 (the H200 image): see interpreter_compat.py

from . import configs, plan, modes, checks, forward_op, backward_op  # noqa: E402,F401
from .checks import (MAX_POOL_K, SUPPORTED_DTYPES, _WEIGHT_NAMES, _check, _check_pooled, _shape,  # noqa: E402,F401
                     check_triton_args, pool_out_size, pooled_hw)
from .modes import (AUTOTUNE_ENV, Kernels, _mode_module, autotuning, interpreting, kernels)  # noqa: E402,F401
from .plan import (RED_ALIGN, LaunchPlan, _allow_tf32, _merged_1x1, _out_memory_format,  # noqa: E402,F401
                   _single_threaded_blas, _span, _tracing, _unit_k, plan_launch)
from .forward_op import (EAGER_IMPLS, OP_NAME, OUT_OP_NAME, POOLED_OP_NAME, _triton_op, eager_direct,  # noqa: E402,F401
                         inception_op, inception_pooled, inception_pooled_triton, inception_triton,
                         inception_triton_out, precompile)
from .backward_op import (BWD_DTYPES, BWD_OP_NAME, NUM_GRADS, BackwardPlan, backward_kernels,  # noqa: E402,F401
                          backward_launches, backward_needs_x, backward_plan, inception_backward_triton,
                          register_backward_autograd)
