#include "safeload/header.h"

#include <algorithm>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "safeload/error.h"
#include "safeload/file.h"

namespace safeload {
namespace {

using Json = nlohmann::json;

std::string in_quotes(std::string_view s) { return "'" + std::string(s) + "'"; }

std::string where(std::string_view path) { return "in " + in_quotes(path); }

std::string json_kind(const Json& v) {
  if (v.is_number_integer() && !v.is_number_unsigned()) return "negative integer " + v.dump();
  if (v.is_number_float()) return "non-integer number " + v.dump();
  std::string dumped = v.dump();
  if (dumped.size() > 40) dumped = dumped.substr(0, 37) + "...";
  return std::string(v.type_name()) + " " + dumped;
}

// Checked u64 arithmetic: every size that comes from the file goes through
// these (STYLE: checked arithmetic for every product and sum from the file).
bool mul_overflows(std::uint64_t a, std::uint64_t b, std::uint64_t* out) {
  return __builtin_mul_overflow(a, b, out);
}

// First pass over the header, as a SAX handler: checks syntax, bounds nesting
// depth and rejects duplicate keys, which nlohmann::json would otherwise
// resolve silently (last one wins, as in upstream's HashMap). Depth is checked
// as the parser descends, so a hostile "[[[[..." is stopped before anything
// deep is built. It is a separate pass rather than a parse callback because
// nlohmann's callback parser rescans the enclosing object at every object end,
// which is quadratic in the number of tensors (a million-tensor header took
// hours); both passes here are linear.
class DuplicateAndDepthGuard : public nlohmann::json_sax<Json> {
 public:
  explicit DuplicateAndDepthGuard(std::string_view path) : path_(path) {}

  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }

  bool start_object(std::size_t) override {
    open_container();
    keys_.emplace_back();
    return true;
  }
  bool end_object() override {
    keys_.pop_back();
    --depth_;
    return true;
  }
  bool start_array(std::size_t) override {
    open_container();
    return true;
  }
  bool end_array() override {
    --depth_;
    return true;
  }

  bool key(string_t& key) override {
    if (depth_ == 1) top_key_ = key;
    if (!keys_.back().insert(key).second) throw duplicate(key);
    return true;
  }

  bool parse_error(std::size_t position, const std::string&,
                   const nlohmann::detail::exception& e) override {
    // Syntax errors, and numbers too large for a double (1e400), which
    // nlohmann reports as out_of_range; upstream (serde_json) rejects both.
    throw Error(ErrorCode::kInvalidJson,
                "invalid JSON in the header " + where(path_) + " at header byte " +
                    std::to_string(position) + " (file offset " + std::to_string(position + 8) +
                    "): " + e.what());
  }

 private:
  void open_container() {
    // `depth_` counts the containers already open around this one.
    SAFELOAD_CHECK(depth_ < kMaxJsonDepth, ErrorCode::kInvalidJson,
                   "JSON nesting deeper than " + std::to_string(kMaxJsonDepth) +
                       " levels in the header " + where(path_) +
                       "; a safetensors header nests 3 deep at most");
    ++depth_;
  }

  Error duplicate(const std::string& key) const {
    if (depth_ == 1) {
      return Error(ErrorCode::kDuplicateName,
                   "tensor name " + in_quotes(key) + " appears twice in the header " + where(path_) +
                       "; safeload rejects duplicate names instead of keeping the last one");
    }
    if (top_key_ == "__metadata__") {
      return Error(ErrorCode::kInvalidMetadata, "__metadata__ key " + in_quotes(key) +
                                                    " appears twice " + where(path_));
    }
    return Error(ErrorCode::kInvalidHeader, "field " + in_quotes(key) + " appears twice in tensor " +
                                                in_quotes(top_key_) + " " + where(path_));
  }

