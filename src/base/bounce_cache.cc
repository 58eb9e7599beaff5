#include "base/bounce_cache.h"

#include <malloc.h>

#include <bit>
#include <cassert>

namespace edgestor {

namespace {

constexpr uint64_t kMinCapacity = 4096;

}  // namespace

BounceCache::BounceCache(uint64_t max_bytes) : max_bytes_(max_bytes) { kept_.reserve(kMaxKept); }

AlignedBuffer BounceCache::Take(uint64_t len, uint64_t* capacity) {
  // The smallest kept buffer that fits: few are kept, a scan is cheap.
  size_t best = kept_.size();
  for (size_t i = 0; i < kept_.size(); i++)
    if (kept_[i].capacity >= len && (best == kept_.size() || kept_[i].capacity < kept_[best].capacity)) best = i;
  if (best < kept_.size()) {
    Kept found = std::move(kept_[best]);
    kept_[best] = std::move(kept_.back());
    kept_.pop_back();
    kept_bytes_ -= found.capacity;
    reused_++;
    *capacity = found.capacity;
    return std::move(found.buffer);
  }
  uint64_t rounded = std::bit_ceil(std::max(len, kMinCapacity));
  if (rounded < len) return nullptr;  // overflow
  AlignedBuffer buffer = TryAllocateUninitialized(rounded);
  if (!buffer) return nullptr;
  allocated_++;
  *capacity = rounded;
  return buffer;
}

void BounceCache::Give(AlignedBuffer buffer, uint64_t capacity) {
  assert(buffer != nullptr && capacity >= kMinCapacity);
  if (kept_.size() >= kMaxKept || kept_bytes_ + capacity > max_bytes_) return;  // freed here
  kept_bytes_ += capacity;
  kept_.push_back({std::move(buffer), capacity});
}

void BounceCache::Clear() {
  if (kept_.empty()) return;
  kept_.clear();
  kept_bytes_ = 0;
  // Freed buffers of this size may stay in the allocator's arenas; give
  // the pages back now that the load is gone. Not under AddressSanitizer:
  // its allocator replaces glibc's, whose never-initialised arenas
  // malloc_trim would walk (a crash).
#ifndef __SANITIZE_ADDRESS__
  malloc_trim(0);
#endif
}

}  // namespace edgestor
