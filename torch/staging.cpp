// Slot memory for the readers (bounce slots for reads that bypass the page
// cache, staging slots for device memory) and the target that copies staged
// bytes to device tensors.
#include <ATen/ATen.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <cstring>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "internal.h"
#include "safeload/error.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace safeload::detail {
namespace {

#if defined(__linux__)
// Bounce slots are backed by transparent huge pages where the kernel allows:
// some virtual disks take O_DIRECT reads into 4 KiB pages several times
// slower than into 2 MiB ones (measured: 5x). Destinations are not: fresh
// huge pages cost more to fault in than they save where the host backs them
// slowly (see bench/README.md), and destinations are touched only once.
constexpr std::uint64_t kHugePage = 2ull << 20;

// `length` bytes (a multiple of 4 KiB) of fresh memory starting on a huge
// page boundary, with huge pages advised; nullptr if the mapping fails.
void* map_huge_pages(std::uint64_t length) {
  // Over-map by one huge page so the start can be aligned, then unmap the
  // slack on both sides.
  void* raw = ::mmap(nullptr, length + kHugePage, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const auto base = reinterpret_cast<std::uintptr_t>(raw);
  const std::uintptr_t aligned = (base + kHugePage - 1) / kHugePage * kHugePage;
  if (aligned > base) ::munmap(raw, aligned - base);
  const std::uintptr_t tail = aligned + length;
  if (base + length + kHugePage > tail) ::munmap(reinterpret_cast<void*>(tail), base + length + kHugePage - tail);
  void* data = reinterpret_cast<void*>(aligned);
  ::madvise(data, length, MADV_HUGEPAGE);  // advice only: 4 KiB pages still work
  return data;
}

// Bounce memory a finished load leaves for the next one. New pages are the
// slowest memory on hosts that reclaim what a guest frees (first writes at
// 0.5-3 GB/s), and a model read shard by shard, or a safe_open handle read
// tensor by tensor, would otherwise fault in fresh bounce slots for every
// load: 16 shards of a 300 MiB model, 77 MiB of them. Up to kKeptBytes stay
// mapped; a load takes the smallest kept mapping that holds its slots and is
// at most kMaxWaste times their size.
class KeptMappings {
 public:
  static constexpr std::uint64_t kKeptBytes = 64ull << 20;
  static constexpr std::uint64_t kMaxWaste = 4;

  // A kept mapping of at least `length` bytes and its own length, or {nullptr, 0}.
  std::pair<void*, std::uint64_t> take(std::uint64_t length) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto best = kept_.end();
    for (auto it = kept_.begin(); it != kept_.end(); ++it) {
      if (it->second >= length && it->second <= kMaxWaste * length &&
          (best == kept_.end() || it->second < best->second)) {
        best = it;
      }
    }
    if (best == kept_.end()) return {nullptr, 0};
    const std::pair<void*, std::uint64_t> found = *best;
    held_ -= found.second;
    kept_.erase(best);
    return found;
  }

  // Keeps the mapping, or unmaps it where that would hold more than kKeptBytes.
  void give(void* data, std::uint64_t length) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (held_ + length <= kKeptBytes) {
        kept_.emplace_back(data, length);
        held_ += length;
        return;
      }
    }
    ::munmap(data, length);
  }

 private:
  std::mutex mutex_;
  std::vector<std::pair<void*, std::uint64_t>> kept_;
  std::uint64_t held_ = 0;
};

KeptMappings& kept_mappings() {
  static KeptMappings* kept = new KeptMappings();  // never destroyed: deleters may run at exit
  return *kept;
}

// A CPU tensor of `sizes` and `dtype` over map_huge_pages memory (kept from an
// earlier load where one fits), or an undefined tensor if the mapping fails.
at::Tensor huge_page_tensor(std::uint64_t nbytes, at::IntArrayRef sizes, at::ScalarType dtype) {
  // Only the start is 2 MiB aligned; the length is rounded to 4 KiB, so a
  // partial last huge page falls back to small pages instead of wasting memory.
  const std::uint64_t length = (nbytes + 4095) / 4096 * 4096;
  const std::pair<void*, std::uint64_t> kept = kept_mappings().take(length);
  void* data = kept.first;
  std::uint64_t mapped = kept.second;
  if (data == nullptr) {
    data = map_huge_pages(length);
    mapped = length;
  }
  if (data == nullptr) return at::Tensor();
  return at::from_blob(
      data, sizes, [mapped](void* p) { kept_mappings().give(p, mapped); },
      at::TensorOptions().dtype(dtype).device(c10::Device("cpu")));
}

