// googlenet_fast: convolutions and inner products as oneDNN primitives we keep (see onednn_direct.h).
#include "onednn_direct.h"

#include <ATen/Parallel.h>

#include <array>
#include <atomic>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "bf16x3.h"
#include "onednn_api.h"
#include "packed_weights.h"

#if !GF_HAVE_ONEDNN_HEADERS
namespace googlenet_fast {
// Built without oneDNN's headers: ATen's ops run everything.
bool direct_onednn_enabled() { return false; }
bool set_direct_onednn(bool) { return false; }
const std::string& direct_onednn_unavailable_reason() { return onednn::unavailable_reason(); }
int64_t direct_onednn_primitive_count() { return 0; }
int64_t direct_onednn_thread_memory_sets() { return 0; }
void direct_onednn_forget_in_forked_child() {}
std::unique_lock<std::mutex> direct_onednn_lock_for_test() { return std::unique_lock<std::mutex>(); }
at::Tensor direct_conv2d(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&, int64_t, int64_t,
                         bool) {
  return at::Tensor();
}
at::Tensor direct_inner_product(const at::Tensor&, const at::Tensor&, const at::Tensor*, int64_t, bool,
                                std::initializer_list<const at::Tensor*>) {
  return at::Tensor();
}
}  // namespace googlenet_fast
#else

namespace googlenet_fast {
namespace {

#define GF_DNNL_CHECK(call, what)                                                                   \
  do {                                                                                              \
    const dnnl_status_t status_ = (call);                                                           \
    TORCH_CHECK(status_ == dnnl_success, "googlenet_fast: oneDNN ", what, " failed (dnnl_status_t ", \
                static_cast<int>(status_), ")");                                                    \
  } while (0)

// A forward makes 30-40 primitives per batch size, dtype and thread count: 2048 keep ~60 such
// signatures, as many as the model keeps CPU programs (model_state.MAX_PROGRAMS = 64), so a server
// cycling through 20 batch sizes does not recreate primitives call after call (512 did from the
// 15th size on).
constexpr size_t kMaxPrimitives = 2048;

// GOOGLENET_FAST_ONEDNN, read at the first use: 0/false/off/no (any case) switch the path off;
// unset, empty, 1/true/on/yes leave it on; anything else warns and leaves it on.
bool environment_setting() {
  const char* env = std::getenv("GOOGLENET_FAST_ONEDNN");
  if (env == nullptr) return true;
  std::string v;
  for (const char* c = env; *c != '\0'; ++c)
    if (!std::isspace(static_cast<unsigned char>(*c))) v += static_cast<char>(std::tolower(static_cast<unsigned char>(*c)));
  if (v == "0" || v == "false" || v == "off" || v == "no") return false;
  if (!(v.empty() || v == "1" || v == "true" || v == "on" || v == "yes"))
    TORCH_WARN("GOOGLENET_FAST_ONEDNN=", env, ": expected 0/false/off/no or 1/true/on/yes; the direct oneDNN path stays on");
  return true;
}

std::atomic<bool>& switched_on() {
  static std::atomic<bool> on(environment_setting());
  return on;
}

dnnl_engine_t engine() {
  static dnnl_engine_t e = [] {
    dnnl_engine_t made = nullptr;
    GF_DNNL_CHECK(GF_DNNL(dnnl_engine_create)(&made, dnnl_cpu, 0), "engine creation");
    return made;
  }();
  return e;
}

dnnl_stream_t stream() {
  // one per thread: a stream is not meant to be shared by threads that execute at once
  thread_local dnnl_stream_t s = [] {
    dnnl_stream_t made = nullptr;
    GF_DNNL_CHECK(GF_DNNL(dnnl_stream_create)(&made, engine(), dnnl_stream_default_flags), "stream creation");
    return made;
  }();
  return s;
}

// An owned oneDNN handle (memory or primitive descriptor), destroyed with it.
template <typename T, typename Destroy>
struct Owned {
  T h = nullptr;
  Owned() = default;
  Owned(const Owned&) = delete;
  Owned& operator=(const Owned&) = delete;
  ~Owned() {
    if (h != nullptr) Destroy()(h);
  }
};
struct DestroyMemoryDesc {
  void operator()(dnnl_memory_desc_t h) const { GF_DNNL(dnnl_memory_desc_destroy)(h); }
};
struct DestroyPrimitiveDesc {
  void operator()(dnnl_primitive_desc_t h) const { GF_DNNL(dnnl_primitive_desc_destroy)(h); }
};
struct DestroyPrimitive {
  void operator()(dnnl_primitive_t h) const { GF_DNNL(dnnl_primitive_destroy)(h); }
};
struct DestroyAttr {
  void operator()(dnnl_primitive_attr_t h) const { GF_DNNL(dnnl_primitive_attr_destroy)(h); }
};
using MemoryDesc = Owned<dnnl_memory_desc_t, DestroyMemoryDesc>;
using PrimitiveDesc = Owned<dnnl_primitive_desc_t, DestroyPrimitiveDesc>;
using PrimitiveHandle = Owned<dnnl_primitive_t, DestroyPrimitive>;
using Attr = Owned<dnnl_primitive_attr_t, DestroyAttr>;

struct Memory {
  dnnl_memory_t m = nullptr;
  Memory(const_dnnl_memory_desc_t md, const void* data) {
    GF_DNNL_CHECK(GF_DNNL(dnnl_memory_create)(&m, md, engine(), const_cast<void*>(data)), "memory creation");
  }
  Memory(const Memory&) = delete;
  Memory& operator=(const Memory&) = delete;
  ~Memory() { GF_DNNL(dnnl_memory_destroy)(m); }
};

// A created primitive and the memory descriptors of its arguments (owned clones).
struct Primitive {
  PrimitiveHandle prim;
  MemoryDesc src, weights, bias, dst, scratchpad;
  size_t scratchpad_bytes = 0;
  std::vector<int64_t> weights_key;  // the weights' layout (serialized descriptor) as the packing key
  uint64_t id = 0;                   // unique per created primitive: the key of its argument memories
};

dnnl_data_type_t data_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return dnnl_f32;
    case at::kBFloat16: return dnnl_bf16;
    default: return dnnl_data_type_undef;
  }
}

