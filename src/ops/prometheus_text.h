// PrometheusText: writes the Prometheus text exposition format (0.0.4).
//
// Families are written one at a time: Family() writes the HELP and TYPE
// lines, then every sample of that family follows before the next Family().
// Label values are escaped; metric and label names are ours (constants),
// so they are only checked in debug builds.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "base/io_stats.h"

namespace edgestor {

using MetricLabels = std::vector<std::pair<std::string_view, std::string>>;

class PrometheusText {
 public:
  // `type`: "counter", "gauge", "histogram" or "summary".
  void Family(std::string_view name, std::string_view type, std::string_view help);
  // One sample of the current family; `suffix` ("_bucket", "_sum",
  // "_count") for histograms and summaries.
  void Sample(const MetricLabels& labels, double value, std::string_view suffix = {});
  void Sample(const MetricLabels& labels, uint64_t value, std::string_view suffix = {});
  // The samples of one latency histogram (seconds) from IoStats counters:
  // cumulative buckets, +Inf, sum and count.
  void LatencyHistogram(const MetricLabels& labels, const IoKindCounters& counters);

  const std::string& text() const { return out_; }

 private:
  void WriteName(std::string_view suffix);
  void WriteLabels(const MetricLabels& labels, std::string_view extra_name = {}, std::string_view extra_value = {});

  std::string out_;
  std::string family_;
};

}  // namespace edgestor
