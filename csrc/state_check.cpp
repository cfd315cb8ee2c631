// googlenet_fast: ModelState.same()'s comparisons in one C++ pass (googlenet_fast/model_state.py).
//
// Why C++: a recorded forward (the CPU op programs, the CUDA launch programs) is replayed only
// after checking ~350 parameters and buffers (version counter, data pointer) and ~1,500 module
// dict entries.  Between two forwards the forward's activations and weights have evicted every
// one of those objects from the caches, so in Python the check is a chain of dependent cache
// misses: 200-540 us after a batch-1 forward on the 2-core EPYC CI machine (2026-12-05), against
// 83 us when hot -- 2-6% of a batch-1 CPU forward.  Here the objects are first prefetched in
// flat passes (independent misses overlap), then compared.
//
// _model_state_same(dicts, keys, objs, attr_dicts, attr_names, attrs, tensors, versions, ptrs,
//                   sized, sizes) -> bool
//   dicts[i].get(keys[i]) is objs[i]               (module tree: same objects)
//   attr_dicts[i].get(attr_names[i]) == attrs[i]    (flags and geometry: equal values)
//   tensors[i]._version == versions[i]              (-1: no counter, e.g. an inference tensor)
//   tensors[i].data_ptr() == ptrs[i]
//   len(sized[i]) == sizes[i]
// versions: array('q'), ptrs: array('Q') (flat: no int object per tensor to fetch); the others
// tuples, of matching lengths; TypeError otherwise.
#include <Python.h>

#include <torch/csrc/autograd/python_variable.h>

#include <cstdint>
#include <cstring>
#include <exception>

