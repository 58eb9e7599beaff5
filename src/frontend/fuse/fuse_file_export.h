// FuseFileExport: one volume presented as one regular file through FUSE,
// for hosts and containers that want a file or a block device and speak
// neither NBD nor vhost-user. `losetup --direct-io=on DIR/VOL` turns the
// file into a block device a service can format and mount.
//
// The mount point is a directory; the export's file system holds one file
// in it, named after the volume, whose size is the volume's. I/O on the
// file maps to the volume: read and write; fsync and the flush of close to
// the volume's flush; fallocate punch-hole and zero-range to discard and
// write-zeroes. The file's size cannot be changed through the file (the
// volume is resized by the daemon; the file follows). A snapshot is
// exported read-only.
//
// Requests are served asynchronously by a few worker threads, each with its
// own VolumeChannel, reading the same FUSE device. Request data in flight
// is bounded by the export's in-flight budget (and the daemon's).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "base/inflight_budget.h"
#include "base/status.h"
#include "volume/volume.h"

namespace edgestor::fuse {

struct FileExportOptions {
  std::string mountpoint;  // a directory; created (with its parents) if missing
  bool read_only = false;
  uint32_t threads = 2;  // workers reading the FUSE device (1..kMaxThreads)
  // Request data the export may hold in flight; the daemon's budget is
  // also charged, if given (borrowed: must outlive the export).
  uint64_t inflight_bytes = kDefaultQueueInflightBytes;
  InflightBudget* shared_budget = nullptr;
  // Tests and fuzzing: serve this descriptor (one end of a SOCK_SEQPACKET
  // socket pair, standing in for the kernel) instead of mounting; the
  // export owns it. The mount point is then only a name.
  int connection_fd = -1;
};

inline constexpr uint32_t kMaxThreads = 16;

class FileExportImpl;  // fuse_file_export.cc

class FuseFileExport {
 public:
  // Mounts the export and starts its workers. A stale mount of a FUSE
  // server that died (ENOTCONN) at the mount point is detached first.
  static Result<std::unique_ptr<FuseFileExport>> Start(Volume& volume, FileExportOptions options,
                                                       std::function<std::unique_ptr<VolumeChannel>()> make_channel);
  ~FuseFileExport();  // Stop()

  // Finishes the requests in flight, then unmounts (lazily: a process or
  // loop device that still has the file open gets ENOTCONN from then on).
  // Idempotent.
  void Stop();

  // Tells the kernel the file's size changed (after a volume resize).
  void SizeChanged();

  const FileExportOptions& options() const { return options_; }
  Volume& volume() const { return volume_; }
  // The exported file: mountpoint/volume name.
  std::string file_path() const;
  // Opens of the file not yet released (a loop device holds one).
  uint32_t open_count() const;
  // What the kernel sent through this export (the volume counts it too).
  const IoStats& io_stats() const;

 private:
  FuseFileExport(Volume& volume, FileExportOptions options, std::unique_ptr<FileExportImpl> impl);
  Volume& volume_;
  FileExportOptions options_;
  std::unique_ptr<FileExportImpl> impl_;
};

}  // namespace edgestor::fuse
