// Pool layer public API: on-disk format, space, and the commit protocol.
//
// A Pool owns the device and provides to the volume layer above:
//   * labels (four redundant copies) and recovery of the newest valid one;
//   * the allocator (block bitmap, rebuilt at open from what is referenced);
//   * the journal: metadata records appended in memory and made durable by
//     Commit();
//   * checkpoints: an opaque payload (written as a chain of blocks) plus the
//     map pages the volume layer wrote, committed by flipping the label.
//
// The pool does not interpret records or the checkpoint payload; the volume
// layer does. Commit protocol (see docs/ARCHITECTURE.md):
//   Commit():      device flush (data of completed writes is durable)
//                  -> write the pending records as new journal blocks
//                  -> device flush -> release the frees of those records.
//   Checkpoint:    device flush -> write dirty map pages to fresh blocks and
//                  the payload chain -> flush -> write labels A,C -> flush
//                  -> write labels B,D -> flush -> release the old blocks.
//
// Threading: all methods are thread-safe. Commit and checkpoint are
// serialized with each other; AppendRecord may run concurrently with a Commit
// (the record then goes into the next commit).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "base/status.h"
#include "io/device.h"
#include "pool/allocator.h"
#include "pool/format.h"

namespace edgestor {

struct PoolGeometry {
  uint64_t device_bytes = 0;
  uint32_t cluster_size = 0;
  uint64_t journal_start = 0;
  uint64_t journal_blocks = 0;
  uint64_t total_blocks = 0;
};

// A run released by the volume layer: one reference to it is dropped once
// the commit (or checkpoint) that stops using it is durable, and the run is
// reusable when no reference is left. A packed frame's run (format.h) also
// names the sectors of its first and last block it leaves to its
// neighbours: such an edge block is freed with the last frame touching it.
struct BlockRun {
  uint64_t block;
  uint64_t count;
  uint8_t head = 0;  // sectors of the first block before the frame
  uint8_t tail = 0;  // sectors of the last block after it
};

// The run a map entry occupies.
inline BlockRun RunOf(const format::MapEntry& e, uint32_t cluster_blocks) {
  return {format::FirstBlock(e), format::StoredBlocks(e, cluster_blocks), static_cast<uint8_t>(format::FrameHead(e)),
          static_cast<uint8_t>(format::FrameTail(e))};
}

// How the pool key is protected, as stored in the label. The pool layer
// stores these bytes; the volume layer gives them meaning (see
// codec/key_wrap.h).
struct KeyProtection {
  uint32_t source = format::kKeySourceNone;
  std::array<uint8_t, format::kKdfRecordBytes> kdf{};
  std::array<uint8_t, format::kWrappedKeyBytes> key_check{};
};

struct FormatOptions {
  uint32_t cluster_size = 64 * 1024;
  uint64_t journal_bytes = 0;  // 0: 1% of the device, 1..256 MiB
  KeyProtection keys;
  // Format over whatever the device holds: a pool (valid or not), a file
  // system or a partition table. Without it they are refused with EEXIST.
  bool force = false;
  // Reserve host space for the whole device (a file on a file system), not
  // only for labels and journal: data writes then never meet a full host.
  bool preallocate = false;
};

class Pool {
 public:
  // Writes the labels of an empty pool over a zeroed journal ring, with
  // host space allocated for labels and journal. EEXIST (unless
  // options.force) if the device holds any label copy, even a damaged one or
  // one of another version or size, or a file system or partition table.
  static Result<std::unique_ptr<Pool>> Format(std::unique_ptr<Device> device, const FormatOptions& options);
  // Reads the newest valid label. Writes nothing.
  static Result<std::unique_ptr<Pool>> Open(std::unique_ptr<Device> device);

