// Volume layer public API: a pool's set of thin volumes.
//
// A VolumeSet owns one pool (its Device) and every volume in it. It is the
// engine object the CLI, the daemon and the frontends talk to.
//
// Threading: every method is safe to call from any thread. Control methods
// (Create/Resize/Delete/Checkpoint) are synchronous and durable when they
// return ok. The data path is Volume::Submit (see volume.h), asynchronous and
// driven by the caller's per-thread IoQueue.
//
// Destroying a VolumeSet without Close() performs no I/O: it behaves like a
// crash, which is what the power-cut tests rely on.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/status.h"
#include "codec/compressor.h"
#include "codec/key_wrap.h"
#include "codec/secret_bytes.h"
#include "io/device.h"
#include "volume/volume.h"

namespace edgestor {

// What unlocks a pool's key: the key itself (read from a key file), or a
// passphrase the pool's stored scrypt settings turn into it. Never logged.
struct PoolSecret {
  PoolSecret() = default;
  // Copies (options structs are passed by value); every copy wipes itself.
  PoolSecret(const PoolSecret& other) : passphrase(other.passphrase) {
    if (other.key) key.emplace(other.key->span());
  }
  PoolSecret& operator=(const PoolSecret& other) {
    if (this == &other) return *this;
    key.reset();
    if (other.key) key.emplace(other.key->span());
    passphrase = other.passphrase;
    return *this;
  }
  PoolSecret(PoolSecret&&) = default;
  PoolSecret& operator=(PoolSecret&&) = default;
  ~PoolSecret() { WipeSecret(passphrase.data(), passphrase.size()); }