void make_md(MemoryDesc& d, const std::vector<int64_t>& dims, const std::vector<int64_t>& strides,
             dnnl_data_type_t dt) {
  dnnl_dims_t dd{}, ss{};
  for (size_t i = 0; i < dims.size(); ++i) {
    dd[i] = dims[i];
    ss[i] = strides[i];
  }
  GF_DNNL_CHECK(GF_DNNL(dnnl_memory_desc_create_with_strides)(&d.h, static_cast<int>(dims.size()), dd, dt, ss),
                "memory descriptor creation");
}

void make_any_md(MemoryDesc& d, const std::vector<int64_t>& dims, dnnl_data_type_t dt) {
  dnnl_dims_t dd{};
  for (size_t i = 0; i < dims.size(); ++i) dd[i] = dims[i];
  GF_DNNL_CHECK(GF_DNNL(dnnl_memory_desc_create_with_tag)(&d.h, static_cast<int>(dims.size()), dd, dt,
                                                          dnnl_format_tag_any),
                "memory descriptor creation");
}

void clone_md(MemoryDesc& d, const_dnnl_primitive_desc_t pd, dnnl_query_t what) {
  const_dnnl_memory_desc_t md = GF_DNNL(dnnl_primitive_desc_query_md)(pd, what, 0);
  GF_DNNL_CHECK(GF_DNNL(dnnl_memory_desc_clone)(&d.h, md), "memory descriptor copy");
}

std::vector<int64_t> layout_key(const_dnnl_memory_desc_t md) {
  size_t size = 0;
  GF_DNNL_CHECK(GF_DNNL(dnnl_memory_desc_get_blob)(nullptr, &size, md), "memory descriptor serialization");
  std::vector<uint8_t> blob(size);
  GF_DNNL_CHECK(GF_DNNL(dnnl_memory_desc_get_blob)(blob.data(), &size, md), "memory descriptor serialization");
  std::vector<int64_t> key{-1, static_cast<int64_t>(size)};  // -1: not an ATen prepacking key
  key.resize(2 + (size + 7) / 8, 0);
  std::memcpy(key.data() + 2, blob.data(), size);
  return key;
}

