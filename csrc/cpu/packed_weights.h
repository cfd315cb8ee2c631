// googlenet_fast: oneDNN weights prepacked once, not reordered on every call (the CPU eval path's
// convolutions and inner products, csrc/cpu/inception_cpu.cpp).
//
// oneDNN computes with weights in a blocked layout of its own choosing.  Handed a plain weight, its
// convolution / inner product reorders it on every call (for 5b's 3x3 weight at batch 1 that is
// 20% of the convolution's time on the CI machine, 2026-11-30); torch.compile's CPU freezing
// path reorders once at compile time (mkldnn::_reorder_convolution_weight /
// _reorder_linear_weight).  This cache does the same at run time: one packed copy per source
// weight, input shape and thread count, reused while the source is unchanged.  An entry is valid
// while the source's storage is alive (a weak reference, so a freed buffer whose address is
// reused never matches), at the same address, with the same sizes, strides, dtype and the same
// version counters of the op's weight arguments it was made from (an in-place update bumps them;
// views made inside the op have counters of their own, so those are not used).  Inference
// tensors have no version counter: they are packed per call.
//
// The layout oneDNN picks depends on the input shape and on the threads it will run with
// (at::get_num_threads(), and 1 inside a parallel region): both are part of the key.  A copy
// packed for 2 threads handed to a 1-thread call (after torch.set_num_threads(1)) was reordered
// on every call: 3b's 3x3 bfloat16 weight AcdB48a2b -> AcdB64a2b, 8.9 ms, a batch-1 forward 4.3
// -> 17 ms on the 2-core EPYC (2026-12-05; benchmarks/results/cpu-threads-prepack-2026-12-05.md).
//
// Most keys of one weight get the same layout (3b's 3x3 bfloat16 weight: one layout for batch 1 on
// 2 threads, another for every other batch size and thread count tried): a new copy whose oneDNN
// memory descriptor (mkldnn::_get_mkldnn_serialized_md) equals that of a copy of the same source
// view (sizes, strides, dtype: a transposed view at the same address once got the untransposed
// weight's copy) and state shares that copy's tensor, so memory grows with the layouts, not with
// the keys.  That lets the cache hold 2048 keys (capacity()): a server cycling through batch
// sizes 1-8 filled the former 256 and evicted, i.e. repacked, on every call (a batch-1 forward 4.4
// -> 8.8 ms; benchmarks/results/cpu-batch-cycling-2026-12-05.md).  Where that op is missing (other
// torch builds) nothing is shared and the cache keeps 256 keys.  Least recently used keys are
// evicted; keys of freed weights are dropped whenever a new copy is made.
//
// The version counter misses writes through raw pointers (inductor's generated code reuses one
// buffer for several intermediate tensors, e.g. weights folded inside a compiled graph), so the
// cache is opt-in: only calls made while the calling thread has enabled it
// (googlenet_fast._C._set_weight_prepacking, which the model's Inception and BasicConv2d modules
// do around their eager eval calls on the CPU when the weights are their own folded-weight cache's
// tensors) use it.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <c10/core/Storage.h>
#include <c10/util/intrusive_ptr.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace googlenet_fast {

struct PackedEntry {
  c10::weak_intrusive_ptr<c10::StorageImpl> storage;
  std::vector<uint32_t> versions;
  std::vector<int64_t> key;  // kind, shape hints, conv parameters, sizes, strides, dtype, threads
  std::vector<int64_t> view;  // the source view's sizes, strides and dtype (what was packed)
  at::Tensor packed;
  at::Tensor md;             // oneDNN's serialized memory descriptor of `packed` (undefined: none)
  uint64_t last_use;
};

class PackedWeights {
 public:
  // w: what is packed (it may be a view made inside the op, with a version counter of its own);
  // sources: the op's argument tensors w reads (their version counters are the ones in-place
  // updates bump).
  template <typename Pack>
  at::Tensor get(const at::Tensor& w, const std::vector<int64_t>& key_prefix, const Pack& pack, bool use_cache,
                 std::initializer_list<const at::Tensor*> sources) {
    if (!use_cache || !w.has_storage()) return pack();
    // The lookup's versions, view and key in this thread's buffers: no allocation per call (a
    // batch-1 forward makes ~50 lookups); a new entry copies them.
    thread_local std::vector<uint32_t> versions;
    thread_local std::vector<int64_t> view, key;
    versions.clear();
    for (const at::Tensor* t : sources) {
      const c10::VariableVersion& vc = t->unsafeGetTensorImpl()->version_counter();
      if (!vc.enabled() || !t->has_storage() || !t->storage().is_alias_of(w.storage()))
        return pack();  // (no version counter, e.g. an inference tensor: packed per call)
      versions.push_back(vc.current_version());
    }
    view.assign(w.sizes().begin(), w.sizes().end());
    view.insert(view.end(), w.strides().begin(), w.strides().end());
    view.push_back(static_cast<int64_t>(w.scalar_type()));
    key.assign(key_prefix.begin(), key_prefix.end());
    key.insert(key.end(), view.begin(), view.end());
    key.push_back(at::get_num_threads());
    key.push_back(at::in_parallel_region() ? 1 : 0);
    const void* data = w.const_data_ptr();
    const c10::StorageImpl* storage = w.storage().unsafeGetStorageImpl();
    std::lock_guard<std::mutex> lock(mu_);
    ++clock_;
    auto found = by_data_.find(data);
    if (found != by_data_.end()) {
      for (PackedEntry& e : found->second) {
        if (e.versions == versions && e.key == key && alive_at(e, storage)) {
          e.last_use = clock_;
          return e.packed;
        }
      }
    }
    std::vector<PackedEntry>& bucket = by_data_[data];
    at::Tensor packed = pack();
    const at::Tensor md = serialized_md(packed);
    if (md.defined()) {
      // a copy of the same source view and state in the same layout: share its tensor (the view
      // too: a transposed or expanded view at the same address holds other values)
      for (const PackedEntry& e : bucket) {
        if (e.md.defined() && e.versions == versions && e.view == view && alive_at(e, storage) &&
            e.md.sizes() == md.sizes() && at::equal(e.md, md)) {
          packed = e.packed;
          break;
        }
      }
    }
    bucket.push_back({c10::weak_intrusive_ptr<c10::StorageImpl>(w.storage().getWeakStorageImpl()),
                      versions, key, view, packed, md, clock_});
    ++count_;
    trim();
    return packed;
  }