  // ---- Recovery (single-threaded, at open) ----
  // Reads the checkpoint payload named by the label and marks its chain
  // blocks used. Empty payload for a pool never checkpointed.
  Result<std::vector<uint8_t>> ReadCheckpointPayload();
  // Reads a map page written by a checkpoint and verifies magic, crc and
  // generation. Thread-safe (used for cache misses at run time too).
  Status ReadMapPage(uint64_t block, uint64_t generation, format::MapPage* page);
  // The checks of ReadMapPage, for a page read asynchronously. Thread-safe.
  Status CheckMapPage(uint64_t block, uint64_t generation, const format::MapPage& page) const;
  // Calls `apply` for every record of every valid journal block from the
  // label's replay_seq on, in order; stops at the first invalid block.
  // Returns the number of records applied.
  using RecordVisitor = std::function<Status(format::RecordType, std::span<const uint8_t>)>;
  Result<uint64_t> ReplayJournal(const RecordVisitor& apply);
  // Marks blocks as used by exactly one owner (checkpoint chains); false if
  // any of them already was.
  bool MarkUsed(uint64_t block, uint64_t count);
  // Records one reference to the run [block, block+count) (a data cluster, a
  // compressed run or a map page): the first marks it used, later ones must
  // name exactly the same run. False for a run outside the pool or one that
  // overlaps another run or metadata. A packed frame may share its edge
  // blocks with its neighbours, as long as their sectors do not overlap.
  bool MarkReferenced(const BlockRun& run);
  // Ends recovery: drops the run bounds MarkReferenced kept.
  void FinishRecovery();

  // ---- Sharing (snapshots and clones) ----
  // A run may be referenced by several snapshots, clones and volumes. The
  // allocator says used or free; the pool counts references beyond the
  // first, so unshared runs cost no memory. Every BlockRun handed to
  // AppendRecord or WriteCheckpoint drops one reference.
  // 0: free; otherwise the number of references.
  uint32_t References(uint64_t block) const;
  // One more reference to a run in use.
  void AddReference(uint64_t block);
  // Drops a reference at once. REQUIRES: another one remains (nothing is
  // freed, so no durability is needed first).
  void DropSharedReference(uint64_t block);
  // Drops a reference held in memory only (never named by anything on
  // disk), freeing the run if it was the last: every durable reference was
  // already released after its commit.
  void DropHeldReference(const BlockRun& run);

  // ---- Space ----
  // A data cluster; ENOSPC if only the metadata reserve is left.
  Result<uint64_t> AllocateCluster();
  // `count` consecutive blocks (at most kMaxRunBlocks) for a compressed
  // cluster or a pack of them; ENOSPC like AllocateCluster.
  Result<uint64_t> AllocateRun(uint64_t count);
  // A block for metadata (map pages, checkpoint chain); may use the reserve.
  // Taken from the prepared blocks first (see PrepareMetadataBlocks).
  Result<uint64_t> AllocateMetaBlock();
  // Takes `count` free blocks (beyond those already prepared) for the
  // metadata the next checkpoint writes and has the device allocate their
  // host space. ENOSPC, with nothing taken, if the pool or the host file
  // system has no room: the checkpoint can then be refused before it writes
  // anything, instead of failing midway and stopping the pool.
  Status PrepareMetadataBlocks(uint64_t count);
  // Returns the prepared blocks no metadata took (after a checkpoint).
  void ReleasePreparedBlocks();
  uint64_t prepared_blocks() const;
  // Returns space never referenced by anything durable (e.g. a cluster
  // allocated for a write that failed). Reusable at once. REQUIRES: a single
  // reference.
  void FreeUnreferenced(BlockRun run);
  // Packing: `frames`, in order, were laid back to back over one run from
  // AllocateRun, each starting in a block of its own; the block where one
  // ends and the next begins now belongs to both (each frame then has one
  // reference, and an edge block is freed with the second frame released).
  void SharePackedEdges(std::span<const BlockRun> frames);
  // Blocks the volume layer keeps free for the next checkpoint's map pages;
  // MetadataShort() says when fewer than `short_below` blocks are free.
  void SetMetadataReserve(uint64_t blocks, uint64_t short_below);
  // Lock-free: free space is running short of what the next checkpoint
  // needs (map pages became dirty without a data allocation).
  bool MetadataShort() const { return metadata_short_.load(std::memory_order_relaxed); }

