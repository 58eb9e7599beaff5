// Hardening of the control path: a full pool, huge sizes and internal names
// give the caller a clean error and never stop the pool (../shared/BRIEF.md,
// invariants 4 and 5).
#include <gtest/gtest.h>

#include <cerrno>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "volume/testing/test_pool.h"
#include "volume/volume_set_impl.h"

namespace edgestor {
namespace {

using testing::TestPool;

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kTiB = 1ull << 40;

std::vector<uint8_t> Pattern(size_t n, uint8_t seed) {
  std::vector<uint8_t> out(n);
  for (size_t i = 0; i < n; i++) out[i] = static_cast<uint8_t>(seed * 31 + i * 7 + i / 4096);
  return out;
}

VolumeSetImpl& Impl(TestPool& pool) { return dynamic_cast<VolumeSetImpl&>(pool.set()); }

void ExpectFsckClean(FaultDevice& device) {
  auto report = CheckPool(device);
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  ASSERT_TRUE(report->ok()) << report->problems.front();
}

// Writes `volume` from the start in 1 MiB steps until the pool says ENOSPC.
void FillUntilFull(TestPool& pool, const std::string& volume) {
  Volume* fill = pool.Find(volume);
  ASSERT_NE(fill, nullptr);
  auto chunk = Pattern(kMiB, 9);
  Status s;
  uint64_t offset = 0;
  for (; offset + kMiB <= fill->size(); offset += kMiB) {
    s = pool.Write(*fill, offset, chunk);
    if (!s.ok()) break;
  }
  ASSERT_EQ(s.code(), ENOSPC) << "the pool never filled: " << s.ToString();
  ASSERT_TRUE(pool.Flush(*fill).ok());
}

// The volume `w` (never snapshotted, so it owns every cluster it wrote)
// still takes overwrites and flushes, and reads what was written.
void ExpectDataPathWorks(TestPool& pool, const std::vector<uint8_t>& v_content, const std::string& after) {
  SCOPED_TRACE("after " + after);
  Volume* v = pool.Find("w");
  ASSERT_NE(v, nullptr);
  Status written = pool.Write(*v, 0, v_content);
  ASSERT_TRUE(written.ok()) << "overwriting owned space failed: " << written.ToString();
  Status flushed = pool.Flush(*v);
  ASSERT_TRUE(flushed.ok()) << flushed.ToString();
  auto back = pool.Read(*v, 0, v_content.size());
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back.value(), v_content);
}

void ExpectCleanOutcome(const Status& s, const std::string& what) {
  EXPECT_TRUE(s.ok() || s.code() == ENOSPC || s.code() == EFBIG) << what << ": " << s.ToString();
  if (!s.ok()) {
    EXPECT_EQ(s.message().find("stopped"), std::string::npos) << what << ": " << s.ToString();
  }
}

struct FullPool {
  TestPool pool{64 * kMiB};
  std::vector<uint8_t> v_content = Pattern(4 * kMiB, 1);