// Primitive attributes: scratchpad provided by the caller.  With the library's own scratchpad,
// the oneDNN torch carries gives each primitive one buffer, which two threads executing it at once
// (stage 1 runs its pixel blocks in parallel) would share: the plain-weight inner product packs its
// weight there, and the results were garbage.
void make_user_scratchpad_attr(Attr& a) {
  GF_DNNL_CHECK(GF_DNNL(dnnl_primitive_attr_create)(&a.h), "attribute creation");
  GF_DNNL_CHECK(GF_DNNL(dnnl_primitive_attr_set_scratchpad_mode)(a.h, dnnl_scratchpad_mode_user),
                "attribute creation");
}

// This thread's scratchpad, grown as needed (64-byte aligned; execution is synchronous).
void* scratchpad(size_t bytes) {
  struct Buffer {
    void* p = nullptr;
    size_t size = 0;
    ~Buffer() { std::free(p); }
  };
  thread_local Buffer b;
  if (bytes > b.size) {
    std::free(b.p);
    b.size = 0;
    b.p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    TORCH_CHECK(b.p != nullptr, "googlenet_fast: cannot allocate a oneDNN scratchpad of ", bytes, " bytes");
    b.size = bytes;
  }
  return b.p;
}

// The primitive for `pd` unless oneDNN fell back to its reference implementation (orders of
// magnitude slower: ATen's op is the better choice then).
std::shared_ptr<Primitive> finish(PrimitiveDesc& pd) {
  const char* impl = nullptr;
  GF_DNNL_CHECK(GF_DNNL(dnnl_primitive_desc_query)(pd.h, dnnl_query_impl_info_str, 0, &impl),
                "implementation query");
  if (impl == nullptr || std::strncmp(impl, "ref", 3) == 0) return nullptr;
  auto p = std::make_shared<Primitive>();
  clone_md(p->src, pd.h, dnnl_query_src_md);
  clone_md(p->weights, pd.h, dnnl_query_weights_md);
  // the bias is the primitive's second weights argument
  const_dnnl_memory_desc_t bias = GF_DNNL(dnnl_primitive_desc_query_md)(pd.h, dnnl_query_weights_md, 1);
  if (bias != nullptr) GF_DNNL_CHECK(GF_DNNL(dnnl_memory_desc_clone)(&p->bias.h, bias), "memory descriptor copy");
  clone_md(p->dst, pd.h, dnnl_query_dst_md);
  clone_md(p->scratchpad, pd.h, dnnl_query_scratchpad_md);
  p->scratchpad_bytes = GF_DNNL(dnnl_memory_desc_get_size)(p->scratchpad.h);
  p->weights_key = layout_key(p->weights.h);
  static std::atomic<uint64_t> next_id{1};
  p->id = next_id.fetch_add(1, std::memory_order_relaxed);
  GF_DNNL_CHECK(GF_DNNL(dnnl_primitive_create)(&p->prim.h, pd.h), "primitive creation");
  return p;
}

// Created primitives by key (shape, dtypes, layouts, thread count); null: no direct path.
class Primitives {
 public:
  template <typename Create>
  std::shared_ptr<Primitive> get(const std::vector<int64_t>& key, const Create& create) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = map_.find(key);
      if (it != map_.end()) {
        it->second.last_use = ++clock_;
        return it->second.p;
      }
    }
    std::shared_ptr<Primitive> p = create();  // outside the lock: creation JIT-compiles kernels
    std::lock_guard<std::mutex> lock(mu_);
    map_[key] = {p, ++clock_};
    while (map_.size() > kMaxPrimitives) {
      auto oldest = map_.begin();
      for (auto it = map_.begin(); it != map_.end(); ++it)
        if (it->second.last_use < oldest->second.last_use) oldest = it;
      map_.erase(oldest);
    }
    return p;
  }
  size_t size() {
    std::lock_guard<std::mutex> lock(mu_);
    return map_.size();
  }
  std::unique_lock<std::mutex> lock_for_test() { return std::unique_lock<std::mutex>(mu_); }

 private:
  struct Entry {
    std::shared_ptr<Primitive> p;
    uint64_t last_use;
  };
  struct KeyHash {
    size_t operator()(const std::vector<int64_t>& k) const {
      uint64_t h = 1469598103934665603ull;  // FNV-1a over the key's values
      for (int64_t v : k) h = (h ^ static_cast<uint64_t>(v)) * 1099511628211ull;
      return static_cast<size_t>(h);
    }
  };
  std::mutex mu_;
  // hashed: one key comparison per lookup (a std::map compared ~11 keys element by element,
  // ~50 lookups per batch-1 forward)
  std::unordered_map<std::vector<int64_t>, Entry, KeyHash> map_;
  uint64_t clock_ = 0;
};

