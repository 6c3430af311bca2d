// The fast loader's torch-free machinery: the read policy, read planning over
// one or many files, the executor, and the two ways bytes move (straight into
// host-writable destinations, or through a bounded ring of slots and a copy
// target for memory the CPU cannot write).
//
// It uses validated Headers from the core and never re-checks a format rule;
// it only decides how to move bytes the Headers have already vouched for.
// Every decision that depends on the machine is made by decide_policy (pure)
// and reported; the readers only carry it out.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "safeload/file.h"
#include "safeload/header.h"
#include "safeload/options.h"

namespace safeload::fast {

// ---------------------------------------------------------------------------
// Page-cache residency, a read-policy input.

// Whether byte ranges of a file are in the page cache, asked as they are
// needed. The answer may be stale by the time it is used, and it comes from
// a few sampled pages per range; it only steers how bytes are read, never
// which bytes.
class CacheMap {
 public:
  // Looks at `file` through a read-only mapping (mincore reads nothing).
  // Where the platform cannot tell, reports everything as cached, so callers
  // keep reading through the page cache.
  static CacheMap of(const File& file);
  // Every range cached, or none: for forced choices and tests.
  static CacheMap uniform(bool cached) { return CacheMap(cached); }
  // Pages given as flags (one per `page_size` bytes from offset 0; past the
  // last flag counts as not cached). For tests.
  static CacheMap from_pages(std::vector<bool> pages, std::uint64_t page_size);

  CacheMap(CacheMap&& other) noexcept;
  CacheMap& operator=(CacheMap&&) = delete;
  CacheMap(const CacheMap&) = delete;
  ~CacheMap();

  // True if the sampled pages of [offset, offset + length) are all cached:
  // the first, the last and evenly spaced ones between, at most kSamples.
  // Sampling keeps the question cheap (asking about every page of a 4 GiB
  // file costs ~40 ms, a tenth of loading it from the page cache).
  static constexpr std::uint64_t kSamples = 5;
  bool cached(std::uint64_t offset, std::uint64_t length) const;
  // The fraction of [offset, offset + length)'s pages that are cached,
  // estimated from at most kFractionSamples pages spread as cached() spreads
  // its own: what serve_by_mapping weighs (1 for an empty range).
  static constexpr std::uint64_t kFractionSamples = 32;
  double cached_fraction(std::uint64_t offset, std::uint64_t length) const;
  // The fraction of the whole file's pages in the page cache: counted, not
  // sampled, where the kernel counts them in one call (Linux 6.5+
  // cachestat(2): a 305 MiB file in 0.2-0.3 ms, no mapping); elsewhere
  // of(file).cached_fraction over the file. What serve_by_mapping weighs for
  // a whole file, where the error of 32 samples (two pages missing of 32 is
  // already under kMapWhenCached) decides between mapping and reading it all.
  static double file_fraction(const File& file);
  // Whether the file's data section, as `header` places it, is cached: what
  // the policy's all_cached asks per shard.
  bool data_cached(const Header& header) const { return cached(header.data_start(), header.data_length()); }

