// ThinVolume: asynchronous rewrites of whole clusters. Two kinds:
//
//  * copy-on-write of a shared plain cluster (a snapshot or clone reads
//    it): its blocks move to fresh space as they are. Ciphertext is copied
//    unchanged: the XTS tweak is the logical block, so an encrypted block
//    decrypts the same at its new place;
//  * re-encoding, for a compressed cluster or a compressing volume's first
//    or whole-cluster write: the old content is decoded, merged with the
//    request and compressed again (stored plain when that saves nothing).
//
// Either way the shared or compressed run is never changed in place, and
// the request goes through steps that each wait for one device I/O on the
// submitter's queue, with the volume mutex held only between them (the
// codec work runs outside it, on the polling thread):
//
//   Begin     (mutex)  the old run, if any, gains an in-memory reference for
//                      the rewrite's duration, so it stays shared (nobody
//                      writes it in place) and is neither freed nor reused
//                      under the read below;
//   ReadOld   (device) what the request does not overwrite: the old written
//                      blocks, or a compressed cluster's frame (skipped when
//                      the request covers every written block);
//   WriteNew  (device) merged (and re-encoded) content to fresh space;
//   Swap      (mutex)  if the entry is still the one read, it now names the
//                      fresh space, journaled with the old run as its
//                      release; if another writer changed the cluster
//                      meanwhile, the fresh space is returned and the
//                      request's part is written again against the entry
//                      that won.
#include <cassert>
#include <cerrno>
#include <cstring>

#include "volume/cluster_bits.h"
#include "volume/cluster_rewrite.h"

