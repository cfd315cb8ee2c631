// googlenet_fast: replaying a recorded CPU op program in C++ (googlenet_fast/cpu_program.py).
//
// Why C++: a program is the fused model's eval forward as a list of ~15 op calls (the stem's
// conv2d_relu(_max_pool), nine inception, two max_pool_nhwc, avgpool_linear).  Replayed from
// Python, every step builds its argument list, goes through OpOverload.__call__ and pybind's
// conversion of ~13 arguments to IValues, wraps the result and sets the prepacking flag: at
// batch 1 in bfloat16 the interpreter and the binding layer took ~7% of a single-threaded
// forward (perf, 2026-12-05), serial time during which the second OpenMP thread waits.  Here the
// constant arguments are converted to IValues once, when the program is made, and each step is
// one boxed dispatcher call.  The ops and their arguments are exactly the Python replay's.
//
// _program_make(nslots, out, steps) -> capsule, or None when a step is not of the kind below
//   steps: tuple of (qualified op name "ns::name", overload name, args, slots, outs, prepack, frees)
//     args: tuple of constants (Tensor, int, int list, float, bool, Scalar, dtype, memory format,
//           layout, None) for the first positional arguments of the op's schema (None where
//           `slots` puts a tensor of this forward); the schema's defaults for the rest
//     slots: tuple of (argument position, slot); outs: tuple of slots the op's returned tensors
//     go to; prepack: bool (this thread's weight-prepacking setting for the call); frees: tuple of
//     slots released after the step.  Slot 0 is the input.
// _program_run(capsule, x) -> Tensor: env[0] = x, the steps in order below the Autograd keys
//   (as the modules' eval calls run), each with its prepacking setting (restored afterwards, also
//   on error), the GIL released; returns env[out].  An op's error is raised as the Python
//   exception torch raises for it.
#include <Python.h>

#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/Dtype.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/Layout.h>
#include <torch/csrc/MemoryFormat.h>
#include <torch/csrc/autograd/python_variable.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "inception.h"