Primitives*& primitives_slot() {
  static Primitives* p = new Primitives();  // never destroyed: used until process exit
  return p;
}
Primitives& primitives() { return *primitives_slot(); }

// w (plain, any strides) reordered into `layout`: a byte tensor holding oneDNN's blocked weight.
at::Tensor reorder_weight(const at::Tensor& w, const_dnnl_memory_desc_t layout) {
  MemoryDesc plain;
  make_md(plain, w.sizes().vec(), w.strides().vec(), data_type(w.scalar_type()));
  const size_t bytes = GF_DNNL(dnnl_memory_desc_get_size)(layout);
  at::Tensor packed = at::empty({static_cast<int64_t>(bytes)}, w.options().dtype(at::kByte));
  PrimitiveDesc pd;
  GF_DNNL_CHECK(GF_DNNL(dnnl_reorder_primitive_desc_create)(&pd.h, plain.h, engine(), layout, engine(), nullptr),
                "weight reorder creation");
  PrimitiveHandle prim;
  GF_DNNL_CHECK(GF_DNNL(dnnl_primitive_create)(&prim.h, pd.h), "weight reorder creation");
  Memory from(plain.h, w.const_data_ptr()), to(layout, packed.data_ptr());
  const dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, from.m}, {DNNL_ARG_TO, to.m}};
  GF_DNNL_CHECK(GF_DNNL(dnnl_primitive_execute)(prim.h, stream(), 2, args), "weight reorder");
  return packed;
}

// This thread's oneDNN memory objects for the arguments of the primitives it executed (src,
// weights, dst, bias, scratchpad), by Primitive::id: created at a primitive's first call on the
// thread, then re-pointed at each call's buffers (dnnl_memory_set_data_handle, which neither
// allocates nor zero-pads).  Created and destroyed per call they were 1458 of the 3596
// allocations (malloc + posix_memalign) and frees of a bfloat16 batch-1 forward (32x32 input,
// where this fixed cost shows; perf probes on libc, 2-core Xeon, 2026-12-06): without them the
// forward ran 12.7% faster at 32x32, 3.5-6.8% at 224x224 batch 1, 2.3% at batch 8 (alternated
// in one process; float32 batch 1 inside the noise).  Per thread: stage 1 runs one primitive
// on both threads at once.  Bounded: past kMaxArgSets sets (primitives evicted from the cache
// leave theirs behind) all are destroyed and rebuilt on use.  A Set& from get() is used within
// one execute() only (the next get() may clear the map).
class ThreadArgMemories {
 public:
  static constexpr size_t kArgs = 5;
  static constexpr size_t kMaxArgSets = 1024;
  using Set = std::array<dnnl_memory_t, kArgs>;
  ~ThreadArgMemories() { clear(); }
  size_t size() const { return map_.size(); }
  Set& get(uint64_t id) {
    auto it = map_.find(id);
    if (it != map_.end()) return it->second;
    if (map_.size() >= kMaxArgSets) clear();
    return map_.emplace(id, Set{}).first->second;
  }

 private:
  void clear() {
    for (auto& kv : map_)
      for (dnnl_memory_t m : kv.second)
        if (m != nullptr) GF_DNNL(dnnl_memory_destroy)(m);
    map_.clear();
  }
  std::unordered_map<uint64_t, Set> map_;
};

ThreadArgMemories& thread_memories() {
  thread_local ThreadArgMemories memories;
  return memories;
}

