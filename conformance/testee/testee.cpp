// A conformance testee for `safeload conform --loader exec:PATH`: the worked
// example of a loader outside Python, here safeload's own C++ API
// (safeload::load_file). A libtorch user (a C++ service, tch-rs) writes the
// same loop around their loader.
//
// Protocol (conformance/README.md): every message, both ways, is a 4-byte
// little-endian length and that many bytes of UTF-8 JSON, on stdin/stdout.
// stdout carries nothing else; diagnostics go to stderr.
//   -> {"op": "hello", "protocol": 1}
//   <- {"ok": true, "protocol": 1, "name": "..."}
//   -> {"op": "load", "path": P, "device": D, "out_dir": O, "want": "any"}
//   <- {"ok": true, "tensors": [{"name", "dtype", "shape", "device", "bytes_file"}]}
//    | {"ok": false, "error_type": T, "error_code": C, "message": M}
// End of stdin: exit 0.
#include <safeload/error.h>
#include <safeload/torch.h>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <cstdio>
#include <exception>
#include <fstream>
#include <iostream>
#include <optional>
#include <string>

#include <unistd.h>

namespace {

using nlohmann::json;

std::optional<json> read_message(std::FILE* in) {
  unsigned char head[4];
  if (std::fread(head, 1, 4, in) != 4) return std::nullopt;
  const std::uint32_t n = std::uint32_t(head[0]) | std::uint32_t(head[1]) << 8 |
                          std::uint32_t(head[2]) << 16 | std::uint32_t(head[3]) << 24;
  std::string body(n, '\0');
  if (n && std::fread(body.data(), 1, n, in) != n) return std::nullopt;
  return json::parse(body);
}

void write_message(std::FILE* out, const json& msg) {
  const std::string body = msg.dump();
  const auto n = static_cast<std::uint32_t>(body.size());
  const unsigned char head[4] = {static_cast<unsigned char>(n), static_cast<unsigned char>(n >> 8),
                                 static_cast<unsigned char>(n >> 16), static_cast<unsigned char>(n >> 24)};
  std::fwrite(head, 1, 4, out);
  std::fwrite(body.data(), 1, body.size(), out);
  std::fflush(out);
}

// torch's Python names, which the protocol accepts alongside the format's.
const char* torch_name(c10::ScalarType t) {
  switch (t) {
    case at::kBool: return "bool";
    case at::kByte: return "uint8";
    case at::kChar: return "int8";
    case at::kShort: return "int16";
    case at::kInt: return "int32";
    case at::kLong: return "int64";
    case at::kUInt16: return "uint16";
    case at::kUInt32: return "uint32";
    case at::kUInt64: return "uint64";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kComplexFloat: return "complex64";
    case at::kFloat8_e5m2: return "float8_e5m2";
    case at::kFloat8_e4m3fn: return "float8_e4m3fn";
    case at::kFloat8_e5m2fnuz: return "float8_e5m2fnuz";
    case at::kFloat8_e4m3fnuz: return "float8_e4m3fnuz";
    case at::kFloat8_e8m0fnu: return "float8_e8m0fnu";
    case at::kFloat4_e2m1fn_x2: return "float4_e2m1fn_x2";
    default: return c10::toString(t);
  }
}

json load(const json& req) {
  const std::string path = req.at("path").get<std::string>();
  const std::string out_dir = req.at("out_dir").get<std::string>();
  try {
    const auto tensors = safeload::load_file(path, safeload::parse_device(req.at("device").get<std::string>()));
    json list = json::array();
    std::size_t i = 0;
    for (const auto& [name, tensor] : tensors) {
      // Raw bytes, row-major, copied to the host: what the harness hashes.
      const at::Tensor host = tensor.contiguous().to(at::kCPU);
      const std::string file = std::to_string(i++) + ".bin";
      std::ofstream f(out_dir + "/" + file, std::ios::binary);
      f.write(static_cast<const char*>(host.data_ptr()), static_cast<std::streamsize>(host.nbytes()));
      if (!f) throw std::runtime_error("cannot write " + out_dir + "/" + file);
      list.push_back({{"name", name}, {"dtype", torch_name(tensor.scalar_type())},
                      {"shape", tensor.sizes().vec()}, {"device", tensor.device().str()},
                      {"bytes_file", file}});
    }
    return {{"ok", true}, {"tensors", list}};
  } catch (const safeload::Error& e) {
    return {{"ok", false}, {"error_type", "safeload::Error"}, {"error_code", std::string(e.code_name())},
            {"message", e.what()}};
  } catch (const std::exception& e) {
    return {{"ok", false}, {"error_type", "std::exception"}, {"message", e.what()}};
  }
}

}  // namespace

int main() {
  std::FILE* out = fdopen(dup(1), "wb");  // the protocol's channel
  dup2(2, 1);                            // anything printed to stdout lands on stderr
  while (auto req = read_message(stdin)) {
    const std::string op = req->value("op", "");
    if (op == "hello") {
      write_message(out, {{"ok", true}, {"protocol", 1}, {"name", "safeload C++ load_file"}});
    } else if (op == "load") {
      write_message(out, load(*req));
    } else {
      write_message(out, {{"ok", false}, {"error_type", "protocol"}, {"message", "unknown op " + op}});
    }
  }
  return 0;
}
