#include "volume/checkpoint_codec.h"

#include <cassert>
#include <cerrno>
#include <cstring>
#include <set>

#include "codec/compressor.h"

namespace edgestor {

namespace {

template <typename T>
void Put(std::vector<uint8_t>& out, const T& value) {
  size_t at = out.size();
  out.resize(at + sizeof value);
  std::memcpy(out.data() + at, &value, sizeof value);
}

// A bounds-checked reader over the payload.
class Reader {
 public:
  explicit Reader(std::span<const uint8_t> data) : data_(data) {}
  template <typename T>
  bool Get(T* value) {
    assert(pos_ <= data_.size());
    if (data_.size() - pos_ < sizeof(T)) return false;
    std::memcpy(value, data_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return true;
  }
  bool GetBytes(size_t n, std::string* out) {
    assert(pos_ <= data_.size());
    if (data_.size() - pos_ < n) return false;
    out->assign(reinterpret_cast<const char*>(data_.data() + pos_), n);
    pos_ += n;
    return true;
  }
  size_t remaining() const { return data_.size() - pos_; }

 private:
  std::span<const uint8_t> data_;
  size_t pos_ = 0;
};

Status Corrupt(const std::string& what) { return Status(EUCLEAN, "checkpoint is damaged: " + what); }

bool ValidDefaults(const format::PoolDefaults& d);
bool ValidAttributes(const format::VolumeAttributes& a);

}  // namespace

bool IsValidVolumeName(const std::string& name) {
  if (name.empty() || name.size() > format::kMaxVolumeNameLength) return false;
  if (name[0] == '.' || name[0] == '-') return false;
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == '-';
    if (!ok) return false;
  }
  return true;
}

uint64_t ClustersFor(uint64_t size, uint32_t cluster_size) {
  assert(cluster_size >= format::kMinClusterSize && (cluster_size & (cluster_size - 1)) == 0);
  return (size + cluster_size - 1) / cluster_size; }

std::string DeletingSnapshotName(uint32_t snapshot_id) { return ".deleting-" + std::to_string(snapshot_id); }

std::string DeletingVolumeName(uint32_t volume_id) { return ".deleting-volume-" + std::to_string(volume_id); }

bool IsDeletingVolumeName(const std::string& name) { return name.starts_with(".deleting-volume-"); }

uint64_t DirectorySlotsFor(uint64_t size, uint32_t cluster_size) {
  return (ClustersFor(size, cluster_size) + format::kEntriesPerMapPage - 1) / format::kEntriesPerMapPage;
}

std::vector<uint8_t> EncodeDirectory(const std::vector<format::DirectorySlot>& slots) {
  std::vector<uint8_t> out(slots.size() * sizeof(format::DirectorySlot));
  if (!slots.empty()) std::memcpy(out.data(), slots.data(), out.size());
  assert(out.size() % sizeof(format::DirectorySlot) == 0);
  return out;
}

Result<std::vector<format::DirectorySlot>> ParseDirectory(std::span<const uint8_t> bytes, uint64_t slots,
                                                          uint64_t total_blocks, bool prefix) {
  const uint64_t needed = slots * sizeof(format::DirectorySlot);
  if (prefix ? bytes.size() < needed || bytes.size() % sizeof(format::DirectorySlot) : bytes.size() != needed)
    return Status(EUCLEAN, "snapshot directory has the wrong length");
  bytes = bytes.first(needed);
  std::vector<format::DirectorySlot> out(slots);
  if (slots) std::memcpy(out.data(), bytes.data(), bytes.size());
  for (const auto& slot : out)
    if (slot.block >= total_blocks) return Status(EUCLEAN, "snapshot directory points outside the pool");
  assert(out.size() == slots);
  return out;
}

// Every field the parser checks is asserted here: a checkpoint the engine
// writes must open again.
std::vector<uint8_t> EncodeCheckpoint(const CheckpointContents& contents) {
  assert(contents.volumes.size() <= format::kMaxVolumes && contents.snapshots.size() <= format::kMaxSnapshots);
  assert(ValidDefaults(contents.defaults));
  std::vector<uint8_t> out;
  Put(out, format::CheckpointHeader{static_cast<uint32_t>(contents.volumes.size()), contents.next_volume_id});
  Put(out, contents.defaults);
  for (const VolumeRecord& v : contents.volumes) {
    assert(v.id != 0 && v.id < contents.next_volume_id);
    assert(IsValidVolumeName(v.name) || v.name == DeletingVolumeName(v.id));
    assert(v.size != 0 && v.size <= format::kMaxVolumeSize && v.size % 512 == 0);
    assert(ValidAttributes(v.attributes));
    Put(out, format::VolumeTableEntry{v.id, static_cast<uint32_t>(v.name.size()), v.size, v.directory.size()});
    out.insert(out.end(), v.name.begin(), v.name.end());
    Put(out, v.attributes);
    for (const auto& slot : v.directory) Put(out, slot);
  }
  Put(out, format::SnapshotTableHeader{static_cast<uint32_t>(contents.snapshots.size()), contents.next_snapshot_id});
  for (const SnapshotRecord& s : contents.snapshots) {
    format::SnapshotEntry e = s.entry;
    assert(e.snapshot_id != 0 && e.snapshot_id < contents.next_snapshot_id);
    assert((e.flags & format::kSnapshotDeleting) ? s.name == DeletingSnapshotName(e.snapshot_id)
                                                 : IsValidVolumeName(s.name));
    assert((e.flags & ~(format::kSnapshotAutomatic | format::kSnapshotDeleting)) == 0);
    assert(e.size != 0 && e.size <= format::kMaxVolumeSize && e.size % 512 == 0 && e.directory_block != 0);
    assert(ValidAttributes(s.attributes) && s.attributes.origin_snapshot == 0);
    e.name_length = static_cast<uint32_t>(s.name.size());
    Put(out, e);
    out.insert(out.end(), s.name.begin(), s.name.end());
    Put(out, s.attributes);
  }
  assert(out.size() >= sizeof(format::CheckpointHeader) + sizeof(format::PoolDefaults) + sizeof(format::SnapshotTableHeader));
  return out;
}

namespace {

bool AllZero(const uint8_t* p, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (p[i]) return false;
  return true;
}

bool ValidCompression(uint8_t algorithm, uint8_t level) {
  if (algorithm == static_cast<uint8_t>(Compression::kZstd)) return level >= kZstdMinLevel && level <= kZstdMaxLevel;
  return algorithm <= static_cast<uint8_t>(Compression::kLz4) && level == 0;
}

bool ValidDefaults(const format::PoolDefaults& d) {
  return d.encrypt <= 1 && ValidCompression(d.compression, d.compression_level) &&
         AllZero(d.reserved, sizeof d.reserved);
}

bool ValidAttributes(const format::VolumeAttributes& a) {
  if (a.encrypted > 1 || !ValidCompression(a.compression, a.compression_level)) return false;
  if (a.reserved != 0) return false;
  return a.encrypted || AllZero(a.wrapped_key, sizeof a.wrapped_key);
}

Status ParseSnapshots(Reader& in, const std::set<uint32_t>& volume_ids, uint32_t cluster_size,
                      uint64_t total_blocks, CheckpointContents* contents) {
  format::SnapshotTableHeader header;
  if (!in.Get(&header)) return Corrupt("truncated snapshot table");
  if (header.snapshot_count > format::kMaxSnapshots) return Corrupt("too many snapshots");
  contents->next_snapshot_id = header.next_snapshot_id;
  std::set<uint32_t> ids;
  std::set<std::pair<uint32_t, std::string>> names;
  for (uint32_t i = 0; i < header.snapshot_count; i++) {
    SnapshotRecord s;
    format::SnapshotEntry& e = s.entry;
    if (!in.Get(&e)) return Corrupt("truncated snapshot table");
    if (e.name_length > format::kMaxSnapshotNameLength || !in.GetBytes(e.name_length, &s.name))
      return Corrupt("bad snapshot name");
    bool deleting = e.flags & format::kSnapshotDeleting;
    if (deleting ? s.name != DeletingSnapshotName(e.snapshot_id) : !IsValidVolumeName(s.name))
      return Corrupt("bad snapshot name");
    std::string what = "snapshot " + s.name;
    if (e.snapshot_id == 0 || e.snapshot_id >= header.next_snapshot_id || !ids.insert(e.snapshot_id).second)
      return Corrupt("bad id of " + what);
    if (!volume_ids.count(e.volume_id)) return Corrupt(what + " belongs to no volume");
    if (!names.insert({e.volume_id, s.name}).second) return Corrupt("duplicate " + what);
    if (!in.Get(&s.attributes) || !ValidAttributes(s.attributes) || s.attributes.origin_snapshot != 0)
      return Corrupt("bad attributes of " + what);
    if (e.size == 0 || e.size > format::kMaxVolumeSize || e.size % 512 != 0) return Corrupt("bad size of " + what);
    if (e.directory_slots != DirectorySlotsFor(e.size, cluster_size) || e.directory_block == 0 ||
        e.directory_block >= total_blocks)
      return Corrupt("bad directory of " + what);
    uint64_t clusters = ClustersFor(e.size, cluster_size);
    bool counts_ok = e.mapped_clusters <= clusters && e.compressed_clusters <= e.mapped_clusters &&
                     e.stored_blocks <= e.mapped_clusters * (cluster_size / format::kBlockSize) &&
                     e.written_blocks <= e.mapped_clusters * (cluster_size / format::kBlockSize);
    if (!counts_ok || (e.flags & ~(format::kSnapshotAutomatic | format::kSnapshotDeleting)))
      return Corrupt("bad accounting of " + what);
    contents->snapshots.push_back(std::move(s));
  }
  return Status::Ok();
}

}  // namespace

Result<CheckpointContents> ParseCheckpoint(std::span<const uint8_t> payload, uint32_t version,
                                           uint32_t cluster_size, uint64_t total_blocks) {
  // The label was checked at open: a known version, a valid cluster size.
  assert(version >= format::kOldestReadableVersion && version <= format::kVersion && total_blocks > 0);
  CheckpointContents contents;
  if (payload.empty()) return contents;  // a pool never checkpointed
  Reader in(payload);
  format::CheckpointHeader header;
  if (!in.Get(&header)) return Corrupt("truncated header");
  if (header.volume_count > format::kMaxVolumes) return Corrupt("too many volumes");
  contents.next_volume_id = header.next_volume_id;
  bool has_attributes = version >= 2;
  if (has_attributes && (!in.Get(&contents.defaults) || !ValidDefaults(contents.defaults)))
    return Corrupt("bad pool defaults");
  std::set<uint32_t> ids;
  std::set<std::string> names;
  for (uint32_t i = 0; i < header.volume_count; i++) {
    format::VolumeTableEntry e;
    if (!in.Get(&e)) return Corrupt("truncated volume table");
    VolumeRecord v;
    v.id = e.volume_id;
    v.size = e.size;
    if (e.name_length > format::kMaxVolumeNameLength || !in.GetBytes(e.name_length, &v.name) ||
        !(IsValidVolumeName(v.name) || v.name == DeletingVolumeName(v.id)))
      return Corrupt("bad volume name");
    if (v.id == 0 || v.id >= header.next_volume_id || !ids.insert(v.id).second) return Corrupt("bad volume id");
    if (!names.insert(v.name).second) return Corrupt("duplicate volume name " + v.name);
    if (has_attributes && (!in.Get(&v.attributes) || !ValidAttributes(v.attributes)))
      return Corrupt("bad attributes of volume " + v.name);
    if (v.size == 0 || v.size > format::kMaxVolumeSize || v.size % 512 != 0) return Corrupt("bad size of volume " + v.name);
    uint64_t slots = DirectorySlotsFor(v.size, cluster_size);
    if (e.directory_slots != slots || in.remaining() / sizeof(format::DirectorySlot) < slots)
      return Corrupt("directory of volume " + v.name + " has the wrong length");
    v.directory.resize(slots);
    for (auto& slot : v.directory) {
      in.Get(&slot);
      if (slot.block >= total_blocks) return Corrupt("map page pointer of volume " + v.name + " is out of range");
    }
    contents.volumes.push_back(std::move(v));
  }
  if (version >= 3) ES_RETURN_IF_ERROR(ParseSnapshots(in, ids, cluster_size, total_blocks, &contents));
  if (in.remaining() != 0) return Corrupt("trailing bytes");
  for (const VolumeRecord& v : contents.volumes) {
    uint32_t origin = v.attributes.origin_snapshot;
    bool found = origin == 0;
    for (const SnapshotRecord& s : contents.snapshots) found = found || s.entry.snapshot_id == origin;
    if (!found) return Corrupt("volume " + v.name + " is a clone of a snapshot that does not exist");
  }
  return contents;
}

}  // namespace edgestor
