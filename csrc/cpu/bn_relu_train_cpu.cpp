// googlenet_fast: train-mode BatchNorm + ReLU over channel lists (CPU): the backward, and for
// bfloat16 the forward's apply + ReLU.
//
// The train-mode torchvision Inception module on the CPU (googlenet_fast/bn_train.py,
// _InceptionBnReluTrain) runs its convolutions through oneDNN (ATen's convolution and
// convolution_backward, what torchvision's model runs), its forward BatchNorm statistics through
// ATen, and the rest between the convolutions here (also the stem's blocks, bn_train.bn_relu_train):
//
// googlenet_fast::bn_relu_apply(x, mean, var, gamma, beta, eps) -> (y, invstd)
//   relu(batch_norm(x)) from batch_norm_update_stats' mean and biased var, bit for bit what
//   native_batch_norm(training) + relu_ give, in one pass instead of two (bfloat16 channels_last
//   with AVX-512 where exact_apply<bfloat16>(); otherwise ATen's own ops).
// googlenet_fast::bn_relu_apply_into(xs[], mean, var, gamma, beta, eps, outs[]) -> invstd
//   y = relu(fma(x, alpha, fma(-mean, alpha, beta))) rounded to x's dtype (float32 or bfloat16),
//   alpha = invstd * gamma, from channel lists into channel lists: the train-mode Inception's
//   output BatchNorm reads its four branches' pre-BN outputs where they are (no cat) and writes
//   the concatenated output; its reduce BatchNorms read their channels of the merged 1x1 output
//   and write the KxK convolutions' dense inputs.  ATen's bits where bn_relu_mask_from_pre(dtype)
//   (ATen's apply is that fma: the caller checks it).
// googlenet_fast::bn_relu_backward(grads[], y[], pre[], mean, invstd, gamma, outs[], beta?) -> (dgamma, dbeta)
//   the gradient of `pre` (written into `outs`) and of gamma and beta: ATen's threshold_backward
//   followed by native_batch_norm_backward, in two passes instead of four:
//   pass 1: dz = grad where not y <= 0 (threshold_backward's mask: NaN passes), per-channel sums
//     of dz and of dz * (pre - mean); with `beta` (bfloat16, exact_apply) the sign of y is
//     recomputed from pre as ATen's forward computed y from a dense input with the same values
//     (the caller's promise), and y is not read (two of seven passes);
//   pass 2: dpre = (dz - sum_dz / M - (pre - mean) * k) * invstd * gamma, k = sum(dz * (pre -
//     mean)) * invstd^2 / M (ATen's formula), written straight into the destinations (e.g. a
//     channel slice of the buffer the merged 1x1 dgrad reads, dense per-branch buffers the KxK
//     backward reads): no split copies.  dgamma = sum(dz * (pre - mean)) * invstd, dbeta = sum(dz).
// googlenet_fast::max_pool2d_tap_bn_relu_backward(grad_y, tap, pre, mean, invstd, gamma, beta, kernel,
//     stride, padding) -> (grad_pre, dgamma, dbeta)
//   the backward of max_pool2d_tap_bn_relu (the stem's BatchNorm + ReLU + max pool, train mode):
//   max_pool2d_tap_backward_ then bn_relu_backward with the mask from pre, bit for bit, the pool's
//   input gradient gathered where each pass reads it instead of written between them.
//
// Every tensor is (N, Ci, H, W), read as its NHWC rows (channels_last, or a channel slice of a
// channels_last buffer); inputs in other layouts are copied to channels_last first, destinations
// must be NHWC-row-strided.  Pixel blocks (16-256 pixels, by P alone), in parallel; each block's channel sums are
// accumulated in the accumulator type (float for float32/bfloat16, double for float64), then
// the block sums are added in block order in double: the results do not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

#include "../inception.h"
#include "acc_convert.h"
#include "avx512_lanes.h"
#include "bn_exact.h"
#include "max_pool_tap_avx512.h"

