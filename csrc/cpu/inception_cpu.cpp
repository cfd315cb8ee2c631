// googlenet_fast: the fused Inception forward on the CPU.
//
// NHWC throughout: a 1x1 convolution is the GEMM [pixels, Cin] x [Cin, Cout], and a channel slice
// of the NHWC output is a row-strided matrix (row stride = the output's pixel stride).
//
// stage 1 (one pass over pixel blocks, parallel with at::parallel_for):
//   - merged 1x1 GEMM: x_block [BM, Cin] x [Cin, ch1x1 + ch3x3red + ch5x5red] (x read once);
//     the epilogue adds bias, applies ReLU and scatters: ch1x1 columns into the output's first
//     channel slice, the two reduce outputs into one scratch buffer [pixels, ch3x3red + ch5x5red];
//   - pool projection: the 3x3/s1/p1 max of the block's pixels (-inf padding: only in-bounds
//     neighbours count) is computed into a block-sized buffer, never for the whole batch, and fed
//     to the GEMM [BM, Cin] x [Cin, pool_proj]; the epilogue writes the last channel slice.
// stage 2 (a second pass, after every reduce output exists):
//   - the KxK convolutions of both reduce branches as im2col GEMMs, one pixel block at a time
//     (the im2col block stays in cache), writing their channel slices with bias + ReLU.
// GEMMs on views of the buffers: float32 and bfloat16 through oneDNN's inner product
// (mkldnn::_linear_pointwise, weights prepacked; bfloat16 accumulates in fp32, the bias added to
// the accumulator), float64 through at::mm (MKL/OpenBLAS); the epilogue applies ReLU (and, in the
// im2col path, the bias) while scattering.  Stage 2 in float32 and bfloat16 runs oneDNN's direct
// convolution instead of im2col (stage2_onednn).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/OpMathType.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>

#include <c10/core/Storage.h>
#include <c10/util/intrusive_ptr.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#include "../inception.h"
#include "acc_convert.h"
#include "avx512_lanes.h"
#include "onednn_direct.h"
#include "packed_weights.h"

namespace googlenet_fast {
namespace {

// ---- oneDNN weights prepacked once (csrc/cpu/packed_weights.h) --------------------------------
thread_local bool t_weight_prepacking = false;

c10::optional<c10::OperatorHandle> mkldnn_op(const char* name) {
  if (!at::hasMKLDNN()) return c10::nullopt;
  return c10::Dispatcher::singleton().findSchema({name, ""});
}

// y = conv2d(x, w, b) (no activation: oneDNN's ReLU post-op maps NaN to 0, torch.relu keeps it)
// through oneDNN with the weight prepacked for x's shape; x float32 or bfloat16 on the CPU, any layout
// (channels_last is oneDNN's native one); y channels_last.  Falls back to at::mkldnn_convolution
// (which reorders the weight per call) where the pointwise ops are missing.
at::Tensor onednn_conv2d(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b,
                         int64_t stride, int64_t padding, bool cache) {
  if (direct_onednn_enabled()) {  // the same primitive without ATen's per-call work (onednn_direct.h)
    at::Tensor y = direct_conv2d(x, w, b, stride, padding, cache);
    if (y.defined()) return y;
  }
  static const c10::optional<c10::OperatorHandle> conv = mkldnn_op("mkldnn::_convolution_pointwise");
  static const c10::optional<c10::OperatorHandle> reorder = mkldnn_op("mkldnn::_reorder_convolution_weight");
  if (!conv.has_value() || !reorder.has_value())
    return at::mkldnn_convolution(x, w, b, {padding, padding}, {stride, stride}, {1, 1}, 1);
  const std::vector<int64_t> input(x.sizes().begin(), x.sizes().end());
  std::vector<int64_t> key{0, stride, padding};
  key.insert(key.end(), input.begin(), input.end());
  const at::Tensor packed = packed_weights().get(w, std::move(key), [&] {
    torch::jit::Stack st{w, std::vector<int64_t>{padding, padding}, std::vector<int64_t>{stride, stride},
                         std::vector<int64_t>{1, 1}, int64_t(1), input};
    reorder->callBoxed(&st);
    return st[0].toTensor();
  }, cache, {&w});
  // oneDNN reads the bias as a dense vector: a strided or expanded one is made dense first
  torch::jit::Stack st{x, packed, b.has_value() && b->defined() ? c10::IValue(b->contiguous()) : c10::IValue(),
                       std::vector<int64_t>{padding, padding}, std::vector<int64_t>{stride, stride},
                       std::vector<int64_t>{1, 1}, int64_t(1), std::string("none"),
                       c10::List<c10::optional<at::Scalar>>(), c10::IValue()};
  conv->callBoxed(&st);
  return st[0].toTensor();
}

// A[rows, k] (row stride lda) x W^T (+ bias[n], float32 for bfloat16 A: added to the float32
// accumulator, one rounding), W the row-major [n, k] weight matrix (one row per output
// channel): a fresh dense [rows, n] result (the callers' epilogues read it once and write the
// output slices).  float32 and bfloat16 through oneDNN's inner product (mkldnn::_linear_pointwise,
// the op torch.compile's CPU freezing path runs; on the 2-core AMD EPYC CI machine 2-30% faster
// than MKL's sgemm behind at::mm on the modules' shapes, single-threaded, 2026-11-30; bfloat16
// 4-12% faster than at::mm's oneDNN matmul, 2 threads, 2026-12-04) with W prepacked for
// `rows_hint` rows; float64 through at::mm (MKL/OpenBLAS).
template <typename scalar_t>
at::Tensor gemm_rows(int64_t rows, int64_t k, const scalar_t* a, int64_t lda, const at::Tensor& W,
                     int64_t rows_hint, bool cache, std::initializer_list<const at::Tensor*> sources,
                     const at::Tensor* bias = nullptr) {
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<scalar_t>::value);
  at::Tensor A = at::from_blob(const_cast<scalar_t*>(a), {rows, k}, {lda, 1}, opts);
  if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, c10::BFloat16>) {
    static const c10::optional<c10::OperatorHandle> linear = mkldnn_op("mkldnn::_linear_pointwise");
    static const c10::optional<c10::OperatorHandle> reorder = mkldnn_op("mkldnn::_reorder_linear_weight");
    if (lda == k && direct_onednn_enabled()) {  // the same primitive without ATen's per-call work
      at::Tensor y = direct_inner_product(A, W, bias, rows_hint, cache, sources);
      if (y.defined()) return y;
    }
    if (linear.has_value() && reorder.has_value() && lda == k) {
      // Prepacked when cached (steady state, 2 threads, the modules' shapes: 22-32% faster than
      // a plain weight); otherwise the plain weight, which oneDNN reads as it is: packing for one
      // use cost 2-3x the call (all nine modules' stage-1 shapes, 2026-12-05: 1193 vs 512 us
      // float32, 908 vs 290 us bfloat16; eval with gradients to the parameters, torch.compile).
      const at::Tensor packed = !cache ? W.contiguous() : packed_weights().get(W, {1, rows_hint}, [&] {
        torch::jit::Stack st{W, rows_hint};
        reorder->callBoxed(&st);
        return st[0].toTensor();
      }, cache, sources);
      torch::jit::Stack st{A, packed, bias != nullptr ? c10::IValue(*bias) : c10::IValue(), std::string("none"),
                           c10::List<c10::optional<at::Scalar>>(), c10::IValue()};
      linear->callBoxed(&st);
      return st[0].toTensor();
    }
  }
  if (bias != nullptr) return at::addmm(bias->to(A.scalar_type()), A, W.t());
  return at::mm(A, W.t());
}

// 2-D row-major [rows, cols] weight matrix of a conv weight, OHWI order for KxK (matching the
// im2col column order (ky, kx, ci)); a view when the weight is already laid out that way.
at::Tensor ohwi_matrix(const at::Tensor& w) {
  return w.permute({0, 2, 3, 1}).contiguous().view({w.size(0), -1});
}

