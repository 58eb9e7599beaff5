// Device I/O layer: the bottom of the stack.
//
// A Device is a fixed-size array of bytes (a regular file or a block device,
// or an in-memory fault-injecting device in tests). It offers two paths:
//
//  * an asynchronous path through IoQueue: one queue per thread, never shared.
//    Submit() never blocks and never fails; the completion callback runs on
//    the thread that calls Poll() on that same queue. This is the data path.
//  * a synchronous path (ReadSync/WriteSync/FlushSync), callable from any
//    thread at once, for metadata (labels, journal, checkpoints) and tools.
//
// Contracts for both paths:
//  * offsets and lengths are multiples of kSectorSize (512);
//  * buffers are aligned to kIoAlignment (4096), so O_DIRECT works;
//  * a write is durable only once a Flush submitted after its completion has
//    completed. Until then a power loss may drop it, or tear it at any
//    512-byte boundary.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "base/aligned_buffer.h"
#include "base/status.h"

namespace edgestor {

inline constexpr uint32_t kSectorSize = 512;
inline constexpr uint32_t kIoAlignment = kBufferAlignment;

enum class IoOp : uint8_t { kRead, kWrite, kFlush };

// One asynchronous device operation. The submitter owns the struct and keeps
// it alive until `done` has been called.
struct IoRequest {
  IoOp op = IoOp::kRead;
  uint64_t offset = 0;
  uint32_t length = 0;
  uint8_t* buf = nullptr;  // kIoAlignment-aligned; unused for kFlush
  // Called exactly once, from IoQueue::Poll, with 0 on success or -errno.
  // A short read/write is reported as -EIO.
  void (*done)(IoRequest* req, int result) = nullptr;
  void* context = nullptr;  // for the submitter
};

// Per-thread submission/completion queue (an io_uring ring for files).
// NOT thread-safe: owned and used by exactly one thread, except for
// PostForeign, which any thread may call.
class IoQueue {
 public:
  IoQueue();
  virtual ~IoQueue();
  IoQueue(const IoQueue&) = delete;
  IoQueue& operator=(const IoQueue&) = delete;

  // ---- Work another thread finishes for this queue (group commits) ----
  // `req` counts as in flight from ExpectForeign (owner thread) until
  // PostForeign(req, result) (any thread); its callback then runs on this
  // queue's thread, in Poll, like a device completion. Poll(wait) wakes for
  // it.
  // Virtual so that a queue wrapping another forwards them to it.
  virtual void ExpectForeign(IoRequest* req);
  virtual void PostForeign(IoRequest* req, int result);

  // ---- Waking for a file descriptor (a front-end's socket) ----
  // The next Poll(wait=true) also returns once `fd` is ready for `events`
  // (POLLIN and/or POLLOUT), so one thread can wait for its device and its
  // client at once. Applies to that one waiting Poll; call again before
  // each. Only a Poll with something in flight waits at all.
  // A readiness noticed late may still end a later wait: callers re-check
  // their fd after every Poll.
  virtual void WatchFd(int fd, short events) {
    watch_fd_ = fd;
    watch_events_ = events;
  }
  // Queues `req`. Requests beyond the ring's depth wait in an internal
  // overflow list; Submit itself never blocks and never fails.
  virtual void Submit(IoRequest* req) = 0;
  // Pushes queued requests to the device and runs the callbacks of finished
  // ones. With `wait`, blocks until at least one completes (if any are in
  // flight). Returns the number of callbacks run.
  virtual int Poll(bool wait) = 0;
  // Requests submitted (or expected from another thread) and not yet
  // completed.
  virtual uint32_t InFlight() const = 0;

 protected:
  // For implementations of Poll. Foreign completions expected and not yet
  // run.
  uint32_t foreign_outstanding() const { return foreign_outstanding_; }
  // Readable while posted completions wait to be run (an eventfd), or -1.
  int foreign_fd() const { return foreign_fd_; }
  // Runs the callbacks of posted completions; with `wait` and none posted
  // yet, first waits until one is (if any is outstanding) or the watched fd
  // (TakeWatch) is ready. Returns how many ran, plus 1 if the watched fd
  // ended the wait.
  int RunForeign(bool wait);
  // The fd WatchFd named for this Poll (-1: none) and its events; clears it.
  std::pair<int, short> TakeWatch() {
    std::pair<int, short> watch{watch_events_ ? watch_fd_ : -1, watch_events_};
    watch_fd_ = -1;
    watch_events_ = 0;
    return watch;
  }

 private:
  int watch_fd_ = -1;
  short watch_events_ = 0;
  int foreign_fd_ = -1;
  uint32_t foreign_outstanding_ = 0;  // owner thread only
  std::mutex foreign_mu_;
  std::vector<std::pair<IoRequest*, int>> foreign_posted_;  // GUARDED_BY(foreign_mu_)
};

struct DeviceStats {
  uint64_t bytes_read = 0;
  uint64_t bytes_written = 0;
  uint64_t reads = 0;
  uint64_t writes = 0;
  uint64_t flushes = 0;
};

class Device {
 public:
  virtual ~Device() = default;
  virtual uint64_t size() const = 0;
  virtual std::string name() const = 0;

  virtual std::unique_ptr<IoQueue> CreateQueue(uint32_t depth) = 0;

  virtual Status ReadSync(uint64_t offset, void* buf, size_t len) = 0;
  virtual Status WriteSync(uint64_t offset, const void* buf, size_t len) = 0;
  virtual Status FlushSync() = 0;
  // Has the host reserve space for [offset, offset+len), so that writes
  // there cannot fail for lack of room in the file system holding a sparse
  // file (fallocate). ENOSPC if the host has no room. Devices that need no
  // reservation (block devices, memory) succeed at once.
  virtual Status Allocate(uint64_t offset, uint64_t len) {
    (void)offset;
    (void)len;
    return Status::Ok();
  }

  // Counters since the device was opened (thread-safe snapshot).
  virtual DeviceStats stats() const = 0;
};

// Opening or creating devices backed by files and block devices.
struct FileDeviceOptions {
  bool create = false;       // create the file if missing
  uint64_t create_size = 0;  // with create: grow a regular file (sparsely) to this size
  bool read_only = false;
  bool direct = true;  // O_DIRECT; falls back to buffered I/O with a warning where refused
};

Result<std::unique_ptr<Device>> OpenFileDevice(const std::string& path, const FileDeviceOptions& options);

}  // namespace edgestor
