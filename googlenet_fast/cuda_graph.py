"""Replaying a model's forward from a CUDA graph (issue #6): one launch of the whole network.

At batch 1 GoogLeNet's eager forward is ~200 kernel launches whose CPU-side cost dominates; a
captured CUDA graph replays them with one call.  :func:`capture` warms the model up (Triton
autotuning, the fused op's one-time backend choice and the folded-weight cache all happen outside
the graph), captures one forward into static buffers, and returns a :class:`CapturedForward`
that copies each new input into the static input buffer and replays.

The fused model is capturable: its forward does no host synchronisation and no allocation that
differs between runs (the fused op never measures or autotunes while a capture is in progress,
see googlenet_fast.ops.resolve_backend).  Its BatchNorm-folded weights are cached by the warm-up
and read by the graph as static buffers: a replay runs the network's compute kernels only (23
for the torchvision variant on the Triton path), and :class:`CapturedForward` folds again, outside
the graph and only when a parameter or buffer changed since capture, before replaying
(googlenet_fast/graph_folds.py).
``torch.compile(model, mode="reduce-overhead")`` is the compiler's own way to the same end and
works on the fused model too.
"""
from typing import Callable, Optional, Union

import torch
from torch import Tensor, nn

from . import graph_folds


class CapturedForward:
    """A forward pass captured in a CUDA graph for one input shape, dtype and device.

    Call it with a tensor of exactly ``input_shape`` / ``dtype`` on ``device``: the input is
    copied into the graph's static input buffer and the graph is replayed.  The result is the
    graph's static output buffer, overwritten by the next call (``clone=True`` at capture returns
    a fresh copy each call instead).

    Raises ValueError for an input of another shape, dtype or device (never a silent replay with
    stale or mismatched buffers), and RuntimeError when called while another capture is running.
    """

    def __init__(self, graph, static_input: Tensor, static_output, clone: bool, folds=()):
        self.graph = graph
        self.static_input = static_input
        self.static_output = static_output
        self.clone = clone
        self.folds = list(folds)  # graph_folds.FoldEntry: folded weights the graph reads

    def refresh_folds(self) -> int:
        """Fold again (outside the graph) the weights of every module whose parameters or buffers
        changed since capture, into the graph's static buffers; the number of modules refolded.
        Called by every replay; raises RuntimeError when the model changed so that the graph must
        be captured again."""
        return graph_folds.refresh(self.folds)

    @property
    def input_shape(self):
        return tuple(self.static_input.shape)

    @property
    def dtype(self):
        return self.static_input.dtype

    @property
    def device(self):
        return self.static_input.device

    def __call__(self, x: Tensor):
        _check_replay_input(x, self.static_input)
        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError("CapturedForward: cannot replay a CUDA graph while another capture is in progress")
        self.refresh_folds()
        self.static_input.copy_(x)
        self.graph.replay()
        if self.clone:
            return _map(self.static_output, lambda t: t.clone())
        return self.static_output


def _map(out, fn):
    if isinstance(out, Tensor):
        return fn(out)
    if isinstance(out, tuple) and hasattr(out, "_fields"):  # namedtuple (GoogLeNetOutputs)
        return type(out)(*(_map(o, fn) for o in out))
    if isinstance(out, (tuple, list)):
        return type(out)(_map(o, fn) for o in out)
    return out


def _check_replay_input(x, static: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a Tensor, got {type(x).__name__}")
    if x.device != static.device:
        raise ValueError(f"x: the graph was captured for inputs on {static.device}, got a tensor on {x.device}; "
                         "move it there (a CUDA graph cannot read other devices' memory)")
    if tuple(x.shape) != tuple(static.shape):
        raise ValueError(f"x: the graph was captured for input shape {tuple(static.shape)}, got {tuple(x.shape)}; "
                         "capture another graph for this shape (googlenet_fast.cuda_graph.capture)")
    if x.dtype != static.dtype:
        raise ValueError(f"x: the graph was captured for dtype {static.dtype}, got {x.dtype}")


def capture(model: Union[nn.Module, Callable], example_input: Tensor, *, warmup: int = 3, clone: bool = False,
            pool=None, memory_format: Optional[torch.memory_format] = None) -> CapturedForward:
    """Capture ``model(example_input)`` in a CUDA graph and return a replaying callable.

    Args:
        model: a module (or any callable of one tensor) on a CUDA device whose forward is capturable; GoogLeNet(fused=True)
            in eval mode is (train mode too, but dropout's random masks are then frozen into
            the graph: capture eval-mode inference).
        example_input: (N, 3, H, W) CUDA tensor fixing the shape, dtype and device every later
            call must match; its values are copied into the static input buffer.
        warmup: eager forwards run on a side stream before capture (>= 1: Triton autotuning, the
            fused op's backend choice and weight folding must happen outside the graph).
        clone: return a copy of the static output on each call (default: the static buffer).
        pool: a memory pool handle shared with other graphs (torch.cuda.graph_pool_handle()).
        memory_format: layout of the static input buffer (default: example_input's own; the fused
            model converts to channels_last at its entry, so channels_last input saves one copy).

    Returns:
        :class:`CapturedForward`.

    Raises:
        ValueError: example_input not a CUDA tensor, the model's parameters on another device, or
            warmup < 1.
        RuntimeError: no CUDA device.
    """
    if not isinstance(example_input, Tensor):
        raise TypeError(f"example_input: expected a Tensor, got {type(example_input).__name__}")
    if example_input.device.type != "cuda":
        raise ValueError(f"example_input: CUDA graphs need a CUDA tensor, got one on {example_input.device}")
    if warmup < 1:
        raise ValueError(f"warmup: expected at least 1 eager forward before capture, got {warmup}")
    named = list(model.named_parameters()) + list(model.named_buffers()) if isinstance(model, nn.Module) else []
    for name, p in named:
        if p.device != example_input.device:
            raise ValueError(f"model: {name} is on {p.device}, example_input on {example_input.device}; "
                             "call model.to(device) first")
    fmt = memory_format or (torch.channels_last if example_input.is_contiguous(memory_format=torch.channels_last)
                            and not example_input.is_contiguous() else torch.contiguous_format)
    static_input = example_input.detach().clone().contiguous(memory_format=fmt)
    side = torch.cuda.Stream(device=static_input.device)
    side.wait_stream(torch.cuda.current_stream(static_input.device))
    with torch.no_grad(), torch.cuda.stream(side):
        for _ in range(warmup):
            model(static_input)
    torch.cuda.current_stream(static_input.device).wait_stream(side)
    torch.cuda.synchronize(static_input.device)
    graph = torch.cuda.CUDAGraph()
    with graph_folds.recording() as folds, torch.no_grad(), torch.cuda.graph(graph, pool=pool):
        static_output = model(static_input)
    return CapturedForward(graph, static_input, static_output, clone, folds)
