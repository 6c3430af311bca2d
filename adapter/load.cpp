// The fast loader's torch side: allocate every destination first, then hand
// the byte moving to fast/read.cpp, straight into host-writable memory or
// through pinned staging slots for device memory.
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/Event.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <algorithm>
#include <optional>

#include "safeload/error.h"
#include "safeload/fast.h"
#include "safeload/torch.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

#if defined(__APPLE__) && __has_include(<ATen/mps/MPSAllocatorInterface.h>)
#include <ATen/mps/MPSAllocatorInterface.h>
#include <torch/version.h>
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 13)
#define SAFELOAD_MPS_HOST_ALIAS 1
#endif
#endif

namespace safeload {
namespace {

// A host pointer through which `t`'s bytes can be written, or nullptr.
// `keepalive` holds whatever keeps that pointer valid.
void* host_writable_pointer(const at::Tensor& t, c10::Storage* keepalive) {
  if (t.device().is_cpu()) return t.mutable_data_ptr();
#if defined(SAFELOAD_MPS_HOST_ALIAS)
  // Apple silicon: MPS storage in a shared (unified-memory) Metal buffer has a
  // CPU alias, so the CPU path's direct reads apply unchanged. UNTESTED in CI:
  // no Apple hardware; these lines are the whole MPS-specific code.
  if (t.device().is_mps()) {
    at::mps::IMPSAllocator* allocator = at::mps::getIMPSAllocator();
    if (allocator->isSharedBuffer(t.storage().data())) {
      *keepalive = allocator->getHostAliasStorage(t.storage());
      return static_cast<char*>(keepalive->mutable_data()) + t.storage_offset() * t.itemsize();
    }
  }
#endif
  (void)keepalive;
  return nullptr;
}

#if defined(__linux__)
// Large CPU destinations get memory of their own backed by transparent huge
// pages where the kernel allows. Reads fault destination pages in as they
// land; with 4 KiB pages that costs more than the copy itself on virtualised
// hosts (measured: 1 GiB of fresh 4 KiB pages filled at ~1.1 GB/s against
// ~4.8 GB/s into pre-faulted memory); 2 MiB pages cut the faults 512-fold.
constexpr std::uint64_t kHugePage = 2ull << 20;
constexpr std::uint64_t kHugePageMinBytes = 4ull << 20;

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

// A CPU tensor of `sizes` and `dtype` over map_huge_pages memory, or an
// undefined tensor if the mapping fails.
at::Tensor huge_page_tensor(std::uint64_t nbytes, at::IntArrayRef sizes, at::ScalarType dtype) {
  // Only the start is 2 MiB aligned; the length is rounded to 4 KiB, so a
  // partial last huge page falls back to small pages instead of wasting memory.
  const std::uint64_t length = (nbytes + 4095) / 4096 * 4096;
  void* data = map_huge_pages(length);
  if (data == nullptr) return at::Tensor();
  return at::from_blob(
      data, sizes, [length](void* p) { ::munmap(p, length); },
      at::TensorOptions().dtype(dtype).device(c10::Device("cpu")));
}

at::Tensor empty_huge_page_tensor(const TensorInfo& t, std::string_view path) {
  at::Tensor out = huge_page_tensor(t.nbytes(), torch_sizes(t, path), torch_dtype(t, path));
  return out.defined() ? out : empty_tensor(t, path, c10::Device("cpu"));
}
#endif

// The fast loader's destinations: torch's allocator, except for large CPU
// tensors on Linux (see above).
at::Tensor allocate_destination(const TensorInfo& t, std::string_view path, c10::Device device) {
#if defined(__linux__)
  if (device.is_cpu() && t.nbytes() >= kHugePageMinBytes) return empty_huge_page_tensor(t, path);
#endif
  return empty_tensor(t, path, device);
}

// Copies out of staging slots into device tensors with non-blocking copies on
// the device's current stream; one event per slot says when it is free again.
class TorchStagedTarget final : public fast::StagedTarget {
 public:
  TorchStagedTarget(const std::vector<at::Tensor>& tensors, const at::Tensor& staging,
                    std::size_t slot_count, c10::Device device)
      : staging_(staging), device_(device) {
    for (const at::Tensor& t : tensors) {
      // A flat byte view of each destination, whatever its dtype.
      bytes_.push_back(t.nbytes() == 0 ? at::Tensor()
                                        : at::from_blob(t.mutable_data_ptr(),
                                                        {static_cast<std::int64_t>(t.nbytes())},
                                                        at::TensorOptions().dtype(at::kByte).device(device)));
    }
    if (!device.is_cpu()) {
      for (std::size_t i = 0; i < slot_count; ++i) events_.emplace_back(device.type());
    }
  }

