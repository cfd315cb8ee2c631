// googlenet_fast: the fused Inception forward on CUDA (the `cuda` backend).
//
// Layout: NHWC throughout.  A pixel p = (n*H + h)*W + w is a GEMM row; a 1x1 convolution is the
// GEMM [pixels, Cin] x [Cin, Cout]; a KxK convolution is the implicit GEMM [pixels, K*K*C] x
// [K*K*C, Cout] whose column k = (ky*K + kx)*C + c is gathered on the fly (OHWI weight order);
// a channel slice of the NHWC output is a row-strided matrix (row stride = the pixel stride).
//
// Two launches per module, both of the same kernel ("stage kernel"), each running two GEMM
// problems side by side: the 1-D grid enumerates M tiles x (N tiles of problem 0 + N tiles of
// problem 1), N fastest, so the blocks of one pixel tile run together and share x in L2.
//   stage 1: problem 0 = the merged sibling 1x1 GEMM over x (N = ch1x1 + ch3x3red + ch5x5red,
//            x read once); its epilogue writes ch1x1 columns into the output's first channel
//            slice and the two reduce outputs into one scratch tensor R [pixels, r3 + r5];
//            problem 1 = the pool projection, whose A loader computes the 3x3/s1/p1 max of x on
//            the fly (only in-bounds taps count: -inf padding; NaN propagates).
//   stage 2: problem 0 / 1 = the K3xK3 / K5xK5 implicit-GEMM convolutions over R's two channel
//            ranges (zero padding K//2), written into their channel slices of the output.
// A problem's output columns are split into up to three segments, each with its own weight
// rows, optional bias and destination (pointer + row stride): that is how one GEMM feeds the
// output slice and the scratch R without a concatenated weight or an intermediate tensor.
//
// Tiles: 64 pixels x 64 output channels per block of 128 threads, a K step of BK columns.
// Every thread loads fixed 16-byte chunks of the A and B tiles (global -> registers, prefetched
// one K step ahead, then registers -> shared memory); out-of-range rows, columns and taps are
// zero-filled, so M, N and K need no multiple of anything.  When a channel count, row stride,
// channel offset or base address is not a multiple of 16 bytes, the same chunks are gathered
// element by element (the "scalar" path: slower, same result).
//   fp16 / bf16: mma.sync m16n8k16 on operands loaded from shared memory with ldmatrix
//                (warp_mma.cuh: LDSM + HMMA.16816 on sm_80/sm_90), fp32 accumulators; 4 warps in
//                2x2, each a 32x32 sub-tile (2 x 4 m16n8 tiles); BK = 32.  The accumulators go
//                through shared memory to an epilogue that writes 16-byte chunks when aligned.
//   fp32 / fp64: plain FMA in the input type (no TF32); each thread owns an 8x4 sub-tile;
//                BK = 32 (fp32) / 16 (fp64).
// Epilogue (both): + bias (optional, per column, in the accumulator type), ReLU (flag; NaN kept),
// one rounding to the output type.  R holds the reduce outputs rounded to the input type, as
// the unfused module does.
//
// Indexing: pixel indices and every pointer offset are int64 (tensors may exceed 2^31
// elements); channel counts and K*K*C are int.  Launches go to the current stream under a
// device guard; the scratch R comes from the caching allocator; nothing synchronizes.
//
// Checks: tests/test_cuda_backend.py (GPU parity), tests/test_cuda_build.py (cubins, no spills,
// HMMA), tests/test_cuda_emulation.py (this file compiled as C++ and run on the CPU: every
// loader, tail and epilogue path without a GPU), benchmarks/cuda_sanitizer.sh (memcheck).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#ifdef GF_CUDA_EMULATION
#include "warp_mma_emulation.h"  // tests/cuda_emulation/shim: the same functions, lane by lane
#else
#include "warp_mma.cuh"
#endif

#include <array>
#include <atomic>
#include <cstdint>
#include <limits>
#include <vector>

#include "../inception.h"

