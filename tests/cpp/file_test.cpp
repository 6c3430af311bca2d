#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "safeload/file.h"
#include "test_util.h"

namespace safeload {
namespace {

using testing::expect_code;
using testing::pattern_bytes;
using testing::TempFile;

// A fake file for the injectable read loops: serves `g_data`, at most
// `g_max_per_call` bytes per call, failing every other call with EINTR.
std::string g_data;
std::size_t g_max_per_call = 1;
int g_calls = 0;

long fake_pread(int, void* buf, std::size_t n, std::int64_t offset) {
  if (++g_calls % 2 == 1) {
    errno = EINTR;
    return -1;
  }
  if (static_cast<std::size_t>(offset) >= g_data.size()) return 0;
  const std::size_t take = std::min({n, g_max_per_call, g_data.size() - static_cast<std::size_t>(offset)});
  std::memcpy(buf, g_data.data() + offset, take);
  return static_cast<long>(take);
}

long fake_preadv(int fd, const struct iovec* iov, int count, std::int64_t offset) {
  if (count == 0) return 0;
  return fake_pread(fd, iov[0].iov_base, iov[0].iov_len, offset);  // short: first buffer only
}

long failing_pread(int, void*, std::size_t, std::int64_t) {
  errno = EIO;
  return -1;
}

TEST(PreadFull, ReadsExactBytesAtOffset) {
  const std::string data = pattern_bytes(10000, 1);
  TempFile tmp(data);
  const File file = File::open(tmp.path());
  EXPECT_EQ(file.size(), data.size());
  std::string out(3000, '\0');
  file.pread_full(out.data(), out.size(), 4321);
  EXPECT_EQ(out, data.substr(4321, 3000));
}

TEST(PreadFull, RetriesEintrAndShortReads) {
  g_data = pattern_bytes(1000, 2);
  g_max_per_call = 7;
  g_calls = 0;
  std::string out(900, '\0');
  detail::pread_full_using(fake_pread, -1, out.data(), out.size(), 50, "fake");
  EXPECT_EQ(out, g_data.substr(50, 900));
  EXPECT_GT(g_calls, 2 * (900 / 7));  // it really did take many short, interrupted calls
}

TEST(PreadFull, UnexpectedEofIsAnIoError) {
  g_data = pattern_bytes(100, 3);
  g_max_per_call = 64;
  g_calls = 0;
  std::string out(50, '\0');
  expect_code(ErrorCode::kIo, [&] { detail::pread_full_using(fake_pread, -1, out.data(), 50, 80, "fake"); });

  TempFile tmp(pattern_bytes(10, 4));
  const File file = File::open(tmp.path());
  expect_code(ErrorCode::kIo, [&] { file.pread_full(out.data(), 11, 0); });
}

TEST(PreadFull, ReadErrorKeepsErrno) {
  char buf[4];
  try {
    detail::pread_full_using(failing_pread, -1, buf, sizeof buf, 0, "fake");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kIo);
    EXPECT_EQ(e.sys_errno(), EIO);
  }
}

TEST(PreadvFull, ScattersAcrossBuffersThroughShortReads) {
  g_data = pattern_bytes(500, 5);
  g_max_per_call = 5;
  g_calls = 0;
  std::string a(13, '\0'), b(0, '\0'), c(101, '\0');
  iovec iov[3] = {{a.data(), a.size()}, {b.data(), 0}, {c.data(), c.size()}};
  detail::preadv_full_using(fake_preadv, -1, iov, 3, 20, "fake");
  EXPECT_EQ(a + c, g_data.substr(20, 114));
}

TEST(PreadvFull, RealFile) {
  const std::string data = pattern_bytes(4096, 6);
  TempFile tmp(data);
  const File file = File::open(tmp.path());
  std::string a(1000, '\0'), b(2000, '\0');
  iovec iov[2] = {{a.data(), a.size()}, {b.data(), b.size()}};
  preadv_full(file.fd(), iov, 2, 77, file.path());
  EXPECT_EQ(a + b, data.substr(77, 3000));
  iovec past[1] = {{a.data(), a.size()}};
  expect_code(ErrorCode::kIo, [&] { preadv_full(file.fd(), past, 1, 3500, file.path()); });
}

TEST(File, OpenUncachedReadsAlignedBlocks) {
  const std::string data = pattern_bytes(3 * kDirectIoAlign + 100, 8);
  TempFile tmp(data);
  const File uncached = File::open_uncached(File::open(tmp.path()));
  if (!uncached.is_open()) GTEST_SKIP() << "the file system of " << tmp.path() << " has no O_DIRECT";
  EXPECT_EQ(uncached.size(), data.size());
  alignas(4096) static char buf[4 * 4096];
  EXPECT_EQ(::pread(uncached.fd(), buf, 2 * kDirectIoAlign, kDirectIoAlign), 2 * static_cast<ssize_t>(kDirectIoAlign));
  EXPECT_EQ(std::string(buf, 2 * kDirectIoAlign), data.substr(kDirectIoAlign, 2 * kDirectIoAlign));
}

TEST(File, UncachedViewIsNeverAnotherFileThanTheOpenOne) {
  TempFile tmp(pattern_bytes(2 * kDirectIoAlign, 3));
  const File file = File::open(tmp.path());
  if (!File::open_uncached(file).is_open()) GTEST_SKIP() << "the file system of " << tmp.path() << " has no O_DIRECT";
  TempFile other(pattern_bytes(2 * kDirectIoAlign, 4));
  ASSERT_EQ(::rename(other.path().c_str(), tmp.path().c_str()), 0);  // the path now names another file
  EXPECT_FALSE(File::open_uncached(file).is_open()) << "an O_DIRECT view of the replacement would mix two files";
}

TEST(File, OpenMissingFileIsIoWithErrno) {
  try {
    File::open("/nonexistent/safeload/file.safetensors");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kIo);
    EXPECT_EQ(e.sys_errno(), ENOENT);
  }
}

TEST(File, OpenDirectoryIsIo) {
  expect_code(ErrorCode::kIo, [] { File::open("/tmp"); });
}

TEST(File, MoveTransfersOwnership) {
  TempFile tmp("abc");
  File a = File::open(tmp.path());
  const int fd = a.fd();
  File b = std::move(a);
  EXPECT_EQ(b.fd(), fd);
  EXPECT_EQ(a.fd(), -1);  // NOLINT: moved-from state is part of the contract
}

}  // namespace
}  // namespace safeload
