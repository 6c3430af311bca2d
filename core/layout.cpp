// The data section's layout (layout.h).
#include "layout.h"

#include <string>
#include <utility>

#include "json.h"
#include "safeload/error.h"

namespace safeload {
namespace {

// Checked u64 arithmetic: every size that comes from the file goes through
// this, so a hostile shape or offset cannot wrap around into a small size.
bool mul_overflows(std::uint64_t a, std::uint64_t b, std::uint64_t* out) {
  return __builtin_mul_overflow(a, b, out);
}

std::string tensor_ctx(std::string_view name, std::string_view path) {
  return "tensor " + in_quotes(name) + " " + where(path);
}

}  // namespace

// Messages are built only on failure: this runs once per tensor.
std::uint64_t validate_layout(std::vector<TensorInfo>& tensors, std::string_view path) {
  std::uint64_t expected_begin = 0;
  for (TensorInfo& t : tensors) {
    const auto ctx = [&] { return tensor_ctx(t.name, path); };
    if (t.end < t.begin) {
      throw Error(ErrorCode::kInvalidOffset, ctx() + ": data_offsets [" + std::to_string(t.begin) + ", " +
                                                 std::to_string(t.end) + "] end before they begin");
    }
    if (t.begin != expected_begin) {
      const char* what = t.begin > expected_begin ? "leaves a hole before it" : "overlaps";
      throw Error(ErrorCode::kInvalidOffset,
                  ctx() + ": data_offsets begin at " + std::to_string(t.begin) +
                      " but the previous tensor ends at " + std::to_string(expected_begin) + " (the layout " +
                      what + "; tensors must tile the data section)");
    }
    expected_begin = t.end;

    std::uint64_t numel = 1;
    for (std::int64_t dim : t.shape) {
      SAFELOAD_CHECK(!mul_overflows(numel, static_cast<std::uint64_t>(dim), &numel),
                     ErrorCode::kValidationOverflow, ctx() + ": the element count of shape overflows 64 bits");
    }
    std::uint64_t bits = 0;
    SAFELOAD_CHECK(!mul_overflows(numel, dtype_info(t.dtype).bits, &bits), ErrorCode::kValidationOverflow,
                   ctx() + ": the size in bits of " + std::to_string(numel) + " elements of " +
                       std::string(dtype_info(t.dtype).name) + " overflows 64 bits");
    SAFELOAD_CHECK(bits % 8 == 0, ErrorCode::kMisalignedSlice,
                   ctx() + ": " + std::to_string(numel) + " elements of " +
                       std::string(dtype_info(t.dtype).name) + " take " + std::to_string(bits) +
                       " bits, not a whole number of bytes");
    SAFELOAD_CHECK(bits / 8 == t.nbytes(), ErrorCode::kTensorInvalidInfo,
                   ctx() + ": shape and dtype give " + std::to_string(bits / 8) + " bytes but data_offsets span " +
                       std::to_string(t.nbytes()));
    t.numel = numel;
  }
  return expected_begin;
}

void permute(std::vector<TensorInfo>& items, std::vector<std::uint32_t>& order) {
  for (std::uint32_t i = 0; i < order.size(); ++i) {
    if (order[i] == i) continue;
    TensorInfo held = std::move(items[i]);
    std::uint32_t j = i;
    while (order[j] != i) {
      const std::uint32_t from = order[j];
      items[j] = std::move(items[from]);
      order[j] = j;
      j = from;
    }
    items[j] = std::move(held);
    order[j] = j;
  }
}

}  // namespace safeload
