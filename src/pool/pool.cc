// Pool: labels, open/format, and checkpoints. The journal is in journal.cc.
#include "pool/pool.h"

#include <cassert>
#include <cerrno>
#include <cstring>
#include <algorithm>
#include <optional>
#include <random>

#include "base/checksum.h"
#include "io/signature_probe.h"

namespace edgestor {

using format::kBlockSize;

namespace format {
static uint32_t SeededBlockCrc(uint32_t seed, const void* block, size_t len, size_t crc_offset) {
  assert(crc_offset + 4 <= len);
  const uint8_t* p = static_cast<const uint8_t*>(block);
  static const uint8_t kZeros[4] = {};
  uint32_t crc = Crc32c(p, crc_offset, seed);
  crc = Crc32c(kZeros, 4, crc);
  return Crc32c(p + crc_offset + 4, len - crc_offset - 4, crc) ^ 0xffffffffu;
}

uint32_t BlockCrc(const void* block, size_t len, size_t crc_offset) {
  return SeededBlockCrc(0xffffffffu, block, len, crc_offset);
}

uint32_t BoundBlockCrc(const uint8_t* pool_uuid, const void* block, size_t len, size_t crc_offset) {
  return SeededBlockCrc(Crc32c(pool_uuid, sizeof(Label::pool_uuid), 0xffffffffu), block, len, crc_offset);
}
}  // namespace format

namespace {

constexpr uint64_t kLabelBlocksFront = 2;
constexpr uint64_t kLabelBlocksBack = 2;
constexpr size_t kLabelCrcOffset = offsetof(format::Label, crc);

uint64_t LabelBlock(uint64_t total_blocks, int copy) {
  assert(copy >= 0 && copy < static_cast<int>(format::kLabelCopies) && total_blocks >= kLabelBlocksFront + kLabelBlocksBack);
  return copy < 2 ? static_cast<uint64_t>(copy) : total_blocks - kLabelBlocksBack + (copy - 2);
}

bool LabelIsValid(const format::Label& label) {
  return label.magic == format::kLabelMagic && format::BlockCrc(&label, kBlockSize, kLabelCrcOffset) == label.crc;
}

// Geometry sanity for a label whose checksum is right: guards against a
// label written by a buggy or hostile tool.
Status CheckLabelGeometry(const format::Label& l) {
  uint64_t total = l.device_bytes / kBlockSize;
  if (l.version < format::kOldestReadableVersion || l.version > format::kVersion)
    return Status(EPROTONOSUPPORT, "pool format version " + std::to_string(l.version) +
                                        " is not supported (this build reads versions " +
                                        std::to_string(format::kOldestReadableVersion) + " to " +
                                        std::to_string(format::kVersion) + ")");
  bool keys_ok = l.key_source <= format::kKeySourcePassphrase &&
                 (l.key_source != format::kKeySourceNone) == ((l.features & format::kFeatureEncryption) != 0);
  if (!keys_ok) return Status(EUCLEAN, "pool label has an inconsistent key source");
  if (l.features & ~format::kKnownFeatures) return Status(EPROTONOSUPPORT, "pool uses features this build does not know");
  if (l.vdev_layout != format::kVdevSingle) return Status(EPROTONOSUPPORT, "pool uses an unknown vdev layout");
  bool cluster_ok = l.cluster_size >= format::kMinClusterSize && l.cluster_size <= format::kMaxClusterSize &&
                    (l.cluster_size & (l.cluster_size - 1)) == 0;
  // The journal and the checkpoint lie between the front and back labels:
  // a journal running into the back labels would overwrite them.
  uint64_t back_labels = total >= kLabelBlocksBack ? total - kLabelBlocksBack : 0;
  bool journal_ok = l.journal_start == kLabelBlocksFront && l.journal_blocks >= format::kMinJournalBlocks &&
                    l.journal_blocks <= format::kMaxJournalBlocks && l.journal_start + l.journal_blocks <= back_labels;
  bool checkpoint_ok = l.checkpoint_block < back_labels;
  bool binding_ok = l.version < format::kFirstBoundVersion ||
                    (l.bound_since_gen >= 1 && l.bound_since_gen <= l.checkpoint_gen);
  if (l.block_size != kBlockSize || !cluster_ok || !journal_ok || !checkpoint_ok || !binding_ok)
    return Status(EUCLEAN, "pool label has impossible geometry");
  return Status::Ok();
}

}  // namespace

Pool::Pool(std::unique_ptr<Device> device, const format::Label& label)
    : device_(std::move(device)),
      label_(label),
      opened_version_(label.version),
      // A version 1-3 pool binds its blocks from its first checkpoint on:
      // journal blocks of its current generation stay plain until then, so
      // the old label (still current after a crash) can replay them.
      bound_since_gen_(label.version >= format::kFirstBoundVersion ? label.bound_since_gen : label.checkpoint_gen + 1),
      allocator_(label.device_bytes / kBlockSize, label.cluster_size / kBlockSize) {
  geometry_.device_bytes = label.device_bytes;
  geometry_.cluster_size = label.cluster_size;
  geometry_.journal_start = label.journal_start;
  geometry_.journal_blocks = label.journal_blocks;
  geometry_.total_blocks = label.device_bytes / kBlockSize;
  std::memcpy(uuid_.data(), label.pool_uuid, uuid_.size());
  journal_head_seq_ = label.replay_seq;
  // Labels and journal are fixed; everything else is marked by recovery.
  allocator_.MarkUsed(0, label.journal_start + label.journal_blocks);
  allocator_.MarkUsed(geometry_.total_blocks - kLabelBlocksBack, kLabelBlocksBack);
}

namespace {

// Reads all label copies and returns the valid one with the highest
// generation. Distinguishes "not a pool" from "a pool whose labels are all
// damaged" for a clearer error.
Result<format::Label> ReadBestLabel(Device& device) {
  uint64_t total_blocks = device.size() / kBlockSize;
  if (total_blocks < kLabelBlocksFront + kLabelBlocksBack + format::kMinJournalBlocks)
    return Status(EINVAL, device.name() + " is too small to be an edgestor pool (" + std::to_string(device.size()) + " bytes)");
  AlignedBuffer buf = AllocateAligned(kBlockSize);
  std::optional<format::Label> best;
  int magic_seen = 0;
  Status io_error;
  for (int copy = 0; copy < static_cast<int>(format::kLabelCopies); copy++) {
    Status s = device.ReadSync(LabelBlock(total_blocks, copy) * kBlockSize, buf.get(), kBlockSize);
    if (!s.ok()) {
      io_error = s;
      continue;
    }
    format::Label label;
    std::memcpy(&label, buf.get(), sizeof label);
    if (label.magic == format::kLabelMagic) magic_seen++;
    if (!LabelIsValid(label)) continue;
    if (!best || label.generation > best->generation) best = label;
  }
  if (!best) {
    if (!io_error.ok()) return io_error.WithContext("cannot read pool labels");
    if (magic_seen) return Status(EUCLEAN, "every pool label on " + device.name() + " is damaged (bad checksum)");
    if (device.size() % kBlockSize != 0)
      return Status(EINVAL, device.name() + " is not an edgestor pool (no label found; its size is not a multiple of 4 KiB, was it truncated?)");
    return Status(EINVAL, device.name() + " is not an edgestor pool (no label found)");
  }
  if (best->device_bytes != device.size() / kBlockSize * kBlockSize)
    return Status(EINVAL, device.name() + " is " + std::to_string(device.size()) + " bytes but its pool label says " +
                              std::to_string(best->device_bytes) + " (truncated or resized?)");
  ES_RETURN_IF_ERROR(CheckLabelGeometry(*best));
  return *best;
}

void SetKeys(format::Label* label, const KeyProtection& keys) {
  label->key_source = keys.source;
  std::memcpy(label->kdf, keys.kdf.data(), sizeof label->kdf);
  std::memcpy(label->key_check, keys.key_check.data(), sizeof label->key_check);
  label->features &= ~format::kFeatureEncryption;
  if (keys.source != format::kKeySourceNone) label->features |= format::kFeatureEncryption;
}

}  // namespace

namespace {

// Why a device may not be formatted without force: any block at a label
// position with the label magic (a pool, even a damaged one, one of a newer
// version, or one whose device was resized), or anything libblkid knows.
Status CheckNothingToLose(Device& device) {
  Result<format::Label> existing = ReadBestLabel(device);
  if (existing.ok()) return Status(EEXIST, device.name() + " already holds an edgestor pool");
  uint64_t total_blocks = device.size() / kBlockSize;
  AlignedBuffer buf = AllocateAligned(kBlockSize);
  for (int copy = 0; copy < static_cast<int>(format::kLabelCopies); copy++) {
    ES_RETURN_IF_ERROR(device.ReadSync(LabelBlock(total_blocks, copy) * kBlockSize, buf.get(), kBlockSize));
    uint64_t magic;
    std::memcpy(&magic, buf.get(), sizeof magic);
    if (magic == format::kLabelMagic)
      return Status(EEXIST, device.name() + " holds an edgestor pool label that cannot be used (" +
                                existing.status().message() + ")");
  }
  return ProbeForeignSignatures(device);
}

// Zeros the journal ring: no block of a pool that was here before may be
// replayed, whatever its generation and sequence.
Status ZeroJournal(Device& device, uint64_t journal_start, uint64_t journal_blocks) {
  constexpr uint64_t kChunkBlocks = 256;  // 1 MiB per write
  AlignedBuffer zeros = AllocateAligned(kChunkBlocks * kBlockSize);
  for (uint64_t done = 0; done < journal_blocks;) {
    uint64_t n = std::min(kChunkBlocks, journal_blocks - done);
    ES_RETURN_IF_ERROR(device.WriteSync((journal_start + done) * kBlockSize, zeros.get(), n * kBlockSize));
    done += n;
  }
  return device.FlushSync();
}

}  // namespace

Result<std::unique_ptr<Pool>> Pool::Format(std::unique_ptr<Device> device, const FormatOptions& options) {
  const uint32_t cluster_size = options.cluster_size;
  if (cluster_size < format::kMinClusterSize || cluster_size > format::kMaxClusterSize ||
      (cluster_size & (cluster_size - 1)) != 0)
    return Status(EINVAL, "cluster size must be a power of two from 4 KiB to 256 KiB");
  uint64_t device_bytes = device->size() / kBlockSize * kBlockSize;
  uint64_t total_blocks = device_bytes / kBlockSize;
  uint64_t journal_blocks = options.journal_bytes / kBlockSize;
  if (options.journal_bytes == 0)
    journal_blocks = std::clamp(total_blocks / 100, format::kMinJournalBlocks, format::kMaxJournalBlocks);
  if (journal_blocks < format::kMinJournalBlocks || journal_blocks > format::kMaxJournalBlocks)
    return Status(EINVAL, "journal size must be from 1 MiB to 256 MiB");
  uint64_t min_blocks =
      kLabelBlocksFront + journal_blocks + kLabelBlocksBack + 16 * (cluster_size / kBlockSize) + 64;
  if (total_blocks < min_blocks)
    return Status(EINVAL, "device is too small for a pool: " + std::to_string(device->size()) +
                              " bytes, need at least " + std::to_string(min_blocks * kBlockSize));
  if (!options.force) ES_RETURN_IF_ERROR(CheckNothingToLose(*device));

  // Host space first: labels and journal must never meet a full host file
  // system later (a failed journal write stops the pool).
  if (options.preallocate) {
    ES_RETURN_IF_ERROR(device->Allocate(0, device_bytes).WithContext("preallocating the pool"));
  } else {
    ES_RETURN_IF_ERROR(device->Allocate(0, (kLabelBlocksFront + journal_blocks) * kBlockSize)
                           .WithContext("allocating the journal"));
    ES_RETURN_IF_ERROR(device->Allocate((total_blocks - kLabelBlocksBack) * kBlockSize, kLabelBlocksBack * kBlockSize)
                           .WithContext("allocating the labels"));
  }
  ES_RETURN_IF_ERROR(ZeroJournal(*device, kLabelBlocksFront, journal_blocks).WithContext("clearing the journal"));

  format::Label label{};
  label.magic = format::kLabelMagic;
  label.version = format::kVersion;
  label.generation = 0;  // WriteLabels bumps it to 1
  std::random_device entropy;
  for (auto& byte : label.pool_uuid) byte = static_cast<uint8_t>(entropy());
  label.device_bytes = device_bytes;
  label.block_size = kBlockSize;
  label.cluster_size = cluster_size;
  label.journal_start = kLabelBlocksFront;
  label.journal_blocks = journal_blocks;
  label.checkpoint_block = 0;
  label.checkpoint_gen = 1;
  label.bound_since_gen = 1;  // every block this pool writes is bound to its uuid
  label.replay_seq = 0;
  SetKeys(&label, options.keys);

  std::unique_ptr<Pool> pool(new Pool(std::move(device), label));
  std::lock_guard commit(pool->commit_mu_);
  ES_RETURN_IF_ERROR(pool->WriteLabels(label));
  return pool;
}

Result<std::unique_ptr<Pool>> Pool::Open(std::unique_ptr<Device> device) {
  ES_ASSIGN_OR_RETURN(format::Label label, ReadBestLabel(*device));
  // Pools formatted before their journal was allocated get it now, while
  // the host has room. Best effort: a read-only or full host opens anyway.
  (void)device->Allocate(0, (label.journal_start + label.journal_blocks) * kBlockSize);
  return std::unique_ptr<Pool>(new Pool(std::move(device), label));
}

uint32_t Pool::MetadataCrc(uint64_t generation, const void* block, size_t crc_offset) const {
  if (generation >= bound_since_gen_) return format::BoundBlockCrc(uuid_.data(), block, kBlockSize, crc_offset);
  return format::BlockCrc(block, kBlockSize, crc_offset);
}

Status Pool::WriteLabels(format::Label label) {
  label.version = format::kVersion;  // a version 1-3 pool is upgraded by its first checkpoint
  // Its first version 4 label names the generation from which blocks are bound.
  assert(label.checkpoint_gen >= bound_since_gen_);
  // The geometry never changes; the committed checkpoint and the journal only move forward.
  assert(label.magic == format::kLabelMagic && label.device_bytes == geometry_.device_bytes &&
         label.cluster_size == geometry_.cluster_size && label.journal_start == geometry_.journal_start &&
         label.journal_blocks == geometry_.journal_blocks);
  assert(label.checkpoint_block < geometry_.total_blocks && label.checkpoint_gen >= label_.checkpoint_gen &&
         label.replay_seq >= label_.replay_seq);
  label.bound_since_gen = bound_since_gen_;
  label.generation = label_.generation + 1;
  label.crc = 0;
  label.crc = format::BlockCrc(&label, kBlockSize, kLabelCrcOffset);
  assert(LabelIsValid(label) && CheckLabelGeometry(label).ok() && "a label we write must open");
  AlignedBuffer buf = AllocateAligned(kBlockSize);
  std::memcpy(buf.get(), &label, kBlockSize);
  // Two rounds (A+C, then B+D), each followed by a flush: a torn write can
  // damage at most the copies of one round, and the other round's copies
  // hold either the old or the new label, both complete.
  for (int round = 0; round < 2; round++) {
    for (int copy : {round, round + 2}) {
      Status s = device_->WriteSync(LabelBlock(geometry_.total_blocks, copy) * kBlockSize, buf.get(), kBlockSize);
      if (!s.ok()) return Fail(s.WithContext("writing pool label"));
    }
    Status s = device_->FlushSync();
    if (!s.ok()) return Fail(s.WithContext("flushing pool label"));
  }
  std::lock_guard lock(mu_);
  label_ = label;
  return Status::Ok();
}

Status Pool::Fail(Status status) {
  assert(!status.ok());
  std::lock_guard lock(mu_);
  failed_ = true;
  return status;
}

Status Pool::CheckNotFailed() const {
  std::lock_guard lock(mu_);
  if (failed_) return Status(EIO, "pool stopped after a device error; reopen it to recover");
  return Status::Ok();
}

bool Pool::is_failed() const {
  std::lock_guard lock(mu_);
  return failed_;
}

std::string Pool::uuid() const {
  static const char* kHex = "0123456789abcdef";
  std::string out;
  for (int i = 0; i < 16; i++) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out += '-';
    out += kHex[label_.pool_uuid[i] >> 4];
    out += kHex[label_.pool_uuid[i] & 15];
  }
  return out;
}