  // ---- Journal ----
  // Appends a record to the next commit; `frees` become reusable once that
  // commit is durable. Records are never larger than a journal block.
  void AppendRecord(format::RecordType type, std::span<const uint8_t> body, std::span<const BlockRun> frees = {});
  // Makes every record appended before the call durable (see header comment).
  // ENOSPC, with the pool still usable and the records still pending, when
  // they do not fit in the journal: checkpoint instead.
  Status Commit();
  // True when the journal is more than half full: time for a checkpoint.
  // Lock-free: called after every I/O.
  bool JournalWantsCheckpoint() const { return journal_wants_checkpoint_.load(std::memory_order_relaxed); }
  // Journal blocks holding records since the last checkpoint (pending
  // ones estimated), of geometry().journal_blocks. Lock-free (metrics).
  uint64_t JournalUsedBlocks() const { return journal_used_blocks_.load(std::memory_order_relaxed); }
  // Lock-free: runs released by pending records (reusable only after the
  // next commit) add up to a quarter of the free space or more. Writers
  // that keep moving clusters (compressed, copied) without ever flushing
  // would otherwise fill the pool with space that only waits for a commit.
  bool FreesWaiting() const { return frees_waiting_.load(std::memory_order_relaxed); }

  // ---- Checkpoint ----
  // The generation the next checkpoint will stamp on its map pages.
  uint64_t next_checkpoint_gen() const;
  // Writes a map page at `block` (from AllocateMetaBlock) for the checkpoint
  // in preparation, stamping generation and crc.
  Status WriteMapPage(uint64_t block, format::MapPage* page);
  // Writes `payload` as a chain of fresh metadata blocks stamped with the
  // next checkpoint's generation and `magic`; returns its head and appends
  // its blocks to `blocks`. Durable (and referenced) only once a checkpoint
  // names it. For immutable side chains such as snapshot directories.
  Result<uint64_t> WriteSideChain(std::span<const uint8_t> payload, uint32_t magic, std::vector<BlockRun>* blocks);
  // Reads a chain written by WriteSideChain at `generation`; with `blocks`,
  // marks them used (recovery) and appends them there.
  Result<std::vector<uint8_t>> ReadSideChain(uint64_t head, uint64_t generation, uint32_t magic,
                                             std::vector<BlockRun>* blocks);

  // Completes a checkpoint: REQUIRES the caller to hold off every metadata
  // change (no AppendRecord) while it runs. Writes `payload` as a new chain,
  // flips the labels, drops the records it supersedes, and releases
  // `superseded` (old pages, dropped references) and the previous chain
  // once durable. With
  // `new_keys`, the new label carries them (pool key rotation commits with
  // the payload holding the rewrapped data keys).
  Status WriteCheckpoint(std::span<const uint8_t> payload, std::vector<BlockRun> superseded,
                         const KeyProtection* new_keys = nullptr);

  // CRC of a metadata block (4 KiB) stamped with `generation`: bound to this
  // pool's uuid from the label's bound_since_gen on (format version 4).
  uint32_t MetadataCrc(uint64_t generation, const void* block, size_t crc_offset) const;

  // ---- Information ----
  const PoolGeometry& geometry() const { return geometry_; }
  std::string uuid() const;
  uint64_t checkpoint_gen() const;
  // Format version of the label read at open (checkpoints parse by it).
  uint32_t format_version() const;
  KeyProtection key_protection() const;
  uint64_t used_blocks() const;
  // True while released runs wait for the next checkpoint.
  bool has_pending_frees() const;
  // Runs referenced more than once. Lock-free: the data path asks it first
  // and skips every reference lookup while nothing is shared.
  uint64_t shared_runs() const { return shared_runs_.load(std::memory_order_acquire); }
  uint64_t free_blocks() const;
  // Blocks two packed compressed frames share (one ends, the next begins).
  uint64_t shared_edge_blocks() const;
  uint64_t total_blocks() const { return geometry_.total_blocks; }
  bool is_failed() const;
  Device& device() { return *device_; }

  // Sentinel: a pool whose device failed mid-commit refuses further commits
  // (EIO) until reopened, so nothing half-written is ever built upon.
  Status CheckNotFailed() const;

