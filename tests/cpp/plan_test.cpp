#include <gtest/gtest.h>

#include "safeload/fast.h"
#include "test_util.h"

namespace safeload::fast {
namespace {


Header header_of(const std::vector<std::pair<std::string, std::uint64_t>>& sizes) {
  return Header::from_bytes(testing::u8_file(sizes), "plan");
}

// The invariants every plan must satisfy, checked against the header.
void check_plan(const Header& h, const Plan& plan, std::uint64_t chunk) {
  std::uint64_t file_pos = h.data_start();
  std::vector<std::uint64_t> covered(h.tensors().size(), 0);
  std::size_t next_segment = 0;
  for (const ReadOp& op : plan.ops) {
    EXPECT_EQ(op.file_offset, file_pos) << "ops are consecutive file ranges";
    EXPECT_GT(op.length, 0u);
    EXPECT_LE(op.length, chunk);
    EXPECT_LE(op.segment_count, kMaxSegmentsPerOp);
    EXPECT_EQ(op.first_segment, next_segment);
    std::uint64_t seg_total = 0;
    for (std::size_t s = 0; s < op.segment_count; ++s) {
      const Segment& seg = plan.segments[op.first_segment + s];
      const TensorInfo& t = h.tensors()[seg.tensor];
      EXPECT_EQ(h.data_start() + t.begin + seg.tensor_offset, file_pos + seg_total)
          << "segment bytes come from the right place in the file";
      EXPECT_EQ(seg.tensor_offset, covered[seg.tensor]) << "each tensor is filled in order";
      covered[seg.tensor] += seg.length;
      seg_total += seg.length;
    }
    EXPECT_EQ(seg_total, op.length);
    next_segment += op.segment_count;
    file_pos += op.length;
  }
  EXPECT_EQ(next_segment, plan.segments.size());
  EXPECT_EQ(file_pos, h.file_size());
  EXPECT_EQ(plan.total_bytes, h.data_length());
  for (std::size_t i = 0; i < covered.size(); ++i) EXPECT_EQ(covered[i], h.tensors()[i].nbytes());
}

TEST(Plan, SplitsLargeTensorsIntoChunks) {
  const Header h = header_of({{"big", 10000}});
  const Plan plan = plan_reads(h, 4096);
  check_plan(h, plan, 4096);
  ASSERT_EQ(plan.ops.size(), 3u);
  EXPECT_EQ(plan.ops[2].length, 10000u - 8192u);
}

TEST(Plan, BatchesSmallTensorsIntoOneRead) {
  std::vector<std::pair<std::string, std::uint64_t>> sizes;
  for (int i = 0; i < 100; ++i) sizes.emplace_back("t" + std::to_string(i), 10);
  const Header h = header_of(sizes);
  const Plan plan = plan_reads(h, 1 << 20);
  check_plan(h, plan, 1 << 20);
  EXPECT_EQ(plan.ops.size(), 1u);
  EXPECT_EQ(plan.ops[0].segment_count, 100u);
}

TEST(Plan, CapsSegmentsPerRead) {
  std::vector<std::pair<std::string, std::uint64_t>> sizes;
  for (std::size_t i = 0; i < 3 * kMaxSegmentsPerOp + 5; ++i) sizes.emplace_back("t" + std::to_string(i), 1);
  const Header h = header_of(sizes);
  const Plan plan = plan_reads(h, 1 << 20);
  check_plan(h, plan, 1 << 20);
  EXPECT_EQ(plan.ops.size(), 4u);
}

TEST(Plan, MixedSizesZeroSizeAndTensorsStraddlingChunks) {
  const Header h = header_of({{"a", 3}, {"z0", 0}, {"b", 5000}, {"z1", 0}, {"c", 1}, {"d", 12288}, {"z2", 0}});
  for (std::uint64_t chunk : {1ull, 2ull, 7ull, 4096ull, 5003ull, 1ull << 20}) {
    SCOPED_TRACE(chunk);
    const Plan plan = plan_reads(h, chunk);
    check_plan(h, plan, chunk);
    for (const Segment& s : plan.segments) EXPECT_GT(s.length, 0u) << "zero-size tensors get no segment";
  }
}

TEST(Plan, EmptyFileHasNoOps) {
  const Header h = header_of({});
  EXPECT_TRUE(plan_reads(h, 4096).ops.empty());
}

TEST(Plan, ZeroChunkIsInvalidArgument) {
  const Header h = header_of({{"a", 1}});
  testing::expect_code(ErrorCode::kInvalidArgument, [&] { plan_reads(h, 0); });
}

TEST(Plan, DefaultChunkIsAFewMiBAndKeepsThreadsBusy) {
  EXPECT_EQ(default_chunk_bytes(0, 4), kMinAutoChunkBytes);
  EXPECT_EQ(default_chunk_bytes(std::uint64_t{1} << 40, 4), kMaxAutoChunkBytes);
  const std::uint64_t total = std::uint64_t{256} << 20;
  const std::uint64_t chunk = default_chunk_bytes(total, 8);
  EXPECT_GE(total / chunk, 4u * 8u) << "at least four chunks per thread";
  EXPECT_EQ(chunk % (64 * 1024), 0u);
}

}  // namespace
}  // namespace safeload::fast
