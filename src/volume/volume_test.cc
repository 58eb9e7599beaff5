// Behaviour of thin volumes on a healthy device.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>

#include "volume/testing/test_pool.h"
#include "volume/thin_volume.h"

namespace edgestor {
namespace {

using testing::TestPool;

constexpr uint64_t kMiB = 1 << 20;

std::vector<uint8_t> Pattern(size_t len, uint8_t seed) {
  std::vector<uint8_t> out(len);
  for (size_t i = 0; i < len; i++) out[i] = static_cast<uint8_t>(seed + i * 7 + i / 512);
  return out;
}

TEST(Volume, WrittenDataReadsBackAfterCloseAndReopen) {
  TestPool pool(64 * kMiB);
  ASSERT_TRUE(pool.set().CreateVolume("vol0", 16 * kMiB).ok());
  Volume* v = pool.Find("vol0");
  auto data = Pattern(256 * 1024, 3);
  ASSERT_TRUE(pool.Write(*v, 3 * kMiB, data).ok());
  ASSERT_TRUE(pool.CloseAndReopen().ok());
  v = pool.Find("vol0");
  ASSERT_NE(v, nullptr);
  auto back = pool.Read(*v, 3 * kMiB, data.size());
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back.value(), data);
}

TEST(Volume, NeverWrittenSpaceReadsZerosWithoutDeviceIo) {
  TestPool pool(64 * kMiB);
  Volume* v = pool.set().CreateVolume("vol0", 16 * kMiB).value();
  ASSERT_TRUE(pool.Write(*v, 0, Pattern(4096, 1)).ok());
  uint64_t reads_before = pool.device().stats().reads;
  // Same cluster, blocks never written; and a page never stored.
  auto a = pool.Read(*v, 8192, 8192);
  auto b = pool.Read(*v, 8 * kMiB, kMiB);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a.value(), std::vector<uint8_t>(8192, 0));
  EXPECT_EQ(b.value(), std::vector<uint8_t>(kMiB, 0));
  EXPECT_EQ(pool.device().stats().reads, reads_before);
}

TEST(Volume, FirstFourKiBWriteWritesFourKiBOfData) {
  TestPool pool(64 * kMiB);
  Volume* v = pool.set().CreateVolume("vol0", 16 * kMiB).value();
  uint64_t before = pool.device().stats().bytes_written;
  ASSERT_TRUE(pool.Write(*v, 5 * 65536 + 8192, Pattern(4096, 9)).ok());
  EXPECT_EQ(pool.device().stats().bytes_written - before, 4096u);  // metadata waits for the commit
  EXPECT_EQ(pool.set().GetVolumeInfo("vol0")->allocated_bytes, 65536u);
  EXPECT_EQ(pool.set().GetVolumeInfo("vol0")->written_bytes, 4096u);
}

TEST(Volume, OverwriteOfOwnedClusterChangesNoMetadata) {
  TestPool pool(64 * kMiB);
  Volume* v = pool.set().CreateVolume("vol0", 16 * kMiB).value();
  ASSERT_TRUE(pool.Write(*v, 0, Pattern(65536, 1)).ok());
  ASSERT_TRUE(pool.Flush(*v).ok());
  uint64_t before = pool.device().stats().bytes_written;
  ASSERT_TRUE(pool.Write(*v, 4096, Pattern(8192, 2)).ok());
  ASSERT_TRUE(pool.Flush(*v).ok());
  EXPECT_EQ(pool.device().stats().bytes_written - before, 8192u);
}

TEST(Volume, DiscardOfWholeClustersFreesThemAndReadsZeros) {
  TestPool pool(64 * kMiB);
  Volume* v = pool.set().CreateVolume("vol0", 16 * kMiB).value();
  ASSERT_TRUE(pool.Write(*v, 0, Pattern(4 * 65536, 1)).ok());
  ASSERT_TRUE(pool.Flush(*v).ok());
  uint64_t free_before = pool.set().Info().free_bytes;
  ASSERT_TRUE(pool.Io(*v, VolumeOp::kDiscard, 65536, 2 * 65536).ok());
  EXPECT_EQ(pool.set().GetVolumeInfo("vol0")->allocated_bytes, 2 * 65536u);
  ASSERT_TRUE(pool.Flush(*v).ok());  // freed space is reusable once durable
  EXPECT_EQ(pool.set().Info().free_bytes, free_before + 2 * 65536);
  auto back = pool.Read(*v, 0, 4 * 65536);
  auto expected = Pattern(4 * 65536, 1);
  std::fill(expected.begin() + 65536, expected.begin() + 3 * 65536, 0);
  EXPECT_EQ(back.value(), expected);
}

