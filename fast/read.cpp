// The readers: every op of a plan moved from the file into host-writable
// destinations (through the page cache, or with O_DIRECT through bounce
// slots), or through staging slots into a copy target.
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>

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
    if (got < 0 && errno != EINVAL) {
      // A failing device fails the read: only a file system that declines
      // this aligned read (EINVAL) is worked around, through the page cache.
      throw Error(ErrorCode::kIo, "cannot read " + std::to_string(want - done) + " bytes at offset " +
                                      std::to_string(start + done) + " of '" + file.path() + "': " +
                                      std::strerror(errno), errno);
    }
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

namespace {

void check_slots(const std::vector<void*>& slots, bool aligned) {
  for (void* slot : slots) {
    SAFELOAD_INTERNAL_ASSERT(!aligned || reinterpret_cast<std::uintptr_t>(slot) % kDirectIoAlign == 0,
                             "uncached reads need aligned slots");
  }
}

bool any_uncached(const std::vector<Source>& sources) {
  return std::any_of(sources.begin(), sources.end(), [](const Source& s) { return s.uncached != nullptr; });
}

// Reads the op through the page cache straight into its destinations, in
// pieces of at most kCancelCheckBytes with a cancellation check between them;
// `populate`: each piece's destination pages are populated just before.
void read_cached_op(const File& file, const Plan& plan, const ReadOp& op, const std::vector<void*>& dst,
                    LoadControl* control, bool populate) {
  iovec iov[kMaxSegmentsPerOp];
  std::size_t s = 0;         // the segment being read
  std::uint64_t within = 0;  // bytes of it already read
  std::uint64_t at = op.file_offset;
  while (s < op.segment_count) {
    if (at != op.file_offset && control) control->check_cancelled();
    int count = 0;
    std::uint64_t piece = 0;
    while (s < op.segment_count && piece < kCancelCheckBytes) {
      const Segment& seg = plan.segments[op.first_segment + s];
      const std::uint64_t take = std::min(seg.length - within, kCancelCheckBytes - piece);
      iov[count].iov_base = static_cast<char*>(dst[seg.tensor]) + seg.tensor_offset + within;
      iov[count].iov_len = take;
      ++count;
      piece += take;
      within += take;
      if (within == seg.length) ++s, within = 0;
    }
    if (populate) {
      for (int i = 0; i < count; ++i) populate_whole_pages(iov[i].iov_base, iov[i].iov_len);
    }
    preadv_full(file.fd(), iov, count, at, file.path());
    at += piece;
  }
}

}  // namespace

void read_host(const std::vector<Source>& sources, const Plan& plan, const std::vector<void*>& dst,
               const std::vector<void*>& slots, Executor& executor, LoadControl* control, bool prefault,
               bool populate_before_copy) {
  SAFELOAD_INTERNAL_ASSERT(dst.size() == plan.tensor_bytes.size(), "one destination per tensor");
  const bool bypass = any_uncached(sources);
  SAFELOAD_INTERNAL_ASSERT(!bypass || !slots.empty(), "uncached reads need a bounce slot");
  check_slots(slots, bypass);
  HostCopyTarget copier(dst);
  SlotRing ring(slots.size(), copier);
  std::optional<Prefaulter> prefaulter;
  if (prefault) prefaulter.emplace(plan, dst);
  executor.parallel_for(plan.ops.size(), [&](std::size_t k) {
    if (control) control->check_cancelled();
    if (prefaulter) prefaulter->reached(k);
    const ReadOp& op = plan.ops[k];
    const Source& src = sources[op.file];
    if (src.uncached && !(src.cache && src.cache->cached(op.file_offset, op.length))) {
      SAFELOAD_INTERNAL_ASSERT(op.length <= plan.chunk_bytes, "an op must fit one slot");
      const std::size_t slot = ring.acquire();
      try {
        const char* from = read_uncached(*src.file, *src.uncached, op, static_cast<char*>(slots[slot]));
        copier.copy_from_slot(slot, plan, op, from);
        if (control) control->note_uncached(op.length);
      } catch (...) {
        ring.release(slot, /*dirty=*/false);
        throw;
      }
      ring.release(slot, /*dirty=*/false);
    } else {
      read_cached_op(*src.file, plan, op, dst, control, populate_before_copy);
    }
    if (control) control->op_done(plan, op);
  });
}

void read_cached(const File& file, const Plan& plan, const std::vector<void*>& dst, Executor& executor) {
  read_host({Source{&file, nullptr, nullptr}}, plan, dst, {}, executor);
}

void read_staged(const std::vector<Source>& sources, const Plan& plan, const std::vector<void*>& slots,
                 StagedTarget& target, Executor& executor, LoadControl* control) {
  SAFELOAD_INTERNAL_ASSERT(!slots.empty(), "staging needs at least one slot");
  check_slots(slots, any_uncached(sources));
  SlotRing ring(slots.size(), target);
  std::mutex copy_mutex;
  try {
    executor.parallel_for(plan.ops.size(), [&](std::size_t k) {
      if (control) control->check_cancelled();
      const ReadOp& op = plan.ops[k];
      const Source& src = sources[op.file];
      SAFELOAD_INTERNAL_ASSERT(op.length <= plan.chunk_bytes, "an op must fit one slot");
      const std::size_t slot = ring.acquire();
      try {
        const void* from = slots[slot];
        if (src.uncached) {
          from = read_uncached(*src.file, *src.uncached, op, static_cast<char*>(slots[slot]));
          if (control) control->note_uncached(op.length);
        } else {
          src.file->pread_full(slots[slot], op.length, op.file_offset);
        }
        std::lock_guard<std::mutex> lock(copy_mutex);
        target.copy_from_slot(slot, plan, op, from);
      } catch (...) {
        // A failed read leaves nothing to copy; a failed copy may have started.
        ring.release(slot, /*dirty=*/true);
        throw;
      }
      ring.release(slot, /*dirty=*/true);
      if (control) control->op_done(plan, op);
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
