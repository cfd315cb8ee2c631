// googlenet_fast: the CPU eval path's convolutions and inner products executed as oneDNN primitives
// we create and keep, in torch's own oneDNN (csrc/cpu/onednn_api.h), instead of through ATen's
// mkldnn ops: the same kernels (bit-equal results), without ATen's 12-20 us per call around them.
//
// A primitive is created once per shape, dtype, input layout and thread count (at most
// kMaxPrimitives kept, least recently used dropped) and executed with memory objects made per
// call.  Weights are reordered into the layout the primitive asks for and cached through
// PackedWeights (csrc/cpu/packed_weights.h) under the same rules as ATen's prepacked copies (the
// calling thread's prepacking setting, the source's storage and version counters), keyed by that
// layout, so shapes that want one layout share one copy.  Where a shape gets no optimized kernel
// (oneDNN would run its reference implementation), the functions return an undefined tensor and
// the caller runs ATen's op, as it does everywhere when the direct path is off or unavailable.
#pragma once

#include <ATen/ATen.h>

#include <initializer_list>
#include <mutex>
#include <string>

namespace googlenet_fast {

// Whether the direct path is used: torch's oneDNN is reachable (onednn::available()) and it is not
// switched off (GOOGLENET_FAST_ONEDNN=0/false/off/no, read at the first use, or set_direct_onednn).
bool direct_onednn_enabled();
// Switch the direct path on or off for the whole process; returns the previous setting.  Switching
// on where it is unavailable has no effect (direct_onednn_enabled() stays false).
bool set_direct_onednn(bool enabled);
// "" when the direct path can be used; otherwise why not.
const std::string& direct_onednn_unavailable_reason();

// y = conv2d(x, w, b, stride, padding) (dilation 1, groups 1, no activation), y a new dense
// channels_last tensor of x's dtype.  x: (N, C, H, W) float32 or bfloat16, channels_last (the
// model's layout) or contiguous (oneDNN often has only its reference kernel for an NCHW input with
// an NHWC output: then ATen's op runs); w: (K, C, R, S) of x's dtype; b: (K,) float32 or bfloat16, or none.  cache: reuse
// the weight's reordered copy (see above).  Undefined tensor where the direct path does not apply.
at::Tensor direct_conv2d(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b, int64_t stride,
                         int64_t padding, bool cache);

// Y = A W^T (+ bias), a new dense (rows, n) tensor of A's dtype: oneDNN's inner product.  A:
// (rows, k) dense, float32 or bfloat16; W: (n, k) of A's dtype (any strides); bias: (n,) float32
// or A's dtype, or nullptr.  cache: reuse W's reordered copy (keyed by `sources`, the op arguments
// W reads); otherwise oneDNN reads W as it is.  rows_hint: the row count most calls use; other
// row counts reuse its weight layout where oneDNN allows.  Undefined tensor where it does not apply.
at::Tensor direct_inner_product(const at::Tensor& A, const at::Tensor& W, const at::Tensor* bias, int64_t rows_hint,
                                bool cache, std::initializer_list<const at::Tensor*> sources);

// Under torch.set_float32_matmul_precision("high" / "medium"), float32 calls whose weights are
// cached (cache == true) run as bf16x3 where csrc/cpu/bf16x3.h says so; the rest stay float32.

// Primitives currently kept (tests).
int64_t direct_onednn_primitive_count();

// Argument memory sets the calling thread keeps (one per primitive it executed, bounded; tests).
int64_t direct_onednn_thread_memory_sets();

// In a forked child only (csrc/cpu/fork_safety.cpp): start a new, empty primitive cache; the old
// one's mutex may be held by a parent thread that does not exist in the child.
void direct_onednn_forget_in_forked_child();
// The primitive cache's lock, held by the caller (tests: csrc/cpu/fork_safety.cpp); an empty lock
// where the path is not built.
std::unique_lock<std::mutex> direct_onednn_lock_for_test();

}  // namespace googlenet_fast