TEST(Volume, PartialDiscardAndWriteZeroesReadAsZeros) {
  TestPool pool(64 * kMiB);
  Volume* v = pool.set().CreateVolume("vol0", 16 * kMiB).value();
  ASSERT_TRUE(pool.Write(*v, 0, Pattern(65536, 1)).ok());
  ASSERT_TRUE(pool.Io(*v, VolumeOp::kWriteZeroes, 1024, 8192).ok());  // sub-block edges
  ASSERT_TRUE(pool.Io(*v, VolumeOp::kDiscard, 32768, 512).ok());
  auto expected = Pattern(65536, 1);
  std::fill(expected.begin() + 1024, expected.begin() + 1024 + 8192, 0);
  std::fill(expected.begin() + 32768, expected.begin() + 32768 + 512, 0);
  ASSERT_TRUE(pool.CloseAndReopen().ok());
  EXPECT_EQ(pool.Read(*pool.Find("vol0"), 0, 65536).value(), expected);
}

TEST(Volume, WriteOfZeroClusterFreesInsteadOfWriting) {
  TestPool pool(64 * kMiB);
  Volume* v = pool.set().CreateVolume("vol0", 16 * kMiB).value();
  ASSERT_TRUE(pool.Write(*v, 0, Pattern(65536, 1)).ok());
  uint64_t before = pool.device().stats().bytes_written;
  ASSERT_TRUE(pool.Write(*v, 0, std::vector<uint8_t>(65536, 0)).ok());
  EXPECT_EQ(pool.device().stats().bytes_written, before);
  EXPECT_EQ(pool.set().GetVolumeInfo("vol0")->allocated_bytes, 0u);
  EXPECT_EQ(pool.Read(*v, 0, 65536).value(), std::vector<uint8_t>(65536, 0));
}

TEST(Volume, UnalignedSectorWritesMergeIntoBlocks) {
  TestPool pool(64 * kMiB);
  Volume* v = pool.set().CreateVolume("vol0", 16 * kMiB).value();
  ASSERT_TRUE(pool.Write(*v, 512, Pattern(1024, 5)).ok());
  ASSERT_TRUE(pool.Write(*v, 7 * 512, Pattern(4096, 6)).ok());  // straddles two blocks
  std::vector<uint8_t> expected(16384, 0);
  auto a = Pattern(1024, 5), b = Pattern(4096, 6);
  std::copy(a.begin(), a.end(), expected.begin() + 512);
  std::copy(b.begin(), b.end(), expected.begin() + 7 * 512);
  EXPECT_EQ(pool.Read(*v, 0, 16384).value(), expected);
  auto middle = pool.Read(*v, 1024, 2048);  // unaligned read
  EXPECT_EQ(middle.value(), std::vector<uint8_t>(expected.begin() + 1024, expected.begin() + 3072));
}

// NBD clients that agreed to no block size may address single bytes.
TEST(Volume, ByteGranularRequestsReadBackExactly) {
  TestPool pool(64 * kMiB);
  Volume* v = pool.set().CreateVolume("vol0", 1 * kMiB).value();
  std::vector<uint8_t> expected(16384, 0);
  auto put = [&](uint64_t at, const std::vector<uint8_t>& data) {
    ASSERT_TRUE(pool.Write(*v, at, data).ok()) << "write at " << at;
    std::copy(data.begin(), data.end(), expected.begin() + at);
  };
  put(1, {1, 1, 1});                  // qemu-io's "write -P 1 1 3"
  put(4095, Pattern(2, 7));           // across a block boundary
  put(5000, Pattern(700, 3));         // odd length inside a block
  ASSERT_TRUE(pool.Io(*v, VolumeOp::kWriteZeroes, 5100, 13).ok());
  std::fill(expected.begin() + 5100, expected.begin() + 5113, 0);
  ASSERT_TRUE(pool.Io(*v, VolumeOp::kDiscard, 2, 1).ok());
  expected[2] = 0;
  EXPECT_EQ(pool.Read(*v, 0, 16384).value(), expected);
  auto odd = pool.Read(*v, 4094, 5);  // byte-granular read across the boundary
  ASSERT_TRUE(odd.ok());
  EXPECT_EQ(odd.value(), std::vector<uint8_t>(expected.begin() + 4094, expected.begin() + 4099));
  ASSERT_TRUE(pool.CloseAndReopen().ok());
  EXPECT_EQ(pool.Read(*pool.Find("vol0"), 0, 16384).value(), expected);
  // Only the range still bounds a request.
  AlignedBuffer buf = AllocateAligned(4096);
  EXPECT_EQ(pool.Io(*pool.Find("vol0"), VolumeOp::kWrite, kMiB - 1, 2, buf.get()).code(), EINVAL);
}

