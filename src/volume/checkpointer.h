// Checkpointer: when the engine checkpoints, and the metadata space a
// checkpoint needs.
//
// Owns the checkpoint policy (journal half full, dirty map pages past half
// the cache budget, space short), the back-off after a background
// checkpoint refused for lack of space, and the metadata reserve: the space
// data writes may not take because the next checkpoint will (every dirty
// page, a chain for the whole table, slack). It also sizes what a control
// operation adds to the next checkpoint (MetadataNeed) and checks that fits
// before anything changes.
//
// It writes no checkpoint: the owner (VolumeSetImpl) walks its volumes and
// writes one, asks here whether one is due, and reports what it committed.
//
// Locking: its state is atomics, read and written from any thread with no
// lock (I/O threads call UpdateMetadataReserve and NeedsCheckpoint; the
// committer's thread NeedsCheckpoint and the back-off). CheckMetadataRoom
// REQUIRES the owner's mu_: the blocks it prepares are for the checkpoint
// the same holder of mu_ runs next. Pool calls take Pool::mu_ inside, last
// in the lock order.
//
// Why separate: this arithmetic must stay exact for a full pool never to
// fail a checkpoint midway, and reads best in one place, beside the format.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>

#include "base/status.h"
#include "pool/pool.h"
#include "volume/thin_map.h"

namespace edgestor {

// Metadata space a control operation needs beyond the next checkpoint's.
struct MetadataNeed {
  uint64_t payload_bytes = 0;      // added to the checkpoint payload
  uint64_t side_chain_blocks = 0;  // snapshot directories written
  uint64_t slack_blocks = 0;
};

class Checkpointer {
 public:
  // Control operations keep this much more room than the checkpoint they
  // run needs, for pages the data path dirties meanwhile.
  static constexpr uint64_t kControlSlackBlocks = 16;

  Checkpointer(Pool& pool, const MapCacheBudget& budget) : pool_(pool), budget_(budget) {}

  Checkpointer(const Checkpointer&) = delete;
  Checkpointer& operator=(const Checkpointer&) = delete;

  // ---- Policy (any thread) ----
  // The journal or the dirty map pages want a checkpoint, or space runs
  // short while pages are dirty.
  bool NeedsCheckpoint() const;
  // That, or released space piling up behind the next commit
  // (Pool::FreesWaiting): a commit is enough to make it reusable.
  bool NeedsCommitOrCheckpoint() const { return NeedsCheckpoint() || pool_.FreesWaiting(); }
  // A background checkpoint was refused for lack of space: the next waits
  // a while, rather than following every request.
  void BackOffAfterSpaceRefusal();
  // Still within that wait.
  bool BackingOff() const;

  // ---- Reserve (any thread) ----
  // What the checkpoint just committed holds: all volumes' directory slots
  // and the snapshots. The reserve is sized from these until the next.
  void Checkpointed(uint64_t directory_slots, uint64_t snapshot_count);
  // Recomputes the space kept back for the next checkpoint's metadata.
  void UpdateMetadataReserve();

  // ---- Room for a control operation ----
  // REQUIRES: owner's mu_ held. `payload_bytes`: the next checkpoint's
  // payload as the table stands. ENOSPC (nothing changed) unless that
  // checkpoint, grown by `need`, fits in the free space; otherwise the
  // blocks are prepared (host space taken) for it.
  Status CheckMetadataRoom(uint64_t payload_bytes, const MetadataNeed& need);

  // ---- Checkpoint payload arithmetic ----
  // The payload of a table with no volume and no snapshot.
  static uint64_t EmptyPayloadBytes();
  // Payload bytes a volume (or clone) with `slots` directory slots adds.
  static uint64_t VolumePayloadBytes(size_t name_length, uint64_t slots);
  static uint64_t SnapshotPayloadBytes(size_t name_length);
  // What a new snapshot named `name` of a volume with `slots` directory
  // slots, or a new volume (or clone), adds to the metadata.
  static MetadataNeed SnapshotNeed(const std::string& name, uint64_t slots);
  static MetadataNeed VolumeNeed(const std::string& name, uint64_t slots);

 private:
  Pool& pool_;
  const MapCacheBudget& budget_;
  std::atomic<uint64_t> directory_slots_{0};  // all volumes', as of the last checkpoint
  std::atomic<uint64_t> snapshot_count_{0};   // as of the last checkpoint
  // No background checkpoint before this time (steady_clock ticks).
  std::atomic<int64_t> space_retry_after_{0};
};

}  // namespace edgestor
