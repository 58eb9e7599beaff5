// A real host file system that fills under a sparse pool file (issue 12,
// item 8): a 64 MiB pool file on a 24 MiB tmpfs. Needs root to mount the
// tmpfs; skipped otherwise.
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "volume/volume_set.h"

namespace edgestor {
namespace {

constexpr uint64_t kMiB = 1 << 20;

class SmallHost : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "mounting a tmpfs needs root";
    char dir[] = "/tmp/edgestor-small-host-XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    dir_ = dir;
    if (mount("tmpfs", dir_.c_str(), "tmpfs", 0, "size=24m") != 0) {
      rmdir(dir_.c_str());
      dir_.clear();
      GTEST_SKIP() << "cannot mount a tmpfs here: " << std::strerror(errno);
    }
    mounted_ = true;
  }
  void TearDown() override {
    if (mounted_) umount2(dir_.c_str(), MNT_DETACH);
    if (!dir_.empty()) rmdir(dir_.c_str());
  }
  Result<std::unique_ptr<Device>> PoolFile(bool create) {
    FileDeviceOptions options;
    options.create = create;
    options.create_size = create ? 64 * kMiB : 0;
    return OpenFileDevice(dir_ + "/pool.img", options);
  }

  std::string dir_;
  bool mounted_ = false;
};

TEST_F(SmallHost, AFullHostIsTheWritersENOSPCAndThePoolGoesOn) {
  auto device = PoolFile(/*create=*/true);
  ASSERT_TRUE(device.ok()) << device.status().ToString();
  auto created = VolumeSet::Create(std::move(device).value(), {.cluster_size = 65536, .journal_bytes = kMiB});
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  std::unique_ptr<VolumeSet> set = std::move(created).value();
  auto v = set->CreateVolume("v", 48 * kMiB);
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  auto ring = set->device().CreateQueue(16);
  AlignedBuffer buf = AllocateAligned(kMiB);
  std::memset(buf.get(), 0x5a, kMiB);
  Status s;
  uint64_t written = 0;
  for (; written < 48 * kMiB; written += kMiB) {
    VolumeIo io{.op = VolumeOp::kWrite, .offset = written, .length = kMiB, .buf = buf.get()};
    s = RunSync(**v, io, *ring);
    if (!s.ok()) break;
  }
  ASSERT_EQ(s.code(), ENOSPC) << "after " << written / kMiB << " MiB: " << s.ToString();
  EXPECT_GT(written, 8 * kMiB);
  // Not stopped: what was written can be overwritten and flushed, and read.
  VolumeIo overwrite{.op = VolumeOp::kWrite, .offset = 0, .length = kMiB, .buf = buf.get()};
  s = RunSync(**v, overwrite, *ring);
  EXPECT_TRUE(s.ok()) << s.ToString();
  VolumeIo flush{.op = VolumeOp::kFlush};
  s = RunSync(**v, flush, *ring);
  EXPECT_TRUE(s.ok()) << s.ToString();
  Status checkpoint = set->Checkpoint();
  EXPECT_TRUE(checkpoint.ok() || checkpoint.code() == ENOSPC) << checkpoint.ToString();
  ring.reset();
  ASSERT_TRUE(set->Close().ok());
  set.reset();

  auto again = PoolFile(/*create=*/false);
  ASSERT_TRUE(again.ok());
  auto report = CheckPool(**again);
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_TRUE(report->ok()) << report->problems.front();
  auto reopened = VolumeSet::Open(std::move(again).value());
  ASSERT_TRUE(reopened.ok()) << reopened.status().ToString();
  Volume* rv = (*reopened)->FindVolume("v").value();
  AlignedBuffer back = AllocateAligned(kMiB);
  VolumeIo read{.op = VolumeOp::kRead, .offset = 0, .length = kMiB, .buf = back.get()};
  auto ring2 = (*reopened)->device().CreateQueue(16);
  ASSERT_TRUE(RunSync(*rv, read, *ring2).ok());
  EXPECT_EQ(std::memcmp(back.get(), buf.get(), kMiB), 0);
  ASSERT_TRUE((*reopened)->Close().ok());
}

}  // namespace
}  // namespace edgestor
