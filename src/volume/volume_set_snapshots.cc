// VolumeSetImpl: snapshots, rollback, clones and space accounting.
//
// A snapshot is an immutable copy of a volume's map directory, stored once
// in a side chain; it shares the volume's map pages (and through them the
// data runs) until the volume changes them. Sharing is counted by the pool
// (references per run, rebuilt at open), so every operation here is a
// change of directories committed by one checkpoint:
//   create    the volume's directory (all pages stored by the checkpoint)
//             becomes the snapshot's; each page gains a reference;
//   delete    each page loses one; a page nobody reads any more releases
//             its runs;
//   rollback  the volume takes the snapshot's directory (kept as an
//             automatic snapshot before, unless discarded);
//   clone     a new volume takes the snapshot's directory.
// A crash before the checkpoint's label is durable leaves the previous
// state; after, the new one. Nothing is half-done.
#include <algorithm>
#include <cassert>
#include <cerrno>
#include <chrono>
#include <ctime>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "volume/volume_set_impl.h"

namespace edgestor {

using format::kBlockSize;

namespace {

// How long a snapshot waits for writes in flight before giving up.
constexpr auto kWriteDrainTimeout = std::chrono::seconds(30);

uint64_t NowUnix() { return static_cast<uint64_t>(std::time(nullptr)); }

Status CheckSnapshotName(const std::string& name) {
  if (IsValidVolumeName(name)) return Status::Ok();
  return Status(EINVAL, "invalid snapshot name '" + name + "': use 1-64 of A-Z a-z 0-9 . _ - (not starting with . or -)");
}

// Every snapshot operation takes VOLUME and SNAPSHOT names by the same
// rules, whoever calls (CLI, RPC, tests): names the engine uses internally
// (".deleting-N") are never reachable.
Status CheckSnapshotRef(const std::string& volume, const std::string& name) {
  if (!IsValidVolumeName(volume))
    return Status(EINVAL, "invalid volume name '" + volume + "': use 1-64 of A-Z a-z 0-9 . _ - (not starting with . or -)");
  return CheckSnapshotName(name);
}

}  // namespace

std::vector<ThinVolume*> VolumeSetImpl::AllMapsLocked() {
  std::vector<ThinVolume*> out;
  for (auto& [name, volume] : volumes_) out.push_back(volume.get());
  for (auto& [name, snapshot] : snapshots_) out.push_back(snapshot.view.get());
  return out;
}

Status VolumeSetImpl::RecoverSnapshots(std::vector<SnapshotRecord>& records) {
  for (SnapshotRecord& r : records) {
    ThinVolume* volume = FindById(r.entry.volume_id);
    assert(volume);  // ParseCheckpoint checked it
    std::string full = volume->name() + "@" + r.name;
    Snapshot snapshot;
    auto bytes = pool_->ReadSideChain(r.entry.directory_block, r.entry.directory_gen, format::kSnapshotDirectoryMagic,
                                      &snapshot.directory_chain);
    if (!bytes.ok()) return bytes.status().WithContext("directory of snapshot " + full);
    const bool deleting = r.entry.flags & format::kSnapshotDeleting;
    ES_ASSIGN_OR_RETURN(auto directory,
                        ParseDirectory(bytes.value(), r.entry.directory_slots, pool_->total_blocks(), deleting));
    snapshot.view = MakeVolume(r.entry.snapshot_id, full, r.entry.size, r.attributes);
    snapshot.view->MakeSnapshotView(r.entry);
    snapshot.view->map().ReplaceDirectory(directory, ClustersFor(r.entry.size, pool_->geometry().cluster_size));
    if (!r.attributes.encrypted) ES_RETURN_IF_ERROR(GiveCodec(*snapshot.view, nullptr));
    snapshot.entry = r.entry;
    snapshot.volume_name = volume->name();
    snapshot.name = r.name;
    if (!snapshots_.Add(std::move(snapshot), /*new_id=*/false))
      return Status(EUCLEAN, "the checkpoint names snapshot " + full +
                                 " twice; run `edgestor pool fsck` for a full report");
  }
  return Status::Ok();
}

void VolumeSetImpl::ReferenceDirectory(const std::vector<format::DirectorySlot>& directory) {
  for (const auto& slot : directory) {
    assert(slot.block < pool_->total_blocks());
    if (slot.block != 0) pool_->AddReference(slot.block);
  }
}

Status VolumeSetImpl::ReleaseDirectory(const std::vector<format::DirectorySlot>& directory,
                                       std::vector<BlockRun>* frees, const std::unordered_set<uint64_t>* read_already) {
  assert(frees != nullptr);
  const uint32_t cluster_blocks = pool_->geometry().cluster_size / kBlockSize;
  std::vector<BlockRun> released;
  format::MapPage page;
  for (const auto& slot : directory) {
    if (slot.block == 0) continue;
    assert(slot.block < pool_->total_blocks() && "directories were checked at open or made by the engine");
    bool listed = read_already && read_already->count(slot.block);
    if (!listed && pool_->References(slot.block) == 1) {
      // The last directory reading this page: its runs lose the page's reference.
      ES_RETURN_IF_ERROR(pool_->ReadMapPage(slot.block, slot.generation, &page));
      for (const format::MapEntry& e : page.entries)
        if (e.phys_block != 0) released.push_back(RunOf(e, cluster_blocks));
    }
    released.push_back({slot.block, 1});
  }
  frees->insert(frees->end(), released.begin(), released.end());
  return Status::Ok();
}

Status VolumeSetImpl::AddSnapshotLocked(ThinVolume& source, const std::string& volume_name, const std::string& name,
                                        uint32_t flags) {
  // Taken inside a checkpoint, after the dirty pages were stored: every page
  // the directory names is durable and read by the source (none released).
  for ([[maybe_unused]] const ThinMap::Slot& slot : source.map().slots())
    assert((!slot.page || !slot.page->dirty) && !slot.released);
  assert(!source.read_only() && snapshots_.next_id() != 0);
  std::vector<format::DirectorySlot> directory = source.map().Directory();
  format::SnapshotEntry entry{};
  entry.snapshot_id = snapshots_.next_id();
  entry.volume_id = source.id();
  entry.size = source.size();
  entry.created_unix = NowUnix();
  entry.directory_slots = directory.size();
  entry.flags = flags;
  source.FillSnapshotCounters(&entry);
  format::VolumeAttributes attributes = source.attributes();
  attributes.origin_snapshot = 0;

  Snapshot snapshot;
  snapshot.view = MakeVolume(entry.snapshot_id, volume_name + "@" + name, entry.size, attributes);
  snapshot.view->MakeSnapshotView(entry);
  snapshot.view->map().ReplaceDirectory(directory, source.map().clusters());
  if (!attributes.encrypted) ES_RETURN_IF_ERROR(GiveCodec(*snapshot.view, nullptr));
  else if (key_ring_.unlocked()) ES_RETURN_IF_ERROR(UnlockVolumeLocked(*snapshot.view));
  ES_ASSIGN_OR_RETURN(entry.directory_block, pool_->WriteSideChain(EncodeDirectory(directory),
                                                                   format::kSnapshotDirectoryMagic,
                                                                   &snapshot.directory_chain));
  entry.directory_gen = pool_->next_checkpoint_gen();
  assert(entry.directory_block != 0 && entry.directory_slots == DirectorySlotsFor(entry.size, pool_->geometry().cluster_size));
  snapshot.entry = entry;
  snapshot.volume_name = volume_name;
  snapshot.name = name;
  if (!snapshots_.Add(std::move(snapshot), /*new_id=*/true)) {
    assert(false && "callers check the name is free");
    return Status(EEXIST, "a snapshot named '" + volume_name + "@" + name + "' already exists");
  }
  ReferenceDirectory(directory);
  return Status::Ok();
}

Result<SnapshotInfo> VolumeSetImpl::CreateSnapshot(const std::string& volume_name, const std::string& name) {
  ES_RETURN_IF_ERROR(CheckSnapshotRef(volume_name, name));
  ControlLock control(*this);
  ThinVolume* volume;
  {
    std::lock_guard lock(mu_);
    ES_RETURN_IF_ERROR(CheckUsable());
    volume = FindLocked(volume_name);
    if (!volume) return Status(ENOENT, "no volume named '" + volume_name + "'");
    if (snapshots_.Find(volume_name, name))
      return Status(EEXIST, "a snapshot named '" + volume_name + "@" + name + "' already exists");
    if (snapshots_.size() >= format::kMaxSnapshots) return Status(ENOSPC, "a pool holds at most 65536 snapshots");
    std::lock_guard volume_lock(volume->mutex());
    volume->set_write_barrier(true);
  }
  // An asynchronous write in flight could land in a cluster after the
  // snapshot shares it: wait for them (new writes meanwhile are parked off
  // their threads until the barrier is lowered; one that was counted just
  // as it rose takes the synchronous path, which the checkpoint's locks
  // hold back). No lock is
  // held: a completion may need one for a checkpoint of its own.
  // Once the count has been seen at zero, writes counted later see the
  // barrier before they look at any cluster: they are no reason to refuse.
  auto deadline = std::chrono::steady_clock::now() + kWriteDrainTimeout;
  bool drained = volume->async_writes() == 0;
  while (!drained && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::microseconds(200));
    drained = volume->async_writes() == 0;
  }
  std::lock_guard lock(mu_);
  const uint64_t slots = DirectorySlotsFor(volume->size(), pool_->geometry().cluster_size);
  Status s = !drained
                 ? Status(EBUSY, "writes to volume " + volume_name +
                                  " in flight did not finish within 30 s (is the disk stuck?); no snapshot was "
                                  "taken, nothing changed: try again")
                 : CheckMapBoundsLocked(0, slots);
  if (s.ok()) s = CheckMetadataRoomLocked(Checkpointer::SnapshotNeed(name, slots));
  if (s.ok())
    s = CheckpointLocked({}, nullptr, [&](std::vector<BlockRun>*) {
      return AddSnapshotLocked(*volume, volume_name, name, 0);
    });
  {
    std::lock_guard volume_lock(volume->mutex());
    volume->set_write_barrier(false);
  }
  ES_RETURN_IF_ERROR(s);
  assert(snapshots_.Find(volume_name, name) != nullptr && "the checkpoint added it");
  return SnapshotInfoLocked(*snapshots_.Find(volume_name, name));
}

