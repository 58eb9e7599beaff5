// The on-disk format of an edgestor pool, declared once.
//
// Layout of the device, in 4 KiB blocks:
//
//   block 0, 1          label copies A and B
//   block 2 ..          journal ring (journal_blocks blocks)
//   ...                 allocatable space: data clusters, map pages and
//                       checkpoint blocks, handed out by the allocator
//   last 2 blocks       label copies C and D
//
// Every metadata block carries a magic, a CRC32C of the whole block (with the
// crc field taken as zero) and a generation, so that a torn, stale or foreign
// block is detected and never trusted. Since version 4 the CRC of every
// journal, checkpoint, snapshot-directory and map block is seeded with the
// pool's uuid (BoundBlockCrc): a block another pool wrote on the same device
// never verifies, even with the right magic, generation and sequence. Since
// version 5 compressed frames may be packed at 512-byte granularity, two of
// them sharing the block where one ends and the next begins (MapEntry).
// All integers are little-endian (the
// structs are written as they are in memory; x86-64 and arm64 are both LE).
//
// See docs/ARCHITECTURE.md for the commit protocol that ties these together.
#pragma once

#include <cstddef>
#include <cstdint>

namespace edgestor::format {

inline constexpr uint32_t kBlockSize = 4096;
// Version 2 added key protection to the label, compressed map entries, and
// per-volume attributes and pool defaults to the checkpoint. Version 3 added
// snapshots: a snapshot table in the checkpoint, snapshot directories in
// side chains, map pages and data runs shared between them, and a clone's
// origin in its attributes. Version 4 binds metadata blocks to their pool:
// their CRC is seeded with the pool uuid from Label::bound_since_gen on.
// Version 5 packs compressed frames: a compressed entry names the sectors of
// its first and last block it leaves to its neighbours (kFrameHeadShift).
// Older pools open and are written in the current version from their first
// checkpoint on.
inline constexpr uint32_t kVersion = 5;
inline constexpr uint32_t kFirstBoundVersion = 4;
inline constexpr uint32_t kOldestReadableVersion = 1;
inline constexpr uint64_t kLabelMagic = 0x31524f5453474445ull;  // "EDGSTOR1"
inline constexpr uint32_t kJournalMagic = 0x4c4e524aU;          // "JRNL"
inline constexpr uint32_t kCheckpointMagic = 0x54504b43U;       // "CKPT"
inline constexpr uint32_t kMapPageMagic = 0x5050414dU;          // "MAPP"
inline constexpr uint32_t kSnapshotDirectoryMagic = 0x52494453U;  // "SDIR"

inline constexpr uint32_t kLabelCopies = 4;
inline constexpr uint32_t kMinClusterSize = 4096;
inline constexpr uint32_t kMaxClusterSize = 256 * 1024;  // written bits fit one u64
inline constexpr uint64_t kMinJournalBlocks = 256;       // 1 MiB
inline constexpr uint64_t kMaxJournalBlocks = 65536;     // 256 MiB
inline constexpr uint32_t kMaxVolumes = 4096;
inline constexpr uint32_t kMaxVolumeNameLength = 64;
inline constexpr uint64_t kMaxVolumeSize = 1ull << 50;  // 1 PiB

// Feature bits in Label::features. A pool with an unknown bit set is refused.
inline constexpr uint64_t kFeatureEncryption = 1ull << 0;   // a pool key protects data keys
inline constexpr uint64_t kFeatureCompression = 1ull << 1;  // reserved: compressed clusters
inline constexpr uint64_t kFeatureSnapshots = 1ull << 2;    // reserved (version 3 implies snapshots)
inline constexpr uint64_t kKnownFeatures = kFeatureEncryption;
inline constexpr uint32_t kMaxSnapshots = 65536;
inline constexpr uint32_t kMaxSnapshotNameLength = 64;

// How the pool key is obtained (Label::key_source).
inline constexpr uint32_t kKeySourceNone = 0;
inline constexpr uint32_t kKeySourceKeyFile = 1;    // 32 bytes from a key file
inline constexpr uint32_t kKeySourcePassphrase = 2;  // scrypt over a passphrase (Label::kdf)
inline constexpr size_t kKdfRecordBytes = 48;        // codec/key_wrap.h's record
inline constexpr size_t kWrappedKeyBytes = 72;       // AES-KW of a 64-byte key

// Vdev layouts (Label::vdev_layout). Only kVdevSingle exists today.
inline constexpr uint32_t kVdevSingle = 0;

struct Label {
  uint64_t magic;
  uint32_t version;
  uint32_t crc;
  uint64_t generation;  // bumped on every label write; highest valid copy wins
  uint8_t pool_uuid[16];
  uint64_t device_bytes;
  uint32_t block_size;
  uint32_t cluster_size;
  uint64_t features;
  uint32_t vdev_layout;
  uint32_t reserved0;
  uint64_t journal_start;   // first block of the journal ring
  uint64_t journal_blocks;  // length of the ring
  // The checkpoint this label commits to:
  uint64_t checkpoint_block;  // head of its block chain (0: empty pool)
  uint64_t checkpoint_gen;    // generation stamped in its blocks and pages
  uint64_t replay_seq;        // first journal sequence number to replay
  // Version 2: key protection (all zero in a pool without a pool key).
  uint32_t key_source;                    // kKeySource*
  uint32_t reserved1;
  uint8_t kdf[kKdfRecordBytes];           // passphrase pools: scrypt parameters and salt
  uint8_t key_check[kWrappedKeyBytes];    // a random key wrapped by the pool key: unwraps
                                          // only with the right pool key
  // Version 4: metadata blocks stamped with this generation or a later one
  // carry a CRC bound to pool_uuid (BoundBlockCrc); older ones (written
  // before a version 1-3 pool was upgraded) a plain BlockCrc. 1 for a pool
  // formatted as version 4. Never above checkpoint_gen.
  uint64_t bound_since_gen;
  uint8_t reserved[4096 - 248];
};
static_assert(sizeof(Label) == kBlockSize);
static_assert(offsetof(Label, key_source) == 112);
static_assert(offsetof(Label, bound_since_gen) == 240);
static_assert(offsetof(Label, reserved) == 248);

// Journal block: a header then records, packed. One commit writes one or more
// whole blocks; a block is never rewritten within a checkpoint generation, so
// a torn write can only lose the commit that was being written.
struct JournalBlockHeader {
  uint32_t magic;
  uint32_t crc;
  uint64_t seq;             // position in the journal: block = start + seq % blocks
  uint64_t checkpoint_gen;  // must equal the label's; older laps are stale
  uint32_t used_bytes;      // bytes of records after the header
  uint32_t record_count;
};
static_assert(sizeof(JournalBlockHeader) == 32);
inline constexpr uint32_t kJournalPayload = kBlockSize - sizeof(JournalBlockHeader);

// Journal records. Only map changes are journaled; control operations
// (volume create, resize, delete) are rare and commit by a checkpoint, which
// keeps replay free of ordering hazards between them and map records.
enum class RecordType : uint16_t {
  kMapSet = 1,  // MapSetRecord
};

struct RecordHeader {
  uint16_t type;
  uint16_t length;  // of the body after this header
};
static_assert(sizeof(RecordHeader) == 4);

// A thin-map entry. phys_block == 0 means "unmapped" (block 0 is a label, so
// it is never a data block). Since version 3 a run may be referenced by map
// pages of several snapshots and clones; the references are counted at open
// (never stored) and a shared run is never written in place. Bit i of written_bits: 4 KiB block i of the
// cluster has been written; unset blocks read as zeros.
//
// A plain cluster occupies cluster_size bytes at its first block, each 4 KiB
// block at its place. A compressed cluster (kCompressedFlag) occupies only
// StoredBlocks() blocks holding a compressor frame of the whole cluster
// (unwritten blocks compressed as zeros); it is always rewritten elsewhere.
//
// Packed frames (version 5): the frames of clusters written together are
// laid back to back at 512-byte sectors in one allocated run, so a
// compressed entry may start at sector FrameHead() of its first block and
// leave the last FrameTail() sectors of its last block to the next frame.
// A block is shared by at most two frames, the one ending in it and the one
// starting in it (no two frames start in the same block, so a frame is still
// known by its first block, as the pool's reference counts key runs). The
// pool frees a shared block with the second of the two.
struct MapEntry {
  uint64_t phys_block;    // low 48 bits: first 4 KiB block; bits 48..54: stored
                          // blocks of a compressed cluster; bits 55..57 and
                          // 58..60: its frame's head and tail (sectors of the
                          // first and last block it does not use); bit 63:
                          // compressed
  uint64_t written_bits;
};
static_assert(sizeof(MapEntry) == 16);
inline constexpr uint64_t kPhysBlockMask = (1ull << 48) - 1;
inline constexpr uint64_t kCompressedFlag = 1ull << 63;
inline constexpr int kStoredBlocksShift = 48;
inline constexpr uint64_t kStoredBlocksMask = 0x7f;
inline constexpr int kFrameHeadShift = 55;
inline constexpr int kFrameTailShift = 58;
inline constexpr uint64_t kFrameEdgeMask = 0x7;
inline constexpr uint32_t kSectorSize = 512;
inline constexpr uint32_t kSectorsPerBlock = kBlockSize / kSectorSize;
inline constexpr uint64_t SectorsToBlocks(uint64_t sectors) { return (sectors + kSectorsPerBlock - 1) / kSectorsPerBlock; }
// Bits of phys_block that are neither the block, the length, the frame's
// edges nor the flag.
inline constexpr uint64_t kUnknownEntryBits =
    ~(kPhysBlockMask | kCompressedFlag | (kStoredBlocksMask << kStoredBlocksShift) |
      (kFrameEdgeMask << kFrameHeadShift) | (kFrameEdgeMask << kFrameTailShift));

inline uint64_t FirstBlock(const MapEntry& e) { return e.phys_block & kPhysBlockMask; }
inline bool IsCompressed(const MapEntry& e) { return (e.phys_block & kCompressedFlag) != 0; }
// Blocks the entry occupies on the device: the cluster, or the compressed
// length (every block its frame touches).
inline uint64_t StoredBlocks(const MapEntry& e, uint32_t cluster_blocks) {
  return IsCompressed(e) ? (e.phys_block >> kStoredBlocksShift) & kStoredBlocksMask : cluster_blocks;
}
// Sectors at the start of the first block and the end of the last block
// that belong to the neighbouring frames (0 for a plain cluster).
inline uint32_t FrameHead(const MapEntry& e) { return (e.phys_block >> kFrameHeadShift) & kFrameEdgeMask; }
inline uint32_t FrameTail(const MapEntry& e) { return (e.phys_block >> kFrameTailShift) & kFrameEdgeMask; }
// Blocks the entry is charged for in space accounting: a block it shares
// with the frame before it is that frame's. The charges of a packed run
// add up to its blocks.
inline uint64_t ChargedBlocks(const MapEntry& e, uint32_t cluster_blocks) {
  return StoredBlocks(e, cluster_blocks) - (FrameHead(e) != 0 ? 1 : 0);
}
inline MapEntry CompressedEntry(uint64_t first_block, uint64_t stored_blocks, uint64_t written_bits, uint32_t head = 0,
                                uint32_t tail = 0) {
  return {first_block | (stored_blocks << kStoredBlocksShift) | (uint64_t{head} << kFrameHeadShift) |
              (uint64_t{tail} << kFrameTailShift) | kCompressedFlag,
          written_bits};
}

struct MapSetRecord {
  uint32_t volume_id;
  uint32_t reserved;
  uint64_t cluster;  // cluster index within the volume
  MapEntry entry;    // the entry's new value (absolute, so replay is idempotent)
};
static_assert(sizeof(MapSetRecord) == 32);

// Map page: one page of a volume's thin map, kEntriesPerMapPage consecutive
// clusters. Written only by a checkpoint, always to a fresh block (shadow
// paging), so the previous checkpoint's page stays intact until the new
// label is durable. A page is immutable once written, so a snapshot's
// directory shares the pages of its volume until the volume changes them.
inline constexpr uint32_t kEntriesPerMapPage = 255;
struct MapPageHeader {
  uint32_t magic;
  uint32_t crc;
  uint64_t generation;  // checkpoint generation that wrote it; must match the directory
};
static_assert(sizeof(MapPageHeader) + kEntriesPerMapPage * sizeof(MapEntry) == kBlockSize);

struct MapPage {
  MapPageHeader header;
  MapEntry entries[kEntriesPerMapPage];
};
static_assert(sizeof(MapPage) == kBlockSize);

// Checkpoint chain block: the checkpoint's payload (volume table and map
// directories, see checkpoint serialization in src/volume) is split over a
// singly linked chain of blocks.
struct CheckpointBlockHeader {
  uint32_t magic;
  uint32_t crc;
  uint64_t generation;
  uint64_t next_block;  // 0: last block
  uint32_t index;       // position in the chain, from 0
  uint32_t payload_bytes;
};
static_assert(sizeof(CheckpointBlockHeader) == 32);
inline constexpr uint32_t kCheckpointPayload = kBlockSize - sizeof(CheckpointBlockHeader);

// One directory slot of a volume's map, as stored in the checkpoint payload.
struct DirectorySlot {
  uint64_t block;       // 0: page never written (all clusters unmapped)
  uint64_t generation;  // expected MapPageHeader::generation
};
static_assert(sizeof(DirectorySlot) == 16);

// Checkpoint payload: CheckpointHeader, (version 2) PoolDefaults, then per
// volume a VolumeTableEntry, its name bytes, (version 2) its
// VolumeAttributes, and its directory slots; then (version 3) a
// SnapshotTableHeader and per snapshot a SnapshotEntry, its name bytes and
// its VolumeAttributes. A snapshot's directory slots are in a side chain of
// blocks (kSnapshotDirectoryMagic) written once when it is created.
struct CheckpointHeader {
  uint32_t volume_count;
  uint32_t next_volume_id;
};
static_assert(sizeof(CheckpointHeader) == 8);

// Settings for new volumes (version 2).
struct PoolDefaults {
  uint8_t encrypt;            // 1: new volumes are encrypted unless told otherwise
  uint8_t compression;        // codec Compression value
  uint8_t compression_level;  // zstd level, 0 otherwise
  uint8_t reserved[5];
};
static_assert(sizeof(PoolDefaults) == 8);

// A volume's codec settings (version 2).
struct VolumeAttributes {
  uint8_t encrypted;          // 1: data is AES-256-XTS with the wrapped key below
  uint8_t compression;        // for new writes; existing clusters say for themselves
  uint8_t compression_level;
  uint8_t reserved;
  uint32_t origin_snapshot;   // version 3, clones: the snapshot it was cloned from
                              // (0: none, or flattened)
  uint8_t wrapped_key[kWrappedKeyBytes];  // data key wrapped by the pool key; a
                                          // volume's snapshots and clones share it
};
static_assert(sizeof(VolumeAttributes) == 80);
static_assert(offsetof(VolumeAttributes, wrapped_key) == 8);

struct SnapshotTableHeader {
  uint32_t snapshot_count;
  uint32_t next_snapshot_id;
};
static_assert(sizeof(SnapshotTableHeader) == 8);

inline constexpr uint32_t kSnapshotAutomatic = 1;  // kept by a rollback
// Deleted, its space being released in the background: hidden, renamed
// ".deleting-<id>" (a name no user can give), resumed after a crash.
inline constexpr uint32_t kSnapshotDeleting = 2;

struct SnapshotEntry {
  uint32_t snapshot_id;
  uint32_t volume_id;         // the volume it is a snapshot of
  uint64_t size;              // the volume's size when taken
  uint64_t created_unix;      // seconds since 1970
  uint64_t directory_block;   // head of the side chain holding its DirectorySlots
  uint64_t directory_gen;     // generation stamped on that chain
  uint64_t directory_slots;
  // Accounting as of creation (a snapshot never changes):
  uint64_t mapped_clusters;
  uint64_t stored_blocks;
  uint64_t compressed_clusters;
  uint64_t written_blocks;
  uint32_t name_length;
  uint32_t flags;             // kSnapshot*
};
static_assert(sizeof(SnapshotEntry) == 88);

struct VolumeTableEntry {
  uint32_t volume_id;
  uint32_t name_length;
  uint64_t size;
  uint64_t directory_slots;
};
static_assert(sizeof(VolumeTableEntry) == 24);

// Computes the CRC32C of a metadata block whose crc field is at `crc_offset`,
// as if that field were zero.
uint32_t BlockCrc(const void* block, size_t len, size_t crc_offset);
// The same CRC seeded with a pool's uuid (16 bytes): what version 4 stores
// in journal, checkpoint, snapshot-directory and map blocks.
uint32_t BoundBlockCrc(const uint8_t* pool_uuid, const void* block, size_t len, size_t crc_offset);

}  // namespace edgestor::format
