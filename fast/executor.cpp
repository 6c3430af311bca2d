#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <system_error>
#include <thread>

#include "safeload/fast.h"

#if defined(SAFELOAD_HAVE_GCD)
#include <dispatch/dispatch.h>
#endif

namespace safeload::fast {
namespace {

// Shared by both executors: `workers` copies of work() pull item indices from
// one counter until none are left or an item has thrown.
class WorkLoop {
 public:
  WorkLoop(std::size_t n, const std::function<void(std::size_t)>& fn) : n_(n), fn_(fn) {}

  void work() {
    while (!failed_.load(std::memory_order_relaxed)) {
      const std::size_t i = next_.fetch_add(1, std::memory_order_relaxed);
      if (i >= n_) return;
      try {
        fn_(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!error_) error_ = std::current_exception();
        failed_.store(true, std::memory_order_relaxed);
      }
    }
  }

  void rethrow_if_failed() {
    if (error_) std::rethrow_exception(error_);
  }

 private:
  const std::size_t n_;
  const std::function<void(std::size_t)>& fn_;
  std::atomic<std::size_t> next_{0};
  std::atomic<bool> failed_{false};
  std::mutex mutex_;
  std::exception_ptr error_;
};

#if defined(SAFELOAD_HAVE_GCD)
// Apple: Grand Central Dispatch runs the workers on its global concurrent
// queue. UNTESTED in CI (no Apple hardware); kept this small on purpose.
class GcdExecutor final : public Executor {
 public:
  explicit GcdExecutor(std::size_t threads) : threads_(threads) {}
  void parallel_for(std::size_t n, const std::function<void(std::size_t)>& fn) override {
    WorkLoop loop(n, fn);
    dispatch_apply_f(std::min(threads_, n), dispatch_get_global_queue(QOS_CLASS_USER_INITIATED, 0),
                     &loop, [](void* ctx, std::size_t) { static_cast<WorkLoop*>(ctx)->work(); });
    loop.rethrow_if_failed();
  }
  std::size_t concurrency() const noexcept override { return threads_; }

 private:
  std::size_t threads_;
};
#endif

// Elsewhere: the calling thread plus threads-1 std::threads, started per call
// (microseconds, against loads of milliseconds and more).
class ThreadExecutor final : public Executor {
 public:
  explicit ThreadExecutor(std::size_t threads) : threads_(threads) {}
  void parallel_for(std::size_t n, const std::function<void(std::size_t)>& fn) override {
    WorkLoop loop(n, fn);
    std::vector<std::thread> helpers;
    helpers.reserve(threads_);
    const std::size_t workers = std::min(threads_, n);
    for (std::size_t i = 1; i < workers; ++i) {
      try {
        helpers.emplace_back([&loop] { loop.work(); });
      } catch (const std::system_error&) {
        break;  // no more threads to be had (a limit, or memory): go on with those started
      }
    }
    loop.work();
    for (std::thread& t : helpers) t.join();
    loop.rethrow_if_failed();
  }
  std::size_t concurrency() const noexcept override { return threads_; }

 private:
  std::size_t threads_;
};

}  // namespace

std::unique_ptr<Executor> make_executor(std::size_t threads) {
  if (threads == 0) threads = default_threads(hardware_cores());
#if defined(SAFELOAD_HAVE_GCD)
  return std::make_unique<GcdExecutor>(threads);
#else
  return std::make_unique<ThreadExecutor>(threads);
#endif
}

}  // namespace safeload::fast
