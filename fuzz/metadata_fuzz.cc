// Fuzz target for everything edgestor parses from disk: labels, the
// checkpoint chain and payload (with its snapshot table), snapshot
// directory chains, map pages (shared between a volume, its snapshot and a
// clone) and journal blocks.
//
// The input patches one metadata block of a small, valid pool image (XOR of
// the input over the block) and, if asked by the first byte, re-seals the
// block's checksum so the mutation reaches the parsers behind the CRC check.
// Opening (recovery) and fsck must then either succeed or fail with a clean
// Status: never crash, hang, or touch memory they should not.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "io/borrowed_device.h"
#include "io/fault_device.h"
#include "pool/format.h"
#include "volume/checkpoint_codec.h"
#include "volume/volume_set.h"

namespace edgestor {
namespace {

constexpr uint64_t kDeviceBytes = 2 << 20;
constexpr uint32_t kClusterSize = 4096;

// A pool with two volumes, a snapshot, a clone, a checkpoint, map pages and
// a non-empty journal.
const std::vector<uint8_t>& BaseImage() {
  static const std::vector<uint8_t> image = [] {
    FaultDevice device(kDeviceBytes);
    auto set = VolumeSet::Create(Borrow(device), {.cluster_size = kClusterSize, .journal_bytes = 1 << 20});
    auto queue = device.CreateQueue(8);
    Volume* a = set.value()->CreateVolume("a", 1 << 20).value();
    (void)set.value()->CreateVolume("b", 3 << 19).value();
    AlignedBuffer buf = AllocateAligned(8192);
    std::memset(buf.get(), 0x5a, 8192);
    for (uint64_t off : {0ull, 65536ull, 409600ull}) {
      VolumeIo io{.op = VolumeOp::kWrite, .offset = off, .length = 8192, .buf = buf.get()};
      (void)RunSync(*a, io, *queue);
    }
    (void)set.value()->CreateSnapshot("a", "s");
    (void)set.value()->CloneSnapshot("a", "s", "c");
    VolumeIo diverge{.op = VolumeOp::kWrite, .offset = 0, .length = 4096, .buf = buf.get()};
    (void)RunSync(*a, diverge, *queue);
    (void)set.value()->Checkpoint();
    VolumeIo more{.op = VolumeOp::kWrite, .offset = 4096 * 40, .length = 4096, .buf = buf.get()};
    (void)RunSync(*a, more, *queue);
    VolumeIo flush{.op = VolumeOp::kFlush};
    (void)RunSync(*a, flush, *queue);  // leaves a journal block to replay
    return device.durable_image();
  }();
  return image;
}

// Recomputes the CRC of a block whose magic we recognise: the label's plain
// CRC, or (format version 4) the CRC bound to the base image's pool uuid,
// as the pool computes it, so that mutations reach the parsers behind it.
void Reseal(uint8_t* block) {
  static const std::vector<uint8_t> uuid = [] {
    format::Label label;
    std::memcpy(&label, BaseImage().data(), sizeof label);
    return std::vector<uint8_t>(label.pool_uuid, label.pool_uuid + sizeof label.pool_uuid);
  }();
  uint32_t magic32;
  uint64_t magic64;
  std::memcpy(&magic32, block, 4);
  std::memcpy(&magic64, block, 8);
  size_t crc_offset;
  if (magic64 == format::kLabelMagic) crc_offset = offsetof(format::Label, crc);
  else if (magic32 == format::kJournalMagic) crc_offset = offsetof(format::JournalBlockHeader, crc);
  else if (magic32 == format::kCheckpointMagic || magic32 == format::kSnapshotDirectoryMagic)
    crc_offset = offsetof(format::CheckpointBlockHeader, crc);
  else if (magic32 == format::kMapPageMagic) crc_offset = offsetof(format::MapPageHeader, crc);
  else return;
  uint32_t crc = magic64 == format::kLabelMagic ? format::BlockCrc(block, format::kBlockSize, crc_offset)
                                                : format::BoundBlockCrc(uuid.data(), block, format::kBlockSize, crc_offset);
  std::memcpy(block + crc_offset, &crc, 4);
}

// Metadata blocks of the base image: the ones starting with a known magic.
const std::vector<uint64_t>& MetadataBlocks() {
  static const std::vector<uint64_t> blocks = [] {
    std::vector<uint64_t> out;
    const auto& image = BaseImage();
    for (uint64_t b = 0; b < image.size() / format::kBlockSize; b++) {
      uint32_t magic;
      std::memcpy(&magic, image.data() + b * format::kBlockSize, 4);
      if (magic == format::kJournalMagic || magic == format::kCheckpointMagic || magic == format::kMapPageMagic ||
          magic == format::kSnapshotDirectoryMagic || magic == static_cast<uint32_t>(format::kLabelMagic))
        out.push_back(b);
    }
    // Re-sealing an untouched block must give back its own CRC: otherwise
    // every re-sealed input dies at the checksum and the parsers go unfuzzed.
    for (uint64_t b : out) {
      std::vector<uint8_t> copy(image.begin() + b * format::kBlockSize, image.begin() + (b + 1) * format::kBlockSize);
      Reseal(copy.data());
      if (!std::equal(copy.begin(), copy.end(), image.begin() + b * format::kBlockSize)) {
        std::fprintf(stderr, "metadata_fuzz: Reseal() does not reproduce the CRC of block %llu\n",
                     static_cast<unsigned long long>(b));
        std::abort();
      }
    }
    return out;
  }();
  return blocks;
}

}  // namespace
}  // namespace edgestor

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace edgestor;
  if (size < 2) return 0;
  // Byte 0: bit 0 re-seals the CRC; the rest pick the block to patch.
  // Also feed the payload parser directly.
  (void)ParseCheckpoint(std::span(data + 1, size - 1), data[0] & 1 ? 1 : format::kVersion, kClusterSize, kDeviceBytes / format::kBlockSize);
  (void)ParseDirectory(std::span(data + 1, size - 1), (size - 1) / sizeof(format::DirectorySlot), kDeviceBytes / format::kBlockSize);
  const auto& blocks = MetadataBlocks();
  uint64_t block = blocks[(data[0] >> 1) % blocks.size()];
  FaultDevice device(kDeviceBytes);
  std::vector<uint8_t>& image = device.durable_image();
  image = BaseImage();
  uint8_t* target = image.data() + block * format::kBlockSize;
  for (size_t i = 1; i < size && i - 1 < format::kBlockSize; i++) target[i - 1] ^= data[i];
  if (data[0] & 1) Reseal(target);

  auto report = CheckPool(device);
  auto set = VolumeSet::Open(Borrow(device));
  if (set.ok()) {
    // A pool that opens must be usable: list and read every volume.
    auto queue = device.CreateQueue(8);
    AlignedBuffer buf = AllocateAligned(65536);
    std::vector<std::string> names;
    for (const VolumeInfo& info : set.value()->ListVolumes()) names.push_back(info.name);
    auto snapshots = set.value()->ListSnapshots("");
    if (snapshots.ok())
      for (const SnapshotInfo& snapshot : snapshots.value()) names.push_back(snapshot.full_name());
    for (const std::string& name : names) {
      Volume* v = set.value()->FindVolume(name).value();
      VolumeInfo info{.size = v->size()};
      VolumeIo io{.op = VolumeOp::kRead, .offset = 0, .length = std::min<uint64_t>(65536, info.size), .buf = buf.get()};
      (void)RunSync(*v, io, *queue);
    }
  }
  return 0;
}
