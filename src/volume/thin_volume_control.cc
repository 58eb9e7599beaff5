// ThinVolume: control-path operations (recovery, accounting, resize,
// release). Called by VolumeSetImpl.
#include <algorithm>
#include <cassert>
#include <cerrno>

#include "volume/checkpoint_codec.h"
#include "volume/thin_volume.h"

namespace edgestor {

using format::kBlockSize;
using format::kEntriesPerMapPage;

VolumeInfo ThinVolume::Info() {
  std::lock_guard lock(mu_);
  VolumeInfo info;
  info.id = id_;
  info.name = name_;
  info.size = size();
  info.allocated_bytes = stored_blocks_ * kBlockSize;
  info.written_bytes = written_blocks_ * kBlockSize;
  info.mapped_clusters = allocated_clusters_;
  info.compressed_clusters = compressed_clusters_;
  info.encrypted = attributes_.encrypted;
  info.locked = codec_ == nullptr;
  info.compression = {static_cast<Compression>(attributes_.compression), attributes_.compression_level};
  info.cow_copies = copies_started();
  info.compressed_rewrites = reencodes_started();
  info.rewrite_retries = rewrite_retries();
  info.unaligned_writes = unaligned_writes();
  info.gate_parks = gate_parks();
  info.hot_plain_clusters = hot_plain_.size();
  info.recompressed_clusters = recompressed_clusters();
  info.packed_frames = packed_frames_.load(std::memory_order_relaxed);
  return info;
}

bool ThinVolume::EntryIsWellFormed(const format::MapEntry& e) const {
  bool bits_ok = cluster_blocks_ == 64 || (e.written_bits >> cluster_blocks_) == 0;
  if (!bits_ok || (e.phys_block & format::kUnknownEntryBits)) return false;
  if (e.phys_block == 0) return e.written_bits == 0;
  if (!format::IsCompressed(e)) return (e.phys_block >> format::kStoredBlocksShift) == 0;
  uint64_t stored = format::StoredBlocks(e, cluster_blocks_);
  // A frame spans fewer blocks than the cluster (packing keeps it so); one
  // inside a single block leaves it at least a sector.
  bool edges_ok = stored > 1 || format::FrameHead(e) + format::FrameTail(e) < format::kSectorsPerBlock;
  return stored >= 1 && stored < cluster_blocks_ && edges_ok && format::FirstBlock(e) != 0;
}

Status ThinVolume::ReplayMapSet(uint64_t cluster, const format::MapEntry& entry) {
  if (cluster >= map_.clusters())
    return Status(EUCLEAN, "journal maps cluster " + std::to_string(cluster) + " past the end of volume " + name_);
  if (!EntryIsWellFormed(entry))
    return Status(EUCLEAN, "journal holds an impossible map entry for volume " + name_);
  ES_ASSIGN_OR_RETURN(CachedPage * page, map_.Page(cluster, /*create=*/true));
  assert(page != nullptr && page->pins == 0 && "replay runs before any I/O");
  SetEntry(page, cluster, entry, /*journal=*/false);
  return Status::Ok();
}

Status ThinVolume::CountEntries(const format::MapEntry* entries, uint64_t first_cluster, bool reference,
                                const std::function<void(const std::string&)>& problem) {
  assert(entries != nullptr && first_cluster % kEntriesPerMapPage == 0);
  const uint64_t total = pool_.total_blocks();
  for (uint32_t i = 0; i < kEntriesPerMapPage; i++) {
    const format::MapEntry& e = entries[i];
    uint64_t cluster = first_cluster + i;
    std::string where = "volume " + name_ + ": cluster " + std::to_string(cluster);
    if (e.phys_block == 0) {
      if (e.written_bits) problem(where + " has written bits but no space");
      continue;
    }
    uint64_t phys = format::FirstBlock(e);
    uint64_t stored = format::StoredBlocks(e, cluster_blocks_);
    bool aligned = format::IsCompressed(e) || phys % cluster_blocks_ == 0;
    if (cluster >= map_.clusters()) problem(where + " is mapped past the end of the volume");
    else if (!EntryIsWellFormed(e)) problem(where + " has an impossible map entry");
    else if (!aligned || phys + stored > total) problem(where + " points outside the pool");
    else if (reference && !pool_.MarkReferenced(RunOf(e, cluster_blocks_)))
      problem(where + " overlaps other data or metadata");
    if (read_only_) continue;  // a snapshot's counters are stored with it
    allocated_clusters_++;
    stored_blocks_ += format::ChargedBlocks(e, cluster_blocks_);
    compressed_clusters_ += format::IsCompressed(e);
    written_blocks_ += __builtin_popcountll(e.written_bits);
  }
  return Status::Ok();
}

Status ThinVolume::MarkReferencedSpace(std::unordered_set<uint64_t>* counted_pages,
                                       const std::function<void(const std::string&)>& problem) {
  std::lock_guard lock(mu_);
  if (!read_only_) {
    allocated_clusters_ = 0;
    written_blocks_ = 0;
    stored_blocks_ = 0;
    compressed_clusters_ = 0;
  }
  auto& slots = map_.slots();
  for (uint64_t s = 0; s < slots.size(); s++) {
    // A page replay changed is this volume's own copy (its runs count for
    // it); a stored page counts its runs once, whoever reads it.
    bool diverged = slots[s].page && slots[s].page->dirty;
    if (slots[s].block != 0 && !diverged && !pool_.MarkReferenced({slots[s].block, 1}))
      problem("volume " + name_ + ": map page block " + std::to_string(slots[s].block) + " overlaps other metadata or data");
    bool reference_runs = diverged || (slots[s].block != 0 && counted_pages->insert(slots[s].block).second);
    if (!reference_runs && read_only_) continue;
    auto page = map_.Page(s * kEntriesPerMapPage, /*create=*/false);
    if (!page.ok()) {
      problem("volume " + name_ + ": " + page.status().message());
      continue;
    }
    if (page.value()) ES_RETURN_IF_ERROR(CountEntries(page.value()->entries, s * kEntriesPerMapPage, reference_runs, problem));
    map_.EvictIfOverBudget();
  }
  return Status::Ok();
}

void ThinVolume::MarkDivergedPages(const std::function<void(const std::string&)>& problem) {
  std::lock_guard lock(mu_);
  for (ThinMap::Slot& slot : map_.slots()) {
    if (slot.block == 0 || !slot.page || !slot.page->dirty) continue;
    if (pool_.References(slot.block) > 0) slot.released = true;  // another directory reads it
    else if (!pool_.MarkReferenced({slot.block, 1}))
      problem("volume " + name_ + ": map page block " + std::to_string(slot.block) + " overlaps other metadata or data");
  }
}

void ThinVolume::MakeSnapshotView(const format::SnapshotEntry& entry) {
  assert(inflight_ios_ == 0 && "a view is made before any I/O");
  read_only_ = true;
  allocated_clusters_ = entry.mapped_clusters;
  stored_blocks_ = entry.stored_blocks;
  compressed_clusters_ = entry.compressed_clusters;
  written_blocks_ = entry.written_blocks;
}

void ThinVolume::FillSnapshotCounters(format::SnapshotEntry* entry) const {
  assert(entry != nullptr);
  entry->mapped_clusters = allocated_clusters_;
  entry->stored_blocks = stored_blocks_;
  entry->compressed_clusters = compressed_clusters_;
  entry->written_blocks = written_blocks_;
}

void ThinVolume::TakeContentOf(ThinVolume& view) {
  assert(inflight_ios_ == 0 && !read_only_ && view.read_only_);
  std::lock_guard view_lock(view.mu_);
  map_.ReplaceDirectory(view.map_.Directory(), view.map_.clusters());
  size_ = view.size();
  assert(map_.clusters() == ClustersFor(size(), cluster_size_));
  allocated_clusters_ = view.allocated_clusters_;
  stored_blocks_ = view.stored_blocks_;
  compressed_clusters_ = view.compressed_clusters_;
  written_blocks_ = view.written_blocks_;
}

Result<uint64_t> ThinVolume::CopySharedClusters(const std::function<bool(uint64_t, uint64_t)>& progress) {
  assert(!read_only_ && "only a clone is flattened");
  uint64_t copied = 0;
  const uint64_t clusters = map_.clusters();
  AlignedBuffer plaintext = AllocateAligned(cluster_size_);
  for (uint64_t first = 0; first < clusters; first += kEntriesPerMapPage) {
    {
      std::lock_guard lock(mu_);
      if (!codec_) return Status(EACCES, "volume " + name_ + " is encrypted and the pool is locked");
      if (first >= map_.clusters()) break;  // shrunk meanwhile
      ES_ASSIGN_OR_RETURN(CachedPage * page, map_.Page(first, /*create=*/false));
      for (uint64_t c = first; page && c < std::min(first + kEntriesPerMapPage, map_.clusters()); c++) {
        const format::MapEntry entry = page->entries[ThinMap::IndexInPage(c)];
        if (!map_.IsShared(c, entry)) continue;
        ES_RETURN_IF_ERROR(LoadCluster(entry, c, plaintext.get()));
        ES_RETURN_IF_ERROR(StoreRelocated(page, c, plaintext.get(), entry.written_bits));
        copied++;
      }
      // A page left with nothing shared may still be a shared block: make
      // it this volume's own, stored fresh by the next checkpoint.
      if (page && !page->dirty && pool_.References(map_.slots()[first / kEntriesPerMapPage].block) > 1) {
        map_.Unshare(first);
        map_.MarkDirty(page);
      }
      map_.EvictIfOverBudget();
    }
    if (progress && !progress(std::min(first + kEntriesPerMapPage, clusters), clusters))
      return Status(ECANCELED, "flattening " + name_ + " was stopped; flatten it again to go on");
  }
  return copied;
}

Status ThinVolume::ResizeLocked(uint64_t new_size, std::vector<BlockRun>* frees) {
  assert(frees != nullptr && new_size <= format::kMaxVolumeSize);
  uint64_t new_clusters = ClustersFor(new_size, cluster_size_);
  if (new_clusters < map_.clusters()) {
    if (inflight_ios_) return Status(EBUSY, "volume " + name_ + " has I/O in flight");
    for (uint64_t c = new_clusters; c < map_.clusters(); c++) {
      if (c % kEntriesPerMapPage == 0 && map_.slots()[c / kEntriesPerMapPage].block == 0 &&
          !map_.slots()[c / kEntriesPerMapPage].page) {
        c += kEntriesPerMapPage - 1;  // page never stored: nothing mapped in it
        continue;
      }
      ES_ASSIGN_OR_RETURN(CachedPage * page, map_.Page(c, /*create=*/false));
      if (!page) continue;
      const format::MapEntry e = page->entries[ThinMap::IndexInPage(c)];
      if (e.phys_block == 0) continue;
      assert(page->inflight[ThinMap::IndexInPage(c)] == 0 && "no I/O in flight");
      frees->push_back(RunOf(e, cluster_blocks_));
      SetEntry(page, c, format::MapEntry{}, /*journal=*/false);
    }
    // Every page past the end was unshared by SetEntry above (or holds
    // nothing): drop this map's reference to its block, if it has one.
    for (uint64_t s = ThinMap::SlotsFor(new_clusters); s < map_.slots().size(); s++)
      if (map_.slots()[s].block && !map_.slots()[s].released) frees->push_back({map_.slots()[s].block, 1});
  }
  map_.Resize(new_clusters);
  size_ = new_size;
  assert(map_.clusters() == new_clusters && map_.slots().size() == ThinMap::SlotsFor(new_clusters));
  return Status::Ok();
}

void ThinVolume::TruncateView(const std::vector<format::DirectorySlot>& directory, uint64_t size) {
  assert(read_only_ && size <= this->size());
  assert(directory.size() == ThinMap::SlotsFor(ClustersFor(size, cluster_size_)) && inflight_ios_ == 0);
  map_.ReplaceDirectory(directory, ClustersFor(size, cluster_size_));
  size_ = size;
}

uint64_t ThinVolume::ShrinkStepSizeLocked(uint64_t floor_size, uint64_t pages) {
  const uint64_t page_bytes = uint64_t{kEntriesPerMapPage} * cluster_size_;
  const uint64_t floor_slot = floor_size / page_bytes;  // the page holding the new end stays
  auto& slots = map_.slots();
  uint64_t slot = slots.size(), released = 0;
  pages = std::max<uint64_t>(pages, 1);
  for (; slot > floor_slot; slot--) {
    const ThinMap::Slot& s = slots[slot - 1];
    if (s.block == 0 && !s.page) continue;  // never stored: costs nothing to drop
    if (released == pages) break;
    released++;
  }
  assert(released <= pages);
  return std::max(floor_size, std::min(size(), slot * page_bytes));
}

Status ThinVolume::ReleaseAllLocked(std::vector<BlockRun>* frees) {
  if (inflight_ios_) return Status(EBUSY, "volume " + name_ + " has I/O in flight");
  assert(frees != nullptr);
  std::vector<BlockRun> runs;
  ES_RETURN_IF_ERROR(ResizeLocked(0, &runs));
  assert(allocated_clusters_ == 0 || read_only_);
  frees->insert(frees->end(), runs.begin(), runs.end());
  return Status::Ok();
}

Result<std::vector<VolumeExtent>> ThinVolume::Describe(uint64_t offset, uint64_t length, size_t max_extents) {
  if (offset > size() || length > size() - offset || length == 0 || max_extents == 0)
    return Status(EINVAL, "range outside the volume");
  std::vector<VolumeExtent> out;
  auto append = [&](uint64_t n, bool written) {
    if (!out.empty() && out.back().written == written) {
      out.back().length += n;
      return true;
    }
    if (out.size() == max_extents) return false;
    out.push_back({n, written});
    return true;
  };
  std::lock_guard lock(mu_);
  // Steps over whole unstored pages and whole unwritten clusters at once, so
  // describing a huge, mostly empty volume costs O(pages), not O(blocks).
  for (uint64_t pos = offset, end = offset + length; pos < end;) {
    uint64_t cluster = pos / cluster_size_;
    ES_ASSIGN_OR_RETURN(CachedPage * page, map_.Page(cluster, /*create=*/false));
    uint64_t bits = page ? page->entries[ThinMap::IndexInPage(cluster)].written_bits : 0;
    uint64_t step_end;
    bool written = false;
    if (!page) {
      step_end = (cluster / kEntriesPerMapPage + 1) * kEntriesPerMapPage * cluster_size_;
    } else if (bits == 0) {
      step_end = (cluster + 1) * cluster_size_;
    } else {
      uint64_t block = (pos % cluster_size_) / kBlockSize;
      written = (bits >> block) & 1;
      step_end = (pos / kBlockSize + 1) * kBlockSize;
    }
    assert(step_end > pos && "every step advances");
    uint64_t n = std::min(end, step_end) - pos;
    if (!append(n, written)) break;
    pos += n;
  }
  return out;
}

}  // namespace edgestor
