// ThinVolume: the implementation of Volume over a ThinMap.
//
// Concurrency: one mutex per volume guards its map and counters; it is held
// only for in-memory work (lookups, allocation, bit updates) and never
// across asynchronous I/O, so requests on different queues proceed in
// parallel. The pool's own locks are taken inside it (volume -> pool), never
// the other way round.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "pool/pool.h"
#include "volume/thin_map.h"
#include "volume/volume_codec.h"
#include "volume/volume.h"
#include "volume/volume_set.h"

namespace edgestor {

class VolumeSetImpl;

// Largest request accepted by Submit (NBD and virtio-blk clients split
// larger ones).
inline constexpr uint64_t kMaxIoBytes = 32ull << 20;

class ThinVolume : public Volume {
 public:
  // An encrypted volume starts locked (no codec): its I/O fails with EACCES
  // until SetCodec gives it one.
  ThinVolume(VolumeSetImpl& set, Pool& pool, MapCacheBudget& budget, uint32_t id, std::string name, uint64_t size,
             const format::VolumeAttributes& attributes);

  uint32_t id() const override { return id_; }
  const std::string& name() const override { return name_; }
  uint64_t size() const override { return size_.load(std::memory_order_relaxed); }
  void Submit(VolumeIo* io, IoQueue& queue) override;
  Result<std::vector<VolumeExtent>> Describe(uint64_t offset, uint64_t length, size_t max_extents) override;

  // ---- For VolumeSetImpl (control path) ----
  std::mutex& mutex() { return mu_; }
  // REQUIRES: mu_ held (or no I/O yet).
  const format::VolumeAttributes& attributes() const { return attributes_; }
  format::VolumeAttributes& mutable_attributes() { return attributes_; }
  void SetCodec(std::unique_ptr<VolumeCodec> codec) { codec_ = std::move(codec); }
  VolumeCodec* codec() { return codec_.get(); }
  // REQUIRES: mu_ held. New writes use `setting`.
  void SetCompression(const CompressionSetting& setting);
  ThinMap& map() { return map_; }  // REQUIRES: mu_ held or single-threaded recovery
  VolumeInfo Info();
  // Journal replay: sets an entry without journaling it. EUCLEAN if out of range.
  Status ReplayMapSet(uint64_t cluster, const format::MapEntry& entry);
  // Recovery: marks every referenced block used and recounts; reports
  // problems through `problem` (returns false to stop).
  Status MarkReferencedSpace(const std::function<void(const std::string&)>& problem);
  // REQUIRES: mu_ held. Changes the size; shrinking appends the freed data
  // clusters and page blocks to `frees`. EBUSY if I/O is in flight.
  Status ResizeLocked(uint64_t new_size, std::vector<BlockRun>* frees);
  // REQUIRES: mu_ held. Appends all blocks of the volume to `frees`.
  Status ReleaseAllLocked(std::vector<BlockRun>* frees);
  uint64_t inflight() const { return inflight_ios_; }
  // Checks an entry read from disk (journal or map page) for impossible values.
  bool EntryIsWellFormed(const format::MapEntry& entry) const;

 private:
  struct SubIo;
  void SubmitRead(VolumeIo* io, IoQueue& queue);
  void SubmitWrite(VolumeIo* io, IoQueue& queue);
  // True when I/O must take the synchronous path: clusters are (or may
  // become) compressed, which makes every write a read-modify-write of a
  // whole cluster. REQUIRES: mu_ held.
  bool RewritesClusters() const;

  // ---- Synchronous path (thin_volume_sync.cc) ----
  // Any sector-aligned range; `data` nullptr writes zeros (discard and
  // write-zeroes: whole blocks become unwritten).
  Status WriteSyncRange(uint64_t offset, uint64_t length, const uint8_t* data);
  Status ReadSyncRange(uint64_t offset, uint64_t length, uint8_t* data);
  // REQUIRES: mu_ held for these.
  Status ReadClusterBytes(const format::MapEntry& entry, uint64_t cluster, uint64_t at, uint64_t n, uint8_t* out);
  Status LoadCluster(const format::MapEntry& entry, uint64_t cluster, uint8_t* out);
  Status WriteClusterBytes(CachedPage* page, uint64_t cluster, uint64_t at, uint64_t n, const uint8_t* data);
  Status WriteBlocksInPlace(CachedPage* page, uint64_t cluster, uint64_t at, uint64_t n, const uint8_t* data);
  Status StoreRelocated(CachedPage* page, uint64_t cluster, const uint8_t* plaintext, uint64_t written_bits);
  void FreeEntry(CachedPage* page, uint64_t cluster);
  uint64_t FirstLogicalBlock(uint64_t cluster) const { return cluster * cluster_blocks_; }
  // REQUIRES: mu_ held. Changes one entry, keeping counters, page dirtiness
  // and (with `journal`) the journal in step; `frees` go with the record.
  void SetEntry(CachedPage* page, uint64_t cluster, const format::MapEntry& entry, bool journal,
                std::span<const BlockRun> frees = {});
  // REQUIRES: mu_ held. Maps `cluster` to a new cluster if unmapped.
  Result<format::MapEntry> EnsureMapped(CachedPage* page, uint64_t cluster);
  SubIo* NewCompressedRead(VolumeIo* io, CachedPage* page, uint64_t cluster, const format::MapEntry& entry,
                           uint64_t at, uint64_t n, uint8_t* dst);
  Status DecodeCompressedRead(SubIo* sub);
  void SubmitSubIo(SubIo* sub, IoQueue& queue);
  static void OnSubIoDone(IoRequest* req, int result);
  void FinishSubIo(SubIo* sub, int result);
  void ReleaseGuard(VolumeIo* io);
  void Complete(VolumeIo* io);
  void Fail(VolumeIo* io, const Status& status);

  VolumeSetImpl& set_;
  Pool& pool_;
  const uint32_t id_;
  const std::string name_;
  const uint32_t cluster_size_;
  const uint32_t cluster_blocks_;
  std::atomic<uint64_t> size_;

  std::mutex mu_;
  ThinMap map_;                      // GUARDED_BY(mu_)
  format::VolumeAttributes attributes_;  // GUARDED_BY(mu_)
  std::unique_ptr<VolumeCodec> codec_;   // set before I/O; null: encrypted and locked
  uint64_t allocated_clusters_ = 0;  // GUARDED_BY(mu_): mapped clusters
  uint64_t stored_blocks_ = 0;       // GUARDED_BY(mu_): device blocks they occupy
  uint64_t compressed_clusters_ = 0;  // GUARDED_BY(mu_)
  uint64_t written_blocks_ = 0;      // GUARDED_BY(mu_)
  uint64_t inflight_ios_ = 0;        // GUARDED_BY(mu_): VolumeIos not yet completed
};

}  // namespace edgestor