// The merged [ch1x1 + ch3x3red + ch5x5red, Cin] weight; read in place when the three sibling
// 1x1 weights are adjacent slices of one buffer (the model's folded-weight cache provides that).
at::Tensor merged_1x1_weight(const InceptionArgs& a, const InceptionShape& s) {
  at::Tensor w1 = a.w_1x1.reshape({s.ch1x1, s.cin});
  at::Tensor w3 = a.w_3x3red.reshape({s.ch3x3red, s.cin});
  at::Tensor w5 = a.w_5x5red.reshape({s.ch5x5red, s.cin});
  if (w1.is_contiguous() && w3.is_contiguous() && w5.is_contiguous()) {
    const int64_t es = w1.element_size();
    const char* p1 = static_cast<const char*>(w1.const_data_ptr());
    if (static_cast<const char*>(w3.const_data_ptr()) == p1 + s.ch1x1 * s.cin * es &&
        static_cast<const char*>(w5.const_data_ptr()) == p1 + (s.ch1x1 + s.ch3x3red) * s.cin * es) {
      return w1.as_strided({s.ch1x1 + s.ch3x3red + s.ch5x5red, s.cin}, {s.cin, 1});
    }
  }
  return at::cat({w1, w3, w5}, 0);
}

// bfloat16: the merged weight with the rows that follow it in its buffer, up to the next multiple
// of 32, where its row count is not a multiple of 16 and the buffer has them (the model's
// folded-weight cache appends zero rows: googlenet_fast/model.py, _merged_pad_rows): oneDNN's AMX
// inner product ran 1.3-1.5x faster with 288 / 320 columns than with 280 / 296 (392 x 512 rows,
// one thread, 2-core Xeon, 2026-12-06).  The extra output columns are never read, so what those
// rows hold does not matter.  Otherwise (other dtypes, a buffer without the room) w itself.
template <typename scalar_t>
at::Tensor padded_1x1_weight(const at::Tensor& w, int64_t cin) {
  const int64_t rows = w.size(0);
  if (!std::is_same_v<scalar_t, c10::BFloat16> || rows % 16 == 0 || !w.has_storage() || w.stride(0) != cin ||
      w.stride(1) != 1)
    return w;
  const int64_t want = (rows + 31) / 32 * 32;
  const int64_t end = (w.storage_offset() + want * cin) * static_cast<int64_t>(w.element_size());
  if (end > static_cast<int64_t>(w.storage().nbytes())) return w;
  return w.as_strided({want, cin}, {cin, 1});
}

// The merged bias (zeros for a missing one), in the accumulator type.
template <typename acc_t>
std::vector<acc_t> bias_vector(std::initializer_list<std::pair<const c10::optional<at::Tensor>*, int64_t>> parts,
                               bool* any) {
  std::vector<acc_t> out;
  *any = false;
  for (const auto& [b, n] : parts) {
    if (b->has_value() && (*b)->defined()) {
      *any = true;
      const at::Tensor& t = **b;
      // Read in place where possible: a converting .to() per bias and call was ~39 small ATen
      // ops (allocations) per batch-1 forward.
      if (t.device().is_cpu() && t.dim() == 1 && t.numel() == n && t.is_contiguous() &&
          (t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kDouble)) {
        AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, t.scalar_type(), "bias_vector", [&] {
          const scalar_t* p = t.const_data_ptr<scalar_t>();
          for (int64_t i = 0; i < n; ++i) out.push_back(static_cast<acc_t>(static_cast<at::opmath_type<scalar_t>>(p[i])));
        });
      } else {
        at::Tensor bc = t.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
        const acc_t* p = bc.const_data_ptr<acc_t>();
        out.insert(out.end(), p, p + n);
      }
    } else {
      out.insert(out.end(), n, acc_t(0));
    }
  }
  return out;
}

// The element loops every stage runs between its GEMMs (epilogues, pooling), written branch-free
// (bitwise |, not ||) so that they vectorize.  float32 and bfloat16 versions are also compiled for
// AVX2 and AVX-512 (the extension's baseline is x86-64's SSE2; GCC picks the clone for the running
// CPU at load time); other dtypes use the templates.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define GF_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
// bfloat16 pooling works on 16-bit integers: AVX-512BW (x86-64-v4) has them in 512-bit registers.
#define GF_CPU_CLONES_BW __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define GF_CPU_CLONES
#define GF_CPU_CLONES_BW
#endif

// Element conversions for the loops below: bfloat16 <-> float32 by bit arithmetic, branch-free so
// that the AVX-512 clones vectorize them (acc_convert.h; c10::BFloat16's own conversion has a branch
// on isnan and stays scalar).
template <typename acc_t, typename scalar_t>
inline __attribute__((always_inline)) acc_t to_acc(scalar_t v) {
  return static_cast<acc_t>(v);
}
template <>
inline __attribute__((always_inline)) float to_acc<float, c10::BFloat16>(c10::BFloat16 v) {
  return acc_convert::to_acc(v);
}
template <typename scalar_t, typename acc_t>
inline __attribute__((always_inline)) scalar_t from_acc(acc_t v) {
  return static_cast<scalar_t>(v);
}
template <>
inline __attribute__((always_inline)) c10::BFloat16 from_acc<c10::BFloat16, float>(float f) {
  return acc_convert::from_acc<c10::BFloat16>(f);
}

// bfloat16 max pooling on 16-bit integer keys (no conversion to float32, 32 lanes per AVX-512
// register instead of 16): key(v) orders as v does (negative values: the magnitude bits flipped),
// every NaN maps to the largest key (NaN wins, as in torch.max_pool2d, read back as the canonical
// quiet NaN), ReLU is max(key, 0) (+0 is key 0, negative values and -0 are below, NaN above).
// The one difference from comparing floats: +0 beats -0 (both compare equal in float).
inline __attribute__((always_inline)) int16_t bf16_key(uint16_t b) {
  const uint16_t flip = static_cast<uint16_t>(static_cast<int16_t>(b) >> 15) & uint16_t(0x7FFF);
  const int16_t k = static_cast<int16_t>(b ^ flip);
  return ((b & 0x7FFF) > 0x7F80) ? int16_t(0x7FFF) : k;
}
inline __attribute__((always_inline)) uint16_t bf16_from_key(int16_t k) {
  const uint16_t flip = static_cast<uint16_t>(k >> 15) & uint16_t(0x7FFF);
  return k == int16_t(0x7FFF) ? uint16_t(0x7FC0) : static_cast<uint16_t>(static_cast<uint16_t>(k) ^ flip);
}

// dst[i] = act(acc[i] + bias[i]) with an accumulator-typed bias (nullptr: none); act = ReLU
// keeping NaN (torch.relu) when `relu`.
template <typename scalar_t, typename acc_t>
inline __attribute__((always_inline)) void store_row_impl(const scalar_t* __restrict__ acc, const acc_t* bias,
                                                          bool relu, scalar_t* __restrict__ dst, int64_t n) {
  if (bias != nullptr) {
    for (int64_t i = 0; i < n; ++i) {
      const acc_t v = to_acc<acc_t>(acc[i]) + bias[i];
      dst[i] = from_acc<scalar_t, acc_t>((!relu | (v > acc_t(0)) | (v != v)) ? v : acc_t(0));
    }
  } else {
    for (int64_t i = 0; i < n; ++i) {
      const acc_t v = to_acc<acc_t>(acc[i]);
      dst[i] = from_acc<scalar_t, acc_t>((!relu | (v > acc_t(0)) | (v != v)) ? v : acc_t(0));
    }
  }
}

template <typename scalar_t, typename acc_t>
void store_row(const scalar_t* acc, const acc_t* bias, bool relu, scalar_t* dst, int64_t n) {
  store_row_impl<scalar_t, acc_t>(acc, bias, relu, dst, n);
}

