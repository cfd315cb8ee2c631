// googlenet_fast: max pooling for training on the CPU, with one-byte argmax taps (eager CPU
// training: googlenet_fast/pool_train.py and the train-mode Inception node in bn_train.py).
//
// googlenet_fast::max_pool2d_tap(x, kernel, stride, padding, ceil_mode) -> (y, tap)
//   y: nn.MaxPool2d's output, bit for bit what ATen's channels_last max_pool2d_with_indices
//   computes (its window scan order, -inf start, "v > max or v is NaN" update, first valid tap
//   as the initial argmax); tap: uint8, channels_last, the argmax's position inside the window,
//   (ih - oh * stride + padding) * kernel + (iw - ow * stride + padding), instead of ATen's int64
//   flat index: 1 byte per output value written and read back instead of 8.
// googlenet_fast::max_pool2d_tap_backward_(grad_x, grad_y, tap, kernel, stride, padding, accumulate)
//   ATen's max_pool2d_with_indices_backward (per image, output pixels in order, grad_x[argmax] +=
//   grad_y in the tensor's dtype: the same sums, rounded the same way), written into grad_x, or
//   with `accumulate` added to it as grad_x.add_(that) would (the Inception module's input
//   gradient: the merged 1x1 dgrad plus the pool branch's).  Portable loops: each image (at small
//   batches each group of its channels) is accumulated in a ring of `kernel` input rows held in
//   cache, each row written out once it can receive no more: no zero-filled full-size gradient, no
//   second pass.  float32 and bfloat16 on AVX-512: each input pixel gathered in registers (the same sums).
//
// Both: x / grad tensors (N, C, H, W) of float32, float64 or bfloat16, any layout (made
// channels_last); kernel <= 16, padding <= kernel / 2 (as nn.MaxPool2d), no dilation.
// On CPUs with AVX-512 (F, BW, VL, DQ) the forward and the backward (float32, bfloat16)
// run max_pool_tap_avx512.h's kernels (the backward in gather form, no ring): the same values,
// 16 channels a register.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>

#include "../inception.h"
#include "acc_convert.h"
#include "bn_exact.h"
#include "max_pool_tap_avx512.h"

