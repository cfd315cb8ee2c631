// googlenet_fast: oneDNN's C API from torch's own copy of oneDNN (see onednn_api.h).
#include "onednn_api.h"

#if !GF_HAVE_ONEDNN_HEADERS
namespace googlenet_fast {
namespace onednn {
void* symbol(const char*) { return nullptr; }
const std::string& unavailable_reason() {
  static const std::string why =
      "built without oneDNN 3.4+ headers (torch/include/oneapi/dnnl with dnnl_version_hash.h), or with "
      "GOOGLENET_FAST_NO_DIRECT_ONEDNN";
  return why;
}
}  // namespace onednn
}  // namespace googlenet_fast
#else

#include <oneapi/dnnl/dnnl_version.h>
#include <oneapi/dnnl/dnnl_version_hash.h>

#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <unordered_map>

namespace googlenet_fast {
namespace onednn {
namespace {

// The functions the callers use (csrc/cpu/onednn_direct.cpp): all must resolve.
constexpr const char* kRequired[] = {
    "dnnl_version",
    "dnnl_engine_create",
    "dnnl_stream_create",
    "dnnl_memory_desc_create_with_strides",
    "dnnl_memory_desc_create_with_tag",
    "dnnl_memory_desc_destroy",
    "dnnl_memory_desc_clone",
    "dnnl_memory_desc_get_size",
    "dnnl_memory_desc_get_blob",
    "dnnl_memory_create",
    "dnnl_memory_destroy",
    "dnnl_memory_set_data_handle",
    "dnnl_convolution_forward_primitive_desc_create",
    "dnnl_inner_product_forward_primitive_desc_create",
    "dnnl_reorder_primitive_desc_create",
    "dnnl_primitive_desc_query",
    "dnnl_primitive_desc_query_md",
    "dnnl_primitive_desc_destroy",
    "dnnl_primitive_create",
    "dnnl_primitive_execute",
    "dnnl_primitive_destroy",
    "dnnl_primitive_attr_create",
    "dnnl_primitive_attr_set_scratchpad_mode",
    "dnnl_primitive_attr_destroy",
};

struct Api {
  std::unordered_map<std::string, void*> fns;
  std::string reason;
};

struct Library {
  std::string path;
  uintptr_t base = 0;
};

// The dnnl_* function symbols of the ELF file at `path`, relocated by `base`; "" or why not.
std::string read_symbols(const std::string& path, uintptr_t base, std::unordered_map<std::string, void*>& out) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "cannot open " + path;
  struct stat st {};
  if (fstat(fd, &st) != 0 || st.st_size < static_cast<off_t>(sizeof(Elf64_Ehdr))) {
    close(fd);
    return "cannot read " + path;
  }
  const size_t size = static_cast<size_t>(st.st_size);
  void* map = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (map == MAP_FAILED) return "cannot map " + path;
  const char* file = static_cast<const char*>(map);
  std::string why;
  const auto* eh = reinterpret_cast<const Elf64_Ehdr*>(file);
  auto inside = [&](uint64_t off, uint64_t len) { return off <= size && len <= size - off; };
  if (std::memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 || eh->e_ident[EI_CLASS] != ELFCLASS64 ||
      eh->e_shentsize != sizeof(Elf64_Shdr) || !inside(eh->e_shoff, uint64_t(eh->e_shnum) * sizeof(Elf64_Shdr))) {
    why = path + " is not a 64-bit ELF file with section headers";
  } else {
    const auto* sh = reinterpret_cast<const Elf64_Shdr*>(file + eh->e_shoff);
    bool symtab = false;
    for (int i = 0; i < eh->e_shnum && why.empty(); ++i) {
      if (sh[i].sh_type != SHT_SYMTAB) continue;
      symtab = true;
      if (sh[i].sh_link >= eh->e_shnum || !inside(sh[i].sh_offset, sh[i].sh_size) ||
          !inside(sh[sh[i].sh_link].sh_offset, sh[sh[i].sh_link].sh_size)) {
        why = path + ": malformed symbol table";
        break;
      }
      const auto* syms = reinterpret_cast<const Elf64_Sym*>(file + sh[i].sh_offset);
      const char* strs = file + sh[sh[i].sh_link].sh_offset;
      const uint64_t strsize = sh[sh[i].sh_link].sh_size;
      const size_t n = sh[i].sh_size / sizeof(Elf64_Sym);
      for (size_t j = 0; j < n; ++j) {
        if (ELF64_ST_TYPE(syms[j].st_info) != STT_FUNC || syms[j].st_value == 0 || syms[j].st_name >= strsize)
          continue;
        const char* name = strs + syms[j].st_name;
        if (std::strncmp(name, "dnnl_", 5) != 0 || memchr(name, 0, strsize - syms[j].st_name) == nullptr) continue;
        void* addr = reinterpret_cast<void*>(base + syms[j].st_value);
        auto [it, fresh] = out.emplace(name, addr);
        if (!fresh && it->second != addr) it->second = nullptr;  // two definitions: ambiguous, unusable
      }
    }
    if (why.empty() && !symtab) why = path + " has no symbol table (stripped)";
  }
  munmap(map, size);
  return why;
}

Api load() {
  Api api;
  Library lib;
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* data) {
        const char* name = info->dlpi_name;
        const size_t len = name != nullptr ? std::strlen(name) : 0;
        constexpr const char kLib[] = "/libtorch_cpu.so";
        constexpr size_t kLen = sizeof(kLib) - 1;
        if (len >= kLen && std::strcmp(name + len - kLen, kLib) == 0) {
          auto* l = static_cast<Library*>(data);
          l->path = name;
          l->base = info->dlpi_addr;
          return 1;
        }
        return 0;
      },
      &lib);
  if (lib.path.empty()) {
    api.reason = "libtorch_cpu.so is not loaded";
    return api;
  }
  api.reason = read_symbols(lib.path, lib.base, api.fns);
  if (!api.reason.empty()) return api;
  for (const char* name : kRequired) {
    auto it = api.fns.find(name);
    if (it == api.fns.end() || it->second == nullptr) {
      api.reason = std::string(lib.path) + " has no (unique) " + name;
      return api;
    }
  }
  const dnnl_version_t* v = reinterpret_cast<decltype(&::dnnl_version)>(api.fns["dnnl_version"])();
  if (v == nullptr || v->major != DNNL_VERSION_MAJOR || v->minor != DNNL_VERSION_MINOR ||
      v->patch != DNNL_VERSION_PATCH || v->hash == nullptr || std::strcmp(v->hash, DNNL_VERSION_HASH) != 0) {
    api.reason = "torch's oneDNN (" + (v == nullptr ? std::string("?") :
        std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->patch) + " " +
        (v->hash != nullptr ? v->hash : "?")) + ") is not the one this extension was built against (" +
        std::to_string(DNNL_VERSION_MAJOR) + "." + std::to_string(DNNL_VERSION_MINOR) + "." +
        std::to_string(DNNL_VERSION_PATCH) + " " + DNNL_VERSION_HASH + "): rebuild googlenet_fast";
  }
  return api;
}

const Api& api() {
  static const Api* a = new Api(load());  // never destroyed: used until process exit
  return *a;
}

}  // namespace

void* symbol(const char* name) {
  const Api& a = api();
  if (!a.reason.empty()) return nullptr;
  auto it = a.fns.find(name);
  return it == a.fns.end() ? nullptr : it->second;
}

const std::string& unavailable_reason() { return api().reason; }

}  // namespace onednn
}  // namespace googlenet_fast

#endif  // GF_HAVE_ONEDNN_HEADERS
