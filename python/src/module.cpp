// The private extension module safeload._C. Deliberately thin: argument
// conversion, GIL release around all I/O, and mapping safeload::Error onto
// the Python exceptions defined in safeload/_errors.py. The user-facing API
// lives in the pure-Python package.
#include <torch/csrc/utils/pybind.h>

#include "safeload/checkpoint.h"
#include "safeload/error.h"
#include "safeload/file.h"
#include "safeload/header.h"
#include "safeload/fast.h"
#include "safeload/options.h"
#include "safeload/torch.h"

#include <optional>

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

LoadOptions make_options(const py::handle& threads, const py::handle& chunk_bytes, const py::handle& staging_bytes,
                         bool staged, const std::string& io, bool prefault = true) {
  LoadOptions options;
  options.threads = static_cast<std::size_t>(std::min<std::uint64_t>(size_option("threads", threads), SIZE_MAX));
  options.chunk_bytes = size_option("chunk_bytes", chunk_bytes);
  options.staging_bytes = staging_bytes.is_none() ? kDefaultStagingBytes : size_option("staging_bytes", staging_bytes);
  options.staged = staged;
  options.io = parse_io(io);
  options.prefault = prefault;
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

  m.def("check_options", [](const py::object& threads, const py::object& chunk_bytes,
                            const py::object& staging_bytes, bool staged, const std::string& io,
                            const std::string& device) {
    make_options(threads, chunk_bytes, staging_bytes, staged, io);
    check_device_usable(parse_device(device));
  }, py::arg("threads"), py::arg("chunk_bytes"), py::arg("staging_bytes"), py::arg("staged"), py::arg("io"),
     py::arg("device"), "Validates load options and a device as every load does; raises like a load.");

  m.def("plan", [](const std::vector<PathBytes>& files, const py::object& chunk_bytes) {
    LoadOptions options;
    options.chunk_bytes = size_option("chunk_bytes", chunk_bytes);
    SAFELOAD_CHECK(options.chunk_bytes != 0, ErrorCode::kInvalidArgument, "plan needs an explicit chunk_bytes");
    validate(options);
    fast::Plan plan;
    {
      py::gil_scoped_release nogil;
      const Checkpoint checkpoint = Checkpoint::open(files);
      std::vector<const Header*> headers;
      for (const Shard& s : checkpoint.shards()) headers.push_back(&s.header);
      plan = fast::plan_reads(headers, options.chunk_bytes);
    }
    py::list ops;
    for (const fast::ReadOp& op : plan.ops) {
      py::list segments;
      for (std::size_t s = 0; s < op.segment_count; ++s) {
        const fast::Segment& seg = plan.segments[op.first_segment + s];
        segments.append(py::make_tuple(seg.tensor, seg.tensor_offset, seg.length));
      }
      ops.append(py::make_tuple(op.file, op.file_offset, op.length, segments));
    }
    return ops;
  }, py::arg("files"), py::arg("chunk_bytes"),
     "The read plan over every shard: [(file, file_offset, length, [(tensor, tensor_offset, length)])], "
     "tensors numbered in file order, as Loading(ops=...) reads it.");

  m.def("read_ranges", [](const PathBytes& path, const std::vector<std::uint64_t>& offsets,
                          const std::vector<std::uint64_t>& lengths, at::Tensor dst,
                          const std::vector<std::uint64_t>& dst_offsets, const py::object& threads) {
    SAFELOAD_CHECK(offsets.size() == lengths.size() && offsets.size() == dst_offsets.size(),
                   ErrorCode::kInvalidArgument, "read_ranges needs as many offsets, lengths and destinations");
    SAFELOAD_CHECK(dst.device().is_cpu() && dst.is_contiguous(), ErrorCode::kInvalidArgument,
                   "read_ranges reads into a contiguous CPU tensor");
    const std::uint64_t capacity = dst.nbytes();
    std::vector<fast::Range> ranges;
    auto* base = static_cast<char*>(dst.mutable_data_ptr());
    for (std::size_t i = 0; i < offsets.size(); ++i) {
      SAFELOAD_CHECK(dst_offsets[i] <= capacity && lengths[i] <= capacity - dst_offsets[i], ErrorCode::kInvalidArgument,
                     "range " + std::to_string(i) + " does not fit the destination");
      ranges.push_back(fast::Range{offsets[i], lengths[i], base + dst_offsets[i]});
    }
    LoadOptions options;
    options.threads = static_cast<std::size_t>(size_option("threads", threads));
    validate(options);
    py::gil_scoped_release nogil;
    const File file = File::open(path);
    for (const fast::Range& r : ranges) {
      SAFELOAD_CHECK(r.file_offset <= file.size() && r.length <= file.size() - r.file_offset, ErrorCode::kInvalidArgument,
                     "range at " + std::to_string(r.file_offset) + " of " + std::to_string(r.length) +
                         " bytes runs past the end of '" + path + "'");
    }
    fast::read_ranges(file, ranges, *fast::make_executor(options.threads));
  }, py::arg("path"), py::arg("offsets"), py::arg("lengths"), py::arg("dst"), py::arg("dst_offsets"),
     py::arg("threads") = py::none(),
     "Reads byte ranges of a file into a CPU tensor's bytes, in parallel (for slices and shares).");

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
      }, "Every tensor name in file order (shard by shard).");

  py::class_<Loading>(m, "Loading", "A load running in the background (see safeload/_loading.py).")
      .def(py::init([](const py::object& source, const PathBytes& src, const std::string& device,
                       const py::object& threads, const py::object& chunk_bytes, const py::object& staging_bytes,
                       bool staged, const std::string& io, std::optional<std::vector<std::string>> only,
                       std::optional<std::vector<std::size_t>> ops, bool prefault) {
             const LoadOptions options = make_options(threads, chunk_bytes, staging_bytes, staged, io, prefault);
             const c10::Device dev = parse_device(device);
             std::shared_ptr<const Checkpoint> checkpoint;
             std::vector<PathBytes> files;
             if (py::isinstance<Checkpoint>(source)) {
               checkpoint = source.cast<std::shared_ptr<Checkpoint>>();
             } else {
               files = source.cast<std::vector<PathBytes>>();
             }
             py::gil_scoped_release nogil;
             check_device_usable(dev);
             if (!checkpoint) {
               checkpoint = std::make_shared<const Checkpoint>(files.empty() ? Checkpoint::open(src)
                                                                             : Checkpoint::open(files));
             }
             return Loading::start(std::move(checkpoint), dev, options, only ? &*only : nullptr,
                                   ops ? &*ops : nullptr);
           }),
           py::arg("files"), py::arg("src"), py::arg("device"), py::arg("threads"), py::arg("chunk_bytes"),
           py::arg("staging_bytes"), py::arg("staged"), py::arg("io"), py::arg("only"), py::arg("ops") = py::none(), py::arg("prefault") = true,
           "Starts loading `files` (a list of paths, or a Checkpoint opened before; or, when the list is "
           "empty, the checkpoint `src` names).")
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
      .def("report", [](const Loading& l) { return report_to_dict(l.report()); });
}
