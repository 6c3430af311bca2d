#include "safeload/header.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <optional>
#include <set>
#include <string>
#include <tuple>

#include "encoding.h"
#include "safeload/error.h"
#include "safeload/file.h"

namespace safeload {
namespace {

std::string in_quotes(std::string_view s) { return "'" + std::string(s) + "'"; }

std::string where(std::string_view path) { return "in " + in_quotes(path); }

std::string tensor_ctx(std::string_view name, std::string_view path) {
  return "tensor " + in_quotes(name) + " " + where(path);
}

// Checked u64 arithmetic: every size that comes from the file goes through
// this, so a hostile shape or offset cannot wrap around into a small size.
bool mul_overflows(std::uint64_t a, std::uint64_t b, std::uint64_t* out) {
  return __builtin_mul_overflow(a, b, out);
}

// What a JSON value turned out to be, for the checks and their messages.
enum class Kind : std::uint8_t { kNull, kBool, kUnsigned, kSigned, kFloat, kString, kArray, kObject };

// A JSON number. Like serde's usize, a count is written as a non-negative
// integer: "-0", "1.0" and "1e2" are not counts.
struct Number {
  Kind kind;                // kUnsigned, kSigned or kFloat
  std::uint64_t value = 0;  // for kUnsigned
};

// True if the decimal value of a JSON number (its grammar already checked) is
// too large for a double. Used only when from_chars reports it out of range,
// which it also does for values too small, which round to zero and are fine.
bool beyond_double(std::string_view text) {
  std::int64_t digits_before_point = 0;  // significant digits before the point
  std::int64_t leading_fraction_zeros = 0;
  bool seen_nonzero = false, after_point = false;
  std::size_t i = text[0] == '-' ? 1 : 0;
  for (; i < text.size() && text[i] != 'e' && text[i] != 'E'; ++i) {
    const char c = text[i];
    if (c == '.') {
      after_point = true;
    } else if (c != '0' || seen_nonzero) {
      seen_nonzero = true;
      if (!after_point) ++digits_before_point;
    } else if (after_point) {
      ++leading_fraction_zeros;
    }
  }
  if (!seen_nonzero) return false;  // zero
  std::int64_t exponent = 0;
  if (i < text.size()) {
    ++i;
    const bool negative = text[i] == '-';
    if (text[i] == '-' || text[i] == '+') ++i;
    for (; i < text.size(); ++i) exponent = std::min<std::int64_t>(exponent * 10 + (text[i] - '0'), 1'000'000'000);
    if (negative) exponent = -exponent;
  }
  // The value is about 10^(magnitude - 1); a double ends near 1.8e308 and
  // starts near 4.9e-324, so the sign of the magnitude tells the two apart.
  const std::int64_t magnitude =
      (digits_before_point > 0 ? digits_before_point : -leading_fraction_zeros) + exponent;
  return magnitude > 0;
}

// A single-pass parser from header JSON straight into TensorInfo records: no
// document tree, no per-tensor scratch allocations, strings without escapes
// copied once from the input. It accepts exactly RFC 8259 JSON and applies
// every header rule, with these precedences (a file with several faults gets
// the same code whichever way it was parsed before):
//
//   1. in document order, and stopping there: JSON syntax errors (numbers
//      beyond a double included), nesting deeper than kMaxJsonDepth, and a key
//      given twice in one object, except directly inside __metadata__, where
//      the last value wins as in upstream's HashMap;
//   2. then a header that is not an object;
//   3. then a tensor name given twice;
//   4. then the first faulty top-level entry in byte order of its key, each
//      entry checked in a fixed order (see tensor_entry and metadata_value);
//   5. then the layout (Header::parse).
class Parser {
 public:
  Parser(std::string_view json, std::string_view path) : in_(json), path_(path) {}

  // Parses the whole document; throws on faults of classes 1 and 2. Those of
  // classes 3 and 4 are left for finish() so that class 1 wins over them.
  void run() {
    try {
      skip_ws();
      if (peek() == '{') {
        root_object();
      } else {
        const std::size_t start = pos_;
        const Kind kind = value(Scope{false, ""});
        skip_ws();
        if (pos_ != in_.size()) syntax_error(pos_, "expected the end of the header, found " + found());
        throw Error(ErrorCode::kInvalidHeader, "the header " + where(path_) +
                                                   " must be a JSON object, found " + describe(kind, start));
      }
    } catch (const Error& e) {
      if (e.code() == ErrorCode::kInvalidHeader || e.code() == ErrorCode::kInvalidJson ||
          e.code() == ErrorCode::kInvalidMetadata) {
        // A tensor name given twice before the fault was found first.
        check_unique_names();
      }
      throw;
    }
  }

  // Tensors sorted by name as `by_name` (indices into `tensors`); throws a
  // deferred fault if there is one.
  void finish(std::vector<std::uint32_t>* by_name) {
    *by_name = sorted_by_name();
    check_unique_names(*by_name);
    if (deferred_) throw std::move(deferred_->second);
  }

  std::vector<TensorInfo> tensors;
  std::vector<std::pair<std::string, std::string>> metadata;
  bool has_metadata = false;

 private:
  // Where a duplicate key inside a value is reported: under __metadata__, or
  // in the tensor entry named `tensor`.
  struct Scope {
    bool metadata;
    std::string_view tensor;
  };

  // --- lexing ---------------------------------------------------------------

  // The byte at the cursor, or NUL at the end (the header has no NUL bytes:
  // Header::parse rejects them first).
  char peek() const { return pos_ < in_.size() ? in_[pos_] : '\0'; }

  void skip_ws() {
    while (pos_ < in_.size()) {
      const char c = in_[pos_];
      if (c != ' ' && c != '\t' && c != '\n' && c != '\r') return;
      ++pos_;
    }
  }

  std::string found() const {
    if (pos_ >= in_.size()) return "the end of the header";
    const auto c = static_cast<unsigned char>(in_[pos_]);
    if (c >= 0x20 && c < 0x7f) return "'" + std::string(1, static_cast<char>(c)) + "'";
    static constexpr char kHex[] = "0123456789abcdef";
    return std::string("byte 0x") + kHex[c >> 4] + kHex[c & 15];
  }

  [[noreturn]] void syntax_error(std::size_t at, const std::string& what) const {
    throw Error(ErrorCode::kInvalidJson, "invalid JSON in the header " + where(path_) + " at header byte " +
                                             std::to_string(at) + " (file offset " + std::to_string(at + 8) +
                                             "): " + what);
  }

  void expect(char c) {
    skip_ws();
    if (peek() != c) syntax_error(pos_, std::string("expected '") + c + "', found " + found());
    ++pos_;
    skip_ws();
  }

  // After a member of an object or array: true if another one follows.
  bool next_member(char close) {
    skip_ws();
    if (peek() == ',') {
      ++pos_;
      skip_ws();
      return true;
    }
    if (peek() == close) {
      ++pos_;
      return false;
    }
    syntax_error(pos_, std::string("expected ',' or '") + close + "', found " + found());
  }

  // At an opening bracket: bounds the depth as the parser descends, so a
  // hostile "[[[[..." is stopped after kMaxJsonDepth bytes, and steps in.
  // Returns false (and steps past the close) if the container is empty.
  bool open(char close) {
    // `depth_` counts the containers already open around this one.
    SAFELOAD_CHECK(depth_ < kMaxJsonDepth, ErrorCode::kInvalidJson,
                   "JSON nesting deeper than " + std::to_string(kMaxJsonDepth) + " levels in the header " +
                       where(path_) + "; a safetensors header nests 3 deep at most");
    ++depth_;
    ++pos_;
    skip_ws();
    if (peek() != close) return true;
    ++pos_;
    --depth_;
    return false;
  }

  // At '"': the string's text, unescaped. A view of the input when it has no
  // escapes (the common case: no copy at all), else of scratch_.
  std::string_view string() {
    const std::size_t start = ++pos_;
    for (std::size_t i = start; i < in_.size(); ++i) {
      const auto c = static_cast<unsigned char>(in_[i]);
      if (c == '"') {
        pos_ = i + 1;
        return in_.substr(start, i - start);
      }
      if (c == '\\') return unescape(start, i);
      if (c < 0x20) control_char(i);
    }
    syntax_error(in_.size(), "a string is not closed");
  }

  // An owned copy of the string at '"', allocated once at its final size
  // (or taken over from scratch_ when it has escapes).
  std::string owned_string() {
    const std::string_view s = string();
    if (s.data() == scratch_.data()) return std::move(scratch_);
    return std::string(s);
  }

  [[noreturn]] void control_char(std::size_t at) const {
    syntax_error(at, "control character " + std::to_string(static_cast<unsigned char>(in_[at])) +
                         " inside a string (it must be escaped)");
  }

  std::string_view unescape(std::size_t start, std::size_t first_escape) {
    // Sized once: the unescaped text is never longer than the escaped one.
    std::size_t close = first_escape;
    while (close < in_.size() && in_[close] != '"') close += in_[close] == '\\' ? 2 : 1;
    scratch_.clear();
    scratch_.reserve(std::min(close, in_.size()) - start);
    scratch_.append(in_.substr(start, first_escape - start));
    std::size_t i = first_escape;
    while (true) {
      if (i >= in_.size()) syntax_error(in_.size(), "a string is not closed");
      const auto c = static_cast<unsigned char>(in_[i]);
      if (c == '"') {
        pos_ = i + 1;
        return scratch_;
      }
      if (c < 0x20) control_char(i);
      if (c != '\\') {
        scratch_.push_back(static_cast<char>(c));
        ++i;
        continue;
      }
      const char e = i + 1 < in_.size() ? in_[i + 1] : '\0';
      i += 2;
      switch (e) {
        case '"': scratch_.push_back('"'); break;
        case '\\': scratch_.push_back('\\'); break;
        case '/': scratch_.push_back('/'); break;
        case 'b': scratch_.push_back('\b'); break;
        case 'f': scratch_.push_back('\f'); break;
        case 'n': scratch_.push_back('\n'); break;
        case 'r': scratch_.push_back('\r'); break;
        case 't': scratch_.push_back('\t'); break;
        case 'u': {
          std::uint32_t cp = hex4(i);
          i += 4;
          if (cp >= 0xDC00 && cp <= 0xDFFF) syntax_error(i - 6, "a low surrogate escape without a high one");
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            // UTF-16 surrogate pair: \uD83D\uDE42 is one code point.
            if (i + 1 >= in_.size() || in_[i] != '\\' || in_[i + 1] != 'u') {
              syntax_error(i, "a high surrogate escape must be followed by a low one");
            }
            const std::uint32_t low = hex4(i + 2);
            if (low < 0xDC00 || low > 0xDFFF) {
              syntax_error(i, "a high surrogate escape must be followed by a low one");
            }
            i += 6;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
          }
          append_utf8(cp);
          break;
        }
        default:
          syntax_error(i - 2, "invalid escape sequence in a string");
      }
    }
  }

  std::uint32_t hex4(std::size_t at) const {
    std::uint32_t v = 0;
    for (std::size_t k = 0; k < 4; ++k) {
      const char c = at + k < in_.size() ? in_[at + k] : '\0';
      int d;
      if (c >= '0' && c <= '9') d = c - '0';
      else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
      else syntax_error(at + k, "\\u must be followed by 4 hex digits");
      v = (v << 4) | static_cast<std::uint32_t>(d);
    }
    return v;
  }

  void append_utf8(std::uint32_t cp) {
    if (cp < 0x80) {
      scratch_.push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      scratch_.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      scratch_.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      scratch_.push_back(static_cast<char>(0xE0 | (cp >> 12)));
      scratch_.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      scratch_.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
      scratch_.push_back(static_cast<char>(0xF0 | (cp >> 18)));
      scratch_.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
      scratch_.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      scratch_.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }

  static bool is_digit(char c) { return c >= '0' && c <= '9'; }

  // At '-' or a digit. A non-negative integer that fits 64 bits is kUnsigned,
  // a negative one that fits is kSigned, anything else (fraction, exponent,
  // or too many digits) kFloat, which must fit a double (upstream rejects
  // 1e400 too).
  Number number() {
    const std::size_t start = pos_;
    const bool negative = peek() == '-';
    if (negative) ++pos_;
    if (peek() == '0') {
      ++pos_;
    } else if (is_digit(peek())) {
      while (is_digit(peek())) ++pos_;
    } else {
      syntax_error(pos_, "expected a digit, found " + found());
    }
    bool integer = true;
    if (peek() == '.') {
      integer = false;
      ++pos_;
      if (!is_digit(peek())) syntax_error(pos_, "expected a digit after '.', found " + found());
      while (is_digit(peek())) ++pos_;
    }
    if (peek() == 'e' || peek() == 'E') {
      integer = false;
      ++pos_;
      if (peek() == '+' || peek() == '-') ++pos_;
      if (!is_digit(peek())) syntax_error(pos_, "expected a digit in the exponent, found " + found());
      while (is_digit(peek())) ++pos_;
    }
    const char* first = in_.data() + start;
    const char* last = in_.data() + pos_;
    if (integer && !negative) {
      std::uint64_t v = 0;
      if (std::from_chars(first, last, v).ec == std::errc()) return {Kind::kUnsigned, v};
    } else if (integer) {
      std::int64_t v = 0;
      if (std::from_chars(first, last, v).ec == std::errc()) return {Kind::kSigned, 0};
    }
    double d = 0;
    const auto result = std::from_chars(first, last, d);
    if ((result.ec == std::errc() && !std::isfinite(d)) ||
        (result.ec == std::errc::result_out_of_range && beyond_double(in_.substr(start, pos_ - start)))) {
      syntax_error(start, "number " + std::string(in_.substr(start, std::min<std::size_t>(pos_ - start, 40))) +
                              " is too large for a double");
    }
    return {Kind::kFloat, 0};
  }

  void literal(std::string_view word) {
    if (in_.substr(pos_, word.size()) != word) syntax_error(pos_, "expected a JSON value, found " + found());
    pos_ += word.size();
  }

  // --- values -------------------------------------------------------------

  // Any JSON value at the cursor: checked (syntax, depth, duplicate keys),
  // and its kind returned.
  Kind value(const Scope& scope) {
    switch (peek()) {
      case '{': {
        if (open('}')) {
          std::set<std::string> keys;  // only for values where no header field may be
          do {
            if (peek() != '"') syntax_error(pos_, "expected a string key, found " + found());
            const std::string_view key = string();
            if (!keys.emplace(key).second) throw duplicate(scope, key);
            expect(':');
            value(scope);
          } while (next_member('}'));
          --depth_;
        }
        return Kind::kObject;
      }
      case '[': {
        if (open(']')) {
          do value(scope);
          while (next_member(']'));
          --depth_;
        }
        return Kind::kArray;
      }
      case '"':
        string();
        return Kind::kString;
      case 't':
        literal("true");
        return Kind::kBool;
      case 'f':
        literal("false");
        return Kind::kBool;
      case 'n':
        literal("null");
        return Kind::kNull;
      default:
        if (peek() == '-' || is_digit(peek())) return number().kind;
        syntax_error(pos_, "expected a JSON value, found " + found());
    }
  }

  // The value that began at `start` and ends at the cursor, for a message.
  std::string describe(Kind kind, std::size_t start) const {
    std::string text(in_.substr(start, pos_ - start));
    if (text.size() > 40) text = text.substr(0, 37) + "...";
    switch (kind) {
      case Kind::kNull: return "null";
      case Kind::kBool: return "boolean " + text;
      case Kind::kUnsigned: return "number " + text;
      case Kind::kSigned: return "negative integer " + text;
      case Kind::kFloat: return "non-integer number " + text;
      case Kind::kString: return "string " + text;
      case Kind::kArray: return "array " + text;
      case Kind::kObject: return "object " + text;
    }
    return text;
  }

  Error duplicate(const Scope& scope, std::string_view key) const {
    if (scope.metadata) {
      return Error(ErrorCode::kInvalidMetadata,
                   "__metadata__ key " + in_quotes(key) + " appears twice " + where(path_));
    }
    return Error(ErrorCode::kInvalidHeader, "field " + in_quotes(key) + " appears twice in tensor " +
                                                in_quotes(scope.tensor) + " " + where(path_));
  }

  // Keeps the fault of the top-level entry whose key sorts first.
  void defer(std::string_view key, Error error) {
    if (!deferred_ || key < deferred_->first) deferred_.emplace(std::string(key), std::move(error));
  }

  // --- the header's structure ----------------------------------------------

  void root_object() {
    if (!open('}')) return finish_root();
    do {
      if (peek() != '"') syntax_error(pos_, "expected a string key, found " + found());
      const std::string_view key = string();
      if (key == "__metadata__") {
        if (seen_metadata_) throw duplicate_name(key);
        seen_metadata_ = true;
        expect(':');
        metadata_value();
      } else {
        SAFELOAD_CHECK(tensors.size() < std::numeric_limits<std::uint32_t>::max(), ErrorCode::kInvalidHeader,
                       "too many tensors in the header " + where(path_));
        tensors.emplace_back();
        tensors.back().name.assign(key);
        expect(':');
        tensor_entry(tensors.back());
      }
    } while (next_member('}'));
    --depth_;
    finish_root();
  }

  void finish_root() {
    skip_ws();
    if (pos_ != in_.size()) syntax_error(pos_, "expected the end of the header, found " + found());
  }

  Error duplicate_name(std::string_view name) const {
    return Error(ErrorCode::kDuplicateName,
                 "tensor name " + in_quotes(name) + " appears twice in the header " + where(path_) +
                     "; safeload rejects duplicate names instead of keeping the last one");
  }

  std::vector<std::uint32_t> sorted_by_name() const {
    std::vector<std::uint32_t> order(tensors.size());
    for (std::uint32_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](std::uint32_t a, std::uint32_t b) {
      return std::tie(tensors[a].name, a) < std::tie(tensors[b].name, b);
    });
    return order;
  }

  // Throws DUPLICATE_NAME, naming the repeat that comes first in the file.
  void check_unique_names(const std::vector<std::uint32_t>& by_name) const {
    std::optional<std::uint32_t> first_repeat;
    for (std::size_t i = 1; i < by_name.size(); ++i) {
      if (tensors[by_name[i]].name == tensors[by_name[i - 1]].name &&
          (!first_repeat || by_name[i] < *first_repeat)) {
        first_repeat = by_name[i];
      }
    }
    if (first_repeat) throw duplicate_name(tensors[*first_repeat].name);
  }
  void check_unique_names() const { check_unique_names(sorted_by_name()); }

  // A tensor entry: {"dtype": string, "shape": [counts], "data_offsets":
  // [begin, end]} and nothing else. Its fault, if any, is the first of: an
  // unknown field, a missing field, then dtype, shape and data_offsets in
  // that order, whatever order the fields are written in.
  void tensor_entry(TensorInfo& t) {
    const Scope scope{false, t.name};
    const std::size_t start = pos_;
    if (peek() != '{') {
      const Kind kind = value(scope);
      defer(t.name, Error(ErrorCode::kInvalidHeader,
                          tensor_ctx(t.name, path_) + ": expected an object with dtype, shape and " +
                              "data_offsets, found " + describe(kind, start)));
      return;
    }
    constexpr unsigned kDtype = 1, kShape = 2, kOffsets = 4;
    unsigned seen = 0;
    std::vector<std::string> unknown;  // allocates only for a faulty entry
    std::optional<Error> dtype_fault, shape_fault, offsets_fault;
    if (open('}')) {
      do {
        if (peek() != '"') syntax_error(pos_, "expected a string key, found " + found());
        const std::string_view key = string();
        const unsigned field = key == "dtype" ? kDtype : key == "shape" ? kShape : key == "data_offsets" ? kOffsets : 0;
        if (field == 0) {
          if (std::find(unknown.begin(), unknown.end(), key) != unknown.end()) throw duplicate(scope, key);
          unknown.emplace_back(key);
        } else {
          if (seen & field) throw duplicate(scope, key);
          seen |= field;
        }
        expect(':');
        switch (field) {
          case kDtype: dtype(t, scope, &dtype_fault); break;
          case kShape: shape(t, scope, &shape_fault); break;
          case kOffsets: offsets(t, scope, &offsets_fault); break;
          default: value(scope);
        }
      } while (next_member('}'));
      --depth_;
    }
    if (!unknown.empty()) {
      defer(t.name, Error(ErrorCode::kUnknownField,
                          tensor_ctx(t.name, path_) + ": unknown field " +
                              in_quotes(*std::min_element(unknown.begin(), unknown.end())) +
                              " (expected only dtype, shape, data_offsets); safeload is stricter than "
                              "upstream here"));
      return;
    }
    for (const auto& [bit, name] : {std::pair{kDtype, "dtype"}, {kShape, "shape"}, {kOffsets, "data_offsets"}}) {
      if (!(seen & bit)) {
        defer(t.name, Error(ErrorCode::kInvalidHeader,
                            tensor_ctx(t.name, path_) + ": missing field '" + name + "'"));
        return;
      }
    }
    for (std::optional<Error>* fault : {&dtype_fault, &shape_fault, &offsets_fault}) {
      if (*fault) {
        defer(t.name, std::move(**fault));
        return;
      }
    }
  }

  void dtype(TensorInfo& t, const Scope& scope, std::optional<Error>* fault) {
    const std::size_t start = pos_;
    if (peek() != '"') {
      const Kind kind = value(scope);
      fault->emplace(ErrorCode::kInvalidHeader,
                     tensor_ctx(t.name, path_) + ": dtype must be a string, found " + describe(kind, start));
      return;
    }
    const std::string_view name = string();
    const std::optional<DType> parsed = dtype_from_name(name);
    if (!parsed) {
      fault->emplace(ErrorCode::kUnknownDtype, tensor_ctx(t.name, path_) + ": unknown dtype " + in_quotes(name) +
                                                   " (dtype names are upper case, e.g. 'F32', 'BF16', 'F8_E4M3')");
      return;
    }
    t.dtype = *parsed;
  }

  // The first faulty dimension decides: not a count, then over INT64_MAX.
  void shape(TensorInfo& t, const Scope& scope, std::optional<Error>* fault) {
    const std::size_t start = pos_;
    if (peek() != '[') {
      const Kind kind = value(scope);
      fault->emplace(ErrorCode::kInvalidHeader, tensor_ctx(t.name, path_) +
                                                    ": shape must be an array of non-negative integers, found " +
                                                    describe(kind, start));
      return;
    }
    dims_.clear();  // reused across tensors: one exact-size allocation per shape below
    if (open(']')) {
      std::size_t i = 0;
      do {
        const std::size_t item = pos_;
        Number n{Kind::kNull};
        if (peek() == '-' || is_digit(peek())) {
          n = number();
        } else {
          n.kind = value(scope);
        }
        if (!*fault) {
          if (n.kind != Kind::kUnsigned) {
            fault->emplace(ErrorCode::kInvalidHeader, tensor_ctx(t.name, path_) + ": shape[" + std::to_string(i) +
                                                          "] must be a non-negative integer, found " +
                                                          describe(n.kind, item));
          } else if (n.value > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
            fault->emplace(ErrorCode::kValidationOverflow, tensor_ctx(t.name, path_) + ": shape[" +
                                                               std::to_string(i) + "] = " + std::to_string(n.value) +
                                                               " does not fit a signed 64-bit size");
          } else {
            dims_.push_back(static_cast<std::int64_t>(n.value));
          }
        }
        ++i;
      } while (next_member(']'));
      --depth_;
    }
    if (!*fault) t.shape.assign(dims_.begin(), dims_.end());
  }

  void offsets(TensorInfo& t, const Scope& scope, std::optional<Error>* fault) {
    const std::size_t start = pos_;
    if (peek() != '[') {
      const Kind kind = value(scope);
      fault->emplace(ErrorCode::kInvalidHeader, tensor_ctx(t.name, path_) +
                                                    ": data_offsets must be [begin, end], found " +
                                                    describe(kind, start));
      return;
    }
    std::size_t count = 0;
    bool counts = true;
    std::uint64_t bounds[2] = {0, 0};
    if (open(']')) {
      do {
        Number n{Kind::kNull};
        if (peek() == '-' || is_digit(peek())) {
          n = number();
        } else {
          n.kind = value(scope);
        }
        if (n.kind != Kind::kUnsigned) counts = false;
        if (count < 2) bounds[count] = n.value;
        ++count;
      } while (next_member(']'));
      --depth_;
    }
    if (count != 2) {
      fault->emplace(ErrorCode::kInvalidHeader, tensor_ctx(t.name, path_) +
                                                    ": data_offsets must be [begin, end], found " +
                                                    describe(Kind::kArray, start));
    } else if (!counts) {
      fault->emplace(ErrorCode::kInvalidHeader, tensor_ctx(t.name, path_) +
                                                    ": data_offsets must be two non-negative integers, found " +
                                                    std::string(in_.substr(start, std::min<std::size_t>(pos_ - start, 80))));
    } else {
      t.begin = bounds[0];
      t.end = bounds[1];
    }
  }

  // __metadata__: null (absent, as upstream's Option reads it) or an object of
  // strings. A key may repeat; the last value wins, as in upstream's HashMap,
  // but every value must be a string, as upstream checks each one as it
  // reads it. Its fault, if any, is the first of: not an object, tensor-entry
  // keys (a tensor named __metadata__), then a value that is not a string.
  void metadata_value() {
    const Scope scope{true, ""};
    const std::size_t start = pos_;
    if (peek() == 'n') {
      literal("null");
      return;
    }
    if (peek() != '{') {
      const Kind kind = value(scope);
      defer("__metadata__", Error(ErrorCode::kInvalidMetadata, "__metadata__ " + where(path_) +
                                                                   " must be an object of strings, found " +
                                                                   describe(kind, start)));
      return;
    }
    unsigned tensor_keys = 0;
    std::optional<std::pair<std::string, std::string>> not_string;  // first key in byte order, what it holds
    const std::size_t first = metadata.size();
    if (open('}')) {
      do {
        if (peek() != '"') syntax_error(pos_, "expected a string key, found " + found());
        std::string key = owned_string();
        tensor_keys |= key == "dtype" ? 1 : key == "shape" ? 2 : key == "data_offsets" ? 4 : 0;
        expect(':');
        const std::size_t item = pos_;
        if (peek() == '"') {
          metadata.emplace_back(std::move(key), owned_string());
        } else {
          const Kind kind = value(scope);
          if (!not_string || key < not_string->first) not_string.emplace(std::move(key), describe(kind, item));
        }
      } while (next_member('}'));
      --depth_;
    }
    if (tensor_keys == 7) {
      defer("__metadata__", Error(ErrorCode::kReservedName,
                                  "a tensor is named '__metadata__' " + where(path_) +
                                      "; that key is reserved for the string->string metadata map"));
    } else if (not_string) {
      defer("__metadata__", Error(ErrorCode::kInvalidMetadata, "__metadata__ value for key " +
                                                                   in_quotes(not_string->first) + " " + where(path_) +
                                                                   " must be a string, found " + not_string->second));
    } else {
      has_metadata = true;
      // Sorted by key; of a repeated key, the value written last stays.
      std::stable_sort(metadata.begin() + static_cast<std::ptrdiff_t>(first), metadata.end(),
                       [](const auto& a, const auto& b) { return a.first < b.first; });
      auto out = metadata.begin() + static_cast<std::ptrdiff_t>(first);
      for (auto it = out; it != metadata.end(); ++it) {
        if (std::next(it) != metadata.end() && std::next(it)->first == it->first) continue;
        if (out != it) *out = std::move(*it);
        ++out;
      }
      metadata.erase(out, metadata.end());
    }
  }

  std::string_view in_;
  std::string_view path_;
  std::size_t pos_ = 0;
  int depth_ = 0;
  bool seen_metadata_ = false;
  std::string scratch_;             // unescaped text of the last string with escapes
  std::vector<std::int64_t> dims_;  // the shape being read
  std::optional<std::pair<std::string, Error>> deferred_;
};

// Upstream's Metadata::validate, in its order: contiguous offsets from 0, then
// checked element count and bit size, whole bytes, size matching the range.
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

// Moves the element at order[k] to position k for every k, in place (one
// cycle at a time), so sorting a million tensors needs no second vector.
// Leaves `order` as the identity.
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

  Parser parser(json, path);
  parser.run();
  Header header;
  parser.finish(&header.by_name_);
  header.tensors_ = std::move(parser.tensors);
  header.metadata_ = std::move(parser.metadata);
  header.has_metadata_ = parser.has_metadata;
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
