#include "ops/job_registry.h"

#include <cassert>
#include <cerrno>
#include <ctime>

#include <spdlog/spdlog.h>

namespace edgestor {
namespace {

// Finished jobs kept for `job list` and `job wait`; older ones are forgotten.
constexpr size_t kFinishedJobsKept = 64;

uint64_t NowUnix() { return static_cast<uint64_t>(::time(nullptr)); }

}  // namespace

struct JobContext::Job {
  JobInfo info;                  // GUARDED_BY(registry mu_)
  std::mutex* mu = nullptr;      // the registry's
  std::atomic<bool> cancel{false};
  const std::atomic<bool>* stopping = nullptr;  // the registry's: it is shutting down
  std::chrono::steady_clock::time_point run_start = std::chrono::steady_clock::now();
  uint64_t first_done = 0;  // progress at this run's first report
  bool reported = false;
  std::thread thread;
};

std::string_view JobStateName(JobState state) {
  switch (state) {
    case JobState::kRunning: return "running";
    case JobState::kSucceeded: return "succeeded";
    case JobState::kFailed: return "failed";
    case JobState::kCancelled: return "cancelled";
    case JobState::kInterrupted: return "interrupted";
  }
  return "unknown";
}

void to_json(nlohmann::json& out, const JobInfo& info) {
  out = nlohmann::json{{"id", info.spec.id},
                       {"kind", info.spec.kind},
                       {"target", info.spec.target},
                       {"unit", info.spec.unit},
                       {"cancellable", info.spec.cancellable},
                       {"resumable", info.spec.resumable},
                       {"resumed", info.spec.resumed},
                       {"state", JobStateName(info.state)},
                       {"done", info.done},
                       {"total", info.total},
                       {"percent", info.total ? 100.0 * static_cast<double>(info.done) / static_cast<double>(info.total)
                                              : (info.state == JobState::kSucceeded ? 100.0 : 0.0)},
                       {"rate", info.rate},
                       {"eta_seconds", info.eta_seconds},
                       {"started_unix", info.started_unix},
                       {"finished_unix", info.finished_unix},
                       {"result", info.result},
                       {"error", info.error},
                       {"output", info.output}};
}

bool JobContext::ShouldStop() const { return job_.cancel.load() || job_.stopping->load(); }

bool JobContext::Progress(uint64_t done, uint64_t total) {
  std::lock_guard lock(*job_.mu);
  JobInfo& info = job_.info;
  info.done = done;
  info.total = total;
  if (!job_.reported) {
    job_.reported = true;
    job_.first_done = done;
    job_.run_start = std::chrono::steady_clock::now();
  }
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - job_.run_start).count();
  if (seconds > 0.2 && done > job_.first_done) {
    info.rate = static_cast<double>(done - job_.first_done) / seconds;
    info.eta_seconds = total > done ? static_cast<int64_t>(static_cast<double>(total - done) / info.rate + 0.5) : 0;
  }
  return !ShouldStop();
}

JobRegistry::JobRegistry(std::function<void()> changed) : changed_(std::move(changed)) {}

JobRegistry::~JobRegistry() { Shutdown(); }

Result<uint64_t> JobRegistry::Start(JobSpec spec, JobFunction work) {
  std::vector<std::thread> finished;
  uint64_t id;
  {
    std::lock_guard lock(mu_);
    if (shutting_down_) return Status(ESHUTDOWN, "the daemon is stopping");
    if (spec.id == 0) spec.id = next_id_;
    if (jobs_.count(spec.id)) return Status(EEXIST, "job " + std::to_string(spec.id) + " exists");
    next_id_ = std::max(next_id_, spec.id + 1);
    id = spec.id;
    // Forget the oldest finished jobs beyond the few kept.
    size_t ended = 0;
    for (auto& [job_id, job] : jobs_) ended += job->info.state != JobState::kRunning;
    for (auto it = jobs_.begin(); it != jobs_.end() && ended > kFinishedJobsKept;) {
      if (it->second->info.state == JobState::kRunning) {
        ++it;
        continue;
      }
      finished.push_back(std::move(it->second->thread));
      it = jobs_.erase(it);
      ended--;
    }
    auto job = std::make_unique<JobContext::Job>();
    job->info.spec = std::move(spec);
    job->info.started_unix = NowUnix();
    job->mu = &mu_;
    job->stopping = &stopping_;
    JobContext::Job* raw = job.get();
    jobs_[id] = std::move(job);
    raw->thread = std::thread(&JobRegistry::Run, this, raw, std::move(work));
  }
  for (std::thread& t : finished)
    if (t.joinable()) t.join();
  return id;
}