TEST(Volume, BadRequestsGetEinvalAndChangeNothing) {
  TestPool pool(64 * kMiB);
  Volume* v = pool.set().CreateVolume("vol0", 1 * kMiB).value();
  AlignedBuffer buf = AllocateAligned(8192);
  EXPECT_EQ(pool.Io(*v, VolumeOp::kWrite, kMiB - 4096, 8192, buf.get()).code(), EINVAL);
  EXPECT_EQ(pool.Io(*v, VolumeOp::kDiscard, 2 * kMiB, 4096).code(), EINVAL);
  EXPECT_EQ(pool.Io(*v, VolumeOp::kRead, ~0ull - 511, 1024, buf.get()).code(), EINVAL);
  EXPECT_EQ(pool.set().GetVolumeInfo("vol0")->allocated_bytes, 0u);
}

TEST(Volume, ControlOperationsValidateAndPersist) {
  TestPool pool(64 * kMiB);
  EXPECT_EQ(pool.set().CreateVolume("bad/name", kMiB).status().code(), EINVAL);
  EXPECT_EQ(pool.set().CreateVolume("v", 1000).status().code(), EINVAL);
  ASSERT_TRUE(pool.set().CreateVolume("v", kMiB).ok());
  EXPECT_EQ(pool.set().CreateVolume("v", kMiB).status().code(), EEXIST);
  ASSERT_TRUE(pool.set().ResizeVolume("v", 4 * kMiB, false).ok());
  EXPECT_EQ(pool.set().ResizeVolume("v", 2 * kMiB, false).code(), EINVAL);
  EXPECT_EQ(pool.set().ResizeVolume("nope", 2 * kMiB, false).code(), ENOENT);
  std::mt19937_64 rng(1);
  ASSERT_TRUE(pool.CrashAndReopen(rng).ok());  // control operations are durable on return
  EXPECT_EQ(pool.set().GetVolumeInfo("v")->size, 4 * kMiB);
}

TEST(Volume, ShrinkFreesDataPastTheEndAndGrowExposesZeros) {
  TestPool pool(64 * kMiB);
  Volume* v = pool.set().CreateVolume("v", 8 * kMiB).value();
  ASSERT_TRUE(pool.Write(*v, 6 * kMiB, Pattern(kMiB, 4)).ok());
  ASSERT_TRUE(pool.Write(*v, 0, Pattern(65536, 4)).ok());
  ASSERT_TRUE(pool.set().ResizeVolume("v", 2 * kMiB, true).ok());
  EXPECT_EQ(pool.set().GetVolumeInfo("v")->allocated_bytes, 65536u);
  ASSERT_TRUE(pool.set().ResizeVolume("v", 8 * kMiB, false).ok());
  EXPECT_EQ(pool.Read(*v, 6 * kMiB, kMiB).value(), std::vector<uint8_t>(kMiB, 0));
  EXPECT_EQ(pool.Read(*v, 0, 65536).value(), Pattern(65536, 4));
}

TEST(Volume, DeleteReturnsAllSpace) {
  TestPool pool(64 * kMiB);
  uint64_t free_empty = pool.set().Info().free_bytes;
  Volume* v = pool.set().CreateVolume("v", 16 * kMiB).value();
  ASSERT_TRUE(pool.Write(*v, 0, Pattern(4 * kMiB, 1)).ok());
  ASSERT_TRUE(pool.set().Checkpoint().ok());
  ASSERT_TRUE(pool.set().DeleteVolume("v").ok());
  ASSERT_TRUE(pool.set().Checkpoint().ok());  // the old chain is released by the next one
  EXPECT_EQ(pool.set().Info().free_bytes, free_empty);
  EXPECT_EQ(pool.set().FindVolume("v").status().code(), ENOENT);
}

