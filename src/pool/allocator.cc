#include "pool/allocator.h"

#include <cassert>
#include <cerrno>
#include <string>

namespace edgestor {

Allocator::Allocator(uint64_t total_blocks, uint32_t cluster_blocks)
    : total_blocks_(total_blocks), cluster_blocks_(cluster_blocks), bits_((total_blocks + 63) / 64, 0),
      block_cursor_(total_blocks - 1) {
  assert(total_blocks > 0 && "block_cursor_ starts at the last block");
  assert(cluster_blocks >= 1 && cluster_blocks <= 64);
  assert((cluster_blocks & (cluster_blocks - 1)) == 0);
}

bool Allocator::IsUsed(uint64_t block) const {
  assert(block < total_blocks_);
  return (bits_[block / 64] >> (block % 64)) & 1;
}

bool Allocator::MarkUsed(uint64_t block, uint64_t count) {
  assert(block <= total_blocks_ && count <= total_blocks_ - block);
  bool clean = true;
  for (uint64_t b = block; b < block + count; b++) {
    uint64_t mask = 1ull << (b % 64);
    if (bits_[b / 64] & mask) {
      clean = false;
      continue;
    }
    bits_[b / 64] |= mask;
    used_blocks_++;
  }
  assert(used_blocks_ <= total_blocks_);
  return clean;
}

bool Allocator::Free(uint64_t block, uint64_t count) {
  assert(block <= total_blocks_ && count <= total_blocks_ - block);
  bool clean = true;
  for (uint64_t b = block; b < block + count; b++) {
    uint64_t mask = 1ull << (b % 64);
    if (!(bits_[b / 64] & mask)) {
      clean = false;
      continue;
    }
    assert(used_blocks_ > 0 && "a used bit is counted in used_blocks_");
    bits_[b / 64] &= ~mask;
    used_blocks_--;
  }
  return clean;
}

bool Allocator::ClusterIsFree(uint64_t cluster) const {
  uint64_t first = cluster * cluster_blocks_;
  if (first + cluster_blocks_ > total_blocks_) return false;
  // Aligned and a power of two no larger than 64: a cluster never straddles a word.
  assert(first % 64 + cluster_blocks_ <= 64);
  uint64_t word = bits_[first / 64];
  uint64_t mask = cluster_blocks_ == 64 ? ~0ull : ((1ull << cluster_blocks_) - 1) << (first % 64);
  return (word & mask) == 0;
}

Result<uint64_t> Allocator::AllocateCluster(uint64_t reserve) {
  if (free_blocks() < cluster_blocks_ + reserve) return Status(ENOSPC, "pool is full");
  uint64_t clusters = total_blocks_ / cluster_blocks_;
  for (uint64_t n = 0; n < clusters; n++) {
    uint64_t cluster = (cluster_cursor_ + n) % clusters;
    // Skip whole words that are fully used.
    if (bits_[cluster * cluster_blocks_ / 64] == ~0ull && cluster_blocks_ < 64) {
      uint64_t per_word = 64 / cluster_blocks_;
      n += per_word - 1 - (cluster % per_word);
      continue;
    }
    if (!ClusterIsFree(cluster)) continue;
    uint64_t first = cluster * cluster_blocks_;
    assert(first % cluster_blocks_ == 0 && first + cluster_blocks_ <= total_blocks_);
    bool was_free = MarkUsed(first, cluster_blocks_);
    assert(was_free);
    (void)was_free;
    cluster_cursor_ = cluster + 1;
    return first;
  }
  return Status(ENOSPC, "pool is full (no free cluster)");
}

Result<uint64_t> Allocator::AllocateRun(uint64_t count, uint64_t reserve) {
  assert(count >= 1 && count <= kMaxRunBlocks);
  if (free_blocks() < count + reserve) return Status(ENOSPC, "pool is full");
  // Next fit over the whole device, wrapping once; a run never wraps.
  uint64_t run_start = 0, run_length = 0;
  for (uint64_t n = 0; n < total_blocks_; n++) {
    uint64_t block = (run_cursor_ + n) % total_blocks_;
    if (block == 0) run_length = 0;
    if (block % 64 == 0 && bits_[block / 64] == ~0ull && block + 64 <= total_blocks_) {
      n += 63;  // a full word: no run starts or continues here
      run_length = 0;
      continue;
    }
    if (IsUsed(block)) {
      run_length = 0;
      continue;
    }
    if (run_length++ == 0) run_start = block;
    if (run_length == count) {
      assert(run_start + count <= total_blocks_ && "a run never wraps");
      [[maybe_unused]] bool was_free = MarkUsed(run_start, count);
      assert(was_free);
      run_cursor_ = run_start + count;
      return run_start;
    }
  }
  return Status(ENOSPC, "pool is full (no free run of " + std::to_string(count) + " blocks)");
}

Result<uint64_t> Allocator::AllocateBlock() {
  // Metadata grows down from the end of the device while data clusters fill
  // from the front, so single blocks do not break up free clusters.
  if (free_blocks() == 0) return Status(ENOSPC, "pool is full (no free metadata block)");
  uint64_t words = bits_.size();
  uint64_t start = block_cursor_ / 64;
  for (uint64_t n = 0; n <= words; n++) {
    uint64_t w = (start + words - n) % words;
    uint64_t free_bits = ~bits_[w];
    if (w == words - 1 && total_blocks_ % 64) free_bits &= (1ull << (total_blocks_ % 64)) - 1;
    if (free_bits == 0) continue;
    uint64_t block = w * 64 + (63 - __builtin_clzll(free_bits));
    assert(block < total_blocks_);
    [[maybe_unused]] bool was_free = MarkUsed(block, 1);
    assert(was_free);
    block_cursor_ = block;
    return block;
  }
  return Status(ENOSPC, "pool is full (no free metadata block)");
}

}  // namespace edgestor
