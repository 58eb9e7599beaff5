// A thin volume: the asynchronous data path.
//
// Requests are submitted with Submit() and complete later through the
// request's `done` callback, which runs on the thread that polls the IoQueue
// passed to Submit. Several threads may submit to the same volume at once,
// each with its own IoQueue (NBD multi-conn, vhost-user multi-queue).
//
// Semantics (any offset and length within the volume size, byte-granular;
// ranges not aligned to 4 KiB read and rewrite their partial blocks, see
// thin_volume_unaligned.cc):
//  * kRead of never-written or discarded space returns zeros without I/O.
//  * kWrite overwriting a cluster the volume owns goes to its place with no
//    metadata change; the first write of a 4 KiB block records it in the
//    cluster's written bits.
//  * kDiscard and kWriteZeroes make the range read as zeros; whole clusters
//    are freed (once the freeing commit is durable the space can be reused).
//  * kFlush completes once every write completed before it is durable.
//  * fua on kWrite/kWriteZeroes/kDiscard: completes only when durable.
// Overlapping requests in flight at the same time have no defined order
// (as with a disk).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "base/io_stats.h"
#include "base/status.h"
#include "io/device.h"

namespace edgestor {

class Volume;

enum class VolumeOp : uint8_t { kRead, kWrite, kFlush, kDiscard, kWriteZeroes };

struct VolumeIo {
  VolumeOp op = VolumeOp::kRead;
  bool fua = false;
  uint64_t offset = 0;
  uint64_t length = 0;
  // kRead/kWrite: `length` bytes. Any alignment works; requests whose
  // buffer, offset and length are not 4 KiB-aligned go through a bounce
  // buffer.
  uint8_t* buf = nullptr;
  // Called exactly once with the outcome: EINVAL (range out of the volume),
  // ENOSPC (pool full), EIO (device error), EUCLEAN (damaged metadata).
  // It may run before Submit returns (errors, a discard or write-zeroes
  // that changes only the map). After it returns the engine never
  // touches `io` again, so the callback may reuse or free it.
  void (*done)(VolumeIo* io, const Status& status) = nullptr;
  void* context = nullptr;
  // Also counts this request, besides the volume's own IoStats (an
  // export's, say). Optional; must outlive the request.
  IoStats* stats = nullptr;

  // Engine-private progress; zero-initialised by the submitter.
  struct Progress {
    uint32_t pending = 0;  // sub-requests outstanding
    int error = 0;         // first errno seen
    bool async_write = false;  // counted in the volume's asynchronous writes
    Volume* volume = nullptr;  // where it was submitted
    IoQueue* queue = nullptr;  // with which queue
    IoRequest commit;          // a FLUSH or FUA waiting for its group commit
    // A part of an unaligned request's read-modify-write (that request's
    // state): it passes the gate its owner holds on its clusters.
    void* gate_owner = nullptr;
    uint64_t started_ns = 0;  // IoStats::NowNs() at Submit, for the latency
  } progress;
};

// A run of a volume with one allocation state (for NBD block status,
// sparse copies): `written` blocks hold data; the rest read as zeros.
struct VolumeExtent {
  uint64_t length = 0;
  bool written = false;
};

class Volume {
 public:
  virtual ~Volume() = default;
  virtual uint32_t id() const = 0;
  virtual const std::string& name() const = 0;
  virtual uint64_t size() const = 0;
  // Snapshots are read-only: writes, discards and write-zeroes fail EROFS.
  virtual bool read_only() const { return false; }
  virtual void Submit(VolumeIo* io, IoQueue& queue) = 0;
  // Describes [offset, offset+length) from the thin map, merging adjacent
  // runs of the same state, at most `max_extents` of them (the last one may
  // end before offset+length). No data I/O; may read a map page. EINVAL if
  // the range is out of the volume.
  virtual Result<std::vector<VolumeExtent>> Describe(uint64_t offset, uint64_t length, size_t max_extents) = 0;
  // What this volume served since it was opened; null if it keeps no count.
  virtual const IoStats* io_stats() const { return nullptr; }
};

// Submits `io` and polls `queue` until it completes. For tools and tests.
Status RunSync(Volume& volume, VolumeIo& io, IoQueue& queue);

// One thread's way into the engine: it owns that thread's I/O queue (an
// io_uring ring), so a front-end submits, waits and polls through the
// volume API and needs nothing from the device layer. Used by one thread
// only; the completions of what it submitted run inside its Poll (or, for
// the engine's synchronous paths, inside Submit).
class VolumeChannel {
 public:
  explicit VolumeChannel(std::unique_ptr<IoQueue> queue);
  ~VolumeChannel();  // REQUIRES: nothing in flight
  VolumeChannel(const VolumeChannel&) = delete;
  VolumeChannel& operator=(const VolumeChannel&) = delete;

  void Submit(Volume& volume, VolumeIo* io) { volume.Submit(io, *queue_); }
  // Runs the callbacks of finished requests; with `wait`, first waits for
  // one if any is in flight (or for the fd WatchFd named, if it is ready
  // sooner). Returns how many callbacks ran (a ready fd counts one).
  int Poll(bool wait) { return queue_->Poll(wait); }
  // The next waiting Poll also ends once `fd` is ready for `events`
  // (POLLIN/POLLOUT): a front-end waits for its device and its client at
  // once. See IoQueue::WatchFd.
  void WatchFd(int fd, short events) { queue_->WatchFd(fd, events); }
  // Requests submitted and not yet completed.
  uint32_t InFlight() const { return queue_->InFlight(); }
  Status RunSync(Volume& volume, VolumeIo& io) { return edgestor::RunSync(volume, io, *queue_); }

 private:
  std::unique_ptr<IoQueue> queue_;
};

}  // namespace edgestor
