#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <thread>

#include "safeload/fast.h"

namespace safeload::fast {
namespace {

TEST(Executor, RunsEveryIndexExactlyOnce) {
  for (std::size_t threads : {1, 2, 4, 16}) {
    auto executor = make_executor(threads);
    EXPECT_EQ(executor->concurrency(), threads);
    std::vector<std::atomic<int>> hits(1000);
    executor->parallel_for(hits.size(), [&](std::size_t i) { hits[i].fetch_add(1); });
    for (const auto& h : hits) EXPECT_EQ(h.load(), 1);
    executor->parallel_for(0, [&](std::size_t) { FAIL(); });
  }
}

TEST(Executor, RunsItemsConcurrently) {
  // Each item waits until four items are running at once: only possible if
  // the executor really runs four at a time (bounded wait, so no hang).
  auto executor = make_executor(4);
  std::atomic<int> running{0}, peak{0};
  executor->parallel_for(4, [&](std::size_t) {
    const int now = ++running;
    int p = peak.load();
    while (now > p && !peak.compare_exchange_weak(p, now)) {}
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (peak.load() < 4 && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
    --running;
  });
  EXPECT_EQ(peak.load(), 4);
}

TEST(Executor, FirstExceptionIsRethrownAndRemainingItemsAreSkipped) {
  // One worker runs the items in index order: item 3 throws, and none after
  // it starts. With two, the exception still comes back to the caller.
  for (std::size_t threads : {1u, 2u}) {
    auto executor = make_executor(threads);
    std::atomic<int> started{0};
    try {
      executor->parallel_for(100000, [&](std::size_t i) {
        ++started;
        if (i == 3) throw std::runtime_error("item 3");
      });
      FAIL() << "expected the item's exception";
    } catch (const std::runtime_error& e) {
      EXPECT_STREQ(e.what(), "item 3");
    }
    if (threads == 1) EXPECT_EQ(started.load(), 4);
  }
}

TEST(Executor, DefaultThreads) {
  EXPECT_EQ(default_threads(1), 2u);
  EXPECT_EQ(default_threads(8), 8u);
  EXPECT_EQ(default_threads(64), 16u);
  EXPECT_EQ(make_executor(0)->concurrency(), default_threads(hardware_cores()));
}

}  // namespace
}  // namespace safeload::fast
