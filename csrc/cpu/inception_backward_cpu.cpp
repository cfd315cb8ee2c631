// googlenet_fast: the fused Inception backward on the CPU.
//
// Forward, per pixel (NHWC): m = x Wm^T (Wm = [W_1x1; W_3x3red; W_5x5red], one GEMM) -> b1 | r3 | r5;
// b2 = convK3(act r3), b3 = convK5(act r5); b4 = maxpool3x3(x) Wp^T; y = act(b1 | b2 | b3 | b4).
// Backward, with every gradient matrix in one NHWC scratch buffer dA of width
// ch1x1 + ch3x3red + ch5x5red + ch3x3 + ch5x5 + pool_proj, columns [dY1 | dR3 | dR5 | dY2 | dY3 | dY4]:
//
// pass 1 (pixel blocks, parallel):
//   - load grad_out (any strides: expanded zero strides, NCHW, channels_last) into dA's dY columns,
//     the branch ReLU mask (zero where out <= 0, as torch's threshold_backward) applied in that loader;
//   - recompute the reduce activations R = act(x [W_3x3red; W_5x5red]^T + b) with one merged GEMM
//     (only when a requested gradient needs them: the reduce ReLU masks, or the KxK wgrad).
// pass 2 (chunks of ~512 pixels, parallel; one chunk does all of the following for its pixels):
//   - KxK dgrad as an implicit GEMM: the im2col of dY2 with flipped taps x W3 -> dR3, the reduce
//     ReLU mask applied as the GEMM's result is written into dA (likewise dR5);
//   - grad x, 1x1 part: ONE GEMM for the three sibling 1x1s, [dY1 | dR3 | dR5] x Wm;
//   - KxK wgrad: dY2^T x im2col(R3) accumulated per thread (likewise K5);
//   - the 3x3 max pool recomputed with its argmax (torch's scan order, rows then columns: the first
//     maximum wins ties, a NaN wins and the last NaN scanned is kept, exactly as max_pool2d on the
//     CPU), the pool projection's dgrad dY4 x Wp of a 64-pixel block routed straight to the
//     argmax of each window: max-pool backward fused with the pool projection's dgrad, no pooled
//     tensor beyond the block.  Routed values landing outside the chunk (at most W + 1 pixels
//     either side) go to the chunk's halo buffers, added in chunk order afterwards: no races;
//   - pool projection wgrad: dY4^T x pooled, accumulated per thread from the same block.
// pass 3: wgrad of the three sibling 1x1s as ONE GEMM x^T [dY1 | dR3 | dR5] over all pixels (the
//   BLAS threads it), the bias gradients as column sums of dA, per-thread accumulators summed in
//   slot order (results do not depend on thread timing).
//
// float32/float64 run natively (ATen's at::mm_out on from_blob views: MKL/OpenBLAS); bfloat16 and
// float16 are computed in float32 and rounded once at the end.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <vector>

#include "../inception.h"

