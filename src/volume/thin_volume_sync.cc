// ThinVolume: the synchronous paths. Discard, write-zeroes and writes not
// aligned to 4 KiB change few bytes of data and mostly metadata; they run
// under the volume's mutex with synchronous device I/O, which keeps a
// read-modify-write of a 4 KiB block atomic with respect to the map.
#include <cassert>
#include <cerrno>
#include <cstring>

#include "volume/thin_volume.h"
#include "volume/volume_set_impl.h"

namespace edgestor {

using format::kBlockSize;

namespace {

uint64_t PhysOffset(const format::MapEntry& entry) { return (entry.phys_block & format::kPhysBlockMask) * kBlockSize; }

}  // namespace

// Zeroes the sectors [cluster_offset, +length) of a mapped cluster, where
// they lie in written blocks (unwritten blocks already read as zeros).
Status ThinVolume::ZeroSectors(const format::MapEntry& entry, uint64_t cluster_offset, uint64_t length) {
  if (length == 0) return Status::Ok();
  uint64_t block = cluster_offset / kBlockSize;
  assert((cluster_offset + length - 1) / kBlockSize == block);  // within one block
  if (!((entry.written_bits >> block) & 1)) return Status::Ok();
  // Whole-block read-modify-write: devices with 4 KiB sectors refuse less.
  AlignedBuffer buf = AllocateAligned(kBlockSize);
  uint64_t block_offset = PhysOffset(entry) + block * kBlockSize;
  ES_RETURN_IF_ERROR(pool_.device().ReadSync(block_offset, buf.get(), kBlockSize));
  std::memset(buf.get() + cluster_offset % kBlockSize, 0, length);
  return pool_.device().WriteSync(block_offset, buf.get(), kBlockSize);
}

Status ThinVolume::ZeroRange(uint64_t offset, uint64_t length) {
  Status result;
  uint64_t end = offset + length;
  for (uint64_t pos = offset; pos < end && result.ok();) {
    uint64_t cluster = pos / cluster_size_;
    uint64_t at = pos % cluster_size_;
    uint64_t n = std::min<uint64_t>(end - pos, cluster_size_ - at);
    pos += n;

    std::lock_guard lock(mu_);
    auto page = map_.Page(cluster, /*create=*/false);
    if (!page.ok()) return page.status();
    if (!page.value()) continue;  // nothing stored: already zeros
    uint32_t index = ThinMap::IndexInPage(cluster);
    format::MapEntry entry = page.value()->entries[index];
    if (entry.phys_block == 0) continue;

    // Whole 4 KiB blocks lose their written bit; partial ones are zeroed.
    uint64_t first_full = (at + kBlockSize - 1) / kBlockSize;
    uint64_t end_full = (at + n) / kBlockSize;
    uint64_t head_end = std::min(at + n, first_full * kBlockSize);
    uint64_t tail_start = std::max(head_end, end_full * kBlockSize);
    result = ZeroSectors(entry, at, head_end - at);
    if (result.ok()) result = ZeroSectors(entry, tail_start, at + n - tail_start);
    if (!result.ok() || first_full >= end_full) continue;
    uint64_t mask = (end_full - first_full == 64 ? ~0ull : ((1ull << (end_full - first_full)) - 1)) << first_full;
    format::MapEntry updated = {entry.phys_block, entry.written_bits & ~mask};
    if (updated.written_bits == 0 && page.value()->inflight[index] == 0) {
      // Nothing left in the cluster: free it once this record is durable.
      BlockRun run{entry.phys_block & format::kPhysBlockMask, cluster_blocks_};
      SetEntry(page.value(), cluster, format::MapEntry{}, /*journal=*/true, std::span(&run, 1));
    } else if (updated.written_bits != entry.written_bits) {
      SetEntry(page.value(), cluster, updated, /*journal=*/true);
    }
  }
  return result;
}

Status ThinVolume::WriteUnaligned(uint64_t offset, uint64_t length, const uint8_t* data) {
  AlignedBuffer block_buf = AllocateAligned(kBlockSize);
  uint64_t end = offset + length;
  std::lock_guard lock(mu_);
  for (uint64_t pos = offset; pos < end;) {
    uint64_t block_start = pos / kBlockSize * kBlockSize;
    uint64_t n = std::min(end, block_start + kBlockSize) - pos;
    uint64_t cluster = pos / cluster_size_;
    uint64_t block_in_cluster = (pos % cluster_size_) / kBlockSize;
    ES_ASSIGN_OR_RETURN(CachedPage * page, map_.Page(cluster, /*create=*/true));
    ES_ASSIGN_OR_RETURN(format::MapEntry entry, EnsureMapped(page, cluster));
    uint64_t phys = PhysOffset(entry) + block_in_cluster * kBlockSize;
    bool written = (entry.written_bits >> block_in_cluster) & 1;
    // Read-modify-write of one 4 KiB block; an unwritten block starts as zeros.
    if (written) ES_RETURN_IF_ERROR(pool_.device().ReadSync(phys, block_buf.get(), kBlockSize));
    else std::memset(block_buf.get(), 0, kBlockSize);
    std::memcpy(block_buf.get() + (pos - block_start), data + (pos - offset), n);
    ES_RETURN_IF_ERROR(pool_.device().WriteSync(phys, block_buf.get(), kBlockSize));
    if (!written) {
      entry.written_bits |= 1ull << block_in_cluster;
      SetEntry(page, cluster, entry, /*journal=*/true);
    }
    pos += n;
  }
  return Status::Ok();
}

Status ThinVolume::ReadUnaligned(uint64_t offset, uint64_t length, uint8_t* data) {
  AlignedBuffer block_buf = AllocateAligned(kBlockSize);
  uint64_t end = offset + length;
  std::lock_guard lock(mu_);
  for (uint64_t pos = offset; pos < end;) {
    uint64_t block_start = pos / kBlockSize * kBlockSize;
    uint64_t n = std::min(end, block_start + kBlockSize) - pos;
    uint64_t cluster = pos / cluster_size_;
    uint64_t block_in_cluster = (pos % cluster_size_) / kBlockSize;
    ES_ASSIGN_OR_RETURN(CachedPage * page, map_.Page(cluster, /*create=*/false));
    format::MapEntry entry = page ? page->entries[ThinMap::IndexInPage(cluster)] : format::MapEntry{};
    if ((entry.written_bits >> block_in_cluster) & 1) {
      ES_RETURN_IF_ERROR(
          pool_.device().ReadSync(PhysOffset(entry) + block_in_cluster * kBlockSize, block_buf.get(), kBlockSize));
      std::memcpy(data + (pos - offset), block_buf.get() + (pos - block_start), n);
    } else {
      std::memset(data + (pos - offset), 0, n);
    }
    pos += n;
  }
  return Status::Ok();
}

}  // namespace edgestor
