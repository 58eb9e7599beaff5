// Allocator: which 4 KiB blocks of the pool are in use.
//
// A bitmap over every block of the device, one bit per 4 KiB block. Data
// clusters are runs of cluster_blocks blocks aligned to the cluster size;
// metadata (map pages, checkpoint chains) takes single blocks. Sub-cluster
// granularity is what compressed clusters will need later.
//
// The allocator is rebuilt at open from what the checkpoint and the journal
// reference, so it is never written to disk and can never disagree with the
// maps. Not thread-safe: the Pool serializes access.
#pragma once

#include <cstdint>
#include <vector>

#include "base/status.h"

namespace edgestor {

// Longest run AllocateRun hands out: a pack of compressed frames
// (thin_volume_pack.cc closes one past 128 blocks; frames of up to 63
// blocks and layout gaps of a block each may follow).
inline constexpr uint64_t kMaxRunBlocks = 1024;

class Allocator {
 public:
  // Manages blocks [0, total_blocks); clusters start at multiples of
  // cluster_blocks.
  Allocator(uint64_t total_blocks, uint32_t cluster_blocks);

  // Returns false if any block in the run was already in use.
  bool MarkUsed(uint64_t block, uint64_t count);
  bool IsUsed(uint64_t block) const;
  // Returns false if any block in the run was already free (a double free).
  bool Free(uint64_t block, uint64_t count);

  // First block of a free, aligned cluster, leaving at least `reserve` free
  // blocks for metadata; ENOSPC if none.
  Result<uint64_t> AllocateCluster(uint64_t reserve);
  // First block of `count` (at most kMaxRunBlocks) consecutive free blocks
  // (a compressed cluster, or a pack of them), leaving `reserve` free blocks
  // for metadata; ENOSPC if none.
  Result<uint64_t> AllocateRun(uint64_t count, uint64_t reserve);
  // A single free block; ENOSPC if none.
  Result<uint64_t> AllocateBlock();

  uint64_t total_blocks() const { return total_blocks_; }
  uint64_t used_blocks() const { return used_blocks_; }
  uint64_t free_blocks() const { return total_blocks_ - used_blocks_; }
  uint32_t cluster_blocks() const { return cluster_blocks_; }

 private:
  bool ClusterIsFree(uint64_t cluster) const;

  uint64_t total_blocks_;
  uint32_t cluster_blocks_;
  uint64_t used_blocks_ = 0;
  std::vector<uint64_t> bits_;  // bit set: block in use
  uint64_t cluster_cursor_ = 0;  // next-fit position for data, moving up
  uint64_t run_cursor_ = 0;      // next-fit position for compressed runs, moving up
  uint64_t block_cursor_;        // next-fit position for metadata, moving down
};

}  // namespace edgestor
