// googlenet_fast: float32 convolutions and inner products as three bfloat16 products (bf16x3), the
// CPU path behind torch.set_float32_matmul_precision("high") and "medium".
//
// PyTorch documents "high" as: float32 matrix multiplications "either use the TensorFloat32
// datatype ... or treat each float32 number as the sum of two bfloat16 numbers (approximately 16
// mantissa bits with 14 bits explicitly stored)".  A float32 x is split into hi = the bfloat16
// nearest x and lo = bfloat16(x - hi), w likewise, and
//     x * w  ~=  hi(x) hi(w) + lo(x) hi(w) + hi(x) lo(w)
// (the dropped lo(x) lo(w) is ~2^-16 of the product).  The three products are ONE bfloat16
// convolution / inner product over three times the input channels, accumulated in float32 by
// oneDNN: activations [hi | lo | hi] against weights [hi | hi | lo] along the channel axis.  On a
// CPU with AMX (oneDNN's avx512_core_amx ISA) the bfloat16 GEMMs run ~16x the float32 FMA rate,
// so the three cost less than one float32 pass; on AVX512-BF16 without AMX (~2x the float32
// rate) they would cost more, and "auto" keeps float32 there.
//
// Error: ~2^-17 per product instead of float32's 2^-24, 15-22x IEEE float32's error on the
// logits: 1.0e-5 to 3.2e-4 of float64 (relative to their largest value) over the three networks
// measured (tests/test_bf16x3.py, googlenet_fast/cpu_precision.py).
// Non-finite values: hi = the value, lo = 0 (an inf input can still give NaN: inf * lo(w) where
// lo(w) = 0); a finite x that would round to inf (|x| > 3.3961e38) is cut to its upper 16 bits
// instead, so no finite value overflows.  Subnormal values count as zero, as in AMX's products.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace googlenet_fast {
namespace bf16x3 {

// auto: bf16x3 where oneDNN runs AMX; on: wherever the split's AVX-512 loop runs (tests, other
// CPUs); off: never.
enum class Mode : int { kAuto = 0, kOn = 1, kOff = 2 };

// Set the process's mode; returns the previous one.
Mode set_mode(Mode mode);
// The process's mode.
Mode mode();

// Whether the split's loop can run: AVX-512 (F, BW, VL, DQ) with AVX512-BF16, and
// GOOGLENET_FAST_PORTABLE_LOOPS unset.
bool split_available();

// Whether oneDNN's effective ISA includes AMX (bfloat16 tiles).
bool amx();

// Whether the float32 precision setting allows bf16x3: oneDNN's matmul or conv precision (torch
// 2.14: torch.backends.mkldnn.matmul / conv.fp32_precision) is "tf32" or "bf16", as
// set_float32_matmul_precision("high" / "medium") leaves the matmul one.  Never throws.
bool precision_allows();

// Whether a float32 call of the direct oneDNN path runs as bf16x3 now: precision_allows(),
// split_available(), and the mode allows it.
bool wanted();

// x: [rows, cols] float32, row stride ldx -> out: [rows, 3 * cols] bfloat16, dense.  Activations
// (weights == false): [hi | lo | hi]; weights: [hi | hi | lo].  Only where wanted() could be true
// (AVX-512).
void split_rows(const float* x, int64_t rows, int64_t cols, int64_t ldx, c10::BFloat16* out, bool weights);

// (N, C, H, W) float32, any layout -> (N, 3C, H, W) bfloat16, channels_last: [hi | lo | hi].
at::Tensor split_activation(const at::Tensor& x);

// (rows, k) float32 -> (rows, 3k) bfloat16: [hi | lo | hi] (weights: [hi | hi | lo]).
at::Tensor split_matrix(const at::Tensor& a, bool weights = false);

// (K, C, ...) float32 weight, any strides -> (K, 3C, ...) bfloat16 [hi | hi | lo] along dim 1.
at::Tensor split_weight(const at::Tensor& w);

}  // namespace bf16x3
}  // namespace googlenet_fast
