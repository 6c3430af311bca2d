// Read planning (see safeload/fast.h): pieces of file bytes per wanted part of
// each tensor, packed into positional reads of at most a chunk.
#include <algorithm>
#include <string>

#include "safeload/error.h"
#include "safeload/fast.h"

namespace safeload::fast {
namespace {

// Packs pieces of file bytes (in file order) into ops: a piece continues the
// current op when it starts where the op ends and the op has room.
class Packer {
 public:
  Packer(Plan& plan, std::uint64_t chunk_bytes) : plan_(plan), chunk_(chunk_bytes) {}

  void piece(std::size_t file, std::uint64_t file_offset, std::size_t tensor, std::uint64_t tensor_offset,
             std::uint64_t length) {
    std::uint64_t done = 0;
    while (done < length) {
      const bool continues = open_ && plan_.ops.back().file == file &&
                             plan_.ops.back().file_offset + plan_.ops.back().length == file_offset + done &&
                             plan_.ops.back().length < chunk_ && plan_.ops.back().segment_count < kMaxSegmentsPerOp;
      if (!continues) {
        plan_.ops.push_back(ReadOp{file, file_offset + done, 0, plan_.segments.size(), 0});
        open_ = true;
      }
      ReadOp& op = plan_.ops.back();
      const std::uint64_t take = std::min(length - done, chunk_ - op.length);
      plan_.segments.push_back(Segment{tensor, tensor_offset + done, take});
      op.length += take;
      op.segment_count += 1;
      done += take;
    }
  }

 private:
  Plan& plan_;
  const std::uint64_t chunk_;
  bool open_ = false;
};

void check_selection(const TensorInfo& t, const Selection& s) {
  std::uint64_t block = 0, all = 0;
  const bool fits = !__builtin_mul_overflow(s.extent, s.inner_bytes, &block) &&
                    !__builtin_mul_overflow(s.outer, block, &all) && all == t.nbytes() && s.start <= s.stop &&
                    s.stop <= s.extent;
  SAFELOAD_CHECK(fits, ErrorCode::kInvalidArgument,
                 "the part of tensor '" + t.name + "' to read (" + std::to_string(s.outer) + " x rows " +
                     std::to_string(s.start) + " to " + std::to_string(s.stop) + " of " + std::to_string(s.extent) +
                     " x " + std::to_string(s.inner_bytes) + " bytes) does not describe its " +
                     std::to_string(t.nbytes()) + " bytes");
}

}  // namespace

Plan plan_reads(const std::vector<const Header*>& headers, std::uint64_t chunk_bytes,
                const std::vector<std::optional<Selection>>* selections) {
  SAFELOAD_CHECK(chunk_bytes > 0, ErrorCode::kInvalidArgument, "chunk size must be positive");
  Plan plan;
  plan.chunk_bytes = chunk_bytes;
  Packer packer(plan, chunk_bytes);
  std::size_t tensor = 0;  // index over the tensors of every header, in order
  for (std::size_t f = 0; f < headers.size(); ++f) {
    const Header& header = *headers[f];
    // The header's tensors tile the data section in this order, so pieces of
    // consecutive tensors (or rows) are consecutive file bytes and may share an op.
    for (const TensorInfo& t : header.tensors()) {
      std::optional<Selection> sel = Selection::whole(t.nbytes());
      if (selections) {
        SAFELOAD_INTERNAL_ASSERT(tensor < selections->size(), "one selection per tensor");
        sel = (*selections)[tensor];
        if (sel) check_selection(t, *sel);
      }
      const std::uint64_t base = header.data_start() + t.begin;
      const std::uint64_t bytes = sel ? sel->bytes() : 0;
      if (bytes > 0) {
        const std::uint64_t row = sel->inner_bytes;
        const std::uint64_t span = (sel->stop - sel->start) * row;
        if (sel->runs() == 1) {
          packer.piece(f, base + sel->start * row, tensor, 0, bytes);  // outer == 1, or start == 0
        } else {
          for (std::uint64_t o = 0; o < sel->outer; ++o) {
            packer.piece(f, base + (o * sel->extent + sel->start) * row, tensor, o * span, span);
          }
        }
      }
      plan.tensor_bytes.push_back(bytes);
      plan.total_bytes += bytes;
      ++tensor;
    }
  }
  return plan;
}

Plan plan_reads(const Header& header, std::uint64_t chunk_bytes) {
  return plan_reads(std::vector<const Header*>{&header}, chunk_bytes);
}

std::vector<std::pair<std::size_t, std::size_t>> split_shares(const Plan& plan, std::size_t parts) {
  SAFELOAD_CHECK(parts >= 1, ErrorCode::kInvalidArgument, "a plan is split into at least one share");
  std::vector<std::size_t> count(parts, 0);
  std::uint64_t done = 0;
  for (const ReadOp& op : plan.ops) {
    // The part the op's byte midpoint falls in.
    const std::size_t part =
        plan.total_bytes == 0 ? 0
                              : static_cast<std::size_t>(std::min<unsigned __int128>(
                                    parts - 1, (static_cast<unsigned __int128>(2 * done + op.length) * parts) /
                                                   (2 * static_cast<unsigned __int128>(plan.total_bytes))));
    ++count[part];
    done += op.length;
  }
  std::vector<std::pair<std::size_t, std::size_t>> out;
  std::size_t first = 0;
  for (std::size_t k = 0; k < parts; ++k) {
    out.emplace_back(first, first + count[k]);
    first += count[k];
  }
  return out;
}

Plan share_of(const Plan& plan, std::size_t part, std::size_t parts) {
  SAFELOAD_CHECK(part < parts, ErrorCode::kInvalidArgument,
                 "share " + std::to_string(part) + " of " + std::to_string(parts) + " does not exist");
  const auto [first, last] = split_shares(plan, parts)[part];
  Plan out = plan;
  out.ops.assign(plan.ops.begin() + static_cast<std::ptrdiff_t>(first),
                 plan.ops.begin() + static_cast<std::ptrdiff_t>(last));
  out.total_bytes = 0;
  for (const ReadOp& op : out.ops) out.total_bytes += op.length;
  return out;
}

std::optional<std::size_t> cheapest_range(const std::vector<std::uint64_t>& sizes, std::uint64_t nbytes,
                                          const std::vector<DimRange>& candidates) {
  std::optional<std::size_t> best;
  long double best_cost = 0;
  for (std::size_t k = 0; k < candidates.size(); ++k) {
    const DimRange& c = candidates[k];
    SAFELOAD_CHECK(c.dim < sizes.size() && c.start <= c.stop && c.stop <= sizes[c.dim], ErrorCode::kInvalidArgument,
                   "range " + std::to_string(c.start) + ":" + std::to_string(c.stop) + " of dimension " +
                       std::to_string(c.dim) + " is outside a tensor of " + std::to_string(sizes.size()) +
                       " dimensions");
    // In long double: products of sizes may pass 2^64 where nbytes is 0.
    long double outer = 1;
    for (std::size_t d = 0; d < c.dim; ++d) outer *= static_cast<long double>(sizes[d]);
    const long double share = sizes[c.dim] ? static_cast<long double>(c.stop - c.start) / sizes[c.dim] : 0;
    const long double bytes = share * static_cast<long double>(nbytes);
    const long double runs = bytes == 0 ? 0 : (c.stop - c.start == sizes[c.dim] || outer == 1) ? 1 : outer;
    const long double cost = bytes + runs * static_cast<long double>(kRunCostBytes);
    if (!best || cost < best_cost) {
      best = k;
      best_cost = cost;
    }
  }
  return best;
}

}  // namespace safeload::fast