uint64_t Pool::checkpoint_gen() const {
  std::lock_guard lock(mu_);
  return label_.checkpoint_gen;
}

uint32_t Pool::format_version() const {
  std::lock_guard lock(mu_);
  return opened_version_;
}

KeyProtection Pool::key_protection() const {
  std::lock_guard lock(mu_);
  KeyProtection keys;
  keys.source = label_.key_source;
  std::memcpy(keys.kdf.data(), label_.kdf, keys.kdf.size());
  std::memcpy(keys.key_check.data(), label_.key_check, keys.key_check.size());
  return keys;
}

uint64_t Pool::next_checkpoint_gen() const { return checkpoint_gen() + 1; }

uint64_t Pool::used_blocks() const {
  std::lock_guard lock(mu_);
  return allocator_.used_blocks();
}

bool Pool::has_pending_frees() const {
  std::lock_guard lock(mu_);
  return !pending_frees_.empty();
}

void Pool::PublishSharedRuns() { shared_runs_.store(extra_references_.size(), std::memory_order_release); }

uint64_t Pool::free_blocks() const {
  std::lock_guard lock(mu_);
  return allocator_.free_blocks();
}

// ---- Space ----

bool Pool::MarkUsed(uint64_t block, uint64_t count) {
  std::lock_guard lock(mu_);
  if (block == 0 || block + count > geometry_.total_blocks) return false;
  return allocator_.MarkUsed(block, count);
}

