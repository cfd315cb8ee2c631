// CPU emulation stand-in for c10/cuda/CUDAException.h (see tests/cuda_emulation/emulation.h).
#pragma once
#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>
#define C10_CUDA_CHECK(expr)                                                          \
  do {                                                                                \
    const cudaError_t gf_emu_err = (expr);                                            \
    TORCH_CHECK(gf_emu_err == cudaSuccess, "emulated CUDA call failed: ", #expr);     \
  } while (0)
#define C10_CUDA_KERNEL_LAUNCH_CHECK() \
  do {                                 \
  } while (0)
