// Test support: a pool on an in-memory FaultDevice that can be crashed and
// reopened, with helpers for synchronous volume I/O.
#pragma once

#include <gtest/gtest.h>

#include <array>
#include <memory>
#include <random>
#include <vector>

#include "io/borrowed_device.h"
#include "io/fault_device.h"
#include "volume/volume_set.h"

namespace edgestor::testing {

// A pool key file's bytes, derived from `seed` (tests of keyed pools).
inline PoolSecret KeyFileSecret(uint8_t seed) {
  std::array<uint8_t, kPoolKeyBytes> bytes;
  for (size_t i = 0; i < bytes.size(); i++) bytes[i] = static_cast<uint8_t>(seed + i * 13);
  PoolSecret secret;
  secret.key.emplace(bytes);
  return secret;
}

inline PoolOpenOptions OpenWith(PoolSecret secret) {
  PoolOpenOptions options;
  options.secret = std::move(secret);
  return options;
}

class TestPool {
 public:
  explicit TestPool(uint64_t device_bytes, PoolCreateOptions create = {}, PoolOpenOptions open = {})
      : device_(std::make_unique<FaultDevice>(device_bytes)), open_options_(open) {
    auto set = VolumeSet::Create(Borrow(*device_), create, open);
    EXPECT_TRUE(set.ok()) << set.status().ToString();
    if (set.ok()) set_ = std::move(set).value();
    queue_ = device_->CreateQueue(64);
  }

  VolumeSet& set() { return *set_; }
  FaultDevice& device() { return *device_; }
  IoQueue& queue() { return *queue_; }

  // Drops the VolumeSet without closing it (a crash), simulates the power
  // loss on the device, and reopens. Returns the reopen status.
  Status CrashAndReopen(std::mt19937_64& rng, double tear_probability = 0.25) {
    set_.reset();
    queue_.reset();
    device_->PowerCut(rng, tear_probability);
    return Reopen();
  }
  // Closes cleanly (if open) and reopens.
  Status CloseAndReopen() {
    if (set_) ES_RETURN_IF_ERROR(set_->Close());
    set_.reset();
    return Reopen();
  }
  // Closes cleanly and reopens with other options (another key, none).
  Status CloseAndReopenWith(PoolOpenOptions options) {
    open_options_ = std::move(options);
    return CloseAndReopen();
  }
  // Closes cleanly and leaves the pool closed (inspect device() then).
  Status Close() {
    Status s = set_ ? set_->Close() : Status::Ok();
    set_.reset();
    return s;
  }
  Status Reopen() {
    queue_ = device_->CreateQueue(64);
    auto set = VolumeSet::Open(Borrow(*device_), open_options_);
    if (!set.ok()) return set.status();
    set_ = std::move(set).value();
    return Status::Ok();
  }

  Volume* Find(const std::string& name) {
    auto v = set_->FindVolume(name);
    return v.ok() ? v.value() : nullptr;
  }
  Status Io(Volume& volume, VolumeOp op, uint64_t offset, uint64_t length, uint8_t* buf = nullptr, bool fua = false) {
    VolumeIo io;
    io.op = op;
    io.offset = offset;
    io.length = length;
    io.buf = buf;
    io.fua = fua;
    return RunSync(volume, io, *queue_);
  }
  Status Write(Volume& v, uint64_t offset, const std::vector<uint8_t>& data, bool fua = false) {
    AlignedBuffer buf = AllocateAligned(data.size());
    std::copy(data.begin(), data.end(), buf.get());
    return Io(v, VolumeOp::kWrite, offset, data.size(), buf.get(), fua);
  }
  Result<std::vector<uint8_t>> Read(Volume& v, uint64_t offset, uint64_t length) {
    AlignedBuffer buf = AllocateAligned(length);
    ES_RETURN_IF_ERROR(Io(v, VolumeOp::kRead, offset, length, buf.get()));
    return std::vector<uint8_t>(buf.get(), buf.get() + length);
  }
  Status Flush(Volume& v) { return Io(v, VolumeOp::kFlush, 0, 0); }

 private:
  std::unique_ptr<FaultDevice> device_;
  PoolOpenOptions open_options_;
  std::unique_ptr<VolumeSet> set_;
  std::unique_ptr<IoQueue> queue_;
};

}  // namespace edgestor::testing
