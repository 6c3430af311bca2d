// Resource bounds on hostile files: builds each one in an anonymous memory
// file, validates it (and loads it with the reference loader if valid) in a
// child process, and reports the verdict, wall time and the child's peak
// resident memory. README.md records the numbers of a Release build.
//
//   safeload_fuzz_bounds           measure every case, print a table
//   safeload_fuzz_bounds --quick   only the cases that are cheap under sanitizers
//
// Exits non-zero if any case's verdict is not the expected one (or the child
// dies), so it doubles as a test; time and memory are reported, not asserted.
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "safeload/error.h"
#include "safeload/file.h"
#include "safeload/header.h"
#include "safeload/reference.h"

namespace {

using safeload::ErrorCode;

// Streams a file into a memfd without ever holding it in one buffer, so the
// parent stays small and the child's peak memory is the loader's own.
class Writer {
 public:
  explicit Writer(int fd) : fd_(fd) {}
  ~Writer() { flush(); }
  void put(const std::string& s) {
    buffer_ += s;
    if (buffer_.size() > (1 << 20)) flush();
  }
  void repeat(const std::string& s, std::uint64_t times) {
    for (std::uint64_t i = 0; i < times; ++i) put(s);
  }
  void flush() {
    std::size_t done = 0;
    while (done < buffer_.size()) {
      const ssize_t n = ::write(fd_, buffer_.data() + done, buffer_.size() - done);
      if (n <= 0) std::abort();
      done += static_cast<std::size_t>(n);
    }
    buffer_.clear();
  }

 private:
  int fd_;
  std::string buffer_;
};

std::string le64(std::uint64_t n) {
  std::string out;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xFF));
  return out;
}

struct Case {
  std::string name;
  std::string expect;  // an error code name, or "accept"
  bool quick;          // cheap enough for sanitizer builds
  // Writes the whole file; returns nothing, the fd holds it.
  std::function<void(Writer&)> write;
};

// A header of `n` U8 tensors of one byte each ("t0000001": {...}), exactly.
std::uint64_t million_header_length(std::uint64_t n, std::uint64_t bytes_each) {
  std::uint64_t len = 2;  // {}
  for (std::uint64_t i = 0; i < n; ++i) {
    const std::string e = "\"t" + std::to_string(i) + "\":{\"dtype\":\"U8\",\"shape\":[" +
                          std::to_string(bytes_each) + "],\"data_offsets\":[" +
                          std::to_string(i * bytes_each) + "," +
                          std::to_string((i + 1) * bytes_each) + "]}";
    len += e.size() + (i ? 1 : 0);
  }
  return len;
}

void write_many_tensors(Writer& w, std::uint64_t n, std::uint64_t bytes_each) {
  w.put(le64(million_header_length(n, bytes_each)));
  w.put("{");
  for (std::uint64_t i = 0; i < n; ++i) {
    w.put(std::string(i ? "," : "") + "\"t" + std::to_string(i) +
          "\":{\"dtype\":\"U8\",\"shape\":[" + std::to_string(bytes_each) +
          "],\"data_offsets\":[" + std::to_string(i * bytes_each) + "," +
          std::to_string((i + 1) * bytes_each) + "]}");
  }
  w.put("}");
  w.repeat(std::string(1 << 16, '\x5a'), n * bytes_each >> 16);
  w.put(std::string(n * bytes_each % (1 << 16), '\x5a'));
}

