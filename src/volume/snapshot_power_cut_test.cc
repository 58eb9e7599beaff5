// Power cuts during snapshot create, delete, rollback, clone and flatten,
// mixed with writes, discards and flushes on a volume and its clone. After
// each cut: reopen, fsck clean, every volume sector as the model allows,
// every snapshot exactly its content when taken, and the accounting equal
// to a recount from the maps.
#include <gtest/gtest.h>

#include <cstdio>
#include <map>
#include <optional>

#include "volume/testing/snapshot_accounting.h"
#include "volume/testing/test_pool.h"
#include "volume/testing/volume_model.h"
#include "volume/volume_set_impl.h"

namespace edgestor {
namespace {

using testing::SnapshotName;
using testing::DecodeSector;
using testing::FillSector;
using testing::TestPool;
using testing::VolumeModel;

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kVolumeBytes = 2 * kMiB;
constexpr uint64_t kSectors = kVolumeBytes / 512;
constexpr size_t kMaxSnapshots = 6;

using Content = std::vector<uint64_t>;  // a tag per sector

struct Head {
  VolumeModel model{kSectors};
  // A rollback or clone whose outcome the cut hid: if the volume reads as
  // exactly this, the operation happened.
  std::optional<Content> rolled_back_to;
  bool maybe_absent = false;   // a create or delete whose outcome is unknown
};

struct Snap {
  Content content;
  bool maybe_absent = false;   // a create or delete whose outcome is unknown
};

class SnapshotPowerCutHarness {
 public:
  SnapshotPowerCutHarness(uint64_t seed, uint32_t cluster_size, CompressionSetting compression,
                          bool background_deletes)
      : rng_(seed),
        background_deletes_(background_deletes),
        pool_(48 * kMiB, PoolCreateOptions{.cluster_size = cluster_size, .compression = compression}) {
    EXPECT_TRUE(pool_.set().CreateVolume("v", kVolumeBytes).ok());
    heads_["v"];
    ConfigureSet();
  }

  // Every deletion in the background (crashes then land mid-way).
  void ConfigureSet() {
    if (!background_deletes_) return;
    auto& set = dynamic_cast<VolumeSetImpl&>(pool_.set());
    set.set_background_delete_pages(0);
    set.set_release_step_pages(1);  // one page per committed step: cuts land between steps
  }

  void Round() {
    pool_.device().FailAfter(static_cast<int64_t>(rng_() % 500));
    for (int op = 0; op < 60 && !dead_; op++) Step();
    Status s = pool_.CrashAndReopen(rng_);
    ASSERT_TRUE(s.ok()) << "reopen after power cut: " << s.ToString();
    dead_ = false;
    ConfigureSet();
    // fsck reads the device: let a resumed background deletion finish its
    // writes first (a real pool is locked while it is open).
    dynamic_cast<VolumeSetImpl&>(pool_.set()).WaitForBackgroundDeletes();
    auto report = CheckPool(pool_.device());
    ASSERT_TRUE(report.ok()) << report.status().ToString();
    ASSERT_TRUE(report->ok()) << "fsck: " << report->problems.front();
    shared_runs_seen_ += report->shared_runs;
    VerifySnapshots();
    for (auto it = heads_.begin(); it != heads_.end();) {
      VerifyHead(it->first, it->second);
      if (::testing::Test::HasFatalFailure()) return;
      it = present_ ? std::next(it) : heads_.erase(it);
    }
    testing::CheckAccounting(pool_);
    Status references = dynamic_cast<VolumeSetImpl&>(pool_.set()).CheckReferencesForTest();
    ASSERT_TRUE(references.ok()) << references.ToString() << " (cut " << cuts_ << ")";
    cuts_++;
  }

  uint64_t cuts() const { return cuts_; }
  uint64_t snapshot_ops() const { return snapshot_ops_; }
  uint64_t shared_runs_seen() const { return shared_runs_seen_; }

 private:
  void Note(const Status& s) {
    if (s.code() == EIO) dead_ = true;
  }

  // What a read of the head returns now (no crash since).
  static Content Latest(const Head& h) {
    Content c(kSectors);
    for (uint64_t s = 0; s < kSectors; s++) c[s] = h.model.Latest(s);
    return c;
  }
  static VolumeModel Exactly(const Content& c) {
    VolumeModel m(kSectors);
    for (uint64_t s = 0; s < kSectors; s++) m.Write(s, 1, c[s], /*durable=*/true);
    return m;
  }

  void Step() {
    uint32_t dice = rng_() % 100;
    std::string head = heads_.count("c") && rng_() % 3 == 0 ? "c" : "v";
    if (dice < 40) return DataOp(head, VolumeOp::kWrite);
    if (dice < 45) return DataOp(head, VolumeOp::kDiscard);
    if (dice < 50) return DataOp(head, VolumeOp::kWriteZeroes);
    if (dice < 64) return Flush(head);
    if (dice < 74) return CreateSnapshot();
    if (dice < 81) return DeleteSnapshot();
    if (dice < 87) return Rollback();
    if (dice < 91) return Clone();
    if (dice < 94) return Flatten();
    if (dice < 96) return DeleteClone();
    return Note(pool_.set().Checkpoint());
  }

