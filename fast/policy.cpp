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

std::uint64_t share_chunk_bytes(std::uint64_t total_bytes, std::size_t parts) {
  constexpr std::uint64_t kUnit = 64ull << 10;
  const std::uint64_t per_read = total_bytes / (kReadsPerShare * std::max<std::size_t>(parts, 1));
  return std::clamp(per_read, kUnit, kMaxShareChunkBytes) / kUnit * kUnit;
}

Probes probes_needed(LoadOptions::Io io, bool host_writable, bool staged) {
  // Bypassing the page cache needs O_DIRECT; into host-writable memory kAuto
  // bypasses only what the cache lacks (so it asks the cache per read), while
  // device targets read through the cache unless kUncached asks otherwise.
  const bool host_route = host_writable && !staged;
  Probes p;
  p.open_uncached = io == LoadOptions::Io::kUncached || (io == LoadOptions::Io::kAuto && host_route);
  p.map_cache = p.open_uncached && io == LoadOptions::Io::kAuto;
  return p;
}

ReadPolicy decide_policy(const PolicyInput& in) {
  ReadPolicy p;
  p.route = in.host_writable && !in.staged ? ReadPolicy::Route::kHost : ReadPolicy::Route::kStaged;
  const bool host = p.route == ReadPolicy::Route::kHost;
  const Probes probes = probes_needed(in.io, in.host_writable, in.staged);
  const bool may_bypass = in.direct_io && probes.open_uncached;
  p.check_cache = may_bypass && probes.map_cache;
  p.bypass = may_bypass && (in.io == LoadOptions::Io::kUncached || !in.all_cached);

  const std::size_t auto_threads =
      p.bypass && host ? std::min<std::size_t>(2 * default_threads(in.cores), 32) : default_threads(in.cores);
  p.threads = in.threads ? in.threads : auto_threads;

  if (in.chunk_bytes) {
    p.chunk_bytes = in.chunk_bytes;
  } else if (in.parts > 1) {
    // The same plan in every process: no input that differs between them
    // (staging_bytes is an option, the same everywhere; a slot must hold a read).
    p.chunk_bytes = std::min(share_chunk_bytes(in.data_bytes, in.parts), in.staging_bytes);
  } else {
    p.chunk_bytes = default_chunk_bytes(in.data_bytes, p.threads);
    if (p.bypass && host) p.chunk_bytes = std::min(p.chunk_bytes, kUncachedChunkBytes);
    // Slots must fit the staging bound: at least two per thread, so device
    // copies drain while reads go on.
    if (!host) p.chunk_bytes = std::min(p.chunk_bytes, in.staging_bytes / (2 * p.threads));
    p.chunk_bytes = std::max(p.chunk_bytes, kMinChunkBytes);
  }

  // Prefault only while reads wait for the device: there one more thread
  // populating pages fills idle time, while copies from the page cache keep
  // every core busy and a prefaulting thread only competes with them
  // (measured: bench/README.md, "Defaults").
  p.prefault = host && p.bypass && in.prefault;
  // Reading from the page cache, each reader populates its own destinations
  // just before its copy: warm, 1.1 GiB file, fresh process, 3 rounds,
  // interleaved, 3.89 GB/s without, 4.22 with (new memory written by 2
  // threads: 4.32); after the process freed 1.1 GiB: 3.85 / 4.63 (4.48);
  // idle 40 s: 3.75 / 4.21 (4.26). See bench/README.md, "Defaults".
  p.populate_before_copy = host && !p.prefault && in.prefault;
  if (host && !p.bypass) return p;  // straight into the destinations: no slots
  p.slot_bytes = slot_bytes_for(p.chunk_bytes, p.bypass);
  // Within staging_bytes (one slot at the least), one bounce slot per reader
  // or up to kMaxSlotsPerThread staging slots per reader.
  const std::size_t per_thread = host ? 1 : kMaxSlotsPerThread;
  const std::uint64_t fit = std::max<std::uint64_t>(in.staging_bytes / p.slot_bytes, 1);
  p.slot_count = static_cast<std::size_t>(std::min<std::uint64_t>(fit, per_thread * p.threads));
  return p;
}

bool serve_by_mapping(LoadOptions::Backend backend, bool host_device, double cached_fraction) {
  // Upstream maps unless told "pread"; measured on a warm 305 MiB checkpoint
  // under transformers: mapping 0.12 s, reading into new memory 0.26 s (new
  // pages are written at 0.5-3 GB/s here). Cold, reading wins by 1.8x. Between,
  // with pages missing here and there (the page cache thinning out), each miss
  // costs a mapping one fault with its read-around: measured on the one-shard
  // checkpoint (README), mapping still wins with 1% of pages missing and loses
  // from about 5%.
  return backend != LoadOptions::Backend::kPread && host_device && cached_fraction >= kMapWhenCached;
}

bool read_ahead_pays(const HandleUse& use) {
  if (use.prefetch_asked) return true;
  if (use.partial_reads > 0 || use.whole_reads == 0) return false;
  const bool most_asked = 2 * use.asked >= use.tensors;
  // transformers lists the keys and takes a slice of every one before reading
  // any: its first whole read starts the rest (measured: 16 cold shards under
  // patch(), the read-ahead from the second read left 0.07 s of overlap unused).
  if (use.listed_keys && most_asked) return true;
  return use.whole_reads >= kReadAheadAfterReads && (use.listed_keys || most_asked);
}

}  // namespace safeload::fast
