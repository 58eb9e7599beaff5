#include "volume/recompressor.h"

#include <cassert>

namespace edgestor {

namespace {
constexpr uint32_t kQueueDepth = 4;  // one rewrite at a time: a read, then a write
}

Recompressor::Recompressor(Device& device, Round round, std::chrono::milliseconds period)
    : device_(device), round_(std::move(round)), period_(period) {
  assert(round_ && period_.count() > 0);
  thread_ = std::thread([this] { Loop(); });
}

void Recompressor::Stop() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Recompressor::Loop() {
  std::unique_ptr<IoQueue> queue = device_.CreateQueue(kQueueDepth);
  auto stopping = [this] {
    std::lock_guard lock(mu_);
    return stop_;
  };
  for (;;) {
    {
      std::unique_lock lock(mu_);
      if (wake_.wait_for(lock, period_, [this] { return stop_; })) return;
    }
    round_(*queue, stopping);
  }
}

}  // namespace edgestor
