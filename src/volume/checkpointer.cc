// Checkpointer: checkpoint policy, metadata reserve and room.
#include "volume/checkpointer.h"

#include <cassert>
#include <cerrno>
#include <chrono>

namespace edgestor {

namespace {

// Extra blocks always kept back for a checkpoint's chain and labels. Map
// pages can also become dirty without a data allocation (written bits of a
// mapped cluster, discard, copy-on-write of a page): a checkpoint starts
// early once half of this slack is used, so those never outrun the reserve.
constexpr uint64_t kReserveSlackBlocks = 64;
// The pool signals "short" (short_below) before the reserve itself is reached.
static_assert(kReserveSlackBlocks / 2 > 0 && kReserveSlackBlocks / 2 < kReserveSlackBlocks);
// After a background checkpoint refused for space, none other for this long.
constexpr auto kSpaceRetryDelay = std::chrono::milliseconds(50);

uint64_t ChainBlocks(uint64_t payload_bytes) { return payload_bytes / format::kCheckpointPayload + 1; }

std::string Bytes(uint64_t blocks) { return std::to_string(blocks * format::kBlockSize / 1024) + " KiB"; }

int64_t SteadyNow() { return std::chrono::steady_clock::now().time_since_epoch().count(); }

}  // namespace

bool Checkpointer::NeedsCheckpoint() const {
  // Space running short: storing the dirty pages now turns them into
  // used blocks and frees the blocks they replace.
  bool space = pool_.MetadataShort() && budget_.dirty_pages > 0;
  return pool_.JournalWantsCheckpoint() || budget_.dirty_pages * 2 > budget_.max_pages || space;
}

void Checkpointer::BackOffAfterSpaceRefusal() {
  auto retry = std::chrono::steady_clock::now() + kSpaceRetryDelay;
  space_retry_after_.store(retry.time_since_epoch().count(), std::memory_order_relaxed);
}

bool Checkpointer::BackingOff() const { return SteadyNow() < space_retry_after_.load(std::memory_order_relaxed); }

void Checkpointer::Checkpointed(uint64_t directory_slots, uint64_t snapshot_count) {
  assert(snapshot_count <= format::kMaxSnapshots);
  directory_slots_ = directory_slots;
  snapshot_count_ = snapshot_count;
}

void Checkpointer::UpdateMetadataReserve() {
  // The next checkpoint writes every dirty page and a chain holding every
  // directory slot and volume table entry.
  uint64_t dirty = budget_.dirty_pages;
  uint64_t table_bytes = directory_slots_ * sizeof(format::DirectorySlot) +
                         format::kMaxVolumes * (sizeof(format::VolumeTableEntry) + format::kMaxVolumeNameLength +
                                                sizeof(format::VolumeAttributes)) +
                         (snapshot_count_ + 1) * (sizeof(format::SnapshotEntry) + format::kMaxSnapshotNameLength +
                                                  sizeof(format::VolumeAttributes));
  uint64_t chain_blocks = ChainBlocks(table_bytes);
  assert(chain_blocks >= 1 && chain_blocks < pool_.total_blocks() && "the chain of a full table fits any pool");
  pool_.SetMetadataReserve(dirty + chain_blocks + kReserveSlackBlocks, dirty + chain_blocks + kReserveSlackBlocks / 2);
}

Status Checkpointer::CheckMetadataRoom(uint64_t payload_bytes, const MetadataNeed& need) {
  assert(payload_bytes >= EmptyPayloadBytes());
  uint64_t needed = budget_.dirty_pages + ChainBlocks(payload_bytes + need.payload_bytes) + need.side_chain_blocks +
                    need.slack_blocks;
  // Blocks prepared for an earlier check of this operation count as free.
  uint64_t free = pool_.free_blocks() + pool_.prepared_blocks();
  assert(needed >= 1 && free <= pool_.total_blocks());
  // Host space too (a sparse pool file on a full file system): taken now,
  // so the checkpoint cannot fail midway for it.
  if (needed <= free) return pool_.PrepareMetadataBlocks(needed);
  return Status(ENOSPC, "pool is full: this needs " + Bytes(needed) + " of metadata space and " + Bytes(free) +
                            " is free; nothing was changed (free space by deleting snapshots or volumes, or by "
                            "discarding, then try again)");
}

uint64_t Checkpointer::EmptyPayloadBytes() {
  return sizeof(format::CheckpointHeader) + sizeof(format::PoolDefaults) + sizeof(format::SnapshotTableHeader);
}

uint64_t Checkpointer::VolumePayloadBytes(size_t name_length, uint64_t slots) {
  return sizeof(format::VolumeTableEntry) + name_length + sizeof(format::VolumeAttributes) +
         slots * sizeof(format::DirectorySlot);
}

uint64_t Checkpointer::SnapshotPayloadBytes(size_t name_length) {
  return sizeof(format::SnapshotEntry) + name_length + sizeof(format::VolumeAttributes);
}

MetadataNeed Checkpointer::SnapshotNeed(const std::string& name, uint64_t slots) {
  return {SnapshotPayloadBytes(name.size()), ChainBlocks(slots * sizeof(format::DirectorySlot)), kControlSlackBlocks};
}

MetadataNeed Checkpointer::VolumeNeed(const std::string& name, uint64_t slots) {
  return {VolumePayloadBytes(name.size(), slots), 0, kControlSlackBlocks};
}

}  // namespace edgestor
