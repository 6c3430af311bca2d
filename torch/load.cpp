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
    if (!caches[f].data_cached(checkpoint.shards()[f].header)) return false;
  }
  return true;
}

// Each shard's first tensor index in the checkpoint's file order (shard by
// shard), then the tensor count: one more entry than there are shards.
std::vector<std::size_t> first_indices(const Checkpoint& checkpoint) {
  std::vector<std::size_t> first{0};
  for (const Shard& shard : checkpoint.shards()) first.push_back(first.back() + shard.header.tensors().size());
  return first;
}

// Index of tensor `name` in that order; `first` is first_indices(checkpoint).
std::optional<std::size_t> index_of(const Checkpoint& checkpoint, const std::vector<std::size_t>& first,
                                    std::string_view name) {
  for (std::size_t s = 0; s < checkpoint.shards().size(); ++s) {
    const Header& h = checkpoint.shards()[s].header;
    if (const TensorInfo* t = h.find(name)) return first[s] + static_cast<std::size_t>(t - h.tensors().data());
  }
  return std::nullopt;
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
  std::vector<std::size_t> first;         // first_indices(checkpoint): each shard's first index in `infos`, then their count
  std::vector<std::string_view> paths;    // the shard of each tensor
  std::vector<TensorRequest> request;     // per tensor
  std::vector<std::optional<fast::Selection>> selections;  // per tensor, in bytes; nullopt: not read
  std::vector<at::Tensor> tensors;        // undefined where not requested
  std::vector<c10::Storage> keepalive;
  std::vector<void*> host;
  std::vector<File> uncached;             // per shard, not open where not bypassing
  std::vector<fast::CacheMap> caches;
  std::vector<fast::Source> sources;
  fast::ReadPolicy policy;
  fast::Plan whole_plan;                  // every requested byte (the same in every process)
  fast::Plan plan;                        // what this process reads: whole_plan, or its share
  std::size_t parts = 1;
  at::Tensor slot_owner;
  std::vector<void*> slots;
  std::unique_ptr<TorchStagedTarget> target;
  std::unique_ptr<fast::Executor> executor;
  std::unique_ptr<fast::LoadControl> control;
  std::mutex next_mutex;                  // wait_next's place:
  std::size_t next_empty = 0;             // tensors of no bytes passed over, in file order
  std::size_t next_completed = 0;         // completions returned

  LoadState(std::shared_ptr<const Checkpoint> c, c10::Device d, LoadOptions o)
      : shared(std::move(c)), checkpoint(*shared), device(d), options(std::move(o)) {}

  // Index of tensor `name` in `infos`: each shard's header looks it up by name.
  std::optional<std::size_t> find(std::string_view name) const { return index_of(checkpoint, first, name); }

  bool wanted(std::size_t i) const { return request[i].kind != TensorRequest::Kind::kSkip; }

  void run() noexcept {
    std::exception_ptr error;
    try {
      if (policy.route == fast::ReadPolicy::Route::kHost) {
        fast::read_host(sources, plan, host, slots, *executor, control.get(), policy.prefault,
                        policy.populate_before_copy);
      } else {
        fast::read_staged(sources, plan, slots, *target, *executor, control.get());
      }
    } catch (...) {
      error = std::current_exception();
    }
    control->finish(error);
  }
};

