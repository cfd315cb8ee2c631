"""The forward launcher of the Triton Inception op and its registered ops: the plain module
(``googlenet_fast::inception_triton`` / ``_out``) and the module over a stage-transition max pool
(``googlenet_fast::inception_pooled_triton``); :func:`precompile` fills Triton's cache ahead of
time."""
from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from . import configs, plan as _plan, program
from .checks import _check, _check_pooled
from .modes import autotuning, interpreting, kernels
from .plan import LaunchPlan, _out_memory_format, _tracing, plan_launch

OP_NAME = "googlenet_fast::inception_triton"
OUT_OP_NAME = "googlenet_fast::inception_triton_out"

def precompile(plan: LaunchPlan, which: str = "launch") -> int:
    """Compile, without running, the kernels a call with this plan would launch on the current
    CUDA device, and return how many variants were built.  ``plan`` may come from meta tensors
    (plan_launch works on them): a kernel's specialization depends on its tensors' dtypes and
    16-byte alignment only, so small stand-ins are passed.  ``which``: "launch" (what the call
    would use: every autotuning configuration, or the heuristic/forced tile) or "all" (every
    configuration).  Run in worker processes sharing TRITON_CACHE_DIR, this fills Triton's
    on-disk cache in parallel (benchmarks/gpu_blocks.py --prewarm, the GPU tests)."""
    k = kernels(interpret=False)
    pooled = bool(plan.args1["IN_POOL_K"])
    count = 0
    for stage, fn, args in ((1, k.stage1.inception_stage1_kernel, plan.args1),
                            (2, k.stage2.inception_stage2_kernel, plan.args2)):
        pooled_stage = pooled and stage == 1
        if which == "all" or autotuning():
            tiles = configs.tiles(stage, plan.half, pooled_stage)
        elif _plan.FORCE_TILE:
            tiles = [_plan.FORCE_TILE[stage - 1]]
        else:
            tiles = [configs.heuristic_tile(stage, plan.P, plan.half, pooled_stage)]
        args = {n: (torch.empty(64, dtype=v.dtype, device="cuda") if isinstance(v, Tensor) else v)
                for n, v in args.items()}
        for t in tiles:
            fn.warmup(**args, **t.meta(stage), num_warps=t.num_warps, num_stages=t.num_stages, grid=(1,))
            count += 1
    return count


def _launch(x, w_1x1, b_1x1, w_3x3red, b_3x3red, w_3x3, b_3x3, w_5x5red, b_5x5red, w_5x5, b_5x5,
            w_pool_proj, b_pool_proj, relu: bool, out: Tensor, interpret: bool,
            pool: Tuple[int, int] = (0, 0)) -> None:
    """Run both stages, writing the module's output into ``out`` (any strides); ``pool``: see
    :func:`plan_launch`."""
    n, _, h, w = x.shape
    if n * h * w == 0 or out.numel() == 0:
        program.unrecordable("an empty Inception call")
        return
    plan = plan_launch(x, w_1x1, b_1x1, w_3x3red, b_3x3red, w_3x3, b_3x3, w_5x5red, b_5x5red,
                       w_5x5, b_5x5, w_pool_proj, b_pool_proj, relu, out, interpret, pool)
    program.register(plan.args1["red_ptr"])  # the scratch matrix: a buffer of the forward
    pooled = bool(pool[0])
    k = kernels(interpret)
    g1 = k.stage1.grid(plan.P, plan.NM, plan.CP)
    g2 = k.stage2.grid(plan.P, plan.C3, plan.C5)
    if interpret:
        t1 = configs.interpret_tile(1, plan.P, plan.R3, plan.R5)
        t2 = configs.interpret_tile(2, plan.P, plan.R3, plan.R5)
        program.launch(k.stage1.inception_stage1_kernel, g1, dict(plan.args1, **t1.meta(1)), True)
        program.launch(k.stage2.inception_stage2_kernel, g2, dict(plan.args2, **t2.meta(2)), True)
        return
    if autotuning():
        if pooled:
            kernel1 = k.stage1_pooled_half if plan.half else k.stage1_pooled_fp32
        else:
            kernel1 = k.stage1_half if plan.half else k.stage1_fp32
        kernel2 = k.stage2_half if plan.half else k.stage2_fp32
        program.launch(kernel1, g1, plan.args1, False)
        program.launch(kernel2, g2, plan.args2, False)
        return
    t1 = _plan.FORCE_TILE[0] if _plan.FORCE_TILE else configs.heuristic_tile(1, plan.P, plan.half, pooled)
    t2 = _plan.FORCE_TILE[1] if _plan.FORCE_TILE else configs.heuristic_tile(2, plan.P, plan.half)
    program.launch(k.stage1.inception_stage1_kernel, g1,
                   dict(plan.args1, **t1.meta(1), num_warps=t1.num_warps, num_stages=t1.num_stages), False)
    program.launch(k.stage2.inception_stage2_kernel, g2,
                   dict(plan.args2, **t2.meta(2), num_warps=t2.num_warps, num_stages=t2.num_stages), False)


