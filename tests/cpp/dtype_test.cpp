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
  EXPECT_EQ(dtype_info(DType::kF4).bits, 4u);
  EXPECT_EQ(dtype_info(DType::kF6_E2M3).bits, 6u);
  EXPECT_EQ(dtype_info(DType::kF6_E3M2).bits, 6u);
  EXPECT_EQ(dtype_info(DType::kBool).bits, 8u);
  EXPECT_EQ(dtype_info(DType::kBF16).bits, 16u);
  EXPECT_EQ(dtype_info(DType::kC64).bits, 64u);
  for (const DTypeInfo& info : kDTypeTable) {
    EXPECT_TRUE(info.bits == 4 || info.bits == 6 || info.bits % 8 == 0) << info.name;
  }
}

TEST(DTypeTable, LookupIsExactAndCaseSensitive) {
  EXPECT_FALSE(dtype_from_name("f32").has_value());
  EXPECT_FALSE(dtype_from_name("F32 ").has_value());
  EXPECT_FALSE(dtype_from_name("").has_value());
  EXPECT_FALSE(dtype_from_name("float32").has_value());
}

}  // namespace
}  // namespace safeload
