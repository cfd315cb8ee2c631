// googlenet_fast: oneDNN's C API, called in the copy of oneDNN that torch itself carries.
//
// Why: each ATen oneDNN op (mkldnn::_convolution_pointwise, _linear_pointwise) spends 12-20 us per
// call beside its kernel (argument boxing, ideep tensors, output checks, oneDNN's primitive-cache
// lookup); a batch-1 forward makes ~58 such calls, ~1 ms of a 4.5 ms bfloat16 forward on the
// 2-core EPYC (2026-12-05, benchmarks/results/cpu-direct-onednn-2026-12-05.md).  Executing a
// primitive we created and keep costs ~1-3 us.
//
// How: libtorch_cpu.so links oneDNN statically and exports none of its symbols (`nm -D` lists no
// dnnl_*), but keeps them in its ELF symbol table (.symtab).  On first use we find the loaded
// libtorch_cpu.so (dl_iterate_phdr), read the addresses of the dnnl_* functions from that table and
// add the library's load address.  torch ships the matching headers (torch/include/oneapi/dnnl),
// and the copy is used only when its dnnl_version() (version and commit hash) equals the headers'
// this extension was compiled with: the same oneDNN, thread pool (OpenMP) and CPU dispatch as ATen.
// Anything else (a stripped library, another torch than the one built against, no symbol table)
// leaves the API unavailable and the callers use ATen's ops as before.
#pragma once

// torch's headers carry oneDNN's where torch was built with it (with its commit hash since oneDNN
// 3.x); the C API used here is oneDNN 3.4+'s (dnnl_memory_desc_get_blob).  Without such headers the
// direct path is compiled out and onednn::available() is false (-DGOOGLENET_FAST_NO_DIRECT_ONEDNN
// compiles it out too).
#if !defined(GOOGLENET_FAST_NO_DIRECT_ONEDNN) && __has_include(<oneapi/dnnl/dnnl.h>) && \
    __has_include(<oneapi/dnnl/dnnl_version_hash.h>)
#include <oneapi/dnnl/dnnl_version.h>
#if DNNL_VERSION_MAJOR == 3 && DNNL_VERSION_MINOR >= 4
#define GF_HAVE_ONEDNN_HEADERS 1
#include <oneapi/dnnl/dnnl.h>
#endif
#endif
#ifndef GF_HAVE_ONEDNN_HEADERS
#define GF_HAVE_ONEDNN_HEADERS 0
#endif

#include <string>

namespace googlenet_fast {
namespace onednn {

// Address of the oneDNN C API function `name` in torch's oneDNN, nullptr when unavailable.
void* symbol(const char* name);

// "" when the API can be used; otherwise why not (for users and tests).
const std::string& unavailable_reason();

inline bool available() { return unavailable_reason().empty(); }

}  // namespace onednn
}  // namespace googlenet_fast

// GF_DNNL(dnnl_primitive_execute)(...): call a oneDNN C API function (looked up once per call site).
// Only valid after onednn::available() returned true.
#define GF_DNNL(name)                                                                                     \
  ([]() {                                                                                                 \
    static const auto fn = reinterpret_cast<decltype(&::name)>(::googlenet_fast::onednn::symbol(#name)); \
    return fn;                                                                                            \
  }())
