// The load options' bounds, checked once for every entry point.
#include <gtest/gtest.h>

#include "safeload/options.h"
#include "test_util.h"

namespace safeload {
namespace {

TEST(Options, EveryBoundIsChecked) {
  EXPECT_NO_THROW(validate(LoadOptions{}));
  const auto bad = [](auto mutate) {
    LoadOptions o;
    mutate(o);
    testing::expect_code(ErrorCode::kInvalidArgument, [&] { validate(o); });
  };
  bad([](LoadOptions& o) { o.threads = kMaxThreads + 1; });
  bad([](LoadOptions& o) { o.chunk_bytes = kMinChunkBytes - 1; });
  bad([](LoadOptions& o) { o.chunk_bytes = kMaxChunkBytes + 1; });
  bad([](LoadOptions& o) { o.chunk_bytes = 1ull << 62; });
  bad([](LoadOptions& o) { o.staging_bytes = 0; });
  bad([](LoadOptions& o) { o.staging_bytes = kMinStagingBytes - 1; });
  bad([](LoadOptions& o) { o.staging_bytes = kMaxStagingBytes + 1; });
  bad([](LoadOptions& o) { o.chunk_bytes = 4ull << 20, o.staging_bytes = 2ull << 20; });
  testing::expect_code(ErrorCode::kInvalidArgument, [] { parse_io("sometimes"); });
  EXPECT_EQ(parse_io(io_name(LoadOptions::Io::kUncached)), LoadOptions::Io::kUncached);
  testing::expect_code(ErrorCode::kInvalidArgument, [] { parse_backend("mmapped"); });
  EXPECT_EQ(parse_backend("pread"), LoadOptions::Backend::kPread);
}

}  // namespace
}  // namespace safeload
