// Helpers shared by the C++ tests: build safetensors bytes by hand and keep
// them in temporary files.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "safeload/error.h"

namespace safeload::testing {

// The 8-byte little-endian length prefix, the header, then the data.
inline std::string make_file(const std::string& header, const std::string& data = "") {
  std::string out;
  std::uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xFF));
  return out + header + data;
}

// A tensor entry for a header: "name":{"dtype":..,"shape":[..],"data_offsets":[b,e]}
inline std::string entry(const std::string& name, const std::string& dtype,
                         const std::string& shape, std::uint64_t begin, std::uint64_t end) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":[" + shape +
         "],\"data_offsets\":[" + std::to_string(begin) + "," + std::to_string(end) + "]}";
}

// Deterministic pseudo-random bytes (never zeros, which hide unwritten output).
inline std::string pattern_bytes(std::size_t n, std::uint32_t seed) {
  std::string out(n, '\0');
  std::uint32_t x = seed * 2654435761u + 1;
  for (std::size_t i = 0; i < n; ++i) {
    x ^= x << 13, x ^= x >> 17, x ^= x << 5;
    out[i] = static_cast<char>(x & 0xFF);
  }
  return out;
}

// A file of U8 tensors of the given sizes, back to back in list order, with
// pattern_bytes contents.
inline std::string u8_file(const std::vector<std::pair<std::string, std::uint64_t>>& sizes,
                           std::uint32_t seed = 42) {
  std::string json = "{";
  std::uint64_t at = 0;
  for (const auto& [name, n] : sizes) {
    if (json.size() > 1) json += ",";
    json += entry(name, "U8", std::to_string(n), at, at + n);
    at += n;
  }
  return make_file(json + "}", pattern_bytes(at, seed));
}

class TempFile {
 public:
  explicit TempFile(const std::string& contents) {
    char name[] = "/tmp/safeload_test_XXXXXX";
    const int fd = ::mkstemp(name);
    if (fd < 0) throw std::runtime_error("mkstemp failed");
    ::close(fd);
    path_ = name;
    std::ofstream(path_, std::ios::binary).write(contents.data(), static_cast<std::streamsize>(contents.size()));
  }
  ~TempFile() { std::remove(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Runs fn, expecting a safeload::Error with `code`; the message is not checked.
inline void expect_code(ErrorCode code, const std::function<void()>& fn) {
  try {
    fn();
    ADD_FAILURE() << "expected " << error_code_name(code) << ", nothing was thrown";
  } catch (const Error& e) {
    EXPECT_EQ(e.code_name(), error_code_name(code)) << e.what();
  }
}

}  // namespace safeload::testing
