// Virtqueue: our side of one split virtqueue (virtio 1.2, 2.7) in guest
// memory: take available descriptor chains, return used ones, and decide
// when the guest needs an interrupt.
//
// The guest can change its memory at any moment, so every descriptor is
// copied once into our memory and checked there: chains are bounded by the
// queue size (no loops), indirect tables must lie in guest memory, hold
// whole descriptors and not nest, and every buffer must translate. A bad
// chain is reported as an error for that request only.
//
// Not thread-safe: one worker thread owns a queue while it runs.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "base/status.h"
#include "frontend/vhost/guest_memory.h"

namespace edgestor::vhost {

// One buffer of a chain, translated.
struct Segment {
  uint8_t* data;
  uint32_t length;
  bool device_writable;
};

class Virtqueue {
 public:
  // Ring locations as front-end virtual addresses (SET_VRING_ADDR).
  struct Layout {
    uint16_t size = 0;
    uint64_t desc = 0, avail = 0, used = 0;
  };
  // EINVAL if the size is not a power of two up to kMaxQueueSize or a ring
  // does not lie in guest memory.
  Status Start(std::shared_ptr<const GuestMemory> memory, const Layout& layout, uint16_t last_avail_idx,
               bool event_idx);
  bool started() const { return memory_ != nullptr; }
  uint16_t last_avail_idx() const { return last_avail_idx_; }
  uint16_t size() const { return size_; }

  // The head of the next available chain, if the guest made one available.
  // ENOSPC-free: EINVAL if the guest's index is impossible (the ring is broken).
  Result<std::optional<uint16_t>> Pop();
  // Translates the chain starting at `head` into `segments` (cleared first).
  Status Walk(uint16_t head, std::vector<Segment>* segments) const;
  // Returns a chain to the guest with `written` bytes written into it.
  void Push(uint16_t head, uint32_t written);
  // True if the guest asked to be interrupted for what was pushed since the
  // last call (honours EVENT_IDX or the no-interrupt flag).
  bool ShouldNotify();
  // The index the guest sees in the used ring (after a restart, what was
  // returned before it).
  uint16_t used_idx() const { return used_idx_; }
  // Overrides where taking resumes (inflight recovery).
  void set_last_avail_idx(uint16_t idx) { last_avail_idx_ = idx; }
  // With EVENT_IDX: asks for a kick when anything beyond what we took
  // arrives; returns true if something already did (check again before sleeping).
  bool ArmKick();

 private:
  uint16_t AvailIdx() const;
  Status WalkIndirect(const Desc& table_desc, std::vector<Segment>* segments) const;
  Status AddSegment(const Desc& desc, std::vector<Segment>* segments) const;

  std::shared_ptr<const GuestMemory> memory_;
  uint16_t size_ = 0;
  bool event_idx_ = false;
  Desc* desc_ = nullptr;         // size_ entries
  uint16_t* avail_ = nullptr;    // flags, idx, ring[size_], used_event
  uint16_t* used_ = nullptr;     // flags, idx, then ring of UsedElem, avail_event
  uint16_t last_avail_idx_ = 0;  // next available entry to take
  uint16_t used_idx_ = 0;        // next used entry to fill
  uint16_t signalled_used_ = 0;  // used index at the last ShouldNotify
  bool signalled_valid_ = false;
};

}  // namespace edgestor::vhost
