#include <sys/mman.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/syscall.h>
#endif

#include <algorithm>
#include <utility>

#include "safeload/error.h"
#include "safeload/fast.h"

namespace safeload::fast {

CacheMap CacheMap::of(const File& file) {
#if defined(__linux__) || defined(__APPLE__)
  const long page = ::sysconf(_SC_PAGESIZE);
  if (file.size() == 0 || page <= 0 || file.size() > SIZE_MAX / 2) return CacheMap(true);
  void* map = ::mmap(nullptr, static_cast<std::size_t>(file.size()), PROT_READ, MAP_SHARED, file.fd(), 0);
  if (map == MAP_FAILED) return CacheMap(true);
  CacheMap out(false);
  out.map_ = map;
  out.map_length_ = file.size();
  out.page_size_ = static_cast<std::uint64_t>(page);
  return out;
#else
  (void)file;
  return CacheMap(true);
#endif
}

CacheMap CacheMap::from_pages(std::vector<bool> pages, std::uint64_t page_size) {
  SAFELOAD_INTERNAL_ASSERT(page_size > 0, "page size must be positive");
  CacheMap out(false);
  out.from_pages_ = true;
  out.pages_ = std::move(pages);
  out.page_size_ = page_size;
  return out;
}

CacheMap::CacheMap(CacheMap&& other) noexcept
    : all_(other.all_),
      pages_(std::move(other.pages_)),
      from_pages_(other.from_pages_),
      map_(std::exchange(other.map_, nullptr)),
      map_length_(other.map_length_),
      page_size_(other.page_size_) {}

CacheMap::~CacheMap() {
  if (map_ != nullptr) ::munmap(map_, static_cast<std::size_t>(map_length_));
}

bool CacheMap::page_cached(std::uint64_t page) const {
  if (from_pages_) return page < pages_.size() && pages_[page];
  if (page * page_size_ >= map_length_) return false;
#if defined(__APPLE__)
  char flag = 0;
#else
  unsigned char flag = 0;
#endif
  char* at = static_cast<char*>(map_) + page * page_size_;
  if (::mincore(at, static_cast<std::size_t>(page_size_), &flag) != 0) return true;  // cannot tell
  return (flag & 1) != 0;
}

// Calls visit(page) for at most `most` pages of [offset, offset + length): the
// first, the last and evenly spaced ones between; stops where visit says so.
template <typename Visit>
static void sample_pages(std::uint64_t offset, std::uint64_t length, std::uint64_t page_size, std::uint64_t most,
                         Visit visit) {
  const std::uint64_t first = offset / page_size;
  const std::uint64_t last = (offset + length - 1) / page_size;
  const std::uint64_t span = last - first;
  const std::uint64_t samples = std::min(span + 1, most);
  for (std::uint64_t i = 0; i < samples; ++i) {
    if (!visit(samples == 1 ? first : first + span * i / (samples - 1))) return;
  }
}

bool CacheMap::cached(std::uint64_t offset, std::uint64_t length) const {
  if (!from_pages_ && map_ == nullptr) return all_;
  if (length == 0) return true;
  bool all = true;
  sample_pages(offset, length, page_size_, kSamples, [&](std::uint64_t page) { return all = page_cached(page); });
  return all;
}

double CacheMap::cached_fraction(std::uint64_t offset, std::uint64_t length) const {
  if (!from_pages_ && map_ == nullptr) return all_ ? 1.0 : 0.0;
  if (length == 0) return 1.0;
  std::uint64_t seen = 0, hits = 0;
  sample_pages(offset, length, page_size_, kFractionSamples, [&](std::uint64_t page) {
    ++seen;
    hits += page_cached(page) ? 1 : 0;
    return true;
  });
  return static_cast<double>(hits) / static_cast<double>(seen);
}

double CacheMap::file_fraction(const File& file) {
  if (file.size() == 0) return 1.0;
#if defined(__linux__) && (defined(__NR_cachestat) || defined(__x86_64__) || defined(__aarch64__))
#ifndef __NR_cachestat
  constexpr long kCachestat = 451;  // the same on x86-64 and arm64 (Linux 6.5); older headers lack it
#else
  constexpr long kCachestat = __NR_cachestat;
#endif
  struct {
    std::uint64_t offset, length;
  } range{0, file.size()};
  struct {
    std::uint64_t cache, dirty, writeback, evicted, recently_evicted;
  } stat{};
  const long page = ::sysconf(_SC_PAGESIZE);
  if (page > 0 && ::syscall(kCachestat, file.fd(), &range, &stat, 0) == 0) {
    const std::uint64_t pages = (file.size() + static_cast<std::uint64_t>(page) - 1) / static_cast<std::uint64_t>(page);
    return std::min(1.0, static_cast<double>(stat.cache) / static_cast<double>(pages));
  }
#endif
  return of(file).cached_fraction(0, file.size());  // no cachestat here (ENOSYS, or refused): sampled
}

}  // namespace safeload::fast
