// Power-cut simulation: a random workload on two volumes, cut at a random
// device operation, recovered, checked by fsck and against the model.
//
// Invariants checked (../shared/BRIEF.md): 1. a write completed before a
// completed flush (or with FUA) survives; 2. every sector reads as one of
// its contents since the last flush, never another volume's data, never
// garbage; control operations are durable once they return.
#include <gtest/gtest.h>

#include <cstdio>
#include <map>

#include "volume/testing/test_pool.h"
#include "volume/testing/volume_model.h"

namespace edgestor {
namespace {

using testing::DecodeSector;
using testing::FillSector;
using testing::TestPool;
using testing::VolumeModel;

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kMaxVolumeBytes = 6 * kMiB;
constexpr uint64_t kMaxSectors = kMaxVolumeBytes / 512;

struct ModelVolume {
  VolumeModel model{kMaxSectors};
  uint64_t size = 0;
  uint64_t other_size = 0;        // a grow that may or may not have happened
  bool maybe_absent = false;      // a delete or create whose outcome is unknown
  bool fresh_if_present = false;  // if present, it is the recreated (zero) volume
};

// What the volumes store: plain, encrypted, compressed, or both.
struct Codecs {
  bool encrypt = false;
  CompressionSetting compression;
};

PoolSecret TestKey() {
  PoolSecret secret;
  std::array<uint8_t, kPoolKeyBytes> bytes;
  for (size_t i = 0; i < bytes.size(); i++) bytes[i] = static_cast<uint8_t>(i * 7 + 1);
  secret.key.emplace(bytes);
  return secret;
}

PoolCreateOptions CreateOptions(uint32_t cluster_size, const Codecs& codecs) {
  PoolCreateOptions options{.cluster_size = cluster_size};
  if (codecs.encrypt) options.secret = TestKey();
  options.encrypt_by_default = codecs.encrypt;
  options.compression = codecs.compression;
  return options;
}

PoolOpenOptions OpenOptions(const Codecs& codecs) {
  PoolOpenOptions options;
  if (codecs.encrypt) options.secret = TestKey();
  return options;
}

class PowerCutHarness {
 public:
  // With `host_fills`, the host file system under the (sparse) pool fills
  // and frees at random: requests may get ENOSPC, the pool never stops.
  PowerCutHarness(uint64_t seed, uint32_t cluster_size, Codecs codecs, bool host_fills = false)
      : rng_(seed),
        codecs_(codecs),
        host_fills_(host_fills),
        pool_(16 * kMiB, CreateOptions(cluster_size, codecs), OpenOptions(codecs)) {}

  // One round: arm the cut, run operations until the device dies or the
  // round ends, crash, recover, verify.
  void Round() {
    pool_.device().FailAfter(static_cast<int64_t>(rng_() % 400));
    for (int op = 0; op < 80 && !dead_; op++) Step();
    pool_.device().SetHostFull(false);
    for (const auto& [name, mv] : volumes_) {
      if (auto info = pool_.set().GetVolumeInfo(name); info.ok()) packed_frames_seen_ += info->packed_frames;
    }
    shared_edges_seen_ += pool_.set().Info().shared_edge_blocks;
    Status s = pool_.CrashAndReopen(rng_);
    ASSERT_TRUE(s.ok()) << "reopen after power cut: " << s.ToString();
    dead_ = false;
    auto report = CheckPool(pool_.device());
    ASSERT_TRUE(report.ok()) << report.status().ToString();
    ASSERT_TRUE(report->ok()) << "fsck: " << report->problems.front();
    for (auto& [name, mv] : volumes_) VerifyAndSettle(name, mv);
    std::erase_if(volumes_, [](auto& kv) { return kv.second.size == 0; });
  }

 private:
  void Note(const Status& s) {
    if (s.code() == ENOSPC && host_full_) host_refusals_++;
    if (s.code() != EIO) return;
    dead_ = true;
    // Only the power loss may fail a request with EIO: a full host is a
    // request's ENOSPC, never a stopped pool.
    if (host_fills_) {
      ASSERT_TRUE(pool_.device().lost_power()) << "EIO without a power loss: " << s.ToString();
    }
  }

