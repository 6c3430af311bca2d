#include <gtest/gtest.h>

#include <cctype>
#include <set>

#include "safeload/error.h"

namespace safeload {
namespace {

TEST(ErrorCodes, NamesAreUniqueUpperSnakeCase) {
  std::set<std::string_view> names;
  for (int i = 0; i < kErrorCodeCount; ++i) {
    const std::string_view name = error_code_name(static_cast<ErrorCode>(i));
    EXPECT_TRUE(names.insert(name).second) << name;
    ASSERT_FALSE(name.empty());
    for (char c : name) EXPECT_TRUE(std::isupper(static_cast<unsigned char>(c)) || c == '_' || std::isdigit(static_cast<unsigned char>(c))) << name;
  }
}

TEST(ErrorCodes, ErrorCarriesCodeMessageAndErrno) {
  const Error e(ErrorCode::kIo, "boom", 5);
  EXPECT_EQ(e.code(), ErrorCode::kIo);
  EXPECT_EQ(e.code_name(), "IO");
  EXPECT_EQ(e.sys_errno(), 5);
  EXPECT_STREQ(e.what(), "boom");
}

TEST(ErrorCodesDeathTest, InternalAssertAborts) {
  EXPECT_DEATH(SAFELOAD_INTERNAL_ASSERT(1 + 1 == 3, "arithmetic"), "safeload internal error");
}

}  // namespace
}  // namespace safeload