namespace googlenet_fast {
namespace {

// Pixels per block: P / 64 within [16, 256], i.e. a function of P alone (the sums do not depend on
// the thread count) that gives small maps enough blocks to share evenly between threads (a fixed
// 256 gave batch 8 at 7x7 two blocks of 256 and 136 pixels: one thread did two thirds).  2 threads,
// cold data, 2026-12-05: 8x512x14x14 0.52 -> 0.42 ms, 8x1024x7x7 0.22 -> 0.15 ms, 28x28 and up unchanged.
int64_t block_pixels(int64_t P) { return std::min<int64_t>(256, std::max<int64_t>(16, P / 64)); }

// ---- per-row loops (one pixel, one channel range) ------------------------------------------------
// Branch-free so that they vectorize; the float32 and bfloat16 versions are also compiled for AVX2 and AVX-512
// (GCC picks the clone for the running CPU at load time, as csrc/cpu/inception_cpu.cpp's loops).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define GF_BN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define GF_BN_CLONES
#endif
#define GF_INLINE inline __attribute__((always_inline))

using acc_convert::from_acc;
using acc_convert::to_acc;

// Every product and sum rounded on its own, in the clones and in the AVX-512 loops below (GCC
// contracts intrinsics' mul + add too): no FMA.  The avx512f clones had fused some (in their
// scalar tails and epilogues), the avx2 / default ones none, so the sums depended on the CPU and on
// the channel count; now every path gives the same bits (tests/test_portable_loops.py).
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
template <typename T, typename A>
GF_INLINE void bwd_sums_row_impl(const T* __restrict__ g, const T* __restrict__ y, const T* __restrict__ x,
                                 const A* __restrict__ m, A* __restrict__ s1, A* __restrict__ s2, int64_t n) {
  for (int64_t c = 0; c < n; ++c) {
    const A gv = to_acc(g[c]);  // loaded unconditionally: a select, not a branch
    const A dz = to_acc(y[c]) <= A(0) ? A(0) : gv;
    s1[c] += dz;
    s2[c] += dz * (to_acc(x[c]) - m[c]);
  }
}
template <typename T, typename A>
GF_INLINE void bwd_grad_row_impl(const T* __restrict__ g, const T* __restrict__ y, const T* __restrict__ x,
                                 const A* __restrict__ m, const A* __restrict__ gm, const A* __restrict__ k,
                                 const A* __restrict__ a, T* __restrict__ o, int64_t n) {
  for (int64_t c = 0; c < n; ++c) {
    const A gv = to_acc(g[c]);  // loaded unconditionally: a select, not a branch
    const A dz = to_acc(y[c]) <= A(0) ? A(0) : gv;
    o[c] = from_acc<T>((dz - gm[c] - (to_acc(x[c]) - m[c]) * k[c]) * a[c]);
  }
}

template <typename T, typename A>
void bwd_sums_row(const T* g, const T* y, const T* x, const A* m, A* s1, A* s2, int64_t n) {
  bwd_sums_row_impl(g, y, x, m, s1, s2, n);
}
template <typename T, typename A>
void bwd_grad_row(const T* g, const T* y, const T* x, const A* m, const A* gm, const A* k, const A* a, T* o, int64_t n) {
  bwd_grad_row_impl(g, y, x, m, gm, k, a, o, n);
}
#define GF_BN_ROW_CLONES(T)                                                                                       \
  template <>                                                                                                     \
  GF_BN_CLONES void bwd_sums_row<T, float>(const T* g, const T* y, const T* x, const float* m, float* s1,          \
                                           float* s2, int64_t n) {                                                \
    bwd_sums_row_impl(g, y, x, m, s1, s2, n);                                                                     \
  }                                                                                                               \
  template <>                                                                                                     \
  GF_BN_CLONES void bwd_grad_row<T, float>(const T* g, const T* y, const T* x, const float* m, const float* gm,    \
                                           const float* k, const float* a, T* o, int64_t n) {                     \
    bwd_grad_row_impl(g, y, x, m, gm, k, a, o, n);                                                                \
  }
GF_BN_ROW_CLONES(float)
GF_BN_ROW_CLONES(c10::BFloat16)
#undef GF_BN_ROW_CLONES

// The same two loops on 16 channels a register, for bfloat16 on CPUs with AVX-512 (F, BW, VL, DQ):
// the loops' avx512f clones keep bfloat16 in 256-bit registers (no zmm instruction in either).
// The same operations in the same order, products and sums rounded separately (no FMA) as in the
// clones above: the same bits as the portable loops (tests/test_portable_loops.py).
// 2 threads, 2026-12-05, cache-resident maps 1.5-1.7x (8x480x28x28: 0.62-0.66 -> 0.37-0.41 ms),
// 8x64x112x112 from memory 1.55-1.60 -> 1.17-1.30 ms.  float32 stays with the clones: bound by
// memory, no gain measured (4.2-4.5 vs 4.3-4.7 ms at 8x64x112x112).
#if GF_AVX512
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// Both passes' start, 16 channels from c: dz = grad where not y <= 0 (NaN passes), +0 elsewhere;
// d = x - mean.  kFromPre: y is not read; its sign is recomputed from x as ATen's BatchNorm forward
// computed y (v = fma(x, alpha, beta) rounded to T; see aten_apply_matches below), al / be: alpha
// and beta per channel.
template <bool kFromPre, typename T>
GF_AVX512_INLINE void masked_grad_and_centered(const T* g, const T* y, const T* x, const float* m, const float* al,
                                               const float* be, __mmask16 mk, __m512& dz, __m512& d) {
  const __m512 xv = avx512::load16(x, mk);
  __mmask16 pass;
  if constexpr (kFromPre) {
    // y <= 0 where v <= 0, and for bfloat16 also where 0 < v <= 2^-134 (rounds to +0): one compare
    // instead of the rounding
    const float zero = std::is_same_v<T, c10::BFloat16> ? 0x1p-134f : 0.0f;
    const __m512 v = _mm512_fmadd_ps(xv, avx512::load16(al, mk), avx512::load16(be, mk));
    pass = mk & ~_mm512_cmp_ps_mask(v, _mm512_set1_ps(zero), _CMP_LE_OQ);
  } else {
    pass = mk & ~_mm512_cmp_ps_mask(avx512::load16(y, mk), _mm512_setzero_ps(), _CMP_LE_OQ);
  }
  dz = _mm512_maskz_mov_ps(pass, avx512::load16(g, mk));
  d = _mm512_sub_ps(xv, avx512::load16(m, mk));
}
template <bool kFromPre, typename T>
GF_AVX512_FN void bwd_sums_row_avx512(const T* g, const T* y, const T* x, const float* m, const float* al,
                                      const float* be, float* s1, float* s2, int64_t n) {
  for (int64_t c = 0; c < n; c += 16) {
    const __mmask16 mk = avx512::lanes(n - c);
    __m512 dz, d;
    masked_grad_and_centered<kFromPre>(g + c, y + c, x + c, m + c, al + c, be + c, mk, dz, d);
    avx512::store16(s1 + c, mk, _mm512_add_ps(avx512::load16(s1 + c, mk), dz));
    avx512::store16(s2 + c, mk, _mm512_add_ps(avx512::load16(s2 + c, mk), _mm512_mul_ps(dz, d)));
  }
}
template <bool kFromPre, typename T>
GF_AVX512_FN void bwd_grad_row_avx512(const T* g, const T* y, const T* x, const float* m, const float* al,
                                      const float* be, const float* gm, const float* k, const float* a, T* o,
                                      int64_t n) {
  for (int64_t c = 0; c < n; c += 16) {
    const __mmask16 mk = avx512::lanes(n - c);
    __m512 dz, d;
    masked_grad_and_centered<kFromPre>(g + c, y + c, x + c, m + c, al + c, be + c, mk, dz, d);
    // (dz - gm - d * k) * a
    const __m512 t = _mm512_sub_ps(_mm512_sub_ps(dz, avx512::load16(gm + c, mk)),
                                   _mm512_mul_ps(d, avx512::load16(k + c, mk)));
    avx512::store16(o + c, mk, _mm512_mul_ps(t, avx512::load16(a + c, mk)));
  }
}
template <typename T>
GF_AVX512_FN void bn_relu_apply_row_avx512(const T* x, T* y, const float* al, const float* be, int64_t n) {
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t c = 0; c < n; c += 16) {
    const __mmask16 mk = avx512::lanes(n - c);
    __m512 v = _mm512_fmadd_ps(avx512::load16(x + c, mk), avx512::load16(al + c, mk), avx512::load16(be + c, mk));
    if constexpr (std::is_same_v<T, c10::BFloat16>) v = avx512::round_bf16(v);
    v = _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(v, zero, _CMP_LT_OQ), zero);
    avx512::store16(y + c, mk, v);
  }
}
#pragma GCC diagnostic pop
#endif
#pragma GCC pop_options  // fp-contract=off