namespace googlenet_fast {
namespace {

constexpr int kThreads = 128;  // 4 warps
constexpr int kBM = 64;        // pixels per tile
constexpr int kBN = 64;        // output channels per tile
constexpr int kSegments = 3;

// One GEMM problem of a stage: C[M, n] = A[M, ktot] x B[ktot, n], with the epilogue's segments.
struct GemmProblem {
  const void* src;  // NHWC activations: channel c of pixel p at src[p * lds + coff + c]
  int64_t lds;
  int64_t coff;
  int C;            // channels per tap
  int K;            // kernel size (odd); 1 for 1x1 convolutions and for the pool projection
  int pool;         // 1: A(p, c) = max of src over the 3x3 window around p (in-bounds taps only)
  int ktot;         // K * K * C
  int n;            // output columns (= seg_end[kSegments - 1])
  int ntiles;       // ceil(n / kBN)
  int vec_a, vec_b, vec_out;  // 16-byte chunks allowed for A loads / B loads / output stores
  int seg_end[kSegments];     // cumulative column ends; unused segments repeat the last end
  const void* w[kSegments];   // row r of segment s: w[s] + r * ldw[s], ktot values, (ky, kx, c) order
  int64_t ldw[kSegments];
  const void* bias[kSegments];  // nullptr: no bias
  void* dst[kSegments];         // output row p of segment s at dst[s] + p * ldd[s]
  int64_t ldd[kSegments];
};

struct StageParams {
  GemmProblem prob[2];
  int64_t M;          // pixels = N * H * W
  int H, W;
  int relu;
  int ntiles_total;   // prob[0].ntiles + prob[1].ntiles
};

// ---- element types --------------------------------------------------------------------------
template <typename T> struct Num;
template <> struct Num<float> {
  using acc = float;
  static __device__ __forceinline__ float to_acc(float v) { return v; }
  static __device__ __forceinline__ float from_acc(float v) { return v; }
};
template <> struct Num<double> {
  using acc = double;
  static __device__ __forceinline__ double to_acc(double v) { return v; }
  static __device__ __forceinline__ double from_acc(double v) { return v; }
};
template <> struct Num<__half> {
  using acc = float;
  static __device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half from_acc(float v) { return __float2half_rn(v); }
};
template <> struct Num<__nv_bfloat16> {
  using acc = float;
  static __device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 from_acc(float v) { return __float2bfloat16_rn(v); }
};

// 16 bytes of T: the unit of every vectorized load and store.
template <typename T>
struct alignas(16) Vec {
  static constexpr int N = 16 / sizeof(T);
  T v[N];
};

template <typename T>
__device__ __forceinline__ Vec<T> zero_vec() {
  Vec<T> r;
#pragma unroll
  for (int e = 0; e < Vec<T>::N; ++e) r.v[e] = Num<T>::from_acc(0);
  return r;
}

template <typename Acc>
__device__ __forceinline__ Acc activate(Acc v, bool relu) {
  return (relu && !(v > Acc(0)) && !isnan(v)) ? Acc(0) : v;
}

// The segment holding output column n (n < g.n): its destination, row stride, bias, first column.
template <typename T>
struct SegRef {
  T* dst;
  int64_t ld;
  const T* bias;
  int begin;
};

template <typename T>
__device__ __forceinline__ SegRef<T> segment_of(const GemmProblem& g, int n) {
  if (n < g.seg_end[0]) return {static_cast<T*>(g.dst[0]), g.ldd[0], static_cast<const T*>(g.bias[0]), 0};
  if (n < g.seg_end[1])
    return {static_cast<T*>(g.dst[1]), g.ldd[1], static_cast<const T*>(g.bias[1]), g.seg_end[0]};
  return {static_cast<T*>(g.dst[2]), g.ldd[2], static_cast<const T*>(g.bias[2]), g.seg_end[1]};
}

// Weight row of output column n (n < g.n).
template <typename T>
__device__ __forceinline__ const T* weight_row(const GemmProblem& g, int n) {
  if (n < g.seg_end[0]) return static_cast<const T*>(g.w[0]) + static_cast<int64_t>(n) * g.ldw[0];
  if (n < g.seg_end[1]) return static_cast<const T*>(g.w[1]) + static_cast<int64_t>(n - g.seg_end[0]) * g.ldw[1];
  return static_cast<const T*>(g.w[2]) + static_cast<int64_t>(n - g.seg_end[1]) * g.ldw[2];
}

// Output element (m, n): + bias, activation, one rounding, store.  m < M, n < g.n.
template <typename T>
__device__ __forceinline__ void store_elem(const GemmProblem& g, int64_t m, int n, typename Num<T>::acc v,
                                           bool relu) {
  const SegRef<T> s = segment_of<T>(g, n);
  const int c = n - s.begin;
  if (s.bias != nullptr) v += Num<T>::to_acc(s.bias[c]);
  s.dst[m * s.ld + c] = Num<T>::from_acc(activate(v, relu));
}

// ---- tile loader ----------------------------------------------------------------------------
// A tile: kBM rows (pixels) x BK columns; B tile: kBN rows (output channels) x BK columns, both
// stored k-contiguous in shared memory.  Thread t owns the 16-byte chunk at column kc of rows
// t / CPR + i * RPP (i < PASSES) of both tiles, for every K step.
template <typename T, int BK>
struct TileLoader {
  using V = Vec<T>;
  static constexpr int VEC = V::N;
  static constexpr int CPR = BK / VEC;          // chunks per tile row
  static constexpr int RPP = kThreads / CPR;    // rows per pass
  static constexpr int PASSES = kBM / RPP;
  static_assert(BK % VEC == 0 && kThreads % CPR == 0 && kBM % RPP == 0 && kBM == kBN, "tile shape");

