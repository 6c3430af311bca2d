// The torch layer: the only C++ (with the Python binding) that sees libtorch.
// Maps safetensors dtypes and shapes onto torch tensors, allocates
// destinations, parses devices, provides the staging target for device
// memory, and exposes the loaders' C++ API for libtorch users.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/Stream.h>

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "safeload/checkpoint.h"
#include "safeload/header.h"
#include "safeload/options.h"

namespace safeload {

// Name -> tensor, for a whole file or checkpoint.
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

// An uninitialised contiguous tensor for `t` on `device` (torch's allocators
// align data to at least 64 bytes, whatever the file's offsets). Throws
// Error(kOutOfMemory) naming the tensor and its size if it cannot be had.
at::Tensor empty_tensor(const TensorInfo& t, std::string_view path, c10::Device device);

// Parses "cpu", "cuda", "cuda:1", "mps", ... Throws Error(kInvalidArgument)
// for what torch cannot parse, a CPU index other than 0, and "meta" (a load
// that reads no bytes is not a load; upstream rejects it too).
c10::Device parse_device(std::string_view device);

// Throws Error(kInvalidArgument) if `device` is not one parse_device accepts
// or this torch build cannot allocate on it (e.g. "cuda" without a GPU),
// before any file is touched.
void check_device_usable(c10::Device device);

// What a load did, for users and tests to observe rather than guess.
struct LoadReport {
  std::string route;               // "direct" (into host-writable memory) or "staged"
  std::string io;                  // the io option: auto, cached or uncached
  bool bypass = false;             // some reads could bypass the page cache (O_DIRECT)
  std::size_t files = 0;
  std::size_t threads = 0;         // reader threads asked of the executor
  std::uint64_t chunk_bytes = 0;
  std::uint64_t slot_bytes = 0;    // staging or bounce slots (0: none)
  std::size_t slot_count = 0;
  bool prefault = false;           // destination pages populated ahead of the readers
  std::uint64_t ops = 0;           // reads planned
  std::uint64_t ops_uncached = 0;  // of which bypassed the page cache
  std::uint64_t bytes_total = 0;
  std::uint64_t bytes_uncached = 0;
  std::uint64_t bytes_done = 0;
};

class LoadState;  // internal

// A load running in the background. start() validates the options, checks
// every tensor maps onto torch, allocates every destination, and only then
// starts reading, so every argument, format and allocation error is thrown
// by start() with nothing kept. Reads then run on the executor's threads;
// wait() returns a tensor as soon as its bytes are in. Cancel with cancel(),
// LoadOptions::cancel, or by destroying the Loading (which cancels and waits
// for the readers). Methods are thread-safe.
class Loading {
 public:
  // `only` (optional): names of the tensors to load; the others are neither
  // allocated nor read. Throws Error(kInvalidArgument) for a name not in the
  // checkpoint.
  // `ops` (optional): read only these ops (indices into
  // fast::plan_reads(every shard's header, options.chunk_bytes), which must
  // then be given): a share of the bytes, for loads split across processes.
  // Every tensor is still allocated; wait() then serves only tensors the
  // share covers whole, and take_all() returns every tensor once the share
  // is read.
  static std::unique_ptr<Loading> start(Checkpoint checkpoint, c10::Device device,
                                        const LoadOptions& options = {},
                                        const std::vector<std::string>* only = nullptr,
                                        const std::vector<std::size_t>* ops = nullptr);
  // The same over a checkpoint opened once and shared by several loads (its
  // headers are validated once; its files stay open while any load uses it).
  static std::unique_ptr<Loading> start(std::shared_ptr<const Checkpoint> checkpoint, c10::Device device,
                                        const LoadOptions& options = {},
                                        const std::vector<std::string>* only = nullptr,
                                        const std::vector<std::size_t>* ops = nullptr);
  ~Loading();
  Loading(const Loading&) = delete;
  Loading& operator=(const Loading&) = delete;

  // Every tensor of the checkpoint in file order (shard by shard, data
  // order within a shard), loaded or not.
  std::size_t size() const;
  const TensorInfo& info(std::size_t i) const;
  // Index of `name`, or nullopt.
  std::optional<std::size_t> find(std::string_view name) const;
  bool loaded(std::size_t i) const;  // part of this load (see `only`)

  // Waits up to `timeout_ms` (negative: no limit) for tensor i; returns it,
  // or an undefined tensor on timeout. Throws the load's error if the load
  // failed or was cancelled before the tensor was complete, and
  // Error(kInvalidArgument) for a tensor not part of this load.
  at::Tensor wait(std::size_t i, long timeout_ms = -1);
  // Waits up to `timeout_ms` for the whole load; true once it has ended.
  // Does not throw; error() says how it ended.
  bool wait_done(long timeout_ms = -1);
  // After wait_done: every loaded tensor in file order; throws the load's
  // error if it failed.
  std::vector<std::pair<std::string, at::Tensor>> take_all();

  void cancel() noexcept;
  // Cancels, waits for the readers, and frees every tensor and buffer this
  // load holds (tensors already handed out stay valid). wait() and take_all()
  // throw Error(kCancelled) after it.
  void release() noexcept;
  std::uint64_t bytes_done() const;
  std::uint64_t bytes_total() const;
  LoadReport report() const;

 private:
  explicit Loading(std::unique_ptr<LoadState> state);
  void join();  // waits for the driver thread, once, whoever asks
  std::unique_ptr<LoadState> state_;
  std::mutex join_mutex_;
  std::thread driver_;
};

// The fast loader: validates the header, allocates every destination tensor
// on `device` up front, then reads in parallel with positional reads. Returns
// exactly the bytes the reference loader returns. On any error nothing is
// returned and everything allocated is released. Thread-safe.
TensorMap load_file(const std::string& path, c10::Device device = c10::Device("cpu"),
                    const LoadOptions& options = {});

// Every tensor of a checkpoint (see Checkpoint::open for what `src` may
// be), in one load: one plan over every shard, one executor, one staging
// ring. Same guarantees as load_file.
TensorMap load_checkpoint(const std::string& src, c10::Device device = c10::Device("cpu"),
                          const LoadOptions& options = {});

namespace reference {
// Loads every tensor of a safetensors file onto `device`: each is read into a
// CPU tensor by the reference loader, then moved with Tensor::to.
TensorMap load_file(const std::string& path, c10::Device device = c10::Device("cpu"));
}  // namespace reference

}  // namespace safeload
