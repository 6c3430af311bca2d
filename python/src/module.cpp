// The private extension module safeload._C. Deliberately thin: argument
// conversion, GIL release around all I/O, and mapping safeload::Error onto
// the Python exceptions defined in safeload/_errors.py. The user-facing API
// lives in the pure-Python package.
#include <torch/csrc/utils/pybind.h>

#include "interpose.h"
#include "safeload/checkpoint.h"
#include "safeload/error.h"
#include "safeload/file.h"
#include "safeload/header.h"
#include "safeload/fast.h"
#include "safeload/options.h"
#include "safeload/torch.h"

#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <optional>
#include <string_view>
#include <tuple>

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

// A message as Python text: paths in it are bytes of any encoding, shown as
// os.fsdecode shows them (never a UnicodeDecodeError).
py::str message_text(const char* what) {
  PyObject* text = PyUnicode_DecodeFSDefault(what);
  if (text == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::str>(text);
}

// Raises the Python exception for `e`: OSError (with errno when known) for
// I/O failures, MemoryError when memory could not be had,
// safeload.SafetensorError(message, code) for everything else.
void raise_python(const Error& e) {
  py::str message = message_text(e.what());
  if (e.code() == ErrorCode::kIo) {
    if (e.sys_errno() != 0) {
      PyErr_SetObject(PyExc_OSError, py::make_tuple(e.sys_errno(), message).ptr());
    } else {
      PyErr_SetObject(PyExc_OSError, message.ptr());
    }
    return;
  }
  if (e.code() == ErrorCode::kOutOfMemory) {
    PyErr_SetObject(PyExc_MemoryError, message.ptr());
    return;
  }
  py::object cls = py::module_::import("safeload._errors").attr("SafetensorError");
  py::object instance = cls(message, std::string(e.code_name()));
  PyErr_SetObject(cls.ptr(), instance.ptr());
}

// Paths arrive as bytes (os.fsencode), so any file name round-trips.
using PathBytes = std::string;

// A size option from Python: None is 0 (automatic); a bool or non-integer is
// a TypeError, as Python's own APIs do; a negative or too large integer is
// INVALID_ARGUMENT naming it, since validate() cannot see such values.
std::uint64_t size_option(const char* name, const py::handle& value) {
  if (value.is_none()) return 0;
  if (PyBool_Check(value.ptr()) || !PyIndex_Check(value.ptr())) {
    throw py::type_error(std::string(name) + " must be an int or None, not " +
                         std::string(py::str(py::type::of(value).attr("__name__"))));
  }
  const py::int_ number = py::reinterpret_steal<py::int_>(PyNumber_Index(value.ptr()));
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(number.ptr(), &overflow);
  if (overflow != 0 || v < 0) {
    throw Error(ErrorCode::kInvalidArgument, std::string(name) + " must be a non-negative size, got " +
                                                 std::string(py::str(number)));
  }
  return static_cast<std::uint64_t>(v);
}

bool bool_option(const char* name, const py::handle& value) {
  if (!PyBool_Check(value.ptr())) {
    throw py::type_error(std::string(name) + " must be True or False, not " +
                         std::string(py::str(py::type::of(value).attr("__name__"))));
  }
  return value.ptr() == Py_True;
}

std::string str_option(const char* name, const py::handle& value) {
  if (!py::isinstance<py::str>(value)) {
    throw py::type_error(std::string(name) + " must be a str, not " +
                         std::string(py::str(py::type::of(value).attr("__name__"))));
  }
  return value.cast<std::string>();
}

// The load options as the caller gave them (keyword arguments, unknown names
// refused), validated: the one place they are read from Python. What was not
// given keeps LoadOptions' default.
LoadOptions make_options(const py::dict& given) {
  LoadOptions options;
  std::string unknown;
  for (const auto& [key, value] : given) {
    const std::string name = py::str(key);
    if (name == "threads") {
      options.threads = static_cast<std::size_t>(std::min<std::uint64_t>(size_option("threads", value), SIZE_MAX));
    } else if (name == "chunk_bytes") {
      options.chunk_bytes = size_option("chunk_bytes", value);
    } else if (name == "staging_bytes") {
      options.staging_bytes = value.is_none() ? kDefaultStagingBytes : size_option("staging_bytes", value);
    } else if (name == "staged") {
      options.staged = bool_option("staged", value);
    } else if (name == "io") {
      options.io = parse_io(str_option("io", value));
    } else if (name == "prefault") {
      options.prefault = bool_option("prefault", value);
    } else if (name == "backend") {
      options.backend = value.is_none() ? LoadOptions::Backend::kUnspecified
                                        : parse_backend(str_option("backend", value));
    } else {
      unknown += (unknown.empty() ? "" : ", ") + name;
    }
  }
  if (!unknown.empty()) {
    std::string accepted;
    for (std::string_view n : kOptionNames) accepted += (accepted.empty() ? "" : ", ") + std::string(n);
    throw py::type_error("unexpected load option(s): " + unknown + "; accepted: " + accepted);
  }
  validate(options);
  return options;
}

// Waits for `done(timeout_ms)` with the GIL released, in short slices so a
// pending signal (Ctrl-C) runs its Python handler within ~0.1 s: then the
// load is cancelled, its memory released, and the handler's exception
// raised. `progress` (or None) is called with (bytes_done, bytes_total)
// after each slice.
template <class Done>
void wait_interruptibly(Loading& loading, const py::object& progress, Done done) {
  constexpr long kSliceMs = 100;
  for (;;) {
    bool finished;
    {
      py::gil_scoped_release nogil;
      finished = done(kSliceMs);
    }
    if (PyErr_CheckSignals() != 0) {
      {
        py::gil_scoped_release nogil;
        loading.release();
      }
      throw py::error_already_set();
    }
    if (!progress.is_none()) progress(loading.bytes_done(), loading.bytes_total());
    if (finished) return;
  }
}

py::dict report_to_dict(const LoadReport& r) {
  py::dict d;
  d["route"] = r.route;
  d["io"] = r.io;
  d["bypass"] = r.bypass;
  d["files"] = r.files;
  d["threads"] = r.threads;
  d["chunk_bytes"] = r.chunk_bytes;
  d["slot_bytes"] = r.slot_bytes;
  d["slot_count"] = r.slot_count;
  d["prefault"] = r.prefault;
  d["populate_before_copy"] = r.populate_before_copy;
  d["ops"] = r.ops;
  d["ops_uncached"] = r.ops_uncached;
  d["bytes_total"] = r.bytes_total;
  d["bytes_uncached"] = r.bytes_uncached;
  d["bytes_done"] = r.bytes_done;
  return d;
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

  m.def("constants", [] {
    py::dict d;
    d["max_header_length"] = kMaxHeaderLength;
    d["max_json_depth"] = kMaxJsonDepth;
    d["max_threads"] = kMaxThreads;
    d["min_chunk_bytes"] = kMinChunkBytes;
    d["max_chunk_bytes"] = kMaxChunkBytes;
    d["min_staging_bytes"] = kMinStagingBytes;
    d["max_staging_bytes"] = kMaxStagingBytes;
    d["default_staging_bytes"] = kDefaultStagingBytes;
    return d;
  }, "The format's limits and the options' bounds, from the C++ core.");

  m.def("read_header", [](const PathBytes& path) {
    Header header = [&] {
      py::gil_scoped_release nogil;
      return Header::read(File::open(path));
    }();
    return header_to_dict(header);
  }, py::arg("path"), "Reads and validates a file's header.");

  m.def("resolve_checkpoint", [](const PathBytes& src) {
    ResolvedSource r = [&] {
      py::gil_scoped_release nogil;
      return resolve_checkpoint(src);
    }();
    py::list files;
    for (const std::string& f : r.files) files.append(py::bytes(f));
    return py::make_tuple(files, py::bytes(r.index_path));
  }, py::arg("src"), "The shard files (bytes) a checkpoint source names, and its index (or b'').");

  m.def("check_options", [](const std::string& device, const py::kwargs& options) {
    make_options(options);
    check_device_usable(parse_device(device));
  }, py::arg("device"), "Validates load options and a device as every load does; raises like a load.");

  m.def("parse_device", [](const std::string& device) { return parse_device(device).str(); }, py::arg("device"),
        "The device as safeload reads it ('cuda' stays 'cuda', 'cuda:1' names index 1), or INVALID_ARGUMENT.");

  m.def("torch_layout", [](const std::string& name, const std::string& dtype, std::vector<std::int64_t> shape,
                           const std::string& path) {
    const std::optional<DType> d = dtype_from_name(dtype);
    SAFELOAD_CHECK(d.has_value(), ErrorCode::kUnknownDtype, "unknown dtype '" + dtype + "'");
    TensorInfo t;
    t.name = name;
    t.dtype = *d;
    t.shape = std::move(shape);
    const c10::ScalarType st = torch_dtype(t, path);
    return py::make_tuple(st, torch_sizes(t, path));
  }, py::arg("name"), py::arg("dtype"), py::arg("shape"), py::arg("path") = "",
     "The torch dtype and sizes the loaders give a tensor of this format dtype and shape "
     "(F4 packs two values per element), or the loaders' error.");

  m.def("reference_load_file", [](const PathBytes& path, const std::string& device) {
    TensorMap tensors = [&] {
      py::gil_scoped_release nogil;
      return reference::load_file(path, parse_device(device));
    }();
    return to_dict(std::move(tensors));
  }, py::arg("path"), py::arg("device") = "cpu");

  py::class_<Checkpoint, std::shared_ptr<Checkpoint>>(m, "Checkpoint",
                                                      "A checkpoint's validated shards, opened once.")
      .def(py::init([](const std::vector<PathBytes>& files, const PathBytes& src) {
             py::gil_scoped_release nogil;
             return std::make_shared<Checkpoint>(files.empty() ? Checkpoint::open(src) : Checkpoint::open(files));
           }),
           py::arg("files"), py::arg("src"))
      .def("files", [](const Checkpoint& c) {
        py::list out;
        for (const Shard& s : c.shards()) out.append(py::bytes(s.file.path()));
        return out;
      })
      .def("names", [](const Checkpoint& c) {
        py::list out;
        for (const Shard& s : c.shards()) {
          for (const TensorInfo& t : s.header.tensors()) out.append(py::str(t.name));
        }
        return out;
      }, "Every tensor name in file order (shard by shard).")
      .def("headers", [](const Checkpoint& c) {
        py::list out;
        for (const Shard& s : c.shards()) out.append(header_to_dict(s.header));
        return out;
      }, "Each shard's validated header, as read_header gives it.")
      .def("identities", [](const Checkpoint& c) {
        py::list out;
        for (const Shard& s : c.shards()) {
          struct stat st {};
          if (::fstat(s.file.fd(), &st) != 0) throw Error(ErrorCode::kIo, "cannot stat '" + s.file.path() + "'", errno);
          out.append(py::make_tuple(st.st_dev, st.st_ino, st.st_size,
                                    static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec));
        }
        return out;
      }, "Each shard's (device, inode, size, modification time in ns) of the file it holds open: two "
         "checkpoints read the same files where these agree.");

  m.def("cheapest_range", [](const std::vector<std::uint64_t>& sizes, std::uint64_t nbytes,
                             const std::vector<std::tuple<std::size_t, std::uint64_t, std::uint64_t>>& candidates) {
    std::vector<fast::DimRange> ranges;
    for (const auto& [dim, start, stop] : candidates) ranges.push_back({dim, start, stop});
    return fast::cheapest_range(sizes, nbytes, ranges);
  }, py::arg("sizes"), py::arg("nbytes"), py::arg("candidates"),
     "Of (dim, start, stop) ranges each holding what is wanted of a tensor, the index of the cheapest to read.");

  bind_interpose(m);

  m.def("read_routes", [] {
    py::list out;
    for (ReadRoute route : kReadRoutes) {
      py::object options = py::none();
      if (route != ReadRoute::kReference) {
        const LoadOptions o = route_options(route);
        py::dict d;
        d["staged"] = o.staged;
        d["io"] = std::string(io_name(o.io));
        options = d;
      }
      out.append(py::make_tuple(std::string(route_name(route)), options));
    }
    return out;
  }, "Every route bytes can take, as (name, the load options forcing it; None for the reference loader).");

  m.def("serve_by_mapping", [](const py::object& backend, bool host_device, double cached_fraction) {
    const LoadOptions::Backend b = backend.is_none() ? LoadOptions::Backend::kUnspecified
                                                     : parse_backend(str_option("backend", backend));
    return fast::serve_by_mapping(b, host_device, cached_fraction);
  }, py::arg("backend"), py::arg("host_device"), py::arg("cached_fraction"),
     "Whether a handle should map the page cache, as upstream does, rather than read (see fast.h).");

  m.def("cached_fractions", [](const std::vector<PathBytes>& paths) {
    std::vector<double> out;
    py::gil_scoped_release nogil;
    for (const PathBytes& path : paths) {
      const File file = File::open(path);
      out.push_back(fast::CacheMap::file_fraction(file));
    }
    return out;
  }, py::arg("paths"),
     "Of each whole file, the fraction of its pages in the page cache (counted where the kernel can, else "
     "sampled; may be stale at once). Opens "
     "each file and reads nothing: what serve_by_mapping weighs, asked before anything is parsed.");

  m.def("read_ahead_pays", [](std::size_t tensors, std::size_t asked, std::size_t whole_reads,
                              std::size_t partial_reads, bool listed_keys, bool prefetch_asked) {
    return fast::read_ahead_pays({tensors, asked, whole_reads, partial_reads, listed_keys, prefetch_asked});
  }, py::arg("tensors"), py::arg("asked"), py::arg("whole_reads"), py::arg("partial_reads"),
     py::arg("listed_keys"), py::arg("prefetch_asked"),
     "Whether a file handle should read the rest of the file in the background now (see fast.h).");

  py::class_<Loading>(m, "Loading", "A load running in the background (see safeload/_loading.py).")
      .def(py::init([](const py::object& source, const PathBytes& src, const std::string& device,
                       const py::object& request, const py::object& share, const py::kwargs& given) {
             const LoadOptions options = make_options(given);
             const c10::Device dev = parse_device(device);
             std::shared_ptr<const Checkpoint> checkpoint;
             std::vector<PathBytes> files;
             if (py::isinstance<Checkpoint>(source)) {
               checkpoint = source.cast<std::shared_ptr<Checkpoint>>();
             } else {
               files = source.cast<std::vector<PathBytes>>();
             }
             // request: None (every tensor whole) or {name: None | (dim, start, stop)}.
             std::optional<std::vector<std::pair<std::string, TensorRequest>>> wanted;
             if (!request.is_none()) {
               wanted.emplace();
               for (const auto& [name, part] : request.cast<py::dict>()) {
                 TensorRequest t;
                 if (!part.is_none()) {
                   const auto [dim, start, stop] = part.cast<std::tuple<std::int64_t, std::int64_t, std::int64_t>>();
                   t = TensorRequest::range(dim, start, stop);
                 }
                 wanted->emplace_back(py::str(name), t);
               }
             }
             std::size_t part = 0, parts = 1;
             if (!share.is_none()) std::tie(part, parts) = share.cast<std::pair<std::size_t, std::size_t>>();
             py::gil_scoped_release nogil;
             check_device_usable(dev);
             if (!checkpoint) {
               checkpoint = std::make_shared<const Checkpoint>(files.empty() ? Checkpoint::open(src)
                                                                             : Checkpoint::open(files));
             }
             LoadRequest r = wanted ? LoadRequest::of(*checkpoint, *wanted) : LoadRequest{};
             r.part = part;
             r.parts = parts;
             return Loading::start(std::move(checkpoint), dev, options, r);
           }),
           py::arg("files"), py::arg("src"), py::arg("device"), py::arg("request") = py::none(),
           py::arg("share") = py::none(),
           "Starts loading `files` (a list of paths, or a Checkpoint opened before; or, when the list is "
           "empty, the checkpoint `src` names). `request`: None for every tensor whole, or "
           "{name: None (whole) | (dim, start, stop) (a range of one dimension, in torch's sizes)}; "
           "`share`: (part, parts) to read one of `parts` byte-balanced shares of the plan. The other "
           "keyword arguments are the load options, checked here.")
      .def("names", [](const Loading& l) {
        py::list out;
        for (std::size_t i = 0; i < l.size(); ++i) out.append(py::str(l.info(i).name));
        return out;
      }, "Every tensor name, in file order (shard by shard).")
      .def("wait", [](Loading& l, const std::string& name) {
        const std::optional<std::size_t> i = l.find(name);
        if (!i) throw py::key_error(name);
        at::Tensor out;
        wait_interruptibly(l, py::none(), [&](long ms) {
          out = l.wait(*i, ms);
          return out.defined();
        });
        return out;
      }, py::arg("name"), "Waits for one tensor's bytes and returns it.")
      .def("wait_next", [](Loading& l) -> py::object {
        std::optional<std::size_t> next;
        wait_interruptibly(l, py::none(), [&](long ms) {
          next = l.wait_next(ms);
          return next.has_value();
        });
        if (*next == l.size()) return py::none();
        const at::Tensor t = l.wait(*next);
        return py::make_tuple(py::str(l.info(*next).name), t);
      }, "The next tensor to be complete, as (name, tensor), each once; None when all were given.")
      .def("wait_all", [](Loading& l, const py::object& progress) {
        wait_interruptibly(l, progress, [&](long ms) { return l.wait_done(ms); });
        std::vector<std::pair<std::string, at::Tensor>> tensors = [&] {
          py::gil_scoped_release nogil;
          return l.take_all();
        }();
        py::list out;
        for (auto& [name, t] : tensors) out.append(py::make_tuple(py::str(name), std::move(t)));
        return out;
      }, py::arg("progress") = py::none(),
         "Waits for the whole load; returns [(name, tensor)] in file order.")
      .def("cancel", &Loading::cancel)
      .def("release", [](Loading& l) {
        py::gil_scoped_release nogil;
        l.release();
      }, "Cancels, waits for the readers and frees what the load holds.")
      .def("done", [](Loading& l) { return l.wait_done(0); })
      .def("bytes_done", &Loading::bytes_done)
      .def("bytes_total", &Loading::bytes_total)
      .def("report", [](const Loading& l) { return report_to_dict(l.report()); })
      .def("share_pieces", [](const Loading& l, std::size_t part) { return l.share_pieces(part); }, py::arg("part"),
           "The destination bytes share `part` reads, as [(tensor index, offset, length)], runs merged.");
}