namespace {
bool TestBit(const std::vector<uint64_t>& bits, uint64_t b) { return (bits[b / 64] >> (b % 64)) & 1; }
void SetBit(std::vector<uint64_t>& bits, uint64_t b) { bits[b / 64] |= 1ull << (b % 64); }
void ClearBit(std::vector<uint64_t>& bits, uint64_t b) { bits[b / 64] &= ~(1ull << (b % 64)); }
}  // namespace

// Recovery sees every reference to a run; the first marks it used, later
// ones must name exactly the same run (same blocks, same edges). Runs
// overlap nowhere except where a packed frame ends and the next begins.
bool Pool::MarkReferenced(const BlockRun& run) {
  std::lock_guard lock(mu_);
  const uint64_t block = run.block, count = run.count;
  if (block == 0 || count == 0 || block + count > geometry_.total_blocks) return false;
  if (run.head >= format::kSectorsPerBlock || run.tail >= format::kSectorsPerBlock ||
      (count == 1 && run.head + run.tail >= format::kSectorsPerBlock))
    return false;
  if (run_starts_.empty()) {
    run_starts_.assign(geometry_.total_blocks / 64 + 1, 0);
    run_ends_.assign(geometry_.total_blocks / 64 + 1, 0);
  }
  const bool packed = run.head != 0 || run.tail != 0;
  if (packed && packed_shapes_.empty()) {
    packed_shapes_.assign(geometry_.total_blocks, 0);
    packed_counts_.assign(geometry_.total_blocks, 0);
    edge_claims_.assign(geometry_.total_blocks, 0);
  }
  const uint8_t shape = packed ? static_cast<uint8_t>((1 + run.head) | (1 + run.tail) << 4) : 0;
  const bool head_part = run.head != 0 || (count == 1 && run.tail != 0);
  const bool tail_part = run.tail != 0 && count > 1;
  if (TestBit(run_starts_, block)) {
    // A second reference: exactly the run seen before (no other run starts
    // in its first block). Only its edge blocks may hold another run's end
    // (first block) or start (last block).
    if (!TestBit(run_ends_, block + count - 1)) return false;
    for (uint64_t b = block; b + 1 < block + count; b++) {
      if (TestBit(run_ends_, b) && !(b == block && head_part)) return false;
      if (TestBit(run_starts_, b + 1) && !(b + 2 == block + count && tail_part)) return false;
    }
    if ((packed_shapes_.empty() ? 0 : packed_shapes_[block]) != shape) return false;
    // A packed run's own first block may hold its neighbour's end, which
    // hides its length from the bits above: compare it.
    if (packed && packed_counts_[block] != count) return false;
    extra_references_[block]++;
    PublishSharedRuns();
    return true;
  }
  // A new run: blocks it fills must be free; edge blocks it uses in part
  // may already hold the neighbouring frame's sectors.
  const uint64_t full_from = block + (head_part ? 1 : 0), full_to = block + count - (tail_part ? 1 : 0);
  for (uint64_t b = full_from; b < full_to; b++)
    if (allocator_.IsUsed(b)) return false;
  const uint32_t head_end = count == 1 ? format::kSectorsPerBlock - run.tail : format::kSectorsPerBlock;
  if (head_part && !ClaimEdgeSectors(block, run.head, head_end)) return false;
  if (tail_part && !ClaimEdgeSectors(block + count - 1, 0, format::kSectorsPerBlock - run.tail)) return false;
  if (full_to > full_from) allocator_.MarkUsed(full_from, full_to - full_from);
  SetBit(run_starts_, block);
  SetBit(run_ends_, block + count - 1);
  if (packed) {
    packed_shapes_[block] = shape;
    packed_counts_[block] = static_cast<uint8_t>(count);  // at most kStoredBlocksMask
  }
  return true;
}

