// The vhost-user-blk back-end driven by a test front-end: negotiation,
// configuration, data round trips on several queues, reconnection, and
// what a hostile guest can send.
#include <gtest/gtest.h>

#include <sys/mman.h>

#include <thread>

#include "frontend/vhost/testing/vhost_test_fixture.h"

namespace edgestor::vhost {
namespace {

using testing::kIoErr;
using testing::kMiB;
using testing::kOk;
using testing::kUnsupported;
using testing::kVolumeBytes;
using testing::TestFrontEnd;
using testing::VhostBlkTest;

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

// Data split over two descriptors: where the pieces follow each other in
// memory from an aligned start the device uses the guest's buffer itself,
// otherwise a bounce buffer; either way the bytes land and read back whole.
TEST_F(VhostBlkTest, SplitDataIsServedInPlaceOrThroughABounceBuffer) {
  StartExport();
  TestFrontEnd fe(socket_);
  fe.Negotiate();
  uint8_t* buffer = fe.Allocate(4 * 8192);  // three layouts of 8 KiB
  struct Layout {
    const char* what;
    uint8_t* first;
    uint8_t* second;
  } layouts[] = {
      {"contiguous and aligned", buffer, buffer + 4096},
      {"apart", buffer + 8192, buffer + 3 * 8192},
      {"contiguous, not aligned", buffer + 2 * 8192 + 512, buffer + 2 * 8192 + 512 + 4096},
  };
  uint64_t sector = 64;
  for (const Layout& layout : layouts) {
    SCOPED_TRACE(layout.what);
    for (int i = 0; i < 4096; i++) {
      layout.first[i] = static_cast<uint8_t>(i + sector);
      layout.second[i] = static_cast<uint8_t>(i * 5 + sector);
    }
    std::vector<uint8_t> expected(layout.first, layout.first + 4096);
    expected.insert(expected.end(), layout.second, layout.second + 4096);
    auto run = [&](uint32_t type, bool writable) {
      uint8_t* header = fe.Allocate(16);
      std::memcpy(header, &type, 4);
      std::memcpy(header + 8, &sector, 8);
      uint8_t* status = fe.Allocate(1);
      uint16_t data_flags = static_cast<uint16_t>(1 | (writable ? 2 : 0));
      testing::TestDesc* d = fe.Desc(0);
      d[0] = {fe.Gpa(header), 16, 1, 1};
      d[1] = {fe.Gpa(layout.first), 4096, data_flags, 2};
      d[2] = {fe.Gpa(layout.second), 4096, data_flags, 3};
      d[3] = {fe.Gpa(status), 1, 2, 0};
      fe.Publish(0, 0);
      auto used = fe.WaitUsed(0);
      EXPECT_TRUE(used.has_value());
      return *status;
    };
    EXPECT_EQ(run(1, false), kOk);  // write
    EXPECT_EQ(pool_.Read(*volume_, sector * 512, 8192).value(), expected);
    std::memset(layout.first, 0, 4096);
    std::memset(layout.second, 0, 4096);
    EXPECT_EQ(run(0, true), kOk);  // read back into the same buffers
    EXPECT_EQ(std::vector<uint8_t>(layout.first, layout.first + 4096),
              std::vector<uint8_t>(expected.begin(), expected.begin() + 4096));
    EXPECT_EQ(std::vector<uint8_t>(layout.second, layout.second + 4096),
              std::vector<uint8_t>(expected.begin() + 4096, expected.end()));
    sector += 64;
  }
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


}  // namespace
}  // namespace edgestor::vhost
