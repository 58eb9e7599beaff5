// VhostBlkExport: one volume served as a vhost-user-blk device on a unix
// socket. A front-end (QEMU) connects, negotiates, shares guest memory and
// its virtqueues; each queue is then served by its own thread (BlkQueue).
// The export outlives the front-end: when it disconnects, the export
// waits for the next connection (a guest reboot or a QEMU restart).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "base/inflight_budget.h"
#include "base/status.h"
#include "base/unix_socket.h"
#include "volume/volume.h"

namespace edgestor::vhost {

struct VhostExportOptions {
  std::string socket_path;
  uint16_t queues = 1;       // virtqueues offered (1..16)
  bool read_only = false;
  std::string serial;        // GET_ID (guest: /dev/disk/by-id/virtio-SERIAL), at most 20 bytes
  // Request data (bounce buffers) each queue may hold in flight; a queue
  // over it takes nothing from its ring until completions free room.
  uint64_t queue_inflight_bytes = kDefaultQueueInflightBytes;
  // Also charged, if given (the daemon's, shared with every export and NBD
  // connection). Borrowed: must outlive the export.
  InflightBudget* shared_budget = nullptr;
  SocketAccess access;       // who may connect: give it to the user QEMU runs as
};

inline constexpr uint16_t kMaxQueues = 16;

class VhostBlkExport {
 public:
  // Creates and listens on the socket (ListenUnixSocket: a stale socket
  // file is replaced; anything else at the path is EEXIST, a live socket
  // EADDRINUSE), owned and with the mode options.access gives.
  static Result<std::unique_ptr<VhostBlkExport>> Start(Volume& volume, VhostExportOptions options,
                                                       std::function<std::unique_ptr<VolumeChannel>()> make_channel);
  ~VhostBlkExport();  // Stop()
  // Disconnects the front-end, finishing requests in flight, and removes
  // the socket. Idempotent.
  void Stop();

  const VhostExportOptions& options() const { return options_; }
  Volume& volume() const { return volume_; }
  bool connected() const;
  // What front-ends sent through this export (the volume counts it too).
  const IoStats& io_stats() const;

 private:
  class Impl;
  VhostBlkExport(Volume& volume, VhostExportOptions options, std::unique_ptr<Impl> impl);
  Volume& volume_;
  VhostExportOptions options_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace edgestor::vhost
