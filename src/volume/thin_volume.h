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
#include <functional>
#include <map>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "pool/pool.h"
#include "volume/thin_map.h"
#include "volume/volume.h"
#include "volume/volume_codec.h"
#include "volume/volume_services.h"
#include "volume/volume_set.h"

namespace edgestor {

// Largest request accepted by Submit (NBD and virtio-blk clients split
// larger ones).
inline constexpr uint64_t kMaxIoBytes = 32ull << 20;

class ThinVolume : public Volume {
 public:
  // An encrypted volume starts locked (no codec): its I/O fails with EACCES
  // until SetCodec gives it one.
  ThinVolume(const VolumeServices& services, uint32_t id, std::string name, uint64_t size,
             const format::VolumeAttributes& attributes);

  uint32_t id() const override { return id_; }
  const std::string& name() const override { return name_; }
  uint64_t size() const override { return size_.load(std::memory_order_relaxed); }
  void Submit(VolumeIo* io, IoQueue& queue) override;
  Result<std::vector<VolumeExtent>> Describe(uint64_t offset, uint64_t length, size_t max_extents) override;
  const IoStats* io_stats() const override { return &io_stats_; }

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
  // ---- Snapshots ----
  // A snapshot is a read-only ThinVolume over the snapshot's directory:
  // writes fail with EROFS and its counters are the ones stored with it.
  void MakeSnapshotView(const format::SnapshotEntry& entry);
  bool read_only() const override { return read_only_; }
  // Accounting as stored in a SnapshotEntry. REQUIRES: mu_ held.
  void FillSnapshotCounters(format::SnapshotEntry* entry) const;
  // Raised while a snapshot waits for the asynchronous writes in flight to
  // finish: new ones wait, parked off their thread (their queue expects
  // them back), and lowering it hands each back to its queue to start
  // again. REQUIRES: mu_ held.
  void set_write_barrier(bool on);
  uint64_t barrier_waits() const { return barrier_waits_.load(std::memory_order_relaxed); }
  uint64_t async_writes() const { return async_writes_.load(); }
  uint64_t copies_started() const { return copies_started_.load(std::memory_order_relaxed); }
  uint64_t reencodes_started() const { return reencodes_started_.load(std::memory_order_relaxed); }
  uint64_t rewrite_retries() const { return rewrite_retries_.load(std::memory_order_relaxed); }
  uint64_t unaligned_writes() const { return unaligned_writes_.load(std::memory_order_relaxed); }
  uint64_t gate_parks() const { return gate_parks_.load(std::memory_order_relaxed); }
  // Rollback: the volume's content becomes `view`'s. REQUIRES: mu_ held, no
  // I/O in flight, no dirty page (right after a checkpoint). The caller has
  // already taken references to the view's pages.
  void TakeContentOf(ThinVolume& view);
  // Recovery, in passes over every head volume and snapshot so shared pages
  // and runs are counted once per distinct page (see VolumeSetImpl::Recover):
  // references to stored pages this map reads; the runs of pages it alone
  // has in memory (replayed changes) and of stored pages not counted yet.
  Status MarkReferencedSpace(std::unordered_set<uint64_t>* counted_pages,
                             const std::function<void(const std::string&)>& problem);
  // Last pass, heads only: pages replay changed are this volume's own
  // copies; their old block stays referenced (until the next checkpoint)
  // only if no other directory reads it.
  void MarkDivergedPages(const std::function<void(const std::string&)>& problem);
  // Copies every cluster it shares into space of its own (clone flatten).
  // Returns the clusters copied; `progress` gets (done, total) clusters
  // and stops the copy (ECANCELED) by returning false.
  Result<uint64_t> CopySharedClusters(const std::function<bool(uint64_t, uint64_t)>& progress);
  // REQUIRES: mu_ held. Changes the size; shrinking appends the freed data
  // clusters and page blocks to `frees`. EBUSY if I/O is in flight.
  Status ResizeLocked(uint64_t new_size, std::vector<BlockRun>* frees);
  // REQUIRES: mu_ held. Appends all blocks of the volume to `frees`.
  Status ReleaseAllLocked(std::vector<BlockRun>* frees);
  // REQUIRES: mu_ held. The size a shrink towards `floor_size` may stop at
  // so that it releases at most `pages` map pages (stored or cached): large
  // deletes and shrinks go in steps of bounded memory.
  uint64_t ShrinkStepSizeLocked(uint64_t floor_size, uint64_t pages);
  // REQUIRES: mu_ held, no I/O in flight (a volume hidden for deletion).
  void Rename(std::string name) { name_ = std::move(name); }
  // REQUIRES: mu_ held; a snapshot view being deleted, whose pages past
  // `directory` were released: it now describes `size` bytes.
  void TruncateView(const std::vector<format::DirectorySlot>& directory, uint64_t size);
  uint64_t inflight() const { return inflight_ios_; }
  // ---- Hot clusters left plain, recompressed once cold (thin_volume_rewrite.cc) ----
  // Up to `max` plain clusters of this compressing volume (those partial
  // writes left plain, and others written in place) that nobody wrote for
  // `idle_ms`.
  std::vector<uint64_t> ColdPlainClusters(uint64_t idle_ms, size_t max);
  // Compresses `cluster` again if it is still a plain cluster of this volume
  // alone with nothing in flight, through an asynchronous rewrite on
  // `queue` (polled until it is done; mu_ not held). A cluster that changed
  // meanwhile is left as it is.
  // Skipped if it was written less than `idle_ms` ago.
  Status Recompress(uint64_t cluster, uint64_t idle_ms, IoQueue& queue);
  uint64_t recompressed_clusters() const { return recompressed_clusters_.load(std::memory_order_relaxed); }
  // Checks an entry read from disk (journal or map page) for impossible values.
  bool EntryIsWellFormed(const format::MapEntry& entry) const;

