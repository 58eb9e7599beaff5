// JobRegistry: long operations run as jobs, each on its own thread, with an
// id, a state, progress, rate and ETA that `edgestor job list|wait` show.
//
// A job's function reports progress through its JobContext, whose answer
// says whether to go on: false once the job is cancelled (by a caller, if
// the job allows it) or the daemon is stopping. A job that stopped for the
// daemon's sake is "interrupted"; if it is resumable the daemon stores it
// (ResumableJobs) and starts it again, with the same id, at the next start.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/status.h"

namespace edgestor {

enum class JobState { kRunning, kSucceeded, kFailed, kCancelled, kInterrupted };
std::string_view JobStateName(JobState state);  // "running", "succeeded", ...

// What a job is; stored for resumable jobs.
struct JobSpec {
  uint64_t id = 0;      // 0: a new id; otherwise a resumed job's
  std::string kind;     // "flatten", ...
  std::string target;   // what it works on (a volume name)
  std::string unit;     // of its progress: "clusters", "bytes"
  bool cancellable = false;
  bool resumable = false;
  uint32_t resumed = 0;  // times it was started again after a restart
};

struct JobInfo {
  JobSpec spec;
  JobState state = JobState::kRunning;
  uint64_t done = 0;
  uint64_t total = 0;
  double rate = 0;            // units per second since this run began
  int64_t eta_seconds = -1;   // -1: unknown
  uint64_t started_unix = 0;  // this run
  uint64_t finished_unix = 0;
  std::string result;     // what it did (succeeded) or why it stopped
  int error = 0;          // failed: the errno it failed with
  nlohmann::json output;  // the job function's result (succeeded), e.g. {"copied_clusters": N}
};
void to_json(nlohmann::json& out, const JobInfo& info);

class JobContext {
 public:
  // Records progress (in the job's unit); false: stop now (cancelled or
  // the daemon stops) and return ECANCELED.
  bool Progress(uint64_t done, uint64_t total);
  bool ShouldStop() const;

 private:
  friend class JobRegistry;
  struct Job;
  explicit JobContext(Job& job) : job_(job) {}
  Job& job_;
};

// The job's work. On success, an object whose "summary" (a line for
// people) becomes JobInfo::result; the whole is JobInfo::output.
using JobFunction = std::function<Result<nlohmann::json>(JobContext&)>;

class JobRegistry {
 public:
  // `changed` runs (on the job's thread, no lock held) when a job ends, so
  // the owner can store what is left to resume.
  explicit JobRegistry(std::function<void()> changed = {});
  ~JobRegistry();  // Shutdown()
  JobRegistry(const JobRegistry&) = delete;
  JobRegistry& operator=(const JobRegistry&) = delete;

  // Starts `work` on a thread of its own. ESHUTDOWN once shutting down.
  Result<uint64_t> Start(JobSpec spec, JobFunction work);
  std::vector<JobInfo> List() const;
  Result<JobInfo> Get(uint64_t id) const;  // ENOENT
  // Asks a running job to stop. EPERM if it cannot be cancelled safely,
  // EALREADY if it has ended.
  Status Cancel(uint64_t id);
  // Waits until the job ends or `timeout` passes; its info either way.
  Result<JobInfo> Wait(uint64_t id, std::chrono::milliseconds timeout);
  // Stops every job (they end "interrupted") and joins their threads.
  void Shutdown();
  // Running or interrupted resumable jobs, and the next id, for the state
  // file; Restore() reads them back (ids are never reused).
  nlohmann::json ResumableJobs() const;
  void SetNextId(uint64_t next_id);

 private:
  void Run(JobContext::Job* job, JobFunction work);

  std::function<void()> changed_;
  mutable std::mutex mu_;
  std::condition_variable ended_;
  std::map<uint64_t, std::unique_ptr<JobContext::Job>> jobs_;  // GUARDED_BY(mu_)
  uint64_t next_id_ = 1;                                       // GUARDED_BY(mu_)
  bool shutting_down_ = false;                                  // GUARDED_BY(mu_)
  std::atomic<bool> stopping_{false};                           // shutting_down_, for jobs to poll
};

}  // namespace edgestor