// Whether bn_relu_backward runs the loops above for T (and not the portable ones).
template <typename T>
bool use_avx512() {
#if GF_AVX512
  if constexpr (std::is_same_v<T, c10::BFloat16>) return avx512::available();
#endif
  return false;
}

// Whether bn_relu_apply runs its own loop and bn_relu_backward may recompute the ReLU mask from
// `pre` (kFromPre) for T: AVX-512 loops available, bfloat16, and this process's ATen computes its
// train-mode BatchNorm output of a dense (contiguous or channels_last) input as
//   alpha = invstd * gamma, beta = fma(-mean, alpha, bias), y = fma(x, alpha, beta) rounded to T
// (its CPU kernels' `x * alpha + beta`, contracted to FMAs by the compiler in the AVX2 / AVX-512
// builds), checked once per dtype against at::native_batch_norm on a probe (both layouts, channel
// tails, deterministic values: the random stream is untouched).  Where it differs (another ATen
// build, a CPU without FMA) the mask is read from y as before.
template <typename T>
bool aten_apply_matches() {
  // 37 channels (channels_last: ATen's vector loop and its tail), 9x9 pixels (NCHW: the same)
  const int64_t N = 2, C = 37, H = 9, W = 9;
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  const at::Tensor gamma = at::arange(C, f32).mul_(1.3f).cos_().mul_(1.5f);
  const at::Tensor bias = at::arange(C, f32).mul_(0.9f).sin_().mul_(0.5f);
  const at::Tensor vals = at::arange(N * C * H * W, f32).mul_(0.7548776662f).sin_().mul_(3.0f).add_(0.25f);
  for (const bool channels_last : {true, false}) {
    at::Tensor x = channels_last ? vals.view({N, H, W, C}).permute({0, 3, 1, 2}) : vals.view({N, C, H, W});
    x = x.to(c10::CppTypeToScalarType<T>::value);
    const auto [y, mean, invstd] = at::native_batch_norm(x, gamma, bias, at::zeros({C}, f32), at::ones({C}, f32),
                                                         true, 0.1, 1e-3);
    const at::Tensor xf = x.to(at::kFloat).contiguous(), yc = y.contiguous();
    const at::Tensor mf = mean.to(at::kFloat).contiguous(), isf = invstd.to(at::kFloat).contiguous();
    const float* X = xf.const_data_ptr<float>();
    const float *MF = mf.const_data_ptr<float>(), *IS = isf.const_data_ptr<float>();
    const float *GA = gamma.const_data_ptr<float>(), *BI = bias.const_data_ptr<float>();
    const T* Y = yc.const_data_ptr<T>();
    for (int64_t i = 0; i < N * C * H * W; ++i) {  // NCHW order
      const int64_t c = (i / (H * W)) % C;
      const float alpha = IS[c] * GA[c];
      const float beta = std::fma(-MF[c], alpha, BI[c]);
      const T v = static_cast<T>(std::fma(X[i], alpha, beta));
      if (std::memcmp(&v, Y + i, sizeof(T)) != 0) return false;
    }
  }
  return true;
}

// bfloat16 only: float32 gained nothing (2 threads, cold data, 2026-12-05: 8x480x28x28 1.52 vs
// 1.52 ms, 8x832x14x14 0.49-0.56 vs 0.51-0.62 ms; bfloat16 0.65-1.29 -> 0.54-0.89 ms and
// 0.31-0.41 -> 0.29-0.34 ms).
template <typename T>
bool exact_apply() {
#if GF_AVX512
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    static const bool ok = avx512::available() && aten_apply_matches<T>();
    return ok;
  }
#endif
  return false;
}

// Whether bn_relu_backward may recompute the ReLU mask from `pre` (given the forward's beta) for T:
// bfloat16 where exact_apply (its forward apply is the extension's, ATen's bits); float32 where
// the AVX-512 loops run and ATen's own float32 apply is fma(x, alpha, beta) (the probe above: the
// forward stays ATen's native_batch_norm + relu_, only the backward's mask is recomputed).  y is
// then not read: two of the seven passes over memory (batch-8 float32 train step, 2-core Xeon,
// 2026-12-05: benchmarks/results/cpu-xeon-session-2026-12-05.md).
template <typename T>
bool mask_from_pre() {
#if GF_AVX512
  if constexpr (std::is_same_v<T, c10::BFloat16>) return exact_apply<T>();
  if constexpr (std::is_same_v<T, float>) {
    static const bool ok = avx512::available() && aten_apply_matches<float>();
    return ok;
  }
#endif
  return false;
}

// One pixel's row of either pass: kFromPre / the AVX-512 loop where `vec` / else the portable one.
template <typename T, typename A>
inline void sums_row(bool from_pre, bool vec, const T* g, const T* y, const T* x, const A* m, const float* al,
                     const float* be, A* s1, A* s2, int64_t n) {
#if GF_AVX512
  if constexpr (std::is_same_v<T, c10::BFloat16> || std::is_same_v<T, float>) {
    if (from_pre) return bwd_sums_row_avx512<true>(g, y, x, m, al, be, s1, s2, n);
  }
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    if (vec) return bwd_sums_row_avx512<false>(g, y, x, m, al, be, s1, s2, n);
  }