  // v (4 MiB, written, with snapshot v@before), w (4 MiB, written, never
  // snapshotted), big (2 TiB, thin, empty), fill (written until the pool is
  // full).
  void SetUp() {
    VolumeSet& set = pool.set();
    Volume* v = set.CreateVolume("v", 4 * kMiB).value();
    ASSERT_TRUE(pool.Write(*v, 0, v_content).ok());
    ASSERT_TRUE(set.CreateSnapshot("v", "before").ok());
    Volume* w = set.CreateVolume("w", 4 * kMiB).value();
    ASSERT_TRUE(pool.Write(*w, 0, v_content).ok());
    ASSERT_TRUE(set.CreateVolume("big", 2 * kTiB).ok());
    ASSERT_TRUE(set.CreateVolume("fill", 256 * kMiB).ok());
    FillUntilFull(pool, "fill");
  }
};

// Every control operation that needs metadata space, on a full pool: each
// succeeds or fails cleanly, the data path goes on, and freeing space makes
// the refused ones work.
TEST(FullPool, ControlOperationsFailCleanlyAndTheDataPathGoesOn) {
  FullPool full;
  full.SetUp();
  VolumeSet& set = full.pool.set();
  using Op = std::pair<std::string, std::function<Status()>>;
  std::vector<Op> ops = {
      {"snapshot of a 2 TiB volume", [&] { return set.CreateSnapshot("big", "s1").status(); }},
      {"snapshot of a small volume", [&] { return set.CreateSnapshot("v", "s1").status(); }},
      {"create a 2 TiB volume", [&] { return set.CreateVolume("big2", 2 * kTiB).status(); }},
      {"grow to 4 TiB", [&] { return set.ResizeVolume("big", 4 * kTiB, false); }},
      {"clone", [&] { return set.CloneSnapshot("v", "before", "c").status(); }},
      {"rollback keeping the current content", [&] { return set.Rollback("v", "before", true).status(); }},
      {"compression setting", [&] { return set.SetVolumeCompression("v", {Compression::kLz4, 0}); }},
      {"checkpoint", [&] { return set.Checkpoint(); }},
  };
  int refused = 0;
  for (auto& [what, op] : ops) {
    Status s = op();
    ExpectCleanOutcome(s, what);
    refused += !s.ok();
    ExpectDataPathWorks(full.pool, full.v_content, what);
  }
  EXPECT_GE(refused, 2) << "the pool was not full enough to refuse anything";
  // Freeing space always works on a full pool, and then the refused work does.
  ASSERT_TRUE(set.DeleteVolume("fill").ok());
  ASSERT_TRUE(set.CreateSnapshot("big", "s2").ok());
  ASSERT_TRUE(set.ResizeVolume("big", 4 * kTiB, false).ok());
  ExpectDataPathWorks(full.pool, full.v_content, "freeing space");
  ASSERT_TRUE(full.pool.CloseAndReopen().ok());
  ExpectDataPathWorks(full.pool, full.v_content, "reopening");
  ASSERT_TRUE(Impl(full.pool).CheckReferencesForTest().ok());
  ASSERT_TRUE(full.pool.Close().ok());
  ExpectFsckClean(full.pool.device());
}

// Discarding frees space on a full pool, and the freed space takes writes.
TEST(FullPool, DiscardFreesSpaceThatWritesThenUse) {
  FullPool full;
  full.SetUp();
  Volume* fill = full.pool.Find("fill");
  ASSERT_TRUE(full.pool.Io(*fill, VolumeOp::kDiscard, 0, 8 * kMiB).ok());
  ASSERT_TRUE(full.pool.Flush(*fill).ok());
  Volume* v = full.pool.Find("v");
  ASSERT_TRUE(full.pool.set().ResizeVolume("v", 8 * kMiB, false).ok());
  auto more = Pattern(4 * kMiB, 3);
  ASSERT_TRUE(full.pool.Write(*v, 4 * kMiB, more).ok());
  ASSERT_TRUE(full.pool.Flush(*v).ok());
  ASSERT_TRUE(full.pool.CloseAndReopen().ok());
  auto back = full.pool.Read(*full.pool.Find("v"), 4 * kMiB, 4 * kMiB);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back.value(), more);
}

// Sizes the pool could never describe are refused before anything is
// allocated (a 1 PiB map directory would need gigabytes of memory and be
// written by every checkpoint).
TEST(FullPool, SizesBeyondWhatThePoolCanDescribeAreRefusedUpFront) {
  TestPool pool(64 * kMiB);
  VolumeSet& set = pool.set();
  Volume* v = set.CreateVolume("w", 4 * kMiB).value();
  auto content = Pattern(4 * kMiB, 1);
  ASSERT_TRUE(pool.Write(*v, 0, content).ok());
  auto huge = set.CreateVolume("huge", 1ull << 50);
  ASSERT_FALSE(huge.ok());
  EXPECT_EQ(huge.status().code(), EFBIG) << huge.status().ToString();
  EXPECT_NE(huge.status().message().find("nothing was changed"), std::string::npos) << huge.status().ToString();
  Status grown = set.ResizeVolume("w", 1ull << 50, false);
  EXPECT_EQ(grown.code(), EFBIG) << grown.ToString();
  EXPECT_EQ(set.GetVolumeInfo("w")->size, 4 * kMiB);
  EXPECT_EQ(set.ListVolumes().size(), 1u);
  ExpectDataPathWorks(pool, content, "refusing huge sizes");
}

