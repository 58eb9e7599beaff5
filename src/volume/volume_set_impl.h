// VolumeSetImpl: the volume table, recovery and checkpoints. Its named
// parts: KeyRing (key_ring.h: the pool key, data keys wrapped),
// Checkpointer (checkpointer.h: when to checkpoint, metadata space),
// SnapshotTable (snapshot_table.h: the snapshots and their ids), Committer,
// Recompressor and CodecPool (their threads).
#pragma once

#include <algorithm>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "pool/pool.h"
#include "volume/codec_pool.h"
#include "volume/committer.h"
#include "volume/checkpoint_codec.h"
#include "volume/checkpointer.h"
#include "volume/key_ring.h"
#include "volume/recompressor.h"
#include "volume/snapshot_table.h"
#include "volume/thin_map.h"
#include "volume/thin_volume.h"
#include "volume/volume_services.h"
#include "volume/volume_set.h"

namespace edgestor {

class VolumeSetImpl : public VolumeSet, private VolumeEvents {
 public:
  VolumeSetImpl(std::unique_ptr<Pool> pool, const PoolOpenOptions& options);
  ~VolumeSetImpl() override;

  // Rebuilds the volume table, maps and allocator from the checkpoint and
  // the journal. With a report (fsck), problems are collected there and
  // recovery goes on; without, the first problem is returned as EUCLEAN.
  Status Recover(FsckReport* report);
  // After recovery, for a pool opened to serve (not for fsck): compresses
  // hot clusters left plain once they are cold (volume_set_recompress.cc).
  void StartRecompressor();

  Status Close() override;
  Status CheckpointAndClose();  // takes mu_; Close stops the background threads first
  PoolInfo Info() override;
  std::vector<VolumeInfo> ListVolumes() override;
  Result<VolumeInfo> GetVolumeInfo(const std::string& name) override;
  std::vector<std::string> VolumeNames() override;
  Result<bool> IsLocked(const std::string& name) override;
  Result<Volume*> CreateVolume(const std::string& name, uint64_t size, const VolumeCreateOptions& options) override;
  Result<Volume*> FindVolume(const std::string& name) override;
  Status ResizeVolume(const std::string& name, uint64_t new_size, bool allow_shrink) override;
  Status DeleteVolume(const std::string& name) override;
  Status SetVolumeCompression(const std::string& name, const CompressionSetting& setting) override;
  // ---- Snapshots (volume_set_snapshots.cc) ----
  Result<SnapshotInfo> CreateSnapshot(const std::string& volume, const std::string& name) override;
  Result<std::vector<SnapshotInfo>> ListSnapshots(const std::string& volume) override;
  Status DeleteSnapshot(const std::string& volume, const std::string& name) override;
  Result<std::string> Rollback(const std::string& volume, const std::string& snapshot, bool keep_current) override;
  Result<Volume*> CloneSnapshot(const std::string& volume, const std::string& snapshot,
                                const std::string& clone) override;
  Result<uint64_t> FlattenVolume(const std::string& name, const ProgressFn& progress) override;
  Status Unlock(const PoolSecret& secret) override;
  Status Rekey(const PoolSecret& new_secret, const ScryptParams& kdf) override;
  // Pool creation: the pool key (KeyRing::NewKeyProtection) and defaults.
  void SetCreatedState(std::optional<PoolKey> key, const format::PoolDefaults& defaults);
  // The pool key the secret gives, checked against the label (no lock).
  Result<PoolKey> DeriveKey(const PoolSecret& secret) { return key_ring_.DeriveKey(secret); }
  Status Flush() override;
  Status Checkpoint() override;
  Device& device() override { return pool_->device(); }

