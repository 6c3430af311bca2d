// The fast loader's byte movers against the reference loader, byte for byte.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>

#include "safeload/fast.h"
#include "deferred_target.h"
#include "safeload/reference.h"
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

// `count` kDirectIoAlign-aligned slots of `slot_bytes` each, as O_DIRECT needs.
struct AlignedSlots {
  AlignedSlots(std::uint64_t slot_bytes, std::size_t count) : memory(slot_bytes * count + kDirectIoAlign) {
    const auto base = (reinterpret_cast<std::uintptr_t>(memory.data()) + kDirectIoAlign - 1) / kDirectIoAlign * kDirectIoAlign;
    for (std::size_t i = 0; i < count; ++i) ptrs.push_back(reinterpret_cast<void*>(base + i * slot_bytes));
  }
  std::vector<char> memory;
  std::vector<void*> ptrs;
};

std::vector<std::string> reference_bytes(const File& file, const Header& h) {
  Buffers b(h);
  reference::read_tensors(file, h, b.ptrs);
  return b.storage;
}

using testing::DeferredTarget;

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

}  // namespace
}  // namespace safeload::fast
