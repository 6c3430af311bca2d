// The torch layer's mapping of dtypes, sizes and devices, and its allocation.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdint>

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

TEST(TorchAdapter, AllocationFailureIsOutOfMemoryNamingTheTensor) {
  // 2^50 bytes: no machine this runs on backs it, whatever its overcommit.
  TensorInfo t = info(DType::kU8, {1ll << 50});
  t.name = "huge";
  t.end = 1ull << 50;
  try {
    empty_tensor(t, "f.safetensors", c10::Device("cpu"));
    FAIL() << "allocated a petabyte";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kOutOfMemory);
    EXPECT_NE(std::string(e.what()).find("huge"), std::string::npos) << e.what();
  }
}

TEST(TorchAdapter, PartSizesAreAllocatedAligned) {
  const std::vector<std::int64_t> part = {2, 3};
  TensorInfo t = info(DType::kF32, {7, 3});
  t.end = 4 * 21;
  const at::Tensor x = empty_tensor(t, "f", c10::Device("cpu"), &part);
  EXPECT_EQ(x.sizes(), (std::vector<std::int64_t>{2, 3}));
  EXPECT_EQ(x.scalar_type(), at::kFloat);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(x.const_data_ptr()) % 64, 0u);
}

}  // namespace
}  // namespace safeload