  // EBADF once closed, EIO once stopped after a device error.
  Status CheckUsable() const override;
  // Tests: the run (first block, stored blocks) of every mapped cluster of a
  // volume or snapshot ("VOL@SNAP"), read from its map, for recounting
  // the accounting without the reference counts.
  Result<std::vector<BlockRun>> MappedRunsForTest(const std::string& name);
  // Deletes with more pages of their own than this go to the background.
  void set_background_delete_pages(uint64_t pages) { background_delete_pages_ = pages; }
  // Large deletes and shrinks release at most this many map pages (and
  // their runs) per checkpoint.
  void set_release_step_pages(uint64_t pages) { release_step_pages_ = std::max<uint64_t>(pages, 1); }
  // Tests: the most runs one checkpoint released so far (what one step of a
  // delete or shrink held in memory).
  uint64_t largest_release_for_test() const { return largest_release_; }
  // Tests: waits until no snapshot or volume deletion is pending.
  void WaitForBackgroundDeletes();
  // Tests: stops the background release for good (until the pool is
  // reopened), so hidden snapshots stay hidden.
  void StopBackgroundDeletesForTest() { StopReclaimer(); }
  // Tests: checkpoints (settling every release), then recounts the
  // references of every page and run from the directories and stored pages
  // and compares them with the pool's counts. EUCLEAN names the first
  // difference.
  Status CheckReferencesForTest();
  // fsck: figures gathered by Recover.
  void FillReport(FsckReport* report);

 private:
  using Snapshot = SnapshotTable::Snapshot;
  // A change committed by a checkpoint: runs with every volume locked,
  // after the dirty pages are written (so every head's slots name stored,
  // current pages) and before the payload is encoded. May append releases
  // to `frees`. An error fails the checkpoint (and the set, until reopened).
  using CheckpointChange = std::function<Status(std::vector<BlockRun>* frees)>;
  // REQUIRES: mu_ held. ENOSPC unless the next checkpoint, grown by `need`,
  // fits in the free space (Checkpointer::CheckMetadataRoom).
  Status CheckMetadataRoomLocked(const MetadataNeed& need);
  // REQUIRES: mu_ held. EFBIG if the volumes' directories (checkpoint
  // payload) or all maps in memory would pass their bounds.
  Status CheckMapBoundsLocked(uint64_t more_volume_slots, uint64_t more_slots);
  uint64_t PayloadBytesLocked();  // REQUIRES: mu_ held
  // REQUIRES: mu_ held. With `new_keys`, the label changes to them.
  Status CheckpointLocked(std::vector<BlockRun> frees, const KeyProtection* new_keys = nullptr,
                          const CheckpointChange& change = {});
  // ---- Snapshots (volume_set_snapshots.cc) ----
  Status RecoverSnapshots(std::vector<SnapshotRecord>& records);
  // REQUIRES: mu_ and every volume lock held (a CheckpointChange). Stores
  // `source`'s directory as a new snapshot, referencing its pages.
  Status AddSnapshotLocked(ThinVolume& source, const std::string& volume_name, const std::string& name,
                           uint32_t flags);
  // Drops one directory's references to its stored pages; the last reader
  // of a page also releases the page's runs.
  // Pages in `read_already` had their runs listed in `frees` before.
  Status ReleaseDirectory(const std::vector<format::DirectorySlot>& directory, std::vector<BlockRun>* frees,
                          const std::unordered_set<uint64_t>* read_already = nullptr);
  // Background deletion: hides the snapshot (committed), then a thread
  // reads its own pages and commits their release.
  Status HideForDeletionLocked(Snapshot& snapshot);
  void StartReclaimerLocked();  // REQUIRES: mu_ held
  // Background deletion of a large volume: renamed to its hidden name
  // (committed), then shrunk from its end in bounded steps, then removed.
  Status HideVolumeForDeletionLocked(ThinVolume& volume);
  Status ReleaseVolumeStep(const std::string& hidden_name);
  // REQUIRES: mu_ held. Shrinks `volume` to `new_size` and commits the
  // release.
  Status ShrinkAndCommitLocked(ThinVolume& volume, uint64_t new_size);
  void ReclaimLoop();
  Status ReclaimOne(uint32_t snapshot_id);
  void StopReclaimer();
  void ReferenceDirectory(const std::vector<format::DirectorySlot>& directory);
  std::vector<ThinVolume*> AllMapsLocked();  // volumes and snapshot views
  SnapshotInfo SnapshotInfoLocked(const Snapshot& snapshot);
  // Device blocks of data freed if every map in `maps` were dropped.
  Result<uint64_t> BlocksFreedWithout(const std::vector<ThinVolume*>& maps);
  Status FillSharingInfo(ThinVolume& volume, VolumeInfo* info);
  // REQUIRES: mu_ held. Commits releases still waiting in the journal, so
  // reference counts (and the accounting built on them) are exact.
  Status SettleLocked();
  // ---- Recompression (volume_set_recompress.cc) ----
  // One round on the recompressor's thread: the cold clusters of every
  // volume, one at a time, each under control_mu_ (no volume is destroyed
  // meanwhile).
  void RecompressRound(IoQueue& queue, const std::function<bool()>& stopping);
  void StopRecompressor();
  // ---- Keys (volume_set_keys.cc) ----
  // REQUIRES: mu_ held and key_ring_.unlocked(). Gives an encrypted volume
  // (or view) without a codec the one its unwrapped data key makes.
  Status UnlockVolumeLocked(ThinVolume& volume);
  Status GiveCodec(ThinVolume& volume, const DataKey* key);
  // ---- VolumeEvents: what the volumes report ----
  void MapPagesDirtied() override { checkpointer_.UpdateMetadataReserve(); }
  // With no volume lock held: has the committer checkpoint when the journal
  // or the dirty map pages need one.
  void RequestFinished() override;
  std::unique_ptr<ThinVolume> MakeVolume(uint32_t id, std::string name, uint64_t size,
                                         const format::VolumeAttributes& attributes);
  // On the committer's thread: the checkpoint RequestFinished asked for.
  void CheckpointIfNeeded();
  ThinVolume* FindLocked(const std::string& name);
  ThinVolume* FindById(uint32_t id);