  void Step() {
    if (host_fills_ && rng_() % 16 == 0) {
      host_full_ = !host_full_;
      pool_.device().SetHostFull(host_full_);
    }
    std::string name = rng_() % 2 ? "a" : "b";
    auto it = volumes_.find(name);
    if (it == volumes_.end()) return Create(name);
    ModelVolume& mv = it->second;
    Volume* v = pool_.Find(name);
    ASSERT_NE(v, nullptr);
    uint32_t dice = rng_() % 100;
    if (dice < 45) return DataOp(*v, mv, VolumeOp::kWrite);
    if (dice < 55) return DataOp(*v, mv, VolumeOp::kDiscard);
    if (dice < 65) return DataOp(*v, mv, VolumeOp::kWriteZeroes);
    if (dice < 85) {
      Status s = pool_.Flush(*v);
      Note(s);
      if (s.ok()) mv.model.Flush();
      return;
    }
    if (dice < 88) return Note(pool_.set().Checkpoint());
    if (dice < 90) return ToggleCompression(name);
    if (dice < 96) return Grow(name, mv);
    return Delete(name, mv);
  }

  void DataOp(Volume& v, ModelVolume& mv, VolumeOp op) {
    uint64_t sectors = mv.size / 512;
    bool aligned = rng_() % 5 != 0;
    uint64_t unit = aligned ? 8 : 1;
    uint64_t first = rng_() % (sectors / unit) * unit;
    uint64_t count = std::min(sectors - first, (1 + rng_() % 40) * unit);
    bool fua = rng_() % 10 == 0;
    uint64_t tag = op == VolumeOp::kWrite ? next_tag_++ : testing::kZeroTag;
    AlignedBuffer buf = AllocateAligned(count * 512);
    for (uint64_t s = 0; s < count; s++) FillSector(buf.get() + s * 512, tag, first + s);
    Status s = pool_.Io(v, op, first * 512, count * 512, op == VolumeOp::kWrite ? buf.get() : nullptr, fua);
    Note(s);
    ASSERT_TRUE(s.ok() || s.code() == EIO || s.code() == ENOSPC) << s.ToString();
    if (s.code() == ENOSPC && host_fills_) return LearnFailedWrite(v, mv, first, count, tag);
    mv.model.Write(first, count, tag, s.ok() && fua);
  }

  // A write the host refused may have landed in some clusters and not in
  // others; the next flush makes whatever each sector now holds durable, so
  // the model learns it by reading (each sector: the new tag or its latest).
  void LearnFailedWrite(Volume& v, ModelVolume& mv, uint64_t first, uint64_t count, uint64_t tag) {
    auto now = pool_.Read(v, first * 512, count * 512);
    if (!now.ok()) {
      Note(now.status());
      mv.model.Write(first, count, tag, false);
      return;
    }
    for (uint64_t i = 0; i < count; i++) {
      uint64_t got = DecodeSector(now->data() + i * 512, first + i);
      ASSERT_TRUE(got == tag || got == mv.model.Latest(first + i))
          << "after a refused write, sector " << first + i << " holds tag " << got;
      mv.model.Write(first + i, 1, got, false);
    }
  }

  // Compression changes apply to new writes; old clusters keep theirs.
  void ToggleCompression(const std::string& name) {
    if (codecs_.compression.algorithm == Compression::kOff) return;
    compression_on_ = !compression_on_;
    Note(pool_.set().SetVolumeCompression(name, compression_on_ ? codecs_.compression : CompressionSetting{}));
  }

  void Create(const std::string& name) {
    uint64_t size = (1 + rng_() % 4) * kMiB;
    auto v = pool_.set().CreateVolume(name, size);
    Note(v.status());
    if (v.status().code() == ENOSPC) return;  // refused before anything changed
    ModelVolume mv;
    mv.size = size;
    mv.maybe_absent = !v.ok();
    mv.fresh_if_present = !v.ok();  // if it exists after the cut, it is empty
    volumes_[name] = std::move(mv);
    if (!v.ok()) dead_ = true;
  }

  void Grow(const std::string& name, ModelVolume& mv) {
    uint64_t new_size = std::min(kMaxVolumeBytes, mv.size + (1 + rng_() % 4) * 512 * 64);
    Status s = pool_.set().ResizeVolume(name, new_size, false);
    Note(s);
    if (s.ok()) mv.size = new_size;
    else mv.other_size = new_size;
  }

  void Delete(const std::string& name, ModelVolume& mv) {
    Status s = pool_.set().DeleteVolume(name);
    Note(s);
    if (s.ok()) {
      volumes_.erase(name);
    } else {
      mv.maybe_absent = true;  // if it exists after the cut, it is intact
      mv.fresh_if_present = false;
    }
  }

