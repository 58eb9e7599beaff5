// Recompressor: the background thread that compresses again the clusters
// partial writes left plain (see PoolOpenOptions::hot_plain_clusters) once
// nobody has written them for a while.
//
// It only paces the work: every period it calls `round` on its own thread
// with an I/O queue of its own, until stopped. The owner's round picks the
// cold clusters and rewrites them (VolumeSetImpl::RecompressRound), so the
// locking stays with the owner.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

#include "io/device.h"

namespace edgestor {

class Recompressor {
 public:
  // `round` gets the queue and a stop test to check between clusters.
  using Round = std::function<void(IoQueue& queue, const std::function<bool()>& stopping)>;
  Recompressor(Device& device, Round round, std::chrono::milliseconds period);
  ~Recompressor() { Stop(); }
  Recompressor(const Recompressor&) = delete;
  Recompressor& operator=(const Recompressor&) = delete;

  void Stop();  // waits for the round in progress to finish its cluster

 private:
  void Loop();

  Device& device_;
  Round round_;
  const std::chrono::milliseconds period_;
  std::mutex mu_;
  std::condition_variable wake_;
  bool stop_ = false;  // GUARDED_BY(mu_)
  std::thread thread_;
};

}  // namespace edgestor
