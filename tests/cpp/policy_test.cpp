// The read policy (a pure function), page-cache residency maps, multi-file
// plans, and the load control that readers and waiters share.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <atomic>
#include <thread>

#include "safeload/fast.h"
#include "test_util.h"

namespace safeload::fast {
namespace {

using testing::TempFile;

PolicyInput host_input(std::uint64_t data_bytes) {
  PolicyInput in;
  in.data_bytes = data_bytes;
  in.cores = 2;
  in.direct_io = true;
  return in;
}

TEST(Policy, WarmHostLoadReadsStraightIntoTensorsWithOneReaderPerCore) {
  const ReadPolicy p = decide_policy(host_input(1ull << 30));
  EXPECT_EQ(p.route, ReadPolicy::Route::kDirect);
  EXPECT_FALSE(p.bypass);
  EXPECT_TRUE(p.check_cache) << "auto keeps asking per read: the cache may lose pages mid-load";
  EXPECT_EQ(p.threads, 2u);
  EXPECT_EQ(p.slot_count, 0u);
  EXPECT_EQ(p.slot_bytes, 0u);
}

TEST(Policy, ColdHostLoadBypassesWithTwiceTheReadersAndBoundedBounceSlots) {
  PolicyInput in = host_input(1ull << 30);
  in.all_cached = false;
  const ReadPolicy p = decide_policy(in);
  EXPECT_TRUE(p.bypass);
  EXPECT_EQ(p.threads, 4u);
  EXPECT_LE(p.chunk_bytes, kUncachedChunkBytes);
  EXPECT_EQ(p.slot_count, 4u) << "one bounce slot per reader";
  EXPECT_EQ(p.slot_bytes % kDirectIoAlign, 0u);
  EXPECT_LE(p.slot_bytes * p.slot_count, in.staging_bytes);
}

TEST(Policy, NoDirectIoMeansThePageCache) {
  PolicyInput in = host_input(1ull << 30);
  in.all_cached = false;
  in.direct_io = false;
  const ReadPolicy p = decide_policy(in);
  EXPECT_FALSE(p.bypass);
  EXPECT_FALSE(p.check_cache);
  EXPECT_EQ(p.slot_count, 0u);
}

TEST(Policy, CachedAndUncachedForceTheirWay) {
  PolicyInput in = host_input(1ull << 30);
  in.all_cached = false;
  in.io = LoadOptions::Io::kCached;
  EXPECT_FALSE(decide_policy(in).bypass);
  in.all_cached = true;
  in.io = LoadOptions::Io::kUncached;
  const ReadPolicy p = decide_policy(in);
  EXPECT_TRUE(p.bypass);
  EXPECT_FALSE(p.check_cache) << "uncached bypasses every read";
}

TEST(Policy, DeviceTargetsStageThroughTheCacheWithinTheStagingBound) {
  PolicyInput in = host_input(8ull << 30);
  in.host_writable = false;
  in.all_cached = false;
  in.staging_bytes = 16ull << 20;
  const ReadPolicy p = decide_policy(in);
  EXPECT_EQ(p.route, ReadPolicy::Route::kStaged);
  EXPECT_FALSE(p.bypass) << "auto reads device loads through the page cache";
  EXPECT_GE(p.slot_count, 2 * p.threads) << "at least two slots per reader, so copies drain while reads go on";
  EXPECT_LE(p.slot_count, kMaxSlotsPerThread * p.threads);
  EXPECT_LE(p.slot_bytes * p.slot_count, in.staging_bytes);
  in.io = LoadOptions::Io::kUncached;
  EXPECT_TRUE(decide_policy(in).bypass);
}

TEST(Policy, PrefaultingIsForHostDestinationsReadPastThePageCacheAndCanBeTurnedOff) {
  PolicyInput in = host_input(1ull << 30);
  EXPECT_FALSE(decide_policy(in).prefault) << "warm: copies from the page cache keep every core busy";
  in.io = LoadOptions::Io::kCached;
  in.all_cached = false;
  EXPECT_FALSE(decide_policy(in).prefault) << "cold, read through the page cache";
  in.io = LoadOptions::Io::kAuto;
  in.direct_io = false;
  EXPECT_FALSE(decide_policy(in).prefault) << "no O_DIRECT (tmpfs): reads copy from the page cache";
  in.direct_io = true;
  EXPECT_TRUE(decide_policy(in).prefault) << "cold direct, bypassing the page cache";
  in.prefault = false;
  EXPECT_FALSE(decide_policy(in).prefault);
  in.prefault = true;
  in.host_writable = false;
  EXPECT_FALSE(decide_policy(in).prefault) << "staged destinations are device memory";
  in.host_writable = true;
  in.staged = true;
  EXPECT_FALSE(decide_policy(in).prefault);
}

TEST(Policy, StagingIsForcedOnHostMemoryWhenAsked) {
  PolicyInput in = host_input(1ull << 20);
  in.staged = true;
  EXPECT_EQ(decide_policy(in).route, ReadPolicy::Route::kStaged);
}

TEST(Policy, ExplicitOptionsAreKeptAndSlotsStayWithinStaging) {
  PolicyInput in = host_input(1ull << 30);
  in.all_cached = false;
  in.threads = kMaxThreads;
  in.chunk_bytes = kMaxChunkBytes;
  in.staging_bytes = kMaxChunkBytes;
  const ReadPolicy p = decide_policy(in);
  EXPECT_EQ(p.threads, kMaxThreads);
  EXPECT_EQ(p.chunk_bytes, kMaxChunkBytes);
  EXPECT_EQ(p.slot_count, 1u) << "a slot is a chunk; staging holds one";
}

TEST(Policy, SmallStagingNeverGivesAChunkBelowTheMinimum) {
  PolicyInput in = host_input(1ull << 30);
  in.host_writable = false;
  in.threads = kMaxThreads;
  in.staging_bytes = kMinStagingBytes;
  const ReadPolicy p = decide_policy(in);
  EXPECT_GE(p.chunk_bytes, kMinChunkBytes);
  EXPECT_LE(p.slot_bytes * p.slot_count, in.staging_bytes);
}

TEST(Options, EveryBoundIsChecked) {
  EXPECT_NO_THROW(validate(LoadOptions{}));
  const auto bad = [](auto mutate) {
    LoadOptions o;
    mutate(o);
    testing::expect_code(ErrorCode::kInvalidArgument, [&] { validate(o); });
  };
  bad([](LoadOptions& o) { o.threads = kMaxThreads + 1; });
  bad([](LoadOptions& o) { o.chunk_bytes = kMinChunkBytes - 1; });
  bad([](LoadOptions& o) { o.chunk_bytes = kMaxChunkBytes + 1; });
  bad([](LoadOptions& o) { o.chunk_bytes = 1ull << 62; });
  bad([](LoadOptions& o) { o.staging_bytes = 0; });
  bad([](LoadOptions& o) { o.staging_bytes = kMinStagingBytes - 1; });
  bad([](LoadOptions& o) { o.staging_bytes = kMaxStagingBytes + 1; });
  bad([](LoadOptions& o) { o.chunk_bytes = 4ull << 20, o.staging_bytes = 2ull << 20; });
  testing::expect_code(ErrorCode::kInvalidArgument, [] { parse_io("sometimes"); });
  EXPECT_EQ(parse_io(io_name(LoadOptions::Io::kUncached)), LoadOptions::Io::kUncached);
}

TEST(PlanFiles, OpsNeverSpanFilesAndTensorsAreNumberedAcrossThem) {
  const Header a = Header::from_bytes(testing::u8_file({{"a0", 10}, {"a1", 20}}), "a");
  const Header b = Header::from_bytes(testing::u8_file({{"b0", 5}, {"empty", 0}, {"b1", 7}}), "b");
  const Plan plan = plan_reads({&a, &b}, 1 << 20);
  ASSERT_EQ(plan.ops.size(), 2u);
  EXPECT_EQ(plan.ops[0].file, 0u);
  EXPECT_EQ(plan.ops[0].length, 30u);
  EXPECT_EQ(plan.ops[1].file, 1u);
  EXPECT_EQ(plan.ops[1].file_offset, b.data_start());
  EXPECT_EQ(plan.ops[1].length, 12u);
  EXPECT_EQ(plan.segments[plan.ops[1].first_segment].tensor, 2u) << "b0 is the third tensor";
  EXPECT_EQ(plan.tensor_bytes, (std::vector<std::uint64_t>{10, 20, 5, 0, 7}));
  EXPECT_EQ(plan.total_bytes, 42u);
}

TEST(PlanFiles, WantedTensorsOnlyAndNoOpBridgesASkippedOne) {
  const Header a = Header::from_bytes(testing::u8_file({{"a0", 10}, {"a1", 20}, {"a2", 30}}), "a");
  const std::vector<bool> wanted = {true, false, true};
  const Plan plan = plan_reads({&a}, 1 << 20, &wanted);
  ASSERT_EQ(plan.ops.size(), 2u);
  EXPECT_EQ(plan.ops[0].length, 10u);
  EXPECT_EQ(plan.ops[1].file_offset, a.data_start() + 30);
  EXPECT_EQ(plan.tensor_bytes, (std::vector<std::uint64_t>{10, 0, 30}));
  EXPECT_EQ(plan.total_bytes, 40u);
}

TEST(LoadControl, WaitersWakeWhenTheirTensorIsCompleteAndCancelStopsReaders) {
  const Header h = Header::from_bytes(testing::u8_file({{"a", 100}, {"b", 100}, {"c", 0}}), "h");
  const Plan plan = plan_reads(h, 64);  // a: ops 0-1, b: ops 1-3
  LoadControl control(plan);
  EXPECT_TRUE(control.tensor_done(2)) << "a zero-byte tensor is complete from the start";
  EXPECT_FALSE(control.wait_tensor(0, 0));
  control.op_done(plan, plan.ops[0]);
  EXPECT_FALSE(control.tensor_done(0));
  std::thread reader([&] { control.op_done(plan, plan.ops[1]); });
  EXPECT_TRUE(control.wait_tensor(0));
  reader.join();
  EXPECT_FALSE(control.tensor_done(1));
  EXPECT_EQ(control.bytes_done(), plan.ops[0].length + plan.ops[1].length);
  EXPECT_NO_THROW(control.check_cancelled());
  control.cancel();
  testing::expect_code(ErrorCode::kCancelled, [&] { control.check_cancelled(); });
  control.finish(std::make_exception_ptr(Error(ErrorCode::kCancelled, "stopped")));
  testing::expect_code(ErrorCode::kCancelled, [&] { control.wait_tensor(1); });
  EXPECT_TRUE(control.wait_tensor(0)) << "a tensor completed before the failure stays complete";
}

TEST(LoadControl, TheHookCancels) {
  const Header h = Header::from_bytes(testing::u8_file({{"a", 10}}), "h");
  const Plan plan = plan_reads(h, 64);
  std::atomic<int> calls{0};
  LoadControl control(plan, [&] { return ++calls >= 2; });
  EXPECT_NO_THROW(control.check_cancelled());
  testing::expect_code(ErrorCode::kCancelled, [&] { control.check_cancelled(); });
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

TEST(CacheMap, UniformAnswersTheSameForEveryRange) {
  EXPECT_TRUE(CacheMap::uniform(true).cached(12345, 1 << 20));
  EXPECT_FALSE(CacheMap::uniform(false).cached(0, 1));
}

TEST(CacheMap, FromPagesSamplesFirstLastAndBetween) {
  // 10 pages of 100 bytes: 0-3 cached, 4 not, 5-9 cached.
  std::vector<bool> pages(10, true);
  pages[4] = false;
  const CacheMap map = CacheMap::from_pages(pages, 100);
  EXPECT_TRUE(map.cached(0, 400));     // pages 0-3
  EXPECT_FALSE(map.cached(399, 2));    // pages 3-4: the last one is not
  EXPECT_FALSE(map.cached(0, 1000));   // 10 pages, samples 0, 2, 4, 6, 9: page 4 is sampled
  EXPECT_TRUE(map.cached(500, 500));   // pages 5-9
  EXPECT_TRUE(map.cached(450, 0));     // an empty range asks nothing
  EXPECT_FALSE(map.cached(950, 100));  // runs past the known pages
}

TEST(CacheMap, OfAFileJustReadSaysCached) {
  const std::string data(3 * 4096 + 5, 'x');
  TempFile tmp(data);
  const File file = File::open(tmp.path());
  std::string buf(data.size(), '\0');
  file.pread_full(buf.data(), buf.size(), 0);  // now in the page cache
  const CacheMap map = CacheMap::of(file);
  EXPECT_TRUE(map.cached(0, data.size()));
  CacheMap moved = CacheMap::of(file);
  const CacheMap target(std::move(moved));  // the mapping moves with it; nothing is unmapped twice
  EXPECT_TRUE(target.cached(4096, 10));
}

}  // namespace
}  // namespace safeload::fast
