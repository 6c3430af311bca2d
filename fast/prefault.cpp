// Populating destination pages ahead of the readers (see Prefaulter in
// safeload/fast.h).
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <system_error>

#include "safeload/fast.h"

namespace safeload::fast {

#if defined(__linux__)
// Linux 5.14; older headers lack the name, older kernels answer EINVAL.
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#endif

bool populate_whole_pages(void* start, std::uint64_t length) noexcept {
#if defined(__linux__)
  static const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto first = reinterpret_cast<std::uintptr_t>(start);
  const std::uintptr_t at = (first + page - 1) / page * page;
  const std::uintptr_t end = (first + length) / page * page;
  if (at >= end) return true;
  return ::madvise(reinterpret_cast<void*>(at), end - at, MADV_POPULATE_WRITE) == 0 || errno != EINVAL;
#else
  (void)start;
  (void)length;
  return false;
#endif
}

Prefaulter::Prefaulter(const Plan& plan, const std::vector<void*>& dst, bool start) : plan_(plan), dst_(dst) {
  if (start) this->start();
}

void Prefaulter::start() {
#if defined(__linux__)
  if (thread_.joinable()) return;
  try {
    thread_ = std::thread([this] { run(); });
  } catch (const std::system_error&) {
    // No thread: the readers fault their pages in themselves.
  }
#endif
}

Prefaulter::~Prefaulter() {
  stop_.store(true, std::memory_order_relaxed);
  join();
}

void Prefaulter::join() {
  if (thread_.joinable()) thread_.join();
}

void Prefaulter::reached(std::size_t k) noexcept {
  std::size_t seen = frontier_.load(std::memory_order_relaxed);
  while (seen < k + 1 && !frontier_.compare_exchange_weak(seen, k + 1, std::memory_order_relaxed)) {
  }
}

void Prefaulter::run() noexcept {
#if defined(__linux__)
  const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
  // Small steps, so a reader that overtakes it is noticed soon.
  constexpr std::uintptr_t kStep = 4u << 20;
  for (std::size_t k = 0; k < plan_.ops.size(); ++k) {
    k = std::max(k, frontier_.load(std::memory_order_relaxed));
    if (k >= plan_.ops.size()) break;
    const ReadOp& op = plan_.ops[k];
    for (std::size_t s = 0; s < op.segment_count; ++s) {
      const Segment& seg = plan_.segments[op.first_segment + s];
      const auto start = reinterpret_cast<std::uintptr_t>(dst_[seg.tensor]) + seg.tensor_offset;
      // Whole pages inside the segment only: the ends may share a page with
      // memory that is not ours to touch.
      std::uintptr_t at = (start + page - 1) / page * page;
      const std::uintptr_t end = (start + seg.length) / page * page;
      while (at < end) {
        if (stop_.load(std::memory_order_relaxed) || frontier_.load(std::memory_order_relaxed) > k) break;
        const std::uintptr_t n = std::min(kStep, end - at);
        if (!populate_whole_pages(reinterpret_cast<void*>(at), n)) {
          return;  // this kernel cannot populate: leave it to the readers
        }
        at += n;
      }
    }
    if (stop_.load(std::memory_order_relaxed)) return;
  }
#endif
}

}  // namespace safeload::fast