std::vector<Case> cases() {
  constexpr std::uint64_t kBig = 99'000'000;
  std::vector<Case> out;
  out.push_back({"1,000,000 tensors of 1 byte (61 MB header)", "accept", false,
                 [](Writer& w) { write_many_tensors(w, 1'000'000, 1); }});
  out.push_back({"1,000,000 zero-size tensors", "accept", false,
                 [](Writer& w) { write_many_tensors(w, 1'000'000, 0); }});
  out.push_back({"100,000 tensors of 1 byte", "accept", true,
                 [](Writer& w) { write_many_tensors(w, 100'000, 1); }});
  out.push_back({"99 MB header: {} and 99 MB of space padding", "accept", false, [](Writer& w) {
                   w.put(le64(kBig));
                   w.put("{}");
                   w.repeat(std::string(1'000'000, ' '), 98);
                   w.put(std::string(kBig - 2 - 98'000'000, ' '));
                 }});
  out.push_back({"99 MB header: one 99 MB __metadata__ string", "accept", false, [](Writer& w) {
                   const std::string head = "{\"__metadata__\":{\"k\":\"";
                   w.put(le64(kBig));
                   w.put(head);
                   const std::uint64_t n = kBig - head.size() - 3;
                   w.repeat(std::string(1'000'000, 'x'), n / 1'000'000);
                   w.put(std::string(n % 1'000'000, 'x'));
                   w.put("\"}}");
                 }});
  out.push_back({"99 MB header: 99 M nested '['", "INVALID_JSON", true, [](Writer& w) {
                   w.put(le64(kBig));
                   w.repeat(std::string(1'000'000, '['), 99);
                 }});
  out.push_back({"99 MB header of '{\"a\":' nesting", "INVALID_JSON", true, [](Writer& w) {
                   w.put(le64(kBig - kBig % 5));
                   w.repeat("{\"a\":", kBig / 5);
                 }});
  out.push_back({"nesting exactly at the limit (64 deep), then rejected as a header",
                 "INVALID_HEADER", true, [](Writer& w) {
                   const std::string json = "{\"a\":" + std::string(63, '[') + std::string(63, ']') + "}";
                   w.put(le64(json.size()));
                   w.put(json);
                 }});
  out.push_back({"declared header length 100,000,000, file of 16 bytes", "INVALID_HEADER_LENGTH", true,
                 [](Writer& w) {
                   w.put(le64(100'000'000));
                   w.put("{}      ");
                 }});
  out.push_back({"declared header length 2^64-1", "HEADER_TOO_LARGE", true, [](Writer& w) {
                   w.put(le64(~0ull));
                   w.put("{}");
                 }});
  out.push_back({"F32 shape [2^40] in a 4-byte data section", "METADATA_INCOMPLETE_BUFFER", true,
                 [](Writer& w) {
                   const std::string json =
                       "{\"a\":{\"dtype\":\"F32\",\"shape\":[1099511627776],\"data_offsets\":[0,4398046511104]}}";
                   w.put(le64(json.size()));
                   w.put(json);
                   w.put("abcd");
                 }});
  out.push_back({"shape [2^63-1, 2^63-1]", "VALIDATION_OVERFLOW", true, [](Writer& w) {
                   const std::string json =
                       "{\"a\":{\"dtype\":\"U8\",\"shape\":[9223372036854775807,9223372036854775807],"
                       "\"data_offsets\":[0,1]}}";
                   w.put(le64(json.size()));
                   w.put(json);
                   w.put("x");
                 }});
  out.push_back({"shape of 1,000,000 dimensions of 1", "accept", true, [](Writer& w) {
                   std::string json = "{\"a\":{\"dtype\":\"U8\",\"shape\":[1";
                   for (int i = 1; i < 1'000'000; ++i) json += ",1";
                   json += "],\"data_offsets\":[0,1]}}";
                   w.put(le64(json.size()));
                   w.put(json);
                   w.put("x");
                 }});
  out.push_back({"zero-size tensor with dimensions 2^62 and 0", "accept", true, [](Writer& w) {
                   const std::string json =
                       "{\"a\":{\"dtype\":\"U8\",\"shape\":[4611686018427387904,0],\"data_offsets\":[0,0]}}";
                   w.put(le64(json.size()));
                   w.put(json);
                 }});
  return out;
}

struct Result {
  std::string verdict;
  double seconds;
  long peak_kib;
};

// Runs the loader on the file in `fd` in a child process.
Result measure(int fd) {
  const auto start = std::chrono::steady_clock::now();
  const pid_t pid = ::fork();
  if (pid == 0) {
    std::string verdict = "accept";
    try {
      const safeload::File file = safeload::File::open("/proc/self/fd/" + std::to_string(fd));
      const safeload::Header h = safeload::Header::read(file);
      std::vector<std::vector<unsigned char>> storage;
      std::vector<void*> dst;
      for (const safeload::TensorInfo& t : h.tensors()) {
        storage.emplace_back(t.nbytes());
        dst.push_back(storage.back().data());
      }
      safeload::reference::read_tensors(file, h, dst);
    } catch (const safeload::Error& e) {
      verdict = std::string(e.code_name());
    }
    // The verdict goes back through the exit status: its index in the code list.
    for (int i = 0; i < safeload::kErrorCodeCount; ++i) {
      if (verdict == safeload::error_code_name(static_cast<ErrorCode>(i))) ::_exit(i + 1);
    }
    ::_exit(0);
  }
  int status = 0;
  rusage usage{};
  ::wait4(pid, &status, 0, &usage);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::string verdict;
  if (!WIFEXITED(status)) {
    verdict = "died (signal " + std::to_string(WTERMSIG(status)) + ")";
  } else if (WEXITSTATUS(status) == 0) {
    verdict = "accept";
  } else {
    verdict = std::string(safeload::error_code_name(static_cast<ErrorCode>(WEXITSTATUS(status) - 1)));
  }
  return {verdict, seconds, usage.ru_maxrss};
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  int failures = 0;
  // Baseline: the smallest valid file, so the table can show what each case adds.
  const int base_fd = ::memfd_create("baseline", MFD_CLOEXEC);
  {
    Writer w(base_fd);
    w.put(le64(2) + "{}");
  }
  const Result base = measure(base_fd);
  ::close(base_fd);
  std::printf("%-66s %12s %-28s %9s %11s\n", "case", "file bytes", "verdict", "seconds", "peak MiB");
  std::printf("%-66s %12d %-28s %9.3f %11.1f\n", "baseline: header {}", 10, base.verdict.c_str(),
              base.seconds, base.peak_kib / 1024.0);
  for (const Case& c : cases()) {
    if (quick && !c.quick) continue;
    const int fd = ::memfd_create("case", MFD_CLOEXEC);
    {
      Writer w(fd);
      c.write(w);
    }
    const off_t size = ::lseek(fd, 0, SEEK_END);
    const Result r = measure(fd);
    ::close(fd);
    const bool ok = r.verdict == c.expect;
    failures += !ok;
    std::printf("%-66s %12lld %-28s %9.3f %11.1f%s\n", c.name.c_str(), static_cast<long long>(size),
                r.verdict.c_str(), r.seconds, r.peak_kib / 1024.0,
                ok ? "" : ("  <-- expected " + c.expect).c_str());
  }
  return failures == 0 ? 0 : 1;
}
