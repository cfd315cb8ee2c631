// googlenet_fast: the op schema (one TORCH_LIBRARY), argument checks, and the CPU/CUDA
// registrations.  Loading googlenet_fast._C registers everything below.
#include <Python.h>

#include <ATen/ATen.h>
#include <cmath>
#include <cstring>
#include <torch/library.h>
#include <torch/csrc/autograd/python_variable.h>

#include "cpu/bf16x3.h"
#include "cpu/onednn_direct.h"
#include "inception.h"

namespace googlenet_fast {
namespace {

std::string shape_str(const at::Tensor& t) {
  std::ostringstream os;
  os << t.sizes();
  return os.str();
}

// torch's Python spelling of a dtype, so C++ and Python errors read alike.
std::string dtype_str(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    default: return std::string("torch.") + c10::toString(t);
  }
}

void check_weight(const char* name, const at::Tensor& w, int64_t in_ch, int64_t k, const at::Tensor& x,
                  const char* in_src = "the channels of x") {
  TORCH_CHECK_VALUE(w.dim() == 4, name, ": expected a 4-D conv weight (out, in, kH, kW), got shape ",
                    shape_str(w));
  TORCH_CHECK_VALUE(w.size(1) == in_ch, name, ": expected ", in_ch, " input channels (dim 1, ", in_src, "), got shape ",
                    shape_str(w));
  TORCH_CHECK_VALUE(w.size(2) == w.size(3) && w.size(2) % 2 == 1, name,
                    ": expected a square kernel of odd size, got shape ", shape_str(w));
  TORCH_CHECK_VALUE(k < 0 || w.size(2) == k, name, ": expected a ", k, "x", k, " kernel, got shape ",
                    shape_str(w));
  TORCH_CHECK_TYPE(w.scalar_type() == x.scalar_type(), name, ": expected dtype ", dtype_str(x.scalar_type()),
                   " (the dtype of x), got ", dtype_str(w.scalar_type()));
  TORCH_CHECK_VALUE(w.device() == x.device(), name, ": expected a tensor on ", x.device(),
                    " (the device of x), got ", w.device());
}

void check_bias(const char* name, const c10::optional<at::Tensor>& b, int64_t out_ch, const at::Tensor& x) {
  if (!b.has_value() || !b->defined()) return;
  TORCH_CHECK_VALUE(b->dim() == 1 && b->size(0) == out_ch, name, ": expected shape [", out_ch, "], got ",
                    shape_str(*b));
  TORCH_CHECK_TYPE(b->scalar_type() == x.scalar_type(), name, ": expected dtype ", dtype_str(x.scalar_type()),
                   " (the dtype of x), got ", dtype_str(b->scalar_type()));
  TORCH_CHECK_VALUE(b->device() == x.device(), name, ": expected a tensor on ", x.device(),
                    " (the device of x), got ", b->device());
}

}  // namespace