SnapshotInfo VolumeSetImpl::SnapshotInfoLocked(const Snapshot& snapshot) {
  SnapshotInfo info;
  info.id = snapshot.entry.snapshot_id;
  info.volume = snapshot.volume_name;
  info.name = snapshot.name;
  info.size = snapshot.entry.size;
  info.created_unix = snapshot.entry.created_unix;
  info.automatic = snapshot.entry.flags & format::kSnapshotAutomatic;
  info.referenced_bytes = snapshot.entry.stored_blocks * kBlockSize;
  info.written_bytes = snapshot.entry.written_blocks * kBlockSize;
  auto unique = BlocksFreedWithout({snapshot.view.get()});
  info.used_bytes = unique.ok() ? unique.value() * kBlockSize : 0;
  for (auto& [name, volume] : volumes_) {
    std::lock_guard volume_lock(volume->mutex());
    if (volume->attributes().origin_snapshot == info.id && !IsDeletingVolumeName(name)) info.clones.push_back(name);
  }
  return info;
}

Status VolumeSetImpl::SettleLocked() {
  // Without snapshots nothing is shared: the figures need no settling.
  if (snapshots_.empty() || !pool_->has_pending_frees() || !CheckUsable().ok()) return Status::Ok();
  return CheckpointLocked({});
}

