// Limits against a hostile vhost-user front-end or guest (issue 12 item 4):
// shared memory checked against its file before it is mapped, the inflight
// header read once, and the bytes of request data in flight bounded per
// queue and across queues, with a disk that holds its completions.
#include <gtest/gtest.h>

#include <sys/mman.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <numeric>
#include <set>
#include <thread>

#include "frontend/vhost/guest_memory.h"
#include "frontend/vhost/testing/vhost_test_fixture.h"

namespace edgestor::vhost {
namespace {

using testing::kMiB;
using testing::kOk;
using testing::TestFrontEnd;
using testing::VhostBlkTest;

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
  auto started = VhostBlkExport::Start(*big, options, [this] { return pool_.set().OpenChannel(64); });
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
  std::vector<uint16_t> heads(kRequests);
  std::iota(heads.begin(), heads.end(), uint16_t{0});
  fe.PublishAll(0, heads);  // one batch: the queue sees them together
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
  // Bounce buffers are anonymous memory: at most two of 32 MiB (none when
  // the data is one aligned piece of guest memory, as here), and little
  // else (the sanitizer build adds about 12 MiB of shadow and red zones).
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
  auto started = VhostBlkExport::Start(*volume_, options, [this] { return pool_.set().OpenChannel(64); });
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
  // Each queue gets its requests as one batch: a queue with requests in
  // flight looks for new ones only when one completes (none does here).
  for (uint32_t q = 0; q < 2; q++) {
    uint8_t* data = fe.Allocate(kRequest);
    std::memset(data, 0x10 + q, kRequest);
    std::vector<uint16_t> heads;
    for (uint16_t i = 0; i < kRequests; i++) {
      uint16_t head = static_cast<uint16_t>(i * 3);
      statuses.push_back(fe.BuildRequest(q, head, 1, (q * kRequests + i) * (kRequest / 512), data, kRequest, false));
      heads.push_back(head);
    }
    fe.PublishAll(q, heads);
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
