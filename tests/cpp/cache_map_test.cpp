// Page-cache residency maps, a read-policy input.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "safeload/fast.h"
#include "test_util.h"

namespace safeload::fast {
namespace {

using testing::TempFile;

TEST(CacheMap, UniformAnswersTheSameForEveryRange) {
  EXPECT_TRUE(CacheMap::uniform(true).cached(12345, 1 << 20));
  EXPECT_FALSE(CacheMap::uniform(false).cached(0, 1));
}

TEST(CacheMap, FromPagesSamplesFirstLastAndBetween) {
  // 10 pages of 100 bytes: 0-3 cached, 4 not, 5-9 cached.
  std::vector<bool> pages(10, true);
  pages[4] = false;
  const CacheMap map = CacheMap::from_pages(pages, 100);
  EXPECT_TRUE(map.cached(0, 400));     // pages 0-3
  EXPECT_FALSE(map.cached(399, 2));    // pages 3-4: the last one is not
  EXPECT_FALSE(map.cached(0, 1000));   // 10 pages, samples 0, 2, 4, 6, 9: page 4 is sampled
  EXPECT_TRUE(map.cached(500, 500));   // pages 5-9
  EXPECT_TRUE(map.cached(450, 0));     // an empty range asks nothing
  EXPECT_FALSE(map.cached(950, 100));  // runs past the known pages
}

TEST(CacheMap, FractionCountsTheSampledPagesCached) {
  // 100 pages of 10 bytes, every tenth not cached.
  std::vector<bool> pages(100, true);
  for (std::size_t p = 5; p < pages.size(); p += 10) pages[p] = false;
  const CacheMap map = CacheMap::from_pages(pages, 10);
  EXPECT_DOUBLE_EQ(map.cached_fraction(0, 100), 0.9) << "10 pages, every one sampled: page 5 is not cached";
  EXPECT_DOUBLE_EQ(map.cached_fraction(60, 40), 1.0) << "pages 6-9 are cached";
  EXPECT_DOUBLE_EQ(map.cached_fraction(50, 10), 0.0) << "page 5 alone";
  EXPECT_DOUBLE_EQ(map.cached_fraction(7, 0), 1.0) << "an empty range asks nothing";
  // A file whose first half is cached: 32 pages sampled of 100, evenly spread, half of them there.
  std::vector<bool> half(100, false);
  std::fill(half.begin(), half.begin() + 50, true);
  EXPECT_DOUBLE_EQ(CacheMap::from_pages(half, 10).cached_fraction(0, 1000), 0.5);
  EXPECT_DOUBLE_EQ(CacheMap::uniform(false).cached_fraction(0, 100), 0.0);
  EXPECT_DOUBLE_EQ(CacheMap::uniform(true).cached_fraction(0, 100), 1.0);
}

TEST(CacheMap, OfAFileJustReadSaysCached) {
  const std::string data(3 * 4096 + 5, 'x');
  TempFile tmp(data);
  const File file = File::open(tmp.path());
  std::string buf(data.size(), '\0');
  file.pread_full(buf.data(), buf.size(), 0);  // now in the page cache
  const CacheMap map = CacheMap::of(file);
  EXPECT_TRUE(map.cached(0, data.size()));
  EXPECT_DOUBLE_EQ(map.cached_fraction(0, data.size()), 1.0);
  CacheMap moved = CacheMap::of(file);
  const CacheMap target(std::move(moved));  // the mapping moves with it; nothing is unmapped twice
  EXPECT_TRUE(target.cached(4096, 10));
}

}  // namespace
}  // namespace safeload::fast
