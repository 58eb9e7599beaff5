#include "io/fault_device.h"

#include <cerrno>
#include <cstring>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace edgestor {
namespace {

constexpr uint64_t kSectors = 64;
constexpr uint64_t kDeviceSize = kSectors * kSectorSize;

// Every 4-byte word of a sector written by write `id` at sector `sector`
// holds (id << 16 | sector): a sector read back names its writer and shows
// whether it was copied whole and to the right place.
AlignedBuffer TaggedData(uint32_t id, uint64_t first_sector, uint64_t sectors) {
  AlignedBuffer buf = AllocateAligned(sectors * kSectorSize);
  auto* words = reinterpret_cast<uint32_t*>(buf.get());
  for (uint64_t s = 0; s < sectors; s++) {
    for (uint32_t w = 0; w < kSectorSize / 4; w++) words[s * kSectorSize / 4 + w] = id << 16 | (first_sector + s);
  }
  return buf;
}

// Returns the writer id of `sector` in `image`, or -1 if the sector is not
// one whole tagged sector written for this position.
int SectorWriter(const uint8_t* image, uint64_t sector) {
  const auto* words = reinterpret_cast<const uint32_t*>(image + sector * kSectorSize);
  for (uint32_t w = 1; w < kSectorSize / 4; w++) {
    if (words[w] != words[0]) return -1;
  }
  if ((words[0] & 0xffff) != sector) return -1;
  return static_cast<int>(words[0] >> 16);
}

Status WriteTagged(Device& device, uint32_t id, uint64_t first_sector, uint64_t sectors) {
  AlignedBuffer buf = TaggedData(id, first_sector, sectors);
  return device.WriteSync(first_sector * kSectorSize, buf.get(), sectors * kSectorSize);
}

// Writes id 0 over the whole device and flushes: the "old" data.
void FormatDevice(FaultDevice& device) {
  ASSERT_TRUE(WriteTagged(device, 0, 0, kSectors).ok());
  ASSERT_TRUE(device.FlushSync().ok());
}

std::vector<int> Writers(FaultDevice& device) {
  AlignedBuffer image = AllocateAligned(kDeviceSize);
  EXPECT_TRUE(device.ReadSync(0, image.get(), kDeviceSize).ok());
  std::vector<int> writers(kSectors);
  for (uint64_t s = 0; s < kSectors; s++) writers[s] = SectorWriter(image.get(), s);
  return writers;
}

TEST(FaultDeviceTest, UnflushedWritesAreReadableBeforeTheCut) {
  FaultDevice device(kDeviceSize);
  FormatDevice(device);
  ASSERT_TRUE(WriteTagged(device, 1, 4, 8).ok());
  ASSERT_TRUE(WriteTagged(device, 2, 8, 8).ok());  // overlaps write 1
  EXPECT_EQ(device.unflushed_writes(), 2u);
  std::vector<int> w = Writers(device);
  for (uint64_t s = 0; s < kSectors; s++) EXPECT_EQ(w[s], s >= 8 && s < 16 ? 2 : s >= 4 && s < 8 ? 1 : 0) << s;
}

TEST(FaultDeviceTest, FlushedWritesSurviveEveryCut) {
  for (uint64_t seed = 0; seed < 50; seed++) {
    FaultDevice device(kDeviceSize);
    FormatDevice(device);
    ASSERT_TRUE(WriteTagged(device, 1, 0, 16).ok());
    ASSERT_TRUE(device.FlushSync().ok());
    EXPECT_EQ(device.unflushed_writes(), 0u);
    ASSERT_TRUE(WriteTagged(device, 2, 32, 16).ok());
    std::mt19937_64 rng(seed);
    device.PowerCut(rng, 0.5);
    EXPECT_EQ(device.unflushed_writes(), 0u);
    std::vector<int> w = Writers(device);
    for (uint64_t s = 0; s < 16; s++) ASSERT_EQ(w[s], 1) << "seed " << seed << " sector " << s;
    for (uint64_t s = 16; s < 32; s++) ASSERT_EQ(w[s], 0) << "seed " << seed << " sector " << s;
  }
}

// The core promise: after any cut, each sector holds whole data from its
// last flushed state or from one of the unflushed writes that covered it.
TEST(FaultDeviceTest, AfterACutEachSectorHoldsOldOrNewData) {
  uint64_t total_lost = 0, total_writes = 0, sectors_changed = 0, sectors_kept_old = 0;
  for (uint64_t seed = 0; seed < 200; seed++) {
    FaultDevice device(kDeviceSize);
    FormatDevice(device);
    std::mt19937_64 rng(seed);
    std::vector<std::set<int>> allowed(kSectors, std::set<int>{0});
    int writes = 1 + static_cast<int>(rng() % 12);
    for (int id = 1; id <= writes; id++) {
      uint64_t first = rng() % kSectors;
      uint64_t count = 1 + rng() % std::min<uint64_t>(16, kSectors - first);
      ASSERT_TRUE(WriteTagged(device, id, first, count).ok());
      for (uint64_t s = first; s < first + count; s++) allowed[s].insert(id);
    }
    uint64_t lost = device.PowerCut(rng, 0.5);
    EXPECT_LE(lost, static_cast<uint64_t>(writes));
    total_lost += lost;
    total_writes += writes;
    std::vector<int> w = Writers(device);
    for (uint64_t s = 0; s < kSectors; s++) {
      ASSERT_TRUE(allowed[s].count(w[s])) << "seed " << seed << " sector " << s << " holds " << w[s];
      if (allowed[s].size() > 1) (w[s] == 0 ? sectors_kept_old : sectors_changed)++;
    }
    // The cut is what a disk holds: what reads see is the durable image.
    AlignedBuffer read = AllocateAligned(kDeviceSize);
    ASSERT_TRUE(device.ReadSync(0, read.get(), kDeviceSize).ok());
    EXPECT_EQ(std::memcmp(read.get(), device.durable_image().data(), kDeviceSize), 0);
  }
  // Not vacuous: cuts both dropped and kept data.
  EXPECT_GT(total_lost, 0u);
  EXPECT_LT(total_lost, total_writes);
  EXPECT_GT(sectors_changed, 0u);
  EXPECT_GT(sectors_kept_old, 0u);
}

TEST(FaultDeviceTest, TornWriteLeavesA512ByteGranularMix) {
  bool saw_mix = false;
  for (uint64_t seed = 0; seed < 20 && !saw_mix; seed++) {
    FaultDevice device(kDeviceSize);
    FormatDevice(device);
    ASSERT_TRUE(WriteTagged(device, 1, 0, kSectors).ok());
    std::mt19937_64 rng(seed);
    uint64_t lost = device.PowerCut(rng, /*tear_probability=*/1.0);
    EXPECT_EQ(lost, 1u) << "a single write that is always torn or dropped";
    std::vector<int> w = Writers(device);
    int new_sectors = 0;
    for (uint64_t s = 0; s < kSectors; s++) {
      ASSERT_TRUE(w[s] == 0 || w[s] == 1) << "sector " << s << " is not whole";
      new_sectors += w[s] == 1;
    }
    saw_mix = new_sectors > 0 && new_sectors < static_cast<int>(kSectors);
  }
  EXPECT_TRUE(saw_mix);
}

TEST(FaultDeviceTest, WithoutTearsEachWriteLandsWholeOrNotAtAll) {
  for (uint64_t seed = 0; seed < 100; seed++) {
    FaultDevice device(kDeviceSize);
    FormatDevice(device);
    for (uint32_t id = 1; id <= 8; id++) ASSERT_TRUE(WriteTagged(device, id, (id - 1) * 8, 8).ok());
    std::mt19937_64 rng(seed);
    uint64_t lost = device.PowerCut(rng, /*tear_probability=*/0.0);
    std::vector<int> w = Writers(device);
    uint64_t absent = 0;
    for (uint32_t id = 1; id <= 8; id++) {
      int first = w[(id - 1) * 8];
      for (uint64_t s = (id - 1) * 8; s < id * 8; s++) ASSERT_EQ(w[s], first) << "seed " << seed;
      absent += first == 0;
    }
    EXPECT_EQ(lost, absent) << "seed " << seed;
  }
}

TEST(FaultDeviceTest, FailAfterFailsLaterOperationsAndChangesNothing) {
  FaultDevice device(kDeviceSize);
  FormatDevice(device);
  device.FailAfter(2);
  ASSERT_TRUE(WriteTagged(device, 1, 0, 4).ok());
  AlignedBuffer buf = AllocateAligned(kSectorSize);
  ASSERT_TRUE(device.ReadSync(0, buf.get(), kSectorSize).ok());
  DeviceStats before = device.stats();

  EXPECT_EQ(WriteTagged(device, 2, 8, 4).code(), EIO);
  EXPECT_EQ(device.ReadSync(0, buf.get(), kSectorSize).code(), EIO);
  EXPECT_EQ(device.FlushSync().code(), EIO);
  auto queue = device.CreateQueue(4);
  int result = 1;
  IoRequest req{IoOp::kFlush};
  req.context = &result;
  req.done = [](IoRequest* r, int res) { *static_cast<int*>(r->context) = res; };
  queue->Submit(&req);
  EXPECT_EQ(queue->Poll(false), 1);
  EXPECT_EQ(result, -EIO);
  device.FailAfter(-1);  // disarming does not bring the power back
  EXPECT_EQ(device.FlushSync().code(), EIO);

  DeviceStats after = device.stats();
  EXPECT_EQ(after.writes, before.writes);
  EXPECT_EQ(after.reads, before.reads);
  EXPECT_EQ(after.flushes, before.flushes);
  EXPECT_EQ(device.unflushed_writes(), 1u) << "the failed write and flush changed nothing";
  for (uint64_t s = 8; s < 12; s++) EXPECT_EQ(SectorWriter(device.durable_image().data(), s), 0);

  std::mt19937_64 rng(1);
  device.PowerCut(rng);
  EXPECT_TRUE(device.ReadSync(0, buf.get(), kSectorSize).ok()) << "PowerCut re-enables the device";
  std::vector<int> w = Writers(device);
  for (uint64_t s = 8; s < 12; s++) EXPECT_EQ(w[s], 0);
}

TEST(FaultDeviceTest, FailAfterZeroFailsTheNextOperation) {
  FaultDevice device(kDeviceSize);
  device.FailAfter(0);
  EXPECT_EQ(device.FlushSync().code(), EIO);
  EXPECT_EQ(device.stats().flushes, 0u);
}

TEST(FaultDeviceTest, InjectedErrorsFailOverlappingReadsAndWrites) {
  FaultDevice device(kDeviceSize);
  FormatDevice(device);
  device.InjectError(8 * kSectorSize, kSectorSize);  // sector 8 only
  AlignedBuffer buf = AllocateAligned(4 * kSectorSize);
  EXPECT_TRUE(device.ReadSync(4 * kSectorSize, buf.get(), 4 * kSectorSize).ok());  // sectors 4..7
  EXPECT_TRUE(device.ReadSync(9 * kSectorSize, buf.get(), 4 * kSectorSize).ok());  // sectors 9..12
  EXPECT_EQ(device.ReadSync(6 * kSectorSize, buf.get(), 4 * kSectorSize).code(), EIO);
  EXPECT_EQ(WriteTagged(device, 1, 8, 1).code(), EIO);
  EXPECT_EQ(device.unflushed_writes(), 0u);
  EXPECT_TRUE(device.FlushSync().ok()) << "flush is not affected";

  auto queue = device.CreateQueue(4);
  int result = 1;
  IoRequest req{IoOp::kRead, 7 * kSectorSize, 2 * kSectorSize, buf.get()};
  req.context = &result;
  req.done = [](IoRequest* r, int res) { *static_cast<int*>(r->context) = res; };
  queue->Submit(&req);
  queue->Poll(false);
  EXPECT_EQ(result, -EIO);

  device.ClearErrors();
  EXPECT_TRUE(WriteTagged(device, 1, 8, 1).ok());
  EXPECT_EQ(Writers(device)[8], 1);
}

TEST(FaultDeviceTest, RejectsMisalignedAndOutOfRangeIoWithEinval) {
  FaultDevice device(kDeviceSize);
  AlignedBuffer buf = AllocateAligned(2 * kSectorSize);
  EXPECT_EQ(device.ReadSync(100, buf.get(), kSectorSize).code(), EINVAL);
  EXPECT_EQ(device.WriteSync(0, buf.get(), 100).code(), EINVAL);
  EXPECT_EQ(device.WriteSync(0, buf.get() + 8, kSectorSize).code(), EINVAL);
  EXPECT_EQ(device.ReadSync(kDeviceSize - kSectorSize, buf.get(), 2 * kSectorSize).code(), EINVAL);
  EXPECT_EQ(device.WriteSync(UINT64_MAX - 511, buf.get(), kSectorSize).code(), EINVAL);
  EXPECT_EQ(device.unflushed_writes(), 0u);
  EXPECT_EQ(device.stats().reads + device.stats().writes, 0u);
}

TEST(FaultDeviceTest, QueueRunsRequestsAtPollInOrder) {
  FaultDevice device(kDeviceSize);
  auto queue = device.CreateQueue(4);
  AlignedBuffer data = TaggedData(3, 2, 2);
  AlignedBuffer back = AllocateAligned(2 * kSectorSize);
  std::vector<int> order;
  auto record = [](IoRequest* r, int res) {
    EXPECT_EQ(res, 0);
    static_cast<std::vector<int>*>(r->context)->push_back(static_cast<int>(r->op));
  };
  IoRequest write{IoOp::kWrite, 2 * kSectorSize, 2 * kSectorSize, data.get(), record, &order};
  IoRequest read{IoOp::kRead, 2 * kSectorSize, 2 * kSectorSize, back.get(), record, &order};
  IoRequest flush{IoOp::kFlush, 0, 0, nullptr, record, &order};
  queue->Submit(&write);
  queue->Submit(&read);
  queue->Submit(&flush);
  EXPECT_EQ(queue->InFlight(), 3u);
  EXPECT_TRUE(order.empty()) << "nothing runs before Poll";
  EXPECT_EQ(device.unflushed_writes(), 0u);
  EXPECT_EQ(queue->Poll(true), 3);
  EXPECT_EQ(queue->InFlight(), 0u);
  EXPECT_EQ(order, (std::vector<int>{static_cast<int>(IoOp::kWrite), static_cast<int>(IoOp::kRead), static_cast<int>(IoOp::kFlush)}));
  EXPECT_EQ(std::memcmp(back.get(), data.get(), 2 * kSectorSize), 0);
  EXPECT_EQ(device.unflushed_writes(), 0u);
  EXPECT_EQ(SectorWriter(device.durable_image().data(), 2), 3);
}

TEST(FaultDeviceTest, EditsThroughDurableImageAreSeenByReads) {
  FaultDevice device(kDeviceSize);
  FormatDevice(device);
  device.durable_image()[5 * kSectorSize + 7] ^= 0xff;
  EXPECT_EQ(Writers(device)[5], -1) << "the corrupted sector reads back corrupted";
  EXPECT_EQ(Writers(device)[4], 0);
}

TEST(FaultDeviceTest, StatsCountSuccessfulOperations) {
  FaultDevice device(kDeviceSize);
  AlignedBuffer buf = AllocateAligned(4 * kSectorSize);
  ASSERT_TRUE(device.WriteSync(0, buf.get(), 4 * kSectorSize).ok());
  ASSERT_TRUE(device.ReadSync(0, buf.get(), kSectorSize).ok());
  ASSERT_TRUE(device.FlushSync().ok());
  EXPECT_EQ(device.ReadSync(0, buf.get(), 100).code(), EINVAL);
  DeviceStats s = device.stats();
  EXPECT_EQ(s.writes, 1u);
  EXPECT_EQ(s.bytes_written, 4u * kSectorSize);
  EXPECT_EQ(s.reads, 1u);
  EXPECT_EQ(s.bytes_read, kSectorSize);
  EXPECT_EQ(s.flushes, 1u);
}

TEST(FaultDeviceTest, HeldCompletionsWaitForRelease) {
  FaultDevice device(kDeviceSize);
  auto queue = device.CreateQueue(4);
  AlignedBuffer buf = TaggedData(1, 0, 8);
  int result = 1;
  IoRequest req;
  req.op = IoOp::kWrite;
  req.offset = 0;
  req.length = 8 * kSectorSize;
  req.buf = buf.get();
  req.context = &result;
  req.done = [](IoRequest* r, int res) { *static_cast<int*>(r->context) = res; };
  device.HoldCompletions();
  queue->Submit(&req);
  EXPECT_EQ(queue->Poll(/*wait=*/false), 0);
  EXPECT_EQ(result, 1);
  EXPECT_EQ(queue->InFlight(), 1u);
  EXPECT_EQ(device.queued_bytes(), 8 * kSectorSize);
  EXPECT_EQ(device.stats().writes, 0u);  // not run while held
  std::thread releaser([&] { device.ReleaseCompletions(); });
  EXPECT_EQ(queue->Poll(/*wait=*/true), 1);  // blocks until released
  releaser.join();
  EXPECT_EQ(result, 0);
  EXPECT_EQ(device.queued_bytes(), 0u);
  EXPECT_EQ(Writers(device)[0], 1);
}

}  // namespace
}  // namespace edgestor