 private:
  explicit CacheMap(bool all) : all_(all) {}
  bool page_cached(std::uint64_t page) const;
  bool all_ = true;
  std::vector<bool> pages_;  // from_pages
  bool from_pages_ = false;
  void* map_ = nullptr;      // of(): the file mapped read-only
  std::uint64_t map_length_ = 0;
  std::uint64_t page_size_ = 4096;
};

// ---------------------------------------------------------------------------
// Policy: a pure function from what is known before reading to how to read.

// Bytes per read and reader threads when reads bypass the page cache: an
// O_DIRECT read occupies no core while it waits, so twice as many readers as
// cores keep the device queue full while others copy out of their slots;
// 8 MiB reads were the fastest measured (4 x 8 MiB beat 2 x 64 MiB by ~1.3x).
inline constexpr std::uint64_t kUncachedChunkBytes = 8ull << 20;
// Bounds of the automatic chunk size.
inline constexpr std::uint64_t kMinAutoChunkBytes = 256 * 1024;
inline constexpr std::uint64_t kMaxAutoChunkBytes = 64 * 1024 * 1024;
// A read through the page cache straight into the destinations is issued in
// pieces of at most this many bytes, checking for cancellation between them:
// a 64 MiB read into new memory can take a second while the host is slow to
// back it, and Ctrl-C should not wait for that. One more syscall per 8 MiB
// costs microseconds against milliseconds of copying.
inline constexpr std::uint64_t kCancelCheckBytes = 8ull << 20;
// More staging slots than this per thread only add events and pinned memory.
inline constexpr std::size_t kMaxSlotsPerThread = 4;

// What to find out about the files before deciding: whether a load could
// bypass the page cache at all (then the files are opened with O_DIRECT too),
// and whether it asks the page cache per read (then residency maps are made).
// A pure function of the options and the destinations, used by whoever
// gathers a PolicyInput, so the rule lives here alone.
struct Probes {
  bool open_uncached = false;
  bool map_cache = false;
};
Probes probes_needed(LoadOptions::Io io, bool host_writable, bool staged);

struct PolicyInput {
  LoadOptions::Io io = LoadOptions::Io::kAuto;
  std::size_t threads = 0;          // as asked (0: choose)
  std::uint64_t chunk_bytes = 0;    // as asked (0: choose)
  std::uint64_t staging_bytes = kDefaultStagingBytes;
  bool staged = false;              // staging forced
  std::uint64_t data_bytes = 0;     // bytes the load reads
  std::size_t cores = 1;            // hardware threads
  bool host_writable = true;        // every destination is host-writable
  bool direct_io = false;           // every file opened with O_DIRECT
  bool all_cached = true;           // sampled: the page cache holds every file
  bool prefault = true;             // the prefault option
  // A load split into this many shares (one per process): then the plan,
  // and so the chunk size, must be the same in every process, whatever its
  // cores or page cache, so the chunk depends on data_bytes and parts alone.
  std::size_t parts = 1;
};

struct ReadPolicy {
  // kHost: reads land in host-writable destinations (cached bytes with one
  // preadv, uncached ones through bounce slots when `bypass`). kStaged: every
  // read fills a slot, and a copy target moves it on.
  enum class Route { kHost, kStaged } route = Route::kHost;
  // Read bytes the page cache lacks with O_DIRECT (needs direct_io).
  bool bypass = false;
  // Ask the CacheMap per read (kAuto on the host route); otherwise every
  // read takes the same way.
  bool check_cache = false;
  std::size_t threads = 1;
  std::uint64_t chunk_bytes = 0;
  std::uint64_t slot_bytes = 0;     // 0 when the route needs no slots
  std::size_t slot_count = 0;
  // Populate destination pages ahead of the readers: on the host route
  // (staged destinations are device memory) when reads bypass the page cache.
  bool prefault = false;
  // Each reader populates the whole pages of a piece's destinations just
  // before copying into them from the page cache (the host route when no
  // prefaulting thread runs): the kernel then faults pages in bulk outside the
  // copy instead of one at a time inside it.
  bool populate_before_copy = false;
};

ReadPolicy decide_policy(const PolicyInput& in);

// Whether a handle opened with upstream's choice of `backend` should serve a
// file by mapping its page cache (as upstream does) rather than by reading it
// into memory of its own: only where mapping is what the caller asked for
// (backend mmap, or none given where upstream's default maps), the tensors go
// to host memory, and the page cache holds the file but for scattered pages
// (`cached_fraction` at least kMapWhenCached). There a mapping hands out pages
// the cache has, while a read must first write each destination page anew;
// anywhere else reading wins or mapping is not asked.
inline constexpr double kMapWhenCached = 0.95;
bool serve_by_mapping(LoadOptions::Backend backend, bool host_device, double cached_fraction);

// What a file handle (safe_open) has seen its caller do, to decide whether
// to read ahead: the caller asks one tensor at a time, and a handle reads
// each as asked unless the caller evidently wants most of the file.
struct HandleUse {
  std::size_t tensors = 0;         // in the file
  std::size_t asked = 0;           // distinct tensors asked for (get_tensor, get_slice)
  std::size_t whole_reads = 0;     // reads of a whole tensor so far
  std::size_t partial_reads = 0;   // reads of part of a tensor so far
  bool listed_keys = false;        // keys() or offset_keys() was called
  bool prefetch_asked = false;     // the caller asked for read-ahead explicitly
};
// Read every tensor not yet handed out in the background, now: when asked
// explicitly; or when the caller reads whole tensors only and either has
// listed the keys and asked for at least half of the tensors (transformers
// takes a slice of every key before reading any: from its first whole read),
// or has read kReadAheadAfterReads whole tensors and listed the keys (a loop
// over them) or asked for at least half of the tensors. A caller that reads
// a few tensors, or parts of tensors (tensor parallelism), reads those alone.
inline constexpr std::size_t kReadAheadAfterReads = 2;
bool read_ahead_pays(const HandleUse& use);

// The policy's choices when nothing is forced.
std::size_t default_threads(std::size_t cores);
std::uint64_t default_chunk_bytes(std::uint64_t total_bytes, std::size_t threads);
// For a load split into `parts` shares: about kReadsPerShare reads per share
// (each share then within a few percent of 1/parts), at most
// kMaxShareChunkBytes, in whole 64 KiB units.
inline constexpr std::uint64_t kReadsPerShare = 32;
inline constexpr std::uint64_t kMaxShareChunkBytes = 16ull << 20;
std::uint64_t share_chunk_bytes(std::uint64_t total_bytes, std::size_t parts);
// Hardware threads of this machine (at least 1).
std::size_t hardware_cores();

// ---------------------------------------------------------------------------
// Planning: a pure function from headers, what is wanted of each tensor and a
// chunk size to read operations.

// The part of a tensor a load reads, as byte geometry: the tensor's bytes seen
// as [outer][extent][inner_bytes], and of each of the `outer` blocks the rows
// [start, stop) of `extent`. A range along one dimension of a row-major tensor
// is such a part (outer: the product of the dimensions before it; extent: its
// size; inner_bytes: the bytes of one index of it); the whole tensor is
// outer = 1, extent = 1, start = 0, stop = 1. The bytes read land packed, in
// order, at the start of the destination.
struct Selection {
  std::uint64_t outer = 1;
  std::uint64_t extent = 1;
  std::uint64_t inner_bytes = 0;
  std::uint64_t start = 0;
  std::uint64_t stop = 1;

