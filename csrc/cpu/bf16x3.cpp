// googlenet_fast: the bf16x3 split (see bf16x3.h).
#include "bf16x3.h"

#include <ATen/Context.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <vector>

#include "avx512_lanes.h"
#include "onednn_api.h"

#if GF_AVX512
#include <cpuid.h>
#endif

#if __has_include(<torch/headeronly/version.h>)
#include <torch/headeronly/version.h>
#endif
// torch 2.14's per-backend float32 precision (torch.backends.mkldnn.matmul.fp32_precision, which
// set_float32_matmul_precision also sets); older torch: the legacy getter alone.
#ifndef GF_FP32_PRECISION_PER_BACKEND  // (-DGF_FP32_PRECISION_PER_BACKEND=0: the older path, for a compile check)
#if defined(TORCH_VERSION_MAJOR) && (TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 14))
#define GF_FP32_PRECISION_PER_BACKEND 1
#else
#define GF_FP32_PRECISION_PER_BACKEND 0
#endif
#endif

namespace googlenet_fast {
namespace bf16x3 {
namespace {

std::atomic<int>& mode_slot() {
  static std::atomic<int> mode(static_cast<int>(Mode::kAuto));
  return mode;
}

#if GF_AVX512
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#define GF_BF16X3_FN __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))
#define GF_BF16X3_INLINE __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16"), always_inline)) inline

// 16 values ready for rounding to hi: those a round to nearest would carry to inf (0x7f7f8000 <=
// |x| < inf) cut to their upper 16 bits; `special` set to the inf / NaN lanes.
GF_BF16X3_INLINE __m512 prepare(__m512 v, __mmask16& special) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i magnitude = _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff));
  special = _mm512_cmpge_epu32_mask(magnitude, _mm512_set1_epi32(0x7f800000));
  const __mmask16 near_max = _mm512_mask_cmpge_epu32_mask(static_cast<__mmask16>(~special), magnitude,
                                                          _mm512_set1_epi32(0x7f7f8000));
  return _mm512_mask_mov_ps(v, near_max,
                            _mm512_castsi512_ps(_mm512_and_si512(u, _mm512_set1_epi32(static_cast<int>(0xffff0000u)))));
}

// 32 bfloat16 values (a 512-bit register) widened: the low or high 16 as float32.
GF_BF16X3_INLINE __m512 widen(__m512i b, int half) {
  const __m256i h = half == 0 ? _mm512_castsi512_si256(b) : _mm512_extracti64x4_epi64(b, 1);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

GF_BF16X3_INLINE void store32(c10::BFloat16* p, __mmask32 m, __m512i v) {
  if (m == 0xffffffffu) {
    _mm512_storeu_si512(p, v);
  } else {
    _mm512_mask_storeu_epi16(p, m, v);
  }
}

// hi and lo of 32 values (v0: the first 16, v1: the next 16) as 32 bfloat16 each, converted by
// VCVTNE2PS2BF16 (round to nearest even; subnormal inputs and results are zero, as AMX's bfloat16
// products treat them anyway): ~4x the throughput of rounding in integer lanes, which made the
// split 10% of a float32 forward's cycles.
GF_BF16X3_INLINE void hi_lo32(__m512 v0, __m512 v1, __m512i& hi, __m512i& lo) {
  __mmask16 s0, s1;
  const __m512 p0 = prepare(v0, s0), p1 = prepare(v1, s1);
  hi = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(p1, p0));
  // lo = x - hi where x is finite, else 0
  const __m512 lo0 = _mm512_maskz_sub_ps(static_cast<__mmask16>(~s0), v0, widen(hi, 0));
  const __m512 lo1 = _mm512_maskz_sub_ps(static_cast<__mmask16>(~s1), v1, widen(hi, 1));
  lo = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(lo1, lo0));
}

// Row by row, 32 channels per step.
GF_BF16X3_FN void split_rows_avx512(const float* x, int64_t rows, int64_t cols, int64_t ldx, c10::BFloat16* out,
                                    bool weights) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * ldx;
    c10::BFloat16* o = out + r * 3 * cols;
    c10::BFloat16* second = o + cols;
    c10::BFloat16* third = o + 2 * cols;
    for (int64_t c = 0; c < cols; c += 32) {
      const int64_t left = cols - c;
      const __mmask16 m0 = avx512::lanes(left), m1 = avx512::lanes(left - 16);
      const __mmask32 m = left >= 32 ? 0xffffffffu : static_cast<__mmask32>((1ull << left) - 1);
      const __m512 v0 = avx512::load16(xr + c, m0);
      const __m512 v1 = m1 != 0 ? avx512::load16(xr + c + 16, m1) : _mm512_setzero_ps();
      __m512i hi, lo;
      hi_lo32(v0, v1, hi, lo);
      store32(o + c, m, hi);
      store32(second + c, m, weights ? hi : lo);
      store32(third + c, m, weights ? lo : hi);
    }
  }
}

