#include <sys/mman.h>
#include <unistd.h>

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

bool CacheMap::cached(std::uint64_t offset, std::uint64_t length) const {
  if (!from_pages_ && map_ == nullptr) return all_;
  if (length == 0) return true;
  const std::uint64_t first = offset / page_size_;
  const std::uint64_t last = (offset + length - 1) / page_size_;
  const std::uint64_t span = last - first;
  const std::uint64_t samples = std::min(span + 1, kSamples);
  for (std::uint64_t i = 0; i < samples; ++i) {
    const std::uint64_t page = samples == 1 ? first : first + span * i / (samples - 1);
    if (!page_cached(page)) return false;
  }
  return true;
}

}  // namespace safeload::fast