  static Selection whole(std::uint64_t nbytes) { return Selection{1, 1, nbytes, 0, 1}; }
  std::uint64_t bytes() const noexcept { return outer * (stop - start) * inner_bytes; }
  // Runs of contiguous file bytes it takes: one, or one per outer block.
  std::uint64_t runs() const noexcept {
    return bytes() == 0 ? 0 : (stop - start == extent || outer == 1) ? 1 : outer;
  }
};

// One destination piece of a read: `length` bytes for tensor `tensor` (an
// index into the tensors of all planned headers, in order), at
// `tensor_offset` within its destination.
struct Segment {
  std::size_t tensor;
  std::uint64_t tensor_offset;
  std::uint64_t length;
};

// One positional read of file `file` (an index into the planned headers): a
// contiguous range scattered into consecutive segments
// (plan.segments[first_segment, first_segment + segment_count)). Neighbouring
// pieces of file bytes share one op (one preadv); a piece larger than the
// chunk size is split across several ops. No op spans two files.
struct ReadOp {
  std::size_t file;
  std::uint64_t file_offset;
  std::uint64_t length;
  std::size_t first_segment;
  std::size_t segment_count;
};

struct Plan {
  std::vector<ReadOp> ops;  // file by file, in file order
  std::vector<Segment> segments;
  std::vector<std::uint64_t> tensor_bytes;  // bytes read per tensor, all headers in order
  std::uint64_t chunk_bytes = 0;
  std::uint64_t total_bytes = 0;
};

// preadv takes at most IOV_MAX (1024 on Linux and macOS) buffers per call.
inline constexpr std::size_t kMaxSegmentsPerOp = 512;

// Plans reads of every tensor of every header, or, with `selections` (one per
// tensor of all headers, nullopt for a tensor not read), of the part each
// selects. Each op is at most `chunk_bytes` long and has at most
// kMaxSegmentsPerOp segments; zero-byte parts get no segment. chunk_bytes
// must be > 0; a selection must describe its tensor's bytes
// (outer * extent * inner_bytes == nbytes, start <= stop <= extent), else
// Error(kInvalidArgument).
Plan plan_reads(const std::vector<const Header*>& headers, std::uint64_t chunk_bytes,
                const std::vector<std::optional<Selection>>* selections = nullptr);
Plan plan_reads(const Header& header, std::uint64_t chunk_bytes);

// A range [start, stop) of dimension `dim` of a row-major tensor.
struct DimRange {
  std::size_t dim = 0;
  std::uint64_t start = 0;
  std::uint64_t stop = 0;
};
// What a separate run of file bytes costs beyond its bytes, in bytes: a read
// call, and on a cold file a separate request to the device.
inline constexpr std::uint64_t kRunCostBytes = 16ull << 10;
// Of `candidates`, ranges of a tensor of `sizes` and `nbytes` bytes each of
// which holds everything a caller wants of it, the index of the cheapest to
// read: bytes read plus kRunCostBytes per run. Ties go to the earlier. No
// candidate: nullopt. Error(kInvalidArgument) for a range outside `sizes`.
std::optional<std::size_t> cheapest_range(const std::vector<std::uint64_t>& sizes, std::uint64_t nbytes,
                                          const std::vector<DimRange>& candidates);

// The plan's ops cut into `parts` contiguous shares balanced by bytes, as
// [first, last) op ranges: op k goes to the part its byte midpoint falls in,
// so no share is off 1/parts by more than one op. parts >= 1.
std::vector<std::pair<std::size_t, std::size_t>> split_shares(const Plan& plan, std::size_t parts);

// The plan restricted to share `part` of `parts` (split_shares): its ops, and
// total_bytes their bytes. Segments and tensor_bytes are kept, so a tensor the
// share covers in part never completes.
Plan share_of(const Plan& plan, std::size_t part, std::size_t parts);

// ---------------------------------------------------------------------------
// Executor: runs independent work items on several threads.

class Executor {
 public:
  virtual ~Executor() = default;
  // Calls fn(i) once for every i in [0, n), concurrently, and returns when all
  // calls have finished. If a call throws, items not yet started are skipped
  // and the first exception is rethrown here, after every running call ends.
  // If helper threads cannot be started, runs with those it got (at least the
  // calling thread): a load is never lost to a thread limit.
  virtual void parallel_for(std::size_t n, const std::function<void(std::size_t)>& fn) = 0;
  virtual std::size_t concurrency() const noexcept = 0;
};

// Grand Central Dispatch (dispatch_apply_f) on Apple platforms; a pool of
// `threads` std::threads elsewhere. threads == 0 picks default_threads.
std::unique_ptr<Executor> make_executor(std::size_t threads);

// ---------------------------------------------------------------------------
// Progress, cancellation and per-tensor completion of one load.

// Shared by the readers and whoever waits for them. Thread-safe.
class LoadControl {
 public:
  // `cancel` (may be empty) is polled by readers between reads.
  LoadControl(const Plan& plan, std::function<bool()> cancel = {});

