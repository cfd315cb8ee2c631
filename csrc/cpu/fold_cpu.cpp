// googlenet_fast: BatchNorm folded into a convolution weight in one pass (CPU).
//
// googlenet_fast::fold_conv_weight(weight, scale, dtype) -> folded
//   folded[o, ...] = dtype(acc(weight[o, ...]) * scale[o]), acc = scale's dtype (float64, or
//   float32 for half-precision targets): bit for bit what googlenet_fast/fold_cache.py's
//   composition `(weight.to(acc) * scale.reshape(-1, 1, 1, 1)).to(dtype)` computes (the same
//   conversions, one IEEE multiply in acc, the same rounding to dtype), in one pass over the
//   weight instead of three (to acc, multiply, to dtype) with two acc-sized temporaries.
//   Why: eval with gradients to the parameters folds on every call (the fold must be part of the
//   autograd graph), and the composition's passes over GoogLeNet's 6.6 M weights were ~7 ms of a
//   24 ms batch-1 float32 forward on the 2-core EPYC (2026-12-05,
//   benchmarks/results/cpu-eval-grad-2026-12-05.md).  Its autograd formula is the composition's
//   (googlenet_fast/fold_cache.py registers it).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

namespace googlenet_fast {
namespace {

template <typename T, typename A, typename O>
void fold_rows(const T* w, const A* s, O* out, int64_t rows, int64_t inner) {
  at::parallel_for(0, rows, std::max<int64_t>(1, 32768 / std::max<int64_t>(1, inner)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const A scale = s[r];
      const T* src = w + r * inner;
      O* dst = out + r * inner;
      // the composition's conversions: T -> A exact (A is at least as wide), A -> O as ATen's
      // copy converts (double -> BFloat16 through float, as static_cast does there)
      for (int64_t i = 0; i < inner; ++i) dst[i] = static_cast<O>(static_cast<A>(src[i]) * scale);
    }
  });
}

at::Tensor fold_conv_weight_cpu(const at::Tensor& weight, const at::Tensor& scale, at::ScalarType dtype) {
  TORCH_CHECK_VALUE(weight.defined(), "weight: expected a tensor, got None");
  TORCH_CHECK_VALUE(scale.defined(), "scale: expected a tensor, got None");
  TORCH_CHECK_VALUE(scale.device() == weight.device(), "scale: expected a tensor on weight's device ",
                    weight.device(), ", got ", scale.device());
  TORCH_CHECK_VALUE(weight.dim() >= 1 && (weight.scalar_type() == at::kFloat || weight.scalar_type() == at::kDouble ||
                                            weight.scalar_type() == at::kBFloat16 || weight.scalar_type() == at::kHalf),
                    "weight: expected a float32, float64, bfloat16 or float16 tensor with an output-channel dimension, "
                    "got ", weight.sizes(), " ", weight.scalar_type());
  TORCH_CHECK_VALUE(scale.dim() == 1 && scale.size(0) == weight.size(0), "scale: expected shape (", weight.size(0),
                    ",) (weight's output channels), got ", scale.sizes());
  TORCH_CHECK_TYPE(scale.scalar_type() == at::kDouble || scale.scalar_type() == at::kFloat,
                   "scale: expected float64 or float32 (the fold's accumulation type), got ", scale.scalar_type());
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16 || dtype == at::kHalf,
                   "dtype: expected float32, float64, bfloat16 or float16, got ", dtype);
  TORCH_CHECK_TYPE(at::elementSize(scale.scalar_type()) >= at::elementSize(weight.scalar_type()),
                   "scale: expected a dtype at least as wide as weight's ", weight.scalar_type(), ", got ",
                   scale.scalar_type());
  const at::Tensor w = weight.contiguous(), s = scale.contiguous();
  at::Tensor out = at::empty(weight.sizes(), weight.options().dtype(dtype));
  const int64_t rows = w.size(0), inner = rows == 0 ? 0 : w.numel() / rows;
  if (w.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, w.scalar_type(), "fold_conv_weight_w", [&] {
    using T = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "fold_conv_weight_out", [&] {
      using O = scalar_t;
      if (s.scalar_type() == at::kDouble) {
        fold_rows<T, double, O>(w.const_data_ptr<T>(), s.const_data_ptr<double>(), out.data_ptr<O>(), rows, inner);
      } else {
        fold_rows<T, float, O>(w.const_data_ptr<T>(), s.const_data_ptr<float>(), out.data_ptr<O>(), rows, inner);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(googlenet_fast, m) {
  // BatchNorm folded into a conv weight in one pass: (weight.to(scale.dtype) * scale[:, None, ...]).to(dtype)
  m.def("fold_conv_weight(Tensor weight, Tensor scale, ScalarType dtype) -> Tensor");
}

TORCH_LIBRARY_IMPL(googlenet_fast, CPU, m) { m.impl("fold_conv_weight", &fold_conv_weight_cpu); }

}  // namespace googlenet_fast