InceptionShape check_inception_args(const InceptionArgs& a, const at::Tensor* out) {
  const at::Tensor& x = a.x;
  TORCH_CHECK_VALUE(x.dim() == 4, "x: expected a 4-D tensor (N, C, H, W), got shape ", shape_str(x));
  const auto st = x.scalar_type();
  TORCH_CHECK_TYPE(st == at::kFloat || st == at::kDouble || st == at::kBFloat16 || st == at::kHalf,
                   "x: expected a floating dtype (float32, float64, float16, bfloat16), got ", dtype_str(st));
  InceptionShape s{};
  s.n = x.size(0); s.cin = x.size(1); s.h = x.size(2); s.w = x.size(3);
  TORCH_CHECK_VALUE(s.h >= 1 && s.w >= 1, "x: expected a spatial size of at least 1x1, got ", s.h, "x", s.w);
  check_weight("w_1x1", a.w_1x1, s.cin, 1, x);
  check_weight("w_3x3red", a.w_3x3red, s.cin, 1, x);
  check_weight("w_5x5red", a.w_5x5red, s.cin, 1, x);
  check_weight("w_pool_proj", a.w_pool_proj, s.cin, 1, x);
  s.ch1x1 = a.w_1x1.size(0);
  s.ch3x3red = a.w_3x3red.size(0);
  s.ch5x5red = a.w_5x5red.size(0);
  s.pool_proj = a.w_pool_proj.size(0);
  check_weight("w_3x3", a.w_3x3, s.ch3x3red, -1, x, "the output channels of w_3x3red");
  check_weight("w_5x5", a.w_5x5, s.ch5x5red, -1, x, "the output channels of w_5x5red");
  s.ch3x3 = a.w_3x3.size(0); s.k3 = a.w_3x3.size(2);
  s.ch5x5 = a.w_5x5.size(0); s.k5 = a.w_5x5.size(2);
  check_bias("b_1x1", a.b_1x1, s.ch1x1, x);
  check_bias("b_3x3red", a.b_3x3red, s.ch3x3red, x);
  check_bias("b_3x3", a.b_3x3, s.ch3x3, x);
  check_bias("b_5x5red", a.b_5x5red, s.ch5x5red, x);
  check_bias("b_5x5", a.b_5x5, s.ch5x5, x);
  check_bias("b_pool_proj", a.b_pool_proj, s.pool_proj, x);
  if (out != nullptr) {
    const at::Tensor& o = *out;
    TORCH_CHECK_VALUE(o.dim() == 4 && o.size(0) == s.n && o.size(1) == s.out_channels() && o.size(2) == s.h &&
                          o.size(3) == s.w,
                      "out: expected shape [", s.n, ", ", s.out_channels(), ", ", s.h, ", ", s.w, "], got ",
                      shape_str(o));
    TORCH_CHECK_TYPE(o.scalar_type() == st, "out: expected dtype ", dtype_str(st), " (the dtype of x), got ", dtype_str(o.scalar_type()));
    TORCH_CHECK_VALUE(o.device() == x.device(), "out: expected a tensor on ", x.device(),
                      " (the device of x), got ", o.device());
  }
  return s;
}

at::Tensor empty_inception_output(const InceptionArgs& a, const InceptionShape& s) {
  return at::empty({s.n, s.out_channels(), s.h, s.w},
                   a.x.options().memory_format(a.x.suggest_memory_format()));
}

