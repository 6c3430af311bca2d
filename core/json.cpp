// The JSON reader (json.h): lexing, syntax, nesting, and the walk of values
// no schema looks into.
#include "json.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <set>
#include <string>

#include "safeload/header.h"

namespace safeload {
namespace {

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

}  // namespace

std::string in_quotes(std::string_view s) { return "'" + std::string(s) + "'"; }

std::string where(std::string_view path) { return "in " + in_quotes(path); }

void JsonReader::skip_ws() {
  while (pos_ < in_.size()) {
    const char c = in_[pos_];
    if (c != ' ' && c != '\t' && c != '\n' && c != '\r') return;
    ++pos_;
  }
}

std::string JsonReader::found() const {
  if (pos_ >= in_.size()) return "the end of the header";
  const auto c = static_cast<unsigned char>(in_[pos_]);
  if (c >= 0x20 && c < 0x7f) return "'" + std::string(1, static_cast<char>(c)) + "'";
  static constexpr char kHex[] = "0123456789abcdef";
  return std::string("byte 0x") + kHex[c >> 4] + kHex[c & 15];
}

void JsonReader::syntax_error(std::size_t at, const std::string& what) const {
  throw Error(ErrorCode::kInvalidJson, "invalid JSON in the header " + where(path_) + " at header byte " +
                                           std::to_string(at) + " (file offset " + std::to_string(at + 8) +
                                           "): " + what);
}

void JsonReader::expect(char c) {
  skip_ws();
  if (peek() != c) syntax_error(pos_, std::string("expected '") + c + "', found " + found());
  ++pos_;
  skip_ws();
}

bool JsonReader::next_member(char close) {
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

bool JsonReader::open(char close) {
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

std::string_view JsonReader::string() {
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

std::string JsonReader::owned_string() {
  const std::string_view s = string();
  if (s.data() == scratch_.data()) return std::move(scratch_);
  return std::string(s);
}

void JsonReader::control_char(std::size_t at) const {
  syntax_error(at, "control character " + std::to_string(static_cast<unsigned char>(in_[at])) +
                       " inside a string (it must be escaped)");
}

std::string_view JsonReader::unescape(std::size_t start, std::size_t first_escape) {
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

std::uint32_t JsonReader::hex4(std::size_t at) const {
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

void JsonReader::append_utf8(std::uint32_t cp) {
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

JsonNumber JsonReader::number() {
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

void JsonReader::literal(std::string_view word) {
  if (in_.substr(pos_, word.size()) != word) syntax_error(pos_, "expected a JSON value, found " + found());
  pos_ += word.size();
}

JsonKind JsonReader::value() {
  switch (peek()) {
    case '{': {
      if (open('}')) {
        std::set<std::string> keys;  // only for values where no header field may be
        do {
          if (peek() != '"') syntax_error(pos_, "expected a string key, found " + found());
          const std::string_view key = string();
          if (!keys.emplace(key).second) throw duplicate_key(key);
          expect(':');
          value();
        } while (next_member('}'));
        --depth_;
      }
      return Kind::kObject;
    }
    case '[': {
      if (open(']')) {
        do value();
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

std::string JsonReader::describe(JsonKind kind, std::size_t start) const {
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

}  // namespace safeload
