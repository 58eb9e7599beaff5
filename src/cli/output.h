// Human and JSON renderings of engine information for the CLI.
//
// Human output is aligned text tables with sizes from FormatSize ("8 GiB");
// JSON output carries every byte count as a plain number, so scripts never
// parse "8 GiB".
#pragma once

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

nlohmann::json FsckReportJson(const std::string& path, const FsckReport& report);
std::string FsckSummaryText(const std::string& path, const FsckReport& report);

// Writes `json` to stdout, pretty-printed, with a trailing newline.
void PrintJson(const nlohmann::json& json);

}  // namespace edgestor::cli