// Dense rows of few channels (C < 16: conv1's input has 3), 32 rows per step: their 32C values
// split as C registers of 32 hi and C of 32 lo, then each of the 3C output registers (32 rows x
// [hi | lo | hi]) gathered from two adjacent registers by one permute per half and a blend.  Row
// by row, such rows used 3 of 32 lanes: conv1's split ran at 0.46 Gelem/s against 2.6 for wide
// rows (one thread, 2026-12-06), 1.3 ms of a batch-8 forward.
constexpr int64_t kSmallC = 16;
struct SmallTable {
  int a[3 * kSmallC];                  // the first of the two source registers of output register q
  alignas(64) uint16_t idx[3 * kSmallC][32];  // lane -> index into (register a, register a + 1)
  uint32_t lo_lanes[3 * kSmallC];      // lanes taken from lo
};

const SmallTable& small_table(int64_t C) {
  static SmallTable tables[kSmallC];
  static std::once_flag once[kSmallC];
  std::call_once(once[C], [C] {
    SmallTable& t = tables[C];
    for (int64_t q = 0; q < 3 * C; ++q) {
      int64_t first = -1;
      uint32_t lo = 0;
      int64_t f[32];
      for (int64_t lane = 0; lane < 32; ++lane) {
        const int64_t j = 32 * q + lane, row = j / (3 * C), k = j % (3 * C);
        f[lane] = row * C + k % C;  // the value's index among the 32C
        if (k / C == 1) lo |= 1u << lane;
        if (first < 0 || f[lane] < first) first = f[lane];
      }
      t.a[q] = static_cast<int>(first / 32);
      for (int64_t lane = 0; lane < 32; ++lane) t.idx[q][lane] = static_cast<uint16_t>(f[lane] - 32 * t.a[q]);
      t.lo_lanes[q] = lo;
    }
  });
  return tables[C];
}

GF_BF16X3_FN void split_small_rows_avx512(const float* x, int64_t rows, int64_t C, c10::BFloat16* out) {
  const SmallTable& t = small_table(C);
  __m512i H[kSmallC], L[kSmallC];
  int64_t r = 0;
  for (; r + 32 <= rows; r += 32) {
    const float* xs = x + r * C;
    for (int64_t v = 0; v < C; ++v)
      hi_lo32(_mm512_loadu_ps(xs + 32 * v), _mm512_loadu_ps(xs + 32 * v + 16), H[v], L[v]);
    c10::BFloat16* o = out + r * 3 * C;
    for (int64_t q = 0; q < 3 * C; ++q) {
      const int a = t.a[q], b = a + 1 < C ? a + 1 : a;  // (indices past register a only where a + 1 < C)
      const __m512i idx = _mm512_load_si512(t.idx[q]);
      const __m512i h = _mm512_permutex2var_epi16(H[a], idx, H[b]);
      const __m512i l = _mm512_permutex2var_epi16(L[a], idx, L[b]);
      _mm512_storeu_si512(o + 32 * q, _mm512_mask_blend_epi16(t.lo_lanes[q], h, l));
    }
  }
  if (r < rows) split_rows_avx512(x + r * C, rows - r, C, C, out + r * 3 * C, false);
}

#pragma GCC diagnostic pop
#endif

}  // namespace

Mode set_mode(Mode mode) { return static_cast<Mode>(mode_slot().exchange(static_cast<int>(mode))); }

Mode mode() { return static_cast<Mode>(mode_slot().load(std::memory_order_relaxed)); }

bool amx() {
#if GF_HAVE_ONEDNN_HEADERS
  static const bool has = [] {
    if (!onednn::available()) return false;
    void* fn = onednn::symbol("dnnl_get_effective_cpu_isa");
    if (fn == nullptr) return false;
    const unsigned isa = static_cast<unsigned>(reinterpret_cast<decltype(&::dnnl_get_effective_cpu_isa)>(fn)());
    const unsigned want = static_cast<unsigned>(dnnl_cpu_isa_avx512_core_amx);
    return (isa & want) == want;
  }();
  return has;
#else
  return false;
#endif
}

bool split_available() {
#if GF_AVX512
  // AVX512_BF16: CPUID leaf 7, sub-leaf 1, EAX bit 5 (read directly: older compilers'
  // __builtin_cpu_supports does not know "avx512bf16"); avx512::available() checked the OS's
  // AVX-512 state.
  static const bool ok = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    return avx512::available() && __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) && (eax & (1u << 5)) != 0;
  }();
  return ok;
#else
  return false;
#endif
}

