// NBD option haggling: what each option answers, and which mistakes end
// the session.
#include <gtest/gtest.h>

#include "frontend/nbd/nbd_test_support.h"

namespace edgestor::testing {
namespace {

constexpr uint16_t kTransmissionFlags = 1 | 4 | 8 | 32 | 64 | 256 | 2048;  // HAS_FLAGS FLUSH FUA TRIM WZ MULTI_CONN FAST_ZERO
constexpr uint16_t kFlagSendDf = 128;

TEST(NbdHandshake, GreetingAdvertisesFixedNewstyleAndNoZeroes) {
  NbdServerHarness h;
  auto c = h.Connect();
  uint16_t flags = 0;
  ASSERT_TRUE(c->Greet(3, &flags));
  EXPECT_EQ(flags, 3);
}

TEST(NbdHandshake, UnknownClientFlagsDisconnect) {
  NbdServerHarness h;
  auto c = h.Connect();
  ASSERT_TRUE(c->Greet(0x10));
  EXPECT_TRUE(c->WaitClosed());
  EXPECT_TRUE(h.WaitUnpinned());
}

TEST(NbdHandshake, ExportNameWithNoZeroesSendsSizeAndFlagsOnly) {
  NbdServerHarness h;
  auto c = h.Connect();
  ASSERT_TRUE(c->Greet(3));
  ASSERT_TRUE(c->SendOption(kOptExportName, Bytes().Str("vol").v));
  uint8_t reply[10];
  ASSERT_TRUE(c->Recv(reply, sizeof reply));
  EXPECT_EQ(GetBE(reply, 8), 16 * kMiB);
  EXPECT_EQ(GetBE(reply + 8, 2), kTransmissionFlags);
  std::vector<uint8_t> data;
  EXPECT_EQ(c->Read(0, 4096, &data), 0u);  // simple replies: the next bytes are a reply
  EXPECT_EQ(data, std::vector<uint8_t>(4096, 0));
}

TEST(NbdHandshake, ExportNameWithoutNoZeroesPadsWith124Zeroes) {
  NbdServerHarness h;
  auto c = h.Connect();
  ASSERT_TRUE(c->Greet(1));
  ASSERT_TRUE(c->SendOption(kOptExportName, Bytes().Str("other").v));
  uint8_t reply[134];
  ASSERT_TRUE(c->Recv(reply, sizeof reply));
  EXPECT_EQ(GetBE(reply, 8), 4 * kMiB);
  EXPECT_EQ(std::vector<uint8_t>(reply + 10, reply + 134), std::vector<uint8_t>(124, 0));
  EXPECT_EQ(c->Call(kCmdFlush, 0, 0, 0), 0u);
}

TEST(NbdHandshake, ExportNameOfUnknownExportDisconnects) {
  NbdServerHarness h;
  auto c = h.Connect();
  ASSERT_TRUE(c->Greet());
  ASSERT_TRUE(c->SendOption(kOptExportName, Bytes().Str("nope").v));
  EXPECT_TRUE(c->WaitClosed());
  EXPECT_TRUE(h.WaitUnpinned());
}

TEST(NbdHandshake, GoWithoutStructuredRepliesReportsExportAndBlockSizes) {
  NbdServerHarness h;
  auto c = h.Connect();
  ExportInfo info;
  ASSERT_TRUE(c->Go("vol", /*structured=*/false, /*meta=*/false, &info));
  EXPECT_EQ(info.size, 16 * kMiB);
  EXPECT_EQ(info.flags, kTransmissionFlags);
  EXPECT_EQ(info.min_block, 512u);
  EXPECT_EQ(info.preferred_block, 4096u);
  EXPECT_EQ(info.max_payload, 32 * kMiB);
  EXPECT_EQ(h.provider().pins(), 1);
}

TEST(NbdHandshake, GoWithStructuredRepliesAdvertisesDontFragment) {
  NbdServerHarness h;
  auto c = h.Connect();
  ExportInfo info;
  ASSERT_TRUE(c->Go("vol", /*structured=*/true, /*meta=*/true, &info));
  EXPECT_EQ(info.flags, kTransmissionFlags | kFlagSendDf);
}

TEST(NbdHandshake, InfoAnswersNameAndDescriptionAndStaysInHaggling) {
  NbdServerHarness h;
  auto c = h.Connect();
  ASSERT_TRUE(c->Greet());
  std::vector<OptionReply> replies;
  ASSERT_EQ(c->Option(kOptInfo, NbdTestClient::InfoRequest("other", {1, 2, 3}), &replies), kRepAck);
  ExportInfo info;
  NbdTestClient::ParseInfo(replies, &info);
  EXPECT_EQ(info.size, 4 * kMiB);
  EXPECT_EQ(info.name, "other");
  EXPECT_FALSE(info.description.empty());
  EXPECT_EQ(h.provider().pins(), 0);  // INFO does not keep the export
  EXPECT_EQ(c->Option(kOptGo, NbdTestClient::InfoRequest("other", {})), kRepAck);
  EXPECT_EQ(h.provider().pins(), 1);
}

TEST(NbdHandshake, EmptyNameIsTheDefaultExportOnlyWhenThereIsOneVolume) {
  NbdServerHarness h;
  auto c = h.Connect();
  ASSERT_TRUE(c->Greet());
  EXPECT_EQ(c->Option(kOptGo, NbdTestClient::InfoRequest("", {})), kRepErrUnknown);
  ASSERT_TRUE(h.pool().set().DeleteVolume("other").ok());
  std::vector<OptionReply> replies;
  ASSERT_EQ(c->Option(kOptGo, NbdTestClient::InfoRequest("", {}), &replies), kRepAck);
  ExportInfo info;
  NbdTestClient::ParseInfo(replies, &info);
  EXPECT_EQ(info.size, 16 * kMiB);
}

TEST(NbdHandshake, ListNamesEveryExport) {
  NbdServerHarness h;
  auto c = h.Connect();
  ASSERT_TRUE(c->Greet());
  std::vector<OptionReply> replies;
  ASSERT_EQ(c->Option(kOptList, {}, &replies), kRepAck);
  std::vector<std::string> names;
  for (const auto& r : replies) {
    ASSERT_EQ(r.type, kRepServer);
    ASSERT_GE(r.data.size(), 4u);
    ASSERT_EQ(GetBE(r.data.data(), 4), r.data.size() - 4);
    names.emplace_back(r.data.begin() + 4, r.data.end());
  }
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"other", "vol"}));
  EXPECT_EQ(c->Option(kOptList, {1, 2, 3}), kRepErrInvalid);
}