#endif
  bwd_sums_row(g, y, x, m, s1, s2, n);
}
template <typename T, typename A>
inline void grad_row(bool from_pre, bool vec, const T* g, const T* y, const T* x, const A* m, const float* al,
                     const float* be, const A* gm, const A* k, const A* a, T* o, int64_t n) {
#if GF_AVX512
  if constexpr (std::is_same_v<T, c10::BFloat16> || std::is_same_v<T, float>) {
    if (from_pre) return bwd_grad_row_avx512<true>(g, y, x, m, al, be, gm, k, a, o, n);
  }
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    if (vec) return bwd_grad_row_avx512<false>(g, y, x, m, al, be, gm, k, a, o, n);
  }
#endif
  bwd_grad_row(g, y, x, m, gm, k, a, o, n);
}

// ---- channel lists ------------------------------------------------------------------------------
// A list of (N, Ci, H, W) tensors read or written as one NHWC matrix of concatenated channels.
struct ChannelList {
  std::vector<char*> base;      // element (n=0, c=0, h=0, w=0)
  std::vector<int64_t> ld;      // pixel stride, in elements
  std::vector<int64_t> off{0};  // channel offsets (size + 1 entries)
  std::vector<at::Tensor> keep; // channels_last copies made of inputs
};

ChannelList channel_list(at::TensorList ts, const at::Tensor& like, bool write, const char* name) {
  ChannelList l;
  TORCH_CHECK_VALUE(!ts.empty(), name, ": expected at least one tensor");
  for (const at::Tensor& t : ts) {
    TORCH_CHECK_VALUE(t.dim() == 4 && t.size(0) == like.size(0) && t.size(2) == like.size(2) &&
                          t.size(3) == like.size(3) && t.scalar_type() == like.scalar_type() &&
                          t.device() == like.device(),
                      name, ": expected (N, Ci, H, W) tensors with the N, H, W, dtype and device of ", "the first input, got ",
                      t.sizes(), " ", t.scalar_type());
    int64_t ld = nhwc_pixel_stride(t.permute({0, 2, 3, 1}));
    at::Tensor src = t;
    if (ld < 0) {
      TORCH_CHECK_VALUE(!write, name, ": expected channels_last tensors or channel slices of one");
      src = t.contiguous(at::MemoryFormat::ChannelsLast);
      l.keep.push_back(src);
      ld = t.size(1);
    }
    l.base.push_back(static_cast<char*>(const_cast<void*>(src.const_data_ptr())));
    l.ld.push_back(ld);
    l.off.push_back(l.off.back() + t.size(1));
  }
  return l;
}

// One channel range [c0, c1) and, per list, the address of (pixel 0, channel c0) and the pixel stride.
template <size_t K>
struct Piece {
  int64_t c0, c1;
  std::array<char*, K> p;
  std::array<int64_t, K> ld;
};

template <size_t K>
std::vector<Piece<K>> pieces(const std::array<const ChannelList*, K>& lists, int64_t elem) {
  std::vector<int64_t> cuts;
  for (const ChannelList* l : lists) cuts.insert(cuts.end(), l->off.begin(), l->off.end());
  std::sort(cuts.begin(), cuts.end());
  cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
  std::vector<Piece<K>> ps;
  for (size_t i = 0; i + 1 < cuts.size(); ++i) {
    Piece<K> pc;
    pc.c0 = cuts[i];
    pc.c1 = cuts[i + 1];
    for (size_t k = 0; k < K; ++k) {
      const ChannelList& l = *lists[k];
      const size_t j = std::upper_bound(l.off.begin(), l.off.end(), pc.c0) - l.off.begin() - 1;
      pc.p[k] = l.base[j] + (pc.c0 - l.off[j]) * elem;
      pc.ld[k] = l.ld[j];
    }
    ps.push_back(pc);
  }
  return ps;
}

template <typename T, size_t K>
inline T* at_pixel(const Piece<K>& pc, size_t k, int64_t p) {
  return reinterpret_cast<T*>(pc.p[k]) + p * pc.ld[k];
}

// Per-block channel sums of f(piece, pixel, sums) over all pixels, added in block order (double).
template <typename A, size_t K, typename F>
std::vector<double> block_sums(int64_t P, int64_t C, int64_t per_channel, const std::vector<Piece<K>>& ps, const F& f) {
  const int64_t kBlock = block_pixels(P), nb = (P + kBlock - 1) / kBlock;
  std::vector<A> part(static_cast<size_t>(nb * per_channel * C));
  at::parallel_for(0, nb, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      A* s = part.data() + b * per_channel * C;
      std::fill(s, s + per_channel * C, A(0));
      for (int64_t p = b * kBlock, p1 = std::min(P, (b + 1) * kBlock); p < p1; ++p)
        for (const Piece<K>& pc : ps) f(pc, p, s);
    }
  });
  std::vector<double> sum(static_cast<size_t>(per_channel * C), 0.0);
  for (int64_t b = 0; b < nb; ++b)
    for (int64_t i = 0; i < per_channel * C; ++i) sum[i] += static_cast<double>(part[b * per_channel * C + i]);
  return sum;
}

template <size_t K, typename F>
void for_pixels(int64_t P, const std::vector<Piece<K>>& ps, const F& f) {
  const int64_t kBlock = block_pixels(P), nb = (P + kBlock - 1) / kBlock;
  at::parallel_for(0, nb, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t p = b0 * kBlock, p1 = std::min(P, b1 * kBlock); p < p1; ++p)
      for (const Piece<K>& pc : ps) f(pc, p);
  });
}

