// Masks over the 4 KiB blocks of one cluster (a MapEntry's written_bits).
#pragma once

#include <cassert>
#include <cstdint>

namespace edgestor {

// Blocks [first, first+count) of a cluster as a mask.
inline uint64_t BlockMask(uint64_t first, uint64_t count) {
  assert(first + count <= 64);
  if (count == 0) return 0;
  uint64_t bits = count == 64 ? ~0ull : (1ull << count) - 1;
  return bits << first;
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
