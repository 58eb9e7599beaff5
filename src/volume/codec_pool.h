// CodecPool: worker threads for the data path's CPU-heavy codec steps
// (decompressing a cluster for a read, re-encoding one for a write), so
// that one connection's compressed I/O is not bound to the one core its
// I/O thread runs on; and for the steps that must wait for the device
// (the synchronous path: unaligned I/O, discard, write-zeroes), so that
// the other requests of the I/O thread's queue go on meanwhile.
//
// A step handed over completes like a device I/O: the worker runs it, then
// posts the request back to the submitter's IoQueue (PostForeign), whose
// own thread runs the continuation. Each request's steps therefore still
// run one after another, never two at once, and the buffers a step uses
// are owned by the request throughout. When the workers are busy enough,
// TryOffload refuses and the caller runs the step itself: the I/O thread
// is a worker too, and the queue of waiting steps stays short.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include "io/device.h"

namespace edgestor {

class CodecPool {
 public:
  // A step: returns 0 or -errno, the result `req` then completes with.
  using Step = int (*)(IoRequest* req);

  // `workers` threads; 0: TryOffload always refuses (one core).
  explicit CodecPool(unsigned workers);
  ~CodecPool();  // REQUIRES: no step handed over is still running
  CodecPool(const CodecPool&) = delete;
  CodecPool& operator=(const CodecPool&) = delete;

  // Workers for this machine: one fewer than its cores.
  static unsigned DefaultWorkers();

  // On `queue`'s thread. Hands `step` over, to run on a worker and complete
  // `req` on `queue` (req->done, with the step's result); or returns false,
  // taking nothing, if the workers already have enough waiting or the
  // queue has nothing else in flight (its thread would only wait: running
  // the step itself is cheaper). Steps are CPU work only, never device I/O.
  bool TryOffload(IoRequest* req, IoQueue& queue, Step step);

  // Steps handed over since the pool was made, and those refused.
  uint64_t offloaded() const { return offloaded_; }
  uint64_t refused() const { return refused_; }

 private:
  struct Job {
    IoRequest* req = nullptr;
    IoQueue* queue = nullptr;
    Step step = nullptr;
  };
  void Work();

  const size_t max_waiting_;
  std::mutex mu_;
  std::condition_variable wake_;
  // Steps waiting, a ring of max_waiting_ entries allocated once (no
  // allocation per step): [head_, head_ + count_) modulo its size.
  std::vector<Job> waiting_;  // GUARDED_BY(mu_)
  size_t head_ = 0;           // GUARDED_BY(mu_)
  size_t count_ = 0;          // GUARDED_BY(mu_)
  bool stopping_ = false;    // GUARDED_BY(mu_)
  std::atomic<uint64_t> offloaded_{0};
  std::atomic<uint64_t> refused_{0};
  std::vector<std::thread> workers_;  // last: they use the members above
};

}  // namespace edgestor