TEST(Volume, FullPoolGivesEnospcKeepsDataAndRecoversAfterDiscard) {
  TestPool pool(16 * kMiB);
  Volume* v = pool.set().CreateVolume("v", 64 * kMiB).value();  // thin: larger than the pool
  uint64_t written = 0;
  Status s;
  while ((s = pool.Write(*v, written, Pattern(65536, static_cast<uint8_t>(written >> 16)))).ok()) written += 65536;
  EXPECT_EQ(s.code(), ENOSPC);
  ASSERT_GT(written, 4 * kMiB);
  ASSERT_TRUE(pool.Flush(*v).ok());
  for (uint64_t off = 0; off < written; off += 65536)
    ASSERT_EQ(pool.Read(*v, off, 65536).value(), Pattern(65536, static_cast<uint8_t>(off >> 16)));
  ASSERT_TRUE(pool.Io(*v, VolumeOp::kDiscard, 0, kMiB).ok());
  ASSERT_TRUE(pool.Flush(*v).ok());
  EXPECT_TRUE(pool.Write(*v, written, Pattern(65536, 1)).ok());
  ASSERT_TRUE(pool.CloseAndReopen().ok());
  auto report = CheckPool(pool.device());
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->ok()) << report->problems[0];
}

TEST(Volume, SmallMapCacheStaysWithinBudgetAndReadsStayCorrect) {
  PoolOpenOptions open;
  open.map_cache_bytes = 1;  // the minimum: 64 pages
  TestPool pool(256 * kMiB, PoolCreateOptions{.cluster_size = 4096}, open);
  Volume* v = pool.set().CreateVolume("v", 1ull << 30).value();
  // One 4 KiB write per map page (255 clusters of 4 KiB each): 300 pages.
  for (uint64_t p = 0; p < 300; p++) ASSERT_TRUE(pool.Write(*v, p * 255 * 4096, Pattern(4096, p & 0xff)).ok());
  ASSERT_TRUE(pool.set().Checkpoint().ok());
  uint64_t misses_before = pool.set().Info().map_cache_misses;
  uint64_t loads_before = pool.set().Info().map_page_async_loads;
  for (uint64_t p = 0; p < 300; p++) {
    ASSERT_EQ(pool.Read(*v, p * 255 * 4096, 4096).value(), Pattern(4096, p & 0xff));
    EXPECT_LE(pool.set().Info().cached_map_pages, pool.set().Info().map_cache_limit_pages + 1);
  }
  // At most 65 of the 300 pages stayed cached: the others were read again
  // (asynchronously, their requests parked meanwhile).
  PoolInfo info = pool.set().Info();
  EXPECT_EQ(info.map_cache_misses, misses_before);
  EXPECT_GE(info.map_page_async_loads - loads_before, 300u - info.map_cache_limit_pages - 1);
  ASSERT_EQ(pool.Read(*v, 299 * 255 * 4096, 4096).value(), Pattern(4096, 299 & 0xff));  // just read: cached
  EXPECT_GT(pool.set().Info().map_cache_hits, info.map_cache_hits);
  EXPECT_EQ(pool.set().Info().map_page_async_loads, info.map_page_async_loads);
}

// Clusters that follow each other on the device and in the request's
// buffer are one device I/O: a 1 MiB write into fresh space is one write,
// and reading it back one read; each cluster is still mapped on its own.
TEST(Volume, ConsecutiveClustersGoToTheDeviceAsOneIo) {
  TestPool pool(64 * kMiB);  // 64 KiB clusters: 16 per MiB
  Volume* v = pool.set().CreateVolume("v", 16 * kMiB).value();
  DeviceStats before = pool.device().stats();
  ASSERT_TRUE(pool.Write(*v, kMiB, Pattern(kMiB, 3)).ok());
  DeviceStats after = pool.device().stats();
  EXPECT_EQ(after.writes - before.writes, 1u);
  EXPECT_EQ(after.bytes_written - before.bytes_written, kMiB);
  before = after;
  EXPECT_EQ(pool.Read(*v, kMiB - 65536, kMiB + 131072).value(),  // with a hole on each side
            [] {
              std::vector<uint8_t> expected(kMiB + 131072, 0);
              auto data = Pattern(kMiB, 3);
              std::copy(data.begin(), data.end(), expected.begin() + 65536);
              return expected;
            }());
  after = pool.device().stats();
  EXPECT_EQ(after.reads - before.reads, 1u);
  // Every cluster is mapped, and survives a reopen.
  ASSERT_TRUE(pool.Flush(*v).ok());
  ASSERT_TRUE(pool.CloseAndReopen().ok());
  v = pool.set().FindVolume("v").value();
  EXPECT_EQ(pool.Read(*v, kMiB, kMiB).value(), Pattern(kMiB, 3));
  auto report = CheckPool(pool.device());
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->ok()) << report->problems[0];
}

