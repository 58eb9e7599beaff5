// Snapshots, rollback, clones and flatten: content, sharing, accounting.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>
#include <map>
#include <random>
#include <set>

#include "volume/testing/test_pool.h"
#include "volume/testing/snapshot_accounting.h"
#include "volume/thin_volume.h"
#include "volume/volume_set_impl.h"

namespace edgestor {
namespace {

using testing::SnapshotName;
using testing::CheckAccounting;
using testing::TestPool;

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kCluster = 65536;

std::vector<uint8_t> Pattern(size_t n, uint8_t seed) {
  std::vector<uint8_t> out(n);
  for (size_t i = 0; i < n; i++) out[i] = static_cast<uint8_t>(seed * 31 + i * 7 + i / 4096);
  return out;
}

std::vector<uint8_t> ReadAll(TestPool& pool, const std::string& name) {
  Volume* v = pool.Find(name);
  EXPECT_NE(v, nullptr) << name;
  if (!v) return {};
  auto data = pool.Read(*v, 0, v->size());
  EXPECT_TRUE(data.ok()) << data.status().ToString();
  return data.ok() ? data.value() : std::vector<uint8_t>{};
}

void ExpectFsckClean(TestPool& pool) {
  Status references = dynamic_cast<VolumeSetImpl&>(pool.set()).CheckReferencesForTest();
  ASSERT_TRUE(references.ok()) << references.ToString();
  auto report = CheckPool(pool.device());
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  ASSERT_TRUE(report->ok()) << report->problems.front();
}

TEST(Snapshot, KeepsContentWhileTheVolumeChanges) {
  TestPool pool(64 * kMiB);
  Volume* v = pool.set().CreateVolume("vol", 4 * kMiB).value();
  auto a = Pattern(4 * kMiB, 1);
  ASSERT_TRUE(pool.Write(*v, 0, a).ok());
  auto snap = pool.set().CreateSnapshot("vol", "one");
  ASSERT_TRUE(snap.ok()) << snap.status().ToString();
  EXPECT_EQ(snap->referenced_bytes, 4 * kMiB);
  EXPECT_EQ(snap->used_bytes, 0u);  // everything is still shared with the volume
  auto b = Pattern(kMiB, 2);
  ASSERT_TRUE(pool.Write(*v, kMiB, b).ok());
  auto now = a;
  std::copy(b.begin(), b.end(), now.begin() + kMiB);
  EXPECT_EQ(ReadAll(pool, "vol"), now);
  EXPECT_EQ(ReadAll(pool, "vol@one"), a);
  // The overwritten megabyte is now the snapshot's alone.
  auto list = pool.set().ListSnapshots("vol");
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].used_bytes, kMiB);
  EXPECT_EQ(pool.set().GetVolumeInfo("vol")->used_by_snapshots_bytes, kMiB);
  EXPECT_EQ(pool.set().GetVolumeInfo("vol")->used_bytes, 5 * kMiB);
  ASSERT_TRUE(pool.CloseAndReopen().ok());
  EXPECT_EQ(ReadAll(pool, "vol"), now);
  EXPECT_EQ(ReadAll(pool, "vol@one"), a);
  CheckAccounting(pool);
  ExpectFsckClean(pool);
}

TEST(Snapshot, IsReadOnly) {
  TestPool pool(32 * kMiB);
  Volume* v = pool.set().CreateVolume("vol", kMiB).value();
  ASSERT_TRUE(pool.Write(*v, 0, Pattern(65536, 1)).ok());
  ASSERT_TRUE(pool.set().CreateSnapshot("vol", "s").ok());
  Volume* s = pool.Find("vol@s");
  ASSERT_NE(s, nullptr);
  EXPECT_TRUE(s->read_only());
  EXPECT_EQ(pool.Write(*s, 0, Pattern(4096, 9)).code(), EROFS);
  EXPECT_EQ(pool.Io(*s, VolumeOp::kDiscard, 0, 65536).code(), EROFS);
  auto expected = Pattern(65536, 1);
  expected.resize(kMiB);
  EXPECT_EQ(ReadAll(pool, "vol@s"), expected);
  EXPECT_EQ(pool.set().CreateSnapshot("vol", "s").status().code(), EEXIST);
  EXPECT_EQ(pool.set().CreateSnapshot("nope", "s").status().code(), ENOENT);
  EXPECT_EQ(pool.set().CreateSnapshot("vol", "bad@name").status().code(), EINVAL);
  EXPECT_EQ(pool.set().DeleteVolume("vol").code(), EBUSY);  // has a snapshot
}