  void VerifyAndSettle(const std::string& name, ModelVolume& mv) {
    auto info = pool_.set().GetVolumeInfo(name);
    if (!info.ok()) {
      ASSERT_TRUE(mv.maybe_absent) << "volume " << name << " vanished";
      mv.size = 0;  // dropped by the caller
      return;
    }
    bool fresh = mv.maybe_absent && mv.fresh_if_present;
    if (fresh) mv.model = VolumeModel(kMaxSectors);
    ASSERT_TRUE(info->size == mv.size || (mv.other_size && info->size == mv.other_size))
        << name << " has size " << info->size << ", model " << mv.size;
    mv.size = info->size;
    compressed_clusters_seen_ += info->compressed_clusters;
    ASSERT_EQ(info->encrypted, codecs_.encrypt);
    mv.other_size = 0;
    mv.maybe_absent = false;
    mv.fresh_if_present = false;
    Volume* v = pool_.Find(name);
    auto data = pool_.Read(*v, 0, mv.size);
    ASSERT_TRUE(data.ok()) << data.status().ToString();
    for (uint64_t s = 0; s < mv.size / 512; s++) {
      uint64_t tag = DecodeSector(data->data() + s * 512, s);
      ASSERT_TRUE(mv.model.Allows(s, tag)) << "volume " << name << " sector " << s << " holds tag " << tag
                                            << ", which the model does not allow (cut " << cuts_ << ")";
      mv.model.Settle(s, tag);
    }
    mv.model.Truncate(mv.size / 512);
    cuts_++;
  }

  std::mt19937_64 rng_;
  Codecs codecs_;
  bool compression_on_ = true;
  bool host_fills_ = false;
  bool host_full_ = false;
  TestPool pool_;
  std::map<std::string, ModelVolume> volumes_;
  uint64_t next_tag_ = 1;
  bool dead_ = false;
  uint64_t cuts_ = 0;

 public:
  uint64_t compressed_clusters_seen_ = 0;  // summed over verifications
  uint64_t packed_frames_seen_ = 0;        // frames written packed beside others, summed before each cut
  uint64_t shared_edges_seen_ = 0;         // blocks two packed frames shared, summed before each cut
  uint64_t host_refusals_ = 0;             // ENOSPC while the host was full
};

void RunCuts(uint64_t seed, uint32_t cluster_size, int rounds, Codecs codecs = {}, bool host_fills = false) {
  PowerCutHarness harness(seed, cluster_size, codecs, host_fills);
  for (int i = 0; i < rounds; i++) {
    harness.Round();
    if (::testing::Test::HasFatalFailure()) {
      ADD_FAILURE() << "seed " << seed << " round " << i;
      return;
    }
  }
  // The workload must have reached what it tests.
  if (codecs.compression.algorithm != Compression::kOff) {
    EXPECT_GT(harness.compressed_clusters_seen_, 0u);
  }
  if (codecs.compression.algorithm != Compression::kOff && !codecs.encrypt) {
    EXPECT_GT(harness.packed_frames_seen_, 0u);
    EXPECT_GT(harness.shared_edges_seen_, 0u);
  }
  if (host_fills) {
    EXPECT_GT(harness.host_refusals_, 0u);
    std::printf("requests refused by the full host: %llu\n", static_cast<unsigned long long>(harness.host_refusals_));
  }
  std::printf("power cuts survived: %d (seed %llu, cluster %u, %s, compression %s; compressed clusters verified: "
              "%llu, packed frames %llu, shared edge blocks %llu)\n",
              rounds, static_cast<unsigned long long>(seed), cluster_size, codecs.encrypt ? "encrypted" : "plain",
              FormatCompression(codecs.compression).c_str(),
              static_cast<unsigned long long>(harness.compressed_clusters_seen_),
              static_cast<unsigned long long>(harness.packed_frames_seen_),
              static_cast<unsigned long long>(harness.shared_edges_seen_));
}

TEST(PowerCut, RandomWorkloadSurvivesCutsWith16KiBClusters) { RunCuts(1, 16384, 600); }
TEST(PowerCut, RandomWorkloadSurvivesCutsWith64KiBClusters) { RunCuts(2, 65536, 400); }
TEST(PowerCut, RandomWorkloadSurvivesCutsWith4KiBClusters) { RunCuts(3, 4096, 200); }
TEST(PowerCut, EncryptedVolumesSurviveCuts) { RunCuts(4, 65536, 300, {.encrypt = true}); }
TEST(PowerCut, Lz4CompressedVolumesSurviveCuts) { RunCuts(5, 65536, 300, {.compression = {Compression::kLz4, 0}}); }
// Issue 12, item 8: the host file system under the sparse pool file fills
// and frees between requests.
TEST(PowerCut, AFillingHostFileSystemNeverStopsThePool) { RunCuts(7, 16384, 300, {}, /*host_fills=*/true); }
TEST(PowerCut, ZstdCompressedEncryptedVolumesSurviveCuts) {
  RunCuts(6, 16384, 300, {.encrypt = true, .compression = {Compression::kZstd, 3}});
}

}  // namespace
}  // namespace edgestor