namespace googlenet_fast {
namespace {

// Gradient slots, in the op's argument order.
enum Slot : int { kX = 0, kW1, kB1, kW3r, kB3r, kW3, kB3, kW5r, kB5r, kW5, kB5, kWp, kBp };

bool present(const c10::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

std::string sizes_str(const at::Tensor& t) {
  std::ostringstream os;
  os << t.sizes();
  return os.str();
}

// Which gradients are computed and what they need.  Keep in sync with
// googlenet_fast/ops.py (_backward_needs_x), which decides what autograd saves.
struct Plan {
  std::array<bool, kInceptionNumGrads> g{};  // gradient i is computed
  bool dR3 = false, dR5 = false;             // KxK dgrad into the reduce outputs
  bool R = false;                            // recompute the reduce activations
  bool x = false;                            // x is read
  bool any = false;
};

Plan make_plan(const InceptionArgs& a, const InceptionGradMask& mask) {
  Plan p;
  const c10::optional<at::Tensor>* biases[kInceptionNumGrads] = {nullptr, nullptr, &a.b_1x1,   nullptr, &a.b_3x3red,
                                                                 nullptr, &a.b_3x3, nullptr,   &a.b_5x5red, nullptr,
                                                                 &a.b_5x5, nullptr, &a.b_pool_proj};
  for (int i = 0; i < kInceptionNumGrads; ++i) {
    p.g[i] = mask[i] && (biases[i] == nullptr || present(*biases[i]));
    p.any = p.any || p.g[i];
  }
  p.dR3 = p.g[kX] || p.g[kW3r] || p.g[kB3r];
  p.dR5 = p.g[kX] || p.g[kW5r] || p.g[kB5r];
  p.R = (a.relu && (p.dR3 || p.dR5)) || p.g[kW3] || p.g[kW5];
  p.x = p.R || p.g[kX] || p.g[kW1] || p.g[kW3r] || p.g[kW5r] || p.g[kWp];
  return p;
}

void check_nchw_like(const char* name, const at::Tensor& t, const InceptionShape& s, const at::Tensor& x) {
  TORCH_CHECK_VALUE(t.dim() == 4 && t.size(0) == s.n && t.size(1) == s.out_channels() && t.size(2) == s.h &&
                        t.size(3) == s.w,
                    name, ": expected shape [", s.n, ", ", s.out_channels(), ", ", s.h, ", ", s.w,
                    "] (the forward output's), got ", sizes_str(t));
  TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), name, ": expected dtype ", x.scalar_type(),
                   " (the dtype of x), got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == x.device(), name, ": expected a tensor on ", x.device(),
                    " (the device of x), got ", t.device());
}

InceptionShape check_backward_args(const at::Tensor& grad_out, const InceptionArgs& a,
                                   const c10::optional<at::Tensor>& out, const Plan& plan) {
  const InceptionShape s = check_inception_args(a, nullptr);
  check_nchw_like("grad_out", grad_out, s, a.x);
  if (present(out)) {
    check_nchw_like("out", *out, s, a.x);
  } else {
    TORCH_CHECK_VALUE(!(a.relu && plan.any),
                      "out: the forward output is required when relu=True (its ReLU masks), got None");
  }
  return s;
}

// The requested gradients, allocated: grad_x in x's suggested memory format, each weight's gradient
// in the weight's, biases 1-D.  The fake kernel (ops.py, _fake_backward) follows the same rule.
std::array<at::Tensor, kInceptionNumGrads> allocate_grads(const InceptionArgs& a, const Plan& plan) {
  const at::Tensor* weights[kInceptionNumGrads] = {&a.x,      &a.w_1x1, nullptr,        &a.w_3x3red, nullptr,
                                                   &a.w_3x3,  nullptr,  &a.w_5x5red,   nullptr,     &a.w_5x5,
                                                   nullptr,   &a.w_pool_proj, nullptr};
  const c10::optional<at::Tensor>* biases[kInceptionNumGrads] = {nullptr, nullptr, &a.b_1x1,   nullptr, &a.b_3x3red,
                                                                 nullptr, &a.b_3x3, nullptr,   &a.b_5x5red, nullptr,
                                                                 &a.b_5x5, nullptr, &a.b_pool_proj};
  std::array<at::Tensor, kInceptionNumGrads> g;
  for (int i = 0; i < kInceptionNumGrads; ++i) {
    if (!plan.g[i]) continue;
    if (weights[i] != nullptr) {
      const at::Tensor& w = *weights[i];
      g[i] = at::empty(w.sizes(), w.options().memory_format(w.suggest_memory_format()));
    } else {
      const at::Tensor& b = **biases[i];
      g[i] = at::empty(b.sizes(), b.options().memory_format(at::MemoryFormat::Contiguous));
    }
  }
  return g;
}

InceptionGrads to_optionals(std::array<at::Tensor, kInceptionNumGrads>& g) {
  auto o = [&](int i) -> c10::optional<at::Tensor> {
    if (g[i].defined()) return std::move(g[i]);
    return c10::nullopt;
  };
  return InceptionGrads{o(0), o(1), o(2), o(3), o(4), o(5), o(6), o(7), o(8), o(9), o(10), o(11), o(12)};
}

// ------------------------------------------------------------------------------------------------
// GEMM helpers: row-major matrices as from_blob views, ATen's mm (MKL/OpenBLAS).

template <typename T>
at::Tensor mat(const T* p, int64_t rows, int64_t cols, int64_t ld) {
  return at::from_blob(const_cast<T*>(p), {rows, cols}, {ld, 1},
                       at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
}

// C = A x B (overwrite)
inline void mm(at::Tensor C, const at::Tensor& A, const at::Tensor& B) { at::mm_out(C, A, B); }

// Threads that at::parallel_for can use here.  It is inline code: it runs its range on the calling
// thread unless this file is compiled with OpenMP (-fopenmp defines _OPENMP, and ATen's headers then
// define INTRA_OP_PARALLEL); without it the blocks run in order and the BLAS threads each GEMM, so
// the blocks are made larger.
int64_t block_threads() {
#ifdef INTRA_OP_PARALLEL
  return std::max<int64_t>(1, at::get_num_threads());
#else
  return 1;
#endif
}

// Pixel blocks: a multiple of the thread count, about `target` pixels each (as the forward); a
// single block when there are too few pixels to be worth a parallel region.
struct Blocks {
  int64_t count, size;
};
Blocks make_blocks(int64_t pixels, int64_t target) {
  if (pixels < 2 * target) return {1, std::max<int64_t>(pixels, 1)};
  const int64_t t = block_threads();
  int64_t count = t * ((pixels + t * target - 1) / (t * target));
  count = std::max<int64_t>(1, std::min(count, pixels));
  const int64_t size = (pixels + count - 1) / count;
  return {(pixels + size - 1) / size, size};
}

// Enough work items: one per thread at least, GEMMs single-threaded inside.  Too few: run them
// in order and let the BLAS thread each GEMM.
template <typename F>
void run_blocks(int64_t count, const F& f) {
  const int64_t nt = block_threads();
  if (count >= nt && nt > 1) {
    at::parallel_for(0, count, 1, f);
  } else {
    f(0, count);
  }
}

// Per-thread accumulators [slots, rows, cols], zeroed; summed in slot order at the end.
struct Accumulator {
  at::Tensor buf;
  int64_t rows = 0, cols = 0;
  void init(bool on, int64_t r, int64_t c, at::ScalarType st) {
    if (!on) return;
    rows = r;
    cols = c;
    buf = at::zeros({std::max<int64_t>(1, at::get_num_threads()), r, c}, at::TensorOptions().dtype(st));
  }
  at::Tensor slot() const { return buf.select(0, at::get_thread_num()); }
  at::Tensor sum() const {
    at::Tensor s = buf.select(0, 0).clone();
    for (int64_t i = 1; i < buf.size(0); ++i) s.add_(buf.select(0, i));
    return s;
  }
};

// im2col of `rows` pixels from p0 of an NHWC matrix src (C channels at row stride ld) for a KxK
// window, padding K/2, column order (ky, kx, c).  flip: the transposed-conv gather used by the
// dgrad (tap (ky, kx) reads pixel (h + pad - ky, w + pad - kx)).
template <typename T>
void im2col(const T* src, int64_t ld, int64_t C, int64_t p0, int64_t rows, int64_t H, int64_t W, int64_t K,
            bool flip, T* col) {
  const int64_t pad = K / 2, kk = K * K * C;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t p = p0 + r, n = p / (H * W), h = (p / W) % H, w = p % W;
    T* dst = col + r * kk;
    for (int64_t ky = 0; ky < K; ++ky) {
      const int64_t hh = flip ? h + pad - ky : h + ky - pad;
      for (int64_t kx = 0; kx < K; ++kx, dst += C) {
        const int64_t ww = flip ? w + pad - kx : w + kx - pad;
        if (hh < 0 || hh >= H || ww < 0 || ww >= W) {
          std::fill(dst, dst + C, T(0));
        } else {
          const T* s = src + ((n * H + hh) * W + ww) * ld;
          std::copy(s, s + C, dst);
        }
      }
    }
  }
}

// Hot elementwise loops: plain loops over unit-stride channel rows that the compiler vectorizes,
// cloned for AVX-512 / AVX2 / baseline x86-64 and picked at load time (the extension is built
// without -march flags).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define GF_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define GF_VECTOR_CLONES
#endif

// dst[i] = g[i * gs] masked by the ReLU of o[i * os] (o == nullptr: no mask): zero where o <= 0,
// as torch's threshold_backward(grad, result, 0), so a NaN output passes its gradient as in torch.
template <typename T>
GF_VECTOR_CLONES void load_masked_dense(T* __restrict dst, const T* __restrict g, const T* __restrict o,
                                        int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = o[i] <= T(0) ? T(0) : g[i];
}

template <typename T>
void load_masked(T* dst, const T* g, int64_t gs, const T* o, int64_t os, int64_t n) {
  if (o == nullptr) {
    if (gs == 1) {
      std::copy(g, g + n, dst);
    } else {
      for (int64_t i = 0; i < n; ++i) dst[i] = g[i * gs];
    }
  } else if (gs == 1 && os == 1) {
    load_masked_dense(dst, g, o, n);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = o[i * os] <= T(0) ? T(0) : g[i * gs];
  }
}

// d[i] = m[i] <= 0 ? 0 : d[i] (the reduce ReLU mask on dR, torch's rule as above).
template <typename T>
GF_VECTOR_CLONES void apply_mask(T* __restrict d, const T* __restrict m, int64_t n) {
  for (int64_t i = 0; i < n; ++i) d[i] = m[i] <= T(0) ? T(0) : d[i];
}

// row = act(row + bias) (bias may be nullptr), the forward's epilogue for the recomputed R.
template <typename T>
GF_VECTOR_CLONES void bias_act(T* __restrict row, const T* __restrict bias, bool relu, int64_t n) {
  if (bias != nullptr)
    for (int64_t i = 0; i < n; ++i) row[i] += bias[i];
  if (relu)
    for (int64_t i = 0; i < n; ++i) row[i] = (row[i] > T(0) || row[i] != row[i]) ? row[i] : T(0);
}

// One tap of the 3x3 max-pool window, torch's update rule: take v when v > max or v is NaN.
// The tap number is kept as a T so compare and select stay in one vector type.
template <typename T>
GF_VECTOR_CLONES void argmax_tap(const T* __restrict src, T* __restrict m, T* __restrict a, T tap, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const T v = src[i];
    const bool take = (v > m[i]) | (v != v);
    m[i] = take ? v : m[i];
    a[i] = take ? tap : a[i];
  }
}