TEST(Snapshot, DeleteFreesExactlyWhatWasUnique) {
  TestPool pool(64 * kMiB);
  Volume* v = pool.set().CreateVolume("vol", 4 * kMiB).value();
  ASSERT_TRUE(pool.Write(*v, 0, Pattern(4 * kMiB, 1)).ok());
  ASSERT_TRUE(pool.set().CreateSnapshot("vol", "s1").ok());
  ASSERT_TRUE(pool.Write(*v, 0, Pattern(2 * kMiB, 2)).ok());
  ASSERT_TRUE(pool.set().CreateSnapshot("vol", "s2").ok());
  ASSERT_TRUE(pool.Write(*v, 0, Pattern(kMiB, 3)).ok());
  ASSERT_TRUE(pool.set().Checkpoint().ok());
  CheckAccounting(pool);
  auto list = pool.set().ListSnapshots("vol").value();
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].name, "s1");
  EXPECT_EQ(list[0].used_bytes, 2 * kMiB);  // pattern 1 of the first 2 MiB
  EXPECT_EQ(list[1].used_bytes, kMiB);      // pattern 2 of the first MiB
  uint64_t free_before = pool.set().Info().free_bytes;
  ASSERT_TRUE(pool.set().DeleteSnapshot("vol", "s1").ok());
  // The data freed, plus the snapshot's directory chain; pages shared stay.
  uint64_t freed = pool.set().Info().free_bytes - free_before;
  EXPECT_GE(freed, 2 * kMiB);
  EXPECT_LE(freed, 2 * kMiB + 8 * 4096);
  EXPECT_EQ(ReadAll(pool, "vol@s2").size(), 4 * kMiB);
  auto s2 = Pattern(4 * kMiB, 1);
  auto p2 = Pattern(2 * kMiB, 2);
  std::copy(p2.begin(), p2.end(), s2.begin());
  EXPECT_EQ(ReadAll(pool, "vol@s2"), s2);
  ASSERT_TRUE(pool.set().DeleteSnapshot("vol", "s2").ok());
  EXPECT_EQ(pool.set().DeleteSnapshot("vol", "s2").code(), ENOENT);
  ASSERT_TRUE(pool.CloseAndReopen().ok());
  CheckAccounting(pool);
  ExpectFsckClean(pool);
  EXPECT_EQ(pool.set().GetVolumeInfo("vol")->allocated_bytes, 4 * kMiB);
}

