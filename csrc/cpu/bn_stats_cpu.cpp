// googlenet_fast: ATen's train-mode BatchNorm batch statistics of a float32 channels_last tensor,
// bit for bit, at memory speed.
//
// googlenet_fast::bn_batch_stats(x, running_mean?, running_var?, momentum) -> (mean, var)
//   what torch.batch_norm_update_stats(x, running_mean, running_var, momentum) returns and does
//   (the biased batch variance; running statistics updated in place with the unbiased one).
//
// Why: ATen's channels-last statistics (aten/src/ATen/native/cpu/batch_norm_kernel.cpp,
// batch_norm_cpu_collect_stats_channels_last_impl) add each pixel's row into a per-thread buffer
// in memory, one call of its vectorized map per pixel: 16-22 GB/s for its two read passes on the
// 2-core Xeon where one read pass (x.sum()) runs at 27-46 GB/s (2026-12-06,
// benchmarks/results/cpu-xeon-session-2026-12-06b.md).  Here the sums of 128 channels at a time
// stay in registers across a thread's rows.  The arithmetic is ATen's, in ATen's order:
//   rows split as at::parallel_for(0, rows, 1) splits them (get_num_threads() chunks of
//   ceil(rows / threads), one chunk outside a parallel region's reach), each chunk's float sum
//   pixel after pixel, the chunks added in double, mean = float(sum / rows); then the same for
//   (x - mean)^2 (fused or not into the add, as this ATen build does: checked once against ATen),
//   var_sum = float(double sum); with rows <= threads ATen's scalar double sums instead.  Then
//   batch_norm_cpu_update_stats_template's per-channel epilogue: var = var_sum / rows,
//   running_mean = m * mean + (1 - m) * running_mean (float), running_var = m * double(var_sum /
//   (rows - 1)) + (1 - m) * running_var.
// Used by googlenet_fast/bn_train.py where bn_batch_stats_exact() (the AVX-512 loops run and this
// file's result equals ATen's on probes, checked once per process); other inputs (other dtypes,
// NCHW-contiguous or strided tensors, no AVX-512) go to ATen's op inside.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

#include "avx512_lanes.h"

