// CodecPool: steps run on a worker and complete on the submitter's queue.
#include "volume/codec_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "io/fault_device.h"

namespace edgestor {
namespace {

struct Job {
  IoRequest req;
  std::thread::id step_thread;
  std::thread::id done_thread;
  int result = 1;  // not completed yet
};

std::atomic<bool> g_release{true};

int RecordingStep(IoRequest* req) {
  while (!g_release.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  static_cast<Job*>(req->context)->step_thread = std::this_thread::get_id();
  return req->offset == 0 ? 0 : -EIO;  // offset 1: a failing step
}

Job* NewJob(std::vector<std::unique_ptr<Job>>& jobs, bool fail) {
  jobs.push_back(std::make_unique<Job>());
  Job* job = jobs.back().get();
  job->req.offset = fail ? 1 : 0;
  job->req.context = job;
  job->req.done = [](IoRequest* req, int result) {
    auto* j = static_cast<Job*>(req->context);
    j->result = result;
    j->done_thread = std::this_thread::get_id();
  };
  return job;
}

// Something else in flight on a queue (foreign work posted on Finish), as
// a busy I/O thread has.
class KeepQueueBusy {
 public:
  explicit KeepQueueBusy(IoQueue& queue) : queue_(queue) {
    req_.done = [](IoRequest*, int) {};
    queue_.ExpectForeign(&req_);
  }
  void Finish() {
    if (!posted_) queue_.PostForeign(&req_, 0);
    posted_ = true;
  }
  ~KeepQueueBusy() { Finish(); }

 private:
  IoQueue& queue_;
  IoRequest req_;
  bool posted_ = false;
};

TEST(CodecPool, StepsRunOnAWorkerAndCompleteOnTheSubmittersQueue) {
  FaultDevice device(1 << 20);
  auto queue = device.CreateQueue(8);
  CodecPool pool(1);
  std::vector<std::unique_ptr<Job>> jobs;
  Job* ok = NewJob(jobs, false);
  Job* failing = NewJob(jobs, true);
  // With nothing else in flight the submitter runs the step itself.
  EXPECT_FALSE(pool.TryOffload(&ok->req, *queue, RecordingStep));
  KeepQueueBusy busy(*queue);
  ASSERT_TRUE(pool.TryOffload(&ok->req, *queue, RecordingStep));
  ASSERT_TRUE(pool.TryOffload(&failing->req, *queue, RecordingStep));
  EXPECT_EQ(queue->InFlight(), 3u);
  busy.Finish();
  while (queue->InFlight() > 0) queue->Poll(/*wait=*/true);
  for (Job* job : {ok, failing}) {
    EXPECT_NE(job->step_thread, std::this_thread::get_id()) << "the step ran on the submitter's thread";
    EXPECT_EQ(job->done_thread, std::this_thread::get_id()) << "the completion ran off the submitter's thread";
  }
  EXPECT_EQ(ok->result, 0);
  EXPECT_EQ(failing->result, -EIO);
  EXPECT_EQ(pool.offloaded(), 2u);
  EXPECT_EQ(pool.refused(), 1u);
}

TEST(CodecPool, RefusesWhenItsWorkersHaveEnoughWaiting) {
  FaultDevice device(1 << 20);
  auto queue = device.CreateQueue(8);
  CodecPool none(0);
  std::vector<std::unique_ptr<Job>> jobs;
  EXPECT_FALSE(none.TryOffload(&NewJob(jobs, false)->req, *queue, RecordingStep));
  EXPECT_EQ(queue->InFlight(), 0u) << "a refused step must take nothing";

  CodecPool pool(1);
  KeepQueueBusy busy(*queue);
  g_release = false;  // the worker holds its first step
  int accepted = 0;
  while (pool.TryOffload(&NewJob(jobs, false)->req, *queue, RecordingStep)) {
    ASSERT_LT(++accepted, 10) << "never refused";
  }
  EXPECT_GE(accepted, 2);  // two may wait per worker
  EXPECT_LE(accepted, 3);  // ... besides the one it runs
  EXPECT_EQ(pool.refused(), 1u);
  g_release = true;
  busy.Finish();
  while (queue->InFlight() > 0) queue->Poll(/*wait=*/true);
  int completed = 0;
  for (auto& job : jobs) completed += job->result == 0;
  EXPECT_EQ(completed, accepted);
}

}  // namespace
}  // namespace edgestor
