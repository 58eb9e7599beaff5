// Packed compressed frames (format version 5): two frames share the block
// where one ends and the next begins; the pool frees such a block with the
// second of them, and recovery accepts shared edges only where the frames'
// sectors do not overlap.
#include <gtest/gtest.h>

#include "io/borrowed_device.h"
#include "io/fault_device.h"
#include "pool/pool.h"

namespace edgestor {
namespace {

constexpr uint64_t kMiB = 1 << 20;

std::unique_ptr<Pool> NewPool(Device& device) {
  auto pool = Pool::Format(Borrow(device), {.cluster_size = 65536, .journal_bytes = kMiB});
  EXPECT_TRUE(pool.ok()) << pool.status().ToString();
  return pool.ok() ? std::move(pool).value() : nullptr;
}

// Three frames over blocks [b, b+5): 13 sectors from sector 0, 11 sectors
// from sector 13 (block b+1, head 5), and 9 from sector 24 (block b+3: the
// second frame ended at a block boundary).
std::vector<BlockRun> ThreeFrames(uint64_t b) {
  return {{b, 2, 0, 3}, {b + 1, 2, 5, 0}, {b + 3, 2, 0, 7}};
}

// A pool holding the three frames packed over one fresh run of 5 blocks.
struct PackedPool {
  FaultDevice device{64 * kMiB};
  std::unique_ptr<Pool> pool = NewPool(device);
  uint64_t free_at_start = pool ? pool->free_blocks() : 0;
  std::vector<BlockRun> frames;