// While a snapshot waits for the writes in flight, a new write is parked
// off its thread (no device I/O, no completion) and starts again, on its
// own queue, once the barrier is lowered.
TEST(Volume, WritesWaitOffTheirThreadBehindASnapshotsBarrier) {
  TestPool pool(64 * kMiB);
  Volume* v = pool.set().CreateVolume("v", 4 * kMiB).value();
  auto* thin = dynamic_cast<ThinVolume*>(v);
  ASSERT_NE(thin, nullptr);
  ASSERT_TRUE(pool.Write(*v, 0, Pattern(65536, 1)).ok());
  {
    std::lock_guard lock(thin->mutex());
    thin->set_write_barrier(true);
  }
  pool.device().HoldSyncIo();  // a synchronous write would show here
  auto data = Pattern(8192, 3);
  AlignedBuffer buf = AllocateAligned(data.size());
  std::memcpy(buf.get(), data.data(), data.size());
  bool done = false;
  VolumeIo write{.op = VolumeOp::kWrite, .offset = 4096, .length = data.size(), .buf = buf.get()};
  write.context = &done;
  write.done = [](VolumeIo* io, const Status& status) {
    EXPECT_TRUE(status.ok()) << status.ToString();
    *static_cast<bool*>(io->context) = true;
  };
  v->Submit(&write, pool.queue());
  for (int i = 0; i < 20; i++) pool.queue().Poll(/*wait=*/false);
  EXPECT_FALSE(done);
  EXPECT_EQ(pool.device().sync_io_waiting(), 0u);
  EXPECT_EQ(thin->barrier_waits(), 1u);
  EXPECT_EQ(thin->async_writes(), 0u);  // a snapshot waiting for the count is not held up by it
  pool.device().ReleaseSyncIo();
  {
    std::lock_guard lock(thin->mutex());
    thin->set_write_barrier(false);
  }
  while (!done) pool.queue().Poll(/*wait=*/true);
  auto expected = Pattern(65536, 1);
  std::copy(data.begin(), data.end(), expected.begin() + 4096);
  EXPECT_EQ(pool.Read(*v, 0, 65536).value(), expected);
}

// An unaligned write waits for its device I/O without the volume mutex, and
// only its own clusters wait for it: an aligned write to another cluster of
// the same volume, submitted after it, reaches the device while it is still
// reading its partial block (before, it ran under the mutex and the second
// write waited for it).
TEST(Volume, UnalignedWriteHoldsNoLockAcrossItsDeviceIo) {
  TestPool pool(64 * kMiB);
  Volume* v = pool.set().CreateVolume("v", 4 * kMiB).value();
  auto* thin = static_cast<ThinVolume*>(v);
  ASSERT_TRUE(pool.Write(*v, 0, Pattern(2 * 65536, 1)).ok());

  pool.device().HoldCompletions();
  int done = 0;
  auto note = [](VolumeIo* io, const Status& status) {
    EXPECT_TRUE(status.ok()) << status.ToString();
    ++*static_cast<int*>(io->context);
  };
  auto data = Pattern(1000, 9);
  AlignedBuffer unaligned_buf = AllocateAligned(1000);
  std::memcpy(unaligned_buf.get(), data.data(), data.size());
  VolumeIo unaligned{.op = VolumeOp::kWrite, .offset = 100, .length = 1000, .buf = unaligned_buf.get()};
  unaligned.context = &done;
  unaligned.done = note;
  v->Submit(&unaligned, pool.queue());
  EXPECT_EQ(pool.device().queued_bytes(), 4096u);  // its partial block's read, held by the device
  EXPECT_EQ(done, 0);
  ASSERT_TRUE(thin->mutex().try_lock()) << "the volume mutex is free while the unaligned write waits";
  thin->mutex().unlock();

  auto other = Pattern(4096, 5);
  AlignedBuffer other_buf = AllocateAligned(4096);
  std::memcpy(other_buf.get(), other.data(), other.size());
  VolumeIo aligned{.op = VolumeOp::kWrite, .offset = 65536 + 8192, .length = 4096, .buf = other_buf.get()};
  aligned.context = &done;
  aligned.done = note;
  v->Submit(&aligned, pool.queue());
  EXPECT_EQ(pool.device().queued_bytes(), 8192u) << "the other cluster's write went to the device at once";
  EXPECT_EQ(done, 0);

  pool.device().ReleaseCompletions();
  while (done < 2) pool.queue().Poll(/*wait=*/true);
  auto expected = Pattern(2 * 65536, 1);
  std::copy(data.begin(), data.end(), expected.begin() + 100);
  std::copy(other.begin(), other.end(), expected.begin() + 65536 + 8192);
  EXPECT_EQ(pool.Read(*v, 0, 2 * 65536).value(), expected);
  EXPECT_EQ(thin->unaligned_writes(), 1u);
  EXPECT_EQ(thin->gate_parks(), 0u);
}

