"""The public fused Inception op: argument checks, backend choice and autograd.

Import order runs one way: cli -> model -> ops -> backends.  This module is the only one that
knows every backend; the model calls :func:`inception` and nothing below it.
"""
import contextlib
import os
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .arg_checks import check_4d_tensor
from .backends import autograd_ctx, native
from .backends.reference import inception_reference, pool_output_size

BACKENDS = ("auto", "cpu", "cuda", "triton", "reference")
BACKEND_ENV = "GOOGLENET_FAST_BACKEND"
FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

# Order of the twelve weight/bias arguments after x, as in the op schema.
WEIGHT_NAMES = ("w_1x1", "b_1x1", "w_3x3red", "b_3x3red", "w_3x3", "b_3x3",
                "w_5x5red", "b_5x5red", "w_5x5", "b_5x5", "w_pool_proj", "b_pool_proj")


class InceptionShape(NamedTuple):
    """Sizes of one Inception module call (torchvision's names; k3/k5 are the KxK kernel sizes)."""
    n: int
    in_channels: int
    h: int
    w: int
    ch1x1: int
    ch3x3red: int
    ch3x3: int
    k3: int
    ch5x5red: int
    ch5x5: int
    k5: int
    pool_proj: int

    @property
    def out_channels(self) -> int:
        return self.ch1x1 + self.ch3x3 + self.ch5x5 + self.pool_proj


def _check_weight(name, w, out_ch, in_ch, k, x, in_src="the channels of x"):
    if not isinstance(w, Tensor):
        raise TypeError(f"{name}: expected a Tensor, got {type(w).__name__}")
    if w.dim() != 4:
        raise ValueError(f"{name}: expected a 4-D conv weight (out, in, kH, kW), got shape {tuple(w.shape)}")
    if in_ch is not None and w.shape[1] != in_ch:
        raise ValueError(f"{name}: expected {in_ch} input channels (dim 1, {in_src}), got shape {tuple(w.shape)}")
    if out_ch is not None and w.shape[0] != out_ch:
        raise ValueError(f"{name}: expected {out_ch} output channels (dim 0), got shape {tuple(w.shape)}")
    if k is not None and (w.shape[2] != k or w.shape[3] != k):
        raise ValueError(f"{name}: expected a {k}x{k} kernel, got shape {tuple(w.shape)}")
    if w.shape[2] != w.shape[3] or w.shape[2] % 2 == 0:
        raise ValueError(f"{name}: expected a square kernel of odd size, got shape {tuple(w.shape)}")
    if w.dtype != x.dtype:
        raise TypeError(f"{name}: expected dtype {x.dtype} (the dtype of x), got {w.dtype}")
    if w.device != x.device:
        raise ValueError(f"{name}: expected a tensor on {x.device} (the device of x), got {w.device}")


def _check_bias(name, b, out_ch, x):
    if b is None:
        return
    if not isinstance(b, Tensor):
        raise TypeError(f"{name}: expected a Tensor or None, got {type(b).__name__}")
    if b.dim() != 1 or b.shape[0] != out_ch:
        raise ValueError(f"{name}: expected shape ({out_ch},), got {tuple(b.shape)}")
    if b.dtype != x.dtype:
        raise TypeError(f"{name}: expected dtype {x.dtype} (the dtype of x), got {b.dtype}")
    if b.device != x.device:
        raise ValueError(f"{name}: expected a tensor on {x.device} (the device of x), got {b.device}")


def check_inception_args(x, w_1x1, b_1x1, w_3x3red, b_3x3red, w_3x3, b_3x3,
                         w_5x5red, b_5x5red, w_5x5, b_5x5, w_pool_proj, b_pool_proj,
                         out=None) -> InceptionShape:
    """Validate the fused op's arguments; return the module's sizes.

    Raises TypeError for a wrong dtype or a non-tensor, ValueError for a wrong rank, channel
    count, kernel size, spatial size or device; each message names the argument.
    """
    check_4d_tensor(x)
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"x: expected a floating dtype (float32, float64, float16, bfloat16), got {x.dtype}"
                        + ("; convert integer images with x.float() / 255 and normalize" if not x.is_floating_point() else ""))
    n, cin, h, w = x.shape
    if h < 1 or w < 1:
        raise ValueError(f"x: expected a spatial size of at least 1x1, got {h}x{w}")
    _check_weight("w_1x1", w_1x1, None, cin, 1, x)
    _check_weight("w_3x3red", w_3x3red, None, cin, 1, x)
    _check_weight("w_5x5red", w_5x5red, None, cin, 1, x)
    _check_weight("w_pool_proj", w_pool_proj, None, cin, 1, x)
    r3, r5 = w_3x3red.shape[0], w_5x5red.shape[0]
    _check_weight("w_3x3", w_3x3, None, r3, None, x, "the output channels of w_3x3red")
    _check_weight("w_5x5", w_5x5, None, r5, None, x, "the output channels of w_5x5red")
    shape = InceptionShape(n, cin, h, w, w_1x1.shape[0], r3, w_3x3.shape[0], w_3x3.shape[2],
                           r5, w_5x5.shape[0], w_5x5.shape[2], w_pool_proj.shape[0])
    for name, b, c in (("b_1x1", b_1x1, shape.ch1x1), ("b_3x3red", b_3x3red, r3),
                       ("b_3x3", b_3x3, shape.ch3x3), ("b_5x5red", b_5x5red, r5),
                       ("b_5x5", b_5x5, shape.ch5x5), ("b_pool_proj", b_pool_proj, shape.pool_proj)):
        _check_bias(name, b, c, x)
    if out is not None:
        expected = (n, shape.out_channels, h, w)
        if not isinstance(out, Tensor):
            raise TypeError(f"out: expected a Tensor or None, got {type(out).__name__}")
        if tuple(out.shape) != expected:
            raise ValueError(f"out: expected shape {expected}, got {tuple(out.shape)}")
        if out.dtype != x.dtype:
            raise TypeError(f"out: expected dtype {x.dtype} (the dtype of x), got {out.dtype}")
        if out.device != x.device:
            raise ValueError(f"out: expected a tensor on {x.device} (the device of x), got {out.device}")
    return shape


