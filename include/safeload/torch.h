// The torch layer: the only C++ (with the Python binding) that sees libtorch.
// Maps safetensors dtypes and shapes onto torch tensors, allocates
// destinations, parses devices, provides the staging target for device
// memory, and exposes the loaders' C++ API for libtorch users.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/Stream.h>

#include <unordered_map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "safeload/checkpoint.h"
#include "safeload/header.h"
#include "safeload/options.h"

namespace safeload {

// Tensors by name in file order (shard by shard, data order within a
// shard), as upstream orders one file's: iteration gives (name, tensor)
// pairs in that order; at(name) looks one up.
class TensorMap {
 public:
  using value_type = std::pair<std::string, at::Tensor>;
  using const_iterator = std::vector<value_type>::const_iterator;

  const_iterator begin() const noexcept { return items_.begin(); }
  const_iterator end() const noexcept { return items_.end(); }
  std::size_t size() const noexcept { return items_.size(); }
  bool empty() const noexcept { return items_.empty(); }
  // The tensor `name`; std::out_of_range if there is none.
  const at::Tensor& at(const std::string& name) const;
  std::size_t count(const std::string& name) const { return index_.count(name); }
  // Appends (names are unique in a checkpoint).
  void emplace(std::string name, at::Tensor tensor);

 private:
  std::vector<value_type> items_;
  std::unordered_map<std::string, std::size_t> index_;
};

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

// An uninitialised contiguous tensor for `t` on `device`, of torch_sizes(t),
// or of `sizes` where given (a part of it), data aligned to at least 64 bytes
// whatever the file's offsets. Throws Error(kOutOfMemory) naming the tensor
// and its size if the memory cannot be had.
at::Tensor empty_tensor(const TensorInfo& t, std::string_view path, c10::Device device,
                        const std::vector<std::int64_t>* sizes = nullptr);

// Parses "cpu", "cuda", "cuda:1", "mps", ... Throws Error(kInvalidArgument)
// for what torch cannot parse, a CPU index other than 0, and "meta" (a load
// that reads no bytes is not a load; upstream rejects it too).
c10::Device parse_device(std::string_view device);

// Throws Error(kInvalidArgument) if `device` is not one parse_device accepts
// or this torch build cannot allocate on it (e.g. "cuda" without a GPU),
// before any file is touched.
void check_device_usable(c10::Device device);

// What a load did, for users and tests to observe rather than guess.
// What a load reads of one tensor: nothing, all of it, or the indices
// [start, stop) of dimension `dim` (in torch's sizes: F4 counted in pairs
// along its last dimension), every other dimension whole. The tensor handed
// out then has that dimension's size stop - start.
struct TensorRequest {
  enum class Kind { kSkip, kWhole, kRange } kind = Kind::kWhole;
  std::int64_t dim = 0;
  std::int64_t start = 0;
  std::int64_t stop = 0;

  static TensorRequest skip() { return {Kind::kSkip}; }
  static TensorRequest range(std::int64_t dim, std::int64_t start, std::int64_t stop) {
    return {Kind::kRange, dim, start, stop};
  }
};

// What a load reads: per tensor of the checkpoint in file order (empty: every
// tensor whole), and, for a load split across processes, which share of the
// plan this process reads (part of parts; the plan and its shares are the
// same in every process given the same checkpoint, request and options).
struct LoadRequest {
  std::vector<TensorRequest> tensors;
  std::size_t part = 0;
  std::size_t parts = 1;

  // The named tensors, each read as its TensorRequest says; the others
  // skipped. Error(kInvalidArgument) for a name the checkpoint lacks.
  static LoadRequest of(const Checkpoint& checkpoint,
                        const std::vector<std::pair<std::string, TensorRequest>>& wanted);
  // Only the named tensors, whole.
  static LoadRequest only(const Checkpoint& checkpoint, const std::vector<std::string>& names);
};

struct LoadReport {
  std::string route;               // "host" (into host-writable memory) or "staged"
  std::string io;                  // the io option: auto, cached or uncached
  bool bypass = false;             // some reads could bypass the page cache (O_DIRECT)
  std::size_t files = 0;
  std::size_t threads = 0;         // reader threads asked of the executor
  std::uint64_t chunk_bytes = 0;
  std::uint64_t slot_bytes = 0;    // staging or bounce slots (0: none)
  std::size_t slot_count = 0;
  bool prefault = false;           // destination pages populated ahead of the readers
  bool populate_before_copy = false;  // each reader populated its pages before copying into them
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
  // `request`: what to read (see LoadRequest); by default every tensor whole.
  // Error(kInvalidArgument) for a request that does not fit the checkpoint.
  // Of a share (request.parts > 1) every requested tensor is allocated;
  // wait() serves only the tensors the share covers whole, and take_all()
  // returns every requested tensor once the share is read.
  static std::unique_ptr<Loading> start(Checkpoint checkpoint, c10::Device device,
                                        const LoadOptions& options = {}, const LoadRequest& request = {});
  // The same over a checkpoint opened once and shared by several loads (its
  // headers are validated once; its files stay open while any load uses it).
  static std::unique_ptr<Loading> start(std::shared_ptr<const Checkpoint> checkpoint, c10::Device device,
                                        const LoadOptions& options = {}, const LoadRequest& request = {});
  ~Loading();
  Loading(const Loading&) = delete;
  Loading& operator=(const Loading&) = delete;

  // Every tensor of the checkpoint in file order (shard by shard, data
  // order within a shard), requested or not.
  std::size_t size() const;
  const TensorInfo& info(std::size_t i) const;
  // Index of `name`, or nullopt.
  std::optional<std::size_t> find(std::string_view name) const;
  // Whether tensor i is part of this load's request.
  bool wanted(std::size_t i) const;
  // The pieces of destination bytes share `part` of `parts` of this load's
  // plan reads, as (tensor, offset, length), runs of one tensor merged: what
  // the process reading that share has and the others lack.
  std::vector<std::tuple<std::size_t, std::uint64_t, std::uint64_t>> share_pieces(std::size_t part) const;

  // Waits up to `timeout_ms` (negative: no limit) for tensor i; returns it,
  // or an undefined tensor on timeout. Throws the load's error if the load
  // failed or was cancelled before the tensor was complete, and
  // Error(kInvalidArgument) for a tensor not part of this load.
  at::Tensor wait(std::size_t i, long timeout_ms = -1);
  // The next requested tensor to be complete, each once, in the order they
  // became complete (tensors of no bytes first, in file order): its index,
  // size() once every one has been returned, nullopt after `timeout_ms`.
  // Throws the load's error if it failed first. Not for a share of a load.
  std::optional<std::size_t> wait_next(long timeout_ms = -1);
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