// Route the pool projection's dgrad d to the pixel of `tap` where it was the argmax.
template <typename T>
GF_VECTOR_CLONES void scatter_tap(T* __restrict dst, const T* __restrict d, const T* __restrict a, T tap,
                                  int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] += a[i] == tap ? d[i] : T(0);
}

struct Inputs {  // the op's tensors in the compute dtype (undefined where unused)
  at::Tensor g, x, w1, w3r, b3r, w3, w5r, b5r, w5, wp, out;
};

template <typename T>
void backward_impl(const Inputs& in, const InceptionShape& s, const Plan& pl, bool relu,
                   std::array<at::Tensor, kInceptionNumGrads>& o) {
  const auto st = c10::CppTypeToScalarType<T>::value;
  const auto opts = at::TensorOptions().dtype(st);
  const int64_t N = s.n, H = s.h, W = s.w, Cin = s.cin, P = N * H * W;
  const int64_t c1 = s.ch1x1, r3 = s.ch3x3red, c3 = s.ch3x3, r5 = s.ch5x5red, c5 = s.ch5x5, cp = s.pool_proj;
  const int64_t K3 = s.k3, K5 = s.k5, KK3 = K3 * K3, KK5 = K5 * K5;
  const int64_t nm = c1 + r3 + r5, rr = r3 + r5, Cout = s.out_channels(), TW = Cout + rr;
  // dA columns
  const int64_t oR3 = c1, oR5 = c1 + r3, oY2 = nm, oY3 = nm + c3, oY4 = nm + c3 + c5;

  const bool gx = pl.g[kX];
  const bool need_y4 = gx || pl.g[kWp];

  // x as a dense NHWC matrix [P, Cin] (a view when x is channels_last).
  at::Tensor xc;
  const T* X = nullptr;
  if (pl.x) {
    xc = in.x.permute({0, 2, 3, 1}).contiguous();
    X = xc.const_data_ptr<T>();
  }
  // grad_out / out: read through their strides (NHWC view of any layout).
  const T* G = in.g.const_data_ptr<T>();
  const int64_t gsN = in.g.stride(0), gsC = in.g.stride(1), gsH = in.g.stride(2), gsW = in.g.stride(3);
  const T* O = relu ? in.out.const_data_ptr<T>() : nullptr;
  const int64_t osN = relu ? in.out.stride(0) : 0, osC = relu ? in.out.stride(1) : 0;
  const int64_t osH = relu ? in.out.stride(2) : 0, osW = relu ? in.out.stride(3) : 0;

  at::Tensor dA_t = at::empty({P, TW}, opts);
  T* dA = dA_t.data_ptr<T>();
  at::Tensor R_t;
  T* R = nullptr;
  if (pl.R) {
    R_t = at::empty({P, rr}, opts);
    R = R_t.data_ptr<T>();
  }
  // Weight matrices.
  at::Tensor wred, bred;  // [rr, Cin] and [rr] (accumulation order as the forward: GEMM, + bias)
  if (pl.R) {
    wred = at::cat({in.w3r.reshape({r3, Cin}), in.w5r.reshape({r5, Cin})}, 0);
    if (in.b3r.defined() || in.b5r.defined()) {
      bred = at::cat({in.b3r.defined() ? in.b3r : at::zeros({r3}, opts),
                      in.b5r.defined() ? in.b5r : at::zeros({r5}, opts)}, 0).contiguous();
    }
  }
  at::Tensor wm, w3t, w5t, wpm;
  if (gx) wm = at::cat({in.w1.reshape({c1, Cin}), in.w3r.reshape({r3, Cin}), in.w5r.reshape({r5, Cin})}, 0);
  // [(ky, kx, co), ci] = W[co, ci, ky, kx]: the dgrad GEMM's B operand.
  if (pl.dR3) w3t = in.w3.permute({2, 3, 0, 1}).contiguous().view({KK3 * c3, r3});
  if (pl.dR5) w5t = in.w5.permute({2, 3, 0, 1}).contiguous().view({KK5 * c5, r5});
  if (gx) wpm = in.wp.reshape({cp, Cin}).contiguous();

  // grad_x: written in place when it is dense NHWC (channels_last), else through a buffer.
  at::Tensor gx_t;
  T* GX = nullptr;
  bool gx_direct = false;
  if (gx) {
    at::Tensor nhwc = o[kX].permute({0, 2, 3, 1});
    gx_direct = nhwc.is_contiguous();
    gx_t = gx_direct ? nhwc : at::empty({N, H, W, Cin}, opts);
    GX = gx_t.data_ptr<T>();
  }

  // ---- pass 1: masked grad_out -> dA; reduce activations R ---------------------------------
  const Blocks b1 = make_blocks(P, 128);
  run_blocks(b1.count, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t p0 = blk * b1.size, rows = std::min(b1.size, P - p0);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t p = p0 + r, n = p / (H * W), h = (p / W) % H, w = p % W;
        const T* gp = G + n * gsN + h * gsH + w * gsW;
        const T* op = O ? O + n * osN + h * osH + w * osW : nullptr;
        T* d = dA + p * TW;
        load_masked(d, gp, gsC, op, osC, c1);  // dY1
        load_masked(d + oY2, gp + c1 * gsC, gsC, op ? op + c1 * osC : nullptr, osC, Cout - c1);  // dY2..dY4
      }
      if (pl.R) {
        T* Rb = R + p0 * rr;
        mm(mat(Rb, rows, rr, rr), mat(X + p0 * Cin, rows, Cin, Cin), wred.t());
        const T* bias = bred.defined() ? bred.const_data_ptr<T>() : nullptr;
        if (bias != nullptr || relu)
          for (int64_t r = 0; r < rows; ++r) bias_act(Rb + r * rr, bias, relu, rr);
      }
    }
  });

  // ---- pass 2: per chunk of pixels: KxK dgrad -> dR, grad x (1x1 part), KxK wgrad, then the
  // max-pool backward fused with the pool projection's dgrad, and the pool projection's wgrad.
  // Work items are chunks of up to ~512 pixels (the wgrad GEMMs' depth); the dgrad and the pool run
  // over 64-pixel sub-blocks so their im2col / pooled blocks stay in cache.  A chunk writes grad x
  // only on its own pixels: the pool routing's writes to the W + 1 pixels before and after it
  // go to the chunk's halo buffers, added after the parallel region in chunk order.
  Accumulator acc3, acc5, accp;
  acc3.init(pl.g[kW3], c3, KK3 * r3, st);
  acc5.init(pl.g[kW5], c5, KK5 * r5, st);
  accp.init(pl.g[kWp], cp, Cin, st);
  const int64_t nthreads = block_threads();
  const Blocks chunks = nthreads > 1 ? make_blocks(P, std::clamp<int64_t>(P / nthreads, 64, 512))  // >= 1 per thread
                                     : make_blocks(P, 1024);
  const int64_t sub = std::min<int64_t>(nthreads > 1 ? 64 : 256, chunks.size);
  const int64_t halo = W + 1;
  at::Tensor halos_t;
  T* halos = nullptr;  // [chunks, 2, halo, Cin]: before / after the chunk
  if (gx) {
    halos_t = at::zeros({chunks.count, 2, halo, Cin}, opts);
    halos = halos_t.data_ptr<T>();
  }
  int64_t colw = 1;
  if (pl.dR3) colw = std::max(colw, KK3 * c3 * sub);
  if (pl.dR5) colw = std::max(colw, KK5 * c5 * sub);
  if (pl.g[kW3]) colw = std::max(colw, KK3 * r3 * chunks.size);
  if (pl.g[kW5]) colw = std::max(colw, KK5 * r5 * chunks.size);
  run_blocks(chunks.count, [&](int64_t begin, int64_t end) {
    std::vector<T> col(static_cast<size_t>(colw));
    std::vector<T> pooled, arg, dpool;
    if (need_y4) {
      pooled.resize(static_cast<size_t>(sub * Cin));
      arg.resize(static_cast<size_t>(sub * Cin));
      if (gx) dpool.resize(static_cast<size_t>(sub * Cin));
    }
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      const int64_t c0 = chunk * chunks.size, cend = std::min(P, c0 + chunks.size);
      // KxK dgrad (implicit GEMM over the flipped im2col of dY) and the sibling 1x1 dgrad.
      if (pl.dR3 || pl.dR5 || gx) {
        for (int64_t p0 = c0; p0 < cend; p0 += sub) {
          const int64_t rows = std::min(sub, cend - p0);
          for (int branch = 0; branch < 2; ++branch) {
            if (!(branch == 0 ? pl.dR3 : pl.dR5)) continue;
            const int64_t K = branch == 0 ? K3 : K5, co = branch == 0 ? c3 : c5, ci = branch == 0 ? r3 : r5;
            const int64_t oy = branch == 0 ? oY2 : oY3, orr = branch == 0 ? oR3 : oR5, roff = branch == 0 ? 0 : r3;
            im2col(dA + oy, TW, co, p0, rows, H, W, K, /*flip=*/true, col.data());
            T* dR = dA + p0 * TW + orr;
            mm(mat(dR, rows, ci, TW), mat(col.data(), rows, K * K * co, K * K * co), branch == 0 ? w3t : w5t);
            if (relu)  // the reduce ReLU mask, applied as dR is written (the next GEMMs' loader reads it)
              for (int64_t r = 0; r < rows; ++r) apply_mask(dR + r * TW, R + (p0 + r) * rr + roff, ci);
          }
          if (gx)  // the three sibling 1x1 dgrads: one GEMM over [dY1 | dR3 | dR5]
            mm(mat(GX + p0 * Cin, rows, Cin, Cin), mat(dA + p0 * TW, rows, nm, TW), wm);
        }
      }
      // KxK wgrad: [co, K*K*ci] += dY^T [co, rows] x im2col(R) [rows, K*K*ci]   (OHWI order)
      for (int branch = 0; branch < 2; ++branch) {
        if (!(branch == 0 ? pl.g[kW3] : pl.g[kW5])) continue;
        const int64_t K = branch == 0 ? K3 : K5, co = branch == 0 ? c3 : c5, ci = branch == 0 ? r3 : r5;
        const int64_t oy = branch == 0 ? oY2 : oY3, roff = branch == 0 ? 0 : r3, rows = cend - c0;
        im2col(R + roff, rr, ci, c0, rows, H, W, K, /*flip=*/false, col.data());
        (branch == 0 ? acc3 : acc5).slot().addmm_(mat(dA + c0 * TW + oy, rows, co, TW).t(),
                                                  mat(col.data(), rows, K * K * ci, K * K * ci));
      }
      if (!need_y4) continue;
      // Max pool 3x3/s1/p1 with its argmax, fused with the pool projection's dgrad and wgrad.
      T* halo_lo = gx ? halos + (chunk * 2) * halo * Cin : nullptr;   // pixels [c0 - halo, c0)
      T* halo_hi = gx ? halos + (chunk * 2 + 1) * halo * Cin : nullptr;  // pixels [cend, cend + halo)
      for (int64_t p0 = c0; p0 < cend; p0 += sub) {
        const int64_t rows = std::min(sub, cend - p0);
        // The window is scanned as torch's max_pool2d does (rows, then columns).
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t p = p0 + r, n = p / (H * W), h = (p / W) % H, w = p % W;
          const int64_t ih0 = std::max<int64_t>(h - 1, 0), ih1 = std::min<int64_t>(h + 1, H - 1);
          const int64_t iw0 = std::max<int64_t>(w - 1, 0), iw1 = std::min<int64_t>(w + 1, W - 1);
          T* m = pooled.data() + r * Cin;
          T* a = arg.data() + r * Cin;
          std::fill(m, m + Cin, -std::numeric_limits<T>::infinity());
          std::fill(a, a + Cin, static_cast<T>((ih0 - h + 1) * 3 + (iw0 - w + 1)));
          for (int64_t ih = ih0; ih <= ih1; ++ih)
            for (int64_t iw = iw0; iw <= iw1; ++iw)
              argmax_tap(X + ((n * H + ih) * W + iw) * Cin, m, a, static_cast<T>((ih - h + 1) * 3 + (iw - w + 1)),
                         Cin);
        }
        if (pl.g[kWp])
          accp.slot().addmm_(mat(dA + p0 * TW + oY4, rows, cp, TW).t(), mat(pooled.data(), rows, Cin, Cin));
        if (!gx) continue;
        mm(mat(dpool.data(), rows, Cin, Cin), mat(dA + p0 * TW + oY4, rows, cp, TW), wpm);
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t p = p0 + r, h = (p / W) % H, w = p % W;
          for (int64_t dh = -1; dh <= 1; ++dh) {
            if (h + dh < 0 || h + dh >= H) continue;
            for (int64_t dw = -1; dw <= 1; ++dw) {
              if (w + dw < 0 || w + dw >= W) continue;
              const int64_t q = p + dh * W + dw;
              T* dst = q < c0 ? halo_lo + (q - (c0 - halo)) * Cin
                              : (q >= cend ? halo_hi + (q - cend) * Cin : GX + q * Cin);
              scatter_tap(dst, dpool.data() + r * Cin, arg.data() + r * Cin, static_cast<T>((dh + 1) * 3 + (dw + 1)),
                          Cin);
            }
          }
        }
      }
    }
  });
  if (gx && need_y4) {  // the chunks' halos, in chunk order
    for (int64_t chunk = 0; chunk < chunks.count; ++chunk) {
      const int64_t c0 = chunk * chunks.size, cend = std::min(P, c0 + chunks.size);
      for (int side = 0; side < 2; ++side) {
        const int64_t q0 = side == 0 ? c0 - halo : cend;
        const T* src = halos + (chunk * 2 + side) * halo * Cin;
        for (int64_t j = 0; j < halo; ++j) {
          const int64_t q = q0 + j;
          if (q < 0 || q >= P) continue;
          T* dst = GX + q * Cin;
          const T* s = src + j * Cin;
          for (int64_t c = 0; c < Cin; ++c) dst[c] += s[c];
        }
      }
    }
  }

  // ---- pass 3: sibling 1x1 wgrad (one GEMM), biases, reductions, outputs -------------------
  if (pl.g[kW1] || pl.g[kW3r] || pl.g[kW5r]) {
    const int64_t lo = pl.g[kW1] ? 0 : (pl.g[kW3r] ? c1 : c1 + r3);
    const int64_t hi = pl.g[kW5r] ? nm : (pl.g[kW3r] ? c1 + r3 : c1);
    at::Tensor wg = at::empty({hi - lo, Cin}, opts);
    mm(wg, mat(dA + lo, P, hi - lo, TW).t(), mat(X, P, Cin, Cin));
    if (pl.g[kW1]) o[kW1].copy_(wg.narrow(0, 0 - lo, c1).view(o[kW1].sizes()));
    if (pl.g[kW3r]) o[kW3r].copy_(wg.narrow(0, c1 - lo, r3).view(o[kW3r].sizes()));
    if (pl.g[kW5r]) o[kW5r].copy_(wg.narrow(0, c1 + r3 - lo, r5).view(o[kW5r].sizes()));
  }
  if (pl.g[kB1] || pl.g[kB3r] || pl.g[kB5r] || pl.g[kB3] || pl.g[kB5] || pl.g[kBp]) {
    const at::Tensor sums = dA_t.sum(0);
    const std::pair<int, std::pair<int64_t, int64_t>> bias_cols[] = {
        {kB1, {0, c1}}, {kB3r, {oR3, r3}}, {kB5r, {oR5, r5}}, {kB3, {oY2, c3}}, {kB5, {oY3, c5}}, {kBp, {oY4, cp}}};
    for (const auto& [slot, range] : bias_cols)
      if (pl.g[slot]) o[slot].copy_(sums.narrow(0, range.first, range.second));
  }
  if (pl.g[kW3]) o[kW3].copy_(acc3.sum().view({c3, K3, K3, r3}).permute({0, 3, 1, 2}));
  if (pl.g[kW5]) o[kW5].copy_(acc5.sum().view({c5, K5, K5, r5}).permute({0, 3, 1, 2}));
  if (pl.g[kWp]) o[kWp].copy_(accp.sum().view(o[kWp].sizes()));
  if (gx && !gx_direct) o[kX].copy_(gx_t.permute({0, 3, 1, 2}));
}

