// BlkQueue: serves one virtqueue of a vhost-user-blk device on its own
// thread with its own VolumeChannel: takes the guest's requests, runs them on the
// volume, returns them and interrupts the guest.
//
// A request's data is copied between guest memory and an aligned bounce
// buffer: guest buffers are neither aligned nor contiguous, and a copy
// taken once cannot be changed by the guest under our feet. A malformed
// request (bad header, buffers outside guest memory, a loop) completes with
// an error status when it has a status byte to carry one, and never stops
// the queue; a ring the guest broke (impossible indices) stops that queue
// only.
//
// Bounce memory is bounded by the queue's in-flight budget (and the
// daemon's, if shared): a read or write whose data does not fit is parked,
// already taken from the ring, and the queue takes nothing more from the
// ring until completions free room (rechecked after every completion, and
// every kBudgetRecheckMs while only other queues hold the shared budget).
// Parked requests start in the order they were taken.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "base/aligned_buffer.h"
#include "base/bounce_cache.h"
#include "base/inflight_budget.h"
#include "frontend/vhost/virtqueue.h"
#include "volume/volume.h"

namespace edgestor::vhost {

struct BlkSettings {
  Volume* volume = nullptr;
  bool read_only = false;
  std::string serial;  // GET_ID, at most 20 bytes
  std::function<std::unique_ptr<VolumeChannel>()> make_channel;
  uint64_t inflight_bytes = kDefaultQueueInflightBytes;  // this queue's budget
  InflightBudget* shared_budget = nullptr;  // also charged if given (the daemon's)
  IoStats* io_stats = nullptr;              // the export's, if given: counts every request
};

// The virtio-blk limits we advertise and enforce.
inline constexpr uint32_t kSegMax = 126;
inline constexpr uint32_t kMaxRequestBytes = 32u << 20;  // the engine's kMaxIoBytes
inline constexpr uint32_t kMaxDiscardSectors = (32u << 20) / 512;
// Bounce buffers a queue keeps between requests (a QD8 1 MiB stream reuses
// its buffers instead of mapping fresh pages per request), and how long the
// queue must be idle before it gives them back.
inline constexpr uint64_t kKeptBounceBytes = 8ull << 20;
inline constexpr int kIdleReleaseMs = 1000;
// How often a queue with parked requests and nothing of its own in flight
// looks again for room in the shared budget.
inline constexpr int kBudgetRecheckMs = 5;

class BlkQueue {
 public:
  BlkQueue(const BlkSettings& settings, uint32_t index);
  ~BlkQueue();  // stops
  BlkQueue(const BlkQueue&) = delete;
  BlkQueue& operator=(const BlkQueue&) = delete;

  // Starts the worker. The queue owns neither descriptor.
  // With `inflight` (INFLIGHT_SHMFD: this queue's region, kept alive by
  // `inflight_owner`), requests are tracked there, and requests a previous
  // back-end left in flight are run again first.
  Status Start(std::shared_ptr<const GuestMemory> memory, const Virtqueue::Layout& layout, uint16_t last_avail_idx,
               bool event_idx, int kick_fd, InflightQueueHeader* inflight = nullptr,
               std::shared_ptr<void> inflight_owner = nullptr);
  // Waits for requests in flight, stops the worker and returns where the
  // guest's ring stands (for GET_VRING_BASE). No-op if not running.
  uint16_t Stop();
  bool running() const { return thread_.joinable(); }
  // Replaces the descriptor interrupts go to; returns the old one for the
  // caller to close (never while the worker may be writing to it).
  int ExchangeCallFd(int fd);
  // This queue's budget (its counters: bytes in flight, peak, waits).
  const InflightBudget& budget() const { return budget_; }
  // Reads and writes served in the guest's own memory, without a bounce
  // buffer (their data was one aligned piece).
  uint64_t direct_requests() const { return direct_requests_.load(std::memory_order_relaxed); }

 private:
  struct Request;
  void Run();
  bool TakeAvailable();  // false if the ring is broken
  void Begin(uint16_t head);
  // Submits a read or write, in the guest's memory or through a bounce
  // buffer. REQUIRES: its budget was taken.
  void StartData(Request* request);
  // Starts parked requests, oldest first, while the budget has room.
  void StartParked();
  // With parked requests and nothing of our own in flight: waits briefly
  // for other queues to free shared budget.
  void WaitForSharedBudget();
  void Finish(Request* request, uint8_t status);
  Request* NewRequest();
  void Recycle(Request* request);
  static void OnVolumeIoDone(VolumeIo* io, const Status& status);
  void Notify();

  // Inflight region: the heads to run again, oldest first; fixes up a
  // return that was interrupted half-way. `header` is the region's header,
  // copied once and checked: the front-end may change the shared one at any
  // moment, so no decision rests on a second read of it.
  std::vector<uint16_t> RecoverInflight(const InflightQueueHeader& header);
  InflightDesc* TrackedDesc(uint16_t head) { return reinterpret_cast<InflightDesc*>(inflight_ + 1) + head; }

  const BlkSettings settings_;
  const uint32_t index_;
  Virtqueue ring_;
  std::unique_ptr<VolumeChannel> channel_;
  int kick_fd_ = -1;
  int stop_fd_ = -1;  // eventfd: wakes the worker to stop
  std::mutex call_mu_;  // guards call_fd_ against a close while signalling
  int call_fd_ = -1;
  std::atomic<bool> stopping_{false};
  uint32_t in_flight_ = 0;  // requests taken and not yet returned (parked ones included)
  std::atomic<uint64_t> direct_requests_{0};
  InflightBudget budget_;
  std::deque<Request*> parked_;  // taken, waiting for budget; nothing is popped meanwhile
  BounceCache bounce_cache_{kKeptBounceBytes};
  std::vector<std::unique_ptr<Request>> spare_requests_;  // finished, kept for reuse
  bool broken_ = false;     // the guest broke the ring; wait to be stopped
  bool pushed_ = false;     // used entries since the last Notify
  InflightQueueHeader* inflight_ = nullptr;  // null: no tracking
  std::shared_ptr<void> inflight_owner_;
  uint64_t inflight_counter_ = 0;
  std::vector<uint16_t> resubmit_;
  std::thread thread_;
};

}  // namespace edgestor::vhost
