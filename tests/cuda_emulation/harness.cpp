// CPU emulation of the CUDA backend: compiles csrc/cuda/inception_cuda.cu as plain C++ and runs
// its kernels on the CPU, one block after another, each block's 128 threads as std::threads
// that meet at __syncthreads (a std::barrier) and share the kernel's __shared__ arrays (static
// locals; blocks never overlap).  The tensor-core primitives (ldmatrix, mma.sync m16n8k16) come
// from shim/warp_mma_emulation.h, lane by lane with the PTX fragment layouts; the c10 CUDA
// helpers from shim/c10/cuda; everything else -- the host code that builds the two stages' problems,
// the tile loaders, the implicit-GEMM gather, the pool-in-loader, the epilogue and its segment
// routing -- is the real source.  It checks the kernels' logic (indexing, bounds, tails, both
// loader paths, the scalar and 16-byte epilogues, the fragment layouts of the warp MMA) where no
// GPU exists; it cannot check what only hardware shows (the memory model, speed).
#include <torch/extension.h>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <barrier>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

// ---- the CUDA language, on the CPU ------------------------------------------------------------
#undef __global__
#undef __device__
#undef __shared__
#undef __launch_bounds__
#undef __grid_constant__
#define __global__
#define __device__
#define __shared__ static
#define __launch_bounds__(...)
#define __grid_constant__
#define __trap() std::abort()

thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
thread_local std::barrier<>* gf_emu_block_barrier = nullptr;
inline void __syncthreads() { gf_emu_block_barrier->arrive_and_wait(); }

cudaError_t gf_emu_launch(const void* func, dim3 grid, dim3 block, void** args, size_t smem, cudaStream_t);
cudaError_t gf_emu_device_attribute(int* value, cudaDeviceAttr attr, int device) {
  *value = attr == cudaDevAttrComputeCapabilityMajor ? 9 : 0;  // an sm_90 device
  return cudaSuccess;
}
#define cudaLaunchKernel gf_emu_launch
#define cudaDeviceGetAttribute gf_emu_device_attribute
#define is_cuda is_cpu  // the emulated "device" tensors live on the CPU

#define GF_CUDA_EMULATION  // the source takes its ldmatrix/mma from shim/warp_mma_emulation.h
#ifndef GF_CUDA_SOURCE  // the test may point at another copy of the source
#define GF_CUDA_SOURCE "../../csrc/cuda/inception_cuda.cu"
#endif
#include GF_CUDA_SOURCE

#undef is_cuda

using googlenet_fast::StageParams;

cudaError_t gf_emu_launch(const void* func, dim3 grid, dim3 block, void** args, size_t smem, cudaStream_t) {
  if (grid.y != 1 || grid.z != 1 || block.y != 1 || block.z != 1 || smem != 0 || grid.x == 0)
    return cudaErrorInvalidConfiguration;
  auto kernel = reinterpret_cast<void (*)(StageParams)>(const_cast<void*>(func));
  const StageParams params = *static_cast<const StageParams*>(args[0]);
  const unsigned nthreads = block.x;
  std::barrier<> bar(nthreads);
  std::vector<std::thread> threads;
  threads.reserve(nthreads);
  for (unsigned t = 0; t < nthreads; ++t) {
    threads.emplace_back([&, t] {
      threadIdx = {t, 0, 0};
      gf_emu_block_barrier = &bar;
      for (unsigned b = 0; b < grid.x; ++b) {
        blockIdx = {b, 0, 0};
        kernel(params);         // a copy per thread, as the real kernel parameter
        bar.arrive_and_wait();  // the block's shared arrays are reused by the next block
      }
    });
  }
  for (auto& th : threads) th.join();
  return cudaSuccess;
}

// The CUDA backend's entry point on CPU tensors: writes the module into `out`, returns it.
at::Tensor emulated_inception_out(const at::Tensor& x, const at::Tensor& w_1x1, const c10::optional<at::Tensor>& b_1x1,
                                  const at::Tensor& w_3x3red, const c10::optional<at::Tensor>& b_3x3red,
                                  const at::Tensor& w_3x3, const c10::optional<at::Tensor>& b_3x3,
                                  const at::Tensor& w_5x5red, const c10::optional<at::Tensor>& b_5x5red,
                                  const at::Tensor& w_5x5, const c10::optional<at::Tensor>& b_5x5,
                                  const at::Tensor& w_pool_proj, const c10::optional<at::Tensor>& b_pool_proj,
                                  bool relu, at::Tensor out) {
  using googlenet_fast::InceptionArgs;
  using googlenet_fast::InceptionShape;
  const InceptionArgs a{x, w_1x1, b_1x1, w_3x3red, b_3x3red, w_3x3, b_3x3, w_5x5red, b_5x5red, w_5x5, b_5x5,
                        w_pool_proj, b_pool_proj, relu};
  InceptionShape s{};
  s.n = x.size(0); s.cin = x.size(1); s.h = x.size(2); s.w = x.size(3);
  s.ch1x1 = w_1x1.size(0); s.ch3x3red = w_3x3red.size(0); s.ch5x5red = w_5x5red.size(0);
  s.ch3x3 = w_3x3.size(0); s.k3 = w_3x3.size(2); s.ch5x5 = w_5x5.size(0); s.k5 = w_5x5.size(2);
  s.pool_proj = w_pool_proj.size(0);
  TORCH_CHECK(out.dim() == 4 && out.size(0) == s.n && out.size(1) == s.out_channels() && out.size(2) == s.h &&
              out.size(3) == s.w, "out: wrong shape");
  googlenet_fast::inception_forward_cuda(a, s, out);
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("inception_out", &emulated_inception_out, "the CUDA backend's kernels, emulated on the CPU");
}