// ---- backward ------------------------------------------------------------------------------------
// Pass 2's per-channel coefficients from pass 1's sums s = (sum dz [C], sum dz * (pre - mean) [C]):
// gmean = sum / M, k = dot * invstd^2 / M, a = invstd * gamma (ATen's formula), and the gradients
// of gamma (dot * invstd) and beta (sum).
template <typename A>
void bn_backward_coefficients(const std::vector<double>& s, int64_t P, int64_t C, const A* IS, const A* GA,
                              std::vector<A>& gmean, std::vector<A>& k, std::vector<A>& a, A* GG, A* GB) {
  gmean.resize(C);
  k.resize(C);
  a.resize(C);
  for (int64_t c = 0; c < C; ++c) {
    const A sum = static_cast<A>(s[c]), dot = static_cast<A>(s[C + c]);
    gmean[c] = sum / static_cast<A>(P);
    k[c] = dot * IS[c] * IS[c] / static_cast<A>(P);
    a[c] = IS[c] * GA[c];
    GG[c] = dot * IS[c];
    GB[c] = sum;
  }
}

std::tuple<at::Tensor, at::Tensor> bn_relu_backward_cpu(at::TensorList grads, at::TensorList y, at::TensorList pre,
                                                        const at::Tensor& mean, const at::Tensor& invstd,
                                                        const at::Tensor& gamma, at::TensorList outs,
                                                        const std::optional<at::Tensor>& beta) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  TORCH_CHECK_VALUE(!pre.empty() && pre[0].dim() == 4, "pre: expected a list of 4-D tensors");
  const at::Tensor& first = pre[0];
  const ChannelList G = channel_list(grads, first, false, "grads"), Y = channel_list(y, first, false, "y"),
                    X = channel_list(pre, first, false, "pre"), O = channel_list(outs, first, true, "outs");
  const int64_t C = X.off.back();
  for (const ChannelList* l : {&G, &Y, &O})
    TORCH_CHECK_VALUE(l->off.back() == C, "grads, y, outs: expected ", C, " channels in all (pre's), got ", l->off.back());
  for (const at::Tensor* v : {&mean, &invstd, &gamma})
    TORCH_CHECK_VALUE(v->dim() == 1 && v->size(0) == C, "mean, invstd, gamma: expected shape (", C, ",)");
  TORCH_CHECK_VALUE(!beta.has_value() || (beta->dim() == 1 && beta->size(0) == C), "beta: expected shape (", C,
                    ",) or None");
  const int64_t P = first.size(0) * first.size(2) * first.size(3);
  const auto acc = at::toOpMathType(first.scalar_type());
  if (P == 0) return {at::zeros({C}, gamma.options()), at::zeros({C}, gamma.options())};
  at::Tensor ggamma = at::empty({C}, gamma.options().dtype(acc)), gbeta = at::empty({C}, ggamma.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, first.scalar_type(), "bn_relu_backward_cpu", [&] {
    using A = at::opmath_type<scalar_t>;
    const at::Tensor m = mean.to(acc).contiguous(), is = invstd.to(acc).contiguous(), gm = gamma.to(acc).contiguous();
    const A* M = m.const_data_ptr<A>();
    const A* IS = is.const_data_ptr<A>();
    const A* GA = gm.const_data_ptr<A>();
    const auto rd = pieces<3>({&G, &Y, &X}, sizeof(scalar_t));
    const bool vec = use_avx512<scalar_t>();
    // The ReLU mask from pre (y not read: two of the seven passes over memory) where ATen's forward
    // arithmetic is reproduced exactly (mask_from_pre), with the forward's alpha and beta.
    const bool from_pre = beta.has_value() && mask_from_pre<scalar_t>();
    std::vector<float> al, be;  // (float32, bfloat16 only: their accumulator type is float)
    if (from_pre) bn_alpha_beta(m, is, gm, beta->to(at::kFloat), al, be);
    const float *AL = from_pre ? al.data() : nullptr, *BE = from_pre ? be.data() : nullptr;
    const std::vector<double> s = block_sums<A>(P, C, 2, rd, [&](const Piece<3>& pc, int64_t p, A* s) {
      sums_row(from_pre, vec, at_pixel<scalar_t>(pc, 0, p), at_pixel<scalar_t>(pc, 1, p),
               at_pixel<scalar_t>(pc, 2, p), M + pc.c0, AL ? AL + pc.c0 : nullptr, BE ? BE + pc.c0 : nullptr,
               s + pc.c0, s + C + pc.c0, pc.c1 - pc.c0);
    });
    std::vector<A> gmean, k, a;
    bn_backward_coefficients<A>(s, P, C, IS, GA, gmean, k, a, ggamma.data_ptr<A>(), gbeta.data_ptr<A>());
    const auto wr = pieces<4>({&G, &Y, &X, &O}, sizeof(scalar_t));
    for_pixels(P, wr, [&](const Piece<4>& pc, int64_t p) {
      grad_row(from_pre, vec, at_pixel<scalar_t>(pc, 0, p), at_pixel<scalar_t>(pc, 1, p),
               at_pixel<scalar_t>(pc, 2, p), M + pc.c0, AL ? AL + pc.c0 : nullptr, BE ? BE + pc.c0 : nullptr,
               gmean.data() + pc.c0, k.data() + pc.c0, a.data() + pc.c0, at_pixel<scalar_t>(pc, 3, p), pc.c1 - pc.c0);
    });
  });
  return {ggamma.to(gamma.scalar_type()), gbeta.to(gamma.scalar_type())};
}

// ---- backward of max_pool2d(relu(batch_norm(pre))) in one op ---------------------------------------
#if GF_AVX512
// The pool geometry and the BatchNorm's per-channel vectors of one call.
template <typename T>
struct PoolBnBackward {
  const T* GY;
  const uint8_t* TP;
  const T* X;  // pre
  T* GX;       // grad_pre
  int64_t H, W, C, OH, OW, k, s, pd;
  const float *M, *AL, *BE;
};

// dy of pixel p (p = (n * H + ih) * W + iw) into row[0, C).
template <typename T>
GF_AVX512_INLINE void pool_grad_row(const PoolBnBackward<T>& a, int64_t p, T* row) {
  const int64_t n = p / (a.H * a.W), ih = (p / a.W) % a.H, iw = p % a.W;
  int64_t oh0, oh1, ow0, ow1;
  pool_avx512::covering_outputs(ih, a.OH, a.k, a.s, a.pd, oh0, oh1);
  pool_avx512::covering_outputs(iw, a.OW, a.k, a.s, a.pd, ow0, ow1);
  pool_avx512::tap_backward_gather_pixel(a.GY, a.TP, row, n, ih, iw, oh0, oh1, ow0, ow1, a.C, a.OH, a.OW, a.k, a.s,
                                         a.pd, false);
}

