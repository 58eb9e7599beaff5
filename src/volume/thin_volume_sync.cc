// ThinVolume: the synchronous steps, run under the volume's mutex. Most
// change only the map (aligned zeroing, a whole cluster of zeros); device
// I/O happens here only in two rare cases: a write that starts a cluster
// while a snapshot's write barrier is up (the snapshot waits for it, so it
// cannot park), and a compressed read whose cluster moved while its frame
// was read (it reads the new place). Unaligned requests do not come here:
// they read and write their partial blocks through the asynchronous path
// (thin_volume_unaligned.cc).
//
// A compressed cluster is never changed in place: the new content is
// compressed (or stored plain when it does not compress) to freshly
// allocated space, the map entry is journaled after that data is written,
// and the old space is freed with the journal record, so it is reused only
// once the commit that stops referencing it is durable.
#include <cassert>
#include <cerrno>
#include <cstring>

#include "volume/cluster_bits.h"
#include "volume/thin_volume.h"

namespace edgestor {

using format::kBlockSize;

namespace {

uint64_t PhysOffset(const format::MapEntry& entry) { return format::FirstBlock(entry) * kBlockSize; }

}  // namespace

void ThinVolume::SetCompression(const CompressionSetting& setting) {
  attributes_.compression = static_cast<uint8_t>(setting.algorithm);
  attributes_.compression_level = static_cast<uint8_t>(setting.level);
  if (codec_) codec_->set_compression(setting);
}

Status ThinVolume::LoadCluster(const format::MapEntry& entry, uint64_t cluster, uint8_t* out) {
  if (entry.phys_block == 0) {
    std::memset(out, 0, cluster_size_);
    return Status::Ok();
  }
  if (!format::IsCompressed(entry)) return ReadClusterBytes(entry, cluster, 0, cluster_size_, out);
  uint64_t stored = format::StoredBlocks(entry, cluster_blocks_) * kBlockSize;
  assert(stored >= kBlockSize && stored < cluster_size_);
  AlignedBuffer frame = AllocateAligned(stored);
  ES_RETURN_IF_ERROR(pool_.device().ReadSync(PhysOffset(entry), frame.get(), stored));
  return DecodeFrame(entry, cluster, std::span(frame.get(), stored), out);
}

Status ThinVolume::ReadClusterBytes(const format::MapEntry& entry, uint64_t cluster, uint64_t at, uint64_t n,
                                    uint8_t* out) {
  assert(out != nullptr && n > 0 && at + n <= cluster_size_);
  uint64_t first = at / kBlockSize, end = (at + n + kBlockSize - 1) / kBlockSize;
  if ((entry.written_bits & BlocksBetween(first, end)) == 0) {
    std::memset(out, 0, n);  // nothing written here: zeros, no I/O
    return Status::Ok();
  }
  if (format::IsCompressed(entry)) {
    AlignedBuffer whole = AllocateAligned(cluster_size_);
    ES_RETURN_IF_ERROR(LoadCluster(entry, cluster, whole.get()));
    std::memcpy(out, whole.get() + at, n);
    return Status::Ok();
  }
  uint64_t span = (end - first) * kBlockSize;
  assert(entry.phys_block != 0 && "written blocks are mapped");
  AlignedBuffer buf = AllocateAligned(span);
  ES_RETURN_IF_ERROR(pool_.device().ReadSync(PhysOffset(entry) + first * kBlockSize, buf.get(), span));
  ES_RETURN_IF_ERROR(codec_->Decrypt(FirstLogicalBlock(cluster) + first, std::span(buf.get(), span)));
  for (uint64_t b = first; b < end; b++)  // unwritten blocks hold stale bytes: they read as zeros
    if (!((entry.written_bits >> b) & 1)) std::memset(buf.get() + (b - first) * kBlockSize, 0, kBlockSize);
  std::memcpy(out, buf.get() + (at - first * kBlockSize), n);
  return Status::Ok();
}

void ThinVolume::FreeEntry(CachedPage* page, uint64_t cluster) {
  const format::MapEntry entry = page->entries[ThinMap::IndexInPage(cluster)];
  assert(entry.phys_block != 0 && "only a mapped cluster is freed");
  BlockRun run = RunOf(entry, cluster_blocks_);
  SetEntry(page, cluster, format::MapEntry{}, /*journal=*/true, std::span(&run, 1));
}

Status ThinVolume::WriteClusterBytes(CachedPage* page, uint64_t cluster, uint64_t at, uint64_t n,
                                     const uint8_t* data) {
  assert(page != nullptr && n > 0 && at + n <= cluster_size_);
  uint32_t index = ThinMap::IndexInPage(cluster);
  const format::MapEntry entry = page->entries[index];
  const bool zeroing = data == nullptr;
  if (zeroing && entry.phys_block == 0) return Status::Ok();  // already reads as zeros
  uint64_t full = BlocksBetween((at + kBlockSize - 1) / kBlockSize, (at + n) / kBlockSize);
  uint64_t touched = BlocksBetween(at / kBlockSize, (at + n + kBlockSize - 1) / kBlockSize);
  uint64_t bits = zeroing ? entry.written_bits & ~full : entry.written_bits | touched;
  // A plain cluster with asynchronous I/O in flight is never freed or moved:
  // it is changed in place. Compressed clusters move regardless: their
  // asynchronous readers check at completion whether the page changed and
  // read again if so. A shared cluster is never changed in place; it is
  // copied, and its old run, still referenced by whatever shares it, is
  // also held for the reads in flight (the sharers may go meanwhile).
  const bool shared = map_.IsShared(cluster, entry);
  bool busy = page->inflight[index] != 0 && !format::IsCompressed(entry) && !shared;
  if (shared && !format::IsCompressed(entry)) HoldRunForIoInFlight(page, cluster);
  if (bits == 0 && !busy) {
    FreeEntry(page, cluster);
    return Status::Ok();
  }
  bool whole = at == 0 && n == cluster_size_;
  bool relocate = format::IsCompressed(entry) || shared ||
                  (codec_->compressing() && !busy && (entry.phys_block == 0 || whole));
  if (!relocate) return WriteBlocksInPlace(page, cluster, at, n, data);

  AlignedBuffer plaintext = AllocateAligned(cluster_size_);
  if (!whole) ES_RETURN_IF_ERROR(LoadCluster(entry, cluster, plaintext.get()));
  if (zeroing) std::memset(plaintext.get() + at, 0, n);
  else std::memcpy(plaintext.get() + at, data, n);
  if (IsAllZero(plaintext.get(), cluster_size_)) {
    if (entry.phys_block != 0) FreeEntry(page, cluster);  // compressed, or plain and not busy
    return Status::Ok();
  }
  return StoreRelocated(page, cluster, plaintext.get(), bits);
}

// Writes [at, at+n) of a plain cluster where it lies, reading back the
// partial blocks at either end if they hold data.
Status ThinVolume::WriteBlocksInPlace(CachedPage* page, uint64_t cluster, uint64_t at, uint64_t n,
                                      const uint8_t* data) {
  assert(!format::IsCompressed(page->entries[ThinMap::IndexInPage(cluster)]));
  ES_ASSIGN_OR_RETURN(format::MapEntry entry, EnsureMapped(page, cluster));
  assert(entry.phys_block != 0 && n > 0 && at + n <= cluster_size_);
  TouchHotPlain(cluster);
  uint64_t first = at / kBlockSize, end = (at + n + kBlockSize - 1) / kBlockSize;
  if (data == nullptr) {
    // Zeroing: whole blocks just lose their written bit; partial blocks at
    // the ends that hold data are rewritten with zeros in their range.
    uint64_t full = BlocksBetween((at + kBlockSize - 1) / kBlockSize, (at + n) / kBlockSize);
    for (uint64_t b : {first, end - 1}) {
      if ((full >> b) & 1 || !((entry.written_bits >> b) & 1)) continue;
      uint64_t lo = std::max(at, b * kBlockSize), hi = std::min(at + n, (b + 1) * kBlockSize);
      ES_RETURN_IF_ERROR(WriteBlocksInPlace(page, cluster, lo, hi - lo, AllocateAligned(hi - lo).get()));
      if (first == end - 1) break;
    }
    entry = page->entries[ThinMap::IndexInPage(cluster)];
    format::MapEntry updated{entry.phys_block, entry.written_bits & ~full};
    if (updated.written_bits != entry.written_bits) SetEntry(page, cluster, updated, /*journal=*/true);
    return Status::Ok();
  }
  uint64_t span = (end - first) * kBlockSize;
  AlignedBuffer buf = AllocateAligned(span);
  bool partial_ends = at % kBlockSize != 0 || (at + n) % kBlockSize != 0;
  if (partial_ends) ES_RETURN_IF_ERROR(ReadClusterBytes(entry, cluster, first * kBlockSize, span, buf.get()));
  std::memcpy(buf.get() + (at - first * kBlockSize), data, n);
  ES_RETURN_IF_ERROR(codec_->Encrypt(FirstLogicalBlock(cluster) + first, std::span(buf.get(), span),
                                     std::span(buf.get(), span)));
  ES_RETURN_IF_ERROR(pool_.device().WriteSync(PhysOffset(entry) + first * kBlockSize, buf.get(), span));
  uint64_t bits = entry.written_bits | BlocksBetween(first, end);
  if (bits != entry.written_bits) SetEntry(page, cluster, {entry.phys_block, bits}, /*journal=*/true);
  return Status::Ok();
}

// Stores a cluster's new content in fresh space (compressed if that saves a
// block), then journals the new entry with the old space as its free (a
// dropped reference: shared space stays with the snapshots that share it).
Status ThinVolume::StoreRelocated(CachedPage* page, uint64_t cluster, const uint8_t* plaintext,
                                  uint64_t written_bits) {
  const format::MapEntry old = page->entries[ThinMap::IndexInPage(cluster)];
  AlignedBuffer out = AllocateAligned(cluster_size_);
  auto compressed = codec_->Compress(std::span(plaintext, cluster_size_), std::span(out.get(), cluster_size_));
  if (!compressed.ok() && compressed.status().code() != ENOSPC) return compressed.status();
  uint64_t blocks = compressed.ok() ? format::SectorsToBlocks(compressed.value()) : cluster_blocks_;
  // A frame is 1 .. cluster_blocks - 1 blocks (one that saves nothing is ENOSPC).
  assert(blocks >= 1 && (!compressed.ok() || blocks < cluster_blocks_));
  assert(cluster_blocks_ == 64 || (written_bits >> cluster_blocks_) == 0);
  if (!compressed.ok()) std::memcpy(out.get(), plaintext, cluster_size_);
  if (!compressed.ok() && old.phys_block != 0 && !format::IsCompressed(old) && !map_.IsShared(cluster, old)) {
    // Does not compress and already has a plain home of its own: overwrite in place.
    return WriteBlocksInPlace(page, cluster, 0, cluster_size_, plaintext);
  }
  uint64_t bytes = blocks * kBlockSize;
  ES_RETURN_IF_ERROR(codec_->Encrypt(FirstLogicalBlock(cluster), std::span(out.get(), bytes), std::span(out.get(), bytes)));
  auto block = compressed.ok() ? pool_.AllocateRun(blocks) : pool_.AllocateCluster();
  if (!block.ok()) return block.status();
  Status written = pool_.device().WriteSync(block.value() * kBlockSize, out.get(), bytes);
  if (!written.ok()) {
    pool_.FreeUnreferenced({block.value(), blocks});
    return written;
  }
  format::MapEntry entry = compressed.ok() ? format::CompressedEntry(block.value(), blocks, written_bits)
                                           : format::MapEntry{block.value(), written_bits};
  if (old.phys_block == 0) {
    SetEntry(page, cluster, entry, /*journal=*/true);
    return Status::Ok();
  }
  BlockRun run = RunOf(old, cluster_blocks_);
  SetEntry(page, cluster, entry, /*journal=*/true, std::span(&run, 1));
  return Status::Ok();
}

}  // namespace edgestor