namespace {

#define GF_INCEPTION_PARAMS                                                                          \
  const at::Tensor &x, const at::Tensor &w_1x1, const c10::optional<at::Tensor>&b_1x1,              \
      const at::Tensor &w_3x3red, const c10::optional<at::Tensor>&b_3x3red, const at::Tensor &w_3x3, \
      const c10::optional<at::Tensor>&b_3x3, const at::Tensor &w_5x5red,                             \
      const c10::optional<at::Tensor>&b_5x5red, const at::Tensor &w_5x5,                             \
      const c10::optional<at::Tensor>&b_5x5, const at::Tensor &w_pool_proj,                          \
      const c10::optional<at::Tensor>&b_pool_proj, bool relu
#define GF_INCEPTION_ARGS                                                                           \
  InceptionArgs {                                                                                   \
    x, w_1x1, b_1x1, w_3x3red, b_3x3red, w_3x3, b_3x3, w_5x5red, b_5x5red, w_5x5, b_5x5, w_pool_proj, \
        b_pool_proj, relu                                                                           \
  }

using Kernel = void (*)(const InceptionArgs&, const InceptionShape&, at::Tensor&);

template <Kernel K>
at::Tensor inception_functional(GF_INCEPTION_PARAMS) {
  const InceptionArgs a = GF_INCEPTION_ARGS;
  const InceptionShape s = check_inception_args(a, nullptr);
  at::Tensor out = empty_inception_output(a, s);
  if (out.numel() > 0) K(a, s, out);
  return out;
}

template <Kernel K>
void inception_out(GF_INCEPTION_PARAMS, at::Tensor& out) {
  const InceptionArgs a = GF_INCEPTION_ARGS;
  const InceptionShape s = check_inception_args(a, &out);
  if (out.numel() > 0) K(a, s, out);
}

// googlenet_fast::inception_bn_train: the checks, then the device kernel.
using BnTrainKernel = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> (*)(
    const InceptionArgs&, const InceptionShape&, const at::Tensor&, const at::Tensor&, double);

template <BnTrainKernel K>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> inception_bn_train(
    const at::Tensor& x, const at::Tensor& w_1x1, const at::Tensor& w_3x3red, const at::Tensor& w_3x3,
    const at::Tensor& w_5x5red, const at::Tensor& w_5x5, const at::Tensor& w_pool_proj,
    const at::Tensor& reduce_weight, const at::Tensor& reduce_bias, double eps) {
  const c10::optional<at::Tensor> none;
  const InceptionArgs a{x, w_1x1, none, w_3x3red, none, w_3x3, none, w_5x5red, none, w_5x5, none,
                        w_pool_proj, none, /*relu=*/false};
  const InceptionShape s = check_inception_args(a, nullptr);
  const int64_t rr = s.ch3x3red + s.ch5x5red;
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"reduce_weight", &reduce_weight},
                                {"reduce_bias", &reduce_bias}}) {
    TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == rr, name, ": expected shape [", rr,
                      "] (ch3x3red + ch5x5red), got ", shape_str(*t));
    TORCH_CHECK_TYPE(at::isFloatingType(t->scalar_type()), name, ": expected a floating dtype, got ",
                     dtype_str(t->scalar_type()));
    TORCH_CHECK_VALUE(t->device() == x.device(), name, ": expected a tensor on ", x.device(),
                      " (the device of x), got ", t->device());
  }
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0, "eps: expected a finite value >= 0, got ", eps);
  return K(a, s, reduce_weight, reduce_bias, eps);
}

// The arguments of a square convolution (conv2d_relu, conv2d_relu_max_pool); returns its output
// size (height, width).
std::pair<int64_t, int64_t> check_conv_args(const at::Tensor& x, const at::Tensor& weight,
                                            const c10::optional<at::Tensor>& bias, int64_t stride, int64_t padding) {
  TORCH_CHECK_VALUE(x.dim() == 4, "x: expected a 4-D tensor (N, C, H, W), got shape ", shape_str(x));
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), "x: expected a floating dtype, got ",
                   dtype_str(x.scalar_type()));
  TORCH_CHECK_VALUE(x.size(1) >= 1, "x: expected at least one input channel, got shape ", shape_str(x));
  check_weight("weight", weight, x.size(1), -1, x);
  check_bias("bias", bias, weight.size(0), x);
  TORCH_CHECK_VALUE(stride >= 1, "stride: expected >= 1, got ", stride);
  TORCH_CHECK_VALUE(padding >= 0, "padding: expected >= 0, got ", padding);
  const int64_t k = weight.size(2);
  TORCH_CHECK_VALUE(x.size(2) + 2 * padding >= k && x.size(3) + 2 * padding >= k,
                    "x: spatial size ", x.size(2), "x", x.size(3), " is smaller than the ", k, "x", k,
                    " kernel with padding ", padding);
  return {(x.size(2) + 2 * padding - k) / stride + 1, (x.size(3) + 2 * padding - k) / stride + 1};
}

// googlenet_fast::conv2d_relu: the checks, then the CPU kernel.
at::Tensor conv2d_relu(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                       int64_t stride, int64_t padding, bool relu) {
  check_conv_args(x, weight, bias, stride, padding);
  return conv2d_relu_cpu(x, weight, bias, stride, padding, relu);
}

