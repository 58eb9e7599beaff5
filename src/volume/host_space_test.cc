// A sparse pool file on a host file system that fills (issue 12, item 8):
// labels and journal get their host space when the pool is formatted, a
// checkpoint reserves its blocks' host space before it writes anything, and
// a data write the host refuses is that request's ENOSPC. The pool never
// stops for it.
#include <gtest/gtest.h>

#include <cerrno>
#include <random>
#include <vector>

#include "volume/testing/test_pool.h"
#include "volume/volume_set_impl.h"

namespace edgestor {
namespace {

using testing::TestPool;

constexpr uint64_t kMiB = 1 << 20;

std::vector<uint8_t> Pattern(size_t n, uint8_t seed) {
  std::vector<uint8_t> out(n);
  for (size_t i = 0; i < n; i++) out[i] = static_cast<uint8_t>(seed * 31 + i * 7 + i / 4096);
  return out;
}

void ExpectFsckClean(FaultDevice& device) {
  auto report = CheckPool(device);
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  ASSERT_TRUE(report->ok()) << report->problems.front();
}

// A pool with volume "v" whose first 4 MiB are written (so they have host
// space), then a full host.
class HostSpace : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(pool_.set().CreateVolume("v", 16 * kMiB).ok());
    ASSERT_TRUE(pool_.set().CreateVolume("w", 16 * kMiB).ok());
    v_ = pool_.Find("v");
    ASSERT_NE(v_, nullptr);
    ASSERT_TRUE(pool_.Write(*v_, 0, Pattern(4 * kMiB, 1)).ok());
    ASSERT_TRUE(pool_.Flush(*v_).ok());
    ASSERT_TRUE(pool_.set().Checkpoint().ok());
    pool_.device().SetHostFull(true);
  }
  bool Stopped() { return dynamic_cast<VolumeSetImpl&>(pool_.set()).CheckUsable().code() != 0; }

  TestPool pool_{64 * kMiB};
  Volume* v_ = nullptr;
};

// Before this fix the journal ring was sparse: the first commit after the
// host filled failed ("writing journal") and stopped the pool.
TEST_F(HostSpace, AJournalCommitNeverMeetsAFullHost) {
  // A discard changes the map without writing data: the flush commits its
  // record to the journal.
  ASSERT_TRUE(pool_.Io(*v_, VolumeOp::kDiscard, 64 * 1024, 64 * 1024).ok());
  Status flushed = pool_.Flush(*v_);
  EXPECT_TRUE(flushed.ok()) << flushed.ToString();
  EXPECT_FALSE(Stopped());
  pool_.device().SetHostFull(false);
  std::mt19937_64 rng(1);
  ASSERT_TRUE(pool_.CrashAndReopen(rng).ok());
  auto read = pool_.Read(*pool_.Find("v"), 0, 128 * 1024);
  ASSERT_TRUE(read.ok());
  auto first = Pattern(4 * kMiB, 1);
  first.resize(128 * 1024);
  std::fill(first.begin() + 64 * 1024, first.end(), 0);
  EXPECT_EQ(*read, first) << "the discard, committed before the crash, is lost";
}