#if GF_AVX512
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// bfloat16 store_row without a bias, with ReLU (also in place: acc == dst), in 512-bit registers
// with one masked load and store for the row's tail: the clone below ends its vectorized loop in
// a scalar tail that built its lane mask bit by bit (~25% of store_row's samples, and store_row
// 7.5% of all, in a batch-8 bfloat16 forward on the 2-core Xeon, 2026-12-06: rows of 16-384
// channels).  Whole forward, alternated in one process: 1.9-2.1% faster at batch 1, 1.6-3.7% at
// batch 8.  float32 measured no change (its avx512f clone keeps 16 lanes): it stays with the
// clone.  The same bits as the clone (tests/test_portable_loops.py).
GF_AVX512_FN void store_row_relu_avx512(const c10::BFloat16* acc, c10::BFloat16* dst, int64_t n) {
  const uint16_t* src = reinterpret_cast<const uint16_t*>(acc);
  uint16_t* out = reinterpret_cast<uint16_t*>(dst);
  const __m512i mag = _mm512_set1_epi16(0x7FFF), inf = _mm512_set1_epi16(0x7F80);
  for (int64_t i = 0; i < n; i += 32) {
    const __mmask32 m = n - i >= 32 ? ~__mmask32(0) : (__mmask32(1) << (n - i)) - 1u;
    const __m512i b = m == ~__mmask32(0) ? _mm512_loadu_si512(src + i) : _mm512_maskz_loadu_epi16(m, src + i);
    // a negative non-NaN value (sign bit set, magnitude <= the infinity's) -> +0, as the clone
    const __mmask32 zero = _mm512_movepi16_mask(b) & _mm512_cmple_epu16_mask(_mm512_and_si512(b, mag), inf);
    const __m512i r = _mm512_maskz_mov_epi16(~zero, b);
    if (m == ~__mmask32(0)) {
      _mm512_storeu_si512(out + i, r);
    } else {
      _mm512_mask_storeu_epi16(out + i, m, r);
    }
  }
}
#pragma GCC diagnostic pop
#endif

GF_CPU_CLONES void store_row(const float* acc, const float* bias, bool relu, float* dst, int64_t n) {
  store_row_impl<float, float>(acc, bias, relu, dst, n);
}

// Without a bias, bfloat16 is copied on its bits (a negative non-NaN value -> +0 under ReLU): no
// conversion to float32 and back, 32 lanes per AVX-512 register.
GF_CPU_CLONES_BW void store_row_clones(const c10::BFloat16* acc, const float* bias, bool relu, c10::BFloat16* dst,
                                       int64_t n) {
  if (bias == nullptr) {
    const uint16_t* __restrict__ src = reinterpret_cast<const uint16_t*>(acc);
    uint16_t* __restrict__ out = reinterpret_cast<uint16_t*>(dst);
    for (int64_t i = 0; i < n; ++i) {
      const uint16_t b = src[i];
      out[i] = (relu & ((b & 0x8000) != 0) & ((b & 0x7FFF) <= 0x7F80)) ? uint16_t(0) : b;
    }
    return;
  }
  store_row_impl<c10::BFloat16, float>(acc, bias, relu, dst, n);
}

void store_row(const c10::BFloat16* acc, const float* bias, bool relu, c10::BFloat16* dst, int64_t n) {
#if GF_AVX512
  if (bias == nullptr && relu && avx512::available()) return store_row_relu_avx512(acc, dst, n);
#endif
  store_row_clones(acc, bias, relu, dst, n);
}


// In-place ReLU of n contiguous values, NaN kept (torch.relu), -0 -> +0 (as store_row).
// bfloat16 on the bits (a negative non-NaN value becomes +0): no conversion, 32 lanes per
// AVX-512 register; ATen's relu_ converts every bfloat16 value to float32 and back (2.5x slower
// than its float32 relu_ on the EPYC CI machine, 2026-12-05).
GF_CPU_CLONES void relu_inplace(float* p, int64_t n) {
  for (int64_t i = 0; i < n; ++i) p[i] = ((p[i] > 0.f) | (p[i] != p[i])) ? p[i] : 0.f;
}
GF_CPU_CLONES_BW void relu_inplace_clones(c10::BFloat16* q, int64_t n) {
  uint16_t* __restrict__ p = reinterpret_cast<uint16_t*>(q);
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t b = p[i];
    p[i] = ((b & 0x8000) != 0 && (b & 0x7FFF) <= 0x7F80) ? uint16_t(0) : b;
  }
}
void relu_inplace(c10::BFloat16* q, int64_t n) {
#if GF_AVX512
  if (avx512::available()) return store_row_relu_avx512(q, q, n);
#endif
  relu_inplace_clones(q, n);
}

// bfloat16 max pooling on pre-computed keys: the input rows a call needs are converted to their
// keys once (to_keys), then every window tap is one 16-bit integer max (vpmaxsw, 32 lanes).  The
// window loop converted each tap as it read it: 9 conversions per input value in the pool
// branch's 3x3 / stride 1 pool, ~2.25 in the stride-2 pools (perf, batch-8 bfloat16 forward on a
// 2-core Xeon, 2026-12-05: pool3x3_block 9.0% and max_pool_rows 4.9% of all CPU samples).
inline __attribute__((always_inline)) void to_keys(const c10::BFloat16* X, int16_t* __restrict__ keys, int64_t n) {
  const uint16_t* __restrict__ src = reinterpret_cast<const uint16_t*>(X);
  for (int64_t i = 0; i < n; ++i) keys[i] = bf16_key(src[i]);
}

// This thread's key buffer, at least n long, kept across calls (stage 1 calls pool3x3_block once
// per pixel block: no allocation per block).
inline int16_t* key_scratch(int64_t n) {
  thread_local std::vector<int16_t> buf;
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(static_cast<size_t>(n));
  return buf.data();
}

// The max over a kh x kw window of keys for channels [0, cn) of one chunk (cn <= CN; base: the
// window's top-left tap at the chunk's first channel), then ReLU when `relu`, stored as bfloat16.
// A constant cn (the full chunks) and constant kh, kw (full 3x3 windows) give the loops constant
// trip counts: they vectorize whole and the maxima stay in registers.
template <int64_t CN>
inline __attribute__((always_inline)) void key_window_max(const int16_t* base, int64_t kh, int64_t kw, int64_t W,
                                                          int64_t C, int64_t cn, bool relu, c10::BFloat16* out) {
  int16_t k[CN];
  for (int64_t c = 0; c < cn; ++c) k[c] = std::numeric_limits<int16_t>::min();
  for (int64_t i = 0; i < kh; ++i) {
    for (int64_t j = 0; j < kw; ++j) {
      const int16_t* __restrict__ src = base + (i * W + j) * C;
      for (int64_t c = 0; c < cn; ++c) {
        const int16_t v = src[c];  // by value: std::max of two references left the loop scalar
        k[c] = v > k[c] ? v : k[c];
      }
    }
  }
  if (relu) {
    for (int64_t c = 0; c < cn; ++c) k[c] = std::max(k[c], int16_t(0));
  }
  uint16_t* __restrict__ dst = reinterpret_cast<uint16_t*>(out);
  for (int64_t c = 0; c < cn; ++c) dst[c] = bf16_from_key(k[c]);
}

// One output pixel (all C channels) of a bfloat16 max pool from keys: window rows / columns
// [0, kh) x [0, kw) from `base` (the top-left tap's keys, pixel stride C, row stride W * C).
inline __attribute__((always_inline)) void key_window(const int16_t* base, int64_t kh, int64_t kw, int64_t W,
                                                      int64_t C, bool relu, c10::BFloat16* out) {
  constexpr int64_t kChunk = 64;
  int64_t c0 = 0;
  if (kh == 3 && kw == 3) {
    for (; c0 + kChunk <= C; c0 += kChunk) key_window_max<kChunk>(base + c0, 3, 3, W, C, kChunk, relu, out + c0);
  } else {
    for (; c0 + kChunk <= C; c0 += kChunk) key_window_max<kChunk>(base + c0, kh, kw, W, C, kChunk, relu, out + c0);
  }
  if (c0 < C) key_window_max<kChunk>(base + c0, kh, kw, W, C, C - c0, relu, out + c0);
}