# ----------------------------------------------------------------------------------------------
# Registration

# The Python bodies of the triton_ops, by op name: GoogLeNet's eager forward on CUDA calls them
# directly (no custom-op dispatch, ~10 us a call; see network.fused_forward_triton), everything
# else goes through the registered ops.
EAGER_IMPLS = {}


def _triton_op(name: str, mutates_args):
    """torch.library.triton_op, also keeping the Python body in EAGER_IMPLS."""
    def register(fn):
        EAGER_IMPLS[name] = fn
        return torch.library.triton_op(name, mutates_args=mutates_args)(fn)
    return register


def eager_direct(x: Tensor) -> bool:
    """True when an eager caller may run the ops' Python bodies directly: x on a GPU (or meta),
    not compiling, not tracing, no dispatch mode active (what the registered op would add there:
    fake/functional/proxy handling)."""
    return (x.device.type != "cpu" and not torch.compiler.is_compiling() and not _tracing(x))


def _new_output(x, w_1x1, w_3x3, w_5x5, w_pool_proj):
    n, _, h, w = x.shape
    c = w_1x1.shape[0] + w_3x3.shape[0] + w_5x5.shape[0] + w_pool_proj.shape[0]
    return program.register(torch.empty((n, c, h, w), dtype=x.dtype, device=x.device,
                                        memory_format=_out_memory_format(x)))


def _run(x, w_1x1, b_1x1, w_3x3red, b_3x3red, w_3x3, b_3x3, w_5x5red, b_5x5red, w_5x5, b_5x5,
         w_pool_proj, b_pool_proj, relu, out, pool=(0, 0)):
    args = (w_1x1, b_1x1, w_3x3red, b_3x3red, w_3x3, b_3x3, w_5x5red, b_5x5red, w_5x5, b_5x5,
            w_pool_proj, b_pool_proj)
    if x.device.type == "meta":
        return
    if interpreting() and x.device.type == "cpu":
        torch.ops.googlenet_fast._inception_triton_interpreted(x, *args, relu, out, int(pool[0]), int(pool[1]))
    else:
        _launch(x, *args, relu, out, interpret=interpreting(), pool=pool)


@torch.library.custom_op("googlenet_fast::_inception_triton_interpreted", mutates_args=("out",))
def _inception_triton_interpreted(
        x: Tensor, w_1x1: Tensor, b_1x1: Optional[Tensor], w_3x3red: Tensor, b_3x3red: Optional[Tensor],
        w_3x3: Tensor, b_3x3: Optional[Tensor], w_5x5red: Tensor, b_5x5red: Optional[Tensor],
        w_5x5: Tensor, b_5x5: Optional[Tensor], w_pool_proj: Tensor, b_pool_proj: Optional[Tensor],
        relu: bool, out: Tensor, pool_k: int = 0, pool_s: int = 0) -> None:
    """Both stages under Triton's interpreter (opaque to tracing; used for CPU tensors); pool_k > 0:
    over the (pool_k, pool_s) max pool of x (the pooled op)."""
    _launch(x, w_1x1, b_1x1, w_3x3red, b_3x3red, w_3x3, b_3x3, w_5x5red, b_5x5red, w_5x5, b_5x5,
            w_pool_proj, b_pool_proj, relu, out, interpret=True, pool=(pool_k, pool_s))


@_inception_triton_interpreted.register_fake
def _(x, w_1x1, b_1x1, w_3x3red, b_3x3red, w_3x3, b_3x3, w_5x5red, b_5x5red, w_5x5, b_5x5,
      w_pool_proj, b_pool_proj, relu, out, pool_k=0, pool_s=0):
    return None


