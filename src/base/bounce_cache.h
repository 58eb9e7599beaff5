// BounceCache: request buffers kept between requests by one I/O thread (a
// vhost-user queue), so that a steady load allocates nothing and touches
// no fresh pages, while what it keeps stays bounded and goes back to the
// system once the load is gone (Clear, when the thread idles).
//
// Buffers come in power-of-two capacities (at least 4 KiB), so a buffer
// kept from one request fits the next of about the same size. Used by one
// thread only.
#pragma once

#include <cstdint>
#include <vector>

#include "base/aligned_buffer.h"

namespace edgestor {

class BounceCache {
 public:
  // Keeps at most `max_bytes` (and at most kMaxKept buffers).
  explicit BounceCache(uint64_t max_bytes);

  // A buffer of at least `len` bytes, not zeroed (its capacity in
  // *capacity): a kept one, or a new one; nullptr when memory is short.
  AlignedBuffer Take(uint64_t len, uint64_t* capacity);
  // Gives back a buffer Take returned: kept if there is room, else freed.
  void Give(AlignedBuffer buffer, uint64_t capacity);
  // Frees every kept buffer and has the allocator return free memory to
  // the system.
  void Clear();

  uint64_t kept_bytes() const { return kept_bytes_; }
  // Takes served by a kept buffer / by a new allocation.
  uint64_t reused() const { return reused_; }
  uint64_t allocated() const { return allocated_; }

  static constexpr size_t kMaxKept = 64;

 private:
  struct Kept {
    AlignedBuffer buffer;
    uint64_t capacity;
  };
  const uint64_t max_bytes_;
  std::vector<Kept> kept_;
  uint64_t kept_bytes_ = 0;
  uint64_t reused_ = 0;
  uint64_t allocated_ = 0;
};

}  // namespace edgestor
