// The private extension module safeload._C. Deliberately thin: argument
// conversion, GIL release around all I/O, and mapping safeload::Error onto
// the Python exceptions defined in safeload/_errors.py. The user-facing API
// lives in the pure-Python package.
#include <torch/csrc/utils/pybind.h>

#include "safeload/error.h"
#include "safeload/file.h"
#include "safeload/header.h"
#include "safeload/torch.h"

namespace py = pybind11;

namespace safeload {
namespace {

py::dict to_dict(TensorMap&& tensors) {
  py::dict out;
  for (auto& [name, tensor] : tensors) out[py::str(name)] = std::move(tensor);
  return out;
}

py::dict header_to_dict(const Header& header) {
  py::list tensors;
  for (const TensorInfo& t : header.tensors()) {
    tensors.append(py::make_tuple(t.name, std::string(dtype_info(t.dtype).name), py::cast(t.shape),
                                  t.begin, t.end));
  }
  py::object metadata = py::none();
  if (header.has_metadata()) {
    py::dict m;
    for (const auto& [k, v] : header.metadata()) m[py::str(k)] = v;
    metadata = m;
  }
  py::dict out;
  out["tensors"] = tensors;
  out["metadata"] = metadata;
  out["header_length"] = header.header_length();
  out["data_start"] = header.data_start();
  out["data_length"] = header.data_length();
  out["file_size"] = header.file_size();
  return out;
}

// Raises the Python exception for `e`: OSError (with errno when known) for
// I/O failures, safeload.SafetensorError(message, code) for everything else.
void raise_python(const Error& e) {
  if (e.code() == ErrorCode::kIo) {
    if (e.sys_errno() != 0) {
      PyErr_SetObject(PyExc_OSError, py::make_tuple(e.sys_errno(), e.what()).ptr());
    } else {
      PyErr_SetString(PyExc_OSError, e.what());
    }
    return;
  }
  py::object cls = py::module_::import("safeload._errors").attr("SafetensorError");
  py::object instance = cls(e.what(), std::string(e.code_name()));
  PyErr_SetObject(cls.ptr(), instance.ptr());
}

}  // namespace
}  // namespace safeload

PYBIND11_MODULE(_C, m) {
  using namespace safeload;
  m.doc() = "safeload's private extension module; use the safeload package instead.";

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      raise_python(e);
    }
  });

  m.def("dtype_table", [] {
    py::list out;
    for (const DTypeInfo& info : kDTypeTable) out.append(py::make_tuple(std::string(info.name), info.bits));
    return out;
  }, "The format's dtypes as (name, bits) pairs, from safeload's one dtype table.");

  m.def("error_codes", [] {
    py::list out;
    for (int i = 0; i < kErrorCodeCount; ++i) out.append(std::string(error_code_name(static_cast<ErrorCode>(i))));
    return out;
  }, "Every stable error code name.");

  m.def("read_header", [](const std::string& path) {
    Header header = [&] {
      py::gil_scoped_release nogil;
      return Header::read(File::open(path));
    }();
    return header_to_dict(header);
  }, py::arg("path"), "Reads and validates a file's header.");

  m.def("parse_file_bytes", [](py::bytes data, const std::string& path) {
    std::string_view bytes = data;
    return header_to_dict(Header::from_bytes(bytes, path));
  }, py::arg("data"), py::arg("path") = "<bytes>",
     "Validates a whole file held in memory and returns its header.");

  m.def("reference_load_file", [](const std::string& path, const std::string& device) {
    TensorMap tensors = [&] {
      py::gil_scoped_release nogil;
      return reference::load_file(path, parse_device(device));
    }();
    return to_dict(std::move(tensors));
  }, py::arg("path"), py::arg("device") = "cpu");

  m.def("load_file", [](const std::string& path, const std::string& device, std::size_t threads,
                        std::uint64_t chunk_bytes, std::uint64_t staging_bytes, bool staged,
                        const std::string& io) {
    LoadOptions options;
    options.threads = threads;
    options.chunk_bytes = chunk_bytes;
    options.staging_bytes = staging_bytes;
    options.path = staged ? LoadOptions::Path::kStaged : LoadOptions::Path::kAuto;
    if (io == "auto") {
      options.io = LoadOptions::Io::kAuto;
    } else if (io == "cached") {
      options.io = LoadOptions::Io::kCached;
    } else if (io == "uncached") {
      options.io = LoadOptions::Io::kUncached;
    } else {
      throw Error(ErrorCode::kInvalidArgument, "io must be 'auto', 'cached' or 'uncached', got '" + io + "'");
    }
    TensorMap tensors = [&] {
      py::gil_scoped_release nogil;
      return safeload::load_file(path, parse_device(device), options);
    }();
    return to_dict(std::move(tensors));
  }, py::arg("path"), py::arg("device") = "cpu", py::arg("threads") = 0, py::arg("chunk_bytes") = 0,
     py::arg("staging_bytes") = LoadOptions{}.staging_bytes, py::arg("staged") = false,
     py::arg("io") = "auto");
}