  std::optional<PoolKey> key;
  std::string passphrase;  // used when `key` is empty
  bool empty() const { return !key && passphrase.empty(); }
};

struct PoolCreateOptions {
  uint32_t cluster_size = 64 * 1024;  // power of two, 4 KiB .. 256 KiB
  uint64_t journal_bytes = 0;         // 0: chosen from the pool size (1%, 4..256 MiB)
  // A pool key protects the data keys of encrypted volumes; without one the
  // pool cannot hold encrypted volumes (until `Rekey` adds one).
  PoolSecret secret;
  ScryptParams kdf;  // for a passphrase
  // Defaults for new volumes.
  bool encrypt_by_default = false;
  CompressionSetting compression;
  // Format over a device holding a pool label (even a damaged one), a file
  // system or a partition table; refused with EEXIST otherwise.
  bool force = false;
  // Reserve host space for the whole pool file now (labels and journal
  // always are): data writes then never meet a full host file system.
  bool preallocate = false;
};

struct PoolOpenOptions {
  // Memory budget for cached map pages, shared by all volumes. Pages beyond it
  // are evicted (clean ones) and re-read on demand; dirty pages are cleaned by
  // a checkpoint when they reach half the budget.
  uint64_t map_cache_bytes = 64ull << 20;
  // Empty: the pool opens locked (encrypted volumes refuse I/O until Unlock).
  // A wrong secret fails the open with EACCES.
  PoolSecret secret;
  // Threads that decompress and re-encode clusters beside the I/O threads
  // (compressed volumes); -1: one fewer than the machine's cores.
  int codec_workers = -1;
  // Compressed volumes: a partial write into a compressed cluster stores
  // the cluster plain, so the small writes that usually follow go in place
  // instead of decompressing and compressing it each time. Each volume
  // keeps at most this many such clusters (beyond, partial writes compress
  // again); 0 always compresses. A cluster nobody wrote for
  // `recompress_idle_ms` is compressed again in the background.
  uint64_t hot_plain_clusters = 65536;
  uint32_t recompress_idle_ms = 30000;
};

struct VolumeCreateOptions {
  std::optional<bool> encrypt;                   // unset: the pool's default
  std::optional<CompressionSetting> compression;  // unset: the pool's default
};

struct PoolInfo {
  std::string uuid;
  uint64_t device_bytes = 0;     // size of the pool's file or block device
  uint32_t cluster_size = 0;
  uint64_t data_bytes = 0;       // space the allocator manages
  uint64_t allocated_bytes = 0;  // in use: data clusters + metadata
  uint64_t free_bytes = 0;
  uint64_t journal_bytes = 0;
  uint64_t checkpoint_generation = 0;
  uint32_t volume_count = 0;
  uint32_t format_version = 0;
  std::string key_source;  // "none", "key file" or "passphrase"
  bool locked = false;     // has a key that was not given yet
  bool encrypt_by_default = false;
  CompressionSetting default_compression;
  uint32_t snapshot_count = 0;
  uint32_t snapshots_being_deleted = 0;  // space still being released in the background
  uint32_t volumes_being_deleted = 0;    // likewise (hidden, not in volume_count)
  // Stored map pages those releases still have to walk: their progress.
  uint64_t background_delete_pages = 0;
  // Why that release stopped, if it did (it resumes at the next open).
  std::string background_delete_error;
  uint64_t cached_map_pages = 0;  // map pages in memory now (bounded by the budget)
  uint64_t map_cache_limit_pages = 0;
  // Data-path counters since the pool was opened: map-page lookups served
  // from the cache, those that read the page synchronously, and pages read
  // asynchronously for requests that waited for them; group commits, the
  // FLUSH/FUA requests they served, their total and longest duration.
  uint64_t map_cache_hits = 0;
  uint64_t map_cache_misses = 0;
  uint64_t map_page_async_loads = 0;
  uint64_t group_commits = 0;
  uint64_t group_commit_waiters = 0;
  uint64_t group_commit_ns_total = 0;
  uint64_t group_commit_ns_max = 0;
  // Checkpoints written since the pool was opened (those that failed
  // included), their total and longest duration; the journal's fill.
  uint64_t checkpoints = 0;
  uint64_t checkpoint_ns_total = 0;
  uint64_t checkpoint_ns_max = 0;
  uint64_t journal_used_bytes = 0;
  // Empty while the pool is usable; otherwise why it stopped (a device
  // error: reopen to recover).
  std::string failure;
  // Blocks two packed compressed frames share now (each ends one frame
  // and begins the next; freed with the second of them).
  uint64_t shared_edge_blocks = 0;
};

struct VolumeInfo {
  uint32_t id = 0;
  std::string name;
  uint64_t size = 0;             // virtual size in bytes
  uint64_t allocated_bytes = 0;  // physical: device space its data occupies
  uint64_t written_bytes = 0;    // logical: 4 KiB blocks written (and not discarded)
  uint64_t mapped_clusters = 0;
  uint64_t compressed_clusters = 0;
  bool encrypted = false;
  bool locked = false;  // encrypted and the pool key not given yet
  CompressionSetting compression;  // for new writes
  // Snapshots and clones (bytes are device space, data only):
  std::string origin;             // a clone: the snapshot it came from (VOL@SNAP)
  uint32_t snapshot_count = 0;
  uint64_t used_bytes = 0;        // freed if the volume and all its snapshots were deleted
  uint64_t used_by_snapshots_bytes = 0;  // freed if all its snapshots were deleted
  // Data-path counters since the pool was opened: writes and zeroing that
  // copied a shared cluster or re-encoded a compressed one asynchronously,
  // those redone after losing a race for the cluster, unaligned writes
  // (read-modify-writes of partial blocks), and parts of other requests
  // that waited for one to leave their cluster.
  uint64_t cow_copies = 0;
  uint64_t compressed_rewrites = 0;
  uint64_t rewrite_retries = 0;
  uint64_t unaligned_writes = 0;
  uint64_t gate_parks = 0;
  // Compressed volumes: clusters partial writes hold plain now, and those
  // compressed again in the background since the pool was opened.
  uint64_t hot_plain_clusters = 0;
  uint64_t recompressed_clusters = 0;
  uint64_t packed_frames = 0;  // compressed frames written packed with others (since open)
};

struct SnapshotInfo {
  uint32_t id = 0;
  std::string volume;  // the volume it is a snapshot of
  std::string name;    // the part after '@'
  uint64_t size = 0;
  uint64_t created_unix = 0;
  bool automatic = false;        // kept by a rollback
  uint64_t referenced_bytes = 0;  // device space of the data it maps
  uint64_t written_bytes = 0;     // logical: 4 KiB blocks written
  uint64_t used_bytes = 0;        // unique to it: freed if it were deleted
  std::vector<std::string> clones;  // volumes cloned from it
  std::string full_name() const { return volume + "@" + name; }
};

// Progress of a long operation: (done, total) in its own units. Returns
// false to stop it (the operation then fails with ECANCELED, leaving
// whatever it finished in place).
using ProgressFn = std::function<bool(uint64_t done, uint64_t total)>;

class VolumeSet {
 public:
  // Formats `device` as a new, empty pool. Fails with EEXIST if the device
  // already carries a valid pool label (nothing is written in that case).
  static Result<std::unique_ptr<VolumeSet>> Create(std::unique_ptr<Device> device,
                                                   const PoolCreateOptions& options,
                                                   const PoolOpenOptions& open_options = {});
  // Opens an existing pool, recovering from a crash if needed (replays the
  // journal and writes a fresh checkpoint). Nothing is written if the device
  // is not a pool.
  static Result<std::unique_ptr<VolumeSet>> Open(std::unique_ptr<Device> device,
                                                 const PoolOpenOptions& options = {});

