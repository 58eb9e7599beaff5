#include "volume/snapshot_table.h"

#include <algorithm>
#include <cassert>

namespace edgestor {

SnapshotTable::Snapshot* SnapshotTable::Find(const std::string& volume, const std::string& name) {
  Snapshot* snapshot = FindAny(volume + "@" + name);
  return snapshot && !snapshot->deleting() ? snapshot : nullptr;
}

SnapshotTable::Snapshot* SnapshotTable::FindAny(const std::string& full_name) {
  auto it = snapshots_.find(full_name);
  return it == snapshots_.end() ? nullptr : &it->second;
}

std::string SnapshotTable::NameOf(uint32_t id) const {
  for (const auto& [full, snapshot] : snapshots_)
    if (snapshot.entry.snapshot_id == id) return full;
  return {};
}

SnapshotTable::Snapshot* SnapshotTable::FindById(uint32_t id) {
  for (auto& [full, snapshot] : snapshots_)
    if (snapshot.entry.snapshot_id == id) return &snapshot;
  return nullptr;
}

std::vector<const SnapshotTable::Snapshot*> SnapshotTable::Visible(const std::string& volume) const {
  std::vector<const Snapshot*> found;
  for (const auto& [full, snapshot] : snapshots_)
    if (!snapshot.deleting() && (volume.empty() || snapshot.volume_name == volume)) found.push_back(&snapshot);
  std::sort(found.begin(), found.end(),
            [](const Snapshot* a, const Snapshot* b) { return a->entry.snapshot_id < b->entry.snapshot_id; });
  return found;
}

size_t SnapshotTable::DeletingCount() const {
  return std::count_if(snapshots_.begin(), snapshots_.end(), [](const auto& item) { return item.second.deleting(); });
}

uint32_t SnapshotTable::AnyDeleting() const {
  for (const auto& [full, snapshot] : snapshots_)
    if (snapshot.deleting()) return snapshot.entry.snapshot_id;
  return 0;
}

bool SnapshotTable::Add(Snapshot snapshot, bool new_id) {
  assert(snapshot.view && snapshot.view->read_only() && snapshot.entry.snapshot_id != 0);
  assert(!new_id || snapshot.entry.snapshot_id == next_id_);
  std::string full = snapshot.full_name();
  if (!snapshots_.emplace(full, std::move(snapshot)).second) return false;
  if (new_id) next_id_++;
  return true;
}

void SnapshotTable::Erase(const std::string& full_name) {
  [[maybe_unused]] size_t erased = snapshots_.erase(full_name);
  assert(erased == 1);
}

void SnapshotTable::Hide(const std::string& full_name, const std::string& hidden_name) {
  auto node = snapshots_.extract(full_name);
  assert(!node.empty() && !node.mapped().deleting());
  Snapshot& hidden = node.mapped();
  hidden.entry.flags |= format::kSnapshotDeleting;
  hidden.name = hidden_name;
  node.key() = hidden.full_name();
  [[maybe_unused]] bool inserted = snapshots_.insert(std::move(node)).inserted;
  assert(inserted);
}

}  // namespace edgestor