// One output pixel's channels [c0, c0 + CN) of the NHWC ceil-mode max pool (window rows [h0, h1),
// columns [w0, w1)); NaN wins (torch.max_pool2d), then ReLU (NaN kept, torch.relu).
template <typename scalar_t, typename acc_t, int64_t CN, int64_t K>
inline __attribute__((always_inline)) void max_pool_chunk(const scalar_t* X, scalar_t* O, int64_t n, int64_t h0,
                                                          int64_t h1, int64_t w0, int64_t w1, int64_t opix,
                                                          int64_t c0, int64_t H, int64_t W, int64_t C, bool relu) {
  // K > 0: a full K x K window (constant trip counts: the taps unroll, m stays in registers)
  const int64_t kh = K > 0 ? K : h1 - h0, kw = K > 0 ? K : w1 - w0;
  const scalar_t* base = X + ((n * H + h0) * W + w0) * C + c0;
  acc_t m[CN];
  for (int64_t c = 0; c < CN; ++c) m[c] = -std::numeric_limits<acc_t>::infinity();
  for (int64_t i = 0; i < kh; ++i) {
    for (int64_t j = 0; j < kw; ++j) {
      const scalar_t* __restrict__ src = base + (i * W + j) * C;
      for (int64_t c = 0; c < CN; ++c) {
        const acc_t v = to_acc<acc_t>(src[c]);
        m[c] = ((v > m[c]) | (v != v)) ? v : m[c];
      }
    }
  }
  if (relu) {
    for (int64_t c = 0; c < CN; ++c) m[c] = ((m[c] > acc_t(0)) | (m[c] != m[c])) ? m[c] : acc_t(0);
  }
  scalar_t* __restrict__ dst = O + opix * C + c0;
  for (int64_t c = 0; c < CN; ++c) dst[c] = from_acc<scalar_t, acc_t>(m[c]);
}

// One output pixel of the NHWC max pool: the max over rows [h0, h1) x columns [w0, w1) of image n,
// written to O + opix * C, then ReLU when `relu`.  Channels in chunks of kChunk held in registers
// across the window's taps (each output value written once); full 3x3 / 2x2 windows take
// constant trip counts.
template <typename scalar_t, typename acc_t>
inline __attribute__((always_inline)) void max_pool_window(const scalar_t* X, scalar_t* O, int64_t n, int64_t h0,
                                                           int64_t h1, int64_t w0, int64_t w1, int64_t opix,
                                                           int64_t H, int64_t W, int64_t C, int64_t kernel,
                                                           bool relu) {
  constexpr int64_t kChunk = 64;
  const bool full = h1 - h0 == kernel && w1 - w0 == kernel;
  int64_t c0 = 0;
  for (; c0 + kChunk <= C; c0 += kChunk) {
    if (full && kernel == 3) {
      max_pool_chunk<scalar_t, acc_t, kChunk, 3>(X, O, n, h0, h1, w0, w1, opix, c0, H, W, C, relu);
    } else if (full && kernel == 2) {
      max_pool_chunk<scalar_t, acc_t, kChunk, 2>(X, O, n, h0, h1, w0, w1, opix, c0, H, W, C, relu);
    } else {
      max_pool_chunk<scalar_t, acc_t, kChunk, 0>(X, O, n, h0, h1, w0, w1, opix, c0, H, W, C, relu);
    }
  }
  if (c0 == C) return;
  const int64_t cn = C - c0;  // the last, partial chunk
  acc_t m[kChunk];
  for (int64_t c = 0; c < cn; ++c) m[c] = -std::numeric_limits<acc_t>::infinity();
  for (int64_t h = h0; h < h1; ++h) {
    for (int64_t w = w0; w < w1; ++w) {
      const scalar_t* __restrict__ src = X + ((n * H + h) * W + w) * C + c0;
      for (int64_t c = 0; c < cn; ++c) {  // NaN wins, as in torch.max_pool2d
        const acc_t v = to_acc<acc_t>(src[c]);
        m[c] = ((v > m[c]) | (v != v)) ? v : m[c];
      }
    }
  }
  if (relu) {
    for (int64_t c = 0; c < cn; ++c)  // NaN kept, as torch.relu
      m[c] = ((m[c] > acc_t(0)) | (m[c] != m[c])) ? m[c] : acc_t(0);
  }
  scalar_t* __restrict__ dst = O + opix * C + c0;
  for (int64_t c = 0; c < cn; ++c) dst[c] = from_acc<scalar_t, acc_t>(m[c]);
}

// One output row (n, oh) of the NHWC ceil-mode max pool (kernel x kernel / stride, no padding).
template <typename scalar_t, typename acc_t>
inline __attribute__((always_inline)) void max_pool_row(const scalar_t* X, scalar_t* O, int64_t row, int64_t H,
                                                        int64_t W, int64_t C, int64_t OH, int64_t OW,
                                                        int64_t kernel, int64_t stride, bool relu) {
  const int64_t n = row / OH, oh = row % OH;
  const int64_t h0 = oh * stride, h1 = std::min(h0 + kernel, H);
  for (int64_t ow = 0; ow < OW; ++ow) {
    const int64_t w0 = ow * stride;
    max_pool_window<scalar_t, acc_t>(X, O, n, h0, h1, w0, std::min(w0 + kernel, W), row * OW + ow, H, W, C,
                                     kernel, relu);
  }
}

// The 3x3 / stride 1 / padding 1 max (out-of-image taps skipped: -inf padding) of pixels
// [p0, p0 + rows) of the NHWC image batch X [N, H, W, C], into dst [rows, C]: the pool branch's
// input, one pixel block at a time (stage 1).
template <typename scalar_t, typename acc_t>
inline __attribute__((always_inline)) void pool3x3_block_impl(const scalar_t* X, scalar_t* dst, int64_t p0,
                                                              int64_t rows, int64_t H, int64_t W, int64_t C) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t p = p0 + r, n = p / (H * W), h = (p / W) % H, w = p % W;
    max_pool_window<scalar_t, acc_t>(X, dst, n, std::max<int64_t>(h - 1, 0), std::min(h + 2, H),
                                     std::max<int64_t>(w - 1, 0), std::min(w + 2, W), r, H, W, C, 3, false);
  }
}

template <typename scalar_t>
void pool3x3_block(const scalar_t* X, scalar_t* dst, int64_t p0, int64_t rows, int64_t H, int64_t W, int64_t C) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  pool3x3_block_impl<scalar_t, acc_t>(X, dst, p0, rows, H, W, C);
}

GF_CPU_CLONES void pool3x3_block(const float* X, float* dst, int64_t p0, int64_t rows, int64_t H, int64_t W,
                                 int64_t C) {
  pool3x3_block_impl<float, float>(X, dst, p0, rows, H, W, C);
}

// bfloat16: the keys of every pixel a window of the block reads (pixels p0 - W - 1 to
// p0 + rows + W, within the block's first and last image) converted once, then the windows.
GF_CPU_CLONES_BW void pool3x3_block(const c10::BFloat16* X, c10::BFloat16* dst, int64_t p0, int64_t rows, int64_t H,
                                    int64_t W, int64_t C) {
  if (rows <= 0) return;
  const int64_t HW = H * W;
  const int64_t q0 = std::max((p0 / HW) * HW, p0 - W - 1);
  const int64_t q1 = std::min(((p0 + rows - 1) / HW + 1) * HW, p0 + rows + W + 1);
  int16_t* keys = key_scratch((q1 - q0) * C);
  to_keys(X + q0 * C, keys, (q1 - q0) * C);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t p = p0 + r, n = p / HW, h = (p / W) % H, w = p % W;
    const int64_t h0 = std::max<int64_t>(h - 1, 0), h1 = std::min(h + 2, H);
    const int64_t w0 = std::max<int64_t>(w - 1, 0), w1 = std::min(w + 2, W);
    key_window(keys + ((n * H + h0) * W + w0 - q0) * C, h1 - h0, w1 - w0, W, C, false, dst + r * C);
  }
}

