#include "volume/committer.h"

#include <cassert>
#include <chrono>

namespace edgestor {

Committer::Committer(std::function<Status()> commit, std::function<void()> checkpoint)
    : commit_(std::move(commit)), checkpoint_(std::move(checkpoint)), thread_([this] { Loop(); }) {
  assert(commit_ && checkpoint_);
}

Committer::~Committer() { Stop(); }

void Committer::Enqueue(IoRequest* req, IoQueue& queue) {
  assert(req != nullptr && req->done != nullptr);
  {
    std::lock_guard lock(mu_);
    assert(!stopping_);
    waiting_.emplace_back(req, &queue);
  }
  wake_.notify_one();
}

void Committer::WantCheckpoint() {
  // Asked after every I/O while a checkpoint is due: once it is wanted,
  // later asks cost one load, not the lock.
  if (checkpoint_wanted_.load(std::memory_order_relaxed)) return;
  {
    std::lock_guard lock(mu_);
    if (checkpoint_wanted_.load(std::memory_order_relaxed)) return;
    checkpoint_wanted_.store(true, std::memory_order_relaxed);
  }
  wake_.notify_one();
}

void Committer::Stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  wake_.notify_one();
  if (thread_.joinable()) thread_.join();
}

std::string Committer::last_error() const {
  std::lock_guard lock(mu_);
  return last_error_;
}

void Committer::Loop() {
  std::vector<std::pair<IoRequest*, IoQueue*>> batch;
  for (;;) {
    bool checkpoint = false;
    {
      std::unique_lock lock(mu_);
      wake_.wait(lock, [this] { return stopping_ || !waiting_.empty() || checkpoint_wanted_.load(); });
      if (waiting_.empty() && stopping_) return;  // a wanted checkpoint is left to Close
      assert(batch.empty() && "the last batch was served and cleared");
      batch.swap(waiting_);
      checkpoint = checkpoint_wanted_.exchange(false) && !stopping_;
    }
    if (!batch.empty()) CommitBatch(batch);
    batch.clear();
    if (checkpoint) checkpoint_();
  }
}

void Committer::CommitBatch(const std::vector<std::pair<IoRequest*, IoQueue*>>& batch) {
  assert(!batch.empty());
  auto start = std::chrono::steady_clock::now();
  Status s = commit_();
  auto ns = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start).count());
  commit_ns_total_.fetch_add(ns, std::memory_order_relaxed);
  if (ns > commit_ns_max_.load(std::memory_order_relaxed)) commit_ns_max_.store(ns, std::memory_order_relaxed);
  commits_.fetch_add(1, std::memory_order_relaxed);
  waiters_served_.fetch_add(batch.size(), std::memory_order_relaxed);
  if (!s.ok()) {
    std::lock_guard lock(mu_);
    last_error_ = s.ToString();
  }
  for (auto [req, queue] : batch) {
    assert(req != nullptr && queue != nullptr);
    queue->PostForeign(req, s.ok() ? 0 : -s.code());
  }
}

}  // namespace edgestor
