// googlenet_fast: element conversions of the CPU training kernels (csrc/cpu/bn_relu_train_cpu.cpp,
// csrc/cpu/max_pool_train_cpu.cpp): loads and stores in the accumulator type, bfloat16 through its
// bits (a shift; round to nearest even, NaN -> the canonical quiet NaN 0x7fc0, as c10::BFloat16's
// conversion), branch-free so that the loops using them vectorize (c10::BFloat16's own conversion
// has a branch on isnan and stays scalar).
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace googlenet_fast {
namespace acc_convert {

inline __attribute__((always_inline)) float bf16_bits_to_float(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

inline __attribute__((always_inline)) uint16_t float_to_bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  const uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? 0x7fc0u : r);  // NaN test on the bits
}

inline __attribute__((always_inline)) float to_acc(float v) { return v; }
inline __attribute__((always_inline)) double to_acc(double v) { return v; }
inline __attribute__((always_inline)) float to_acc(c10::BFloat16 v) { return bf16_bits_to_float(v.x); }

// T's value of an accumulator-typed v (float for float32 and bfloat16, double for float64).
template <typename T>
inline __attribute__((always_inline)) T from_acc(typename std::conditional<std::is_same_v<T, double>, double, float>::type v) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    return c10::BFloat16(float_to_bf16_bits(v), c10::BFloat16::from_bits());
  } else {
    return static_cast<T>(v);
  }
}

}  // namespace acc_convert
}  // namespace googlenet_fast