// googlenet_fast::max_pool_nhwc: the checks, then the CPU kernel.
at::Tensor max_pool_nhwc(const at::Tensor& x, int64_t kernel, int64_t stride, bool relu) {
  TORCH_CHECK_VALUE(x.dim() == 4, "x: expected a 4-D tensor (N, C, H, W), got shape ", shape_str(x));
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), "x: expected a floating dtype, got ",
                   dtype_str(x.scalar_type()));
  TORCH_CHECK_VALUE(kernel >= 1, "kernel: expected >= 1, got ", kernel);
  TORCH_CHECK_VALUE(stride >= 1, "stride: expected >= 1, got ", stride);
  TORCH_CHECK_VALUE(pool_out_size(x.size(2), kernel, stride) >= 1 && pool_out_size(x.size(3), kernel, stride) >= 1,
                    "x: spatial size ", x.size(2), "x", x.size(3), " is too small for a ", kernel, "x", kernel,
                    " / ", stride, " ceil-mode max pool (no output pixel)");
  return max_pool_nhwc_cpu(x, kernel, stride, relu);
}

// googlenet_fast::conv2d_relu_max_pool: conv2d_relu's and the pool's checks, then the CPU kernel.
at::Tensor conv2d_relu_max_pool(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                                int64_t stride, int64_t padding, int64_t pool_kernel, int64_t pool_stride) {
  const auto [oh, ow] = check_conv_args(x, weight, bias, stride, padding);
  TORCH_CHECK_VALUE(pool_kernel >= 1, "pool_kernel: expected >= 1, got ", pool_kernel);
  TORCH_CHECK_VALUE(pool_stride >= 1, "pool_stride: expected >= 1, got ", pool_stride);
  TORCH_CHECK_VALUE(pool_out_size(oh, pool_kernel, pool_stride) >= 1 && pool_out_size(ow, pool_kernel, pool_stride) >= 1,
                    "x: the convolution's output ", oh, "x", ow, " is too small for a ", pool_kernel, "x",
                    pool_kernel, " / ", pool_stride, " ceil-mode max pool (no output pixel)");
  return conv2d_relu_max_pool_cpu(x, weight, bias, stride, padding, pool_kernel, pool_stride);
}

// googlenet_fast::avgpool_linear: the checks, then the CPU kernel.
at::Tensor avgpool_linear(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK_VALUE(x.dim() == 4, "x: expected a 4-D tensor (N, C, H, W), got shape ", shape_str(x));
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), "x: expected a floating dtype, got ",
                   dtype_str(x.scalar_type()));
  TORCH_CHECK_VALUE(x.size(2) >= 1 && x.size(3) >= 1, "x: expected a non-empty spatial size, got shape ",
                    shape_str(x));
  TORCH_CHECK_VALUE(weight.dim() == 2 && weight.size(1) == x.size(1), "weight: expected shape [out_features, ",
                    x.size(1), "] (the channels of x), got ", shape_str(weight));
  TORCH_CHECK_TYPE(weight.scalar_type() == x.scalar_type(), "weight: expected dtype ", dtype_str(x.scalar_type()),
                   " (the dtype of x), got ", dtype_str(weight.scalar_type()));
  TORCH_CHECK_VALUE(weight.device() == x.device(), "weight: expected a tensor on ", x.device(),
                    " (the device of x), got ", weight.device());
  check_bias("bias", bias, weight.size(0), x);
  return avgpool_linear_cpu(x, weight, bias);
}

}  // namespace

