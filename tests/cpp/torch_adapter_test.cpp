#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstring>

#include "safeload/torch.h"
#include "test_util.h"

namespace safeload {
namespace {

using testing::entry;
using testing::expect_code;
using testing::make_file;
using testing::pattern_bytes;
using testing::TempFile;

TensorInfo info(DType dtype, std::vector<std::int64_t> shape) {
  TensorInfo t;
  t.name = "t";
  t.dtype = dtype;
  t.shape = std::move(shape);
  return t;
}

TEST(TorchAdapter, EveryDtypeMapsOrIsUnsupported) {
  for (const DTypeInfo& d : kDTypeTable) {
    SCOPED_TRACE(std::string(d.name));
    const TensorInfo t = info(d.dtype, {4});
    if (d.dtype == DType::kF6_E2M3 || d.dtype == DType::kF6_E3M2) {
      expect_code(ErrorCode::kUnsupportedDtype, [&] { torch_dtype(t, "f"); });
    } else {
      const c10::ScalarType st = torch_dtype(t, "f");
      // Element size agrees with the table (F4 is packed in pairs).
      const std::size_t bits = d.dtype == DType::kF4 ? 8 : d.bits;
      EXPECT_EQ(c10::elementSize(st) * 8, bits);
    }
  }
}

TEST(TorchAdapter, F4PacksPairsAlongTheLastDimension) {
  EXPECT_EQ(torch_sizes(info(DType::kF4, {3, 8}), "f"), (std::vector<std::int64_t>{3, 4}));
  EXPECT_EQ(torch_sizes(info(DType::kF4, {0}), "f"), (std::vector<std::int64_t>{0}));
  expect_code(ErrorCode::kUnsupportedDtype, [] { torch_sizes(info(DType::kF4, {2, 3}), "f"); });
}

TEST(TorchAdapter, RejectsUnsupportedDtypeBeforeReading) {
  TempFile tmp(make_file("{" + entry("a", "F32", "1", 0, 4) + "," + entry("b", "F6_E2M3", "4", 4, 7) + "}",
                         pattern_bytes(7, 1)));
  expect_code(ErrorCode::kUnsupportedDtype, [&] { reference::load_file(tmp.path()); });
  expect_code(ErrorCode::kUnsupportedDtype, [&] { load_file(tmp.path()); });
}

TEST(TorchAdapter, RejectsInvalidArgument) {
  expect_code(ErrorCode::kInvalidArgument, [] { parse_device("gpu0"); });
  expect_code(ErrorCode::kInvalidArgument, [] { parse_device(""); });
  expect_code(ErrorCode::kInvalidArgument, [] { parse_device("cpu:1"); });
  expect_code(ErrorCode::kInvalidArgument, [] { parse_device("meta"); });
  EXPECT_TRUE(parse_device("cpu:0").is_cpu());
  EXPECT_TRUE(parse_device("cpu").is_cpu());
}

TEST(Loaders, FastMatchesReferenceOnEveryPathAndAlignsData) {
  const std::string data = pattern_bytes(3 + 8 * 7 + 2 + 0 + 40, 9);
  const std::string header = "{" + entry("odd", "U8", "3", 0, 3) + "," + entry("f64", "F64", "7", 3, 59) + "," +
                             entry("bf", "BF16", "", 59, 61) + "," + entry("z", "F32", "0,2", 61, 61) + "," +
                             entry("c", "C64", "5", 61, 101) + "}";
  TempFile tmp(make_file(header, data));
  const TensorMap ref = reference::load_file(tmp.path());
  LoadOptions staged;
  staged.staged = true;
  staged.chunk_bytes = kMinChunkBytes + 5;
  staged.staging_bytes = kMinStagingBytes;
  LoadOptions small_chunks;
  small_chunks.chunk_bytes = kMinChunkBytes;
  small_chunks.threads = 3;
  for (const LoadOptions& options : {LoadOptions{}, staged, small_chunks}) {
    const TensorMap fast = load_file(tmp.path(), c10::Device("cpu"), options);
    ASSERT_EQ(fast.size(), ref.size());
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
  const std::vector<std::string> only = {"a1"};
  std::unique_ptr<Loading> loading =
      Loading::start(Checkpoint::open(std::vector<std::string>{a.path()}), c10::Device("cpu"), {}, &only);
  const auto all = loading->take_all();
  ASSERT_EQ(all.size(), 1u);
  EXPECT_TRUE(all[0].second.equal(reference::load_file(a.path()).at("a1")));
  EXPECT_EQ(loading->bytes_total(), 3u);
  expect_code(ErrorCode::kInvalidArgument, [&] { loading->wait(0); });
  const std::vector<std::string> ghost = {"ghost"};
  expect_code(ErrorCode::kInvalidArgument, [&] {
    Loading::start(Checkpoint::open(std::vector<std::string>{a.path()}), c10::Device("cpu"), {}, &ghost);
  });
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

}  // namespace
}  // namespace safeload
