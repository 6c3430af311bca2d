#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <vector>

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
  const std::vector<std::optional<Selection>> wanted = {Selection::whole(10), std::nullopt, Selection::whole(30)};
  const Plan plan = plan_reads({&a}, 1 << 20, &wanted);
  ASSERT_EQ(plan.ops.size(), 2u);
  EXPECT_EQ(plan.ops[0].length, 10u);
  EXPECT_EQ(plan.ops[1].file_offset, a.data_start() + 30);
  EXPECT_EQ(plan.tensor_bytes, (std::vector<std::uint64_t>{10, 0, 30}));
  EXPECT_EQ(plan.total_bytes, 40u);
}

// A tensor of 6 rows of 10 bytes (one U8 tensor [6, 10] as bytes), between two
// others, so a read that strays shows.
struct Rows {
  Header h = Header::from_bytes(testing::u8_file({{"before", 7}, {"t", 60}, {"after", 5}}), "rows");
  std::uint64_t t_at = h.data_start() + 7;
  std::vector<std::optional<Selection>> only_t(const Selection& s) const { return {std::nullopt, s, std::nullopt}; }
};

TEST(PlanSelections, RowsAreOneRead) {
  const Rows r;
  const auto sel = r.only_t(Selection{1, 6, 10, 2, 5});
  const Plan plan = plan_reads({&r.h}, 1 << 20, &sel);
  ASSERT_EQ(plan.ops.size(), 1u);
  EXPECT_EQ(plan.ops[0].file_offset, r.t_at + 20);
  EXPECT_EQ(plan.ops[0].length, 30u);
  EXPECT_EQ(plan.segments[0].tensor_offset, 0u) << "the part lands at the start of its destination";
  EXPECT_EQ(plan.tensor_bytes, (std::vector<std::uint64_t>{0, 30, 0}));
}

TEST(PlanSelections, ColumnsAreOneReadPerRowLandingPacked) {
  // [6, 10] as [6][10][1]: columns 3 to 7 of every row.
  const Rows r;
  const auto sel = r.only_t(Selection{6, 10, 1, 3, 7});
  const Plan plan = plan_reads({&r.h}, 1 << 20, &sel);
  ASSERT_EQ(plan.ops.size(), 6u);
  for (std::size_t row = 0; row < 6; ++row) {
    EXPECT_EQ(plan.ops[row].file_offset, r.t_at + row * 10 + 3);
    EXPECT_EQ(plan.ops[row].length, 4u);
    EXPECT_EQ(plan.segments[plan.ops[row].first_segment].tensor_offset, row * 4);
  }
  EXPECT_EQ(plan.total_bytes, 24u);
}

TEST(PlanSelections, WholeRowsOfEveryBlockMergeAndEmptyPartsReadNothing) {
  const Rows r;
  const auto all = r.only_t(Selection{6, 10, 1, 0, 10});
  const Plan whole = plan_reads({&r.h}, 1 << 20, &all);
  ASSERT_EQ(whole.ops.size(), 1u) << "every column of every row is the tensor";
  EXPECT_EQ(whole.ops[0].length, 60u);
  const auto none = r.only_t(Selection{6, 10, 1, 4, 4});
  EXPECT_TRUE(plan_reads({&r.h}, 1 << 20, &none).ops.empty());
}

TEST(PlanSelections, ASelectionThatDoesNotDescribeItsTensorIsRefused) {
  const Rows r;
  for (const Selection& bad : {Selection{6, 10, 2, 0, 1}, Selection{1, 6, 10, 5, 7}, Selection{1, 6, 10, 4, 3}}) {
    const auto sel = r.only_t(bad);
    testing::expect_code(ErrorCode::kInvalidArgument, [&] { plan_reads({&r.h}, 1 << 20, &sel); });
  }
}

TEST(PlanShares, SharesAreContiguousCoverEveryOpAndBalanceBytes) {
  std::vector<std::pair<std::string, std::uint64_t>> sizes;
  for (int i = 0; i < 40; ++i) sizes.emplace_back("t" + std::to_string(i), 1000 + 37 * i);
  const Header h = Header::from_bytes(testing::u8_file(sizes), "shares");
  const Plan plan = plan_reads(h, 512);
  for (std::size_t parts : {1u, 2u, 3u, 7u}) {
    SCOPED_TRACE(parts);
    const auto shares = split_shares(plan, parts);
    ASSERT_EQ(shares.size(), parts);
    std::size_t next = 0;
    std::uint64_t covered = 0;
    for (std::size_t k = 0; k < parts; ++k) {
      EXPECT_EQ(shares[k].first, next);
      next = shares[k].second;
      const Plan share = share_of(plan, k, parts);
      covered += share.total_bytes;
      // Off 1/parts by at most one op (512 bytes).
      EXPECT_LE(share.total_bytes, plan.total_bytes / parts + 512);
      EXPECT_GE(share.total_bytes + 512, plan.total_bytes / parts);
    }
    EXPECT_EQ(next, plan.ops.size());
    EXPECT_EQ(covered, plan.total_bytes);
  }
  testing::expect_code(ErrorCode::kInvalidArgument, [&] { share_of(plan, 3, 3); });
}

TEST(PlanRanges, TheCheapestRangeCountsBytesAndRuns) {
  // [64, 1024] of 2 bytes: 128 KiB.
  const std::vector<std::uint64_t> sizes = {64, 1024};
  const std::uint64_t nbytes = 64 * 1024 * 2;
  // Rows 0:16 (32 KiB, one run) against columns 0:256 (32 KiB in 64 runs).
  EXPECT_EQ(cheapest_range(sizes, nbytes, {{1, 0, 256}, {0, 0, 16}}), 1u);
  // Rows 0:48 (96 KiB, one run) against columns 0:8 (1 KiB in 64 runs: 1 MiB of run cost).
  EXPECT_EQ(cheapest_range(sizes, nbytes, {{0, 0, 48}, {1, 0, 8}}), 0u);
  // Every column is one run, as the whole tensor.
  EXPECT_EQ(cheapest_range(sizes, nbytes, {{0, 0, 64}, {1, 0, 1024}}), 0u) << "a tie goes to the earlier";
  // Of a [1, N] tensor any column range is one run.
  EXPECT_EQ(cheapest_range({1, 1024}, 2048, {{0, 0, 1}, {1, 5, 9}}), 1u);
  EXPECT_FALSE(cheapest_range(sizes, nbytes, {}).has_value());
  // No bytes (a dimension of 0) whatever the sizes' product.
  EXPECT_EQ(cheapest_range({0, 1ull << 62, 1ull << 62}, 0, {{2, 0, 5}, {0, 0, 0}}), 0u);
  testing::expect_code(ErrorCode::kInvalidArgument, [&] { cheapest_range(sizes, nbytes, {{2, 0, 1}}); });
  testing::expect_code(ErrorCode::kInvalidArgument, [&] { cheapest_range(sizes, nbytes, {{0, 5, 65}}); });
  testing::expect_code(ErrorCode::kInvalidArgument, [&] { cheapest_range(sizes, nbytes, {{0, 5, 4}}); });
}

}  // namespace
}  // namespace safeload::fast
