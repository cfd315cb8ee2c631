// CPU emulation of the part of nvcuda::wmma that csrc/cuda/inception_cuda.cu uses (16x16x16,
// fp16/bf16 inputs, fp32 accumulators).  Every thread of a warp holds the whole 16x16 tile (the
// real fragments are distributed; load/mma/store are warp-collective, so the values match).
// The real API's preconditions are checked: 256-bit aligned pointers, ldm a multiple of
// 16 bytes.  Only lane 0 of a warp computes and stores (the other lanes' copies would be
// identical and are never observed: the kernel reads accumulators only through
// store_matrix_sync, after a __syncthreads).
#pragma once
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace nvcuda {
namespace wmma {

struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  T x[16][16];  // logical (row, col): matrix_a (m, k), matrix_b (k, n), accumulator (m, n)
};

unsigned emu_lane();  // defined by the harness (threadIdx.x % 32)

inline float emu_to_float(__half v) { return __half2float(v); }
inline float emu_to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

inline void emu_require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "wmma emulation: precondition violated: %s\n", what);
    std::abort();
  }
}

template <class T>
inline void emu_check(const T* p, unsigned ldm) {
  emu_require(reinterpret_cast<std::uintptr_t>(p) % 32 == 0, "fragment pointer not 256-bit aligned");
  emu_require((ldm * sizeof(T)) % 16 == 0, "ldm not a multiple of 16 bytes");
}

template <class T>
void load_matrix_sync(fragment<matrix_a, 16, 16, 16, T, row_major>& f, const T* p, unsigned ldm) {
  emu_check(p, ldm);
  if (emu_lane() != 0) return;
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) f.x[r][c] = p[r * ldm + c];
}

template <class T>
void load_matrix_sync(fragment<matrix_b, 16, 16, 16, T, col_major>& f, const T* p, unsigned ldm) {
  emu_check(p, ldm);
  if (emu_lane() != 0) return;
  for (int k = 0; k < 16; ++k)
    for (int n = 0; n < 16; ++n) f.x[k][n] = p[n * ldm + k];  // column n starts at p + n * ldm
}

inline void fill_fragment(fragment<accumulator, 16, 16, 16, float>& f, float v) {
  for (auto& row : f.x)
    for (float& e : row) e = v;
}

template <class T>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, T, row_major>& a,
              const fragment<matrix_b, 16, 16, 16, T, col_major>& b,
              const fragment<accumulator, 16, 16, 16, float>& c) {
  if (emu_lane() != 0) return;
  fragment<accumulator, 16, 16, 16, float> r;
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 16; ++n) {
      float s = c.x[m][n];
      for (int k = 0; k < 16; ++k) s += emu_to_float(a.x[m][k]) * emu_to_float(b.x[k][n]);
      r.x[m][n] = s;
    }
  d = r;
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm,
                              layout_t layout) {
  emu_check(p, ldm);
  emu_require(layout == mem_row_major, "only mem_row_major is emulated");
  if (emu_lane() != 0) return;
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 16; ++n) p[m * ldm + n] = f.x[m][n];
}

}  // namespace wmma
}  // namespace nvcuda