namespace edgestor {

using format::kBlockSize;

void ThinVolume::HoldRunForIoInFlight(CachedPage* page, uint64_t cluster) {
  const format::MapEntry& entry = page->entries[ThinMap::IndexInPage(cluster)];
  assert(entry.phys_block != 0 && !format::IsCompressed(entry));
  if (page->inflight[ThinMap::IndexInPage(cluster)] == 0) return;
  // I/O in flight still uses the old run: hold it until that finishes.
  BlockRun run{format::FirstBlock(entry), format::StoredBlocks(entry, cluster_blocks_)};
  assert(run.count == cluster_blocks_ && run.block % cluster_blocks_ == 0 && "a plain run is a whole, aligned cluster");
  pool_.AddReference(run.block);
  held_for_reads_[cluster].push_back(run);
}

Result<ThinVolume::ClusterRewrite*> ThinVolume::BeginRewrite(VolumeIo* io, IoQueue& queue, CachedPage* page,
                                                             uint64_t cluster, uint64_t at, uint64_t n, bool reencode) {
  assert(page != nullptr && cluster < map_.clusters() && !read_only_);
  assert(at % kBlockSize == 0 && n % kBlockSize == 0 && at + n <= cluster_size_);
  assert(n > 0 || (reencode && io->buf == nullptr));  // n == 0: a recompression, no request data
  const format::MapEntry old = page->entries[ThinMap::IndexInPage(cluster)];
  assert(reencode || (old.phys_block != 0 && !format::IsCompressed(old) && map_.IsShared(cluster, old)));
  assert(page->inflight[ThinMap::IndexInPage(cluster)] < UINT16_MAX);
  AlignedBuffer buffer = TryAllocateUninitialized(cluster_size_);
  AlignedBuffer frame = reencode ? TryAllocateUninitialized(cluster_size_) : AlignedBuffer();
  if (!buffer || (reencode && !frame)) return Status(ENOMEM, "out of memory rewriting a cluster");
  auto* rewrite = new ClusterRewrite{};
  rewrite->volume = this;
  rewrite->io = io;
  rewrite->queue = &queue;
  rewrite->page = page;
  rewrite->cluster = cluster;
  rewrite->at = at;
  rewrite->length = n;
  rewrite->src = io->buf ? io->buf + (cluster * cluster_size_ + at - io->offset) : nullptr;
  rewrite->recompress = n == 0;
  assert(rewrite->recompress || (rewrite->src == nullptr) == (io->op != VolumeOp::kWrite));
  rewrite->reencode = reencode;
  // A partial write into a compressed cluster is usually followed by more:
  // the cluster is stored plain, so they go in place, until it has been
  // left alone long enough to be recompressed (Recompress). Each volume
  // keeps a bounded number of such clusters.
  rewrite->leave_plain = reencode && rewrite->src != nullptr && n < cluster_size_ && format::IsCompressed(old) &&
                         (old.written_bits & ~BlockMask(at / kBlockSize, n / kBlockSize)) != 0 &&
                         hot_plain_.size() < services_.hot_plain_limit;
  rewrite->old_entry = old;
  if (old.phys_block != 0) {
    rewrite->old_run = RunOf(old, cluster_blocks_);
    assert(rewrite->old_run.count >= 1 && rewrite->old_run.count <= cluster_blocks_);
    pool_.AddReference(rewrite->old_run.block);
  }
  rewrite->write_mask = BlockMask(at / kBlockSize, n / kBlockSize);
  rewrite->keep_mask = old.written_bits & ~rewrite->write_mask;
  assert((rewrite->write_mask != 0 || rewrite->recompress) && (rewrite->keep_mask & rewrite->write_mask) == 0);
  rewrite->buffer = std::move(buffer);
  rewrite->frame = std::move(frame);
  page->inflight[ThinMap::IndexInPage(cluster)]++;
  page->pins++;
  io->progress.pending++;
  if (!rewrite->recompress) (reencode ? reencodes_started_ : copies_started_).fetch_add(1, std::memory_order_relaxed);
  return rewrite;
}

void ThinVolume::StartRewrite(ClusterRewrite* rewrite) {
  IoRequest& req = rewrite->req;
  req.context = rewrite;
  req.done = &ThinVolume::OnRewriteReadDone;
  if (rewrite->keep_mask == 0) return OnRewriteReadDone(&req, 0);  // nothing old survives
  // Kept blocks were written, so the cluster was mapped (and is held by Begin).
  assert(rewrite->old_entry.phys_block != 0 && rewrite->old_run.count >= 1);
  req.op = IoOp::kRead;
  if (format::IsCompressed(rewrite->old_entry)) {
    req.offset = rewrite->old_run.block * kBlockSize;
    req.length = static_cast<uint32_t>(rewrite->old_run.count * kBlockSize);
    req.buf = rewrite->frame.get();
    assert(rewrite->reencode && req.length < cluster_size_ && "the frame fits the cluster-sized buffer");
  } else {
    uint64_t first = FirstBlockOf(rewrite->keep_mask), end = EndBlockOf(rewrite->keep_mask);
    req.offset = (rewrite->old_run.block + first) * kBlockSize;
    req.length = static_cast<uint32_t>((end - first) * kBlockSize);
    req.buf = rewrite->buffer.get() + first * kBlockSize;
    assert(first < end && end <= cluster_blocks_);
  }
  rewrite->queue->Submit(&req);
}

void ThinVolume::OnRewriteReadDone(IoRequest* req, int result) {
  auto* rewrite = static_cast<ClusterRewrite*>(req->context);
  ThinVolume* volume = rewrite->volume;
  if (result < 0) return volume->FinishRewrite(rewrite, result);
  if (rewrite->reencode) {
    // A partial write that stores its cluster plain brings no frame: the
    // pack does not wait for it.
    rewrite->encoding = !rewrite->leave_plain;
    if (rewrite->encoding) volume->BeginEncoding();
    // Decoding and compressing a cluster is the costly step: a codec worker
    // takes it if one has room; the rewrite comes back through this queue.
    req->done = &ThinVolume::OnRewriteEncoded;
    if (volume->services_.codec_pool.TryOffload(req, *rewrite->queue, &ThinVolume::ReencodeStep)) return;
  }
  Status s = rewrite->reencode ? volume->ReencodeForRewrite(rewrite) : volume->MergeForCopy(rewrite);
  OnRewriteEncoded(req, s.ok() ? 0 : -s.code());
}

// On a codec worker. Touches only the rewrite's own buffers, the codec and
// the pool's allocator (which has its own lock).
int ThinVolume::ReencodeStep(IoRequest* req) {
  auto* rewrite = static_cast<ClusterRewrite*>(req->context);
  Status s = rewrite->volume->ReencodeForRewrite(rewrite);
  return s.ok() ? 0 : -s.code();
}

// The new content is ready (or failed): write it, or finish.
void ThinVolume::OnRewriteEncoded(IoRequest* req, int result) {
  auto* rewrite = static_cast<ClusterRewrite*>(req->context);
  ThinVolume* volume = rewrite->volume;
  if (rewrite->encoding) {
    // A frame goes into the pack (its write finishes it on this queue);
    // either way this rewrite is no longer encoding, which may close the pack.
    const bool packed = result == 0 && rewrite->frame_sectors != 0;
    if (packed) req->done = &ThinVolume::OnRewriteWriteDone;
    volume->EndEncoding(packed ? rewrite : nullptr);
    if (packed) return;
  }
  if (result < 0) return volume->FinishRewrite(rewrite, result);
  // Now all zeros (unmapped by the swap), or a recompression that saved nothing.
  if (rewrite->new_entry.phys_block == 0 || rewrite->skipped) return volume->FinishRewrite(rewrite, 0);
  req->op = IoOp::kWrite;
  req->done = &ThinVolume::OnRewriteWriteDone;
  rewrite->queue->Submit(req);
}

void ThinVolume::OnRewriteWriteDone(IoRequest* req, int result) {
  auto* rewrite = static_cast<ClusterRewrite*>(req->context);
  rewrite->volume->FinishRewrite(rewrite, result);
}

// Copy-on-write: the request's blocks (encrypted at their logical place)
// over the old blocks as stored; the cluster's written span goes to a fresh
// cluster. Blocks of the span that hold nothing are zeroed: the buffer's
// heap bytes never reach the device.
Status ThinVolume::MergeForCopy(ClusterRewrite* rewrite) {
  uint8_t* buf = rewrite->buffer.get();
  if (rewrite->src) {
    ES_RETURN_IF_ERROR(codec_->Encrypt(FirstLogicalBlock(rewrite->cluster) + rewrite->at / kBlockSize,
                                       std::span(rewrite->src, rewrite->length),
                                       std::span(buf + rewrite->at, rewrite->length)));
  }
  // Zeroing copies only the blocks it keeps (ZeroCluster rewrites only a
  // cluster that keeps some).
  uint64_t bits = rewrite->src ? rewrite->keep_mask | rewrite->write_mask : rewrite->keep_mask;
  assert(bits != 0);
  uint64_t first = FirstBlockOf(bits), end = EndBlockOf(bits);
  for (uint64_t b = first; b < end; b++)
    if (!((bits >> b) & 1)) std::memset(buf + b * kBlockSize, 0, kBlockSize);
  ES_ASSIGN_OR_RETURN(uint64_t block, pool_.AllocateCluster());
  assert(block != 0 && block % cluster_blocks_ == 0 && end <= cluster_blocks_);
  rewrite->new_entry = {block, bits};
  rewrite->req.offset = (block + first) * kBlockSize;
  rewrite->req.length = static_cast<uint32_t>((end - first) * kBlockSize);
  rewrite->req.buf = buf + first * kBlockSize;
  return Status::Ok();
}

// Re-encoding: the old plaintext (unwritten blocks read as zeros) with the
// request merged in, compressed into a run of its own size, or a whole
// plain cluster when compression saves nothing. A cluster that became all
// zeros is unmapped instead (new_entry stays empty).
Status ThinVolume::ReencodeForRewrite(ClusterRewrite* rewrite) {
  uint8_t* plain = rewrite->buffer.get();
  const format::MapEntry& old = rewrite->old_entry;
  if (rewrite->keep_mask != 0 && format::IsCompressed(old)) {
    std::span<uint8_t> frame(rewrite->frame.get(), rewrite->old_run.count * kBlockSize);
    ES_RETURN_IF_ERROR(DecodeFrame(old, rewrite->cluster, frame, plain));
  } else if (rewrite->keep_mask != 0) {
    uint64_t first = FirstBlockOf(rewrite->keep_mask), end = EndBlockOf(rewrite->keep_mask);
    ES_RETURN_IF_ERROR(codec_->Decrypt(FirstLogicalBlock(rewrite->cluster) + first,
                                       std::span(plain + first * kBlockSize, (end - first) * kBlockSize)));
  }
  for (uint64_t b = 0; b < cluster_blocks_; b++)  // unwritten blocks read as zeros
    if (!((rewrite->keep_mask >> b) & 1)) std::memset(plain + b * kBlockSize, 0, kBlockSize);
  if (rewrite->src) std::memcpy(plain + rewrite->at, rewrite->src, rewrite->length);
  else std::memset(plain + rewrite->at, 0, rewrite->length);
  if (IsAllZero(plain, cluster_size_)) return Status::Ok();
  uint64_t bits = rewrite->src ? old.written_bits | rewrite->write_mask : rewrite->keep_mask;
  uint8_t* out = rewrite->frame.get();
  if (rewrite->leave_plain) {
    auto block = pool_.AllocateCluster();
    if (block.ok()) return EncodePlainCluster(rewrite, block.value(), bits);
    if (block.status().code() != ENOSPC) return block.status();
    rewrite->leave_plain = false;  // a nearly full pool may still hold the smaller frame
  }
  auto compressed = codec_->Compress(std::span<const uint8_t>(plain, cluster_size_), std::span(out, cluster_size_));
  if (!compressed.ok() && compressed.status().code() != ENOSPC) return compressed.status();
  if (!compressed.ok() && rewrite->recompress) {
    rewrite->skipped = true;  // the cluster stays where it is
    return Status::Ok();
  }
  uint64_t blocks = compressed.ok() ? format::SectorsToBlocks(compressed.value()) : cluster_blocks_;
  // Compression that saves no block reports ENOSPC: a frame is 1 .. cluster_blocks - 1 blocks.
  assert(blocks >= 1 && (!compressed.ok() || blocks < cluster_blocks_));
  assert(bits != 0 && (cluster_blocks_ == 64 || (bits >> cluster_blocks_) == 0));
  if (compressed.ok() && !codec_->encrypted() && rewrite->encoding) {
    // Packed with the frames written beside it (an encrypted block is one
    // XTS unit with one tweak, so encrypted frames keep whole blocks).
    rewrite->frame_sectors = compressed.value();
    rewrite->frame_bits = bits;
    return Status::Ok();
  }
  if (!compressed.ok()) std::memcpy(out, plain, cluster_size_);
  uint64_t bytes = blocks * kBlockSize;
  ES_RETURN_IF_ERROR(codec_->Encrypt(FirstLogicalBlock(rewrite->cluster), std::span(out, bytes), std::span(out, bytes)));
  ES_ASSIGN_OR_RETURN(uint64_t block, compressed.ok() ? pool_.AllocateRun(blocks) : pool_.AllocateCluster());
  rewrite->new_entry = compressed.ok() ? format::CompressedEntry(block, blocks, bits) : format::MapEntry{block, bits};
  rewrite->req.offset = block * kBlockSize;
  rewrite->req.length = static_cast<uint32_t>(bytes);
  rewrite->req.buf = out;
  return Status::Ok();
}

// The merged plaintext, encrypted, as a whole plain cluster at `block`.
Status ThinVolume::EncodePlainCluster(ClusterRewrite* rewrite, uint64_t block, uint64_t bits) {
  assert(block != 0 && block % cluster_blocks_ == 0 && bits != 0);
  uint8_t* out = rewrite->buffer.get();
  if (codec_->encrypted()) {
    out = rewrite->frame.get();
    Status s = codec_->Encrypt(FirstLogicalBlock(rewrite->cluster),
                               std::span<const uint8_t>(rewrite->buffer.get(), cluster_size_), std::span(out, cluster_size_));
    if (!s.ok()) {
      pool_.FreeUnreferenced({block, cluster_blocks_});
      return s;
    }
  }
  rewrite->new_entry = {block, bits};
  rewrite->req.offset = block * kBlockSize;
  rewrite->req.length = cluster_size_;
  rewrite->req.buf = out;
  return Status::Ok();
}

void ThinVolume::FinishRewrite(ClusterRewrite* rewrite, int result) {
  assert(rewrite != nullptr && result <= 0);
  VolumeIo* io = rewrite->io;
  bool lost_race = false;
  {
    std::lock_guard lock(mu_);
    lost_race = SwapInRewriteLocked(rewrite, result);
  }
  if (result < 0 && io->progress.error == 0) io->progress.error = -result;
  // The entry that won is written as any other (in place, or rewritten
  // again); the part keeps this rewrite's pending count until that has
  // started.
  // A recompression that lost is simply dropped: the writer that won has
  // rewritten the cluster itself.
  if (lost_race && io->progress.error == 0 && !rewrite->recompress) {
    rewrite_retries_.fetch_add(1, std::memory_order_relaxed);
    StartClusterPart(io, *rewrite->queue, rewrite->cluster, rewrite->at, rewrite->length);
  }
  delete rewrite;
  ReleaseGuard(io);
}

// REQUIRES: mu_ held. Returns true if the cluster changed while it was
// rewritten (the new run is dropped and the request's part must be written
// again).
bool ThinVolume::SwapInRewriteLocked(ClusterRewrite* rewrite, int result) {
  CachedPage* page = rewrite->page;
  uint64_t cluster = rewrite->cluster;
  uint32_t index = ThinMap::IndexInPage(cluster);
  assert(page->inflight[index] > 0 && page->pins > 0);
  page->inflight[index]--;
  page->pins--;
  assert(page->pins >= page->inflight[index]);
  const format::MapEntry current = page->entries[index];
  const format::MapEntry& old = rewrite->old_entry;
  // The old run cannot have been reused while this rewrite held it, so the
  // same block with the same bits means nobody changed the cluster.
  bool unchanged = current.phys_block == old.phys_block && current.written_bits == old.written_bits;
  const format::MapEntry& fresh = rewrite->new_entry;
  // The old run held an extra reference throughout: fresh space is never it.
  assert(fresh.phys_block == 0 || old.phys_block == 0 || format::FirstBlock(fresh) != format::FirstBlock(old));
  if (result == 0 && unchanged && rewrite->skipped) {
    hot_plain_.erase(cluster);  // incompressible: not worth trying again
  } else if (result == 0 && unchanged) {
    if (old.phys_block != 0 && !format::IsCompressed(old)) HoldRunForIoInFlight(page, cluster);
    std::span<const BlockRun> release = old.phys_block != 0 ? std::span(&rewrite->old_run, 1) : std::span<const BlockRun>();
    if (fresh.phys_block != 0 || old.phys_block != 0) SetEntry(page, cluster, fresh, /*journal=*/true, release);
    NoteRewritten(rewrite);
  } else if (fresh.phys_block != 0) {
    pool_.FreeUnreferenced(RunOf(fresh, cluster_blocks_));
  }
  if (old.phys_block != 0) pool_.DropHeldReference(rewrite->old_run);
  if (page->inflight[index] == 0) OnClusterIdleLocked(cluster);
  return result == 0 && !unchanged;
}

// REQUIRES: mu_ held; `rewrite` was swapped in. Keeps the set of clusters
// left plain for writes: added by a partial write that left one plain,
// dropped once the cluster is compressed (or unmapped) again.
void ThinVolume::NoteRewritten(const ClusterRewrite* rewrite) {
  const format::MapEntry& fresh = rewrite->new_entry;
  if (rewrite->leave_plain && fresh.phys_block != 0 && !format::IsCompressed(fresh)) {
    hot_plain_[rewrite->cluster] = NowMs();
    return;
  }
  if (rewrite->recompress) recompressed_clusters_.fetch_add(1, std::memory_order_relaxed);
  if (!hot_plain_.empty()) hot_plain_.erase(rewrite->cluster);
}

// REQUIRES: mu_ held. A write in place keeps a cluster hot. On a
// compressing volume it also makes the cluster a candidate: that is how
// clusters left plain when the pool last closed (the list lives in memory
// only) or written before compression was turned on come back to it.
void ThinVolume::TouchHotPlain(uint64_t cluster) {
  if (codec_ && codec_->compressing() && hot_plain_.size() < services_.hot_plain_limit) {
    hot_plain_.insert_or_assign(cluster, NowMs());
    return;
  }
  if (hot_plain_.empty()) return;
  auto it = hot_plain_.find(cluster);
  if (it != hot_plain_.end()) it->second = NowMs();
}

uint64_t ThinVolume::NowMs() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(steady_clock::now().time_since_epoch()).count();
}

