// The fast loader's byte movers against the reference loader, byte for byte.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <set>

#include "safeload/fast.h"
#include "deferred_target.h"
#include "safeload/reference.h"
#include "routes.h"
#include "test_util.h"

namespace safeload::fast {
namespace {

using testing::TempFile;

// Tensors of assorted sizes at assorted (odd) offsets, zero-size ones included.
std::string mixed_file() {
  return testing::u8_file({{"a", 3}, {"empty", 0}, {"b", 70001}, {"c", 1}, {"d", 4096},
                           {"e", 333333}, {"empty2", 0}, {"f", 17}});
}

struct Buffers {
  explicit Buffers(const Header& h) {
    for (const TensorInfo& t : h.tensors()) storage.emplace_back(t.nbytes(), '\x5a');  // poisoned
    for (std::string& s : storage) ptrs.push_back(s.empty() ? nullptr : s.data());
  }
  std::vector<std::string> storage;
  std::vector<void*> ptrs;
};

std::vector<std::string> reference_bytes(const File& file, const Header& h) {
  Buffers b(h);
  reference::read_tensors(file, h, b.ptrs);
  return b.storage;
}

using testing::AlignedSlots;
using testing::DeferredTarget;

// Every route of kReadRoutes against the file's own bytes (the data section
// of what the writer wrote, cut at the header's offsets), for chunk sizes
// from one byte to more than the file and one to several slots.
TEST(Routes, EveryRouteGivesTheFileBytesForEveryChunkAndSlotCount) {
  const std::string contents = mixed_file();
  TempFile tmp(contents);
  const File file = File::open(tmp.path());
  const File uncached = File::open_uncached(file);
  const Header h = Header::read(file);
  std::vector<std::string> expected;
  for (const TensorInfo& t : h.tensors()) expected.push_back(contents.substr(h.data_start() + t.begin, t.nbytes()));
  for (ReadRoute route : kReadRoutes) {
    for (std::uint64_t chunk : {1ull, 4095ull, 65536ull, 1ull << 20}) {
      if (route_bypasses_cache(route) && chunk < 512) continue;  // ~10^5 O_DIRECT reads: slow, 4095 covers it
      for (std::size_t slot_count : {1, 3}) {
        SCOPED_TRACE(::testing::Message() << route_name(route) << ", chunk " << chunk << ", " << slot_count << " slots");
        Buffers out(h);
        auto executor = make_executor(3);
        const testing::RouteRun run =
            testing::read_by_route(route, file, &uncached, h, chunk, slot_count, out.ptrs, *executor);
        EXPECT_EQ(out.storage, expected);
        EXPECT_EQ(run.slots_reused_before_wait, 0u);
        EXPECT_EQ(run.copies_pending, 0u);
      }
    }
  }
}

TEST(Routes, EachHasItsOwnNameAndOptions) {
  std::set<std::string> names;
  for (ReadRoute route : kReadRoutes) names.insert(std::string(route_name(route)));
  EXPECT_EQ(names.size(), std::size(kReadRoutes));
  EXPECT_EQ(route_options(ReadRoute::kHostBypass).io, LoadOptions::Io::kUncached);
  EXPECT_FALSE(route_options(ReadRoute::kHostBypass).staged);
  EXPECT_EQ(route_options(ReadRoute::kStagedCached).io, LoadOptions::Io::kCached);
  EXPECT_TRUE(route_options(ReadRoute::kStagedCached).staged);
}

TEST(ReadCached, MatchesReferenceForEveryChunkSize) {
  TempFile tmp(mixed_file());
  const File file = File::open(tmp.path());
  const Header h = Header::read(file);
  const auto expected = reference_bytes(file, h);
  for (std::uint64_t chunk : {1ull, 5ull, 4096ull, 65536ull, 1ull << 20}) {
    for (std::size_t threads : {1, 3, 8}) {
      SCOPED_TRACE(std::to_string(chunk) + " bytes, " + std::to_string(threads) + " threads");
      Buffers out(h);
      auto executor = make_executor(threads);
      read_cached(file, plan_reads(h, chunk), out.ptrs, *executor);
      EXPECT_EQ(out.storage, expected);
    }
  }
}

TEST(ReadStaged, MatchesReferenceThroughSyncAndDeferredCopies) {
  TempFile tmp(mixed_file());
  const File file = File::open(tmp.path());
  const Header h = Header::read(file);
  const auto expected = reference_bytes(file, h);
  for (std::uint64_t chunk : {7ull, 4096ull, 100000ull}) {
    for (std::size_t slot_count : {1, 2, 5}) {
      SCOPED_TRACE(std::to_string(chunk) + " bytes x " + std::to_string(slot_count) + " slots");
      const Plan plan = plan_reads(h, chunk);
      std::vector<std::string> ring(slot_count, std::string(chunk, '\0'));
      std::vector<void*> slots;
      for (std::string& s : ring) slots.push_back(s.data());
      auto executor = make_executor(4);

      Buffers sync_out(h);
      HostCopyTarget sync(sync_out.ptrs);
      read_staged({Source{&file}}, plan, slots, sync, *executor);
      EXPECT_EQ(sync_out.storage, expected);

      Buffers deferred_out(h);
      DeferredTarget deferred(deferred_out.ptrs);
      read_staged({Source{&file}}, plan, slots, deferred, *executor);
      EXPECT_EQ(deferred.reused_before_wait(), 0u) << "slot reused before its copies were waited for";
      EXPECT_EQ(deferred.pending(), 0u) << "every copy is finished on return";
      EXPECT_EQ(deferred_out.storage, expected);
    }
  }
}

// mixed_file() opened for reads through the page cache and around it, with
// the reference's bytes; skips where the file system has no O_DIRECT.
class Uncached : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!uncached.is_open()) GTEST_SKIP() << "the file system of " << tmp.path() << " has no O_DIRECT";
  }
  TempFile tmp{mixed_file()};
  const File file = File::open(tmp.path());
  const File uncached = File::open_uncached(file);
  const Header h = Header::read(file);
  const std::vector<std::string> expected = reference_bytes(file, h);
};