namespace googlenet_fast {
namespace {

struct Step {
  std::optional<c10::OperatorHandle> op;  // set when the step is made
  std::vector<c10::IValue> args;                   // constants; placeholders at the slots
  std::vector<std::pair<size_t, int64_t>> slots;   // (argument position, slot)
  std::vector<int64_t> outs, frees;
  bool prepack = false;
};

struct Program {
  int64_t nslots = 0, out = 0;
  std::vector<Step> steps;
};

constexpr const char* kCapsule = "googlenet_fast.cpu_program";

void destroy(PyObject* capsule) { delete static_cast<Program*>(PyCapsule_GetPointer(capsule, kCapsule)); }

// A Python int (not a bool) that fits int64_t; false (no Python error left set) otherwise.
bool to_int64(PyObject* o, int64_t* out) {
  if (!PyLong_Check(o) || PyBool_Check(o)) return false;
  const long long i = PyLong_AsLongLong(o);
  if (i == -1 && PyErr_Occurred()) {
    PyErr_Clear();
    return false;
  }
  *out = static_cast<int64_t>(i);
  return true;
}

// The IValue of a constant argument for a schema argument of type `t`; false where the pair is
// not one a program holds (the caller then keeps the Python replay).
bool constant(PyObject* o, const c10::TypePtr& t, c10::IValue* v) {
  const c10::TypePtr& real =
      t->kind() == c10::TypeKind::OptionalType ? t->castRaw<c10::OptionalType>()->getElementType() : t;
  if (o == Py_None) {
    if (t->kind() != c10::TypeKind::OptionalType) return false;
    *v = c10::IValue();
    return true;
  }
  switch (real->kind()) {
    case c10::TypeKind::TensorType:
      if (!THPVariable_Check(o)) return false;
      *v = THPVariable_Unpack(o);
      return true;
    case c10::TypeKind::BoolType:
      if (!PyBool_Check(o)) return false;
      *v = o == Py_True;
      return true;
    case c10::TypeKind::IntType: {
      // ScalarType, MemoryFormat, Layout: ints in the schema's (fake) types
      if (THPDtype_Check(o)) {
        *v = static_cast<int64_t>(reinterpret_cast<THPDtype*>(o)->scalar_type);
        return true;
      }
      if (THPMemoryFormat_Check(o)) {
        *v = static_cast<int64_t>(reinterpret_cast<THPMemoryFormat*>(o)->memory_format);
        return true;
      }
      if (THPLayout_Check(o)) {
        *v = static_cast<int64_t>(reinterpret_cast<THPLayout*>(o)->layout);
        return true;
      }
      int64_t i;
      if (!to_int64(o, &i)) return false;
      *v = i;
      return true;
    }
    case c10::TypeKind::SymIntType:
      return constant(o, c10::IntType::get(), v);
    case c10::TypeKind::ListType: {
      // int[] / SymInt[] (sizes, strides, dims): a list or tuple of ints
      const c10::TypePtr& e = real->castRaw<c10::ListType>()->getElementType();
      if ((e->kind() != c10::TypeKind::IntType && e->kind() != c10::TypeKind::SymIntType) ||
          !(PyList_Check(o) || PyTuple_Check(o)))
        return false;
      c10::List<int64_t> list;
      const Py_ssize_t n = PySequence_Size(o);
      for (Py_ssize_t i = 0; i < n; ++i) {
        PyObject* item = PySequence_GetItem(o, i);  // new reference
        c10::IValue iv;
        const bool ok = item != nullptr && constant(item, c10::IntType::get(), &iv);
        Py_XDECREF(item);
        if (!ok) {
          PyErr_Clear();
          return false;
        }
        list.push_back(iv.toInt());
      }
      *v = std::move(list);
      return true;
    }
    case c10::TypeKind::NumberType:  // Scalar: a Python bool, int or float as the binding takes it
      if (PyBool_Check(o)) return constant(o, c10::BoolType::get(), v);
      if (PyLong_Check(o)) return constant(o, c10::IntType::get(), v);
      if (!PyFloat_Check(o)) return false;
      [[fallthrough]];
    case c10::TypeKind::FloatType:
      if (!PyFloat_Check(o) && !(PyLong_Check(o) && !PyBool_Check(o))) return false;
      *v = PyFloat_AsDouble(o);
      if (PyErr_Occurred()) {
        PyErr_Clear();
        return false;
      }
      return true;
    default:
      return false;
  }
}

bool int_tuple(PyObject* o, std::vector<int64_t>* out) {
  if (!PyTuple_Check(o)) return false;
  for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(o); ++i) {
    int64_t e;
    if (!to_int64(PyTuple_GET_ITEM(o, i), &e)) return false;
    out->push_back(e);
  }
  return true;
}

// One step from its Python tuple; false (no Python error set) where it is not replayable here.
bool make_step(PyObject* t, int64_t nslots, Step* s) {
  if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 7) return false;
  PyObject* name = PyTuple_GET_ITEM(t, 0);
  PyObject* overload = PyTuple_GET_ITEM(t, 1);
  PyObject* args = PyTuple_GET_ITEM(t, 2);
  PyObject* slots = PyTuple_GET_ITEM(t, 3);
  if (!PyUnicode_Check(name) || !PyUnicode_Check(overload) || !PyTuple_Check(args) || !PyTuple_Check(slots))
    return false;
  const char* n = PyUnicode_AsUTF8(name);
  const char* ov = PyUnicode_AsUTF8(overload);
  if (n == nullptr || ov == nullptr) {
    PyErr_Clear();
    return false;
  }
  const auto handle = c10::Dispatcher::singleton().findSchema({n, ov});
  if (!handle.has_value()) return false;
  s->op = *handle;
  const c10::FunctionSchema& schema = s->op->schema();
  const auto& formals = schema.arguments();
  const Py_ssize_t nargs = PyTuple_GET_SIZE(args);
  // positional arguments only: the first nargs of the schema's, its defaults for the rest (as the
  // dispatcher fills them for a Python call)
  if (nargs > static_cast<Py_ssize_t>(formals.size()) || schema.is_vararg()) return false;
  for (size_t i = nargs; i < formals.size(); ++i)
    if (!formals[i].default_value().has_value()) return false;
  for (const auto& r : schema.returns())
    if (r.type()->kind() != c10::TypeKind::TensorType) return false;
  std::vector<bool> is_slot(nargs, false);
  for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(slots); ++i) {
    PyObject* p = PyTuple_GET_ITEM(slots, i);
    int64_t pos, slot;
    if (!PyTuple_Check(p) || PyTuple_GET_SIZE(p) != 2 || !to_int64(PyTuple_GET_ITEM(p, 0), &pos) ||
        !to_int64(PyTuple_GET_ITEM(p, 1), &slot))
      return false;
    if (pos < 0 || pos >= nargs || slot < 0 || slot >= nslots || is_slot[pos]) return false;
    const c10::TypePtr& ft = formals[pos].type();
    const bool tensor = ft->kind() == c10::TypeKind::TensorType ||
                        (ft->kind() == c10::TypeKind::OptionalType &&
                         ft->castRaw<c10::OptionalType>()->getElementType()->kind() == c10::TypeKind::TensorType);
    if (!tensor) return false;
    is_slot[pos] = true;
    s->slots.emplace_back(static_cast<size_t>(pos), static_cast<int64_t>(slot));
  }
  s->args.resize(formals.size());
  for (Py_ssize_t i = 0; i < nargs; ++i)
    if (!is_slot[i] && !constant(PyTuple_GET_ITEM(args, i), formals[i].type(), &s->args[i])) return false;
  for (size_t i = nargs; i < formals.size(); ++i) s->args[i] = *formals[i].default_value();
  if (!int_tuple(PyTuple_GET_ITEM(t, 4), &s->outs) || !int_tuple(PyTuple_GET_ITEM(t, 6), &s->frees)) return false;
  if (s->outs.size() != schema.returns().size()) return false;
  for (int64_t o : s->outs)
    if (o < 0 || o >= nslots) return false;
  for (int64_t f : s->frees)
    if (f < 0 || f >= nslots) return false;
  const int prepack = PyObject_IsTrue(PyTuple_GET_ITEM(t, 5));
  if (prepack < 0) {
    PyErr_Clear();
    return false;
  }
  s->prepack = prepack != 0;
  return true;
}

