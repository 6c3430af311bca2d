// The one table of safetensors dtypes. Nothing else in safeload spells a dtype
// string: everything that needs a name or a size asks this table.
//
// Sizes are in bits because F4 and F6_* are sub-byte: a tensor's byte size is
// numel * bits / 8 and must come out whole (see core/layout.cpp).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string_view>

namespace safeload {

// Order follows the format's list; the numeric values are not part of the file
// format and are never written anywhere.
enum class DType : std::uint8_t {
  kBool,
  kU8,
  kI8,
  kI16,
  kU16,
  kI32,
  kU32,
  kI64,
  kU64,
  kF16,
  kBF16,
  kF32,
  kF64,
  kC64,
  kF8_E5M2,
  kF8_E4M3,
  kF8_E8M0,
  kF8_E4M3FNUZ,
  kF8_E5M2FNUZ,
  kF4,
  kF6_E2M3,
  kF6_E3M2,
};

struct DTypeInfo {
  DType dtype;
  std::string_view name;  // as written in a header, e.g. "BF16"
  std::uint32_t bits;     // size of one element in bits
};

inline constexpr std::size_t kDTypeCount = 22;

// All dtypes, in enum order (kDTypeTable[i].dtype == DType(i), checked at
// compile time in dtype.cpp).
extern const std::array<DTypeInfo, kDTypeCount> kDTypeTable;

const DTypeInfo& dtype_info(DType dtype);
// Exact, case-sensitive match on the header spelling; nullopt if unknown.
std::optional<DType> dtype_from_name(std::string_view name);

}  // namespace safeload