// float32 rows, also compiled for AVX2 and AVX-512 (GF_CPU_CLONES): 2x faster than the SSE2
// build on the CI machine's EPYC.
GF_CPU_CLONES void max_pool_rows(const float* X, float* O, int64_t begin, int64_t end, int64_t H, int64_t W, int64_t C,
                   int64_t OH, int64_t OW, int64_t kernel, int64_t stride, bool relu) {
  for (int64_t row = begin; row < end; ++row)
    max_pool_row<float, float>(X, O, row, H, W, C, OH, OW, kernel, stride, relu);
}

// bfloat16: output rows in groups whose input rows' keys take ~256 KB, each group's input pixels
// converted once (a contiguous range: the rows from the group's first window to its last).
GF_CPU_CLONES_BW void max_pool_rows(const c10::BFloat16* X, c10::BFloat16* O, int64_t begin, int64_t end, int64_t H,
                                    int64_t W, int64_t C, int64_t OH, int64_t OW, int64_t kernel, int64_t stride,
                                    bool relu) {
  const int64_t group = std::max<int64_t>(1, (int64_t(128) << 10) / std::max<int64_t>(1, W * C * stride));
  for (int64_t g0 = begin; g0 < end; g0 += group) {
    const int64_t g1 = std::min(end, g0 + group);
    const int64_t nb = g0 / OH, ne = (g1 - 1) / OH;
    const int64_t q0 = (nb * H + (g0 % OH) * stride) * W;
    const int64_t q1 = (ne * H + std::min(((g1 - 1) % OH) * stride + kernel, H)) * W;
    int16_t* keys = key_scratch((q1 - q0) * C);
    to_keys(X + q0 * C, keys, (q1 - q0) * C);
    for (int64_t row = g0; row < g1; ++row) {
      const int64_t n = row / OH, h0 = (row % OH) * stride, h1 = std::min(h0 + kernel, H);
      for (int64_t ow = 0; ow < OW; ++ow) {
        const int64_t w0 = ow * stride, w1 = std::min(w0 + kernel, W);
        key_window(keys + ((n * H + h0) * W + w0 - q0) * C, h1 - h0, w1 - w0, W, C, relu,
                   O + (row * OW + ow) * C);
      }
    }
  }
}

// Other dtypes: the baseline build (float accumulation for the half types, exact for a max).
template <typename scalar_t>
void max_pool_rows(const scalar_t* X, scalar_t* O, int64_t begin, int64_t end, int64_t H, int64_t W, int64_t C,
                   int64_t OH, int64_t OW, int64_t kernel, int64_t stride, bool relu) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  for (int64_t row = begin; row < end; ++row)
    max_pool_row<scalar_t, acc_t>(X, O, row, H, W, C, OH, OW, kernel, stride, relu);
}


// Scratch memory every element of which the caller writes before reading: uninitialized (a
// std::vector would zero it first, a full extra pass over the reduce buffers).
template <typename scalar_t>
std::unique_ptr<scalar_t[]> scratch(int64_t n) {
  return std::unique_ptr<scalar_t[]>(new scalar_t[static_cast<size_t>(std::max<int64_t>(n, 1))]);
}

// Pixel blocks: a multiple of the thread count, about `target` pixels each.  Measured on the
// 2-core CI machine (single-thread CPU time, b=8, all nine modules): 512/256-pixel blocks for
// stage 1/stage 2 ran 4% faster than 128/64 (the GEMMs dominate; larger blocks feed them better).
struct Blocks {
  int64_t count, size;
};
Blocks make_blocks(int64_t pixels, int64_t target) {
  const int64_t t = std::max<int64_t>(1, at::get_num_threads());
  int64_t count = t * ((pixels + t * target - 1) / (t * target));
  count = std::max<int64_t>(1, std::min(count, pixels));
  const int64_t size = (pixels + count - 1) / count;
  return {(pixels + size - 1) / size, size};
}

// Enough blocks: one per thread at least, GEMMs single-threaded inside.  Too few (tiny maps
// at batch 1): run the blocks in order and let the BLAS thread each GEMM.
template <typename F>
void run_blocks(int64_t count, const F& f) {
  const int64_t nt = at::get_num_threads();
  if (count >= nt && nt > 1) at::parallel_for(0, count, 1, f); else f(0, count);
}

// Where stage 1 writes the two reduce outputs and stage 2 reads them: row-major [pixels, C] matrices
// with their own row strides.  Interleaved (r3 = R, r5 = R + ch3x3red, both with row stride
// ch3x3red + ch5x5red): the train-mode `reduce` tensor.  Separate (dense [pixels, ch3x3red] then
// dense [pixels, ch5x5red]): each branch is a dense NHWC tensor oneDNN's convolution can read.
template <typename scalar_t>
struct ReduceBuffers {
  scalar_t* r3;
  int64_t ld3;
  scalar_t* r5;
  int64_t ld5;
};

// Per-channel affine + ReLU applied by stage 2's im2col loader to the reduce outputs it reads:
// v -> max(v * scale[c] + shift[c], 0), the train-mode BatchNorm + ReLU of the two reduce branches
// (scale = gamma * rsqrt(var + eps), shift = beta - mean * scale).  nullptr: read as stored.
template <typename acc_t>
struct ReduceNorm {
  const acc_t* scale = nullptr;
  const acc_t* shift = nullptr;
};

