#include <gtest/gtest.h>

#include <set>

#include "safeload/dtype.h"

namespace safeload {
namespace {

TEST(DTypeTable, RowsAreInEnumOrder) {
  for (std::size_t i = 0; i < kDTypeTable.size(); ++i) {
    EXPECT_EQ(static_cast<std::size_t>(kDTypeTable[i].dtype), i);
    EXPECT_EQ(&dtype_info(kDTypeTable[i].dtype), &kDTypeTable[i]);
  }
}

TEST(DTypeTable, NamesAreUniqueAndRoundTrip) {
  std::set<std::string_view> names;
  for (const DTypeInfo& info : kDTypeTable) {
    EXPECT_TRUE(names.insert(info.name).second) << info.name;
    ASSERT_TRUE(dtype_from_name(info.name).has_value()) << info.name;
    EXPECT_EQ(*dtype_from_name(info.name), info.dtype);
  }
}

TEST(DTypeTable, CoversTheFormat) {
  // The format's dtype list (the safetensors specification), written out
  // independently of the table.
  const std::set<std::string_view> format = {
      "BOOL", "U8",  "I8",  "I16", "U16", "I32", "U32", "I64", "U64",
      "F16",  "BF16", "F32", "F64", "C64", "F8_E5M2", "F8_E4M3", "F8_E8M0",
      "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F4", "F6_E2M3", "F6_E3M2"};
  std::set<std::string_view> table;
  for (const DTypeInfo& info : kDTypeTable) table.insert(info.name);
  EXPECT_EQ(table, format);
}

TEST(DTypeTable, SizesInBits) {
  // Every dtype's size, as the format specifies it.
  const std::pair<DType, unsigned> spec[] = {
      {DType::kBool, 8},        {DType::kU8, 8},          {DType::kI8, 8},          {DType::kI16, 16},
      {DType::kU16, 16},        {DType::kI32, 32},        {DType::kU32, 32},        {DType::kI64, 64},
      {DType::kU64, 64},        {DType::kF16, 16},        {DType::kBF16, 16},       {DType::kF32, 32},
      {DType::kF64, 64},        {DType::kC64, 64},        {DType::kF8_E5M2, 8},     {DType::kF8_E4M3, 8},
      {DType::kF8_E8M0, 8},     {DType::kF8_E4M3FNUZ, 8}, {DType::kF8_E5M2FNUZ, 8}, {DType::kF4, 4},
      {DType::kF6_E2M3, 6},     {DType::kF6_E3M2, 6},
  };
  static_assert(sizeof(spec) / sizeof(spec[0]) == kDTypeCount, "every dtype pinned");
  for (const auto& [dtype, bits] : spec) EXPECT_EQ(dtype_info(dtype).bits, bits) << dtype_info(dtype).name;
}

TEST(DTypeTable, LookupIsExactAndCaseSensitive) {
  EXPECT_FALSE(dtype_from_name("f32").has_value());
  EXPECT_FALSE(dtype_from_name("F32 ").has_value());
  EXPECT_FALSE(dtype_from_name("").has_value());
  EXPECT_FALSE(dtype_from_name("float32").has_value());
}

}  // namespace
}  // namespace safeload
