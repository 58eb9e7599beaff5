// ThinVolume: asynchronous copy-on-write of a shared plain cluster.
//
// A write into a cluster that a snapshot or clone also reads never changes
// the shared run: the cluster is copied to fresh space, in steps that each
// wait for one device I/O on the submitter's queue, with the volume mutex
// held only between them:
//
//   Begin   (mutex)  fresh space is allocated; the old run gains an
//                    in-memory reference for the copy's duration, so it
//                    stays shared (nobody writes it in place) and can be
//                    neither freed nor reused until the copy ends;
//   ReadOld (device) the old run's written blocks the request does not
//                    overwrite (skipped when there are none);
//   WriteNew(device) the request's blocks merged over them, to the fresh
//                    space;
//   Swap    (mutex)  if the entry is still the one copied, it now names the
//                    fresh space, journaled with the old run as its release;
//                    if another writer moved the cluster meanwhile, the
//                    fresh space is returned and the request's part is
//                    written again against the entry that won.
//
// Ciphertext is copied as it is: the XTS tweak is the logical block, so an
// encrypted block decrypts the same at its new place.
#include <cassert>
#include <cerrno>
#include <cstring>

#include "volume/cluster_bits.h"
#include "volume/thin_volume.h"

namespace edgestor {

using format::kBlockSize;

struct ThinVolume::ClusterCopy {
  IoRequest req;
  ThinVolume* volume = nullptr;
  VolumeIo* io = nullptr;
  IoQueue* queue = nullptr;
  CachedPage* page = nullptr;  // pinned until the swap
  uint64_t cluster = 0;
  uint64_t at = 0, length = 0;  // the request's bytes within the cluster
  const uint8_t* data = nullptr;  // what to store there: `ciphertext` or the request's buffer
  AlignedBuffer ciphertext;       // encrypted volumes
  format::MapEntry old_entry{};
  BlockRun old_run{};
  uint64_t new_block = 0;
  uint64_t write_mask = 0;  // blocks the request writes
  uint64_t keep_mask = 0;   // old blocks copied over
  AlignedBuffer buffer;     // one cluster, laid out as the cluster
};

void ThinVolume::HoldForReadsInFlight(CachedPage* page, uint64_t cluster) {
  const format::MapEntry& entry = page->entries[ThinMap::IndexInPage(cluster)];
  assert(entry.phys_block != 0 && !format::IsCompressed(entry));
  if (page->inflight[ThinMap::IndexInPage(cluster)] == 0) return;
  // Reads in flight still use the old run: hold it until they finish.
  BlockRun run{format::FirstBlock(entry), format::StoredBlocks(entry, cluster_blocks_)};
  pool_.AddReference(run.block);
  held_for_reads_[cluster].push_back(run);
}

Result<ThinVolume::ClusterCopy*> ThinVolume::BeginCopy(VolumeIo* io, IoQueue& queue, CachedPage* page,
                                                       uint64_t cluster, uint64_t at, uint64_t n,
                                                       const uint8_t* src, AlignedBuffer ciphertext) {
  const format::MapEntry old = page->entries[ThinMap::IndexInPage(cluster)];
  assert(old.phys_block != 0 && !format::IsCompressed(old) && map_.IsShared(cluster, old));
  AlignedBuffer buffer = TryAllocateUninitialized(cluster_size_);
  if (!buffer) return Status(ENOMEM, "out of memory copying a shared cluster");
  ES_ASSIGN_OR_RETURN(uint64_t new_block, pool_.AllocateCluster());
  auto* copy = new ClusterCopy{};
  copy->volume = this;
  copy->io = io;
  copy->queue = &queue;
  copy->page = page;
  copy->cluster = cluster;
  copy->at = at;
  copy->length = n;
  copy->data = ciphertext ? ciphertext.get() : src;
  copy->ciphertext = std::move(ciphertext);
  copy->old_entry = old;
  copy->old_run = {format::FirstBlock(old), format::StoredBlocks(old, cluster_blocks_)};
  copy->new_block = new_block;
  copy->write_mask = BlockMask(at / kBlockSize, n / kBlockSize);
  copy->keep_mask = old.written_bits & ~copy->write_mask;
  copy->buffer = std::move(buffer);
  pool_.AddReference(copy->old_run.block);
  page->inflight[ThinMap::IndexInPage(cluster)]++;
  page->pins++;
  io->progress.pending++;
  copies_started_.fetch_add(1, std::memory_order_relaxed);
  return copy;
}

void ThinVolume::StartCopy(ClusterCopy* copy) {
  copy->req.context = copy;
  copy->req.done = &ThinVolume::OnCopyReadDone;
  if (copy->keep_mask == 0) return OnCopyReadDone(&copy->req, 0);  // the request covers every written block
  uint64_t first = FirstBlockOf(copy->keep_mask), end = EndBlockOf(copy->keep_mask);
  copy->req.op = IoOp::kRead;
  copy->req.offset = (copy->old_run.block + first) * kBlockSize;
  copy->req.length = static_cast<uint32_t>((end - first) * kBlockSize);
  copy->req.buf = copy->buffer.get() + first * kBlockSize;
  copy->queue->Submit(&copy->req);
}

void ThinVolume::OnCopyReadDone(IoRequest* req, int result) {
  auto* copy = static_cast<ClusterCopy*>(req->context);
  if (result < 0) return copy->volume->FinishCopy(copy, result);
  copy->volume->WriteCopy(copy);
}

// Merges the request's blocks over the old ones and writes the cluster's
// written span to the fresh space. Blocks of the span that hold nothing
// are zeroed: the buffer's heap bytes never reach the device.
void ThinVolume::WriteCopy(ClusterCopy* copy) {
  uint8_t* buf = copy->buffer.get();
  std::memcpy(buf + copy->at, copy->data, copy->length);
  uint64_t bits = copy->keep_mask | copy->write_mask;
  uint64_t first = FirstBlockOf(bits), end = EndBlockOf(bits);
  for (uint64_t b = first; b < end; b++)
    if (!((bits >> b) & 1)) std::memset(buf + b * kBlockSize, 0, kBlockSize);
  copy->req.op = IoOp::kWrite;
  copy->req.offset = (copy->new_block + first) * kBlockSize;
  copy->req.length = static_cast<uint32_t>((end - first) * kBlockSize);
  copy->req.buf = buf + first * kBlockSize;
  copy->req.done = &ThinVolume::OnCopyWriteDone;
  copy->queue->Submit(&copy->req);
}

void ThinVolume::OnCopyWriteDone(IoRequest* req, int result) {
  auto* copy = static_cast<ClusterCopy*>(req->context);
  copy->volume->FinishCopy(copy, result);
}

void ThinVolume::FinishCopy(ClusterCopy* copy, int result) {
  VolumeIo* io = copy->io;
  bool lost_race = false;
  {
    std::lock_guard lock(mu_);
    lost_race = SwapInCopyLocked(copy, result);
  }
  if (result < 0 && io->progress.error == 0) io->progress.error = -result;
  // The entry that won is written as any other (in place, or copied again
  // if it is shared too); the part keeps this copy's pending count until
  // that has started.
  if (lost_race && io->progress.error == 0) {
    copy_retries_.fetch_add(1, std::memory_order_relaxed);
    WriteCluster(io, *copy->queue, copy->cluster, copy->at, copy->length);
  }
  delete copy;
  ReleaseGuard(io);
}

// REQUIRES: mu_ held. Returns true if the cluster moved while it was copied
// (the copy is dropped and the request's part must be written again).
bool ThinVolume::SwapInCopyLocked(ClusterCopy* copy, int result) {
  CachedPage* page = copy->page;
  uint32_t index = ThinMap::IndexInPage(copy->cluster);
  assert(page->inflight[index] > 0 && page->pins > 0);
  page->inflight[index]--;
  page->pins--;
  const format::MapEntry current = page->entries[index];
  // The old run cannot have been reused while this copy held it, so the
  // same block with the same bits means nobody changed the cluster.
  bool unchanged = current.phys_block == copy->old_entry.phys_block &&
                   current.written_bits == copy->old_entry.written_bits;
  if (result == 0 && unchanged) {
    HoldForReadsInFlight(page, copy->cluster);
    format::MapEntry entry{copy->new_block, copy->old_entry.written_bits | copy->write_mask};
    SetEntry(page, copy->cluster, entry, /*journal=*/true, std::span(&copy->old_run, 1));
  } else {
    pool_.FreeUnreferenced({copy->new_block, cluster_blocks_});
  }
  pool_.DropHeldReference(copy->old_run);
  if (page->inflight[index] == 0 && !held_for_reads_.empty()) ReleaseHeldRuns(copy->cluster);
  return result == 0 && !unchanged;
}

}  // namespace edgestor
