// The read policy: every decision about how a load moves bytes, in one pure
// function, so it can be tested without files or devices and reported.
#include <algorithm>
#include <thread>

#include "safeload/fast.h"

namespace safeload::fast {

std::size_t hardware_cores() {
  return std::max<std::size_t>(std::thread::hardware_concurrency(), 1);
}

std::size_t default_threads(std::size_t cores) {
  // One reader per core: each read also copies (page cache to destination),
  // and on a 2-core virtual machine 2 streams of 64 MiB reads beat 4
  // (measured, cold and warm). At least 2 keep I/O and copying overlapped;
  // more than 16 gains nothing.
  return std::clamp<std::size_t>(cores, 2, 16);
}

std::uint64_t default_chunk_bytes(std::uint64_t total_bytes, std::size_t threads) {
  // About four chunks per thread keeps every thread busy to the end even when
  // reads finish unevenly; the clamp bounds syscall count and slot size.
  const std::uint64_t per_thread = total_bytes / (4 * std::max<std::size_t>(threads, 1));
  const std::uint64_t chunk = std::clamp(per_thread, kMinAutoChunkBytes, kMaxAutoChunkBytes);
  return chunk / (64 * 1024) * (64 * 1024);  // whole 64 KiB units
}

std::uint64_t slot_bytes_for(std::uint64_t chunk_bytes, bool uncached) {
  if (!uncached) return chunk_bytes;
  // A read widened to aligned ends spans at most the chunk rounded up plus one
  // block; keeping the size a multiple of the block keeps every slot aligned.
  return (chunk_bytes + kDirectIoAlign - 1) / kDirectIoAlign * kDirectIoAlign + kDirectIoAlign;
}

ReadPolicy decide_policy(const PolicyInput& in) {
  ReadPolicy p;
  p.route = in.host_writable && !in.staged ? ReadPolicy::Route::kDirect : ReadPolicy::Route::kStaged;
  const bool direct = p.route == ReadPolicy::Route::kDirect;
  // Bypassing the page cache needs O_DIRECT; on the direct route kAuto
  // bypasses only what the cache lacks, while device targets read through the
  // cache unless kUncached asks otherwise.
  const bool may_bypass = in.direct_io && (in.io == LoadOptions::Io::kUncached ||
                                           (direct && in.io == LoadOptions::Io::kAuto));
  p.check_cache = may_bypass && direct && in.io == LoadOptions::Io::kAuto;
  p.bypass = may_bypass && (in.io == LoadOptions::Io::kUncached || !in.all_cached);

  const std::size_t auto_threads =
      p.bypass && direct ? std::min<std::size_t>(2 * default_threads(in.cores), 32) : default_threads(in.cores);
  p.threads = in.threads ? in.threads : auto_threads;

  if (in.chunk_bytes) {
    p.chunk_bytes = in.chunk_bytes;
  } else {
    p.chunk_bytes = default_chunk_bytes(in.data_bytes, p.threads);
    if (p.bypass && direct) p.chunk_bytes = std::min(p.chunk_bytes, kUncachedChunkBytes);
    // Slots must fit the staging bound: at least two per thread, so device
    // copies drain while reads go on.
    if (!direct) p.chunk_bytes = std::min(p.chunk_bytes, in.staging_bytes / (2 * p.threads));
    p.chunk_bytes = std::max(p.chunk_bytes, kMinChunkBytes);
  }

  // Prefault only while reads wait for the device: there one more thread
  // populating pages fills idle time, while copies from the page cache keep
  // every core busy and a prefaulting thread only competes with them
  // (measured: bench/README.md, "Defaults").
  p.prefault = direct && p.bypass && in.prefault;
  if (direct && !p.bypass) return p;  // straight into the destinations: no slots
  p.slot_bytes = slot_bytes_for(p.chunk_bytes, p.bypass);
  // Within staging_bytes (one slot at the least), one bounce slot per reader
  // or up to kMaxSlotsPerThread staging slots per reader.
  const std::size_t per_thread = direct ? 1 : kMaxSlotsPerThread;
  const std::uint64_t fit = std::max<std::uint64_t>(in.staging_bytes / p.slot_bytes, 1);
  p.slot_count = static_cast<std::size_t>(std::min<std::uint64_t>(fit, per_thread * p.threads));
  return p;
}

}  // namespace safeload::fast
