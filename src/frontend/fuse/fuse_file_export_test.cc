// The FUSE file export driven by the real kernel client: a volume mounted
// as a file, used with ordinary system calls (buffered and O_DIRECT), and
// checked through the volume API.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <random>
#include <thread>
#include <vector>

#include "base/aligned_buffer.h"
#include "frontend/fuse/fuse_file_export.h"
#include "frontend/fuse/testing/fake_kernel.h"
#include "volume/testing/volume_model.h"
#include "volume/testing/test_pool.h"

namespace edgestor::fuse {
namespace {

using edgestor::testing::TestPool;

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kVolumeBytes = 16 * kMiB;

// A file descriptor closed when the test ends.
struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

class FuseFileExportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::access("/dev/fuse", R_OK | W_OK) != 0) GTEST_SKIP() << "no usable /dev/fuse on this host";
    if (::geteuid() != 0) GTEST_SKIP() << "mounting FUSE in tests needs root";
    dir_ = std::filesystem::temp_directory_path() / ("es-fuse-" + std::to_string(::getpid()) + "-" +
                                                     ::testing::UnitTest::GetInstance()->current_test_info()->name());
    volume_ = pool_.set().CreateVolume("vol", kVolumeBytes).value();
  }
  void TearDown() override {
    export_.reset();
    std::error_code ec;
    std::filesystem::remove(dir_, ec);
  }

  void StartExport(Volume* volume, bool read_only = false) {
    FileExportOptions options{.mountpoint = dir_.string(), .read_only = read_only, .threads = 2};
    auto started = FuseFileExport::Start(*volume, options, [this] { return pool_.set().OpenChannel(64); });
    ASSERT_TRUE(started.ok()) << started.status().ToString();
    export_ = std::move(started).value();
  }
  std::string File() const { return export_->file_path(); }

  static std::vector<uint8_t> Pattern(size_t n, uint8_t seed) {
    std::vector<uint8_t> v(n);
    for (size_t i = 0; i < n; i++) v[i] = static_cast<uint8_t>(i * 7 + seed + i / 4096);
    return v;
  }

  TestPool pool_{128 * kMiB};
  Volume* volume_ = nullptr;
  std::filesystem::path dir_;
  std::unique_ptr<FuseFileExport> export_;
};

TEST_F(FuseFileExportTest, PresentsTheVolumeAsOneRegularFile) {
  StartExport(volume_);
  struct stat st{};
  ASSERT_EQ(::stat(File().c_str(), &st), 0) << strerror(errno);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), kVolumeBytes);
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(dir_)) names.push_back(entry.path().filename());
  EXPECT_EQ(names, std::vector<std::string>{"vol"});
  EXPECT_FALSE(std::filesystem::exists(dir_ / "other"));
}

TEST_F(FuseFileExportTest, WritesReachTheVolumeAndReadBack) {
  StartExport(volume_);
  Fd fd(::open(File().c_str(), O_RDWR));
  ASSERT_GE(fd.fd, 0) << strerror(errno);
  // Unaligned, then a large write that crosses many clusters.
  auto small = Pattern(1000, 1);
  ASSERT_EQ(::pwrite(fd.fd, small.data(), small.size(), 12345), 1000);
  auto large = Pattern(3 * kMiB, 2);
  ASSERT_EQ(::pwrite(fd.fd, large.data(), large.size(), 4 * kMiB), static_cast<ssize_t>(large.size()));
  ASSERT_EQ(::fsync(fd.fd), 0);
  EXPECT_EQ(pool_.Read(*volume_, 12345, 1000).value(), small);
  EXPECT_EQ(pool_.Read(*volume_, 4 * kMiB, large.size()).value(), large);
  std::vector<uint8_t> back(large.size());
  ASSERT_EQ(::pread(fd.fd, back.data(), back.size(), 4 * kMiB), static_cast<ssize_t>(back.size()));
  EXPECT_EQ(back, large);
  // What the volume holds is what the file reads.
  ASSERT_TRUE(pool_.Write(*volume_, 8 * kMiB, Pattern(8192, 3)).ok());
  std::vector<uint8_t> seen(8192);
  ASSERT_EQ(::pread(fd.fd, seen.data(), seen.size(), 8 * kMiB), 8192);
  EXPECT_EQ(seen, Pattern(8192, 3));
}

