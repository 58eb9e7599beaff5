// The daemon's stored state beside its pool (var/pool.img ->
// var/pool.state.json): the exports to restore at start, the jobs to resume,
// and the settings `serve` last ran with. JSON, so an operator can read it;
// the daemon owns it while it runs.
//
// Saves are atomic: the new contents go to a temporary file that is
// fsynced and renamed over the old one, and the directory is fsynced, so a
// crash leaves either the old state or the new, never a torn file.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "base/status.h"

namespace edgestor {

inline constexpr int kStateFileVersion = 1;

std::string DefaultStateFile(const std::string& pool_path);

// The stored state; an empty object if the file does not exist. EINVAL
// (naming the file) if it is not valid JSON or not ours.
Result<nlohmann::json> LoadStateFile(const std::string& path);
Status SaveStateFile(const std::string& path, const nlohmann::json& state);

}  // namespace edgestor
