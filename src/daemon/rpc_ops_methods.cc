// Control methods for operators: I/O counters (stats.io, for iostat) and
// jobs (job.list, job.get, job.wait, job.cancel). docs/CONTROL_API.md.
#include <algorithm>
#include <cerrno>
#include <chrono>

#include "daemon/daemon.h"
#include "daemon/rpc_params.h"

namespace edgestor {

using nlohmann::json;
using rpc::StringParam;

namespace {

// job.wait blocks one control connection at most this long per call; the
// CLI calls again until the job ends.
constexpr uint64_t kMaxJobWaitMs = 30000;

json IoJson(const IoStatsSnapshot& io) {
  json ops = json::object();
  for (size_t k = 0; k < kIoKinds; ++k) {
    const IoKindCounters& c = io.kinds[k];
    ops[std::string(IoKindName(static_cast<IoKind>(k)))] = {
        {"ops", c.ops}, {"bytes", c.bytes}, {"errors", c.errors}, {"latency_ns_sum", c.latency_ns_sum}};
  }
  return json{{"in_flight", io.in_flight}, {"ops", ops}};
}

Result<uint64_t> JobIdParam(const json& params) {
  if (!params.contains("id") || !params["id"].is_number_unsigned()) return Status(EINVAL, "missing job id parameter \"id\"");
  return params["id"].get<uint64_t>();
}

}  // namespace

void Daemon::RegisterOperationsMethods() {
  // Counters since each volume was opened, with the monotonic time they
  // were read at: a caller takes two and divides the difference.
  control_.Register("stats.io", [this](const json& params) -> Result<json> {
    std::vector<std::string> wanted;
    if (params.contains("volumes")) {
      if (!params["volumes"].is_array()) return Status(EINVAL, "\"volumes\" must be a list of volume names");
      for (const json& v : params["volumes"]) {
        if (!v.is_string()) return Status(EINVAL, "\"volumes\" must be a list of volume names");
        wanted.push_back(v.get<std::string>());
      }
    }
    std::vector<std::string> names = wanted.empty() ? pool_->VolumeNames() : wanted;
    json volumes = json::array();
    std::lock_guard lock(mu_);  // volumes are deleted under it: the pointers stay valid
    for (const std::string& name : names) {
      ES_ASSIGN_OR_RETURN(Volume * volume, pool_->FindVolume(name));
      if (!volume->io_stats()) continue;
      json entry = IoJson(volume->io_stats()->Snapshot());
      entry["name"] = name;
      volumes.push_back(entry);
    }
    return json{{"time_ns", IoStats::NowNs()}, {"volumes", volumes}};
  });
  control_.Register("job.list", [this](const json&) -> Result<json> {
    json jobs = json::array();
    for (const JobInfo& info : jobs_.List()) jobs.push_back(info);
    return json{{"jobs", jobs}};
  });
  control_.Register("job.get", [this](const json& params) -> Result<json> {
    ES_ASSIGN_OR_RETURN(uint64_t id, JobIdParam(params));
    ES_ASSIGN_OR_RETURN(JobInfo info, jobs_.Get(id));
    return json(info);
  });
  // Returns when the job ends or after timeout_ms (default and at most
  // 30 s), with the job as it stands.
  control_.Register("job.wait", [this](const json& params) -> Result<json> {
    ES_ASSIGN_OR_RETURN(uint64_t id, JobIdParam(params));
    uint64_t timeout_ms = kMaxJobWaitMs;
    if (params.contains("timeout_ms")) {
      if (!params["timeout_ms"].is_number_unsigned()) return Status(EINVAL, "\"timeout_ms\" must be a number of milliseconds");
      timeout_ms = std::min(params["timeout_ms"].get<uint64_t>(), kMaxJobWaitMs);
    }
    ES_ASSIGN_OR_RETURN(JobInfo info, jobs_.Wait(id, std::chrono::milliseconds(timeout_ms)));
    return json(info);
  });
  control_.Register("job.cancel", [this](const json& params) -> Result<json> {
    ES_ASSIGN_OR_RETURN(uint64_t id, JobIdParam(params));
    ES_RETURN_IF_ERROR(jobs_.Cancel(id));
    return json{{"cancelling", id}};
  });
}

}  // namespace edgestor