TORCH_LIBRARY(googlenet_fast, m) {
  // The fused Inception module forward.  Arguments follow torchvision's branch names; every bias
  // is optional (None with BatchNorm in train mode), relu switches the ReLU epilogue.
#define GF_SCHEMA_PARAMS                                                                      \
  "Tensor x, Tensor w_1x1, Tensor? b_1x1, Tensor w_3x3red, Tensor? b_3x3red, Tensor w_3x3, "    \
  "Tensor? b_3x3, Tensor w_5x5red, Tensor? b_5x5red, Tensor w_5x5, Tensor? b_5x5, "            \
  "Tensor w_pool_proj, Tensor? b_pool_proj, bool relu=True"
  m.def("inception(" GF_SCHEMA_PARAMS ") -> Tensor");
  // The out variant returns nothing: functionalization (torch.compile) does not support custom
  // ops whose outputs alias an input.
  m.def("inception.out(" GF_SCHEMA_PARAMS ", *, Tensor(a!) out) -> ()");
  // Its backward: the 13 gradients of (x, w_1x1, b_1x1, ..., b_pool_proj), each computed only when
  // output_mask asks for it (and, for a bias, the bias exists), else None.  `out` is the forward
  // output (ReLU masks; may be None when relu is False).  Not differentiable itself.
  m.def(
      "inception_backward(Tensor grad_out, Tensor x, Tensor w_1x1, Tensor? b_1x1, Tensor w_3x3red, "
      "Tensor? b_3x3red, Tensor w_3x3, Tensor? b_3x3, Tensor w_5x5red, Tensor? b_5x5red, Tensor w_5x5, "
      "Tensor? b_5x5, Tensor w_pool_proj, Tensor? b_pool_proj, bool relu, Tensor? out, bool[13] output_mask) "
      "-> (Tensor? grad_x, Tensor? grad_w_1x1, Tensor? grad_b_1x1, Tensor? grad_w_3x3red, "
      "Tensor? grad_b_3x3red, Tensor? grad_w_3x3, Tensor? grad_b_3x3, Tensor? grad_w_5x5red, "
      "Tensor? grad_b_5x5red, Tensor? grad_w_5x5, Tensor? grad_b_5x5, Tensor? grad_w_pool_proj, "
      "Tensor? grad_b_pool_proj)");
  // Train-mode BatchNorm stage (csrc/inception.h): pre-BN outputs of the four branches (out) and
  // of the two reduce convs (reduce), the reduce outputs' batch mean and biased variance; stage 2
  // applies the reduce branches' BatchNorm + ReLU in its loader.  The caller runs one BatchNorm
  // + ReLU over all of `out`'s channels.  Autograd: googlenet_fast/ops.py.
  m.def(
      "inception_bn_train(Tensor x, Tensor w_1x1, Tensor w_3x3red, Tensor w_3x3, Tensor w_5x5red, "
      "Tensor w_5x5, Tensor w_pool_proj, Tensor reduce_weight, Tensor reduce_bias, float eps) "
      "-> (Tensor out, Tensor reduce, Tensor reduce_mean, Tensor reduce_var)");
  // relu(conv2d(x, weight, bias)) with a square odd kernel, one stride and padding for both dims: the
  // stem's convolutions in eval mode on the CPU (weights prepacked for oneDNN).  Output
  // channels_last.  Autograd and fake kernel: googlenet_fast/ops.py.
  // kernel x kernel / stride ceil-mode max pool without padding or indices (eval), optionally
  // followed by ReLU: the stage transitions of GoogLeNet in eval mode on the CPU.  Output
  // channels_last.  Autograd and fake kernel: googlenet_fast/ops.py.
  m.def("max_pool_nhwc(Tensor x, int kernel, int stride, bool relu=False) -> Tensor");
  m.def("conv2d_relu(Tensor x, Tensor weight, Tensor? bias, int stride=1, int padding=0, bool relu=True) -> Tensor");
  m.def("avgpool_linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  m.def("conv2d_relu_max_pool(Tensor x, Tensor weight, Tensor? bias, int stride, int padding, int pool_kernel, "
        "int pool_stride) -> Tensor");
}

// The fake (meta) kernels of these ops are Python (googlenet_fast/ops.py, torch.library.register_fake):
// they must handle symbolic sizes under torch.compile(dynamic=True), which size()-based C++ cannot.

TORCH_LIBRARY_IMPL(googlenet_fast, CPU, m) {
  m.impl("inception", &inception_functional<inception_forward_cpu>);
  m.impl("inception.out", &inception_out<inception_forward_cpu>);
  m.impl("inception_backward", &inception_backward_cpu);
  m.impl("inception_bn_train", &inception_bn_train<inception_bn_train_cpu>);
  m.impl("conv2d_relu", &conv2d_relu);
  m.impl("avgpool_linear", &avgpool_linear);
  m.impl("conv2d_relu_max_pool", &conv2d_relu_max_pool);
  m.impl("max_pool_nhwc", &max_pool_nhwc);
}

#ifdef GOOGLENET_FAST_WITH_CUDA
TORCH_LIBRARY_IMPL(googlenet_fast, CUDA, m) {
  m.impl("inception", &inception_functional<inception_forward_cuda>);
  m.impl("inception.out", &inception_out<inception_forward_cuda>);
}
#endif

}  // namespace googlenet_fast