// A checkpoint writes map pages and its chain to blocks the host may never
// have backed: it is refused with ENOSPC before writing anything, the data
// path goes on through the journal, and it succeeds once the host has room.
// (4 KiB clusters: a map page per MiB, so discarding one cluster in each of
// 24 MiB dirties 24 pages, more than the few freed metadata blocks the host
// still backs.)
TEST(HostSpaceCheckpoint, ACheckpointOnAFullHostIsRefusedAndThePoolGoesOn) {
  TestPool pool(64 * kMiB, {.cluster_size = 4096, .journal_bytes = kMiB});
  ASSERT_TRUE(pool.set().CreateVolume("v", 32 * kMiB).ok());
  Volume* v = pool.Find("v");
  auto block = Pattern(4096, 3);
  for (uint64_t mib = 0; mib < 24; mib++) ASSERT_TRUE(pool.Write(*v, mib * kMiB, block).ok());
  ASSERT_TRUE(pool.Flush(*v).ok());
  ASSERT_TRUE(pool.set().Checkpoint().ok());
  pool.device().SetHostFull(true);
  for (uint64_t mib = 0; mib < 24; mib += 2) ASSERT_TRUE(pool.Io(*v, VolumeOp::kDiscard, mib * kMiB, 4096).ok());
  Status checkpoint = pool.set().Checkpoint();
  EXPECT_EQ(checkpoint.code(), ENOSPC) << checkpoint.ToString();
  EXPECT_EQ(dynamic_cast<VolumeSetImpl&>(pool.set()).CheckUsable().code(), 0);
  ASSERT_TRUE(pool.Write(*v, kMiB, Pattern(4096, 4)).ok());  // overwrites a cluster the host backs
  ASSERT_TRUE(pool.Flush(*v).ok());
  pool.device().SetHostFull(false);
  ASSERT_TRUE(pool.set().Checkpoint().ok());
  ASSERT_TRUE(pool.CloseAndReopen().ok());
  ExpectFsckClean(pool.device());
  v = pool.Find("v");
  for (uint64_t mib = 0; mib < 24; mib++) {
    auto read = pool.Read(*v, mib * kMiB, 4096);
    ASSERT_TRUE(read.ok());
    EXPECT_EQ(*read, mib % 2 == 0 ? std::vector<uint8_t>(4096, 0) : mib == 1 ? Pattern(4096, 4) : block) << mib;
  }
}

// A control operation on a full host fails with ENOSPC and changes nothing.
TEST_F(HostSpace, AControlOperationOnAFullHostFailsCleanly) {
  Status snap = pool_.set().CreateSnapshot("v", "s").status();
  EXPECT_EQ(snap.code(), ENOSPC) << snap.ToString();
  EXPECT_FALSE(Stopped());
  EXPECT_EQ(pool_.set().FindVolume("v@s").status().code(), ENOENT);
  pool_.device().SetHostFull(false);
  EXPECT_TRUE(pool_.set().CreateSnapshot("v", "s").ok());
}

// A write to space the host never backed fails alone: other requests, the
// other volume, flushes and checkpoints go on.
TEST_F(HostSpace, ADataWriteOnAFullHostIsThatRequestsENOSPC) {
  Volume* w = pool_.Find("w");
  ASSERT_NE(w, nullptr);
  Status refused = pool_.Write(*w, 0, Pattern(64 * 1024, 4));
  EXPECT_EQ(refused.code(), ENOSPC) << refused.ToString();
  EXPECT_FALSE(Stopped());
  auto data = Pattern(64 * 1024, 5);
  ASSERT_TRUE(pool_.Write(*v_, 0, data).ok());
  ASSERT_TRUE(pool_.Flush(*v_).ok());
  ASSERT_TRUE(pool_.Flush(*w).ok());
  pool_.device().SetHostFull(false);
  ASSERT_TRUE(pool_.Write(*w, 0, data).ok());
  ASSERT_TRUE(pool_.Flush(*w).ok());
  ASSERT_TRUE(pool_.CloseAndReopen().ok());
  ExpectFsckClean(pool_.device());
  auto read = pool_.Read(*pool_.Find("w"), 0, data.size());
  ASSERT_TRUE(read.ok());
  EXPECT_EQ(*read, data);
}

TEST(HostSpacePreallocation, FormatBacksLabelsAndJournalOnly) {
  TestPool pool(64 * kMiB, {.journal_bytes = kMiB});
  uint64_t backed = pool.device().host_backed_blocks();
  EXPECT_GE(backed, 4u + kMiB / 4096);
  EXPECT_LT(backed, 64 * kMiB / 4096 / 2) << "without --preallocate the pool file stays sparse";
}

TEST(HostSpacePreallocation, PreallocateBacksTheWholeDevice) {
  TestPool pool(64 * kMiB, {.preallocate = true});
  EXPECT_EQ(pool.device().host_backed_blocks(), 64 * kMiB / 4096);
  pool.device().SetHostFull(true);
  ASSERT_TRUE(pool.set().CreateVolume("v", 16 * kMiB).ok());
  Volume* v = pool.Find("v");
  ASSERT_TRUE(pool.Write(*v, 0, Pattern(8 * kMiB, 6)).ok());
  ASSERT_TRUE(pool.Flush(*v).ok());
  ASSERT_TRUE(pool.set().Checkpoint().ok());
}

}  // namespace
}  // namespace edgestor
