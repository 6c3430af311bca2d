#include "safeload/error.h"

#include <array>
#include <cstdio>
#include <cstdlib>

namespace safeload {
namespace {

constexpr std::array<std::string_view, kErrorCodeCount> kNames = {
    "HEADER_TOO_SMALL",
    "HEADER_TOO_LARGE",
    "INVALID_HEADER_LENGTH",
    "INVALID_HEADER_UTF8",
    "INVALID_JSON",
    "INVALID_HEADER",
    "INVALID_METADATA",
    "UNKNOWN_DTYPE",
    "INVALID_OFFSET",
    "VALIDATION_OVERFLOW",
    "TENSOR_INVALID_INFO",
    "MISALIGNED_SLICE",
    "METADATA_INCOMPLETE_BUFFER",
    "DUPLICATE_NAME",
    "RESERVED_NAME",
    "UNKNOWN_FIELD",
    "UNSUPPORTED_DTYPE",
    "INVALID_ARGUMENT",
    "IO",
    "INVALID_INDEX",
    "OUT_OF_MEMORY",
    "CANCELLED",
};
static_assert(static_cast<int>(ErrorCode::kCancelled) + 1 == kErrorCodeCount,
              "kErrorCodeCount must count every ErrorCode");

}  // namespace

std::string_view error_code_name(ErrorCode code) {
  const auto index = static_cast<std::size_t>(code);
  SAFELOAD_INTERNAL_ASSERT(index < kNames.size(), "error code out of range");
  return kNames[index];
}

Error::Error(ErrorCode code, std::string message, int sys_errno)
    : std::runtime_error(std::move(message)), code_(code), errno_(sys_errno) {}

namespace detail {
void internal_assert_failed(const char* expr, const char* file, int line,
                            const std::string& what) {
  std::fprintf(stderr, "safeload internal error: %s (%s) at %s:%d\n", what.c_str(), expr, file,
               line);
  std::abort();
}
}  // namespace detail

}  // namespace safeload