  const GemmProblem& g;
  const int H, W;
  int kc;
  int64_t pix[PASSES];     // A row's pixel, -1 past M
  int ph[PASSES], pw[PASSES];
  const T* wrow[PASSES];   // B row's weights, nullptr past n
  V a[PASSES], b[PASSES];  // the prefetched chunks

  __device__ TileLoader(const GemmProblem& g_, const StageParams& p, int64_t m0, int n0)
      : g(g_), H(p.H), W(p.W) {
    const int t = threadIdx.x;
    kc = (t % CPR) * VEC;
#pragma unroll
    for (int i = 0; i < PASSES; ++i) {
      const int r = t / CPR + i * RPP;
      const int64_t m = m0 + r;
      if (m < p.M) {
        const int64_t q = m / W;
        pix[i] = m;
        pw[i] = static_cast<int>(m - q * W);
        ph[i] = static_cast<int>(q % H);
      } else {
        pix[i] = -1;
        ph[i] = pw[i] = 0;
      }
      const int n = n0 + r;
      wrow[i] = n < g.n ? weight_row<T>(g, n) : nullptr;
    }
  }

  // A(pixel i, column k) for one element; zero outside the image and past ktot.
  __device__ __forceinline__ T a_elem(int i, int k) const {
    const T* src = static_cast<const T*>(g.src);
    if (pix[i] < 0 || k >= g.ktot) return Num<T>::from_acc(0);
    if (g.pool) {
      const T* base = src + g.coff + k;
      T best = base[pix[i] * g.lds];
      for (int dy = -1; dy <= 1; ++dy) {
        const int hh = ph[i] + dy;
        if (hh < 0 || hh >= H) continue;
        for (int dx = -1; dx <= 1; ++dx) {
          const int ww = pw[i] + dx;
          if (ww < 0 || ww >= W || (dy == 0 && dx == 0)) continue;
          const T v = base[(pix[i] + static_cast<int64_t>(dy) * W + dx) * g.lds];
          const auto fv = Num<T>::to_acc(v);
          if (fv > Num<T>::to_acc(best) || isnan(fv)) best = v;
        }
      }
      return best;
    }
    const int tap = k / g.C, c = k - tap * g.C;
    const int ky = tap / g.K, kx = tap - ky * g.K, pad = g.K >> 1;
    const int hh = ph[i] + ky - pad, ww = pw[i] + kx - pad;
    if (hh < 0 || hh >= H || ww < 0 || ww >= W) return Num<T>::from_acc(0);
    const int64_t q = pix[i] + static_cast<int64_t>(ky - pad) * W + (kx - pad);
    return src[q * g.lds + g.coff + c];
  }