TEST(NbdHandshake, SnapshotsOpenByNameButAreNotListed) {
  NbdServerHarness h;
  ASSERT_TRUE(h.pool().set().CreateSnapshot("other", "s1").ok());
  auto c = h.Connect();
  ASSERT_TRUE(c->Greet());
  std::vector<OptionReply> listed;
  ASSERT_EQ(c->Option(kOptList, {}, &listed), kRepAck);
  EXPECT_EQ(listed.size(), 2u);  // vol and other
  std::vector<OptionReply> replies;
  ASSERT_EQ(c->Option(kOptInfo, NbdTestClient::InfoRequest("other@s1", {1}), &replies), kRepAck);
  ExportInfo info;
  NbdTestClient::ParseInfo(replies, &info);
  EXPECT_EQ(info.size, 4 * kMiB);
  EXPECT_EQ(info.name, "other@s1");
  EXPECT_EQ(info.flags, 1 | 2 | 4 | 8 | 256);  // HAS_FLAGS READ_ONLY FLUSH FUA MULTI_CONN: no TRIM, WZ, FAST_ZERO
  EXPECT_EQ(c->Option(kOptInfo, NbdTestClient::InfoRequest("other@nope", {})), kRepErrUnknown);
}

TEST(NbdHandshake, UnknownExportGivesErrUnknownAndHagglingGoesOn) {
  NbdServerHarness h;
  auto c = h.Connect();
  ASSERT_TRUE(c->Greet());
  EXPECT_EQ(c->Option(kOptGo, NbdTestClient::InfoRequest("missing", {})), kRepErrUnknown);
  EXPECT_EQ(c->Option(kOptInfo, NbdTestClient::InfoRequest("missing", {})), kRepErrUnknown);
  EXPECT_EQ(c->Option(kOptGo, NbdTestClient::InfoRequest("vol", {})), kRepAck);
}

TEST(NbdHandshake, UnknownOptionsAndTlsAreRefused) {
  NbdServerHarness h;
  auto c = h.Connect();
  ASSERT_TRUE(c->Greet());
  EXPECT_EQ(c->Option(4242, {1, 2, 3, 4}), kRepErrUnsup);
  EXPECT_EQ(c->Option(kOptStartTls, {}), kRepErrPolicy);
  EXPECT_EQ(c->Option(kOptStructured, {7}), kRepErrInvalid);
  EXPECT_EQ(c->Option(kOptGo, NbdTestClient::InfoRequest("vol", {})), kRepAck);
}

TEST(NbdHandshake, MalformedGoIsInvalid) {
  NbdServerHarness h;
  auto c = h.Connect();
  ASSERT_TRUE(c->Greet());
  EXPECT_EQ(c->Option(kOptGo, Bytes().U32(100).Str("vol").v), kRepErrInvalid);  // name runs past the data
  auto trailing = NbdTestClient::InfoRequest("vol", {});
  trailing.push_back(0);
  EXPECT_EQ(c->Option(kOptGo, trailing), kRepErrInvalid);
  EXPECT_EQ(h.provider().pins(), 0);
}

