// The torch layer's loads: every route against the reference loader, requests
// for parts of tensors, shares of a load, cancellation.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>

#include "safeload/torch.h"
#include "test_util.h"

namespace safeload {
namespace {

using testing::entry;
using testing::expect_code;
using testing::make_file;
using testing::pattern_bytes;
using testing::TempFile;

TEST(Loaders, FastMatchesReferenceOnEveryPathAndAlignsData) {
  const std::string data = pattern_bytes(3 + 8 * 7 + 2 + 0 + 40, 9);
  const std::string header = "{" + entry("odd", "U8", "3", 0, 3) + "," + entry("f64", "F64", "7", 3, 59) + "," +
                             entry("bf", "BF16", "", 59, 61) + "," + entry("z", "F32", "0,2", 61, 61) + "," +
                             entry("c", "C64", "5", 61, 101) + "}";
  TempFile tmp(make_file(header, data));
  const TensorMap ref = reference::load_file(tmp.path());
  // Every route of kReadRoutes, with the default chunks and with small ones
  // split across several reads and threads.
  std::vector<std::pair<std::string, LoadOptions>> runs;
  for (ReadRoute route : kReadRoutes) {
    if (route == ReadRoute::kReference) continue;  // the oracle
    LoadOptions options = route_options(route);
    runs.emplace_back(std::string(route_name(route)), options);
    options.chunk_bytes = kMinChunkBytes + 5;
    options.staging_bytes = kMinStagingBytes;
    options.threads = 3;
    runs.emplace_back(std::string(route_name(route)) + ", small chunks", options);
  }
  ASSERT_EQ(runs.size(), 2 * (std::size(kReadRoutes) - 1));
  for (const auto& [what, options] : runs) {
    SCOPED_TRACE(what);
    const TensorMap fast = load_file(tmp.path(), c10::Device("cpu"), options);
    ASSERT_EQ(fast.size(), ref.size());
    // In file order, as the reference.
    EXPECT_TRUE(std::equal(fast.begin(), fast.end(), ref.begin(),
                           [](const auto& a, const auto& b) { return a.first == b.first; }));
    for (const auto& [name, r] : ref) {
      SCOPED_TRACE(name);
      const at::Tensor& f = fast.at(name);
      EXPECT_EQ(f.scalar_type(), r.scalar_type());
      EXPECT_EQ(f.sizes(), r.sizes());
      ASSERT_EQ(f.nbytes(), r.nbytes());
      EXPECT_EQ(std::memcmp(f.const_data_ptr(), r.const_data_ptr(), r.nbytes()), 0);
      if (f.nbytes() > 0) EXPECT_EQ(reinterpret_cast<std::uintptr_t>(f.const_data_ptr()) % 64, 0u);
    }
  }
  // And both equal the bytes that were written.
  EXPECT_EQ(std::memcmp(ref.at("f64").const_data_ptr(), data.data() + 3, 56), 0);
}

TEST(Loaders, ZeroElementTensorWhoseStridesWouldOverflowLoads) {
  // [0, 2^62, 2^62] F32: no element, no byte; torch's contiguous strides overflow.
  const std::string header = "{" + entry("z", "F32", "0,4611686018427387904,4611686018427387904", 0, 0) + "}";
  TempFile tmp(make_file(header));
  for (const TensorMap& m : {load_file(tmp.path()), reference::load_file(tmp.path())}) {
    const at::Tensor& z = m.at("z");
    EXPECT_EQ(z.sizes(), (std::vector<std::int64_t>{0, 1ll << 62, 1ll << 62}));
    EXPECT_EQ(z.numel(), 0);
    EXPECT_TRUE(z.is_contiguous());
  }
}

TEST(Loaders, CheckpointOfTwoFilesEqualsEachFileLoadedAlone) {
  TempFile a(testing::u8_file({{"a0", 70001}, {"a1", 3}}, 1));
  TempFile b(testing::u8_file({{"b0", 5}, {"b1", 200000}}, 2));
  std::unique_ptr<Loading> loading = Loading::start(Checkpoint::open(std::vector<std::string>{a.path(), b.path()}),
                                                    c10::Device("cpu"));
  ASSERT_EQ(loading->size(), 4u);
  EXPECT_EQ(loading->info(2).name, "b0") << "file order, shard by shard";
  const at::Tensor b1 = loading->wait(*loading->find("b1"));
  EXPECT_TRUE(b1.equal(reference::load_file(b.path()).at("b1")));
  const auto all = loading->take_all();
  ASSERT_EQ(all.size(), 4u);
  for (const TempFile* f : {&a, &b}) {
    for (const auto& [name, t] : reference::load_file(f->path())) {
      const auto it = std::find_if(all.begin(), all.end(), [&](const auto& p) { return p.first == name; });
      ASSERT_NE(it, all.end()) << name;
      EXPECT_TRUE(it->second.equal(t)) << name;
    }
  }
  EXPECT_EQ(loading->report().files, 2u);
  EXPECT_EQ(loading->bytes_done(), loading->bytes_total());
}

TEST(Loaders, OnlyTheAskedTensorsAreAllocatedAndRead) {
  TempFile a(testing::u8_file({{"a0", 70001}, {"a1", 3}, {"a2", 99}}, 1));
  auto checkpoint = std::make_shared<const Checkpoint>(Checkpoint::open(std::vector<std::string>{a.path()}));
  std::unique_ptr<Loading> loading =
      Loading::start(checkpoint, c10::Device("cpu"), {}, LoadRequest::only(*checkpoint, {"a1"}));
  const auto all = loading->take_all();
  ASSERT_EQ(all.size(), 1u);
  EXPECT_TRUE(all[0].second.equal(reference::load_file(a.path()).at("a1")));
  EXPECT_EQ(loading->bytes_total(), 3u);
  expect_code(ErrorCode::kInvalidArgument, [&] { loading->wait(0); });
  expect_code(ErrorCode::kInvalidArgument, [&] { LoadRequest::only(*checkpoint, {"ghost"}); });
}

// A file of one tensor of every shape below, F32 with pattern bytes.
std::string ranged_file() {
  const std::string data = pattern_bytes(4 * (60 + 60 + 7 + 1), 5);
  const std::string header = "{" + entry("a", "F32", "3,4,5", 0, 240) + "," + entry("b", "F32", "60", 240, 480) + "," +
                             entry("c", "F32", "7,1", 480, 508) + "," + entry("s", "F32", "", 508, 512) + "}";
  return make_file(header, data);
}

TEST(Loaders, ARangeAlongAnyDimensionEqualsTheReferenceNarrowed) {
  TempFile tmp(ranged_file());
  const TensorMap ref = reference::load_file(tmp.path());
  auto checkpoint = std::make_shared<const Checkpoint>(Checkpoint::open(std::vector<std::string>{tmp.path()}));
  std::size_t cases = 0;
  for (std::size_t i = 0; i < 3; ++i) {
    const at::Tensor& whole = ref.at(checkpoint->shards()[0].header.tensors()[i].name);
    for (std::int64_t dim = 0; dim < whole.dim(); ++dim) {
      const std::int64_t n = whole.size(dim);
      for (std::int64_t start = 0; start <= n; ++start) {
        for (std::int64_t stop = start; stop <= n; ++stop) {
          LoadRequest request;
          request.tensors.assign(4, TensorRequest::skip());
          request.tensors[i] = TensorRequest::range(dim, start, stop);
          LoadOptions options;
          options.threads = 2;
          options.chunk_bytes = kMinChunkBytes;
          std::unique_ptr<Loading> loading = Loading::start(checkpoint, c10::Device("cpu"), options, request);
          const at::Tensor got = loading->wait(i);
          const at::Tensor want = whole.narrow(dim, start, stop - start);
          SCOPED_TRACE(std::to_string(i) + " dim " + std::to_string(dim) + " " + std::to_string(start) + ":" +
                       std::to_string(stop));
          ASSERT_EQ(got.sizes(), want.sizes());
          EXPECT_TRUE(got.is_contiguous());
          EXPECT_TRUE(got.equal(want));
          EXPECT_EQ(loading->bytes_total(), want.nbytes()) << "only the range is read";
          ++cases;
        }
      }
    }
  }
  EXPECT_GT(cases, 100u);
}

TEST(Loaders, F4RangesCountPairsAlongTheLastDimension) {
  const std::string data = pattern_bytes(2 * 4, 3);
  TempFile tmp(make_file("{" + entry("q", "F4", "2,8", 0, 8) + "}", data));
  auto checkpoint = std::make_shared<const Checkpoint>(Checkpoint::open(std::vector<std::string>{tmp.path()}));
  LoadRequest request;
  request.tensors = {TensorRequest::range(1, 1, 3)};
  const at::Tensor got = Loading::start(checkpoint, c10::Device("cpu"), {}, request)->wait(0);
  ASSERT_EQ(got.sizes(), (std::vector<std::int64_t>{2, 2}));
  const auto* bytes = static_cast<const unsigned char*>(got.const_data_ptr());
  for (int r = 0; r < 2; ++r) {
    for (int k = 0; k < 2; ++k) EXPECT_EQ(bytes[r * 2 + k], static_cast<unsigned char>(data[r * 4 + 1 + k]));
  }
}

TEST(Loaders, RequestsThatDoNotFitAreRejectedBeforeAnyRead) {
  TempFile tmp(ranged_file());
  auto checkpoint = std::make_shared<const Checkpoint>(Checkpoint::open(std::vector<std::string>{tmp.path()}));
  const std::vector<TensorRequest> bad = {TensorRequest::range(3, 0, 1), TensorRequest::range(-1, 0, 1),
                                          TensorRequest::range(0, 2, 1), TensorRequest::range(0, 0, 4),
                                          TensorRequest::range(0, -1, 1)};
  for (const TensorRequest& r : bad) {
    LoadRequest request;
    request.tensors.assign(4, TensorRequest::skip());
    request.tensors[0] = r;
    expect_code(ErrorCode::kInvalidArgument, [&] { Loading::start(checkpoint, c10::Device("cpu"), {}, request); });
  }
  LoadRequest scalar;
  scalar.tensors.assign(4, TensorRequest::skip());
  scalar.tensors[3] = TensorRequest::range(0, 0, 1);
  expect_code(ErrorCode::kInvalidArgument, [&] { Loading::start(checkpoint, c10::Device("cpu"), {}, scalar); });
  LoadRequest too_few;
  too_few.tensors.assign(3, TensorRequest{});
  expect_code(ErrorCode::kInvalidArgument, [&] { Loading::start(checkpoint, c10::Device("cpu"), {}, too_few); });
  LoadRequest no_share;
  no_share.part = 2;
  no_share.parts = 2;
  expect_code(ErrorCode::kInvalidArgument, [&] { Loading::start(checkpoint, c10::Device("cpu"), {}, no_share); });
}

TEST(Loaders, SharesOfALoadTogetherReadEveryByteOnce) {
  TempFile a(testing::u8_file({{"a0", 700001}, {"a1", 3}, {"a2", 1 << 20}}, 1));
  TempFile b(testing::u8_file({{"b0", 5}, {"b1", 300000}}, 2));
  auto checkpoint =
      std::make_shared<const Checkpoint>(Checkpoint::open(std::vector<std::string>{a.path(), b.path()}));
  TensorMap ref = reference::load_file(a.path());
  for (const auto& [name, t] : reference::load_file(b.path())) ref.emplace(name, t);
  for (std::size_t parts : {1u, 2u, 3u, 7u}) {
    SCOPED_TRACE(parts);
    std::vector<at::Tensor> assembled;
    for (const auto& [name, t] : ref) assembled.push_back(at::zeros_like(t));
    std::vector<int> written(assembled.size(), 0);
    std::uint64_t total = 0;
    for (std::size_t part = 0; part < parts; ++part) {
      LoadRequest request;
      request.part = part;
      request.parts = parts;
      std::unique_ptr<Loading> loading = Loading::start(checkpoint, c10::Device("cpu"), {}, request);
      const auto mine = loading->take_all();
      total += loading->bytes_total();
      for (const auto& [i, offset, length] : loading->share_pieces(part)) {
        auto* dst = static_cast<std::uint8_t*>(assembled[i].data_ptr()) + offset;
        std::memcpy(dst, static_cast<const std::uint8_t*>(mine[i].second.const_data_ptr()) + offset, length);
        written[i] += static_cast<int>(length);
      }
    }
    EXPECT_EQ(total, 700001u + 3 + (1 << 20) + 5 + 300000) << "the shares' bytes add up to the checkpoint's";
    std::size_t i = 0;
    for (const auto& [name, t] : ref) {
      EXPECT_EQ(written[i], static_cast<int>(t.nbytes())) << name << ": every byte once";
      EXPECT_TRUE(assembled[i].equal(t)) << name;
      ++i;
    }
  }
}

TEST(Loaders, CancellationHookStopsTheLoadWithCancelled) {
  TempFile a(testing::u8_file({{"a0", 8 << 20}}, 1));
  LoadOptions options;
  options.chunk_bytes = kMinChunkBytes;
  options.threads = 2;
  std::atomic<int> polls{0};
  options.cancel = [&] { return ++polls > 10; };
  expect_code(ErrorCode::kCancelled, [&] { load_file(a.path(), c10::Device("cpu"), options); });
  EXPECT_LT(polls.load(), 8 << 4) << "stopped long before every chunk was read";
}

TEST(Loaders, InvalidOptionsAreRejectedBeforeTheFileIsOpened) {
  LoadOptions options;
  options.threads = kMaxThreads + 1;
  expect_code(ErrorCode::kInvalidArgument, [&] { load_file("/nonexistent/file.safetensors", c10::Device("cpu"), options); });
  expect_code(ErrorCode::kInvalidArgument, [&] { load_file("/nonexistent/file.safetensors", c10::Device("meta")); });
}

TEST(Loaders, WaitNextHandsOutEveryRequestedTensorOnceAsItCompletes) {
  TempFile a(testing::u8_file({{"a0", 700001}, {"e", 0}, {"a1", 3}, {"a2", 1 << 20}, {"skip", 9}}, 1));
  auto checkpoint = std::make_shared<const Checkpoint>(Checkpoint::open(std::vector<std::string>{a.path()}));
  LoadOptions options;
  options.threads = 3;
  options.chunk_bytes = kMinChunkBytes;
  std::unique_ptr<Loading> loading =
      Loading::start(checkpoint, c10::Device("cpu"), options, LoadRequest::only(*checkpoint, {"a2", "e", "a0", "a1"}));
  std::vector<std::string> seen;
  const TensorMap ref = reference::load_file(a.path());
  for (;;) {
    const std::optional<std::size_t> i = loading->wait_next();
    ASSERT_TRUE(i.has_value());
    if (*i == loading->size()) break;
    seen.push_back(loading->info(*i).name);
    EXPECT_TRUE(loading->wait(*i).equal(ref.at(seen.back()))) << seen.back() << " is complete when handed out";
  }
  ASSERT_EQ(seen.size(), 4u);
  EXPECT_EQ(seen[0], "e") << "no bytes: first";
  std::sort(seen.begin(), seen.end());
  EXPECT_EQ(seen, (std::vector<std::string>{"a0", "a1", "a2", "e"}));
  EXPECT_EQ(*loading->wait_next(), loading->size()) << "and stays done";
}

}  // namespace
}  // namespace safeload