  void DataOp(const std::string& name, VolumeOp op) {
    Volume* v = pool_.Find(name);
    ASSERT_NE(v, nullptr) << name;
    Head& h = heads_[name];
    bool aligned = rng_() % 4 != 0;
    uint64_t unit = aligned ? 8 : 1;
    uint64_t first = rng_() % (kSectors / unit) * unit;
    uint64_t count = std::min(kSectors - first, (1 + rng_() % 64) * unit);
    bool fua = rng_() % 10 == 0;
    uint64_t tag = op == VolumeOp::kWrite ? next_tag_++ : testing::kZeroTag;
    AlignedBuffer buf = AllocateAligned(count * 512);
    for (uint64_t s = 0; s < count; s++) FillSector(buf.get() + s * 512, tag, first + s);
    Status s = pool_.Io(*v, op, first * 512, count * 512, op == VolumeOp::kWrite ? buf.get() : nullptr, fua);
    Note(s);
    ASSERT_TRUE(s.ok() || s.code() == EIO || s.code() == ENOSPC) << s.ToString();
    h.model.Write(first, count, tag, s.ok() && fua);
  }

  void Flush(const std::string& name) {
    Status s = pool_.Flush(*pool_.Find(name));
    Note(s);
    if (s.ok()) heads_[name].model.Flush();
  }

  void CreateSnapshot() {
    if (snaps_.size() >= kMaxSnapshots) return;
    std::string name = SnapshotName(next_snapshot_++);
    Head& v = heads_["v"];
    Content content = Latest(v);
    auto s = pool_.set().CreateSnapshot("v", name);
    snapshot_ops_++;
    Note(s.status());
    snaps_["v@" + name] = {content, !s.ok()};
    if (s.ok()) v.model.Flush();  // a snapshot commits by a checkpoint
  }

  std::string PickSnapshot() {
    if (snaps_.empty()) return {};
    auto it = snaps_.begin();
    std::advance(it, rng_() % snaps_.size());
    return it->first;
  }

  void DeleteSnapshot() {
    std::string full = PickSnapshot();
    if (full.empty()) return;
    Status s = pool_.set().DeleteSnapshot("v", full.substr(2));
    snapshot_ops_++;
    Note(s);
    if (s.ok()) snaps_.erase(full);
    else if (s.code() == EIO) snaps_[full].maybe_absent = true;
    else ASSERT_TRUE(s.code() == EBUSY || s.code() == ENOENT) << s.ToString();  // a clone, or it never was
  }

  void Rollback() {
    std::string full = PickSnapshot();
    if (full.empty()) return;
    bool keep = rng_() % 2 && snaps_.size() < kMaxSnapshots;
    Head& v = heads_["v"];
    Content before = Latest(v);
    Content target = snaps_[full].content;
    auto kept = pool_.set().Rollback("v", full.substr(2), keep);
    snapshot_ops_++;
    Note(kept.status());
    if (kept.ok()) {
      v.model = Exactly(target);
      v.rolled_back_to.reset();
      if (keep) snaps_["v@" + kept.value()] = {before, false};
      return;
    }
    if (kept.status().code() == ENOENT) return;  // the snapshot never was
    ASSERT_EQ(kept.status().code(), EIO) << kept.status().ToString();
    v.rolled_back_to = target;
    if (keep) pending_automatic_ = before;  // its name is found after the cut
  }

  void Clone() {
    if (heads_.count("c")) return;
    std::string full = PickSnapshot();
    if (full.empty()) return;
    auto c = pool_.set().CloneSnapshot("v", full.substr(2), "c");
    snapshot_ops_++;
    Note(c.status());
    if (c.status().code() == ENOENT) return;
    Head& h = heads_["c"];
    h.model = Exactly(snaps_[full].content);
    h.maybe_absent = !c.ok();
  }

  void Flatten() {
    if (!heads_.count("c")) return;
    auto copied = pool_.set().FlattenVolume("c");
    snapshot_ops_++;
    Note(copied.status());
    ASSERT_TRUE(copied.ok() || copied.status().code() == EIO || copied.status().code() == EINVAL ||
                copied.status().code() == ENOSPC)
        << copied.status().ToString();
  }

  void DeleteClone() {
    if (!heads_.count("c")) return;
    Status s = pool_.set().DeleteVolume("c");
    Note(s);
    if (s.ok()) heads_.erase("c");
    else if (s.code() == EIO) heads_["c"].maybe_absent = true;
  }