TEST(NbdHandshake, AbortIsAcknowledgedAndCloses) {
  NbdServerHarness h;
  auto c = h.Connect();
  ASSERT_TRUE(c->Greet());
  EXPECT_EQ(c->Option(kOptAbort, {}), kRepAck);
  EXPECT_TRUE(c->WaitClosed());
}

TEST(NbdHandshake, OversizedOptionGivesTooBigAndHagglingGoesOn) {
  NbdServerHarness h;
  auto c = h.Connect();
  ASSERT_TRUE(c->Greet());
  EXPECT_EQ(c->Option(kOptInfo, std::vector<uint8_t>(200 * 1024, 'x')), kRepErrTooBig);
  EXPECT_EQ(c->Option(kOptGo, NbdTestClient::InfoRequest("vol", {})), kRepAck);
}

TEST(NbdHandshake, BadOptionMagicDisconnects) {
  NbdServerHarness h;
  auto c = h.Connect();
  ASSERT_TRUE(c->Greet());
  ASSERT_TRUE(c->Send(Bytes().U64(0x1122334455667788ull).U32(kOptList).U32(0).v));
  EXPECT_TRUE(c->WaitClosed());
}

TEST(NbdHandshake, MetaContextNeedsStructuredReplies) {
  NbdServerHarness h;
  auto c = h.Connect();
  ASSERT_TRUE(c->Greet());
  EXPECT_EQ(c->Option(kOptSetMeta, NbdTestClient::MetaRequest("vol", {"base:allocation"})), kRepErrInvalid);
  EXPECT_EQ(c->Option(kOptListMeta, NbdTestClient::MetaRequest("vol", {})), kRepErrInvalid);
}

TEST(NbdHandshake, ListMetaContextOffersBaseAllocation) {
  NbdServerHarness h;
  auto c = h.Connect();
  ASSERT_TRUE(c->Greet());
  ASSERT_EQ(c->Option(kOptStructured, {}), kRepAck);
  for (auto queries : {std::vector<std::string>{}, {"base:"}, {"base:allocation", "x-other:thing"}}) {
    std::vector<OptionReply> replies;
    ASSERT_EQ(c->Option(kOptListMeta, NbdTestClient::MetaRequest("vol", queries), &replies), kRepAck);
    ASSERT_EQ(replies.size(), 1u);
    EXPECT_EQ(std::string(replies[0].data.begin() + 4, replies[0].data.end()), "base:allocation");
  }
  std::vector<OptionReply> none;
  EXPECT_EQ(c->Option(kOptListMeta, NbdTestClient::MetaRequest("vol", {"qemu:dirty-bitmap:x"}), &none), kRepAck);
  EXPECT_TRUE(none.empty());
}

TEST(NbdHandshake, SetMetaContextSelectsBaseAllocationWithNonZeroId) {
  NbdServerHarness h;
  auto c = h.Connect();
  ASSERT_TRUE(c->Greet());
  ASSERT_EQ(c->Option(kOptStructured, {}), kRepAck);
  std::vector<OptionReply> replies;
  ASSERT_EQ(c->Option(kOptSetMeta, NbdTestClient::MetaRequest("vol", {"base:", "base:allocation", "x:y"}), &replies),
            kRepAck);
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(replies[0].type, kRepMetaContext);
  EXPECT_NE(GetBE(replies[0].data.data(), 4), 0u);
  EXPECT_EQ(c->Option(kOptSetMeta, NbdTestClient::MetaRequest("missing", {"base:allocation"})), kRepErrUnknown);
  auto truncated = NbdTestClient::MetaRequest("vol", {"base:allocation"});
  truncated.pop_back();
  EXPECT_EQ(c->Option(kOptSetMeta, truncated), kRepErrInvalid);
}

TEST(NbdHandshake, BlockStatusNeedsTheContextSelectedForThatExport) {
  NbdServerHarness h;
  auto c = h.Connect();
  ASSERT_TRUE(c->Greet());
  ASSERT_EQ(c->Option(kOptStructured, {}), kRepAck);
  ASSERT_EQ(c->Option(kOptSetMeta, NbdTestClient::MetaRequest("other", {"base:allocation"})), kRepAck);
  ASSERT_EQ(c->Option(kOptGo, NbdTestClient::InfoRequest("vol", {})), kRepAck);
  c->set_structured(true);
  std::vector<Extent> extents;
  EXPECT_EQ(c->BlockStatus(0, 65536, &extents), kEinval);
}

}  // namespace
}  // namespace edgestor::testing
