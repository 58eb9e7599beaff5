#include <httplib.h>

#include <gtest/gtest.h>

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

TEST(MetricsServer, ServesMetricsOnlyAndStops) {
  int renders = 0;
  auto server = MetricsServer::Start("127.0.0.1:0", [&renders] {
    renders++;
    return std::string("# HELP x X.\n# TYPE x gauge\nx 1\n");
  });
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  uint16_t port = server.value()->port();
  ASSERT_NE(port, 0);
  httplib::Client client("127.0.0.1", port);
  auto got = client.Get("/metrics");
  ASSERT_TRUE(got);
  EXPECT_EQ(got->status, 200);
  EXPECT_EQ(got->body, "# HELP x X.\n# TYPE x gauge\nx 1\n");
  EXPECT_NE(got->get_header_value("Content-Type").find("text/plain; version=0.0.4"), std::string::npos);
  auto missing = client.Get("/other");
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing->status, 404);
  auto posted = client.Post("/metrics", std::string(1 << 20, 'x'), "text/plain");
  ASSERT_TRUE(posted);
  EXPECT_GE(posted->status, 400);
  EXPECT_EQ(renders, 1);
  // The port is in use: a second listener there is refused with a reason.
  auto second = MetricsServer::Start("127.0.0.1:" + std::to_string(port), [] { return std::string(); });
  EXPECT_FALSE(second.ok());
  server.value()->Stop();
  httplib::Client after("127.0.0.1", port);
  EXPECT_FALSE(after.Get("/metrics"));
  EXPECT_FALSE(MetricsServer::Start("127.0.0.1", [] { return std::string(); }).ok());
  EXPECT_FALSE(MetricsServer::Start("127.0.0.1:99999", [] { return std::string(); }).ok());
}

}  // namespace
}  // namespace edgestor
