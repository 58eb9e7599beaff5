#include "base/bounce_cache.h"

#include <gtest/gtest.h>

namespace edgestor {
namespace {

TEST(BounceCache, ReusesKeptBuffersOfAFittingSize) {
  BounceCache cache(8 << 20);
  uint64_t capacity = 0;
  AlignedBuffer a = cache.Take(1 << 20, &capacity);
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(capacity, 1u << 20);
  uint8_t* first = a.get();
  cache.Give(std::move(a), capacity);
  EXPECT_EQ(cache.kept_bytes(), 1u << 20);
  AlignedBuffer b = cache.Take(1000 * 1000, &capacity);  // fits the kept one
  EXPECT_EQ(b.get(), first);
  EXPECT_EQ(capacity, 1u << 20);
  EXPECT_EQ(cache.kept_bytes(), 0u);
  AlignedBuffer c = cache.Take(5000, &capacity);  // nothing kept: a new one, rounded up
  EXPECT_EQ(capacity, 8192u);
  EXPECT_EQ(cache.reused(), 1u);
  EXPECT_EQ(cache.allocated(), 2u);
  cache.Give(std::move(b), 1 << 20);
  cache.Give(std::move(c), 8192);
  AlignedBuffer d = cache.Take(4096, &capacity);  // the smallest that fits
  EXPECT_EQ(capacity, 8192u);
  cache.Give(std::move(d), capacity);
}

TEST(BounceCache, KeepsNoMoreThanItsBoundAndClearFreesAll) {
  BounceCache cache(2 << 20);
  std::vector<AlignedBuffer> taken;
  uint64_t capacity = 0;
  for (int i = 0; i < 3; i++) taken.push_back(cache.Take(1 << 20, &capacity));
  for (auto& buffer : taken) cache.Give(std::move(buffer), 1 << 20);
  EXPECT_EQ(cache.kept_bytes(), 2u << 20);  // the third was freed
  cache.Clear();
  EXPECT_EQ(cache.kept_bytes(), 0u);
  cache.Take(1 << 20, &capacity);
  EXPECT_EQ(cache.reused(), 0u);
}

}  // namespace
}  // namespace edgestor