Result<std::vector<SnapshotInfo>> VolumeSetImpl::ListSnapshots(const std::string& volume) {
  std::lock_guard lock(mu_);
  if (!volume.empty() && !FindLocked(volume)) return Status(ENOENT, "no volume named '" + volume + "'");
  // Releases waiting in the journal would make shared runs look shared.
  ES_RETURN_IF_ERROR(SettleLocked());
  std::vector<SnapshotInfo> out;
  for (const Snapshot* snapshot : snapshots_.Visible(volume)) out.push_back(SnapshotInfoLocked(*snapshot));
  return out;
}

Status VolumeSetImpl::DeleteSnapshot(const std::string& volume, const std::string& name) {
  ES_RETURN_IF_ERROR(CheckSnapshotRef(volume, name));
  ControlLock control(*this);
  std::lock_guard lock(mu_);
  ES_RETURN_IF_ERROR(CheckUsable());
  Snapshot* snapshot = snapshots_.Find(volume, name);
  if (!snapshot) return Status(ENOENT, "no snapshot named '" + volume + "@" + name + "'");
  std::string full = volume + "@" + name;
  std::string clones;
  bool clone_being_deleted = false;
  for (auto& [clone_name, clone] : volumes_) {
    std::lock_guard volume_lock(clone->mutex());
    if (clone->attributes().origin_snapshot != snapshot->entry.snapshot_id) continue;
    if (IsDeletingVolumeName(clone_name)) clone_being_deleted = true;
    else clones += (clones.empty() ? "" : ", ") + clone_name;
  }
  if (clones.empty() && clone_being_deleted)
    return Status(EBUSY, "snapshot " + full + " has a deleted clone whose space is still being released; try again "
                             "shortly");
  if (!clones.empty())
    return Status(EBUSY, "snapshot " + full + " has clones (" + clones +
                             "); flatten them first (`edgestor vol flatten CLONE`) or delete them");
  uint64_t own_pages = 0;
  {
    std::lock_guard view_lock(snapshot->view->mutex());
    if (snapshot->view->inflight()) return Status(EBUSY, "snapshot " + full + " is being read (exported?)");
    for (const ThinMap::Slot& slot : snapshot->view->map().slots())
      own_pages += slot.block != 0 && pool_->References(slot.block) == 1;
  }
  // Releasing means reading every page only this snapshot reads: for many
  // pages that goes to the background, after the snapshot is hidden.
  if (own_pages > background_delete_pages_) return HideForDeletionLocked(*snapshot);
  return CheckpointLocked({}, nullptr, [&](std::vector<BlockRun>* frees) {
    ES_RETURN_IF_ERROR(ReleaseDirectory(snapshot->view->map().Directory(), frees));
    frees->insert(frees->end(), snapshot->directory_chain.begin(), snapshot->directory_chain.end());
    snapshots_.Erase(full);
    return Status::Ok();
  });
}

