// VolumeSetImpl: volume table, recovery, control operations, checkpoints.
#include "volume/volume_set_impl.h"

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <cstring>
#include <set>
#include <unordered_set>

namespace edgestor {

using format::kBlockSize;

namespace {

// Bytes of memory one cached map page costs (page, in-flight counters and
// allocation overhead); converts the budget from bytes to pages.
constexpr uint64_t kCachedPageCost = sizeof(CachedPage) + 64;
constexpr uint64_t kMinCachedPages = 64;
// Bounds on the maps, whatever the pool size. Every checkpoint writes every
// volume's directory (16 bytes per map page of 255 clusters), and every
// directory slot of a volume or snapshot costs sizeof(ThinMap::Slot) of
// memory: 4 Mi slots are a 64 MiB checkpoint payload and describe 68 TB of
// volumes at 64 KiB clusters; 16 Mi slots in memory are 512 MiB.
constexpr uint64_t kMaxVolumeDirectorySlots = 4ull << 20;
constexpr uint64_t kMaxMapSlotsInMemory = 16ull << 20;

}  // namespace

uint64_t VolumeSetImpl::PayloadBytesLocked() {
  uint64_t bytes = Checkpointer::EmptyPayloadBytes();
  const uint32_t cluster_size = pool_->geometry().cluster_size;
  for (auto& [name, volume] : volumes_)
    bytes += Checkpointer::VolumePayloadBytes(name.size(), DirectorySlotsFor(volume->size(), cluster_size));
  for (auto& [full, snapshot] : snapshots_) bytes += Checkpointer::SnapshotPayloadBytes(snapshot.name.size());
  return bytes;
}

Status VolumeSetImpl::CheckMetadataRoomLocked(const MetadataNeed& need) {
  return checkpointer_.CheckMetadataRoom(PayloadBytesLocked(), need);
}

Status VolumeSetImpl::CheckMapBoundsLocked(uint64_t more_volume_slots, uint64_t more_slots) {
  const uint32_t cluster_size = pool_->geometry().cluster_size;
  uint64_t volume_slots = 0, all_slots = 0;
  for (auto& [name, volume] : volumes_) volume_slots += DirectorySlotsFor(volume->size(), cluster_size);
  for (auto& [full, snapshot] : snapshots_) all_slots += snapshot.entry.directory_slots;
  all_slots += volume_slots;
  auto describable = [&](uint64_t slots) {
    return std::to_string((slots * format::kEntriesPerMapPage * cluster_size) >> 30) + " GiB";
  };
  if (volume_slots + more_volume_slots > kMaxVolumeDirectorySlots)
    return Status(EFBIG, "volumes this large cannot be described: a pool with " +
                             std::to_string(cluster_size / 1024) + " KiB clusters holds at most " +
                             describable(kMaxVolumeDirectorySlots) + " of volume sizes in all (" +
                             describable(volume_slots) + " are in use; every checkpoint writes each volume's map "
                             "directory); nothing was changed");
  if (all_slots + more_slots > kMaxMapSlotsInMemory)
    return Status(EFBIG, "the maps of all volumes and snapshots would need more than " +
                             std::to_string(kMaxMapSlotsInMemory * sizeof(ThinMap::Slot) >> 20) +
                             " MiB of memory; delete snapshots of large volumes first; nothing was changed");
  return Status::Ok();
}

VolumeSetImpl::VolumeSetImpl(std::unique_ptr<Pool> pool, const PoolOpenOptions& options)
    : pool_(std::move(pool)), recompress_idle_ms_(options.recompress_idle_ms) {
  budget_.max_pages = std::max(kMinCachedPages, options.map_cache_bytes / kCachedPageCost);
  assert(budget_.max_pages >= kMinCachedPages && budget_.cached_pages == 0);
  codec_pool_ = std::make_unique<CodecPool>(
      options.codec_workers < 0 ? CodecPool::DefaultWorkers() : static_cast<unsigned>(options.codec_workers));
  committer_ = std::make_unique<Committer>([this] { return Flush(); }, [this] { CheckpointIfNeeded(); });
  services_.emplace(VolumeServices{*pool_, budget_, *committer_, *codec_pool_, *this, options.hot_plain_clusters});
}

std::unique_ptr<ThinVolume> VolumeSetImpl::MakeVolume(uint32_t id, std::string name, uint64_t size,
                                                      const format::VolumeAttributes& attributes) {
  return std::make_unique<ThinVolume>(*services_, id, std::move(name), size, attributes);
}

VolumeSetImpl::~VolumeSetImpl() {
  StopRecompressor();
  committer_->Stop();
  // No I/O here (beyond a background deletion's step finishing): without
  // Close() this is a crash, as the tests intend.
  StopReclaimer();
  std::lock_guard lock(mu_);
  volumes_.clear();
}

Result<std::unique_ptr<VolumeSet>> VolumeSet::Create(std::unique_ptr<Device> device, const PoolCreateOptions& options,
                                                     const PoolOpenOptions& open_options) {
  ES_ASSIGN_OR_RETURN(auto keys, KeyRing::NewKeyProtection(options.secret, options.kdf));
  if (options.encrypt_by_default && !keys.second)
    return Status(EINVAL, "encrypting volumes by default needs a pool key (--keyfile or --passphrase-file)");
  FormatOptions format_options{.cluster_size = options.cluster_size,
                               .journal_bytes = options.journal_bytes,
                               .keys = keys.first,
                               .force = options.force,
                               .preallocate = options.preallocate};
  ES_ASSIGN_OR_RETURN(std::unique_ptr<Pool> pool, Pool::Format(std::move(device), format_options));
  auto set = std::make_unique<VolumeSetImpl>(std::move(pool), open_options);
  format::PoolDefaults defaults{};
  defaults.encrypt = options.encrypt_by_default;
  defaults.compression = static_cast<uint8_t>(options.compression.algorithm);
  defaults.compression_level = static_cast<uint8_t>(options.compression.level);
  set->SetCreatedState(std::move(keys.second), defaults);
  ES_RETURN_IF_ERROR(set->Recover(nullptr));
  set->StartRecompressor();
  return std::unique_ptr<VolumeSet>(std::move(set));
}

Result<std::unique_ptr<VolumeSet>> VolumeSet::Open(std::unique_ptr<Device> device, const PoolOpenOptions& options) {
  ES_ASSIGN_OR_RETURN(std::unique_ptr<Pool> pool, Pool::Open(std::move(device)));
  auto set = std::make_unique<VolumeSetImpl>(std::move(pool), options);
  // A wrong key fails here, before recovery writes anything.
  std::optional<PoolKey> key;
  if (!options.secret.empty()) {
    ES_ASSIGN_OR_RETURN(key, set->DeriveKey(options.secret));
  }
  ES_RETURN_IF_ERROR(set->Recover(nullptr));
  if (key) ES_RETURN_IF_ERROR(set->Unlock(options.secret));
  set->StartRecompressor();
  return std::unique_ptr<VolumeSet>(std::move(set));
}

Status VolumeSetImpl::Recover(FsckReport* report) {
  std::lock_guard lock(mu_);
  assert(volumes_.empty() && snapshots_.empty() && "recovery runs once, on an empty set");
  Status first_problem;
  auto problem = [&](const std::string& what) {
    if (report) report->problems.push_back(what);
    else if (first_problem.ok()) first_problem = Status(EUCLEAN, what + "; run `edgestor pool fsck` for a full report");
  };

  ES_ASSIGN_OR_RETURN(std::vector<uint8_t> payload, pool_->ReadCheckpointPayload());
  ES_ASSIGN_OR_RETURN(CheckpointContents contents,
                      ParseCheckpoint(payload, pool_->format_version(), pool_->geometry().cluster_size,
                                      pool_->total_blocks()));
  next_volume_id_ = contents.next_volume_id;
  if (!payload.empty()) defaults_ = contents.defaults;  // a new pool keeps what Create set
  for (VolumeRecord& v : contents.volumes) {
    auto volume = MakeVolume(v.id, v.name, v.size, v.attributes);
    if (v.attributes.encrypted && !key_ring_.pool_has_key())
      problem("volume " + v.name + " is encrypted but the pool has no key");
    else if (!v.attributes.encrypted) ES_RETURN_IF_ERROR(GiveCodec(*volume, nullptr));
    // ParseCheckpoint checked the directory length against the size.
    assert(v.directory.size() == volume->map().slots().size());
    for (size_t s = 0; s < v.directory.size(); s++) {
      volume->map().slots()[s].block = v.directory[s].block;
      volume->map().slots()[s].generation = v.directory[s].generation;
    }
    volumes_.emplace(v.name, std::move(volume));
  }
  snapshots_.set_next_id(contents.next_snapshot_id);
  ES_RETURN_IF_ERROR(RecoverSnapshots(contents.snapshots));

  auto replayed = pool_->ReplayJournal([&](format::RecordType type, std::span<const uint8_t> body) -> Status {
    format::MapSetRecord r;
    if (type != format::RecordType::kMapSet || body.size() != sizeof r)
      return Status(EUCLEAN, "journal holds an unknown record type " + std::to_string(static_cast<int>(type)));
    std::memcpy(&r, body.data(), sizeof r);
    ThinVolume* volume = FindById(r.volume_id);
    if (!volume) return Status(EUCLEAN, "journal names unknown volume id " + std::to_string(r.volume_id));
    return volume->ReplayMapSet(r.cluster, r.entry);
  });
  if (!replayed.ok()) return replayed.status();
  if (report) {
    report->notes.push_back("journal: " + std::to_string(replayed.value()) + " records to replay");
    report->volumes = volumes_.size();
  }

  // References: each stored page once per directory reading it; each run
  // once per distinct page mapping it (a stored page however many
  // directories share it, plus every page replay changed in memory).
  std::unordered_set<uint64_t> counted_pages;
  for (auto& [name, volume] : volumes_) ES_RETURN_IF_ERROR(volume->MarkReferencedSpace(&counted_pages, problem));
  for (auto& [name, snapshot] : snapshots_)
    ES_RETURN_IF_ERROR(snapshot.view->MarkReferencedSpace(&counted_pages, problem));
  for (auto& [name, volume] : volumes_) volume->MarkDivergedPages(problem);
  pool_->FinishRecovery();
  if (!first_problem.ok()) return first_problem;
  uint64_t slots = 0;
  for (auto& [name, volume] : volumes_) slots += volume->map().slots().size();
  // Snapshots join the reserve from the first checkpoint on.
  checkpointer_.Checkpointed(slots, /*snapshot_count=*/0);
  checkpointer_.UpdateMetadataReserve();
  if (report) return Status::Ok();  // fsck never writes
  // A fresh checkpoint generation makes any journal block written before
  // the crash (valid or torn) stale for good.
  ES_RETURN_IF_ERROR(CheckpointLocked({}));
  for (auto& [name, snapshot] : snapshots_)
    if (snapshot.entry.flags & format::kSnapshotDeleting) StartReclaimerLocked();
  for (auto& [name, volume] : volumes_)
    if (IsDeletingVolumeName(name)) StartReclaimerLocked();
  return Status::Ok();
}

ThinVolume* VolumeSetImpl::FindById(uint32_t id) {
  for (auto& [name, volume] : volumes_)
    if (volume->id() == id) return volume.get();
  return nullptr;
}

ThinVolume* VolumeSetImpl::FindLocked(const std::string& name) {
  auto it = volumes_.find(name);
  // A volume being deleted in the background is gone for every caller.
  if (it == volumes_.end() || IsDeletingVolumeName(name)) return nullptr;
  return it->second.get();
}

Status VolumeSetImpl::CheckUsable() const {
  if (closed_) return Status(EBADF, "pool is closed");
  if (failed_ || pool_->is_failed()) return Status(EIO, "pool stopped after a device error; reopen it to recover");
  return Status::Ok();
}

Status VolumeSetImpl::Close() {
  // What it did not reach is found again when next written in place.
  StopRecompressor();
  StopReclaimer();  // an unfinished background deletion resumes at the next open
  Status s = CheckpointAndClose();
  // The pool stays open: its recompression goes on.
  if (!s.ok() && !closed_) StartRecompressor();
  return s;
}

Status VolumeSetImpl::CheckpointAndClose() {
  std::lock_guard lock(mu_);
  ES_RETURN_IF_ERROR(CheckUsable());
  for (auto& [name, volume] : volumes_)
    if (volume->inflight()) return Status(EBUSY, "volume " + name + " has I/O in flight");
  ES_RETURN_IF_ERROR(CheckpointLocked({}));
  closed_ = true;
  return Status::Ok();
}

PoolInfo VolumeSetImpl::Info() {
  std::lock_guard lock(mu_);
  PoolInfo info;
  const PoolGeometry& g = pool_->geometry();
  info.uuid = pool_->uuid();
  info.device_bytes = g.device_bytes;
  info.cluster_size = g.cluster_size;
  info.data_bytes = (g.total_blocks - g.journal_start - g.journal_blocks - 2) * kBlockSize;
  info.free_bytes = pool_->free_blocks() * kBlockSize;
  info.shared_edge_blocks = pool_->shared_edge_blocks();
  // Labels and journal are always in use.
  assert(info.free_bytes <= info.data_bytes);
  info.allocated_bytes = info.data_bytes - info.free_bytes;
  info.journal_bytes = g.journal_blocks * kBlockSize;
  info.checkpoint_generation = pool_->checkpoint_gen();
  for (auto& [name, volume] : volumes_) {
    if (!IsDeletingVolumeName(name)) {
      info.volume_count++;
      continue;
    }
    info.volumes_being_deleted++;
    std::lock_guard volume_lock(volume->mutex());
    info.background_delete_pages += volume->map().StoredPages();
  }
  for (auto& [full, snapshot] : snapshots_) {
    if (!snapshot.deleting()) continue;
    std::lock_guard view_lock(snapshot.view->mutex());
    info.background_delete_pages += snapshot.view->map().StoredPages();
  }
  info.format_version = format::kVersion;
  uint32_t source = pool_->key_protection().source;
  info.key_source = source == format::kKeySourceNone      ? "none"
                    : source == format::kKeySourceKeyFile ? "key file"
                                                          : "passphrase";
  info.locked = key_ring_.locked();
  info.encrypt_by_default = defaults_.encrypt;
  info.default_compression = {static_cast<Compression>(defaults_.compression), defaults_.compression_level};
  info.snapshots_being_deleted = snapshots_.DeletingCount();
  info.snapshot_count = snapshots_.size() - info.snapshots_being_deleted;
  info.background_delete_error = reclaim_error_;
  info.cached_map_pages = budget_.cached_pages;
  info.map_cache_limit_pages = budget_.max_pages;
  info.map_cache_hits = budget_.hits.load(std::memory_order_relaxed);
  info.map_cache_misses = budget_.misses.load(std::memory_order_relaxed);
  info.map_page_async_loads = budget_.async_loads.load(std::memory_order_relaxed);
  info.group_commits = committer_->commits();
  info.group_commit_waiters = committer_->waiters_served();
  info.group_commit_ns_total = committer_->commit_ns_total();
  info.group_commit_ns_max = committer_->commit_ns_max();
  info.checkpoints = checkpoints_.load(std::memory_order_relaxed);
  info.checkpoint_ns_total = checkpoint_ns_total_.load(std::memory_order_relaxed);
  info.checkpoint_ns_max = checkpoint_ns_max_.load(std::memory_order_relaxed);
  info.journal_used_bytes = std::min(pool_->JournalUsedBlocks(), g.journal_blocks) * kBlockSize;
  if (Status usable = CheckUsable(); !usable.ok()) info.failure = usable.message();
  return info;
}

std::vector<VolumeInfo> VolumeSetImpl::ListVolumes() {
  std::lock_guard lock(mu_);
  (void)SettleLocked();  // a failure shows in the figures only
  std::vector<VolumeInfo> out;
  for (auto& [name, volume] : volumes_) {
    if (IsDeletingVolumeName(name)) continue;
    out.push_back(volume->Info());
    (void)FillSharingInfo(*volume, &out.back());
  }
  return out;
}

Result<VolumeInfo> VolumeSetImpl::GetVolumeInfo(const std::string& name) {
  std::lock_guard lock(mu_);
  ThinVolume* volume = FindLocked(name);
  if (!volume) return Status(ENOENT, "no volume named '" + name + "'");
  ES_RETURN_IF_ERROR(SettleLocked());
  VolumeInfo info = volume->Info();
  ES_RETURN_IF_ERROR(FillSharingInfo(*volume, &info));
  return info;
}

std::vector<std::string> VolumeSetImpl::VolumeNames() {
  std::lock_guard lock(mu_);
  std::vector<std::string> names;
  for (auto& [name, volume] : volumes_)
    if (!IsDeletingVolumeName(name)) names.push_back(name);
  return names;
}

Result<bool> VolumeSetImpl::IsLocked(const std::string& name) {
  ThinVolume* volume;
  {
    std::lock_guard lock(mu_);
    volume = FindLocked(name);
    Snapshot* snapshot = snapshots_.FindAny(name);
    if (snapshot && !snapshot->deleting()) volume = snapshot->view.get();
    if (!volume) return Status(ENOENT, "no volume named '" + name + "'");
  }
  std::lock_guard volume_lock(volume->mutex());
  return volume->codec() == nullptr;
}

Result<Volume*> VolumeSetImpl::FindVolume(const std::string& name) {
  std::lock_guard lock(mu_);
  if (Snapshot* snapshot = snapshots_.FindAny(name); snapshot && !snapshot->deleting())
    return static_cast<Volume*>(snapshot->view.get());
  ThinVolume* volume = FindLocked(name);
  if (!volume) return Status(ENOENT, "no volume named '" + name + "'");
  return static_cast<Volume*>(volume);
}

static Status ValidateSize(uint64_t size) {
  if (size == 0 || size % 512) return Status(EINVAL, "volume size must be a positive multiple of 512 bytes");
  if (size > format::kMaxVolumeSize) return Status(EINVAL, "volume size must be at most 1 PiB");
  return Status::Ok();
}

Result<Volume*> VolumeSetImpl::CreateVolume(const std::string& name, uint64_t size, const VolumeCreateOptions& options) {
  if (!IsValidVolumeName(name))
    return Status(EINVAL, "invalid volume name '" + name + "': use 1-64 of A-Z a-z 0-9 . _ - (not starting with . or -)");
  ES_RETURN_IF_ERROR(ValidateSize(size));
  std::lock_guard lock(mu_);
  ES_RETURN_IF_ERROR(CheckUsable());
  if (FindLocked(name)) return Status(EEXIST, "a volume named '" + name + "' already exists");
  if (volumes_.size() >= format::kMaxVolumes) return Status(ENOSPC, "a pool holds at most 4096 volumes");
  uint64_t slots = DirectorySlotsFor(size, pool_->geometry().cluster_size);
  ES_RETURN_IF_ERROR(CheckMapBoundsLocked(slots, slots));
  ES_RETURN_IF_ERROR(CheckMetadataRoomLocked(Checkpointer::VolumeNeed(name, slots)));
  format::VolumeAttributes attributes{};
  CompressionSetting compression = options.compression.value_or(
      CompressionSetting{static_cast<Compression>(defaults_.compression), defaults_.compression_level});
  attributes.compression = static_cast<uint8_t>(compression.algorithm);
  attributes.compression_level = static_cast<uint8_t>(compression.level);
  std::optional<DataKey> data_key;
  if (options.encrypt.value_or(defaults_.encrypt)) {
    if (!key_ring_.pool_has_key())
      return Status(EINVAL, "pool has no key to encrypt with: create it with --keyfile or --passphrase-file, or add "
                            "a key with `edgestor pool rekey`");
    if (!key_ring_.unlocked())
      return Status(EACCES, "pool is locked: give its key (--keyfile or --passphrase-file; `edgestor pool unlock` "
                            "for a running daemon) to create encrypted volumes");
    ES_ASSIGN_OR_RETURN(auto keys, key_ring_.NewVolumeKey());
    auto& [key, wrapped] = keys;
    data_key = std::move(key);
    attributes.encrypted = 1;
    std::memcpy(attributes.wrapped_key, wrapped.data(), wrapped.size());
  }
  auto volume = MakeVolume(next_volume_id_++, name, size, attributes);
  ES_RETURN_IF_ERROR(GiveCodec(*volume, data_key ? &*data_key : nullptr));
  ThinVolume* raw = volume.get();
  volumes_.emplace(name, std::move(volume));
  Status s = CheckpointLocked({});
  if (!s.ok()) {
    volumes_.erase(name);
    return s;
  }
  return static_cast<Volume*>(raw);
}

Status VolumeSetImpl::ResizeVolume(const std::string& name, uint64_t new_size, bool allow_shrink) {
  ES_RETURN_IF_ERROR(ValidateSize(new_size));
  ControlLock control(*this);  // a recompression in flight would make a shrink refuse
  std::lock_guard lock(mu_);
  ES_RETURN_IF_ERROR(CheckUsable());
  ThinVolume* volume = FindLocked(name);
  if (!volume) return Status(ENOENT, "no volume named '" + name + "'");
  if (new_size < volume->size() && !allow_shrink)
    return Status(EINVAL, "shrinking volume '" + name + "' would discard data past the new end; pass --force");
  const uint32_t cluster_size = pool_->geometry().cluster_size;
  uint64_t old_slots = DirectorySlotsFor(volume->size(), cluster_size);
  uint64_t new_slots = DirectorySlotsFor(new_size, cluster_size);
  if (new_slots > old_slots) {
    ES_RETURN_IF_ERROR(CheckMapBoundsLocked(new_slots - old_slots, new_slots - old_slots));
    ES_RETURN_IF_ERROR(CheckMetadataRoomLocked(
        {(new_slots - old_slots) * sizeof(format::DirectorySlot), 0, Checkpointer::kControlSlackBlocks}));
  }
  // A shrink releases in steps of bounded memory, each one committed.
  while (new_size < volume->size()) {
    uint64_t step_size;
    {
      std::lock_guard volume_lock(volume->mutex());
      step_size = volume->ShrinkStepSizeLocked(new_size, release_step_pages_);
    }
    ES_RETURN_IF_ERROR(ShrinkAndCommitLocked(*volume, step_size));
  }
  if (new_size == volume->size()) return Status::Ok();
  {
    std::lock_guard volume_lock(volume->mutex());
    std::vector<BlockRun> no_frees;
    ES_RETURN_IF_ERROR(volume->ResizeLocked(new_size, &no_frees));
    assert(no_frees.empty());  // growing frees nothing
    assert(volume->size() == new_size);
  }
  return CheckpointLocked({});
}

Status VolumeSetImpl::ShrinkAndCommitLocked(ThinVolume& volume, uint64_t new_size) {
  assert(new_size > 0 && new_size < volume.size() && "every shrink step makes progress and keeps a volume");
  std::vector<BlockRun> frees;
  {
    std::lock_guard volume_lock(volume.mutex());
    ES_RETURN_IF_ERROR(volume.ResizeLocked(new_size, &frees));
  }
  // Freed space becomes reusable only once the checkpoint is durable.
  return CheckpointLocked(std::move(frees));
}

Status VolumeSetImpl::DeleteVolume(const std::string& name) {
  ControlLock control(*this);
  std::lock_guard lock(mu_);
  ES_RETURN_IF_ERROR(CheckUsable());
  auto it = volumes_.find(name);
  if (it == volumes_.end()) return Status(ENOENT, "no volume named '" + name + "'");
  size_t snapshots = 0, deleting = 0;
  for (auto& [full, snapshot] : snapshots_) {
    if (snapshot.entry.volume_id != it->second->id()) continue;
    if (snapshot.entry.flags & format::kSnapshotDeleting) deleting++;
    else snapshots++;
  }
  if (snapshots)
    return Status(EBUSY, "volume '" + name + "' has " + std::to_string(snapshots) +
                             " snapshot(s); delete them first (`edgestor snap list " + name + "`)");
  if (deleting)
    return Status(EBUSY, "volume '" + name + "' has snapshots whose space is still being released; try again shortly");
  ThinVolume& volume = *it->second;
  uint64_t own_pages = 0;
  {
    std::lock_guard volume_lock(volume.mutex());
    if (volume.inflight()) return Status(EBUSY, "volume " + name + " has I/O in flight");
    for (const ThinMap::Slot& slot : volume.map().slots()) own_pages += slot.block != 0 || slot.page;
  }
  // Releasing means reading every page of the volume and listing its runs:
  // for many pages that goes to the background, in bounded steps, after
  // the volume is hidden.
  if (own_pages > background_delete_pages_) return HideVolumeForDeletionLocked(volume);
  std::vector<BlockRun> frees;
  {
    std::lock_guard volume_lock(volume.mutex());
    ES_RETURN_IF_ERROR(volume.ReleaseAllLocked(&frees));
  }
  volumes_.erase(it);
  return CheckpointLocked(std::move(frees));
}

Status VolumeSetImpl::HideVolumeForDeletionLocked(ThinVolume& volume) {
  const std::string name = volume.name();
  ES_RETURN_IF_ERROR(CheckpointLocked({}, nullptr, [&](std::vector<BlockRun>*) {
    auto node = volumes_.extract(name);
    node.key() = DeletingVolumeName(volume.id());
    volume.Rename(node.key());  // every volume lock is held here
    volumes_.insert(std::move(node));
    return Status::Ok();
  }));
  StartReclaimerLocked();
  return Status::Ok();
}

Status VolumeSetImpl::ReleaseVolumeStep(const std::string& hidden_name) {
  std::lock_guard lock(mu_);
  ES_RETURN_IF_ERROR(CheckUsable());
  auto it = volumes_.find(hidden_name);
  if (it == volumes_.end()) return Status::Ok();
  ThinVolume& volume = *it->second;
  uint64_t step_size;
  {
    std::lock_guard volume_lock(volume.mutex());
    step_size = volume.ShrinkStepSizeLocked(0, release_step_pages_);
  }
  if (step_size > 0) return ShrinkAndCommitLocked(volume, step_size);
  std::vector<BlockRun> frees;
  {
    std::lock_guard volume_lock(volume.mutex());
    ES_RETURN_IF_ERROR(volume.ReleaseAllLocked(&frees));
  }
  volumes_.erase(it);
  return CheckpointLocked(std::move(frees));
}

Status VolumeSetImpl::SetVolumeCompression(const std::string& name, const CompressionSetting& setting) {
  std::lock_guard lock(mu_);
  ES_RETURN_IF_ERROR(CheckUsable());
  ThinVolume* volume = FindLocked(name);
  if (!volume) return Status(ENOENT, "no volume named '" + name + "'");
  {
    std::lock_guard volume_lock(volume->mutex());
    volume->SetCompression(setting);
  }
  return CheckpointLocked({});
}

Status VolumeSetImpl::Flush() {
  ES_RETURN_IF_ERROR(CheckUsable());
  if (pool_->JournalWantsCheckpoint()) {
    Status s = Checkpoint();
    // A checkpoint refused for space (pool or host) changed nothing: the
    // journal, still half empty, takes this commit.
    if (s.code() != ENOSPC || pool_->is_failed() || failed_) return s;
  }
  Status s = pool_->Commit();
  // Records that outgrew the journal while waiting are committed by a
  // checkpoint instead (the pool refused them before writing anything).
  if (s.code() == ENOSPC && !pool_->is_failed()) return Checkpoint();
  return s;
}

Status VolumeSetImpl::Checkpoint() {
  std::lock_guard lock(mu_);
  ES_RETURN_IF_ERROR(CheckUsable());
  return CheckpointLocked({});
}

Status VolumeSetImpl::CheckpointLocked(std::vector<BlockRun> frees, const KeyProtection* new_keys,
                                       const CheckpointChange& change) {
  // Counted (metrics) however it ends; REQUIRES mu_, so one at a time.
  struct Timed {
    VolumeSetImpl& set;
    uint64_t started_ns = IoStats::NowNs();
    ~Timed() {
      uint64_t ns = IoStats::NowNs() - started_ns;
      set.checkpoints_.fetch_add(1, std::memory_order_relaxed);
      set.checkpoint_ns_total_.fetch_add(ns, std::memory_order_relaxed);
      if (ns > set.checkpoint_ns_max_.load(std::memory_order_relaxed)) set.checkpoint_ns_max_.store(ns, std::memory_order_relaxed);
    }
  } timed{*this};
  // Every volume is locked (in name order) so no map changes mid-checkpoint.
  std::vector<std::unique_lock<std::mutex>> locks;
  for (auto& [name, volume] : volumes_) locks.emplace_back(volume->mutex());
  // A checkpoint that could run out of space midway would leave memory and
  // disk disagreeing: refuse it before writing anything. Nothing is lost;
  // the journal keeps the changes until space is freed.
  ES_RETURN_IF_ERROR(CheckMetadataRoomLocked({}));
  // Data of completed writes must be durable before pages that map it.
  Status s = pool_->device().FlushSync();
  struct ReleaseUnused {
    Pool& pool;
    ~ReleaseUnused() { pool.ReleasePreparedBlocks(); }
  } release_unused{*pool_};
  for (auto& [name, volume] : volumes_)
    if (s.ok()) s = volume->map().WriteDirtyPages(&frees);
  // Every map is locked and snapshot views never change: nothing is dirty now.
  assert(!s.ok() || budget_.dirty_pages == 0);
  // A change that refuses leaves memory as it was; the pages just written
  // are committed anyway.
  Status refused;
  if (s.ok() && change) refused = change(&frees);
  CheckpointContents contents;
  contents.next_volume_id = next_volume_id_;
  contents.defaults = defaults_;
  for (auto& [name, volume] : volumes_)
    contents.volumes.push_back({volume->id(), name, volume->size(), volume->attributes(), volume->map().Directory()});
  contents.next_snapshot_id = snapshots_.next_id();
  for (auto& [full, snapshot] : snapshots_)
    contents.snapshots.push_back({snapshot.entry, snapshot.name, snapshot.view->attributes()});
  largest_release_ = std::max<uint64_t>(largest_release_, frees.size());
  if (s.ok()) s = pool_->WriteCheckpoint(EncodeCheckpoint(contents), std::move(frees), new_keys);
  if (!s.ok()) {
    failed_ = true;  // memory and disk may now disagree: only a reopen recovers
    return s.WithContext("checkpoint failed");
  }
  uint64_t slots = 0;
  for (auto& [name, volume] : volumes_) {
    volume->map().EvictIfOverBudget();
    slots += volume->map().slots().size();
  }
  checkpointer_.Checkpointed(slots, snapshots_.size());
  locks.clear();
  checkpointer_.UpdateMetadataReserve();
  return refused;
}

void VolumeSetImpl::RequestFinished() {
  if (checkpointer_.NeedsCommitOrCheckpoint() && !closed_ && !failed_) committer_->WantCheckpoint();
}

void VolumeSetImpl::CheckpointIfNeeded() {
  if (closed_ || failed_) return;
  if (!checkpointer_.NeedsCheckpoint()) {
    // Only space waiting for a commit: a commit releases it (a journal
    // block and two flushes); a checkpoint only if the journal has no room.
    if (!pool_->FreesWaiting() || pool_->Commit().code() != ENOSPC) return;
  }
  // After a checkpoint refused for lack of space, wait before trying again
  // rather than after every request.
  if (checkpointer_.BackingOff()) return;
  // A control operation holding the table checkpoints anyway; the data path
  // goes on meanwhile (it blocks on volume locks only while one writes).
  std::unique_lock lock(mu_, std::try_to_lock);
  if (!lock.owns_lock() || !checkpointer_.NeedsCheckpoint()) return;
  // A device failure marks the set failed (later I/O reports it); a refusal
  // for space changes nothing, and the journal keeps every change meanwhile.
  Status s = CheckpointLocked({});
  if (s.code() == ENOSPC && !failed_) checkpointer_.BackOffAfterSpaceRefusal();
}

Result<std::unique_ptr<VolumeSet>> OpenPoolFile(const std::string& path, const PoolOpenOptions& options) {
  ES_ASSIGN_OR_RETURN(std::unique_ptr<Device> device, OpenFileDevice(path, FileDeviceOptions{}));
  return VolumeSet::Open(std::move(device), options);
}

VolumeChannel::VolumeChannel(std::unique_ptr<IoQueue> queue) : queue_(std::move(queue)) { assert(queue_ != nullptr); }

VolumeChannel::~VolumeChannel() { assert(queue_->InFlight() == 0 && "a channel destroyed with requests in flight"); }

Status RunSync(Volume& volume, VolumeIo& io, IoQueue& queue) {
  struct Waiter {
    bool done = false;
    Status status;
  } waiter;
  io.context = &waiter;
  io.done = [](VolumeIo* finished, const Status& status) {
    auto* w = static_cast<Waiter*>(finished->context);
    w->status = status;
    w->done = true;
  };
  volume.Submit(&io, queue);
  while (!waiter.done) queue.Poll(/*wait=*/true);
  return waiter.status;
}

}  // namespace edgestor
