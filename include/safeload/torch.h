// The torch adapter: the only place (with the Python binding) that sees
// libtorch. Maps safetensors dtypes and shapes onto torch tensors and exposes
// the C++ API for libtorch users.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <map>
#include <string>
#include <string_view>

#include "safeload/header.h"

namespace safeload {

// Name -> tensor, for a whole file.
using TensorMap = std::map<std::string, at::Tensor>;

// torch's dtype for tensor `t` of file `path`. Throws Error(kUnsupportedDtype)
// naming both when torch has no equivalent (F6_E2M3, F6_E3M2).
c10::ScalarType torch_dtype(const TensorInfo& t, std::string_view path);

// The sizes torch uses for `t`: its shape, except for F4, which torch stores
// as float4_e2m1fn_x2 (two values per byte), so the last dimension is halved.
// Throws Error(kUnsupportedDtype) for an F4 tensor whose last dimension is odd
// (or a 0-d F4), which that packing cannot represent.
std::vector<std::int64_t> torch_sizes(const TensorInfo& t, std::string_view path);

// Checks every tensor of `header` maps onto torch, before anything is
// allocated or read (no partial results). Throws as torch_dtype/torch_sizes.
void check_torch_compatible(const Header& header, std::string_view path);

// An uninitialised contiguous tensor for `t` (torch's allocators align data to
// at least 64 bytes, whatever the file's offsets).
at::Tensor empty_tensor(const TensorInfo& t, std::string_view path, c10::Device device);

// Parses "cpu", "cuda", "cuda:1", "mps", ... Throws Error(kInvalidArgument).
c10::Device parse_device(std::string_view device);

// Throws Error(kInvalidArgument) if this torch build cannot allocate on
// `device` (e.g. "cuda" without a GPU), before any file is touched.
void check_device_usable(c10::Device device);

// Options of the fast loader. Zero means "choose for me".
struct LoadOptions {
  std::size_t threads = 0;         // reader threads (default: one per core, at least 2, at most 16;
                                   // twice that when reads bypass the page cache)
  std::uint64_t chunk_bytes = 0;   // bytes per read (default: a few MiB, see fast.h)
  std::uint64_t staging_bytes = 256ull << 20;  // host staging bound for device targets
  // How bytes reach the destination. kAuto reads straight into host-writable
  // destinations (CPU; MPS shared storage where torch exposes a host alias)
  // and stages everything else. kStaged forces staging, on CPU too (tests).
  enum class Path { kAuto, kStaged } path = Path::kAuto;
  // Whether reads go through the page cache. kAuto: for host-writable
  // destinations, bytes the page cache holds are copied from it and the rest
  // are read with O_DIRECT into bounce slots, then copied (no page-cache
  // pages are allocated and filled only to be copied once); device targets
  // read through the page cache. kCached: always through it. kUncached:
  // always bypass it, device targets included. Where O_DIRECT is not
  // supported (tmpfs, macOS), the page cache is used.
  enum class Io { kAuto, kCached, kUncached } io = Io::kAuto;
};

// The fast loader: validates the header, allocates every destination tensor
// on `device` up front, then reads in parallel with positional reads. Returns
// exactly the bytes the reference loader returns. On any error nothing is
// returned and everything allocated is released. Thread-safe.
TensorMap load_file(const std::string& path, c10::Device device = c10::Device("cpu"),
                    const LoadOptions& options = {});

namespace reference {
// Loads every tensor of a safetensors file onto `device`: each is read into a
// CPU tensor by the reference loader, then moved with Tensor::to.
TensorMap load_file(const std::string& path, c10::Device device = c10::Device("cpu"));
}  // namespace reference

}  // namespace safeload