  size_t size() {
    std::lock_guard<std::mutex> lock(mu_);
    return count_;
  }

  // Drop every key (the packed tensors live on while a caller holds them): the copies of weights
  // written where no version counter sees it (GoogLeNet.clear_folded_cache(), optimizer steps).
  void clear() {
    std::lock_guard<std::mutex> lock(mu_);
    by_data_.clear();
    count_ = 0;
  }

  // Distinct packed tensors the keys hold (keys in one layout share one).
  size_t tensors() {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<const void*> seen;
    for (const auto& [data, b] : by_data_)
      for (const PackedEntry& e : b) seen.push_back(e.packed.unsafeGetTensorImpl());
    std::sort(seen.begin(), seen.end());
    return static_cast<size_t>(std::unique(seen.begin(), seen.end()) - seen.begin());
  }

  // The cache's lock, held by the caller (tests: csrc/cpu/fork_safety.cpp).
  std::unique_lock<std::mutex> lock_for_test() { return std::unique_lock<std::mutex>(mu_); }

  // The most keys held (see the header comment).
  static size_t capacity() { return md_op().has_value() ? 2048 : 256; }

 private:
  static bool alive_at(const PackedEntry& e, const c10::StorageImpl* storage) {
    return !e.storage.expired() && e.storage._unsafe_get_target() == storage;
  }

  static const c10::optional<c10::OperatorHandle>& md_op() {
    static const c10::optional<c10::OperatorHandle> op =
        at::hasMKLDNN() ? c10::Dispatcher::singleton().findSchema({"mkldnn::_get_mkldnn_serialized_md", ""})
                        : c10::nullopt;
    return op;
  }

  // oneDNN's serialized memory descriptor of a packed (opaque MKLDNN) tensor; undefined where the
  // op is missing or the tensor is not an MKLDNN one.
  static at::Tensor serialized_md(const at::Tensor& packed) {
    if (!md_op().has_value() || !packed.is_mkldnn()) return at::Tensor();
    torch::jit::Stack st{packed};
    md_op()->callBoxed(&st);
    return st[0].toTensor();
  }

  // Drop the keys of freed weights, then the least recently used while over capacity.
  void trim() {
    for (auto it = by_data_.begin(); it != by_data_.end();) {
      std::vector<PackedEntry>& b = it->second;
      const size_t before = b.size();
      b.erase(std::remove_if(b.begin(), b.end(), [](const PackedEntry& e) { return e.storage.expired(); }), b.end());
      count_ -= before - b.size();
      it = b.empty() ? by_data_.erase(it) : std::next(it);
    }
    while (count_ > capacity()) {
      auto oldest_bucket = by_data_.end();
      size_t oldest = 0;
      for (auto it = by_data_.begin(); it != by_data_.end(); ++it) {
        for (size_t i = 0; i < it->second.size(); ++i) {
          if (oldest_bucket == by_data_.end() || it->second[i].last_use < oldest_bucket->second[oldest].last_use) {
            oldest_bucket = it;
            oldest = i;
          }
        }
      }
      std::vector<PackedEntry>& b = oldest_bucket->second;
      b.erase(b.begin() + static_cast<std::ptrdiff_t>(oldest));
      --count_;
      if (b.empty()) by_data_.erase(oldest_bucket);
    }
  }

  std::mutex mu_;
  std::unordered_map<const void*, std::vector<PackedEntry>> by_data_;
  size_t count_ = 0;
  uint64_t clock_ = 0;
};

// The process's cache (never destroyed: used until process exit).  A forked child gets a new one
// (csrc/cpu/fork_safety.cpp): a parent thread may have held this one's mutex, mid-pack, at fork.
inline PackedWeights*& packed_weights_slot() {
  static PackedWeights* cache = new PackedWeights();
  return cache;
}
inline PackedWeights& packed_weights() { return *packed_weights_slot(); }

}  // namespace googlenet_fast
