// Routing the constructor of an extension type to a Python callable, for
// safeload.patch(). Needs only Python's C API and pybind11 (no torch), so it
// builds as a module of its own against any Python (tests/interpose).
#pragma once

#include <pybind11/pybind11.h>

namespace safeload {

// Adds interpose_new, restore_new and upstream_new to `m` (see interpose.cpp).
void bind_interpose(pybind11::module_& m);

}  // namespace safeload
