"""The train-mode BatchNorm forward stage of the Inception module on Triton (issue 5, item 2).

In train mode the BatchNorm after each conv needs batch statistics, so nothing can be folded into
the weights: the fused op computes the PRE-BatchNorm conv outputs, and BatchNorm (and its ReLU)
of the four branch outputs is left to the caller.  The two reduce convs feed the KxK convs
through their BatchNorm + ReLU, which is applied here, between the two launches:

  stage 1 (stage1.py, relu off, no bias): branch 1 and the pool projection into their channel
          slices of ``out``; the two reduce outputs into ``reduce`` (N, ch3x3red + ch5x5red, H, W)
          channels_last, which is stage 1's scratch matrix red[N*H*W, ch3x3red + ch5x5red] itself;
  stats:  mean and biased variance of ``reduce`` over N, H, W (torch.var_mean in fp32), folded
          with the BatchNorm weight and bias into a per-channel scale and shift;
  stage 2 (stage2.py, BN=True): its A loader applies relu(v * scale + shift) to ``reduce`` (taps
          outside the image stay 0: padding after the activation, as the unfused module pads the
          ReLU output), then the KxK implicit GEMMs, no bias and no ReLU in the epilogue.

Plain Python (the caller registers the op and its autograd): launches go through wrap_triton on
CUDA and run directly under the interpreter (CPU tensors, TRITON_INTERPRET=1).
dtypes: float32, float16, bfloat16 (fp32 accumulation); float64 is not supported by the Triton
kernels (use the CPU backend).
"""
from typing import Tuple

import torch
from torch import Tensor


def inception_bn_train_triton(x: Tensor, w_1x1: Tensor, w_3x3red: Tensor, w_3x3: Tensor,
                              w_5x5red: Tensor, w_5x5: Tensor, w_pool_proj: Tensor,
                              reduce_weight: Tensor, reduce_bias: Tensor,
                              eps: float) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Returns ``(out, reduce, reduce_mean, reduce_var)``:

    * out: (N, ch1x1 + ch3x3 + ch5x5 + pool_proj, H, W) channels_last in x's dtype: the four
      branches' conv outputs before their BatchNorm (no bias, no ReLU), each in its channel slice;
    * reduce: (N, ch3x3red + ch5x5red, H, W) channels_last: the two reduce convs' outputs before
      their BatchNorm;
    * reduce_mean, reduce_var: (ch3x3red + ch5x5red,) float32: batch mean and biased variance
      of ``reduce`` over N, H, W.
    ``reduce_weight``, ``reduce_bias``: (ch3x3red + ch5x5red,) BatchNorm affine parameters of the
    two reduce convs (any float dtype, e.g. float32 under autocast with bf16 x); the KxK convs
    read relu((reduce - mean) * rsqrt(var + eps) * reduce_weight + reduce_bias)."""
    from torch.library import wrap_triton

    from . import (_shape, _single_threaded_blas, autotuning, check_triton_args, configs,
                   interpreting, kernels, plan_launch)
    from .plan import FORCE_TILE

    weights = [("w_1x1", w_1x1), ("w_3x3red", w_3x3red), ("w_3x3", w_3x3), ("w_5x5red", w_5x5red),
               ("w_5x5", w_5x5), ("w_pool_proj", w_pool_proj)]
    check_triton_args(x, weights)
    n, cin, h, w = _shape(x, w_1x1, w_3x3red, w_3x3, w_5x5red, w_5x5, w_pool_proj)
    r3, r5 = w_3x3red.shape[0], w_5x5red.shape[0]
    nr = r3 + r5
    for name, t in (("reduce_weight", reduce_weight), ("reduce_bias", reduce_bias)):
        if not isinstance(t, Tensor) or t.dim() != 1 or t.shape[0] != nr:
            raise ValueError(f"{name}: expected shape ({nr},) (ch3x3red + ch5x5red), got "
                             f"{tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name}: expected a floating dtype, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{name}: expected a tensor on {x.device} (the device of x), got {t.device}")
    c = w_1x1.shape[0] + w_3x3.shape[0] + w_5x5.shape[0] + w_pool_proj.shape[0]
    cl = torch.channels_last
    out = torch.empty((n, c, h, w), dtype=x.dtype, device=x.device, memory_format=cl)
    reduce = torch.empty((n, nr, h, w), dtype=x.dtype, device=x.device, memory_format=cl)
    P = n * h * w
    if P == 0 or x.device.type == "meta":
        stats = torch.var_mean(reduce.float(), dim=(0, 2, 3), correction=0)
        return out, reduce, stats[1], stats[0]
    interpret = interpreting()
    plan = plan_launch(x, w_1x1, None, w_3x3red, None, w_3x3, None, w_5x5red, None, w_5x5, None,
                       w_pool_proj, None, False, out, interpret)
    red = reduce.permute(0, 2, 3, 1).reshape(P, nr)  # the NHWC matrix of `reduce` (a view)
    args1 = dict(plan.args1, red_ptr=red, RR=nr)
    k = kernels(interpret)
    g1 = k.stage1.grid(plan.P, plan.NM, plan.CP)
    g2 = k.stage2.grid(plan.P, plan.C3, plan.C5)

    def stage2_args():
        var, mean = torch.var_mean(reduce.float(), dim=(0, 2, 3), correction=0)
        scale = reduce_weight.float() * torch.rsqrt(var + eps)
        shift = reduce_bias.float() - mean * scale
        ss = torch.stack([scale, shift])  # [2, nr] fp32: the loader's per-channel affine map
        return dict(plan.args2, red_ptr=red, RR=nr, ss_ptr=ss, BN=True), mean, var

    if interpret:
        t1 = configs.interpret_tile(1, plan.P, plan.R3, plan.R5)
        t2 = configs.interpret_tile(2, plan.P, plan.R3, plan.R5)
        with _single_threaded_blas():
            k.stage1.inception_stage1_kernel[g1](**args1, **t1.meta(1))
            args2, mean, var = stage2_args()
            k.stage2.inception_stage2_kernel[g2](**args2, **t2.meta(2))
        return out, reduce, mean, var
    if autotuning():
        wrap_triton(k.stage1_half if plan.half else k.stage1_fp32)[g1](**args1)
        args2, mean, var = stage2_args()
        wrap_triton(k.stage2_half if plan.half else k.stage2_fp32)[g2](**args2)
        return out, reduce, mean, var
    t1 = FORCE_TILE[0] if FORCE_TILE else configs.heuristic_tile(1, plan.P, plan.half)
    t2 = FORCE_TILE[1] if FORCE_TILE else configs.heuristic_tile(2, plan.P, plan.half)
    wrap_triton(k.stage1.inception_stage1_kernel)[g1](
        **args1, **t1.meta(1), num_warps=t1.num_warps, num_stages=t1.num_stages)
    args2, mean, var = stage2_args()
    wrap_triton(k.stage2.inception_stage2_kernel)[g2](
        **args2, **t2.meta(2), num_warps=t2.num_warps, num_stages=t2.num_stages)
    return out, reduce, mean, var
