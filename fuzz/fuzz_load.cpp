// Fuzz target: a full load of an in-memory file through every torch-free
// loader, which must agree.
//
// The input is a whole file. It is put in an anonymous memory file
// (memfd_create) and opened like any other file, then:
//   1. Header::read (through the file) and Header::from_bytes (on the bytes)
//      must give the same verdict and error code;
//   2. if valid, every route of safeload::kReadRoutes (the reference, the
//      host routes, the staged routes through a deferred-copy target) must
//      succeed and produce exactly the bytes the file holds for each tensor.
// Chunk size, thread count and staging slot count are derived from a hash of
// the input, so every input is replayed the same way and small chunks (many
// ops, tensors split across slots) are common.
//
// Memory stays bounded: the header is validated first, so the data section is
// known to fit the input, and inputs needing more than kMaxDestinationBytes
// of destination are skipped before anything is allocated for them.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "fuzz_check.h"
#include "safeload/error.h"
#include "safeload/fast.h"
#include "safeload/file.h"
#include "safeload/header.h"
#include "safeload/options.h"
#include "safeload/reference.h"
#include "routes.h"

namespace {

using safeload::ErrorCode;
using safeload::File;
using safeload::Header;
namespace fast = safeload::fast;
using safeload::kReadRoutes;
using safeload::ReadRoute;
using safeload::route_name;

constexpr std::uint64_t kMaxDestinationBytes = 4ull << 20;
// Bounds the number of reads per load (tiny chunks on a large replayed file).
constexpr std::uint64_t kMaxOps = 1ull << 16;

// One anonymous in-memory file, rewritten for every input.
class MemFile {
 public:
  MemFile() : fd_(::memfd_create("safeload-fuzz", MFD_CLOEXEC)) {
    FUZZ_CHECK(fd_ >= 0, "memfd_create");
  }
  ~MemFile() { ::close(fd_); }

  // Replaces the contents and returns a fresh File opened on them.
  File reopen_with(const std::uint8_t* data, std::size_t size) {
    FUZZ_CHECK(::ftruncate(fd_, 0) == 0, "ftruncate");
    std::size_t done = 0;
    while (done < size) {
      const ssize_t n = ::pwrite(fd_, data + done, size - done, static_cast<off_t>(done));
      FUZZ_CHECK(n > 0, "pwrite to the memory file");
      done += static_cast<std::size_t>(n);
    }
    return File::open("/proc/self/fd/" + std::to_string(fd_));
  }

