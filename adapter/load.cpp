// The loaders' torch side: resolve and validate a checkpoint, allocate every
// destination first, let the policy decide how to read, then hand the byte
// moving to fast/ (straight into host-writable memory, or through pinned
// staging slots for device memory) on a background thread.
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/Event.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <system_error>

#include "safeload/error.h"
#include "safeload/fast.h"
#include "safeload/torch.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

#if defined(__APPLE__) && __has_include(<ATen/mps/MPSAllocatorInterface.h>)
#include <ATen/mps/MPSAllocatorInterface.h>
#include <torch/version.h>
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 13)
#define SAFELOAD_MPS_HOST_ALIAS 1
#endif
#endif

namespace safeload {
namespace {

// A host pointer through which `t`'s bytes can be written, or nullptr.
// `keepalive` holds whatever keeps that pointer valid.
void* host_writable_pointer(const at::Tensor& t, c10::Storage* keepalive) {
  if (t.device().is_cpu()) return t.mutable_data_ptr();
#if defined(SAFELOAD_MPS_HOST_ALIAS)
  // Apple silicon: MPS storage in a shared (unified-memory) Metal buffer has a
  // CPU alias, so the CPU path's direct reads apply unchanged. UNTESTED in CI:
  // no Apple hardware; these lines are the whole MPS-specific code.
  if (t.device().is_mps()) {
    at::mps::IMPSAllocator* allocator = at::mps::getIMPSAllocator();
    if (allocator->isSharedBuffer(t.storage().data())) {
      *keepalive = allocator->getHostAliasStorage(t.storage());
      return static_cast<char*>(keepalive->mutable_data()) + t.storage_offset() * t.itemsize();
    }
  }
#endif
  (void)keepalive;
  return nullptr;
}

#if defined(__linux__)
// Bounce slots are backed by transparent huge pages where the kernel allows:
// some virtual disks take O_DIRECT reads into 4 KiB pages several times
// slower than into 2 MiB ones (measured: 5x). Destinations are not: fresh
// huge pages cost more to fault in than they save where the host backs them
// slowly (see bench/README.md), and destinations are touched only once.
constexpr std::uint64_t kHugePage = 2ull << 20;

// `length` bytes (a multiple of 4 KiB) of fresh memory starting on a huge
// page boundary, with huge pages advised; nullptr if the mapping fails.
void* map_huge_pages(std::uint64_t length) {
  // Over-map by one huge page so the start can be aligned, then unmap the
  // slack on both sides.
  void* raw = ::mmap(nullptr, length + kHugePage, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const auto base = reinterpret_cast<std::uintptr_t>(raw);
  const std::uintptr_t aligned = (base + kHugePage - 1) / kHugePage * kHugePage;
  if (aligned > base) ::munmap(raw, aligned - base);
  const std::uintptr_t tail = aligned + length;
  if (base + length + kHugePage > tail) ::munmap(reinterpret_cast<void*>(tail), base + length + kHugePage - tail);
  void* data = reinterpret_cast<void*>(aligned);
  ::madvise(data, length, MADV_HUGEPAGE);  // advice only: 4 KiB pages still work
  return data;
}

// A CPU tensor of `sizes` and `dtype` over map_huge_pages memory, or an
// undefined tensor if the mapping fails.
at::Tensor huge_page_tensor(std::uint64_t nbytes, at::IntArrayRef sizes, at::ScalarType dtype) {
  // Only the start is 2 MiB aligned; the length is rounded to 4 KiB, so a
  // partial last huge page falls back to small pages instead of wasting memory.
  const std::uint64_t length = (nbytes + 4095) / 4096 * 4096;
  void* data = map_huge_pages(length);
  if (data == nullptr) return at::Tensor();
  return at::from_blob(
      data, sizes, [length](void* p) { ::munmap(p, length); },
      at::TensorOptions().dtype(dtype).device(c10::Device("cpu")));
}

#endif

// Copies out of staging slots into device tensors with non-blocking copies on
// one stream (the caller's current stream when the load started); one event
// per slot says when it is free again.
class TorchStagedTarget final : public fast::StagedTarget {
 public:
  TorchStagedTarget(const std::vector<at::Tensor>& tensors, const at::Tensor& staging,
                    std::size_t slot_count, c10::Device device)
      : staging_(staging), device_(device), stream_(c10::impl::VirtualGuardImpl(device.type()).getStream(device)) {
    for (const at::Tensor& t : tensors) {
      // A flat byte view of each destination, whatever its dtype.
      bytes_.push_back(!t.defined() || t.nbytes() == 0
                           ? at::Tensor()
                           : at::from_blob(t.mutable_data_ptr(), {static_cast<std::int64_t>(t.nbytes())},
                                           at::TensorOptions().dtype(at::kByte).device(device)));
    }
    if (!device.is_cpu()) {
      for (std::size_t i = 0; i < slot_count; ++i) events_.emplace_back(device.type());
    }
  }

  void copy_from_slot(std::size_t slot, const fast::Plan& plan, const fast::ReadOp& op,
                      const void* src) override {
    c10::StreamGuard guard(stream_);
    std::int64_t src_offset = static_cast<const std::uint8_t*>(src) - staging_.const_data_ptr<std::uint8_t>();
    for (std::size_t s = 0; s < op.segment_count; ++s) {
      const fast::Segment& seg = plan.segments[op.first_segment + s];
      const auto length = static_cast<std::int64_t>(seg.length);
      if (device_.is_cpu()) {
        // Host to host: a plain copy. Tensor::copy_ would fan out on torch's
        // intra-op thread pool from inside our readers (oversubscription, and
        // an abort where that pool cannot start its threads).
        std::memcpy(static_cast<std::uint8_t*>(bytes_[seg.tensor].mutable_data_ptr()) + seg.tensor_offset,
                    staging_.const_data_ptr<std::uint8_t>() + src_offset, seg.length);
      } else {
        bytes_[seg.tensor]
            .narrow(0, static_cast<std::int64_t>(seg.tensor_offset), length)
            .copy_(staging_.narrow(0, src_offset, length), /*non_blocking=*/true);
      }
      src_offset += length;
    }
    if (!events_.empty()) events_[slot].record(stream_);
  }

  void wait_slot(std::size_t slot) override {
    if (!events_.empty()) events_[slot].synchronize();
  }

  // Every copy issued so far has finished.
  void synchronize() const {
    if (!device_.is_cpu()) stream_.synchronize();
  }

 private:
  at::Tensor staging_;
  c10::Device device_;
  c10::Stream stream_;
  std::vector<at::Tensor> bytes_;
  std::vector<c10::Event> events_;
};

// Staging memory: pinned where the device's host allocator can pin, so that
// copies run asynchronously; pageable otherwise (copies are then synchronous,
// which is still correct).
at::Tensor allocate_staging(std::uint64_t bytes, c10::Device device) {
  const auto options = at::TensorOptions().dtype(at::kByte);
  try {
    if (device.is_cuda()) {
      try {
        return at::empty({static_cast<std::int64_t>(bytes)}, options.pinned_memory(true));
      } catch (const c10::OutOfMemoryError&) {
        throw;
      } catch (const c10::Error&) {
        // No pinning allocator in this build; fall through to pageable memory.
      }
    }
    return at::empty({static_cast<std::int64_t>(bytes)}, options);
  } catch (const c10::Error& e) {
    throw Error(ErrorCode::kOutOfMemory, "cannot allocate " + std::to_string(bytes) +
                                             " bytes of staging memory: " + e.what_without_backtrace());
  }
}

// `count` consecutive slots of `slot_bytes` (a multiple of kDirectIoAlign)
// from the first kDirectIoAlign boundary of `owner`, which has room for them.
std::vector<void*> carve_slots(const at::Tensor& owner, std::uint64_t slot_bytes, std::size_t count) {
  const auto base = reinterpret_cast<std::uintptr_t>(owner.const_data_ptr<std::uint8_t>());
  const std::uintptr_t aligned = (base + kDirectIoAlign - 1) / kDirectIoAlign * kDirectIoAlign;
  std::vector<void*> slots;
  for (std::size_t i = 0; i < count; ++i) slots.push_back(reinterpret_cast<void*>(aligned + i * slot_bytes));
  return slots;
}

// Host memory for `count` slots of `slot_bytes`: huge pages for bounce slots
// on Linux (see map_huge_pages), torch's allocator (pinned for CUDA) otherwise.
at::Tensor slot_memory(std::uint64_t slot_bytes, std::size_t count, bool bounce, c10::Device device) {
  const std::uint64_t bytes = slot_bytes * count + kDirectIoAlign;  // bounded by staging_bytes + one slot
  at::Tensor owner;
#if defined(__linux__)
  if (bounce) owner = huge_page_tensor(bytes, {static_cast<std::int64_t>(bytes)}, at::kByte);
#endif
  if (!owner.defined()) owner = allocate_staging(bytes, bounce ? c10::Device("cpu") : device);
  return owner;
}

// Every shard's page cache residency is sampled over its data section.
bool all_cached(const std::vector<fast::CacheMap>& caches, const Checkpoint& checkpoint) {
  for (std::size_t f = 0; f < caches.size(); ++f) {
    const Header& h = checkpoint.shards()[f].header;
    if (!caches[f].cached(h.data_start(), h.data_length())) return false;
  }
  return true;
}

}  // namespace

// Everything one load owns; the driver thread and waiters share it.
class LoadState {
 public:
  std::shared_ptr<const Checkpoint> shared;  // may be shared by several loads
  const Checkpoint& checkpoint;
  c10::Device device;
  LoadOptions options;
  std::vector<const TensorInfo*> infos;   // every tensor, file order
  std::vector<std::size_t> first;         // index in `infos` of each shard's first tensor
  std::vector<std::string_view> paths;    // the shard of each tensor
  std::vector<bool> wanted;
  std::vector<at::Tensor> tensors;        // undefined where not wanted
  std::vector<c10::Storage> keepalive;
  std::vector<void*> host;
  std::vector<File> uncached;             // per shard, not open where not bypassing
  std::vector<fast::CacheMap> caches;
  std::vector<fast::Source> sources;
  fast::ReadPolicy policy;
  fast::Plan plan;
  at::Tensor slot_owner;
  std::vector<void*> slots;
  std::unique_ptr<TorchStagedTarget> target;
  std::unique_ptr<fast::Executor> executor;
  std::unique_ptr<fast::LoadControl> control;

