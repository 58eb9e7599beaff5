// InflightBudget: a bound on the request data (bounce buffers) held in
// flight by one front-end queue or connection, or by a whole daemon.
//
// A front-end takes a request's data bytes before it allocates the
// request's buffer and gives them back once the request is answered. A
// request that does not fit waits, and its front-end takes no new request
// (pops no ring, reads no socket) until completions free room: memory is
// bounded by the budget, not by what a guest or client puts in flight.
// A request larger than the whole budget is let through when nothing else
// is in flight, so no request size can wait for ever.
//
// Thread-safe and lock-free: the daemon's budget is shared by every queue
// and connection.
#pragma once

#include <atomic>
#include <cstdint>

namespace edgestor {

// Defaults: per vhost-user queue (two largest requests, 32 MiB each) and
// for the daemon as a whole, across exports and NBD connections.
inline constexpr uint64_t kDefaultQueueInflightBytes = 64ull << 20;
inline constexpr uint64_t kDefaultDaemonInflightBytes = 256ull << 20;

class InflightBudget {
 public:
  explicit InflightBudget(uint64_t limit_bytes);
  InflightBudget(const InflightBudget&) = delete;
  InflightBudget& operator=(const InflightBudget&) = delete;

  // Takes `bytes` if they fit under the limit, or if nothing is in flight.
  // Returns false, taking nothing, otherwise.
  bool TryAcquire(uint64_t bytes);
  // Gives back bytes a TryAcquire took. REQUIRES: they are in flight.
  void Release(uint64_t bytes);

  uint64_t limit() const { return limit_; }
  // Counters (relaxed snapshots): bytes now in flight, the most ever in
  // flight at once, and how often a request had to wait (TryAcquire failed).
  uint64_t in_flight() const { return in_flight_.load(std::memory_order_relaxed); }
  uint64_t peak() const { return peak_.load(std::memory_order_relaxed); }
  uint64_t waits() const { return waits_.load(std::memory_order_relaxed); }

 private:
  const uint64_t limit_;
  std::atomic<uint64_t> in_flight_{0};
  std::atomic<uint64_t> peak_{0};
  std::atomic<uint64_t> waits_{0};
};

// Takes `bytes` from `local` and, if given, from `shared`: both or neither.
bool TryAcquireBoth(InflightBudget& local, InflightBudget* shared, uint64_t bytes);
void ReleaseBoth(InflightBudget& local, InflightBudget* shared, uint64_t bytes);

}  // namespace edgestor
