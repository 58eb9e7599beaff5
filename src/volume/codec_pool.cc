#include "volume/codec_pool.h"

#include <algorithm>
#include <cassert>

namespace edgestor {

namespace {

// Steps waiting per worker before TryOffload refuses: enough to keep a
// worker busy between two polls of the submitting thread, few enough that
// a step never waits long behind others.
constexpr size_t kWaitingPerWorker = 2;

}  // namespace

CodecPool::CodecPool(unsigned workers) : max_waiting_(size_t{workers} * kWaitingPerWorker) {
  for (unsigned i = 0; i < workers; i++) workers_.emplace_back(&CodecPool::Work, this);
}

CodecPool::~CodecPool() {
  {
    std::lock_guard lock(mu_);
    assert(waiting_.empty() && "codec steps still waiting: their requests would never complete");
    stopping_ = true;
  }
  wake_.notify_all();
  for (std::thread& t : workers_) t.join();
}

unsigned CodecPool::DefaultWorkers() {
  unsigned cores = std::thread::hardware_concurrency();
  return cores > 1 ? cores - 1 : 0;
}

bool CodecPool::TryOffload(IoRequest* req, IoQueue& queue, Step step) {
  assert(req != nullptr && req->done != nullptr && step != nullptr);
  // With nothing else in flight on its queue the submitting thread would
  // only wait: running the step itself saves two thread switches (at QD1
  // offloading cost a zstd read a fifth of its speed).
  if (queue.InFlight() == 0) {
    refused_.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  {
    std::lock_guard lock(mu_);
    if (waiting_.size() >= max_waiting_ || stopping_) {
      refused_.fetch_add(1, std::memory_order_relaxed);
      return false;
    }
    queue.ExpectForeign(req);  // before a worker can post it
    waiting_.push_back({req, &queue, step});
  }
  offloaded_.fetch_add(1, std::memory_order_relaxed);
  wake_.notify_one();
  return true;
}

void CodecPool::Work() {
  for (;;) {
    Job job;
    {
      std::unique_lock lock(mu_);
      wake_.wait(lock, [this] { return stopping_ || !waiting_.empty(); });
      if (waiting_.empty()) return;  // stopping, and nothing left
      job = waiting_.front();
      waiting_.pop_front();
    }
    int result = job.step(job.req);
    assert(result <= 0);
    job.queue->PostForeign(job.req, result);  // the request is the submitter's again
  }
}

}  // namespace edgestor
