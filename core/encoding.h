// Byte-level decoding shared by the core's parsers. Private to core/ (and its
// tests): not part of safeload's public headers.
#pragma once

#include <cstdint>
#include <string_view>

namespace safeload {

// Little-endian u64 decode; no reliance on host byte order or alignment.
inline std::uint64_t load_le64(const unsigned char* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// True if `s` is well-formed UTF-8 (no overlong forms, no surrogates, at most
// U+10FFFF), the same definition Rust's str::from_utf8 applies upstream.
bool is_valid_utf8(std::string_view s);

}  // namespace safeload
