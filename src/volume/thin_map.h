// ThinMap: one volume's cluster map, paged, with a bounded page cache.
//
// The map is a directory of slots, one per map page of kEntriesPerMapPage
// clusters. A slot knows where the page was last checkpointed (block and
// generation) and, when cached, holds the page in memory. Pages never
// written are not stored at all (block 0): every cluster in them is
// unmapped, so a thin volume's map costs memory only where it was written.
//
// Sharing: a snapshot's directory names the same stored pages as its volume
// had when it was taken. A page whose block other directories also read is
// shared; before its first change the map makes the cached copy its own
// (Unshare), and the next checkpoint stores that copy in a fresh block.
//
// Not thread-safe: the owning ThinVolume's mutex guards it.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "base/status.h"
#include "pool/format.h"
#include "pool/pool.h"

namespace edgestor {

// Shared by all maps of a pool: how many pages are cached and dirty, and
// how often a lookup found its page cached or had to read it (a miss: a
// synchronous map-page read on the looking thread), and how many pages
// were read asynchronously for requests that waited for them (parked).
struct MapCacheBudget {
  uint64_t max_pages = 0;
  std::atomic<uint64_t> cached_pages{0};
  std::atomic<uint64_t> dirty_pages{0};
  std::atomic<uint64_t> hits{0};
  std::atomic<uint64_t> misses{0};
  std::atomic<uint64_t> async_loads{0};
};

struct CachedPage {
  format::MapEntry entries[format::kEntriesPerMapPage] = {};
  // I/Os in flight per cluster: a cluster with I/O in flight is never freed,
  // so its space cannot be reused under a request still using it.
  uint16_t inflight[format::kEntriesPerMapPage] = {};
  uint32_t pins = 0;  // sum of inflight: a pinned page is never evicted
  // Bumped on every entry change: an asynchronous read of a compressed
  // cluster that sees it moved knows its data may be stale.
  uint32_t changes = 0;
  bool dirty = false;
};

class ThinMap {
 public:
  struct Slot {
    uint64_t block = 0;       // last checkpointed location; 0: never stored
    uint64_t generation = 0;  // expected page generation
    // The cached page diverged from a block other directories still read:
    // `block` says only where the last checkpoint put this page; this map
    // holds no reference to it.
    bool released = false;
    std::unique_ptr<CachedPage> page;
  };

  ThinMap(Pool& pool, MapCacheBudget& budget, uint64_t clusters);
  ~ThinMap();

  uint64_t clusters() const { return clusters_; }
  static uint64_t SlotsFor(uint64_t clusters);

  // The page holding `cluster`, loading it if needed. With `create`, a page
  // never stored is created empty; without, nullptr is returned for it.
  Result<CachedPage*> Page(uint64_t cluster, bool create);
  static uint32_t IndexInPage(uint64_t cluster) { return cluster % format::kEntriesPerMapPage; }

  // ---- Asynchronous loading: a request parks on a page instead of reading
  // it synchronously in Page() ----
  struct StoredPage {
    uint64_t slot = 0;
    uint64_t block = 0;
    uint64_t generation = 0;
  };
  // The first page holding a cluster of [first_cluster, end_cluster) that
  // is stored but not cached, if any.
  std::optional<StoredPage> FirstUncached(uint64_t first_cluster, uint64_t end_cluster) const;
  // Caches `page`, read from `where`, unless the slot was cached or moved
  // meanwhile (then the copy is dropped: the slot's own is newer). EUCLEAN
  // if the page fails its checks.
  Status InstallLoaded(const StoredPage& where, const format::MapPage& page);

  // Marks a cached page dirty (it will be written by the next checkpoint).
  void MarkDirty(CachedPage* page);

  // Call before changing an entry of the cached page holding `cluster`: a
  // page still shared with other directories becomes this map's own copy
  // (each run it maps gains a reference; the block loses this map's).
  void Unshare(uint64_t cluster);
  // True if the run `entry` (an entry of `cluster`) is read by anything but
  // this map: its page is shared or the run is referenced more than once.
  // Such a run must not be written in place.
  bool IsShared(uint64_t cluster, const format::MapEntry& entry) const;

  // True if no I/O is in flight on any cluster of [first_cluster,
  // end_cluster) (a page with I/O in flight is pinned, so always cached).
  bool Idle(uint64_t first_cluster, uint64_t end_cluster) const;

  // Changes the number of clusters. Shrinking drops slots past the end;
  // REQUIRES those clusters to be unmapped and idle (the caller frees them).
  void Resize(uint64_t clusters);

  // Drops clean, unpinned pages while the pool-wide budget is exceeded.
  void EvictIfOverBudget();

  // Checkpoint support: writes every dirty page to a fresh block; the old
  // blocks are appended to `superseded`.
  Status WriteDirtyPages(std::vector<BlockRun>* superseded);
  std::vector<Slot>& slots() { return slots_; }
  // Replaces the whole directory (rollback): REQUIRES no dirty or pinned
  // page; drops every cached page.
  void ReplaceDirectory(const std::vector<format::DirectorySlot>& directory, uint64_t clusters);
  std::vector<format::DirectorySlot> Directory() const;
  // Directory slots with a stored page (what releasing the map walks).
  uint64_t StoredPages() const;

 private:
  void Evict(Slot& slot);

  Pool& pool_;
  MapCacheBudget& budget_;
  uint64_t clusters_;
  std::vector<Slot> slots_;
  uint64_t clock_hand_ = 0;  // eviction scan position
};

}  // namespace edgestor
