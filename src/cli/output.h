// Human and JSON renderings of engine information for the CLI.
//
// Human output is aligned text tables with sizes from FormatSize ("8 GiB");
// JSON output carries every byte count as a plain number, so scripts never
// parse "8 GiB".
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "volume/volume_set.h"

namespace edgestor::cli {

// Rows of cells, the first row a header; columns padded to their widest cell.
std::string RenderTable(const std::vector<std::vector<std::string>>& rows);

// Two-column "key  value" listing.
std::string RenderFields(const std::vector<std::pair<std::string, std::string>>& fields);

nlohmann::json PoolInfoJson(const std::string& path, const PoolInfo& info);
std::string PoolInfoText(const std::string& path, const PoolInfo& info);

nlohmann::json VolumeInfoJson(const VolumeInfo& info);
// Logical written bytes over physical allocated bytes, as "3.92x" ("-" if empty).
std::string CompressionRatio(const VolumeInfo& info);
std::string VolumeInfoText(const VolumeInfo& info);
std::string VolumeListText(const std::vector<VolumeInfo>& volumes);

// Table of snapshots: NAME (VOL@SNAP), CREATED (local time), REFERENCED,
// USED (unique to it), CLONES, AUTO (kept by a rollback).
std::string SnapshotListText(const std::vector<SnapshotInfo>& snapshots);
// "2024-05-01 14:03:59" in local time.
std::string LocalTime(uint64_t unix_seconds);

// Progress of a long command on stderr: a line rewritten in place on a
// terminal, otherwise a line every kProgressStepPercent. Quiet for the
// first kProgressQuietPeriod, so that short runs print nothing.
class ProgressLine {
 public:
  // Prints "<what>: 42% (<done> of <total> <unit>[, <detail>])", with a
  // bar before the percentage on a terminal.
  ProgressLine(std::string what, std::string unit);
  ~ProgressLine();  // ends an in-place line with a newline
  ProgressLine(const ProgressLine&) = delete;
  ProgressLine& operator=(const ProgressLine&) = delete;
  // `detail`: rate, ETA... (a change of it alone prints nothing new).
  void Update(uint64_t done, uint64_t total, const std::string& detail = "");

 private:
  static constexpr uint32_t kProgressStepPercent = 5;
  static constexpr std::chrono::seconds kProgressQuietPeriod{1};
  std::string what_;
  std::string unit_;
  bool terminal_;
  std::chrono::steady_clock::time_point start_;
  int shown_percent_ = -1;  // last percentage printed; -1: none yet
  size_t shown_length_ = 0;  // of the line on the terminal, to blank a longer one
};

nlohmann::json FsckReportJson(const std::string& path, const FsckReport& report);
std::string FsckSummaryText(const std::string& path, const FsckReport& report);

// Writes `json` to stdout, pretty-printed, with a trailing newline.
void PrintJson(const nlohmann::json& json);

}  // namespace edgestor::cli
