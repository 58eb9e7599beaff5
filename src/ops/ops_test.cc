#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include "ops/job_registry.h"
#include "ops/state_file.h"

#include "base/io_stats.h"
#include "ops/metrics_server.h"
#include "ops/prometheus_text.h"

namespace edgestor {
namespace {

TEST(IoStats, CountsByKindAndBucketsLatency) {
  IoStats stats;
  stats.Started();
  stats.Started();
  stats.Started();
  EXPECT_EQ(stats.Snapshot().in_flight, 3u);
  stats.Finished(IoKind::kRead, 4096, 20'000, true);     // 20 us: the 25 us bucket
  stats.Finished(IoKind::kRead, 8192, 25'000, true);     // exactly on a bound: still that bucket
  stats.Finished(IoKind::kWrite, 512, 2'000'000'000, false);  // 2 s: +Inf
  IoStatsSnapshot s = stats.Snapshot();
  EXPECT_EQ(s.in_flight, 0u);
  EXPECT_EQ(s[IoKind::kRead].ops, 2u);
  EXPECT_EQ(s[IoKind::kRead].bytes, 12288u);
  EXPECT_EQ(s[IoKind::kRead].errors, 0u);
  EXPECT_EQ(s[IoKind::kRead].latency_buckets[0], 2u);
  EXPECT_EQ(s[IoKind::kRead].latency_ns_sum, 45'000u);
  EXPECT_EQ(s[IoKind::kWrite].errors, 1u);
  EXPECT_EQ(s[IoKind::kWrite].latency_buckets[kLatencyBuckets - 1], 1u);
  EXPECT_EQ(s[IoKind::kFlush].ops, 0u);
}

TEST(PrometheusText, WritesFamiliesEscapedLabelsAndCumulativeHistograms) {
  PrometheusText text;
  text.Family("edgestor_test_bytes", "gauge", "A test gauge.");
  text.Sample({{"volume", "a\"b\\c\nd"}}, uint64_t{42});
  text.Sample({}, 0.5);
  IoKindCounters counters;
  counters.ops = 3;
  counters.latency_ns_sum = 1'500'000'000;
  counters.latency_buckets[0] = 1;
  counters.latency_buckets[2] = 2;
  text.Family("edgestor_test_seconds", "histogram", "A test histogram.");
  text.LatencyHistogram({{"op", "read"}}, counters);
  const std::string& out = text.text();
  EXPECT_NE(out.find("# HELP edgestor_test_bytes A test gauge.\n# TYPE edgestor_test_bytes gauge\n"), std::string::npos);
  EXPECT_NE(out.find("edgestor_test_bytes{volume=\"a\\\"b\\\\c\\nd\"} 42\n"), std::string::npos) << out;
  EXPECT_NE(out.find("edgestor_test_bytes 0.5\n"), std::string::npos);
  EXPECT_NE(out.find("edgestor_test_seconds_bucket{op=\"read\",le=\"0.000025\"} 1\n"), std::string::npos) << out;
  EXPECT_NE(out.find("edgestor_test_seconds_bucket{op=\"read\",le=\"0.00005\"} 1\n"), std::string::npos);
  EXPECT_NE(out.find("edgestor_test_seconds_bucket{op=\"read\",le=\"0.0001\"} 3\n"), std::string::npos);
  EXPECT_NE(out.find("edgestor_test_seconds_bucket{op=\"read\",le=\"+Inf\"} 3\n"), std::string::npos);
  EXPECT_NE(out.find("edgestor_test_seconds_sum{op=\"read\"} 1.5\n"), std::string::npos);
  EXPECT_NE(out.find("edgestor_test_seconds_count{op=\"read\"} 3\n"), std::string::npos);
}

// One HTTP exchange with 127.0.0.1:port: the status code and body, or
// status -1 if nothing answered.
struct HttpReply {
  int status = -1;
  std::string headers, body;
};
HttpReply Http(uint16_t port, const std::string& request) {
  HttpReply reply;
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(port);
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
    ::close(fd);
    return reply;
  }
  (void)!::write(fd, request.data(), request.size());
  std::string all;
  char buf[4096];
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) all.append(buf, static_cast<size_t>(n));
  ::close(fd);
  size_t split = all.find("\r\n\r\n");
  if (all.rfind("HTTP/1.", 0) != 0 || split == std::string::npos) return reply;
  reply.status = std::stoi(all.substr(9, 3));
  reply.headers = all.substr(0, split);
  reply.body = all.substr(split + 4);
  return reply;
}

TEST(MetricsServer, ServesMetricsOnlyAndStops) {
  std::atomic<int> renders{0};
  auto server = MetricsServer::Start("127.0.0.1:0", [&renders] {
    renders++;
    return std::string("# HELP x X.\n# TYPE x gauge\nx 1\n");
  });
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  uint16_t port = server.value()->port();
  ASSERT_NE(port, 0);
  HttpReply got = Http(port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_EQ(got.status, 200);
  EXPECT_EQ(got.body, "# HELP x X.\n# TYPE x gauge\nx 1\n");
  EXPECT_NE(got.headers.find("text/plain; version=0.0.4"), std::string::npos) << got.headers;
  HttpReply head = Http(port, "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_EQ(head.status, 200);
  EXPECT_EQ(head.body, "");
  EXPECT_EQ(Http(port, "GET /other HTTP/1.1\r\nHost: x\r\n\r\n").status, 404);
  EXPECT_EQ(Http(port, "GET /metrics/../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n").status, 404);
  EXPECT_EQ(Http(port, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc").status, 405);
  // A request larger than the server takes is refused, not buffered.
  HttpReply huge = Http(port, "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: " + std::string(64 << 10, 'p') + "\r\n\r\n");
  EXPECT_NE(huge.status, 200);
  EXPECT_EQ(Http(port, "garbage\r\n\r\n").status == 200, false);
  EXPECT_EQ(renders.load(), 2);
  // The port is in use: a second listener there is refused with a reason.
  auto second = MetricsServer::Start("127.0.0.1:" + std::to_string(port), [] { return std::string(); });
  EXPECT_FALSE(second.ok());
  server.value()->Stop();
  EXPECT_EQ(Http(port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").status, -1);
  EXPECT_FALSE(MetricsServer::Start("127.0.0.1", [] { return std::string(); }).ok());
  EXPECT_FALSE(MetricsServer::Start("127.0.0.1:99999", [] { return std::string(); }).ok());
}

// A job that reports progress until told to stop or until `steps` are done.
JobFunction Steps(uint64_t steps, std::atomic<uint64_t>* reached = nullptr) {
  return [steps, reached](JobContext& context) -> Result<nlohmann::json> {
    for (uint64_t i = 1; i <= steps; i++) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      if (reached) reached->store(i);
      if (!context.Progress(i, steps)) return Status(ECANCELED, "stopped");
    }
    return nlohmann::json{{"summary", "did " + std::to_string(steps) + " steps"}, {"steps", steps}};
  };
}

TEST(JobRegistry, RunsJobsToTheEndWithProgressAndResult) {
  JobRegistry jobs;
  // Long enough (>= 300 ms) for a rate: the first 200 ms give none.
  auto id = jobs.Start({.kind = "test", .target = "t", .unit = "steps"}, Steps(150));
  ASSERT_TRUE(id.ok());
  EXPECT_EQ(id.value(), 1u);
  auto info = jobs.Wait(id.value(), std::chrono::seconds(30));
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->state, JobState::kSucceeded);
  EXPECT_EQ(info->done, 150u);
  EXPECT_EQ(info->total, 150u);
  EXPECT_EQ(info->result, "did 150 steps");
  EXPECT_EQ(info->output["steps"], 150);
  EXPECT_GT(info->rate, 0.0);
  nlohmann::json as_json = info.value();
  EXPECT_EQ(as_json["percent"], 100.0);
  EXPECT_EQ(as_json["state"], "succeeded");
  EXPECT_EQ(jobs.Get(99).status().code(), ENOENT);
}

TEST(JobRegistry, CancelsOnlyWhatMayBeCancelled) {
  JobRegistry jobs;
  auto cancellable = jobs.Start({.kind = "test", .target = "a", .unit = "steps", .cancellable = true}, Steps(100000));
  auto fixed = jobs.Start({.kind = "test", .target = "b", .unit = "steps"}, Steps(20));
  ASSERT_TRUE(cancellable.ok() && fixed.ok());
  EXPECT_EQ(jobs.Cancel(fixed.value()).code(), EPERM);
  ASSERT_TRUE(jobs.Cancel(cancellable.value()).ok());
  auto info = jobs.Wait(cancellable.value(), std::chrono::seconds(30));
  EXPECT_EQ(info->state, JobState::kCancelled);
  EXPECT_LT(info->done, 100000u);
  EXPECT_EQ(jobs.Wait(fixed.value(), std::chrono::seconds(30))->state, JobState::kSucceeded);
  EXPECT_EQ(jobs.Cancel(fixed.value()).code(), EALREADY);
}

TEST(JobRegistry, ShutdownInterruptsAndListsResumableJobs) {
  std::atomic<int> changes{0};
  JobRegistry jobs([&changes] { changes++; });
  std::atomic<uint64_t> reached{0};
  auto resumable = jobs.Start({.kind = "flatten", .target = "c", .unit = "clusters", .resumable = true},
                              Steps(1000000, &reached));
  auto other = jobs.Start({.kind = "other", .target = "d", .unit = "steps"}, Steps(1000000));
  ASSERT_TRUE(resumable.ok() && other.ok());
  while (reached.load() < 3) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  nlohmann::json running = jobs.ResumableJobs();
  ASSERT_EQ(running["jobs"].size(), 1u);
  EXPECT_EQ(running["jobs"][0]["id"], resumable.value());
  jobs.Shutdown();
  EXPECT_EQ(jobs.Get(resumable.value())->state, JobState::kInterrupted);
  EXPECT_EQ(jobs.Get(other.value())->state, JobState::kInterrupted);
  EXPECT_EQ(changes.load(), 2);
  nlohmann::json stored = jobs.ResumableJobs();
  ASSERT_EQ(stored["jobs"].size(), 1u);  // the interrupted resumable one only
  EXPECT_EQ(stored["jobs"][0]["kind"], "flatten");
  EXPECT_EQ(stored["next_id"], 3);
  EXPECT_EQ(jobs.Start({.kind = "late"}, Steps(1)).status().code(), ESHUTDOWN);
}

TEST(JobRegistry, ResumedJobsKeepTheirIdsAndNewOnesComeAfter) {
  JobRegistry jobs;
  jobs.SetNextId(7);
  auto resumed = jobs.Start({.id = 4, .kind = "flatten", .resumed = 1}, Steps(1));
  auto fresh = jobs.Start({.kind = "flatten"}, Steps(1));
  ASSERT_TRUE(resumed.ok() && fresh.ok());
  EXPECT_EQ(resumed.value(), 4u);
  EXPECT_EQ(fresh.value(), 7u);
  EXPECT_EQ(jobs.Start({.id = 4, .kind = "again"}, Steps(1)).status().code(), EEXIST);
}

TEST(StateFile, MissingIsEmptySavedIsReadBackGarbageIsRefused) {
  auto dir = std::filesystem::temp_directory_path() / ("es_state_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::string pool = (dir / "pool.img").string();
  std::string path = DefaultStateFile(pool);
  EXPECT_EQ(path, (dir / "pool.state.json").string());
  auto empty = LoadStateFile(path);
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->empty());
  nlohmann::json state = {{"exports", {{{"protocol", "file"}, {"mountpoint", "/m"}}}}};
  ASSERT_TRUE(SaveStateFile(path, state).ok());
  auto loaded = LoadStateFile(path);
  ASSERT_TRUE(loaded.ok());
  EXPECT_EQ((*loaded)["exports"], state["exports"]);
  EXPECT_EQ((*loaded)["version"], kStateFileVersion);
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  std::ofstream(path) << "{\"exports\": [";  // torn by hand: atomic saves never leave this
  auto torn = LoadStateFile(path);
  EXPECT_EQ(torn.status().code(), EINVAL);
  EXPECT_NE(torn.status().message().find(path), std::string::npos);
  std::ofstream(path) << "{\"version\": 99}";
  EXPECT_EQ(LoadStateFile(path).status().code(), EINVAL);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace edgestor
