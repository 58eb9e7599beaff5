// NBD frontend: serves volumes to NBD clients (qemu, nbd-client, libnbd)
// over unix and TCP sockets.
//
// Protocol: fixed newstyle negotiation only (no oldstyle, no TLS), with
// NBD_OPT_GO/INFO, LIST, structured replies, the base:allocation metadata
// context (block status), and the commands READ, WRITE, FLUSH, TRIM,
// WRITE_ZEROES (with FAST_ZERO), BLOCK_STATUS and DISC. Multi-conn is
// advertised: a FLUSH commits every completed write of the whole pool,
// whichever connection sent it.
//
// Choices within the protocol:
//  * Block sizes: minimum 512, preferred 4096, maximum payload 32 MiB are
//    advertised. A client that requests NBD_INFO_BLOCK_SIZE with the
//    NBD_OPT_GO it enters transmission with has agreed to them, and its
//    requests not aligned to 512 bytes get EINVAL. Every other client
//    (NBD_OPT_EXPORT_NAME, or GO without that request) is served at byte
//    granularity, as the protocol asks of a server whose sizes were not
//    agreed. Writes smaller than 4 KiB or not aligned to it work but take
//    the engine's synchronous read-modify-write path.
//  * A READ is answered with one data chunk (so NBD_CMD_FLAG_DF always
//    holds); unwritten ranges are sent as zeros, not as hole chunks.
//  * WRITE_ZEROES may free whole clusters even with NBD_CMD_FLAG_NO_HOLE
//    (thin volumes have no way to keep space reserved), and always accepts
//    NBD_CMD_FLAG_FAST_ZERO: zeroing is a map operation, never slower than
//    writing.
//  * BLOCK_STATUS (base:allocation) describes at most 256 MiB and 1024
//    extents per request; clients ask again for the rest. Unwritten space
//    is HOLE|ZERO, written space 0.
//  * Read-only exports (volumes whose Volume::read_only() is true: snapshots,
//    opened as "VOL@SNAP") advertise NBD_FLAG_READ_ONLY and neither TRIM nor
//    WRITE_ZEROES; WRITE, TRIM and WRITE_ZEROES on them fail with EPERM.
//  * NBD_OPT_LIST names ExportProvider::ListExports() (the volumes); other
//    exports the provider has (snapshots) are opened by name only.
//  * Errors: out-of-range READ/TRIM/BLOCK_STATUS give EINVAL, out-of-range
//    WRITE/WRITE_ZEROES give ENOSPC; engine errnos map to the protocol's
//    (EIO, ENOSPC, EINVAL, EPERM, ENOMEM, EOVERFLOW, ENOTSUP, ESHUTDOWN),
//    anything else to EIO.
//  * Bounds: option data 64 KiB and 1024 options per handshake; a client
//    silent for 30 s during the handshake or 60 s in the middle of a
//    request, or taking no reply bytes for 60 s, is dropped. A client idle
//    between requests is kept as long as it likes.
//
// Threading: one thread per connection. That thread owns the connection's
// socket and its own VolumeChannel (ExportProvider::OpenChannel), submits every
// request to the volume and writes every reply itself, so the data path
// takes no lock of ours. An accept thread hands new connections out.
//
// Bad input from a client (malformed messages, out-of-range requests)
// gets an error reply or, when the stream cannot be resynchronised, a
// disconnect of that client only.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "base/inflight_budget.h"
#include "base/status.h"
#include "base/unix_socket.h"
#include "volume/volume.h"