  // The chunk A(pixel i, k .. k+VEC-1) with 16-byte loads (g.vec_a: C, lds, coff and src are
  // multiples of 16 bytes, so a chunk never straddles a tap and is aligned).
  __device__ __forceinline__ V a_vec(int i, int k) const {
    const T* src = static_cast<const T*>(g.src);
    if (pix[i] < 0 || k >= g.ktot) return zero_vec<T>();
    if (g.pool) {
      const T* base = src + g.coff + k;
      V best = *reinterpret_cast<const V*>(base + pix[i] * g.lds);
#pragma unroll 1  // taps of one row at a time: all nine in flight cost ~60 registers
      for (int dy = -1; dy <= 1; ++dy) {
        const int hh = ph[i] + dy;
        if (hh < 0 || hh >= H) continue;
#pragma unroll
        for (int dx = -1; dx <= 1; ++dx) {
          const int ww = pw[i] + dx;
          if (ww < 0 || ww >= W || (dy == 0 && dx == 0)) continue;
          const V v = *reinterpret_cast<const V*>(base + (pix[i] + static_cast<int64_t>(dy) * W + dx) * g.lds);
#pragma unroll
          for (int e = 0; e < VEC; ++e) {
            const auto fv = Num<T>::to_acc(v.v[e]);
            if (fv > Num<T>::to_acc(best.v[e]) || isnan(fv)) best.v[e] = v.v[e];
          }
        }
      }
      return best;
    }
    int64_t q = pix[i];
    int c = k;
    if (g.K != 1) {
      const int tap = k / g.C;
      c = k - tap * g.C;
      const int ky = tap / g.K, kx = tap - ky * g.K, pad = g.K >> 1;
      const int hh = ph[i] + ky - pad, ww = pw[i] + kx - pad;
      if (hh < 0 || hh >= H || ww < 0 || ww >= W) return zero_vec<T>();
      q += static_cast<int64_t>(ky - pad) * W + (kx - pad);
    }
    return *reinterpret_cast<const V*>(src + q * g.lds + g.coff + c);
  }

  // Vector path (g.vec_a / g.vec_b), global -> registers: the chunks of the K step at k0; issued
  // before the tensor cores / FMAs work on the previous step.
  __device__ __forceinline__ void fetch(int k0) {
    const int k = k0 + kc;
    if (g.vec_a) {
#pragma unroll
      for (int i = 0; i < PASSES; ++i) a[i] = a_vec(i, k);
    }
    if (g.vec_b) {  // ktot, ldw and the weight bases are multiples of 16 bytes
#pragma unroll
      for (int i = 0; i < PASSES; ++i)
        b[i] = (wrow[i] != nullptr && k < g.ktot) ? *reinterpret_cast<const V*>(wrow[i] + k) : zero_vec<T>();
    }
  }

  // -> shared memory (row stride LDS elements): the fetched registers on the vector path; on
  // the scalar path the elements are gathered straight into shared memory here (no prefetch,
  // few live registers).  VEC_SMEM: one 16-byte store per chunk (LDS * sizeof(T) % 16 == 0).
  template <int LDS, bool VEC_SMEM>
  __device__ __forceinline__ void commit(int k0, T* As, T* Bs) const {
    const int t = threadIdx.x;
    const int k = k0 + kc;
#pragma unroll
    for (int i = 0; i < PASSES; ++i) {
      const int r = t / CPR + i * RPP;
      if (g.vec_a) {
        store_chunk<VEC_SMEM>(As + r * LDS + kc, a[i]);
      } else {
#pragma unroll 1
        for (int e = 0; e < VEC; ++e) As[r * LDS + kc + e] = a_elem(i, k + e);
      }
      if (g.vec_b) {
        store_chunk<VEC_SMEM>(Bs + r * LDS + kc, b[i]);
      } else {
#pragma unroll 1
        for (int e = 0; e < VEC; ++e)
          Bs[r * LDS + kc + e] = (wrow[i] != nullptr && k + e < g.ktot) ? wrow[i][k + e] : Num<T>::from_acc(0);
      }
    }
  }

