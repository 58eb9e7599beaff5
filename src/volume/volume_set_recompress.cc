// VolumeSetImpl: the background recompression of hot clusters left plain
// (see ThinVolume::ColdPlainClusters and Recompressor).
#include <algorithm>
#include <cassert>
#include <chrono>

#include "volume/volume_set_impl.h"

namespace edgestor {

namespace {
// Rounds a quarter of the idle time apart, between 10 ms and 1 s.
std::chrono::milliseconds RoundPeriod(uint32_t idle_ms) {
  return std::chrono::milliseconds(std::clamp<uint32_t>(idle_ms / 4, 10, 1000));
}
// Clusters per volume per round: about 16 MiB of 64 KiB clusters a second,
// a few percent of one core with lz4.
constexpr size_t kRecompressPerRound = 256;
}  // namespace

void VolumeSetImpl::StartRecompressor() {
  assert(!recompressor_);
  if (services_->hot_plain_limit == 0) return;  // nothing is ever left plain
  recompressor_ = std::make_unique<Recompressor>(
      pool_->device(), [this](IoQueue& queue, const std::function<bool()>& stopping) { RecompressRound(queue, stopping); },
      RoundPeriod(recompress_idle_ms_));
}

void VolumeSetImpl::StopRecompressor() {
  if (recompressor_) recompressor_->Stop();
}

void VolumeSetImpl::RecompressRound(IoQueue& queue, const std::function<bool()>& stopping) {
  std::vector<std::pair<uint32_t, std::vector<uint64_t>>> work;
  {
    std::lock_guard lock(mu_);
    if (!CheckUsable().ok()) return;
    for (auto& [name, volume] : volumes_) {
      if (IsDeletingVolumeName(name)) continue;
      auto cold = volume->ColdPlainClusters(recompress_idle_ms_, kRecompressPerRound);
      if (!cold.empty()) work.emplace_back(volume->id(), std::move(cold));
    }
  }
  for (auto& [id, clusters] : work) {
    for (uint64_t cluster : clusters) {
      if (stopping()) return;
      // Held across the rewrite: deleting, rolling back or snapshotting the
      // volume waits for this one cluster.
      std::lock_guard control(control_mu_);
      ThinVolume* volume = nullptr;
      {
        std::lock_guard lock(mu_);
        volume = FindById(id);
        if (volume == nullptr || IsDeletingVolumeName(volume->name())) break;
      }
      // A failure here changed nothing (the cluster stays plain); a device
      // error has already stopped the pool and shows in every request.
      if (!volume->Recompress(cluster, queue).ok()) return;
    }
  }
}

}  // namespace edgestor