TEST_F(FuseFileExportTest, ManyDirectWritersInFlightAllLand) {
  StartExport(volume_);
  constexpr int kThreads = 8;
  constexpr int kWritesEach = 64;
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; t++) {
    threads.emplace_back([&, t] {
      int fd = ::open(File().c_str(), O_RDWR | O_DIRECT);
      if (fd < 0) {
        failures++;
        return;
      }
      AlignedBuffer buf = AllocateAligned(64 * 1024);
      for (int i = 0; i < kWritesEach; i++) {
        uint64_t offset = (static_cast<uint64_t>(i) * kThreads + t) * 4096;
        std::memset(buf.get(), t * 16 + (i & 15), 4096);
        if (::pwrite(fd, buf.get(), 4096, static_cast<off_t>(offset)) != 4096) failures++;
      }
      ::close(fd);
    });
  }
  for (auto& th : threads) th.join();
  ASSERT_EQ(failures.load(), 0);
  for (int t = 0; t < kThreads; t++)
    for (int i = 0; i < kWritesEach; i++) {
      uint64_t offset = (static_cast<uint64_t>(i) * kThreads + t) * 4096;
      EXPECT_EQ(pool_.Read(*volume_, offset, 4096).value(),
                std::vector<uint8_t>(4096, static_cast<uint8_t>(t * 16 + (i & 15))));
    }
}

TEST_F(FuseFileExportTest, PunchHoleAndZeroRangeMapToDiscardAndWriteZeroes) {
  StartExport(volume_);
  ASSERT_TRUE(pool_.Write(*volume_, 0, Pattern(2 * kMiB, 4)).ok());
  Fd fd(::open(File().c_str(), O_RDWR));
  ASSERT_GE(fd.fd, 0);
  ASSERT_EQ(::fallocate(fd.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, kMiB), 0) << strerror(errno);
  EXPECT_EQ(pool_.Read(*volume_, 0, kMiB).value(), std::vector<uint8_t>(kMiB, 0));
  ASSERT_EQ(::fallocate(fd.fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, kMiB + 512, 4096), 0) << strerror(errno);
  auto expect = Pattern(2 * kMiB, 4);
  std::fill(expect.begin(), expect.begin() + kMiB, 0);
  std::fill(expect.begin() + kMiB + 512, expect.begin() + kMiB + 512 + 4096, 0);
  auto got = pool_.Read(*volume_, 0, 2 * kMiB).value();
  auto [g, e] = std::mismatch(got.begin(), got.end(), expect.begin());
  EXPECT_EQ(g, got.end()) << "first difference at byte " << (g - got.begin());
  // A thin volume cannot promise space: plain allocation is refused, as is
  // a hole punched without KEEP_SIZE (as on Linux file systems).
  EXPECT_NE(::fallocate(fd.fd, 0, 0, 4096), 0);
  EXPECT_EQ(errno, EOPNOTSUPP);
  EXPECT_NE(::fallocate(fd.fd, FALLOC_FL_PUNCH_HOLE, 0, 4096), 0);
  EXPECT_EQ(errno, EOPNOTSUPP);
  // Past the end with KEEP_SIZE: nothing to do.
  EXPECT_EQ(::fallocate(fd.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, kVolumeBytes, 4096), 0);
}

