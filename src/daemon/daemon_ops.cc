// The daemon's operations side: the stored state (exports, jobs, settings)
// and its restoration, per-export NBD counters, health, and jobs.
#include <cerrno>
#include <chrono>
#include <filesystem>
#include <thread>

#include <spdlog/spdlog.h>

#include "daemon/daemon.h"
#include "ops/state_file.h"

namespace edgestor {

using nlohmann::json;

IoStats* Daemon::ExportStats(Volume* volume) {
  std::lock_guard lock(mu_);
  std::unique_ptr<IoStats>& stats = nbd_io_stats_[volume->name()];
  if (!stats) stats = std::make_unique<IoStats>();
  return stats.get();
}

bool Daemon::Healthy() {
  PoolInfo info = pool_->Info();
  return info.failure.empty();
}

Status Daemon::StoreExport(const std::string& key, const json* params) {
  {
    std::lock_guard lock(mu_);
    if (params) stored_exports_[key] = *params;
    else stored_exports_.erase(key);
    if (!params) unrestored_exports_.erase(key);
  }
  return SaveState();
}

Status Daemon::SaveState() {
  std::lock_guard file_lock(state_file_mu_);
  json state = json::object();
  {
    std::lock_guard lock(mu_);
    json exports = json::array();
    for (const auto& [key, params] : stored_exports_) exports.push_back(params);
    state["exports"] = exports;
  }
  json jobs = jobs_.ResumableJobs();
  state["jobs"] = jobs["jobs"];
  state["next_job_id"] = jobs["next_id"];
  state["settings"] = options_.settings;
  Status s = SaveStateFile(options_.state_file, state);
  if (!s.ok()) spdlog::error("cannot save the daemon's state: {}", s.ToString());
  return s;
}

void Daemon::RestoreState(const json& state) {
  if (state.contains("next_job_id") && state["next_job_id"].is_number_unsigned())
    jobs_.SetNextId(state["next_job_id"].get<uint64_t>());
  if (state.contains("exports") && state["exports"].is_array()) {
    for (const json& params : state["exports"]) {
      if (!params.is_object()) continue;
      bool file = params.value("protocol", "") == "file";
      std::string key = params.value(file ? "mountpoint" : "socket", "");
      if (key.empty()) {
        spdlog::warn("state file {}: ignoring an export without a socket or mount point: {}", options_.state_file,
                     params.dump());
        continue;
      }
      std::lock_guard lock(mu_);
      stored_exports_[key] = params;
      unrestored_exports_[key] = "not restored yet";
    }
    RetryUnrestoredExports();
  }
  if (state.contains("jobs") && state["jobs"].is_array()) {
    for (const json& job : state["jobs"]) {
      if (!job.is_object() || job.value("kind", "") != "flatten" || !job.contains("id") || !job["id"].is_number_unsigned())
        continue;
      JobSpec spec;
      spec.id = job["id"].get<uint64_t>();
      spec.resumed = job.value("resumed", 0u) + 1;
      std::string target = job.value("target", "");
      auto started = StartFlattenJob(target, spec);
      if (started.ok()) spdlog::info("resumed job {}: flatten {}", spec.id, target);
      else spdlog::warn("cannot resume job {} (flatten {}): {}", spec.id, target, started.status().ToString());
    }
  }
}

void Daemon::RetryUnrestoredExports() {
  std::map<std::string, json> pending;
  {
    std::lock_guard lock(mu_);
    for (const auto& [key, why] : unrestored_exports_) pending[key] = stored_exports_[key];
  }
  for (const auto& [key, params] : pending) {
    auto added = AddExportRpc(params);
    std::lock_guard lock(mu_);
    if (added.ok()) {
      unrestored_exports_.erase(key);
      spdlog::info("restored the {} export of {} at {}", params.value("protocol", "?"), params.value("name", "?"), key);
    } else {
      unrestored_exports_[key] = added.status().ToString();
      spdlog::warn("cannot restore the {} export of {} at {}: {} (it stays stored: retried at `pool unlock`, or "
                   "`edgestor export remove` forgets it)",
                   params.value("protocol", "?"), params.value("name", "?"), key, added.status().ToString());
    }
  }
}

Result<uint64_t> Daemon::StartFlattenJob(const std::string& volume, JobSpec spec) {
  spec.kind = "flatten";
  spec.target = volume;
  spec.unit = "clusters";
  spec.cancellable = true;  // what was copied stays copied; flattening again goes on
  spec.resumable = true;
  ES_ASSIGN_OR_RETURN(VolumeInfo info, pool_->GetVolumeInfo(volume));
  if (info.origin.empty()) return Status(EINVAL, "volume " + volume + " is not a clone");
  ES_ASSIGN_OR_RETURN(uint64_t id, jobs_.Start(spec, [this, volume](JobContext& context) -> Result<json> {
    ES_ASSIGN_OR_RETURN(uint64_t copied,
                        pool_->FlattenVolume(volume, [&context](uint64_t done, uint64_t total) {
                          return context.Progress(done, total);
                        }));
    return json{{"summary", "copied " + std::to_string(copied) + " clusters; " + volume + " no longer depends on a snapshot"},
                {"copied_clusters", copied}};
  }));
  (void)SaveState();  // a restart resumes it
  return id;
}

namespace {

// How often the release job looks at the engine's progress.
constexpr auto kReleasePollInterval = std::chrono::milliseconds(200);

bool ReleasePending(const PoolInfo& info) { return info.volumes_being_deleted + info.snapshots_being_deleted > 0; }

}  // namespace

void Daemon::FollowBackgroundRelease(const std::string& target) {
  if (!ReleasePending(pool_->Info()) || release_job_running_.exchange(true)) return;
  JobSpec spec{.kind = "release", .target = target, .unit = "map pages"};
  // Not cancellable: the engine's reclaimer does the work and always goes
  // on (at the next open too); the job only follows it.
  auto started = jobs_.Start(spec, [this](JobContext& context) -> Result<json> {
    uint64_t released = 0, last = 0;
    bool first = true;
    for (;;) {
      PoolInfo info = pool_->Info();
      if (!info.background_delete_error.empty()) {
        release_job_running_ = false;
        return Status(EIO, info.background_delete_error);
      }
      uint64_t remaining = info.background_delete_pages;
      if (!first && remaining < last) released += last - remaining;
      first = false;
      last = remaining;
      if (!context.Progress(released, released + remaining)) {
        release_job_running_ = false;
        return Status(ECANCELED, "the daemon stops; the release goes on at the next start");
      }
      // Done, unless a delete arrived between the look and the flag.
      if (!ReleasePending(info)) {
        release_job_running_ = false;
        if (!ReleasePending(pool_->Info()) || release_job_running_.exchange(true)) break;
      }
      for (auto waited = std::chrono::milliseconds(0); waited < kReleasePollInterval && !context.ShouldStop();
           waited += std::chrono::milliseconds(20))
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return json{{"summary", "released the space of deleted volumes and snapshots (" + std::to_string(released) +
                                " map pages walked)"},
                {"released_pages", released}};
  });
  if (!started.ok()) release_job_running_ = false;
}

}  // namespace edgestor