  virtual ~VolumeSet() = default;

  // Writes a final checkpoint. Afterwards only the destructor may be called.
  virtual Status Close() = 0;

  virtual PoolInfo Info() = 0;
  // With the sharing figures (used_bytes, used_by_snapshots_bytes), which
  // read the map pages of the volume's snapshots: not for hot paths.
  virtual std::vector<VolumeInfo> ListVolumes() = 0;
  virtual Result<VolumeInfo> GetVolumeInfo(const std::string& name) = 0;
  // Cheap, for every NBD handshake: volume names (no snapshots), and
  // whether a volume or snapshot ("VOL@SNAP") is encrypted in a locked pool.
  virtual std::vector<std::string> VolumeNames() = 0;
  virtual Result<bool> IsLocked(const std::string& name) = 0;

  // Names: 1..64 characters of [A-Za-z0-9._-], not starting with '.' or '-'.
  // Size: a positive multiple of 512 bytes (rounded up by the CLI).
  // Encryption needs an unlocked pool with a key (EACCES locked, EINVAL no key).
  virtual Result<Volume*> CreateVolume(const std::string& name, uint64_t size,
                                       const VolumeCreateOptions& options = {}) = 0;
  // Returns nullptr-free Result: ENOENT if there is no such volume. A
  // snapshot is found as "VOL@SNAP" and is read-only.
  virtual Result<Volume*> FindVolume(const std::string& name) = 0;
  // Growing is always allowed; shrinking only with allow_shrink (data beyond
  // the new end is freed, in steps of bounded memory, each committed: a
  // crash midway leaves a size between the old and the new).
  virtual Status ResizeVolume(const std::string& name, uint64_t new_size, bool allow_shrink) = 0;
  // Frees every cluster of the volume. REQUIRES: no I/O in flight on it.
  // EBUSY while it has snapshots (delete them first). A volume with many
  // map pages disappears at once and its space is released in the
  // background, in steps of bounded memory (PoolInfo::volumes_being_deleted;
  // resumed after a crash or reopen).
  virtual Status DeleteVolume(const std::string& name) = 0;

