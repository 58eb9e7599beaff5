// Pool identity (issue 12, item 3): every metadata block is bound to the
// pool that wrote it, formatting leaves nothing replayable behind, and a
// device that holds anything (a pool label, even a damaged one, a file
// system, a partition table) is formatted only when forced.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "io/borrowed_device.h"
#include "io/fault_device.h"
#include "pool/pool.h"

namespace edgestor {
namespace {

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kDeviceBytes = 64 * kMiB;
using format::kBlockSize;

std::unique_ptr<Pool> NewPool(Device& device, bool force = false) {
  auto pool = Pool::Format(Borrow(device), {.cluster_size = 65536, .journal_bytes = kMiB, .force = force});
  EXPECT_TRUE(pool.ok()) << pool.status().ToString();
  return pool.ok() ? std::move(pool).value() : nullptr;
}

std::unique_ptr<Pool> OpenPool(Device& device) {
  auto pool = Pool::Open(Borrow(device));
  EXPECT_TRUE(pool.ok()) << pool.status().ToString();
  return pool.ok() ? std::move(pool).value() : nullptr;
}

// Commits one map record naming `cluster` of volume 1.
void CommitRecord(Pool& pool, uint64_t cluster) {
  format::MapSetRecord record{};
  record.volume_id = 1;
  record.cluster = cluster;
  record.entry = {4242, 1};
  pool.AppendRecord(format::RecordType::kMapSet,
                    std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(&record), sizeof record));
  ASSERT_TRUE(pool.Commit().ok());
}

uint64_t ReplayedRecords(Pool& pool) {
  auto replayed = pool.ReplayJournal([](format::RecordType, std::span<const uint8_t>) { return Status::Ok(); });
  EXPECT_TRUE(replayed.ok()) << replayed.status().ToString();
  return replayed.ok() ? replayed.value() : ~0ull;
}

uint64_t LabelOffset(const Device& device, int copy) {
  uint64_t total = device.size() / kBlockSize;
  return (copy < 2 ? copy : total - 4 + copy) * kBlockSize;
}

// Flips a byte of every label copy: the labels are all damaged (their
// magic still says what they were).
void DamageLabels(FaultDevice& device) {
  for (int copy = 0; copy < 4; copy++) device.durable_image()[LabelOffset(device, copy) + 100] ^= 0xff;
}

std::vector<uint8_t> Block(FaultDevice& device, uint64_t block) {
  auto& image = device.durable_image();
  return {image.begin() + block * kBlockSize, image.begin() + (block + 1) * kBlockSize};
}

void PutBlock(FaultDevice& device, uint64_t block, const std::vector<uint8_t>& bytes) {
  std::copy(bytes.begin(), bytes.end(), device.durable_image().begin() + block * kBlockSize);
}

// The reported attack: a pool crashed early (its journal holds records of
// checkpoint generation 1 at sequence 0), its labels are damaged, and a new
// pool is formatted over it. The new pool starts at the same generation and
// sequence: it must replay none of the old pool's records.
TEST(PoolIdentity, ANewPoolReplaysNothingOfThePoolBefore) {
  FaultDevice device(kDeviceBytes);
  {
    auto old_pool = NewPool(device);
    ASSERT_NE(old_pool, nullptr);
    CommitRecord(*old_pool, 7);
  }  // crash: never checkpointed
  DamageLabels(device);
  auto pool = NewPool(device, /*force=*/true);
  ASSERT_NE(pool, nullptr);
  EXPECT_EQ(ReplayedRecords(*pool), 0u);
}

// The binding alone, without the zeroed ring: an old pool's journal block
// put back into the new pool's ring (as if zeroing had missed it) does not
// verify there, while it still verifies in its own pool.
TEST(PoolIdentity, AJournalBlockOfAnotherPoolNeverVerifies) {
  FaultDevice device(kDeviceBytes);
  std::vector<uint8_t> old_block;
  {
    auto old_pool = NewPool(device);
    ASSERT_NE(old_pool, nullptr);
    CommitRecord(*old_pool, 7);
    old_block = Block(device, old_pool->geometry().journal_start);
  }
  {
    auto reopened = OpenPool(device);  // positive control: its own pool replays it
    ASSERT_NE(reopened, nullptr);
    EXPECT_EQ(ReplayedRecords(*reopened), 1u);
  }
  auto pool = NewPool(device, /*force=*/true);
  ASSERT_NE(pool, nullptr);
  PutBlock(device, pool->geometry().journal_start, old_block);
  auto reopened = OpenPool(device);
  ASSERT_NE(reopened, nullptr);
  EXPECT_EQ(ReplayedRecords(*reopened), 0u);
}

TEST(PoolIdentity, FormatZerosTheJournalRing) {
  FaultDevice device(kDeviceBytes);
  auto& image = device.durable_image();
  std::fill(image.begin(), image.end(), 0xa5);
  auto pool = NewPool(device, /*force=*/true);
  ASSERT_NE(pool, nullptr);
  const auto& g = pool->geometry();
  auto& after = device.durable_image();
  for (uint64_t b = g.journal_start; b < g.journal_start + g.journal_blocks; b++)
    ASSERT_TRUE(std::all_of(after.begin() + b * kBlockSize, after.begin() + (b + 1) * kBlockSize,
                            [](uint8_t x) { return x == 0; }))
        << "journal block " << b << " kept old bytes";
}

TEST(PoolIdentity, FormatRefusesAValidPoolUnlessForced) {
  FaultDevice device(kDeviceBytes);
  ASSERT_NE(NewPool(device), nullptr);
  auto again = Pool::Format(Borrow(device), {.journal_bytes = kMiB});
  EXPECT_EQ(again.status().code(), EEXIST);
  EXPECT_NE(NewPool(device, /*force=*/true), nullptr);
}

TEST(PoolIdentity, FormatRefusesADamagedLabelUnlessForced) {
  FaultDevice device(kDeviceBytes);
  ASSERT_NE(NewPool(device), nullptr);
  DamageLabels(device);
  auto again = Pool::Format(Borrow(device), {.journal_bytes = kMiB});
  EXPECT_EQ(again.status().code(), EEXIST) << again.status().ToString();
  EXPECT_NE(NewPool(device, /*force=*/true), nullptr);
}

TEST(PoolIdentity, FormatRefusesALabelOfANewerVersion) {
  FaultDevice device(kDeviceBytes);
  ASSERT_NE(NewPool(device), nullptr);
  for (int copy = 0; copy < 4; copy++) {
    format::Label label;
    std::memcpy(&label, device.durable_image().data() + LabelOffset(device, copy), sizeof label);
    label.version = format::kVersion + 1;
    label.crc = format::BlockCrc(&label, kBlockSize, offsetof(format::Label, crc));
    std::memcpy(device.durable_image().data() + LabelOffset(device, copy), &label, sizeof label);
  }
  EXPECT_EQ(Pool::Open(Borrow(device)).status().code(), EPROTONOSUPPORT);
  EXPECT_EQ(Pool::Format(Borrow(device), {.journal_bytes = kMiB}).status().code(), EEXIST);
}

// A label (with a valid checksum) whose journal runs into the back labels
// is damaged: opening it must refuse, not let the journal overwrite them.
TEST(PoolIdentity, OpenRefusesAJournalReachingTheBackLabels) {
  FaultDevice device(kDeviceBytes);
  ASSERT_NE(NewPool(device), nullptr);
  uint64_t total = kDeviceBytes / kBlockSize;
  for (int copy = 0; copy < 4; copy++) {
    format::Label label;
    std::memcpy(&label, device.durable_image().data() + LabelOffset(device, copy), sizeof label);
    label.journal_blocks = total - 1 - label.journal_start;  // its last block is back label copy C
    label.crc = format::BlockCrc(&label, kBlockSize, offsetof(format::Label, crc));
    std::memcpy(device.durable_image().data() + LabelOffset(device, copy), &label, sizeof label);
  }
  auto opened = Pool::Open(Borrow(device));
  EXPECT_EQ(opened.status().code(), EUCLEAN) << opened.status().ToString();
}

// A pool whose device grew: its back labels are no longer at the end, the
// front ones still say "edgestor".
TEST(PoolIdentity, FormatRefusesAResizedPool) {
  FaultDevice small(kDeviceBytes);
  ASSERT_NE(NewPool(small), nullptr);
  FaultDevice grown(kDeviceBytes + 16 * kMiB);
  std::copy(small.durable_image().begin(), small.durable_image().end(), grown.durable_image().begin());
  EXPECT_EQ(Pool::Open(Borrow(grown)).status().code(), EINVAL);
  EXPECT_EQ(Pool::Format(Borrow(grown), {.journal_bytes = kMiB}).status().code(), EEXIST);
}

// An MBR partition table with one Linux partition (libblkid: "dos").
TEST(PoolIdentity, FormatRefusesAPartitionTable) {
  FaultDevice device(kDeviceBytes);
  auto& image = device.durable_image();
  uint8_t* entry = image.data() + 446;
  entry[4] = 0x83;  // Linux
  uint32_t start = 2048, sectors = static_cast<uint32_t>(kDeviceBytes / 512 - 2048);
  std::memcpy(entry + 8, &start, 4);
  std::memcpy(entry + 12, &sectors, 4);
  image[510] = 0x55;
  image[511] = 0xaa;
  auto refused = Pool::Format(Borrow(device), {.journal_bytes = kMiB});
  EXPECT_EQ(refused.status().code(), EEXIST) << refused.status().ToString();
  EXPECT_NE(refused.status().message().find("partition table"), std::string::npos) << refused.status().ToString();
  EXPECT_NE(NewPool(device, /*force=*/true), nullptr);
}

TEST(PoolIdentity, AnEmptyDeviceFormatsWithoutForce) {
  FaultDevice device(kDeviceBytes);
  EXPECT_NE(NewPool(device), nullptr);
}

// Rewrites the labels of a pool never checkpointed as version 3 (whose
// blocks were not bound).
void MakeVersion3(FaultDevice& device) {
  for (int copy = 0; copy < 4; copy++) {
    format::Label label;
    std::memcpy(&label, device.durable_image().data() + LabelOffset(device, copy), sizeof label);
    ASSERT_EQ(label.checkpoint_block, 0u);
    label.version = 3;
    label.bound_since_gen = 0;
    label.crc = format::BlockCrc(&label, kBlockSize, offsetof(format::Label, crc));
    std::memcpy(device.durable_image().data() + LabelOffset(device, copy), &label, sizeof label);
  }
}

// A version 3 pool keeps writing plain blocks until its first checkpoint
// (so that its old label, current until then, replays them after a crash);
// that checkpoint upgrades it to version 4, binding everything from then on.
TEST(PoolIdentity, AVersion3PoolReplaysItsJournalAndIsUpgradedByItsFirstCheckpoint) {
  FaultDevice device(kDeviceBytes);
  ASSERT_NE(NewPool(device), nullptr);
  MakeVersion3(device);
  uint64_t journal_start;
  {
    auto pool = OpenPool(device);
    ASSERT_NE(pool, nullptr);
    EXPECT_EQ(pool->format_version(), 3u);
    journal_start = pool->geometry().journal_start;
    CommitRecord(*pool, 1);
  }  // crash
  auto block = Block(device, journal_start);
  EXPECT_EQ(format::BlockCrc(block.data(), kBlockSize, offsetof(format::JournalBlockHeader, crc)),
            reinterpret_cast<const format::JournalBlockHeader*>(block.data())->crc)
      << "a version 3 pool's journal block must keep the plain CRC";
  {
    auto pool = OpenPool(device);
    ASSERT_NE(pool, nullptr);
    EXPECT_EQ(ReplayedRecords(*pool), 1u);
    ASSERT_TRUE(pool->ReadCheckpointPayload().ok());
    std::vector<uint8_t> payload(100, 7);
    ASSERT_TRUE(pool->WriteCheckpoint(payload, {}).ok());
    CommitRecord(*pool, 2);
  }  // crash after the upgrade
  auto pool = OpenPool(device);
  ASSERT_NE(pool, nullptr);
  EXPECT_EQ(pool->format_version(), format::kVersion);
  auto payload = pool->ReadCheckpointPayload();
  ASSERT_TRUE(payload.ok()) << payload.status().ToString();
  EXPECT_EQ(payload->size(), 100u);
  EXPECT_EQ(ReplayedRecords(*pool), 1u);
}

}  // namespace
}  // namespace edgestor
