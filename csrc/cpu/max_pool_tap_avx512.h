// googlenet_fast: the AVX-512 inner loops of the training max pool with one-byte argmax taps
// (csrc/cpu/max_pool_train_cpu.cpp), float32 and bfloat16, 16 channels per 512-bit register.
//
// Why intrinsics: the portable loops there, compiled for AVX-512 by target_clones, come out in
// 256-bit registers with the running max and argmax of each channel chunk kept in memory between
// window taps (GCC 12; the disassembly of the avx512f clones had 10-17 zmm instructions of ~1000).
// Here the window scan keeps four registers of maxima and four of taps (64 channels) in registers
// across the whole window, and the backward gathers: each input pixel's 64 sums stay in
// registers over the output pixels whose window covers it (one masked add per output pixel: the
// lanes whose tap is this input), with no ring of partial sums in memory.
//
// Same results as the portable loops, bit for bit: the forward's update rule is ATen's
// (v > max, ordered, or v is NaN), bfloat16 values are compared as float32 and stored through
// acc_convert's rounding (round to nearest even, NaN -> 0x7fc0); the backward adds in ATen's
// order (output pixels in raster order), its masked add leaves the other lanes as they are (the
// portable loop's "+ 0" does the same: a sum starts at +0 and is never -0), and each bfloat16 sum
// is rounded as float_to_bf16_bits rounds.
//
// Used only where the running CPU has AVX-512F/BW/VL/DQ (available()); elsewhere, and for
// float64, the portable loops run.  max_pool2d_tap_backward_ gathers for float32 and
// bfloat16 (float32 since 2026-12-05: no gain on the EPYC, where it was memory-bound, 14.6 -> 11.1 ms
// per batch-8 step on a 2-core Xeon).  Batch-8 train
// step, 2-core EPYC, 2026-12-05, all 13 pools (profiler self time): forward float32 9.3-10.4 ->
// 2.9-3.1 ms, bfloat16 5.5-5.7 -> 2.9-3.2 ms; bfloat16 backward 8.6-11.3 (portable ring) ->
// 7.1-9.4 (vectorized ring) -> 5.7-6.1 ms (gather); the whole step did not move measurably with
// the gather (benchmarks/results/train-avx512-loops-cpu-2026-12-05.md,
// train-pool-gather-cpu-2026-12-05.md).
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>
#include <limits>
#include <type_traits>

#include "avx512_lanes.h"

namespace googlenet_fast {
namespace pool_avx512 {

using avx512::available;

#if GF_AVX512

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

using avx512::lanes;
using avx512::load16;
using avx512::round_bf16;
using avx512::store16;

// The forward over output rows [begin, end) (row = n * OH + oh), all channels: Y (values) and TP
// (taps), both channels_last, as tap_forward_rows_impl computes them.  kBnRelu (float32 or
// bfloat16): the pool of relu(batch_norm(X)) instead, each input value first computed as
// bn_relu_apply_into computes it (fma(x, al, be), rounded to bfloat16 for bfloat16, then
// x < 0 ? +0 : x), al / be the per-channel alpha and beta.
template <typename T, bool kBnRelu = false>
GF_AVX512_FN void tap_forward_rows(const T* X, T* Y, uint8_t* TP, int64_t begin, int64_t end, int64_t H,
                                   int64_t W, int64_t C, int64_t OH, int64_t OW, int64_t k, int64_t s, int64_t p,
                                   const float* al = nullptr, const float* be = nullptr) {
  constexpr int kRegs = 4;  // 64 channels: four independent max/tap chains
  const __m512 neg_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t row = begin; row < end; ++row) {
    const int64_t n = row / OH, oh = row % OH;
    const int64_t ho = oh * s - p, h0 = std::max<int64_t>(ho, 0), h1 = std::min(ho + k, H);
    for (int64_t ow = 0; ow < OW; ++ow) {
      const int64_t wo = ow * s - p, w0 = std::max<int64_t>(wo, 0), w1 = std::min(wo + k, W);
      const __m512i first = _mm512_set1_epi32(static_cast<int>((h0 - ho) * k + (w0 - wo)));
      const int64_t o = (row * OW + ow) * C;
      for (int64_t c0 = 0; c0 < C; c0 += 16 * kRegs) {
        __mmask16 mk[kRegs];
        __m512 m[kRegs], a[kRegs], b[kRegs];
        __m512i t[kRegs];
#pragma GCC unroll 4
        for (int j = 0; j < kRegs; ++j) {
          mk[j] = lanes(C - c0 - 16 * j);
          m[j] = neg_inf;
          t[j] = first;
          if constexpr (kBnRelu) {
            a[j] = load16(al + c0 + 16 * j, mk[j]);
            b[j] = load16(be + c0 + 16 * j, mk[j]);
          }
        }
        for (int64_t ih = h0; ih < h1; ++ih) {
          for (int64_t iw = w0; iw < w1; ++iw) {
            const __m512i tt = _mm512_set1_epi32(static_cast<int>((ih - ho) * k + (iw - wo)));
            const T* src = X + ((n * H + ih) * W + iw) * C + c0;
#pragma GCC unroll 4
            for (int j = 0; j < kRegs; ++j) {
              __m512 v = load16(src + 16 * j, mk[j]);
              if constexpr (kBnRelu) {
                v = _mm512_fmadd_ps(v, a[j], b[j]);
                if constexpr (std::is_same_v<T, c10::BFloat16>) v = round_bf16(v);
                v = _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LT_OQ), _mm512_setzero_ps());
              }
              const __mmask16 u = _mm512_cmp_ps_mask(v, m[j], _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
              m[j] = _mm512_mask_mov_ps(m[j], u, v);
              t[j] = _mm512_mask_mov_epi32(t[j], u, tt);
            }
          }
        }
#pragma GCC unroll 4
        for (int j = 0; j < kRegs; ++j) {
          store16(Y + o + c0 + 16 * j, mk[j], m[j]);
          _mm512_mask_cvtepi32_storeu_epi8(TP + o + c0 + 16 * j, mk[j], t[j]);
        }
      }
    }
  }
}