namespace edgestor {

// What the daemon gives the NBD server: the exports and their lifetime.
// Called from connection threads concurrently; implementations lock.
class ExportProvider {
 public:
  virtual ~ExportProvider() = default;
  // Export names (volume names), as NBD_OPT_LIST shows them. With exactly
  // one, it is also the default export (the empty name).
  virtual std::vector<std::string> ListExports() = 0;
  // Whether `name` can be opened: the listed exports, and any the provider
  // serves by name only (snapshots, "VOL@SNAP").
  virtual bool HasExport(const std::string& name) {
    std::vector<std::string> names = ListExports();
    return std::find(names.begin(), names.end(), name) != names.end();
  }
  // Pins the volume while a connection uses it (delete is refused
  // meanwhile). ENOENT if there is none; ESHUTDOWN if the daemon stops.
  virtual Result<Volume*> AcquireExport(const std::string& name) = 0;
  virtual void ReleaseExport(Volume* volume) = 0;
  // Where NBD requests to `volume` are counted besides the volume's own
  // IoStats (per export metrics); null for none. Must outlive the connection.
  virtual IoStats* ExportStats(Volume* volume) {
    (void)volume;
    return nullptr;
  }
  // A channel for one connection's thread (VolumeSet::OpenChannel).
  virtual std::unique_ptr<VolumeChannel> OpenChannel(uint32_t depth) = 0;
};

struct NbdServerOptions {
  uint32_t max_connections = 64;
  uint32_t queue_depth = 64;               // requests in flight per connection
  uint32_t max_request_bytes = 32 << 20;   // READ/WRITE payload limit (advertised; 4 KiB..32 MiB)
  uint64_t max_buffered_bytes = 64 << 20;  // READ/WRITE payload bytes in flight per connection
  // Also charged with every READ/WRITE payload, if given: the daemon's
  // budget, shared with other connections and vhost-user queues. A
  // connection over it reads no new request until room is freed.
  // Borrowed: must outlive the server.
  InflightBudget* shared_budget = nullptr;
};

// Counters since the server was created, updated with relaxed atomics by
// every connection thread (a snapshot of several may be slightly skewed).
struct NbdStats {
  std::atomic<uint64_t> sessions{0};             // connections that entered transmission
  std::atomic<uint64_t> refused_connections{0};  // beyond max_connections
  std::atomic<uint64_t> protocol_errors{0};      // connections dropped for breaking the protocol
  std::atomic<uint64_t> requests{0};             // requests answered (errors included)
  std::atomic<uint64_t> error_replies{0};
  std::atomic<uint64_t> bytes_read{0};
  std::atomic<uint64_t> bytes_written{0};
};

// Listen*, Start and Stop are called from one controlling thread;
// ConnectionCount and stats from any.
class NbdServer {
 public:
  // The provider must outlive the server.
  NbdServer(ExportProvider& provider, NbdServerOptions options);
  ~NbdServer();  // Stop()s
  NbdServer(const NbdServer&) = delete;
  NbdServer& operator=(const NbdServer&) = delete;

  // Listening sockets; call before Start(). As ListenUnixSocket: only a
  // stale socket file (nobody accepting on it) is replaced; anything else at
  // `path` is EEXIST, a live socket EADDRINUSE. `access`: who may connect.
  Status ListenUnix(const std::string& path, const SocketAccess& access = {});
  // "127.0.0.1:10809", "[::1]:10809"; port 0 picks a free port (BoundTcpPort).
  Status ListenTcp(const std::string& host_port);
  uint16_t BoundTcpPort() const;  // 0 if not listening on TCP

  // Starts the accept thread. Each connection gets its own thread and VolumeChannel.
  Status Start();
  // Disconnects every connection in transmission on `volume` the way Stop()
  // does (their requests in flight finish and are answered first), without
  // waiting for them to end: the provider's ReleaseExport tells when each
  // has. Returns how many were told to close (those told before are not
  // counted again). A connection still in its handshake is not seen; the
  // caller retries until none is left.
  size_t DisconnectExport(const Volume* volume);
  // Stops accepting, lets in-flight requests finish and reply, closes every
  // connection and joins the threads. Idempotent.
  void Stop();
  size_t ConnectionCount() const;
  const NbdStats& stats() const { return stats_; }

 private:
  struct Listener {
    int fd = -1;
    std::string unix_path;  // removed on Stop
  };
  struct Connection {
    int fd = -1;
    std::thread thread;
    std::atomic<bool> finished{false};
    std::atomic<const Volume*> volume{nullptr};  // in transmission on it
    bool disconnecting = false;                   // GUARDED_BY(mu_): DisconnectExport shut it down
  };
  Status AddListener(int fd, const std::string& unix_path);
  void AcceptLoop();
  void AcceptOne(int listen_fd);
  void ReapFinished(bool all);  // joins finished (or all) connections
  void Wake();

  ExportProvider& provider_;
  const NbdServerOptions options_;
  std::vector<Listener> listeners_;
  uint16_t tcp_port_ = 0;
  int wake_fd_ = -1;  // eventfd: Stop() and finishing connections wake the accept loop
  std::atomic<bool> stopping_{false};
  bool started_ = false;
  NbdStats stats_;
  std::thread accept_thread_;
  mutable std::mutex mu_;
  std::list<std::unique_ptr<Connection>> connections_;  // GUARDED_BY(mu_)
};

// Serves one already-accepted connection on the calling thread until the
// client leaves, the stream breaks, or `stopping` is set (then in-flight
// requests are finished and answered first). Does not close `fd`. Counts
// into `stats` if given; sets `attached` to the volume while in
// transmission, if given. For the server, tests and fuzzing.
void ServeNbdConnection(int fd, ExportProvider& provider, const NbdServerOptions& options,
                        const std::atomic<bool>& stopping, NbdStats* stats = nullptr,
                        std::atomic<const Volume*>* attached = nullptr);

}  // namespace edgestor
