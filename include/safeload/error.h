// Error type shared by every safeload component.
//
// Contract: every failure a caller can trigger with a file or an argument is
// reported as a safeload::Error carrying an ErrorCode. The code is stable
// (tests and the Python binding key on it, never on the message); the message
// says what was expected, what was found and where (file, tensor, field,
// byte offset), with a hint where one helps.
//
// Violations of safeload's own invariants are not Errors: they abort through
// SAFELOAD_INTERNAL_ASSERT, because no input should be able to reach them.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

namespace safeload {

// Modelled on upstream safetensors' SafeTensorError kinds; the comment on each
// names the upstream variant it corresponds to, or says it is safeload's own.
enum class ErrorCode : int {
  kHeaderTooSmall,            // HeaderTooSmall: file shorter than the 8-byte length prefix
  kHeaderTooLarge,            // HeaderTooLarge: declared header length over 100,000,000
  kInvalidHeaderLength,       // InvalidHeaderLength: header runs past the end of the file
  kInvalidHeaderUtf8,         // InvalidHeader: header bytes are not UTF-8
  kInvalidJson,               // InvalidHeaderDeserialization: JSON syntax, nesting too deep
  kInvalidHeader,             // InvalidHeaderDeserialization: JSON is well formed but not a header
                              // (not an object, missing/mistyped dtype, shape or data_offsets)
  kInvalidMetadata,           // InvalidHeaderDeserialization: __metadata__ not a string->string map
  kUnknownDtype,              // InvalidHeaderDeserialization: dtype string not in the format
  kInvalidOffset,             // InvalidOffset: hole, overlap, reversed or non-zero start
  kValidationOverflow,        // ValidationOverflow: shape product or byte size overflows
  kTensorInvalidInfo,         // TensorInvalidInfo: byte range length != shape x dtype size
  kMisalignedSlice,           // MisalignedSlice: sub-byte dtype whose size is not whole bytes
  kMetadataIncompleteBuffer,  // MetadataIncompleteBuffer: data section length != last offset
                              // (truncated file or trailing bytes)
  kDuplicateName,             // safeload's own: a tensor name appears twice (upstream: last wins)
  kReservedName,              // safeload's own: a tensor entry named __metadata__
  kUnknownField,              // safeload's own: a tensor entry has a key other than the three
  kUnsupportedDtype,          // safeload's own: the dtype has no equivalent on this framework/device
  kInvalidArgument,           // safeload's own: a bad option or device string from the caller
  kIo,                        // IoError: open, stat or read failed (errno is kept)
  kInvalidIndex,              // safeload's own: a checkpoint's index.json is malformed or
                              // disagrees with its shards
  kOutOfMemory,               // safeload's own: a destination or buffer could not be allocated
  kCancelled,                 // safeload's own: the caller cancelled the load (Ctrl-C, a hook)
};

// Number of codes; keep in step with the enum (checked in error.cpp).
inline constexpr int kErrorCodeCount = 22;

// Stable upper-case name of a code, e.g. "INVALID_OFFSET". Python exposes it as
// SafetensorError.code.
std::string_view error_code_name(ErrorCode code);

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, std::string message, int sys_errno = 0);

  ErrorCode code() const noexcept { return code_; }
  std::string_view code_name() const noexcept { return error_code_name(code_); }
  // errno of the failing system call for kIo, 0 otherwise.
  int sys_errno() const noexcept { return errno_; }

 private:
  ErrorCode code_;
  int errno_;
};

namespace detail {
[[noreturn]] void internal_assert_failed(const char* expr, const char* file, int line,
                                         const std::string& what);
}  // namespace detail

}  // namespace safeload

// Checks a condition on caller- or file-supplied input; on failure throws
// safeload::Error(code, message). `message` is only evaluated on failure.
#define SAFELOAD_CHECK(cond, code, message)                                 \
  do {                                                                      \
    if (!(cond)) throw ::safeload::Error((code), (message));                \
  } while (0)

// Checks safeload's own invariants; failure is a bug in safeload, never an
// input error, so it aborts with the location instead of throwing.
#define SAFELOAD_INTERNAL_ASSERT(cond, what)                                           \
  do {                                                                                 \
    if (!(cond)) ::safeload::detail::internal_assert_failed(#cond, __FILE__, __LINE__, \
                                                            (what));                   \
  } while (0)
