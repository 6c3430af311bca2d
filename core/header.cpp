// The header: the length prefix, then the JSON read against the schema
// (schema.h), then the layout (layout.h), into an immutable, validated Header.
#include "safeload/header.h"

#include <algorithm>
#include <string>
#include <tuple>

#include "encoding.h"
#include "json.h"
#include "layout.h"
#include "safeload/error.h"
#include "safeload/file.h"
#include "schema.h"

namespace safeload {

std::uint64_t Header::check_prefix(const unsigned char prefix[8], std::uint64_t file_size,
                                   std::string_view path) {
  const std::uint64_t n = load_le64(prefix);
  SAFELOAD_CHECK(n <= kMaxHeaderLength, ErrorCode::kHeaderTooLarge,
                 "the header " + where(path) + " declares " + std::to_string(n) +
                     " bytes, over the limit of " + std::to_string(kMaxHeaderLength) +
                     ". Is this a safetensors file?");
  // n <= 1e8, so 8 + n cannot overflow.
  SAFELOAD_CHECK(8 + n <= file_size, ErrorCode::kInvalidHeaderLength,
                 "the header " + where(path) + " declares " + std::to_string(n) +
                     " bytes but the file is only " + std::to_string(file_size) +
                     " bytes. Perhaps an incomplete download?");
  return n;
}

Header Header::from_bytes(std::string_view file_bytes, std::string_view path) {
  SAFELOAD_CHECK(file_bytes.size() >= 8, ErrorCode::kHeaderTooSmall,
                 in_quotes(path) + " is " + std::to_string(file_bytes.size()) +
                     " bytes, shorter than the 8-byte header length prefix");
  const auto* prefix = reinterpret_cast<const unsigned char*>(file_bytes.data());
  const std::uint64_t n = check_prefix(prefix, file_bytes.size(), path);
  return parse(file_bytes.substr(8, n), file_bytes.size(), path);
}

Header Header::read(const File& file) {
  SAFELOAD_CHECK(file.size() >= 8, ErrorCode::kHeaderTooSmall,
                 in_quotes(file.path()) + " is " + std::to_string(file.size()) +
                     " bytes, shorter than the 8-byte header length prefix");
  unsigned char prefix[8];
  file.pread_full(prefix, sizeof prefix, 0);
  const std::uint64_t n = check_prefix(prefix, file.size(), file.path());
  std::string json(n, '\0');  // bounded by kMaxHeaderLength and the file size
  file.pread_full(json.data(), n, 8);
  return parse(json, file.size(), file.path());
}

Header Header::parse(std::string_view json, std::uint64_t file_size, std::string_view path) {
  SAFELOAD_INTERNAL_ASSERT(8 + json.size() <= file_size, "check_prefix must run before parse");
  SAFELOAD_CHECK(is_valid_utf8(json), ErrorCode::kInvalidHeaderUtf8,
                 "the header " + where(path) + " is not valid UTF-8");
  // JSON text can never contain a raw NUL, so any one is a syntax error (and
  // the parser may use NUL as its end-of-input sentinel).
  const std::size_t nul = json.find('\0');
  SAFELOAD_CHECK(nul == std::string_view::npos, ErrorCode::kInvalidJson,
                 "invalid JSON in the header " + where(path) + ": NUL byte at header byte " +
                     std::to_string(nul) + " (file offset " + std::to_string(nul + 8) + ")");
  // JSON text must not start with a UTF-8 byte order mark (RFC 8259,
  // section 8.1); upstream rejects it.
  SAFELOAD_CHECK(json.substr(0, 3) != "\xEF\xBB\xBF", ErrorCode::kInvalidJson,
                 "invalid JSON in the header " + where(path) +
                     ": it starts with a UTF-8 byte order mark");

  ParsedHeader parsed = parse_header_json(json, path);
  Header header;
  header.by_name_ = std::move(parsed.by_name);
  header.tensors_ = std::move(parsed.tensors);
  header.metadata_ = std::move(parsed.metadata);
  header.has_metadata_ = parsed.has_metadata;
  header.header_length_ = json.size();
  header.data_length_ = file_size - 8 - json.size();

  // Upstream sorts by data_offsets; the name breaks ties between zero-size
  // tensors sharing an offset so the order is deterministic. Sorting moves
  // the tensors, so by_name_ is rebuilt from the new positions.
  std::vector<std::uint32_t> order(header.tensors_.size());
  for (std::uint32_t i = 0; i < order.size(); ++i) order[i] = i;
  const std::vector<TensorInfo>& ts = header.tensors_;
  std::sort(order.begin(), order.end(), [&](std::uint32_t a, std::uint32_t b) {
    return std::tie(ts[a].begin, ts[a].end, ts[a].name) < std::tie(ts[b].begin, ts[b].end, ts[b].name);
  });
  std::vector<std::uint32_t> new_position(order.size());
  for (std::uint32_t k = 0; k < order.size(); ++k) new_position[order[k]] = k;
  for (std::uint32_t& i : header.by_name_) i = new_position[i];
  permute(header.tensors_, order);

  const std::uint64_t data_end = validate_layout(header.tensors_, path);
  if (data_end != header.data_length_) {
    const bool truncated = data_end > header.data_length_;
    throw Error(ErrorCode::kMetadataIncompleteBuffer,
                "the tensors " + where(path) + " end at data byte " + std::to_string(data_end) +
                    " (file offset " + std::to_string(header.data_start() + data_end) +
                    ") but the data section is " + std::to_string(header.data_length_) +
                    " bytes: " +
                    (truncated ? "the file is truncated. Perhaps an incomplete download?"
                               : "the file has trailing bytes after the last tensor"));
  }
  return header;
}

const TensorInfo* Header::find(std::string_view name) const {
  auto it = std::lower_bound(by_name_.begin(), by_name_.end(), name,
                             [&](std::uint32_t i, std::string_view n) { return tensors_[i].name < n; });
  if (it == by_name_.end() || tensors_[*it].name != name) return nullptr;
  return &tensors_[*it];
}

}  // namespace safeload
