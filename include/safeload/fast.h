// The fast loader's torch-free machinery: read planning, the executor, and
// the two ways bytes move (straight into host-writable destinations, or
// through a bounded ring of staging buffers for device memory).
//
// It uses the validated Header from the core and never re-checks a format
// rule; it only decides how to move bytes the Header has already vouched for.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "safeload/file.h"
#include "safeload/header.h"

namespace safeload::fast {

// ---------------------------------------------------------------------------
// Planning: a pure function from a header and options to read operations.

// One destination piece of a read: `length` bytes for tensor `tensor`
// (an index into Header::tensors()), at `tensor_offset` within it.
struct Segment {
  std::size_t tensor;
  std::uint64_t tensor_offset;
  std::uint64_t length;
};

// One positional read: a contiguous file range scattered into consecutive
// segments (plan.segments[first_segment, first_segment + segment_count)).
// Small neighbouring tensors share one op (one preadv); a tensor larger than
// the chunk size is split across several ops.
struct ReadOp {
  std::uint64_t file_offset;
  std::uint64_t length;
  std::size_t first_segment;
  std::size_t segment_count;
};

struct Plan {
  std::vector<ReadOp> ops;  // in file order, covering the data section exactly once
  std::vector<Segment> segments;
  std::uint64_t chunk_bytes = 0;
  std::uint64_t total_bytes = 0;
};

inline constexpr std::uint64_t kMinChunkBytes = 256 * 1024;
inline constexpr std::uint64_t kMaxChunkBytes = 64 * 1024 * 1024;
// preadv takes at most IOV_MAX (1024 on Linux and macOS) buffers per call.
inline constexpr std::size_t kMaxSegmentsPerOp = 512;

// Chunk size when none is forced: a few MiB, small enough that every thread
// gets several chunks (load balance), large enough to amortise each syscall.
std::uint64_t default_chunk_bytes(std::uint64_t total_bytes, std::size_t threads);

// Plans reads of every tensor in `header`. Each op is at most `chunk_bytes`
// long and has at most kMaxSegmentsPerOp segments; zero-byte tensors get no
// segment. chunk_bytes must be > 0.
Plan plan_reads(const Header& header, std::uint64_t chunk_bytes);

// ---------------------------------------------------------------------------
// Executor: runs independent work items on several threads.

class Executor {
 public:
  virtual ~Executor() = default;
  // Calls fn(i) once for every i in [0, n), concurrently, and returns when all
  // calls have finished. If a call throws, items not yet started are skipped
  // and the first exception is rethrown here, after every running call ends.
  virtual void parallel_for(std::size_t n, const std::function<void(std::size_t)>& fn) = 0;
  virtual std::size_t concurrency() const noexcept = 0;
};

// Grand Central Dispatch (dispatch_apply_f) on Apple platforms; a pool of
// `threads` std::threads elsewhere. threads == 0 picks the hardware count.
std::unique_ptr<Executor> make_executor(std::size_t threads);
std::size_t default_threads();

// ---------------------------------------------------------------------------
// Moving bytes.

// Reads every op of `plan` into host-writable destinations (dst[i] for
// tensor i, at least its nbytes), in parallel. An op whose bytes `cache` says
// the page cache holds is read straight into its destinations (one preadv).
// Any other op, when `uncached` (File::open_uncached of the same file) is
// given, is read with O_DIRECT into a bounce slot and copied out: the device
// fills the slot, so no page-cache page is allocated and filled only to be
// copied once. `slots` (needed only with `uncached`): at least one, each
// slot_bytes_for(plan, true) bytes and kDirectIoAlign-aligned; one per
// executor thread keeps every thread busy.
void read_host(const File& file, const File* uncached, const CacheMap& cache, const Header& header,
               const Plan& plan, const std::vector<void*>& dst, const std::vector<void*>& slots,
               Executor& executor);

// read_host through the page cache only: no slots needed.
void read_direct(const File& file, const Header& header, const Plan& plan,
                 const std::vector<void*>& dst, Executor& executor);

// Bytes per read and reader threads when reads bypass the page cache: an
// O_DIRECT read occupies no core while it waits, so twice as many readers as
// cores keep the device queue full while others copy out of their slots;
// 8 MiB reads were the fastest measured (4 x 8 MiB beat 2 x 64 MiB by ~1.3x).
inline constexpr std::uint64_t kUncachedChunkBytes = 8ull << 20;
std::size_t default_uncached_threads();

// Where destination memory is not host-writable (CUDA, MPS without a host
// alias), bytes go through staging slots. The target issues the copies out of
// a slot, possibly asynchronously, and waits for them before a slot is reused.
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

// Bytes a staging slot needs for `plan`: the chunk, or when reading uncached
// room to widen each read to kDirectIoAlign boundaries (then a multiple of it).
std::uint64_t slot_bytes_for(const Plan& plan, bool uncached);

// Reads through `slots` (host memory, each slot_bytes_for(plan, uncached !=
// nullptr) long), reusing a slot only after target.wait_slot. With
// `uncached` (File::open_uncached of the same file) the reads bypass the page
// cache; slots must then be kDirectIoAlign-aligned. Whatever happens, returns
// or throws only once every slot has been waited for, so staging memory may
// be freed after.
void read_staged(const File& file, const Header& header, const Plan& plan,
                 const std::vector<void*>& slots, StagedTarget& target, Executor& executor,
                 const File* uncached = nullptr);

}  // namespace safeload::fast