// dy's row of a pixel (C values): on the stack up to kStackRow channels (the stem's 64 and 192),
// on the heap beyond: no per-pixel thread-local lookup or allocation for the model's shapes.
constexpr int64_t kStackRow = 1024;
template <typename T>
struct RowBuffer {
  alignas(64) T stack[kStackRow];
  std::vector<T> heap;
  T* data;
  explicit RowBuffer(int64_t C) : heap(C > kStackRow ? C : 0), data(C > kStackRow ? heap.data() : stack) {}
  RowBuffer(const RowBuffer&) = delete;
  RowBuffer& operator=(const RowBuffer&) = delete;
};

// Pass 1 at pixel p: dy's row gathered, the channel sums of dz and dz * (pre - mean) added into s1 / s2.
template <typename T>
GF_AVX512_FN void pool_bn_sums(const PoolBnBackward<T>& a, int64_t p, float* s1, float* s2) {
  RowBuffer<T> row(a.C);
  pool_grad_row(a, p, row.data);
  bwd_sums_row_avx512<true>(row.data, row.data, a.X + p * a.C, a.M, a.AL, a.BE, s1, s2, a.C);
}

// Pass 2 at pixel p: dy's row gathered, grad_pre's row.
template <typename T>
GF_AVX512_FN void pool_bn_grad(const PoolBnBackward<T>& a, int64_t p, const float* gm, const float* kk,
                               const float* al) {
  RowBuffer<T> row(a.C);
  pool_grad_row(a, p, row.data);
  bwd_grad_row_avx512<true>(row.data, row.data, a.X + p * a.C, a.M, a.AL, a.BE, gm, kk, al, a.GX + p * a.C, a.C);
}

// What max_pool2d_tap_backward_ (gather form) followed by bn_relu_backward([dy], [pre], [pre], ...,
// beta) computes, bit for bit, without the pool's input gradient dy in memory: each pixel's dy row
// is gathered from grad_y and the taps into a buffer on the stack (tap_backward_gather_pixel, the
// same sums) right where a pass reads it.  Both passes run through bn_relu_backward's block_sums and
// for_pixels (the same pixel blocks and order) and each gathers the row: memory traffic of ~3.6
// pre-sized tensors instead of ~6.3 (dy written once, read twice) for a second gather.
// Compute-bound in bfloat16 (its gather rounds after every add): there the two ops ran 1.5x faster
// (bn_train.py uses this op for float32 only).
template <typename T>
void pool_bn_relu_backward_avx512(const PoolBnBackward<T>& a, int64_t N, const float* IS, const float* GA, float* GG,
                                  float* GB) {
  const int64_t C = a.C, P = N * a.H * a.W;
  std::vector<Piece<1>> all(1);  // one piece: every channel (the rows come from PoolBnBackward)
  all[0].c0 = 0;
  all[0].c1 = C;
  const std::vector<double> s = block_sums<float>(P, C, 2, all, [&](const Piece<1>&, int64_t p, float* sm) {
    pool_bn_sums(a, p, sm, sm + C);
  });
  std::vector<float> gmean, kk, al;
  bn_backward_coefficients<float>(s, P, C, IS, GA, gmean, kk, al, GG, GB);
  for_pixels(P, all, [&](const Piece<1>&, int64_t p) {
    pool_bn_grad(a, p, gmean.data(), kk.data(), al.data());
  });
}
#endif

std::tuple<at::Tensor, at::Tensor, at::Tensor> max_pool2d_tap_bn_relu_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& tap, const at::Tensor& pre, const at::Tensor& mean,
    const at::Tensor& invstd, const at::Tensor& gamma, const at::Tensor& beta, int64_t kernel, int64_t stride,
    int64_t padding) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const auto cl = at::MemoryFormat::ChannelsLast;
  TORCH_CHECK_VALUE(pre.dim() == 4 && pre.device().is_cpu() && pre.is_contiguous(cl) &&
                        (pre.scalar_type() == at::kFloat || pre.scalar_type() == at::kBFloat16),
                    "pre: expected a channels_last (N, C, H, W) float32 or bfloat16 CPU tensor, got ",
                    pre.scalar_type(), " ", pre.sizes());
  TORCH_CHECK_VALUE(bn_mask_from_pre(pre.scalar_type()),
                    "max_pool2d_tap_bn_relu_backward: needs the exact BatchNorm apply for ", pre.scalar_type(),
                    " (torch.ops.googlenet_fast.bn_relu_mask_from_pre(", pre.scalar_type(), ") is False here)");
  check_tap_pool_window(kernel, stride, padding);
  const int64_t N = pre.size(0), C = pre.size(1), H = pre.size(2), W = pre.size(3);
  TORCH_CHECK_VALUE(grad_y.dim() == 4 && grad_y.size(0) == N && grad_y.size(1) == C &&
                        grad_y.scalar_type() == pre.scalar_type() && grad_y.device().is_cpu(),
                    "grad_y: expected an (", N, ", ", C, ", OH, OW) CPU tensor of pre's dtype, got ",
                    grad_y.scalar_type(), " ", grad_y.sizes());
  TORCH_CHECK_VALUE(tap.scalar_type() == at::kByte && tap.sizes() == grad_y.sizes(),
                    "tap: expected a uint8 tensor of grad_y's shape ", grad_y.sizes(), " (max_pool2d_tap_bn_relu's), got ",
                    tap.scalar_type(), " ", tap.sizes());
  check_pool_grad_size(grad_y, H, W, kernel, stride, padding, "pre");
  const int64_t OH = grad_y.size(2), OW = grad_y.size(3);
  // (max_pool2d_tap_bn_relu makes no empty pool output: neither is one here)
  TORCH_CHECK_VALUE(OH >= 1 && OW >= 1, "grad_y: spatial size ", OH, "x", OW, " is empty (max_pool2d_tap_bn_relu "
                    "refuses an input of ", H, "x", W, " for this window: no gradient of its output to route)");
  for (const at::Tensor* v : {&mean, &invstd, &gamma, &beta})
    TORCH_CHECK_VALUE(v->dim() == 1 && v->size(0) == C && v->scalar_type() == at::kFloat,
                      "mean, invstd, gamma, beta: expected float32 tensors of shape (", C, ",)");
  at::Tensor grad_pre = at::empty_like(pre, pre.options().memory_format(cl));
  at::Tensor ggamma = at::zeros({C}, gamma.options()), gbeta = at::zeros({C}, gamma.options());
  if (pre.numel() == 0) return {grad_pre, ggamma, gbeta};
  const at::Tensor gy = grad_y.contiguous(cl), tp = tap.contiguous(cl);
  const at::Tensor m = mean.contiguous(), is = invstd.contiguous(), ga = gamma.contiguous();
  std::vector<float> al, be;
  bn_alpha_beta(m, is, ga, beta, al, be);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, pre.scalar_type(), "max_pool2d_tap_bn_relu_backward_cpu", [&] {
    if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, c10::BFloat16>) {
#if GF_AVX512
      const PoolBnBackward<scalar_t> a{gy.const_data_ptr<scalar_t>(), tp.const_data_ptr<uint8_t>(),
                                       pre.const_data_ptr<scalar_t>(), grad_pre.data_ptr<scalar_t>(), H, W, C, OH,
                                       OW, kernel, stride, padding, m.const_data_ptr<float>(), al.data(), be.data()};
      pool_bn_relu_backward_avx512(a, N, is.const_data_ptr<float>(), ga.const_data_ptr<float>(),
                                   ggamma.data_ptr<float>(), gbeta.data_ptr<float>());
#endif
    }
  });
  return {grad_pre, ggamma, gbeta};
}