// `slot` (this thread's memory object for one argument of one primitive) pointing at `data`.
dnnl_memory_t bind(dnnl_memory_t& slot, const_dnnl_memory_desc_t md, const void* data) {
  if (slot == nullptr) {
    GF_DNNL_CHECK(GF_DNNL(dnnl_memory_create)(&slot, md, engine(), const_cast<void*>(data)), "memory creation");
  } else {
    GF_DNNL_CHECK(GF_DNNL(dnnl_memory_set_data_handle)(slot, const_cast<void*>(data)), "memory data handle");
  }
  return slot;
}

// Execute `p` on src/dst with the weights (reordered and cached as the call allows) and bias.
// x3: p is a bf16x3 primitive (bf16x3.h); the float32 w is split into [hi | hi | lo] before the
// reorder, and the packed copy is cached under the split layout's key.
void execute(const Primitive& p, const void* src, const at::Tensor& w, bool plain_weights, const void* bias,
             void* dst, bool cache, std::initializer_list<const at::Tensor*> sources, bool x3 = false) {
  at::Tensor packed;
  const void* weights = w.const_data_ptr();
  if (!plain_weights) {
    packed = packed_weights().get(
        w, p.weights_key, [&] { return reorder_weight(x3 ? bf16x3::split_weight(w) : w, p.weights.h); }, cache,
        sources);
    weights = packed.const_data_ptr();
  }
  ThreadArgMemories::Set& m = thread_memories().get(p.id);
  dnnl_exec_arg_t args[5] = {{DNNL_ARG_SRC, bind(m[0], p.src.h, src)},
                             {DNNL_ARG_WEIGHTS, bind(m[1], p.weights.h, weights)},
                             {DNNL_ARG_DST, bind(m[2], p.dst.h, dst)}};
  int nargs = 3;
  if (bias != nullptr) args[nargs++] = {DNNL_ARG_BIAS, bind(m[3], p.bias.h, bias)};
  if (p.scratchpad_bytes > 0)
    args[nargs++] = {DNNL_ARG_SCRATCHPAD, bind(m[4], p.scratchpad.h, scratchpad(p.scratchpad_bytes))};
  GF_DNNL_CHECK(GF_DNNL(dnnl_primitive_execute)(p.prim.h, stream(), nargs, args), "primitive execution");
}

int64_t threads_key() { return at::in_parallel_region() ? -1 : at::get_num_threads(); }

bool usable_bias(const at::Tensor* b, int64_t n) {
  return b == nullptr || (b->dim() == 1 && b->size(0) == n && data_type(b->scalar_type()) != dnnl_data_type_undef);
}

}  // namespace

bool direct_onednn_enabled() { return switched_on().load(std::memory_order_relaxed) && onednn::available(); }

bool set_direct_onednn(bool enabled) { return switched_on().exchange(enabled); }

const std::string& direct_onednn_unavailable_reason() { return onednn::unavailable_reason(); }

int64_t direct_onednn_primitive_count() { return static_cast<int64_t>(primitives().size()); }

void direct_onednn_forget_in_forked_child() {
  primitives_slot() = new Primitives();  // the old one as it was at fork, never touched again
}

std::unique_lock<std::mutex> direct_onednn_lock_for_test() { return primitives().lock_for_test(); }

int64_t direct_onednn_thread_memory_sets() { return static_cast<int64_t>(thread_memories().size()); }

