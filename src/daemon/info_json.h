// JSON forms of the engine's information structs, shared by the control
// API (daemon) and the CLI's --json output so that both print the same
// fields. Byte counts are plain numbers.
#pragma once

#include <nlohmann/json.hpp>

#include "volume/volume_set.h"

namespace edgestor {

// Compression settings travel as their command-line spelling: "zstd:3".
inline void to_json(nlohmann::json& j, const CompressionSetting& c) { j = FormatCompression(c); }
inline void from_json(const nlohmann::json& j, CompressionSetting& c) {
  auto parsed = ParseCompression(j.get<std::string>());
  if (!parsed.ok()) throw nlohmann::json::type_error::create(302, parsed.status().message(), &j);
  c = parsed.value();
}

NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(VolumeInfo, id, name, size, allocated_bytes, written_bytes, mapped_clusters,
                                   compressed_clusters, encrypted, locked, compression)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(PoolInfo, uuid, format_version, device_bytes, cluster_size, data_bytes,
                                   allocated_bytes, free_bytes, journal_bytes, checkpoint_generation, volume_count,
                                   cached_map_pages, map_cache_limit_pages, key_source, locked, encrypt_by_default,
                                   default_compression)

}  // namespace edgestor