// ---- forward: BatchNorm apply + ReLU ---------------------------------------------------------------
std::tuple<at::Tensor, at::Tensor> bn_relu_apply_cpu(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& var,
                                                     const at::Tensor& gamma, const at::Tensor& beta, double eps) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  TORCH_CHECK_VALUE(x.dim() == 4 && x.device().is_cpu(), "x: expected a 4-D (N, C, H, W) CPU tensor, got ", x.sizes());
  const int64_t C = x.size(1);
  for (const at::Tensor* v : {&mean, &var, &gamma, &beta})
    TORCH_CHECK_VALUE(v->dim() == 1 && v->size(0) == C && v->scalar_type() == at::kFloat,
                      "mean, var, gamma, beta: expected float32 tensors of shape (", C, ",)");
  TORCH_CHECK_VALUE(eps >= 0, "eps: expected a value >= 0, got ", eps);
  if (x.scalar_type() != at::kBFloat16 || !x.is_contiguous(at::MemoryFormat::ChannelsLast) ||
      !exact_apply<c10::BFloat16>()) {
    // ATen's own: the statistics again (the same bits), then its apply and ReLU
    auto [y, m, is] = at::native_batch_norm(x, gamma, beta, {}, {}, true, 0.0, eps);
    return {y.relu_(), is};
  }
  const at::Tensor invstd = bn_invstd(var, eps);
  at::Tensor y = at::empty_like(x, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  [[maybe_unused]] const int64_t P = x.size(0) * x.size(2) * x.size(3);
  std::vector<float> al, be;
  bn_alpha_beta(mean, invstd, gamma, beta, al, be);
#if GF_AVX512
  const auto* X = x.const_data_ptr<c10::BFloat16>();
  auto* Y = y.data_ptr<c10::BFloat16>();
  at::parallel_for(0, P, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, C)), [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) bn_relu_apply_row_avx512(X + p * C, Y + p * C, al.data(), be.data(), C);
  });
#endif
  return {y, invstd};
}

// ---- forward: BatchNorm apply + ReLU from channel lists into channel lists --------------------------
// The portable row: the same arithmetic as bn_relu_apply_row_avx512 (one fma, one rounding to T).
template <typename T>
void bn_relu_apply_row(const T* x, T* y, const float* al, const float* be, int64_t n) {
  for (int64_t c = 0; c < n; ++c) {
    const T r = static_cast<T>(std::fma(static_cast<float>(x[c]), al[c], be[c]));
    y[c] = static_cast<float>(r) < 0.0f ? T(0.0f) : r;
  }
}