// Requests in flight together into one block: eight 512-byte writes into
// its eight sectors (each a read-modify-write of the whole block), an
// aligned write of the block beside it and a read of both. None may lose
// another's sectors: they wait for each other at the gate. Plain,
// compressed and just-snapshotted (copy-on-write) volumes alike.
TEST(Volume, ConcurrentSectorWritesIntoOneBlockAllLand) {
  for (const char* kind : {"plain", "lz4", "snapshotted"}) {
    SCOPED_TRACE(kind);
    TestPool pool(64 * kMiB);
    VolumeCreateOptions options;
    if (std::string(kind) == "lz4") options.compression = {Compression::kLz4, 0};
    Volume* v = pool.set().CreateVolume("v", 4 * kMiB, options).value();
    auto* thin = static_cast<ThinVolume*>(v);
    ASSERT_TRUE(pool.Write(*v, 0, Pattern(65536, 1)).ok());
    if (std::string(kind) == "snapshotted") {
      ASSERT_TRUE(pool.set().CreateSnapshot("v", "s").ok());
    }

    pool.device().HoldCompletions();
    int done = 0;
    auto note = [](VolumeIo* io, const Status& status) {
      EXPECT_TRUE(status.ok()) << status.ToString();
      ++*static_cast<int*>(io->context);
    };
    std::vector<VolumeIo> ios(10);
    AlignedBuffer buf = AllocateAligned(8 * 512 + 4096 + 8192);
    auto sectors = Pattern(4096, 40);
    auto block = Pattern(4096, 50);
    std::memcpy(buf.get(), sectors.data(), 4096);
    std::memcpy(buf.get() + 4096, block.data(), 4096);
    for (int i = 0; i < 8; i++)  // sectors of block 2, in an order that is not the device's
      ios[i] = VolumeIo{.op = VolumeOp::kWrite, .offset = 8192 + uint64_t((i * 3) % 8) * 512, .length = 512,
                        .buf = buf.get() + ((i * 3) % 8) * 512};
    ios[8] = VolumeIo{.op = VolumeOp::kWrite, .offset = 4096, .length = 4096, .buf = buf.get() + 4096};
    ios[9] = VolumeIo{.op = VolumeOp::kRead, .offset = 4096, .length = 8192, .buf = buf.get() + 8192};
    for (VolumeIo& io : ios) {
      io.context = &done;
      io.done = note;
      v->Submit(&io, pool.queue());
    }
    pool.device().ReleaseCompletions();
    while (done < 10) pool.queue().Poll(/*wait=*/true);

    auto expected = Pattern(65536, 1);
    std::copy(block.begin(), block.end(), expected.begin() + 4096);
    std::copy(sectors.begin(), sectors.end(), expected.begin() + 8192);
    EXPECT_EQ(pool.Read(*v, 0, 65536).value(), expected);
    EXPECT_EQ(thin->unaligned_writes(), 8u);
    EXPECT_GE(thin->gate_parks(), 2u) << "the aligned write and the read reached the gated cluster";
    // The read saw, per block, the old or the new content of each sector.
    auto old = Pattern(65536, 1);
    for (uint64_t s = 0; s < 16; s++) {
      const uint8_t* got = buf.get() + 8192 + s * 512;
      uint64_t at = 4096 + s * 512;
      bool is_old = std::equal(got, got + 512, old.begin() + at);
      bool is_new = std::equal(got, got + 512, expected.begin() + at);
      EXPECT_TRUE(is_old || is_new) << "sector " << s;
    }
    ASSERT_TRUE(pool.CloseAndReopen().ok());
    EXPECT_EQ(pool.Read(*pool.Find("v"), 0, 65536).value(), expected);
  }
}