@_triton_op(OP_NAME, mutates_args=())
def inception_triton(
        x: Tensor, w_1x1: Tensor, b_1x1: Optional[Tensor], w_3x3red: Tensor, b_3x3red: Optional[Tensor],
        w_3x3: Tensor, b_3x3: Optional[Tensor], w_5x5red: Tensor, b_5x5red: Optional[Tensor],
        w_5x5: Tensor, b_5x5: Optional[Tensor], w_pool_proj: Tensor, b_pool_proj: Optional[Tensor],
        relu: bool = True) -> Tensor:
    """The fused Inception forward (Triton): same arguments and result as
    ``torch.ops.googlenet_fast.inception``; output in x's suggested memory format."""
    _check(x, (w_1x1, b_1x1, w_3x3red, b_3x3red, w_3x3, b_3x3, w_5x5red, b_5x5red, w_5x5, b_5x5,
               w_pool_proj, b_pool_proj))
    out = _new_output(x, w_1x1, w_3x3, w_5x5, w_pool_proj)
    _run(x, w_1x1, b_1x1, w_3x3red, b_3x3red, w_3x3, b_3x3, w_5x5red, b_5x5red, w_5x5, b_5x5,
         w_pool_proj, b_pool_proj, relu, out)
    return out


@torch.library.triton_op(OUT_OP_NAME, mutates_args=("out",))
def inception_triton_out(
        x: Tensor, w_1x1: Tensor, b_1x1: Optional[Tensor], w_3x3red: Tensor, b_3x3red: Optional[Tensor],
        w_3x3: Tensor, b_3x3: Optional[Tensor], w_5x5red: Tensor, b_5x5red: Optional[Tensor],
        w_5x5: Tensor, b_5x5: Optional[Tensor], w_pool_proj: Tensor, b_pool_proj: Optional[Tensor],
        relu: bool, out: Tensor) -> None:
    """The out= variant: writes the module's output into ``out`` (N, Cout, H, W), any strides
    (e.g. a channel slice of a larger channels_last buffer)."""
    _check(x, (w_1x1, b_1x1, w_3x3red, b_3x3red, w_3x3, b_3x3, w_5x5red, b_5x5red, w_5x5, b_5x5,
               w_pool_proj, b_pool_proj), out)
    _run(x, w_1x1, b_1x1, w_3x3red, b_3x3red, w_3x3, b_3x3, w_5x5red, b_5x5red, w_5x5, b_5x5,
         w_pool_proj, b_pool_proj, relu, out)


# ----------------------------------------------------------------------------------------------
# The pooled op: a stage-transition max pool fused into the next module's stage 1

POOLED_OP_NAME = "googlenet_fast::inception_pooled_triton"


def _new_pooled_output(x, w_1x1, w_3x3, w_5x5, w_pool_proj, ph, pw):
    c = w_1x1.shape[0] + w_3x3.shape[0] + w_5x5.shape[0] + w_pool_proj.shape[0]
    return program.register(torch.empty((x.shape[0], c, ph, pw), dtype=x.dtype, device=x.device,
                                        memory_format=torch.channels_last))


@_triton_op(POOLED_OP_NAME, mutates_args=())
def inception_pooled_triton(
        x: Tensor, w_1x1: Tensor, b_1x1: Optional[Tensor], w_3x3red: Tensor, b_3x3red: Optional[Tensor],
        w_3x3: Tensor, b_3x3: Optional[Tensor], w_5x5red: Tensor, b_5x5red: Optional[Tensor],
        w_5x5: Tensor, b_5x5: Optional[Tensor], w_pool_proj: Tensor, b_pool_proj: Optional[Tensor],
        relu: bool, pool_k: int, pool_s: int) -> Tensor:
    """See :func:`inception_pooled`."""
    args = (w_1x1, b_1x1, w_3x3red, b_3x3red, w_3x3, b_3x3, w_5x5red, b_5x5red, w_5x5, b_5x5,
            w_pool_proj, b_pool_proj)
    ph, pw = _check_pooled(x, args, pool_k, pool_s)
    out = _new_pooled_output(x, w_1x1, w_3x3, w_5x5, w_pool_proj, ph, pw)
    _run(x, *args, relu, out, (pool_k, pool_s))
    return out