  std::unique_ptr<Pool> pool_;
  MapCacheBudget budget_;
  Checkpointer checkpointer_{*pool_, budget_};  // atomics: any thread (see checkpointer.h)
  // Guards the volume table; taken before any volume's mutex. Checkpoints
  // hold it, so control operations and checkpoints are serialized.
  std::mutex mu_;
  std::map<std::string, std::unique_ptr<ThinVolume>> volumes_;  // GUARDED_BY(mu_)
  SnapshotTable snapshots_;                                     // GUARDED_BY(mu_)
  // Serializes snapshot creation (which releases mu_ while it waits for
  // writes in flight) with the operations that destroy or resize volume
  // objects, and with each recompression.
  std::mutex control_mu_;
  // Control operations waiting for control_mu_: the recompressor's round
  // stops for them (std::mutex is not fair; it could hold them off).
  std::atomic<int> control_waiting_{0};
  // control_mu_ for a control operation.
  class ControlLock {
   public:
    explicit ControlLock(VolumeSetImpl& set) : set_(set) {
      set_.control_waiting_++;
      set_.control_mu_.lock();
      set_.control_waiting_--;
    }
    ~ControlLock() { set_.control_mu_.unlock(); }
    ControlLock(const ControlLock&) = delete;
    ControlLock& operator=(const ControlLock&) = delete;

   private:
    VolumeSetImpl& set_;
  };
  uint64_t background_delete_pages_ = 64;
  uint64_t release_step_pages_ = 256;  // 256 pages: at most ~65,000 runs (1 MiB) per step
  uint64_t largest_release_ = 0;       // GUARDED_BY(mu_)
  std::thread reclaimer_;        // GUARDED_BY(mu_) to start; joined by StopReclaimer
  bool reclaimer_running_ = false;  // GUARDED_BY(mu_)
  std::atomic<bool> stop_reclaimer_{false};
  std::string reclaim_error_;    // GUARDED_BY(mu_): why the background release stopped
  uint32_t next_volume_id_ = 1;                                 // GUARDED_BY(mu_)
  format::PoolDefaults defaults_{};                             // GUARDED_BY(mu_)
  KeyRing key_ring_{*pool_};  // GUARDED_BY(mu_), but DeriveKey: the pool key, once given
  std::atomic<uint64_t> checkpoints_{0};  // CheckpointLocked calls, their total and longest time
  std::atomic<uint64_t> checkpoint_ns_total_{0};
  std::atomic<uint64_t> checkpoint_ns_max_{0};
  std::atomic<bool> failed_{false};  // a checkpoint failed: reopen to recover
  std::atomic<bool> closed_{false};
  std::unique_ptr<CodecPool> codec_pool_;
  std::unique_ptr<Committer> committer_;  // its thread uses the members above
  const uint32_t recompress_idle_ms_;
  std::unique_ptr<Recompressor> recompressor_;  // its thread uses the members above
  std::optional<VolumeServices> services_;  // handed to every volume; set once the above exist
};

}  // namespace edgestor