 private:
  struct SubIo;
  struct ClusterRewrite;
  static std::vector<SubIo*>& RecycledSubIos();
  static SubIo* NewSubIo();
  static void RecycleSubIo(SubIo* sub);
  // ---- Dispatch (thin_volume.cc) ----
  static bool IsAsynchronous(const VolumeIo& io);
  void SubmitAsynchronous(VolumeIo* io, IoQueue& queue);
  // REQUIRES: mu_ not held. True if `io` waits for the write barrier to be
  // lowered (it starts again in OnBarrierLowered, on its queue).
  bool ParkBehindBarrier(VolumeIo* io, IoQueue& queue);
  static void OnBarrierLowered(IoRequest* req, int result);
  struct PageLoad;
  // REQUIRES: mu_ not held. True if `io` waits for a map page (it goes on
  // in OnPageLoaded).
  bool ParkOnUncachedPage(VolumeIo* io, IoQueue& queue, uint64_t from_cluster);
  static void OnPageLoaded(IoRequest* req, int result);
  // Validates and counts `io` (progress set up), then dispatches it.
  void Admit(VolumeIo* io, IoQueue& queue);
  void SubmitRead(VolumeIo* io, IoQueue& queue);
  // A request's reads, in order, submitted once its clusters are looked up.
  struct SubIoChain {
    SubIo* head = nullptr;
    SubIo** last = &head;
    void Add(SubIo* sub);
  };
  // REQUIRES: mu_ not held. Looks up the part [at, at+n) of `cluster` and
  // appends the reads it needs to `chain` (or parks it at a gate).
  void CollectClusterReads(VolumeIo* io, IoQueue& queue, uint64_t cluster, uint64_t at, uint64_t n,
                           SubIoChain& chain);
  static void SubmitChain(SubIoChain& chain, IoQueue& queue);
  void SubmitWrite(VolumeIo* io, IoQueue& queue);
  // Aligned discard and write-zeroes.
  void SubmitZeroes(VolumeIo* io, IoQueue& queue);
  // REQUIRES: mu_ not held. The zeroing counterpart of WriteCluster.
  void ZeroCluster(VolumeIo* io, IoQueue& queue, uint64_t cluster, uint64_t at, uint64_t n);
  // WriteCluster or ZeroCluster, as the request's operation asks (a
  // rewrite that lost a race starts its part again here).
  void StartClusterPart(VolumeIo* io, IoQueue& queue, uint64_t cluster, uint64_t at, uint64_t n);
  class SubIoBatch;
  // `batch`: where an in-place write's sub-I/O goes, to be merged with its
  // neighbours; null: submitted at once.
  void WriteCluster(VolumeIo* io, IoQueue& queue, uint64_t cluster, uint64_t at, uint64_t n,
                    SubIoBatch* batch = nullptr);
  Result<SubIo*> BeginInPlaceWrite(VolumeIo* io, CachedPage* page, uint64_t cluster, uint64_t at, uint64_t n);
  void SubmitInPlaceWrite(SubIo* sub, IoQueue& queue, SubIoBatch* batch);