  Content ReadContent(const std::string& name, uint64_t* garbage_at) {
    Volume* v = pool_.Find(name);
    auto data = pool_.Read(*v, 0, v->size());
    EXPECT_TRUE(data.ok()) << name << ": " << data.status().ToString();
    Content c(v->size() / 512, testing::kGarbageTag);
    *garbage_at = ~0ull;
    if (!data.ok()) return c;
    for (uint64_t s = 0; s < c.size(); s++) {
      c[s] = DecodeSector(data->data() + s * 512, s);
      if (c[s] == testing::kGarbageTag && *garbage_at == ~0ull) *garbage_at = s;
    }
    return c;
  }

  void VerifySnapshots() {
    auto listed = pool_.set().ListSnapshots("");
    ASSERT_TRUE(listed.ok()) << listed.status().ToString();
    std::map<std::string, bool> seen;
    for (const SnapshotInfo& info : listed.value()) {
      std::string full = info.full_name();
      if (!snaps_.count(full)) {
        // Only the automatic snapshot of a rollback the cut interrupted.
        ASSERT_TRUE(info.automatic && pending_automatic_) << "unexpected snapshot " << full;
        snaps_[full] = {*pending_automatic_, false};
        pending_automatic_.reset();
      }
      seen[full] = true;
      uint64_t garbage;
      Content c = ReadContent(full, &garbage);
      ASSERT_EQ(c, snaps_[full].content) << "snapshot " << full << " changed (first garbage sector " << garbage
                                         << ", cut " << cuts_ << ")";
      snaps_[full].maybe_absent = false;
    }
    pending_automatic_.reset();
    for (auto it = snaps_.begin(); it != snaps_.end();) {
      if (seen.count(it->first)) {
        ++it;
        continue;
      }
      ASSERT_TRUE(it->second.maybe_absent) << "snapshot " << it->first << " vanished (cut " << cuts_ << ")";
      it = snaps_.erase(it);
    }
  }

  void VerifyHead(const std::string& name, Head& h) {
    present_ = pool_.Find(name) != nullptr;
    if (!present_) {
      ASSERT_TRUE(h.maybe_absent) << "volume " << name << " vanished";
      return;
    }
    uint64_t garbage;
    Content c = ReadContent(name, &garbage);
    ASSERT_EQ(c.size(), kSectors);
    if (h.rolled_back_to && c == *h.rolled_back_to) {
      h.model = Exactly(c);  // the rollback happened
    } else {
      for (uint64_t s = 0; s < kSectors; s++)
        ASSERT_TRUE(h.model.Allows(s, c[s])) << "volume " << name << " sector " << s << " holds tag " << c[s]
                                             << ", which the model does not allow (cut " << cuts_ << ")";
    }
    for (uint64_t s = 0; s < kSectors; s++) h.model.Settle(s, c[s]);
    h.rolled_back_to.reset();
    h.maybe_absent = false;
  }

  std::mt19937_64 rng_;
  bool background_deletes_;
  TestPool pool_;
  std::map<std::string, Head> heads_;
  std::map<std::string, Snap> snaps_;
  std::optional<Content> pending_automatic_;
  uint64_t next_tag_ = 1;
  uint64_t next_snapshot_ = 1;
  bool dead_ = false;
  bool present_ = true;
  uint64_t cuts_ = 0;
  uint64_t snapshot_ops_ = 0;
  uint64_t shared_runs_seen_ = 0;
};

void RunCuts(uint64_t seed, uint32_t cluster_size, int rounds, CompressionSetting compression = {},
             bool background_deletes = false) {
  SnapshotPowerCutHarness harness(seed, cluster_size, compression, background_deletes);
  for (int i = 0; i < rounds; i++) {
    harness.Round();
    if (::testing::Test::HasFatalFailure()) {
      ADD_FAILURE() << "seed " << seed << " round " << i;
      return;
    }
  }
  // The workload must have reached what it tests.
  EXPECT_GT(harness.snapshot_ops(), static_cast<uint64_t>(rounds));
  EXPECT_GT(harness.shared_runs_seen(), 0u);
  std::printf("snapshot power cuts survived: %llu (seed %llu, cluster %u, compression %s; snapshot operations %llu, "
              "shared runs seen %llu)\n",
              static_cast<unsigned long long>(harness.cuts()), static_cast<unsigned long long>(seed), cluster_size,
              FormatCompression(compression).c_str(), static_cast<unsigned long long>(harness.snapshot_ops()),
              static_cast<unsigned long long>(harness.shared_runs_seen()));
}

TEST(SnapshotPowerCut, SnapshotOperationsSurviveCutsWith16KiBClusters) { RunCuts(11, 16384, 300); }
TEST(SnapshotPowerCut, SnapshotOperationsSurviveCutsWith64KiBClusters) { RunCuts(12, 65536, 200); }
TEST(SnapshotPowerCut, BackgroundDeletesSurviveCuts) { RunCuts(14, 16384, 200, {}, /*background_deletes=*/true); }
TEST(SnapshotPowerCut, SnapshotsOfCompressedVolumesSurviveCuts) {
  RunCuts(13, 16384, 200, {Compression::kLz4, 0});
}

}  // namespace
}  // namespace edgestor