  template <bool VEC_SMEM>
  static __device__ __forceinline__ void store_chunk(T* dst, const V& v) {
    if constexpr (VEC_SMEM) {
      *reinterpret_cast<V*>(dst) = v;
    } else {
#pragma unroll
      for (int e = 0; e < VEC; ++e) dst[e] = v.v[e];
    }
  }
};

// Which problem and which tile this block computes.
struct TileId {
  int pi;      // problem 0 or 1
  int64_t m0;  // first pixel
  int n0;      // first output column
};

__device__ __forceinline__ TileId tile_id(const StageParams& p) {
  const int64_t bid = blockIdx.x;
  const int nt = static_cast<int>(bid % p.ntiles_total);  // N tiles vary fastest: x tile reuse in L2
  const int64_t mt = bid / p.ntiles_total;
  const int pi = nt < p.prob[0].ntiles ? 0 : 1;
  return {pi, mt * kBM, (pi == 0 ? nt : nt - p.prob[0].ntiles) * kBN};
}

// ---- fp16 / bf16: tensor cores (wmma) -------------------------------------------------------
template <typename T>
__global__ void __launch_bounds__(kThreads) stage_kernel_tc(const __grid_constant__ StageParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // the host refuses fp16/bf16 below sm_80
#else
  constexpr int BK = 32;
  constexpr int LDS = BK + 8;    // 80-byte rows: 16-byte ldmatrix rows, 8 rows on distinct banks
  constexpr int LDC = kBN + 4;   // fp32 accumulator staging
  constexpr int AB_BYTES = 2 * kBM * LDS * static_cast<int>(sizeof(T));
  constexpr int C_BYTES = kBM * LDC * static_cast<int>(sizeof(float));
  __shared__ __align__(128) unsigned char smem[AB_BYTES > C_BYTES ? AB_BYTES : C_BYTES];
  T* As = reinterpret_cast<T*>(smem);
  T* Bs = As + kBM * LDS;
  float* Cs = reinterpret_cast<float*>(smem);  // reused after the main loop

  const TileId id = tile_id(p);
  const GemmProblem& g = p.prob[id.pi];
  TileLoader<T, BK> ld(g, p, id.m0, id.n0);

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
  // ldmatrix row addresses of this lane (see warp_mma.cuh): A (row-major [m][k]) as four 8x8
  // matrices (rows 0-7 / 8-15) x (k 0-7 / 8-15) in a0..a3 order; B stored [n][k] (the "col"
  // operand), as (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15): b0/b1 of
  // two adjacent n8 tiles.
  const int lm = lane / 8, lr = lane % 8;
  const int a_row = lr + 8 * (lm & 1), a_col = 8 * (lm >> 1);
  const int b_row = lr + 8 * (lm >> 1), b_col = 8 * (lm & 1);
  float acc[2][4][4];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

  ld.fetch(0);
  ld.template commit<LDS, true>(0, As, Bs);
  __syncthreads();
  for (int k0 = 0; k0 < g.ktot; k0 += BK) {
    const bool more = k0 + BK < g.ktot;
    if (more) ld.fetch(k0 + BK);  // in flight while the tensor cores work
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      uint32_t fa[2][4], fb[2][4];
#pragma unroll
      for (int i = 0; i < 2; ++i) ldsm_x4(fa[i], As + (wm + 16 * i + a_row) * LDS + kk + a_col);
#pragma unroll
      for (int j = 0; j < 2; ++j) ldsm_x4(fb[j], Bs + (wn + 16 * j + b_row) * LDS + kk + b_col);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) mma_16816<T>(acc[i][j], fa[i], fb[j / 2][2 * (j % 2)], fb[j / 2][2 * (j % 2) + 1]);
    }
    __syncthreads();
    if (more) {
      ld.template commit<LDS, true>(k0 + BK, As, Bs);
      __syncthreads();
    }
  }

  // Epilogue: accumulators -> shared memory -> bias, ReLU, one rounding -> global.
  __syncthreads();
  {
    const int gr = lane / 4, tc = 2 * (lane % 4);
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        float* c = Cs + (wm + 16 * i + gr) * LDC + wn + 8 * j + tc;
        c[0] = acc[i][j][0];
        c[1] = acc[i][j][1];
        c[8 * LDC] = acc[i][j][2];
        c[8 * LDC + 1] = acc[i][j][3];
      }
  }
  __syncthreads();

  constexpr int VEC = Vec<T>::N;      // 8 columns per chunk
  constexpr int CPR = kBN / VEC;      // 8 chunks per row
  constexpr int RPP = kThreads / CPR; // 16 rows per pass
  const bool relu = p.relu != 0;
  const int cc = (threadIdx.x % CPR) * VEC;
  const int n = id.n0 + cc;
  if (n < g.n) {
    if (g.vec_out) {  // every segment boundary, row stride and base is a multiple of 16 bytes
      const SegRef<T> s = segment_of<T>(g, n);
      const int c = n - s.begin;
      float bias[VEC];
#pragma unroll
      for (int e = 0; e < VEC; ++e) bias[e] = s.bias != nullptr ? Num<T>::to_acc(s.bias[c + e]) : 0.0f;
      for (int r = threadIdx.x / CPR; r < kBM; r += RPP) {
        const int64_t m = id.m0 + r;
        if (m >= p.M) break;
        Vec<T> o;
#pragma unroll
        for (int e = 0; e < VEC; ++e) o.v[e] = Num<T>::from_acc(activate(Cs[r * LDC + cc + e] + bias[e], relu));
        *reinterpret_cast<Vec<T>*>(s.dst + m * s.ld + c) = o;
      }
    } else {
      for (int r = threadIdx.x / CPR; r < kBM; r += RPP) {
        const int64_t m = id.m0 + r;
        if (m >= p.M) break;
#pragma unroll
        for (int e = 0; e < VEC; ++e)
          if (n + e < g.n) store_elem<T>(g, m, n + e, Cs[r * LDC + cc + e], relu);
      }
    }
  }