bool precision_allows() {
#if GF_FP32_PRECISION_PER_BACKEND
  // oneDNN's matmul setting: "tf32" after set_float32_matmul_precision("high"), "bf16" after
  // "medium", "ieee" after "highest"; users of the per-backend API set it (or its conv sibling,
  // which lets ATen's own oneDNN convolutions round to bfloat16) directly.  (The legacy getter
  // throws once the two APIs were mixed, e.g. after torch.backends.cuda.matmul.fp32_precision =
  // "tf32", and while another thread is inside set_float32_matmul_precision.)
  auto reduced = [](at::Float32Op op) {
    const at::Float32Precision p = at::globalContext().float32Precision(at::Float32Backend::MKLDNN, op);
    return p == at::Float32Precision::TF32 || p == at::Float32Precision::BF16;
  };
  return reduced(at::Float32Op::MATMUL) || reduced(at::Float32Op::CONV);
#else
  try {
    return at::globalContext().float32MatmulPrecision() != at::Float32MatmulPrecision::HIGHEST;
  } catch (const c10::Error&) {
    return false;
  }
#endif
}

bool wanted() {
  const Mode m = mode();
  if (m == Mode::kOff || !split_available()) return false;
  if (!precision_allows()) return false;
  return m == Mode::kOn || amx();
}

void split_rows(const float* x, int64_t rows, int64_t cols, int64_t ldx, c10::BFloat16* out, bool weights) {
#if GF_AVX512
  TORCH_CHECK(split_available(), "googlenet_fast: the bf16x3 split needs AVX-512 with AVX512-BF16");
  if (!weights && ldx == cols && cols >= 1 && cols < kSmallC && rows >= 32) {
    split_small_rows_avx512(x, rows, cols, out);
  } else {
    split_rows_avx512(x, rows, cols, ldx, out, weights);
  }
#else
  (void)x, (void)rows, (void)cols, (void)ldx, (void)out, (void)weights;
  TORCH_CHECK(false, "googlenet_fast: the bf16x3 split needs AVX-512 with AVX512-BF16");
#endif
}

namespace {

// Split `rows` rows of `x` (float32, row stride ldx) into out, rows in parallel (inline inside a
// parallel region).
void split_parallel(const float* x, int64_t rows, int64_t cols, int64_t ldx, c10::BFloat16* out, bool weights) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(cols, 1));
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    split_rows(x + r0 * ldx, r1 - r0, cols, ldx, out + r0 * 3 * cols, weights);
  });
}

}  // namespace

at::Tensor split_activation(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kFloat, "bf16x3::split_activation: expected (N, C, H, W) float32");
  const at::Tensor xc = x.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  at::Tensor out = at::empty({N, 3 * C, H, W}, x.options().dtype(at::kBFloat16).memory_format(at::MemoryFormat::ChannelsLast));
  split_parallel(xc.const_data_ptr<float>(), N * H * W, C, C, out.data_ptr<c10::BFloat16>(), false);
  return out;
}

at::Tensor split_matrix(const at::Tensor& a, bool weights) {
  TORCH_CHECK(a.dim() == 2 && a.scalar_type() == at::kFloat, "bf16x3::split_matrix: expected (rows, k) float32");
  const at::Tensor ac = a.contiguous();
  at::Tensor out = at::empty({a.size(0), 3 * a.size(1)}, a.options().dtype(at::kBFloat16));
  split_parallel(ac.const_data_ptr<float>(), a.size(0), a.size(1), a.size(1), out.data_ptr<c10::BFloat16>(), weights);
  return out;
}

at::Tensor split_weight(const at::Tensor& w) {
  TORCH_CHECK(w.dim() >= 2 && w.scalar_type() == at::kFloat, "bf16x3::split_weight: expected (K, C, ...) float32");
  // channels last in memory: (K, spatial..., C) rows of C
  std::vector<int64_t> perm{0};
  for (int64_t d = 2; d < w.dim(); ++d) perm.push_back(d);
  perm.push_back(1);
  const at::Tensor wl = w.permute(perm).contiguous();
  std::vector<int64_t> sizes(wl.sizes().begin(), wl.sizes().end());
  const int64_t C = sizes.back();
  sizes.back() = 3 * C;
  at::Tensor out = at::empty(sizes, w.options().dtype(at::kBFloat16));
  split_parallel(wl.const_data_ptr<float>(), wl.numel() / std::max<int64_t>(C, 1), C, C,
                 out.data_ptr<c10::BFloat16>(), true);
  // back to (K, 3C, spatial...) as a view (oneDNN reads any strides)
  std::vector<int64_t> back(w.dim());
  back[0] = 0;
  back[1] = w.dim() - 1;
  for (int64_t d = 2; d < w.dim(); ++d) back[d] = d - 1;
  return out.permute(back);
}

}  // namespace bf16x3
}  // namespace googlenet_fast
