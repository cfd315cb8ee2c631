"""GoogLeNet (Inception v1) whose Inception modules run the fused op in eval mode.

Two variants, one class (see /work/shared/DESIGN.md):

* ``variant="torchvision"`` (default): layer for layer ``torchvision.models.googlenet`` (same module
  names, state_dict keys, init and forward), so weights load strictly both ways and outputs agree.
* ``variant="paper"``: the network of Szegedy et al. 2015, Table 1 / Figure 3 (the BVLC Caffe
  GoogLeNet): conv + bias + ReLU everywhere, no BatchNorm, LocalResponseNorm after pool1 and after
  conv3, true 5x5 convolutions, 3x3/2 max pools, aux heads after 4a and 4d.

``fused=True`` (default) changes only how the network computes, never the result (within fp32
rounding): the input is converted to channels_last once at the network's entry.  In eval mode
the stem's ``BasicConv2d`` modules run with BatchNorm folded into the convolution and each
``Inception`` module runs :func:`googlenet_fast.ops.inception` on folded weights.  In train mode
(never folded) each ``Inception`` module of the torchvision variant runs
:func:`googlenet_fast.bn_train.inception_bn_train` (pre-BatchNorm outputs into one concatenated
buffer, the reduce branches' BatchNorm + ReLU inside the second stage) and one BatchNorm + ReLU
over all its channels; the paper variant runs the fused op with its fused backward.

Folded weights are cached per module and rebuilt whenever a parameter or buffer changed (see
:class:`_FoldedWeightsCache`); under ``torch.compile`` they are folded inline in the graph.
"""
import contextlib
import math
import warnings
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from . import bn_train, cpu_program, fold_cache, forward_ad as _forward_ad, ops, pool_train
from .backends.reference import pool_output_size

try:  # the same namedtuple class as torchvision, so isinstance checks agree
    from torchvision.models.googlenet import GoogLeNetOutputs
except ImportError:  # pragma: no cover - torchvision is an install requirement
    from collections import namedtuple

    GoogLeNetOutputs = namedtuple("GoogLeNetOutputs", ["logits", "aux_logits2", "aux_logits1"])

__all__ = ["GoogLeNet", "GoogLeNetOutputs", "Inception", "InceptionAux", "PaperInceptionAux",
           "BasicConv2d", "ConvReLU", "googlenet", "InputTooSmallError", "VARIANTS"]

VARIANTS = ("torchvision", "paper")


from .fold_cache import (_FoldedWeightsCache, _block_sources, _fold_conv_block, _has_global_hooks,
                         _has_module_hooks, version_counted)
from .model_state import PROGRAM_ATTRS


