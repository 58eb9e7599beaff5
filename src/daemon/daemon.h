// Daemon: one process owns one pool and serves it.
//
// It holds an exclusive lock on the pool file (the CLI takes the same lock,
// so a pool is never opened twice), opens the pool (recovering it), serves
// every volume as an NBD export named after it (and every snapshot, read-only,
// as "VOL@SNAP", opened by name but not listed), and answers JSON-RPC on a
// control socket (docs/CONTROL_API.md). Stop() drains in-flight I/O, writes
// a final checkpoint and releases everything.
#pragma once

#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/inflight_budget.h"
#include "daemon/control_server.h"
#include "frontend/fuse/fuse_file_export.h"
#include "frontend/nbd/nbd_server.h"
#include "frontend/vhost/vhost_blk_export.h"
#include "ops/job_registry.h"
#include "ops/metrics_server.h"
#include "volume/volume_set.h"

namespace edgestor {

struct DaemonOptions {
  std::string pool_path;
  std::string control_socket;  // default: DefaultControlSocket(pool_path)
  std::string nbd_socket;      // default: DefaultNbdSocket(pool_path)
  std::string nbd_listen;      // "host:port" for NBD over TCP; empty: unix socket only
  // Who may connect. Both default to the daemon's user only (0600): the
  // control socket can grant a group (serve --control-group), the NBD socket
  // can be given to the user QEMU runs as without opening the control socket.
  SocketAccess control_access;
  SocketAccess nbd_access;
  uint64_t map_cache_bytes = 64ull << 20;
  // Request data all NBD connections and vhost-user queues together may
  // hold in flight (bounce buffers); each vhost-user queue is also held to
  // kDefaultQueueInflightBytes, each NBD connection to its max_buffered_bytes.
  uint64_t inflight_bytes = kDefaultDaemonInflightBytes;
  PoolSecret secret;  // empty: encrypted volumes stay locked until pool.unlock
  // Compressed volumes (see PoolOpenOptions): clusters small writes keep
  // plain per volume, and how long one must go unwritten to be compressed again.
  uint64_t hot_plain_clusters = 65536;
  uint32_t recompress_idle_ms = 30000;
  // "host:port" of the Prometheus metrics listener; empty: none.
  std::string metrics_listen;
  // Where exports, resumable jobs and these settings are stored and
  // restored from (default: DefaultStateFile(pool_path)). Exports added
  // with "transient" are not stored.
  std::string state_file;
  // What `serve` stores as its settings (the flags it ran with), for the
  // next `serve` to default to. Stored as given.
  nlohmann::json settings = nlohmann::json::object();
};

// Sockets live beside the pool: var/pool.img -> var/pool.control.sock,
// var/pool.nbd.sock.
std::string DefaultControlSocket(const std::string& pool_path);
std::string DefaultNbdSocket(const std::string& pool_path);

class Daemon : public ExportProvider {
 public:
  static Result<std::unique_ptr<Daemon>> Start(DaemonOptions options);
  ~Daemon() override;

  // Stops serving, drains, checkpoints. Idempotent.
  Status Stop();

  const DaemonOptions& options() const { return options_; }
  uint16_t nbd_tcp_port() const;
  std::string NbdUri(const std::string& volume) const;

  // ExportProvider
  std::vector<std::string> ListExports() override;
  bool HasExport(const std::string& name) override;
  Result<Volume*> AcquireExport(const std::string& name) override;
  void ReleaseExport(Volume* volume) override;
  std::unique_ptr<VolumeChannel> OpenChannel(uint32_t depth) override;

  // vhost-user-blk exports, added and removed at run time (export.* RPCs).
  Status AddVhostExport(const std::string& volume, vhost::VhostExportOptions options);
  Status RemoveVhostExport(const std::string& socket_path);
  // File exports (FUSE), added and removed at run time. Remove refuses
  // (EBUSY) while the file is open, a loop device over it say, unless
  // `force`: then its users get ENOTCONN.
  // Returns the export's options as started (absolute mount point;
  // read-only for a snapshot).
  Result<fuse::FileExportOptions> AddFileExport(const std::string& volume, fuse::FileExportOptions options);
  Status RemoveFileExport(const std::string& mountpoint, bool force);
  // A stable serial for the guest: pool uuid prefix and volume (or snapshot) id.
  std::string SerialOf(const Volume& volume);

  // The daemon-wide in-flight budget (its counters).
  const InflightBudget& inflight_budget() const { return inflight_budget_; }
  // The metrics listener's port (0: none).
  uint16_t metrics_port() const { return metrics_ ? metrics_->port() : 0; }
  // Every metric, in the Prometheus text format (daemon/metrics.cc).
  std::string MetricsText();
  // The pool is usable (no device error stopped it): the watchdog's check.
  bool Healthy();
  // ExportProvider: NBD requests to `volume` are counted per volume name.
  IoStats* ExportStats(Volume* volume) override;

