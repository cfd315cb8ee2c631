// googlenet_fast: the tensor-core primitives of the CUDA backend's fp16/bf16 stage kernel.
//
//   ldsm_x4:   ldmatrix.sync.aligned.m8n8.x4.shared.b16 -- four 8x8 16-bit matrices from shared
//              memory into registers (SASS LDSM): lanes 8j..8j+7 give the row addresses of matrix
//              j, and register j of lane l receives elements 2(l%4), 2(l%4)+1 of row l/4 of
//              matrix j.  Each row address must be 16-byte aligned.
//   mma_16816: mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16} -- D = A (16x16) B (16x8) + D, fp32
//              accumulators (SASS HMMA.16816).  With g = lane/4, t = lane%4: a0 = A[g][2t..2t+1],
//              a1 = A[g+8][2t..], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..]; b0 = B[2t..2t+1][g],
//              b1 = B[2t+8..][g]; d0,d1 = D[g][2t..2t+1], d2,d3 = D[g+8][2t..2t+1]  (PTX ISA,
//              "Matrix Fragments for mma.m16n8k16 with floating point type").
//
// Why not nvcuda::wmma: for __nv_bfloat16 its load_matrix_sync compiled (nvcc 13.0, sm_90) to
// generic 32-bit loads (48 LD.E per K step, no LDSM), where fp16 got LDSM; bf16 is what the GPU
// benchmarks run.  tests/cuda_emulation/shim/warp_mma_emulation.h implements the same two
// functions lane by lane on the CPU, with exactly these fragment layouts.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace googlenet_fast {

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* smem_row) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem_row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
#else
  __trap();
#endif
}

template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);

// One specialization per operand type; the PTX type name is the only difference.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define GF_MMA_16816_BODY(PTX_TYPE)                                                                         \
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." PTX_TYPE "." PTX_TYPE                               \
               ".f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"                   \
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                                             \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1))
#else
#define GF_MMA_16816_BODY(PTX_TYPE) __trap()
#endif

template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                         uint32_t b1) {
  GF_MMA_16816_BODY("bf16");
}

template <>
__device__ __forceinline__ void mma_16816<__half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  GF_MMA_16816_BODY("f16");
}

#undef GF_MMA_16816_BODY

}  // namespace googlenet_fast