// A block already used by a whole run, or whose claimed sectors overlap,
// is refused. The second frame in a block makes it a shared edge.
bool Pool::ClaimEdgeSectors(uint64_t block, uint32_t from, uint32_t to) {
  assert(from < to && to <= format::kSectorsPerBlock && !edge_claims_.empty());
  const uint8_t sectors = static_cast<uint8_t>(((1u << (to - from)) - 1) << from);
  uint8_t& claimed = edge_claims_[block];
  if (allocator_.IsUsed(block) && claimed == 0) return false;  // a whole run's, or metadata
  if (claimed & sectors) return false;
  if (claimed != 0) {
    if (IsSharedEdge(block)) return false;  // a third frame
    if (shared_edges_.empty()) shared_edges_.assign(geometry_.total_blocks / 64 + 1, 0);
    SetBit(shared_edges_, block);
    shared_edge_count_++;
  } else {
    allocator_.MarkUsed(block, 1);
  }
  claimed |= sectors;
  return true;
}

uint64_t Pool::shared_edge_blocks() const {
  std::lock_guard lock(mu_);
  return shared_edge_count_;
}

bool Pool::IsSharedEdge(uint64_t block) const { return !shared_edges_.empty() && TestBit(shared_edges_, block); }

void Pool::FinishRecovery() {
  std::lock_guard lock(mu_);
  run_starts_ = {};
  run_ends_ = {};
  packed_shapes_ = {};
  packed_counts_ = {};
  edge_claims_ = {};
}