namespace {

// direct_conv2d's work; x3: as bf16x3 (a bfloat16 convolution over [hi | lo | hi] of x's channels,
// float32 result), an undefined tensor where oneDNN has no optimized kernel for that.
at::Tensor conv2d_call(const at::Tensor& x, const at::Tensor& w, const at::Tensor* bias, int64_t stride,
                       int64_t padding, bool cache, bool x3) {
  const dnnl_data_type_t dt = data_type(x.scalar_type());
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t K = w.size(0), R = w.size(2), S = w.size(3);
  const int64_t OH = (H + 2 * padding - R) / stride + 1, OW = (W + 2 * padding - S) / stride + 1;
  if (OH <= 0 || OW <= 0) return at::Tensor();
  const auto cl = at::MemoryFormat::ChannelsLast;
  int64_t layout;  // the input as oneDNN reads it (the bf16x3 split is channels_last)
  if (x3 || x.is_contiguous(cl)) {
    layout = 0;
  } else if (x.is_contiguous()) {
    layout = 1;
  } else {
    return at::Tensor();
  }
  const int64_t Cs = x3 ? 3 * C : C;                  // channels as oneDNN reads them
  const dnnl_data_type_t sdt = x3 ? dnnl_bf16 : dt;  // source and weights
  const std::vector<int64_t> key{1, N, C, H, W, layout, K, R, S, stride, padding, dt,
                                 bias != nullptr ? static_cast<int64_t>(data_type(bias->scalar_type())) : -1,
                                 threads_key(), x3 ? 1 : 0};
  const std::shared_ptr<Primitive> p = primitives().get(key, [&]() -> std::shared_ptr<Primitive> {
    MemoryDesc src, weights, bmd, dst;
    make_md(src, {N, Cs, H, W}, layout == 0 ? std::vector<int64_t>{H * W * Cs, 1, W * Cs, Cs}
                                            : std::vector<int64_t>{Cs * H * W, H * W, W, 1}, sdt);
    make_any_md(weights, {K, Cs, R, S}, sdt);
    if (bias != nullptr) make_md(bmd, {K}, {1}, data_type(bias->scalar_type()));
    make_md(dst, {N, K, OH, OW}, {OH * OW * K, 1, OW * K, K}, dt);
    const dnnl_dims_t strides{stride, stride}, dilates{0, 0}, pad{padding, padding};
    PrimitiveDesc pd;
    Attr attr;
    make_user_scratchpad_attr(attr);
    if (GF_DNNL(dnnl_convolution_forward_primitive_desc_create)(&pd.h, engine(), dnnl_forward_inference,
                                                               dnnl_convolution_direct, src.h, weights.h, bmd.h,
                                                               dst.h, strides, dilates, pad, pad,
                                                               attr.h) != dnnl_success)
      return nullptr;
    return finish(pd);
  });
  if (p == nullptr) return at::Tensor();
  const at::Tensor src = x3 ? bf16x3::split_activation(x) : x;
  at::Tensor y = at::empty({N, K, OH, OW}, x.options().memory_format(cl));
  const at::Tensor bc = bias != nullptr ? bias->contiguous() : at::Tensor();
  execute(*p, src.const_data_ptr(), w, /*plain_weights=*/false, bias != nullptr ? bc.const_data_ptr() : nullptr,
          y.data_ptr(), cache, {&w}, x3);
  return y;
}

}  // namespace

at::Tensor direct_conv2d(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b, int64_t stride,
                         int64_t padding, bool cache) {
  const dnnl_data_type_t dt = data_type(x.scalar_type());
  const at::Tensor* bias = b.has_value() && b->defined() ? &*b : nullptr;
  if (dt == dnnl_data_type_undef || w.scalar_type() != x.scalar_type() || x.dim() != 4 || w.dim() != 4 ||
      w.size(1) != x.size(1) || x.numel() == 0 || w.numel() == 0 || !usable_bias(bias, w.size(0)) || stride < 1 ||
      padding < 0)
    return at::Tensor();
  if (dt == dnnl_f32 && cache && bf16x3::wanted()) {  // (a split packed per call would cost more than it saves)
    at::Tensor y = conv2d_call(x, w, bias, stride, padding, cache, /*x3=*/true);
    if (y.defined()) return y;
  }
  return conv2d_call(x, w, bias, stride, padding, cache, /*x3=*/false);
}

