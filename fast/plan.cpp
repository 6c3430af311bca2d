#include <algorithm>

#include "safeload/error.h"
#include "safeload/fast.h"

namespace safeload::fast {

Plan plan_reads(const std::vector<const Header*>& headers, std::uint64_t chunk_bytes,
                const std::vector<bool>* wanted) {
  SAFELOAD_CHECK(chunk_bytes > 0, ErrorCode::kInvalidArgument, "chunk size must be positive");
  Plan plan;
  plan.chunk_bytes = chunk_bytes;
  std::size_t tensor = 0;  // index over the tensors of every header, in order
  for (std::size_t f = 0; f < headers.size(); ++f) {
    const Header& header = *headers[f];
    bool file_started = false;
    // The header guarantees tensors tile the data section in this order, so
    // consecutive segments are consecutive file bytes and may share an op.
    for (const TensorInfo& t : header.tensors()) {
      if (wanted && !(*wanted)[tensor]) {
        plan.tensor_bytes.push_back(0);
        file_started = false;  // the next wanted tensor's bytes are not contiguous with the last op
        ++tensor;
        continue;
      }
      std::uint64_t done = 0;
      while (done < t.nbytes()) {
        const bool need_new_op = !file_started || plan.ops.back().length == chunk_bytes ||
                                 plan.ops.back().segment_count == kMaxSegmentsPerOp;
        if (need_new_op) {
          plan.ops.push_back(ReadOp{f, header.data_start() + t.begin + done, 0, plan.segments.size(), 0});
          file_started = true;
        }
        ReadOp& op = plan.ops.back();
        const std::uint64_t take = std::min(t.nbytes() - done, chunk_bytes - op.length);
        plan.segments.push_back(Segment{tensor, done, take});
        op.length += take;
        op.segment_count += 1;
        done += take;
      }
      plan.tensor_bytes.push_back(t.nbytes());
      plan.total_bytes += t.nbytes();
      ++tensor;
    }
  }
  return plan;
}

Plan plan_reads(const Header& header, std::uint64_t chunk_bytes) {
  return plan_reads(std::vector<const Header*>{&header}, chunk_bytes);
}

}  // namespace safeload::fast