namespace googlenet_fast {
namespace {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define GF_POOL_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define GF_POOL_CLONES
#endif
#define GF_INLINE inline __attribute__((always_inline))

constexpr int64_t kChunk = 64;  // channels per inner loop

using acc_convert::bf16_bits_to_float;
using acc_convert::float_to_bf16_bits;
using acc_convert::from_acc;
using acc_convert::to_acc;

// ---- forward -------------------------------------------------------------------------------------
// Output rows [begin, end) (row = n * OH + oh), all channels.
template <typename T>
GF_INLINE void tap_forward_rows_impl(const T* X, T* Y, uint8_t* TP, int64_t begin, int64_t end, int64_t H,
                                     int64_t W, int64_t C, int64_t OH, int64_t OW, int64_t k, int64_t s,
                                     int64_t p) {
  using A = at::opmath_type<T>;
  A m[kChunk];
  uint8_t t[kChunk];
  for (int64_t row = begin; row < end; ++row) {
    const int64_t n = row / OH, oh = row % OH;
    const int64_t ho = oh * s - p, h0 = std::max<int64_t>(ho, 0), h1 = std::min(ho + k, H);
    for (int64_t ow = 0; ow < OW; ++ow) {
      const int64_t wo = ow * s - p, w0 = std::max<int64_t>(wo, 0), w1 = std::min(wo + k, W);
      const uint8_t first = static_cast<uint8_t>((h0 - ho) * k + (w0 - wo));
      const int64_t o = (row * OW + ow) * C;
      for (int64_t c0 = 0; c0 < C; c0 += kChunk) {
        const int64_t cn = std::min(kChunk, C - c0);
        for (int64_t c = 0; c < cn; ++c) {
          m[c] = -std::numeric_limits<A>::infinity();
          t[c] = first;
        }
        for (int64_t ih = h0; ih < h1; ++ih) {
          for (int64_t iw = w0; iw < w1; ++iw) {
            const uint8_t tt = static_cast<uint8_t>((ih - ho) * k + (iw - wo));
            const T* __restrict__ src = X + ((n * H + ih) * W + iw) * C + c0;
            for (int64_t c = 0; c < cn; ++c) {
              const A v = to_acc(src[c]);
              const bool u = (v > m[c]) | (v != v);  // ATen's update rule: NaN always taken
              m[c] = u ? v : m[c];
              t[c] = u ? tt : t[c];
            }
          }
        }
        T* __restrict__ y = Y + o + c0;
        uint8_t* __restrict__ tp = TP + o + c0;
        for (int64_t c = 0; c < cn; ++c) {
          y[c] = from_acc<T>(m[c]);
          tp[c] = t[c];
        }
      }
    }
  }
}

template <typename T>
void tap_forward_rows(const T* X, T* Y, uint8_t* TP, int64_t begin, int64_t end, int64_t H, int64_t W, int64_t C,
                      int64_t OH, int64_t OW, int64_t k, int64_t s, int64_t p) {
  tap_forward_rows_impl(X, Y, TP, begin, end, H, W, C, OH, OW, k, s, p);
}
#define GF_FWD_CLONE(T)                                                                                      \
  template <>                                                                                                \
  GF_POOL_CLONES void tap_forward_rows<T>(const T* X, T* Y, uint8_t* TP, int64_t begin, int64_t end, int64_t H, \
                                          int64_t W, int64_t C, int64_t OH, int64_t OW, int64_t k, int64_t s,  \
                                          int64_t p) {                                                       \
    tap_forward_rows_impl(X, Y, TP, begin, end, H, W, C, OH, OW, k, s, p);                                   \
  }
GF_FWD_CLONE(float)
GF_FWD_CLONE(c10::BFloat16)
#undef GF_FWD_CLONE

// ---- backward ------------------------------------------------------------------------------------
// The gradients are summed in the accumulator type A (float for bfloat16), each bfloat16 sum
// rounded to a bfloat16 value right away (round to nearest even, NaN -> the canonical quiet NaN:
// c10::BFloat16's a + b), so that every partial sum is the one ATen's bfloat16 scatter stores.
GF_INLINE float round_to_bf16(float f) { return bf16_bits_to_float(float_to_bf16_bits(f)); }

// acc += g where the tap is the argmax, += +0 elsewhere, over n channels: an unconditional store
// (a conditional one compiles to a mispredicted branch per value).  Adding +0 leaves every value
// as it is: a sum that starts at +0 is never -0, and NaN stays NaN (canonical in bfloat16).
template <typename T, typename A>
GF_INLINE void add_where_tap(A* __restrict__ acc, const A* __restrict__ g, const uint8_t* __restrict__ tap, uint8_t tt,
                             int64_t n) {
#pragma GCC ivdep
  for (int64_t c = 0; c < n; ++c) {
    const A gv = g[c];  // loaded unconditionally: a select, not a branch
    const A sum = acc[c] + (tap[c] == tt ? gv : A(0));
    if constexpr (std::is_same_v<T, c10::BFloat16>) {
      acc[c] = round_to_bf16(sum);
    } else {
      acc[c] = sum;
    }
  }
}

// One image n, channels [c0, c1): the gradients of its input rows, accumulated in `ring` (kernel
// rows of W x (c1 - c0) values of type A, row h in slot h % kernel) in ATen's order (output
// pixels in order, each adding to its argmax), each row written to GX (or added to it, as
// grad_x.add_(pool gradient) rounds) once no later output row's window reaches it.  Whole pixels'
// channel runs (not one 64-channel chunk of every pixel): the loads stay sequential.
// gbuf: (c1 - c0) values of type A (bfloat16: grad_y's values converted once per output pixel).
template <typename T>
GF_INLINE void tap_backward_image_impl(const T* GY, const uint8_t* TP, T* GX, at::opmath_type<T>* ring,
                                       at::opmath_type<T>* gbuf, int64_t n, int64_t c0, int64_t c1, int64_t H,
                                       int64_t W, int64_t C, int64_t OH, int64_t OW, int64_t k, int64_t s, int64_t p,
                                       bool accumulate) {
  using A = at::opmath_type<T>;
  const int64_t cw = c1 - c0;
  int64_t next_zero = 0, next_flush = 0;  // rows [next_flush, next_zero) are live in the ring
  auto slot = [&](int64_t h) { return ring + (h % k) * W * cw; };
  auto flush = [&](int64_t h) {
    T* dst = GX + (n * H + h) * W * C + c0;
    if (h >= next_zero) {  // no window reached this row: its gradient is +0 (grad_x + 0: -0 -> +0)
      for (int64_t w = 0; w < W; ++w) {
        T* __restrict__ d = dst + w * C;
        if (!accumulate) {
          std::fill(d, d + cw, T(0));
        } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
          uint16_t* __restrict__ d16 = reinterpret_cast<uint16_t*>(d);
          for (int64_t c = 0; c < cw; ++c) d16[c] = float_to_bf16_bits(bf16_bits_to_float(d16[c]) + 0.f);
        } else {
          for (int64_t c = 0; c < cw; ++c) d[c] = d[c] + T(0);
        }
      }
      return;
    }
    const A* r = slot(h);
    for (int64_t w = 0; w < W; ++w) {
      T* __restrict__ d = dst + w * C;
      const A* __restrict__ v = r + w * cw;
      if constexpr (std::is_same_v<T, c10::BFloat16>) {
        uint16_t* __restrict__ d16 = reinterpret_cast<uint16_t*>(d);
        if (accumulate) {
#pragma GCC ivdep
          for (int64_t c = 0; c < cw; ++c) d16[c] = float_to_bf16_bits(bf16_bits_to_float(d16[c]) + v[c]);
        } else {
#pragma GCC ivdep
          for (int64_t c = 0; c < cw; ++c) d16[c] = float_to_bf16_bits(v[c]);  // exact: v is a bfloat16 value
        }
      } else if (accumulate) {
#pragma GCC ivdep
        for (int64_t c = 0; c < cw; ++c) d[c] = d[c] + v[c];
      } else {
        std::memcpy(d, v, static_cast<size_t>(cw) * sizeof(T));
      }
    }
  };
  for (int64_t oh = 0; oh < OH; ++oh) {
    const int64_t ho = oh * s - p, h0 = std::max<int64_t>(ho, 0), h1 = std::min(ho + k, H);
    while (next_flush < h0) flush(next_flush++);  // final: no later window starts above h0
    next_zero = std::max(next_zero, next_flush);
    for (; next_zero < h1; ++next_zero) std::fill(slot(next_zero), slot(next_zero) + W * cw, A(0));
    for (int64_t ow = 0; ow < OW; ++ow) {
      const int64_t wo = ow * s - p, w0 = std::max<int64_t>(wo, 0), w1 = std::min(wo + k, W);
      const int64_t o = ((n * OH + oh) * OW + ow) * C + c0;
      const A* g;
      if constexpr (std::is_same_v<T, c10::BFloat16>) {
        const uint16_t* __restrict__ g16 = reinterpret_cast<const uint16_t*>(GY + o);
        for (int64_t c = 0; c < cw; ++c) gbuf[c] = bf16_bits_to_float(g16[c]);
        g = gbuf;
      } else {
        g = GY + o;
      }
      for (int64_t ih = h0; ih < h1; ++ih) {
        for (int64_t iw = w0; iw < w1; ++iw) {
          const uint8_t tt = static_cast<uint8_t>((ih - ho) * k + (iw - wo));
          A* acc = slot(ih) + iw * cw;
          for (int64_t cc = 0; cc < cw; cc += kChunk)
            add_where_tap<T, A>(acc + cc, g + cc, TP + o + cc, tt, std::min(kChunk, cw - cc));
        }
      }
    }
  }
  while (next_flush < H) flush(next_flush++);
}

template <typename T>
void tap_backward_image(const T* GY, const uint8_t* TP, T* GX, at::opmath_type<T>* ring, at::opmath_type<T>* gbuf,
                        int64_t n, int64_t c0, int64_t c1, int64_t H, int64_t W, int64_t C, int64_t OH, int64_t OW,
                        int64_t k, int64_t s, int64_t p, bool accumulate) {
  tap_backward_image_impl(GY, TP, GX, ring, gbuf, n, c0, c1, H, W, C, OH, OW, k, s, p, accumulate);
}
#define GF_BWD_CLONE(T)                                                                                       \
  template <>                                                                                                 \
  GF_POOL_CLONES void tap_backward_image<T>(const T* GY, const uint8_t* TP, T* GX, float* ring, float* gbuf,   \
                                            int64_t n, int64_t c0, int64_t c1, int64_t H, int64_t W,          \
                                            int64_t C, int64_t OH, int64_t OW, int64_t k, int64_t s,          \
                                            int64_t p, bool accumulate) {                                     \
    tap_backward_image_impl(GY, TP, GX, ring, gbuf, n, c0, c1, H, W, C, OH, OW, k, s, p, accumulate);         \
  }
GF_BWD_CLONE(float)
GF_BWD_CLONE(c10::BFloat16)
#undef GF_BWD_CLONE

// Whether T's loops may run pool_avx512's kernels: float32 and bfloat16 where avx512::available().
template <typename T>
bool use_avx512() {
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, c10::BFloat16>) {
    return pool_avx512::available();
  } else {
    return false;
  }
}