void JobRegistry::Run(JobContext::Job* job, JobFunction work) {
  JobContext context(*job);
  Result<nlohmann::json> outcome = work(context);
  {
    std::lock_guard lock(mu_);
    JobInfo& info = job->info;
    info.finished_unix = NowUnix();
    info.eta_seconds = outcome.ok() ? 0 : -1;
    if (outcome.ok()) {
      info.state = JobState::kSucceeded;
      info.output = outcome.value();
      info.result = info.output.value("summary", "done");
      info.done = info.total;
    } else if (outcome.status().code() == ECANCELED && job->cancel.load()) {
      info.state = JobState::kCancelled;
      info.result = "cancelled";
    } else if (outcome.status().code() == ECANCELED && shutting_down_) {
      info.state = JobState::kInterrupted;
      info.result = info.spec.resumable ? "interrupted by the daemon stopping; resumes at its next start"
                                        : "interrupted by the daemon stopping";
    } else {
      info.state = JobState::kFailed;
      info.result = outcome.status().message();
      info.error = outcome.status().code();
    }
    spdlog::info("job {} ({} {}) {}: {}", info.spec.id, info.spec.kind, info.spec.target, JobStateName(info.state),
                 info.result);
  }
  ended_.notify_all();
  if (changed_) changed_();
}

std::vector<JobInfo> JobRegistry::List() const {
  std::lock_guard lock(mu_);
  std::vector<JobInfo> out;
  for (const auto& [id, job] : jobs_) out.push_back(job->info);
  return out;
}

Result<JobInfo> JobRegistry::Get(uint64_t id) const {
  std::lock_guard lock(mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return Status(ENOENT, "no job " + std::to_string(id) + " (finished jobs are kept until the daemon restarts)");
  return it->second->info;
}

Status JobRegistry::Cancel(uint64_t id) {
  std::lock_guard lock(mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return Status(ENOENT, "no job " + std::to_string(id));
  JobContext::Job& job = *it->second;
  if (job.info.state != JobState::kRunning)
    return Status(EALREADY, "job " + std::to_string(id) + " has already ended (" + std::string(JobStateName(job.info.state)) + ")");
  if (!job.info.spec.cancellable)
    return Status(EPERM, "a " + job.info.spec.kind + " job cannot be cancelled safely; wait for it to end");
  job.cancel.store(true);
  return Status::Ok();
}

Result<JobInfo> JobRegistry::Wait(uint64_t id, std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  auto running = [&] {
    auto it = jobs_.find(id);
    return it != jobs_.end() && it->second->info.state == JobState::kRunning;
  };
  ended_.wait_for(lock, timeout, [&] { return !running(); });
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return Status(ENOENT, "no job " + std::to_string(id));
  return it->second->info;
}

void JobRegistry::Shutdown() {
  std::vector<std::thread> threads;
  {
    std::lock_guard lock(mu_);
    shutting_down_ = true;
    stopping_.store(true);
    for (auto& [id, job] : jobs_) threads.push_back(std::move(job->thread));
  }
  for (std::thread& t : threads)
    if (t.joinable()) t.join();
}

nlohmann::json JobRegistry::ResumableJobs() const {
  std::lock_guard lock(mu_);
  nlohmann::json jobs = nlohmann::json::array();
  for (const auto& [id, job] : jobs_) {
    const JobInfo& info = job->info;
    bool unfinished = info.state == JobState::kRunning || info.state == JobState::kInterrupted;
    if (!unfinished || !info.spec.resumable) continue;
    jobs.push_back({{"id", id}, {"kind", info.spec.kind}, {"target", info.spec.target}, {"resumed", info.spec.resumed}});
  }
  return nlohmann::json{{"next_id", next_id_}, {"jobs", jobs}};
}

void JobRegistry::SetNextId(uint64_t next_id) {
  std::lock_guard lock(mu_);
  next_id_ = std::max(next_id_, next_id);
}

}  // namespace edgestor
