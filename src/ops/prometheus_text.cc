#include "ops/prometheus_text.h"

#include <cassert>
#include <charconv>
#include <cmath>

namespace edgestor {
namespace {

[[maybe_unused]] bool IsMetricName(std::string_view name) {
  if (name.empty() || (name[0] >= '0' && name[0] <= '9')) return false;
  for (char c : name)
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == ':')) return false;
  return true;
}

void AppendEscaped(std::string& out, std::string_view value) {
  for (char c : value) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
}

void AppendDouble(std::string& out, double value) {
  if (std::isnan(value)) {
    out += "NaN";
    return;
  }
  if (std::isinf(value)) {
    out += value > 0 ? "+Inf" : "-Inf";
    return;
  }
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, value);
  assert(ec == std::errc());
  out.append(buf, end);
}

}  // namespace

void PrometheusText::Family(std::string_view name, std::string_view type, std::string_view help) {
  assert(IsMetricName(name));
  assert(type == "counter" || type == "gauge" || type == "histogram" || type == "summary");
  assert(help.find('\n') == std::string_view::npos && help.find('\\') == std::string_view::npos);
  family_ = name;
  out_ += "# HELP ";
  out_ += name;
  out_ += ' ';
  out_ += help;
  out_ += "\n# TYPE ";
  out_ += name;
  out_ += ' ';
  out_ += type;
  out_ += '\n';
}

void PrometheusText::WriteName(std::string_view suffix) {
  assert(!family_.empty());
  out_ += family_;
  out_ += suffix;
}

void PrometheusText::WriteLabels(const MetricLabels& labels, std::string_view extra_name, std::string_view extra_value) {
  if (labels.empty() && extra_name.empty()) return;
  out_ += '{';
  bool first = true;
  auto add = [&](std::string_view name, std::string_view value) {
    assert(IsMetricName(name));
    if (!first) out_ += ',';
    first = false;
    out_ += name;
    out_ += "=\"";
    AppendEscaped(out_, value);
    out_ += '"';
  };
  for (const auto& [name, value] : labels) add(name, value);
  if (!extra_name.empty()) add(extra_name, extra_value);
  out_ += '}';
}

void PrometheusText::Sample(const MetricLabels& labels, double value, std::string_view suffix) {
  WriteName(suffix);
  WriteLabels(labels);
  out_ += ' ';
  AppendDouble(out_, value);
  out_ += '\n';
}

void PrometheusText::Sample(const MetricLabels& labels, uint64_t value, std::string_view suffix) {
  WriteName(suffix);
  WriteLabels(labels);
  out_ += ' ';
  out_ += std::to_string(value);
  out_ += '\n';
}

void PrometheusText::LatencyHistogram(const MetricLabels& labels, const IoKindCounters& counters) {
  uint64_t cumulative = 0;
  for (size_t i = 0; i < kLatencyBuckets; ++i) {
    cumulative += counters.latency_buckets[i];
    std::string le;
    if (i < kLatencyBucketsUs.size()) {
      char buf[32];
      auto [end, ec] = std::to_chars(buf, buf + sizeof buf, static_cast<double>(kLatencyBucketsUs[i]) / 1e6,
                                     std::chars_format::fixed);
      assert(ec == std::errc());
      le.assign(buf, end);
    } else {
      le = "+Inf";
    }
    WriteName("_bucket");
    WriteLabels(labels, "le", le);
    out_ += ' ';
    out_ += std::to_string(cumulative);
    out_ += '\n';
  }
  Sample(labels, static_cast<double>(counters.latency_ns_sum) / 1e9, "_sum");
  Sample(labels, cumulative, "_count");  // the +Inf bucket: consistent with the buckets read
}

}  // namespace edgestor
