// A StagedTarget that behaves like an asynchronous device copy at its laziest:
// nothing is copied until the slot is waited for. If a reader refilled a slot
// before waiting for it, the deferred copy would pick up the wrong bytes.
// Shared by the C++ tests and the fuzz target, so it depends on no test
// framework: callers check pending() and reused_before_wait() themselves.
#pragma once

#include <cstddef>
#include <map>
#include <mutex>
#include <vector>

#include "safeload/fast.h"

namespace safeload::testing {

class DeferredTarget final : public fast::StagedTarget {
 public:
  // dst[i]: tensor i's destination; must outlive the target.
  explicit DeferredTarget(const std::vector<void*>& dst) : copy_(dst) {}

  void copy_from_slot(std::size_t slot, const fast::Plan& plan, const fast::ReadOp& op,
                      const void* src) override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (pending_.count(slot) != 0) ++reused_before_wait_;
    pending_[slot] = {&plan, &op, src};
  }

  void wait_slot(std::size_t slot) override {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = pending_.find(slot);
    if (it == pending_.end()) return;
    copy_.copy_from_slot(slot, *it->second.plan, *it->second.op, it->second.src);
    pending_.erase(it);
  }

  // Copies issued and not yet waited for.
  std::size_t pending() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return pending_.size();
  }
  // Times a slot was refilled while its copies were still pending.
  std::size_t reused_before_wait() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return reused_before_wait_;
  }

 private:
  struct Pending {
    const fast::Plan* plan;
    const fast::ReadOp* op;
    const void* src;
  };
  fast::HostCopyTarget copy_;  // does the copying, when the slot is waited for
  mutable std::mutex mutex_;
  std::map<std::size_t, Pending> pending_;
  std::size_t reused_before_wait_ = 0;
};

}  // namespace safeload::testing