  PackedPool() {
    auto first = pool ? pool->AllocateRun(5) : Result<uint64_t>(Status(EIO, "no pool"));
    EXPECT_TRUE(first.ok());
    if (!first.ok()) return;
    frames = ThreeFrames(first.value());
    pool->SharePackedEdges(frames);
  }
};

TEST(PackedRuns, AnEdgeBlockIsFreedWithTheSecondFrameInEitherOrder) {
  for (bool forward : {true, false}) {
    SCOPED_TRACE(forward ? "first frame freed first" : "last frame freed first");
    PackedPool packed;
    ASSERT_EQ(packed.frames.size(), 3u);
    auto& [device, pool, free_at_start, frames] = packed;
    EXPECT_EQ(pool->free_blocks(), free_at_start - 5);
    std::vector<uint64_t> expect_free = forward ? std::vector<uint64_t>{1, 3, 5} : std::vector<uint64_t>{2, 3, 5};
    for (size_t i = 0; i < frames.size(); i++) {
      pool->FreeUnreferenced(frames[forward ? i : frames.size() - 1 - i]);
      EXPECT_EQ(pool->free_blocks(), free_at_start - 5 + expect_free[i]) << "after freeing " << i + 1 << " frames";
    }
  }
}

TEST(PackedRuns, ADroppedReferenceFreesOnlyTheFramesOwnBlocks) {
  PackedPool packed;
  ASSERT_EQ(packed.frames.size(), 3u);
  auto& [device, pool, free_at_start, frames] = packed;
  // A snapshot shares the middle frame: its reference is keyed by its first
  // block, which the frame before it ends in.
  pool->AddReference(frames[1].block);
  EXPECT_EQ(pool->References(frames[1].block), 2u);
  pool->DropHeldReference(frames[1]);
  EXPECT_EQ(pool->free_blocks(), free_at_start - 5);
  pool->DropHeldReference(frames[1]);  // the last one: its blocks past the shared edge
  EXPECT_EQ(pool->free_blocks(), free_at_start - 5 + 1);
  pool->DropHeldReference(frames[0]);
  pool->DropHeldReference(frames[2]);
  EXPECT_EQ(pool->free_blocks(), free_at_start);
}

class PackedRecovery : public ::testing::Test {
 protected:
  void SetUp() override {
    pool_ = NewPool(device_);
    ASSERT_TRUE(pool_);
  }
  FaultDevice device_{64 * kMiB};
  std::unique_ptr<Pool> pool_;
  const uint64_t b_ = 1000;
};

TEST_F(PackedRecovery, AcceptsFramesSharingAnEdgeAndFreesItWithTheSecond) {
  const uint64_t free_at_start = pool_->free_blocks();
  std::vector<BlockRun> frames = ThreeFrames(b_);
  // In any order, and a second reference to a packed frame.
  EXPECT_TRUE(pool_->MarkReferenced(frames[1]));
  EXPECT_TRUE(pool_->MarkReferenced(frames[2]));
  EXPECT_TRUE(pool_->MarkReferenced(frames[0]));
  EXPECT_TRUE(pool_->MarkReferenced(frames[1]));
  pool_->FinishRecovery();
  EXPECT_EQ(pool_->free_blocks(), free_at_start - 5);
  EXPECT_EQ(pool_->References(frames[1].block), 2u);
  pool_->DropHeldReference(frames[1]);
  pool_->DropHeldReference(frames[0]);
  EXPECT_EQ(pool_->free_blocks(), free_at_start - 5 + 1);  // block b; b+1 is now the middle frame's alone
  pool_->DropHeldReference(frames[1]);
  pool_->DropHeldReference(frames[2]);
  EXPECT_EQ(pool_->free_blocks(), free_at_start);
}

TEST_F(PackedRecovery, RefusesOverlappingSectors) {
  EXPECT_TRUE(pool_->MarkReferenced({b_, 2, 0, 3}));         // ends at sector 5 of b+1
  EXPECT_FALSE(pool_->MarkReferenced({b_ + 1, 2, 4, 0}));    // starts at sector 4 of it
}

TEST_F(PackedRecovery, RefusesAWholeRunOverAPackedEdge) {
  EXPECT_TRUE(pool_->MarkReferenced({b_, 2, 0, 3}));
  EXPECT_FALSE(pool_->MarkReferenced({b_ + 1, 1}));
  EXPECT_FALSE(pool_->MarkReferenced({b_ + 1, 16}));
}

TEST_F(PackedRecovery, RefusesASecondFrameStartingInTheSameBlock) {
  EXPECT_TRUE(pool_->MarkReferenced({b_, 1, 1, 5}));   // sectors 1..2
  EXPECT_FALSE(pool_->MarkReferenced({b_, 1, 4, 2}));  // sectors 4..5: no overlap, but the same first block
}

TEST_F(PackedRecovery, RefusesAThirdFrameInABlock) {
  EXPECT_TRUE(pool_->MarkReferenced({b_, 2, 0, 6}));      // ends at sector 2 of b+1
  EXPECT_TRUE(pool_->MarkReferenced({b_ + 1, 1, 2, 4}));  // sectors 2..3 of b+1
  EXPECT_FALSE(pool_->MarkReferenced({b_ + 1, 2, 5, 0}));  // a second start in b+1
}

TEST_F(PackedRecovery, ASecondReferenceMustHaveTheSameEdges) {
  EXPECT_TRUE(pool_->MarkReferenced({b_, 2, 0, 3}));
  EXPECT_FALSE(pool_->MarkReferenced({b_, 2, 0, 2}));
  EXPECT_FALSE(pool_->MarkReferenced({b_, 2}));
  EXPECT_TRUE(pool_->MarkReferenced({b_ + 4, 2}));
  EXPECT_FALSE(pool_->MarkReferenced({b_ + 4, 2, 0, 1}));
}

TEST_F(PackedRecovery, ASecondReferenceMustHaveTheSameLength) {
  // The frame before ends in b+1, where the second one starts: that end
  // hides the second frame's length from the run bits.
  EXPECT_TRUE(pool_->MarkReferenced({b_, 2, 0, 3}));
  EXPECT_TRUE(pool_->MarkReferenced({b_ + 1, 3, 5, 0}));
  EXPECT_FALSE(pool_->MarkReferenced({b_ + 1, 1, 5, 0}));
  EXPECT_FALSE(pool_->MarkReferenced({b_ + 1, 4, 5, 0}));
  EXPECT_TRUE(pool_->MarkReferenced({b_ + 1, 3, 5, 0}));
}

TEST_F(PackedRecovery, RefusesImpossibleEdges) {
  EXPECT_FALSE(pool_->MarkReferenced({b_, 1, 4, 4}));  // nothing left of the block
  EXPECT_FALSE(pool_->MarkReferenced({b_, 2, 8, 0}));
  EXPECT_FALSE(pool_->MarkReferenced({b_, 2, 0, 8}));
}

}  // namespace
}  // namespace edgestor
