#include "safeload/options.h"

#include "safeload/error.h"

namespace safeload {
namespace {

std::string bytes(std::uint64_t n) {
  if (n % (1ull << 30) == 0 && n >= (1ull << 30)) return std::to_string(n >> 30) + " GiB";
  if (n % (1ull << 20) == 0 && n >= (1ull << 20)) return std::to_string(n >> 20) + " MiB";
  if (n % (1ull << 10) == 0 && n >= (1ull << 10)) return std::to_string(n >> 10) + " KiB";
  return std::to_string(n) + " bytes";
}

void check_range(const char* name, std::uint64_t value, std::uint64_t lo, std::uint64_t hi, bool sizes) {
  SAFELOAD_CHECK(value >= lo && value <= hi, ErrorCode::kInvalidArgument,
                 std::string(name) + " must be 0 (automatic) or between " + (sizes ? bytes(lo) : std::to_string(lo)) +
                     " and " + (sizes ? bytes(hi) : std::to_string(hi)) + ", got " + std::to_string(value));
}

}  // namespace

void validate(const LoadOptions& options) {
  if (options.threads != 0) check_range("threads", options.threads, 1, kMaxThreads, false);
  if (options.chunk_bytes != 0) check_range("chunk_bytes", options.chunk_bytes, kMinChunkBytes, kMaxChunkBytes, true);
  SAFELOAD_CHECK(options.staging_bytes >= kMinStagingBytes && options.staging_bytes <= kMaxStagingBytes,
                 ErrorCode::kInvalidArgument,
                 "staging_bytes must be between " + bytes(kMinStagingBytes) + " and " + bytes(kMaxStagingBytes) +
                     ", got " + std::to_string(options.staging_bytes));
  SAFELOAD_CHECK(options.chunk_bytes <= options.staging_bytes, ErrorCode::kInvalidArgument,
                 "staging_bytes (" + std::to_string(options.staging_bytes) +
                     ") must hold at least one chunk (chunk_bytes " + std::to_string(options.chunk_bytes) + ")");
  const int io = static_cast<int>(options.io);
  SAFELOAD_CHECK(io >= 0 && io <= static_cast<int>(LoadOptions::Io::kUncached), ErrorCode::kInvalidArgument,
                 "io must be auto, cached or uncached, got the value " + std::to_string(io));
}

LoadOptions::Io parse_io(std::string_view io) {
  if (io == "auto") return LoadOptions::Io::kAuto;
  if (io == "cached") return LoadOptions::Io::kCached;
  if (io == "uncached") return LoadOptions::Io::kUncached;
  throw Error(ErrorCode::kInvalidArgument, "io must be 'auto', 'cached' or 'uncached', got '" + std::string(io) + "'");
}

LoadOptions::Backend parse_backend(std::string_view backend) {
  if (backend == "mmap") return LoadOptions::Backend::kMmap;
  if (backend == "pread") return LoadOptions::Backend::kPread;
  throw Error(ErrorCode::kInvalidArgument,
              "backend '" + std::string(backend) + "' is invalid (expected one of: 'mmap', 'pread', None)");
}

std::string_view io_name(LoadOptions::Io io) {
  switch (io) {
    case LoadOptions::Io::kAuto: return "auto";
    case LoadOptions::Io::kCached: return "cached";
    case LoadOptions::Io::kUncached: return "uncached";
  }
  return "?";
}

std::string_view route_name(ReadRoute route) {
  switch (route) {
    case ReadRoute::kHostCached: return "host-cached";
    case ReadRoute::kHostBypass: return "host-bypass";
    case ReadRoute::kStagedCached: return "staged-cached";
    case ReadRoute::kStagedUncached: return "staged-uncached";
    case ReadRoute::kReference: return "reference";
  }
  return "?";
}

bool route_bypasses_cache(ReadRoute route) {
  return route == ReadRoute::kHostBypass || route == ReadRoute::kStagedUncached;
}

LoadOptions route_options(ReadRoute route) {
  LoadOptions options;
  options.staged = route == ReadRoute::kStagedCached || route == ReadRoute::kStagedUncached;
  if (route != ReadRoute::kReference) {
    options.io = route_bypasses_cache(route) ? LoadOptions::Io::kUncached : LoadOptions::Io::kCached;
  }
  return options;
}

}  // namespace safeload