std::vector<uint64_t> ThinVolume::ColdPlainClusters(uint64_t idle_ms, size_t max) {
  std::vector<uint64_t> cold;
  std::lock_guard lock(mu_);
  const uint64_t now = NowMs();  // under the lock: no write time is later
  for (const auto& [cluster, last_write] : hot_plain_) {
    if (cold.size() >= max) break;
    if (now - last_write >= idle_ms) cold.push_back(cluster);
  }
  return cold;
}

Status ThinVolume::Recompress(uint64_t cluster, uint64_t idle_ms, IoQueue& queue) {
  struct Waiter {
    bool done = false;
    Status status;
  } waiter;
  VolumeIo io{};
  io.op = VolumeOp::kWrite;  // with no data: only a request's progress and completion are used
  io.offset = cluster * cluster_size_;
  io.context = &waiter;
  io.done = [](VolumeIo* finished, const Status& status) {
    auto* w = static_cast<Waiter*>(finished->context);
    w->status = status;
    w->done = true;
  };
  io.progress.volume = this;
  io.progress.queue = &queue;
  ClusterRewrite* rewrite = nullptr;
  {
    std::lock_guard lock(mu_);
    if (codec_ && !codec_->compressing()) hot_plain_.clear();  // compression was turned off
    auto hot = hot_plain_.find(cluster);
    // Written since the round picked it: hot again.
    if (hot == hot_plain_.end() || NowMs() - hot->second < idle_ms) return Status::Ok();
    if (!codec_ || read_only_ || write_barrier_) return Status::Ok();
    ES_RETURN_IF_ERROR(services_.events.CheckUsable());
    auto page = cluster < map_.clusters() ? map_.Page(cluster, /*create=*/false) : Result<CachedPage*>(nullptr);
    if (!page.ok()) return page.status();
    uint32_t index = ThinMap::IndexInPage(cluster);
    const format::MapEntry entry = page.value() ? page.value()->entries[index] : format::MapEntry{};
    // Only a plain cluster of this volume alone. While the rewrite holds
    // its run, writers see it shared and copy it, so none lands in place
    // under the read below (and the swap then finds the entry changed).
    if (entry.phys_block == 0 || format::IsCompressed(entry) || map_.IsShared(cluster, entry)) {
      hot_plain_.erase(cluster);
      return Status::Ok();
    }
    if (page.value()->inflight[index] != 0) return Status::Ok();  // in use: another round
    auto begun = BeginRewrite(&io, queue, page.value(), cluster, 0, 0, /*reencode=*/true);
    if (!begun.ok()) return begun.status();
    rewrite = begun.value();
    inflight_ios_++;
    io.progress.async_write = true;  // a snapshot waits for it like for any asynchronous write
    async_writes_++;
  }
  StartRewrite(rewrite);
  while (!waiter.done) queue.Poll(/*wait=*/true);
  return waiter.status;
}

}  // namespace edgestor