namespace googlenet_fast {
namespace {

constexpr int64_t kGroup = 128;  // channels summed in registers at a time (8 AVX-512 registers)

// The chunks ATen's at::parallel_for(0, rows, 1, f) hands its threads: [t * size, min(rows, (t+1) * size)).
struct Chunks {
  int64_t count, size;
};
Chunks aten_chunks(int64_t rows) {
  const int64_t threads = at::get_num_threads();
  if (rows <= 1 || threads <= 1 || at::in_parallel_region()) return {1, rows};
  const int64_t n = std::min(threads, rows);
  return {n, (rows + n - 1) / n};
}

#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#if GF_AVX512
// Sums over rows [r0, r1) of channels [c0, c0 + 128) (lanes beyond C masked): kVar: (x - mean)^2,
// with kFma as fma(d, d, acc), else acc + d * d rounded twice.  out: 128 floats.
template <bool kVar, bool kFma>
GF_AVX512_FN void group_sums(const float* X, int64_t C, int64_t r0, int64_t r1, int64_t c0, const float* mean,
                             float* out) {
  constexpr int kV = kGroup / 16;
  __mmask16 mk[kV];
  __m512 acc[kV], mu[kV];
#pragma GCC unroll 8
  for (int j = 0; j < kV; ++j) {
    mk[j] = avx512::lanes(C - c0 - 16 * j);
    acc[j] = _mm512_setzero_ps();
    mu[j] = kVar ? avx512::load16(mean + c0 + 16 * j, mk[j]) : _mm512_setzero_ps();
  }
  for (int64_t r = r0; r < r1; ++r) {
    const float* row = X + r * C + c0;
#pragma GCC unroll 8
    for (int j = 0; j < kV; ++j) {
      if (mk[j] == 0) continue;
      const __m512 v = avx512::load16(row + 16 * j, mk[j]);
      if constexpr (kVar) {
        const __m512 d = _mm512_sub_ps(v, mu[j]);
        acc[j] = kFma ? _mm512_fmadd_ps(d, d, acc[j]) : _mm512_add_ps(acc[j], _mm512_mul_ps(d, d));
      } else {
        acc[j] = _mm512_add_ps(acc[j], v);
      }
    }
  }
#pragma GCC unroll 8
  for (int j = 0; j < kV; ++j) _mm512_storeu_ps(out + 16 * j, acc[j]);
}
#endif

// Per channel: chunk sums (float) of x or of (x - mean)^2, added over the chunks in double.
template <bool kVar>
std::vector<double> channel_sums(const float* X, int64_t rows, int64_t C, const float* mean, bool fma_var) {
  const Chunks ch = aten_chunks(rows);
  const int64_t groups = (C + kGroup - 1) / kGroup;
  std::vector<float> part(static_cast<size_t>(ch.count * groups * kGroup), 0.0f);
  at::parallel_for(0, ch.count * groups, 1, [&](int64_t b, int64_t e) {
    for (int64_t task = b; task < e; ++task) {
      const int64_t t = task / groups, g = task % groups;
      const int64_t r0 = t * ch.size, r1 = std::min(rows, r0 + ch.size);
      float* out = part.data() + task * kGroup;
      if (r0 >= r1) continue;
#if GF_AVX512
      if (fma_var) {
        group_sums<kVar, true>(X, C, r0, r1, g * kGroup, mean, out);
      } else {
        group_sums<kVar, false>(X, C, r0, r1, g * kGroup, mean, out);
      }
#endif
    }
  });
  std::vector<double> sum(static_cast<size_t>(C), 0.0);
  for (int64_t t = 0; t < ch.count; ++t)
    for (int64_t c = 0; c < C; ++c)
      sum[c] += static_cast<double>(part[(t * groups + c / kGroup) * kGroup + c % kGroup]);
  return sum;
}

// mean and var_sum as ATen's collect-stats kernel computes them (see the file comment).
void collect_stats(const float* X, int64_t rows, int64_t C, bool fma_var, float* mean, float* var_sum) {
  if (rows > at::get_num_threads()) {
    const std::vector<double> s = channel_sums<false>(X, rows, C, nullptr, fma_var);
    for (int64_t c = 0; c < C; ++c) mean[c] = static_cast<float>(s[c] / static_cast<double>(rows));
    const std::vector<double> v = channel_sums<true>(X, rows, C, mean, fma_var);
    for (int64_t c = 0; c < C; ++c) var_sum[c] = static_cast<float>(v[c]);
    return;
  }
  for (int64_t c = 0; c < C; ++c) {  // ATen's scalar path: double sums, float products
    double sum = 0;
    for (int64_t r = 0; r < rows; ++r) sum += X[r * C + c];
    mean[c] = static_cast<float>(sum / static_cast<double>(rows));
    double vs = 0;
    for (int64_t r = 0; r < rows; ++r) {
      const float d = X[r * C + c] - mean[c];
      vs += d * d;
    }
    var_sum[c] = static_cast<float>(vs);
  }
}
// torch.batch_norm_update_stats's results and running-statistics update for a float32
// channels_last-dense x (rows = N * H * W > 0), the (x - mean)^2 accumulation fused or not.
std::tuple<at::Tensor, at::Tensor> batch_stats(const at::Tensor& x, float* RM, float* RV, double momentum,
                                               bool fma_var) {
  const int64_t C = x.size(1), rows = x.numel() / C;
  at::Tensor mean = at::empty({C}, x.options()), var = at::empty({C}, x.options());
  std::vector<float> var_sum(static_cast<size_t>(C));
  float* M = mean.data_ptr<float>();
  float* V = var.data_ptr<float>();
  collect_stats(x.const_data_ptr<float>(), rows, C, fma_var, M, var_sum.data());
  // batch_norm_cpu_update_stats_template's epilogue (float32 parameters, VarTransform = Var):
  // float products and sums, the running variance's sum in double
  const float m = static_cast<float>(momentum);
  for (int64_t c = 0; c < C; ++c) {
    V[c] = var_sum[c] / static_cast<float>(rows);
    if (RM != nullptr) RM[c] = m * M[c] + (1 - m) * RM[c];
    if (RV != nullptr) {
      const double unbiased = var_sum[c] / static_cast<float>(rows - 1);
      RV[c] = static_cast<float>(static_cast<double>(m) * unbiased + (1 - m) * RV[c]);
    }
  }
  return {mean, var};
}
#pragma GCC pop_options

// Whether this ATen's (x - mean)^2 accumulation is one fma (true) or a product and a sum (false),
// or neither matches (nullopt: ATen's op runs): batch_stats against at::batch_norm_update_stats
// on probes of both of its paths (rows above and at most the thread count; channel tails), all
// four results bit for bit.
std::optional<bool> aten_var_form() {
#if GF_AVX512
  if (!avx512::available()) return std::nullopt;
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  for (const bool fma : {true, false}) {
    bool ok = true;
    for (const auto& shape : std::vector<std::vector<int64_t>>{{4, 37, 9, 11}, {2, 300, 5, 3}, {1, 20, 1, 2}}) {
      const int64_t n = shape[0] * shape[1] * shape[2] * shape[3], C = shape[1];
      const at::Tensor x = at::arange(n, f32).mul_(0.7548776662f).sin_().mul_(2.5f).add_(0.3f)
                               .view({shape[0], shape[2], shape[3], C}).permute({0, 3, 1, 2});
      const at::Tensor rm = at::arange(C, f32).mul_(0.1f), rv = at::arange(C, f32).add_(1.0f);
      const at::Tensor rm2 = rm.clone(), rv2 = rv.clone();
      const auto [m, v] = at::batch_norm_update_stats(x, rm, rv, 0.3);
      const auto [m2, v2] = batch_stats(x, rm2.data_ptr<float>(), rv2.data_ptr<float>(), 0.3, fma);
      ok = ok && at::equal(m, m2) && at::equal(v, v2) && at::equal(rm, rm2) && at::equal(rv, rv2);
    }
    if (ok) return fma;
  }
#endif
  return std::nullopt;
}

std::optional<bool> var_form() {
  static const std::optional<bool> form = aten_var_form();
  return form;
}

std::tuple<at::Tensor, at::Tensor> bn_batch_stats_cpu(const at::Tensor& x, const std::optional<at::Tensor>& running_mean,
                                                      const std::optional<at::Tensor>& running_var, double momentum) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  if (x.scalar_type() != at::kFloat || x.dim() != 4 || x.numel() == 0 || x.is_contiguous() ||
      !x.is_contiguous(at::MemoryFormat::ChannelsLast))
    return at::batch_norm_update_stats(x, running_mean, running_var, momentum);
  const int64_t C = x.size(1);
  float* R[2] = {nullptr, nullptr};
  int i = 0;
  for (const auto* r : {&running_mean, &running_var}) {
    if (r->has_value() && r->value().defined()) {
      TORCH_CHECK_VALUE(r->value().dim() == 1 && r->value().size(0) == C && r->value().scalar_type() == at::kFloat &&
                            r->value().is_contiguous() && r->value().device().is_cpu(),
                        "running_mean, running_var: expected contiguous float32 CPU tensors of shape (", C, ",)");
      R[i] = r->value().data_ptr<float>();
    }
    ++i;
  }
  const std::optional<bool> form = var_form();
  if (!form.has_value()) return at::batch_norm_update_stats(x, running_mean, running_var, momentum);
  return batch_stats(x, R[0], R[1], momentum, *form);
}

bool bn_batch_stats_exact() { return var_form().has_value(); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(googlenet_fast, m) {
  // torch.batch_norm_update_stats for float32 channels_last tensors at memory speed, ATen's bits
  m.def("bn_batch_stats(Tensor x, Tensor(a!)? running_mean, Tensor(b!)? running_var, float momentum) -> "
        "(Tensor mean, Tensor var)");
  // whether bn_batch_stats runs its own loops here (else it calls ATen's op)
  m.def("bn_batch_stats_exact() -> bool");
}

TORCH_LIBRARY_IMPL(googlenet_fast, CPU, m) { m.impl("bn_batch_stats", &bn_batch_stats_cpu); }

TORCH_LIBRARY_IMPL(googlenet_fast, CompositeExplicitAutograd, m) {
  m.impl("bn_batch_stats_exact", &bn_batch_stats_exact);
}

}  // namespace googlenet_fast