uint32_t Pool::References(uint64_t block) const {
  std::lock_guard lock(mu_);
  if (block >= geometry_.total_blocks || !allocator_.IsUsed(block)) return 0;
  auto it = extra_references_.find(block);
  return 1 + (it == extra_references_.end() ? 0 : it->second);
}

void Pool::AddReference(uint64_t block) {
  std::lock_guard lock(mu_);
  assert(block < geometry_.total_blocks && allocator_.IsUsed(block) && "never a reference to a free block");
  assert(!extra_references_.count(block) || extra_references_.at(block) < UINT32_MAX);
  extra_references_[block]++;
  PublishSharedRuns();
}

void Pool::DropSharedReference(uint64_t block) {
  std::lock_guard lock(mu_);
  auto it = extra_references_.find(block);
  assert(it != extra_references_.end());
  if (it == extra_references_.end()) return;
  assert(it->second > 0 && allocator_.IsUsed(block) && "a zero count is erased, a shared run is used");
  if (--it->second == 0) extra_references_.erase(it);
  PublishSharedRuns();
}

void Pool::DropHeldReference(const BlockRun& run) {
  assert(run.block != 0 && run.count >= 1 && run.block + run.count <= geometry_.total_blocks);
  std::lock_guard lock(mu_);
  ReleaseLocked(run);
}

Result<uint64_t> Pool::AllocateCluster() {
  std::lock_guard lock(mu_);
  auto block = allocator_.AllocateCluster(metadata_reserve_);
  // A fresh cluster: aligned, in allocatable space, referenced by nothing yet.
  assert(!block.ok() || (block.value() % allocator_.cluster_blocks() == 0 &&
                         block.value() >= geometry_.journal_start + geometry_.journal_blocks &&
                         block.value() + allocator_.cluster_blocks() <= geometry_.total_blocks - kLabelBlocksBack &&
                         !extra_references_.count(block.value())));
  UpdateReservePressure();
  return block;
}

Result<uint64_t> Pool::AllocateRun(uint64_t count) {
  assert(count >= 1 && count <= kMaxRunBlocks && "a compressed frame, or a pack of them");
  std::lock_guard lock(mu_);
  auto block = allocator_.AllocateRun(count, metadata_reserve_);
  assert(!block.ok() || (block.value() >= geometry_.journal_start + geometry_.journal_blocks &&
                         block.value() + count <= geometry_.total_blocks - kLabelBlocksBack &&
                         !extra_references_.count(block.value())));
  UpdateReservePressure();
  return block;
}

