// VolumeSetImpl: the volume table, recovery and checkpoints.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "pool/pool.h"
#include "volume/checkpoint_codec.h"
#include "volume/thin_map.h"
#include "volume/thin_volume.h"
#include "volume/volume_set.h"

namespace edgestor {

class VolumeSetImpl : public VolumeSet {
 public:
  VolumeSetImpl(std::unique_ptr<Pool> pool, const PoolOpenOptions& options);
  ~VolumeSetImpl() override;

  // Rebuilds the volume table, maps and allocator from the checkpoint and
  // the journal. With a report (fsck), problems are collected there and
  // recovery goes on; without, the first problem is returned as EUCLEAN.
  Status Recover(FsckReport* report);

  Status Close() override;
  PoolInfo Info() override;
  std::vector<VolumeInfo> ListVolumes() override;
  Result<VolumeInfo> GetVolumeInfo(const std::string& name) override;
  Result<Volume*> CreateVolume(const std::string& name, uint64_t size) override;
  Result<Volume*> FindVolume(const std::string& name) override;
  Status ResizeVolume(const std::string& name, uint64_t new_size, bool allow_shrink) override;
  Status DeleteVolume(const std::string& name) override;
  Status Flush() override;
  Status Checkpoint() override;
  Device& device() override { return pool_->device(); }

  // ---- For ThinVolume ----
  // Called after each request completes, with no volume lock held: starts a
  // checkpoint when the journal or the dirty map pages need one.
  void AfterIo();
  // Recomputes the space kept back for the next checkpoint's metadata.
  void UpdateMetadataReserve();
  Status CheckUsable() const;
  // fsck: figures gathered by Recover.
  void FillReport(FsckReport* report);

 private:
  Status CheckpointLocked(std::vector<BlockRun> frees);  // REQUIRES: mu_ held
  bool NeedsCheckpoint() const;
  ThinVolume* FindLocked(const std::string& name);
  ThinVolume* FindById(uint32_t id);

  std::unique_ptr<Pool> pool_;
  MapCacheBudget budget_;
  // Guards the volume table; taken before any volume's mutex. Checkpoints
  // hold it, so control operations and checkpoints are serialized.
  std::mutex mu_;
  std::map<std::string, std::unique_ptr<ThinVolume>> volumes_;  // GUARDED_BY(mu_)
  uint32_t next_volume_id_ = 1;                                 // GUARDED_BY(mu_)
  std::atomic<uint64_t> directory_slots_{0};  // all volumes', as of the last checkpoint
  std::atomic<bool> failed_{false};  // a checkpoint failed: reopen to recover
  std::atomic<bool> closed_{false};
};

}  // namespace edgestor