// The outputs o with o * s - p <= i <= o * s - p + k - 1, within [0, O): [lo, hi] (empty: lo > hi).
GF_AVX512_INLINE void covering_outputs(int64_t i, int64_t O, int64_t k, int64_t s, int64_t p, int64_t& lo,
                                       int64_t& hi) {
  const int64_t a = i + p - k + 1;
  lo = std::max<int64_t>(0, a <= 0 ? 0 : (a + s - 1) / s);
  hi = std::min<int64_t>(O - 1, (i + p) / s);
}

// One input pixel (n, ih, iw) of the gather: its C channel sums over the output pixels
// [oh0, oh1] x [ow0, ow1] whose window covers it (covering_outputs), stored to gx[0, C) (accumulate:
// added to gx's values first).  Shared by tap_backward_gather_rows and the fused pool + BatchNorm
// + ReLU backward (bn_relu_train_cpu.cpp), which gathers a pixel's row into a buffer: the same sums.
template <typename T>
GF_AVX512_INLINE void tap_backward_gather_pixel(const T* GY, const uint8_t* TP, T* gx, int64_t n, int64_t ih,
                                                int64_t iw, int64_t oh0, int64_t oh1, int64_t ow0, int64_t ow1,
                                                int64_t C, int64_t OH, int64_t OW, int64_t k, int64_t s, int64_t p,
                                                bool accumulate) {
  constexpr int kRegs = 4;  // 64 channels: four independent sums
  for (int64_t c0 = 0; c0 < C; c0 += 16 * kRegs) {
    __mmask16 mk[kRegs];
    __m512 acc[kRegs];
#pragma GCC unroll 4
    for (int j = 0; j < kRegs; ++j) {
      mk[j] = lanes(C - c0 - 16 * j);
      acc[j] = _mm512_setzero_ps();
    }
    for (int64_t oh = oh0; oh <= oh1; ++oh) {
      const int64_t dh = ih - (oh * s - p);
      for (int64_t ow = ow0; ow <= ow1; ++ow) {
        const __m512i tt = _mm512_set1_epi32(static_cast<int>(dh * k + iw - (ow * s - p)));
        const int64_t o = ((n * OH + oh) * OW + ow) * C + c0;
#pragma GCC unroll 4
        for (int j = 0; j < kRegs; ++j) {
          if (mk[j] == 0) continue;
          const __m512i taps = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mk[j], TP + o + 16 * j));
          const __mmask16 hit = _mm512_mask_cmpeq_epi32_mask(mk[j], taps, tt);
          acc[j] = _mm512_mask_add_ps(acc[j], hit, acc[j], load16(GY + o + 16 * j, mk[j]));
          // lanes without a hit keep their sum (already a bfloat16 value: rounding is exact)
          if constexpr (std::is_same_v<T, c10::BFloat16>) acc[j] = round_bf16(acc[j]);
        }
      }
    }
#pragma GCC unroll 4
    for (int j = 0; j < kRegs; ++j) {
      if (mk[j] == 0) continue;
      __m512 v = acc[j];
      if (accumulate) v = _mm512_add_ps(load16(gx + c0 + 16 * j, mk[j]), v);  // +0 turns -0 to +0
      store16(gx + c0 + 16 * j, mk[j], v);
    }
  }
}

// The backward in gather form (float32, bfloat16), input rows [begin, end) (row = n * H + ih), all
// channels: each input pixel's gradient summed in registers over the output pixels whose window
// covers it, in output raster order (oh, then ow: the order of ATen's `grad_input[argmax] +=
// grad_output` loop), bfloat16 rounded after every add, then stored once (accumulate: added to
// grad_x, and rounded, as ATen's add_ of the pool gradient).  The same sums as the portable ring loop's
// (max_pool_train_cpu.cpp), with no ring in memory: each sum stays in a register from its first add to its store.
template <typename T>
GF_AVX512_FN void tap_backward_gather_rows(const T* GY, const uint8_t* TP, T* GX, int64_t begin, int64_t end, int64_t H,
                                           int64_t W, int64_t C, int64_t OH, int64_t OW, int64_t k, int64_t s,
                                           int64_t p, bool accumulate) {
  for (int64_t row = begin; row < end; ++row) {
    const int64_t n = row / H, ih = row % H;
    int64_t oh0, oh1;
    covering_outputs(ih, OH, k, s, p, oh0, oh1);
    for (int64_t iw = 0; iw < W; ++iw) {
      int64_t ow0, ow1;
      covering_outputs(iw, OW, k, s, p, ow0, ow1);
      tap_backward_gather_pixel(GY, TP, GX + ((n * H + ih) * W + iw) * C, n, ih, iw, oh0, oh1, ow0, ow1, C, OH, OW,
                                k, s, p, accumulate);
    }
  }
}

#pragma GCC diagnostic pop

#endif

}  // namespace pool_avx512
}  // namespace googlenet_fast
