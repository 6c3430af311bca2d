// The read policy: a pure function from what is known before reading to how
// to read. Its tests are the specification.
#include <gtest/gtest.h>

#include "safeload/fast.h"
#include "test_util.h"

namespace safeload::fast {
namespace {

PolicyInput host_input(std::uint64_t data_bytes) {
  PolicyInput in;
  in.data_bytes = data_bytes;
  in.cores = 2;
  in.direct_io = true;
  return in;
}

TEST(Policy, WarmHostLoadReadsStraightIntoTensorsWithOneReaderPerCore) {
  const ReadPolicy p = decide_policy(host_input(1ull << 30));
  EXPECT_EQ(p.route, ReadPolicy::Route::kHost);
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

TEST(Policy, ReadersPopulateTheirOwnPagesWhereTheyCopyFromThePageCache) {
  PolicyInput in = host_input(1ull << 30);
  in.all_cached = true;
  ReadPolicy p = decide_policy(in);
  EXPECT_TRUE(p.populate_before_copy) << "warm: each reader populates before its copy";
  EXPECT_FALSE(p.prefault) << "and no prefaulting thread competes for the cores";
  in.all_cached = false;
  p = decide_policy(in);
  EXPECT_FALSE(p.populate_before_copy) << "cold direct: the prefaulting thread does it, ahead";
  EXPECT_TRUE(p.prefault);
  in.io = LoadOptions::Io::kCached;
  EXPECT_TRUE(decide_policy(in).populate_before_copy) << "cold, read through the page cache";
  in.direct_io = false;
  in.io = LoadOptions::Io::kAuto;
  EXPECT_TRUE(decide_policy(in).populate_before_copy) << "no O_DIRECT (tmpfs)";
  in.prefault = false;
  EXPECT_FALSE(decide_policy(in).populate_before_copy) << "prefault=False: pages fault in where written";
  in.prefault = true;
  in.staged = true;
  EXPECT_FALSE(decide_policy(in).populate_before_copy) << "staged destinations are written by the copy target";
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

TEST(Policy, ProbesAreTakenOnlyWhereThePageCacheCouldBeBypassed) {
  using Io = LoadOptions::Io;
  // Host memory, automatic: open O_DIRECT views and ask the page cache per read.
  EXPECT_TRUE(probes_needed(Io::kAuto, true, false).open_uncached);
  EXPECT_TRUE(probes_needed(Io::kAuto, true, false).map_cache);
  // Device memory or forced staging read through the page cache unless told otherwise.
  EXPECT_FALSE(probes_needed(Io::kAuto, false, false).open_uncached);
  EXPECT_FALSE(probes_needed(Io::kAuto, true, true).open_uncached);
  // Forced ways need no residency map.
  EXPECT_TRUE(probes_needed(Io::kUncached, false, false).open_uncached);
  EXPECT_FALSE(probes_needed(Io::kUncached, true, false).map_cache);
  EXPECT_FALSE(probes_needed(Io::kCached, true, false).open_uncached);
  // And the policy bypasses only what the probes made possible.
  PolicyInput in = host_input(1 << 30);
  in.all_cached = false;
  in.io = Io::kAuto;
  in.host_writable = false;
  EXPECT_FALSE(decide_policy(in).bypass) << "no O_DIRECT view is opened for device memory under kAuto";
}

TEST(Policy, ASharedLoadPlansTheSameChunkOnEveryMachine) {
  // Processes that split a load must cut the same plan: the chunk depends on
  // the data and the share count alone, not on cores or the page cache.
  PolicyInput a = host_input(10ull << 30), b = host_input(10ull << 30);
  a.parts = b.parts = 8;
  a.cores = 2, b.cores = 64;
  a.all_cached = true, b.all_cached = false;
  b.host_writable = false;
  EXPECT_EQ(decide_policy(a).chunk_bytes, decide_policy(b).chunk_bytes);
  EXPECT_EQ(decide_policy(a).chunk_bytes, share_chunk_bytes(10ull << 30, 8));
  EXPECT_EQ(share_chunk_bytes(10ull << 30, 8), kMaxShareChunkBytes) << "40 MiB reads capped at 16 MiB";
  EXPECT_EQ(share_chunk_bytes(64ull << 20, 2), 1ull << 20) << "32 reads per share";
  EXPECT_EQ(share_chunk_bytes(1000, 4), 64ull << 10) << "at least 64 KiB";
  a.staging_bytes = 4ull << 20;
  EXPECT_EQ(decide_policy(a).chunk_bytes, 4ull << 20) << "a slot holds a read";
}

TEST(Policy, MappingServesOnlyAWarmFileForTheHostWhereMappingWasAsked) {
  using B = LoadOptions::Backend;
  EXPECT_TRUE(serve_by_mapping(B::kMmap, true, 1.0));
  EXPECT_TRUE(serve_by_mapping(B::kUnspecified, true, 1.0)) << "upstream maps by default";
  EXPECT_FALSE(serve_by_mapping(B::kPread, true, 1.0));
  EXPECT_FALSE(serve_by_mapping(B::kMmap, false, 1.0)) << "device memory: reading wins";
  EXPECT_FALSE(serve_by_mapping(B::kMmap, true, 0.0)) << "cold: reading wins";
  EXPECT_TRUE(serve_by_mapping(B::kMmap, true, kMapWhenCached)) << "a page missing here and there: still mapped";
  EXPECT_FALSE(serve_by_mapping(B::kMmap, true, 0.9)) << "a tenth missing: reading wins";
}

TEST(Policy, ReadAheadStartsWhenTheCallerEvidentlyWantsMostOfTheFile) {
  HandleUse use;
  use.tensors = 100;
  EXPECT_FALSE(read_ahead_pays(use));
  use.prefetch_asked = true;
  EXPECT_TRUE(read_ahead_pays(use)) << "asked explicitly";
  use.prefetch_asked = false;
  // A loop over keys(): after the second whole tensor.
  use.listed_keys = true;
  use.asked = use.whole_reads = 1;
  EXPECT_FALSE(read_ahead_pays(use)) << "one tensor: maybe the only one wanted";
  use.asked = use.whole_reads = 2;
  EXPECT_TRUE(read_ahead_pays(use));
  use.partial_reads = 1;
  EXPECT_FALSE(read_ahead_pays(use)) << "a caller reading parts (tensor parallelism) reads those alone";
  // A slice of every key asked for, then whole reads.
  use = HandleUse{};
  use.tensors = 100;
  use.asked = 100;
  use.whole_reads = 1;
  EXPECT_FALSE(read_ahead_pays(use)) << "keys never listed: one tensor may be all that is wanted";
  use.whole_reads = 2;
  EXPECT_TRUE(read_ahead_pays(use));
  use.asked = 49;
  EXPECT_FALSE(read_ahead_pays(use)) << "a few named tensors, keys never listed";
  use.asked = 50;
  EXPECT_TRUE(read_ahead_pays(use));
  // transformers: keys listed, a slice of every key, then its first whole read.
  use = HandleUse{};
  use.tensors = 100;
  use.listed_keys = true;
  use.asked = 100;
  EXPECT_FALSE(read_ahead_pays(use)) << "nothing read yet: the slices may be for parts";
  use.whole_reads = 1;
  EXPECT_TRUE(read_ahead_pays(use));
  use.asked = 49;
  EXPECT_FALSE(read_ahead_pays(use)) << "keys listed, one tensor read, few asked";
  use.asked = 100;
  use.partial_reads = 1;
  EXPECT_FALSE(read_ahead_pays(use)) << "tensor parallelism slices every key";
}

}  // namespace
}  // namespace safeload::fast