// ---- argument checks -------------------------------------------------------------------------------
void check_pool_tensor(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), name, ": expected a CPU tensor, got one on ", t.device());
  TORCH_CHECK_VALUE(t.dim() == 4, name, ": expected a 4-D (N, C, H, W) tensor, got shape ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble || t.scalar_type() == at::kBFloat16,
                   name, ": expected float32, float64 or bfloat16, got ", t.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_tap_cpu(const at::Tensor& x, int64_t kernel, int64_t stride,
                                                      int64_t padding, bool ceil_mode) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  check_pool_tensor(x, "x");
  check_tap_pool_window(kernel, stride, padding);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t OH = pool_out_size(H, kernel, stride, padding, ceil_mode);
  const int64_t OW = pool_out_size(W, kernel, stride, padding, ceil_mode);
  TORCH_CHECK_VALUE(OH >= 1 && OW >= 1, "x: input of spatial size ", H, "x", W, " is too small for a ", kernel, "x",
                    kernel, " pool with stride ", stride, " and padding ", padding, " (output ", OH, "x", OW, ")");
  const auto cl = at::MemoryFormat::ChannelsLast;
  const at::Tensor xc = x.contiguous(cl);
  at::Tensor y = at::empty({N, C, OH, OW}, x.options().memory_format(cl));
  at::Tensor tap = at::empty({N, C, OH, OW}, x.options().dtype(at::kByte).memory_format(cl));
  if (y.numel() == 0) return {y, tap};
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, OW * kernel * kernel * C));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "max_pool2d_tap_cpu", [&] {
    const scalar_t* X = xc.const_data_ptr<scalar_t>();
    scalar_t* Y = y.data_ptr<scalar_t>();
    uint8_t* TP = tap.data_ptr<uint8_t>();
    [[maybe_unused]] const bool vec = use_avx512<scalar_t>();
    at::parallel_for(0, N * OH, grain, [&](int64_t begin, int64_t end) {
#if GF_AVX512
      if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, c10::BFloat16>) {
        if (vec) {
          pool_avx512::tap_forward_rows<scalar_t>(X, Y, TP, begin, end, H, W, C, OH, OW, kernel, stride, padding);
          return;
        }
      }
#endif
      tap_forward_rows<scalar_t>(X, Y, TP, begin, end, H, W, C, OH, OW, kernel, stride, padding);
    });
  });
  return {y, tap};
}

