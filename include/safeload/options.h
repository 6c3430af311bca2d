// The fast loader's options and the one place they are checked.
//
// Torch-free: every entry point (C++ load_file/load_checkpoint/Loading, the
// Python binding, safe_open) builds a LoadOptions and calls validate() before
// it opens a file or allocates anything, so a bad value is reported the same
// way everywhere: Error(kInvalidArgument) naming the option, the value and the
// accepted range.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

namespace safeload {

// Bounds of the options. They keep every buffer a load allocates bounded by
// the tensors themselves plus staging_bytes plus the read plan (at most one
// op per kMinChunkBytes of data, about 60 bytes each).
inline constexpr std::size_t kMaxThreads = 256;
inline constexpr std::uint64_t kMinChunkBytes = 64ull << 10;   // 64 KiB
inline constexpr std::uint64_t kMaxChunkBytes = 1ull << 30;    // 1 GiB
inline constexpr std::uint64_t kMinStagingBytes = 1ull << 20;  // 1 MiB
inline constexpr std::uint64_t kMaxStagingBytes = 1ull << 40;  // 1 TiB
inline constexpr std::uint64_t kDefaultStagingBytes = 256ull << 20;

struct LoadOptions {
  // Reader threads; 0 chooses (see fast::decide_policy). 1..kMaxThreads.
  std::size_t threads = 0;
  // Bytes per read; 0 chooses. kMinChunkBytes..kMaxChunkBytes.
  std::uint64_t chunk_bytes = 0;
  // Host memory for staging slots (device targets) and bounce slots
  // (uncached reads): the most a load allocates beside the tensors.
  // kMinStagingBytes..kMaxStagingBytes, and at least chunk_bytes.
  std::uint64_t staging_bytes = kDefaultStagingBytes;
  // Force the staged route (through slots and a copy target) even where the
  // destination is host-writable, so its logic is exercised on every machine.
  bool staged = false;
  // Whether reads go through the page cache. kAuto: for host-writable
  // destinations, bytes the page cache holds are copied from it and the rest
  // are read with O_DIRECT into bounce slots (no page-cache page is filled
  // only to be copied once); device targets read through the page cache.
  // kCached: always through it. kUncached: always bypass it, device targets
  // included. Where O_DIRECT is unsupported (tmpfs, macOS), the page cache.
  enum class Io { kAuto, kCached, kUncached } io = Io::kAuto;
  // Populate the pages of host destinations before the copies write them
  // (Linux: MADV_POPULATE_WRITE; elsewhere nothing): the kernel gives pages
  // in bulk rather than one fault at a time inside the copies. While reads
  // bypass the page cache one more thread does it ahead of the readers,
  // overlapping the device's reads; reads the page cache serves keep every
  // core busy copying, so there each reader populates what it is about to
  // copy into. False leaves every page to fault in where a read first writes
  // it.
  bool prefault = true;
  // Upstream's choice between mapping the file and reading it ("mmap",
  // "pread"), where a caller gave one. safeload reads either way; it is kept
  // so that what was asked can be reported and honoured where it matters.
  enum class Backend { kUnspecified, kMmap, kPread } backend = Backend::kUnspecified;
  // Called by reader threads between reads (from several threads at once:
  // must be thread-safe and cheap); returning true stops the load, which then
  // throws Error(kCancelled) once every reader has stopped and every buffer
  // is released.
  std::function<bool()> cancel;
};

// Throws Error(kInvalidArgument) for the first option out of its bounds.
void validate(const LoadOptions& options);

// "auto", "cached" or "uncached"; anything else is Error(kInvalidArgument).
LoadOptions::Io parse_io(std::string_view io);
std::string_view io_name(LoadOptions::Io io);
// "mmap" or "pread" (upstream's values); anything else is Error(kInvalidArgument).
LoadOptions::Backend parse_backend(std::string_view backend);

// Every way bytes can move from a file into tensors, enumerated once, as
// re2's tester.h enumerates its engines: the C++ read tests, the fuzz target,
// the torch-layer tests and the Python robustness suite iterate this list, so a
// route cannot ship without being compared against the reference.
//   kHostCached:     host-writable destinations, through the page cache;
//   kHostBypass:     host-writable destinations, O_DIRECT into bounce slots;
//   kStagedCached:   slots and a copy target (a device), through the page cache;
//   kStagedUncached: slots and a copy target, O_DIRECT;
//   kReference:      the reference loader, one pread per tensor.
enum class ReadRoute { kHostCached, kHostBypass, kStagedCached, kStagedUncached, kReference };
inline constexpr ReadRoute kReadRoutes[] = {ReadRoute::kHostCached, ReadRoute::kHostBypass,
                                            ReadRoute::kStagedCached, ReadRoute::kStagedUncached,
                                            ReadRoute::kReference};
// "host-cached", "host-bypass", "staged-cached", "staged-uncached", "reference".
std::string_view route_name(ReadRoute route);
// Whether the route reads around the page cache (O_DIRECT): where the file
// system lacks it, the route reads through the page cache instead.
bool route_bypasses_cache(ReadRoute route);
// The fast loader's options that force `route` on a host destination
// (kReference: the defaults; the reference loader takes none).
LoadOptions route_options(ReadRoute route);

// The options' names, as the bindings accept them.
inline constexpr std::string_view kOptionNames[] = {"threads", "chunk_bytes", "staging_bytes", "staged",
                                                    "io",      "prefault",    "backend"};

}  // namespace safeload