TEST_F(FuseFileExportTest, TheSizeIsTheVolumesAndOnlyTheDaemonChangesIt) {
  StartExport(volume_);
  Fd fd(::open(File().c_str(), O_RDWR));
  ASSERT_GE(fd.fd, 0);
  ASSERT_TRUE(pool_.Write(*volume_, 0, Pattern(4096, 5)).ok());
  EXPECT_NE(::ftruncate(fd.fd, 0), 0);
  EXPECT_EQ(errno, EPERM);
  EXPECT_EQ(::ftruncate(fd.fd, kVolumeBytes), 0);  // unchanged: allowed
  EXPECT_LT(::open(File().c_str(), O_WRONLY | O_TRUNC), 0);
  EXPECT_EQ(errno, EPERM);
  EXPECT_EQ(pool_.Read(*volume_, 0, 4096).value(), Pattern(4096, 5));  // nothing wiped
  // Past the end: end of file for reads, EFBIG for writes; a write across
  // the end is short.
  char byte = 1;
  EXPECT_EQ(::pread(fd.fd, &byte, 1, kVolumeBytes), 0);
  EXPECT_EQ(::pwrite(fd.fd, &byte, 1, kVolumeBytes), -1);
  EXPECT_EQ(errno, EFBIG);
  auto tail = Pattern(8192, 6);
  EXPECT_EQ(::pwrite(fd.fd, tail.data(), tail.size(), kVolumeBytes - 4096), 4096);
  // The volume grows: the file follows.
  ASSERT_TRUE(pool_.set().ResizeVolume("vol", 2 * kVolumeBytes, false).ok());
  export_->SizeChanged();
  struct stat st{};
  ASSERT_EQ(::fstat(fd.fd, &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), 2 * kVolumeBytes);
  EXPECT_EQ(::pwrite(fd.fd, tail.data(), tail.size(), kVolumeBytes), 8192);
}