  // Asks the readers to stop; they stop between reads.
  void cancel() noexcept;
  // Throws Error(kCancelled) if cancel() was called or the hook says so.
  void check_cancelled();
  // Readers report each op once its bytes are at their destination (or
  // handed to the copy target).
  void op_done(const Plan& plan, const ReadOp& op);
  // The load ended (error null on success); wakes every waiter.
  void finish(std::exception_ptr error);

  std::uint64_t bytes_done() const noexcept { return bytes_done_.load(std::memory_order_relaxed); }
  bool finished() const;
  // Blocks until tensor `i` is complete (true) or the load has ended or
  // `timeout_ms` passed (negative: no limit); rethrows the load's error if it
  // ended without completing the tensor.
  bool wait_tensor(std::size_t i, long timeout_ms = -1);
  bool tensor_done(std::size_t i) const { return remaining_[i].load(std::memory_order_acquire) == 0; }
  // The k-th tensor (from 0) to complete by a read, in the order they
  // completed, once there is one: waits up to `timeout_ms` (negative: no
  // limit). nullopt on timeout, or when the load ended with fewer (then
  // rethrows its error if it failed). Tensors of no bytes never complete by
  // a read and are not counted.
  std::optional<std::size_t> wait_completed(std::size_t k, long timeout_ms = -1);
  // Reads that bypassed the page cache, for the load report.
  void note_uncached(std::uint64_t bytes) noexcept;
  std::uint64_t ops_uncached() const noexcept { return ops_uncached_.load(std::memory_order_relaxed); }
  std::uint64_t bytes_uncached() const noexcept { return bytes_uncached_.load(std::memory_order_relaxed); }
  // Blocks until the load ends or `timeout_ms` passes; true if it ended.
  bool wait_finished(long timeout_ms);
  // The load's error (null while running or on success).
  std::exception_ptr error() const;

