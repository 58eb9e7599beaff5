// BorrowedDevice: lends a Device to an owner-taking API (Pool, VolumeSet)
// without giving up ownership. Used by fsck (read-only) and by tests that
// reopen a pool on the same simulated device after a crash.
#pragma once

#include <cerrno>
#include <memory>

#include "io/device.h"

namespace edgestor {

class BorrowedDevice : public Device {
 public:
  // With read_only, writes and flushes fail with EROFS.
  BorrowedDevice(Device& device, bool read_only) : device_(device), read_only_(read_only) {}
  uint64_t size() const override { return device_.size(); }
  std::string name() const override { return device_.name(); }
  std::unique_ptr<IoQueue> CreateQueue(uint32_t depth) override { return device_.CreateQueue(depth); }
  Status ReadSync(uint64_t offset, void* buf, size_t len) override { return device_.ReadSync(offset, buf, len); }
  Status WriteSync(uint64_t offset, const void* buf, size_t len) override {
    if (read_only_) return Status(EROFS, "device is opened read-only");
    return device_.WriteSync(offset, buf, len);
  }
  Status FlushSync() override {
    if (read_only_) return Status(EROFS, "device is opened read-only");
    return device_.FlushSync();
  }
  Status Allocate(uint64_t offset, uint64_t len) override {
    if (read_only_) return Status(EROFS, "device is opened read-only");
    return device_.Allocate(offset, len);
  }
  DeviceStats stats() const override { return device_.stats(); }

 private:
  Device& device_;
  bool read_only_;
};

inline std::unique_ptr<Device> Borrow(Device& device, bool read_only = false) {
  return std::make_unique<BorrowedDevice>(device, read_only);
}

}  // namespace edgestor
