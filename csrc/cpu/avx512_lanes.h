// googlenet_fast: 16-lane AVX-512 helpers of the CPU kernels' vectorized loops (float32 and
// bfloat16 values in float32 registers): lane masks for channel tails, loads and stores in the
// tensor's dtype, bfloat16 rounding bit for bit as acc_convert.h rounds (round to nearest even,
// NaN -> 0x7fc0).  Used by max_pool_tap_avx512.h and bn_relu_train_cpu.cpp.
//
// Why intrinsics: GCC 12 compiles the portable loops' target_clones("avx512f") versions in
// 256-bit registers (its default vector width preference), bfloat16 ones entirely so.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#if defined(__x86_64__) && defined(__GNUC__)
#define GF_AVX512 1
#include <immintrin.h>
#else
#define GF_AVX512 0
#endif

namespace googlenet_fast {
namespace avx512 {

#if GF_AVX512

// GCC 12 warns "'__Y' may be used uninitialized" inside its own AVX-512 intrinsics (the
// _mm512_undefined_* operand of their unmasked forms; GCC bug 105593, fixed in GCC 13): the
// includers put their kernels between the same push / ignored / pop.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// Functions compiled for AVX-512 (called only where available() is true) and their helpers.
#define GF_AVX512_FN __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
#define GF_AVX512_INLINE __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"), always_inline)) inline

// Whether the running CPU has AVX-512F, BW, VL and DQ (the target the functions are compiled for)
// and GOOGLENET_FAST_PORTABLE_LOOPS is unset, empty or "0" (read once per process: the tests run
// the portable loops, what other CPUs run, in a subprocess with it set to 1).
inline bool available() {
  static const bool ok = [] {
    const char* portable = std::getenv("GOOGLENET_FAST_PORTABLE_LOOPS");
    if (portable != nullptr && portable[0] != '\0' && std::strcmp(portable, "0") != 0) return false;
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  }();
  return ok;
}

// Lanes [0, n) of a register (n clamped to [0, 16]).
GF_AVX512_INLINE __mmask16 lanes(int64_t n) {
  return n >= 16 ? __mmask16(0xffff) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1u);
}

// Loads and stores take the lane mask, but use it only on a partial register (m != 0xffff): a
// masked store is not forwarded to a later load of the same address (the load waits for the
// store to reach the cache), which made loops that add into the same sums pixel after pixel
// 1.5-3x slower on the 2-core EPYC (2026-12-05).

// 16 values of type T as float32 (bfloat16: its bits shifted into the upper half); lanes outside m: 0.
template <typename T>
GF_AVX512_INLINE __m512 load16(const T* p, __mmask16 m) {
  if constexpr (std::is_same_v<T, float>) {
    return m == 0xffff ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(m, p);
  } else {
    const __m256i b = m == 0xffff ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)) : _mm256_maskz_loadu_epi16(m, p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16));
  }
}

// The bfloat16 value nearest v (round to nearest even, NaN -> the canonical quiet NaN), as float32.
GF_AVX512_INLINE __m512 round_bf16(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i r = _mm512_and_si512(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))),
                                     _mm512_set1_epi32(static_cast<int>(0xffff0000u)));
  return _mm512_castsi512_ps(
      _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7fc00000)));
}

// acc_convert::float_to_bf16_bits on 16 lanes, in the low half of each 32-bit lane.
GF_AVX512_INLINE __m512i bf16_bits(__m512 v) { return _mm512_srli_epi32(_mm512_castps_si512(round_bf16(v)), 16); }

// Lanes m of v stored as T (bfloat16: rounded by bf16_bits).
template <typename T>
GF_AVX512_INLINE void store16(T* p, __mmask16 m, __m512 v) {
  if constexpr (std::is_same_v<T, float>) {
    if (m == 0xffff) {
      _mm512_storeu_ps(p, v);
    } else {
      _mm512_mask_storeu_ps(p, m, v);
    }
  } else if (m == 0xffff) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(bf16_bits(v)));
  } else {
    _mm512_mask_cvtepi32_storeu_epi16(p, m, bf16_bits(v));
  }
}

#pragma GCC diagnostic pop

#else

inline bool available() { return false; }

#endif

}  // namespace avx512
}  // namespace googlenet_fast
