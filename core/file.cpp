#include "safeload/file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "safeload/error.h"

namespace safeload {
namespace {

// Linux transfers at most 0x7ffff000 bytes per read; asking for less keeps
// every call a full one on all platforms.
constexpr std::size_t kMaxReadPerCall = std::size_t{1} << 30;

[[noreturn]] void throw_io(const std::string& what, const std::string& path, int err) {
  throw Error(ErrorCode::kIo, what + " '" + path + "': " + std::strerror(err), err);
}

[[noreturn]] void throw_eof(const std::string& path, std::uint64_t wanted, std::uint64_t offset,
                           std::uint64_t done) {
  throw Error(ErrorCode::kIo, "unexpected end of file in '" + path + "': wanted " +
                                  std::to_string(wanted) + " bytes at offset " +
                                  std::to_string(offset) + ", the file ends after " +
                                  std::to_string(done) + " of them. Was the file truncated while loading?");
}

long system_pread(int fd, void* buf, std::size_t n, std::int64_t offset) {
  return ::pread(fd, buf, n, static_cast<off_t>(offset));
}

long system_preadv(int fd, const struct iovec* iov, int count, std::int64_t offset) {
  return ::preadv(fd, iov, count, static_cast<off_t>(offset));
}

}  // namespace

void pread_full(int fd, void* dst, std::size_t n, std::uint64_t offset, const std::string& path) {
  detail::pread_full_using(system_pread, fd, dst, n, offset, path);
}

void preadv_full(int fd, struct iovec* iov, int count, std::uint64_t offset,
                 const std::string& path) {
  detail::preadv_full_using(system_preadv, fd, iov, count, offset, path);
}

namespace detail {

void pread_full_using(PreadFn fn, int fd, void* dst, std::size_t n, std::uint64_t offset,
                      const std::string& path) {
  auto* out = static_cast<unsigned char*>(dst);
  std::size_t done = 0;
  while (done < n) {
    const std::size_t want = std::min(n - done, kMaxReadPerCall);
    const long got = fn(fd, out + done, want, static_cast<std::int64_t>(offset + done));
    if (got < 0) {
      if (errno == EINTR) continue;
      throw_io("cannot read " + std::to_string(want) + " bytes at offset " +
                   std::to_string(offset + done) + " of",
               path, errno);
    }
    if (got == 0) throw_eof(path, n, offset, done);
    done += static_cast<std::size_t>(got);
  }
}

void preadv_full_using(PreadvFn fn, int fd, struct iovec* iov, int count, std::uint64_t offset,
                       const std::string& path) {
  std::uint64_t wanted = 0;
  for (int i = 0; i < count; ++i) wanted += iov[i].iov_len;
  std::uint64_t done = 0;
  while (count > 0) {
    if (iov->iov_len == 0) {
      ++iov, --count;
      continue;
    }
    const long got = fn(fd, iov, count, static_cast<std::int64_t>(offset + done));
    if (got < 0) {
      if (errno == EINTR) continue;
      throw_io("cannot read " + std::to_string(wanted - done) + " bytes at offset " +
                   std::to_string(offset + done) + " of",
               path, errno);
    }
    if (got == 0) throw_eof(path, wanted, offset, done);
    done += static_cast<std::uint64_t>(got);
    // Advance past what was read: whole buffers first, then into a partial one.
    std::size_t left = static_cast<std::size_t>(got);
    while (count > 0 && left >= iov->iov_len) {
      left -= iov->iov_len;
      ++iov, --count;
    }
    if (count > 0) {
      iov->iov_base = static_cast<char*>(iov->iov_base) + left;
      iov->iov_len -= left;
    }
  }
}

}  // namespace detail

File::File(int fd, std::string path, std::uint64_t size)
    : fd_(fd), path_(std::move(path)), size_(size) {}

File File::open(const std::string& path) {
  int fd;
  do {
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) throw_io("cannot open", path, errno);
  File file(fd, path, 0);  // owns fd from here on, so every throw below closes it
  struct stat st {};
  if (::fstat(fd, &st) != 0) throw_io("cannot stat", path, errno);
  if (!S_ISREG(st.st_mode)) throw_io("not a regular file:", path, S_ISDIR(st.st_mode) ? EISDIR : EINVAL);
  file.size_ = static_cast<std::uint64_t>(st.st_size);
  return file;
}

File File::open_uncached(const std::string& path) {
#if defined(__linux__)
  int fd;
  do {
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT);
  } while (fd < 0 && errno == EINTR);
  if (fd >= 0) {
    struct stat st {};
    if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) return File(fd, path, static_cast<std::uint64_t>(st.st_size));
    ::close(fd);
  }
#endif
  return File(-1, path, 0);  // e.g. tmpfs refuses O_DIRECT with EINVAL
}

File::File(File&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)), path_(std::move(other.path_)), size_(other.size_) {}

File& File::operator=(File&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = std::exchange(other.fd_, -1);
    path_ = std::move(other.path_);
    size_ = other.size_;
  }
  return *this;
}

File::~File() {
  if (fd_ >= 0) ::close(fd_);
}

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

}  // namespace safeload
