// googlenet_fast: the AVX-512 inner loops of the training max pool with one-byte argmax taps
// (csrc/cpu/max_pool_train_cpu.cpp), float32 and bfloat16, 16 channels per 512-bit register.
//
// Why intrinsics: the portable loops there, compiled for AVX-512 by target_clones, come out in
// 256-bit registers with the running max and argmax of each channel chunk kept in memory between
// window taps (GCC 12; the disassembly of the avx512f clones had 10-17 zmm instructions of ~1000).
// Here the window scan keeps four registers of maxima and four of taps (64 channels) in registers
// across the whole window, and the backward adds an output pixel's 16 gradients to each of the
// window's ring positions with one masked add (the lanes whose tap is that position).
//
// Same results as the portable loops, bit for bit: the forward's update rule is ATen's
// (v > max, ordered, or v is NaN), bfloat16 values are compared as float32 and stored through
// acc_convert's rounding (round to nearest even, NaN -> 0x7fc0); the backward's masked add
// leaves the other lanes as they are (the portable loop's "+ 0" does the same: a ring sum starts
// at +0 and is never -0), and each bfloat16 sum is rounded as float_to_bf16_bits rounds.
//
// Used only where the running CPU has AVX-512F/BW/VL/DQ (available()); elsewhere, and for
// float64, the portable loops run.  max_pool2d_tap_backward_ runs tap_backward_row for bfloat16
// only (float32's backward is bound by memory in a train step: no gain measured).  Batch-8 train
// step, 2-core EPYC, 2026-12-05, all 13 pools (profiler self time): forward float32 9.3-10.4 ->
// 2.9-3.1 ms, bfloat16 5.5-5.7 -> 2.9-3.2 ms; bfloat16 backward 8.6-11.3 -> 7.1-9.4 ms
// (benchmarks/results/train-avx512-loops-cpu-2026-12-05.md).
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
// (taps), both channels_last, as tap_forward_rows_impl computes them.
template <typename T>
GF_AVX512_FN void tap_forward_rows(const T* X, T* Y, uint8_t* TP, int64_t begin, int64_t end, int64_t H,
                                   int64_t W, int64_t C, int64_t OH, int64_t OW, int64_t k, int64_t s, int64_t p) {
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
        __m512 m[kRegs];
        __m512i t[kRegs];
#pragma GCC unroll 4
        for (int j = 0; j < kRegs; ++j) {
          mk[j] = lanes(C - c0 - 16 * j);
          m[j] = neg_inf;
          t[j] = first;
        }
        for (int64_t ih = h0; ih < h1; ++ih) {
          for (int64_t iw = w0; iw < w1; ++iw) {
            const __m512i tt = _mm512_set1_epi32(static_cast<int>((ih - ho) * k + (iw - wo)));
            const T* src = X + ((n * H + ih) * W + iw) * C + c0;
#pragma GCC unroll 4
            for (int j = 0; j < kRegs; ++j) {
              const __m512 v = load16(src + 16 * j, mk[j]);
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

// The backward's accumulation of one output row oh of image n, channels [c0, c0 + cw): for every
// output pixel in order, its gradient added to the ring position of its tap (ring: `k` rows of
// W x cw float32 sums, input row h in slot h % k), each bfloat16 sum rounded to bfloat16.
// gy, tp: the output row's first pixel at channel c0 (pixel stride C).
template <typename T>
GF_AVX512_FN void tap_backward_row(const T* gy, const uint8_t* tp, float* ring, int64_t cw, int64_t C, int64_t OW,
                                   int64_t W, int64_t k, int64_t s, int64_t p, int64_t ho, int64_t h0, int64_t h1) {
  for (int64_t ow = 0; ow < OW; ++ow) {
    const int64_t wo = ow * s - p, w0 = std::max<int64_t>(wo, 0), w1 = std::min(wo + k, W);
    const T* g_px = gy + ow * C;
    const uint8_t* t_px = tp + ow * C;
    for (int64_t c = 0; c < cw; c += 16) {
      const __mmask16 mk = lanes(cw - c);
      const __m512 g = load16(g_px + c, mk);
      const __m512i taps = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mk, t_px + c));
      for (int64_t ih = h0; ih < h1; ++ih) {
        float* row = ring + (ih % k) * W * cw + c;
        for (int64_t iw = w0; iw < w1; ++iw) {
          const __m512i tt = _mm512_set1_epi32(static_cast<int>((ih - ho) * k + (iw - wo)));
          const __mmask16 hit = _mm512_mask_cmpeq_epi32_mask(mk, taps, tt);
          float* a = row + iw * cw;
          __m512 sum = load16(a, mk);
          sum = _mm512_mask_add_ps(sum, hit, sum, g);
          if constexpr (std::is_same_v<T, c10::BFloat16>) sum = round_bf16(sum);
          store16(a, mk, sum);
        }
      }
    }
  }
}

#pragma GCC diagnostic pop

#endif

}  // namespace pool_avx512
}  // namespace googlenet_fast