namespace {

// Tensor i's request checked against its torch sizes: the bytes it reads, and
// the sizes of the tensor handed out.
std::pair<fast::Selection, std::vector<std::int64_t>> selection_of(const TensorInfo& t, std::string_view path,
                                                                   const TensorRequest& r) {
  std::vector<std::int64_t> sizes = torch_sizes(t, path);
  if (r.kind == TensorRequest::Kind::kWhole) return {fast::Selection::whole(t.nbytes()), sizes};
  const auto rank = static_cast<std::int64_t>(sizes.size());
  SAFELOAD_CHECK(r.dim >= 0 && r.dim < rank, ErrorCode::kInvalidArgument,
                 "tensor '" + t.name + "' has " + std::to_string(rank) + " dimensions; a range along dimension " +
                     std::to_string(r.dim) + " was asked for");
  const std::int64_t extent = sizes[static_cast<std::size_t>(r.dim)];
  SAFELOAD_CHECK(0 <= r.start && r.start <= r.stop && r.stop <= extent, ErrorCode::kInvalidArgument,
                 "tensor '" + t.name + "': the range " + std::to_string(r.start) + ":" + std::to_string(r.stop) +
                     " of dimension " + std::to_string(r.dim) + " is not within its size " + std::to_string(extent));
  sizes[static_cast<std::size_t>(r.dim)] = r.stop - r.start;
  if (t.nbytes() == 0) return {fast::Selection::whole(0), sizes};
  fast::Selection s;
  for (std::int64_t d = 0; d < r.dim; ++d) s.outer *= static_cast<std::uint64_t>(sizes[static_cast<std::size_t>(d)]);
  s.extent = static_cast<std::uint64_t>(extent);
  s.inner_bytes = t.nbytes() / (s.outer * s.extent);  // no size is 0 where there are bytes
  s.start = static_cast<std::uint64_t>(r.start);
  s.stop = static_cast<std::uint64_t>(r.stop);
  return {s, sizes};
}

// What the policy needs to know, gathered in one place: the options, the
// destinations, the machine, and what the files allow (O_DIRECT, residency),
// found out as far as fast::probes_needed says.
fast::PolicyInput policy_input(LoadState& st, bool host_writable) {
  const LoadOptions& o = st.options;
  fast::PolicyInput in;
  in.io = o.io;
  in.threads = o.threads;
  in.chunk_bytes = o.chunk_bytes;
  in.staging_bytes = o.staging_bytes;
  in.staged = o.staged;
  in.prefault = o.prefault;
  in.cores = fast::hardware_cores();
  in.host_writable = host_writable;
  in.parts = st.parts;
  for (const auto& s : st.selections) in.data_bytes += s ? s->bytes() : 0;
  const fast::Probes probes = fast::probes_needed(o.io, host_writable, o.staged);
  in.direct_io = probes.open_uncached;
  for (const Shard& shard : st.checkpoint.shards()) {
    st.uncached.push_back(probes.open_uncached ? File::open_uncached(shard.file) : File());
    in.direct_io = in.direct_io && st.uncached.back().is_open();
    st.caches.push_back(probes.map_cache ? fast::CacheMap::of(shard.file)
                                         : fast::CacheMap::uniform(o.io != LoadOptions::Io::kUncached));
  }
  in.all_cached = all_cached(st.caches, st.checkpoint);
  return in;
}

}  // namespace

LoadRequest LoadRequest::of(const Checkpoint& checkpoint,
                            const std::vector<std::pair<std::string, TensorRequest>>& wanted) {
  LoadRequest r;
  const std::vector<std::size_t> first = first_indices(checkpoint);
  r.tensors.assign(first.back(), TensorRequest::skip());
  for (const auto& [name, request] : wanted) {
    const std::optional<std::size_t> i = index_of(checkpoint, first, name);
    SAFELOAD_CHECK(i.has_value(), ErrorCode::kInvalidArgument, "no tensor named '" + name + "' in the checkpoint");
    r.tensors[*i] = request;
  }
  return r;
}

LoadRequest LoadRequest::only(const Checkpoint& checkpoint, const std::vector<std::string>& names) {
  std::vector<std::pair<std::string, TensorRequest>> wanted;
  for (const std::string& name : names) wanted.emplace_back(name, TensorRequest{});
  return of(checkpoint, wanted);
}

std::unique_ptr<Loading> Loading::start(Checkpoint checkpoint, c10::Device device, const LoadOptions& options,
                                        const LoadRequest& request) {
  return start(std::make_shared<const Checkpoint>(std::move(checkpoint)), device, options, request);
}