TEST(Snapshot, LargeDeletesReleaseSpaceInTheBackgroundAndResumeAfterACrash) {
  TestPool pool(128 * kMiB);
  Volume* v = pool.set().CreateVolume("vol", 32 * kMiB).value();
  ASSERT_TRUE(pool.Write(*v, 0, Pattern(32 * kMiB, 1)).ok());
  ASSERT_TRUE(pool.set().CreateSnapshot("vol", "old").ok());
  ASSERT_TRUE(pool.set().CreateSnapshot("vol", "older").ok());
  ASSERT_TRUE(pool.Write(*v, 0, Pattern(32 * kMiB, 2)).ok());  // both snapshots now hold 32 MiB of their own
  ASSERT_TRUE(pool.set().Checkpoint().ok());
  uint64_t free_before = pool.set().Info().free_bytes;
  dynamic_cast<VolumeSetImpl&>(pool.set()).set_background_delete_pages(0);
  ASSERT_TRUE(pool.set().DeleteSnapshot("vol", "old").ok());
  EXPECT_EQ(pool.Find("vol@old"), nullptr);  // gone at once
  EXPECT_EQ(pool.set().ListSnapshots("vol")->size(), 1u);
  ASSERT_TRUE(pool.set().DeleteSnapshot("vol", "older").ok());
  // A crash at any point of the background work: the next open resumes it.
  std::mt19937_64 rng(3);
  ASSERT_TRUE(pool.CrashAndReopen(rng, 0).ok());
  dynamic_cast<VolumeSetImpl&>(pool.set()).WaitForBackgroundDeletes();
  EXPECT_EQ(pool.set().Info().snapshots_being_deleted, 0u);
  EXPECT_EQ(pool.set().Info().snapshot_count, 0u);
  uint64_t freed = pool.set().Info().free_bytes - free_before;
  EXPECT_GE(freed, 32 * kMiB);
  EXPECT_LE(freed, 32 * kMiB + 16 * 4096);
  EXPECT_EQ(ReadAll(pool, "vol"), Pattern(32 * kMiB, 2));
  ExpectFsckClean(pool);
  ASSERT_TRUE(pool.set().DeleteVolume("vol").ok());
}

TEST(Snapshot, RollbackKeepsEverySnapshotAndAllowsRollingForward) {
  TestPool pool(64 * kMiB);
  Volume* v = pool.set().CreateVolume("vol", 2 * kMiB).value();
  auto a = Pattern(2 * kMiB, 1), b = Pattern(2 * kMiB, 2), c = Pattern(2 * kMiB, 3);
  ASSERT_TRUE(pool.Write(*v, 0, a).ok());
  ASSERT_TRUE(pool.set().CreateSnapshot("vol", "a").ok());
  ASSERT_TRUE(pool.Write(*v, 0, b).ok());
  ASSERT_TRUE(pool.set().CreateSnapshot("vol", "b").ok());
  ASSERT_TRUE(pool.Write(*v, 0, c).ok());
  auto kept = pool.set().Rollback("vol", "a", /*keep_current=*/true);
  ASSERT_TRUE(kept.ok()) << kept.status().ToString();
  EXPECT_FALSE(kept->empty());
  EXPECT_EQ(ReadAll(pool, "vol"), a);
  EXPECT_EQ(ReadAll(pool, "vol@b"), b);  // the later snapshot is still there
  EXPECT_EQ(ReadAll(pool, "vol@" + *kept), c);
  // Roll forward to b, then to the state before the rollback.
  ASSERT_TRUE(pool.set().Rollback("vol", "b", false).ok());
  EXPECT_EQ(ReadAll(pool, "vol"), b);
  ASSERT_TRUE(pool.set().Rollback("vol", *kept, false).ok());
  EXPECT_EQ(ReadAll(pool, "vol"), c);
  // Writing after a rollback leaves the snapshot alone.
  ASSERT_TRUE(pool.Write(*pool.Find("vol"), 4096, Pattern(8192, 7)).ok());
  EXPECT_EQ(ReadAll(pool, "vol@" + *kept), c);
  auto list = pool.set().ListSnapshots("vol").value();
  ASSERT_EQ(list.size(), 3u);
  EXPECT_TRUE(list[2].automatic);
  ASSERT_TRUE(pool.CloseAndReopen().ok());
  EXPECT_EQ(ReadAll(pool, "vol@a"), a);
  EXPECT_EQ(ReadAll(pool, "vol@b"), b);
  CheckAccounting(pool);
  ExpectFsckClean(pool);
}

