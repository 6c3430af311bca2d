#include "interpose.h"

#include <string>
#include <vector>

namespace py = pybind11;

namespace safeload {
namespace {

// For patch(): the calls of an extension type (upstream's safe_open, a class made in Rust)
// routed to a Python callable by swapping the type's constructor slot. Every name bound to
// the type, wherever it is (a module's `from safetensors import safe_open`, a class
// attribute, a closure), then reaches the route, and nothing has to be found and rebound.
// The type's dictionary keeps its own __new__, which calls the slot, so the swap is one
// pointer each way. A call to the type makes what the route returns (an object of another
// type skips __init__, as for any constructor); `upstream_new` makes the type's own object.
struct Interposed {
  PyTypeObject* type;
  newfunc original;
  vectorcallfunc original_vectorcall;  // a vectorcall entry would bypass tp_new: cleared meanwhile
  py::object route;                    // none: the original serves
};

std::vector<Interposed>& interposed() {
  static auto* all = new std::vector<Interposed>();  // outlives the interpreter's teardown
  return *all;
}

Interposed* interposed_for(PyTypeObject* type) {
  for (Interposed& entry : interposed()) {
    if (entry.type == type) return &entry;
  }
  return nullptr;
}

PyObject* routed_new(PyTypeObject* type, PyObject* args, PyObject* kwargs) {
  Interposed* entry = interposed_for(type);
  if (entry == nullptr) {
    PyErr_Format(PyExc_SystemError, "safeload: no constructor recorded for %s", type->tp_name);
    return nullptr;
  }
  if (!entry->route || entry->route.is_none()) return entry->original(type, args, kwargs);
  const py::object route = entry->route;  // held: an unpatch during the call drops the entry's
  return PyObject_Call(route.ptr(), args, kwargs);
}

void interpose_new(const py::type& type, const py::object& route) {
  auto* t = reinterpret_cast<PyTypeObject*>(type.ptr());
  if (t == &PyType_Type || t->tp_new == nullptr) {
    throw py::type_error(std::string("safeload: cannot route the constructor of ") + t->tp_name);
  }
  Interposed* entry = interposed_for(t);
  if (entry == nullptr) {
    interposed().push_back(Interposed{t, t->tp_new, t->tp_vectorcall, py::object()});
    entry = &interposed().back();
    Py_INCREF(type.ptr());  // the recorded constructor belongs to a type that must outlive it
  }
  entry->route = route;
  if (t->tp_new != routed_new) {
    entry->original = t->tp_new;
    entry->original_vectorcall = t->tp_vectorcall;
    t->tp_new = routed_new;
    t->tp_vectorcall = nullptr;
    PyType_Modified(t);
  }
}

void restore_new(const py::type& type) {
  auto* t = reinterpret_cast<PyTypeObject*>(type.ptr());
  Interposed* entry = interposed_for(t);
  if (entry == nullptr || t->tp_new != routed_new) return;
  t->tp_new = entry->original;
  t->tp_vectorcall = entry->original_vectorcall;
  entry->route = py::none();
  PyType_Modified(t);
}

py::object upstream_new(const py::type& type, const py::args& args, const py::kwargs& kwargs) {
  auto* t = reinterpret_cast<PyTypeObject*>(type.ptr());
  const Interposed* entry = interposed_for(t);
  const newfunc make = entry != nullptr ? entry->original : t->tp_new;
  PyObject* keywords = PyDict_GET_SIZE(kwargs.ptr()) ? kwargs.ptr() : nullptr;
  // As type.__call__ does: construct, then initialise an object of the type.
  PyObject* made = make(t, args.ptr(), keywords);
  if (made == nullptr) throw py::error_already_set();
  py::object out = py::reinterpret_steal<py::object>(made);
  if (PyObject_TypeCheck(made, t) && Py_TYPE(made)->tp_init != nullptr &&
      Py_TYPE(made)->tp_init(made, args.ptr(), keywords) < 0) {
    throw py::error_already_set();
  }
  return out;
}

}  // namespace

void bind_interpose(py::module_& m) {
  m.def("interpose_new", &interpose_new, py::arg("type"), py::arg("route"),
        "Routes every call of `type` to `route(*args, **kwargs)` (patch(); see interpose_new in C++).");
  m.def("restore_new", &restore_new, py::arg("type"), "Gives `type` its own constructor back.");
  m.def("upstream_new", &upstream_new, py::arg("type"),
        "Calls `type` with its own constructor, whether or not it is routed elsewhere.");
}

}  // namespace safeload
