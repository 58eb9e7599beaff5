// Offline consistency check: recovery in a mode that reports instead of
// failing and never writes.
#include <cerrno>

#include "io/borrowed_device.h"
#include "volume/volume_set_impl.h"

namespace edgestor {


void VolumeSetImpl::FillReport(FsckReport* report) {
  std::lock_guard lock(mu_);
  report->volumes = volumes_.size();
  report->used_blocks = pool_->used_blocks();
  report->snapshots = snapshots_.size();
  report->shared_runs = pool_->shared_runs();
  for (auto& [name, volume] : volumes_) {
    VolumeInfo info = volume->Info();
    report->mapped_clusters += info.mapped_clusters;
    for (const auto& slot : volume->map().slots()) report->map_pages += slot.block != 0;
  }
}

Result<FsckReport> CheckPool(Device& device) {
  FsckReport report;
  auto pool = Pool::Open(Borrow(device, /*read_only=*/true));
  if (!pool.ok()) {
    if (pool.status().code() != EUCLEAN) return pool.status();
    report.problems.push_back(pool.status().message());
    return report;
  }
  VolumeSetImpl set(std::move(pool).value(), PoolOpenOptions{});
  Status s = set.Recover(&report);
  if (!s.ok()) {
    if (s.code() == EIO) return s;
    report.problems.push_back(s.message());
    return report;
  }
  set.FillReport(&report);
  return report;
}

}  // namespace edgestor