#endif
}

// ---- fp32 / fp64: FMA ---------------------------------------------------------------------------
template <typename T>
__global__ void __launch_bounds__(kThreads) stage_kernel_fma(const __grid_constant__ StageParams p) {
  constexpr int BK = sizeof(T) == 8 ? 16 : 32;
  constexpr int LDS = BK + 1;  // odd stride: the 16 B rows a warp reads at one k hit distinct banks
  __shared__ T As[kBM * LDS];
  __shared__ T Bs[kBN * LDS];

  const TileId id = tile_id(p);
  const GemmProblem& g = p.prob[id.pi];
  TileLoader<T, BK> ld(g, p, id.m0, id.n0);

  // Thread (tx, ty) owns rows ty + 8 i (i < 8) and columns tx + 16 j (j < 4) of the tile.
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  T acc[8][4];
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = T(0);

  ld.fetch(0);
  ld.template commit<LDS, false>(0, As, Bs);
  __syncthreads();
  for (int k0 = 0; k0 < g.ktot; k0 += BK) {
    const bool more = k0 + BK < g.ktot;
    if (more) ld.fetch(k0 + BK);
#pragma unroll 4
    for (int kk = 0; kk < BK; ++kk) {
      T av[8], bv[4];
#pragma unroll
      for (int i = 0; i < 8; ++i) av[i] = As[(ty + 8 * i) * LDS + kk];
#pragma unroll
      for (int j = 0; j < 4; ++j) bv[j] = Bs[(tx + 16 * j) * LDS + kk];
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fma(av[i], bv[j], acc[i][j]);
    }
    __syncthreads();
    if (more) {
      ld.template commit<LDS, false>(k0 + BK, As, Bs);
      __syncthreads();
    }
  }

  const bool relu = p.relu != 0;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int n = id.n0 + tx + 16 * j;
    if (n >= g.n) continue;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int64_t m = id.m0 + ty + 8 * i;
      if (m < p.M) store_elem<T>(g, m, n, acc[i][j], relu);
    }
  }
}

// ---- host side ------------------------------------------------------------------------------

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

int checked_int(int64_t v, const char* what) {
  TORCH_CHECK(v >= 0 && v <= std::numeric_limits<int>::max(), "inception (cuda backend): ", what, " = ", v,
              " exceeds the kernel's 32-bit range");
  return static_cast<int>(v);
}

// One output segment of a problem: `cols` columns with weight rows w (row stride ldw), bias
// (may be undefined) and destination dst (row stride ldd).
struct SegmentSpec {
  int64_t cols;
  const void* w;
  int64_t ldw;
  const void* bias;
  void* dst;
  int64_t ldd;
};

GemmProblem make_problem(const void* src, int64_t lds, int64_t coff, int64_t C, int64_t K, bool pool,
                         std::initializer_list<SegmentSpec> segs, int64_t elem_size) {
  const int64_t vec = 16 / elem_size;  // elements per 16-byte chunk
  GemmProblem g{};
  g.src = src;
  g.lds = lds;
  g.coff = coff;
  g.C = checked_int(C, "channels per tap");
  g.K = checked_int(K, "kernel size");
  g.pool = pool ? 1 : 0;
  g.ktot = checked_int(K * K * C, "K*K*C");
  g.vec_a = (C % vec == 0 && lds % vec == 0 && coff % vec == 0 && aligned16(src)) ? 1 : 0;
  g.vec_b = g.ktot % vec == 0 ? 1 : 0;
  g.vec_out = 1;
  int64_t end = 0;
  int s = 0;
  for (const SegmentSpec& sp : segs) {
    TORCH_INTERNAL_ASSERT(s < kSegments);
    end += sp.cols;
    g.seg_end[s] = checked_int(end, "output channels");
    g.w[s] = sp.w;
    g.ldw[s] = sp.ldw;
    g.bias[s] = sp.bias;
    g.dst[s] = sp.dst;
    g.ldd[s] = sp.ldd;
    if (sp.cols > 0) {
      if (sp.ldw % vec != 0 || !aligned16(sp.w)) g.vec_b = 0;
      if (end % vec != 0 || sp.ldd % vec != 0 || !aligned16(sp.dst)) g.vec_out = 0;
    }
    ++s;
  }
  for (; s < kSegments; ++s) {  // unused: empty segments at the end
    g.seg_end[s] = g.seg_end[s - 1];
    g.w[s] = nullptr;
    g.ldw[s] = 0;
    g.bias[s] = nullptr;
    g.dst[s] = nullptr;
    g.ldd[s] = 0;
  }
  g.n = g.seg_end[kSegments - 1];
  g.ntiles = (g.n + kBN - 1) / kBN;
  return g;
}