Status VolumeSetImpl::HideForDeletionLocked(Snapshot& snapshot) {
  ES_RETURN_IF_ERROR(CheckpointLocked({}, nullptr, [&](std::vector<BlockRun>*) {
    snapshots_.Hide(snapshot.full_name(), DeletingSnapshotName(snapshot.entry.snapshot_id));
    return Status::Ok();
  }));
  StartReclaimerLocked();
  return Status::Ok();
}

void VolumeSetImpl::StartReclaimerLocked() {
  if (reclaimer_running_ || stop_reclaimer_) return;
  if (reclaimer_.joinable()) reclaimer_.join();  // finished: it let go of mu_ for good
  reclaimer_running_ = true;
  reclaimer_ = std::thread([this] { ReclaimLoop(); });
}

void VolumeSetImpl::ReclaimLoop() {
  while (!stop_reclaimer_) {
    uint32_t victim = 0;
    std::string volume_victim;
    {
      std::lock_guard lock(mu_);
      victim = snapshots_.AnyDeleting();
      for (auto& [name, volume] : volumes_)
        if (IsDeletingVolumeName(name)) volume_victim = name;
      if ((victim == 0 && volume_victim.empty()) || !CheckUsable().ok()) break;
    }
    // A failure leaves the snapshot or volume hidden; the next open resumes.
    Status s = volume_victim.empty() ? ReclaimOne(victim) : ReleaseVolumeStep(volume_victim);
    if (!s.ok()) {
      std::lock_guard lock(mu_);
      if (s.code() != ECANCELED)
        reclaim_error_ = s.message() + "; the space is released when the pool is next opened (check the disk, "
                                       "then restart the daemon or run `edgestor pool fsck`)";
      break;
    }
  }
  std::lock_guard lock(mu_);
  reclaimer_running_ = false;  // the last time this thread takes mu_
}