// _set_weight_prepacking(enabled: bool) -> bool (the previous setting), for this thread.
static PyObject* gf_set_weight_prepacking(PyObject*, PyObject* arg) {
  const int enabled = PyObject_IsTrue(arg);
  if (enabled < 0) return nullptr;
  return PyBool_FromLong(googlenet_fast::set_weight_prepacking(enabled != 0));
}

static PyObject* gf_prepacked_weight_count(PyObject*, PyObject*) {
  return PyLong_FromLongLong(googlenet_fast::prepacked_weight_count());
}

static PyObject* gf_clear_prepacked_weights(PyObject*, PyObject*) {
  googlenet_fast::clear_prepacked_weights();
  Py_RETURN_NONE;
}

static PyObject* gf_prepacked_weight_tensors(PyObject*, PyObject*) {
  return PyLong_FromLongLong(googlenet_fast::prepacked_weight_tensors());
}

static PyObject* gf_prepacked_weight_capacity(PyObject*, PyObject*) {
  return PyLong_FromLongLong(googlenet_fast::prepacked_weight_capacity());
}

// _set_direct_onednn(enabled: bool) -> bool (the previous setting), for the whole process.
static PyObject* gf_set_direct_onednn(PyObject*, PyObject* arg) {
  const int enabled = PyObject_IsTrue(arg);
  if (enabled < 0) return nullptr;
  return PyBool_FromLong(googlenet_fast::set_direct_onednn(enabled != 0));
}

static PyObject* gf_direct_onednn_status(PyObject*, PyObject*) {
  const std::string& why = googlenet_fast::direct_onednn_unavailable_reason();
  if (!why.empty()) return PyUnicode_FromString(why.c_str());
  return PyUnicode_FromString(googlenet_fast::direct_onednn_enabled() ? "enabled" : "switched off");
}

static PyObject* gf_direct_onednn_primitive_count(PyObject*, PyObject*) {
  return PyLong_FromLongLong(googlenet_fast::direct_onednn_primitive_count());
}

static PyObject* gf_direct_onednn_thread_memory_sets(PyObject*, PyObject*) {
  return PyLong_FromLongLong(googlenet_fast::direct_onednn_thread_memory_sets());
}

// The bf16x3 modes' names, indexed by googlenet_fast::bf16x3::Mode.
static const char* const kBf16x3ModeNames[] = {"auto", "on", "off"};

// _set_bf16x3_mode(mode: str) -> str (the previous mode): "auto", "on" or "off" (csrc/cpu/bf16x3.h).
static PyObject* gf_set_bf16x3_mode(PyObject*, PyObject* arg) {
  using googlenet_fast::bf16x3::Mode;
  const char* const* names = kBf16x3ModeNames;
  const char* s = PyUnicode_Check(arg) ? PyUnicode_AsUTF8(arg) : nullptr;
  int mode = -1;
  for (int i = 0; s != nullptr && i < 3; ++i)
    if (std::strcmp(s, names[i]) == 0) mode = i;
  if (mode < 0) {
    PyErr_SetString(PyExc_ValueError, "mode: expected 'auto', 'on' or 'off'");
    return nullptr;
  }
  return PyUnicode_FromString(names[static_cast<int>(googlenet_fast::bf16x3::set_mode(static_cast<Mode>(mode)))]);
}

