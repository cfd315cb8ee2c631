// googlenet_fast: a forked child never waits on a lock of ours that another parent thread held.
//
// The packed-weight cache (csrc/cpu/packed_weights.h) holds its mutex while it packs a weight (a
// oneDNN reorder, up to milliseconds) and the direct path's primitive cache
// (csrc/cpu/onednn_direct.cpp) while it looks a primitive up.  fork() copies only the calling
// thread: a mutex another thread held at that moment stays locked in the child, and the child's
// first fused forward waited on it forever (a 2026-12-06 stress test: 10 of 40 children forked
// while other threads ran forwards hung; the rest of such hangs are libgomp's, see docs/api.md).
// The child handler gives the child new, empty caches; the old ones are never touched again (they
// may be mid-update; their memory is the parent's, copy-on-write, so nothing is lost).
#include <pthread.h>

#include <chrono>
#include <cstdint>
#include <thread>

#include "onednn_direct.h"
#include "packed_weights.h"

namespace googlenet_fast {
namespace {

void start_new_caches_in_child() {
  packed_weights_slot() = new PackedWeights();
  direct_onednn_forget_in_forked_child();
}

[[maybe_unused]] const int kAtForkRegistered = pthread_atfork(nullptr, nullptr, &start_new_caches_in_child);

}  // namespace

// Hold both caches' locks for `ms` milliseconds (tests: a fork while another thread packs).
void hold_cache_locks_for_test(int64_t ms) {
  std::unique_lock<std::mutex> packed = packed_weights().lock_for_test();
  std::unique_lock<std::mutex> primitives = direct_onednn_lock_for_test();
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
}

}  // namespace googlenet_fast
