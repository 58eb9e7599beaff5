// NBD transmission phase: commands, their errors, and what a misbehaving
// client can and cannot do to the server and to other clients.
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <map>
#include <set>
#include <thread>

#include "frontend/nbd/nbd_socket.h"
#include "frontend/nbd/nbd_test_support.h"

namespace edgestor::testing {
namespace {

constexpr uint32_t kHoleZero = 3;
constexpr uint32_t kRequestMagic = 0x25609513;
constexpr size_t kRequestBytes = 28;

class NbdTransmissionTest : public ::testing::TestWithParam<bool> {
 protected:
  bool structured() const { return GetParam(); }
};

TEST_P(NbdTransmissionTest, WrittenDataReadsBack) {
  NbdServerHarness h;
  auto c = h.Open("vol", structured(), structured());
  auto data = Pattern(256 * 1024, 5);
  ASSERT_EQ(c->Write(3 * kMiB + 8192, data), 0u);
  std::vector<uint8_t> back;
  ASSERT_EQ(c->Read(3 * kMiB + 8192, static_cast<uint32_t>(data.size()), &back), 0u);
  EXPECT_EQ(back, data);
  // 512-byte granularity works too (the engine's read-modify-write path).
  auto small = Pattern(512, 9);
  ASSERT_EQ(c->Write(3 * kMiB + 8192 + 1536, small), 0u);
  ASSERT_EQ(c->Read(3 * kMiB + 8192 + 1536, 512, &back), 0u);
  EXPECT_EQ(back, small);
}

TEST_P(NbdTransmissionTest, ReadAndWritePastTheEndFailWithTheSpecsErrors) {
  NbdServerHarness h;
  auto c = h.Open("vol", structured(), structured());
  std::vector<uint8_t> data;
  EXPECT_EQ(c->Read(16 * kMiB - 4096, 8192, &data), kEinval);
  EXPECT_EQ(c->Read(~0ull - 4095, 4096, &data), kEinval);  // offset + length overflows
  EXPECT_EQ(c->Write(16 * kMiB, Pattern(4096, 1)), kEnospc);
  EXPECT_EQ(c->Call(kCmdWriteZeroes, 0, 16 * kMiB - 512, 1024), kEnospc);
  EXPECT_EQ(c->Call(kCmdTrim, 0, 16 * kMiB, 4096), kEinval);
  EXPECT_EQ(c->Read(16 * kMiB - 4096, 4096, &data), 0u);  // the connection goes on
}

// A client that did not ask for NBD_INFO_BLOCK_SIZE in its NBD_OPT_GO agreed
// to no block size: the protocol's default minimum is 1 byte.
TEST_P(NbdTransmissionTest, ClientThatAgreedToNoBlockSizeIsServedAtByteGranularity) {
  NbdServerHarness h;
  auto c = h.Connect();
  ASSERT_TRUE(c && c->Go("vol", structured(), structured(), nullptr, /*request_block_size=*/false));
  ASSERT_EQ(c->Write(1, {1, 1, 1}), 0u);  // qemu-io's "write -P 1 1 3"
  ASSERT_EQ(c->Write(4095, {7, 8}), 0u);  // across a 4 KiB block boundary
  ASSERT_EQ(c->Call(kCmdWriteZeroes, 0, 2, 1), 0u);
  ASSERT_EQ(c->Write(8000, Pattern(1000, 4)), 0u);
  ASSERT_EQ(c->Call(kCmdTrim, 0, 8100, 7), 0u);
  std::vector<uint8_t> expected(16384, 0);
  expected[1] = 1, expected[3] = 1, expected[4095] = 7, expected[4096] = 8;
  auto p = Pattern(1000, 4);
  std::copy(p.begin(), p.end(), expected.begin() + 8000);
  std::fill(expected.begin() + 8100, expected.begin() + 8107, 0);
  std::vector<uint8_t> data;
  ASSERT_EQ(c->Read(0, 16384, &data), 0u);
  EXPECT_EQ(data, expected);
  ASSERT_EQ(c->Read(4094, 5, &data), 0u);  // an odd read: exactly its 5 bytes come back
  EXPECT_EQ(data, std::vector<uint8_t>(expected.begin() + 4094, expected.begin() + 4099));
  ASSERT_EQ(c->Read(1, 2, &data), 0u);
  EXPECT_EQ(data, std::vector<uint8_t>({1, 0}));
  // The end of the export still bounds every request.
  EXPECT_EQ(c->Read(16 * kMiB - 1, 2, &data), kEinval);
  EXPECT_EQ(c->Write(16 * kMiB - 1, {1, 2}), kEnospc);
}

// Asking in NBD_OPT_INFO only learns the sizes; it commits to nothing.
TEST(NbdTransmission, BlockSizesAskedInInfoOnlyDoNotBindTheClient) {
  NbdServerHarness h;
  auto c = h.Connect();
  ASSERT_TRUE(c && c->Greet());
  std::vector<OptionReply> replies;
  ASSERT_EQ(c->Option(kOptInfo, NbdTestClient::InfoRequest("vol", {3}), &replies), kRepAck);
  ExportInfo info;
  NbdTestClient::ParseInfo(replies, &info);
  EXPECT_EQ(info.min_block, 512u);
  ASSERT_EQ(c->Option(kOptGo, NbdTestClient::InfoRequest("vol", {})), kRepAck);
  std::vector<uint8_t> data;
  ASSERT_EQ(c->Write(100, {9, 9, 9, 9, 9}), 0u);
  ASSERT_EQ(c->Read(99, 7, &data), 0u);
  EXPECT_EQ(data, std::vector<uint8_t>({0, 9, 9, 9, 9, 9, 0}));
}

// NBD_OPT_EXPORT_NAME cannot agree to sizes: the oldest clients (the NBD
// reference project's test client among them) send any byte range, and a
// simple-reply READ that failed would leave them waiting for its data.
TEST(NbdTransmission, ExportNameClientIsServedAtByteGranularity) {
  NbdServerHarness h;
  auto c = h.Connect();
  ASSERT_TRUE(c && c->ExportName("vol"));
  ASSERT_EQ(c->Write(513, Pattern(1023, 6)), 0u);
  std::vector<uint8_t> data;
  ASSERT_EQ(c->Read(513, 1023, &data), 0u);
  EXPECT_EQ(data, Pattern(1023, 6));
  ASSERT_EQ(c->Read(512, 3, &data), 0u);
  EXPECT_EQ(data, std::vector<uint8_t>({0, Pattern(2, 6)[0], Pattern(2, 6)[1]}));
}

// A client that asked for NBD_INFO_BLOCK_SIZE in its NBD_OPT_GO agreed to
// the 512-byte minimum; what breaks it is EINVAL (Open() asks for it).
TEST_P(NbdTransmissionTest, UnknownCommandsFlagsAndUnalignedRequestsAreEinval) {
  NbdServerHarness h;
  auto c = h.Open("vol", structured(), structured());
  std::vector<uint8_t> data;
  EXPECT_EQ(c->Call(42, 0, 0, 4096), kEinval);
  EXPECT_EQ(c->Call(5, 0, 0, 4096), kEinval);  // NBD_CMD_CACHE is not advertised
  EXPECT_EQ(c->Call(kCmdFlush, 0x100, 0, 0), kEinval);
  EXPECT_EQ(c->Call(kCmdTrim, kFlagReqOne, 0, 4096), kEinval);
  EXPECT_EQ(c->Read(100, 512, &data), kEinval);
  EXPECT_EQ(c->Write(4096, Pattern(1000, 2)), kEinval);  // the payload is consumed all the same
  EXPECT_EQ(c->Call(kCmdTrim, 0, 4096, 100), kEinval);
  EXPECT_EQ(c->Call(kCmdWriteZeroes, 0, 1, 512), kEinval);
  ASSERT_EQ(c->Read(4096, 4096, &data), 0u);
  EXPECT_EQ(data, std::vector<uint8_t>(4096, 0));  // the refused write changed nothing
  EXPECT_EQ(c->Write(4096, Pattern(4096, 2)), 0u);
}

TEST_P(NbdTransmissionTest, ZeroLengthRequestsSucceedWithoutEffect) {
  NbdServerHarness h;
  auto c = h.Open("vol", structured(), structured());
  std::vector<uint8_t> data;
  EXPECT_EQ(c->Read(4096, 0, &data), 0u);
  EXPECT_TRUE(data.empty());
  EXPECT_EQ(c->Write(4096, {}), 0u);
  EXPECT_EQ(c->Call(kCmdTrim, 0, 4096, 0), 0u);
  EXPECT_EQ(c->Call(kCmdWriteZeroes, 0, 4096, 0), 0u);
}

TEST_P(NbdTransmissionTest, OversizedReadIsEinvalAndOversizedWriteDisconnects) {
  NbdServerHarness h;
  auto c = h.Open("vol", structured(), structured());
  std::vector<uint8_t> data;
  EXPECT_EQ(c->Read(0, 33 * kMiB, &data), kEinval);
  ASSERT_TRUE(c->SendRequest(kCmdWrite, 0, 7, 0, 0x80000000u));  // 2 GiB promised, never sent
  uint64_t cookie = 0;
  EXPECT_EQ(c->ReadReply(&cookie), kEinval);
  EXPECT_EQ(cookie, 7u);
  EXPECT_TRUE(c->WaitClosed());
  EXPECT_TRUE(h.WaitUnpinned());
}

TEST_P(NbdTransmissionTest, FlushAndFuaMakeWritesDurable) {
  NbdServerHarness h;
  auto c = h.Open("vol", structured(), structured());
  ASSERT_EQ(c->Write(0, Pattern(65536, 3)), 0u);
  EXPECT_GT(h.pool().device().unflushed_writes(), 0u);
  ASSERT_EQ(c->Call(kCmdFlush, 0, 0, 0), 0u);
  EXPECT_EQ(h.pool().device().unflushed_writes(), 0u);
  ASSERT_EQ(c->Write(kMiB, Pattern(4096, 4), kFlagFua), 0u);
  EXPECT_EQ(h.pool().device().unflushed_writes(), 0u);
  ASSERT_EQ(c->Call(kCmdWriteZeroes, kFlagFua, 0, 4096), 0u);
  EXPECT_EQ(h.pool().device().unflushed_writes(), 0u);
}

TEST_P(NbdTransmissionTest, DeviceErrorIsEioForThatRequestOnly) {
  NbdServerHarness h;
  auto c = h.Open("vol", structured(), structured());
  ASSERT_EQ(c->Write(0, Pattern(65536, 3), kFlagFua), 0u);
  h.pool().device().InjectError(0, h.pool().device().size());
  std::vector<uint8_t> data;
  EXPECT_EQ(c->Read(0, 65536, &data), kEio);
  h.pool().device().ClearErrors();
  EXPECT_EQ(c->Read(0, 65536, &data), 0u);
  EXPECT_EQ(data, Pattern(65536, 3));
}

// Requests written back to back in one send, more bytes than the server
// reads at once, so that some arrive cut at the end of a read: writes with
// their payloads, then more read headers than its buffer holds.
TEST_P(NbdTransmissionTest, RequestsSentTogetherInOneSendAreAllAnswered) {
  NbdServerHarness h;
  auto c = h.Open("vol", structured(), structured());
  constexpr uint64_t kWrites = 40;
  Bytes writes;
  for (uint64_t i = 0; i < kWrites; i++) {
    writes.U32(kRequestMagic).U16(0).U16(kCmdWrite).U64(i).U64(i * 4096).U32(4096);
    auto payload = Pattern(4096, static_cast<uint8_t>(i));
    writes.v.insert(writes.v.end(), payload.begin(), payload.end());
  }
  writes.U32(kRequestMagic).U16(0).U16(kCmdFlush).U64(kWrites).U64(0).U32(0);
  ASSERT_TRUE(c->Send(writes.v));
  std::set<uint64_t> answered;
  for (uint64_t i = 0; i <= kWrites; i++) {
    uint64_t cookie = 0;
    ASSERT_EQ(c->ReadReply(&cookie), 0u);
    answered.insert(cookie);
  }
  EXPECT_EQ(answered.size(), kWrites + 1);

  const uint64_t reads = nbd::SocketReader::kBufferBytes / kRequestBytes + 100;
  Bytes headers;
  for (uint64_t i = 0; i < reads; i++)
    headers.U32(kRequestMagic).U16(0).U16(kCmdRead).U64(i).U64(i % kWrites * 4096).U32(4096);
  ASSERT_TRUE(c->Send(headers.v));
  answered.clear();
  for (uint64_t i = 0; i < reads; i++) {
    uint64_t cookie = 0;
    std::vector<uint8_t> block;
    ASSERT_EQ(c->ReadReply(&cookie, 4096, &block), 0u);
    ASSERT_EQ(block, Pattern(4096, static_cast<uint8_t>(cookie % kWrites))) << cookie;
    answered.insert(cookie);
  }
  EXPECT_EQ(answered.size(), reads);
}

INSTANTIATE_TEST_SUITE_P(SimpleAndStructured, NbdTransmissionTest, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "Structured" : "Simple"; });

TEST_P(NbdTransmissionTest, SnapshotIsAReadOnlyExportRefusingChangesWithEperm) {
  NbdServerHarness h;
  ASSERT_EQ(h.Open("vol", structured(), false)->Write(0, Pattern(65536, 3)), 0u);
  ASSERT_TRUE(h.pool().set().CreateSnapshot("vol", "s1").ok());
  ASSERT_EQ(h.Open("vol", structured(), false)->Write(0, Pattern(65536, 4)), 0u);
  auto c = h.Connect();
  ExportInfo info;
  ASSERT_TRUE(c->Go("vol@s1", structured(), structured(), &info));
  EXPECT_TRUE(info.flags & 2);            // NBD_FLAG_READ_ONLY
  EXPECT_FALSE(info.flags & (32 | 64));   // neither SEND_TRIM nor SEND_WRITE_ZEROES
  std::vector<uint8_t> data;
  ASSERT_EQ(c->Read(0, 65536, &data), 0u);
  EXPECT_EQ(data, Pattern(65536, 3));     // the content when the snapshot was taken
  EXPECT_EQ(c->Write(0, Pattern(4096, 5)), kEperm);  // the payload is consumed all the same
  EXPECT_EQ(c->Call(kCmdTrim, 0, 0, 4096), kEperm);
  EXPECT_EQ(c->Call(kCmdWriteZeroes, 0, 0, 4096), kEperm);
  EXPECT_EQ(c->Call(kCmdFlush, 0, 0, 0), 0u);
  ASSERT_EQ(c->Read(0, 65536, &data), 0u);
  EXPECT_EQ(data, Pattern(65536, 3));
  ASSERT_EQ(h.Open("vol", structured(), false)->Read(0, 65536, &data), 0u);
  EXPECT_EQ(data, Pattern(65536, 4));     // the volume itself stays writable
}

TEST(NbdTransmission, TrimLeavesAHoleThatBlockStatusReports) {
  NbdServerHarness h;
  auto c = h.Open();
  ASSERT_EQ(c->Write(kMiB, Pattern(kMiB, 1)), 0u);
  std::vector<Extent> extents;
  ASSERT_EQ(c->BlockStatus(0, 4 * kMiB, &extents), 0u);
  ASSERT_EQ(extents.size(), 3u);
  EXPECT_EQ(extents[0].length, kMiB);
  EXPECT_EQ(extents[0].flags, kHoleZero);
  EXPECT_EQ(extents[1].length, kMiB);
  EXPECT_EQ(extents[1].flags, 0u);
  EXPECT_EQ(extents[2].flags, kHoleZero);

  ASSERT_EQ(c->Call(kCmdTrim, 0, kMiB, 512 * 1024), 0u);
  ASSERT_EQ(c->BlockStatus(kMiB, kMiB, &extents), 0u);
  ASSERT_EQ(extents.size(), 2u);
  EXPECT_EQ(extents[0].length, 512 * 1024u);
  EXPECT_EQ(extents[0].flags, kHoleZero);
  EXPECT_EQ(extents[1].flags, 0u);
  std::vector<uint8_t> data;
  ASSERT_EQ(c->Read(kMiB, 512 * 1024, &data), 0u);
  EXPECT_EQ(data, std::vector<uint8_t>(512 * 1024, 0));
}

TEST(NbdTransmission, BlockStatusWithReqOneGivesOneExtentWithinTheRequest) {
  NbdServerHarness h;
  auto c = h.Open();
  ASSERT_EQ(c->Write(65536, Pattern(65536, 1)), 0u);
  std::vector<Extent> extents;
  ASSERT_EQ(c->BlockStatus(0, 8192, &extents, kFlagReqOne), 0u);
  ASSERT_EQ(extents.size(), 1u);
  EXPECT_EQ(extents[0].length, 8192u);
  EXPECT_EQ(extents[0].flags, kHoleZero);
  ASSERT_EQ(c->BlockStatus(0, 16 * kMiB, &extents, kFlagReqOne), 0u);
  ASSERT_EQ(extents.size(), 1u);
  EXPECT_EQ(extents[0].length, 65536u);
  EXPECT_EQ(c->BlockStatus(16 * kMiB, 4096, &extents), kEinval);
  EXPECT_EQ(c->BlockStatus(0, 0, &extents), kEinval);
}

TEST(NbdTransmission, BlockStatusWithoutMetaContextIsEinval) {
  NbdServerHarness h;
  auto c = h.Open("vol", /*structured=*/true, /*meta=*/false);
  std::vector<Extent> extents;
  EXPECT_EQ(c->BlockStatus(0, 4096, &extents), kEinval);
}

TEST(NbdTransmission, WriteZeroesReadsZerosWithEveryFlag) {
  NbdServerHarness h;
  auto c = h.Open();
  ASSERT_EQ(c->Write(0, Pattern(256 * 1024, 8)), 0u);
  ASSERT_EQ(c->Call(kCmdWriteZeroes, 0, 4096, 8192), 0u);
  ASSERT_EQ(c->Call(kCmdWriteZeroes, kFlagNoHole, 65536, 65536), 0u);
  ASSERT_EQ(c->Call(kCmdWriteZeroes, kFlagFastZero, 131072 + 512, 1024), 0u);
  std::vector<uint8_t> data, expect = Pattern(256 * 1024, 8);
  std::fill(expect.begin() + 4096, expect.begin() + 12288, 0);
  std::fill(expect.begin() + 65536, expect.begin() + 131072, 0);
  std::fill(expect.begin() + 131072 + 512, expect.begin() + 131072 + 1536, 0);
  ASSERT_EQ(c->Read(0, 256 * 1024, &data), 0u);
  EXPECT_EQ(data, expect);
}

TEST(NbdTransmission, WriteOverTheConfiguredLimitIsSkippedWithEinval) {
  NbdServerHarness h(NbdServerOptions{.max_request_bytes = 1 << 20});
  auto c = h.Open();
  EXPECT_EQ(c->Write(0, Pattern(2 * kMiB, 1)), kEinval);
  EXPECT_EQ(c->Write(0, Pattern(kMiB, 1)), 0u);
}

TEST(NbdTransmission, PoolFullGivesEnospcAndKeepsWhatWasWritten) {
  NbdServerHarness h({}, 16 * kMiB);  // less pool than the 16 MiB volume needs
  auto c = h.Open();
  uint32_t error = 0;
  uint64_t written = 0;
  for (; written < 16 * kMiB && (error = c->Write(written, Pattern(kMiB, 7))) == 0; written += kMiB) {
  }
  EXPECT_EQ(error, kEnospc);
  ASSERT_GT(written, 0u);
  std::vector<uint8_t> data;
  ASSERT_EQ(c->Read(0, kMiB, &data), 0u);
  EXPECT_EQ(data, Pattern(kMiB, 7));
  ASSERT_EQ(c->Call(kCmdTrim, 0, 0, static_cast<uint32_t>(written)), 0u);
  ASSERT_EQ(c->Call(kCmdFlush, 0, 0, 0), 0u);
  EXPECT_EQ(c->Write(0, Pattern(kMiB, 7)), 0u);  // space came back
}

TEST(NbdTransmission, PipelinedRequestsAreAllAnswered) {
  NbdServerHarness h(NbdServerOptions{.queue_depth = 8});
  auto c = h.Open();
  constexpr int kRequests = 100;
  for (uint64_t i = 0; i < kRequests; i++) ASSERT_TRUE(c->SendRequest(kCmdWrite, 0, 1000 + i, i * 8192, 4096, Pattern(4096, i)));
  std::set<uint64_t> answered;
  for (int i = 0; i < kRequests; i++) {
    uint64_t cookie = 0;
    ASSERT_EQ(c->ReadReply(&cookie), 0u);
    answered.insert(cookie);
  }
  EXPECT_EQ(answered.size(), static_cast<size_t>(kRequests));
  std::vector<uint8_t> data;
  ASSERT_EQ(c->Read(99 * 8192, 4096, &data), 0u);
  EXPECT_EQ(data, Pattern(4096, 99));
}

// Request headers sent a byte at a time: with nothing in flight, and while
// another request is in flight (which the server serves meanwhile).
TEST(NbdTransmission, RequestHeaderSentOneByteAtATimeIsReassembled) {
  NbdServerHarness h;
  auto c = h.Open();
  ASSERT_EQ(c->Write(0, Pattern(8192, 4)), 0u);
  Bytes write;
  write.U32(kRequestMagic).U16(0).U16(kCmdWrite).U64(1).U64(65536).U32(4096);
  for (uint8_t byte : write.v) ASSERT_TRUE(c->SendRaw(&byte, 1));
  ASSERT_TRUE(c->Send(Pattern(4096, 6)));
  uint64_t cookie = 0;
  ASSERT_EQ(c->ReadReply(&cookie), 0u);
  EXPECT_EQ(cookie, 1u);

  h.gate().Close();
  uint64_t before = h.gate().submitted.load();
  ASSERT_TRUE(c->SendRequest(kCmdRead, 0, 2, 0, 8192));
  ASSERT_TRUE(WaitSubmitted(h.gate(), before + 1));
  Bytes read;
  read.U32(kRequestMagic).U16(0).U16(kCmdRead).U64(3).U64(65536).U32(4096);
  for (uint8_t byte : read.v) {
    ASSERT_TRUE(c->SendRaw(&byte, 1));
    ::usleep(1'000);  // so that the server sees each byte on its own
  }
  ASSERT_TRUE(WaitSubmitted(h.gate(), before + 2));  // while the first is held
  h.gate().Open();
  std::map<uint64_t, std::vector<uint8_t>> data;
  for (int i = 0; i < 2; i++) {
    std::vector<uint8_t> block;
    ASSERT_EQ(c->ReadReply(&cookie, 0, &block), 0u);
    data[cookie] = block;
  }
  EXPECT_EQ(data[2], Pattern(8192, 4));
  EXPECT_EQ(data[3], Pattern(4096, 6));
}

// The server never waits for a payload: while a write's payload is still
// arriving, the reply to an earlier read leaves. (A client is free to wait
// for that reply before it sends the rest.)
TEST(NbdTransmission, ReplyLeavesWhileAWritePayloadIsStillArriving) {
  NbdServerHarness h;
  auto c = h.Open();
  ASSERT_EQ(c->Write(0, Pattern(4096, 3)), 0u);
  Bytes both;
  both.U32(kRequestMagic).U16(0).U16(kCmdRead).U64(1).U64(0).U32(4096);
  both.U32(kRequestMagic).U16(0).U16(kCmdWrite).U64(2).U64(8192).U32(8192);
  auto payload = Pattern(8192, 8);
  both.v.insert(both.v.end(), payload.begin(), payload.begin() + 3000);
  ASSERT_TRUE(c->Send(both.v));
  uint64_t cookie = 0;
  std::vector<uint8_t> block;
  ASSERT_EQ(c->ReadReply(&cookie, 4096, &block), 0u);
  EXPECT_EQ(cookie, 1u);
  EXPECT_EQ(block, Pattern(4096, 3));
  ASSERT_TRUE(c->SendRaw(payload.data() + 3000, payload.size() - 3000));
  ASSERT_EQ(c->ReadReply(&cookie), 0u);
  EXPECT_EQ(cookie, 2u);
  ASSERT_EQ(c->Read(8192, 8192, &block), 0u);
  EXPECT_EQ(block, payload);
}

// A client that sends and does not read its replies holds at most its
// queue depth of requests: the server takes no more until replies leave,
// then serves the rest in order.
TEST(NbdTransmission, ClientNotReadingRepliesIsHeldToItsQueueDepth) {
  constexpr uint32_t kDepth = 4;
  NbdServerHarness h(NbdServerOptions{.queue_depth = kDepth});
  auto c = h.Open();
  constexpr uint32_t kReadBytes = 1 << 20;  // far more than the socket buffers hold
  ASSERT_EQ(c->Write(0, Pattern(kReadBytes, 5)), 0u);
  const uint64_t answered_before = h.server().stats().requests.load();
  constexpr uint64_t kReads = 32;
  Bytes reads;
  for (uint64_t i = 0; i < kReads; i++) reads.U32(kRequestMagic).U16(0).U16(kCmdRead).U64(i).U64(0).U32(kReadBytes);
  ASSERT_TRUE(c->Send(reads.v));
  ::usleep(200'000);  // time to take every request it would take
  uint64_t taken = h.server().stats().requests.load() - answered_before;
  EXPECT_GE(taken, 1u);
  EXPECT_LE(taken, kDepth);
  for (uint64_t i = 0; i < kReads; i++) {
    uint64_t cookie = 0;
    std::vector<uint8_t> data;
    ASSERT_EQ(c->ReadReply(&cookie, kReadBytes, &data), 0u);
    EXPECT_EQ(cookie, i);  // one connection, completed in order here
    ASSERT_EQ(data, Pattern(kReadBytes, 5));
  }
}

TEST(NbdTransmission, DiscAnswersWhatCameBeforeAndCloses) {
  NbdServerHarness h;
  auto c = h.Open();
  ASSERT_TRUE(c->SendRequest(kCmdWrite, 0, 1, 0, 4096, Pattern(4096, 1)));
  ASSERT_TRUE(c->SendRequest(kCmdDisc, 0, 2, 0, 0));
  uint64_t cookie = 0;
  EXPECT_EQ(c->ReadReply(&cookie), 0u);
  EXPECT_EQ(cookie, 1u);
  EXPECT_TRUE(c->WaitClosed());
  EXPECT_TRUE(h.WaitUnpinned());
  auto back = h.pool().Read(*h.pool().Find("vol"), 0, 4096);
  EXPECT_EQ(back.value(), Pattern(4096, 1));
}

TEST(NbdTransmission, BadMagicDisconnectsThatClientOnly) {
  NbdServerHarness h;
  auto good = h.Open();
  auto bad = h.Open();
  ASSERT_EQ(good->Write(0, Pattern(4096, 1)), 0u);
  ASSERT_TRUE(bad->Send(Bytes().U32(0xdeadbeef).U16(0).U16(0).U64(1).U64(0).U32(4096).v));
  EXPECT_TRUE(bad->WaitClosed());
  std::vector<uint8_t> data;
  EXPECT_EQ(good->Read(0, 4096, &data), 0u);
  EXPECT_EQ(data, Pattern(4096, 1));
  EXPECT_EQ(h.server().ConnectionCount(), 1u);
}

TEST(NbdTransmission, AbruptCloseWithRequestsInFlightLosesNothingAcknowledged) {
  NbdServerHarness h;
  for (int round = 0; round < 20; round++) {
    auto c = h.Open();
    ASSERT_EQ(c->Write(0, Pattern(65536, round)), 0u);
    // As much of a burst of writes and reads as the socket takes without
    // blocking (the last request may be cut mid-payload), then gone.
    Bytes burst;
    for (uint64_t i = 0; i < 32; i++) {
      burst.U32(0x25609513).U16(0).U16(kCmdWrite).U64(i).U64(kMiB + i * 65536).U32(65536);
      auto payload = Pattern(65536, static_cast<uint8_t>(i));
      burst.v.insert(burst.v.end(), payload.begin(), payload.end());
      burst.U32(0x25609513).U16(0).U16(kCmdRead).U64(100 + i).U64(i * 65536).U32(65536);
    }
    (void)::send(c->fd(), burst.v.data(), burst.v.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    c->Close();
    ASSERT_TRUE(h.WaitUnpinned());
    auto back = h.pool().Read(*h.pool().Find("vol"), 0, 65536);
    EXPECT_EQ(back.value(), Pattern(65536, round));
  }
  EXPECT_TRUE(h.Open()->Call(kCmdFlush, 0, 0, 0) == 0u);
}

TEST(NbdTransmission, TwoConnectionsWriteInParallel) {
  NbdServerHarness h;
  auto writer = [&](int id) {
    auto c = h.Open();
    for (int i = 0; i < 64; i++) {
      uint64_t offset = (static_cast<uint64_t>(i) * 2 + id) * 65536;
      ASSERT_EQ(c->Write(offset, Pattern(65536, static_cast<uint8_t>(i * 2 + id))), 0u);
    }
    ASSERT_EQ(c->Call(kCmdFlush, 0, 0, 0), 0u);
  };
  std::thread a(writer, 0), b(writer, 1);
  a.join();
  b.join();
  auto c = h.Open();
  std::vector<uint8_t> data;
  for (int i = 0; i < 128; i++) {
    ASSERT_EQ(c->Read(static_cast<uint64_t>(i) * 65536, 65536, &data), 0u);
    EXPECT_EQ(data, Pattern(65536, static_cast<uint8_t>(i))) << "block " << i;
  }
}

}  // namespace
}  // namespace edgestor::testing