namespace {

// direct_inner_product's work; x3: as bf16x3 (a bfloat16 inner product over [hi | lo | hi] of A's
// columns, float32 result, the split weight packed).
at::Tensor inner_product_call(const at::Tensor& A, const at::Tensor& W, const at::Tensor* bias, int64_t rows_hint,
                              bool cache, std::initializer_list<const at::Tensor*> sources, bool x3) {
  const dnnl_data_type_t dt = data_type(A.scalar_type());
  const int64_t rows = A.size(0), k = A.size(1), n = W.size(0);
  const int64_t ks = x3 ? 3 * k : k;                 // columns as oneDNN reads them
  const dnnl_data_type_t sdt = x3 ? dnnl_bf16 : dt;  // source and weights
  const int64_t hint = rows_hint > 0 ? rows_hint : rows;
  const int64_t bdt = bias != nullptr ? static_cast<int64_t>(data_type(bias->scalar_type())) : -1;
  // cache: oneDNN's layout for the weight, reordered once; otherwise the weight as it is (packing
  // for one use costs 2-3x the call, see gemm_rows)
  const bool plain = !cache;
  std::vector<int64_t> key{2, rows, k, n, dt, bdt, plain ? W.stride(0) : hint, plain ? W.stride(1) : -1,
                           threads_key(), x3 ? 1 : 0};
  auto create = [&](int64_t m, const_dnnl_memory_desc_t layout) -> std::shared_ptr<Primitive> {
    MemoryDesc src, weights, bmd, dst;
    make_md(src, {m, ks}, {ks, 1}, sdt);
    if (plain) {
      make_md(weights, {n, k}, {W.stride(0), W.stride(1)}, dt);
    } else if (layout != nullptr) {
      GF_DNNL_CHECK(GF_DNNL(dnnl_memory_desc_clone)(&weights.h, layout), "memory descriptor copy");
    } else {
      make_any_md(weights, {n, ks}, sdt);
    }
    if (bias != nullptr) make_md(bmd, {n}, {1}, static_cast<dnnl_data_type_t>(bdt));
    make_md(dst, {m, n}, {n, 1}, dt);
    PrimitiveDesc pd;
    Attr attr;
    make_user_scratchpad_attr(attr);
    if (GF_DNNL(dnnl_inner_product_forward_primitive_desc_create)(&pd.h, engine(), dnnl_forward_inference, src.h,
                                                                 weights.h, bmd.h, dst.h, attr.h) != dnnl_success)
      return nullptr;
    return finish(pd);
  };
  const std::shared_ptr<Primitive> p = primitives().get(key, [&]() -> std::shared_ptr<Primitive> {
    if (plain || rows == hint) return create(rows, nullptr);
    // another row count (a tail block): the hint's weight layout, so one packed copy serves both
    std::vector<int64_t> hint_key = key;
    hint_key[1] = hint;
    const std::shared_ptr<Primitive> main = primitives().get(hint_key, [&] { return create(hint, nullptr); });
    std::shared_ptr<Primitive> q = main != nullptr ? create(rows, main->weights.h) : nullptr;
    return q != nullptr ? q : create(rows, nullptr);
  });
  if (p == nullptr) return at::Tensor();
  const at::Tensor src = x3 ? bf16x3::split_matrix(A) : A;
  at::Tensor y = at::empty({rows, n}, A.options());
  const at::Tensor bc = bias != nullptr ? bias->contiguous() : at::Tensor();
  execute(*p, src.const_data_ptr(), W, plain, bias != nullptr ? bc.const_data_ptr() : nullptr, y.data_ptr(), cache,
          sources, x3);
  return y;
}

}  // namespace

at::Tensor direct_inner_product(const at::Tensor& A, const at::Tensor& W, const at::Tensor* bias, int64_t rows_hint,
                                bool cache, std::initializer_list<const at::Tensor*> sources) {
  const dnnl_data_type_t dt = data_type(A.scalar_type());
  if (dt == dnnl_data_type_undef || W.scalar_type() != A.scalar_type() || A.dim() != 2 || W.dim() != 2 ||
      W.size(1) != A.size(1) || A.numel() == 0 || W.numel() == 0 || !A.is_contiguous() ||
      !usable_bias(bias, W.size(0)))
    return at::Tensor();
  if (dt == dnnl_f32 && cache && bf16x3::wanted()) {  // (as in direct_conv2d)
    at::Tensor y = inner_product_call(A, W, bias, rows_hint, cache, sources, /*x3=*/true);
    if (y.defined()) return y;
  }
  return inner_product_call(A, W, bias, rows_hint, cache, sources, /*x3=*/false);
}

}  // namespace googlenet_fast

#endif  // GF_HAVE_ONEDNN_HEADERS
