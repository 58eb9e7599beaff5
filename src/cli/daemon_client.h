// Reaching a daemon that serves the pool, for commands that go through it.
#pragma once

#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "cli/commands.h"

namespace edgestor::cli {

// The control socket of a daemon serving the pool, if one does: the one
// given with --control, else the default one beside the pool if a daemon
// answers on it.
std::optional<std::string> DaemonSocket(const VolumeArgs& args);
// The daemon's socket, or CliError "<what> the daemon: start ... first".
std::string RequireDaemon(const VolumeArgs& args, const std::string& what);
// Calls `method`; throws CliError "<what> (through the daemon at SOCK): ...".
nlohmann::json Call(const std::string& socket, const std::string& method, const nlohmann::json& params,
                    const std::string& what);
// Follows job `id` to its end, with a progress line on stderr; returns the
// job as it ended (job.get's result).
nlohmann::json FollowJob(const std::string& socket, uint64_t id, const std::string& what);

}  // namespace edgestor::cli
