#include "safeload/dtype.h"

namespace safeload {
namespace {

constexpr std::array<DTypeInfo, kDTypeCount> make_table() {
  return {{
      {DType::kBool, "BOOL", 8},
      {DType::kU8, "U8", 8},
      {DType::kI8, "I8", 8},
      {DType::kI16, "I16", 16},
      {DType::kU16, "U16", 16},
      {DType::kI32, "I32", 32},
      {DType::kU32, "U32", 32},
      {DType::kI64, "I64", 64},
      {DType::kU64, "U64", 64},
      {DType::kF16, "F16", 16},
      {DType::kBF16, "BF16", 16},
      {DType::kF32, "F32", 32},
      {DType::kF64, "F64", 64},
      {DType::kC64, "C64", 64},
      {DType::kF8_E5M2, "F8_E5M2", 8},
      {DType::kF8_E4M3, "F8_E4M3", 8},
      {DType::kF8_E8M0, "F8_E8M0", 8},
      {DType::kF8_E4M3FNUZ, "F8_E4M3FNUZ", 8},
      {DType::kF8_E5M2FNUZ, "F8_E5M2FNUZ", 8},
      {DType::kF4, "F4", 4},
      {DType::kF6_E2M3, "F6_E2M3", 6},
      {DType::kF6_E3M2, "F6_E3M2", 6},
  }};
}

constexpr std::array<DTypeInfo, kDTypeCount> kTable = make_table();  // for the static_asserts

constexpr bool table_is_in_enum_order() {
  for (std::size_t i = 0; i < kTable.size(); ++i) {
    if (static_cast<std::size_t>(kTable[i].dtype) != i) return false;
  }
  return true;
}

static_assert(kTable.size() == static_cast<std::size_t>(DType::kF6_E3M2) + 1,
              "every DType needs exactly one table row");
static_assert(table_is_in_enum_order(), "table rows must be in enum order");

}  // namespace

const std::array<DTypeInfo, kDTypeCount> kDTypeTable = kTable;

const DTypeInfo& dtype_info(DType dtype) { return kDTypeTable[static_cast<std::size_t>(dtype)]; }

std::optional<DType> dtype_from_name(std::string_view name) {
  for (const DTypeInfo& info : kDTypeTable) {
    if (info.name == name) return info.dtype;
  }
  return std::nullopt;
}

}  // namespace safeload
