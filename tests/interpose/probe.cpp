// The constructor routing of safeload.patch() (python/src/interpose.cpp) as a module of its
// own, buildable against any Python with pybind11 and no torch: check.py runs it under the
// Python versions safeload's own module cannot be built for here.
#include "interpose.h"

PYBIND11_MODULE(_interpose_probe, m) { safeload::bind_interpose(m); }