// Stage 1: merged 1x1 GEMM + pool projection over pixel blocks.  Writes branch 1 and the pool
// projection into their slices of `out` (pixel stride ldo) and the two reduce outputs into
// R [pixels, ch3x3red + ch5x5red]; `relu` and the biases apply to all of them.
template <typename scalar_t>
void stage1_cpu(const InceptionArgs& a, const InceptionShape& s, const scalar_t* X, scalar_t* out, int64_t ldo,
                ReduceBuffers<scalar_t> R, bool cache) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t H = s.h, W = s.w, Cin = s.cin;
  const int64_t P = s.n * H * W;  // pixels
  const int64_t c1 = s.ch1x1, r3 = s.ch3x3red, r5 = s.ch5x5red, cp = s.pool_proj;
  const bool relu = a.relu;
  const at::Tensor wm = padded_1x1_weight<scalar_t>(merged_1x1_weight(a, s), Cin);
  const int64_t np = wm.size(0);  // c1 + r3 + r5, or more: zero rows (the GEMM's extra columns are not read)
  const at::Tensor wp = a.w_pool_proj.reshape({cp, Cin}).contiguous();
  bool has_bm, has_bp;
  std::vector<acc_t> bm = bias_vector<acc_t>({{&a.b_1x1, c1}, {&a.b_3x3red, r3}, {&a.b_5x5red, r5}}, &has_bm);
  bm.resize(static_cast<size_t>(np), acc_t(0));
  const std::vector<acc_t> bp = bias_vector<acc_t>({{&a.b_pool_proj, cp}}, &has_bp);
  const int64_t off_b4 = c1 + s.ch3x3 + s.ch5x5;
  // The biases ride in the GEMMs (oneDNN adds them to the float32 accumulator: one rounding in
  // bfloat16, and the epilogue below is a plain ReLU copy).
  const auto acc_opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value);
  const at::Tensor bmt = has_bm ? at::from_blob(const_cast<acc_t*>(bm.data()), {np}, acc_opts) : at::Tensor();
  const at::Tensor bpt = has_bp ? at::from_blob(const_cast<acc_t*>(bp.data()), {cp}, acc_opts) : at::Tensor();
  const acc_t* no_bias = nullptr;

  const Blocks b1 = make_blocks(P, 512);
  auto stage1 = [&](int64_t begin, int64_t end) {
    const std::unique_ptr<scalar_t[]> pooled = scratch<scalar_t>(b1.size * Cin);
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t p0 = blk * b1.size, rows = std::min(b1.size, P - p0);
      // merged 1x1: x read once for ch1x1, ch3x3red and ch5x5red.
      const at::Tensor acc = gemm_rows<scalar_t>(rows, Cin, X + p0 * Cin, Cin, wm, b1.size, cache,
                                                    {&a.w_1x1, &a.w_3x3red, &a.w_5x5red}, has_bm ? &bmt : nullptr);
      for (int64_t r = 0; r < rows; ++r) {
        const scalar_t* ar = acc.const_data_ptr<scalar_t>() + r * np;
        store_row(ar, no_bias, relu, out + (p0 + r) * ldo, c1);
        store_row(ar + c1, no_bias, relu, R.r3 + (p0 + r) * R.ld3, r3);
        store_row(ar + c1 + r3, no_bias, relu, R.r5 + (p0 + r) * R.ld5, r5);
      }
      // 3x3/s1/p1 max pool of this block's pixels, padding -inf (out-of-bounds taps skipped; the
      // centre tap is always in bounds).  NaN propagates as in torch.max_pool2d.
      pool3x3_block(X, pooled.get(), p0, rows, H, W, Cin);
      const at::Tensor accp = gemm_rows<scalar_t>(rows, Cin, pooled.get(), Cin, wp, b1.size, cache, {&a.w_pool_proj},
                                                     has_bp ? &bpt : nullptr);
      for (int64_t r = 0; r < rows; ++r)
        store_row(accp.const_data_ptr<scalar_t>() + r * cp, no_bias, relu, out + (p0 + r) * ldo + off_b4, cp);
    }
  };
  run_blocks(b1.count, stage1);
}

// Stage 2: the KxK convolutions of both reduce branches as im2col GEMMs, one pixel block at a
// time (the im2col block stays in cache), writing their channel slices with bias + `relu`.  The
// loader applies `norm` (when set) to every in-bounds tap; padding taps stay 0, i.e. the
// convolution pads its (normalized, activated) input as nn.Conv2d does.
template <typename scalar_t>
void stage2_cpu(const InceptionArgs& a, const InceptionShape& s, ReduceBuffers<scalar_t> R, scalar_t* out, int64_t ldo,
                ReduceNorm<at::opmath_type<scalar_t>> norm) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t H = s.h, W = s.w;
  const int64_t P = s.n * H * W;
  const int64_t c1 = s.ch1x1, r3 = s.ch3x3red, r5 = s.ch5x5red;
  const bool relu = a.relu;
  const at::Tensor w3 = ohwi_matrix(a.w_3x3);
  const at::Tensor w5 = ohwi_matrix(a.w_5x5);
  bool has_b3, has_b5;
  const std::vector<acc_t> b3 = bias_vector<acc_t>({{&a.b_3x3, s.ch3x3}}, &has_b3);
  const std::vector<acc_t> b5 = bias_vector<acc_t>({{&a.b_5x5, s.ch5x5}}, &has_b5);
  const int64_t off_b2 = c1, off_b3 = c1 + s.ch3x3;

  const Blocks b2 = make_blocks(P, 256);
  auto stage2 = [&](int64_t begin, int64_t end) {
    const int64_t kmax = std::max(s.k3 * s.k3 * r3, s.k5 * s.k5 * r5);
    const std::unique_ptr<scalar_t[]> col = scratch<scalar_t>(b2.size * kmax);
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t p0 = blk * b2.size, rows = std::min(b2.size, P - p0);
      for (int branch = 0; branch < 2; ++branch) {
        const int64_t K = branch == 0 ? s.k3 : s.k5, rc = branch == 0 ? r3 : r5;
        const int64_t cout = branch == 0 ? s.ch3x3 : s.ch5x5, roff = branch == 0 ? 0 : r3;
        const scalar_t* Rb = branch == 0 ? R.r3 : R.r5;
        const int64_t ldr = branch == 0 ? R.ld3 : R.ld5;
        const int64_t ooff = branch == 0 ? off_b2 : off_b3, pad = K / 2, kk = K * K * rc;
        const at::Tensor& wk = branch == 0 ? w3 : w5;
        const acc_t* bias = branch == 0 ? (has_b3 ? b3.data() : nullptr) : (has_b5 ? b5.data() : nullptr);
        const acc_t* nscale = norm.scale != nullptr ? norm.scale + roff : nullptr;
        const acc_t* nshift = norm.shift != nullptr ? norm.shift + roff : nullptr;
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t p = p0 + r, n = p / (H * W), h = (p / W) % H, w = p % W;
          scalar_t* dst = col.get() + r * kk;
          for (int64_t ky = 0; ky < K; ++ky) {
            const int64_t hh = h + ky - pad;
            for (int64_t kx = 0; kx < K; ++kx, dst += rc) {
              const int64_t ww = w + kx - pad;
              if (hh < 0 || hh >= H || ww < 0 || ww >= W) {
                std::fill(dst, dst + rc, scalar_t(0));
                continue;
              }
              const scalar_t* src = Rb + ((n * H + hh) * W + ww) * ldr;
              if (nscale == nullptr) {
                std::copy(src, src + rc, dst);
              } else {
                for (int64_t c = 0; c < rc; ++c) {
                  const acc_t v = static_cast<acc_t>(src[c]) * nscale[c] + nshift[c];
                  dst[c] = static_cast<scalar_t>((v > acc_t(0) || v != v) ? v : acc_t(0));
                }
              }
            }
          }
        }
        const at::Tensor acc = gemm_rows<scalar_t>(rows, kk, col.get(), kk, wk, b2.size, /*cache=*/false, {});
        for (int64_t r = 0; r < rows; ++r)
          store_row(acc.const_data_ptr<scalar_t>() + r * cout, bias, relu, out + (p0 + r) * ldo + ooff, cout);
      }
    }
  };
  run_blocks(b2.count, stage2);
}

// Stage 2 through oneDNN's direct convolution (float32, bfloat16): each reduce branch is a dense NHWC
// tensor, convolved with bias by onednn_conv2d (prepacked weight; float32: 115-129 GFLOP/s on one core of
// the CI machine against ~100 for im2col + GEMM, measured 2026-11-30 on the modules' shapes;
// bfloat16: 440-500 GFLOP/s on one core for the 3x3 convolutions of 3a-5b, 2026-12-04), then one
// parallel pass applies ReLU while writing the branch's channel slice of `out`.
template <typename scalar_t>
void stage2_onednn(const InceptionArgs& a, const InceptionShape& s, ReduceBuffers<scalar_t> R, scalar_t* out,
                   int64_t ldo, bool cache) {
  const int64_t P = s.n * s.h * s.w;
  const auto opts = a.x.options();
  at::Tensor y[2];
  for (int branch = 0; branch < 2; ++branch) {
    const int64_t rc = branch == 0 ? s.ch3x3red : s.ch5x5red;
    const int64_t K = branch == 0 ? s.k3 : s.k5;
    const at::Tensor in = at::from_blob(branch == 0 ? R.r3 : R.r5, {s.n, rc, s.h, s.w},
                                        {s.h * s.w * rc, 1, s.w * rc, rc}, opts);
    const at::Tensor& w = branch == 0 ? a.w_3x3 : a.w_5x5;
    const c10::optional<at::Tensor>& b = branch == 0 ? a.b_3x3 : a.b_5x5;
    y[branch] = onednn_conv2d(in, w, b, 1, K / 2, cache).contiguous(at::MemoryFormat::ChannelsLast);
  }
  // Both branches' channel slices in one parallel pass (one fork/join, not one per branch).
  const scalar_t* Y3 = y[0].const_data_ptr<scalar_t>();
  const scalar_t* Y5 = y[1].const_data_ptr<scalar_t>();
  const int64_t c3 = s.ch3x3, c5 = s.ch5x5, o3 = s.ch1x1, o5 = s.ch1x1 + s.ch3x3;
  const bool relu = a.relu;
  const at::opmath_type<scalar_t>* no_bias = nullptr;
  // Grain: ~4096 values per chunk.  A fixed 256 pixels left the 14x14 and 7x7 maps of batch 1
  // (196 and 49 pixels) on one thread while the other waited (perf, 2026-12-05).
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, c3 + c5));
  at::parallel_for(0, P, grain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      store_row(Y3 + p * c3, no_bias, relu, out + p * ldo + o3, c3);
      store_row(Y5 + p * c5, no_bias, relu, out + p * ldo + o5, c5);
    }
  });
}

