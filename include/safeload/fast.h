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
#include <string>
#include <thread>
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
};

struct ReadPolicy {
  // kDirect: reads land in host-writable destinations (cached bytes with one
  // preadv, uncached ones through bounce slots when `bypass`). kStaged: every
  // read fills a slot, and a copy target moves it on.
  enum class Route { kDirect, kStaged } route = Route::kDirect;
  // Read bytes the page cache lacks with O_DIRECT (needs direct_io).
  bool bypass = false;
  // Ask the CacheMap per read (kAuto on the direct route); otherwise every
  // read takes the same way.
  bool check_cache = false;
  std::size_t threads = 1;
  std::uint64_t chunk_bytes = 0;
  std::uint64_t slot_bytes = 0;     // 0 when the route needs no slots
  std::size_t slot_count = 0;
  // Populate destination pages ahead of the readers: on the direct route
  // (staged destinations are device memory) when reads bypass the page cache.
  bool prefault = false;
};

ReadPolicy decide_policy(const PolicyInput& in);

// The policy's choices when nothing is forced.
std::size_t default_threads(std::size_t cores);
std::uint64_t default_chunk_bytes(std::uint64_t total_bytes, std::size_t threads);
// Hardware threads of this machine (at least 1).
std::size_t hardware_cores();

// ---------------------------------------------------------------------------
// Planning: a pure function from headers and a chunk size to read operations.

// One destination piece of a read: `length` bytes for tensor `tensor` (an
// index into the tensors of all planned headers, in order), at
// `tensor_offset` within it.
struct Segment {
  std::size_t tensor;
  std::uint64_t tensor_offset;
  std::uint64_t length;
};

// One positional read of file `file` (an index into the planned headers): a
// contiguous range scattered into consecutive segments
// (plan.segments[first_segment, first_segment + segment_count)). Small
// neighbouring tensors share one op (one preadv); a tensor larger than the
// chunk size is split across several ops. No op spans two files.
struct ReadOp {
  std::size_t file;
  std::uint64_t file_offset;
  std::uint64_t length;
  std::size_t first_segment;
  std::size_t segment_count;
};

struct Plan {
  std::vector<ReadOp> ops;  // file by file, in file order, covering each data section once
  std::vector<Segment> segments;
  std::vector<std::uint64_t> tensor_bytes;  // per tensor, all headers in order
  std::uint64_t chunk_bytes = 0;
  std::uint64_t total_bytes = 0;
};

// preadv takes at most IOV_MAX (1024 on Linux and macOS) buffers per call.
inline constexpr std::size_t kMaxSegmentsPerOp = 512;

// Plans reads of every tensor of every header (or, with `wanted`, of the
// tensors it flags: one flag per tensor of all headers; the others get no
// segment and count zero bytes). Each op is at most `chunk_bytes` long and
// has at most kMaxSegmentsPerOp segments; zero-byte tensors get no segment.
// chunk_bytes must be > 0.
Plan plan_reads(const std::vector<const Header*>& headers, std::uint64_t chunk_bytes,
                const std::vector<bool>* wanted = nullptr);
Plan plan_reads(const Header& header, std::uint64_t chunk_bytes);

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
void read_host(const std::vector<Source>& sources, const Plan& plan, const std::vector<void*>& dst,
               const std::vector<void*>& slots, Executor& executor, LoadControl* control = nullptr,
               bool prefault = false);

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

// Arbitrary byte ranges of one file into host memory, in parallel: range i's
// `length` bytes at `file_offset` land at `dst`. For reads that are not whole
// tensors (a slice of rows, a share of a checkpoint).
struct Range {
  std::uint64_t file_offset;
  std::uint64_t length;
  void* dst;
};
void read_ranges(const File& file, const std::vector<Range>& ranges, Executor& executor);

// One file, through the page cache only: read_host with no slots.
void read_cached(const File& file, const Plan& plan, const std::vector<void*>& dst, Executor& executor);

}  // namespace safeload::fast