def _pooled_eval_only(*_, **__):
    raise RuntimeError(
        "googlenet_fast::inception_pooled_triton is eval-only: it has no backward, and an input "
        "requires grad. Run it under torch.no_grad() / torch.inference_mode(), or for training use "
        "max_pool2d followed by googlenet_fast.inception (backend='triton' has a backward).")


def inception_pooled(x: Tensor, w_1x1: Tensor, b_1x1: Optional[Tensor], w_3x3red: Tensor,
                     b_3x3red: Optional[Tensor], w_3x3: Tensor, b_3x3: Optional[Tensor], w_5x5red: Tensor,
                     b_5x5red: Optional[Tensor], w_5x5: Tensor, b_5x5: Optional[Tensor], w_pool_proj: Tensor,
                     b_pool_proj: Optional[Tensor], relu: bool = True, *, pool=(3, 2)) -> Tensor:
    """``inception(max_pool2d(x, k, s, ceil_mode=True), *weights, relu)`` in the Inception op's two
    launches, the max pool computed by stage 1's loaders (no pooled tensor is written): the
    stage-transition pools of GoogLeNet fused into the module after them (torchvision's
    ``models/googlenet.py``: ``maxpool2 = MaxPool2d(3, 2, ceil_mode=True)`` before inception3a,
    ``maxpool3 = MaxPool2d(3, 2, ceil_mode=True)`` before inception4a, ``maxpool4 =
    MaxPool2d(2, 2, ceil_mode=True)`` before inception5a; the paper's maxpool4 is 3x3/2).  Runs
    ``torch.ops.googlenet_fast.inception_pooled_triton`` (a triton_op: torch.compile and CUDA
    graph capture see its two kernels).

    Args:
        x: (N, Cin, XH, XW) float32/float16/bfloat16, the pre-pool map, any strides (channels_last
            is the fast one); CUDA, or CPU under TRITON_INTERPRET=1.
        w_1x1 ... b_pool_proj: the twelve weights and biases of ``googlenet_fast.inception`` (same
            shapes, layouts and rules; e.g. ``Inception.folded_params(dtype)``), x's dtype and device.
        relu: ReLU after every branch.
        pool: (kernel_size k, stride s), 1 <= s <= k <= 5: a k x k / s max pool without padding
            in ceil mode (the last window may hang over the edge, its outside taps excluded; it
            must start inside the map, as PyTorch's rule), NaN propagating as in torch.
    Returns:
        (N, ch1x1 + ch3x3 + ch5x5 + pool_proj, PH, PW), channels_last (NHWC) memory, x's dtype;
        PH = ceil((XH - k) / s) + 1 (minus one if that window would start past the map), PW alike.
    Raises:
        TypeError / ValueError naming the argument: x or a weight (dtype, device, rank, channels,
        as googlenet_fast.inception), pool_k / pool_s (out of range), x (a pre-pool map too small
        for one window); RuntimeError when grad mode is on and an input requires grad (eval only:
        no backward).
    """
    return torch.ops.googlenet_fast.inception_pooled_triton(
        x, w_1x1, b_1x1, w_3x3red, b_3x3red, w_3x3, b_3x3, w_5x5red, b_5x5red, w_5x5, b_5x5,
        w_pool_proj, b_pool_proj, bool(relu), int(pool[0]), int(pool[1]))


class _Op(NamedTuple):
    default: object
    out: object


def _out_call(x, w_1x1, b_1x1, w_3x3red, b_3x3red, w_3x3, b_3x3, w_5x5red, b_5x5red, w_5x5, b_5x5,
              w_pool_proj, b_pool_proj, relu=True, *, out):
    torch.ops.googlenet_fast.inception_triton_out(
        x, w_1x1, b_1x1, w_3x3red, b_3x3red, w_3x3, b_3x3, w_5x5red, b_5x5red, w_5x5, b_5x5,
        w_pool_proj, b_pool_proj, relu, out)
    return out


def inception_op() -> _Op:
    """The Triton op as googlenet_fast.ops calls it: ``.default(x, *weights, relu)`` returns a new
    output; ``.out(x, *weights, relu, out=out)`` writes ``out`` and returns it."""
    return _Op(torch.ops.googlenet_fast.inception_triton.default, _out_call)


# Raised in setup_context, i.e. by the forward call itself when grad mode is on and an input
# requires grad (not later, at backward time).
torch.library.register_autograd(POOLED_OP_NAME, _pooled_eval_only, setup_context=_pooled_eval_only)
