// A JSON reader for safetensors headers: RFC 8259, single pass, no document
// tree. It lexes, checks syntax, bounds nesting at kMaxJsonDepth and walks
// values a schema does not look into (checking them and the keys repeated
// in their objects); the header's schema (schema.cpp) drives it. Private to
// core/.
//
// Why a reader of our own and not simdjson's On-Demand API (Debian's
// libsimdjson-dev 3.0.1), measured with `make bench-json` (bench/json_reader.cpp)
// on the 2-core machine, median of 7 runs (3 for the big header):
//   - the 124 corpus headers (286 KB of JSON): 2.0 ms to build validated
//     Headers, against 0.3 ms for simdjson to walk the same JSON and build
//     nothing; a real model's header costs ours a few milliseconds, against
//     seconds of loading;
//   - a header of 1,000,000 tensors (87.5 MB): 0.96-1.35 s for the Header
//     (0.92-1.28 s of it reading the JSON against the schema, names and shapes
//     allocated), peak memory +84 MiB; simdjson's walk 0.11-0.25 s but +136 MiB
//     for its structural index, and still no Header (three runs, each a
//     median, on a machine whose memory speed varies run to run);
//   - 989 fuzz inputs: the JSON verdicts of the two differ on 158 (simdjson
//     3.0.1 does not check for content after the root value, and reads some
//     inputs ours refuses or the other way round), and today's precedence
//     (syntax errors in document order first, a repeated key stopping the
//     read where it is met, numbers beyond a double) would need the same
//     extra checks on top of it.
// A dependency that saves a second only on a million-tensor header and
// changes which files are refused with which code is not worth it: the
// reader stays ours.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "safeload/error.h"

namespace safeload {

// What a JSON value turned out to be, for the checks and their messages.
enum class JsonKind : std::uint8_t { kNull, kBool, kUnsigned, kSigned, kFloat, kString, kArray, kObject };

// A JSON number. Like serde's usize, a count is written as a non-negative
// integer: "-0", "1.0" and "1e2" are not counts.
struct JsonNumber {
  JsonKind kind;            // kUnsigned, kSigned or kFloat
  std::uint64_t value = 0;  // for kUnsigned
};

// `text` quoted for a message: 'text'.
std::string in_quotes(std::string_view s);
// "in 'path'".
std::string where(std::string_view path);

class JsonReader {
 public:
  JsonReader(std::string_view json, std::string_view path) : in_(json), path_(path) {}
  virtual ~JsonReader() = default;

 protected:
  using Kind = JsonKind;
  using Number = JsonNumber;

  // The error for a key given twice in an object walked by value().
  virtual Error duplicate_key(std::string_view key) const = 0;

  // The byte at the cursor, or NUL at the end (the header has no NUL bytes:
  // Header::parse rejects them first).
  char peek() const { return pos_ < in_.size() ? in_[pos_] : '\0'; }

  void skip_ws();

  std::string found() const;

  [[noreturn]] void syntax_error(std::size_t at, const std::string& what) const;

  void expect(char c);

  // After a member of an object or array: true if another one follows.
  bool next_member(char close);

  // At an opening bracket: bounds the depth as the parser descends, so a
  // hostile "[[[[..." is stopped after kMaxJsonDepth bytes, and steps in.
  // Returns false (and steps past the close) if the container is empty.
  bool open(char close);

  // At '"': the string's text, unescaped. A view of the input when it has no
  // escapes (the common case: no copy at all), else of scratch_.
  std::string_view string();

  // An owned copy of the string at '"', allocated once at its final size
  // (or taken over from scratch_ when it has escapes).
  std::string owned_string();

  [[noreturn]] void control_char(std::size_t at) const;

  std::string_view unescape(std::size_t start, std::size_t first_escape);

  std::uint32_t hex4(std::size_t at) const;

  void append_utf8(std::uint32_t cp);

  static bool is_digit(char c) { return c >= '0' && c <= '9'; }

  // At '-' or a digit. A non-negative integer that fits 64 bits is kUnsigned,
  // a negative one that fits is kSigned, anything else (fraction, exponent,
  // or too many digits) kFloat, which must fit a double (upstream rejects
  // 1e400 too).
  Number number();

  void literal(std::string_view word);

  // Any JSON value at the cursor: checked (syntax, depth, duplicate keys),
  // and its kind returned.
  Kind value();

  // The value that began at `start` and ends at the cursor, for a message.
  std::string describe(Kind kind, std::size_t start) const;

  std::string_view in_;
  std::string_view path_;
  std::size_t pos_ = 0;
  int depth_ = 0;
  std::string scratch_;  // unescaped text of the last string with escapes
};

}  // namespace safeload
