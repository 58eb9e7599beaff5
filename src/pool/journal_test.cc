// The journal half of the commit protocol: room, and what a full journal
// does to the pool.
#include <gtest/gtest.h>

#include <cstring>

#include "io/borrowed_device.h"
#include "io/fault_device.h"
#include "pool/pool.h"

namespace edgestor {
namespace {

constexpr uint64_t kMiB = 1 << 20;

std::unique_ptr<Pool> NewPool(FaultDevice& device, uint64_t journal_bytes) {
  auto pool = Pool::Format(Borrow(device), {.cluster_size = 65536, .journal_bytes = journal_bytes});
  EXPECT_TRUE(pool.ok()) << pool.status().ToString();
  return pool.ok() ? std::move(pool).value() : nullptr;
}

void AppendMapSets(Pool& pool, uint64_t count) {
  format::MapSetRecord record{};
  record.volume_id = 1;
  for (uint64_t i = 0; i < count; i++) {
    record.cluster = i;
    pool.AppendRecord(format::RecordType::kMapSet,
                      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(&record), sizeof record));
  }
}

// Records piled up behind a commit (small journal, heavy load) can be more
// than the journal holds. The commit must refuse before writing anything and
// leave the pool usable: the caller checkpoints instead.
TEST(Journal, ACommitThatDoesNotFitRefusesWithoutStoppingThePool) {
  FaultDevice device(64 * kMiB);
  auto pool = NewPool(device, 1 * kMiB);  // 256 journal blocks
  ASSERT_NE(pool, nullptr);
  AppendMapSets(*pool, 300 * format::kJournalPayload / sizeof(format::MapSetRecord));
  Status s = pool->Commit();
  EXPECT_EQ(s.code(), ENOSPC) << s.ToString();
  EXPECT_FALSE(pool->is_failed()) << "a full journal stopped the pool";
  EXPECT_TRUE(pool->CheckNotFailed().ok());
  // Nothing was lost: a checkpoint takes the records over, and commits work again.
  ASSERT_TRUE(pool->WriteCheckpoint({}, {}).ok());
  AppendMapSets(*pool, 10);
  EXPECT_TRUE(pool->Commit().ok());
}

TEST(Journal, ACommitThatFitsIsWrittenWhole) {
  FaultDevice device(64 * kMiB);
  auto pool = NewPool(device, 1 * kMiB);
  ASSERT_NE(pool, nullptr);
  const uint64_t records = 100 * format::kJournalPayload / sizeof(format::MapSetRecord);
  AppendMapSets(*pool, records);
  ASSERT_TRUE(pool->Commit().ok());
  auto reopened = Pool::Open(Borrow(device));
  ASSERT_TRUE(reopened.ok());
  ASSERT_TRUE(reopened.value()->ReadCheckpointPayload().ok());
  auto applied = reopened.value()->ReplayJournal([](format::RecordType, std::span<const uint8_t>) { return Status::Ok(); });
  ASSERT_TRUE(applied.ok());
  EXPECT_EQ(applied.value(), records);
}

}  // namespace
}  // namespace edgestor
