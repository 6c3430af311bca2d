// One load's progress, cancellation and per-tensor completion, shared by the
// readers and whoever waits for them.
#include <chrono>
#include <utility>

#include "safeload/error.h"
#include "safeload/fast.h"

namespace safeload::fast {

LoadControl::LoadControl(const Plan& plan, std::function<bool()> cancel)
    : hook_(std::move(cancel)), remaining_(new std::atomic<std::uint64_t>[plan.tensor_bytes.size()]) {
  for (std::size_t i = 0; i < plan.tensor_bytes.size(); ++i) remaining_[i] = plan.tensor_bytes[i];
}

void LoadControl::cancel() noexcept { cancelled_.store(true, std::memory_order_relaxed); }

void LoadControl::check_cancelled() {
  if (!cancelled_.load(std::memory_order_relaxed) && hook_ && hook_()) cancel();
  if (cancelled_.load(std::memory_order_relaxed)) throw Error(ErrorCode::kCancelled, "the load was cancelled");
}

void LoadControl::op_done(const Plan& plan, const ReadOp& op) {
  // An op completes few tensors (most complete none): no allocation here.
  constexpr std::size_t kInline = 8;
  std::size_t done[kInline];
  std::size_t n = 0;
  std::vector<std::size_t> more;
  for (std::size_t s = 0; s < op.segment_count; ++s) {
    const Segment& seg = plan.segments[op.first_segment + s];
    if (remaining_[seg.tensor].fetch_sub(seg.length, std::memory_order_acq_rel) == seg.length) {
      if (n < kInline) {
        done[n++] = seg.tensor;
      } else {
        more.push_back(seg.tensor);
      }
    }
  }
  bytes_done_.fetch_add(op.length, std::memory_order_relaxed);
  if (n > 0) {
    // Under the lock: orders the notification after a waiter's check.
    {
      std::lock_guard<std::mutex> lock(mutex_);
      completed_.insert(completed_.end(), done, done + n);
      completed_.insert(completed_.end(), more.begin(), more.end());
    }
    cv_.notify_all();
  }
}

void LoadControl::finish(std::exception_ptr error) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    finished_ = true;
    error_ = std::move(error);
  }
  cv_.notify_all();
}

bool LoadControl::finished() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return finished_;
}

std::exception_ptr LoadControl::error() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return error_;
}

namespace {

// Waits on `cv` until `ready()` (or the load finished: `ready` says so), at
// most `timeout_ms` (negative: no limit).
template <class Ready>
void wait_ready(std::condition_variable& cv, std::unique_lock<std::mutex>& lock, long timeout_ms, Ready ready) {
  if (timeout_ms < 0) {
    cv.wait(lock, ready);
  } else {
    cv.wait_for(lock, std::chrono::milliseconds(timeout_ms), ready);
  }
}

}  // namespace

bool LoadControl::wait_tensor(std::size_t i, long timeout_ms) {
  std::unique_lock<std::mutex> lock(mutex_);
  wait_ready(cv_, lock, timeout_ms, [&] { return finished_ || tensor_done(i); });
  if (tensor_done(i)) return true;
  if (error_) std::rethrow_exception(error_);
  return false;
}

std::optional<std::size_t> LoadControl::wait_completed(std::size_t k, long timeout_ms) {
  std::unique_lock<std::mutex> lock(mutex_);
  wait_ready(cv_, lock, timeout_ms, [&] { return finished_ || completed_.size() > k; });
  if (completed_.size() > k) return completed_[k];
  if (error_) std::rethrow_exception(error_);
  return std::nullopt;
}

void LoadControl::note_uncached(std::uint64_t bytes) noexcept {
  ops_uncached_.fetch_add(1, std::memory_order_relaxed);
  bytes_uncached_.fetch_add(bytes, std::memory_order_relaxed);
}

bool LoadControl::wait_finished(long timeout_ms) {
  std::unique_lock<std::mutex> lock(mutex_);
  return cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), [&] { return finished_; });
}

}  // namespace safeload::fast