TEST_F(Uncached, StagedReadsMatchReference) {
  for (std::uint64_t chunk : {1ull, 4095ull, 4096ull, 10007ull, 1ull << 20}) {
    SCOPED_TRACE(chunk);
    const Plan plan = plan_reads(h, chunk);
    const std::uint64_t slot_bytes = slot_bytes_for(plan.chunk_bytes, /*uncached=*/true);
    EXPECT_EQ(slot_bytes % kDirectIoAlign, 0u);
    EXPECT_GE(slot_bytes, chunk + kDirectIoAlign);
    const AlignedSlots slots(slot_bytes, 3);
    Buffers out(h);
    HostCopyTarget target(out.ptrs);
    auto executor = make_executor(3);
    read_staged({Source{&file, &uncached}}, plan, slots.ptrs, target, *executor);
    EXPECT_EQ(out.storage, expected);
  }
}

// read_host mixes both ways per op: ops the cache map calls cached are read
// through the page cache, the rest with O_DIRECT through bounce slots. Every
// mix must give the reference's bytes.
TEST_F(Uncached, HostReadsMixingCachedAndUncachedOpsMatchReference) {
  const std::uint64_t pages = (file.size() + 4095) / 4096;
  std::vector<std::vector<bool>> mixes = {std::vector<bool>(pages, false), std::vector<bool>(pages, true)};
  std::vector<bool> alternating(pages);
  for (std::uint64_t p = 0; p < pages; ++p) alternating[p] = p % 2 == 0;
  mixes.push_back(alternating);
  // Chunks from sub-block to larger than the file (chunk 1 would make ~10^5
  // O_DIRECT reads per run: slow, and it adds nothing 511 does not cover).
  for (std::uint64_t chunk : {511ull, 4095ull, 10007ull, 1ull << 20}) {
    for (std::size_t slot_count : {std::size_t{1}, std::size_t{3}}) {
      for (std::size_t m = 0; m < mixes.size(); ++m) {
        SCOPED_TRACE(::testing::Message() << "chunk " << chunk << ", slots " << slot_count << ", mix " << m);
        const Plan plan = plan_reads(h, chunk);
        const AlignedSlots slots(slot_bytes_for(plan.chunk_bytes, /*uncached=*/true), slot_count);
        Buffers out(h);
        auto executor = make_executor(4);
        const CacheMap cache = CacheMap::from_pages(mixes[m], 4096);
        read_host({Source{&file, &uncached, &cache}}, plan, out.ptrs, slots.ptrs, *executor);
        EXPECT_EQ(out.storage, expected);
      }
    }
  }
}

TEST(ReadHost, PrefaultedReadsMatchReference) {
  TempFile tmp(mixed_file());
  const File file = File::open(tmp.path());
  const Header h = Header::read(file);
  const auto expected = reference_bytes(file, h);
  for (std::uint64_t chunk : {5ull, 4096ull, 1ull << 20}) {
    for (std::size_t threads : {1, 4}) {
      SCOPED_TRACE(std::to_string(chunk) + " bytes, " + std::to_string(threads) + " threads");
      Buffers out(h);
      auto executor = make_executor(threads);
      read_host({Source{&file}}, plan_reads(h, chunk), out.ptrs, {}, *executor, nullptr, /*prefault=*/true);
      EXPECT_EQ(out.storage, expected);
    }
  }
}

