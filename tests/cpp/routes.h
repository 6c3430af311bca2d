// Reading a file by each route of safeload::kReadRoutes with the torch-free
// byte movers, for the C++ read tests and the fuzz target. Depends on no test
// framework: callers compare the bytes themselves.
#pragma once

#include <cstdint>
#include <vector>

#include "deferred_target.h"
#include "safeload/fast.h"
#include "safeload/options.h"
#include "safeload/reference.h"

namespace safeload::testing {

// `count` kDirectIoAlign-aligned slots of `slot_bytes` each, as O_DIRECT needs.
struct AlignedSlots {
  AlignedSlots(std::uint64_t slot_bytes, std::size_t count) : memory(slot_bytes * count + kDirectIoAlign) {
    const auto base = (reinterpret_cast<std::uintptr_t>(memory.data()) + kDirectIoAlign - 1) / kDirectIoAlign *
                      kDirectIoAlign;
    for (std::size_t i = 0; i < count; ++i) ptrs.push_back(reinterpret_cast<void*>(base + i * slot_bytes));
  }
  std::vector<char> memory;
  std::vector<void*> ptrs;
};

// What a route read, beside the bytes, for checks the staged routes add.
struct RouteRun {
  std::size_t slots_reused_before_wait = 0;  // must be 0
  std::size_t copies_pending = 0;            // must be 0
};

// Reads every tensor of `h` from `file` into dst[i] (tensor i's bytes) by
// `route`, in reads of up to `chunk` bytes through `slot_count` slots where
// the route has slots. `uncached` is `file` opened with O_DIRECT, or null
// (or not open) where the file system has none: the bypass routes then read
// through the page cache, as the loaders do there. Staged routes copy out of
// their slots as lazily as a device would (DeferredTarget).
inline RouteRun read_by_route(ReadRoute route, const File& file, const File* uncached, const Header& h,
                              std::uint64_t chunk, std::size_t slot_count, const std::vector<void*>& dst,
                              fast::Executor& executor) {
  RouteRun run;
  if (route == ReadRoute::kReference) {
    reference::read_tensors(file, h, dst);
    return run;
  }
  const bool bypass = route_bypasses_cache(route) && uncached != nullptr && uncached->is_open();
  const fast::Plan plan = fast::plan_reads(h, chunk);
  const std::vector<fast::Source> sources = {fast::Source{&file, bypass ? uncached : nullptr, nullptr}};
  const AlignedSlots aligned(fast::slot_bytes_for(plan.chunk_bytes, bypass), slot_count);
  const std::vector<void*>& slots = aligned.ptrs;

  switch (route) {
    case ReadRoute::kHostCached:
      fast::read_cached(file, plan, dst, executor);
      break;
    case ReadRoute::kHostBypass:
      fast::read_host(sources, plan, dst, bypass ? slots : std::vector<void*>{}, executor);
      break;
    case ReadRoute::kStagedCached:
    case ReadRoute::kStagedUncached: {
      DeferredTarget target(dst);
      fast::read_staged(sources, plan, slots, target, executor);
      run.slots_reused_before_wait = target.reused_before_wait();
      run.copies_pending = target.pending();
      break;
    }
    case ReadRoute::kReference:
      break;
  }
  return run;
}

}  // namespace safeload::testing
