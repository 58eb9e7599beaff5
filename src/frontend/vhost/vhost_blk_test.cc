// The vhost-user-blk back-end driven by a test front-end: negotiation,
// configuration, data round trips on several queues, reconnection, and
// what a hostile guest can send.
#include <gtest/gtest.h>

#include <sys/mman.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <set>
#include <thread>

#include "frontend/vhost/guest_memory.h"
#include "frontend/vhost/testing/test_front_end.h"
#include "frontend/vhost/vhost_blk_export.h"
#include "io/inflight_budget.h"
#include "volume/testing/test_pool.h"

namespace edgestor::vhost {
namespace {

using edgestor::testing::TestPool;
using testing::TestFrontEnd;

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kVolumeBytes = 16 * kMiB;
constexpr uint8_t kOk = 0, kIoErr = 1, kUnsupported = 2;

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
    auto started = VhostBlkExport::Start(*volume_, options, [this] { return pool_.device().CreateQueue(64); });
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

TEST_F(VhostBlkTest, NegotiatesAndReportsTheDiskGeometry) {
  StartExport(2);
  TestFrontEnd fe(socket_, 2);
  uint64_t features = fe.Negotiate();
  EXPECT_TRUE(features & (1ull << 32));  // VERSION_1
  EXPECT_TRUE(features & (1ull << 12));  // MQ
  EXPECT_TRUE(features & (1ull << 13));  // DISCARD
  EXPECT_TRUE(features & (1ull << 28));  // INDIRECT_DESC
  EXPECT_FALSE(features & (1ull << 5));  // not read-only
  EXPECT_EQ(fe.CallU64(17).value_or(0), 2u);  // GET_QUEUE_NUM
  uint32_t request[3] = {0, 60, 0};
  ASSERT_TRUE(fe.Send(24, request, sizeof request));  // GET_CONFIG
  auto config = fe.Receive(24);
  ASSERT_TRUE(config && config->size() == 12 + 60);
  uint64_t capacity;
  std::memcpy(&capacity, config->data() + 12, 8);
  EXPECT_EQ(capacity, kVolumeBytes / 512);
  uint16_t queues;
  std::memcpy(&queues, config->data() + 12 + 34, 2);
  EXPECT_EQ(queues, 2);
}

TEST_F(VhostBlkTest, WritesAndReadsBackOnEveryQueue) {
  StartExport(2);
  TestFrontEnd fe(socket_, 2);
  fe.Negotiate();
  for (uint32_t q = 0; q < 2; q++) {
    uint8_t* out = fe.Allocate(8192);
    for (int i = 0; i < 8192; i++) out[i] = static_cast<uint8_t>(i * 3 + q);
    EXPECT_EQ(Run(fe, q, 1, 100 + q * 64, out, 8192, false), kOk);
    uint8_t* in = fe.Allocate(8192);
    EXPECT_EQ(Run(fe, q, 0, 100 + q * 64, in, 8192, true), kOk);
    EXPECT_EQ(std::memcmp(in, out, 8192), 0);
    EXPECT_EQ(Run(fe, q, 4, 0, nullptr, 0, false), kOk);  // FLUSH
  }
  // What the guest wrote is in the volume.
  auto data = pool_.Read(*volume_, 100 * 512, 8192);
  ASSERT_TRUE(data.ok());
  EXPECT_EQ(data.value()[1], static_cast<uint8_t>(3));
}

TEST_F(VhostBlkTest, GetIdDiscardAndUnknownRequests) {
  StartExport();
  TestFrontEnd fe(socket_);
  fe.Negotiate();
  uint8_t* id = fe.Allocate(20);
  EXPECT_EQ(Run(fe, 0, 8, 0, id, 20, true), kOk);
  EXPECT_EQ(std::string(reinterpret_cast<char*>(id), 14), "test-serial-01");
  ASSERT_TRUE(pool_.Write(*volume_, 0, std::vector<uint8_t>(65536, 0x77)).ok());
  uint8_t* range = fe.Allocate(16);
  uint64_t sector = 0;
  uint32_t sectors = 128;
  std::memcpy(range, &sector, 8);
  std::memcpy(range + 8, &sectors, 4);
  EXPECT_EQ(Run(fe, 0, 11, 0, range, 16, false), kOk);  // DISCARD
  EXPECT_EQ(pool_.Read(*volume_, 0, 65536).value(), std::vector<uint8_t>(65536, 0));
  EXPECT_EQ(Run(fe, 0, 99, 0, nullptr, 0, false), kUnsupported);
}

TEST_F(VhostBlkTest, HostileRequestsFailAloneAndTheQueueGoesOn) {
  StartExport();
  TestFrontEnd fe(socket_);
  fe.Negotiate();
  uint8_t* buf = fe.Allocate(4096);
  // Past the end of the volume.
  EXPECT_EQ(Run(fe, 0, 0, kVolumeBytes / 512 - 4, buf, 4096, true), kIoErr);
  // Not a multiple of 512 bytes.
  EXPECT_EQ(Run(fe, 0, 0, 0, buf, 1000, true), kIoErr);
  // Data descriptor pointing outside guest memory: the chain cannot be
  // trusted past it, so it is returned without touching its status byte.
  uint8_t* status = fe.BuildRequest(0, 0, 0, 0, buf, 4096, true);
  fe.Desc(0)[1].addr = testing::kGuestMemoryBytes - 100;
  fe.Publish(0, 0);
  auto used = fe.WaitUsed(0);
  ASSERT_TRUE(used);
  EXPECT_EQ(used->second, 0u);
  EXPECT_NE(*status, kOk);
  // A header of 8 bytes instead of 16.
  status = fe.BuildRequest(0, 0, 0, 0, buf, 4096, true);
  fe.Desc(0)[0].len = 8;
  fe.Publish(0, 0);
  used = fe.WaitUsed(0);
  ASSERT_TRUE(used);
  EXPECT_EQ(*status, kIoErr);
  EXPECT_EQ(used->second, 1u);
  // A loop: the data descriptor points back at the header. Returned
  // unanswered, and nothing written into its buffers.
  status = fe.BuildRequest(0, 0, 0, 0, buf, 4096, true);
  fe.Desc(0)[1].next = 0;
  std::memset(buf, 0x66, 4096);
  fe.Publish(0, 0);
  used = fe.WaitUsed(0);
  ASSERT_TRUE(used);
  EXPECT_EQ(used->second, 0u);
  EXPECT_EQ(buf[4095], 0x66);
  EXPECT_EQ(*status, 0xff);
  // A writable buffer before a readable one (bad layout).
  status = fe.BuildRequest(0, 0, 1, 0, buf, 4096, false);
  uint8_t* extra_status = fe.Allocate(1);
  fe.Desc(0)[2] = {fe.Gpa(extra_status), 1, 2 | 1, 3};
  fe.Desc(0)[3] = {fe.Gpa(buf), 512, 0, 0};  // readable, after a writable one
  fe.Publish(0, 0);
  used = fe.WaitUsed(0);
  ASSERT_TRUE(used);
  EXPECT_EQ(*extra_status, kIoErr);  // the only writable byte: the status
  EXPECT_EQ(used->second, 1u);
  // An indirect table that is not whole descriptors, and one that nests.
  uint8_t* table = fe.Allocate(64);
  fe.Desc(0)[0] = {fe.Gpa(table), 20, 4, 0};
  fe.Publish(0, 0);
  used = fe.WaitUsed(0);
  ASSERT_TRUE(used);
  EXPECT_EQ(used->second, 0u);
  auto* entries = reinterpret_cast<testing::TestDesc*>(table);
  entries[0] = {fe.Gpa(table), 32, 4, 0};
  fe.Desc(0)[0] = {fe.Gpa(table), 32, 4, 0};
  fe.Publish(0, 0);
  used = fe.WaitUsed(0);
  ASSERT_TRUE(used);
  EXPECT_EQ(used->second, 0u);
  // After all that, a normal request still works.
  uint8_t* out = fe.Allocate(4096);
  std::memset(out, 0x42, 4096);
  EXPECT_EQ(Run(fe, 0, 1, 8, out, 4096, false), kOk);
  uint8_t* in = fe.Allocate(4096);
  EXPECT_EQ(Run(fe, 0, 0, 8, in, 4096, true), kOk);
  EXPECT_EQ(std::memcmp(in, out, 4096), 0);
}

TEST_F(VhostBlkTest, IndirectDescriptorsWork) {
  StartExport();
  TestFrontEnd fe(socket_);
  fe.Negotiate();
  uint8_t* header = fe.Allocate(16);
  uint32_t type = 1;
  uint64_t sector = 16;
  std::memcpy(header, &type, 4);
  std::memcpy(header + 8, &sector, 8);
  uint8_t* data = fe.Allocate(4096);
  std::memset(data, 0x5a, 4096);
  uint8_t* status = fe.Allocate(1);
  uint8_t* table = fe.Allocate(48);
  auto* t = reinterpret_cast<testing::TestDesc*>(table);
  t[0] = {fe.Gpa(header), 16, 1, 1};
  t[1] = {fe.Gpa(data), 4096, 1, 2};
  t[2] = {fe.Gpa(status), 1, 2, 0};
  fe.Desc(0)[5] = {fe.Gpa(table), 48, 4, 0};
  fe.Publish(0, 5);
  auto used = fe.WaitUsed(0);
  ASSERT_TRUE(used);
  EXPECT_EQ(used->first, 5u);
  EXPECT_EQ(*status, kOk);
  EXPECT_EQ(pool_.Read(*volume_, 16 * 512, 4096).value(), std::vector<uint8_t>(4096, 0x5a));
}

TEST_F(VhostBlkTest, ABrokenRingStopsOnlyThatQueue) {
  StartExport(2);
  TestFrontEnd fe(socket_, 2);
  fe.Negotiate();
  fe.SetAvailIdx(0, 1000);  // more than the ring holds
  fe.Kick(0);
  uint8_t* in = fe.Allocate(4096);
  EXPECT_EQ(Run(fe, 1, 0, 0, in, 4096, true), kOk);
}

TEST_F(VhostBlkTest, ReadOnlyExportRefusesWrites) {
  StartExport(1, /*read_only=*/true);
  TestFrontEnd fe(socket_);
  EXPECT_TRUE(fe.Negotiate() & (1ull << 5));  // RO
  uint8_t* out = fe.Allocate(4096);
  EXPECT_EQ(Run(fe, 0, 1, 0, out, 4096, false), kIoErr);
  EXPECT_EQ(Run(fe, 0, 0, 0, out, 4096, true), kOk);
}

TEST_F(VhostBlkTest, ExportSurvivesTheFrontEndReconnecting) {
  StartExport();
  {
    TestFrontEnd fe(socket_);
    fe.Negotiate();
    uint8_t* out = fe.Allocate(4096);
    std::memset(out, 0x31, 4096);
    EXPECT_EQ(Run(fe, 0, 1, 0, out, 4096, false), kOk);
  }  // disconnects
  TestFrontEnd again(socket_);
  again.Negotiate();
  uint8_t* in = again.Allocate(4096);
  EXPECT_EQ(Run(again, 0, 0, 0, in, 4096, true), kOk);
  EXPECT_EQ(in[100], 0x31);
}

TEST_F(VhostBlkTest, GarbageMessagesDisconnectOnlyThatFrontEnd) {
  StartExport();
  {
    TestFrontEnd fe(socket_);
    uint8_t junk[64];
    std::memset(junk, 0xee, sizeof junk);
    EXPECT_TRUE(fe.Send(0xdead, junk, sizeof junk));
    uint32_t huge = 1u << 20;
    EXPECT_TRUE(fe.Send(5, &huge, 4));  // SET_MEM_TABLE without a table or descriptor
  }
  TestFrontEnd fe(socket_);
  fe.Negotiate();
  uint8_t* in = fe.Allocate(4096);
  EXPECT_EQ(Run(fe, 0, 0, 0, in, 4096, true), kOk);
}

// INFLIGHT_SHMFD: requests are tracked in memory the front-end keeps.
TEST_F(VhostBlkTest, TracksRequestsInTheInflightRegion) {
  StartExport();
  TestFrontEnd fe(socket_);
  fe.NegotiateFeatures(true, /*inflight=*/true);
  auto [fd, size] = fe.GetInflightFd();
  ASSERT_GE(fd, 0);
  ASSERT_GE(size, 16u + 16u * testing::kRingSize);
  auto* region = static_cast<uint8_t*>(::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
  ASSERT_NE(region, MAP_FAILED);
  fe.SetMemTable();
  fe.SetUpRing(0);
  uint8_t* out = fe.Allocate(4096);
  EXPECT_EQ(Run(fe, 0, 1, 0, out, 4096, false), kOk);
  uint16_t version, used_idx;
  std::memcpy(&version, region + 8, 2);
  std::memcpy(&used_idx, region + 14, 2);
  EXPECT_EQ(version, 1);
  EXPECT_EQ(used_idx, 1);
  EXPECT_EQ(region[16 + 0 * 16], 0);  // head 0 returned: not in flight
  ::munmap(region, size);
  ::close(fd);
}

// A back-end that died with requests in flight left them marked in the
// region; the next one runs them again, oldest first, and takes nothing
// twice from the ring.
TEST_F(VhostBlkTest, RunsAgainWhatAPreviousBackEndLeftInFlight) {
  StartExport();
  TestFrontEnd fe(socket_);
  fe.NegotiateFeatures(true, /*inflight=*/true);
  int fd = ::memfd_create("inflight", MFD_CLOEXEC);
  uint64_t size = 4096;
  ASSERT_EQ(::ftruncate(fd, size), 0);
  auto* region = static_cast<uint8_t*>(::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
  // Two writes taken (avail index 2), none returned (used index 0): heads 3
  // (taken first) and 0.
  uint8_t* a = fe.Allocate(4096);
  std::memset(a, 0xa1, 4096);
  uint8_t* b = fe.Allocate(4096);
  std::memset(b, 0xb2, 4096);
  uint8_t* status_a = fe.BuildRequest(0, 3, 1, 8, a, 4096, false);
  uint8_t* status_b = fe.BuildRequest(0, 0, 1, 16, b, 4096, false);
  uint16_t version = 1, desc_num = testing::kRingSize;
  std::memcpy(region + 8, &version, 2);
  std::memcpy(region + 10, &desc_num, 2);
  auto mark = [&](uint16_t head, uint64_t counter) {
    region[16 + head * 16] = 1;
    std::memcpy(region + 16 + head * 16 + 8, &counter, 8);
  };
  mark(3, 7);
  mark(0, 9);
  fe.Avail(0)[2] = 3;
  fe.Avail(0)[3] = 0;
  fe.SetAvailIdx(0, 2);
  fe.SetInflightFd(fd, size);
  fe.SetMemTable();
  fe.SetUpRing(0);  // base 0: the used index, as QEMU sends after a crash
  auto first = fe.WaitUsed(0);
  auto second = fe.WaitUsed(0);
  ASSERT_TRUE(first && second);
  EXPECT_EQ(first->first, 3u);
  EXPECT_EQ(second->first, 0u);
  EXPECT_EQ(*status_a, kOk);
  EXPECT_EQ(*status_b, kOk);
  EXPECT_EQ(pool_.Read(*volume_, 8 * 512, 4096).value(), std::vector<uint8_t>(4096, 0xa1));
  EXPECT_EQ(pool_.Read(*volume_, 16 * 512, 4096).value(), std::vector<uint8_t>(4096, 0xb2));
  // A new request is the only thing taken next: nothing ran twice.
  uint8_t* in = fe.Allocate(4096);
  uint8_t* status_c = fe.BuildRequest(0, 6, 0, 8, in, 4096, true);
  fe.Publish(0, 6);
  auto third = fe.WaitUsed(0);
  ASSERT_TRUE(third);
  EXPECT_EQ(third->first, 6u);
  EXPECT_EQ(*status_c, kOk);
  EXPECT_FALSE(fe.WaitUsed(0, 300));
  ::munmap(region, size);
  ::close(fd);
}


// This process's anonymous resident memory (bounce buffers are anonymous).
uint64_t AnonRssBytes() {
  FILE* f = std::fopen("/proc/self/status", "r");
  if (!f) return 0;
  char line[256];
  uint64_t kib = 0;
  while (std::fgets(line, sizeof line, f))
    if (std::sscanf(line, "RssAnon: %llu kB", reinterpret_cast<unsigned long long*>(&kib)) == 1) break;
  std::fclose(f);
  return kib * 1024;
}

// A memfd of `bytes` bytes (the caller closes it).
int MemFd(uint64_t bytes) {
  int fd = ::memfd_create("test", MFD_CLOEXEC);
  EXPECT_GE(fd, 0);
  EXPECT_EQ(::ftruncate(fd, static_cast<off_t>(bytes)), 0);
  return fd;
}

// Mapping a region past the end of its file maps pages whose first touch
// raises SIGBUS: every region must lie inside its file.
TEST(GuestMemoryTest, RefusesRegionsTheirFileDoesNotCover) {
  int fd = MemFd(4096);
  MemoryTable table{};
  table.nregions = 1;
  table.regions[0] = {0, 64 * kMiB, 0x10000, 0};
  auto mapped = GuestMemory::Map(table, std::span(&fd, 1));
  EXPECT_EQ(mapped.status().code(), EINVAL) << mapped.status().ToString();
  table.regions[0] = {0, 4096, 0x10000, 4096};  // offset at the end
  EXPECT_EQ(GuestMemory::Map(table, std::span(&fd, 1)).status().code(), EINVAL);
  table.regions[0] = {0, 2048, 0x10000, 2048};  // exactly the file's tail
  EXPECT_TRUE(GuestMemory::Map(table, std::span(&fd, 1)).ok());
  int pipe_fds[2];
  ASSERT_EQ(::pipe(pipe_fds), 0);
  table.regions[0] = {0, 4096, 0x10000, 0};
  EXPECT_EQ(GuestMemory::Map(table, std::span(&pipe_fds[0], 1)).status().code(), EINVAL);
  ::close(pipe_fds[0]);
  ::close(pipe_fds[1]);
  ::close(fd);
}

// Issue 12 item 4a: a 64 MiB region backed by a 4 KiB memfd, and a queue
// whose rings lie past the file's end, killed the daemon with SIGBUS.
TEST_F(VhostBlkTest, AMemoryTableLargerThanItsFileIsRefused) {
  StartExport();
  {
    TestFrontEnd fe(socket_);
    fe.NegotiateFeatures(true, /*inflight=*/false);
    int small = MemFd(4096);
    EXPECT_NE(fe.SetMemTableFrom(small, 64 * kMiB), 0u);
    // The used ring (at 32 KiB) lies past the file; one request is made
    // available in the file's first page and the queue kicked.
    fe.SetUpRing(0);
    uint16_t avail_idx = 1;
    ASSERT_EQ(::pwrite(small, &avail_idx, 2, 16 * testing::kRingSize + 2), 2);
    fe.Kick(0);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    // The same file declared at an offset past its end.
    EXPECT_NE(fe.SetMemTableFrom(small, 4096, /*mmap_offset=*/8192), 0u);
    ::close(small);
  }
  TestFrontEnd fe(socket_);
  fe.Negotiate();
  uint8_t* in = fe.Allocate(4096);
  EXPECT_EQ(Run(fe, 0, 0, 0, in, 4096, true), kOk);
}

// Issue 12 item 4a: the same for the inflight region the front-end hands
// back (SET_INFLIGHT_FD): refused, and the queue runs without tracking.
TEST_F(VhostBlkTest, AnInflightRegionLargerThanItsFileIsRefused) {
  StartExport();
  TestFrontEnd fe(socket_);
  fe.NegotiateFeatures(true, /*inflight=*/true);
  int empty = MemFd(0);
  EXPECT_NE(fe.SetInflightFdAcked(empty, 4096), 0u);
  int page = MemFd(4096);
  EXPECT_NE(fe.SetInflightFdAcked(page, 4096, /*offset=*/4096), 0u);
  fe.SetMemTable();
  fe.SetUpRing(0);
  uint8_t* out = fe.Allocate(4096);
  EXPECT_EQ(Run(fe, 0, 1, 0, out, 4096, false), kOk);
  ::close(empty);
  ::close(page);
}

// Issue 12 item 4b: the inflight header lives in memory the front-end can
// change at any moment. It is copied once and checked and used from the
// copy: a front-end flipping desc_num between the queue size and 65535
// while the queue restarts must never make us walk past the region.
TEST_F(VhostBlkTest, TheInflightHeaderIsReadOnce) {
  StartExport();
  TestFrontEnd fe(socket_);
  fe.NegotiateFeatures(true, /*inflight=*/true);
  constexpr uint64_t kRegionBytes = 4096;  // one page: walking 65535 entries leaves it
  int fd = MemFd(kRegionBytes);
  auto* region = static_cast<uint8_t*>(::mmap(nullptr, kRegionBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
  ASSERT_NE(region, MAP_FAILED);
  uint16_t version = 1, desc_num = testing::kRingSize;
  std::memcpy(region + 8, &version, 2);
  std::memcpy(region + 10, &desc_num, 2);
  fe.SetInflightFd(fd, kRegionBytes);
  fe.SetMemTable();
  fe.SetUpRing(0);
  std::atomic<bool> done{false};
  std::thread flipper([&] {
    auto* field = reinterpret_cast<uint16_t*>(region + 10);
    for (uint32_t i = 0; !done.load(std::memory_order_relaxed); i++)
      __atomic_store_n(field, (i & 1) ? uint16_t{0xffff} : testing::kRingSize, __ATOMIC_RELAXED);
  });
  uint64_t index = 0;
  for (int i = 0; i < 300; i++) {
    uint32_t state[2] = {0, 0};
    ASSERT_TRUE(fe.Send(11, state, 8));  // GET_VRING_BASE: stops the queue
    ASSERT_TRUE(fe.Receive(11));
    fe.SendAcked(12, &index, 8, fe.kick_fd(0));  // SET_VRING_KICK: restarts it (refused if it read 65535)
  }
  done = true;
  flipper.join();
  std::memcpy(region + 10, &desc_num, 2);
  uint32_t state[2] = {0, 0};
  ASSERT_TRUE(fe.Send(11, state, 8));
  ASSERT_TRUE(fe.Receive(11));
  EXPECT_EQ(fe.SendAcked(12, &index, 8, fe.kick_fd(0)), 0u);
  uint8_t* out = fe.Allocate(4096);
  EXPECT_EQ(Run(fe, 0, 1, 0, out, 4096, false), kOk);
  ::munmap(region, kRegionBytes);
  ::close(fd);
}


// Issue 12 item 4c: a hostile guest fills its ring with 32 MiB writes, all
// of the same 32 MiB of guest memory, against a disk that stalls. Each
// taken request holds a 32 MiB bounce buffer: without a bound the queue
// takes all 64 (2 GiB). With the per-queue budget (64 MiB) it takes two,
// parks the third and stops popping the ring until completions free room.
// Measured by what reaches the disk and by the budget's counters, not by
// timing.
TEST_F(VhostBlkTest, AStalledDiskHoldsNoMoreThanTheInflightBudget) {
  constexpr uint64_t kRequest = 32 * kMiB, kQueueBudget = kDefaultQueueInflightBytes;
  constexpr uint16_t kRequests = testing::kRingSize;
  static_assert(kQueueBudget == 2 * kRequest);
  Volume* big = pool_.set().CreateVolume("big", kRequest).value();
  shared_budget_ = std::make_unique<InflightBudget>(kDefaultDaemonInflightBytes);
  VhostExportOptions options{socket_, 1, false, "hostile"};
  options.shared_budget = shared_budget_.get();
  auto started = VhostBlkExport::Start(*big, options, [this] { return pool_.device().CreateQueue(64); });
  ASSERT_TRUE(started.ok()) << started.status().ToString();
  export_ = std::move(started).value();
  TestFrontEnd fe(socket_, 1, kRequest + 4 * kMiB);
  fe.Negotiate();
  uint8_t* data = fe.Allocate(kRequest);
  std::memset(data, 0x5c, kRequest);
  std::vector<uint8_t*> statuses;
  for (uint16_t i = 0; i < kRequests; i++) {  // one descriptor each: an indirect table
    uint8_t* header = fe.Allocate(16);
    uint32_t type = 1;
    std::memcpy(header, &type, 4);
    uint8_t* status = fe.Allocate(1);
    *status = 0xff;
    statuses.push_back(status);
    auto* table = reinterpret_cast<testing::TestDesc*>(fe.Allocate(48));
    table[0] = {fe.Gpa(header), 16, 1, 1};
    table[1] = {fe.Gpa(data), static_cast<uint32_t>(kRequest), 1, 2};
    table[2] = {fe.Gpa(status), 1, 2, 0};
    fe.Desc(0)[i] = {fe.Gpa(table), 48, 4, 0};
  }
  FaultDevice& disk = pool_.device();
  disk.HoldCompletions();
  struct Release {
    FaultDevice& disk;
    ~Release() { disk.ReleaseCompletions(); }
  } release{disk};
  uint64_t anon_before = AnonRssBytes();
  for (uint16_t i = 0; i < kRequests; i++) fe.Publish(0, i);
  // Wait until two requests reach the disk, then give a queue that would
  // take more the time to do it.
  for (int i = 0; i < 4000 && disk.queued_bytes() < 2 * kRequest; i++)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ASSERT_LE(disk.queued_bytes(), kQueueBudget);
  EXPECT_EQ(disk.queued_bytes(), 2 * kRequest);
  const InflightBudget& budget = *shared_budget_;  // one queue: the same bytes as its own budget
  EXPECT_EQ(budget.in_flight(), 2 * kRequest);
  EXPECT_LE(budget.peak(), kQueueBudget);
  // The bounce buffers are anonymous memory: two of 32 MiB, and little else
  // (the sanitizer build adds about 12 MiB of shadow and red zones).
  uint64_t anon_now = AnonRssBytes();
  uint64_t anon_growth = anon_now > anon_before ? anon_now - anon_before : 0;
  EXPECT_LE(anon_growth, kQueueBudget + 32 * kMiB);
  std::printf("held: %llu MiB queued on the disk, %llu MiB in the budget (peak %llu MiB), anonymous RSS +%llu MiB\n",
              static_cast<unsigned long long>(disk.queued_bytes() / kMiB),
              static_cast<unsigned long long>(budget.in_flight() / kMiB),
              static_cast<unsigned long long>(budget.peak() / kMiB),
              static_cast<unsigned long long>(anon_growth / kMiB));
  // Two in flight and one parked were taken. The guest takes back what was
  // not (no guest may, but no back-end notices while it takes nothing),
  // which keeps the rest of the test short.
  fe.SetAvailIdx(0, 3);
  disk.ReleaseCompletions();
  std::set<uint32_t> returned;
  for (int i = 0; i < 3; i++) {
    auto used = fe.WaitUsed(0);
    ASSERT_TRUE(used);
    returned.insert(used->first);
  }
  EXPECT_EQ(returned, (std::set<uint32_t>{0, 1, 2}));
  for (int i = 0; i < 3; i++) EXPECT_EQ(*statuses[i], kOk);
  EXPECT_FALSE(fe.WaitUsed(0, 300));
  EXPECT_EQ(pool_.Read(*big, kRequest - 4096, 4096).value(), std::vector<uint8_t>(4096, 0x5c));
  EXPECT_EQ(budget.in_flight(), 0u);
  EXPECT_LE(budget.peak(), kQueueBudget);
}

// The daemon's budget is shared: two queues, each allowed 64 MiB, together
// hold no more than the shared 4 MiB, and every request still completes
// once the disk moves again.
TEST_F(VhostBlkTest, QueuesShareTheDaemonBudget) {
  constexpr uint64_t kRequest = kMiB, kShared = 4 * kMiB;
  constexpr uint16_t kRequests = 8;  // per queue: 16 MiB in all, the volume's size
  shared_budget_ = std::make_unique<InflightBudget>(kShared);
  VhostExportOptions options{socket_, 2, false, "shared"};
  options.shared_budget = shared_budget_.get();
  auto started = VhostBlkExport::Start(*volume_, options, [this] { return pool_.device().CreateQueue(64); });
  ASSERT_TRUE(started.ok()) << started.status().ToString();
  export_ = std::move(started).value();
  TestFrontEnd fe(socket_, 2);
  fe.Negotiate();
  FaultDevice& disk = pool_.device();
  disk.HoldCompletions();
  struct Release {
    FaultDevice& disk;
    ~Release() { disk.ReleaseCompletions(); }
  } release{disk};
  std::vector<uint8_t*> statuses;
  for (uint32_t q = 0; q < 2; q++) {
    uint8_t* data = fe.Allocate(kRequest);
    std::memset(data, 0x10 + q, kRequest);
    for (uint16_t i = 0; i < kRequests; i++) {
      uint16_t head = static_cast<uint16_t>(i * 3);
      statuses.push_back(fe.BuildRequest(q, head, 1, (q * kRequests + i) * (kRequest / 512), data, kRequest, false));
      fe.Publish(q, head);
    }
  }
  for (int i = 0; i < 4000 && shared_budget_->in_flight() < kShared; i++)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(shared_budget_->in_flight(), kShared);
  EXPECT_LE(disk.queued_bytes(), kShared);
  EXPECT_GT(shared_budget_->waits(), 0u);
  disk.ReleaseCompletions();
  for (uint32_t q = 0; q < 2; q++)
    for (uint16_t i = 0; i < kRequests; i++) ASSERT_TRUE(fe.WaitUsed(q)) << "queue " << q << " request " << i;
  for (uint8_t* status : statuses) EXPECT_EQ(*status, kOk);
  EXPECT_EQ(shared_budget_->in_flight(), 0u);
  EXPECT_EQ(shared_budget_->peak(), kShared);
  EXPECT_EQ(pool_.Read(*volume_, (2 * kRequests - 1) * kRequest, 4096).value(), std::vector<uint8_t>(4096, 0x11));
}

}  // namespace
}  // namespace edgestor::vhost