// relu(batch_norm(x)) pooled, without writing relu(batch_norm(x)): channels_last x, bfloat16
// where bn_bf16_exact_apply() or float32 where bn_mask_from_pre(float32) (ATen's apply is the
// fma computed here), float32 statistics; the same bits as bn_relu_apply(_into) followed by
// max_pool2d_tap (each window value computed as they compute it).
std::tuple<at::Tensor, at::Tensor, at::Tensor> max_pool2d_tap_bn_relu_cpu(
    const at::Tensor& x, const at::Tensor& mean, const at::Tensor& var, const at::Tensor& gamma,
    const at::Tensor& beta, double eps, int64_t kernel, int64_t stride, int64_t padding, bool ceil_mode) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  check_pool_tensor(x, "x");
  check_tap_pool_window(kernel, stride, padding);
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  TORCH_CHECK_VALUE((bf16 || x.scalar_type() == at::kFloat) && x.is_contiguous(at::MemoryFormat::ChannelsLast),
                    "x: expected a channels_last float32 or bfloat16 tensor, got ", x.scalar_type());
  TORCH_CHECK_VALUE(bn_mask_from_pre(x.scalar_type()),  // bfloat16: the exact apply; float32: ATen's fma
                    "max_pool2d_tap_bn_relu: needs the exact BatchNorm apply for ", x.scalar_type(),
                    " (torch.ops.googlenet_fast.bn_relu_mask_from_pre(", x.scalar_type(), ") is False here)");
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  for (const at::Tensor* v : {&mean, &var, &gamma, &beta})
    TORCH_CHECK_VALUE(v->dim() == 1 && v->size(0) == C && v->scalar_type() == at::kFloat,
                      "mean, var, gamma, beta: expected float32 tensors of shape (", C, ",)");
  TORCH_CHECK_VALUE(eps >= 0, "eps: expected a value >= 0, got ", eps);
  const int64_t OH = pool_out_size(H, kernel, stride, padding, ceil_mode);
  const int64_t OW = pool_out_size(W, kernel, stride, padding, ceil_mode);
  TORCH_CHECK_VALUE(OH >= 1 && OW >= 1, "x: input of spatial size ", H, "x", W, " is too small for a ", kernel, "x",
                    kernel, " pool with stride ", stride, " and padding ", padding);
  const at::Tensor invstd = bn_invstd(var, eps);
  std::vector<float> al, be;
  bn_alpha_beta(mean, invstd, gamma, beta, al, be);
  const auto cl = at::MemoryFormat::ChannelsLast;
  at::Tensor y = at::empty({N, C, OH, OW}, x.options().memory_format(cl));
  at::Tensor tap = at::empty({N, C, OH, OW}, x.options().dtype(at::kByte).memory_format(cl));
  if (y.numel() == 0) return {y, tap, invstd};
