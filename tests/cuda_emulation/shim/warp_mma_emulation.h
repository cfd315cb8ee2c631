// CPU emulation of csrc/cuda/warp_mma.cuh (ldsm_x4, mma_16816) for tests/cuda_emulation: the
// warp-collective instructions, lane by lane, with the PTX fragment layouts.  Every lane of the
// block posts its operands (row addresses, fragment registers) in a per-warp table, the block
// meets at __syncthreads (all 128 threads reach each call: the kernel calls these uniformly),
// each lane reads what the hardware would deliver to it, and the block meets again before the
// table is reused.  So a wrong fragment layout in the kernel gives wrong results here too.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace googlenet_fast {

struct EmuWarpTable {
  const unsigned char* row[4][32];
  uint32_t a[4][32][4];
  uint32_t b[4][32][2];
};
inline EmuWarpTable gf_emu_warp_table;  // one block runs at a time (see the harness)

inline void ldsm_x4(uint32_t (&r)[4], const void* smem_row) {
  const unsigned w = threadIdx.x / 32, l = threadIdx.x % 32;
  if (reinterpret_cast<std::uintptr_t>(smem_row) % 16 != 0) {
    std::fprintf(stderr, "ldmatrix emulation: row address not 16-byte aligned\n");
    std::abort();
  }
  gf_emu_warp_table.row[w][l] = static_cast<const unsigned char*>(smem_row);
  __syncthreads();
  for (int j = 0; j < 4; ++j) {
    const unsigned char* rowp = gf_emu_warp_table.row[w][8 * j + l / 4];
    std::memcpy(&r[j], rowp + 4 * (l % 4), 4);  // elements 2(l%4), 2(l%4)+1 of that row
  }
  __syncthreads();
}

inline float gf_emu_half_bits(uint16_t bits, __nv_bfloat16*) {
  const uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float gf_emu_half_bits(uint16_t bits, __half*) {
  __half h;
  std::memcpy(&h, &bits, 2);
  return __half2float(h);
}

template <typename T>
inline void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  const unsigned w = threadIdx.x / 32, l = threadIdx.x % 32;
  for (int i = 0; i < 4; ++i) gf_emu_warp_table.a[w][l][i] = a[i];
  gf_emu_warp_table.b[w][l][0] = b0;
  gf_emu_warp_table.b[w][l][1] = b1;
  __syncthreads();
  float A[16][16], B[16][8];
  for (int L = 0; L < 32; ++L) {
    const int g = L / 4, t = L % 4;
    for (int e = 0; e < 2; ++e) {
      auto el = [&](uint32_t reg) { return gf_emu_half_bits(static_cast<uint16_t>(reg >> (16 * e)), static_cast<T*>(nullptr)); };
      const uint32_t* ar = gf_emu_warp_table.a[w][L];
      A[g][2 * t + e] = el(ar[0]);
      A[g + 8][2 * t + e] = el(ar[1]);
      A[g][2 * t + 8 + e] = el(ar[2]);
      A[g + 8][2 * t + 8 + e] = el(ar[3]);
      B[2 * t + e][g] = el(gf_emu_warp_table.b[w][L][0]);
      B[2 * t + 8 + e][g] = el(gf_emu_warp_table.b[w][L][1]);
    }
  }
  const int g = l / 4, t = l % 4;
  for (int i = 0; i < 4; ++i) {
    const int row = g + 8 * (i / 2), col = 2 * t + i % 2;
    float s = d[i];
    for (int k = 0; k < 16; ++k) s += A[row][k] * B[k][col];
    d[i] = s;
  }
  __syncthreads();
}

}  // namespace googlenet_fast