// A snapshot being deleted in the background carries an internal name; no
// caller may reach it (a clone of it would point at a snapshot the release
// then erases).
TEST(Names, InternalSnapshotNamesAreNotReachable) {
  TestPool pool(128 * kMiB);
  VolumeSet& set = pool.set();
  Volume* v = set.CreateVolume("vol", 16 * kMiB).value();
  ASSERT_TRUE(pool.Write(*v, 0, Pattern(16 * kMiB, 1)).ok());
  auto snapshot = set.CreateSnapshot("vol", "old");
  ASSERT_TRUE(snapshot.ok());
  ASSERT_TRUE(pool.Write(*v, 0, Pattern(16 * kMiB, 2)).ok());
  Impl(pool).StopBackgroundDeletesForTest();
  Impl(pool).set_background_delete_pages(0);
  ASSERT_TRUE(set.DeleteSnapshot("vol", "old").ok());
  const std::string hidden = DeletingSnapshotName(snapshot->id);
  EXPECT_FALSE(set.CloneSnapshot("vol", hidden, "c").ok());
  EXPECT_FALSE(set.Rollback("vol", hidden, true).ok());
  EXPECT_FALSE(set.Rollback("vol", hidden, false).ok());
  EXPECT_FALSE(set.DeleteSnapshot("vol", hidden).ok());
  EXPECT_EQ(set.CreateSnapshot("vol", hidden).status().code(), EINVAL);
  EXPECT_EQ(set.CloneSnapshot("vol@x", "old", "c").status().code(), EINVAL);
  EXPECT_EQ(set.ListVolumes().size(), 1u);
  // The release resumes at the next open and the pool is whole.
  ASSERT_TRUE(pool.CloseAndReopen().ok());
  Impl(pool).WaitForBackgroundDeletes();
  EXPECT_EQ(pool.set().Info().snapshots_being_deleted, 0u);  // `set` died with the reopen
  ASSERT_TRUE(pool.Close().ok());
  ExpectFsckClean(pool.device());
}

// The operations above cut by a power loss at many points: after each cut
// the pool opens, fsck is clean and v holds its flushed content.
TEST(FullPool, PowerCutsDuringControlOperationsOnAFullPool) {
  FullPool full;
  full.SetUp();
  ASSERT_TRUE(full.pool.Close().ok());
  const std::vector<uint8_t> image = full.pool.device().durable_image();
  std::mt19937_64 rng(12);
  int cuts = 0;
  for (int64_t ops_before_cut = 0; ops_before_cut < 400; ops_before_cut += 7) {
    SCOPED_TRACE("cut after " + std::to_string(ops_before_cut) + " device operations");
    FaultDevice& device = full.pool.device();
    device.durable_image() = image;
    ASSERT_TRUE(full.pool.Reopen().ok());
    VolumeSet& set = full.pool.set();
    device.FailAfter(ops_before_cut);
    (void)set.CreateSnapshot("big", "s1");
    (void)set.CreateVolume("big2", 2 * kTiB);
    (void)set.CloneSnapshot("v", "before", "c");
    (void)set.Rollback("v", "before", true);
    (void)set.DeleteVolume("fill");
    (void)set.CreateSnapshot("big", "s2");
    (void)set.ResizeVolume("big", 4 * kTiB, false);
    cuts++;
    Status reopened = full.pool.CrashAndReopen(rng);
    ASSERT_TRUE(reopened.ok()) << reopened.ToString();
    auto back = full.pool.Read(*full.pool.Find("v"), 0, full.v_content.size());
    ASSERT_TRUE(back.ok()) << back.status().ToString();
    ASSERT_EQ(back.value(), full.v_content);
    ASSERT_TRUE(Impl(full.pool).CheckReferencesForTest().ok());
    ASSERT_TRUE(full.pool.Close().ok());
    ExpectFsckClean(device);
  }
  EXPECT_GT(cuts, 50);
}

}  // namespace
}  // namespace edgestor