#if defined(__linux__)
// Fresh anonymous memory, small pages only, and which of its pages are resident.
struct FreshPages {
  explicit FreshPages(std::size_t pages) : page(static_cast<std::size_t>(::sysconf(_SC_PAGESIZE))), length(pages * page) {
    void* p = ::mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("mmap failed");
    base = static_cast<char*>(p);
    ::madvise(base, length, MADV_NOHUGEPAGE);
  }
  ~FreshPages() { ::munmap(base, length); }
  std::vector<bool> resident() const {
    std::vector<unsigned char> v(length / page);
    if (::mincore(base, length, v.data()) != 0) throw std::runtime_error("mincore failed");
    std::vector<bool> out;
    for (unsigned char c : v) out.push_back((c & 1) != 0);
    return out;
  }
  std::size_t page, length;
  char* base;
};

bool kernel_can_populate() {
  FreshPages probe(1);
  return ::madvise(probe.base, probe.page, 23 /* MADV_POPULATE_WRITE */) == 0;
}

// The prefaulter makes exactly the whole pages of each segment resident:
// none outside them (a page shared with other memory is not its to touch),
// and it changes no byte that is there already.
TEST(Prefaulter, PopulatesTheWholePagesOfEverySegmentAndNothingElse) {
  if (!kernel_can_populate()) GTEST_SKIP() << "this kernel has no MADV_POPULATE_WRITE";
  FreshPages mem(64);
  const std::size_t pg = mem.page;
  // Tensor 0: pages 1-9 plus half a page on each side; tensor 1: pages 20-39
  // exactly, split over two ops; tensor 2: less than a page, inside page 50.
  mem.base[45 * pg] = 7;  // a resident page that is not a destination
  std::vector<void*> dst = {mem.base + pg / 2, mem.base + 20 * pg, mem.base + 50 * pg + 8};
  Plan plan;
  plan.segments = {{0, 0, 10 * pg}, {1, 0, 10 * pg}, {1, 10 * pg, 10 * pg}, {2, 0, 100}};
  plan.ops = {{0, 0, 10 * pg, 0, 1}, {0, 10 * pg, 10 * pg, 1, 1}, {0, 20 * pg, 10 * pg + 100, 2, 2}};
  {
    Prefaulter prefaulter(plan, dst);
    prefaulter.join();
  }
  const std::vector<bool> resident = mem.resident();
  for (std::size_t p = 0; p < resident.size(); ++p) {
    const bool inside = (p >= 1 && p <= 9) || (p >= 20 && p < 40);
    EXPECT_EQ(resident[p], inside || p == 45) << "page " << p;
  }
  EXPECT_EQ(mem.base[45 * pg], 7);
  for (std::size_t i = pg; i < 10 * pg; ++i) ASSERT_EQ(mem.base[i], 0) << "populated memory reads as zeros";
}

// Ops a reader has already started are skipped.
TEST(Prefaulter, SkipsOpsTheReadersHaveReached) {
  if (!kernel_can_populate()) GTEST_SKIP() << "this kernel has no MADV_POPULATE_WRITE";
  FreshPages mem(40);
  const std::size_t pg = mem.page;
  std::vector<void*> dst = {mem.base};
  Plan plan;
  for (std::size_t k = 0; k < 4; ++k) {
    plan.segments.push_back({0, k * 10 * pg, 10 * pg});
    plan.ops.push_back({0, k * 10 * pg, 10 * pg, k, 1});
  }
  std::vector<bool> resident;
  {
    // Readers have started ops 0-2 before the prefaulter runs: only op 3's
    // pages are its to populate.
    Prefaulter prefaulter(plan, dst, /*start=*/false);
    prefaulter.reached(2);
    prefaulter.start();
    prefaulter.join();
  }
  resident = mem.resident();
  for (std::size_t p = 0; p < resident.size(); ++p) EXPECT_EQ(resident[p], p >= 30) << "page " << p;
}
#endif