#define GF_BACKWARD_ARGS                                                                             \
  InceptionArgs {                                                                                   \
    x, w_1x1, b_1x1, w_3x3red, b_3x3red, w_3x3, b_3x3, w_5x5red, b_5x5red, w_5x5, b_5x5, w_pool_proj, \
        b_pool_proj, relu                                                                           \
  }

}  // namespace

InceptionGrads inception_backward_cpu(GF_INCEPTION_BACKWARD_PARAMS) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;  // inner ATen calls need no autograd
  const InceptionArgs a = GF_BACKWARD_ARGS;
  const Plan plan = make_plan(a, output_mask);
  const InceptionShape s = check_backward_args(grad_out, a, out, plan);
  auto g = allocate_grads(a, plan);
  if (!plan.any) return to_optionals(g);
  if (s.n * s.h * s.w == 0) {  // no pixels: zero weight/bias gradients, an empty grad_x
    for (auto& t : g)
      if (t.defined()) t.zero_();
    return to_optionals(g);
  }
  const auto st = x.scalar_type();
  const bool reduced = st == at::kBFloat16 || st == at::kHalf;
  const auto cst = reduced ? at::kFloat : st;
  auto cv = [&](const at::Tensor& t) { return t.defined() && reduced ? t.to(cst) : t; };
  auto cvo = [&](const c10::optional<at::Tensor>& t) { return present(t) ? cv(*t) : at::Tensor(); };
  Inputs in;
  in.g = cv(grad_out);
  if (plan.x) in.x = cv(x);
  in.w1 = cv(w_1x1);
  in.w3r = cv(w_3x3red);
  in.b3r = cvo(b_3x3red);
  in.w3 = cv(w_3x3);
  in.w5r = cv(w_5x5red);
  in.b5r = cvo(b_5x5red);
  in.w5 = cv(w_5x5);
  in.wp = cv(w_pool_proj);
  if (relu) in.out = cv(*out);
  std::array<at::Tensor, kInceptionNumGrads> work = g;
  if (reduced) {
    for (auto& t : work)
      if (t.defined()) t = at::empty(t.sizes(), t.options().dtype(cst).memory_format(t.suggest_memory_format()));
  }
  AT_DISPATCH_FLOATING_TYPES(cst, "inception_backward_cpu", [&] { backward_impl<scalar_t>(in, s, plan, relu, work); });
  if (reduced) {
    for (int i = 0; i < kInceptionNumGrads; ++i)
      if (g[i].defined()) g[i].copy_(work[i]);
  }
  return to_optionals(g);
}

}  // namespace googlenet_fast