  std::string_view path_;
  int depth_ = 0;
  std::vector<std::set<std::string>> keys_;
  std::string top_key_;
};

Json parse_json(std::string_view json, std::string_view path) {
  DuplicateAndDepthGuard guard(path);
  Json::sax_parse(json.begin(), json.end(), &guard);
  // The guard accepted it: well formed, shallow, no duplicate keys.
  return Json::parse(json.begin(), json.end());
}

// A JSON number written as a non-negative integer, or nullopt. Like serde's
// usize, "-0", "1.0" and "1e2" are not: nlohmann reads them as signed or float.
std::optional<std::uint64_t> as_count(const Json& v) {
  if (v.is_number_unsigned()) return v.get<std::uint64_t>();
  return std::nullopt;
}

void parse_metadata(const Json& value, std::string_view path,
                    std::vector<std::pair<std::string, std::string>>* out) {
  if (value.is_null()) return;  // upstream's Option<HashMap>: null means absent
  SAFELOAD_CHECK(value.is_object(), ErrorCode::kInvalidMetadata,
                 "__metadata__ " + where(path) + " must be an object of strings, found " +
                     json_kind(value));
  if (value.contains("dtype") && value.contains("shape") && value.contains("data_offsets")) {
    throw Error(ErrorCode::kReservedName,
                "a tensor is named '__metadata__' " + std::string(where(path)) +
                    "; that key is reserved for the string->string metadata map");
  }
  for (const auto& [key, v] : value.items()) {
    SAFELOAD_CHECK(v.is_string(), ErrorCode::kInvalidMetadata,
                   "__metadata__ value for key " + in_quotes(key) + " " + where(path) +
                       " must be a string, found " + json_kind(v));
    out->emplace_back(key, v.get<std::string>());
  }
}

TensorInfo parse_tensor(const std::string& name, const Json& entry, std::string_view path) {
  const std::string ctx = "tensor " + in_quotes(name) + " " + where(path);
  SAFELOAD_CHECK(entry.is_object(), ErrorCode::kInvalidHeader,
                 ctx + ": expected an object with dtype, shape and data_offsets, found " +
                     json_kind(entry));
  for (const auto& [key, unused] : entry.items()) {
    SAFELOAD_CHECK(key == "dtype" || key == "shape" || key == "data_offsets",
                   ErrorCode::kUnknownField,
                   ctx + ": unknown field " + in_quotes(key) +
                       " (expected only dtype, shape, data_offsets); safeload is stricter "
                       "than upstream here");
  }
  for (const char* field : {"dtype", "shape", "data_offsets"}) {
    SAFELOAD_CHECK(entry.contains(field), ErrorCode::kInvalidHeader,
                   ctx + ": missing field '" + field + "'");
  }

  TensorInfo info;
  info.name = name;

  const Json& dtype = entry["dtype"];
  SAFELOAD_CHECK(dtype.is_string(), ErrorCode::kInvalidHeader,
                 ctx + ": dtype must be a string, found " + json_kind(dtype));
  const std::string& dtype_name = dtype.get_ref<const std::string&>();
  const std::optional<DType> parsed_dtype = dtype_from_name(dtype_name);
  SAFELOAD_CHECK(parsed_dtype.has_value(), ErrorCode::kUnknownDtype,
                 ctx + ": unknown dtype " + in_quotes(dtype_name) +
                     " (dtype names are upper case, e.g. 'F32', 'BF16', 'F8_E4M3')");
  info.dtype = *parsed_dtype;

  const Json& shape = entry["shape"];
  SAFELOAD_CHECK(shape.is_array(), ErrorCode::kInvalidHeader,
                 ctx + ": shape must be an array of non-negative integers, found " +
                     json_kind(shape));
  info.shape.reserve(shape.size());
  for (std::size_t i = 0; i < shape.size(); ++i) {
    const std::optional<std::uint64_t> dim = as_count(shape[i]);
    SAFELOAD_CHECK(dim.has_value(), ErrorCode::kInvalidHeader,
                   ctx + ": shape[" + std::to_string(i) +
                       "] must be a non-negative integer, found " + json_kind(shape[i]));
    SAFELOAD_CHECK(*dim <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()),
                   ErrorCode::kValidationOverflow,
                   ctx + ": shape[" + std::to_string(i) + "] = " + std::to_string(*dim) +
                       " does not fit a signed 64-bit size");
    info.shape.push_back(static_cast<std::int64_t>(*dim));
  }

  const Json& offsets = entry["data_offsets"];
  SAFELOAD_CHECK(offsets.is_array() && offsets.size() == 2, ErrorCode::kInvalidHeader,
                 ctx + ": data_offsets must be [begin, end], found " + json_kind(offsets));
  const std::optional<std::uint64_t> begin = as_count(offsets[0]);
  const std::optional<std::uint64_t> end = as_count(offsets[1]);
  SAFELOAD_CHECK(begin.has_value() && end.has_value(), ErrorCode::kInvalidHeader,
                 ctx + ": data_offsets must be two non-negative integers, found " +
                     offsets.dump());
  info.begin = *begin;
  info.end = *end;
  return info;
}