template <typename scalar_t>
void inception_cpu_impl(const InceptionArgs& a, const InceptionShape& s, scalar_t* out, int64_t ldo) {
  // NHWC input (a view when x is channels_last; expanded or strided inputs are made dense here).
  const at::Tensor xc = a.x.permute({0, 2, 3, 1}).contiguous();
  // Scratch for the two reduce outputs, one dense [pixels, C] matrix per branch: the only
  // intermediate that touches memory.
  const int64_t P = s.n * s.h * s.w;
  const std::unique_ptr<scalar_t[]> red = scratch<scalar_t>(P * (s.ch3x3red + s.ch5x5red));
  const ReduceBuffers<scalar_t> R{red.get(), s.ch3x3red, red.get() + P * s.ch3x3red, s.ch5x5red};
  const bool cache = weight_prepacking_enabled();
  stage1_cpu<scalar_t>(a, s, xc.const_data_ptr<scalar_t>(), out, ldo, R, cache);
  if ((std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, c10::BFloat16>) && at::hasMKLDNN()) {
    stage2_onednn<scalar_t>(a, s, R, out, ldo, cache);
  } else {
    stage2_cpu<scalar_t>(a, s, R, out, ldo, {});
  }
}

}  // namespace

void inception_forward_cpu(const InceptionArgs& a, const InceptionShape& s, at::Tensor& out) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;  // inner ATen calls need no autograd
  TORCH_CHECK_TYPE(a.x.scalar_type() != at::kHalf,
                   "x: the cpu backend supports float32, float64 and bfloat16, got float16 "
                   "(use bfloat16, or backend='reference')");
  // Write straight into `out` when its NHWC view is row-strided (channels_last, or a channel
  // slice of a larger channels_last buffer); otherwise into a dense NHWC buffer, then copy.
  NhwcOutput o(out, s);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, a.x.scalar_type(), "inception_forward_cpu", [&] {
    inception_cpu_impl<scalar_t>(a, s, o.target.data_ptr<scalar_t>(), o.ldo);
  });
  o.finish();
}

}  // namespace googlenet_fast

namespace googlenet_fast {

namespace {

}  // namespace

bool weight_prepacking_enabled() { return t_weight_prepacking; }

int64_t prepacked_weight_count() { return static_cast<int64_t>(packed_weights().size()); }

void clear_prepacked_weights() { packed_weights().clear(); }

int64_t prepacked_weight_tensors() { return static_cast<int64_t>(packed_weights().tensors()); }

int64_t prepacked_weight_capacity() { return static_cast<int64_t>(PackedWeights::capacity()); }

bool set_weight_prepacking(bool enabled) {
  const bool previous = t_weight_prepacking;
  t_weight_prepacking = enabled;
  return previous;
}

at::Tensor max_pool_nhwc_cpu(const at::Tensor& x, int64_t kernel, int64_t stride, bool relu) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t OH = pool_out_size(H, kernel, stride), OW = pool_out_size(W, kernel, stride);
  const auto cl = at::MemoryFormat::ChannelsLast;
  const at::Tensor xc = x.contiguous(cl);
  at::Tensor out = at::empty({N, C, OH, OW}, x.options().memory_format(cl));
  if (out.numel() == 0) return out;
  // one output row (n, oh) per iteration: OW * kernel^2 * C loads
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, OW * kernel * kernel * C));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "max_pool_nhwc_cpu", [&] {
    const scalar_t* X = xc.const_data_ptr<scalar_t>();
    scalar_t* O = out.data_ptr<scalar_t>();
    at::parallel_for(0, N * OH, grain, [&](int64_t begin, int64_t end) {
      max_pool_rows(X, O, begin, end, H, W, C, OH, OW, kernel, stride, relu);
    });
  });
  return out;
}

at::Tensor conv2d_relu_cpu(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                           int64_t stride, int64_t padding, bool relu) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  at::Tensor y;
  if ((x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16) && at::hasMKLDNN()) {
    y = onednn_conv2d(x, weight, bias, stride, padding, weight_prepacking_enabled());
  } else {
    y = at::convolution(x, weight, bias, {stride, stride}, {padding, padding}, {1, 1}, false, {0, 0}, 1);
  }
  y = y.contiguous(at::MemoryFormat::ChannelsLast);
  if (!relu) return y;
  // torch.relu's NaN (oneDNN's ReLU post-op would make NaN 0); y is dense (channels_last)
  auto relu_dense = [&](auto* p) {
    at::parallel_for(0, y.numel(), 65536, [&](int64_t begin, int64_t end) { relu_inplace(p + begin, end - begin); });
  };
  if (y.scalar_type() == at::kFloat) {
    relu_dense(y.data_ptr<float>());
  } else if (y.scalar_type() == at::kBFloat16) {
    relu_dense(y.data_ptr<c10::BFloat16>());
  } else {
    y.relu_();
  }
  return y;
}

// max_pool(relu(conv2d(x))) (the stem's conv1 -> maxpool1, conv3 -> maxpool2), a few images at a
// time: each group's convolution output (at most kPoolGroupBytes) is pooled while it is still in
// the caches, instead of the whole batch's output (25 MB for conv1 at batch 8 in float32) being
// written by oneDNN and read back from memory by the pool.  The ReLU runs in the pool's pass
// (relu(maxpool(y)) == maxpool(relu(y)), NaN included).  float32 and bfloat16 through oneDNN
// (weights prepacked per group shape); other dtypes: conv2d_relu_cpu then max_pool_nhwc_cpu.
constexpr int64_t kPoolGroupBytes = int64_t(4) << 20;

at::Tensor conv2d_relu_max_pool_cpu(const at::Tensor& x, const at::Tensor& weight,
                                    const c10::optional<at::Tensor>& bias, int64_t stride, int64_t padding,
                                    int64_t pool_kernel, int64_t pool_stride) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  if (!((x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16) && at::hasMKLDNN())) {
    return max_pool_nhwc_cpu(conv2d_relu_cpu(x, weight, bias, stride, padding, false), pool_kernel, pool_stride,
                             true);
  }
  const int64_t N = x.size(0), C = weight.size(0), k = weight.size(2);
  const int64_t OH = (x.size(2) + 2 * padding - k) / stride + 1, OW = (x.size(3) + 2 * padding - k) / stride + 1;
  const int64_t PH = pool_out_size(OH, pool_kernel, pool_stride), PW = pool_out_size(OW, pool_kernel, pool_stride);
  const auto cl = at::MemoryFormat::ChannelsLast;
  at::Tensor out = at::empty({N, C, PH, PW}, x.options().memory_format(cl));
  if (out.numel() == 0) return out;
  const int64_t image_bytes = OH * OW * C * static_cast<int64_t>(x.element_size());
  const int64_t group = std::max<int64_t>(1, std::min<int64_t>(N, kPoolGroupBytes / std::max<int64_t>(1, image_bytes)));
  const bool cache = weight_prepacking_enabled();
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, PW * pool_kernel * pool_kernel * C));
  for (int64_t n0 = 0; n0 < N; n0 += group) {
    const int64_t nb = std::min(group, N - n0);
    const at::Tensor y = onednn_conv2d(x.narrow(0, n0, nb), weight, bias, stride, padding, cache).contiguous(cl);
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "conv2d_relu_max_pool_cpu", [&] {
      const scalar_t* Y = y.const_data_ptr<scalar_t>();
      scalar_t* O = out.data_ptr<scalar_t>() + n0 * PH * PW * C;
      at::parallel_for(0, nb * PH, grain, [&](int64_t begin, int64_t end) {
        max_pool_rows(Y, O, begin, end, OH, OW, C, PH, PW, pool_kernel, pool_stride, /*relu=*/true);
      });
    });
  }
  return out;
}

