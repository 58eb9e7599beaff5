#include "volume/thin_map.h"

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <cstring>

namespace edgestor {

using format::kEntriesPerMapPage;

namespace {

// Debug-only, O(entries per page): a page's pins are the sum of its
// clusters' I/Os in flight. Asserted where a page leaves the cache or the
// directory changes, never per I/O.
[[maybe_unused]] bool PinsMatchInflight(const CachedPage& page) {
  uint64_t sum = 0;
  for (uint16_t n : page.inflight) sum += n;
  return sum == page.pins;
}

}  // namespace

ThinMap::ThinMap(Pool& pool, MapCacheBudget& budget, uint64_t clusters)
    : pool_(pool), budget_(budget), clusters_(clusters), slots_(SlotsFor(clusters)) {
  assert(pool_.geometry().cluster_size >= format::kMinClusterSize);
}

ThinMap::~ThinMap() {
  for (Slot& slot : slots_) {
    if (!slot.page) continue;
    assert(budget_.cached_pages > 0 && (!slot.page->dirty || budget_.dirty_pages > 0));
    if (slot.page->dirty) budget_.dirty_pages--;
    budget_.cached_pages--;
  }
}

uint64_t ThinMap::SlotsFor(uint64_t clusters) { return (clusters + kEntriesPerMapPage - 1) / kEntriesPerMapPage; }

Result<CachedPage*> ThinMap::Page(uint64_t cluster, bool create) {
  assert(cluster < clusters_);
  assert(cluster / kEntriesPerMapPage < slots_.size());
  Slot& slot = slots_[cluster / kEntriesPerMapPage];
  if (slot.page) {
    budget_.hits.fetch_add(1, std::memory_order_relaxed);
    return slot.page.get();
  }
  if (slot.block == 0 && !create) return static_cast<CachedPage*>(nullptr);
  auto page = std::make_unique<CachedPage>();
  if (slot.block != 0) {
    budget_.misses.fetch_add(1, std::memory_order_relaxed);
    auto raw = std::make_unique<format::MapPage>();
    ES_RETURN_IF_ERROR(pool_.ReadMapPage(slot.block, slot.generation, raw.get()));
    std::memcpy(page->entries, raw->entries, sizeof page->entries);
  }
  assert(page->pins == 0 && !page->dirty);
  slot.page = std::move(page);
  budget_.cached_pages++;
  return slot.page.get();
}

std::optional<ThinMap::StoredPage> ThinMap::FirstUncached(uint64_t first_cluster, uint64_t end_cluster) const {
  assert(first_cluster <= end_cluster && end_cluster <= clusters_);
  assert(slots_.size() == SlotsFor(clusters_));
  if (first_cluster == end_cluster) return std::nullopt;
  for (uint64_t s = first_cluster / kEntriesPerMapPage, last = (end_cluster - 1) / kEntriesPerMapPage; s <= last; s++)
    if (!slots_[s].page && slots_[s].block != 0) return StoredPage{s, slots_[s].block, slots_[s].generation};
  return std::nullopt;
}

bool ThinMap::Idle(uint64_t first_cluster, uint64_t end_cluster) const {
  assert(first_cluster <= end_cluster && end_cluster <= clusters_);
  for (uint64_t c = first_cluster; c < end_cluster;) {
    const CachedPage* page = slots_[c / kEntriesPerMapPage].page.get();
    uint64_t page_end = std::min(end_cluster, (c / kEntriesPerMapPage + 1) * kEntriesPerMapPage);
    if (page && page->pins != 0) {
      for (; c < page_end; c++)
        if (page->inflight[c % kEntriesPerMapPage] != 0) return false;
    }
    c = page_end;
  }
  return true;
}

Status ThinMap::InstallLoaded(const StoredPage& where, const format::MapPage& raw) {
  assert(where.block != 0 && "FirstUncached names stored pages only");
  ES_RETURN_IF_ERROR(pool_.CheckMapPage(where.block, where.generation, raw));
  if (where.slot >= slots_.size()) return Status::Ok();  // shrunk meanwhile
  Slot& slot = slots_[where.slot];
  // Cached by another request, or checkpointed elsewhere after a change:
  // the slot's page is newer than this copy.
  if (slot.page || slot.block != where.block || slot.generation != where.generation) return Status::Ok();
  auto page = std::make_unique<CachedPage>();
  std::memcpy(page->entries, raw.entries, sizeof page->entries);
  slot.page = std::move(page);
  budget_.cached_pages++;
  budget_.async_loads.fetch_add(1, std::memory_order_relaxed);
  return Status::Ok();
}

void ThinMap::MarkDirty(CachedPage* page) {
  assert(page != nullptr);
  if (page->dirty) return;
  page->dirty = true;
  budget_.dirty_pages++;
}

void ThinMap::Unshare(uint64_t cluster) {
  assert(cluster < clusters_);
  if (pool_.shared_runs() == 0) return;  // the common case: no snapshot, no clone
  Slot& slot = slots_[cluster / kEntriesPerMapPage];
  if (!slot.page || slot.page->dirty || slot.block == 0 || slot.released) return;
  if (pool_.References(slot.block) < 2) return;  // only this map reads it
  for (const format::MapEntry& e : slot.page->entries)
    if (e.phys_block != 0) pool_.AddReference(format::FirstBlock(e));
  pool_.DropSharedReference(slot.block);
  slot.released = true;
}

bool ThinMap::IsShared(uint64_t cluster, const format::MapEntry& entry) const {
  assert(cluster < clusters_);
  if (entry.phys_block == 0 || pool_.shared_runs() == 0) return false;
  const Slot& slot = slots_[cluster / kEntriesPerMapPage];
  bool page_shared = slot.page && !slot.page->dirty && slot.block != 0 && !slot.released &&
                     pool_.References(slot.block) > 1;
  return page_shared || pool_.References(format::FirstBlock(entry)) > 1;
}

void ThinMap::ReplaceDirectory(const std::vector<format::DirectorySlot>& directory, uint64_t clusters) {
  for (Slot& slot : slots_) {
    assert(!slot.page || (!slot.page->dirty && slot.page->pins == 0 && PinsMatchInflight(*slot.page)));
    if (slot.page) Evict(slot);
  }
  assert(directory.size() == SlotsFor(clusters));
  slots_.clear();
  slots_.resize(directory.size());
  for (size_t i = 0; i < directory.size(); i++) {
    slots_[i].block = directory[i].block;
    slots_[i].generation = directory[i].generation;
  }
  clusters_ = clusters;
  if (clock_hand_ >= slots_.size()) clock_hand_ = 0;  // the directory may have shrunk
}

uint64_t ThinMap::StoredPages() const {
  uint64_t stored = 0;
  for (const Slot& slot : slots_) stored += slot.block != 0;
  return stored;
}

std::vector<format::DirectorySlot> ThinMap::Directory() const {
  std::vector<format::DirectorySlot> out;
  out.reserve(slots_.size());
  for (const Slot& slot : slots_) out.push_back({slot.block, slot.generation});
  assert(out.size() == SlotsFor(clusters_));
  return out;
}

void ThinMap::Resize(uint64_t clusters) {
  uint64_t slots = SlotsFor(clusters);
  for (uint64_t s = slots; s < slots_.size(); s++) {
    assert(!slots_[s].page || slots_[s].page->pins == 0);
    if (slots_[s].page) Evict(slots_[s]);
  }
  if (slots < slots_.size() && slots > 0 && slots_[slots - 1].page) {
    // Entries past the new end inside the last page must already be unmapped.
    for (uint64_t c = clusters; c < slots * kEntriesPerMapPage; c++)
      assert(slots_[slots - 1].page->entries[c % kEntriesPerMapPage].phys_block == 0);
  }
  slots_.resize(slots);
  clusters_ = clusters;
  if (clock_hand_ >= slots_.size()) clock_hand_ = 0;  // shrunk past the scan position
}

void ThinMap::Evict(Slot& slot) {
  assert(slot.page && slot.page->pins == 0);
  assert(PinsMatchInflight(*slot.page) && "an unpinned page has no I/O in flight");
  assert(budget_.cached_pages > 0 && (!slot.page->dirty || budget_.dirty_pages > 0));
  if (slot.page->dirty) budget_.dirty_pages--;
  slot.page.reset();
  budget_.cached_pages--;
}

void ThinMap::EvictIfOverBudget() {
  if (budget_.cached_pages <= budget_.max_pages || slots_.empty()) return;
  // Clock scan over this map's slots; bounded so one call stays cheap.
  for (uint64_t n = 0; n < slots_.size() && n < 4096 && budget_.cached_pages > budget_.max_pages; n++) {
    assert(clock_hand_ < slots_.size());
    Slot& slot = slots_[clock_hand_];
    clock_hand_ = (clock_hand_ + 1) % slots_.size();
    if (slot.page && !slot.page->dirty && slot.page->pins == 0) Evict(slot);
  }
}

Status ThinMap::WriteDirtyPages(std::vector<BlockRun>* superseded) {
  assert(superseded != nullptr);
  format::MapPage raw;
  for (Slot& slot : slots_) {
    if (!slot.page || !slot.page->dirty) continue;
    assert(PinsMatchInflight(*slot.page));
    ES_ASSIGN_OR_RETURN(uint64_t block, pool_.AllocateMetaBlock());
    assert(block != 0);
    std::memset(&raw, 0, sizeof raw);
    std::memcpy(raw.entries, slot.page->entries, sizeof raw.entries);
    ES_RETURN_IF_ERROR(pool_.WriteMapPage(block, &raw));
    if (slot.block != 0 && !slot.released) superseded->push_back({slot.block, 1});
    slot.released = false;
    slot.block = block;
    slot.generation = raw.header.generation;
    assert(raw.header.magic == format::kMapPageMagic && raw.header.generation != 0 && budget_.dirty_pages > 0);
    slot.page->dirty = false;
    budget_.dirty_pages--;
  }
  return Status::Ok();
}


}  // namespace edgestor
