#include <ATen/ATen.h>
#include <gtest/gtest.h>

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
  staged.path = LoadOptions::Path::kStaged;
  staged.chunk_bytes = 5;
  staged.staging_bytes = 64 * 1024;
  LoadOptions tiny_chunks;
  tiny_chunks.chunk_bytes = 3;
  tiny_chunks.threads = 3;
  for (const LoadOptions& options : {LoadOptions{}, staged, tiny_chunks}) {
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

}  // namespace
}  // namespace safeload