Status VolumeSetImpl::ReclaimOne(uint32_t snapshot_id) {
  std::vector<format::DirectorySlot> directory;
  {
    std::lock_guard lock(mu_);
    Snapshot* snapshot = snapshots_.FindById(snapshot_id);
    // Only the reclaimer removes a hidden snapshot.
    assert(snapshot && snapshot->deleting());
    if (!snapshot) return Status(ENOENT, "snapshot " + std::to_string(snapshot_id) + " is gone");
    std::lock_guard view_lock(snapshot->view->mutex());
    directory = snapshot->view->map().Directory();
  }
  // One step releases the last `release_step_pages_` stored pages of the
  // directory, so memory stays bounded however large the snapshot.
  uint64_t keep = directory.size();
  for (uint64_t stored = 0; keep > 0; keep--) {
    if (directory[keep - 1].block == 0) continue;
    if (stored == release_step_pages_) break;
    stored++;
  }
  // Every step makes progress (release_step_pages_ >= 1).
  assert(release_step_pages_ >= 1 && (keep < directory.size() || directory.empty()));
  std::vector<format::DirectorySlot> step(directory.begin() + keep, directory.end());
  directory.resize(keep);
  // Hidden, the snapshot's own pages gain no reader: read them unlocked.
  const uint32_t cluster_blocks = pool_->geometry().cluster_size / kBlockSize;
  std::vector<BlockRun> runs;
  std::unordered_set<uint64_t> read;
  format::MapPage page;
  for (const auto& slot : step) {
    if (stop_reclaimer_) return Status(ECANCELED, "pool closing");
    if (slot.block == 0 || pool_->References(slot.block) != 1) continue;
    ES_RETURN_IF_ERROR(pool_->ReadMapPage(slot.block, slot.generation, &page));
    for (const format::MapEntry& e : page.entries)
      if (e.phys_block != 0) runs.push_back(RunOf(e, cluster_blocks));
    read.insert(slot.block);
  }
  std::lock_guard lock(mu_);
  ES_RETURN_IF_ERROR(CheckUsable());
  return CheckpointLocked({}, nullptr, [&](std::vector<BlockRun>* frees) {
    Snapshot* found = snapshots_.FindById(snapshot_id);
    assert(found && found->deleting());
    if (!found) return Status(ENOENT, "snapshot " + std::to_string(snapshot_id) + " is gone");
    Snapshot& snapshot = *found;
    // Pages shared when read above may be this snapshot's alone by now.
    ES_RETURN_IF_ERROR(ReleaseDirectory(step, frees, &read));
    frees->insert(frees->end(), runs.begin(), runs.end());
    if (keep > 0) {
      // The hidden snapshot now describes only its first `keep` pages. Its
      // chain stays as it is (a snapshot being deleted may have a longer
      // chain than it reads) until the last step frees it.
      uint64_t size = keep * format::kEntriesPerMapPage * pool_->geometry().cluster_size;
      assert((snapshot.entry.flags & format::kSnapshotDeleting) && size > 0 && size < snapshot.entry.size);
      snapshot.entry.size = size;
      snapshot.entry.directory_slots = keep;
      std::lock_guard view_lock(snapshot.view->mutex());
      snapshot.view->TruncateView(directory, size);
      return Status::Ok();
    }
    frees->insert(frees->end(), snapshot.directory_chain.begin(), snapshot.directory_chain.end());
    snapshots_.Erase(snapshot.full_name());
    return Status::Ok();
  });
}

void VolumeSetImpl::StopReclaimer() {
  stop_reclaimer_ = true;
  if (reclaimer_.joinable()) reclaimer_.join();
}

