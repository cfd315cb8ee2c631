// CPU emulation stand-in for c10/cuda/CUDAFunctions.h (see tests/cuda_emulation/harness.cpp).
#pragma once
#include <c10/core/Device.h>
namespace c10::cuda {
inline c10::DeviceIndex current_device() { return 0; }
}  // namespace c10::cuda
