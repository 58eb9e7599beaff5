// Committer: flushes queued while a commit runs share the next one, and
// every waiter gets its outcome on its own queue's thread.
#include "volume/committer.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "io/fault_device.h"

namespace edgestor {
namespace {

// A commit function that blocks its first call until released, and fails
// with `result` from then on if set.
class GatedCommit {
 public:
  Status operator()() {
    std::unique_lock lock(mu_);
    calls_++;
    changed_.notify_all();
    changed_.wait(lock, [this] { return released_; });
    return result_;
  }
  void WaitForCalls(int n) {
    std::unique_lock lock(mu_);
    changed_.wait(lock, [&] { return calls_ >= n; });
  }
  void Release(Status result) {
    std::lock_guard lock(mu_);
    released_ = true;
    result_ = std::move(result);
    changed_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable changed_;
  int calls_ = 0;
  bool released_ = false;
  Status result_;
};

struct Waiter {
  IoRequest req;
  int result = 1;
  std::thread::id ran_on;
};

void Record(IoRequest* req, int result) {
  auto* w = static_cast<Waiter*>(req->context);
  w->result = result;
  w->ran_on = std::this_thread::get_id();
}

// Queues `waiters` on `queue` (the calling thread owns it).
void Enqueue(Committer& committer, IoQueue& queue, std::vector<Waiter>& waiters, size_t from, size_t to) {
  for (size_t i = from; i < to; i++) {
    waiters[i].req.done = Record;
    waiters[i].req.context = &waiters[i];
    queue.ExpectForeign(&waiters[i].req);
    committer.Enqueue(&waiters[i].req, queue);
  }
}

TEST(Committer, FlushesQueuedDuringACommitShareTheNextOne) {
  FaultDevice device(1 << 20);
  auto queue = device.CreateQueue(8);
  GatedCommit gate;
  Committer committer([&] { return gate(); }, [] {});
  std::vector<Waiter> waiters(32);
  Enqueue(committer, *queue, waiters, 0, 1);
  gate.WaitForCalls(1);  // the first commit is running: the rest must wait for the next
  Enqueue(committer, *queue, waiters, 1, waiters.size());
  gate.Release(Status::Ok());
  while (queue->InFlight() > 0) queue->Poll(/*wait=*/true);
  committer.Stop();
  EXPECT_EQ(committer.commits(), 2u) << "31 flushes queued behind one commit took more than one more";
  EXPECT_EQ(committer.waiters_served(), 32u);
  EXPECT_GT(committer.commit_ns_max(), 0u);
  EXPECT_GE(committer.commit_ns_total(), committer.commit_ns_max());
  for (const Waiter& w : waiters) {
    EXPECT_EQ(w.result, 0);
    EXPECT_EQ(w.ran_on, std::this_thread::get_id()) << "a completion ran off its queue's thread";
  }
}

TEST(Committer, AFailedCommitFailsEveryWaiterAndSaysWhy) {
  FaultDevice device(1 << 20);
  auto queue = device.CreateQueue(8);
  GatedCommit gate;
  gate.Release(Status(EIO, "flushing data: device gone"));
  Committer committer([&] { return gate(); }, [] {});
  std::vector<Waiter> waiters(4);
  Enqueue(committer, *queue, waiters, 0, waiters.size());
  while (queue->InFlight() > 0) queue->Poll(/*wait=*/true);
  for (const Waiter& w : waiters) EXPECT_EQ(w.result, -EIO);
  EXPECT_NE(committer.last_error().find("device gone"), std::string::npos) << committer.last_error();
}

TEST(Committer, StopCommitsWhatIsQueued) {
  FaultDevice device(1 << 20);
  auto queue = device.CreateQueue(8);
  std::atomic<int> commits{0};
  Committer committer([&] { commits++; return Status::Ok(); }, [] {});
  std::vector<Waiter> waiters(3);
  Enqueue(committer, *queue, waiters, 0, waiters.size());
  committer.Stop();
  while (queue->InFlight() > 0) queue->Poll(/*wait=*/true);
  EXPECT_GE(commits.load(), 1);
  for (const Waiter& w : waiters) EXPECT_EQ(w.result, 0);
}

}  // namespace
}  // namespace edgestor
