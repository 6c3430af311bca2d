// File primitives: an owning read-only file handle and positional reads.
//
// All reads name their offset explicitly (pread); nothing in safeload uses a
// shared file cursor, so one File may be read from many threads at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

struct iovec;

namespace safeload {

// Reads exactly `n` bytes at `offset` of `fd` into `dst`.
// Retries on EINTR and on short reads; end of file before `n` bytes is an
// error (kIo), as is any failing read. `path` is only used in messages.
// Thread-safe for concurrent calls on the same fd.
void pread_full(int fd, void* dst, std::size_t n, std::uint64_t offset, const std::string& path);

// Reads exactly the total length of `iov[0..count)` at `offset` of `fd`,
// scattering it across the buffers in order (one preadv per call where the
// kernel allows). Same retry and error rules as pread_full. `iov` is consumed:
// its entries are advanced past what was read.
void preadv_full(int fd, struct iovec* iov, int count, std::uint64_t offset,
                 const std::string& path);

namespace detail {
// The same loops over injectable system calls, so tests can force EINTR and
// short reads deterministically. Production code uses the functions above.
using PreadFn = long (*)(int fd, void* buf, std::size_t n, std::int64_t offset);
using PreadvFn = long (*)(int fd, const struct iovec* iov, int count, std::int64_t offset);
void pread_full_using(PreadFn fn, int fd, void* dst, std::size_t n, std::uint64_t offset,
                      const std::string& path);
void preadv_full_using(PreadvFn fn, int fd, struct iovec* iov, int count, std::uint64_t offset,
                       const std::string& path);
}  // namespace detail

// Reads from a File opened with File::open_uncached must use offsets,
// lengths and buffer addresses that are multiples of this (O_DIRECT's rule;
// 4 KiB covers 512-byte and 4 KiB logical blocks alike).
inline constexpr std::uint64_t kDirectIoAlign = 4096;

// An open, read-only file. Owns its descriptor (closed on destruction);
// movable, not copyable. The size is taken once, at open.
class File {
 public:
  // Opens `path` read-only (O_CLOEXEC). Throws Error(kIo) naming the path and
  // the system's reason if it cannot be opened or is not a regular file.
  static File open(const std::string& path);

  // Opens `path` for reads that bypass the page cache (O_DIRECT), for data
  // that is not cached anyway: the device then writes straight into the
  // buffer, with no page-cache copy. Returns a File that is not is_open()
  // where the platform or file system does not support it.
  static File open_uncached(const std::string& path);

  File(File&& other) noexcept;
  File& operator=(File&& other) noexcept;
  File(const File&) = delete;
  File& operator=(const File&) = delete;
  ~File();

  bool is_open() const noexcept { return fd_ >= 0; }
  int fd() const noexcept { return fd_; }
  const std::string& path() const noexcept { return path_; }
  std::uint64_t size() const noexcept { return size_; }

  void pread_full(void* dst, std::size_t n, std::uint64_t offset) const {
    safeload::pread_full(fd_, dst, n, offset, path_);
  }


 private:
  File(int fd, std::string path, std::uint64_t size);
  int fd_ = -1;
  std::string path_;
  std::uint64_t size_ = 0;
};

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

}  // namespace safeload
