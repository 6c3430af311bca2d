// The header's JSON, read against the safetensors schema. Private to core/.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "safeload/header.h"

namespace safeload {

struct ParsedHeader {
  std::vector<TensorInfo> tensors;  // in the JSON's order, shape, dtype and offsets set
  std::vector<std::uint32_t> by_name;  // indices into tensors, sorted by name
  std::vector<std::pair<std::string, std::string>> metadata;  // sorted by key, each key once
  bool has_metadata = false;
};

// Reads header JSON (already checked to be UTF-8 without NUL or BOM) against
// the schema. Throws the fault a file gets, in this precedence:
//   1. in document order, and stopping there: JSON syntax errors (numbers
//      beyond a double included), nesting deeper than kMaxJsonDepth, and a key
//      given twice in one object, except directly inside __metadata__, where
//      the last value wins as in upstream's HashMap;
//   2. then a header that is not an object;
//   3. then a tensor name given twice;
//   4. then the first faulty top-level entry in byte order of its key, each
//      entry checked in a fixed order (tensor entries: an unknown field, a
//      missing field, then dtype, shape and data_offsets; __metadata__: not an
//      object, tensor-entry keys, then a value that is not a string);
// the layout (layout.h) comes after all of these.
ParsedHeader parse_header_json(std::string_view json, std::string_view path);

}  // namespace safeload