// The classifier head: fc(flatten(adaptive_avg_pool2d(x, 1))).  The channel means of the NHWC
// input in the accumulator type (rounded once to x's dtype, as ATen's mean), then the fc layer
// through oneDNN's inner product, which threads the batch-1 GEMV over the output features (MKL's
// sgemv behind addmm did not: 0.10 vs 0.155 ms with the 4 MB weight out of cache, 2-core EPYC,
// 2026-12-05); float64 through addmm.  The weight is packed once and reused under this thread's
// weight prepacking (GoogLeNet's eval head sets it with model.HEAD_PREPACK, opt-in: fc.weight is a
// parameter, so its copies are dropped by clear_folded_cache() and optimizer steps,
// PackedWeights::clear, and a write through .data goes unseen); otherwise oneDNN
// reads it as given (bfloat16 batch 1: 73 vs 35 us a call hot, the plain weight copied into
// oneDNN's layout each call; 2-core Xeon, 2026-12-06).
at::Tensor avgpool_linear_cpu(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  if (C == 0 || N == 0) {  // an empty sum: the bias alone, as F.linear gives
    at::Tensor y = at::zeros({N, weight.size(0)}, x.options());
    if (bias.has_value() && bias->defined()) y.add_(*bias);
    return y;
  }
  const at::Tensor xc = x.contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor pooled = at::empty({N, C}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "avgpool_linear_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* X = xc.const_data_ptr<scalar_t>();
    scalar_t* Pd = pooled.data_ptr<scalar_t>();
    const acc_t inv = acc_t(1) / static_cast<acc_t>(HW);
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> acc(static_cast<size_t>(C));
      for (int64_t n = begin; n < end; ++n) {
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t p = 0; p < HW; ++p) {
          const scalar_t* row = X + (n * HW + p) * C;
          for (int64_t c = 0; c < C; ++c) acc[c] += static_cast<acc_t>(row[c]);
        }
        for (int64_t c = 0; c < C; ++c) Pd[n * C + c] = static_cast<scalar_t>(acc[c] * inv);
      }
    });
  });
  const at::Tensor* b = bias.has_value() && bias->defined() ? &*bias : nullptr;
  if (direct_onednn_enabled() && weight.is_contiguous()) {  // the plain weight, as below
    at::Tensor y = direct_inner_product(pooled, weight, b, N, weight_prepacking_enabled(), {&weight});
    if (y.defined()) return y;
  }
  static const c10::optional<c10::OperatorHandle> linear = mkldnn_op("mkldnn::_linear_pointwise");
  if ((x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16) && linear.has_value() &&
      weight.is_contiguous()) {
    torch::jit::Stack st{pooled, weight, bias.has_value() && bias->defined() ? c10::IValue(bias->contiguous()) : c10::IValue(),
                         std::string("none"),
                         c10::List<c10::optional<at::Scalar>>(), c10::IValue()};
    linear->callBoxed(&st);
    return st[0].toTensor();
  }
  return bias.has_value() && bias->defined() ? at::addmm(*bias, pooled, weight.t()) : at::mm(pooled, weight.t());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> inception_bn_train_cpu(
    const InceptionArgs& a, const InceptionShape& s, const at::Tensor& reduce_weight,
    const at::Tensor& reduce_bias, double eps) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  TORCH_CHECK_TYPE(a.x.scalar_type() != at::kHalf,
                   "x: the cpu backend supports float32, float64 and bfloat16, got float16 "
                   "(use bfloat16, or backend='reference')");
  const int64_t rr = s.ch3x3red + s.ch5x5red, P = s.n * s.h * s.w;
  const auto cl = at::MemoryFormat::ChannelsLast;
  at::Tensor out = at::empty({s.n, s.out_channels(), s.h, s.w}, a.x.options().memory_format(cl));
  at::Tensor reduce = at::empty({s.n, rr, s.h, s.w}, a.x.options().memory_format(cl));
  const auto acc_type = at::toOpMathType(a.x.scalar_type());
  if (P == 0) {
    at::Tensor nan = at::full({rr}, std::numeric_limits<double>::quiet_NaN(), a.x.options().dtype(acc_type));
    return {out, reduce, nan, nan.clone()};
  }
  const at::Tensor xc = a.x.permute({0, 2, 3, 1}).contiguous();
  const int64_t ldo = s.out_channels();
  at::Tensor mean, var;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, a.x.scalar_type(), "inception_bn_train_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    scalar_t* O = out.data_ptr<scalar_t>();  // channels_last: the NHWC view is dense [P, out_channels]
    scalar_t* Rp = reduce.data_ptr<scalar_t>();
    const ReduceBuffers<scalar_t> R{Rp, rr, Rp + s.ch3x3red, rr};  // interleaved: the `reduce` tensor
    stage1_cpu<scalar_t>(a, s, xc.const_data_ptr<scalar_t>(), O, ldo, R, /*cache=*/false);
    // Batch statistics of the reduce outputs over N, H, W (biased variance, as BatchNorm
    // normalizes with), in the accumulator type.
    const at::Tensor rm = reduce.permute({0, 2, 3, 1}).reshape({P, rr}).to(acc_type);
    std::tie(var, mean) = at::var_mean(rm, at::IntArrayRef{0}, /*correction=*/0, /*keepdim=*/false);
    const at::Tensor scale = (reduce_weight.to(acc_type) * at::rsqrt(var + eps)).contiguous();
    const at::Tensor shift = (reduce_bias.to(acc_type) - mean * scale).contiguous();
    const acc_t* sc = scale.const_data_ptr<acc_t>();
    const acc_t* sh = shift.const_data_ptr<acc_t>();
    if (std::is_same_v<scalar_t, float> && at::hasMKLDNN()) {
      // The reduce branches' BatchNorm + ReLU in one pass into dense per-branch buffers, then
      // oneDNN's direct convolution (faster than im2col + GEMM; see stage2_onednn).
      const std::unique_ptr<scalar_t[]> act = scratch<scalar_t>(P * rr);
      const int64_t r3 = s.ch3x3red, r5 = s.ch5x5red;
      const ReduceBuffers<scalar_t> A{act.get(), r3, act.get() + P * r3, r5};
      at::parallel_for(0, P, 256, [&](int64_t begin, int64_t end) {
        for (int64_t p = begin; p < end; ++p) {
          const scalar_t* src = Rp + p * rr;
          for (int64_t c = 0; c < rr; ++c) {
            const acc_t v = static_cast<acc_t>(src[c]) * sc[c] + sh[c];
            const scalar_t y = static_cast<scalar_t>((v > acc_t(0) || v != v) ? v : acc_t(0));
            if (c < r3) A.r3[p * r3 + c] = y; else A.r5[p * r5 + c - r3] = y;
          }
        }
      });
      stage2_onednn<scalar_t>(a, s, A, O, ldo, /*cache=*/false);
    } else {
      stage2_cpu<scalar_t>(a, s, R, O, ldo, {sc, sh});
    }
  });
  return {out, reduce, mean, var};
}

}  // namespace googlenet_fast