#if GF_AVX512
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, OW * kernel * kernel * C));
  uint8_t* TP = tap.data_ptr<uint8_t>();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "max_pool2d_tap_bn_relu_cpu", [&] {
    if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, c10::BFloat16>) {
      const auto* X = x.const_data_ptr<scalar_t>();
      auto* Y = y.data_ptr<scalar_t>();
      at::parallel_for(0, N * OH, grain, [&](int64_t begin, int64_t end) {
        pool_avx512::tap_forward_rows<scalar_t, true>(X, Y, TP, begin, end, H, W, C, OH, OW, kernel, stride,
                                                      padding, al.data(), be.data());
      });
    }
  });
#endif
  return {y, tap, invstd};
}

void max_pool2d_tap_backward_cpu(at::Tensor& grad_x, const at::Tensor& grad_y, const at::Tensor& tap, int64_t kernel,
                                 int64_t stride, int64_t padding, bool accumulate) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  check_pool_tensor(grad_x, "grad_x");
  check_pool_tensor(grad_y, "grad_y");
  check_tap_pool_window(kernel, stride, padding);
  TORCH_CHECK_TYPE(grad_y.scalar_type() == grad_x.scalar_type(), "grad_y: expected ", grad_x.scalar_type(),
                   " (grad_x's dtype), got ", grad_y.scalar_type());
  TORCH_CHECK_TYPE(tap.scalar_type() == at::kByte, "tap: expected uint8 (max_pool2d_tap's), got ", tap.scalar_type());
  TORCH_CHECK_VALUE(tap.sizes() == grad_y.sizes(), "tap: expected grad_y's shape ", grad_y.sizes(), ", got ",
                    tap.sizes());
  const int64_t N = grad_x.size(0), C = grad_x.size(1), H = grad_x.size(2), W = grad_x.size(3);
  TORCH_CHECK_VALUE(grad_y.size(0) == N && grad_y.size(1) == C, "grad_y: expected (", N, ", ", C,
                    ", OH, OW) (grad_x's N and C), got ", grad_y.sizes());
  check_pool_grad_size(grad_y, H, W, kernel, stride, padding, "grad_x");
  const int64_t OH = grad_y.size(2), OW = grad_y.size(3);
  const auto cl = at::MemoryFormat::ChannelsLast;
  TORCH_CHECK_VALUE(grad_x.is_contiguous(cl), "grad_x: expected a channels_last tensor");
  if (grad_x.numel() == 0) return;
  const at::Tensor gy = grad_y.contiguous(cl), tp = tap.contiguous(cl);
  // Tasks: images, each split into channel groups (multiples of kChunk) only when there are fewer
  // images than twice the threads (batch 1: the channels give the threads their work).
  const int64_t nt = std::max<int64_t>(1, at::get_num_threads());
  const int64_t groups = std::max<int64_t>(1, std::min((2 * nt + N - 1) / N, (C + kChunk - 1) / kChunk));
  const int64_t gsize = ((C + groups - 1) / groups + kChunk - 1) / kChunk * kChunk;
  const int64_t ng = (C + gsize - 1) / gsize;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, grad_x.scalar_type(), "max_pool2d_tap_backward_cpu", [&] {
    const scalar_t* GY = gy.const_data_ptr<scalar_t>();
    const uint8_t* TP = tp.const_data_ptr<uint8_t>();
    scalar_t* GX = grad_x.data_ptr<scalar_t>();
    using acc_t = at::opmath_type<scalar_t>;
#if GF_AVX512
    // Gathered (no ring, no zero fill): bfloat16's per-add rounding made the portable ring
    // compute-bound (batch-8 train step, 2-core EPYC, 2026-12-05: all 13 pools' backward 8.6-11.3
    // ms portable ring, 5.7-6.1 ms gathered).  float32 there was bound by memory either way (6.0-6.4 ms
    // portable ring, a vectorized ring 6.2-6.6); on the 2-core Intel Xeon (AMX) of 2026-12-05 the
    // portable float32 ring took 14.6 ms of the step, the gather 11.1 ms
    // (benchmarks/results/cpu-xeon-session-2026-12-05.md).  Input rows are independent in
    // gather form: split over N * H.
    if constexpr (std::is_same_v<scalar_t, c10::BFloat16> || std::is_same_v<scalar_t, float>) {
      if (use_avx512<scalar_t>()) {
        const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, W * C));
        at::parallel_for(0, N * H, grain, [&](int64_t begin, int64_t end) {
          pool_avx512::tap_backward_gather_rows<scalar_t>(GY, TP, GX, begin, end, H, W, C, OH, OW, kernel, stride,
                                                          padding, accumulate);
        });
        return;
      }
    }
