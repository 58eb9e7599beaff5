#include "cli/output.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <iostream>

#include "base/size_parse.h"
#include "daemon/info_json.h"

namespace edgestor::cli {
namespace {

// "64 KiB" for exact multiples; otherwise also the exact byte count, so that
// a rounded figure ("19.75 GiB") is never mistaken for the real one.
std::string SizeWithBytes(uint64_t bytes) {
  std::string text = FormatSize(bytes);
  if (text.find('.') != std::string::npos) text += " (" + std::to_string(bytes) + " bytes)";
  return text;
}

std::string Percent(uint64_t part, uint64_t whole) {
  if (whole == 0) return "-";
  char out[16];
  std::snprintf(out, sizeof out, "%.1f%%", 100.0 * static_cast<double>(part) / static_cast<double>(whole));
  return out;
}

// "1 volume", "2 volumes".
std::string Count(uint64_t n, const std::string& noun) { return std::to_string(n) + " " + noun + (n == 1 ? "" : "s"); }

}  // namespace

std::string RenderTable(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> widths;
  for (const auto& row : rows) {
    widths.resize(std::max(widths.size(), row.size()), 0);
    for (size_t c = 0; c < row.size(); c++) widths[c] = std::max(widths[c], row[c].size());
  }
  std::string out;
  for (const auto& row : rows) {
    std::string line;
    for (size_t c = 0; c < row.size(); c++) {
      line += row[c];
      if (c + 1 < row.size()) line += std::string(widths[c] - row[c].size() + 2, ' ');
    }
    out += line + "\n";
  }
  return out;
}

std::string RenderFields(const std::vector<std::pair<std::string, std::string>>& fields) {
  std::vector<std::vector<std::string>> rows;
  for (const auto& [key, value] : fields) rows.push_back({key + ":", value});
  return RenderTable(rows);
}

nlohmann::json PoolInfoJson(const std::string& path, const PoolInfo& info) {
  nlohmann::json out = info;
  out["path"] = path;
  return out;
}

std::string PoolInfoText(const std::string& path, const PoolInfo& info) {
  return RenderFields({
      {"pool", path},
      {"uuid", info.uuid},
      {"format", "version " + std::to_string(info.format_version)},
      {"device size", SizeWithBytes(info.device_bytes)},
      {"cluster size", FormatSize(info.cluster_size)},
      {"data space", SizeWithBytes(info.data_bytes)},
      {"allocated", SizeWithBytes(info.allocated_bytes) + ", " + Percent(info.allocated_bytes, info.data_bytes)},
      {"free", SizeWithBytes(info.free_bytes)},
      {"journal", SizeWithBytes(info.journal_bytes)},
      {"checkpoint", "generation " + std::to_string(info.checkpoint_generation)},
      {"volumes", std::to_string(info.volume_count) +
                      (info.volumes_being_deleted ? " (and " + std::to_string(info.volumes_being_deleted) +
                                                        " being deleted in the background)"
                                                  : "")},
      {"snapshots", std::to_string(info.snapshot_count) +
                        (info.snapshots_being_deleted ? " (and " + std::to_string(info.snapshots_being_deleted) +
                                                            " being deleted in the background)"
                                                      : "") +
                        (info.background_delete_error.empty() ? "" : "; stopped: " + info.background_delete_error)},
      {"pool key", info.key_source == "none" ? "none" : info.key_source + (info.locked ? " (locked)" : " (unlocked)")},
      {"new volumes", std::string(info.encrypt_by_default ? "encrypted" : "not encrypted") + ", compression " +
                          FormatCompression(info.default_compression)},
  });
}

nlohmann::json VolumeInfoJson(const VolumeInfo& info) {
  nlohmann::json out = info;
  out["compression_ratio"] = info.allocated_bytes ? static_cast<double>(info.written_bytes) / info.allocated_bytes : 1.0;
  return out;
}

std::string CompressionRatio(const VolumeInfo& info) {
  if (info.allocated_bytes == 0) return "-";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2fx", static_cast<double>(info.written_bytes) / info.allocated_bytes);
  return buf;
}

// The data path's counters since the pool was opened (by the daemon, if
// one serves it), one line: what a slow volume has been doing.
static std::string DataPathText(const VolumeInfo& info) {
  return std::to_string(info.cow_copies) + " copy-on-writes, " + std::to_string(info.compressed_rewrites) +
         " compressed rewrites (" + std::to_string(info.rewrite_retries) + " redone), " +
         std::to_string(info.packed_frames) + " frames packed, " + std::to_string(info.hot_plain_clusters) +
         " clusters left plain, " + std::to_string(info.recompressed_clusters) + " recompressed, " +
         std::to_string(info.unaligned_writes) + " unaligned writes (" + std::to_string(info.gate_parks) +
         " waits for them) since open";
}

std::string VolumeInfoText(const VolumeInfo& info) {
  return RenderFields({
      {"name", info.name},
      {"id", std::to_string(info.id)},
      {"size", SizeWithBytes(info.size)},
      {"written", SizeWithBytes(info.written_bytes) + " (logical)"},
      {"allocated", SizeWithBytes(info.allocated_bytes) + " (physical), " + Percent(info.allocated_bytes, info.size)},
      {"ratio", CompressionRatio(info)},
      {"encryption", info.encrypted ? (info.locked ? "aes-256-xts (locked)" : "aes-256-xts") : "off"},
      {"compression", FormatCompression(info.compression) + " (" + std::to_string(info.compressed_clusters) + " of " +
                          std::to_string(info.mapped_clusters) + " clusters compressed)"},
      {"origin", info.origin.empty() ? "-" : info.origin + " (a clone: shares its data until flattened)"},
      {"snapshots", std::to_string(info.snapshot_count)},
      {"used", SizeWithBytes(info.used_bytes) + " (freed if the volume and its snapshots were deleted)"},
      {"used by snapshots", SizeWithBytes(info.used_by_snapshots_bytes) + " (freed if its snapshots were deleted)"},
      {"data path", DataPathText(info)},
  });
}

std::string VolumeListText(const std::vector<VolumeInfo>& volumes) {
  if (volumes.empty()) return "no volumes\n";
  std::vector<std::vector<std::string>> rows = {
      {"NAME", "ID", "SIZE", "ALLOCATED", "WRITTEN", "RATIO", "ENCRYPTION", "COMPRESSION", "SNAPSHOTS", "USED",
       "USEDSNAP", "ORIGIN"}};
  for (const VolumeInfo& v : volumes) {
    rows.push_back({v.name, std::to_string(v.id), FormatSize(v.size), FormatSize(v.allocated_bytes),
                    FormatSize(v.written_bytes), CompressionRatio(v), v.encrypted ? "aes-256-xts" : "off",
                    FormatCompression(v.compression), std::to_string(v.snapshot_count), FormatSize(v.used_bytes),
                    FormatSize(v.used_by_snapshots_bytes), v.origin.empty() ? "-" : v.origin});
  }
  return RenderTable(rows);
}

std::string LocalTime(uint64_t unix_seconds) {
  std::time_t t = static_cast<std::time_t>(unix_seconds);
  std::tm local{};
  char out[32];
  if (!::localtime_r(&t, &local) || std::strftime(out, sizeof out, "%Y-%m-%d %H:%M:%S", &local) == 0)
    return std::to_string(unix_seconds);
  return out;
}

std::string SnapshotListText(const std::vector<SnapshotInfo>& snapshots) {
  if (snapshots.empty()) return "no snapshots\n";
  std::vector<std::vector<std::string>> rows = {{"NAME", "CREATED", "REFERENCED", "USED", "CLONES", "AUTO"}};
  for (const SnapshotInfo& s : snapshots) {
    std::string clones;
    for (const std::string& c : s.clones) clones += (clones.empty() ? "" : ",") + c;
    rows.push_back({s.full_name(), LocalTime(s.created_unix), FormatSize(s.referenced_bytes), FormatSize(s.used_bytes),
                    clones.empty() ? "-" : clones, s.automatic ? "auto" : "-"});
  }
  return RenderTable(rows);
}

ProgressLine::ProgressLine(std::string what, std::string unit)
    : what_(std::move(what)),
      unit_(std::move(unit)),
      terminal_(::isatty(STDERR_FILENO) == 1),
      start_(std::chrono::steady_clock::now()) {}

ProgressLine::~ProgressLine() {
  if (terminal_ && shown_percent_ >= 0) std::cerr << "\n";
}

void ProgressLine::Update(uint64_t done, uint64_t total, const std::string& detail) {
  if (total == 0 || std::chrono::steady_clock::now() - start_ < kProgressQuietPeriod) return;
  int percent = static_cast<int>(std::min<uint64_t>(done, total) * 100 / total);
  int step = terminal_ ? 1 : static_cast<int>(kProgressStepPercent);
  if (shown_percent_ >= 0 && percent < shown_percent_ + step && percent != 100) return;
  if (percent == shown_percent_) return;
  shown_percent_ = percent;
  constexpr int kBarWidth = 30;
  std::string bar;
  if (terminal_) {
    int filled = percent * kBarWidth / 100;
    bar = "[" + std::string(filled, '#') + std::string(kBarWidth - filled, '.') + "] ";
  }
  std::string line = what_ + ": " + bar + std::to_string(percent) + "% (" + std::to_string(done) + " of " +
                     std::to_string(total) + " " + unit_ + (detail.empty() ? "" : ", " + detail) + ")";
  if (terminal_) {
    size_t length = line.size();
    if (length < shown_length_) line += std::string(shown_length_ - length, ' ');
    shown_length_ = length;
    std::cerr << "\r" << line << std::flush;
  } else {
    std::cerr << line << "\n";
  }
}

nlohmann::json FsckReportJson(const std::string& path, const FsckReport& report) {
  return {
      {"path", path},
      {"ok", report.ok()},
      {"problems", report.problems},
      {"notes", report.notes},
      {"volumes", report.volumes},
      {"mapped_clusters", report.mapped_clusters},
      {"map_pages", report.map_pages},
      {"used_blocks", report.used_blocks},
      {"snapshots", report.snapshots},
      {"shared_runs", report.shared_runs},
  };
}

std::string FsckSummaryText(const std::string& path, const FsckReport& report) {
  std::string counts = Count(report.volumes, "volume") + ", " + Count(report.mapped_clusters, "mapped cluster") + ", " +
                       Count(report.map_pages, "map page") + ", " + Count(report.used_blocks, "used block");
  if (report.snapshots > 0) counts += ", " + Count(report.snapshots, "snapshot");
  if (report.ok()) return "pool " + path + " is clean (" + counts + ")\n";
  return "pool " + path + ": " + Count(report.problems.size(), "problem") + " found (" + counts + ")\n";
}

void PrintJson(const nlohmann::json& json) { std::cout << json.dump(2) << "\n"; }

}  // namespace edgestor::cli
