// Test support: a VhostBlkTest fixture serving a 16 MiB volume of a test
// pool over vhost-user, and a helper that runs one request through it.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <memory>
#include <string>

#include "frontend/vhost/testing/test_front_end.h"
#include "frontend/vhost/vhost_blk_export.h"
#include "base/inflight_budget.h"
#include "volume/testing/test_pool.h"

namespace edgestor::vhost::testing {

using edgestor::testing::TestPool;

inline constexpr uint64_t kMiB = 1 << 20;
inline constexpr uint64_t kVolumeBytes = 16 * kMiB;
inline constexpr uint8_t kOk = 0, kIoErr = 1, kUnsupported = 2;

class VhostBlkTest : public ::testing::Test {
 protected:
  void SetUp() override {
    volume_ = pool_.set().CreateVolume("vol", kVolumeBytes).value();
    socket_ = (std::filesystem::temp_directory_path() /
               ("edgestor-vhost-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter_++) + ".sock"))
                  .string();
  }
  void StartExport(uint16_t queues = 1, bool read_only = false) {
    VhostExportOptions options{socket_, queues, read_only, "test-serial-01"};
    auto started = VhostBlkExport::Start(*volume_, options, [this] { return pool_.set().OpenChannel(64); });
    ASSERT_TRUE(started.ok()) << started.status().ToString();
    export_ = std::move(started).value();
  }
  // Runs one request of `type` on queue `q` and returns its status byte
  // (0xff if it never completed).
  uint8_t Run(TestFrontEnd& fe, uint32_t q, uint32_t type, uint64_t sector, uint8_t* data, uint32_t length,
              bool writable) {
    uint8_t* status = fe.BuildRequest(q, 0, type, sector, data, length, writable);
    fe.Publish(q, 0);
    auto used = fe.WaitUsed(q);
    if (!used) return 0xff;
    EXPECT_EQ(used->first, 0u);
    return *status;
  }

  static inline int counter_ = 0;
  TestPool pool_{128 * kMiB};
  Volume* volume_ = nullptr;
  std::string socket_;
  std::unique_ptr<InflightBudget> shared_budget_;  // outlives the export
  std::unique_ptr<VhostBlkExport> export_;
};

}  // namespace edgestor::vhost::testing