Result<uint64_t> Pool::AllocateMetaBlock() {
  std::lock_guard lock(mu_);
  if (!prepared_.empty()) {
    uint64_t block = prepared_.back();
    prepared_.pop_back();
    assert(allocator_.IsUsed(block) && !extra_references_.count(block) && "prepared blocks are taken, unreferenced");
    return block;
  }
  auto block = allocator_.AllocateBlock();
  // Labels and journal are marked used at construction: never handed out.
  assert(!block.ok() || (block.value() >= geometry_.journal_start + geometry_.journal_blocks &&
                         block.value() < geometry_.total_blocks - kLabelBlocksBack &&
                         !extra_references_.count(block.value())));
  UpdateReservePressure();
  return block;
}

Status Pool::PrepareMetadataBlocks(uint64_t count) {
  std::vector<uint64_t> taken;
  {
    std::lock_guard lock(mu_);
    if (prepared_.size() >= count) return Status::Ok();
    for (uint64_t i = prepared_.size(); i < count; i++) {
      auto block = allocator_.AllocateBlock();
      if (!block.ok()) {
        for (uint64_t b : taken) allocator_.Free(b, 1);
        UpdateReservePressure();
        return block.status();
      }
      taken.push_back(block.value());
    }
    UpdateReservePressure();
  }
  // Host space for the blocks, a run of consecutive ones per call.
  std::sort(taken.begin(), taken.end());
  Status s;
  for (size_t i = 0; i < taken.size() && s.ok();) {
    size_t j = i + 1;
    while (j < taken.size() && taken[j] == taken[j - 1] + 1) j++;
    s = device_->Allocate(taken[i] * kBlockSize, (j - i) * kBlockSize);
    i = j;
  }
  std::lock_guard lock(mu_);
  if (!s.ok()) {
    for (uint64_t b : taken) allocator_.Free(b, 1);
    UpdateReservePressure();
    return s.WithContext("reserving host space for metadata");
  }
  // Handed out lowest first (AllocateMetaBlock takes from the back).
  prepared_.insert(prepared_.end(), taken.rbegin(), taken.rend());
  assert(prepared_.size() >= count);
  return Status::Ok();
}

void Pool::ReleasePreparedBlocks() {
  std::lock_guard lock(mu_);
  for (uint64_t b : prepared_) {
    [[maybe_unused]] bool was_used = allocator_.Free(b, 1);
    assert(was_used && "a prepared block is taken until used or released");
  }
  prepared_.clear();
  UpdateReservePressure();
}

uint64_t Pool::prepared_blocks() const {
  std::lock_guard lock(mu_);
  return prepared_.size();
}

void Pool::FreeUnreferenced(BlockRun run) {
  assert(run.block >= geometry_.journal_start + geometry_.journal_blocks && run.count >= 1 &&
         run.block + run.count <= geometry_.total_blocks - kLabelBlocksBack);
  std::lock_guard lock(mu_);
  assert(!extra_references_.count(run.block));
  FreeRunLocked(run);
}

void Pool::SharePackedEdges(std::span<const BlockRun> frames) {
  std::lock_guard lock(mu_);
  for (size_t i = 1; i < frames.size(); i++) {
    const BlockRun& before = frames[i - 1];
    const BlockRun& frame = frames[i];
    assert(allocator_.IsUsed(frame.block) && frame.block + frame.count <= geometry_.total_blocks);
    assert(frame.block >= before.block + before.count - 1 && frame.block > before.block && "one frame per first block");
    if (frame.block != before.block + before.count - 1) continue;  // the frame before ended at a block boundary
    assert(frame.head != 0 && before.tail != 0 && format::kSectorsPerBlock - before.tail <= frame.head);
    if (shared_edges_.empty()) shared_edges_.assign(geometry_.total_blocks / 64 + 1, 0);
    assert(!IsSharedEdge(frame.block));
    SetBit(shared_edges_, frame.block);
    shared_edge_count_++;
  }
}

void Pool::FreeRunLocked(const BlockRun& run) {
  uint64_t from = run.block, to = run.block + run.count;
  const bool head_part = run.head != 0 || (run.count == 1 && run.tail != 0);
  const bool tail_part = run.tail != 0 && run.count > 1;
  // An edge block the neighbouring frame still uses stays; the neighbour
  // frees it.
  if (head_part && IsSharedEdge(from)) {
    ClearBit(shared_edges_, from++);
    shared_edge_count_--;
  }
  if (tail_part && IsSharedEdge(to - 1)) {
    ClearBit(shared_edges_, --to);
    shared_edge_count_--;
  }
  assert(shared_edge_count_ <= geometry_.total_blocks && "never below zero");
  if (to > from) {
    bool was_used = allocator_.Free(from, to - from);
    assert(was_used);
    (void)was_used;
  }
  UpdateReservePressure();
}

void Pool::SetMetadataReserve(uint64_t blocks, uint64_t short_below) {
  // Short is signalled before data allocation starts to eat into the reserve.
  assert(short_below <= blocks);
  std::lock_guard lock(mu_);
  metadata_reserve_ = blocks;
  metadata_short_below_ = short_below;
  UpdateReservePressure();
}

