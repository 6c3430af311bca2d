#include <algorithm>

#include "safeload/error.h"
#include "safeload/fast.h"

namespace safeload::fast {

std::uint64_t default_chunk_bytes(std::uint64_t total_bytes, std::size_t threads) {
  // About four chunks per thread keeps every thread busy to the end even when
  // reads finish unevenly; the clamp bounds syscall count and slot size.
  const std::uint64_t per_thread = total_bytes / (4 * std::max<std::size_t>(threads, 1));
  const std::uint64_t chunk = std::clamp(per_thread, kMinChunkBytes, kMaxChunkBytes);
  return chunk / (64 * 1024) * (64 * 1024);  // whole 64 KiB units
}

Plan plan_reads(const Header& header, std::uint64_t chunk_bytes) {
  SAFELOAD_CHECK(chunk_bytes > 0, ErrorCode::kInvalidArgument, "chunk size must be positive");
  Plan plan;
  plan.chunk_bytes = chunk_bytes;
  const std::vector<TensorInfo>& tensors = header.tensors();
  // The header guarantees tensors tile the data section in this order, so
  // consecutive segments are consecutive file bytes and may share an op.
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const TensorInfo& t = tensors[i];
    std::uint64_t done = 0;
    while (done < t.nbytes()) {
      const bool need_new_op = plan.ops.empty() || plan.ops.back().length == chunk_bytes ||
                               plan.ops.back().segment_count == kMaxSegmentsPerOp;
      if (need_new_op) {
        plan.ops.push_back(ReadOp{header.data_start() + t.begin + done, 0, plan.segments.size(), 0});
      }
      ReadOp& op = plan.ops.back();
      const std::uint64_t take = std::min(t.nbytes() - done, chunk_bytes - op.length);
      plan.segments.push_back(Segment{i, done, take});
      op.length += take;
      op.segment_count += 1;
      done += take;
    }
    plan.total_bytes += t.nbytes();
  }
  return plan;
}

}  // namespace safeload::fast
