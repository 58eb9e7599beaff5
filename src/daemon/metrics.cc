// Daemon::MetricsText: every metric in the Prometheus text format, for the
// metrics listener (serve --metrics-listen). Names follow Prometheus'
// conventions: an edgestor_ prefix, base units (bytes, seconds) in the
// name, _total on counters; standard process_* metrics for the process.
// Docs: docs/OPERATIONS.md lists them.
#include <unistd.h>

#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "daemon/daemon.h"
#include "ops/prometheus_text.h"

namespace edgestor {
namespace {

// One source of I/O counters and the labels that name it.
struct CountedSource {
  MetricLabels labels;
  IoStatsSnapshot io;
};

void WriteIoFamilies(PrometheusText& out, const std::string& prefix, const std::string& what,
                     const std::vector<CountedSource>& sources) {
  auto per_kind = [&](const char* suffix, const char* type, const std::string& help, auto value) {
    out.Family(prefix + suffix, type, help);
    for (const CountedSource& s : sources)
      for (size_t k = 0; k < kIoKinds; ++k) {
        MetricLabels labels = s.labels;
        labels.emplace_back("op", std::string(IoKindName(static_cast<IoKind>(k))));
        out.Sample(labels, value(s.io.kinds[k]));
      }
  };
  per_kind("_requests_total", "counter", "Requests " + what + " completed, by operation.",
           [](const IoKindCounters& c) { return c.ops; });
  per_kind("_request_bytes_total", "counter",
           "Bytes " + what + " requests covered (moved for reads and writes), by operation.",
           [](const IoKindCounters& c) { return c.bytes; });
  per_kind("_request_errors_total", "counter", "Requests " + what + " that failed, by operation.",
           [](const IoKindCounters& c) { return c.errors; });
  out.Family(prefix + "_request_duration_seconds", "histogram",
             "Time from submission to completion of requests " + what + ", by operation.");
  for (const CountedSource& s : sources)
    for (size_t k = 0; k < kIoKinds; ++k) {
      MetricLabels labels = s.labels;
      labels.emplace_back("op", std::string(IoKindName(static_cast<IoKind>(k))));
      out.LatencyHistogram(labels, s.io.kinds[k]);
    }
  out.Family(prefix + "_requests_in_flight", "gauge", "Requests " + what + " submitted and not yet completed.");
  for (const CountedSource& s : sources) out.Sample(s.labels, s.io.in_flight);
}

void Gauge(PrometheusText& out, const char* name, const char* help, double value) {
  out.Family(name, "gauge", help);
  out.Sample({}, value);
}

void Counter(PrometheusText& out, const char* name, const char* help, uint64_t value) {
  out.Family(name, "counter", help);
  out.Sample({}, value);
}

// process_* from /proc/self (the names client libraries use).
void WriteProcessFamilies(PrometheusText& out) {
  std::ifstream stat_file("/proc/self/stat");
  std::string stat((std::istreambuf_iterator<char>(stat_file)), std::istreambuf_iterator<char>());
  size_t close = stat.rfind(')');
  if (close == std::string::npos) return;
  std::istringstream fields(stat.substr(close + 2));
  std::vector<std::string> f((std::istream_iterator<std::string>(fields)), std::istream_iterator<std::string>());
  // After "pid (comm) ": state is field 3; utime 14, stime 15, starttime 22, rss 24.
  auto field = [&](size_t n) -> uint64_t { return n - 3 < f.size() ? std::stoull(f[n - 3]) : 0; };
  double ticks = static_cast<double>(::sysconf(_SC_CLK_TCK));
  double cpu = static_cast<double>(field(14) + field(15)) / ticks;
  uint64_t rss = field(24) * static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  double boot = 0;
  std::ifstream stat_all("/proc/stat");
  for (std::string line; std::getline(stat_all, line);)
    if (line.rfind("btime ", 0) == 0) boot = std::stod(line.substr(6));
  double start = boot + static_cast<double>(field(22)) / ticks;
  size_t fds = 0;
  std::error_code ec;
  for (auto it = std::filesystem::directory_iterator("/proc/self/fd", ec); !ec && it != std::filesystem::directory_iterator();
       it.increment(ec))
    fds++;
  out.Family("process_cpu_seconds_total", "counter", "User and system CPU time the daemon used.");
  out.Sample({}, cpu);
  Gauge(out, "process_resident_memory_bytes", "Resident memory of the daemon.", static_cast<double>(rss));
  Gauge(out, "process_start_time_seconds", "When the daemon started, in seconds since the epoch.", start);
  Gauge(out, "process_open_fds", "Open file descriptors of the daemon.", static_cast<double>(fds));
}

}  // namespace

std::string Daemon::MetricsText() {
  PrometheusText out;
  // Pool and volume figures take the engine's locks, not the daemon's.
  PoolInfo pool = pool_->Info();
  std::vector<VolumeInfo> volumes = pool_->ListVolumes();
  std::vector<CountedSource> volume_io, export_io;
  std::vector<std::pair<MetricLabels, uint64_t>> export_connections;
  {
    std::lock_guard lock(mu_);
    for (const VolumeInfo& v : volumes) {
      auto found = pool_->FindVolume(v.name);
      if (found.ok() && found.value()->io_stats()) volume_io.push_back({{{"volume", v.name}}, found.value()->io_stats()->Snapshot()});
      uint32_t nbd_users = found.ok() && users_.count(found.value()) ? users_[found.value()] : 0;
      MetricLabels labels{{"volume", v.name}, {"protocol", "nbd"}, {"export", v.name}};
      export_connections.emplace_back(labels, nbd_users);
      auto stats = nbd_io_stats_.find(v.name);
      export_io.push_back({labels, stats != nbd_io_stats_.end() ? stats->second->Snapshot() : IoStatsSnapshot{}});
    }
    for (const auto& [socket, e] : vhost_exports_) {
      MetricLabels labels{{"volume", e->volume().name()}, {"protocol", "vhost-user-blk"}, {"export", socket}};
      export_connections.emplace_back(labels, e->connected() ? 1 : 0);
      export_io.push_back({labels, e->io_stats().Snapshot()});
    }
    for (const auto& [mountpoint, e] : file_exports_) {
      MetricLabels labels{{"volume", e->volume().name()}, {"protocol", "file"}, {"export", mountpoint}};
      export_connections.emplace_back(labels, e->open_count());
      export_io.push_back({labels, e->io_stats().Snapshot()});
    }
  }

  out.Family("edgestor_build_info", "gauge", "Always 1; the labels name the on-disk format this build writes.");
  out.Sample({{"format_version", std::to_string(pool.format_version)}}, uint64_t{1});
  Gauge(out, "edgestor_pool_healthy", "1 while the pool is usable; 0 once a device error stopped it (reopen to recover).",
        pool.failure.empty() ? 1 : 0);
  Gauge(out, "edgestor_pool_locked", "1 while encrypted volumes wait for the pool key (pool unlock).", pool.locked ? 1 : 0);
  Gauge(out, "edgestor_pool_device_bytes", "Size of the pool's file or block device.", static_cast<double>(pool.device_bytes));
  Gauge(out, "edgestor_pool_data_bytes", "Space the allocator manages (the device less labels and journal).",
        static_cast<double>(pool.data_bytes));
  Gauge(out, "edgestor_pool_allocated_bytes", "Space in use: data clusters and metadata.",
        static_cast<double>(pool.allocated_bytes));
  Gauge(out, "edgestor_pool_free_bytes", "Space free for new data.", static_cast<double>(pool.free_bytes));
  uint64_t snapshot_bytes = 0;
  for (const VolumeInfo& v : volumes) snapshot_bytes += v.used_by_snapshots_bytes;
  Gauge(out, "edgestor_pool_snapshot_bytes", "Space only snapshots hold (freed if every snapshot were deleted).",
        static_cast<double>(snapshot_bytes));
  Gauge(out, "edgestor_pool_shared_edge_bytes", "Blocks two packed compressed frames share.",
        static_cast<double>(pool.shared_edge_blocks * 4096));
  Gauge(out, "edgestor_pool_volumes", "Volumes (those being deleted not counted).", pool.volume_count);
  Gauge(out, "edgestor_pool_snapshots", "Snapshots (those being deleted not counted).", pool.snapshot_count);
  Gauge(out, "edgestor_pool_background_deletes", "Volumes and snapshots whose space is still being released.",
        pool.volumes_being_deleted + pool.snapshots_being_deleted);
  Gauge(out, "edgestor_pool_background_delete_pages", "Map pages the background release still has to walk.",
        static_cast<double>(pool.background_delete_pages));
  Gauge(out, "edgestor_journal_bytes", "Size of the metadata journal.", static_cast<double>(pool.journal_bytes));
  Gauge(out, "edgestor_journal_used_bytes", "Journal space holding records since the last checkpoint.",
        static_cast<double>(pool.journal_used_bytes));
  out.Family("edgestor_group_commit_duration_seconds", "summary", "Group commits (journal writes made durable) and their time.");
  out.Sample({}, static_cast<double>(pool.group_commit_ns_total) / 1e9, "_sum");
  out.Sample({}, pool.group_commits, "_count");
  Counter(out, "edgestor_group_commit_requests_total", "Flush and FUA requests group commits served.",
          pool.group_commit_waiters);
  Gauge(out, "edgestor_group_commit_max_duration_seconds", "The longest group commit since the pool was opened.",
        static_cast<double>(pool.group_commit_ns_max) / 1e9);
  out.Family("edgestor_checkpoint_duration_seconds", "summary", "Checkpoints written (failed ones included) and their time.");
  out.Sample({}, static_cast<double>(pool.checkpoint_ns_total) / 1e9, "_sum");
  out.Sample({}, pool.checkpoints, "_count");
  Gauge(out, "edgestor_checkpoint_max_duration_seconds", "The longest checkpoint since the pool was opened.",
        static_cast<double>(pool.checkpoint_ns_max) / 1e9);
  Gauge(out, "edgestor_checkpoint_generation", "Generation of the last checkpoint.", static_cast<double>(pool.checkpoint_generation));
  Counter(out, "edgestor_map_cache_hits_total", "Map page lookups served from memory.", pool.map_cache_hits);
  Counter(out, "edgestor_map_cache_misses_total", "Map page lookups that read the page from the device.", pool.map_cache_misses);
  Gauge(out, "edgestor_map_cache_pages", "Map pages in memory.", static_cast<double>(pool.cached_map_pages));
  Gauge(out, "edgestor_map_cache_limit_pages", "Map pages the cache may hold (serve --map-cache).",
        static_cast<double>(pool.map_cache_limit_pages));
  Gauge(out, "edgestor_inflight_bytes", "Request data all exports hold in flight now.",
        static_cast<double>(inflight_budget_.in_flight()));
  Gauge(out, "edgestor_inflight_limit_bytes", "The daemon's bound on request data in flight (serve --inflight-memory).",
        static_cast<double>(inflight_budget_.limit()));
  Counter(out, "edgestor_inflight_waits_total", "Requests that waited for room under that bound.", inflight_budget_.waits());

  auto per_volume = [&](const char* name, const char* type, const char* help, auto value) {
    out.Family(name, type, help);
    for (const VolumeInfo& v : volumes) out.Sample({{"volume", v.name}}, static_cast<uint64_t>(value(v)));
  };
  per_volume("edgestor_volume_size_bytes", "gauge", "Virtual size.", [](const VolumeInfo& v) { return v.size; });
  per_volume("edgestor_volume_allocated_bytes", "gauge", "Device space its current data occupies.",
             [](const VolumeInfo& v) { return v.allocated_bytes; });
  per_volume("edgestor_volume_written_bytes", "gauge", "4 KiB blocks written and not discarded, in bytes.",
             [](const VolumeInfo& v) { return v.written_bytes; });
  per_volume("edgestor_volume_used_bytes", "gauge", "Space freed if it and its snapshots were deleted.",
             [](const VolumeInfo& v) { return v.used_bytes; });
  per_volume("edgestor_volume_snapshot_bytes", "gauge", "Space freed if its snapshots were deleted.",
             [](const VolumeInfo& v) { return v.used_by_snapshots_bytes; });
  per_volume("edgestor_volume_snapshots", "gauge", "Snapshots of the volume.", [](const VolumeInfo& v) { return v.snapshot_count; });
  per_volume("edgestor_volume_cow_copies_total", "counter", "Writes that copied a cluster shared with a snapshot.",
             [](const VolumeInfo& v) { return v.cow_copies; });
  per_volume("edgestor_volume_unaligned_writes_total", "counter", "Writes not aligned to 4 KiB (read-modify-write).",
             [](const VolumeInfo& v) { return v.unaligned_writes; });
  WriteIoFamilies(out, "edgestor_volume", "to the volume (from every export)", volume_io);

  out.Family("edgestor_export_connections", "gauge",
             "Clients attached: NBD connections, a vhost-user front-end (0 or 1), opens of an exported file.");
  for (const auto& [labels, count] : export_connections) out.Sample(labels, count);
  WriteIoFamilies(out, "edgestor_export", "sent through the export", export_io);
  const NbdStats& nbd = nbd_->stats();
  Counter(out, "edgestor_nbd_sessions_total", "NBD connections that entered transmission.", nbd.sessions.load());
  Counter(out, "edgestor_nbd_refused_connections_total", "NBD connections refused (too many).", nbd.refused_connections.load());
  Counter(out, "edgestor_nbd_protocol_errors_total", "NBD connections dropped for breaking the protocol.",
          nbd.protocol_errors.load());

  std::vector<JobInfo> jobs = jobs_.List();
  out.Family("edgestor_jobs", "gauge", "Jobs the daemon knows, by kind and state.");
  std::map<std::pair<std::string, std::string>, uint64_t> by_state;
  for (const JobInfo& j : jobs) by_state[{j.spec.kind, std::string(JobStateName(j.state))}]++;
  for (const auto& [key, count] : by_state) out.Sample({{"kind", key.first}, {"state", key.second}}, count);
  out.Family("edgestor_job_progress_ratio", "gauge", "Progress of running jobs, 0 to 1.");
  for (const JobInfo& j : jobs)
    if (j.state == JobState::kRunning)
      out.Sample({{"job", std::to_string(j.spec.id)}, {"kind", j.spec.kind}, {"target", j.spec.target}},
                 j.total ? static_cast<double>(j.done) / static_cast<double>(j.total) : 0.0);
  WriteProcessFamilies(out);
  return out.text();
}

}  // namespace edgestor
