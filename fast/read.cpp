#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <condition_variable>
#include <deque>
#include <mutex>

#include "safeload/error.h"
#include "safeload/fast.h"

namespace safeload::fast {

void HostCopyTarget::copy_from_slot(std::size_t, const Plan& plan, const ReadOp& op, const void* src) {
  const char* from = static_cast<const char*>(src);
  for (std::size_t s = 0; s < op.segment_count; ++s) {
    const Segment& seg = plan.segments[op.first_segment + s];
    std::memcpy(static_cast<char*>(dst_[seg.tensor]) + seg.tensor_offset, from, seg.length);
    from += seg.length;
  }
}

std::uint64_t slot_bytes_for(const Plan& plan, bool uncached) {
  if (!uncached) return plan.chunk_bytes;
  // A read widened to aligned ends spans at most the chunk rounded up plus one
  // block; keeping the size a multiple of the block keeps every slot aligned.
  return (plan.chunk_bytes + kDirectIoAlign - 1) / kDirectIoAlign * kDirectIoAlign + kDirectIoAlign;
}

namespace {

// Fills `slot` with the op's bytes using the uncached file: the read is
// widened to aligned boundaries, as O_DIRECT requires. Returns where the op's
// first byte landed. A short read (end of file, or a file system that
// declines an aligned read) is finished through the page cache.
const char* read_uncached(const File& file, const File& uncached, const ReadOp& op, char* slot) {
  const std::uint64_t lead = op.file_offset % kDirectIoAlign;
  const std::uint64_t start = op.file_offset - lead;
  const std::uint64_t needed = lead + op.length;
  const std::uint64_t want = (needed + kDirectIoAlign - 1) / kDirectIoAlign * kDirectIoAlign;
  std::uint64_t done = 0;
  while (done < needed) {
    const ssize_t got = ::pread(uncached.fd(), slot + done, want - done, static_cast<off_t>(start + done));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0 || got % kDirectIoAlign != 0) {
      if (got > 0) done += static_cast<std::uint64_t>(got);
      if (done < needed) file.pread_full(slot + done, needed - done, start + done);
      break;
    }
    done += static_cast<std::uint64_t>(got);
  }
  return slot + lead;
}

// The staging slots: free ones wait in a queue; a slot whose bytes may still
// be being copied out is "dirty" and is waited for before anyone refills it.
class SlotRing {
 public:
  SlotRing(std::size_t count, StagedTarget& target) : dirty_(count, false), target_(target) {
    for (std::size_t i = 0; i < count; ++i) free_.push_back(i);
  }

  std::size_t acquire() {
    std::size_t slot;
    bool dirty;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      cv_.wait(lock, [&] { return !free_.empty(); });
      slot = free_.front();
      free_.pop_front();
      dirty = dirty_[slot];
    }
    if (dirty) {
      try {
        target_.wait_slot(slot);
      } catch (...) {
        release(slot, /*dirty=*/true);
        throw;
      }
    }
    return slot;
  }

  void release(std::size_t slot, bool dirty) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      dirty_[slot] = dirty;
      free_.push_back(slot);
    }
    cv_.notify_one();
  }

  // After the workers have stopped: waits for every outstanding copy.
  void drain() {
    for (std::size_t slot = 0; slot < dirty_.size(); ++slot) {
      if (dirty_[slot]) target_.wait_slot(slot);
      dirty_[slot] = false;
    }
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<std::size_t> free_;
  std::vector<bool> dirty_;
  StagedTarget& target_;
};

}  // namespace

void read_host(const File& file, const File* uncached, const CacheMap& cache, const Header& header,
               const Plan& plan, const std::vector<void*>& dst, const std::vector<void*>& slots,
               Executor& executor) {
  SAFELOAD_INTERNAL_ASSERT(dst.size() == header.tensors().size(), "one destination per tensor");
  SAFELOAD_INTERNAL_ASSERT(!uncached || !slots.empty(), "uncached reads need a bounce slot");
  for (void* slot : slots) {
    SAFELOAD_INTERNAL_ASSERT(reinterpret_cast<std::uintptr_t>(slot) % kDirectIoAlign == 0,
                             "uncached reads need aligned slots");
  }
  HostCopyTarget copier(dst);
  SlotRing ring(slots.size(), copier);
  executor.parallel_for(plan.ops.size(), [&](std::size_t k) {
    const ReadOp& op = plan.ops[k];
    if (uncached && !cache.cached(op.file_offset, op.length)) {
      SAFELOAD_INTERNAL_ASSERT(op.length <= plan.chunk_bytes, "an op must fit one slot");
      const std::size_t slot = ring.acquire();
      try {
        const char* src = read_uncached(file, *uncached, op, static_cast<char*>(slots[slot]));
        copier.copy_from_slot(slot, plan, op, src);
      } catch (...) {
        ring.release(slot, /*dirty=*/false);
        throw;
      }
      ring.release(slot, /*dirty=*/false);
      return;
    }
    iovec iov[kMaxSegmentsPerOp];
    for (std::size_t s = 0; s < op.segment_count; ++s) {
      const Segment& seg = plan.segments[op.first_segment + s];
      iov[s].iov_base = static_cast<char*>(dst[seg.tensor]) + seg.tensor_offset;
      iov[s].iov_len = seg.length;
    }
    preadv_full(file.fd(), iov, static_cast<int>(op.segment_count), op.file_offset, file.path());
  });
}

void read_direct(const File& file, const Header& header, const Plan& plan,
                 const std::vector<void*>& dst, Executor& executor) {
  read_host(file, nullptr, CacheMap::uniform(true), header, plan, dst, {}, executor);
}

void read_staged(const File& file, const Header& header, const Plan& plan,
                 const std::vector<void*>& slots, StagedTarget& target, Executor& executor,
                 const File* uncached) {
  SAFELOAD_INTERNAL_ASSERT(!slots.empty(), "staging needs at least one slot");
  for (void* slot : slots) {
    SAFELOAD_INTERNAL_ASSERT(!uncached || reinterpret_cast<std::uintptr_t>(slot) % kDirectIoAlign == 0,
                             "uncached reads need aligned slots");
  }
  SlotRing ring(slots.size(), target);
  std::mutex copy_mutex;
  try {
    executor.parallel_for(plan.ops.size(), [&](std::size_t k) {
      const ReadOp& op = plan.ops[k];
      SAFELOAD_INTERNAL_ASSERT(op.length <= plan.chunk_bytes, "an op must fit one slot");
      const std::size_t slot = ring.acquire();
      try {
        const void* src = slots[slot];
        if (uncached) {
          src = read_uncached(file, *uncached, op, static_cast<char*>(slots[slot]));
        } else {
          file.pread_full(slots[slot], op.length, op.file_offset);
        }
        std::lock_guard<std::mutex> lock(copy_mutex);
        target.copy_from_slot(slot, plan, op, src);
      } catch (...) {
        // A failed read leaves nothing to copy; a failed copy may have started.
        ring.release(slot, /*dirty=*/true);
        throw;
      }
      ring.release(slot, /*dirty=*/true);
    });
  } catch (...) {
    try {
      ring.drain();
    } catch (...) {
      // The first error is the one worth reporting.
    }
    throw;
  }
  ring.drain();
}

}  // namespace safeload::fast
