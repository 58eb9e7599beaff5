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
  recompressor_.reset();
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
      // A control operation waiting for control_mu_ goes first: the round
      // resumes with the next one.
      if (stopping() || control_waiting_.load() > 0) return;
      // Held across the rewrite: deleting, resizing, rolling back or
      // snapshotting the volume waits for this one cluster.
      std::lock_guard control(control_mu_);
      ThinVolume* volume = nullptr;
      {
        std::lock_guard lock(mu_);
        if (!CheckUsable().ok()) return;
        volume = FindById(id);
        if (volume == nullptr || IsDeletingVolumeName(volume->name())) break;
      }
      // A refusal (a full pool, a damaged map page) leaves the cluster
      // plain and moves on to the next volume, whose clusters may free space.
      if (!volume->Recompress(cluster, recompress_idle_ms_, queue).ok()) break;
    }
  }
}

}  // namespace edgestor