  LoadState(std::shared_ptr<const Checkpoint> c, c10::Device d, LoadOptions o)
      : shared(std::move(c)), checkpoint(*shared), device(d), options(std::move(o)) {}

  // Index of tensor `name` in `infos`: each shard's header looks it up by name.
  std::optional<std::size_t> find(std::string_view name) const {
    for (std::size_t s = 0; s < checkpoint.shards().size(); ++s) {
      const Header& h = checkpoint.shards()[s].header;
      if (const TensorInfo* t = h.find(name)) return first[s] + static_cast<std::size_t>(t - h.tensors().data());
    }
    return std::nullopt;
  }

  void run() noexcept {
    std::exception_ptr error;
    try {
      if (policy.route == fast::ReadPolicy::Route::kDirect) {
        fast::read_host(sources, plan, host, slots, *executor, control.get(), policy.prefault);
      } else {
        fast::read_staged(sources, plan, slots, *target, *executor, control.get());
      }
    } catch (...) {
      error = std::current_exception();
    }
    control->finish(error);
  }
};

std::unique_ptr<Loading> Loading::start(Checkpoint checkpoint, c10::Device device, const LoadOptions& options,
                                        const std::vector<std::string>* only,
                                        const std::vector<std::size_t>* ops) {
  return start(std::make_shared<const Checkpoint>(std::move(checkpoint)), device, options, only, ops);
}

std::unique_ptr<Loading> Loading::start(std::shared_ptr<const Checkpoint> checkpoint, c10::Device device,
                                        const LoadOptions& options,
                                        const std::vector<std::string>* only,
                                        const std::vector<std::size_t>* ops) {
  validate(options);
  check_device_usable(device);
  SAFELOAD_INTERNAL_ASSERT(checkpoint != nullptr, "a load needs a checkpoint");
  auto st = std::make_unique<LoadState>(std::move(checkpoint), device, options);
  const Checkpoint& cp = st->checkpoint;

  std::vector<const Header*> headers;
  for (const Shard& shard : cp.shards()) {
    check_torch_compatible(shard.header, shard.file.path());
    headers.push_back(&shard.header);
    st->first.push_back(st->infos.size());
    for (const TensorInfo& t : shard.header.tensors()) {
      st->infos.push_back(&t);
      st->paths.push_back(shard.file.path());
    }
  }
  st->wanted.assign(st->infos.size(), only == nullptr);
  if (only) {
    for (const std::string& name : *only) {
      const std::optional<std::size_t> found = st->find(name);
      SAFELOAD_CHECK(found.has_value(), ErrorCode::kInvalidArgument, "no tensor named '" + name + "' in the checkpoint");
      st->wanted[*found] = true;
    }
  }

  // Everything is allocated before the first read.
  st->tensors.resize(st->infos.size());
  st->host.assign(st->infos.size(), nullptr);
  st->keepalive.resize(st->infos.size());
  bool host_writable = true;
  for (std::size_t i = 0; i < st->infos.size(); ++i) {
    if (!st->wanted[i]) continue;
    st->tensors[i] = empty_tensor(*st->infos[i], st->paths[i], device);
    if (st->tensors[i].nbytes() == 0) continue;
    if (host_writable) st->host[i] = host_writable_pointer(st->tensors[i], &st->keepalive[i]);
    host_writable = host_writable && st->host[i] != nullptr;
  }

  fast::PolicyInput in;
  in.io = options.io;
  in.threads = options.threads;
  in.chunk_bytes = options.chunk_bytes;
  in.staging_bytes = options.staging_bytes;
  in.staged = options.staged;
  in.cores = fast::hardware_cores();
  in.host_writable = host_writable;
  in.prefault = options.prefault;
  std::uint64_t data_bytes = 0;
  for (std::size_t i = 0; i < st->infos.size(); ++i) data_bytes += st->wanted[i] ? st->infos[i]->nbytes() : 0;
  in.data_bytes = data_bytes;
  // O_DIRECT views and residency maps, where bypassing is possible at all.
  const bool direct_route = host_writable && !options.staged;
  const bool may_bypass = options.io == LoadOptions::Io::kUncached ||
                          (options.io == LoadOptions::Io::kAuto && direct_route);
  in.direct_io = may_bypass;
  for (const Shard& shard : cp.shards()) {
    st->uncached.push_back(may_bypass ? File::open_uncached(shard.file) : File());
    in.direct_io = in.direct_io && st->uncached.back().is_open();
    st->caches.push_back(may_bypass && options.io == LoadOptions::Io::kAuto ? fast::CacheMap::of(shard.file)
                                                                            : fast::CacheMap::uniform(
                                                                                  options.io != LoadOptions::Io::kUncached));
  }
  in.all_cached = all_cached(st->caches, cp);
  st->policy = fast::decide_policy(in);

  for (std::size_t f = 0; f < cp.shards().size(); ++f) {
    st->sources.push_back(fast::Source{&cp.shards()[f].file, st->policy.bypass ? &st->uncached[f] : nullptr,
                                       st->policy.check_cache ? &st->caches[f] : nullptr});
  }
  st->plan = fast::plan_reads(headers, st->policy.chunk_bytes, only ? &st->wanted : nullptr);
  if (ops) {
    SAFELOAD_CHECK(options.chunk_bytes != 0 && !only, ErrorCode::kInvalidArgument,
                   "a share of a plan's reads needs an explicit chunk_bytes and every tensor");
    std::vector<fast::ReadOp> share;
    std::uint64_t bytes = 0;
    for (std::size_t k : *ops) {
      SAFELOAD_CHECK(k < st->plan.ops.size(), ErrorCode::kInvalidArgument,
                     "read " + std::to_string(k) + " is not in the plan of " + std::to_string(st->plan.ops.size()));
      share.push_back(st->plan.ops[k]);
      bytes += share.back().length;
    }
    st->plan.ops = std::move(share);
    st->plan.total_bytes = bytes;
  }
  if (st->policy.slot_count > 0) {
    const bool bounce = st->policy.route == fast::ReadPolicy::Route::kDirect;
    st->slot_owner = slot_memory(st->policy.slot_bytes, st->policy.slot_count, bounce, device);
    st->slots = carve_slots(st->slot_owner, st->policy.slot_bytes, st->policy.slot_count);
  }
  if (st->policy.route == fast::ReadPolicy::Route::kStaged) {
    st->target = std::make_unique<TorchStagedTarget>(st->tensors, st->slot_owner, st->slots.size(), device);
  }
  st->executor = fast::make_executor(st->policy.threads);
  st->control = std::make_unique<fast::LoadControl>(st->plan, options.cancel);

  std::unique_ptr<Loading> loading(new Loading(std::move(st)));
  LoadState* state = loading->state_.get();
  try {
    loading->driver_ = std::thread([state] { state->run(); });
  } catch (const std::system_error&) {
    state->run();  // no thread to be had: read in the caller's thread instead
  }
  return loading;
}

Loading::Loading(std::unique_ptr<LoadState> state) : state_(std::move(state)) {}

Loading::~Loading() {
  cancel();
  join();
}

void Loading::join() {
  std::lock_guard<std::mutex> lock(join_mutex_);
  if (driver_.joinable()) driver_.join();
}

std::size_t Loading::size() const { return state_->infos.size(); }
const TensorInfo& Loading::info(std::size_t i) const { return *state_->infos.at(i); }
bool Loading::loaded(std::size_t i) const { return state_->wanted.at(i); }

std::optional<std::size_t> Loading::find(std::string_view name) const { return state_->find(name); }

at::Tensor Loading::wait(std::size_t i, long timeout_ms) {
  SAFELOAD_CHECK(i < size() && state_->wanted[i], ErrorCode::kInvalidArgument,
                 "tensor " + std::to_string(i) + " is not part of this load");
  if (!state_->control->wait_tensor(i, timeout_ms)) {
    SAFELOAD_CHECK(!state_->control->finished(), ErrorCode::kInvalidArgument,
                   "tensor '" + state_->infos[i]->name + "' is not read whole by this share of the load");
    return at::Tensor();
  }
  if (state_->target) state_->target->synchronize();  // its copies were only issued
  // Nothing of a failed load is handed out, even a tensor that was complete.
  if (std::exception_ptr error = state_->control->error()) std::rethrow_exception(error);
  return state_->tensors[i];
}

bool Loading::wait_done(long timeout_ms) {
  if (timeout_ms < 0) {
    while (!state_->control->wait_finished(1000)) {}
    return true;
  }
  return state_->control->wait_finished(timeout_ms);
}

std::vector<std::pair<std::string, at::Tensor>> Loading::take_all() {
  wait_done();
  join();
  if (std::exception_ptr error = state_->control->error()) {
    release();
    std::rethrow_exception(error);
  }
  if (state_->target) state_->target->synchronize();
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (std::size_t i = 0; i < size(); ++i) {
    if (state_->wanted[i]) out.emplace_back(state_->infos[i]->name, state_->tensors[i]);
  }
  return out;
}

void Loading::cancel() noexcept { state_->control->cancel(); }

void Loading::release() noexcept {
  cancel();
  join();
  std::lock_guard<std::mutex> lock(join_mutex_);  // one release at a time
  if (!state_->control->error()) {
    state_->control->finish(std::make_exception_ptr(Error(ErrorCode::kCancelled, "the load was released")));
  }
  state_->target.reset();
  state_->tensors.assign(state_->tensors.size(), at::Tensor());
  state_->keepalive.assign(state_->keepalive.size(), c10::Storage());
  state_->slot_owner = at::Tensor();
  state_->slots.clear();
}
std::uint64_t Loading::bytes_done() const { return state_->control->bytes_done(); }
std::uint64_t Loading::bytes_total() const { return state_->plan.total_bytes; }

LoadReport Loading::report() const {
  const fast::ReadPolicy& p = state_->policy;
  LoadReport r;
  r.route = p.route == fast::ReadPolicy::Route::kDirect ? "direct" : "staged";
  r.io = std::string(io_name(state_->options.io));
  r.bypass = p.bypass;
  r.files = state_->checkpoint.shards().size();
  r.threads = p.threads;
  r.chunk_bytes = p.chunk_bytes;
  r.slot_bytes = p.slot_bytes;
  r.slot_count = p.slot_count;
  r.prefault = p.prefault;
  r.ops = state_->plan.ops.size();
  r.ops_uncached = state_->control->ops_uncached();
  r.bytes_total = state_->plan.total_bytes;
  r.bytes_uncached = state_->control->bytes_uncached();
  r.bytes_done = state_->control->bytes_done();
  return r;
}

namespace {
TensorMap load_all(Checkpoint checkpoint, c10::Device device, const LoadOptions& options) {
  std::unique_ptr<Loading> loading = Loading::start(std::move(checkpoint), device, options);
  TensorMap out;
  for (auto& [name, tensor] : loading->take_all()) out.emplace(std::move(name), std::move(tensor));
  return out;
}
}  // namespace

TensorMap load_file(const std::string& path, c10::Device device, const LoadOptions& options) {
  validate(options);
  check_device_usable(device);
  return load_all(Checkpoint::open(std::vector<std::string>{path}), device, options);
}

TensorMap load_checkpoint(const std::string& src, c10::Device device, const LoadOptions& options) {
  validate(options);
  check_device_usable(device);
  return load_all(Checkpoint::open(src), device, options);
}

}  // namespace safeload
