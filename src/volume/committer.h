// Committer: group commits and background checkpoints, on a thread of
// their own.
//
// A FLUSH (or a FUA write) does not commit on its I/O thread: it waits
// here. The committer's thread takes every waiter queued so far, runs one
// commit for all of them (one pair of device flushes however many wait:
// each waiter's writes completed before it was queued, so before the
// commit began) and hands each outcome back to the waiter's IoQueue
// (PostForeign), whose own thread then runs the completion. A checkpoint
// the data path wants (journal half full, too many dirty map pages) runs
// here too, never inline on an I/O thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "base/status.h"
#include "io/device.h"

namespace edgestor {

class Committer {
 public:
  // `commit` makes every write completed before it durable; `checkpoint`
  // runs a checkpoint if one is still wanted.
  Committer(std::function<Status()> commit, std::function<void()> checkpoint);
  ~Committer();  // Stop()

  // Any thread. REQUIRES: queue.ExpectForeign(req) already called by the
  // queue's thread. `req` completes on that thread with 0, or -errno (then
  // last_error() says why), once every write completed before this call is
  // durable.
  void Enqueue(IoRequest* req, IoQueue& queue);
  // Any thread: run the checkpoint function soon.
  void WantCheckpoint();
  // Commits what is queued, then ends the thread. Idempotent.
  void Stop();

  std::string last_error() const;
  // Counters: commits run, and the waiters they served (their ratio is the
  // grouping achieved).
  uint64_t commits() const { return commits_.load(std::memory_order_relaxed); }
  uint64_t waiters_served() const { return waiters_served_.load(std::memory_order_relaxed); }
  // Time spent in commits (device flush, journal, device flush), in total
  // and the longest one: with commits(), the mean and worst commit latency.
  uint64_t commit_ns_total() const { return commit_ns_total_.load(std::memory_order_relaxed); }
  uint64_t commit_ns_max() const { return commit_ns_max_.load(std::memory_order_relaxed); }

 private:
  void Loop();
  void CommitBatch(const std::vector<std::pair<IoRequest*, IoQueue*>>& batch);

  const std::function<Status()> commit_;
  const std::function<void()> checkpoint_;
  mutable std::mutex mu_;
  std::condition_variable wake_;
  std::vector<std::pair<IoRequest*, IoQueue*>> waiting_;  // GUARDED_BY(mu_)
  std::atomic<bool> checkpoint_wanted_{false};             // written under mu_; read without it too
  bool stopping_ = false;                                  // GUARDED_BY(mu_)
  std::string last_error_;                                 // GUARDED_BY(mu_)
  std::atomic<uint64_t> commits_{0};
  std::atomic<uint64_t> waiters_served_{0};
  std::atomic<uint64_t> commit_ns_total_{0};
  std::atomic<uint64_t> commit_ns_max_{0};  // written by the committer thread only
  std::thread thread_;  // last: starts once the members above exist
};

}  // namespace edgestor