void VolumeSetImpl::WaitForBackgroundDeletes() {
  for (;;) {
    {
      std::lock_guard lock(mu_);
      if (!reclaimer_running_) return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

Result<std::string> VolumeSetImpl::Rollback(const std::string& volume_name, const std::string& snapshot_name,
                                            bool keep_current) {
  ES_RETURN_IF_ERROR(CheckSnapshotRef(volume_name, snapshot_name));
  ControlLock control(*this);
  std::lock_guard lock(mu_);
  ES_RETURN_IF_ERROR(CheckUsable());
  ThinVolume* volume = FindLocked(volume_name);
  if (!volume) return Status(ENOENT, "no volume named '" + volume_name + "'");
  Snapshot* target = snapshots_.Find(volume_name, snapshot_name);
  if (!target) return Status(ENOENT, "no snapshot named '" + volume_name + "@" + snapshot_name + "'");
  std::string kept;
  if (keep_current) {
    std::string base = "rollback-" + std::to_string(NowUnix());
    kept = base;
    for (int n = 2; snapshots_.Find(volume_name, kept); n++) kept = base + "-" + std::to_string(n);
    if (snapshots_.size() >= format::kMaxSnapshots) return Status(ENOSPC, "a pool holds at most 65536 snapshots");
  }
  ThinVolume& view = *target->view;
  const uint32_t cluster_size = pool_->geometry().cluster_size;
  uint64_t current_slots = DirectorySlotsFor(volume->size(), cluster_size);
  uint64_t target_slots = DirectorySlotsFor(view.size(), cluster_size);
  MetadataNeed need = keep_current ? Checkpointer::SnapshotNeed(kept, current_slots)
                                   : MetadataNeed{0, 0, Checkpointer::kControlSlackBlocks};
  if (target_slots > current_slots) {
    need.payload_bytes += (target_slots - current_slots) * sizeof(format::DirectorySlot);
    ES_RETURN_IF_ERROR(CheckMapBoundsLocked(target_slots - current_slots,
                                            target_slots - current_slots + (keep_current ? current_slots : 0)));
  } else if (keep_current) {
    ES_RETURN_IF_ERROR(CheckMapBoundsLocked(0, current_slots));
  }
  ES_RETURN_IF_ERROR(CheckMetadataRoomLocked(need));
  ES_RETURN_IF_ERROR(CheckpointLocked({}, nullptr, [&](std::vector<BlockRun>* frees) {
    if (volume->inflight()) return Status(EBUSY, "volume " + volume_name + " has I/O in flight; detach it first");
    std::vector<format::DirectorySlot> current = volume->map().Directory();
    if (keep_current) ES_RETURN_IF_ERROR(AddSnapshotLocked(*volume, volume_name, kept, format::kSnapshotAutomatic));
    // With the automatic snapshot reading every current page, this drops
    // references only (no page is read, nothing can fail).
    std::vector<BlockRun> released;
    ES_RETURN_IF_ERROR(ReleaseDirectory(current, &released));
    ReferenceDirectory(view.map().Directory());
    volume->TakeContentOf(view);
    assert(volume->size() == view.size());
    frees->insert(frees->end(), released.begin(), released.end());
    return Status::Ok();
  }));
  return kept;
}

Result<Volume*> VolumeSetImpl::CloneSnapshot(const std::string& volume_name, const std::string& snapshot_name,
                                             const std::string& clone_name) {
  ES_RETURN_IF_ERROR(CheckSnapshotRef(volume_name, snapshot_name));
  if (!IsValidVolumeName(clone_name))
    return Status(EINVAL, "invalid volume name '" + clone_name + "': use 1-64 of A-Z a-z 0-9 . _ - (not starting with . or -)");
  ControlLock control(*this);
  std::lock_guard lock(mu_);
  ES_RETURN_IF_ERROR(CheckUsable());
  Snapshot* origin = snapshots_.Find(volume_name, snapshot_name);
  if (!origin) return Status(ENOENT, "no snapshot named '" + volume_name + "@" + snapshot_name + "'");
  if (FindLocked(clone_name)) return Status(EEXIST, "a volume named '" + clone_name + "' already exists");
  if (volumes_.size() >= format::kMaxVolumes) return Status(ENOSPC, "a pool holds at most 4096 volumes");
  ThinVolume& view = *origin->view;
  const uint64_t slots = DirectorySlotsFor(view.size(), pool_->geometry().cluster_size);
  ES_RETURN_IF_ERROR(CheckMapBoundsLocked(slots, slots));
  ES_RETURN_IF_ERROR(CheckMetadataRoomLocked(Checkpointer::VolumeNeed(clone_name, slots)));
  format::VolumeAttributes attributes = view.attributes();
  attributes.origin_snapshot = origin->entry.snapshot_id;  // same data key: the clone reads the shared data
  ThinVolume* created = nullptr;
  ES_RETURN_IF_ERROR(CheckpointLocked({}, nullptr, [&](std::vector<BlockRun>*) {
    auto clone = MakeVolume(next_volume_id_, clone_name, view.size(), attributes);
    if (!attributes.encrypted) ES_RETURN_IF_ERROR(GiveCodec(*clone, nullptr));
    else if (key_ring_.unlocked()) ES_RETURN_IF_ERROR(UnlockVolumeLocked(*clone));
    clone->TakeContentOf(view);
    assert(clone->size() == view.size() && clone->attributes().origin_snapshot != 0);
    ReferenceDirectory(view.map().Directory());
    next_volume_id_++;
    created = clone.get();
    volumes_.emplace(clone_name, std::move(clone));
    return Status::Ok();
  }));
  return static_cast<Volume*>(created);
}

Result<uint64_t> VolumeSetImpl::FlattenVolume(const std::string& name, const ProgressFn& progress) {
  ControlLock control(*this);  // the volume cannot be deleted meanwhile
  ThinVolume* volume;
  {
    std::lock_guard lock(mu_);
    ES_RETURN_IF_ERROR(CheckUsable());
    volume = FindLocked(name);
    if (!volume) return Status(ENOENT, "no volume named '" + name + "'");
    std::lock_guard volume_lock(volume->mutex());
    if (volume->attributes().origin_snapshot == 0) return Status(EINVAL, "volume " + name + " is not a clone");
    for (auto& [full, snapshot] : snapshots_)
      if (snapshot.entry.volume_id == volume->id())
        return Status(EBUSY, "clone " + name + " has snapshots of its own, which share its origin's data; delete "
                             "them before flattening it");
  }
  ES_ASSIGN_OR_RETURN(uint64_t copied, volume->CopySharedClusters(progress));
  std::lock_guard lock(mu_);
  ES_RETURN_IF_ERROR(CheckpointLocked({}, nullptr, [&](std::vector<BlockRun>*) {
    volume->mutable_attributes().origin_snapshot = 0;
    return Status::Ok();
  }));
  return copied;
}

Result<uint64_t> VolumeSetImpl::BlocksFreedWithout(const std::vector<ThinVolume*>& maps) {
  const uint32_t cluster_blocks = pool_->geometry().cluster_size / kBlockSize;
  struct Run {
    uint32_t references = 0;  // from the dropped pages
    uint32_t blocks = 0;
  };
  std::unordered_map<uint64_t, Run> runs;
  auto count_page = [&](const format::MapEntry* entries) {
    for (uint32_t i = 0; i < format::kEntriesPerMapPage; i++) {
      if (entries[i].phys_block == 0) continue;
      Run& run = runs[format::FirstBlock(entries[i])];
      run.references++;
      run.blocks = static_cast<uint32_t>(format::ChargedBlocks(entries[i], cluster_blocks));
    }
  };
  // Stored pages: read by how many of `maps` (a page others read too stays).
  std::unordered_map<uint64_t, std::pair<uint32_t, uint64_t>> pages;  // block -> (readers, generation)
  for (ThinVolume* map : maps) {
    std::lock_guard lock(map->mutex());
    for (const ThinMap::Slot& slot : map->map().slots()) {
      if (slot.page && slot.page->dirty) count_page(slot.page->entries);  // its own copy
      else if (slot.block != 0) {
        auto& page = pages[slot.block];
        page.first++;
        page.second = slot.generation;
      }
    }
  }
  format::MapPage page;
  for (auto& [block, readers] : pages) {
    if (readers.first != pool_->References(block)) continue;
    ES_RETURN_IF_ERROR(pool_->ReadMapPage(block, readers.second, &page));
    count_page(page.entries);
  }
  uint64_t freed = 0;
  for (auto& [block, run] : runs)
    if (run.references == pool_->References(block)) freed += run.blocks;
  return freed;
}

Status VolumeSetImpl::FillSharingInfo(ThinVolume& volume, VolumeInfo* info) {
  std::vector<ThinVolume*> maps;  // without snapshots being deleted: their space is on its way out
  for (auto& [full, snapshot] : snapshots_)
    if (snapshot.entry.volume_id == volume.id() && !(snapshot.entry.flags & format::kSnapshotDeleting))
      maps.push_back(snapshot.view.get());
  info->snapshot_count = static_cast<uint32_t>(maps.size());
  if (maps.empty() && pool_->shared_runs() == 0) {
    // No snapshots and nothing in the pool shared: everything the volume
    // maps is its own (and no page needs reading to say so).
    info->used_by_snapshots_bytes = 0;
    info->used_bytes = info->allocated_bytes;
    return Status::Ok();
  }
  ES_ASSIGN_OR_RETURN(uint64_t by_snapshots, BlocksFreedWithout(maps));
  maps.push_back(&volume);
  ES_ASSIGN_OR_RETURN(uint64_t all, BlocksFreedWithout(maps));
  info->used_by_snapshots_bytes = by_snapshots * kBlockSize;
  info->used_bytes = all * kBlockSize;
  uint32_t origin;
  {
    std::lock_guard lock(volume.mutex());
    origin = volume.attributes().origin_snapshot;
  }
  if (origin) info->origin = snapshots_.NameOf(origin);
  return Status::Ok();
}

Status VolumeSetImpl::CheckReferencesForTest() {
  std::lock_guard lock(mu_);
  ES_RETURN_IF_ERROR(CheckpointLocked({}));  // every page stored, every release applied
  std::unordered_map<uint64_t, uint32_t> expected;
  std::unordered_map<uint64_t, std::string> readers;
  std::unordered_set<uint64_t> counted;
  format::MapPage page;
  for (ThinVolume* map : AllMapsLocked()) {
    std::lock_guard map_lock(map->mutex());
    for (const ThinMap::Slot& slot : map->map().slots()) {
      if (slot.block == 0) continue;
      expected[slot.block]++;
      if (!counted.insert(slot.block).second) continue;
      ES_RETURN_IF_ERROR(pool_->ReadMapPage(slot.block, slot.generation, &page));
      for (const format::MapEntry& e : page.entries) {
        if (e.phys_block == 0) continue;
        expected[format::FirstBlock(e)]++;
        readers[format::FirstBlock(e)] += map->name() + " (page " + std::to_string(slot.block) + ") ";
      }
    }
  }
  for (auto& [block, references] : expected)
    if (pool_->References(block) != references)
      return Status(EUCLEAN, "block " + std::to_string(block) + " (mapped by " + readers[block] + ") has " +
                                 std::to_string(pool_->References(block)) + " references, the maps make " +
                                 std::to_string(references));
  return Status::Ok();
}

Result<std::vector<BlockRun>> VolumeSetImpl::MappedRunsForTest(const std::string& name) {
  std::lock_guard lock(mu_);
  ThinVolume* map = FindLocked(name);
  if (Snapshot* snapshot = snapshots_.FindAny(name)) map = snapshot->view.get();
  if (!map) return Status(ENOENT, "no volume or snapshot named '" + name + "'");
  const uint32_t cluster_blocks = pool_->geometry().cluster_size / kBlockSize;
  std::lock_guard map_lock(map->mutex());
  std::vector<BlockRun> runs;
  for (uint64_t c = 0; c < map->map().clusters(); c++) {
    ES_ASSIGN_OR_RETURN(CachedPage * page, map->map().Page(c, /*create=*/false));
    if (!page) continue;
    const format::MapEntry& e = page->entries[ThinMap::IndexInPage(c)];
    if (e.phys_block != 0) runs.push_back(RunOf(e, cluster_blocks));
  }
  return runs;
}

}  // namespace edgestor