 private:
  std::function<bool()> hook_;
  std::atomic<bool> cancelled_{false};
  std::atomic<std::uint64_t> bytes_done_{0};
  std::atomic<std::uint64_t> ops_uncached_{0};
  std::atomic<std::uint64_t> bytes_uncached_{0};
  std::unique_ptr<std::atomic<std::uint64_t>[]> remaining_;  // bytes per tensor
  mutable std::mutex mutex_;
  std::vector<std::size_t> completed_;  // tensors in the order their last byte came
  std::condition_variable cv_;
  bool finished_ = false;
  std::exception_ptr error_;
};

// ---------------------------------------------------------------------------
// Moving bytes.

// One file of a load: opened normally, and with O_DIRECT where reads bypass
// the page cache (else null), with its residency map (null: all cached).
struct Source {
  const File* file = nullptr;
  const File* uncached = nullptr;
  const CacheMap* cache = nullptr;
};

// Where destination memory is not host-writable (CUDA, MPS without a host
// alias), bytes go through slots. The target issues the copies out of a
// slot, possibly asynchronously, and waits for them before a slot is reused.
class StagedTarget {
 public:
  virtual ~StagedTarget() = default;
  // Copies the op's segments out of `src` (slot memory holding the op's bytes,
  // in file order) to their destinations. May return before the copies finish.
  // Calls are serialised by the reader.
  virtual void copy_from_slot(std::size_t slot, const Plan& plan, const ReadOp& op,
                              const void* src) = 0;
  // Blocks until every copy issued from `slot` has finished reading it.
  virtual void wait_slot(std::size_t slot) = 0;
};

// Copies synchronously into host destinations (dst[i] for tensor i): the
// target for host memory read through slots, as with uncached reads.
class HostCopyTarget final : public StagedTarget {
 public:
  explicit HostCopyTarget(const std::vector<void*>& dst) : dst_(dst) {}
  void copy_from_slot(std::size_t slot, const Plan& plan, const ReadOp& op, const void* src) override;
  void wait_slot(std::size_t) override {}

 private:
  const std::vector<void*>& dst_;
};

// Bytes a slot needs for reads of up to `chunk_bytes`: the chunk, or when
// reading uncached room to widen each read to kDirectIoAlign boundaries
// (then a multiple of it).
std::uint64_t slot_bytes_for(std::uint64_t chunk_bytes, bool uncached);

// Reads every op of `plan` into host-writable destinations (dst[i] for
// tensor i, at least its bytes), in parallel. An op whose source has no
// `uncached` file, or whose bytes its `cache` says the page cache holds, is
// read straight into its destinations (one preadv). Any other op is read with
// O_DIRECT into a bounce slot and copied out. `slots` (needed only when some
// source has `uncached`): each slot_bytes_for(plan.chunk_bytes, true) bytes
// and kDirectIoAlign-aligned. `control` (may be null) is told of each op and
// asked between ops whether to stop. `prefault`: one more thread populates
// the destinations' pages ahead of the readers (see Prefaulter).
// `populate_before_copy`: a reader populates the pages of what it is about to
// read through the page cache just before the read (see ReadPolicy).
void read_host(const std::vector<Source>& sources, const Plan& plan, const std::vector<void*>& dst,
               const std::vector<void*>& slots, Executor& executor, LoadControl* control = nullptr,
               bool prefault = false, bool populate_before_copy = false);

// Populates the whole pages inside [start, start + length) for writing
// (Linux 5.14+: MADV_POPULATE_WRITE); the partial pages at the ends are left
// alone, as they may be shared with memory that is not the caller's. Returns
// false where the kernel cannot populate.
bool populate_whole_pages(void* start, std::uint64_t length) noexcept;

// Populates the whole pages of the destinations of `plan`'s ops, in op order,
// on a thread of its own, skipping ops the readers have already reached
// (reached()). Populating never changes a byte: a page already present is
// left as it is, so readers may overtake it. Where the kernel cannot populate
// (not Linux, before 5.14) or no thread can be started, it does nothing.
// The destructor stops it and waits for it.
class Prefaulter {
 public:
  // Starts at once unless `start` is false (then call start()).
  Prefaulter(const Plan& plan, const std::vector<void*>& dst, bool start = true);
  ~Prefaulter();
  void start();
  Prefaulter(const Prefaulter&) = delete;
  Prefaulter& operator=(const Prefaulter&) = delete;
  // A reader has started op k.
  void reached(std::size_t k) noexcept;
  // Waits until it has stopped (tests).
  void join();

 private:
  void run() noexcept;
  const Plan& plan_;
  const std::vector<void*>& dst_;
  std::atomic<std::size_t> frontier_{0};
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// Reads through `slots` (host memory, each slot_bytes_for(plan.chunk_bytes,
// uncached) long), reusing a slot only after target.wait_slot. Sources with
// `uncached` bypass the page cache; slots must then be kDirectIoAlign-aligned.
// Whatever happens, returns or throws only once every slot has been waited
// for, so slot memory may be freed after.
void read_staged(const std::vector<Source>& sources, const Plan& plan, const std::vector<void*>& slots,
                 StagedTarget& target, Executor& executor, LoadControl* control = nullptr);

// One file, through the page cache only: read_host with no slots.
void read_cached(const File& file, const Plan& plan, const std::vector<void*>& dst, Executor& executor);

}  // namespace safeload::fast