// A volume's size is a multiple of 512 bytes: its last block reaches past
// the end, and the read-modify-write of that block must still work.
TEST(Volume, UnalignedIoReachesTheLastPartialBlock) {
  TestPool pool(64 * kMiB);
  const uint64_t size = kMiB + 512;
  Volume* v = pool.set().CreateVolume("v", size).value();
  auto data = Pattern(1536, 3);
  ASSERT_TRUE(pool.Write(*v, size - 1536, data).ok());
  EXPECT_EQ(pool.Read(*v, size - 1536, 1536).value(), data);
  VolumeIo discard{.op = VolumeOp::kDiscard, .offset = size - 300, .length = 300};
  ASSERT_TRUE(RunSync(*v, discard, pool.queue()).ok());
  std::fill(data.end() - 300, data.end(), 0);
  EXPECT_EQ(pool.Read(*v, size - 1536, 1536).value(), data);
  ASSERT_TRUE(pool.CloseAndReopen().ok());
  EXPECT_EQ(pool.Read(*pool.Find("v"), size - 1536, 1536).value(), data);
}

// Through a small map cache: a read, a write and a discard of clusters
// whose map pages were evicted each wait (parked) while their page is read
// on their queue, instead of reading it synchronously on the I/O thread.
TEST(Volume, RequestsParkWhileTheirMapPageIsRead) {
  PoolOpenOptions open;
  open.map_cache_bytes = 1;  // the minimum: 64 pages
  TestPool pool(256 * kMiB, PoolCreateOptions{.cluster_size = 4096}, open);
  Volume* v = pool.set().CreateVolume("v", 1ull << 30).value();
  constexpr uint64_t kPageSpan = 255 * 4096;  // what one map page maps
  for (uint64_t p = 0; p < 300; p++) ASSERT_TRUE(pool.Write(*v, p * kPageSpan, Pattern(4096, p & 0xff)).ok());
  ASSERT_TRUE(pool.set().Checkpoint().ok());
  for (uint64_t p = 100; p < 300; p++) ASSERT_TRUE(pool.Read(*v, p * kPageSpan, 4096).ok());  // evicts pages 0-2
  PoolInfo before = pool.set().Info();

  pool.device().HoldSyncIo();  // a synchronous page read would wait here
  std::atomic<bool> test_done{false};
  std::thread watchdog([&pool, &test_done] {
    for (int ms = 0; ms < 5000 && !test_done; ms += 10) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    pool.device().ReleaseSyncIo();
  });
  int done = 0;
  auto count = [](VolumeIo* io, const Status& status) {
    EXPECT_TRUE(status.ok()) << status.ToString();
    (*static_cast<int*>(io->context))++;
  };
  AlignedBuffer read_buf = AllocateAligned(4096), write_buf = AllocateAligned(4096);
  std::memset(write_buf.get(), 0x5a, 4096);
  VolumeIo ios[3] = {
      {.op = VolumeOp::kRead, .offset = 0, .length = 4096, .buf = read_buf.get()},
      {.op = VolumeOp::kWrite, .offset = kPageSpan + 4096, .length = 4096, .buf = write_buf.get()},
      {.op = VolumeOp::kDiscard, .offset = 2 * kPageSpan, .length = 4096},
  };
  for (VolumeIo& io : ios) {
    io.context = &done;
    io.done = count;
    v->Submit(&io, pool.queue());
  }
  while (done < 3) pool.queue().Poll(/*wait=*/true);
  bool finished_while_held = pool.device().sync_io_waiting() == 0;
  test_done = true;
  watchdog.join();
  EXPECT_TRUE(finished_while_held);
  PoolInfo after = pool.set().Info();
  EXPECT_EQ(after.map_cache_misses, before.map_cache_misses) << "a page was read synchronously";
  EXPECT_EQ(after.map_page_async_loads - before.map_page_async_loads, 3u);

  EXPECT_EQ(std::vector<uint8_t>(read_buf.get(), read_buf.get() + 4096), Pattern(4096, 0));
  EXPECT_EQ(pool.Read(*v, kPageSpan, 4096).value(), Pattern(4096, 1));
  EXPECT_EQ(pool.Read(*v, kPageSpan + 4096, 4096).value(), std::vector<uint8_t>(4096, 0x5a));
  EXPECT_EQ(pool.Read(*v, 2 * kPageSpan, 4096).value(), std::vector<uint8_t>(4096, 0));
}