const void* bias_ptr(const c10::optional<at::Tensor>& b, std::vector<at::Tensor>& keep) {
  if (!b.has_value() || !b->defined()) return nullptr;
  keep.push_back(b->contiguous());
  return keep.back().const_data_ptr();
}

// The device's compute capability major, queried once per device (no API call on later
// launches, e.g. during CUDA graph capture).  ATen/cuda/CUDAContext.h is avoided on purpose: it
// needs the cuSPARSE/cuBLAS headers, which minimal toolkits lack.
int compute_capability_major(c10::DeviceIndex device) {
  static std::array<std::atomic<int>, 64> cache{};  // 0: not queried yet
  if (device < 0) device = c10::cuda::current_device();
  TORCH_CHECK(device >= 0 && device < static_cast<int>(cache.size()), "inception (cuda backend): device index ",
              static_cast<int>(device), " out of range");
  int major = cache[device].load(std::memory_order_relaxed);
  if (major == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    cache[device].store(major, std::memory_order_relaxed);
  }
  return major;
}

void launch_stage(const StageParams& p, at::ScalarType st, cudaStream_t stream) {
  if (p.M == 0 || p.ntiles_total == 0) return;
  const int64_t blocks = ((p.M + kBM - 1) / kBM) * p.ntiles_total;
  TORCH_CHECK(blocks <= std::numeric_limits<int>::max(), "inception (cuda backend): ", blocks,
              " tiles exceed the grid limit; split the batch");
  const void* kernel = nullptr;
  switch (st) {
    case at::kHalf: kernel = reinterpret_cast<const void*>(&stage_kernel_tc<__half>); break;
    case at::kBFloat16: kernel = reinterpret_cast<const void*>(&stage_kernel_tc<__nv_bfloat16>); break;
    case at::kFloat: kernel = reinterpret_cast<const void*>(&stage_kernel_fma<float>); break;
    case at::kDouble: kernel = reinterpret_cast<const void*>(&stage_kernel_fma<double>); break;
    default: TORCH_CHECK_TYPE(false, "x: the cuda backend supports float32, float64, float16 and bfloat16, got ", st);
  }
  // cudaLaunchKernel rather than <<<>>>: the same source then also builds as plain C++ for the
  // CPU emulation test (tests/cuda_emulation), which supplies its own cudaLaunchKernel.
  void* args[] = {const_cast<StageParams*>(&p)};
  C10_CUDA_CHECK(cudaLaunchKernel(kernel, dim3(static_cast<unsigned>(blocks)), dim3(kThreads), args, 0, stream));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void inception_forward_cuda(const InceptionArgs& a, const InceptionShape& s, at::Tensor& out) {
  TORCH_CHECK_VALUE(a.x.is_cuda(), "x: the cuda backend expects a CUDA tensor, got one on ", a.x.device());
  TORCH_CHECK_VALUE(out.device() == a.x.device(), "out: expected a tensor on ", a.x.device(),
                    " (the device of x), got ", out.device());
  const at::ScalarType st = a.x.scalar_type();
  TORCH_CHECK_TYPE(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16,
                   "x: the cuda backend supports float32, float64, float16 and bfloat16, got ", st);
  c10::cuda::CUDAGuard guard(a.x.device());
  if (st == at::kHalf || st == at::kBFloat16) {
    const int major = compute_capability_major(a.x.device().index());
    TORCH_CHECK(major >= 8, "x: the cuda backend runs ", st, " on the tensor cores of compute capability 8.0 "
                "or newer; this device is ", major, ".x (use backend='triton' or float32)");
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t es = a.x.element_size();

  // Output: straight into `out` when its NHWC view is row-strided, else a dense temp + copy.
  NhwcOutput o(out, s);
  const int64_t ldo = o.ldo;
  char* O = static_cast<char*>(o.target.data_ptr());

  // Operands: NHWC x (a view when x is channels_last), (Cout, Cin) 1x1 weights and OHWI KxK
  // weights (views when already laid out so), contiguous biases.
  const at::Tensor xc = a.x.permute({0, 2, 3, 1}).contiguous();
  const at::Tensor w1 = a.w_1x1.reshape({s.ch1x1, s.cin}).contiguous();
  const at::Tensor w3r = a.w_3x3red.reshape({s.ch3x3red, s.cin}).contiguous();
  const at::Tensor w5r = a.w_5x5red.reshape({s.ch5x5red, s.cin}).contiguous();
  const at::Tensor wp = a.w_pool_proj.reshape({s.pool_proj, s.cin}).contiguous();
  const at::Tensor w3 = a.w_3x3.permute({0, 2, 3, 1}).contiguous();
  const at::Tensor w5 = a.w_5x5.permute({0, 2, 3, 1}).contiguous();
  std::vector<at::Tensor> keep;
  keep.reserve(6);
  const void* b1 = bias_ptr(a.b_1x1, keep);
  const void* b3r = bias_ptr(a.b_3x3red, keep);
  const void* b5r = bias_ptr(a.b_5x5red, keep);
  const void* bp = bias_ptr(a.b_pool_proj, keep);
  const void* b3 = bias_ptr(a.b_3x3, keep);
  const void* b5 = bias_ptr(a.b_5x5, keep);

  const int64_t P = s.n * s.h * s.w;
  const int64_t c1 = s.ch1x1, r3 = s.ch3x3red, r5 = s.ch5x5red, rr = r3 + r5;
  // Scratch for the two reduce outputs [P, r3 + r5]: the only intermediate in memory.
  const at::Tensor R = at::empty({P, rr}, xc.options());
  char* Rp = static_cast<char*>(R.data_ptr());
  const int64_t off_b2 = c1, off_b3 = c1 + s.ch3x3, off_b4 = c1 + s.ch3x3 + s.ch5x5;

  StageParams p1{};
  p1.M = P;
  p1.H = checked_int(s.h, "H");
  p1.W = checked_int(s.w, "W");
  p1.relu = a.relu ? 1 : 0;
  StageParams p2 = p1;

  // stage 1: merged 1x1 GEMM (-> out[:, :c1], R) and pool projection (-> out[:, off_b4:]).
  const void* X = xc.const_data_ptr();
  p1.prob[0] = make_problem(X, s.cin, 0, s.cin, 1, false,
                            {{c1, w1.const_data_ptr(), s.cin, b1, O, ldo},
                             {r3, w3r.const_data_ptr(), s.cin, b3r, Rp, rr},
                             {r5, w5r.const_data_ptr(), s.cin, b5r, Rp + r3 * es, rr}},
                            es);
  p1.prob[1] = make_problem(X, s.cin, 0, s.cin, 1, true,
                            {{s.pool_proj, wp.const_data_ptr(), s.cin, bp, O + off_b4 * es, ldo}}, es);
  p1.ntiles_total = p1.prob[0].ntiles + p1.prob[1].ntiles;

  // stage 2: K3xK3 over R[:, :r3] (-> out[:, off_b2:]) and K5xK5 over R[:, r3:] (-> out[:, off_b3:]).
  p2.prob[0] = make_problem(Rp, rr, 0, r3, s.k3, false,
                            {{s.ch3x3, w3.const_data_ptr(), s.k3 * s.k3 * r3, b3, O + off_b2 * es, ldo}}, es);
  p2.prob[1] = make_problem(Rp, rr, r3, r5, s.k5, false,
                            {{s.ch5x5, w5.const_data_ptr(), s.k5 * s.k5 * r5, b5, O + off_b3 * es, ldo}}, es);
  p2.ntiles_total = p2.prob[0].ntiles + p2.prob[1].ntiles;

  launch_stage(p1, st, stream);
  launch_stage(p2, st, stream);
  o.finish();
}

}  // namespace googlenet_fast