// Restores this thread's prepacking setting when the run ends, also by an exception.
struct PrepackRestore {
  bool previous;
  PrepackRestore() : previous(set_weight_prepacking(false)) {}
  ~PrepackRestore() { set_weight_prepacking(previous); }
};

at::Tensor run(const Program& p, const at::Tensor& x) {
  std::vector<at::Tensor> env(p.nslots);
  env[0] = x;
  PrepackRestore restore;
  at::AutoDispatchBelowAutograd below_autograd;
  torch::jit::Stack stack;
  for (const Step& s : p.steps) {
    stack.assign(s.args.begin(), s.args.end());
    for (const auto& [pos, slot] : s.slots) stack[pos] = env[slot];
    set_weight_prepacking(s.prepack);
    s.op->callBoxed(stack);
    TORCH_INTERNAL_ASSERT(stack.size() == s.outs.size(), "googlenet_fast: program step ", s.op->schema().name(),
                          " returned ", stack.size(), " values, expected ", s.outs.size());
    for (size_t i = 0; i < s.outs.size(); ++i) env[s.outs[i]] = std::move(stack[i]).toTensor();
    stack.clear();
    for (int64_t f : s.frees) env[f].reset();
  }
  return env[p.out];
}

// The GIL released for the replay (no step needs Python; a Python kernel takes it itself) and
// taken back when the scope ends, also by an exception.
struct ReleaseGil {
  PyThreadState* state = PyEval_SaveThread();
  ReleaseGil() = default;
  ReleaseGil(const ReleaseGil&) = delete;
  ReleaseGil& operator=(const ReleaseGil&) = delete;
  ~ReleaseGil() { PyEval_RestoreThread(state); }
};

}  // namespace

PyObject* py_program_make(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 3 || !PyLong_Check(args[0]) || !PyLong_Check(args[1]) || !PyTuple_Check(args[2])) {
    PyErr_SetString(PyExc_TypeError, "_program_make(nslots: int, out: int, steps: tuple)");
    return nullptr;
  }
  auto p = std::make_unique<Program>();
  if (!to_int64(args[0], &p->nslots) || !to_int64(args[1], &p->out) || p->nslots < 1 || p->out < 0 ||
      p->out >= p->nslots) {
    PyErr_SetString(PyExc_ValueError, "_program_make: expected 0 <= out < nslots");
    return nullptr;
  }
  const Py_ssize_t n = PyTuple_GET_SIZE(args[2]);
  p->steps.resize(n);
  for (Py_ssize_t i = 0; i < n; ++i)
    if (!make_step(PyTuple_GET_ITEM(args[2], i), p->nslots, &p->steps[i])) Py_RETURN_NONE;
  PyObject* capsule = PyCapsule_New(p.get(), kCapsule, destroy);
  if (capsule != nullptr) p.release();
  return capsule;
  END_HANDLE_TH_ERRORS
}

PyObject* py_program_run(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 2 || !PyCapsule_IsValid(args[0], kCapsule) || !THPVariable_Check(args[1])) {
    PyErr_SetString(PyExc_TypeError, "_program_run(program: capsule from _program_make, x: Tensor)");
    return nullptr;
  }
  const Program& p = *static_cast<Program*>(PyCapsule_GetPointer(args[0], kCapsule));
  const at::Tensor x = THPVariable_Unpack(args[1]);
  at::Tensor y;
  {
    ReleaseGil no_gil;
    y = run(p, x);
  }
  return THPVariable_Wrap(std::move(y));
  END_HANDLE_TH_ERRORS
}

}  // namespace googlenet_fast
