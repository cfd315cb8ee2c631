// googlenet_fast: the exact bfloat16 BatchNorm apply shared by csrc/cpu/bn_relu_train_cpu.cpp
// (bn_relu_apply, bn_relu_backward's mask from pre) and csrc/cpu/max_pool_train_cpu.cpp
// (max_pool2d_tap_bn_relu): ATen's train-mode BatchNorm output computed as ATen computes it.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace googlenet_fast {

// Whether this process's ATen computes a dense bfloat16 input's train-mode BatchNorm output as
// fma(x, alpha, fma(-mean, alpha, beta)) and the AVX-512 loops run (checked once, see
// bn_relu_train_cpu.cpp).
bool bn_bf16_exact_apply();

// Whether bn_relu_backward may recompute the ReLU mask from pre for dtype: for float32, whether
// ATen's float32 apply is fma(x, alpha, fma(-mean, alpha, beta)) and the AVX-512 loops run.
bool bn_mask_from_pre(at::ScalarType dtype);

// invstd as ATen's InvStd<double> of the biased variance: 1 / sqrt(var + eps) in double, 0 where
// var and eps are both 0.  var: (C,) float32; returns (C,) float32.
at::Tensor bn_invstd(const at::Tensor& var, double eps);

// alpha = invstd * gamma, beta' = fma(-mean, alpha, beta), per channel (float32 (C,) inputs).
void bn_alpha_beta(const at::Tensor& mean, const at::Tensor& invstd, const at::Tensor& gamma, const at::Tensor& beta,
                   std::vector<float>& alpha, std::vector<float>& beta_out);

}  // namespace googlenet_fast