 private:
  int fd_;
};

struct Verdict {
  std::optional<ErrorCode> error;  // nullopt: success
  bool operator==(const Verdict& o) const { return error == o.error; }
};

template <typename Fn>
Verdict run(Fn&& fn) {
  try {
    fn();
    return {};
  } catch (const safeload::Error& e) {
    return {e.code()};
  }
}

// Exactly-sized destinations (so AddressSanitizer sees any overrun), filled
// with a marker so unwritten bytes show.
struct Buffers {
  explicit Buffers(const Header& h) {
    for (const safeload::TensorInfo& t : h.tensors()) {
      storage.emplace_back(new unsigned char[t.nbytes()]);
      std::memset(storage.back().get(), 0xA5, t.nbytes());
      ptrs.push_back(t.nbytes() == 0 ? nullptr : storage.back().get());
    }
  }
  std::vector<std::unique_ptr<unsigned char[]>> storage;
  std::vector<void*> ptrs;
};

void check_bytes(const Header& h, const Buffers& got, const std::uint8_t* file, const char* loader) {
  for (std::size_t i = 0; i < h.tensors().size(); ++i) {
    const safeload::TensorInfo& t = h.tensors()[i];
    FUZZ_CHECK(std::memcmp(got.storage[i].get(), file + h.data_start() + t.begin, t.nbytes()) == 0,
               loader);
  }
}

// The plan covers the data section exactly once, in file order, within limits.
void check_plan(const Header& h, const fast::Plan& plan) {
  std::uint64_t at = h.data_start();
  std::size_t next_segment = 0;
  for (const fast::ReadOp& op : plan.ops) {
    FUZZ_CHECK(op.file_offset == at, "ops are contiguous and in file order");
    FUZZ_CHECK(op.length > 0 && op.length <= plan.chunk_bytes, "op length within the chunk size");
    FUZZ_CHECK(op.segment_count > 0 && op.segment_count <= fast::kMaxSegmentsPerOp,
               "segment count within preadv's limit");
    FUZZ_CHECK(op.first_segment == next_segment, "ops take consecutive segments");
    std::uint64_t length = 0;
    for (std::size_t s = 0; s < op.segment_count; ++s) {
      const fast::Segment& seg = plan.segments[op.first_segment + s];
      const safeload::TensorInfo& t = h.tensors()[seg.tensor];
      FUZZ_CHECK(seg.length > 0 && seg.tensor_offset + seg.length <= t.nbytes(),
                 "a segment lies inside its tensor");
      FUZZ_CHECK(h.data_start() + t.begin + seg.tensor_offset == at + length,
                 "a segment's file position follows the previous one");
      length += seg.length;
    }
    FUZZ_CHECK(length == op.length, "segments add up to the op");
    next_segment += op.segment_count;
    at += op.length;
  }
  FUZZ_CHECK(next_segment == plan.segments.size(), "every segment belongs to an op");
  FUZZ_CHECK(at == h.file_size() && plan.total_bytes == h.data_length(),
             "the plan covers the data section exactly");
}

std::uint64_t fnv1a(const std::uint8_t* data, std::size_t size) {
  std::uint64_t x = 0xcbf29ce484222325ull;
  for (std::size_t i = 0; i < size; ++i) x = (x ^ data[i]) * 0x100000001b3ull;
  return x;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static MemFile mem;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  File file = mem.reopen_with(data, size);
  FUZZ_CHECK(file.size() == size, "the memory file holds the input");

  std::optional<Header> from_file;
  const Verdict read_verdict = run([&] { from_file.emplace(Header::read(file)); });
  const Verdict bytes_verdict = run([&] { Header::from_bytes(bytes, file.path()); });
  FUZZ_CHECK(read_verdict == bytes_verdict, "Header::read and Header::from_bytes disagree");
  if (!from_file) return 0;
  const Header& h = *from_file;
  FUZZ_CHECK(h.file_size() == size, "a valid header accounts for the whole file");
  if (h.data_length() > kMaxDestinationBytes) return 0;

  static constexpr std::uint64_t kChunks[] = {1, 2, 3, 5, 7, 8, 13, 64, 100, 4096, 65536, 1 << 20};
  const std::uint64_t hash = fnv1a(data, size);
  std::uint64_t chunk = kChunks[hash % (sizeof kChunks / sizeof kChunks[0])];
  while (h.data_length() / chunk > kMaxOps) chunk *= 2;
  chunk = std::min<std::uint64_t>(chunk, std::max<std::uint64_t>(h.data_length(), 1));  // slot size
  const std::size_t threads = 1 + (hash >> 8) % 3;
  const std::size_t slot_count = 1 + (hash >> 16) % 3;

  const fast::Plan plan = fast::plan_reads(h, chunk);
  check_plan(h, plan);
  const std::unique_ptr<fast::Executor> executor = fast::make_executor(threads);

  // Every route of kReadRoutes, each against the input's own bytes; the
  // reference must accept what validated. The memory file has no O_DIRECT,
  // so the bypass routes read through the page cache, as the loaders do on
  // such a file system.
  for (ReadRoute route : kReadRoutes) {
    const std::string name(route_name(route));
    Buffers out(h);
    safeload::testing::RouteRun info;
    const Verdict verdict = run([&] {
      info = safeload::testing::read_by_route(route, file, nullptr, h, chunk, slot_count, out.ptrs, *executor);
    });
    FUZZ_CHECK(!verdict.error, (name + " fails on a validated in-memory file").c_str());
    check_bytes(h, out, data, (name + " returns other bytes than the file holds").c_str());
    FUZZ_CHECK(info.slots_reused_before_wait == 0, (name + ": a slot refilled before its copies were waited for").c_str());
    FUZZ_CHECK(info.copies_pending == 0, (name + ": returned with copies still pending").c_str());
  }
  return 0;
}