TEST(ReadHost, TruncatedFileIsIoOnTheUncachedPathToo) {
  const std::string bytes = mixed_file();
  TempFile tmp(bytes);
  const File file = File::open(tmp.path());
  const File uncached = File::open_uncached(file);
  if (!uncached.is_open()) GTEST_SKIP() << "the file system of " << tmp.path() << " has no O_DIRECT";
  const Header h = Header::read(file);
  ASSERT_EQ(::truncate(tmp.path().c_str(), static_cast<off_t>(bytes.size() / 2)), 0);
  const Plan plan = plan_reads(h, 4096);
  const AlignedSlots slots(slot_bytes_for(plan.chunk_bytes, /*uncached=*/true), 2);
  Buffers out(h);
  auto executor = make_executor(3);
  testing::expect_code(ErrorCode::kIo, [&] {
    read_host({Source{&file, &uncached}}, plan, out.ptrs, slots.ptrs, *executor);
  });
}

TEST(ReadErrors, FileTruncatedAfterValidationIsIoAndStagingIsDrained) {
  const std::string bytes = mixed_file();
  TempFile tmp(bytes);
  const File file = File::open(tmp.path());
  const Header h = Header::read(file);
  ASSERT_EQ(::truncate(tmp.path().c_str(), static_cast<off_t>(bytes.size() / 2)), 0);

  Buffers direct_out(h);
  auto executor = make_executor(4);
  testing::expect_code(ErrorCode::kIo, [&] { read_cached(file, plan_reads(h, 4096), direct_out.ptrs, *executor); });

  Buffers staged_out(h);
  DeferredTarget deferred(staged_out.ptrs);
  std::vector<std::string> ring(3, std::string(4096, '\0'));
  std::vector<void*> slots = {ring[0].data(), ring[1].data(), ring[2].data()};
  testing::expect_code(ErrorCode::kIo, [&] { read_staged({Source{&file}}, plan_reads(h, 4096), slots, deferred, *executor); });
  EXPECT_EQ(deferred.reused_before_wait(), 0u) << "slot reused before its copies were waited for";
  EXPECT_EQ(deferred.pending(), 0u) << "no copy may still read staging memory after an error";
}

TEST(ReadHost, CancelledLoadStopsBetweenReads) {
  const std::string bytes = testing::u8_file({{"a", 1000}, {"b", 1000}});
  TempFile tmp(bytes);
  const File file = File::open(tmp.path());
  const Header h = Header::read(file);
  const Plan plan = plan_reads(h, 100);
  std::vector<std::string> out(2, std::string(1000, '\0'));
  std::vector<void*> dst = {out[0].data(), out[1].data()};
  std::atomic<int> reads{0};
  LoadControl control(plan, [&] { return ++reads > 3; });
  auto executor = make_executor(1);
  testing::expect_code(ErrorCode::kCancelled,
                       [&] { read_host({Source{&file}}, plan, dst, {}, *executor, &control); });
  EXPECT_EQ(control.bytes_done(), 300u) << "three reads, then the hook said stop";
}

TEST(ReadHost, ALargeReadIsCancelledBetweenPieces) {
  // One op three pieces long (plus a byte), two tensors: a cancel asked for
  // while the first piece is read stops the op before the rest.
  const std::uint64_t a = kCancelCheckBytes + kCancelCheckBytes / 2, b = kCancelCheckBytes * 3 / 2 + 1;
  const std::string bytes = testing::u8_file({{"a", a}, {"b", b}});
  const std::size_t data_start = bytes.size() - a - b;
  TempFile tmp(bytes);
  const File file = File::open(tmp.path());
  const Header h = Header::read(file);
  const Plan plan = plan_reads(h, a + b);
  ASSERT_EQ(plan.ops.size(), 1u);
  auto executor = make_executor(1);
  {
    std::vector<std::string> out = {std::string(a, '\0'), std::string(b, '\0')};
    std::vector<void*> dst = {out[0].data(), out[1].data()};
    std::atomic<int> checks{0};
    LoadControl control(plan, [&] { return ++checks > 2; });
    testing::expect_code(ErrorCode::kCancelled,
                         [&] { read_host({Source{&file}}, plan, dst, {}, *executor, &control); });
    EXPECT_EQ(checks.load(), 3) << "before the op, after piece 1, after piece 2";
    EXPECT_EQ(out[1].find_first_not_of('\0', b - kCancelCheckBytes), std::string::npos)
        << "the last piece was not read";
  }
  std::vector<std::string> out = {std::string(a, '\0'), std::string(b, '\0')};
  std::vector<void*> dst = {out[0].data(), out[1].data()};
  std::atomic<int> checks{0};
  LoadControl control(plan, [&] { return ++checks > 1000; });
  read_host({Source{&file}}, plan, dst, {}, *executor, &control);
  EXPECT_EQ(checks.load(), 4) << "once before the op, once between each of its 4 pieces";
  EXPECT_TRUE(out[0] + out[1] == bytes.substr(data_start)) << "pieces that split a tensor join up";
}

}  // namespace
}  // namespace safeload::fast