TEST_F(FuseFileExportTest, ASnapshotIsExportedReadOnly) {
  ASSERT_TRUE(pool_.Write(*volume_, 0, Pattern(4096, 7)).ok());
  ASSERT_TRUE(pool_.set().CreateSnapshot("vol", "s1").ok());
  auto snap = pool_.set().FindVolume("vol@s1");
  ASSERT_TRUE(snap.ok()) << snap.status().ToString();
  StartExport(snap.value());
  struct stat st{};
  ASSERT_EQ(::stat(File().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0400u);
  EXPECT_LT(::open(File().c_str(), O_RDWR), 0);
  EXPECT_EQ(errno, EROFS);
  Fd fd(::open(File().c_str(), O_RDONLY));
  ASSERT_GE(fd.fd, 0);
  std::vector<uint8_t> seen(4096);
  ASSERT_EQ(::pread(fd.fd, seen.data(), seen.size(), 0), 4096);
  EXPECT_EQ(seen, Pattern(4096, 7));
}

TEST_F(FuseFileExportTest, StopWithTheFileOpenFailsItsUsersInsteadOfHanging) {
  StartExport(volume_);
  Fd fd(::open(File().c_str(), O_RDWR));
  ASSERT_GE(fd.fd, 0);
  EXPECT_EQ(export_->open_count(), 1u);
  export_->Stop();
  char byte;
  EXPECT_EQ(::pread(fd.fd, &byte, 1, 0), -1);
  EXPECT_TRUE(errno == ENOTCONN || errno == EIO) << strerror(errno);
  // The mount is gone (detached), and the mount point can be used again.
  StartExport(volume_);
  Fd again(::open(File().c_str(), O_RDONLY));
  EXPECT_GE(again.fd, 0);
}

// The rest plays the kernel over a socket pair (no mount, no root): the
// requests the kernel never sends, and power cuts.
using testing::FakeKernel;
using testing::FuseRequest;

class FuseWireTest : public ::testing::Test {
 protected:
  void StartExport(Volume& volume) {
    kernel_ = std::make_unique<FakeKernel>();
    ASSERT_TRUE(kernel_->ok());
    FileExportOptions options{
        .mountpoint = "wire", .threads = 2, .shared_budget = &daemon_budget_, .connection_fd = kernel_->export_fd()};
    auto started = FuseFileExport::Start(volume, options, [this] { return pool_.set().OpenChannel(64); });
    ASSERT_TRUE(started.ok()) << started.status().ToString();
    export_ = std::move(started).value();
    ASSERT_TRUE(kernel_->Init());
  }
  void StopExport() {
    export_.reset();  // answers what is in flight first
    kernel_.reset();
  }
  // Sends one request and returns its reply's error (0 or -errno).
  int Call(const FuseRequest& request, std::vector<uint8_t>* payload = nullptr) {
    uint64_t unique = next_unique_++;
    EXPECT_TRUE(kernel_->Send(request.Serialize(unique)));
    auto reply = kernel_->Await(unique, 10000);
    EXPECT_TRUE(reply.has_value()) << "no reply";
    if (!reply) return -ETIMEDOUT;
    if (payload) *payload = reply->payload;
    return reply->error;
  }

  TestPool pool_{64 * kMiB};
  InflightBudget daemon_budget_{256 * kMiB};  // declared before the export, which borrows it
  std::unique_ptr<FakeKernel> kernel_;
  std::unique_ptr<FuseFileExport> export_;
  uint64_t next_unique_ = 100;
};

TEST_F(FuseWireTest, RequestsTheKernelNeverSendsGetErrorsNotCrashes) {
  Volume* volume = pool_.set().CreateVolume("vol", kMiB).value();
  StartExport(*volume);
  // A write claiming more data than the request carries.
  std::vector<uint8_t> data(100, 0x11);
  EXPECT_EQ(Call(FuseRequest(FUSE_WRITE, 2).Arg(fuse_write_in{.offset = 0, .size = 8192}).Bytes(data.data(), 100)),
            -EINVAL);
  EXPECT_EQ(pool_.Read(*volume, 0, 8192).value(), std::vector<uint8_t>(8192, 0));  // nothing written
  // A name with no terminator (the export terminates the request).
  EXPECT_EQ(Call(FuseRequest(FUSE_LOOKUP, FUSE_ROOT_ID).Bytes("volume-name-without-end", 23)), -ENOENT);
  EXPECT_EQ(Call(FuseRequest(FUSE_LOOKUP, FUSE_ROOT_ID).Bytes("vol", 4)), 0);
  // Inodes that do not exist, negative and huge offsets, unknown operations.
  EXPECT_EQ(Call(FuseRequest(FUSE_GETATTR, 77).Arg(fuse_getattr_in{})), -ENOENT);
  EXPECT_EQ(Call(FuseRequest(FUSE_READ, 2).Arg(fuse_read_in{.offset = ~0ull, .size = 4096})), -EINVAL);
  std::vector<uint8_t> payload;
  EXPECT_EQ(Call(FuseRequest(FUSE_READ, 2).Arg(fuse_read_in{.offset = 1ull << 62, .size = 4096}), &payload), 0);
  EXPECT_TRUE(payload.empty());  // end of file
  EXPECT_EQ(Call(FuseRequest(FUSE_FALLOCATE, 2).Arg(fuse_fallocate_in{.offset = 0, .length = ~0ull >> 1, .mode = 0x3})),
            0);  // punch to "the end of the world": clamped to the volume
  EXPECT_EQ(Call(FuseRequest(250, 2)), -ENOSYS);
  // And it still serves a plain write and read.
  std::vector<uint8_t> block(4096, 0x42);
  EXPECT_EQ(Call(FuseRequest(FUSE_WRITE, 2).Arg(fuse_write_in{.offset = 4096, .size = 4096}).Bytes(block.data(), 4096)),
            0);
  EXPECT_EQ(Call(FuseRequest(FUSE_READ, 2).Arg(fuse_read_in{.offset = 4096, .size = 4096}), &payload), 0);
  EXPECT_EQ(payload, block);
}

// An export with nothing to do holds none of the daemon's budget: idle
// exports must not starve NBD connections and vhost-user queues.
TEST_F(FuseWireTest, AnIdleExportHoldsNoBudget) {
  Volume* volume = pool_.set().CreateVolume("vol", kMiB).value();
  StartExport(*volume);
  std::vector<uint8_t> block(65536, 0x42);
  EXPECT_EQ(Call(FuseRequest(FUSE_WRITE, 2).Arg(fuse_write_in{.offset = 0, .size = 65536}).Bytes(block.data(), 65536)),
            0);
  EXPECT_GT(daemon_budget_.peak(), 0u);  // the request was charged
  for (int i = 0; i < 200 && daemon_budget_.in_flight() > 0; i++) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_EQ(daemon_budget_.in_flight(), 0u);
}

// Writes, punched holes and zeroed ranges go in through the export, fsyncs
// make them durable, and the power goes at a random point of each round:
// after the reopen every sector holds what the model allows (the last
// fsynced value or one written since), never garbage.
TEST_F(FuseWireTest, FsyncedWritesSurvivePowerCutsAtManyPoints) {
  using edgestor::testing::DecodeSector;
  using edgestor::testing::FillSector;
  using edgestor::testing::VolumeModel;
  constexpr uint64_t kVolumeSectors = 2 * kMiB / 512;
  constexpr int kRounds = 40;
  ASSERT_TRUE(pool_.set().CreateVolume("vol", 2 * kMiB).ok());
  std::mt19937_64 rng(17);
  VolumeModel model(kVolumeSectors);
  uint64_t tag = 1;
  int fsyncs = 0;
  for (int round = 0; round < kRounds; round++) {
    Volume* volume = pool_.set().FindVolume("vol").value();
    StartExport(*volume);
    int batches = 1 + static_cast<int>(rng() % 6);
    for (int b = 0; b < batches; b++) {
      // Up to eight requests in flight at once, then their replies. They
      // do not overlap: requests in flight together have no order, so the
      // model could not tell which one an fsync made durable.
      std::vector<uint64_t> uniques;
      std::vector<bool> taken(kVolumeSectors);
      for (int i = 0, n = 1 + static_cast<int>(rng() % 8); i < n; i++) {
        uint64_t first = rng() % kVolumeSectors;
        uint64_t sectors = std::min<uint64_t>(1 + rng() % 64, kVolumeSectors - first);
        if (std::any_of(taken.begin() + first, taken.begin() + first + sectors, [](bool t) { return t; })) continue;
        std::fill(taken.begin() + first, taken.begin() + first + sectors, true);
        uint64_t unique = next_unique_++;
        int kind = static_cast<int>(rng() % 8);
        if (kind == 0) {
          uint32_t mode = rng() % 2 ? (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE) : FALLOC_FL_ZERO_RANGE;
          kernel_->Send(FuseRequest(FUSE_FALLOCATE, 2)
                            .Arg(fuse_fallocate_in{.offset = first * 512, .length = sectors * 512, .mode = mode})
                            .Serialize(unique));
          model.Write(first, sectors, edgestor::testing::kZeroTag, false);
        } else {
          std::vector<uint8_t> data(sectors * 512);
          for (uint64_t s = 0; s < sectors; s++) FillSector(data.data() + s * 512, tag, first + s);
          kernel_->Send(FuseRequest(FUSE_WRITE, 2)
                            .Arg(fuse_write_in{.offset = first * 512, .size = static_cast<uint32_t>(data.size())})
                            .Bytes(data.data(), data.size())
                            .Serialize(unique));
          model.Write(first, sectors, tag++, false);
        }
        uniques.push_back(unique);
      }
      auto errors = kernel_->AwaitAll(uniques, 10000);
      ASSERT_TRUE(errors.has_value()) << "round " << round << ": replies missing";
      ASSERT_EQ(*errors, std::vector<int>(uniques.size(), 0));
      if (rng() % 2) {
        ASSERT_EQ(Call(FuseRequest(FUSE_FSYNC, 2).Arg(fuse_fsync_in{})), 0);
        model.Flush();  // every write above completed before the fsync was sent
        fsyncs++;
      }
    }
    StopExport();
    ASSERT_TRUE(pool_.CrashAndReopen(rng).ok()) << "round " << round;
    volume = pool_.set().FindVolume("vol").value();
    auto bytes = pool_.Read(*volume, 0, kVolumeSectors * 512);
    ASSERT_TRUE(bytes.ok());
    for (uint64_t s = 0; s < kVolumeSectors; s++) {
      uint64_t found = DecodeSector(bytes.value().data() + s * 512, s);
      ASSERT_TRUE(model.Allows(s, found)) << "round " << round << " sector " << s << " holds tag " << found;
      model.Settle(s, found);
    }
  }
  EXPECT_GT(fsyncs, kRounds / 2);
}

}  // namespace
}  // namespace edgestor::fuse
