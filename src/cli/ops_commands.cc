// iostat, job list | wait | cancel, status: what an operator runs against
// a serving daemon (docs/OPERATIONS.md).
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <iostream>
#include <map>
#include <thread>

#include "base/size_parse.h"
#include "cli/cli_error.h"
#include "cli/commands.h"
#include "cli/daemon_client.h"
#include "cli/output.h"
#include "daemon/info_json.h"

namespace edgestor::cli {

using nlohmann::json;

namespace {

// "1.2k", "35", "0".
std::string FormatCount(double value) {
  char buf[32];
  if (value >= 1e6) std::snprintf(buf, sizeof buf, "%.1fM", value / 1e6);
  else if (value >= 1e4) std::snprintf(buf, sizeof buf, "%.0fk", value / 1e3);
  else if (value >= 1e3) std::snprintf(buf, sizeof buf, "%.1fk", value / 1e3);
  else std::snprintf(buf, sizeof buf, "%.0f", value);
  return buf;
}

// "850us", "1.2ms", "3.40s", "-" for none.
std::string FormatLatency(double ns) {
  if (!(ns > 0)) return "-";
  char buf[32];
  if (ns < 1e6) std::snprintf(buf, sizeof buf, "%.0fus", ns / 1e3);
  else if (ns < 1e9) std::snprintf(buf, sizeof buf, "%.1fms", ns / 1e6);
  else std::snprintf(buf, sizeof buf, "%.2fs", ns / 1e9);
  return buf;
}

std::string FormatRate(double bytes_per_second) {
  return FormatSize(static_cast<uint64_t>(std::llround(bytes_per_second))) + "/s";
}

std::string FormatDuration(int64_t seconds) {
  if (seconds < 0) return "?";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", static_cast<long long>(seconds / 3600),
                static_cast<long long>(seconds / 60 % 60), static_cast<long long>(seconds % 60));
  return buf;
}

const json& Kind(const json& volume, const char* op) { return volume["ops"][op]; }

// One iostat table: per volume, the change from `before` to `after`
// (`before` null: the totals since the pool was opened).
std::string IostatTable(const json& before, const json& after, bool latency) {
  std::map<std::string, const json*> earlier;
  if (!before.is_null())
    for (const json& v : before["volumes"]) earlier[v["name"].get<std::string>()] = &v;
  bool totals = before.is_null();
  double seconds = totals ? 1 : static_cast<double>(after["time_ns"].get<uint64_t>() - before["time_ns"].get<uint64_t>()) / 1e9;
  std::vector<std::string> header = totals ? std::vector<std::string>{"VOLUME", "READS", "WRITES", "READ", "WRITTEN"}
                                           : std::vector<std::string>{"VOLUME", "READ/s", "WRITE/s", "READ BW", "WRITE BW"};
  if (latency) header.insert(header.end(), {"READ LAT", "WRITE LAT", "FLUSH LAT", "INFLIGHT"});
  std::vector<std::vector<std::string>> rows = {header};
  for (const json& v : after["volumes"]) {
    std::string name = v["name"].get<std::string>();
    auto delta = [&](const char* op, const char* field) -> double {
      uint64_t now = Kind(v, op)[field].get<uint64_t>();
      auto it = earlier.find(name);
      uint64_t then = it == earlier.end() ? 0 : Kind(*it->second, op)[field].get<uint64_t>();
      return static_cast<double>(now >= then ? now - then : now);  // reopened volumes restart at zero
    };
    std::vector<std::string> row = {name};
    if (totals) {
      row.insert(row.end(), {FormatCount(delta("read", "ops")), FormatCount(delta("write", "ops")),
                             FormatSize(static_cast<uint64_t>(delta("read", "bytes"))),
                             FormatSize(static_cast<uint64_t>(delta("write", "bytes")))});
    } else {
      row.insert(row.end(), {FormatCount(delta("read", "ops") / seconds), FormatCount(delta("write", "ops") / seconds),
                             FormatRate(delta("read", "bytes") / seconds), FormatRate(delta("write", "bytes") / seconds)});
    }
    if (latency) {
      auto average = [&](const char* op) {
        double ops = delta(op, "ops");
        return ops > 0 ? delta(op, "latency_ns_sum") / ops : 0.0;
      };
      row.insert(row.end(), {FormatLatency(average("read")), FormatLatency(average("write")),
                             FormatLatency(average("flush")), std::to_string(v["in_flight"].get<uint64_t>())});
    }
    rows.push_back(row);
  }
  return RenderTable(rows);
}

std::string JobDetail(const json& job) {
  std::vector<std::string> parts;
  if (job["rate"].get<double>() > 0) parts.push_back(FormatCount(job["rate"].get<double>()) + " " + job["unit"].get<std::string>() + "/s");
  if (job["eta_seconds"].get<int64_t>() >= 0) parts.push_back("ETA " + FormatDuration(job["eta_seconds"].get<int64_t>()));
  std::string detail;
  for (const std::string& part : parts) {
    if (!detail.empty()) detail.append(", ");
    detail.append(part);
  }
  return detail;
}

}  // namespace