  // ---- Unaligned requests (thin_volume_unaligned.cc) ----
  // An unaligned write reads its partial blocks and writes them back merged
  // as an aligned request, holding a gate on its clusters meanwhile.
  struct UnalignedIo;
  struct ParkedPart;
  void SubmitUnaligned(VolumeIo* io, IoQueue& queue);
  void StartUnalignedParts(UnalignedIo* rmw);
  void SubmitPart(UnalignedIo* rmw, VolumeOp op, uint64_t offset, uint64_t length, uint8_t* buf);
  static void OnPartDone(VolumeIo* part, const Status& status);
  static void PartFinished(UnalignedIo* rmw, int error);
  static void OnGateGranted(IoRequest* req, int result);
  void ReadEdges(UnalignedIo* rmw);
  void WriteMerged(UnalignedIo* rmw);
  void FinishUnaligned(UnalignedIo* rmw);
  // REQUIRES: mu_ held. Queues or installs `rmw`'s gate; true if it holds
  // its clusters at once.
  bool AcquireGateLocked(UnalignedIo* rmw);
  void ReleaseGate(UnalignedIo* rmw);  // mu_ not held
  void GrantIfIdleLocked(UnalignedIo* rmw);
  // REQUIRES: mu_ held. True if `cluster` lies under the gate of a
  // read-modify-write `io` is not part of: the part [at, at+n) then waits,
  // parked off its thread, and starts again on its queue once the gate goes.
  bool ParkOnGate(VolumeIo* io, IoQueue& queue, uint64_t cluster, uint64_t at, uint64_t n);
  static void OnPartUnparked(IoRequest* req, int result);
  // REQUIRES: mu_ held. The last I/O in flight on `cluster` finished.
  void OnClusterIdleLocked(uint64_t cluster);

  // ---- Asynchronous rewrites: copy-on-write, re-encoding (thin_volume_rewrite.cc) ----
  // REQUIRES: mu_ held. Without `reencode`, `cluster` is plain and shared.
  Result<ClusterRewrite*> BeginRewrite(VolumeIo* io, IoQueue& queue, CachedPage* page, uint64_t cluster, uint64_t at,
                                       uint64_t n, bool reencode);
  void StartRewrite(ClusterRewrite* rewrite);  // mu_ not held
  static void OnRewriteReadDone(IoRequest* req, int result);
  static int ReencodeStep(IoRequest* req);  // on a codec worker
  static void OnRewriteEncoded(IoRequest* req, int result);
  static void OnRewriteWriteDone(IoRequest* req, int result);
  Status MergeForCopy(ClusterRewrite* rewrite);
  Status ReencodeForRewrite(ClusterRewrite* rewrite);
  Status EncodePlainCluster(ClusterRewrite* rewrite, uint64_t block, uint64_t bits);
  void NoteRewritten(const ClusterRewrite* rewrite);  // REQUIRES: mu_ held
  void TouchHotPlain(uint64_t cluster);                // REQUIRES: mu_ held
  static uint64_t NowMs();                             // steady clock
  void FinishRewrite(ClusterRewrite* rewrite, int result);
  bool SwapInRewriteLocked(ClusterRewrite* rewrite, int result);
  // ---- Packing compressed frames (thin_volume_pack.cc) ----
  struct PackWrite;
  // A re-encoding rewrite starts and stops encoding; stopping hands over
  // its frame (or nullptr: none to pack) and may close the pack.
  void BeginEncoding();
  void EndEncoding(ClusterRewrite* frame);
  static void OnPackClosed(IoRequest* req, int result);
  void WritePack(PackWrite* pack, IoQueue& queue);
  void WriteFramesAlone(PackWrite* pack, IoQueue& queue);
  static void SubmitPackWrite(PackWrite* pack, ClusterRewrite* frame, uint64_t first_block, uint64_t blocks,
                              uint8_t* data, IoQueue& queue);
  uint64_t LayOutPack(std::vector<ClusterRewrite*>& frames) const;
  BlockRun PackedRun(uint64_t first_block, const ClusterRewrite* frame) const;
  static uint8_t* FillPack(PackWrite* pack, uint64_t blocks);
  static void OnPackWritten(IoRequest* req, int result);
  static void FinishPack(PackWrite* pack, int result);

  // REQUIRES: mu_ held; `cluster` plain. Before its run is replaced: I/O
  // in flight on it (reads, and in-place writes a whole-cluster rewrite
  // overtook) keeps it referenced until that I/O finishes.
  void HoldRunForIoInFlight(CachedPage* page, uint64_t cluster);