void Pool::UpdateReservePressure() {
  assert(allocator_.used_blocks() <= allocator_.total_blocks());
  metadata_short_.store(allocator_.free_blocks() < metadata_short_below_, std::memory_order_relaxed);
  UpdateFreesPressure();
}

// ---- Checkpoint ----

Status Pool::ReadMapPage(uint64_t block, uint64_t generation, format::MapPage* page) {
  assert(page != nullptr);
  if (block == 0 || block >= geometry_.total_blocks) return Status(EUCLEAN, "map page pointer out of range");
  AlignedBuffer buf = AllocateAligned(kBlockSize);
  ES_RETURN_IF_ERROR(device_->ReadSync(block * kBlockSize, buf.get(), kBlockSize));
  std::memcpy(page, buf.get(), kBlockSize);
  return CheckMapPage(block, generation, *page);
}

Status Pool::CheckMapPage(uint64_t block, uint64_t generation, const format::MapPage& page) const {
  if (page.header.magic != format::kMapPageMagic ||
      MetadataCrc(page.header.generation, &page, offsetof(format::MapPageHeader, crc)) != page.header.crc)
    return Status(EUCLEAN, "map page at block " + std::to_string(block) + " is damaged (bad checksum)");
  if (page.header.generation != generation)
    return Status(EUCLEAN, "map page at block " + std::to_string(block) + " is stale (generation " +
                               std::to_string(page.header.generation) + ", expected " + std::to_string(generation) + ")");
  return Status::Ok();
}

Status Pool::WriteMapPage(uint64_t block, format::MapPage* page) {
  assert(block != 0 && block < geometry_.total_blocks);
  // A fresh metadata block from AllocateMetaBlock: never a label or the journal.
  assert(block >= geometry_.journal_start + geometry_.journal_blocks && block < geometry_.total_blocks - kLabelBlocksBack);
  page->header.magic = format::kMapPageMagic;
  page->header.generation = next_checkpoint_gen();
  page->header.crc = 0;
  page->header.crc = MetadataCrc(page->header.generation, page, offsetof(format::MapPageHeader, crc));
  assert(CheckMapPage(block, page->header.generation, *page).ok());
  AlignedBuffer buf = AllocateAligned(kBlockSize);
  std::memcpy(buf.get(), page, kBlockSize);
  Status s = device_->WriteSync(block * kBlockSize, buf.get(), kBlockSize);
  if (!s.ok()) return Fail(s.WithContext("writing map page"));
  return Status::Ok();
}

Result<std::vector<uint8_t>> Pool::ReadCheckpointPayload() {
  return ReadChain(label_.checkpoint_block, label_.checkpoint_gen, format::kCheckpointMagic, &chain_blocks_);
}

Result<std::vector<uint8_t>> Pool::ReadSideChain(uint64_t head, uint64_t generation, uint32_t magic,
                                                 std::vector<BlockRun>* blocks) {
  if (head == 0) return Status(EUCLEAN, "side chain has no head block");
  return ReadChain(head, generation, magic, blocks);
}

Result<std::vector<uint8_t>> Pool::ReadChain(uint64_t head, uint64_t generation, uint32_t magic,
                                             std::vector<BlockRun>* blocks) {
  std::vector<uint8_t> payload;
  uint64_t block = head;
  AlignedBuffer buf = AllocateAligned(kBlockSize);
  for (uint32_t index = 0; block != 0; index++) {
    if (block >= geometry_.total_blocks || index >= geometry_.total_blocks)
      return Status(EUCLEAN, "metadata chain points outside the pool");
    ES_RETURN_IF_ERROR(device_->ReadSync(block * kBlockSize, buf.get(), kBlockSize));
    format::CheckpointBlockHeader h;
    std::memcpy(&h, buf.get(), sizeof h);
    bool valid = h.magic == magic &&
                 MetadataCrc(h.generation, buf.get(), offsetof(format::CheckpointBlockHeader, crc)) == h.crc &&
                 h.generation == generation && h.index == index && h.payload_bytes <= format::kCheckpointPayload;
    if (!valid) return Status(EUCLEAN, "metadata chain block " + std::to_string(block) + " is damaged or stale");
    if (blocks) {
      if (!MarkUsed(block, 1)) return Status(EUCLEAN, "metadata chain loops or overlaps at block " + std::to_string(block));
      blocks->push_back({block, 1});
    }
    payload.insert(payload.end(), buf.get() + sizeof h, buf.get() + sizeof h + h.payload_bytes);
    block = h.next_block;
  }
  return payload;
}

