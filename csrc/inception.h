// googlenet_fast: shared declarations of the fused Inception op.
//
// One Inception module (Szegedy et al. 2015, Fig. 2(b); torchvision's Inception):
//   b1 = act(conv1x1(x)); b2 = act(convK3(act(conv1x1(x)))); b3 = act(convK5(act(conv1x1(x))));
//   b4 = act(conv1x1(maxpool3x3s1p1(x)));  y = cat(b1, b2, b3, b4) along channels.
// Every backend computes it in two stages (the Triton kernels use the same names):
//   stage 1: the merged 1x1 GEMM over x (N = ch1x1 + ch3x3red + ch5x5red) and the pool
//            projection GEMM whose loader computes the 3x3 max (-inf padding);
//   stage 2: the KxK convolutions of both reduce branches as (implicit) GEMMs.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Optional.h>

#include <array>
#include <tuple>

namespace googlenet_fast {

struct InceptionShape {
  int64_t n, cin, h, w;
  int64_t ch1x1, ch3x3red, ch3x3, k3, ch5x5red, ch5x5, k5, pool_proj;
  int64_t out_channels() const { return ch1x1 + ch3x3 + ch5x5 + pool_proj; }
};

// The op's arguments, in schema order.
struct InceptionArgs {
  const at::Tensor& x;
  const at::Tensor& w_1x1;     const c10::optional<at::Tensor>& b_1x1;
  const at::Tensor& w_3x3red;  const c10::optional<at::Tensor>& b_3x3red;
  const at::Tensor& w_3x3;     const c10::optional<at::Tensor>& b_3x3;
  const at::Tensor& w_5x5red;  const c10::optional<at::Tensor>& b_5x5red;
  const at::Tensor& w_5x5;     const c10::optional<at::Tensor>& b_5x5;
  const at::Tensor& w_pool_proj; const c10::optional<at::Tensor>& b_pool_proj;
  bool relu;
};

// Checks every argument (rank, channel counts, kernel sizes, dtype, device, spatial size, and
// `out` when given) with messages that name the argument; returns the module's sizes.
InceptionShape check_inception_args(const InceptionArgs& a, const at::Tensor* out);

// A fresh output for x: (N, out_channels, H, W), x's dtype/device, x's suggested memory format.
at::Tensor empty_inception_output(const InceptionArgs& a, const InceptionShape& s);

// The pixel stride of an NHWC view [N, H, W, C] if every pixel p = (n*H + h)*W + w sits at
// p * stride and channels are unit-strided; -1 otherwise.  Every backend writes straight into `out`
// when this is >= 0 (channels_last, or a channel slice of a larger channels_last buffer).
inline int64_t nhwc_pixel_stride(const at::Tensor& nhwc) {
  const int64_t C = nhwc.size(3);
  if (C > 1 && nhwc.stride(3) != 1) return -1;
  int64_t ld = -1;
  int64_t inner = 1;  // pixels per step of the dim, innermost first
  for (int d = 2; d >= 0; --d) {
    if (nhwc.size(d) > 1) {
      if (ld < 0) {
        if (nhwc.stride(d) % inner != 0) return -1;
        ld = nhwc.stride(d) / inner;
      }
      if (nhwc.stride(d) != ld * inner) return -1;
    }
    inner *= nhwc.size(d);
  }
  if (ld < 0) ld = C;  // a single pixel
  return ld < C ? -1 : ld;
}

// Where a kernel writes the module's output: `out`'s own NHWC view when it is row-strided
// (nhwc_pixel_stride >= 0), else a dense NHWC buffer that finish() copies back into `out`.
struct NhwcOutput {
  at::Tensor view;    // out.permute(0, 2, 3, 1)
  at::Tensor target;  // what the kernel writes: `view` itself, or a dense temporary
  int64_t ldo;        // target's pixel stride, in elements
  NhwcOutput(at::Tensor& out, const InceptionShape& s) : view(out.permute({0, 2, 3, 1})) {
    ldo = nhwc_pixel_stride(view);
    target = view;
    if (ldo < 0) {
      target = at::empty({s.n, s.h, s.w, s.out_channels()}, out.options());
      ldo = s.out_channels();
    }
  }
  void finish() {
    if (!target.is_same(view)) view.copy_(target);
  }
};

// CPU kernel (csrc/cpu/inception_cpu.cpp): writes the module's output into `out`.
void inception_forward_cpu(const InceptionArgs& a, const InceptionShape& s, at::Tensor& out);

// Whether this thread's CPU calls may reuse oneDNN weights prepacked in an earlier call (a cache
// keyed on the weight's storage, address, strides and version counter; csrc/cpu/inception_cpu.cpp).
// Off by default; set_weight_prepacking returns the previous setting (Python:
// googlenet_fast._C._set_weight_prepacking).
bool weight_prepacking_enabled();
bool set_weight_prepacking(bool enabled);
int64_t prepacked_weight_count();  // keys in the cache (tests)
void clear_prepacked_weights();  // drop every packed copy (see PackedWeights::clear)
int64_t prepacked_weight_tensors();  // distinct packed tensors they hold (tests)
int64_t prepacked_weight_capacity();  // the most keys it holds (tests)

// Max pool output length, PyTorch's pooling_output_shape (dilation 1; ceil mode: the last window
// starts inside the input or its left padding); by default ceil mode without padding.
inline int64_t pool_out_size(int64_t size, int64_t kernel, int64_t stride, int64_t padding = 0,
                             bool ceil_mode = true) {
  const int64_t num = size + 2 * padding - kernel + (ceil_mode ? stride - 1 : 0);  // floor division (div_rtn)
  int64_t out = (num >= 0 ? num / stride : -((-num + stride - 1) / stride)) + 1;
  if (ceil_mode && (out - 1) * stride >= size + padding) --out;
  return out;
}

// The tap max pools' argument checks (csrc/cpu/max_pool_train_cpu.cpp), shared by their forward,
// backward and the stem's fused pool + BatchNorm backward: a ValueError naming the argument.
// kernel 1..16 (the argmax tap is one byte), stride >= 1, padding 0..kernel / 2 (as nn.MaxPool2d).
void check_tap_pool_window(int64_t kernel, int64_t stride, int64_t padding);
// grad_y's spatial size is the floor- or ceil-mode pool output of `input_name`'s H x W.
void check_pool_grad_size(const at::Tensor& grad_y, int64_t H, int64_t W, int64_t kernel, int64_t stride,
                          int64_t padding, const char* input_name);

// googlenet_fast::max_pool_nhwc on the CPU (csrc/cpu/inception_cpu.cpp): kernel x kernel / stride
// ceil-mode max pool, no padding, no indices, optional ReLU after the max (relu(maxpool(y)) ==
// maxpool(relu(y)), NaN included); output channels_last.  Arguments checked by the caller.
at::Tensor max_pool_nhwc_cpu(const at::Tensor& x, int64_t kernel, int64_t stride, bool relu);

// googlenet_fast::conv2d_relu on the CPU (csrc/cpu/inception_cpu.cpp): float32 through oneDNN with
// the weight prepacked once per weight and input shape; other dtypes through at::convolution.
// Output channels_last.  Arguments checked by the caller (csrc/ops.cpp).
at::Tensor conv2d_relu_cpu(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                           int64_t stride, int64_t padding, bool relu);

// googlenet_fast::conv2d_relu_max_pool on the CPU (csrc/cpu/inception_cpu.cpp):
// max_pool(relu(conv2d(x))), ceil-mode pool without padding, a few images at a time; output
// channels_last.  Arguments checked by the caller.
at::Tensor conv2d_relu_max_pool_cpu(const at::Tensor& x, const at::Tensor& weight,
                                    const c10::optional<at::Tensor>& bias, int64_t stride, int64_t padding,
                                    int64_t pool_kernel, int64_t pool_stride);

// googlenet_fast::avgpool_linear on the CPU (csrc/cpu/inception_cpu.cpp): the classifier head
// fc(flatten(adaptive_avg_pool2d(x, 1))) -> (N, out).  Arguments checked by the caller.
at::Tensor avgpool_linear_cpu(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias);

// ---- backward (csrc/cpu/inception_backward_cpu.cpp) -------------------------------------------
// googlenet_fast::inception_backward(grad_out, x, <the 12 weights/biases>, relu, out, output_mask)
// returns the 13 gradients in argument order (x, w_1x1, b_1x1, ..., w_pool_proj, b_pool_proj);
// gradient i is computed when output_mask[i] is set (and, for a bias, when the bias is given),
// None otherwise.  `out` is the forward output, read only for the ReLU masks (required when relu
// and any gradient is asked for); x is read only when a requested gradient needs it.
constexpr int kInceptionNumGrads = 13;
using InceptionGradMask = std::array<bool, kInceptionNumGrads>;
using InceptionGrads =
    std::tuple<c10::optional<at::Tensor>, c10::optional<at::Tensor>, c10::optional<at::Tensor>,
               c10::optional<at::Tensor>, c10::optional<at::Tensor>, c10::optional<at::Tensor>,
               c10::optional<at::Tensor>, c10::optional<at::Tensor>, c10::optional<at::Tensor>,
               c10::optional<at::Tensor>, c10::optional<at::Tensor>, c10::optional<at::Tensor>,
               c10::optional<at::Tensor>>;

#define GF_INCEPTION_BACKWARD_PARAMS                                                                  \
  const at::Tensor &grad_out, const at::Tensor &x, const at::Tensor &w_1x1,                           \
      const c10::optional<at::Tensor>&b_1x1, const at::Tensor &w_3x3red,                             \
      const c10::optional<at::Tensor>&b_3x3red, const at::Tensor &w_3x3,                             \
      const c10::optional<at::Tensor>&b_3x3, const at::Tensor &w_5x5red,                             \
      const c10::optional<at::Tensor>&b_5x5red, const at::Tensor &w_5x5,                             \
      const c10::optional<at::Tensor>&b_5x5, const at::Tensor &w_pool_proj,                          \
      const c10::optional<at::Tensor>&b_pool_proj, bool relu, const c10::optional<at::Tensor>&out, \
      googlenet_fast::InceptionGradMask output_mask

// CPU kernel: the fused backward (float32/float64 natively; bfloat16/float16 computed in float32).
// grad_x comes in x's suggested memory format, each weight's gradient in the weight's; the fake
// kernel (googlenet_fast/ops.py, _fake_backward) allocates the same.
InceptionGrads inception_backward_cpu(GF_INCEPTION_BACKWARD_PARAMS);

// ---- train-mode BatchNorm stage (csrc/cpu/inception_cpu.cpp) ----------------------------------
// googlenet_fast::inception_bn_train: the module's convolutions with no bias and no epilogue
// activation (a.relu false, biases absent), for BatchNorm with batch statistics after them.
// Returns (out, reduce, reduce_mean, reduce_var):
//   out     (N, out_channels, H, W) channels_last: the four branches' pre-BatchNorm outputs;
//   reduce  (N, ch3x3red + ch5x5red, H, W) channels_last: the two reduce convs' pre-BN outputs;
//   reduce_mean, reduce_var (ch3x3red + ch5x5red,) in the accumulator type: batch mean and biased
//           variance of `reduce` over N, H, W.
// Stage 2 reads `reduce` through relu((v - mean) * rsqrt(var + eps) * reduce_weight + reduce_bias),
// the reduce branches' BatchNorm + ReLU applied in its im2col loader (never stored).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> inception_bn_train_cpu(
    const InceptionArgs& a, const InceptionShape& s, const at::Tensor& reduce_weight,
    const at::Tensor& reduce_bias, double eps);

#ifdef GOOGLENET_FAST_WITH_CUDA
// CUDA kernel (csrc/cuda/): writes the module's output into `out`.
void inception_forward_cuda(const InceptionArgs& a, const InceptionShape& s, at::Tensor& out);
#endif

}  // namespace googlenet_fast