TEST(Snapshot, RollbackToASmallerSnapshotRestoresItsSize) {
  TestPool pool(64 * kMiB);
  Volume* v = pool.set().CreateVolume("vol", kMiB).value();
  ASSERT_TRUE(pool.Write(*v, 0, Pattern(kMiB, 1)).ok());
  ASSERT_TRUE(pool.set().CreateSnapshot("vol", "small").ok());
  ASSERT_TRUE(pool.set().ResizeVolume("vol", 3 * kMiB, false).ok());
  ASSERT_TRUE(pool.Write(*pool.Find("vol"), 2 * kMiB, Pattern(kMiB, 2)).ok());
  ASSERT_TRUE(pool.set().Rollback("vol", "small", false).ok());
  EXPECT_EQ(pool.Find("vol")->size(), kMiB);
  EXPECT_EQ(ReadAll(pool, "vol"), Pattern(kMiB, 1));
  ASSERT_TRUE(pool.CloseAndReopen().ok());
  CheckAccounting(pool);
  ExpectFsckClean(pool);
}

TEST(Snapshot, CloneSharesUntilWrittenAndFlattenCutsTheTie) {
  TestPool pool(64 * kMiB);
  Volume* v = pool.set().CreateVolume("vol", 4 * kMiB).value();
  auto a = Pattern(4 * kMiB, 1);
  ASSERT_TRUE(pool.Write(*v, 0, a).ok());
  ASSERT_TRUE(pool.set().CreateSnapshot("vol", "base").ok());
  uint64_t free_before = pool.set().Info().free_bytes;
  auto clone = pool.set().CloneSnapshot("vol", "base", "copy");
  ASSERT_TRUE(clone.ok()) << clone.status().ToString();
  EXPECT_LE(free_before - pool.set().Info().free_bytes, 4 * 4096u);  // metadata only
  EXPECT_EQ(ReadAll(pool, "copy"), a);
  ASSERT_TRUE(pool.Write(*pool.Find("copy"), 0, Pattern(kMiB, 5)).ok());
  ASSERT_TRUE(pool.Write(*pool.Find("vol"), kMiB, Pattern(kMiB, 6)).ok());
  EXPECT_EQ(ReadAll(pool, "vol@base"), a);
  auto copy = a;
  auto p5 = Pattern(kMiB, 5);
  std::copy(p5.begin(), p5.end(), copy.begin());
  EXPECT_EQ(ReadAll(pool, "copy"), copy);
  EXPECT_EQ(pool.set().GetVolumeInfo("copy")->origin, "vol@base");
  auto refused = pool.set().DeleteSnapshot("vol", "base");
  EXPECT_EQ(refused.code(), EBUSY);
  EXPECT_NE(refused.message().find("copy"), std::string::npos) << refused.message();
  EXPECT_EQ(pool.set().ListSnapshots("vol").value()[0].clones, std::vector<std::string>{"copy"});
  CheckAccounting(pool);
  uint64_t last_done = 0;
  auto copied = pool.set().FlattenVolume("copy", [&](uint64_t done, uint64_t total) {
    EXPECT_LE(done, total);
    last_done = done;
    return true;
  });
  ASSERT_TRUE(copied.ok()) << copied.status().ToString();
  EXPECT_EQ(copied.value(), 3 * kMiB / kCluster);  // the clusters it had not rewritten
  EXPECT_EQ(last_done, 4 * kMiB / kCluster);
  EXPECT_EQ(pool.set().GetVolumeInfo("copy")->origin, "");
  EXPECT_EQ(ReadAll(pool, "copy"), copy);
  CheckAccounting(pool);
  ASSERT_TRUE(pool.set().DeleteSnapshot("vol", "base").ok());
  ASSERT_TRUE(pool.CloseAndReopen().ok());
  EXPECT_EQ(ReadAll(pool, "copy"), copy);
  CheckAccounting(pool);
  ExpectFsckClean(pool);
  // Nothing is shared any more: each volume's data is its own.
  auto report = CheckPool(pool.device());
  EXPECT_EQ(report->shared_runs, 0u);
}

