// Parsing and validation of a safetensors header.
//
// File layout: an 8-byte little-endian unsigned length N, N bytes of UTF-8
// JSON (the header), then the data section. The header maps tensor names to
// {"dtype", "shape", "data_offsets": [begin, end]} with offsets relative to
// the data section, plus an optional "__metadata__" string->string map.
//
// A Header is only ever constructed validated: every rule the upstream
// implementation (huggingface/safetensors) enforces holds, plus safeload's
// stricter ones (documented on ErrorCode). After that it is immutable and safe
// to share between threads.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "safeload/dtype.h"

namespace safeload {

class File;

// Upstream's limit on the header length N.
inline constexpr std::uint64_t kMaxHeaderLength = 100'000'000;
// Deepest JSON nesting accepted. A valid header nests 3 deep (object, tensor
// entry, shape array); the bound keeps hostile input from exhausting memory.
inline constexpr int kMaxJsonDepth = 64;

struct TensorInfo {
  std::string name;
  DType dtype;
  std::vector<std::int64_t> shape;  // every dimension <= INT64_MAX
  std::uint64_t begin = 0;          // byte offsets within the data section
  std::uint64_t end = 0;
  std::uint64_t numel = 0;

  std::uint64_t nbytes() const noexcept { return end - begin; }
};

class Header {
 public:
  // Validates a whole file given as its bytes (length prefix included).
  // `path` names the file in error messages.
  static Header from_bytes(std::string_view file_bytes, std::string_view path);

  // Reads and validates the header of an open file: bounds the declared
  // length against the limit and the file size before allocating for it.
  static Header read(const File& file);

  // Validates header JSON bytes (without the prefix) for a file of
  // `file_size` bytes in total; the prefix itself must already be checked
  // (see check_prefix).
  static Header parse(std::string_view json, std::uint64_t file_size, std::string_view path);

  // Checks the 8-byte prefix of a file of `file_size` bytes and returns the
  // header length N it declares (0 <= N <= kMaxHeaderLength, 8 + N <= size).
  static std::uint64_t check_prefix(const unsigned char prefix[8], std::uint64_t file_size,
                                    std::string_view path);

  // Tensors sorted by (begin, end, name): the order of the data section.
  const std::vector<TensorInfo>& tensors() const noexcept { return tensors_; }
  // __metadata__ entries sorted by key, each key once: a key the JSON gives
  // twice keeps its last value, as upstream does. Empty when absent.
  const std::vector<std::pair<std::string, std::string>>& metadata() const noexcept {
    return metadata_;
  }
  bool has_metadata() const noexcept { return has_metadata_; }

  std::uint64_t header_length() const noexcept { return header_length_; }  // N
  std::uint64_t data_start() const noexcept { return 8 + header_length_; }
  std::uint64_t data_length() const noexcept { return data_length_; }
  std::uint64_t file_size() const noexcept { return data_start() + data_length_; }

  // Tensor by name, nullptr if absent. O(log n).
  const TensorInfo* find(std::string_view name) const;

 private:
  Header() = default;
  std::vector<TensorInfo> tensors_;
  std::vector<std::uint32_t> by_name_;  // indices into tensors_, sorted by name
  std::vector<std::pair<std::string, std::string>> metadata_;
  bool has_metadata_ = false;
  std::uint64_t header_length_ = 0;
  std::uint64_t data_length_ = 0;
};

}  // namespace safeload