void RunIostat(const VolumeArgs& args, const IostatArgs& iostat) {
  std::string socket = RequireDaemon(args, "iostat reads its counters from");
  json params = json::object();
  if (!iostat.volumes.empty()) params["volumes"] = iostat.volumes;
  const std::string what = "cannot read I/O counters";
  json previous = Call(socket, "stats.io", params, what);
  if (iostat.interval_seconds <= 0) {
    std::cout << "totals since the pool was opened:\n" << IostatTable(json(), previous, iostat.latency);
    return;
  }
  auto interval = std::chrono::duration<double>(iostat.interval_seconds);
  for (uint64_t n = 0; iostat.count == 0 || n < iostat.count; n++) {
    std::this_thread::sleep_for(interval);
    json now = Call(socket, "stats.io", params, what);
    std::cout << IostatTable(previous, now, iostat.latency) << "\n" << std::flush;
    previous = std::move(now);
  }
}

json FollowJob(const std::string& socket, uint64_t id, const std::string& what) {
  json job = Call(socket, "job.get", {{"id", id}}, what);
  ProgressLine progress(job["kind"].get<std::string>() + " " + job["target"].get<std::string>() + " (job " +
                            std::to_string(id) + ")",
                        job["unit"].get<std::string>());
  while (job["state"] == "running") {
    progress.Update(job["done"].get<uint64_t>(), job["total"].get<uint64_t>(), JobDetail(job));
    job = Call(socket, "job.wait", {{"id", id}, {"timeout_ms", 500}}, what);
  }
  if (job["state"] == "succeeded") progress.Update(job["total"].get<uint64_t>(), job["total"].get<uint64_t>());
  return job;
}

void RunJobList(const VolumeArgs& args, bool as_json) {
  json result = Call(RequireDaemon(args, "jobs run in"), "job.list", json::object(), "cannot list jobs");
  if (as_json) {
    PrintJson(result);
    return;
  }
  std::vector<std::vector<std::string>> rows = {{"ID", "KIND", "TARGET", "STATE", "PROGRESS", "RATE / ETA", "RESULT"}};
  for (const json& j : result["jobs"]) {
    char percent[16];
    std::snprintf(percent, sizeof percent, "%.0f%%", j["percent"].get<double>());
    rows.push_back({std::to_string(j["id"].get<uint64_t>()), j["kind"].get<std::string>(), j["target"].get<std::string>(),
                    j["state"].get<std::string>(), percent, j["state"] == "running" ? JobDetail(j) : "-",
                    j["result"].get<std::string>().empty() ? "-" : j["result"].get<std::string>()});
  }
  std::cout << RenderTable(rows);
}

void RunJobWait(const VolumeArgs& args, uint64_t id) {
  std::string what = "cannot follow job " + std::to_string(id);
  json job = FollowJob(RequireDaemon(args, "jobs run in"), id, what);
  std::cout << "job " << id << " " << job["state"].get<std::string>() << ": " << job["result"].get<std::string>() << "\n";
  if (job["state"] != "succeeded") Fail("job " + std::to_string(id) + " did not succeed");
}

