// Hardening of the control path: a full pool, huge sizes and internal names
// give the caller a clean error and never stop the pool (../shared/BRIEF.md,
// invariants 4 and 5).
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "volume/testing/test_pool.h"
#include "volume/volume_set_impl.h"

namespace edgestor {
namespace {

using testing::KeyFileSecret;
using testing::OpenWith;
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

PoolCreateOptions KeyedPool(uint64_t journal_bytes) {
  PoolCreateOptions options;
  options.journal_bytes = journal_bytes;
  options.secret = KeyFileSecret(1);
  return options;
}

// A 64 MiB pool with a key (so rekey can run) and the given journal size
// (0: the default).
struct FullPool {
  explicit FullPool(uint64_t journal_bytes = 0)
      : pool(64 * kMiB, KeyedPool(journal_bytes), OpenWith(KeyFileSecret(1))) {}
  TestPool pool;
  std::vector<uint8_t> v_content = Pattern(4 * kMiB, 1);

  // v (4 MiB, written, with snapshot v@before), c0 (a clone of v@before),
  // w (4 MiB, written, never snapshotted), big (2 TiB, thin, empty), fill
  // (written until the pool is full, if `fill`).
  void SetUp(bool fill = true) {
    VolumeSet& set = pool.set();
    Volume* v = set.CreateVolume("v", 4 * kMiB).value();
    ASSERT_TRUE(pool.Write(*v, 0, v_content).ok());
    ASSERT_TRUE(set.CreateSnapshot("v", "before").ok());
    ASSERT_TRUE(set.CloneSnapshot("v", "before", "c0").ok());
    Volume* w = set.CreateVolume("w", 4 * kMiB).value();
    ASSERT_TRUE(pool.Write(*w, 0, v_content).ok());
    ASSERT_TRUE(set.CreateVolume("big", 2 * kTiB).ok());
    ASSERT_TRUE(set.CreateVolume("fill", 256 * kMiB).ok());
    if (fill) FillUntilFull(pool, "fill");
  }
};

using ControlOp = std::pair<std::string, std::function<Status()>>;

// Every kind of control operation, in an order where each can succeed.
std::vector<ControlOp> EveryControlOperation(VolumeSet& set) {
  return {
      {"snapshot of a 2 TiB volume", [&] { return set.CreateSnapshot("big", "s1").status(); }},
      {"snapshot of a small volume", [&] { return set.CreateSnapshot("v", "s1").status(); }},
      {"create a 2 TiB volume", [&] { return set.CreateVolume("big2", 2 * kTiB).status(); }},
      {"create a small volume", [&] { return set.CreateVolume("small", kMiB).status(); }},
      {"grow to 4 TiB", [&] { return set.ResizeVolume("big", 4 * kTiB, false); }},
      {"clone", [&] { return set.CloneSnapshot("v", "before", "c").status(); }},
      {"flatten a clone", [&] { return set.FlattenVolume("c0").status(); }},
      {"rollback keeping the current content", [&] { return set.Rollback("v", "before", true).status(); }},
      {"delete a snapshot", [&] { return set.DeleteSnapshot("v", "s1"); }},
      {"compression setting", [&] { return set.SetVolumeCompression("v", {Compression::kLz4, 0}); }},
      {"rekey", [&] { return set.Rekey(KeyFileSecret(2)); }},
      {"checkpoint", [&] { return set.Checkpoint(); }},
      {"delete a volume", [&] { return set.DeleteVolume("small"); }},
  };
}

// Every control operation on a full pool (with the default journal and with
// the smallest one): each succeeds or fails cleanly, the data path goes on,
// and once space is freed every refused one succeeds.
class FullPoolMatrix : public ::testing::TestWithParam<uint64_t> {};

TEST_P(FullPoolMatrix, ControlOperationsFailCleanlyAndTheDataPathGoesOn) {
  FullPool full(GetParam());
  full.SetUp();
  VolumeSet& set = full.pool.set();
  std::vector<ControlOp> refused;
  for (auto& [what, op] : EveryControlOperation(set)) {
    Status s = op();
    ExpectCleanOutcome(s, what);
    if (!s.ok()) refused.push_back({what, op});
    ExpectDataPathWorks(full.pool, full.v_content, what);
  }
  EXPECT_GE(refused.size(), 2u) << "the pool was not full enough to refuse anything";
  // Freeing space always works on a full pool, and then the refused work does.
  ASSERT_TRUE(set.DeleteVolume("fill").ok());
  for (auto& [what, op] : refused) {
    Status s = op();
    EXPECT_TRUE(s.ok()) << what << " after freeing space: " << s.ToString();
  }
  ExpectDataPathWorks(full.pool, full.v_content, "freeing space");
  ASSERT_TRUE(full.pool.CloseAndReopenWith(OpenWith(KeyFileSecret(2))).ok());
  ExpectDataPathWorks(full.pool, full.v_content, "reopening");
  auto clone = full.pool.Read(*full.pool.Find("c0"), 0, full.v_content.size());
  ASSERT_TRUE(clone.ok());
  EXPECT_EQ(clone.value(), full.v_content);
  ASSERT_TRUE(Impl(full.pool).CheckReferencesForTest().ok());
  ASSERT_TRUE(full.pool.Close().ok());
  ExpectFsckClean(full.pool.device());
}

INSTANTIATE_TEST_SUITE_P(Journals, FullPoolMatrix, ::testing::Values(0, kMiB),
                         [](const auto& info) { return info.param ? "TinyJournal" : "DefaultJournal"; });

// With the smallest journal (1 MiB) and room to spare, every control
// operation succeeds while map changes pile journal records up between them
// (4 KiB into each of 384 empty clusters, then a discard of them all), and
// the pool reopens whole.
TEST(TinyJournal, EveryControlOperationSucceedsBetweenBurstsOfMapChanges) {
  FullPool pool_with_room(kMiB);
  pool_with_room.SetUp(/*fill=*/false);
  TestPool& pool = pool_with_room.pool;
  VolumeSet& set = pool.set();
  auto block = Pattern(4096, 7);
  constexpr uint64_t kCluster = 64 * 1024, kClusters = 384;
  for (auto& [what, op] : EveryControlOperation(set)) {
    Volume* fill = pool.Find("fill");
    for (uint64_t i = 0; i < kClusters; i++) ASSERT_TRUE(pool.Write(*fill, i * kCluster, block).ok());
    ASSERT_TRUE(pool.Io(*fill, VolumeOp::kDiscard, 0, kClusters * kCluster).ok());
    Status s = op();
    EXPECT_TRUE(s.ok()) << what << ": " << s.ToString();
  }
  ASSERT_TRUE(pool.CloseAndReopenWith(OpenWith(KeyFileSecret(2))).ok());
  auto clone = pool.Read(*pool.Find("c0"), 0, pool_with_room.v_content.size());
  ASSERT_TRUE(clone.ok());
  EXPECT_EQ(clone.value(), pool_with_room.v_content);
  ASSERT_TRUE(Impl(pool).CheckReferencesForTest().ok());
  ASSERT_TRUE(pool.Close().ok());
  ExpectFsckClean(pool.device());
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
  EXPECT_EQ(pool.set().Info().snapshots_being_deleted, 0u);
  ASSERT_TRUE(pool.Close().ok());
  ExpectFsckClean(pool.device());
}

// Every control operation above, plus a write to w between them, cut by a
// power loss at many points (both journal sizes): after each cut the pool
// opens (with the old key or, if the rekey committed, the new one), fsck is
// clean, references agree, and every volume holds what the model allows.
class FullPoolPowerCut : public ::testing::TestWithParam<uint64_t> {};

TEST_P(FullPoolPowerCut, ControlOperationsOnAFullPoolSurviveCuts) {
  FullPool full(GetParam());
  full.SetUp();
  ASSERT_TRUE(full.pool.Close().ok());
  const std::vector<uint8_t> image = full.pool.device().durable_image();
  const std::vector<uint8_t> w_next = Pattern(4 * kMiB, 5);
  FaultDevice& device = full.pool.device();
  auto run_everything = [&] {
    VolumeSet& set = full.pool.set();
    bool w_flushed = full.pool.Write(*full.pool.Find("w"), 0, w_next).ok() && full.pool.Flush(*full.pool.Find("w")).ok();
    (void)set.DeleteVolume("fill");
    for (auto& [what, op] : EveryControlOperation(set)) (void)op();
    return w_flushed;
  };
  auto device_ops = [&] {
    DeviceStats stats = device.stats();
    return static_cast<int64_t>(stats.reads + stats.writes + stats.flushes);
  };
  // How many device operations the whole run takes uncut: the cuts spread
  // over all of it.
  ASSERT_TRUE(full.pool.CloseAndReopenWith(OpenWith(KeyFileSecret(1))).ok());
  int64_t start = device_ops();
  run_everything();
  const int64_t total_ops = device_ops() - start;
  ASSERT_TRUE(full.pool.Close().ok());
  std::mt19937_64 rng(12);
  int cuts = 0, rekeyed = 0;
  for (int64_t ops_before_cut = 0; ops_before_cut < total_ops; ops_before_cut += total_ops / 60 + 1) {
    SCOPED_TRACE("cut after " + std::to_string(ops_before_cut) + " of " + std::to_string(total_ops) +
                 " device operations");
    device.durable_image() = image;
    ASSERT_TRUE(full.pool.CloseAndReopenWith(OpenWith(KeyFileSecret(1))).ok());
    device.FailAfter(ops_before_cut);
    bool w_flushed = run_everything();
    cuts++;
    Status reopened = full.pool.CrashAndReopen(rng);
    if (reopened.code() == EACCES) {
      reopened = full.pool.CloseAndReopenWith(OpenWith(KeyFileSecret(2)));
      rekeyed++;
    }
    ASSERT_TRUE(reopened.ok()) << reopened.ToString();
    for (const char* name : {"v", "c0"}) {
      auto back = full.pool.Read(*full.pool.Find(name), 0, full.v_content.size());
      ASSERT_TRUE(back.ok()) << back.status().ToString();
      ASSERT_EQ(back.value(), full.v_content) << name;
    }
    auto w = full.pool.Read(*full.pool.Find("w"), 0, w_next.size());
    ASSERT_TRUE(w.ok()) << w.status().ToString();
    if (w_flushed) {
      ASSERT_EQ(w.value(), w_next);
    } else {
      for (size_t sector = 0; sector < w_next.size(); sector += 512)
        ASSERT_TRUE(std::equal(w.value().begin() + sector, w.value().begin() + sector + 512, w_next.begin() + sector) ||
                    std::equal(w.value().begin() + sector, w.value().begin() + sector + 512,
                               full.v_content.begin() + sector))
            << "w sector " << sector / 512 << " holds neither its old nor its new content";
    }
    ASSERT_TRUE(Impl(full.pool).CheckReferencesForTest().ok());
    ASSERT_TRUE(full.pool.Close().ok());
    ExpectFsckClean(device);
  }
  EXPECT_GT(cuts, 50);
  EXPECT_GT(rekeyed, 0) << "no cut came after the rekey: cut later";
}

INSTANTIATE_TEST_SUITE_P(Journals, FullPoolPowerCut, ::testing::Values(0, kMiB),
                         [](const auto& info) { return info.param ? "TinyJournal" : "DefaultJournal"; });

}  // namespace
}  // namespace edgestor

