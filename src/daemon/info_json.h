// JSON forms of the engine's information structs, shared by the control
// API (daemon) and the CLI's --json output so that both print the same
// fields. Byte counts are plain numbers.
#pragma once

#include <nlohmann/json.hpp>

#include "volume/volume_set.h"

namespace edgestor {

NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(VolumeInfo, id, name, size, allocated_bytes, written_bytes)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(PoolInfo, uuid, format_version, device_bytes, cluster_size, data_bytes,
                                   allocated_bytes, free_bytes, journal_bytes, checkpoint_generation, volume_count,
                                   cached_map_pages, map_cache_limit_pages)

}  // namespace edgestor