  // ---- Snapshots and clones ----
  // Takes an immutable snapshot VOL@SNAP. Its cost grows with the volume's
  // map directory (one slot per 255 clusters), not with its data: the map
  // pages are shared until the volume changes them. Writes in flight finish
  // first; writes arriving meanwhile wait for the snapshot.
  virtual Result<SnapshotInfo> CreateSnapshot(const std::string& volume, const std::string& name) = 0;
  // Oldest first; all volumes' when `volume` is empty. Accounting is exact
  // (a checkpoint settles pending frees first).
  virtual Result<std::vector<SnapshotInfo>> ListSnapshots(const std::string& volume) = 0;
  // Frees what was unique to the snapshot. EBUSY while a clone depends on
  // it (flatten the clone first) or its view has I/O in flight. A snapshot
  // with many pages of its own disappears at once and its space is
  // released in the background (PoolInfo::snapshots_being_deleted; resumed
  // after a crash or reopen).
  virtual Status DeleteSnapshot(const std::string& volume, const std::string& name) = 0;
  // The volume's content becomes the snapshot's. No snapshot is deleted;
  // with `keep_current` the content just before is kept as an automatic
  // snapshot, whose name is returned (so a rollback can be undone by
  // rolling back to it). EBUSY with I/O in flight on the volume.
  virtual Result<std::string> Rollback(const std::string& volume, const std::string& snapshot, bool keep_current) = 0;
  // A new writable volume sharing the snapshot's data (and data key).
  virtual Result<Volume*> CloneSnapshot(const std::string& volume, const std::string& snapshot,
                                        const std::string& clone) = 0;
  // Copies every cluster the clone shares into its own space; afterwards it
  // no longer depends on its origin snapshot. Works while the clone is in
  // use. Returns the number of clusters copied. Stopped through `progress`,
  // it stays a clone, with what it copied its own: flattening again goes on.
  virtual Result<uint64_t> FlattenVolume(const std::string& name, const ProgressFn& progress = {}) = 0;
  // Compression of new writes; existing clusters stay as they are.
  virtual Status SetVolumeCompression(const std::string& name, const CompressionSetting& setting) = 0;

  // ---- Keys ----
  // Checks the secret against the pool and unlocks every encrypted volume.
  // EACCES for a wrong key or passphrase, EINVAL if the pool has no key or
  // the secret is of the other kind. Nothing is written.
  virtual Status Unlock(const PoolSecret& secret) = 0;
  // Replaces the pool key (or gives a keyless pool one): every data key is
  // rewrapped with the new key in one checkpoint; no data is rewritten.
  // REQUIRES: unlocked (EACCES otherwise).
  virtual Status Rekey(const PoolSecret& new_secret, const ScryptParams& kdf = {}) = 0;

  // Makes every completed write durable (same as a FLUSH on any volume).
  virtual Status Flush() = 0;
  // Writes all dirty metadata to a new checkpoint and empties the journal.
  virtual Status Checkpoint() = 0;

  virtual Device& device() = 0;
  // A channel for one I/O thread (a front-end's connection or virtqueue),
  // with a queue of `depth` requests on the pool's device.
  std::unique_ptr<VolumeChannel> OpenChannel(uint32_t depth) {
    return std::make_unique<VolumeChannel>(device().CreateQueue(depth));
  }
};

// Opens (and recovers) the pool in the file or block device at `path`,
// with O_DIRECT where the file system allows it.
Result<std::unique_ptr<VolumeSet>> OpenPoolFile(const std::string& path, const PoolOpenOptions& options);

// Offline consistency check of a pool: labels, checkpoint, journal, maps and
// space accounting (no cluster both free and mapped, none leaked, none mapped
// twice). Never writes. Result is an error only if the device cannot be read
// or is not a pool at all; structural problems are listed in `problems`.
struct FsckReport {
  std::vector<std::string> problems;  // empty: the pool is consistent
  std::vector<std::string> notes;     // informational (e.g. journal records replayed)
  uint64_t volumes = 0;
  uint64_t mapped_clusters = 0;
  uint64_t map_pages = 0;
  uint64_t used_blocks = 0;
  uint64_t snapshots = 0;
  uint64_t shared_runs = 0;  // runs (clusters, compressed runs, pages) referenced more than once
  bool ok() const { return problems.empty(); }
};
Result<FsckReport> CheckPool(Device& device);

}  // namespace edgestor