// Upstream's Metadata::validate, in its order: contiguous offsets from 0, then
// checked element count and bit size, whole bytes, size matching the range.
std::uint64_t validate_layout(std::vector<TensorInfo>& tensors, std::string_view path) {
  std::uint64_t expected_begin = 0;
  for (TensorInfo& t : tensors) {
    const std::string ctx = "tensor " + in_quotes(t.name) + " " + where(path);
    if (t.end < t.begin) {
      throw Error(ErrorCode::kInvalidOffset, ctx + ": data_offsets [" + std::to_string(t.begin) +
                                                 ", " + std::to_string(t.end) +
                                                 "] end before they begin");
    }
    if (t.begin != expected_begin) {
      const char* what = t.begin > expected_begin ? "leaves a hole before it" : "overlaps";
      throw Error(ErrorCode::kInvalidOffset,
                  ctx + ": data_offsets begin at " + std::to_string(t.begin) +
                      " but the previous tensor ends at " + std::to_string(expected_begin) +
                      " (the layout " + what + "; tensors must tile the data section)");
    }
    expected_begin = t.end;

    std::uint64_t numel = 1;
    for (std::int64_t dim : t.shape) {
      SAFELOAD_CHECK(!mul_overflows(numel, static_cast<std::uint64_t>(dim), &numel),
                     ErrorCode::kValidationOverflow,
                     ctx + ": the element count of shape overflows 64 bits");
    }
    std::uint64_t bits = 0;
    SAFELOAD_CHECK(!mul_overflows(numel, dtype_info(t.dtype).bits, &bits),
                   ErrorCode::kValidationOverflow,
                   ctx + ": the size in bits of " + std::to_string(numel) + " elements of " +
                       std::string(dtype_info(t.dtype).name) + " overflows 64 bits");
    SAFELOAD_CHECK(bits % 8 == 0, ErrorCode::kMisalignedSlice,
                   ctx + ": " + std::to_string(numel) + " elements of " +
                       std::string(dtype_info(t.dtype).name) + " take " + std::to_string(bits) +
                       " bits, not a whole number of bytes");
    SAFELOAD_CHECK(bits / 8 == t.nbytes(), ErrorCode::kTensorInvalidInfo,
                   ctx + ": shape and dtype give " + std::to_string(bits / 8) +
                       " bytes but data_offsets span " + std::to_string(t.nbytes()));
    t.numel = numel;
  }
  return expected_begin;
}

}  // namespace

bool is_valid_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const auto* const end = p + s.size();
  while (p < end) {
    const unsigned char c = *p;
    std::size_t len;
    std::uint32_t cp;
    if (c < 0x80) {
      ++p;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      len = 2, cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4, cp = c & 0x07;
    } else {
      return false;
    }
    if (static_cast<std::size_t>(end - p) < len) return false;
    for (std::size_t i = 1; i < len; ++i) {
      if ((p[i] & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (p[i] & 0x3F);
    }
    static constexpr std::uint32_t kMinForLength[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMinForLength[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    p += len;
  }
  return true;
}

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
  // nlohmann::json stops at a NUL byte as if the input ended there; JSON text
  // can never contain a raw NUL, so any one is a syntax error.
  const std::size_t nul = json.find('\0');
  SAFELOAD_CHECK(nul == std::string_view::npos, ErrorCode::kInvalidJson,
                 "invalid JSON in the header " + where(path) + ": NUL byte at header byte " +
                     std::to_string(nul) + " (file offset " + std::to_string(nul + 8) + ")");
  // nlohmann::json skips a UTF-8 byte order mark; JSON text must not start
  // with one (RFC 8259, section 8.1) and upstream rejects it.
  SAFELOAD_CHECK(json.substr(0, 3) != "\xEF\xBB\xBF", ErrorCode::kInvalidJson,
                 "invalid JSON in the header " + where(path) +
                     ": it starts with a UTF-8 byte order mark");
  const Json root = parse_json(json, path);
  SAFELOAD_CHECK(root.is_object(), ErrorCode::kInvalidHeader,
                 "the header " + where(path) + " must be a JSON object, found " +
                     json_kind(root));

  Header header;
  header.header_length_ = json.size();
  header.data_length_ = file_size - 8 - json.size();
  header.tensors_.reserve(root.size());
  for (const auto& [key, value] : root.items()) {
    if (key == "__metadata__") {
      header.has_metadata_ = !value.is_null();
      parse_metadata(value, path, &header.metadata_);
    } else {
      header.tensors_.push_back(parse_tensor(key, value, path));
    }
  }
  std::sort(header.metadata_.begin(), header.metadata_.end());

  // Upstream sorts by data_offsets; the name breaks ties between zero-size
  // tensors sharing an offset so the order is deterministic.
  std::sort(header.tensors_.begin(), header.tensors_.end(),
            [](const TensorInfo& a, const TensorInfo& b) {
              return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
            });
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

  header.by_name_.resize(header.tensors_.size());
  for (std::size_t i = 0; i < header.by_name_.size(); ++i) header.by_name_[i] = i;
  std::sort(header.by_name_.begin(), header.by_name_.end(), [&](std::size_t a, std::size_t b) {
    return header.tensors_[a].name < header.tensors_[b].name;
  });
  return header;
}

const TensorInfo* Header::find(std::string_view name) const {
  auto it = std::lower_bound(by_name_.begin(), by_name_.end(), name,
                             [&](std::size_t i, std::string_view n) { return tensors_[i].name < n; });
  if (it == by_name_.end() || tensors_[*it].name != name) return nullptr;
  return &tensors_[*it];
}

}  // namespace safeload