#endif

}  // namespace

TorchStagedTarget::TorchStagedTarget(const std::vector<at::Tensor>& tensors, const at::Tensor& staging,
                                     std::size_t slot_count, c10::Device device)
    : staging_(staging), device_(device), stream_(c10::impl::VirtualGuardImpl(device.type()).getStream(device)) {
  for (const at::Tensor& t : tensors) {
    // A flat byte view of each destination, whatever its dtype.
    bytes_.push_back(!t.defined() || t.nbytes() == 0
                         ? at::Tensor()
                         : at::from_blob(t.mutable_data_ptr(), {static_cast<std::int64_t>(t.nbytes())},
                                         at::TensorOptions().dtype(at::kByte).device(device)));
  }
  if (!device.is_cpu()) {
    for (std::size_t i = 0; i < slot_count; ++i) events_.emplace_back(device.type());
  }
}

void TorchStagedTarget::copy_from_slot(std::size_t slot, const fast::Plan& plan, const fast::ReadOp& op,
                                       const void* src) {
  c10::StreamGuard guard(stream_);
  std::int64_t src_offset = static_cast<const std::uint8_t*>(src) - staging_.const_data_ptr<std::uint8_t>();
  for (std::size_t s = 0; s < op.segment_count; ++s) {
    const fast::Segment& seg = plan.segments[op.first_segment + s];
    const auto length = static_cast<std::int64_t>(seg.length);
    if (device_.is_cpu()) {
      // Host to host: a plain copy. Tensor::copy_ would fan out on torch's
      // intra-op thread pool from inside our readers (oversubscription, and
      // an abort where that pool cannot start its threads).
      std::memcpy(static_cast<std::uint8_t*>(bytes_[seg.tensor].mutable_data_ptr()) + seg.tensor_offset,
                  staging_.const_data_ptr<std::uint8_t>() + src_offset, seg.length);
    } else {
      bytes_[seg.tensor]
          .narrow(0, static_cast<std::int64_t>(seg.tensor_offset), length)
          .copy_(staging_.narrow(0, src_offset, length), /*non_blocking=*/true);
    }
    src_offset += length;
  }
  if (!events_.empty()) events_[slot].record(stream_);
}

void TorchStagedTarget::wait_slot(std::size_t slot) {
  if (!events_.empty()) events_[slot].synchronize();
}

void TorchStagedTarget::synchronize() const {
  if (!device_.is_cpu()) stream_.synchronize();
}

namespace {

// Staging memory: pinned where the device's host allocator can pin, so that
// copies run asynchronously; pageable otherwise (copies are then synchronous,
// which is still correct).
at::Tensor allocate_staging(std::uint64_t bytes, c10::Device device) {
  const auto options = at::TensorOptions().dtype(at::kByte);
  try {
    if (device.is_cuda()) {
      try {
        return at::empty({static_cast<std::int64_t>(bytes)}, options.pinned_memory(true));
      } catch (const c10::OutOfMemoryError&) {
        throw;
      } catch (const c10::Error&) {
        // No pinning allocator in this build; fall through to pageable memory.
      }
    }
    return at::empty({static_cast<std::int64_t>(bytes)}, options);
  } catch (const c10::Error& e) {
    throw Error(ErrorCode::kOutOfMemory, "cannot allocate " + std::to_string(bytes) +
                                             " bytes of staging memory: " + e.what_without_backtrace());
  }
}

}  // namespace

std::vector<void*> carve_slots(const at::Tensor& owner, std::uint64_t slot_bytes, std::size_t count) {
  const auto base = reinterpret_cast<std::uintptr_t>(owner.const_data_ptr<std::uint8_t>());
  const std::uintptr_t aligned = (base + kDirectIoAlign - 1) / kDirectIoAlign * kDirectIoAlign;
  std::vector<void*> slots;
  for (std::size_t i = 0; i < count; ++i) slots.push_back(reinterpret_cast<void*>(aligned + i * slot_bytes));
  return slots;
}

at::Tensor slot_memory(std::uint64_t slot_bytes, std::size_t count, bool bounce, c10::Device device) {
  const std::uint64_t bytes = slot_bytes * count + kDirectIoAlign;  // bounded by staging_bytes + one slot
  at::Tensor owner;
#if defined(__linux__)
  if (bounce) owner = huge_page_tensor(bytes, {static_cast<std::int64_t>(bytes)}, at::kByte);
#endif
  if (!owner.defined()) owner = allocate_staging(bytes, bounce ? c10::Device("cpu") : device);
  return owner;
}

}  // namespace safeload::detail