TEST(Snapshot, ARunBeingReadStaysAllocatedWhenItsLastSharerGoes) {
  // A read of a shared cluster is in flight; a write copies the cluster
  // away and the snapshot that shared it is deleted: the old run must not
  // be freed (and reused) before the read completes.
  TestPool pool(64 * kMiB);
  Volume* v = pool.set().CreateVolume("vol", kMiB).value();
  ASSERT_TRUE(pool.Write(*v, 0, Pattern(65536, 1)).ok());
  ASSERT_TRUE(pool.set().CreateSnapshot("vol", "s").ok());
  AlignedBuffer read_buf = AllocateAligned(65536);
  bool read_done = false;
  VolumeIo read{.op = VolumeOp::kRead, .offset = 0, .length = 65536, .buf = read_buf.get()};
  read.context = &read_done;
  read.done = [](VolumeIo* io, const Status& s) {
    EXPECT_TRUE(s.ok()) << s.ToString();
    *static_cast<bool*>(io->context) = true;
  };
  auto reader_queue = pool.device().CreateQueue(8);
  v->Submit(&read, *reader_queue);  // the in-memory device runs it at the next Poll
  ASSERT_FALSE(read_done);
  // Copied away while the read is in flight. (Not an unaligned write: that
  // would wait for the read, which this thread polls only below.)
  ASSERT_TRUE(pool.Write(*v, 4096, Pattern(4096, 2)).ok());
  ASSERT_TRUE(pool.Flush(*v).ok());
  ASSERT_TRUE(pool.set().DeleteSnapshot("vol", "s").ok());
  uint64_t free_while_reading = pool.set().Info().free_bytes;
  while (!read_done) reader_queue->Poll(true);
  auto expected = Pattern(65536, 1);
  EXPECT_TRUE(std::equal(expected.begin(), expected.end(), read_buf.get()));
  // Only now is the old cluster free.
  EXPECT_EQ(pool.set().Info().free_bytes, free_while_reading + 65536);
  ExpectFsckClean(pool);
}

TEST(Snapshot, EncryptedCompressedVolumesShareTheirKeyWithSnapshotsAndClones) {
  PoolSecret secret;
  std::array<uint8_t, kPoolKeyBytes> key{};
  key[0] = 42;
  secret.key.emplace(key);
  PoolCreateOptions create{.secret = secret, .encrypt_by_default = true, .compression = {Compression::kLz4, 0}};
  PoolOpenOptions open;
  open.secret = secret;
  TestPool pool(64 * kMiB, create, open);
  Volume* v = pool.set().CreateVolume("vol", 2 * kMiB).value();
  std::vector<uint8_t> text(2 * kMiB);
  for (size_t i = 0; i < text.size(); i++) text[i] = "snapshots share clusters "[i % 25];
  ASSERT_TRUE(pool.Write(*v, 0, text).ok());
  ASSERT_TRUE(pool.set().CreateSnapshot("vol", "s").ok());
  ASSERT_TRUE(pool.Write(*v, 0, Pattern(65536, 3)).ok());
  ASSERT_TRUE(pool.set().CloneSnapshot("vol", "s", "c").ok());
  ASSERT_TRUE(pool.Write(*pool.Find("c"), 65536, Pattern(4096, 4)).ok());
  auto clone = text;
  auto p4 = Pattern(4096, 4);
  std::copy(p4.begin(), p4.end(), clone.begin() + 65536);
  ASSERT_TRUE(pool.CloseAndReopen().ok());
  EXPECT_EQ(ReadAll(pool, "vol@s"), text);
  EXPECT_EQ(ReadAll(pool, "c"), clone);
  EXPECT_TRUE(pool.set().GetVolumeInfo("c")->encrypted);
  EXPECT_GT(pool.set().GetVolumeInfo("c")->compressed_clusters, 0u);
  CheckAccounting(pool);
  ExpectFsckClean(pool);
}

