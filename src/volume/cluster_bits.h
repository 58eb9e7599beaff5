// Masks over the 4 KiB blocks of one cluster (a MapEntry's written_bits),
// and the all-zero test of cluster data.
#pragma once

#include <cassert>
#include <cstddef>
#include <cstdint>

namespace edgestor {

// Blocks [first, first+count) of a cluster as a mask.
inline uint64_t BlockMask(uint64_t first, uint64_t count) {
  assert(first + count <= 64);
  if (count == 0) return 0;
  uint64_t bits = count == 64 ? ~0ull : (1ull << count) - 1;
  return bits << first;
}

// Blocks [first, end) as a mask; empty when end <= first (a range inside
// one block has no whole block).
inline uint64_t BlocksBetween(uint64_t first, uint64_t end) { return end <= first ? 0 : BlockMask(first, end - first); }

// True if `len` bytes (a multiple of 8, 8-aligned) are all zero.
inline bool IsAllZero(const uint8_t* p, size_t len) {
  assert(len % 8 == 0 && reinterpret_cast<uintptr_t>(p) % 8 == 0);
  const uint64_t* w = reinterpret_cast<const uint64_t*>(p);
  for (size_t i = 0; i < len / 8; i++)
    if (w[i]) return false;
  return true;
}

// The first block of a non-empty mask, and one past its last.
inline uint64_t FirstBlockOf(uint64_t mask) {
  assert(mask != 0);
  return static_cast<uint64_t>(__builtin_ctzll(mask));
}
inline uint64_t EndBlockOf(uint64_t mask) {
  assert(mask != 0);
  return 64 - static_cast<uint64_t>(__builtin_clzll(mask));
}

}  // namespace edgestor