void RunJobCancel(const VolumeArgs& args, uint64_t id) {
  Call(RequireDaemon(args, "jobs run in"), "job.cancel", {{"id", id}}, "cannot cancel job " + std::to_string(id));
  std::cout << "cancelling job " << id << " (`edgestor job wait " << id << "` follows it to its end)\n";
}

void RunStatus(const VolumeArgs& args, bool as_json) {
  std::string socket = RequireDaemon(args, "status is read from");
  const std::string what = "cannot read the daemon's status";
  json pool = Call(socket, "pool.info", json::object(), what);
  json volumes = Call(socket, "vol.list", json::object(), what)["volumes"];
  json exports = Call(socket, "export.list", json::object(), what);
  json jobs = Call(socket, "job.list", json::object(), what);
  if (as_json) {
    PrintJson({{"pool", pool}, {"volumes", volumes}, {"exports", exports["exports"]}, {"jobs", jobs["jobs"]}});
    return;
  }
  PoolInfo info = pool.get<PoolInfo>();
  std::string health = info.failure.empty() ? "ONLINE" : "FAILED: " + info.failure;
  if (info.locked) health += " (locked: encrypted volumes wait for `edgestor pool unlock`)";
  std::cout << "pool:     " << args.pool << "  " << health << "\n"
            << "space:    " << FormatSize(info.allocated_bytes) << " used of " << FormatSize(info.data_bytes) << ", "
            << FormatSize(info.free_bytes) << " free\n"
            << "journal:  " << FormatSize(info.journal_used_bytes) << " of " << FormatSize(info.journal_bytes)
            << " in use; " << info.checkpoints << " checkpoints, " << info.group_commits << " group commits\n";
  if (!info.background_delete_error.empty()) std::cout << "WARNING:  background delete stopped: " << info.background_delete_error << "\n";
  std::cout << "\nvolumes (" << volumes.size() << "):\n";
  std::vector<std::vector<std::string>> rows = {{"NAME", "SIZE", "ALLOCATED", "SNAPSHOTS", "EXPORTS"}};
  std::map<std::string, std::vector<std::string>> exported;
  size_t problems = 0;
  for (const json& e : exports["exports"]) {
    if (e["protocol"] == "nbd" && e["connections"].get<uint64_t>() == 0) continue;
    // "vhost-user-blk(1)": the protocol and its clients.
    std::string clients = e.contains("error") ? "NOT RESTORED" : std::to_string(e["connections"].get<uint64_t>());
    problems += e.contains("error");
    exported[e["name"].get<std::string>()].push_back(e["protocol"].get<std::string>() + "(" + clients + ")");
  }
  for (const json& v : volumes) {
    std::string name = v["name"].get<std::string>(), list;
    for (const std::string& e : exported[name]) {
      if (!list.empty()) list.append(" ");
      list.append(e);
    }
    rows.push_back({name, FormatSize(v["size"].get<uint64_t>()), FormatSize(v["allocated_bytes"].get<uint64_t>()),
                    std::to_string(v["snapshot_count"].get<uint64_t>()), list.empty() ? "-" : list});
  }
  std::cout << RenderTable(rows);
  size_t running = 0;
  for (const json& j : jobs["jobs"]) running += j["state"] == "running";
  std::cout << "\njobs: " << running << " running";
  for (const json& j : jobs["jobs"])
    if (j["state"] == "running")
      std::cout << "\n  " << j["id"].get<uint64_t>() << " " << j["kind"].get<std::string>() << " "
                << j["target"].get<std::string>() << ": " << static_cast<int>(j["percent"].get<double>()) << "% "
                << JobDetail(j);
  std::cout << "\n";
  if (problems) std::cout << "\n" << problems << " stored export(s) not restored: see `edgestor export list`\n";
}

}  // namespace edgestor::cli
