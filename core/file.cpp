#include "safeload/file.h"

#include <fcntl.h>
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

namespace {

// What a path that is not a regular file is, for the message.
const char* file_kind(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  return "not a regular file";
}

// Opens `path` read-only without blocking (a FIFO would otherwise block in
// open() until a writer comes) and accepts only a regular file. Returns -1
// with errno set where `flags` are refused (O_DIRECT on tmpfs).
int open_regular(const std::string& path, int flags, std::uint64_t* size) {
  SAFELOAD_CHECK(path.find('\0') == std::string::npos, ErrorCode::kInvalidArgument,
                 "path contains a NUL byte: '" + path.substr(0, path.find('\0')) + "\\0...'");
  int fd;
  do {
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | flags);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return -1;
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    throw_io("cannot stat", path, err);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    const int err = S_ISDIR(st.st_mode) ? EISDIR : EINVAL;
    throw Error(ErrorCode::kIo, "cannot load '" + path + "': it is " + file_kind(st.st_mode) +
                                    ", and only regular files are read", err);
  }
  // Regular files ignore O_NONBLOCK; cleared all the same so reads mean what they say.
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  *size = static_cast<std::uint64_t>(st.st_size);
  return fd;
}

}  // namespace

File File::open(const std::string& path) {
  std::uint64_t size = 0;
  const int fd = open_regular(path, 0, &size);
  if (fd < 0) {
    const int err = errno;
    // Some kinds cannot even be opened (a socket: ENXIO); say what it is.
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)) {
      throw Error(ErrorCode::kIo, "cannot load '" + path + "': it is " + file_kind(st.st_mode) +
                                      ", and only regular files are read", EINVAL);
    }
    throw_io("cannot open", path, err);
  }
  return File(fd, path, size);
}

File File::open_uncached(const File& file) {
#if defined(__linux__)
  std::uint64_t size = 0;
  const int fd = open_regular(file.path(), O_DIRECT, &size);
  if (fd >= 0) {
    File out(fd, file.path(), size);
    struct stat a {}, b {};
    const bool same = ::fstat(file.fd(), &a) == 0 && ::fstat(fd, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino;
    if (same) return out;
  }
#endif
  return File(-1, file.path(), 0);  // e.g. tmpfs refuses O_DIRECT with EINVAL
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

}  // namespace safeload