std::unique_ptr<Loading> Loading::start(std::shared_ptr<const Checkpoint> checkpoint, c10::Device device,
                                        const LoadOptions& options, const LoadRequest& request) {
  validate(options);
  check_device_usable(device);
  SAFELOAD_INTERNAL_ASSERT(checkpoint != nullptr, "a load needs a checkpoint");
  auto st = std::make_unique<LoadState>(std::move(checkpoint), device, options);
  const Checkpoint& cp = st->checkpoint;

  st->first = first_indices(cp);
  std::vector<const Header*> headers;
  for (const Shard& shard : cp.shards()) {
    headers.push_back(&shard.header);
    for (const TensorInfo& t : shard.header.tensors()) {
      st->infos.push_back(&t);
      st->paths.push_back(shard.file.path());
    }
  }
  SAFELOAD_CHECK(request.tensors.empty() || request.tensors.size() == st->infos.size(), ErrorCode::kInvalidArgument,
                 "a request names " + std::to_string(request.tensors.size()) + " tensors; the checkpoint holds " +
                     std::to_string(st->infos.size()));
  SAFELOAD_CHECK(request.parts >= 1 && request.part < request.parts, ErrorCode::kInvalidArgument,
                 "share " + std::to_string(request.part) + " of " + std::to_string(request.parts) + " does not exist");
  st->parts = request.parts;
  st->request = request.tensors.empty() ? std::vector<TensorRequest>(st->infos.size()) : request.tensors;

  // Every requested tensor maps onto torch, and its request fits it, before
  // anything is allocated; then everything is allocated before the first read.
  std::vector<std::vector<std::int64_t>> sizes(st->infos.size());
  st->selections.resize(st->infos.size());
  for (std::size_t i = 0; i < st->infos.size(); ++i) {
    if (!st->wanted(i)) continue;
    torch_dtype(*st->infos[i], st->paths[i]);
    auto [selection, part_sizes] = selection_of(*st->infos[i], st->paths[i], st->request[i]);
    st->selections[i] = selection;
    sizes[i] = std::move(part_sizes);
  }
  st->tensors.resize(st->infos.size());
  st->host.assign(st->infos.size(), nullptr);
  st->keepalive.resize(st->infos.size());
  bool host_writable = true;
  for (std::size_t i = 0; i < st->infos.size(); ++i) {
    if (!st->wanted(i)) continue;
    st->tensors[i] = empty_tensor(*st->infos[i], st->paths[i], device, &sizes[i]);
    if (st->tensors[i].nbytes() == 0) continue;
    if (host_writable) st->host[i] = detail::host_writable_pointer(st->tensors[i], &st->keepalive[i]);
    host_writable = host_writable && st->host[i] != nullptr;
  }

  st->policy = fast::decide_policy(policy_input(*st, host_writable));
  for (std::size_t f = 0; f < cp.shards().size(); ++f) {
    st->sources.push_back(fast::Source{&cp.shards()[f].file, st->policy.bypass ? &st->uncached[f] : nullptr,
                                       st->policy.check_cache ? &st->caches[f] : nullptr});
  }
  st->whole_plan = fast::plan_reads(headers, st->policy.chunk_bytes, &st->selections);
  st->plan = st->parts > 1 ? fast::share_of(st->whole_plan, request.part, st->parts) : st->whole_plan;
  if (st->policy.slot_count > 0) {
    const bool bounce = st->policy.route == fast::ReadPolicy::Route::kHost;
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
bool Loading::wanted(std::size_t i) const { return state_->wanted(i); }

std::vector<std::tuple<std::size_t, std::uint64_t, std::uint64_t>> Loading::share_pieces(std::size_t part) const {
  const fast::Plan share = fast::share_of(state_->whole_plan, part, state_->parts);
  std::vector<std::tuple<std::size_t, std::uint64_t, std::uint64_t>> out;
  for (const fast::ReadOp& op : share.ops) {
    for (std::size_t k = 0; k < op.segment_count; ++k) {
      const fast::Segment& seg = share.segments[op.first_segment + k];
      if (!out.empty() && std::get<0>(out.back()) == seg.tensor &&
          std::get<1>(out.back()) + std::get<2>(out.back()) == seg.tensor_offset) {
        std::get<2>(out.back()) += seg.length;
      } else {
        out.emplace_back(seg.tensor, seg.tensor_offset, seg.length);
      }
    }
  }
  return out;
}

std::optional<std::size_t> Loading::find(std::string_view name) const { return state_->find(name); }

at::Tensor Loading::wait(std::size_t i, long timeout_ms) {
  SAFELOAD_CHECK(i < size() && state_->wanted(i), ErrorCode::kInvalidArgument,
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

std::optional<std::size_t> Loading::wait_next(long timeout_ms) {
  LoadState& st = *state_;
  std::lock_guard<std::mutex> lock(st.next_mutex);
  for (; st.next_empty < size(); ++st.next_empty) {
    const std::size_t i = st.next_empty;
    if (st.wanted(i) && st.plan.tensor_bytes[i] == 0) {
      ++st.next_empty;
      if (std::exception_ptr error = st.control->error()) std::rethrow_exception(error);
      return i;
    }
  }
  for (;;) {
    const std::optional<std::size_t> i = st.control->wait_completed(st.next_completed, timeout_ms);
    if (!i) {
      if (!st.control->finished()) return std::nullopt;
      // Every tensor with bytes completed before the load ended.
      if (std::exception_ptr error = st.control->error()) std::rethrow_exception(error);
      return size();
    }
    ++st.next_completed;
    if (st.wanted(*i)) {
      wait(*i, -1);  // complete: only synchronises a staged target and rethrows a failure
      return *i;
    }
  }
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
    if (state_->wanted(i)) out.emplace_back(state_->infos[i]->name, state_->tensors[i]);
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
  r.route = p.route == fast::ReadPolicy::Route::kHost ? "host" : "staged";
  r.io = std::string(io_name(state_->options.io));
  r.bypass = p.bypass;
  r.files = state_->checkpoint.shards().size();
  r.threads = p.threads;
  r.chunk_bytes = p.chunk_bytes;
  r.slot_bytes = p.slot_bytes;
  r.slot_count = p.slot_count;
  r.prefault = p.prefault;
  r.populate_before_copy = p.populate_before_copy;
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