  // Answers one JSON-RPC request line as the control socket would (fuzzing).
  std::string HandleControlLine(const std::string& line) { return control_.HandleLine(line); }

 private:
  // What DetachLocked took away from a volume.
  struct Detached {
    size_t nbd_connections = 0;
    std::vector<std::string> vhost_sockets;
    std::vector<std::string> file_mountpoints;
  };

  Daemon(DaemonOptions options, int lock_fd, std::unique_ptr<VolumeSet> pool);
  void RegisterMethods();
  void RegisterSnapshotMethods();  // rpc_snapshot_methods.cc
  void RegisterOperationsMethods();  // rpc_ops_methods.cc: stats.io, job.*
  // export.add: starts the export `params` describe; returns the RPC result,
  // whose "key" is its absolute socket path or mount point.
  Result<nlohmann::json> AddExportRpc(const nlohmann::json& params);
  Result<nlohmann::json> AddVhostExportRpc(const std::string& name, const nlohmann::json& params);
  // Stores `params` (an export.add request) under `key`, or forgets `key`,
  // and saves the state file. REQUIRES: mu_ not held.
  Status StoreExport(const std::string& key, const nlohmann::json* params);
  // Writes exports, resumable jobs and settings to the state file.
  // REQUIRES: mu_ not held.
  Status SaveState();
  // At start: the stored exports (those that fail are kept, retried at
  // pool.unlock) and jobs.
  void RestoreState(const nlohmann::json& state);
  void RetryUnrestoredExports();
  // Starts a flatten of `volume` as a job (`spec.id` set when resumed).
  Result<uint64_t> StartFlattenJob(const std::string& volume, JobSpec spec);
  // If deleted volumes or snapshots still hold space, starts a "release"
  // job that follows the engine's background release to its end (one at
  // a time; `target` names what was deleted). REQUIRES: mu_ not held.
  void FollowBackgroundRelease(const std::string& target);
  Result<nlohmann::json> AddFileExportRpc(const std::string& name, const nlohmann::json& params);
  // "attached by 2 NBD connection(s) and exported over vhost-user on S", or
  // "" if nothing uses `volume`. REQUIRES: mu_.
  std::string AttachmentsLocked(Volume* volume);
  // Removes the volume's vhost-user exports and disconnects its NBD clients
  // (their requests in flight finish first), then returns with mu_ held
  // and nothing attached, so nothing can attach until the caller unlocks.
  // EBUSY if clients keep attaching for kDetachTimeout. REQUIRES: `lock`
  // holds mu_; it is released while waiting.
  Result<Detached> DetachLocked(std::unique_lock<std::mutex>& lock, Volume* volume);

  DaemonOptions options_;
  int lock_fd_;
  std::unique_ptr<VolumeSet> pool_;
  InflightBudget inflight_budget_;  // shared by NBD connections and vhost-user queues; outlives both
  std::unique_ptr<NbdServer> nbd_;
  ControlServer control_;
  std::mutex mu_;  // guards users_, and orders delete/shrink against new connections
  std::map<Volume*, uint32_t> users_;  // GUARDED_BY(mu_): NBD connections per volume (or snapshot)
  std::condition_variable released_;   // notified when a connection releases its volume
  // GUARDED_BY(mu_): by socket path. A volume with one cannot be deleted,
  // shrunk or rolled back (without force); a snapshot with one cannot be deleted.
  std::map<std::string, std::unique_ptr<vhost::VhostBlkExport>> vhost_exports_;
  // GUARDED_BY(mu_): by mount point; the same rules as vhost_exports_.
  std::map<std::string, std::unique_ptr<fuse::FuseFileExport>> file_exports_;
  // "exported over vhost-user on S and as a file at F", or "" if `volume`
  // has neither. REQUIRES: mu_.
  std::string ExportsLocked(const Volume* volume) const;
  // Removes the volume's vhost-user and file exports (into `detached`);
  // returns whether there were any. Unlocks mu_ while they stop.
  bool RemoveExportsLocked(std::unique_lock<std::mutex>& lock, Volume* volume, Detached& detached);
  bool stopped_ = false;

  // GUARDED_BY(mu_): NBD requests by volume name (ExportStats); entries
  // live as long as the daemon, so connections may keep the pointer.
  std::map<std::string, std::unique_ptr<IoStats>> nbd_io_stats_;
  // GUARDED_BY(mu_): the export.add requests to restore at start, by key
  // (absolute socket path or mount point), and those that failed to
  // restore with why.
  std::map<std::string, nlohmann::json> stored_exports_;
  std::map<std::string, std::string> unrestored_exports_;
  std::mutex state_file_mu_;  // serialises SaveState; taken before mu_, never inside it
  JobRegistry jobs_{[this] { (void)SaveState(); }};
  std::unique_ptr<MetricsServer> metrics_;
  std::atomic<bool> release_job_running_{false};  // FollowBackgroundRelease's job
};

}  // namespace edgestor
