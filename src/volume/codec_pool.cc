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

CodecPool::CodecPool(unsigned workers)
    : max_waiting_(size_t{workers} * kWaitingPerWorker), waiting_(size_t{workers} * kWaitingPerWorker) {
  assert(waiting_.size() == max_waiting_ && "the ring holds exactly the waiting bound");
  for (unsigned i = 0; i < workers; i++) workers_.emplace_back(&CodecPool::Work, this);
}

CodecPool::~CodecPool() {
  {
    std::lock_guard lock(mu_);
    assert(count_ == 0 && "codec steps still waiting: their requests would never complete");
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
  // only wait: running a compute step itself saves two thread switches (at
  // QD1 offloading cost a zstd read a fifth of its speed).
  if (queue.InFlight() == 0) {
    refused_.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  {
    std::lock_guard lock(mu_);
    if (count_ >= max_waiting_ || stopping_) {
      refused_.fetch_add(1, std::memory_order_relaxed);
      return false;
    }
    queue.ExpectForeign(req);  // before a worker can post it
    waiting_[(head_ + count_) % waiting_.size()] = {req, &queue, step};
    count_++;
    assert(count_ <= max_waiting_ && head_ < waiting_.size());
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
      wake_.wait(lock, [this] { return stopping_ || count_ > 0; });
      if (count_ == 0) return;  // stopping, and nothing left
      job = waiting_[head_];
      head_ = (head_ + 1) % waiting_.size();
      count_--;
    }
    assert(job.req != nullptr && job.queue != nullptr && job.step != nullptr);
    int result = job.step(job.req);
    assert(result <= 0);
    job.queue->PostForeign(job.req, result);  // the request is the submitter's again
  }
}

}  // namespace edgestor
