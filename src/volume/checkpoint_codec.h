// Encoding of the checkpoint payload: the volume table and every volume's
// map directory. Parsing is strict (every field bounded, no trailing bytes)
// because the payload is read from disk and may be damaged or hostile; a
// fuzz target drives ParseCheckpoint.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "base/status.h"
#include "pool/format.h"

namespace edgestor {

struct VolumeRecord {
  uint32_t id = 0;
  std::string name;
  uint64_t size = 0;
  format::VolumeAttributes attributes{};  // all zero: plain, uncompressed
  std::vector<format::DirectorySlot> directory;
};

// A snapshot as the checkpoint names it; its directory slots live in the
// side chain the entry points at.
struct SnapshotRecord {
  format::SnapshotEntry entry{};
  std::string name;  // the part after '@'
  format::VolumeAttributes attributes{};
};

struct CheckpointContents {
  uint32_t next_volume_id = 1;
  format::PoolDefaults defaults{};
  std::vector<VolumeRecord> volumes;
  uint32_t next_snapshot_id = 1;
  std::vector<SnapshotRecord> snapshots;
};

// Always writes the current format version.
std::vector<uint8_t> EncodeCheckpoint(const CheckpointContents& contents);
// `version` is the label's format version (1 has no defaults or
// attributes); `cluster_size` and `total_blocks` bound the directory sizes
// and pointers.
Result<CheckpointContents> ParseCheckpoint(std::span<const uint8_t> payload, uint32_t version,
                                           uint32_t cluster_size, uint64_t total_blocks);

// Volume names: 1..64 characters of [A-Za-z0-9._-], not starting with '.' or
// '-', and without '@' (reserved for snapshots: VOL@SNAP).
bool IsValidVolumeName(const std::string& name);
// The name a snapshot being deleted in the background carries.
std::string DeletingSnapshotName(uint32_t snapshot_id);
// The name a volume being deleted in the background carries (hidden from
// every caller; no user can give a name starting with '.').
std::string DeletingVolumeName(uint32_t volume_id);
bool IsDeletingVolumeName(const std::string& name);
// Directory slots (map pages) of a volume of `size` bytes.
uint64_t DirectorySlotsFor(uint64_t size, uint32_t cluster_size);
// A snapshot directory's side chain: its slots, packed.
std::vector<uint8_t> EncodeDirectory(const std::vector<format::DirectorySlot>& slots);
// A snapshot being deleted may hold a longer chain than it reads (its
// release truncates it step by step): `prefix` accepts that.
Result<std::vector<format::DirectorySlot>> ParseDirectory(std::span<const uint8_t> bytes, uint64_t slots,
                                                          uint64_t total_blocks, bool prefix = false);
// Clusters needed to hold `size` bytes.
uint64_t ClustersFor(uint64_t size, uint32_t cluster_size);

}  // namespace edgestor
