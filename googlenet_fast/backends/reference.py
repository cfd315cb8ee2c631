"""The reference Inception module in plain PyTorch: the oracle every fused kernel is tested against.

It follows torchvision.models.googlenet.Inception (and, with K=5, the paper's Figure 3(b)):
four branches over x, concatenated along channels.  It materializes every intermediate.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def pool_output_size(size: int, kernel: int, stride: int, padding: int = 0, ceil_mode: bool = True) -> int:
    """Output length of a max/avg pool along one dim, exactly as ATen's pooling_output_shape
    (ceil mode: the last window may hang over the edge but must start inside the input or its
    left padding).  Works on SymInts (fake kernels)."""
    out = (size + 2 * padding - (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def inception_reference(
    x: Tensor,
    w_1x1: Tensor, b_1x1: Optional[Tensor],
    w_3x3red: Tensor, b_3x3red: Optional[Tensor],
    w_3x3: Tensor, b_3x3: Optional[Tensor],
    w_5x5red: Tensor, b_5x5red: Optional[Tensor],
    w_5x5: Tensor, b_5x5: Optional[Tensor],
    w_pool_proj: Tensor, b_pool_proj: Optional[Tensor],
    relu: bool = True,
) -> Tensor:
    """Inception module forward, unfused: ``cat(b1, b2, b3, b4, dim=1)``.

    Same arguments and result as :func:`googlenet_fast.inception`.  The pool branch uses
    ``max_pool2d(3, stride=1, padding=1, ceil_mode=True)`` (padding is -inf), as torchvision does.
    """
    act = F.relu if relu else (lambda t: t)
    b1 = act(F.conv2d(x, w_1x1, b_1x1))
    r3 = act(F.conv2d(x, w_3x3red, b_3x3red))
    b2 = act(F.conv2d(r3, w_3x3, b_3x3, padding=w_3x3.shape[-1] // 2))
    r5 = act(F.conv2d(x, w_5x5red, b_5x5red))
    b3 = act(F.conv2d(r5, w_5x5, b_5x5, padding=w_5x5.shape[-1] // 2))
    pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1, ceil_mode=True)
    b4 = act(F.conv2d(pooled, w_pool_proj, b_pool_proj))
    return torch.cat([b1, b2, b3, b4], dim=1)


def inception_bn_train_reference(
    x: Tensor, w_1x1: Tensor, w_3x3red: Tensor, w_3x3: Tensor, w_5x5red: Tensor, w_5x5: Tensor,
    w_pool_proj: Tensor, reduce_weight: Tensor, reduce_bias: Tensor, eps: float,
):
    """The train-mode BatchNorm stage, unfused: same arguments and results as
    :func:`googlenet_fast.inception_bn_train` (pre-BN branch outputs, pre-BN reduce outputs, the
    reduce outputs' batch mean and biased variance), computed with conv2d / var_mean / relu."""
    cl = torch.channels_last
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    r3 = w_3x3red.shape[0]
    reduce = F.conv2d(x, torch.cat([w_3x3red, w_5x5red], 0))
    var, mean = torch.var_mean(reduce.to(acc), dim=(0, 2, 3), correction=0)
    scale = reduce_weight.to(acc) * torch.rsqrt(var + eps)
    shift = reduce_bias.to(acc) - mean * scale
    act = F.relu(reduce.to(acc) * scale[:, None, None] + shift[:, None, None]).to(x.dtype)
    b1 = F.conv2d(x, w_1x1)
    b2 = F.conv2d(act[:, :r3], w_3x3, padding=w_3x3.shape[-1] // 2)
    b3 = F.conv2d(act[:, r3:], w_5x5, padding=w_5x5.shape[-1] // 2)
    b4 = F.conv2d(F.max_pool2d(x, 3, 1, 1, ceil_mode=True), w_pool_proj)
    out = torch.cat([b1, b2, b3, b4], 1).contiguous(memory_format=cl)
    return out, reduce.contiguous(memory_format=cl), mean, var
