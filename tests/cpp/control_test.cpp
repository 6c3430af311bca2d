// One load's control: per-tensor completion for waiters, progress, and
// cancellation for readers.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "safeload/fast.h"
#include "test_util.h"

namespace safeload::fast {
namespace {

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

TEST(LoadControl, CompletionsAreKeptInTheOrderTheyCame) {
  const Header h = Header::from_bytes(testing::u8_file({{"a", 100}, {"b", 10}, {"c", 10}}), "h");
  const Plan plan = plan_reads(h, 64);  // ops: a[0,64) | a[64,100)+b+c[0,18)... by bytes
  LoadControl control(plan);
  EXPECT_FALSE(control.wait_completed(0, 0).has_value()) << "nothing complete yet";
  for (std::size_t k = plan.ops.size(); k-- > 0;) control.op_done(plan, plan.ops[k]);  // last op first
  std::vector<std::size_t> order;
  for (std::size_t k = 0; k < 3; ++k) order.push_back(*control.wait_completed(k, 0));
  // The last op completes b and c (in segment order), the first op then a.
  EXPECT_EQ(order, (std::vector<std::size_t>{1, 2, 0}));
  EXPECT_FALSE(control.wait_completed(3, 0).has_value());
  control.finish(nullptr);
  EXPECT_FALSE(control.wait_completed(3).has_value()) << "ended: no fourth";
}

TEST(LoadControl, WaitingForACompletionRethrowsAFailure) {
  const Header h = Header::from_bytes(testing::u8_file({{"a", 10}}), "h");
  const Plan plan = plan_reads(h, 64);
  LoadControl control(plan);
  std::thread failer([&] { control.finish(std::make_exception_ptr(Error(ErrorCode::kIo, "gone"))); });
  testing::expect_code(ErrorCode::kIo, [&] { control.wait_completed(0); });
  failer.join();
}

}  // namespace
}  // namespace safeload::fast