TEST(Snapshot, TakesTheWritesInFlightWhenItStartsAndNeverChangesAfter) {
  // 32 asynchronous writes are in flight (the in-memory device runs them
  // only when their queue is polled) when a snapshot starts on another
  // thread. The snapshot must wait for them: it holds all 32, and reading
  // it before and after the writes' completions have run gives the same
  // bytes. Without the write barrier the snapshot returns at once, shares
  // the clusters, and the writes land in it afterwards.
  TestPool pool(64 * kMiB);
  Volume* v = pool.set().CreateVolume("vol", 2 * kMiB).value();
  ASSERT_TRUE(pool.Write(*v, 0, std::vector<uint8_t>(2 * kMiB, 0xee)).ok());
  const uint64_t blocks = 2 * kMiB / 4096;
  std::vector<uint8_t> model(blocks, 0xee);  // each block's byte
  auto writer_queue = pool.device().CreateQueue(64);
  std::vector<AlignedBuffer> buffers;
  std::vector<VolumeIo> ios(32);
  int completed = 0;
  for (int snap = 0; snap < 8; snap++) {
    for (size_t i = 0; i < ios.size(); i++) {
      uint64_t block = (snap * 7 + i * 13) % blocks;  // distinct within a round
      uint8_t byte = static_cast<uint8_t>(1 + snap * 32 + i);
      buffers.push_back(AllocateAligned(4096));
      std::memset(buffers.back().get(), byte, 4096);
      ios[i] = VolumeIo{.op = VolumeOp::kWrite, .offset = block * 4096, .length = 4096, .buf = buffers.back().get()};
      ios[i].context = &completed;
      ios[i].done = [](VolumeIo* done, const Status& s) {
        EXPECT_TRUE(s.ok()) << s.ToString();
        (*static_cast<int*>(done->context))++;
      };
      v->Submit(&ios[i], *writer_queue);
      model[block] = byte;
    }
    std::atomic<bool> taken{false};
    std::thread snapper([&] {
      EXPECT_TRUE(pool.set().CreateSnapshot("vol", SnapshotName(snap)).ok());
      taken = true;
    });
    // Give a snapshot that does not wait the time to finish first.
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    std::vector<uint8_t> early;
    if (taken) early = ReadAll(pool, "vol@" + SnapshotName(snap));
    while (completed < 32 * (snap + 1)) writer_queue->Poll(true);
    snapper.join();
    auto content = ReadAll(pool, "vol@" + SnapshotName(snap));
    if (!early.empty()) {
      EXPECT_EQ(early, content) << "snapshot " << snap << " changed after it was taken";
    }
    for (uint64_t b = 0; b < blocks; b++)
      ASSERT_EQ(content[b * 4096], model[b]) << "snapshot " << snap << " block " << b << " misses a write";
  }
  for (int snap = 0; snap < 8; snap++) EXPECT_EQ(pool.Find("vol@" + SnapshotName(snap))->size(), 2 * kMiB);
  CheckAccounting(pool);
}

}  // namespace
}  // namespace edgestor

