// SnapshotTable: the pool's snapshots, by "VOL@SNAP": each one's read-only
// view over its directory, where that directory is stored, its accounting
// as taken, and the ids snapshots get. A snapshot being deleted in the
// background is hidden (flagged, under the internal name ".deleting-ID")
// until the reclaimer has released it; lookups by a user's name never see
// it.
//
// Not thread-safe: VolumeSetImpl's mutex guards it. What a snapshot does
// (create, delete, rollback, clone, their checkpoints and the reclaimer)
// is in volume_set_snapshots.cc; this is the table they change.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "pool/format.h"
#include "pool/pool.h"
#include "volume/thin_volume.h"

namespace edgestor {

class SnapshotTable {
 public:
  struct Snapshot {
    std::unique_ptr<ThinVolume> view;
    format::SnapshotEntry entry{};  // location, accounting, flags
    std::string volume_name;
    std::string name;
    std::vector<BlockRun> directory_chain;

    std::string full_name() const { return volume_name + "@" + name; }
    bool deleting() const { return entry.flags & format::kSnapshotDeleting; }
  };
  using Map = std::map<std::string, Snapshot>;

  // Every snapshot, hidden ones included, in name order.
  Map::iterator begin() { return snapshots_.begin(); }
  Map::iterator end() { return snapshots_.end(); }
  Map::const_iterator begin() const { return snapshots_.begin(); }
  Map::const_iterator end() const { return snapshots_.end(); }
  size_t size() const { return snapshots_.size(); }
  bool empty() const { return snapshots_.empty(); }

  // VOLUME@NAME, unless it is being deleted; nullptr if there is none.
  Snapshot* Find(const std::string& volume, const std::string& name);
  // By full name, hidden ones included.
  Snapshot* FindAny(const std::string& full_name);
  // The full name of snapshot `id`, or "" if there is none.
  std::string NameOf(uint32_t id) const;
  Snapshot* FindById(uint32_t id);  // hidden ones included
  // The visible snapshots of `volume` (all volumes if empty), oldest first.
  std::vector<const Snapshot*> Visible(const std::string& volume) const;
  size_t DeletingCount() const;
  // A hidden snapshot's id, or 0 if none is left to release.
  uint32_t AnyDeleting() const;

  // Ids: the next one a snapshot gets (stored in every checkpoint).
  uint32_t next_id() const { return next_id_; }
  void set_next_id(uint32_t id) { next_id_ = id; }
  // A new snapshot takes the next id (`new_id`); recovery adds stored ones
  // with their own. False if the name is taken (damaged metadata: the
  // engine never makes two).
  bool Add(Snapshot snapshot, bool new_id);
  void Erase(const std::string& full_name);
  // Hides `full_name` for background deletion under `hidden_name`.
  void Hide(const std::string& full_name, const std::string& hidden_name);

 private:
  Map snapshots_;
  uint32_t next_id_ = 1;
};

}  // namespace edgestor