// _bf16x3_status() -> (wanted, amx, split, precision, mode): whether a float32 direct-path call runs
// as bf16x3 now, whether oneDNN's ISA has AMX, whether the split's loop can run here, whether the
// float32 precision setting allows it, the mode's name.
static PyObject* gf_bf16x3_status(PyObject*, PyObject*) {
  namespace x3 = googlenet_fast::bf16x3;
  try {
    const bool wanted = googlenet_fast::direct_onednn_enabled() && x3::wanted();
    return Py_BuildValue("(OOOOs)", wanted ? Py_True : Py_False, x3::amx() ? Py_True : Py_False,
                         x3::split_available() ? Py_True : Py_False, x3::precision_allows() ? Py_True : Py_False,
                         kBf16x3ModeNames[static_cast<int>(x3::mode())]);
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
}

// _bf16x3_split(a: Tensor, weights: bool) -> Tensor: (rows, k) float32 -> (rows, 3k) bfloat16,
// [hi | lo | hi] (activations) or [hi | hi | lo] (weights) (tests).
static PyObject* gf_bf16x3_split(PyObject*, PyObject* args) {
  PyObject* t = nullptr;
  int weights = 0;
  if (!PyArg_ParseTuple(args, "Op", &t, &weights)) return nullptr;
  if (!THPVariable_Check(t)) {
    PyErr_SetString(PyExc_TypeError, "a: expected a tensor");
    return nullptr;
  }
  const at::Tensor a = THPVariable_Unpack(t);
  if (a.dim() != 2 || a.scalar_type() != at::kFloat || a.device().type() != at::kCPU) {
    PyErr_SetString(PyExc_ValueError, "a: expected a 2-D float32 CPU tensor");
    return nullptr;
  }
  try {
    return THPVariable_Wrap(googlenet_fast::bf16x3::split_matrix(a, weights != 0));
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
}

namespace googlenet_fast {
void hold_cache_locks_for_test(int64_t ms);  // csrc/cpu/fork_safety.cpp
}

// _hold_cache_locks_for_test(ms: int): hold the packed-weight and primitive caches' locks for ms
// milliseconds, the GIL released (tests: a fork while another thread holds them).
static PyObject* gf_hold_cache_locks_for_test(PyObject*, PyObject* arg) {
  const long long ms = PyLong_AsLongLong(arg);
  if (ms == -1 && PyErr_Occurred()) return nullptr;
  if (ms < 0 || ms > 60000) {
    PyErr_Format(PyExc_ValueError, "ms: expected 0 to 60000 milliseconds, got %lld", ms);
    return nullptr;
  }
  Py_BEGIN_ALLOW_THREADS googlenet_fast::hold_cache_locks_for_test(ms);
  Py_END_ALLOW_THREADS Py_RETURN_NONE;
}

namespace googlenet_fast {
// csrc/state_check.cpp
PyObject* py_model_state_same(PyObject*, PyObject* const* args, Py_ssize_t nargs);
// csrc/program_run.cpp
PyObject* py_program_make(PyObject*, PyObject* const* args, Py_ssize_t nargs);
PyObject* py_program_run(PyObject*, PyObject* const* args, Py_ssize_t nargs);
}  // namespace googlenet_fast

static PyMethodDef gf_methods[] = {
    {"_model_state_same", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(
                              &googlenet_fast::py_model_state_same)),
     METH_FASTCALL,
     "ModelState.same()'s comparisons in one pass (googlenet_fast/model_state.py, csrc/state_check.cpp)."},
    {"_program_make", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(&googlenet_fast::py_program_make)),
     METH_FASTCALL,
     "A recorded CPU op program made replayable in C++, or None (googlenet_fast/cpu_program.py, csrc/program_run.cpp)."},
    {"_program_run", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(&googlenet_fast::py_program_run)),
     METH_FASTCALL, "Replay a program made by _program_make on an input; returns its result."},
    {"_set_weight_prepacking", gf_set_weight_prepacking, METH_O,
     "Let this thread's CPU op calls reuse oneDNN weights prepacked in earlier calls (see "
     "googlenet_fast.ops.weight_prepacking); returns the previous setting."},
    {"_prepacked_weight_count", gf_prepacked_weight_count, METH_NOARGS,
     "Number of keys (weight, input shape, thread count) the packed-weight cache holds (for tests)."},
    {"_clear_prepacked_weights", gf_clear_prepacked_weights, METH_NOARGS,
     "Drop every packed weight copy (GoogLeNet.clear_folded_cache(), optimizer steps: writes no version "
     "counter sees)."},
    {"_prepacked_weight_tensors", gf_prepacked_weight_tensors, METH_NOARGS,
     "Number of distinct packed weight tensors those keys hold: keys in one oneDNN layout share one (for tests)."},
    {"_prepacked_weight_capacity", gf_prepacked_weight_capacity, METH_NOARGS,
     "The most keys the packed-weight cache holds before evicting the least recently used (for tests)."},
    {"_set_direct_onednn", gf_set_direct_onednn, METH_O,
     "Run the CPU eval path's convolutions and inner products as oneDNN primitives kept by the extension "
     "(csrc/cpu/onednn_direct.h; default on, GOOGLENET_FAST_ONEDNN=0 starts it off) or through ATen's mkldnn ops; "
     "process-wide; returns the previous setting."},
    {"_direct_onednn_status", gf_direct_onednn_status, METH_NOARGS,
     "'enabled', 'switched off', or why torch's oneDNN cannot be called directly (then ATen's ops run)."},
    {"_direct_onednn_primitive_count", gf_direct_onednn_primitive_count, METH_NOARGS,
     "Number of oneDNN primitives the direct path keeps (for tests)."},
    {"_direct_onednn_thread_memory_sets", gf_direct_onednn_thread_memory_sets, METH_NOARGS,
     "Number of argument memory sets (one per primitive executed, at most 1024) the calling thread keeps (for tests)."},
    {"_set_bf16x3_mode", gf_set_bf16x3_mode, METH_O,
     "bf16x3 for float32 convolutions and inner products under set_float32_matmul_precision('high'/'medium'): "
     "'auto' (where oneDNN runs AMX), 'on', 'off'; returns the previous mode (csrc/cpu/bf16x3.h)."},
    {"_bf16x3_status", gf_bf16x3_status, METH_NOARGS,
     "(whether a float32 direct-path call runs as bf16x3 now, whether oneDNN's ISA has AMX, whether the split runs "
     "here, whether the float32 precision setting allows it, the mode's name)."},
    {"_bf16x3_split", gf_bf16x3_split, METH_VARARGS,
     "(rows, k) float32 -> (rows, 3k) bfloat16 split: [hi|lo|hi], or [hi|hi|lo] for weights (tests)."},
    {"_hold_cache_locks_for_test", gf_hold_cache_locks_for_test, METH_O,
     "Hold the packed-weight and primitive caches' locks for ms milliseconds, GIL released (tests: fork safety)."},
    {nullptr, nullptr, 0, nullptr}};

// A plain Python module: importing googlenet_fast._C runs the registrations above.
static PyModuleDef gf_module = {PyModuleDef_HEAD_INIT, "_C",
                                "googlenet_fast's compiled ops (torch.ops.googlenet_fast.*)", -1, gf_methods};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&gf_module); }