def _below_autograd_without_grad():
    """For one extension op call of the eval paths: under no_grad (or inference_mode), skip the
    Autograd dispatch key, as the op's own autograd kernel would after being dispatched to (it is
    a Python function: ~18 us a call on the CI machine).  Dispatch modes and other keys below
    Autograd still see the op.  A no-op context with grad enabled, or under torch.compile."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return contextlib.nullcontext()
    return torch._C._AutoDispatchBelowAutograd()


def _exporting_to_onnx() -> bool:
    """True while ``torch.onnx.export`` traces the model, with either exporter: the TorchScript
    one (``dynamo=False``: torch.jit tracing) and the torch.export-based one (``dynamo=True``);
    ``torch.onnx.is_in_onnx_export()`` is set by both (torch 2.11 and 2.14 alike).  The fused
    paths then step aside and the plain modules run, so the ONNX graph holds standard operators
    only (Conv, Relu, MaxPool, Concat, Gemm, ...; the exporters fold BatchNorm into Conv): the
    graph torchvision's googlenet exports.
    Asked only while tracing (torch.jit) or compiling (torch.export sets is_compiling in every
    torch version, is_exporting only in recent ones): is_in_onnx_export costs ~1 us a call, eager
    calls pay ~0.2 us; torch.compile's dynamo folds is_in_onnx_export to False (no graph break).
    A plain ``torch.export.export`` (not from ONNX) keeps the fused ops."""
    return ((torch.jit.is_tracing() or torch.compiler.is_compiling())
            and torch.onnx.is_in_onnx_export())


def _plain_modules_needed() -> bool:
    """True while exporting to ONNX (:func:`_exporting_to_onnx`) or inside forward-mode AD
    (``torch.autograd.forward_ad.dual_level``): the fused ops have no forward-AD formulas and the
    eval path calls them below autograd, so the tangents would be dropped without a word (found
    by a stress test: the fused model's output tangent was None); the plain modules carry them."""
    return _forward_ad.level_active() or _exporting_to_onnx()


# bfloat16 merged 1x1 weights get zero rows up to a multiple of 32 where their row count is not a
# multiple of 16 (see _merged_pad_rows); False: never (A/B, tests).
PAD_MERGED_ROWS = True
# The CPU eval head hands oneDNN fc.weight packed once (see GoogLeNet._head): opt-in, because
# fc.weight is a parameter itself, and a write through fc.weight.data (common when fine-tuning
# the classifier) without clear_folded_cache() would go unseen (stale logits); bf16 batch 1 / 8
# 1.2% / 0.7% faster, float32 0.6-1% (2-core Xeon, 2026-12-06).  False: the plain weight, which
# oneDNN copies into its layout on every call.
HEAD_PREPACK = False


def _merged_pad_rows(w1: Tensor, rows: int) -> List[Tensor]:
    """Zero rows to append to the merged [ch1x1 + ch3x3red + ch5x5red, Cin, 1, 1] bfloat16 weight
    so that stage 1's GEMM (csrc/cpu/inception_cpu.cpp) can run with a row count oneDNN's AMX
    kernels block well: up to the next multiple of 32 where ``rows`` is not a multiple of 16
    (4b: 296 -> 320, 4c: 280 -> 288).  The views the module uses keep their shapes; the GEMM reads
    the rows past them (their output columns are never read).  oneDNN's bf16 inner product, one
    thread, 392 rows x 512: 280 columns 160 us, 288 107 us; 296 166 us, 320 122 us; 304 and 624
    gained nothing from padding (2-core Xeon, AMX, 2026-12-06).  Other dtypes: none (float32 296
    -> 320 ran slower) and other devices (the GPU kernels read only the three views' rows)."""
    if not PAD_MERGED_ROWS or w1.dtype != torch.bfloat16 or w1.device.type != "cpu" or rows % 16 == 0:
        return []
    return [w1.new_zeros((-rows % 32,) + tuple(w1.shape[1:]))]


def _foldable_block(block: nn.Module, kernel: int) -> bool:
    """True when ``block`` is a plain BasicConv2d/ConvReLU with the conv the fused op computes."""
    if type(block).forward not in (BasicConv2d.forward, ConvReLU.forward):
        return False
    conv = getattr(block, "conv", None)
    if type(conv) is not nn.Conv2d:
        return False
    if (conv.kernel_size != (kernel, kernel) or conv.stride != (1, 1) or conv.dilation != (1, 1)
            or conv.groups != 1 or conv.padding_mode != "zeros"
            or conv.padding not in ((kernel // 2, kernel // 2),) + (("same",) if kernel % 2 else ())):
        return False
    bn = getattr(block, "bn", None)
    if isinstance(block, BasicConv2d):
        if not (isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None and bn.running_var is not None):
            return False
    elif bn is not None:
        return False
    return _block_sources(block) is not None


def _autocast_on(device_type: str) -> bool:
    """torch.is_autocast_enabled for ``device_type``; False for a device autocast does not know
    (e.g. 'meta', where torch.is_autocast_enabled raises instead of answering)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:
        return False


def _compute_dtype(x: Tensor, weight_dtype: torch.dtype) -> torch.dtype:
    """The compute dtype of a fused call: the autocast dtype where autocast is on for x's device
    and would cast the weights (as nn.Conv2d would compute under it: autocast leaves float64
    alone), else the weights' dtype."""
    if weight_dtype != torch.float64 and _autocast_on(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return weight_dtype


def _cpu_conv_op_applies(x: Tensor, w: Tensor, conv: nn.Conv2d) -> bool:
    """True when googlenet_fast::conv2d_relu computes ``relu(conv(x))`` for this folded conv: a
    float32 or bfloat16 CPU input of the weight's dtype (oneDNN with a prepacked weight in both),
    square odd kernel, one stride and padding for both dims, dilation 1, groups 1, not under
    torch.compile (which packs the weights itself), and the extension built."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and w.dtype == x.dtype
            and x.dim() == 4 and not torch.compiler.is_compiling() and ops.native.available()
            and conv.groups == 1 and conv.dilation == (1, 1) and isinstance(conv.padding, tuple)
            and conv.padding[0] == conv.padding[1] and conv.stride[0] == conv.stride[1]
            and w.shape[-1] == w.shape[-2] and w.shape[-1] % 2 == 1)


def _has_hooks(*modules: nn.Module) -> bool:
    """Whether calling these modules would run forward (pre-)hooks, their own or global ones: the
    model then calls them rather than computing them with the extension's ops."""
    if _has_global_hooks():
        return True
    return any(_has_module_hooks(m) for m in modules)


def _ceil_max_pool(pool: nn.Module) -> Optional[Tuple[int, int]]:
    """(kernel, stride) of a plain square ceil-mode nn.MaxPool2d without padding, dilation or
    indices (what googlenet_fast::max_pool_nhwc computes), else None."""
    args = pool_train.max_pool_args(pool)
    if args is None or args[2] != 0 or not args[3]:
        return None
    return args[0], args[1]


# ------------------------------------------------------------------------------------------------
# Building blocks

class BasicConv2d(_FoldedWeightsCache, nn.Module):
    """torchvision's conv block: ``relu(bn(conv(x)))``, Conv2d(bias=False), BatchNorm2d(eps=0.001).

    Attribute ``fused`` (default False; GoogLeNet sets it on its stem): in eval mode the conv runs
    with the BatchNorm folded into its weight and bias (cached, see :class:`_FoldedWeightsCache`);
    ``.conv`` and ``.bn`` are then not called (hooks on them do not fire).  A ``bn`` that is not
    a BatchNorm2d with running statistics is never folded.
    """

    @version_counted
    def __init__(self, in_channels: int, out_channels: int, **conv_kwargs: Any) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv_kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)
        self.fused = False
        self._register_fold_cache_hooks()

    def _fold_sources(self):
        return _block_sources(self)

    def _fold_extra_key(self):
        return (self.bn.eps,)

    def _fold(self, dtype):
        w, b = _fold_conv_block(self, dtype)
        # KxK weights channels_last (OHWI): what the NHWC kernels read in place (conv3 on the
        # Triton network path would otherwise be repacked per call).
        return (w.contiguous(memory_format=torch.channels_last) if w.shape[-1] > 1 else w), b

    def folded_params(self, dtype: Optional[torch.dtype] = None) -> Tuple[Tensor, Tensor]:
        """(weight, bias) of the conv with the BatchNorm's running statistics folded in.

        Raises RuntimeError when the block is not foldable (see ``_block_sources``)."""
        folded = self._cached_fold(dtype or self.conv.weight.dtype)
        if folded is None:
            raise RuntimeError("BasicConv2d.folded_params: conv must be a plain nn.Conv2d with a weight "
                               "parameter and bn an nn.BatchNorm2d with running statistics, no forward hooks")
        return folded

    def _can_fold(self) -> bool:
        """Whether eval mode may fold the BatchNorm: there is one, in eval mode itself (a
        BatchNorm left in train mode inside an eval model normalizes with batch statistics and
        updates its running ones, as in torchvision's model), and the block is foldable."""
        bn = self._modules.get("bn")
        return bn is not None and not bn.training and _block_sources(self) is not None

    def _eval_conv(self, x: Tensor, relu: bool = True, pool: Optional[Tuple[int, int]] = None) -> Optional[Tensor]:
        """The fused eval path: ``relu(conv(x))`` (``relu=False``: ``conv(x)``) with the folded
        weights, or None where it does not apply (train mode, not fused, no foldable BatchNorm).
        ``pool`` (kernel, stride): ``max_pool(relu(conv(x)))`` with that ceil-mode pool instead (on
        the CPU ops: googlenet_fast::conv2d_relu_max_pool, or max_pool_nhwc after the conv)."""
        if not (self.fused and not self.training and self._can_fold()) or _plain_modules_needed():
            return None
        dtype = _compute_dtype(x, self.conv.weight.dtype)
        folded = self._cached_fold(dtype)
        if folded is None:
            return None
        w, b = folded
        if x.dtype != dtype:
            x = x.to(dtype)  # autocast: the conv computes in its dtype (as nn.Conv2d's would)
        c = self.conv
        if c.padding_mode != "zeros":
            y = c._conv_forward(x, w, b)
        elif _cpu_conv_op_applies(x, w, c):
            # oneDNN with the weight prepacked once (as torch.compile's freezing does)
            with self._prepacking(folded), _below_autograd_without_grad():
                if pool is not None:
                    return ops.conv2d_relu_max_pool(x, w, b, c.stride[0], c.padding[0], *pool)
                return ops.conv2d_relu(x, w, b, c.stride[0], c.padding[0], relu)
        else:
            y = F.conv2d(x, w, b, c.stride, c.padding, c.dilation, c.groups)
        if pool is not None:
            with _below_autograd_without_grad():
                return ops.max_pool_nhwc(y, *pool, relu=True)
        return torch.relu_(y) if relu else y

    def _train_bn_relu_applies(self, x: Tensor) -> bool:
        """Train-mode fused path: BatchNorm + ReLU as one node (bn_train.bn_relu_train) when fused,
        training, on the CPU fast path, and ``bn`` a plain affine nn.BatchNorm2d with running
        statistics and a numeric momentum, itself in train mode (a BatchNorm set to eval inside a
        training model uses its running statistics: the plain modules run), without hooks on the
        block or its children."""
        if not (self.fused and self.training and bn_train.cpu_fast_path_applies(x)):
            return False
        bn = self._modules.get("bn")
        return (type(bn) is nn.BatchNorm2d and bn.training and bn.affine and bn.track_running_stats
                and bn.running_mean is not None and bn.momentum is not None and not _has_hooks(self, self.conv, bn))

    def forward(self, x: Tensor) -> Tensor:
        y = self._eval_conv(x)
        if y is not None:
            return y
        if self._train_bn_relu_applies(x):
            return bn_train.bn_relu_train(self.conv(x), self.bn)
        x = self.conv(x)
        x = self.bn(x)
        return F.relu(x, inplace=True)


class ConvReLU(nn.Module):
    """The paper's conv block: ``relu(conv(x))`` with Conv2d(bias=True), no BatchNorm."""

    def __init__(self, in_channels: int, out_channels: int, **conv_kwargs: Any) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=True, **conv_kwargs)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.conv(x), inplace=True)


class Inception(_FoldedWeightsCache, nn.Module):
    """One Inception module: ``cat(branch1, branch2, branch3, branch4)`` along channels.

    Module names are torchvision's (state_dict keys match): ``branch1`` = 1x1 conv;
    ``branch2`` = Sequential(1x1 reduce, 3x3 pad 1); ``branch3`` = Sequential(1x1 reduce,
    ``kernel_5x5`` x ``kernel_5x5`` pad ``kernel_5x5 // 2``) (3 as torchvision's known quirk, 5 in
    the paper); ``branch4`` = Sequential(MaxPool2d(3, 1, 1, ceil_mode=True), 1x1 pool projection).
    ``conv_block`` defaults to :class:`BasicConv2d`; :class:`ConvReLU` gives the paper's module.

    ``fused`` (attribute, default True): in eval mode, run :func:`googlenet_fast.ops.inception`
    (backend "auto") on :meth:`folded_params`; in train mode, see :meth:`_forward_train_fused`
    (BatchNorm with batch statistics, never folded).  With ``fused=False`` the plain branches and
    ``torch.cat`` run.  The fused paths do not call the branch submodules (hooks on them do not
    fire) and fall back to the plain path when a branch is not a plain BasicConv2d/ConvReLU of
    the expected shape, in train mode when a BatchNorm is not exactly ``nn.BatchNorm2d`` with
    affine parameters, running statistics and a numeric momentum (SyncBatchNorm, momentum=None,
    mixed eps/momentum), and for float16 on the CPU (the C++ CPU kernel has no float16).  Under
    autocast the fused path runs in the autocast dtype, as the convolutions would.
    """

    @version_counted
    def __init__(
        self,
        in_channels: int,
        ch1x1: int,
        ch3x3red: int,
        ch3x3: int,
        ch5x5red: int,
        ch5x5: int,
        pool_proj: int,
        conv_block: Optional[Callable[..., nn.Module]] = None,
        kernel_5x5: int = 3,
        fused: bool = True,
    ) -> None:
        super().__init__()
        if conv_block is None:
            conv_block = BasicConv2d
        if kernel_5x5 < 1 or kernel_5x5 % 2 == 0:
            raise ValueError(f"kernel_5x5: expected an odd kernel size >= 1, got {kernel_5x5}")
        self.branch1 = conv_block(in_channels, ch1x1, kernel_size=1)
        self.branch2 = nn.Sequential(
            conv_block(in_channels, ch3x3red, kernel_size=1),
            conv_block(ch3x3red, ch3x3, kernel_size=3, padding=1),
        )
        self.branch3 = nn.Sequential(
            conv_block(in_channels, ch5x5red, kernel_size=1),
            conv_block(ch5x5red, ch5x5, kernel_size=kernel_5x5, padding=kernel_5x5 // 2),
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
            conv_block(in_channels, pool_proj, kernel_size=1),
        )
        self.kernel_5x5 = kernel_5x5
        self.fused = bool(fused)
        self._register_fold_cache_hooks()

    # -- folding ---------------------------------------------------------------------------------
    def _blocks(self):
        # The modules' own dicts, not attribute/index lookups (~10x faster; this runs on every
        # fused call).  Sequential children are keyed "0", "1".
        m = self._modules
        b2, b3, b4 = m["branch2"]._modules, m["branch3"]._modules, m["branch4"]._modules
        return (m["branch1"], b2["0"], b2["1"], b3["0"], b3["1"], b4["1"])

    def _plain_structure(self) -> bool:
        """Cheap per-call check that the fused op may stand in for the submodules: the standard
        branch containers (plain nn.Sequential of the expected length), and no forward hooks on
        any of them, their blocks or the pool, nor global ones (hooks must fire: the module then
        runs its branches)."""
        if _has_global_hooks():
            return False
        m = self._modules
        b1, b2, b3, b4 = m.get("branch1"), m.get("branch2"), m.get("branch3"), m.get("branch4")
        if not (type(b2) is type(b3) is type(b4) is nn.Sequential
                and len(b2._modules) == len(b3._modules) == len(b4._modules) == 2 and b1 is not None):
            return False
        return not any(_has_module_hooks(c) for c in (b1, b2, b3, b4, *b2._modules.values(),
                                                     *b3._modules.values(), *b4._modules.values()))

    def _can_fuse(self) -> bool:
        """True when the module is what the fused op computes (plain blocks, odd square KxK)."""
        if not self._plain_structure():
            return False
        try:
            pool = self.branch4[0]
            if not (type(pool) is nn.MaxPool2d and pool.kernel_size in (3, (3, 3))
                    and pool.stride in (1, (1, 1)) and pool.padding in (1, (1, 1))
                    and pool.dilation in (1, (1, 1)) and len(self.branch2) == 2 and len(self.branch3) == 2
                    and len(self.branch4) == 2):
                return False
            k3, k5 = self.branch2[1].conv.kernel_size[0], self.branch3[1].conv.kernel_size[0]
        except (AttributeError, IndexError, KeyError, TypeError):
            return False
        if k3 % 2 == 0 or k5 % 2 == 0:
            return False
        return all(_foldable_block(b, k) for b, k in zip(self._blocks(), (1, 1, k3, 1, k5, 1)))

    def _fold_sources(self):
        if not self._plain_structure():
            return None
        out = []
        for b in self._blocks():
            src = _block_sources(b)
            if src is None:
                return None
            out += src
        return out

    def _fold_extra_key(self):
        return tuple(bn.eps for bn in (b._modules.get("bn") for b in self._blocks()) if bn is not None)

    def _fold(self, dtype):
        # The structure check runs here, i.e. when the cache is (re)built, not on every call:
        # replacing a submodule replaces its tensors, which changes the cache key.
        if not self._can_fuse():
            return None
        (w1, b1), (w3r, b3r), (w3, b3), (w5r, b5r), (w5, b5), (wp, bp) = (
            _fold_conv_block(b, dtype) for b in self._blocks())
        # The three sibling 1x1 weights as adjacent row slices of one buffer (the fused kernels
        # read the merged [ch1x1 + ch3x3red + ch5x5red, Cin] GEMM operand in place).
        c1, r3 = w1.shape[0], w3r.shape[0]
        merged = torch.cat([w1, w3r, w5r] + _merged_pad_rows(w1, c1 + r3 + w5r.shape[0]), 0)
        w1 = merged.narrow(0, 0, c1)
        w3r = merged.narrow(0, c1, r3)
        w5r = merged.narrow(0, c1 + r3, w5r.shape[0])
        w3 = w3.contiguous(memory_format=torch.channels_last)
        w5 = w5.contiguous(memory_format=torch.channels_last)
        return (w1, b1, w3r, b3r, w3, b3, w5r, b5r, w5, b5, wp.contiguous(), bp)

    def folded_params(self, dtype: Optional[torch.dtype] = None) -> Tuple[Optional[Tensor], ...]:
        """The 12 arguments of :func:`googlenet_fast.ops.inception` after x.

        ``(w_1x1, b_1x1, w_3x3red, b_3x3red, w_3x3, b_3x3, w_5x5red, b_5x5red, w_5x5, b_5x5,
        w_pool_proj, b_pool_proj)``: with BasicConv2d, each BatchNorm (running statistics, its
        own eps) folded into its conv's weight and bias; with ConvReLU, the conv's own weight and
        bias.  Cast to ``dtype`` (default: the parameters' dtype).  Layout: the three sibling 1x1
        weights are adjacent row slices of one contiguous buffer, the KxK weights channels_last.
        Cached until a parameter or buffer changes (see :class:`_FoldedWeightsCache`).
        """
        folded = self._cached_fold(dtype or self.branch1.conv.weight.dtype)
        if folded is None:
            raise RuntimeError("Inception.folded_params: every branch must be a plain BasicConv2d "
                               "(with running statistics) or ConvReLU of the module's kernel sizes")
        return folded

    # -- forward ---------------------------------------------------------------------------------
    def _forward(self, x: Tensor) -> List[Tensor]:
        return [self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)]

    def _train_bns(self) -> Optional[List[nn.BatchNorm2d]]:
        """The six BatchNorms in block order when the train-mode fused path applies to them:
        each exactly ``nn.BatchNorm2d`` (not SyncBatchNorm, whose statistics span processes)
        with affine parameters, running statistics and a numeric momentum, in train mode (a
        BatchNorm set to eval inside a training model normalizes with its running statistics),
        all with one eps and one momentum.  None otherwise (the plain modules run)."""
        bns = [getattr(b, "bn", None) for b in self._blocks()]
        if not all(type(bn) is nn.BatchNorm2d and bn.training and bn.affine and bn.track_running_stats
                   and bn.running_mean is not None and bn.momentum is not None for bn in bns):
            return None
        if len({bn.eps for bn in bns}) != 1 or len({bn.momentum for bn in bns}) != 1:
            return None
        return bns

    def _forward_train_fused(self, x: Tensor, dtype: torch.dtype) -> Optional[Tensor]:
        """Train mode through the fused kernels, or None when they do not apply.

        Paper variant (ConvReLU blocks): the fused op with bias + ReLU epilogues and its fused
        backward.  torchvision variant (BasicConv2d): :func:`googlenet_fast.bn_train.inception_bn_train`
        writes the pre-BatchNorm branch outputs into one concatenated buffer (the reduce
        branches' BatchNorm + ReLU run inside its second stage), then ONE batch_norm + ReLU runs
        over all channels; running_mean / running_var / num_batches_tracked of all six
        BatchNorms update as nn.BatchNorm2d's would (momentum, unbiased running variance).
        BatchNorm is never folded in train mode.
        """
        if not self._can_fuse():
            return None
        blocks = self._blocks()
        convs = [b.conv for b in blocks]
        self._check_x(x, convs[0].weight.shape[1])
        if x.dtype != dtype:
            x = x.to(dtype)
        if isinstance(blocks[0], ConvReLU):
            params = []
            for c in convs:
                params += [c.weight.to(dtype), None if c.bias is None else c.bias.to(dtype)]
            return ops.inception(x, *params, relu=True, validate=False)
        bns = self._train_bns()
        if bns is None or any(c.bias is not None for c in convs):
            return None
        n, _, h, w = x.shape
        F._verify_batch_size((n, 1, h, w))  # nn.BatchNorm2d's own error for one value per channel
        momentum, eps = bns[0].momentum, bns[0].eps
        red_bns = (bns[1], bns[3])
        out_bns = (bns[0], bns[2], bns[4], bns[5])  # branch order of the concatenation
        with torch.no_grad():
            for bn in bns:
                bn.num_batches_tracked.add_(1)
        w1, w3r, w3, w5r, w5, wp = (c.weight.to(dtype) for c in convs)
        if bn_train.cpu_fast_path_applies(x):
            # One autograd node for the module: BatchNorm + ReLU backward in one pass over all
            # channels, every dgrad/wgrad through oneDNN (see bn_train._InceptionBnReluTrain).
            return bn_train.inception_bn_relu_train(x, (w1, w3r, w3, w5r, w5, wp), bns, eps, momentum)
        out, _, mean, var = bn_train.inception_bn_train(
            x, w1, w3r, w3, w5r, w5, wp, torch.cat([bn.weight for bn in red_bns]),
            torch.cat([bn.bias for bn in red_bns]), eps, validate=False)
        # The reduce BatchNorms' running statistics (their normalization ran inside the kernel):
        # nn.BatchNorm2d's update, momentum * batch + (1 - momentum) * running, with the unbiased
        # batch variance.
        count = n * h * w
        with torch.no_grad():
            unbiased = var * (count / (count - 1))
            for bn, m, v in zip(red_bns, mean.split([w3r.shape[0], w5r.shape[0]]),
                                unbiased.split([w3r.shape[0], w5r.shape[0]])):
                bn.running_mean.copy_(momentum * m + (1 - momentum) * bn.running_mean)
                bn.running_var.copy_(momentum * v + (1 - momentum) * bn.running_var)
        # One BatchNorm over every output channel; ATen updates the concatenated running
        # statistics in place, which are then copied back into the four modules.
        sizes = [bn.num_features for bn in out_bns]
        running_mean = torch.cat([bn.running_mean for bn in out_bns])
        running_var = torch.cat([bn.running_var for bn in out_bns])
        y = F.batch_norm(out, running_mean, running_var, torch.cat([bn.weight for bn in out_bns]),
                         torch.cat([bn.bias for bn in out_bns]), True, momentum, eps)
        with torch.no_grad():
            for bn, m, v in zip(out_bns, running_mean.split(sizes), running_var.split(sizes)):
                bn.running_mean.copy_(m)
                bn.running_var.copy_(v)
        return F.relu(y, inplace=True)

    @staticmethod
    def _check_x(x: Tensor, cin: int) -> None:
        """The fused paths' input check (the op's own would name the weight, not x): a 4-D x
        with the module's ``cin`` input channels."""
        if x.dim() != 4 or x.shape[1] != cin:
            raise ValueError(f"x: expected a 4-D tensor (N, {cin}, H, W) for this Inception module "
                             f"({cin} input channels), got shape {tuple(x.shape)}")

    def _weight_dtype(self) -> Optional[torch.dtype]:
        """branch1's conv weight dtype (the fused path's compute dtype); None when branch1 is not
        a block with a plain conv weight (reworked module: the plain path runs)."""
        conv = self._modules["branch1"]._modules.get("conv")
        w = conv._parameters.get("weight") if conv is not None else None
        return None if w is None else w.dtype

    def forward(self, x: Tensor) -> Tensor:
        if self.fused and not _plain_modules_needed():
            y = self._forward_fused(x)
            if y is not None:
                return y
        return torch.cat(self._forward(x), 1)

    def _bns_in_eval(self) -> bool:
        """Whether no block's BatchNorm is in train mode: eval mode folds the BatchNorms, which a
        BatchNorm left in train mode inside an eval model (test-time adaptation) must not: it
        normalizes with batch statistics and updates its running ones (the plain branches run)."""
        try:
            blocks = self._blocks()
        except (AttributeError, IndexError, KeyError, TypeError):  # not the plain structure: no fold
            return False
        return not any(getattr(b, "bn", None) is not None and b.bn.training for b in blocks)

    def _forward_fused(self, x: Tensor) -> Optional[Tensor]:
        """The fused paths (train: :meth:`_forward_train_fused`, eval: the fused op on the folded
        weights), or None where they do not apply (the plain branches then run).  An empty batch
        in train mode takes the plain branches (nn.BatchNorm2d's handling of it: statistics kept,
        num_batches_tracked counted, as torchvision's model does)."""
        if self.training and x.numel() == 0:
            return None
        if self.training and self._weight_dtype() is not None:
            dtype = _compute_dtype(x, self._weight_dtype())
            if not (dtype == torch.float16 and x.device.type == "cpu"):
                y = self._forward_train_fused(x, dtype)
                if y is not None:
                    return y
        if not self.training and self._weight_dtype() is not None and self._bns_in_eval():
            dtype = _compute_dtype(x, self._weight_dtype())
            # The C++ CPU kernel has no float16 (ATen's CPU convolutions do): plain path there.
            if not (dtype == torch.float16 and x.device.type == "cpu"):
                folded = self._cached_fold(dtype)  # None: not a module the fused op computes
                if folded is not None:
                    self._check_x(x, folded[0].shape[1])
                    if x.dtype != dtype:
                        x = x.to(dtype)
                    # The weights are ours and well-formed; the kernels still check x.
                    with self._prepacking(folded), _below_autograd_without_grad():
                        return ops.inception(x, *folded, relu=True, validate=False)
        return None


class InceptionAux(nn.Module):
    """torchvision's auxiliary head: adaptive avg pool 4x4, BasicConv2d 1x1 128, fc 2048->1024,
    ReLU, dropout, fc."""

    def __init__(self, in_channels: int, num_classes: int,
                 conv_block: Optional[Callable[..., nn.Module]] = None, dropout: float = 0.7) -> None:
        super().__init__()
        if conv_block is None:
            conv_block = BasicConv2d
        self.conv = conv_block(in_channels, 128, kernel_size=1)
        self.fc1 = nn.Linear(2048, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(p=dropout)

    def _pool(self, x: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(x, (4, 4))

    def forward(self, x: Tensor) -> Tensor:
        x = self._pool(x)
        x = self.conv(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x), inplace=True)
        x = self.dropout(x)
        return self.fc2(x)


class PaperInceptionAux(InceptionAux):
    """The paper's auxiliary head: avg pool 5x5/3, 1x1 conv 128 + bias + ReLU, fc 1024 + ReLU,
    dropout 0.7, fc.

    On the 14x14 map of a 224 input the pool gives 4x4x128 = 2048 features.  For other input
    sizes the 5x5/3 pool is used while it yields 4x4 (maps of 14 to 16); otherwise an adaptive
    average pool to 4x4 replaces it so that fc1 still sees 2048 features.
    """

    def __init__(self, in_channels: int, num_classes: int,
                 conv_block: Optional[Callable[..., nn.Module]] = None, dropout: float = 0.7) -> None:
        # The same layers as torchvision's head (conv, fc1 2048->1024, fc2, dropout); only the
        # default conv block (bias + ReLU) and the pooling in forward differ.
        super().__init__(in_channels, num_classes, conv_block or ConvReLU, dropout)

    def _pool(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2], x.shape[-1]
        if pool_output_size(h, 5, 3, ceil_mode=False) == 4 and pool_output_size(w, 5, 3, ceil_mode=False) == 4:
            return F.avg_pool2d(x, kernel_size=5, stride=3)
        return F.adaptive_avg_pool2d(x, (4, 4))


# ------------------------------------------------------------------------------------------------
# Spatial sizes

class InputTooSmallError(ValueError, RuntimeError):
    """The input is too small for GoogLeNet's max pools.  A ValueError naming the minimum size;
    also a RuntimeError, the type torchvision's model raises for it (max_pool2d's "Output size is
    too small"), so code written for torchvision catches it too."""

class InputTypeError(TypeError, RuntimeError):
    """The input is not a floating-point tensor.  A TypeError naming the dtype; also a
    RuntimeError, the type torchvision's model raises for it (conv2d's "expected scalar type"), so
    code written for torchvision catches it too."""


class InputShapeError(ValueError, RuntimeError):
    """The input is not (N, 3, H, W).  A ValueError naming the shape; also a RuntimeError, the
    type torchvision's model raises for it (conv2d's "expected input ... to have 3 channels")."""


def _trunk_sizes(size: int, variant: str) -> Optional[List[int]]:
    """Spatial length after conv1, maxpool1, maxpool2, maxpool3, maxpool4 for an input length;
    None when a pool's output would be empty."""
    s = (size + 2 * 3 - 7) // 2 + 1  # conv1 7x7/2 pad 3
    if s < 1:
        return None
    sizes = [s]
    last = 2 if variant == "torchvision" else 3
    for k in (3, 3, 3, last):
        s = pool_output_size(s, k, 2)
        if s < 1:
            return None
        sizes.append(s)
    return sizes


def _min_input_size(variant: str) -> int:
    size = 1
    while _trunk_sizes(size, variant) is None:
        size += 1
    # the sizes above it are valid too (checked up to a generous bound in the tests)
    return size


_MIN_SIZE = {v: _min_input_size(v) for v in VARIANTS}


# ------------------------------------------------------------------------------------------------
# The network

class GoogLeNet(nn.Module):
    """GoogLeNet (Inception v1), torchvision-compatible, with fused Inception modules.

    Args:
        num_classes, aux_logits, transform_input, init_weights, blocks, dropout_aux: as
            ``torchvision.models.GoogLeNet``.  ``init_weights`` None means True; for
            ``variant="torchvision"`` it warns exactly as torchvision (FutureWarning).  True gives,
            for ``variant="torchvision"``, trunc_normal(std 0.01)
            for conv/linear weights, BatchNorm weight 1 and bias 0 (the same values as torchvision
            under the same seed).  For ``variant="paper"`` True/None gives Caffe's bvlc_googlenet
            fillers: "xavier" uniform(+-sqrt(3 / fan_in)) weights, conv biases 0.2, linear biases 0.
            ``blocks`` = [conv_block, inception_block, inception_aux_block]; default
            [BasicConv2d, Inception, InceptionAux] (torchvision) or
            [ConvReLU, Inception, PaperInceptionAux] (paper).
        dropout: head dropout; None (default) means 0.2 for torchvision and 0.4 for the paper.
        variant: "torchvision" (layer for layer torchvision's model, state_dict keys included) or
            "paper" (Table 1 of the paper; module names as torchvision's where the layer exists,
            plus ``lrn1``/``lrn2``; ``maxpool4`` is 3x3/2; head avg pool 7x7 done as an adaptive
            1x1 pool, identical at 224 and defined for other sizes).
        fused: run the fused eval path (see the module docstring).  Settable later through the
            ``fused`` property or :meth:`set_fused`, which propagate to every Inception module and
            to the stem's BasicConv2d modules (conv1, conv2, conv3).

    Folded weights: cached under ``torch.no_grad()``/``inference_mode()`` (with gradients
    enabled and parameters requiring grad they are folded inline on every call, so gradients
    reach the parameters).  The cache sees optimizer steps, ``load_state_dict`` and ``.to()``
    (version counters and storage); after writing parameters through ``.data`` call
    :meth:`clear_folded_cache`, or opt in to a content check on CPU (~7 ms per batch-1 forward,
    2-core Xeon) with ``Inception.verify_folded_cache = BasicConv2d.verify_folded_cache = True``.
    Built or converted under ``torch.inference_mode()``, parameters and buffers are still made
    as normal tensors (:func:`googlenet_fast.fold_cache.version_counted`).

    Forward: ``x`` (N, 3, H, W) floating, H and W at least 15 (torchvision) / 31 (paper) so that
    no max pool has an empty output.  Eval mode (or ``aux_logits=False``) returns the (N,
    num_classes) logits; train mode with ``aux_logits`` returns ``GoogLeNetOutputs(logits,
    aux_logits2, aux_logits1)`` (torchvision's namedtuple class).
    """

    __constants__ = ["aux_logits", "transform_input"]

    @version_counted
    def __init__(
        self,
        num_classes: int = 1000,
        aux_logits: bool = True,
        transform_input: bool = False,
        init_weights: Optional[bool] = None,
        blocks: Optional[Sequence[Callable[..., nn.Module]]] = None,
        dropout: Optional[float] = None,
        dropout_aux: float = 0.7,
        variant: str = "torchvision",
        fused: bool = True,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")
        paper = variant == "paper"
        if blocks is None:
            blocks = [ConvReLU, Inception, PaperInceptionAux] if paper else [BasicConv2d, Inception, InceptionAux]
        if init_weights is None and not paper:
            warnings.warn(
                "The default weight initialization of GoogleNet will be changed in future releases of "
                "torchvision. If you wish to keep the old behavior (which leads to long initialization times"
                " due to scipy/scipy#11299), please set init_weights=True.",
                FutureWarning,
            )
        if init_weights is None:
            init_weights = True
        if len(blocks) != 3:
            raise ValueError(f"blocks length should be 3 instead of {len(blocks)}")
        if dropout is None:
            dropout = 0.4 if paper else 0.2
        conv_block, inception_block, inception_aux_block = blocks

        self.variant = variant
        self.aux_logits = aux_logits
        self.transform_input = transform_input
        self._fused = bool(fused)

        # torchvision builds its Inception modules with their default conv block; the paper
        # variant passes its own and the true 5x5 kernel.
        inc_kwargs = {}
        if paper:
            inc_kwargs.update(conv_block=conv_block, kernel_5x5=5)
        if isinstance(inception_block, type) and issubclass(inception_block, Inception):
            inc_kwargs["fused"] = fused

        def inception(*channels):
            return inception_block(*channels, **inc_kwargs)

        self.conv1 = conv_block(3, 64, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        if paper:
            self.lrn1 = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
        self.conv2 = conv_block(64, 64, kernel_size=1)
        self.conv3 = conv_block(64, 192, kernel_size=3, padding=1)
        if paper:
            self.lrn2 = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)

        self.inception3a = inception(192, 64, 96, 128, 16, 32, 32)
        self.inception3b = inception(256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)

        self.inception4a = inception(480, 192, 96, 208, 16, 48, 64)
        self.inception4b = inception(512, 160, 112, 224, 24, 64, 64)
        self.inception4c = inception(512, 128, 128, 256, 24, 64, 64)
        self.inception4d = inception(512, 112, 144, 288, 32, 64, 64)
        self.inception4e = inception(528, 256, 160, 320, 32, 128, 128)
        self.maxpool4 = nn.MaxPool2d(3 if paper else 2, stride=2, ceil_mode=True)

        self.inception5a = inception(832, 256, 160, 320, 32, 128, 128)
        self.inception5b = inception(832, 384, 192, 384, 48, 128, 128)

        if aux_logits:
            self.aux1 = inception_aux_block(512, num_classes, dropout=dropout_aux)
            self.aux2 = inception_aux_block(528, num_classes, dropout=dropout_aux)
        else:
            self.aux1 = None  # type: ignore[assignment]
            self.aux2 = None  # type: ignore[assignment]

        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(1024, num_classes)

        if init_weights:
            if paper:
                self._init_paper()
            else:
                for m in self.modules():
                    if isinstance(m, nn.Conv2d) or isinstance(m, nn.Linear):
                        torch.nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
                    elif isinstance(m, nn.BatchNorm2d):
                        nn.init.constant_(m.weight, 1)
                        nn.init.constant_(m.bias, 0)
        self.set_fused(fused)

    def _init_paper(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                bound = math.sqrt(3.0 / fan_in)
                nn.init.uniform_(m.weight, -bound, bound)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0.2 if isinstance(m, nn.Conv2d) else 0.0)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    # -- fused switch ----------------------------------------------------------------------------
    @property
    def fused(self) -> bool:
        """Whether eval mode runs the fused path; setting it propagates (see :meth:`set_fused`)."""
        return self._fused

    @fused.setter
    def fused(self, value: bool) -> None:
        self.set_fused(value)

    def set_fused(self, fused: bool = True) -> "GoogLeNet":
        """Switch the fused eval path on or off for every Inception module and the stem's
        BasicConv2d modules (conv1, conv2, conv3); returns self."""
        fused = bool(fused)
        self.__dict__["_fused"] = fused
        for m in self.modules():
            if isinstance(m, Inception):
                m.fused = fused
        for name in ("conv1", "conv2", "conv3"):
            m = getattr(self, name)
            if isinstance(m, BasicConv2d):
                m.fused = fused
        return self

    def clear_folded_cache(self) -> None:
        """Drop every module's cached folded weights (rebuilt on the next fused eval call) and the
        programs recorded from them (the CPU op programs of googlenet_fast/cpu_program.py, the
        CUDA launch programs of googlenet_fast/backends/triton/program.py; recorded again)."""
        self._drop_programs()
        for m in self.modules():
            if isinstance(m, _FoldedWeightsCache):
                m.clear_folded_cache()
        fold_cache.clear_packed_parameters()  # the head's packed fc.weight (see _head)

    def _drop_programs(self) -> None:
        for attr in PROGRAM_ATTRS:
            self.__dict__.pop(attr, None)

    @version_counted
    def _apply(self, *args, **kwargs):
        self._drop_programs()  # .to() / .double() / .cuda(): the programs' constants are stale
        return super()._apply(*args, **kwargs)

    def __getstate__(self):
        state = dict(super().__getstate__())
        for attr in PROGRAM_ATTRS:  # kernels and launchers: not picklable, not worth copying
            state.pop(attr, None)
        return state

    # -- forward ---------------------------------------------------------------------------------
    @property
    def min_input_size(self) -> int:
        """Smallest H (and W) for which no max pool's output is empty: 15 (torchvision), 31 (paper)."""
        return _MIN_SIZE[self.variant]

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"x: expected a Tensor of shape (N, 3, H, W), got {type(x).__name__}")
        # Each message is one f-string (no str + str): under torch.compile(fullgraph=True) with
        # dynamic shapes, dynamo cannot concatenate a formatted string with another one and would
        # replace the message with its own "missing sq_concat" error.
        if x.dim() != 4:
            hint = " (add a batch dimension with x.unsqueeze(0))" if x.dim() == 3 else ""
            raise InputShapeError(f"x: expected a 4-D tensor of shape (N, 3, H, W), got shape {tuple(x.shape)}{hint}")
        if x.shape[1] != 3:
            hint = "; for grayscale images use x.expand(-1, 3, -1, -1)" if x.shape[1] == 1 else ""
            raise InputShapeError(f"x: expected 3 input channels (RGB) in dim 1 of (N, 3, H, W), got {x.shape[1]} "
                             f"(shape {tuple(x.shape)}){hint}")
        if not x.is_floating_point():
            raise InputTypeError(f"x: expected a floating-point tensor, got {x.dtype}; integer images must be "
                            "converted first, e.g. x.float() / 255, then normalized")
        wdt = self._param_dtype()
        if wdt is not None and x.dtype != wdt and not _autocast_on(x.device.type):
            # as torchvision's model (its first conv raises "expected scalar type ..."), not a silent cast
            raise InputTypeError(f"x: expected dtype {wdt} (the model's parameters), got {x.dtype}; convert the "
                                 f"input (x.to({wdt})) or the model (e.g. model.to({x.dtype})), or run under torch.autocast")
        h, w = x.shape[2], x.shape[3]
        if _trunk_sizes(h, self.variant) is None or _trunk_sizes(w, self.variant) is None:
            m = self.min_input_size
            raise InputTooSmallError(
                f"x: expected a spatial size of at least {m}x{m} for GoogLeNet (variant={self.variant!r}), "
                f"got {h}x{w}: a max pool's output would be empty (output size is too small)")

    def _param_dtype(self) -> Optional[torch.dtype]:
        """The dtype of the model's first parameter (None without parameters)."""
        for p in self.parameters():
            return p.dtype
        return None

    def _transform_input(self, x: Tensor) -> Tensor:
        if self.transform_input:
            x_ch0 = torch.unsqueeze(x[:, 0], 1) * (0.229 / 0.5) + (0.485 - 0.5) / 0.5
            x_ch1 = torch.unsqueeze(x[:, 1], 1) * (0.224 / 0.5) + (0.456 - 0.5) / 0.5
            x_ch2 = torch.unsqueeze(x[:, 2], 1) * (0.225 / 0.5) + (0.406 - 0.5) / 0.5
            x = torch.cat((x_ch0, x_ch1, x_ch2), 1)
        return x

    def _cpu_eval_ops(self, x: Tensor) -> bool:
        """Whether the fused eval path on the CPU runs the stem and the transitions through the
        extension's ops (googlenet_fast::max_pool_nhwc, conv2d_relu): fused, eval, a CPU x, not
        under torch.compile (inductor then sees the plain modules) nor while exporting to ONNX.
        Under ``torch.autocast("cpu", torch.bfloat16)`` too: the convolutions then compute in
        bfloat16 (BasicConv2d._eval_conv, Inception.forward), as torchvision's would under autocast."""
        return (self._fused and not self.training and x.device.type == "cpu"
                and not torch.compiler.is_compiling() and ops.native.available()
                and not _plain_modules_needed())

    def _pool(self, pool: nn.Module, x: Tensor, cpu_ops: bool) -> Tensor:
        if self._fused and self.training and bn_train.cpu_fast_path_applies(x) and not _has_hooks(pool):
            # train mode, eager CPU: one-byte argmax taps (ATen's values and gradients, bit for bit)
            train_window = pool_train.pool_window(pool)
            if train_window is not None:
                return pool_train.max_pool2d_train(x, train_window)
        window = _ceil_max_pool(pool) if cpu_ops and not _has_hooks(pool) else None
        if window is None:
            return pool(x)
        with _below_autograd_without_grad():
            return ops.max_pool_nhwc(x, *window)

    def _conv_pool(self, conv: nn.Module, pool: nn.Module, x: Tensor, cpu_ops: bool) -> Tensor:
        """``pool(conv(x))``; with the CPU ops one googlenet_fast::conv2d_relu_max_pool call (a few
        images at a time, each group pooled while in cache), the ReLU in the pool's pass
        (relu(maxpool(y)) == maxpool(relu(y)), NaN included)."""
        window = _ceil_max_pool(pool) if cpu_ops and not _has_hooks(conv, pool) else None
        if window is not None and type(conv).forward is BasicConv2d.forward:
            y = conv._eval_conv(x, pool=window)
            if y is not None:
                return y
        if (self._fused and self.training and type(conv).forward is BasicConv2d.forward and not _has_hooks(pool)
                and conv._train_bn_relu_applies(x)):
            # train mode, bf16 (autocast): BatchNorm + ReLU computed inside the pool's window scan
            train_window = pool_train.pool_window(pool)
            pre = conv.conv(x)
            if train_window is not None and bn_train.bn_relu_max_pool_train_applies(pre, conv.bn):
                return bn_train.bn_relu_max_pool_train(pre, conv.bn, train_window)
            return self._pool(pool, bn_train.bn_relu_train(pre, conv.bn), cpu_ops)
        return self._pool(pool, conv(x), cpu_ops)

    def _forward(self, x: Tensor) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
        paper = self.variant == "paper"
        cpu_ops = self._cpu_eval_ops(x)
        x = self._conv_pool(self.conv1, self.maxpool1, x, cpu_ops)
        if paper:
            x = self.lrn1(x)
        x = self.conv2(x)
        if paper:
            x = self._pool(self.maxpool2, self.lrn2(self.conv3(x)), cpu_ops)
        else:
            x = self._conv_pool(self.conv3, self.maxpool2, x, cpu_ops)

        x = self.inception3a(x)
        x = self.inception3b(x)
        x = self._pool(self.maxpool3, x, cpu_ops)
        x = self.inception4a(x)
        aux1: Optional[Tensor] = None
        if self.aux1 is not None and self.training:
            aux1 = self.aux1(x)

        x = self.inception4b(x)
        x = self.inception4c(x)
        x = self.inception4d(x)
        aux2: Optional[Tensor] = None
        if self.aux2 is not None and self.training:
            aux2 = self.aux2(x)

        x = self.inception4e(x)
        x = self._pool(self.maxpool4, x, cpu_ops)
        x = self.inception5a(x)
        x = self.inception5b(x)

        x = self._head(x, cpu_ops)
        return x, aux2, aux1

    def _head(self, x: Tensor, cpu_ops: bool) -> Tensor:
        """avgpool, flatten, dropout, fc; with the CPU ops one googlenet_fast::avgpool_linear call
        (eval: the dropout is the identity) where the modules are the plain ones, without hooks,
        and fc's weight has x's dtype (under autocast nn.Linear would cast it: the modules run)."""
        avgpool, dropout, fc = self.avgpool, self.dropout, self.fc
        if (cpu_ops and type(avgpool) is nn.AdaptiveAvgPool2d and avgpool.output_size in (1, (1, 1))
                and type(dropout) is nn.Dropout and not dropout.training and type(fc) is nn.Linear
                and fc.weight.dtype == x.dtype and x.dtype in (torch.float32, torch.bfloat16, torch.float64)
                and not torch.is_autocast_enabled("cpu") and not _has_hooks(avgpool, dropout, fc)):
            # opt-in: fc.weight packed once for oneDNN where nothing needs its gradient (copies
            # dropped by clear_folded_cache() and optimizer steps), not where a module checks its
            # folds' contents (verify_folded_cache: .data writes need no clear_folded_cache() there)
            pack = (HEAD_PREPACK and not (torch.is_grad_enabled() and fc.weight.requires_grad)
                    and not fold_cache.verifying(m for m in self.modules() if isinstance(m, _FoldedWeightsCache)))
            with ops.weight_prepacking(pack), _below_autograd_without_grad():
                return ops.avgpool_linear(x, fc.weight, fc.bias)
        x = avgpool(x)
        x = torch.flatten(x, 1)
        x = dropout(x)
        return fc(x)

    def forward(self, x: Tensor):
        """(N, 3, H, W) -> logits (N, num_classes), or GoogLeNetOutputs in train mode with aux.

        Under ``torch.onnx.export`` (either exporter) the plain modules run, whatever ``fused``
        says: the exported graph is made of standard ONNX operators, the one torchvision's
        googlenet exports for the same weights (see :func:`_exporting_to_onnx`)."""
        if self._fused and not self.training:
            # A valid CPU op program first: it implies the checks below (its recorded forward
            # passed them); skipping them saved ~30 us per call (bfloat16 batch 1, 2-core Xeon,
            # 2026-12-06: 32x32 input 790 -> 758 us, 224x224 ~0.5%, inside the noise).  None
            # under export, tracing, compiling and dispatch modes, and on other devices.
            y = cpu_program.replay(self, x)
            if y is not None:
                return y
        self._check_input(x)
        if self._fused and _plain_modules_needed():
            return self._forward_modules(x, channels_last=False)
        if self._fused and not self.training and x.device.type == "cuda":
            y = ops.fused_network_forward(self, x)  # the whole network in Triton kernels, or None
            if y is not None:
                return y
        if self._fused and not self.training and x.device.type == "cpu":
            y = cpu_program.record(self, x)  # the modules' ops recorded for the next calls, or None
            if y is not None:
                return y
        return self._forward_modules(x)

    def _forward_modules(self, x: Tensor, channels_last: Optional[bool] = None):
        """The forward through the modules (the fused Inception op per module when fused).
        ``channels_last`` (default: ``fused``): convert x to channels_last at the entry."""
        x = self._transform_input(x)
        if self._fused if channels_last is None else channels_last:
            # NHWC is the fused kernels' native layout: convert once here, not per module.
            x = x.contiguous(memory_format=torch.channels_last)
        x, aux2, aux1 = self._forward(x)
        if self.training and self.aux_logits:
            return GoogLeNetOutputs(x, aux2, aux1)
        return x


# ------------------------------------------------------------------------------------------------
# Builder

def _overwrite_named_param(kwargs: dict, param: str, new_value: Any) -> None:
    if param in kwargs:
        if kwargs[param] != new_value:
            raise ValueError(f"The parameter '{param}' expected value {new_value} but got {kwargs[param]} instead.")
    else:
        kwargs[param] = new_value


def googlenet(weights=None, progress: bool = True, **kwargs: Any) -> GoogLeNet:
    """Build :class:`GoogLeNet` as ``torchvision.models.googlenet`` does.

    Args:
        weights: None, a ``torchvision.models.GoogLeNet_Weights`` member, or its name
            ("IMAGENET1K_V1", "DEFAULT", "GoogLeNet_Weights.IMAGENET1K_V1").  Loaded through
            ``weights.get_state_dict(progress=progress, check_hash=True)`` (torchvision's download
            and cache).  With weights: ``transform_input`` defaults to True, ``init_weights`` is
            False, ``num_classes`` comes from the weights' categories; the model is built with aux
            heads, loaded strictly, and the heads dropped (``aux_logits=False``) unless
            ``aux_logits=True`` was asked for (they are not pretrained: a warning says so).
            The weights are torchvision's: only ``variant="torchvision"``.
        progress: show a download progress bar.
        **kwargs: passed to :class:`GoogLeNet` (``fused``, ``variant``, ...).  The legacy
            ``pretrained=True`` means ``weights="IMAGENET1K_V1"``.
    """
    from torchvision.models import GoogLeNet_Weights

    if "pretrained" in kwargs:
        pretrained = kwargs.pop("pretrained")
        if weights is not None:
            raise ValueError("googlenet: give either weights or pretrained, not both")
        warnings.warn("googlenet: 'pretrained' is deprecated, use weights=GoogLeNet_Weights.IMAGENET1K_V1",
                      UserWarning)
        weights = GoogLeNet_Weights.IMAGENET1K_V1 if pretrained else None
    try:
        weights = GoogLeNet_Weights.verify(weights)
    except KeyError:
        names = ", ".join(GoogLeNet_Weights.__members__)
        raise ValueError(f"weights: expected None, a GoogLeNet_Weights member or one of its names "
                         f"({names}), got {weights!r}") from None

    original_aux_logits = kwargs.get("aux_logits", False)
    if weights is not None:
        if kwargs.get("variant", "torchvision") != "torchvision":
            raise ValueError(f"googlenet: {weights} are torchvision's weights; they need "
                             f"variant='torchvision', got variant={kwargs['variant']!r}")
        if "transform_input" not in kwargs:
            _overwrite_named_param(kwargs, "transform_input", True)
        _overwrite_named_param(kwargs, "aux_logits", True)
        _overwrite_named_param(kwargs, "init_weights", False)
        _overwrite_named_param(kwargs, "num_classes", len(weights.meta["categories"]))

    model = GoogLeNet(**kwargs)

    if weights is not None:
        model.load_state_dict(weights.get_state_dict(progress=progress, check_hash=True))
        if not original_aux_logits:
            model.aux_logits = False
            model.aux1 = None  # type: ignore[assignment]
            model.aux2 = None  # type: ignore[assignment]
        else:
            warnings.warn(
                "auxiliary heads in the pretrained googlenet model are NOT pretrained, so make sure to train them"
            )
    return model
