// The loaders' entry points: resolve and validate a checkpoint, allocate
// every destination first, let the policy decide how to read, then hand the
// byte moving to fast/ (straight into host-writable memory, or through pinned
// staging slots for device memory) on a background thread.
#include <ATen/ATen.h>

#include <algorithm>
#include <optional>
#include <system_error>

#include "internal.h"
#include "safeload/error.h"
#include "safeload/fast.h"
#include "safeload/torch.h"

namespace safeload {
namespace {

// Every shard's page cache residency is sampled over its data section.
bool all_cached(const std::vector<fast::CacheMap>& caches, const Checkpoint& checkpoint) {
  for (std::size_t f = 0; f < caches.size(); ++f) {
    const Header& h = checkpoint.shards()[f].header;
    if (!caches[f].cached(h.data_start(), h.data_length())) return false;
  }
  return true;
}

}  // namespace

using detail::TorchStagedTarget;

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
    if (host_writable) st->host[i] = detail::host_writable_pointer(st->tensors[i], &st->keepalive[i]);
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
    st->slot_owner = detail::slot_memory(st->policy.slot_bytes, st->policy.slot_count, bounce, device);
    st->slots = detail::carve_slots(st->slot_owner, st->policy.slot_bytes, st->policy.slot_count);
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