  void copy_from_slot(std::size_t slot, const fast::Plan& plan, const fast::ReadOp& op,
                      const void* src) override {
    c10::DeviceGuard guard(device_);
    std::int64_t src_offset = static_cast<const std::uint8_t*>(src) - staging_.const_data_ptr<std::uint8_t>();
    for (std::size_t s = 0; s < op.segment_count; ++s) {
      const fast::Segment& seg = plan.segments[op.first_segment + s];
      const auto length = static_cast<std::int64_t>(seg.length);
      bytes_[seg.tensor]
          .narrow(0, static_cast<std::int64_t>(seg.tensor_offset), length)
          .copy_(staging_.narrow(0, src_offset, length), /*non_blocking=*/true);
      src_offset += length;
    }
    if (!events_.empty()) {
      c10::impl::VirtualGuardImpl impl(device_.type());
      events_[slot].record(impl.getStream(device_));
    }
  }

  void wait_slot(std::size_t slot) override {
    if (!events_.empty()) events_[slot].synchronize();
  }

 private:
  at::Tensor staging_;
  c10::Device device_;
  std::vector<at::Tensor> bytes_;
  std::vector<c10::Event> events_;
};

// Staging memory: pinned where the device's host allocator can pin, so that
// copies run asynchronously; pageable otherwise (copies are then synchronous,
// which is still correct).
at::Tensor allocate_staging(std::uint64_t bytes, c10::Device device) {
  const auto options = at::TensorOptions().dtype(at::kByte);
  if (device.is_cuda()) {
    try {
      return at::empty({static_cast<std::int64_t>(bytes)}, options.pinned_memory(true));
    } catch (const c10::Error&) {
      // No pinning allocator in this build; fall through to pageable memory.
    }
  }
  return at::empty({static_cast<std::int64_t>(bytes)}, options);
}

// More slots than this per thread only add events and pinned memory.
constexpr std::uint64_t kMaxSlotsPerThread = 4;

// The uncached view of the file unless the page cache is asked for, and
// where supported (tmpfs, for one, refuses O_DIRECT: then the page cache is
// used after all).
std::optional<File> open_uncached_unless_cached(const File& file, LoadOptions::Io io) {
  if (io == LoadOptions::Io::kCached) return std::nullopt;
  File uncached = File::open_uncached(file.path());
  if (!uncached.is_open()) return std::nullopt;
  return uncached;
}

// `count` consecutive slots of `slot_bytes` (a multiple of kDirectIoAlign)
// from the first kDirectIoAlign boundary of `owner`, which has room for them.
std::vector<void*> carve_slots(const at::Tensor& owner, std::uint64_t slot_bytes, std::size_t count) {
  const auto base = reinterpret_cast<std::uintptr_t>(owner.const_data_ptr<std::uint8_t>());
  const std::uintptr_t aligned = (base + kDirectIoAlign - 1) / kDirectIoAlign * kDirectIoAlign;
  std::vector<void*> slots;
  for (std::size_t i = 0; i < count; ++i) slots.push_back(reinterpret_cast<void*>(aligned + i * slot_bytes));
  return slots;
}

// `count` kDirectIoAlign-aligned slots of `slot_bytes` (a multiple of it) in
// one allocation, returned with the tensor that owns them. Host memory: huge
// pages where available, since some virtual disks take O_DIRECT reads into
// 4 KiB pages several times slower than into 2 MiB ones (measured: 5x).
std::vector<void*> bounce_slots(std::uint64_t slot_bytes, std::size_t count, at::Tensor* owner) {
  const std::uint64_t bytes = slot_bytes * count + kDirectIoAlign;
#if defined(__linux__)
  *owner = huge_page_tensor(bytes, {static_cast<std::int64_t>(bytes)}, at::kByte);
#endif
  if (!owner->defined()) *owner = allocate_staging(bytes, c10::Device("cpu"));
  return carve_slots(*owner, slot_bytes, count);
}

}  // namespace

TensorMap load_file(const std::string& path, c10::Device device, const LoadOptions& options) {
  check_device_usable(device);
  const File file = File::open(path);
  const Header header = Header::read(file);
  check_torch_compatible(header, path);

  // Everything is allocated before the first read.
  std::vector<at::Tensor> tensors;
  tensors.reserve(header.tensors().size());
  for (const TensorInfo& t : header.tensors()) tensors.push_back(allocate_destination(t, path, device));

  std::vector<void*> host(tensors.size(), nullptr);
  std::vector<c10::Storage> keepalive(tensors.size());
  // Host-writable destinations are written directly (unless staging is forced).
  bool direct = options.path == LoadOptions::Path::kAuto;
  for (std::size_t i = 0; direct && i < tensors.size(); ++i) {
    if (tensors[i].nbytes() == 0) continue;
    host[i] = host_writable_pointer(tensors[i], &keepalive[i]);
    direct = host[i] != nullptr;
  }

  if (direct) {
    // Bytes the page cache holds are copied from it; the rest bypass it
    // (kAuto), unless told otherwise.
    const std::optional<File> uncached = open_uncached_unless_cached(file, options.io);
    const CacheMap cache = !uncached                              ? CacheMap::uniform(true)
                           : options.io == LoadOptions::Io::kAuto ? CacheMap::of(file)
                                                                  : CacheMap::uniform(false);
    const bool bypass = uncached && !cache.cached(header.data_start(), header.data_length());
    const std::unique_ptr<fast::Executor> executor = fast::make_executor(
        options.threads ? options.threads : bypass ? fast::default_uncached_threads() : fast::default_threads());
    const std::size_t threads = executor->concurrency();
    std::uint64_t chunk = options.chunk_bytes ? options.chunk_bytes
                                              : fast::default_chunk_bytes(header.data_length(), threads);
    if (bypass && !options.chunk_bytes) chunk = std::min(chunk, fast::kUncachedChunkBytes);
    const fast::Plan plan = fast::plan_reads(header, chunk);
    at::Tensor bounce;
    const std::vector<void*> slots =
        bypass ? bounce_slots(fast::slot_bytes_for(plan, true), threads, &bounce) : std::vector<void*>{};
    fast::read_host(file, bypass ? &*uncached : nullptr, cache, header, plan, host, slots, *executor);
  } else {
    // Through pinned staging slots, within the staging bound: device copies
    // drain while reads go on, so at least two slots per thread. The page
    // cache is used unless kUncached is asked for.
    SAFELOAD_CHECK(options.staging_bytes >= 64 * 1024, ErrorCode::kInvalidArgument,
                   "staging_bytes must be at least 64 KiB, got " + std::to_string(options.staging_bytes));
    const std::unique_ptr<fast::Executor> executor = fast::make_executor(options.threads);
    const std::size_t threads = executor->concurrency();
    std::uint64_t chunk = options.chunk_bytes ? options.chunk_bytes
                                              : fast::default_chunk_bytes(header.data_length(), threads);
    chunk = std::max<std::uint64_t>(4096, std::min(chunk, options.staging_bytes / (2 * threads)));
    const std::optional<File> uncached =
        options.io == LoadOptions::Io::kUncached ? open_uncached_unless_cached(file, options.io) : std::nullopt;
    const fast::Plan plan = fast::plan_reads(header, chunk);
    const std::uint64_t slot_bytes = fast::slot_bytes_for(plan, uncached.has_value());
    const auto slot_count = static_cast<std::size_t>(std::clamp<std::uint64_t>(
        options.staging_bytes / slot_bytes, 1, kMaxSlotsPerThread * threads));
    const at::Tensor staging = allocate_staging(slot_bytes * slot_count + kDirectIoAlign, device);
    const std::vector<void*> slots = carve_slots(staging, slot_bytes, slot_count);
    TorchStagedTarget target(tensors, staging, slot_count, device);
    fast::read_staged(file, header, plan, slots, target, *executor, uncached ? &*uncached : nullptr);
  }

  TensorMap out;
  for (std::size_t i = 0; i < tensors.size(); ++i) out.emplace(header.tensors()[i].name, std::move(tensors[i]));
  return out;
}

}  // namespace safeload
