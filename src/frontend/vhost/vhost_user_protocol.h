// The vhost-user protocol (QEMU docs/interop/vhost-user.rst) and the
// virtio-blk device (virtio spec 1.2, section 5.2), as far as a block
// back-end needs them. Wire layouts are little-endian and packed as in the
// specs; sizes are static-asserted.
#pragma once

#include <cstddef>
#include <cstdint>

namespace edgestor::vhost {

// ---- vhost-user messages ----

enum Request : uint32_t {
  kGetFeatures = 1,
  kSetFeatures = 2,
  kSetOwner = 3,
  kResetOwner = 4,
  kSetMemTable = 5,
  kSetLogBase = 6,
  kSetLogFd = 7,
  kSetVringNum = 8,
  kSetVringAddr = 9,
  kSetVringBase = 10,
  kGetVringBase = 11,
  kSetVringKick = 12,
  kSetVringCall = 13,
  kSetVringErr = 14,
  kGetProtocolFeatures = 15,
  kSetProtocolFeatures = 16,
  kGetQueueNum = 17,
  kSetVringEnable = 18,
  kSetBackendReqFd = 21,
  kGetConfig = 24,
  kSetConfig = 25,
  kGetInflightFd = 31,
  kSetInflightFd = 32,
  kResetDevice = 34,
  kGetMaxMemSlots = 36,
};

inline constexpr uint32_t kFlagVersion = 0x1;
inline constexpr uint32_t kFlagReply = 1u << 2;
inline constexpr uint32_t kFlagNeedReply = 1u << 3;
inline constexpr uint32_t kVersionMask = 0x3;

struct MessageHeader {
  uint32_t request;
  uint32_t flags;
  uint32_t size;  // of the payload after the header
};
static_assert(sizeof(MessageHeader) == 12);

inline constexpr size_t kMaxPayload = 4096;  // larger than any message we accept
inline constexpr size_t kMaxFds = 8;          // per message (VHOST_MEMORY_BASELINE_NREGIONS)

struct VringState {
  uint32_t index;
  uint32_t num;
};
static_assert(sizeof(VringState) == 8);

struct VringAddr {
  uint32_t index;
  uint32_t flags;
  uint64_t desc_user_addr;  // front-end virtual addresses, translated
  uint64_t used_user_addr;  // through the memory table
  uint64_t avail_user_addr;
  uint64_t log_guest_addr;
};
static_assert(sizeof(VringAddr) == 40);

struct MemoryRegion {
  uint64_t guest_phys_addr;
  uint64_t memory_size;
  uint64_t userspace_addr;
  uint64_t mmap_offset;
};
static_assert(sizeof(MemoryRegion) == 32);

inline constexpr uint32_t kMaxMemoryRegions = 8;
struct MemoryTable {
  uint32_t nregions;
  uint32_t padding;
  MemoryRegion regions[kMaxMemoryRegions];
};

struct ConfigSpace {
  uint32_t offset;
  uint32_t size;
  uint32_t flags;
  // payload bytes follow
};
static_assert(sizeof(ConfigSpace) == 12);

struct InflightDescription {
  uint64_t mmap_size;
  uint64_t mmap_offset;
  uint16_t num_queues;
  uint16_t queue_size;
};
static_assert(sizeof(InflightDescription) == 24);

// Inflight tracking region (INFLIGHT_SHMFD), one per queue: memory the
// front-end keeps across a back-end restart. Layout as libvhost-user's, for
// split rings: a header, then one entry per descriptor.
struct InflightQueueHeader {
  uint64_t features;
  uint16_t version;          // 1 once initialized
  uint16_t desc_num;         // queue size
  uint16_t last_batch_head;  // head being returned when we last wrote
  uint16_t used_idx;         // used index once that head was returned
};
static_assert(sizeof(InflightQueueHeader) == 16);
struct InflightDesc {
  uint8_t inflight;  // 1: taken from the ring and not yet returned
  uint8_t padding[5];
  uint16_t next;
  uint64_t counter;  // order taken, to resubmit in order
};
static_assert(sizeof(InflightDesc) == 16);
inline constexpr uint64_t InflightQueueBytes(uint16_t queue_size) {
  return (sizeof(InflightQueueHeader) + sizeof(InflightDesc) * queue_size + 63) / 64 * 64;
}

// SET_VRING_KICK/CALL/ERR payload: queue index in bits 0..7; bit 8 set
// means no file descriptor came with it.
inline constexpr uint64_t kVringIndexMask = 0xff;
inline constexpr uint64_t kVringNoFd = 1ull << 8;

// Protocol feature bits.
inline constexpr uint64_t kProtocolMq = 1ull << 0;
inline constexpr uint64_t kProtocolReplyAck = 1ull << 3;
inline constexpr uint64_t kProtocolConfig = 1ull << 9;
inline constexpr uint64_t kProtocolInflightShmfd = 1ull << 12;

// ---- virtio ----

inline constexpr uint64_t kFeatureProtocolFeatures = 1ull << 30;  // vhost-user's own bit
inline constexpr uint64_t kFeatureIndirectDesc = 1ull << 28;
inline constexpr uint64_t kFeatureEventIdx = 1ull << 29;
inline constexpr uint64_t kFeatureVersion1 = 1ull << 32;

inline constexpr uint64_t kBlkSizeMax = 1ull << 1;
inline constexpr uint64_t kBlkSegMax = 1ull << 2;
inline constexpr uint64_t kBlkRo = 1ull << 5;
inline constexpr uint64_t kBlkBlkSize = 1ull << 6;
inline constexpr uint64_t kBlkFlush = 1ull << 9;
inline constexpr uint64_t kBlkTopology = 1ull << 10;
inline constexpr uint64_t kBlkMq = 1ull << 12;
inline constexpr uint64_t kBlkDiscard = 1ull << 13;
inline constexpr uint64_t kBlkWriteZeroes = 1ull << 14;

// Split virtqueue layout.
inline constexpr uint16_t kDescNext = 1;
inline constexpr uint16_t kDescWrite = 2;
inline constexpr uint16_t kDescIndirect = 4;
inline constexpr uint16_t kAvailNoInterrupt = 1;
inline constexpr uint16_t kUsedNoNotify = 1;
inline constexpr uint32_t kMaxQueueSize = 1024;

struct Desc {
  uint64_t addr;  // guest physical
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};
static_assert(sizeof(Desc) == 16);

struct UsedElem {
  uint32_t id;
  uint32_t len;
};
static_assert(sizeof(UsedElem) == 8);

// virtio-blk requests.
enum BlkType : uint32_t {
  kBlkIn = 0,
  kBlkOut = 1,
  kBlkFlushCmd = 4,
  kBlkGetId = 8,
  kBlkDiscardCmd = 11,
  kBlkWriteZeroesCmd = 13,
};
inline constexpr uint8_t kBlkStatusOk = 0;
inline constexpr uint8_t kBlkStatusIoErr = 1;
inline constexpr uint8_t kBlkStatusUnsupported = 2;
inline constexpr size_t kBlkIdBytes = 20;

struct BlkOutHeader {
  uint32_t type;
  uint32_t ioprio;
  uint64_t sector;
};
static_assert(sizeof(BlkOutHeader) == 16);

struct BlkDiscardWriteZeroes {
  uint64_t sector;
  uint32_t num_sectors;
  uint32_t flags;  // bit 0: unmap
};
static_assert(sizeof(BlkDiscardWriteZeroes) == 16);

// virtio_blk_config, up to write_zeroes_may_unmap.
#pragma pack(push, 1)
struct BlkConfig {
  uint64_t capacity;  // in 512-byte sectors
  uint32_t size_max;
  uint32_t seg_max;
  uint16_t cylinders;
  uint8_t heads;
  uint8_t sectors;
  uint32_t blk_size;
  uint8_t physical_block_exp;
  uint8_t alignment_offset;
  uint16_t min_io_size;
  uint32_t opt_io_size;
  uint8_t writeback;
  uint8_t unused0;
  uint16_t num_queues;
  uint32_t max_discard_sectors;
  uint32_t max_discard_seg;
  uint32_t discard_sector_alignment;
  uint32_t max_write_zeroes_sectors;
  uint32_t max_write_zeroes_seg;
  uint8_t write_zeroes_may_unmap;
  uint8_t unused1[3];
};
#pragma pack(pop)
static_assert(sizeof(BlkConfig) == 60);
static_assert(offsetof(BlkConfig, blk_size) == 20);
static_assert(offsetof(BlkConfig, num_queues) == 34);
static_assert(offsetof(BlkConfig, max_discard_sectors) == 36);

}  // namespace edgestor::vhost
