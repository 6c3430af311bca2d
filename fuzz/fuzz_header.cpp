// Fuzz target: header parse + validate on arbitrary bytes.
//
// The input is a whole file (length prefix, header, data). Header::from_bytes
// must either throw safeload::Error with a code a header can cause, or return
// a header whose invariants hold (header.h): tensors tile the data section in
// order, sizes are exact, names are unique and findable. Anything else (a
// crash, a sanitizer report, another exception type, a broken invariant) is a
// finding.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <tuple>

#include "fuzz_check.h"
#include "safeload/dtype.h"
#include "safeload/error.h"
#include "safeload/header.h"

namespace {

using safeload::ErrorCode;
using safeload::Header;

bool header_can_cause(ErrorCode code) {
  switch (code) {
    case ErrorCode::kUnsupportedDtype:  // only frameworks refuse a dtype
    case ErrorCode::kInvalidArgument:   // only callers pass arguments
    case ErrorCode::kIo:                // nothing is read from a file here
      return false;
    default:
      return static_cast<int>(code) >= 0 && static_cast<int>(code) < safeload::kErrorCodeCount;
  }
}

void check_invariants(const Header& h, std::size_t input_size) {
  FUZZ_CHECK(h.file_size() == input_size, "the header accounts for every byte of the file");
  FUZZ_CHECK(h.data_start() == 8 + h.header_length(), "data starts after prefix and header");
  FUZZ_CHECK(h.header_length() <= safeload::kMaxHeaderLength, "header length within the limit");

  std::uint64_t at = 0;
  const safeload::TensorInfo* previous = nullptr;
  for (const safeload::TensorInfo& t : h.tensors()) {
    FUZZ_CHECK(t.begin == at && t.end >= t.begin, "tensors tile the data section in order");
    at = t.end;
    std::uint64_t numel = 1;
    for (std::int64_t dim : t.shape) {
      FUZZ_CHECK(dim >= 0, "dimensions are non-negative");
      FUZZ_CHECK(!__builtin_mul_overflow(numel, static_cast<std::uint64_t>(dim), &numel),
                 "an accepted shape has a 64-bit element count");
    }
    FUZZ_CHECK(numel == t.numel, "numel is the product of the shape");
    const unsigned __int128 bits =
        static_cast<unsigned __int128>(numel) * safeload::dtype_info(t.dtype).bits;
    FUZZ_CHECK(bits % 8 == 0 && bits / 8 == t.nbytes(), "byte range matches shape and dtype");
    if (previous != nullptr) {
      FUZZ_CHECK(std::tie(previous->begin, previous->end, previous->name) <
                     std::tie(t.begin, t.end, t.name),
                 "tensors sorted by (begin, end, name) without duplicates");
    }
    FUZZ_CHECK(h.find(t.name) == &t, "every tensor is found by its name");
    FUZZ_CHECK(t.name != "__metadata__", "no tensor is named __metadata__");
    previous = &t;
  }
  FUZZ_CHECK(at == h.data_length(), "the last tensor ends where the file ends");
  for (std::size_t i = 1; i < h.metadata().size(); ++i) {
    FUZZ_CHECK(h.metadata()[i - 1].first < h.metadata()[i].first, "metadata keys sorted, unique");
  }
  FUZZ_CHECK(h.has_metadata() || h.metadata().empty(), "no metadata entries without metadata");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  try {
    const Header h = Header::from_bytes(bytes, "fuzz-input.safetensors");
    check_invariants(h, size);
  } catch (const safeload::Error& e) {
    FUZZ_CHECK(header_can_cause(e.code()), "a header error carries a header error code");
  }
  return 0;
}