namespace edgestor {
namespace {

constexpr uint64_t kStepPages = 16;

// A pool with 4 KiB clusters (a map page covers ~1 MiB) holding `big`,
// fully written: 129 map pages and 32,768 runs for 128 MiB.
struct LargeVolume {
  // Room for `copies` of the volume's data.
  explicit LargeVolume(uint64_t size, uint64_t copies = 1)
      : size(size), pool(copies * size + 64 * kMiB, PoolCreateOptions{.cluster_size = 4096}) {}
  uint64_t size;
  TestPool pool;
  uint64_t free_before = 0;
  std::vector<uint8_t> content;

  void SetUp() {
    Impl(pool).set_release_step_pages(kStepPages);
    free_before = pool.set().Info().free_bytes;
    Volume* big = pool.set().CreateVolume("big", size).value();
    for (uint64_t offset = 0; offset < size; offset += 4 * kMiB) {
      auto chunk = Pattern(4 * kMiB, static_cast<uint8_t>(offset >> 22));
      ASSERT_TRUE(pool.Write(*big, offset, chunk).ok());
      if (offset < 8 * kMiB) content.insert(content.end(), chunk.begin(), chunk.end());
    }
    ASSERT_TRUE(pool.set().Checkpoint().ok());
  }
  // What one checkpoint may release in a step: the step's pages with every
  // run they map, plus pages the data path dirtied meanwhile.
  static uint64_t StepBound() { return kStepPages * (format::kEntriesPerMapPage + 1) + 64; }
};

// Shrinking and deleting a large volume hold at most one step's runs in
// memory (before: one list of every cluster, 16,384 runs for the shrink
// below and 32,768 for the delete), and release everything in the end.
TEST(Bounds, ShrinkAndDeleteOfALargeVolumeGoInBoundedSteps) {
  LargeVolume large(128 * kMiB);
  large.SetUp();
  VolumeSet& set = large.pool.set();
  ASSERT_TRUE(set.ResizeVolume("big", 64 * kMiB, true).ok());
  EXPECT_EQ(set.GetVolumeInfo("big")->size, 64 * kMiB);
  EXPECT_LE(Impl(large.pool).largest_release_for_test(), LargeVolume::StepBound());
  ASSERT_TRUE(large.pool.CloseAndReopen().ok());
  Impl(large.pool).set_release_step_pages(kStepPages);
  auto head = large.pool.Read(*large.pool.Find("big"), 0, large.content.size());
  ASSERT_TRUE(head.ok());
  EXPECT_EQ(head.value(), large.content);

  // The delete hides the volume at once; its name is free again.
  ASSERT_TRUE(large.pool.set().DeleteVolume("big").ok());
  EXPECT_EQ(large.pool.Find("big"), nullptr);
  EXPECT_TRUE(large.pool.set().ListVolumes().empty());
  ASSERT_TRUE(large.pool.set().CreateVolume("big", kMiB).ok());
  Impl(large.pool).WaitForBackgroundDeletes();
  EXPECT_LE(Impl(large.pool).largest_release_for_test(), LargeVolume::StepBound());
  PoolInfo info = large.pool.set().Info();
  EXPECT_EQ(info.volumes_being_deleted, 0u);
  EXPECT_EQ(info.volume_count, 1u);
  ASSERT_TRUE(large.pool.set().DeleteVolume("big").ok());
  EXPECT_EQ(large.pool.set().Info().free_bytes, large.free_before);
  ASSERT_TRUE(Impl(large.pool).CheckReferencesForTest().ok());
  ASSERT_TRUE(large.pool.Close().ok());
  ExpectFsckClean(large.pool.device());
}

// A snapshot whose volume was rewritten since owns every page: its
// background release goes in the same bounded steps.
TEST(Bounds, DeletingALargeSnapshotGoesInBoundedSteps) {
  LargeVolume large(128 * kMiB, 2);
  large.SetUp();
  VolumeSet& set = large.pool.set();
  ASSERT_TRUE(set.CreateSnapshot("big", "old").ok());
  Volume* big = large.pool.Find("big");
  for (uint64_t offset = 0; offset < large.size; offset += 4 * kMiB)
    ASSERT_TRUE(large.pool.Write(*big, offset, Pattern(4 * kMiB, 200)).ok());
  ASSERT_TRUE(set.Checkpoint().ok());
  ASSERT_TRUE(set.DeleteSnapshot("big", "old").ok());
  Impl(large.pool).WaitForBackgroundDeletes();
  EXPECT_LE(Impl(large.pool).largest_release_for_test(), LargeVolume::StepBound());
  EXPECT_EQ(set.Info().snapshots_being_deleted, 0u);
  ASSERT_TRUE(set.DeleteVolume("big").ok());
  Impl(large.pool).WaitForBackgroundDeletes();
  EXPECT_EQ(set.Info().free_bytes, large.free_before);
  ASSERT_TRUE(Impl(large.pool).CheckReferencesForTest().ok());
  ASSERT_TRUE(large.pool.Close().ok());
  ExpectFsckClean(large.pool.device());
}

// A background delete cut by power loss at many points: after each cut the
// volume is either whole or gone for callers, the release resumes at open
// and finishes with every block free, and fsck is clean.
TEST(Bounds, BackgroundDeleteSurvivesCuts) {
  LargeVolume large(64 * kMiB);
  large.SetUp();
  ASSERT_TRUE(large.pool.Close().ok());
  FaultDevice& device = large.pool.device();
  const std::vector<uint8_t> image = device.durable_image();
  auto device_ops = [&] {
    DeviceStats stats = device.stats();
    return static_cast<int64_t>(stats.reads + stats.writes + stats.flushes);
  };
  auto start_delete = [&] {
    Impl(large.pool).set_background_delete_pages(4);
    Impl(large.pool).set_release_step_pages(4);
    return large.pool.set().DeleteVolume("big");
  };
  ASSERT_TRUE(large.pool.Reopen().ok());
  int64_t start = device_ops();
  ASSERT_TRUE(start_delete().ok());
  Impl(large.pool).WaitForBackgroundDeletes();
  const int64_t total_ops = device_ops() - start;
  ASSERT_TRUE(large.pool.Close().ok());
  std::mt19937_64 rng(5);
  int cuts = 0, gone = 0;
  for (int64_t ops_before_cut = 0; ops_before_cut < total_ops; ops_before_cut += total_ops / 40 + 1) {
    SCOPED_TRACE("cut after " + std::to_string(ops_before_cut) + " of " + std::to_string(total_ops));
    device.durable_image() = image;
    ASSERT_TRUE(large.pool.Reopen().ok());
    device.FailAfter(ops_before_cut);
    (void)start_delete();
    Impl(large.pool).WaitForBackgroundDeletes();
    cuts++;
    Status reopened = large.pool.CrashAndReopen(rng);
    ASSERT_TRUE(reopened.ok()) << reopened.ToString();
    Impl(large.pool).WaitForBackgroundDeletes();
    if (Volume* big = large.pool.Find("big")) {
      auto head = large.pool.Read(*big, 0, large.content.size());
      ASSERT_TRUE(head.ok());
      ASSERT_EQ(head.value(), large.content);
    } else {
      gone++;
      EXPECT_EQ(large.pool.set().Info().free_bytes, large.free_before);
    }
    EXPECT_EQ(large.pool.set().Info().volumes_being_deleted, 0u);
    ASSERT_TRUE(Impl(large.pool).CheckReferencesForTest().ok());
    ASSERT_TRUE(large.pool.Close().ok());
    ExpectFsckClean(device);
  }
  EXPECT_GT(cuts, 30);
  EXPECT_GT(gone, 0);
  EXPECT_LT(gone, cuts);
}

}  // namespace
}  // namespace edgestor