namespace edgestor {
namespace {

uint64_t ResidentKiB() {
  FILE* f = std::fopen("/proc/self/status", "r");
  char line[256];
  uint64_t kib = 0;
  while (f && std::fgets(line, sizeof line, f))
    if (std::sscanf(line, "VmRSS: %lu kB", &kib) == 1) break;
  if (f) std::fclose(f);
  return kib;
}

double SecondsSince(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// 1,000 snapshots of one volume, each after a few writes: create them all,
// read the oldest and newest (and samples) against a log of the writes,
// delete them in random order; the space comes back exactly.
// Many writes in flight at once into a freshly snapshotted volume, several
// into the same clusters: each shared cluster is copied (or, compressed,
// re-encoded) asynchronously; rewrites racing on one cluster redo their
// part against the winner's. The volume reads back every write, the
// snapshot its old content. With `zeroing`, the requests are discards and
// write-zeroes instead, which take the same asynchronous rewrites.
void WriteManyInFlightAfterASnapshot(TestPool& pool, bool compressed = false, bool zeroing = false) {
  constexpr uint64_t kVolume = 4 * kMiB, kBlock = 4096, kWrites = 96;
  Volume* v = pool.set().CreateVolume("vol", kVolume).value();
  auto before = Pattern(kVolume, 3);
  ASSERT_TRUE(pool.Write(*v, 0, before).ok());
  ASSERT_TRUE(pool.set().CreateSnapshot("vol", "s").ok());
  auto expected = before;
  // Distinct blocks, drawn from 8 clusters so that copies race.
  std::mt19937_64 rng(7);
  std::set<uint64_t> blocks;
  while (blocks.size() < kWrites) blocks.insert((rng() % 8) * (kCluster / kBlock) * 5 + rng() % (kCluster / kBlock));
  std::vector<VolumeIo> ios(kWrites);
  std::vector<AlignedBuffer> buffers;
  int done = 0;
  size_t i = 0;
  for (uint64_t block : blocks) {
    buffers.push_back(AllocateAligned(kBlock));
    std::memset(buffers.back().get(), zeroing ? 0 : static_cast<int>(0x40 + i % 64), kBlock);
    std::memcpy(expected.data() + block * kBlock, buffers.back().get(), kBlock);
    VolumeIo& io = ios[i];
    io.op = !zeroing ? VolumeOp::kWrite : i % 2 ? VolumeOp::kDiscard : VolumeOp::kWriteZeroes;
    io.offset = block * kBlock;
    io.length = kBlock;
    io.buf = zeroing ? nullptr : buffers.back().get();
    i++;
    io.context = &done;
    io.done = [](VolumeIo* finished, const Status& status) {
      if (!status.ok()) ADD_FAILURE() << status.ToString();
      (*static_cast<int*>(finished->context))++;
    };
    v->Submit(&io, pool.queue());
  }
  while (done < static_cast<int>(kWrites)) pool.queue().Poll(/*wait=*/true);
  auto& thin = dynamic_cast<ThinVolume&>(*v);
  EXPECT_GT(compressed ? thin.reencodes_started() : thin.copies_started(), 0u);
  EXPECT_GT(thin.rewrite_retries(), 0u) << "no two rewrites of one cluster raced";
  VolumeInfo info = pool.set().GetVolumeInfo("vol").value();  // what vol.info reports
  EXPECT_EQ(info.cow_copies, thin.copies_started());
  EXPECT_EQ(info.compressed_rewrites, thin.reencodes_started());
  EXPECT_EQ(info.rewrite_retries, thin.rewrite_retries());
  EXPECT_TRUE(ReadAll(pool, "vol") == expected);
  EXPECT_TRUE(ReadAll(pool, "vol@s") == before);
  ASSERT_TRUE(pool.Flush(*v).ok());
  ExpectFsckClean(pool);
  ASSERT_TRUE(pool.CloseAndReopen().ok());
  EXPECT_TRUE(ReadAll(pool, "vol") == expected);
  EXPECT_TRUE(ReadAll(pool, "vol@s") == before);
  ExpectFsckClean(pool);
}

TEST(Snapshot, CopiesSharedClustersWithManyWritesInFlight) {
  TestPool pool(64 * kMiB);
  WriteManyInFlightAfterASnapshot(pool);
}

TEST(Snapshot, ReencodesCompressedClustersWithManyWritesInFlight) {
  TestPool pool(64 * kMiB, PoolCreateOptions{.compression = {Compression::kLz4, 0}});
  WriteManyInFlightAfterASnapshot(pool, /*compressed=*/true);
}

TEST(Snapshot, DiscardsAndZeroesCopySharedClustersAsynchronously) {
  TestPool pool(64 * kMiB);
  WriteManyInFlightAfterASnapshot(pool, /*compressed=*/false, /*zeroing=*/true);
}

TEST(Snapshot, DiscardsAndZeroesReencodeCompressedClustersAsynchronously) {
  TestPool pool(64 * kMiB, PoolCreateOptions{.compression = {Compression::kLz4, 0}});
  WriteManyInFlightAfterASnapshot(pool, /*compressed=*/true, /*zeroing=*/true);
}

TEST(Snapshot, CopiesEncryptedSharedClustersWithManyWritesInFlight) {
  PoolCreateOptions create;
  create.secret = testing::KeyFileSecret(2);
  create.encrypt_by_default = true;
  TestPool pool(64 * kMiB, create, testing::OpenWith(testing::KeyFileSecret(2)));
  WriteManyInFlightAfterASnapshot(pool);
}

TEST(Snapshot, AThousandSnapshotsOfOneVolume) {
  constexpr int kSnapshots = 1000;
  constexpr uint64_t kVolume = 32 * kMiB;
  TestPool pool(384 * kMiB);  // each 4 KiB write copies a 64 KiB cluster
  Volume* v = pool.set().CreateVolume("vol", kVolume).value();
  ASSERT_TRUE(pool.Write(*v, 0, Pattern(kVolume, 1)).ok());
  std::mt19937_64 rng(7);
  struct Logged {
    uint64_t offset;
    uint8_t seed;
  };
  std::vector<Logged> log;            // every 4 KiB write after the fill
  std::vector<size_t> log_at(kSnapshots);  // writes before snapshot i
  auto content_at = [&](size_t writes) {
    auto data = Pattern(kVolume, 1);
    for (size_t i = 0; i < writes; i++) {
      auto p = Pattern(4096, log[i].seed);
      std::copy(p.begin(), p.end(), data.begin() + log[i].offset);
    }
    return data;
  };
  uint64_t rss_before = ResidentKiB();
  auto t = std::chrono::steady_clock::now();
  double slowest_create = 0;
  for (int i = 0; i < kSnapshots; i++) {
    for (int w = 0; w < 4; w++) {
      Logged l{rng() % (kVolume / 4096) * 4096, static_cast<uint8_t>(rng())};
      ASSERT_TRUE(pool.Write(*v, l.offset, Pattern(4096, l.seed)).ok());
      log.push_back(l);
    }
    log_at[i] = log.size();
    auto one = std::chrono::steady_clock::now();
    ASSERT_TRUE(pool.set().CreateSnapshot("vol", SnapshotName(i)).ok());
    slowest_create = std::max(slowest_create, SecondsSince(one));
  }
  double create_seconds = SecondsSince(t);
  uint64_t rss_with = ResidentKiB();
  t = std::chrono::steady_clock::now();
  auto list = pool.set().ListSnapshots("vol");
  double list_seconds = SecondsSince(t);
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), static_cast<size_t>(kSnapshots));
  EXPECT_EQ(ReadAll(pool, "vol@s0"), content_at(log_at[0]));
  EXPECT_EQ(ReadAll(pool, "vol@s999"), content_at(log_at[999]));
  ASSERT_TRUE(pool.CloseAndReopen().ok());  // open with 1,000 snapshots
  EXPECT_EQ(ReadAll(pool, "vol@s0"), content_at(log_at[0]));
  ExpectFsckClean(pool);