// Writes `payload` as a chain of fresh blocks; returns the head block.
static Result<uint64_t> WriteChain(Pool& pool, Device& device, std::span<const uint8_t> payload, uint64_t generation,
                                   uint32_t magic, std::vector<BlockRun>* chain) {
  assert(chain != nullptr && generation >= 1);
  size_t blocks = std::max<size_t>(1, (payload.size() + format::kCheckpointPayload - 1) / format::kCheckpointPayload);
  // Every block is taken before anything is written: running out of space
  // midway would leave a chain that nothing may free or name.
  std::vector<uint64_t> where;
  for (size_t i = 0; i < blocks; i++) {
    auto b = pool.AllocateMetaBlock();
    if (!b.ok()) {
      for (uint64_t taken : where) pool.FreeUnreferenced({taken, 1});
      return b.status();
    }
    assert(b.value() != 0 && b.value() < pool.total_blocks() && "AllocateMetaBlock hands out allocatable blocks");
    where.push_back(b.value());
  }
  for (uint64_t b : where) chain->push_back({b, 1});
  AlignedBuffer buf = AllocateAligned(kBlockSize);
  for (size_t i = 0; i < blocks; i++) {
    std::memset(buf.get(), 0, kBlockSize);
    format::CheckpointBlockHeader h{};
    h.magic = magic;
    h.generation = generation;
    h.next_block = i + 1 < blocks ? where[i + 1] : 0;
    h.index = static_cast<uint32_t>(i);
    size_t offset = i * format::kCheckpointPayload;
    h.payload_bytes = static_cast<uint32_t>(std::min<size_t>(format::kCheckpointPayload, payload.size() - std::min(offset, payload.size())));
    std::memcpy(buf.get(), &h, sizeof h);
    assert(h.payload_bytes <= format::kCheckpointPayload && (h.payload_bytes == 0 || offset + h.payload_bytes <= payload.size()));
    assert((i + 1 < blocks) == (h.payload_bytes == format::kCheckpointPayload && offset + h.payload_bytes < payload.size()) &&
           "every block but the last is full");
    if (h.payload_bytes) std::memcpy(buf.get() + sizeof h, payload.data() + offset, h.payload_bytes);
    uint32_t crc = pool.MetadataCrc(generation, buf.get(), offsetof(format::CheckpointBlockHeader, crc));
    std::memcpy(buf.get() + offsetof(format::CheckpointBlockHeader, crc), &crc, 4);
    ES_RETURN_IF_ERROR(device.WriteSync(where[i] * kBlockSize, buf.get(), kBlockSize));
  }
  return where[0];
}

Status Pool::WriteCheckpoint(std::span<const uint8_t> payload, std::vector<BlockRun> superseded,
                             const KeyProtection* new_keys) {
  std::lock_guard commit(commit_mu_);
  ES_RETURN_IF_ERROR(CheckNotFailed());
  uint64_t gen = next_checkpoint_gen();
  std::vector<BlockRun> new_chain;
  auto head = WriteChain(*this, *device_, payload, gen, format::kCheckpointMagic, &new_chain);
  if (!head.ok()) return Fail(head.status().WithContext("writing checkpoint"));
  // Map pages and chain must be durable before a label points at them.
  Status s = device_->FlushSync();
  if (!s.ok()) return Fail(s.WithContext("flushing checkpoint"));

  format::Label label;
  {
    std::lock_guard lock(mu_);
    label = label_;
    // Every record written or pending is reflected in the payload; journal
    // blocks of the old generation are ignored from now on.
    label.replay_seq = journal_head_seq_;
  }
  label.checkpoint_block = head.value();
  label.checkpoint_gen = gen;
  if (new_keys) SetKeys(&label, *new_keys);
  ES_RETURN_IF_ERROR(WriteLabels(label));

  std::lock_guard lock(mu_);
  assert(label_.checkpoint_gen == gen && label_.checkpoint_block == head.value() && !new_chain.empty());
  pending_records_.clear();
  UpdateJournalPressure();
  superseded.insert(superseded.end(), chain_blocks_.begin(), chain_blocks_.end());
  superseded.insert(superseded.end(), pending_frees_.begin(), pending_frees_.end());
  pending_frees_.clear();
  pending_free_blocks_ = 0;
  for (const BlockRun& run : superseded) ReleaseLocked(run);
  UpdateFreesPressure();
  chain_blocks_ = std::move(new_chain);
  return Status::Ok();
}

Result<uint64_t> Pool::WriteSideChain(std::span<const uint8_t> payload, uint32_t magic, std::vector<BlockRun>* blocks) {
  assert(blocks != nullptr && magic != format::kCheckpointMagic && "side chains are not the checkpoint chain");
  size_t first = blocks->size();
  auto head = WriteChain(*this, *device_, payload, next_checkpoint_gen(), magic, blocks);
  if (!head.ok()) {
    for (size_t i = first; i < blocks->size(); i++) FreeUnreferenced((*blocks)[i]);
    blocks->resize(first);
    // No space: nothing was written, the pool goes on. A device error fails it.
    if (head.status().code() == ENOSPC) return head.status().WithContext("writing metadata chain");
    return Fail(head.status().WithContext("writing metadata chain"));
  }
  return head;
}

void Pool::ReleaseLocked(const BlockRun& run) {
  assert(run.block >= geometry_.journal_start + geometry_.journal_blocks && run.count >= 1 &&
         run.block + run.count <= geometry_.total_blocks - kLabelBlocksBack && "never a label or the journal");
  auto it = extra_references_.find(run.block);
  if (it != extra_references_.end()) {
    assert(it->second > 0);
    if (--it->second == 0) extra_references_.erase(it);
    PublishSharedRuns();
    return;
  }
  FreeRunLocked(run);
}

}  // namespace edgestor
