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
                                   compressed_clusters, encrypted, locked, compression, origin, snapshot_count,
                                   used_bytes, used_by_snapshots_bytes, cow_copies, compressed_rewrites,
                                   rewrite_retries, unaligned_writes, gate_parks, hot_plain_clusters, recompressed_clusters,
                                   packed_frames)

// full_name ("VOL@SNAP") is derived: written out for readers, not read back.
inline void to_json(nlohmann::json& j, const SnapshotInfo& s) {
  j = {{"id", s.id},
       {"volume", s.volume},
       {"name", s.name},
       {"full_name", s.full_name()},
       {"size", s.size},
       {"created_unix", s.created_unix},
       {"automatic", s.automatic},
       {"referenced_bytes", s.referenced_bytes},
       {"written_bytes", s.written_bytes},
       {"used_bytes", s.used_bytes},
       {"clones", s.clones}};
}
inline void from_json(const nlohmann::json& j, SnapshotInfo& s) {
  j.at("id").get_to(s.id);
  j.at("volume").get_to(s.volume);
  j.at("name").get_to(s.name);
  j.at("size").get_to(s.size);
  j.at("created_unix").get_to(s.created_unix);
  j.at("automatic").get_to(s.automatic);
  j.at("referenced_bytes").get_to(s.referenced_bytes);
  j.at("written_bytes").get_to(s.written_bytes);
  j.at("used_bytes").get_to(s.used_bytes);
  j.at("clones").get_to(s.clones);
}
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(PoolInfo, uuid, format_version, device_bytes, cluster_size, data_bytes,
                                   allocated_bytes, free_bytes, journal_bytes, checkpoint_generation, volume_count,
                                   snapshot_count, snapshots_being_deleted, volumes_being_deleted, background_delete_pages,
                                   background_delete_error, cached_map_pages, map_cache_limit_pages, map_cache_hits,
                                   map_cache_misses, map_page_async_loads, group_commits, group_commit_waiters, group_commit_ns_total,
                                   group_commit_ns_max, checkpoints, checkpoint_ns_total, checkpoint_ns_max,
                                   journal_used_bytes, failure, shared_edge_blocks,
                                   key_source, locked, encrypt_by_default, default_compression)

}  // namespace edgestor