  std::vector<int> order(kSnapshots);
  for (int i = 0; i < kSnapshots; i++) order[i] = i;
  std::shuffle(order.begin(), order.end(), rng);
  t = std::chrono::steady_clock::now();
  for (int n = 0; n < kSnapshots; n++) {
    ASSERT_TRUE(pool.set().DeleteSnapshot("vol", SnapshotName(order[n])).ok());
    if (n % 250 == 125) {  // a survivor still reads as it was taken
      int survivor = order[n + 1];
      EXPECT_EQ(ReadAll(pool, "vol@s" + std::to_string(survivor)), content_at(log_at[survivor]));
    }
  }
  double delete_seconds = SecondsSince(t);
  EXPECT_EQ(ReadAll(pool, "vol"), content_at(log.size()));
  EXPECT_EQ(pool.set().GetVolumeInfo("vol")->used_bytes, kVolume);
  ExpectFsckClean(pool);
  std::printf("1000 snapshots of a 32 MiB volume (4 writes of 4 KiB between them): create %.2f s (slowest %.1f ms), "
              "list %.1f ms, delete in random order %.2f s; resident memory %llu -> %llu KiB\n",
              create_seconds, slowest_create * 1000, list_seconds * 1000, delete_seconds,
              static_cast<unsigned long long>(rss_before), static_cast<unsigned long long>(rss_with));
}

}  // namespace
}  // namespace edgestor