namespace googlenet_fast {
namespace {

inline void prefetch(const void* p) { __builtin_prefetch(p, 0, 3); }

// A dict's key table (CPython's PyDictObject.ma_keys), read by every lookup.
inline void prefetch_keys(PyObject* d) {
  if (PyDict_Check(d)) prefetch(reinterpret_cast<PyDictObject*>(d)->ma_keys);
}

bool check_seq(PyObject* seq, const char* name, Py_ssize_t n) {
  if (!PyTuple_Check(seq)) {
    PyErr_Format(PyExc_TypeError, "_model_state_same: %s: expected a tuple, got %s", name, Py_TYPE(seq)->tp_name);
    return false;
  }
  if (n >= 0 && PySequence_Fast_GET_SIZE(seq) != n) {
    PyErr_Format(PyExc_TypeError, "_model_state_same: %s: expected %zd items, got %zd", name, n,
                 PySequence_Fast_GET_SIZE(seq));
    return false;
  }
  return true;
}

// A read-only view of an array.array of `n` items of typecode `format` (8-byte integers).
struct Buffer {
  Py_buffer view{};
  bool held = false;
  bool get(PyObject* o, const char* name, const char* format, Py_ssize_t n) {
    if (PyObject_GetBuffer(o, &view, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) != 0) return false;
    held = true;
    if (view.itemsize != 8 || view.format == nullptr || std::strcmp(view.format, format) != 0 ||
        view.len != n * 8) {
      PyErr_Format(PyExc_TypeError, "_model_state_same: %s: expected array('%s') of %zd items", name, format, n);
      return false;
    }
    return true;
  }
  ~Buffer() {
    if (held) PyBuffer_Release(&view);
  }
};

// dict.get(key): a borrowed reference, Py_None where absent; nullptr with an exception set on
// error (a key that cannot be hashed, a non-dict).
PyObject* dict_get(PyObject* d, PyObject* key) {
  if (!PyDict_Check(d)) {
    PyErr_Format(PyExc_TypeError, "_model_state_same: expected dicts, got %s", Py_TYPE(d)->tp_name);
    return nullptr;
  }
  PyObject* v = PyDict_GetItemWithError(d, key);
  if (v == nullptr && !PyErr_Occurred()) v = Py_None;
  return v;
}

// 1: same, 0: changed, -1: error (exception set).
int same(PyObject* const* a) {
  PyObject *dicts = a[0], *keys = a[1], *objs = a[2], *attr_dicts = a[3], *attr_names = a[4], *attrs = a[5],
           *tensors = a[6], *versions = a[7], *ptrs = a[8], *sized = a[9], *sizes = a[10];
  if (!check_seq(dicts, "dicts", -1)) return -1;
  const Py_ssize_t nd = PyTuple_GET_SIZE(dicts);
  if (!check_seq(keys, "keys", nd) || !check_seq(objs, "objs", nd) || !check_seq(attr_dicts, "attr_dicts", -1))
    return -1;
  const Py_ssize_t na = PyTuple_GET_SIZE(attr_dicts);
  if (!check_seq(attr_names, "attr_names", na) || !check_seq(attrs, "attrs", na) ||
      !check_seq(tensors, "tensors", -1))
    return -1;
  const Py_ssize_t nt = PyTuple_GET_SIZE(tensors);
  if (!check_seq(sized, "sized", -1)) return -1;
  Buffer vbuf, pbuf;
  if (!vbuf.get(versions, "versions", "q", nt) || !pbuf.get(ptrs, "ptrs", "Q", nt)) return -1;
  const int64_t* want_version = static_cast<const int64_t*>(vbuf.view.buf);
  const uint64_t* want_ptr = static_cast<const uint64_t*>(pbuf.view.buf);
  const Py_ssize_t ns = PyTuple_GET_SIZE(sized);
  if (!check_seq(sizes, "sizes", ns)) return -1;
  for (Py_ssize_t i = 0; i < nt; ++i) {
    if (!THPVariable_Check(PyTuple_GET_ITEM(tensors, i))) {
      PyErr_Format(PyExc_TypeError, "_model_state_same: tensors[%zd]: expected a Tensor, got %s", i,
                   Py_TYPE(PyTuple_GET_ITEM(tensors, i))->tp_name);
      return -1;
    }
  }

  // Prefetch passes, one level of pointers each (independent misses overlap): the objects; the
  // dicts' key tables and the tensors' TensorImpls; the version counters and storages.
  for (Py_ssize_t i = 0; i < nd; ++i) prefetch(PyTuple_GET_ITEM(dicts, i));
  for (Py_ssize_t i = 0; i < na; ++i) prefetch(PyTuple_GET_ITEM(attr_dicts, i));
  for (Py_ssize_t i = 0; i < ns; ++i) prefetch(PyTuple_GET_ITEM(sized, i));
  for (Py_ssize_t i = 0; i < nt; ++i) prefetch(PyTuple_GET_ITEM(tensors, i));
  for (Py_ssize_t i = 0; i < nd; ++i) prefetch_keys(PyTuple_GET_ITEM(dicts, i));
  for (Py_ssize_t i = 0; i < na; ++i) prefetch_keys(PyTuple_GET_ITEM(attr_dicts, i));
  for (Py_ssize_t i = 0; i < nt; ++i) prefetch(THPVariable_Unpack(PyTuple_GET_ITEM(tensors, i)).unsafeGetTensorImpl());
  for (Py_ssize_t i = 0; i < nt; ++i) {
    const c10::TensorImpl* impl = THPVariable_Unpack(PyTuple_GET_ITEM(tensors, i)).unsafeGetTensorImpl();
    // c10::VariableVersion is one intrusive_ptr: its first word is the counter's address (only a
    // hint: a prefetch of a wrong address does nothing).
    prefetch(*reinterpret_cast<const void* const*>(&impl->version_counter()));
    if (impl->has_storage()) prefetch(impl->storage().unsafeGetStorageImpl());
  }

  for (Py_ssize_t i = 0; i < nt; ++i) {
    const at::Tensor& t = THPVariable_Unpack(PyTuple_GET_ITEM(tensors, i));
    // No counter: inference tensors (c10 never gives them one), and also a tensor whose .data
    // was set from one (a .to() of parameters assigned from inference tensors).
    const c10::VariableVersion& vc = t.unsafeGetTensorImpl()->version_counter();
    if (!vc.enabled()) {
      if (want_version[i] != -1) return 0;
    } else if (static_cast<int64_t>(vc.current_version()) != want_version[i]) {
      return 0;
    }
    const uint64_t have = t.has_storage() ? reinterpret_cast<uintptr_t>(t.const_data_ptr()) : 0;
    if (have != want_ptr[i]) return 0;
  }
  for (Py_ssize_t i = 0; i < ns; ++i) {
    const Py_ssize_t n = PyObject_Size(PyTuple_GET_ITEM(sized, i));
    if (n < 0) return -1;
    const Py_ssize_t want = PyLong_AsSsize_t(PyTuple_GET_ITEM(sizes, i));
    if (want == -1 && PyErr_Occurred()) return -1;
    if (n != want) return 0;
  }
  for (Py_ssize_t i = 0; i < nd; ++i) {
    PyObject* v = dict_get(PyTuple_GET_ITEM(dicts, i), PyTuple_GET_ITEM(keys, i));
    if (v == nullptr) return -1;
    if (v != PyTuple_GET_ITEM(objs, i)) return 0;
  }
  for (Py_ssize_t i = 0; i < na; ++i) {
    PyObject* v = dict_get(PyTuple_GET_ITEM(attr_dicts, i), PyTuple_GET_ITEM(attr_names, i));
    if (v == nullptr) return -1;
    const int eq = PyObject_RichCompareBool(v, PyTuple_GET_ITEM(attrs, i), Py_EQ);  // identity first, as tuple ==
    if (eq <= 0) return eq;
  }
  return 1;
}

}  // namespace

PyObject* py_model_state_same(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 11) {
    PyErr_Format(PyExc_TypeError, "_model_state_same: expected 11 arguments, got %zd", nargs);
    return nullptr;
  }
  int r;
  try {
    r = same(args);
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
  if (r < 0) return nullptr;
  return PyBool_FromLong(r);
}

}  // namespace googlenet_fast
