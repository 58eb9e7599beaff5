#include "base/inflight_budget.h"

#include <cassert>

namespace edgestor {

InflightBudget::InflightBudget(uint64_t limit_bytes) : limit_(limit_bytes) { assert(limit_bytes > 0); }

bool InflightBudget::TryAcquire(uint64_t bytes) {
  uint64_t now = in_flight_.load(std::memory_order_relaxed);
  for (;;) {
    // Alone, any request fits: a request larger than the budget must still run.
    bool fits = now == 0 || (bytes <= limit_ && now <= limit_ - bytes);
    if (!fits) {
      waits_.fetch_add(1, std::memory_order_relaxed);
      return false;
    }
    if (in_flight_.compare_exchange_weak(now, now + bytes, std::memory_order_acq_rel, std::memory_order_relaxed)) break;
  }
  uint64_t after = now + bytes;
  uint64_t peak = peak_.load(std::memory_order_relaxed);
  while (after > peak && !peak_.compare_exchange_weak(peak, after, std::memory_order_relaxed)) {
  }
  return true;
}

void InflightBudget::Release(uint64_t bytes) {
  [[maybe_unused]] uint64_t before = in_flight_.fetch_sub(bytes, std::memory_order_acq_rel);
  assert(before >= bytes);
}

bool TryAcquireBoth(InflightBudget& local, InflightBudget* shared, uint64_t bytes) {
  if (!local.TryAcquire(bytes)) return false;
  if (shared && !shared->TryAcquire(bytes)) {
    local.Release(bytes);
    return false;
  }
  return true;
}

void ReleaseBoth(InflightBudget& local, InflightBudget* shared, uint64_t bytes) {
  local.Release(bytes);
  if (shared) shared->Release(bytes);
}

}  // namespace edgestor
