// The header's JSON reader against simdjson's On-Demand API, on the same inputs: the fixture
// corpus's headers, a header of 1,000,000 tensors, and the fuzz inputs. `make bench-json`
// builds and runs it (needs Debian's libsimdjson-dev); core/json.h has the conclusions.
//
//   bench-json CORPUS_DIR FUZZ_DIR...
//
// Each reader does the whole job the header needs from JSON: every tensor's dtype, shape
// and offsets, the metadata map, every other value walked and checked. safeload's
// (Header::parse) also applies every header rule and the layout; the simdjson walk
// applies none beyond JSON itself, so its time is a lower bound for a simdjson-based
// header. Times are the median of 7 runs; memory is the peak resident growth of a child
// process that parses once.
#include <simdjson.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "../core/schema.h"
#include "safeload/error.h"
#include "safeload/header.h"

namespace {

using Clock = std::chrono::steady_clock;

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// The header JSON of a file (after the 8-byte prefix), or "" where the prefix is unusable.
std::string header_json(const std::string& file) {
  if (file.size() < 8) return "";
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(file[i]);
  if (n > file.size() - 8) return "";
  return file.substr(8, n);
}

// A header of `count` tensors, as upstream writes one.
std::string big_header(std::size_t count) {
  std::string s = "{\"__metadata__\":{\"format\":\"pt\"}";
  std::uint64_t offset = 0;
  for (std::size_t i = 0; i < count; ++i) {
    s += ",\"model.layers." + std::to_string(i / 10) + ".w" + std::to_string(i % 10) +
         "\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[" + std::to_string(offset) + "," +
         std::to_string(offset + 16) + "]}";
    offset += 16;
  }
  s += "}";
  s.append((8 - (8 + s.size()) % 8) % 8, ' ');
  return s;
}

std::uint64_t data_bytes(std::size_t count) { return 16ull * count; }

// --- simdjson On-Demand: walk everything a header reader must walk ---------------------------

bool walk_value(simdjson::ondemand::value v, int depth);

bool walk_value(simdjson::ondemand::value v, int depth) {
  if (depth > 64) return false;
  simdjson::ondemand::json_type type;
  if (v.type().get(type)) return false;
  switch (type) {
    case simdjson::ondemand::json_type::object: {
      simdjson::ondemand::object o;
      if (v.get_object().get(o)) return false;
      for (auto field : o) {
        std::string_view key;
        simdjson::ondemand::value x;
        if (field.unescaped_key().get(key) || field.value().get(x) || !walk_value(x, depth + 1)) return false;
      }
      return true;
    }
    case simdjson::ondemand::json_type::array: {
      simdjson::ondemand::array a;
      if (v.get_array().get(a)) return false;
      for (auto item : a) {
        simdjson::ondemand::value x;
        if (item.get(x) || !walk_value(x, depth + 1)) return false;
      }
      return true;
    }
    case simdjson::ondemand::json_type::string: {
      std::string_view s;
      return !v.get_string().get(s);
    }
    case simdjson::ondemand::json_type::number: {
      double d;
      return !v.get_double().get(d);
    }
    case simdjson::ondemand::json_type::boolean: {
      bool b;
      return !v.get_bool().get(b);
    }
    case simdjson::ondemand::json_type::null: {
      bool null = false;
      return !v.is_null().get(null) && null;
    }
  }
  return false;
}

struct Walked {
  std::size_t tensors = 0;
  bool ok = false;
};

Walked simdjson_walk(simdjson::ondemand::parser& parser, const simdjson::padded_string& json) {
  Walked out;
  simdjson::ondemand::document doc;
  if (parser.iterate(json).get(doc)) return out;
  simdjson::ondemand::object root;
  if (doc.get_object().get(root)) return out;
  for (auto field : root) {
    std::string_view key;
    if (field.unescaped_key().get(key)) return out;
    simdjson::ondemand::value v;
    if (field.value().get(v)) return out;
    if (key == "__metadata__") {
      if (!walk_value(v, 1)) return out;
      continue;
    }
    simdjson::ondemand::object entry;
    if (v.get_object().get(entry)) return out;
    for (auto f : entry) {
      std::string_view name;
      if (f.unescaped_key().get(name)) return out;
      simdjson::ondemand::value x;
      if (f.value().get(x)) return out;
      if (name == "dtype") {
        std::string_view d;
        if (x.get_string().get(d)) return out;
      } else if (name == "shape" || name == "data_offsets") {
        simdjson::ondemand::array a;
        if (x.get_array().get(a)) return out;
        for (auto item : a) {
          std::uint64_t n;
          if (item.get_uint64().get(n)) return out;
        }
      } else if (!walk_value(x, 2)) {
        return out;
      }
    }
    ++out.tensors;
  }
  out.ok = true;  // trailing content after the root object is not checked here (3.0.1 lacks at_end)
  return out;
}

// The JSON alone, no schema: every value walked (depth at most 64, as safeload bounds it).
bool simdjson_valid(simdjson::ondemand::parser& parser, const simdjson::padded_string& json) {
  simdjson::ondemand::document doc;
  if (parser.iterate(json).get(doc)) return false;
  simdjson::ondemand::json_type type;
  if (doc.type().get(type)) return false;
  if (type != simdjson::ondemand::json_type::object && type != simdjson::ondemand::json_type::array) {
    // A scalar document: read it as what it is.
    switch (type) {
      case simdjson::ondemand::json_type::string: { std::string_view v; return !doc.get_string().get(v); }
      case simdjson::ondemand::json_type::number: { double v; return !doc.get_double().get(v); }
      case simdjson::ondemand::json_type::boolean: { bool v; return !doc.get_bool().get(v); }
      default: { bool null = false; return !doc.is_null().get(null) && null; }
    }
  }
  simdjson::ondemand::value root;
  if (doc.get_value().get(root)) return false;
  return walk_value(root, 1);
}

// --- timing and memory ---------------------------------------------------------------------------

double median_seconds(const std::function<void()>& fn, int runs = 7) {
  std::vector<double> t;
  for (int i = 0; i < runs; ++i) {
    const auto t0 = Clock::now();
    fn();
    t.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Peak resident growth, in MiB, of a child that runs `fn` once.
double peak_mib(const std::function<void()>& fn) {
  int fds[2];
  if (pipe(fds) != 0) return -1;
  const pid_t pid = fork();
  if (pid == 0) {
    rusage before{};
    getrusage(RUSAGE_SELF, &before);
    fn();
    rusage after{};
    getrusage(RUSAGE_SELF, &after);
    const long grew = after.ru_maxrss - before.ru_maxrss;  // KiB
    if (write(fds[1], &grew, sizeof grew) != sizeof grew) _exit(1);
    _exit(0);
  }
  long grew = -1;
  if (read(fds[0], &grew, sizeof grew) != sizeof grew) grew = -1;
  waitpid(pid, nullptr, 0);
  close(fds[0]);
  close(fds[1]);
  return grew / 1024.0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR [FUZZ_DIR...]\n", argv[0]);
    return 2;
  }
  simdjson::ondemand::parser parser;

  // 1. The corpus: every file's header, parsed in turn.
  std::vector<std::pair<std::string, std::uint64_t>> corpus;  // header JSON, file size
  for (const auto& e : std::filesystem::directory_iterator(argv[1])) {
    const std::string file = read_file(e.path());
    const std::string json = header_json(file);
    if (!json.empty()) corpus.emplace_back(json, file.size());
  }
  std::vector<simdjson::padded_string> padded;
  for (const auto& [json, size] : corpus) padded.emplace_back(json);
  std::size_t bytes = 0;
  for (const auto& [json, size] : corpus) bytes += json.size();
  const double ours = median_seconds([&] {
    for (const auto& [json, size] : corpus) {
      try {
        (void)safeload::Header::parse(json, size, "corpus");
      } catch (const safeload::Error&) {
      }
    }
  });
  const double theirs = median_seconds([&] {
    for (const auto& p : padded) (void)simdjson_walk(parser, p);
  });
  std::printf("corpus: %zu headers, %zu bytes of JSON\n", corpus.size(), bytes);
  std::printf("  safeload Header::parse  %9.3f ms\n", ours * 1e3);
  std::printf("  simdjson On-Demand walk %9.3f ms\n", theirs * 1e3);

  // 2. A header of 1,000,000 tensors.
  const std::size_t count = 1000000;
  const std::string big = big_header(count);
  const std::uint64_t size = 8 + big.size() + data_bytes(count);
  const simdjson::padded_string big_padded(big);
  std::size_t walked = 0;
  const double ours_big = median_seconds([&] { (void)safeload::Header::parse(big, size, "big"); }, 3);
  const double ours_json = median_seconds([&] { (void)safeload::parse_header_json(big, "big"); }, 3);
  const double theirs_big = median_seconds([&] { walked = simdjson_walk(parser, big_padded).tensors; }, 3);
  const double ours_mem = peak_mib([&] { (void)safeload::Header::parse(big, size, "big"); });
  const double theirs_mem = peak_mib([&] {
    simdjson::ondemand::parser p;
    (void)simdjson_walk(p, big_padded);
  });
  std::printf("1,000,000 tensors: %.1f MB of JSON (simdjson walked %zu tensors)\n", big.size() / 1e6, walked);
  std::printf("  safeload Header::parse  %9.3f s, peak memory +%.0f MiB (the Header: names, shapes, index)\n",
              ours_big, ours_mem);
  std::printf("    of which the JSON read against the schema %.3f s (the rest: sorting, layout)\n", ours_json);
  std::printf("  simdjson On-Demand walk %9.3f s, peak memory +%.0f MiB (its structural index; no Header built)\n",
              theirs_big, theirs_mem);

  // 3. The fuzz inputs: mostly malformed. Verdicts compared: a reader that accepts JSON the
  // other rejects would change which files are refused, and with what code.
  std::size_t inputs = 0, both_reject = 0, both_accept = 0, only_ours_reject = 0, only_theirs_reject = 0;
  std::vector<std::pair<std::string, std::uint64_t>> fuzz;
  for (int d = 2; d < argc; ++d) {
    for (const auto& e : std::filesystem::directory_iterator(argv[d])) {
      const std::string file = read_file(e.path());
      const std::string json = header_json(file);
      if (json.empty()) continue;
      fuzz.emplace_back(json, file.size());
    }
  }
  std::vector<simdjson::padded_string> fuzz_padded;
  for (const auto& [json, size] : fuzz) fuzz_padded.emplace_back(json);
  for (std::size_t i = 0; i < fuzz.size(); ++i) {
    ++inputs;
    bool json_ok = true;  // our verdict on the JSON alone: a JSON-class code, or none
    try {
      (void)safeload::Header::parse(fuzz[i].first, fuzz[i].second, "fuzz");
    } catch (const safeload::Error& e) {
      json_ok = e.code() != safeload::ErrorCode::kInvalidJson && e.code() != safeload::ErrorCode::kInvalidHeaderUtf8;
    }
    const bool theirs_ok = simdjson_valid(parser, fuzz_padded[i]);
    if (json_ok && theirs_ok) ++both_accept;
    else if (!json_ok && !theirs_ok) ++both_reject;
    else if (!json_ok) ++only_ours_reject;
    else ++only_theirs_reject;
  }
  const double ours_fuzz = median_seconds([&] {
    for (const auto& [json, size] : fuzz) {
      try {
        (void)safeload::Header::parse(json, size, "fuzz");
      } catch (const safeload::Error&) {
      }
    }
  });
  const double theirs_fuzz = median_seconds([&] {
    for (const auto& p : fuzz_padded) (void)simdjson_walk(parser, p);
  });
  std::printf("fuzz inputs: %zu\n", inputs);
  std::printf("  safeload Header::parse  %9.3f ms\n", ours_fuzz * 1e3);
  std::printf("  simdjson On-Demand walk %9.3f ms\n", theirs_fuzz * 1e3);
  std::printf("  JSON verdicts: both accept %zu, both reject %zu, only safeload rejects %zu, only simdjson "
              "rejects %zu\n", both_accept, both_reject, only_ours_reject, only_theirs_reject);
  return 0;
}