  // ---- Synchronous steps (thin_volume_sync.cc): map-only zeroing, and
  // the rare write under a snapshot's barrier or read racing a move ----
  // REQUIRES: mu_ held for these.
  Status ReadClusterBytes(const format::MapEntry& entry, uint64_t cluster, uint64_t at, uint64_t n, uint8_t* out);
  Status LoadCluster(const format::MapEntry& entry, uint64_t cluster, uint8_t* out);
  Status WriteClusterBytes(CachedPage* page, uint64_t cluster, uint64_t at, uint64_t n, const uint8_t* data);
  Status WriteBlocksInPlace(CachedPage* page, uint64_t cluster, uint64_t at, uint64_t n, const uint8_t* data);
  Status StoreRelocated(CachedPage* page, uint64_t cluster, const uint8_t* plaintext, uint64_t written_bits);
  void FreeEntry(CachedPage* page, uint64_t cluster);
  Status CountEntries(const format::MapEntry* entries, uint64_t first_cluster, bool reference,
                      const std::function<void(const std::string&)>& problem);
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
  // Decrypts the blocks a compressed entry occupies, as read (in place), and
  // decompresses its frame into `out` (a cluster; with `needed`, only its
  // first `needed` bytes must be right).
  Status DecodeFrame(const format::MapEntry& entry, uint64_t cluster, std::span<uint8_t> stored, uint8_t* out,
                     size_t needed = 0);
  static int DecodeStep(IoRequest* req);  // on a codec worker
  static void OnCompressedReadDecoded(IoRequest* req, int result);
  void EndSubIo(SubIo* sub, int result);
  static void SubmitSubIo(SubIo* sub, IoQueue& queue);
  static void OnSubIoDone(IoRequest* req, int result);
  void FinishSubIo(SubIo* sub, int result);
  void ReleaseGuard(VolumeIo* io);
  // REQUIRES: mu_ held and no I/O in flight on `cluster`.
  void ReleaseHeldRuns(uint64_t cluster);
  void Complete(VolumeIo* io);
  static void OnCommitted(IoRequest* req, int result);
  void Finish(VolumeIo* io, const Status& status);
  void Fail(VolumeIo* io, const Status& status);
  // Records a request in io_stats_ (and in the submitter's IoStats).
  void CountFinished(const VolumeIo& io, bool ok);

  const VolumeServices& services_;
  Pool& pool_;  // services_.pool
  const uint32_t id_;
  std::string name_;
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
  // GUARDED_BY(mu_): runs a shared cluster was copied away from while reads
  // of it were in flight, by cluster; each holds a reference (in memory
  // only) until those reads finish, so the run cannot be freed and reused
  // under them even if every snapshot sharing it is deleted meanwhile.
  std::map<uint64_t, std::vector<BlockRun>> held_for_reads_;
  // GUARDED_BY(mu_): plain clusters of a compressing volume that writes
  // touched, above all those partial writes left plain (at most
  // services_.hot_plain_limit), by cluster, with their last write (NowMs).
  std::unordered_map<uint64_t, uint64_t> hot_plain_;
  std::atomic<uint64_t> async_writes_{0};  // VolumeIos on the asynchronous write path
  IoStats io_stats_;  // every request Submit took, by kind (metrics, iostat)
  // Data path counters (for metrics and tests).
  std::atomic<uint64_t> copies_started_{0};    // asynchronous copy-on-writes begun
  std::atomic<uint64_t> reencodes_started_{0};  // asynchronous compressed rewrites begun
  std::atomic<uint64_t> rewrite_retries_{0};    // rewrites that lost a race and were redone
  std::atomic<uint64_t> unaligned_writes_{0};  // read-modify-writes of partial blocks
  std::atomic<uint64_t> gate_parks_{0};        // request parts that waited for one
  std::atomic<uint64_t> recompressed_clusters_{0};  // hot plain clusters compressed again
  std::atomic<uint64_t> packed_frames_{0};          // frames written in packs of two or more
  // Frames waiting to be written together (thin_volume_pack.cc); a lock of
  // its own, taken with mu_ not held.
  std::mutex pack_mu_;
  std::vector<ClusterRewrite*> pack_;  // GUARDED_BY(pack_mu_)
  uint64_t pack_sectors_ = 0;          // GUARDED_BY(pack_mu_): their length
  uint64_t encoding_ = 0;              // GUARDED_BY(pack_mu_): rewrites between their read and their frame
  bool write_barrier_ = false;       // GUARDED_BY(mu_)
  std::atomic<bool> write_barrier_up_{false};  // its value, for the check without the lock
  std::vector<VolumeIo*> held_by_barrier_;     // GUARDED_BY(mu_): writes parked behind it
  std::atomic<uint64_t> barrier_waits_{0};      // writes that were parked (for tests)
  // GUARDED_BY(mu_): unaligned writes holding a gate on their clusters
  // (granted, or waiting for the I/O in flight there to finish); their
  // ranges never overlap. Parts of other requests that reach a gated
  // cluster park until it goes.
  std::vector<UnalignedIo*> gates_;
  // GUARDED_BY(mu_): unaligned writes whose range overlaps a gate (or one
  // queued before them), in arrival order.
  std::vector<UnalignedIo*> gate_queue_;
  bool read_only_ = false;           // a snapshot view (set before any I/O)
};

}  // namespace edgestor
