// The commands of the edgestor tool, one function per command.
//
// main.cc parses the command line into these option structs (sizes already
// parsed and checked) and calls the matching Run function. Every command that
// opens a pool holds an exclusive flock() on the pool path for its whole run
// and closes the pool (final checkpoint) before it returns.
//
// Each Run function prints its human or JSON output on stdout and either
// returns normally (exit status 0) or throws CliError (exit status 1).
// Arguments are validated before the pool is opened, so an invalid one never
// changes the pool.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "cli/key_args.h"

namespace edgestor::cli {

struct PoolCreateArgs {
  std::string path;
  uint64_t size = 20ull << 30;  // for a new file; an existing file keeps its size
  uint32_t cluster_size = 64 * 1024;
  uint64_t journal_bytes = 0;  // 0: chosen by the engine
  bool encrypt = false;        // new volumes encrypted by default (needs --keyfile/--passphrase-file)
  std::string compress = "off";  // default compression of new volumes
  bool force = false;        // format over a pool label, file system or partition table
  bool preallocate = false;  // reserve host space for the whole pool file now
};
// The pool key comes from the global --keyfile / --passphrase-file.
void RunPoolCreate(const PoolCreateArgs& args);

// Rotates the pool key (the current one from --keyfile/--passphrase-file,
// if the pool has one) to `new_key`. Offline: the daemon must be stopped.
void RunPoolRekey(const std::string& path, const KeyArgs& new_key);


// Returns true when the pool is consistent; false (exit status 1) when
// problems were found and printed.
bool RunPoolFsck(const std::string& path, bool json);

struct VolumeArgs {
  std::string pool;
  std::string control;  // daemon control socket (--control / $EDGESTOR_CONTROL); may be empty
  std::string name;
};
struct VolumeCreateArgs {
  uint64_t size = 0;
  std::optional<bool> encrypt;          // unset: the pool's default
  std::optional<std::string> compress;  // unset: the pool's default
};
void RunVolumeCreate(const VolumeArgs& args, const VolumeCreateArgs& create);
// Through the daemon serving the pool if one does (the pool is in use then).
void RunPoolInfo(const VolumeArgs& args, bool json);
// Compression of new writes: "off", "lz4", "zstd[:LEVEL]".
void RunVolumeSetCompression(const VolumeArgs& args, const std::string& compress);
// Gives a running daemon the pool key; without a daemon, checks the key.
void RunPoolUnlock(const VolumeArgs& args);

// Exports at run time (through the daemon).
struct VhostExportArgs {
  std::string socket;
  std::string socket_owner;  // USER[:GROUP]; empty: the daemon's user
  std::string socket_mode;   // octal; empty: 0600
  uint32_t queues = 1;
  bool read_only = false;
  bool transient = false;  // not stored: gone when the daemon restarts
};
void RunExportVhost(const VolumeArgs& args, const VhostExportArgs& vhost);
struct FileExportArgs {
  std::string mountpoint;
  uint32_t threads = 2;
  bool read_only = false;
  bool transient = false;
};
void RunExportFile(const VolumeArgs& args, const FileExportArgs& file);
void RunExportList(const VolumeArgs& args, bool json);
struct ExportRemoveArgs {
  std::string socket;      // a vhost-user export
  std::string mountpoint;  // or a file export
  bool force = false;
};
void RunExportRemove(const VolumeArgs& args, const ExportRemoveArgs& remove);
// The kernel's NBD client for a volume (attach_commands.cc): prints the
// /dev/nbdN it connected, or says which module is missing.
void RunAttach(const VolumeArgs& args, const std::string& device);
void RunDetach(const std::string& device);
void RunVolumeList(const VolumeArgs& args, bool json);
void RunVolumeInfo(const VolumeArgs& args, bool json);
void RunVolumeResize(const VolumeArgs& args, uint64_t new_size, bool force);
void RunVolumeDelete(const VolumeArgs& args);

// Snapshots and clones. A snapshot argument is "VOL@SNAP" (in args.name),
// checked before the pool is opened: a bad one fails (exit status 1) with
// one line saying what is wrong with it. Through the daemon when one
// serves the pool, as the vol commands.
void RunSnapshotCreate(const VolumeArgs& args);
// All snapshots, or those of volume args.name (if not empty); oldest first.
void RunSnapshotList(const VolumeArgs& args, bool json);
void RunSnapshotDelete(const VolumeArgs& args);
struct RollbackArgs {
  bool discard_current = false;  // do not keep the current content as an automatic snapshot
  bool force = false;            // through the daemon: disconnect the volume's clients first
};
void RunSnapshotRollback(const VolumeArgs& args, const RollbackArgs& rollback);
// A new volume `clone` from snapshot args.name.
void RunClone(const VolumeArgs& args, const std::string& clone);
// Copies what clone args.name shares with its origin snapshot (progress on
// stderr offline, for runs longer than a second).
void RunVolumeFlatten(const VolumeArgs& args);

struct VolumeWriteArgs {
  VolumeArgs volume;
  uint64_t offset = 0;  // any byte offset
  std::string input;    // empty: standard input
};
void RunVolumeWrite(const VolumeWriteArgs& args);

struct VolumeReadArgs {
  VolumeArgs volume;
  uint64_t offset = 0;
  std::optional<uint64_t> length;  // default: to the end of the volume
  std::string output;              // empty: standard output
};
void RunVolumeRead(const VolumeReadArgs& args);

struct ServeArgs {
  std::string pool;
  std::string control_socket;  // default: beside the pool
  std::string nbd_socket;      // default: beside the pool
  std::string nbd_listen;      // host:port; empty: no TCP
  std::string control_group;   // may use the control socket too (0660); empty: the daemon's user only
  std::string nbd_socket_owner;  // USER[:GROUP]; empty: the daemon's user
  std::string nbd_socket_mode;   // octal; empty: 0600
  uint64_t map_cache_bytes = 64ull << 20;
  uint64_t inflight_bytes = 256ull << 20;  // kDefaultDaemonInflightBytes
  uint64_t hot_plain_clusters = 65536;     // PoolOpenOptions::hot_plain_clusters
  uint32_t recompress_idle_seconds = 30;
  std::string metrics_listen;  // host:port; empty: no metrics listener
  std::string state_file;      // default: beside the pool (POOL.state.json)
  // The flags given on the command line (names without "--"): these win
  // over the settings stored by the last `serve`; the others come from there.
  std::vector<std::string> given;
  bool forget_settings = false;  // ignore the stored settings
  KeyArgs key;  // the pool key, if the pool has one (else encrypted volumes wait for `pool unlock`)
};
// Runs the daemon in the foreground until SIGINT/SIGTERM; then drains,
// checkpoints and returns.
void RunServe(const ServeArgs& args);

// Operations, through the daemon (ops_commands.cc).
struct IostatArgs {
  std::vector<std::string> volumes;  // empty: all
  double interval_seconds = 0;       // 0: one report of the totals since the pool was opened
  uint64_t count = 0;                // reports with an interval; 0: until interrupted
  bool latency = false;              // -l: average latencies and requests in flight
};
void RunIostat(const VolumeArgs& args, const IostatArgs& iostat);
void RunJobList(const VolumeArgs& args, bool json);
// Follows the job with a progress line; fails (exit 1) unless it succeeds.
void RunJobWait(const VolumeArgs& args, uint64_t id);
void RunJobCancel(const VolumeArgs& args, uint64_t id);
// Pool health, space, volumes with their exports, jobs: one screen.
void RunStatus(const VolumeArgs& args, bool json);

// Volume names: 1..64 characters of [A-Za-z0-9._-], not starting with '.'
// or '-' (the engine's rule, checked before the pool is opened).
bool IsValidVolumeName(const std::string& name);

}  // namespace edgestor::cli