def _triton_interpreting() -> bool:
    # The values triton itself accepts for TRITON_INTERPRET.
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def _usable_gpu_backends():
    usable = []
    try:
        import triton  # noqa: F401
        usable.append("triton")
    except ImportError:
        pass
    if native.available() and native.BUILD_INFO.get("cuda_built"):
        usable.append("cuda")
    return usable


def resolve_backend(backend: str, x: Tensor, shape: Optional[InceptionShape] = None,
                    run=None) -> str:
    """Turn ``backend`` ("auto" or a name) into the backend that will run, or raise.

    ``"auto"`` is replaced by $GOOGLENET_FAST_BACKEND when set.  Then, for a CUDA tensor: the
    GPU backend (triton or cuda) measured faster for this configuration, dtype and batch size
    (a one-time measurement through ``run(name)``, cached: see googlenet_fast.autotune_table);
    for a CPU tensor: the C++ ``cpu`` backend (``reference`` with a warning if the extension is
    not built).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = os.environ.get(BACKEND_ENV, "auto") or "auto"
        if backend not in BACKENDS:
            raise ValueError(f"${BACKEND_ENV}: expected one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if x.device.type == "cuda":
            from . import autotune_table
            can_measure = (run is not None and shape is not None and not torch.compiler.is_compiling()
                           and not torch.cuda.is_current_stream_capturing())
            backend = autotune_table.pick_gpu_backend(
                shape, x.dtype, torch.cuda.get_device_name(x.device), _usable_gpu_backends(),
                run if run is not None else (lambda name: None), can_measure=can_measure)
        elif x.device.type == "cpu":
            if not native.available():
                _warn_once(f"googlenet_fast._C is not available ({native.LOAD_ERROR}); "
                           "running the reference backend")
                return "reference"
            backend = "cpu"
        else:
            return "reference"
    if backend == "cpu":
        native.require()
        if x.device.type != "cpu":
            raise ValueError(f"backend='cpu' needs CPU tensors, got x on {x.device}")
    elif backend == "cuda":
        native.require()
        if x.device.type != "cuda":
            raise ValueError(f"backend='cuda' needs CUDA tensors, got x on {x.device}")
        if not native.BUILD_INFO.get("cuda_built"):
            raise RuntimeError("backend='cuda': googlenet_fast._C was built without CUDA kernels "
                               f"({native.BUILD_INFO.get('cuda_skip_reason')})")
    elif backend == "triton":
        if x.device.type == "cpu" and not _triton_interpreting():
            raise ValueError("backend='triton' needs CUDA tensors, got x on cpu; Triton runs CPU "
                             "tensors only under its interpreter (TRITON_INTERPRET=1)")
        if x.device.type not in ("cpu", "cuda"):
            raise ValueError(f"backend='triton' needs CUDA tensors, got x on {x.device}")
    return backend


_warned = set()


def _warn_once(msg):
    if msg not in _warned:
        _warned.add(msg)
        import warnings
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


def inception(
    x: Tensor,
    w_1x1: Tensor, b_1x1: Optional[Tensor],
    w_3x3red: Tensor, b_3x3red: Optional[Tensor],
    w_3x3: Tensor, b_3x3: Optional[Tensor],
    w_5x5red: Tensor, b_5x5red: Optional[Tensor],
    w_5x5: Tensor, b_5x5: Optional[Tensor],
    w_pool_proj: Tensor, b_pool_proj: Optional[Tensor],
    *,
    relu: bool = True,
    out: Optional[Tensor] = None,
    backend: str = "auto",
    validate: bool = True,
) -> Tensor:
    """Fused Inception module forward (Szegedy et al. 2015, Sec. 4 / Fig. 2(b); torchvision's
    ``Inception`` with each BasicConv2d's BatchNorm folded into weight and bias).

    Computes ``cat([b1, b2, b3, b4], dim=1)`` with
    ``b1 = act(conv1x1(x))``, ``b2 = act(convK3(act(conv1x1(x))))``,
    ``b3 = act(convK5(act(conv1x1(x))))``, ``b4 = act(conv1x1(maxpool3x3s1p1(x)))``,
    ``act`` = ReLU when ``relu`` else identity, KxK convs padded by K//2, the max pool padded with
    -inf.  The three 1x1 convs over x run as one GEMM, the pool is computed in the pool
    projection's loader, and each branch writes straight into its channel slice of the output.

    Args:
        x: (N, Cin, H, W), float32/float64/bfloat16/float16 (float16 not on the CPU backend),
            any memory format and strides; H, W >= 1.  NHWC (channels_last) is native.
        w_1x1: (ch1x1, Cin, 1, 1).            b_1x1: (ch1x1,) or None.
        w_3x3red: (ch3x3red, Cin, 1, 1).      b_3x3red: (ch3x3red,) or None.
        w_3x3: (ch3x3, ch3x3red, K3, K3), K3 odd (3 in torchvision and the paper).  b_3x3 or None.
        w_5x5red: (ch5x5red, Cin, 1, 1).      b_5x5red: (ch5x5red,) or None.
        w_5x5: (ch5x5, ch5x5red, K5, K5), K5 odd (5 in the paper, 3 in torchvision).  b_5x5 or None.
        w_pool_proj: (pool_proj, Cin, 1, 1).  b_pool_proj: (pool_proj,) or None.
            Weights and biases share x's dtype and device.  Weights in channels_last memory
            format, and sibling 1x1 weights that are adjacent slices of one buffer, are read in
            place; others are repacked per call.
        relu: apply ReLU in every epilogue (eval with folded BN, and the paper variant).
        out: optional preallocated (N, ch1x1+ch3x3+ch5x5+pool_proj, H, W) output, e.g. a
            channel slice of a larger channels_last buffer; written in place and returned.
            Not differentiable (as ATen's out= variants).
        backend: "auto" | "cpu" | "cuda" | "triton" | "reference"; "auto" is overridden by
            $GOOGLENET_FAST_BACKEND.  On CUDA, "auto" picks triton when gradients are required
            (its backward is a Triton kernel; the cuda backend's is the reference vjp).
        validate: run the Python-side argument checks (default).  False skips them for callers
            that built the weights themselves (GoogLeNet does: ~40 us per call saved); the C++
            kernels check their arguments either way, the Triton and reference paths do not.

    Returns:
        (N, ch1x1+ch3x3+ch5x5+pool_proj, H, W) in x's dtype on x's device, in x's memory format
        (channels_last input gives channels_last output), or ``out``.

    Raises:
        TypeError: non-floating or mismatched dtype.
        ValueError: wrong rank, channel count or kernel size, spatial size under 1x1, tensors on
            different devices, ``out`` of the wrong shape/dtype/device, unknown or unusable backend.
        RuntimeError: ``out`` given while gradients are required.
    """
    args = (w_1x1, b_1x1, w_3x3red, b_3x3red, w_3x3, b_3x3,
            w_5x5red, b_5x5red, w_5x5, b_5x5, w_pool_proj, b_pool_proj)
    if validate:
        shape = check_inception_args(x, *args, out=out)
    elif x.device.type != "cuda":
        shape = None  # read only by the GPU backend choice (resolve_backend)
    else:
        n, cin, h, w = x.shape
        shape = InceptionShape(n, cin, h, w, w_1x1.shape[0], w_3x3red.shape[0], w_3x3.shape[0],
                               w_3x3.shape[2], w_5x5red.shape[0], w_5x5.shape[0], w_5x5.shape[2],
                               w_pool_proj.shape[0])

    def trial(name):  # one timed run for backend="auto"'s one-time measurement, into scratch
        with torch.no_grad():
            inception(x, *args, relu=relu, backend=name)

    if (backend == "auto" and x.device.type == "cuda" and not os.environ.get(BACKEND_ENV)
            and torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x,) + args)
            and "triton" in _usable_gpu_backends()):
        backend = "triton"  # training: the backend with a backward kernel (cuda's is a composition)
    name = resolve_backend(backend, x, shape, run=trial)
    if out is not None and torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x,) + args):
        raise RuntimeError("inception(): functions with out=... arguments don't support automatic "
                           "differentiation, but one of the arguments requires grad")
    if name == "reference":
        y = inception_reference(x, *args, relu=relu)
        if out is None:
            return y.contiguous(memory_format=torch.channels_last) if _is_channels_last(x) else y
        return out.copy_(y)
    if name in ("cpu", "cuda"):
        op = torch.ops.googlenet_fast.inception
    else:
        from .backends import triton as triton_backend
        op = triton_backend.inception_op()
    if out is None:
        return op.default(x, *args, relu)
    op.out(x, *args, relu, out=out)  # the out variants return nothing (see csrc/ops.cpp)
    return out


def fused_network_forward(model, x: Tensor) -> Optional[Tensor]:
    """The whole eval-mode network through Triton kernels (issue #6), or None where it does not
    apply or where the per-module path is faster (the caller then runs the modules).

    Stem (conv1 7x7/2 reading NCHW directly; maxpool1 [+ LRN] computed in conv2's loader; conv3),
    the nine Inception modules (the fused Triton op, the stage-transition pools inside the next
    module's loaders) and the head (ATen's global average pool + linear): 23 kernels per forward,
    see googlenet_fast/backends/triton/network.py.  Applies to a CUDA ``x``
    (float32/float16/bfloat16) of a standard GoogLeNet (either variant) in eval mode, autocast off,
    no gradient required, when triton is installed and $GOOGLENET_FAST_BACKEND is unset, "auto" or
    "triton" (set it to "cuda" or "reference" to run the per-module path instead).  With "auto",
    the network path or the module path, whichever measured faster by wall clock for this
    variant, input size, dtype and batch-size bucket (googlenet_fast.autotune_table
    .pick_network_path: one measurement on the first eager call, cached; while tracing or
    capturing a CUDA graph, the network path unless a measurement chose the modules).  Later eager
    forwards replay the first one's launches (a launch program per input signature, checked
    against the model's state on each call: googlenet_fast/backends/triton/program.py).
    """
    env = os.environ.get(BACKEND_ENV, "auto")
    if x.device.type != "cuda" or env not in ("", "auto", "triton"):
        return None
    try:
        from .backends.triton import network
    except ImportError:
        return None
    return network.forward_or_none(model, x, forced=env == "triton")


def _fake_output(x, w_1x1, b_1x1, w_3x3red, b_3x3red, w_3x3, b_3x3, w_5x5red, b_5x5red, w_5x5, b_5x5,
                 w_pool_proj, b_pool_proj, relu=True):
    """Fake (meta) kernel of googlenet_fast::inception: the output's shape and strides, no data.

    Same memory format rule as the C++ kernels: x.suggest_memory_format()."""
    check_inception_args(x, w_1x1, b_1x1, w_3x3red, b_3x3red, w_3x3, b_3x3, w_5x5red, b_5x5red,
                         w_5x5, b_5x5, w_pool_proj, b_pool_proj)
    from torch._prims_common import suggest_memory_format
    c = w_1x1.shape[0] + w_3x3.shape[0] + w_5x5.shape[0] + w_pool_proj.shape[0]
    return x.new_empty((x.shape[0], c, x.shape[2], x.shape[3])).contiguous(
        memory_format=suggest_memory_format(x))


def _fake_out_variant(*args, out):
    check_inception_args(*args[:13], out=out)


def _register_fakes():
    if native.available():
        torch.library.register_fake("googlenet_fast::inception", _fake_output)
        torch.library.register_fake("googlenet_fast::inception.out", _fake_out_variant)


_register_fakes()


def _is_channels_last(x: Tensor) -> bool:
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


# ----------------------------------------------------------------------------------------------
# Autograd.  The backward is an op of its own, googlenet_fast::inception_backward (csrc/ops.cpp):
# fused on the CPU (csrc/cpu/inception_backward_cpu.cpp), with a fake kernel here for torch.compile.
# The Triton op (googlenet_fast::inception_triton) has a Triton backward of its own
# (backends/triton/backward.py, googlenet_fast::inception_backward_triton).  The CUDA C++ op has no
# backward kernel: there the gradient is the documented composition, the reference module's
# vector-Jacobian product (torch.func.vjp, traceable by AOTAutograd): correct, but it recomputes
# the forward unfused (the model's train mode on CUDA picks the Triton op when triton is present).  Only what the requested gradients need is saved: x when
# a requested gradient reads it, the forward output when relu is on (its ReLU masks), the
# weights and biases (parameters, no extra memory).  The op is differentiable once: backpropagating
# through the backward raises (see _not_twice_differentiable).

BACKWARD_OP = "googlenet_fast::inception_backward"
_NUM_GRADS = autograd_ctx.NUM_GRADS  # x and the twelve weights/biases, in the op's argument order
(_GX, _GW1, _GB1, _GW3R, _GB3R, _GW3, _GB3, _GW5R, _GB5R, _GW5, _GB5, _GWP, _GBP) = range(_NUM_GRADS)


def _backward_needs_x(mask, relu) -> bool:
    """Whether the fused backward reads x for the gradients in ``mask`` (as make_plan in
    csrc/cpu/inception_backward_cpu.cpp): every gradient but the biases', and the reduce biases'
    when relu is on (their ReLU masks are recomputed from x)."""
    return (any(mask[i] for i in (_GX, _GW1, _GW3R, _GW3, _GW5R, _GW5, _GWP))
            or (relu and (mask[_GB3R] or mask[_GB5R])))


def _has_fused_backward(device: torch.device) -> bool:
    """True when googlenet_fast::inception_backward has a kernel for ``device``'s dispatch key."""
    if not native.available():
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device.type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(BACKWARD_OP, key)


def _setup_context(ctx, inputs, output):
    ctx.fused = _has_fused_backward(inputs[0].device)
    autograd_ctx.save_inputs(ctx, inputs, output, _backward_needs_x if ctx.fused else None)


def _fake_backward(grad_out, x, w_1x1, b_1x1, w_3x3red, b_3x3red, w_3x3, b_3x3, w_5x5red, b_5x5red,
                   w_5x5, b_5x5, w_pool_proj, b_pool_proj, relu, out, output_mask):
    """Fake (meta) kernel of googlenet_fast::inception_backward: the requested gradients' shapes
    and strides, as the CPU kernel allocates them (grad_x in x's suggested memory format, each
    weight's gradient in the weight's, biases 1-D); None for the others."""
    from torch._prims_common import suggest_memory_format
    args = (w_1x1, b_1x1, w_3x3red, b_3x3red, w_3x3, b_3x3, w_5x5red, b_5x5red, w_5x5, b_5x5,
            w_pool_proj, b_pool_proj)
    shape = check_inception_args(x, *args)
    expected = (shape.n, shape.out_channels, shape.h, shape.w)
    for name, t in (("grad_out", grad_out), ("out", out)):
        if t is not None and tuple(t.shape) != expected:
            raise ValueError(f"{name}: expected shape {list(expected)} (the forward output's), got {list(t.shape)}")
    if out is None and relu and any(output_mask):
        raise ValueError("out: the forward output is required when relu=True (its ReLU masks), got None")
    return tuple(
        None if not (m and t is not None) else
        torch.empty(t.shape, dtype=t.dtype, device=t.device, memory_format=suggest_memory_format(t))
        for m, t in zip(output_mask, (x,) + args))


def _placeholder_x(shape, dtype, device):
    # An x of the right sizes that owns one element: the fused backward reads only x's sizes when
    # no requested gradient needs its values.
    return torch.zeros((), dtype=dtype, device=device).expand(shape)


def _backward(ctx, grad):
    saved = ctx.saved_tensors
    x, weights, out = saved[0], saved[1:_NUM_GRADS], saved[_NUM_GRADS]
    mask = ctx.mask
    if not any(mask):
        return (None,) * (_NUM_GRADS + 1)
    if x is None:
        x = _placeholder_x(*ctx.x_meta)
    if ctx.fused:
        grads = torch.ops.googlenet_fast.inception_backward(grad, x, *weights, ctx.relu, out, list(mask))
        return tuple(grads) + (None,)
    return _reference_vjp(grad, x, weights, ctx.relu, mask) + (None,)


def _reference_vjp(grad, x, weights, relu, mask):
    """The composition used where no backward kernel exists: the vjp of the reference module."""
    full = (x,) + tuple(weights)
    present = [i for i, t in enumerate(full) if t is not None]

    def f(*ts):
        args = list(full)
        for i, t in zip(present, ts):
            args[i] = t
        return inception_reference(*args, relu=relu)

    _, vjp = torch.func.vjp(f, *[full[i] for i in present])
    grads = vjp(grad)
    result = [None] * len(full)
    for i, g in zip(present, grads):
        result[i] = g if mask[i] else None
    return tuple(result)


def _not_twice_differentiable(ctx, *grads):
    raise RuntimeError(
        "googlenet_fast.inception is not twice differentiable: its backward "
        "(googlenet_fast::inception_backward) has no derivative. Use backend='reference' (or "
        "GoogLeNet(fused=False)) for double backward, e.g. gradient penalties or "
        "torch.autograd.gradgradcheck.")


def register_inception_autograd(qualname: str = "googlenet_fast::inception"):
    """Attach the fused backward to an op with the fused op's signature ``(x, 12 weights/biases,
    relu) -> Tensor`` (the C++ op; a Triton op may reuse it).  CPU tensors get the fused C++
    backward, other devices the reference vjp until a backward kernel is registered for them."""
    torch.library.register_autograd(qualname, _backward, setup_context=_setup_context)


def _register_autograd():
    if native.available():
        torch.library.register_fake(BACKWARD_OP, _fake_backward)
        register_inception_autograd("googlenet_fast::inception")
        torch.library.register_autograd(BACKWARD_OP, _not_twice_differentiable,
                                        setup_context=lambda ctx, inputs, output: None)


_register_autograd()


def _register_cpu_op(name: str, fake, backward, setup_context) -> None:
    """The fake kernel and the autograd formula of one of the CPU eval path's ops (when the
    extension that defines it is loaded)."""
    if native.available():
        torch.library.register_fake(name, fake)
        torch.library.register_autograd(name, backward, setup_context=setup_context)


# ------------------------------------------------------------------------------------------------
# Prepacked oneDNN weights (CPU)

@contextlib.contextmanager
def weight_prepacking(enabled: bool = True):
    """Within this context, this thread's CPU calls of the float32 and bfloat16 ops
    (:func:`inception`, :func:`conv2d_relu`) keep the weights they hand to oneDNN in its blocked layout and reuse them
    in later calls, as torch.compile's CPU freezing does at compile time: a convolution's weight
    reorder costs up to 20% of a small-map convolution (5b's 3x3 at batch 1, 2-core EPYC).

    A packed copy is reused while its source weight tensor's storage is alive, at the same
    address, with the same sizes, strides, dtype and version counter, for the same input shape
    and thread count; at most 2048 such keys are kept (least recently used evicted), keys whose
    packed layout is the same sharing one tensor (csrc/cpu/packed_weights.h).  Outside this
    context the convolutions pack per call and the inner products read the plain weight.
    In-place PyTorch updates bump the version counter and repack.  Writes the version counter
    does not see (through
    ``.data``, numpy views, raw pointers, or inductor's buffer reuse inside a compiled graph)
    would leave a stale copy in use: enable this only around calls whose weights are not
    written that way.  The model's Inception and BasicConv2d modules enable it around their
    eager eval calls on the CPU when the weights are their own folded-weight cache's tensors
    (never under torch.compile, nor with gradients to the parameters, where they fold inline).
    Inference tensors (no version counter) are packed per call.  Without the extension: no-op.
    """
    if not native.available():
        yield
        return
    previous = native._C._set_weight_prepacking(enabled)
    try:
        yield
    finally:
        native._C._set_weight_prepacking(previous)


# ------------------------------------------------------------------------------------------------
# oneDNN primitives called directly (CPU)

def direct_onednn_status() -> str:
    """How the CPU ops' convolutions and inner products reach oneDNN: ``"enabled"`` (as
    primitives the extension creates and keeps, in the oneDNN torch itself carries, found through
    libtorch_cpu.so's symbol table: csrc/cpu/onednn_api.h, onednn_direct.h), ``"switched off"``
    (``$GOOGLENET_FAST_ONEDNN`` = ``0``/``false``/``off``/``no``, read once at the first CPU op
    call or status query of the process, or :func:`set_direct_onednn`), or the reason it is
    unavailable (e.g. a stripped libtorch, or a torch other than the one the extension was built
    against); in the last two cases ATen's mkldnn ops run them.  Both paths run the same oneDNN
    kernels: results are bit-equal (tests/test_direct_onednn.py); the direct path saves ATen's
    15-20 us per call (a batch-1 forward makes ~58), measured in
    benchmarks/results/cpu-direct-onednn-2026-12-05.md.  Without the extension: ``"no extension"``.
    """
    if not native.available():
        return "no extension"
    return native._C._direct_onednn_status()


def set_direct_onednn(enabled: bool) -> bool:
    """Switch the direct oneDNN path (see :func:`direct_onednn_status`) on or off for the whole
    process; returns the previous setting.  Where it is unavailable, switching on changes nothing.

    Raises:
        TypeError: ``enabled`` is not a bool.
        RuntimeError: the extension is not built.
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"set_direct_onednn: enabled: expected a bool, got {type(enabled).__name__} {enabled!r}")
    if not native.available():
        raise RuntimeError("set_direct_onednn: googlenet_fast's extension is not built")
    return native._C._set_direct_onednn(enabled)


# ------------------------------------------------------------------------------------------------
# The stem's convolutions on the CPU: googlenet_fast::conv2d_relu

CONV2D_RELU_OP = "googlenet_fast::conv2d_relu"


def conv2d_relu(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride: int = 1,
                padding: int = 0, relu: bool = True) -> Tensor:
    """``relu(conv2d(x, weight, bias, stride, padding))`` on the CPU with the weight prepacked for
    oneDNN: what GoogLeNet(fused=True) runs for its stem (conv1 7x7/2, conv2 1x1, conv3 3x3) in
    eval mode on the CPU, the BatchNorm folded into ``weight``/``bias``.

    float32 and bfloat16 run oneDNN's convolution on the weight reordered into its blocked layout,
    reused across calls inside :func:`weight_prepacking` (as torch.compile's CPU freezing does;
    ATen's eager convolution reorders per call): a primitive the extension keeps
    (:func:`direct_onednn_status`), else ``mkldnn::_convolution_pointwise``; the ReLU is a separate
    in-place pass, because oneDNN's fused ReLU maps NaN to 0 where ``torch.relu`` keeps it.
    float64 runs ``at::convolution`` + ReLU.

    Args:
        x: (N, C, H, W) float tensor on the CPU, any layout (channels_last is read in place).
        weight: (C_out, C, k, k), k odd, x's dtype and device.
        bias: (C_out,) or None.
        stride, padding: one int each, for both spatial dims (dilation 1, groups 1).
        relu: apply ReLU (NaN kept, as torch.relu).
    Returns:
        (N, C_out, H_out, W_out) channels_last, H_out = (H + 2*padding - k) // stride + 1.
    Raises:
        ValueError / TypeError naming the argument: wrong rank, channel count, even or non-square
        kernel, dtype or device mismatch, stride < 1, padding < 0, input smaller than the kernel;
        NotImplementedError for a CUDA x (the GPU stem runs the Triton network kernels).
    Autograd: the backward is ATen's (threshold_backward, convolution_backward); not twice
    differentiable.
    """
    return torch.ops.googlenet_fast.conv2d_relu(x, weight, bias, stride, padding, relu)


def _conv2d_relu_fake(x, weight, bias=None, stride=1, padding=0, relu=True):
    k = weight.shape[-1]
    h = (x.shape[2] + 2 * padding - k) // stride + 1
    w = (x.shape[3] + 2 * padding - k) // stride + 1
    return x.new_empty((x.shape[0], weight.shape[0], h, w)).contiguous(memory_format=torch.channels_last)


def _conv2d_relu_setup(ctx, inputs, output):
    x, weight, bias, stride, padding, relu = inputs
    ctx.save_for_backward(x, weight, output if relu else None)
    ctx.conf = (bias is not None, stride, padding, relu)


def _conv2d_relu_backward(ctx, grad):
    x, weight, out = ctx.saved_tensors
    has_bias, stride, padding, relu = ctx.conf
    if relu:
        grad = torch.ops.aten.threshold_backward(grad, out, 0)
    mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], has_bias and ctx.needs_input_grad[2]]
    gx, gw, gb = torch.ops.aten.convolution_backward(
        grad, x, weight, [weight.shape[0]] if has_bias else None, [stride, stride], [padding, padding],
        [1, 1], False, [0, 0], 1, mask)
    return gx, gw, gb, None, None, None


_register_cpu_op(CONV2D_RELU_OP, _conv2d_relu_fake, _conv2d_relu_backward, _conv2d_relu_setup)


# ------------------------------------------------------------------------------------------------
# The stage-transition max pools on the CPU: googlenet_fast::max_pool_nhwc

MAX_POOL_NHWC_OP = "googlenet_fast::max_pool_nhwc"


def max_pool_nhwc(x: Tensor, kernel: int, stride: int, relu: bool = False) -> Tensor:
    """``F.max_pool2d(x, kernel, stride, ceil_mode=True)`` (then ReLU when ``relu``) on the CPU
    without the int64 index tensor ATen's CPU max pool writes even under no_grad: what
    GoogLeNet(fused=True) runs for maxpool1-4 in eval mode on the CPU (torchvision's GoogLeNet:
    MaxPool2d(3, 2, ceil_mode=True), maxpool4 MaxPool2d(2, 2, ceil_mode=True)).

    ``relu=True`` computes ``relu(maxpool(y))``, which equals ``maxpool(relu(y))`` (NaN included:
    both keep it): the model then skips the ReLU pass of the convolution before the pool
    (conv1 -> maxpool1, conv3 -> maxpool2), one full read and write of its output fewer.

    Args:
        x: (N, C, H, W) float tensor on the CPU (float32/float64/bfloat16/float16), any layout
            (channels_last is read in place), large enough for one output pixel.
        kernel, stride: ints >= 1 (square window, no padding, dilation 1, ceil mode: the last
            window may hang over the edge but starts inside, PyTorch's rule).
        relu: apply ReLU after the max (NaN kept).
    Returns:
        (N, C, H_out, W_out) channels_last.
    Raises:
        ValueError / TypeError naming the argument (rank, dtype, kernel/stride < 1, input too small
        for one output pixel); NotImplementedError for a CUDA x (the GPU path fuses its pools into
        the Triton kernels' loaders).
    Autograd: recomputes the argmax (F.max_pool2d(..., return_indices=True)) and runs ATen's
    max_pool2d_with_indices_backward; not twice differentiable.
    """
    return torch.ops.googlenet_fast.max_pool_nhwc(x, kernel, stride, relu)


def _max_pool_nhwc_fake(x, kernel, stride, relu=False):
    h = pool_output_size(x.shape[2], kernel, stride)
    w = pool_output_size(x.shape[3], kernel, stride)
    return x.new_empty((x.shape[0], x.shape[1], h, w)).contiguous(memory_format=torch.channels_last)


def _max_pool_nhwc_setup(ctx, inputs, output):
    x, kernel, stride, relu = inputs
    ctx.save_for_backward(x, output if relu else None)
    ctx.conf = (kernel, stride, relu)


def _max_pool_nhwc_backward(ctx, grad):
    x, out = ctx.saved_tensors
    kernel, stride, relu = ctx.conf
    if relu:
        grad = torch.ops.aten.threshold_backward(grad, out, 0)
    _, idx = torch.nn.functional.max_pool2d(x, kernel, stride, ceil_mode=True, return_indices=True)
    gx = torch.ops.aten.max_pool2d_with_indices_backward(grad, x, [kernel, kernel], [stride, stride],
                                                         [0, 0], [1, 1], True, idx)
    return gx, None, None, None


_register_cpu_op(MAX_POOL_NHWC_OP, _max_pool_nhwc_fake, _max_pool_nhwc_backward, _max_pool_nhwc_setup)


# ------------------------------------------------------------------------------------------------
# The classifier head on the CPU: googlenet_fast::avgpool_linear

AVGPOOL_LINEAR_OP = "googlenet_fast::avgpool_linear"


def avgpool_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """``F.linear(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1), weight, bias)`` on the CPU as one
    op: GoogLeNet's head (avgpool, flatten, dropout -- the identity in eval mode --, fc) that
    GoogLeNet(fused=True) runs in eval mode on the CPU.  One op instead of five (mean,
    as_strided_, view, t, addmm: each pays its dispatch with the caches cold at the end of a
    forward), and the fc GEMV through oneDNN's inner product, which threads the batch-1 GEMV
    (0.19 vs 0.27 ms for the head with the weights out of cache, float32 batch 1, 2-core EPYC,
    2026-12-05).  Under :func:`weight_prepacking` the weight is packed for oneDNN once and reused
    (bfloat16 batch 1 35 vs 73 us a call hot, 2-core Xeon, 2026-12-06; GoogLeNet's eval head
    does so with ``googlenet_fast.model.HEAD_PREPACK = True``, its copies dropped by
    ``GoogLeNet.clear_folded_cache()`` and optimizer steps); otherwise it is used as given.

    Args:
        x: (N, C, H, W) float tensor on the CPU (float32/float64/bfloat16), any layout.
        weight: (out_features, C), x's dtype and device.
        bias: (out_features,) or None.
    Returns:
        (N, out_features), x's dtype: the channel means are accumulated in float32 (float64 for
        float64) and rounded once to x's dtype, as ATen's mean; float32 within 1e-6 relative of
        the modules, bfloat16 equal to them.
    Raises:
        ValueError / TypeError naming the argument (rank, shapes, dtype or device mismatch).
    Autograd: the backward of the composition it computes (recomputed from x); not twice
    differentiable.
    """
    return torch.ops.googlenet_fast.avgpool_linear(x, weight, bias)


def _avgpool_linear_fake(x, weight, bias=None):
    return x.new_empty((x.shape[0], weight.shape[0]))


def _avgpool_linear_setup(ctx, inputs, output):
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight, bias)


def _composition_backward(fn, tensors, needs, grad) -> tuple:
    """Gradients of ``fn(*tensors)`` (the plain PyTorch composition an op computes) for the
    tensors whose ``needs`` is set (None for the others and for absent tensors), recomputed."""
    leaves = [t.detach().requires_grad_(n) if t is not None else None for t, n in zip(tensors, needs)]
    wanted = [t for t, n in zip(leaves, needs) if t is not None and n]
    with torch.enable_grad():
        y = fn(*leaves)
        grads = iter(torch.autograd.grad(y, wanted, grad)) if wanted else iter(())
    return tuple(next(grads) if t is not None and n else None for t, n in zip(leaves, needs))


def _avgpool_linear_backward(ctx, grad):
    def head(x, weight, bias):
        return torch.nn.functional.linear(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1),
                                          weight, bias)
    return _composition_backward(head, ctx.saved_tensors, ctx.needs_input_grad, grad)


_register_cpu_op(AVGPOOL_LINEAR_OP, _avgpool_linear_fake, _avgpool_linear_backward, _avgpool_linear_setup)


# ------------------------------------------------------------------------------------------------
# The stem's convolution + max pool pairs on the CPU: googlenet_fast::conv2d_relu_max_pool

CONV2D_RELU_MAX_POOL_OP = "googlenet_fast::conv2d_relu_max_pool"


def conv2d_relu_max_pool(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: int, padding: int,
                         pool_kernel: int, pool_stride: int) -> Tensor:
    """``F.max_pool2d(relu(F.conv2d(x, weight, bias, stride, padding)), pool_kernel, pool_stride,
    ceil_mode=True)`` on the CPU as one op: GoogLeNet's conv1 -> maxpool1 and conv3 -> maxpool2 in
    eval mode.  The convolution runs a few images at a time (at most 4 MB of its output) and each
    group is pooled while it is still in the caches, not written whole to memory and read back
    (float32 batch 8, 2-core EPYC, weights prepacked, 2026-12-05: conv3 + maxpool2 11.3 vs 12.6
    ms, conv1 + maxpool1 4.5 vs 4.9 ms as :func:`conv2d_relu` then :func:`max_pool_nhwc`).  The
    ReLU runs in the pool's pass (relu(maxpool(y)) == maxpool(relu(y)), NaN kept).  float32 and
    bfloat16 through oneDNN with the weight prepacked under :func:`weight_prepacking`; other
    dtypes compose the two ops.

    Args:
        x: (N, C_in, H, W) float tensor on the CPU, any layout (channels_last read in place).
        weight: (C_out, C_in, k, k), k odd, x's dtype and device; bias: (C_out,) or None.
        stride, padding: the convolution's (>= 1, >= 0); pool_kernel, pool_stride: the ceil-mode
            max pool's (>= 1, no padding).
    Returns:
        (N, C_out, H_pool, W_pool) channels_last, equal to the two ops composed.
    Raises:
        ValueError / TypeError naming the argument (rank, shapes, dtypes, devices, a stride or
        kernel < 1, an input too small for the kernel or for one pooled pixel).
    Autograd: the backward of the composition (recomputed from x); not twice differentiable.
    """
    return torch.ops.googlenet_fast.conv2d_relu_max_pool(x, weight, bias, stride, padding, pool_kernel, pool_stride)


def _conv2d_relu_max_pool_fake(x, weight, bias, stride, padding, pool_kernel, pool_stride):
    k = weight.shape[2]
    oh, ow = ((s + 2 * padding - k) // stride + 1 for s in (x.shape[2], x.shape[3]))
    ph, pw = pool_output_size(oh, pool_kernel, pool_stride), pool_output_size(ow, pool_kernel, pool_stride)
    return x.new_empty((x.shape[0], weight.shape[0], ph, pw)).contiguous(memory_format=torch.channels_last)


def _conv2d_relu_max_pool_setup(ctx, inputs, output):
    x, weight, bias, stride, padding, pool_kernel, pool_stride = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.conf = (stride, padding, pool_kernel, pool_stride)


def _conv2d_relu_max_pool_backward(ctx, grad):
    stride, padding, pool_kernel, pool_stride = ctx.conf
    F = torch.nn.functional

    def composition(x, weight, bias):
        return F.max_pool2d(torch.relu(F.conv2d(x, weight, bias, stride, padding)), pool_kernel, pool_stride,
                            ceil_mode=True)
    return _composition_backward(composition, ctx.saved_tensors, ctx.needs_input_grad[:3], grad) + (None,) * 4


_register_cpu_op(CONV2D_RELU_MAX_POOL_OP, _conv2d_relu_max_pool_fake, _conv2d_relu_max_pool_backward,
                 _conv2d_relu_max_pool_setup)