#endif
    at::parallel_for(0, N * ng, 1, [&](int64_t begin, int64_t end) {
      const std::unique_ptr<acc_t[]> ring(new acc_t[static_cast<size_t>((kernel * W + 1) * gsize)]);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t n = task / ng, c0 = (task % ng) * gsize;
        tap_backward_image<scalar_t>(GY, TP, GX, ring.get(), ring.get() + kernel * W * gsize, n, c0,
                                     std::min(C, c0 + gsize), H, W, C, OH, OW, kernel, stride, padding, accumulate);
      }
    });
  });
}

}  // namespace

void check_tap_pool_window(int64_t kernel, int64_t stride, int64_t padding) {
  TORCH_CHECK_VALUE(kernel >= 1 && kernel <= 16, "kernel: expected 1 to 16 (the argmax tap is one byte), got ",
                    kernel);
  TORCH_CHECK_VALUE(stride >= 1, "stride: expected a positive value, got ", stride);
  TORCH_CHECK_VALUE(padding >= 0 && padding <= kernel / 2,
                    "padding: expected 0 to kernel / 2 (as nn.MaxPool2d), got ", padding, " for kernel ", kernel);
}

void check_pool_grad_size(const at::Tensor& grad_y, int64_t H, int64_t W, int64_t kernel, int64_t stride,
                          int64_t padding, const char* input_name) {
  for (bool ceil_mode : {false, true}) {
    if (grad_y.size(2) == pool_out_size(H, kernel, stride, padding, ceil_mode) &&
        grad_y.size(3) == pool_out_size(W, kernel, stride, padding, ceil_mode))
      return;
  }
  TORCH_CHECK_VALUE(false, "grad_y: spatial size ", grad_y.size(2), "x", grad_y.size(3), " is not the ", kernel, "x",
                    kernel, " / stride ", stride, " / padding ", padding, " pool of ", input_name, "'s ", H, "x", W);
}

TORCH_LIBRARY_FRAGMENT(googlenet_fast, m) {
  // Max pooling for eager CPU training with one-byte argmax taps (csrc/cpu/max_pool_train_cpu.cpp;
  // googlenet_fast/pool_train.py): not differentiable themselves.
  m.def("max_pool2d_tap(Tensor x, int kernel, int stride, int padding, bool ceil_mode) -> (Tensor y, Tensor tap)");
  m.def("max_pool2d_tap_backward_(Tensor(a!) grad_x, Tensor grad_y, Tensor tap, int kernel, int stride, "
        "int padding, bool accumulate) -> ()");
  // max_pool2d_tap(relu(batch_norm(x))) from batch_norm_update_stats' mean and var: (y, tap, invstd)
  m.def("max_pool2d_tap_bn_relu(Tensor x, Tensor mean, Tensor var, Tensor gamma, Tensor beta, float eps, "
        "int kernel, int stride, int padding, bool ceil_mode) -> (Tensor y, Tensor tap, Tensor invstd)");
}

TORCH_LIBRARY_IMPL(googlenet_fast, CPU, m) {
  m.impl("max_pool2d_tap", &max_pool2d_tap_cpu);
  m.impl("max_pool2d_tap_backward_", &max_pool2d_tap_backward_cpu);
  m.impl("max_pool2d_tap_bn_relu", &max_pool2d_tap_bn_relu_cpu);
}

}  // namespace googlenet_fast