TEST(Volume, DescribeReportsWrittenRunsAndHoles) {
  TestPool pool(64 * kMiB);
  Volume* v = pool.set().CreateVolume("v", 4 * kMiB).value();
  ASSERT_TRUE(pool.Write(*v, 8192, Pattern(8192, 1)).ok());
  ASSERT_TRUE(pool.Write(*v, 65536, Pattern(4096, 1)).ok());
  auto extents = v->Describe(0, 4 * kMiB, 100);
  ASSERT_TRUE(extents.ok());
  std::vector<std::pair<uint64_t, bool>> got;
  for (auto& e : extents.value()) got.push_back({e.length, e.written});
  std::vector<std::pair<uint64_t, bool>> want = {
      {8192, false}, {8192, true}, {65536 - 16384, false}, {4096, true}, {4 * kMiB - 65536 - 4096, false}};
  EXPECT_EQ(got, want);
  EXPECT_EQ(v->Describe(0, 4 * kMiB, 2)->size(), 2u);
  EXPECT_EQ(v->Describe(4 * kMiB, 512, 10).status().code(), EINVAL);
  auto unaligned = v->Describe(8192 + 512, 16384, 10);  // starts inside a written block
  ASSERT_TRUE(unaligned.ok());
  ASSERT_EQ(unaligned->size(), 2u);
  EXPECT_EQ(unaligned->at(0).length, 8192u - 512);
  EXPECT_TRUE(unaligned->at(0).written);
  EXPECT_EQ(unaligned->at(1).length, 16384u - (8192 - 512));
}

TEST(Volume, DescribeOfAHugeEmptyVolumeIsOneHole) {
  TestPool pool(64 * kMiB);
  Volume* v = pool.set().CreateVolume("big", 1ull << 40).value();
  ASSERT_TRUE(pool.Write(*v, (1ull << 40) - 4096, Pattern(4096, 1)).ok());
  auto extents = v->Describe(0, 1ull << 40, 10);
  ASSERT_TRUE(extents.ok());
  ASSERT_EQ(extents->size(), 2u);
  EXPECT_EQ(extents->at(0).length, (1ull << 40) - 4096);
  EXPECT_FALSE(extents->at(0).written);
  EXPECT_TRUE(extents->at(1).written);
}

TEST(Volume, ParallelWritersOnTwoThreadsEachWithItsQueue) {
  TestPool pool(128 * kMiB);
  Volume* v = pool.set().CreateVolume("v", 32 * kMiB).value();
  auto writer = [&](int which) {
    auto queue = pool.device().CreateQueue(32);
    AlignedBuffer buf = AllocateAligned(4096);
    for (int i = 0; i < 2000; i++) {
      uint64_t block = (static_cast<uint64_t>(i) * 2 + which) % 8192;
      std::memset(buf.get(), static_cast<int>(block & 0xff) ^ which, 4096);
      VolumeIo io{.op = VolumeOp::kWrite, .offset = block * 4096, .length = 4096, .buf = buf.get()};
      ASSERT_TRUE(RunSync(*v, io, *queue).ok());
    }
  };
  std::thread a(writer, 0), b(writer, 1);
  a.join();
  b.join();
  for (uint64_t block = 0; block < 4000; block++) {
    auto data = pool.Read(*v, block * 4096, 4096).value();
    EXPECT_EQ(data[0], static_cast<uint8_t>((block & 0xff) ^ (block % 2))) << block;
  }
}

}  // namespace
}  // namespace edgestor
