#include "pool/allocator.h"

#include <gtest/gtest.h>

#include <set>

namespace edgestor {
namespace {

TEST(Allocator, HandsOutAlignedDistinctClusters) {
  Allocator a(1024, 16);
  std::set<uint64_t> seen;
  for (int i = 0; i < 64; i++) {
    auto c = a.AllocateCluster(0);
    ASSERT_TRUE(c.ok());
    EXPECT_EQ(c.value() % 16, 0u);
    EXPECT_TRUE(seen.insert(c.value()).second);
  }
  EXPECT_EQ(a.free_blocks(), 0u);
  EXPECT_EQ(a.AllocateCluster(0).status().code(), ENOSPC);
}

TEST(Allocator, RespectsReserve) {
  Allocator a(64, 16);
  ASSERT_TRUE(a.AllocateCluster(32).ok());
  ASSERT_TRUE(a.AllocateCluster(32).ok());
  EXPECT_EQ(a.AllocateCluster(32).status().code(), ENOSPC);
  EXPECT_TRUE(a.AllocateBlock().ok());  // metadata may use the reserve
}

TEST(Allocator, MetadataBlocksComeFromTheEnd) {
  Allocator a(256, 16);
  auto b = a.AllocateBlock();
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b.value(), 255u);
  auto c = a.AllocateCluster(0);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c.value(), 0u);
}

TEST(Allocator, SkipsPartlyUsedClustersAndReusesFreed) {
  Allocator a(64, 16);
  EXPECT_TRUE(a.MarkUsed(3, 1));
  auto c = a.AllocateCluster(0);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c.value(), 16u);
  EXPECT_TRUE(a.Free(16, 16));
  EXPECT_FALSE(a.Free(16, 16));  // double free is reported
  EXPECT_FALSE(a.MarkUsed(3, 1)); // double use is reported
  EXPECT_EQ(a.used_blocks(), 1u);
}

TEST(Allocator, ClusterOf64BlocksUsesWholeWords) {
  Allocator a(256, 64);
  for (int i = 0; i < 4; i++) ASSERT_TRUE(a.AllocateCluster(0).ok());
  EXPECT_EQ(a.AllocateCluster(0).status().code(), ENOSPC);
}

}  // namespace
}  // namespace edgestor
