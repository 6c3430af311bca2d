// File primitives: an owning read-only file handle and positional reads.
//
// All reads name their offset explicitly (pread); nothing in safeload uses a
// shared file cursor, so one File may be read from many threads at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

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

  // Opens the file `file` has open again, for reads that bypass the page
  // cache (O_DIRECT), for data that is not cached anyway: the device then
  // writes straight into the buffer, with no page-cache copy. Returns a File
  // that is not is_open() where the platform or file system does not support
  // it, or where the path now names another file (replaced since `file` was
  // opened): both views always read the same file.
  static File open_uncached(const File& file);

  File() = default;  // not open
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

}  // namespace safeload