 private:
  Pool(std::unique_ptr<Device> device, const format::Label& label);
  Status WriteLabels(format::Label label);  // REQUIRES: commit_mu_ held
  Status WriteJournalBlocks(const std::vector<uint8_t>& records);  // REQUIRES: commit_mu_
  Status Fail(Status status);
  uint64_t JournalBlockOffset(uint64_t seq) const;
  void ReleaseLocked(const BlockRun& run);  // REQUIRES: mu_ held
  // REQUIRES: mu_ held. Frees the blocks of a run whose last reference went;
  // an edge block another frame still uses stays.
  void FreeRunLocked(const BlockRun& run);
  bool IsSharedEdge(uint64_t block) const;  // REQUIRES: mu_ held
  // REQUIRES: mu_ held, recovery. Claims the sectors [from, to) of `block`
  // for a packed frame; false if they overlap a claim already made.
  bool ClaimEdgeSectors(uint64_t block, uint32_t from, uint32_t to);
  void PublishSharedRuns();                 // REQUIRES: mu_ held; after extra_references_ changes
  Result<std::vector<uint8_t>> ReadChain(uint64_t head, uint64_t generation, uint32_t magic,
                                         std::vector<BlockRun>* blocks);
  void UpdateJournalPressure();  // REQUIRES: mu_ held
  void UpdateReservePressure();  // REQUIRES: mu_ held; after the allocator or the reserve changes
  void UpdateFreesPressure();    // REQUIRES: mu_ held; after the pending frees or the allocator change

  std::unique_ptr<Device> device_;
  PoolGeometry geometry_;

  std::mutex commit_mu_;  // serializes Commit and WriteCheckpoint; taken before mu_
  mutable std::mutex mu_;
  format::Label label_;              // GUARDED_BY(mu_) as last written
  const uint32_t opened_version_;    // label version found at open
  const uint64_t bound_since_gen_;   // blocks of this generation on carry a bound CRC
  std::array<uint8_t, 16> uuid_{};   // the label's pool_uuid (never changes)
  std::vector<uint64_t> prepared_;   // GUARDED_BY(mu_): blocks PrepareMetadataBlocks took
  Allocator allocator_;              // GUARDED_BY(mu_)
  uint64_t metadata_reserve_ = 0;    // GUARDED_BY(mu_)
  uint64_t metadata_short_below_ = 0;  // GUARDED_BY(mu_)
  std::atomic<bool> metadata_short_{false};
  std::vector<uint8_t> pending_records_;  // GUARDED_BY(mu_): packed RecordHeader+body
  std::vector<BlockRun> pending_frees_;   // GUARDED_BY(mu_): freed by pending records
  uint64_t pending_free_blocks_ = 0;      // GUARDED_BY(mu_): their blocks
  std::atomic<bool> frees_waiting_{false};
  uint64_t journal_head_seq_ = 0;         // GUARDED_BY(mu_): next block to write
  std::vector<BlockRun> chain_blocks_;    // GUARDED_BY(mu_): current checkpoint chain
  // GUARDED_BY(mu_): references beyond the first, by a run's first block.
  std::unordered_map<uint64_t, uint32_t> extra_references_;
  std::atomic<uint64_t> shared_runs_{0};  // extra_references_.size(), for lock-free reads
  // GUARDED_BY(mu_), recovery only: bit per block, first and last block of
  // every run MarkReferenced saw (so a second reference can be checked).
  std::vector<uint64_t> run_starts_, run_ends_;
  // GUARDED_BY(mu_), recovery only, allocated at the first packed frame:
  // per block, the shape of each packed run seen (first block: its head
  // and tail, 1 + head | (1 + tail) << 4; 0: none), its length, and the
  // sectors packed frames claim of edge blocks (bit per sector).
  std::vector<uint8_t> packed_shapes_, packed_counts_, edge_claims_;
  // GUARDED_BY(mu_), allocated at the first packed frame: bit per block,
  // set while two frames share it (the one ending and the one starting in it).
  std::vector<uint64_t> shared_edges_;
  uint64_t shared_edge_count_ = 0;  // GUARDED_BY(mu_): bits set in shared_edges_
  bool failed_ = false;                   // GUARDED_BY(mu_)
  std::atomic<bool> journal_wants_checkpoint_{false};
  std::atomic<uint64_t> journal_used_blocks_{0};
};

}  // namespace edgestor