at::Tensor bn_relu_apply_into_cpu(at::TensorList xs, const at::Tensor& mean, const at::Tensor& var,
                                  const at::Tensor& gamma, const at::Tensor& beta, double eps, at::TensorList outs) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  TORCH_CHECK_VALUE(!xs.empty() && xs[0].dim() == 4, "xs: expected a list of 4-D (N, Ci, H, W) tensors");
  const at::Tensor& first = xs[0];
  TORCH_CHECK_VALUE(first.device().is_cpu(), "xs: expected CPU tensors, got ", first.device());
  TORCH_CHECK_VALUE(first.scalar_type() == at::kFloat || first.scalar_type() == at::kBFloat16,
                    "xs: expected float32 or bfloat16 tensors, got ", first.scalar_type());
  const ChannelList X = channel_list(xs, first, false, "xs"), O = channel_list(outs, first, true, "outs");
  const int64_t C = X.off.back();
  TORCH_CHECK_VALUE(O.off.back() == C, "outs: expected ", C, " channels in all (xs'), got ", O.off.back());
  for (const at::Tensor& o : outs)
    TORCH_CHECK_VALUE(!o.requires_grad(), "outs: expected tensors that do not require grad (the op writes them and "
                      "is not differentiable)");
  const std::pair<const at::Tensor*, const char*> stats[] = {{&mean, "mean"}, {&var, "var"}, {&gamma, "gamma"},
                                                             {&beta, "beta"}};
  for (const auto& [v, name] : stats)
    TORCH_CHECK_VALUE(v->dim() == 1 && v->size(0) == C && v->scalar_type() == at::kFloat, name,
                      ": expected a float32 tensor of shape (", C, ",), got ", v->scalar_type(), " ", v->sizes());
  TORCH_CHECK_VALUE(eps >= 0, "eps: expected a value >= 0, got ", eps);
  const at::Tensor invstd = bn_invstd(var, eps);
  std::vector<float> al, be;
  bn_alpha_beta(mean, invstd, gamma, beta, al, be);
  const int64_t P = first.size(0) * first.size(2) * first.size(3);
  if (P == 0) return invstd;
  const auto ps = pieces<2>({&X, &O}, first.element_size());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, first.scalar_type(), "bn_relu_apply_into_cpu", [&] {
    if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, c10::BFloat16>) {
#if GF_AVX512
      if (avx512::available()) {
        for_pixels(P, ps, [&](const Piece<2>& pc, int64_t p) {
          bn_relu_apply_row_avx512(at_pixel<scalar_t>(pc, 0, p), at_pixel<scalar_t>(pc, 1, p), al.data() + pc.c0,
                                   be.data() + pc.c0, pc.c1 - pc.c0);
        });
        return;
      }
#endif
      for_pixels(P, ps, [&](const Piece<2>& pc, int64_t p) {
        bn_relu_apply_row(at_pixel<scalar_t>(pc, 0, p), at_pixel<scalar_t>(pc, 1, p), al.data() + pc.c0,
                          be.data() + pc.c0, pc.c1 - pc.c0);
      });
    }
  });
  return invstd;
}

}  // namespace

bool bn_bf16_exact_apply() { return exact_apply<c10::BFloat16>(); }

bool bn_mask_from_pre(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return mask_from_pre<float>();
    case at::kBFloat16: return mask_from_pre<c10::BFloat16>();
    default: return false;
  }
}

at::Tensor bn_invstd(const at::Tensor& var, double eps) {
  const at::Tensor vd = var.to(at::kDouble).contiguous();
  at::Tensor invstd = at::empty({var.size(0)}, var.options().dtype(at::kFloat));
  const double* V = vd.const_data_ptr<double>();
  float* IS = invstd.data_ptr<float>();
  for (int64_t c = 0; c < var.size(0); ++c)
    IS[c] = (V[c] != 0.0 || eps != 0.0) ? static_cast<float>(1.0 / std::sqrt(V[c] + eps)) : 0.0f;
  return invstd;
}

void bn_alpha_beta(const at::Tensor& mean, const at::Tensor& invstd, const at::Tensor& gamma, const at::Tensor& beta,
                   std::vector<float>& alpha, std::vector<float>& beta_out) {
  const int64_t C = mean.size(0);
  const at::Tensor mc = mean.contiguous(), ic = invstd.contiguous(), gc = gamma.contiguous(), bc = beta.contiguous();
  const float *M = mc.const_data_ptr<float>(), *IS = ic.const_data_ptr<float>();
  const float *GA = gc.const_data_ptr<float>(), *B = bc.const_data_ptr<float>();
  alpha.resize(C);
  beta_out.resize(C);
  for (int64_t c = 0; c < C; ++c) {
    alpha[c] = IS[c] * GA[c];
    beta_out[c] = std::fma(-M[c], alpha[c], B[c]);
  }
}

TORCH_LIBRARY_FRAGMENT(googlenet_fast, m) {
  // Train-mode BatchNorm + ReLU backward over channel lists (csrc/cpu/bn_relu_train_cpu.cpp):
  // eager CPU training only (googlenet_fast/bn_train.py); not differentiable.
  m.def("bn_relu_backward(Tensor[] grads, Tensor[] y, Tensor[] pre, Tensor mean, Tensor invstd, Tensor gamma, "
        "Tensor(a!)[] outs, Tensor? beta=None) -> (Tensor grad_gamma, Tensor grad_beta)");
  // relu(batch_norm(x)) from batch_norm_update_stats' mean and biased var: (y, invstd), ATen's bits
  m.def("bn_relu_apply(Tensor x, Tensor mean, Tensor var, Tensor gamma, Tensor beta, float eps) -> (Tensor y, Tensor invstd)");
  // relu(fma(x, alpha, beta)) over channel lists, written into channel lists: invstd
  m.def("bn_relu_apply_into(Tensor[] xs, Tensor mean, Tensor var, Tensor gamma, Tensor beta, float eps, "
        "Tensor(a!)[] outs) -> Tensor invstd");
  // whether bfloat16 runs the exact apply and the backward's mask from pre (else ATen / y)
  m.def("bn_relu_bf16_exact_apply() -> bool");
  // whether bn_relu_backward recomputes the ReLU mask from pre (given beta) for this dtype
  m.def("bn_relu_mask_from_pre(ScalarType dtype) -> bool");
  // the backward of max_pool2d_tap_bn_relu: (grad_pre, grad_gamma, grad_beta)
  m.def("max_pool2d_tap_bn_relu_backward(Tensor grad_y, Tensor tap, Tensor pre, Tensor mean, Tensor invstd, "
        "Tensor gamma, Tensor beta, int kernel, int stride, int padding) -> (Tensor grad_pre, Tensor grad_gamma, "
        "Tensor grad_beta)");
}

TORCH_LIBRARY_IMPL(googlenet_fast, CompositeExplicitAutograd, m) {
  m.impl("bn_relu_bf16_exact_apply", &bn_bf16_exact_apply);
  m.impl("bn_relu_mask_from_pre", &bn_mask_from_pre);
}

TORCH_LIBRARY_IMPL(googlenet_fast, CPU, m) {
  m.impl("bn_relu_backward", &bn_relu_backward_cpu);
  m.impl("bn_relu_apply", &bn_relu_apply_cpu);
  m.impl("bn_relu_apply_into", &bn_relu_apply_into_cpu);
  m.impl("max_pool2d_tap_bn_relu_backward", &max_pool2d_tap_bn_relu_backward_cpu);
}

}  // namespace googlenet_fast
