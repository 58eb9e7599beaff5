// NbdServer: listening, connection limits, stopping, and the lifetime of
// requests still in flight when a client vanishes or the server stops.
#include <gtest/gtest.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <filesystem>
#include <set>
#include <thread>

#include "frontend/nbd/nbd_test_support.h"

namespace edgestor::testing {
namespace {

TEST(NbdServer, StopAnswersRequestsInFlightBeforeClosing) {
  NbdServerHarness h;
  auto c = h.Open();
  h.gate().Close();
  ASSERT_TRUE(c->SendRequest(kCmdWrite, 0, 77, 0, 65536, Pattern(65536, 4)));
  ASSERT_TRUE(WaitSubmitted(h.gate(), 1));
  std::atomic<bool> stopped{false};
  std::thread stopper([&] {
    h.server().Stop();
    stopped = true;
  });
  ::usleep(300'000);
  EXPECT_FALSE(stopped.load());  // the write is still in flight
  h.gate().Open();
  uint64_t cookie = 0;
  EXPECT_EQ(c->ReadReply(&cookie), 0u);
  EXPECT_EQ(cookie, 77u);
  EXPECT_TRUE(c->WaitClosed());
  stopper.join();
  EXPECT_EQ(h.provider().pins(), 0);
  EXPECT_EQ(h.pool().Read(*h.pool().Find("vol"), 0, 65536).value(), Pattern(65536, 4));
}

TEST(NbdServer, VanishedClientsRequestsFinishBeforeTheirBuffersGo) {
  NbdServerHarness h;
  auto c = h.Open();
  ASSERT_EQ(c->Write(0, Pattern(kMiB, 1)), 0u);
  h.gate().Close();
  uint64_t before = h.gate().submitted.load();
  for (uint64_t i = 0; i < 8; i++) {
    ASSERT_TRUE(c->SendRequest(kCmdRead, 0, i, i * 65536, 65536));
    ASSERT_TRUE(c->SendRequest(kCmdWrite, 0, 100 + i, kMiB + i * 65536, 65536, Pattern(65536, i)));
  }
  ASSERT_TRUE(WaitSubmitted(h.gate(), before + 16));
  c->Close();
  ::usleep(300'000);
  EXPECT_EQ(h.provider().pins(), 1);  // still draining: the I/O holds the buffers
  h.gate().Open();
  EXPECT_TRUE(h.WaitUnpinned());
  EXPECT_EQ(h.Open()->Call(kCmdFlush, 0, 0, 0), 0u);
}

// A pool in a temporary file: the io_uring data path, where device I/O is
// truly in flight in the kernel while the server goes on reading requests.
class FilePoolServer {
 public:
  FilePoolServer() {
    char tmpl[] = "/tmp/edgestor-nbd-file-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    auto device = OpenFileDevice(dir_ + "/pool.img", {.create = true, .create_size = 64 * kMiB});
    EXPECT_TRUE(device.ok()) << device.status().ToString();
    set_ = VolumeSet::Create(std::move(device).value(), {}).value();
    EXPECT_TRUE(set_->CreateVolume("vol", 32 * kMiB).ok());
    provider_ = std::make_unique<TestExportProvider>(*set_);
    server_ = std::make_unique<NbdServer>(*provider_, NbdServerOptions{});
    EXPECT_TRUE(server_->ListenUnix(dir_ + "/nbd.sock").ok());
    EXPECT_TRUE(server_->Start().ok());
  }
  ~FilePoolServer() {
    server_.reset();
    EXPECT_TRUE(set_->Close().ok());
    std::filesystem::remove_all(dir_);
  }
  std::unique_ptr<NbdTestClient> Open() {
    auto c = NbdTestClient::ConnectUnix(dir_ + "/nbd.sock");
    EXPECT_TRUE(c && c->Go("vol", true, true));
    return c;
  }
  NbdServer& server() { return *server_; }
  TestExportProvider& provider() { return *provider_; }

 private:
  std::string dir_;
  std::unique_ptr<VolumeSet> set_;
  std::unique_ptr<TestExportProvider> provider_;
  std::unique_ptr<NbdServer> server_;
};

TEST(NbdServer, PipelinedIoOnAFilePoolIsAllAnsweredAndReadsBack) {
  FilePoolServer s;
  auto c = s.Open();
  constexpr uint64_t kRequests = 64;
  for (uint64_t i = 0; i < kRequests; i++)
    ASSERT_TRUE(c->SendRequest(kCmdWrite, i % 8 == 0 ? kFlagFua : 0, i, i * 131072, 131072,
                               Pattern(131072, static_cast<uint8_t>(i))));
  std::set<uint64_t> cookies;
  for (uint64_t i = 0; i < kRequests; i++) {
    uint64_t cookie = 0;
    ASSERT_EQ(c->ReadReply(&cookie), 0u);
    cookies.insert(cookie);
  }
  EXPECT_EQ(cookies.size(), kRequests);
  ASSERT_EQ(c->Call(kCmdFlush, 0, 0, 0), 0u);
  std::vector<uint8_t> data;
  for (uint64_t i = 0; i < kRequests; i += 7) {
    ASSERT_EQ(c->Read(i * 131072, 131072, &data), 0u);
    EXPECT_EQ(data, Pattern(131072, static_cast<uint8_t>(i))) << "request " << i;
  }
}

TEST(NbdServer, ClientVanishingWithKernelIoInFlightIsHarmless) {
  FilePoolServer s;
  for (int round = 0; round < 10; round++) {
    auto c = s.Open();
    Bytes burst;
    for (uint64_t i = 0; i < 32; i++) {
      burst.U32(0x25609513).U16(0).U16(kCmdWrite).U64(i).U64(i * 262144).U32(262144);
      auto payload = Pattern(262144, static_cast<uint8_t>(i + round));
      burst.v.insert(burst.v.end(), payload.begin(), payload.end());
      burst.U32(0x25609513).U16(0).U16(kCmdRead).U64(100 + i).U64(i * 262144).U32(262144);
    }
    (void)::send(c->fd(), burst.v.data(), burst.v.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    c->Close();
  }
  for (int i = 0; i < kClientTimeoutMs / 10 && (s.provider().pins() > 0 || s.server().ConnectionCount() > 0); i++)
    ::usleep(10'000);
  EXPECT_EQ(s.provider().pins(), 0);
  EXPECT_EQ(s.Open()->Call(kCmdFlush, 0, 0, 0), 0u);
}

TEST(NbdServer, DisconnectExportClosesThatVolumesConnectionsOnly) {
  NbdServerHarness h;
  auto a = h.Open("vol");
  auto b = h.Open("vol");
  auto other = h.Open("other");
  ASSERT_EQ(a->Write(0, Pattern(4096, 1)), 0u);  // in transmission: the server knows the volume
  ASSERT_EQ(b->Write(4096, Pattern(4096, 2)), 0u);
  ASSERT_EQ(other->Write(0, Pattern(4096, 3)), 0u);
  EXPECT_EQ(h.server().DisconnectExport(h.pool().Find("vol")), 2u);
  EXPECT_TRUE(a->WaitClosed());
  EXPECT_TRUE(b->WaitClosed());
  for (int i = 0; i < kClientTimeoutMs / 10 && h.provider().pins() > 1; i++) ::usleep(10'000);
  EXPECT_EQ(h.provider().pins(), 1);
  std::vector<uint8_t> data;
  EXPECT_EQ(other->Read(0, 4096, &data), 0u);
  EXPECT_EQ(data, Pattern(4096, 3));
  EXPECT_EQ(h.server().DisconnectExport(h.pool().Find("vol")), 0u);
}

TEST(NbdServer, CountsSessionsRequestsBytesAndErrors) {
  NbdServerHarness h;
  auto c = h.Open();
  std::vector<uint8_t> data;
  std::vector<Extent> extents;
  ASSERT_EQ(c->Write(0, Pattern(4096, 1)), 0u);
  ASSERT_EQ(c->Read(0, 8192, &data), 0u);
  ASSERT_EQ(c->BlockStatus(0, 8192, &extents), 0u);
  ASSERT_EQ(c->Read(16 * kMiB, 4096, &data), kEinval);
  ASSERT_TRUE(c->Send(Bytes().U32(0xdeadbeef).U16(0).U16(0).U64(1).U64(0).U32(0).v));
  ASSERT_TRUE(c->WaitClosed());
  ASSERT_TRUE(h.WaitUnpinned());
  const NbdStats& stats = h.server().stats();
  EXPECT_EQ(stats.sessions.load(), 1u);
  EXPECT_EQ(stats.requests.load(), 4u);
  EXPECT_EQ(stats.error_replies.load(), 1u);
  EXPECT_EQ(stats.bytes_written.load(), 4096u);
  EXPECT_EQ(stats.bytes_read.load(), 8192u);
  EXPECT_EQ(stats.protocol_errors.load(), 1u);
}

TEST(NbdServer, StopClosesIdleConnectionsAndRemovesTheSocket) {
  NbdServerHarness h;
  auto c = h.Open();
  ASSERT_EQ(h.server().ConnectionCount(), 1u);
  h.server().Stop();
  EXPECT_TRUE(c->WaitClosed());
  EXPECT_EQ(h.server().ConnectionCount(), 0u);
  EXPECT_EQ(h.provider().pins(), 0);
  EXPECT_FALSE(std::filesystem::exists(h.socket()));
}

TEST(NbdServer, RefusesConnectionsBeyondTheLimit) {
  NbdServerHarness h(NbdServerOptions{.max_connections = 1});
  auto first = h.Open();
  auto second = h.Connect();
  ASSERT_TRUE(second);
  EXPECT_TRUE(second->WaitClosed());
  EXPECT_EQ(first->Call(kCmdFlush, 0, 0, 0), 0u);
  EXPECT_EQ(h.server().stats().refused_connections.load(), 1u);
}

TEST(NbdServer, ReplacesAStaleSocketButNotALiveOne) {
  NbdServerHarness h;
  TestExportProvider provider(h.pool().set());
  NbdServer second(provider, {});
  EXPECT_EQ(second.ListenUnix(h.socket()).code(), EADDRINUSE);
  int stale = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{.sun_family = AF_UNIX};
  std::string path = h.dir() + "/stale.sock";
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
  ASSERT_EQ(::bind(stale, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ::close(stale);  // the file stays, nobody listens
  EXPECT_TRUE(second.ListenUnix(path).ok());
}

TEST(NbdServer, ServesTcp) {
  NbdServerHarness h;
  TestExportProvider provider(h.pool().set());
  NbdServer tcp(provider, {});
  ASSERT_TRUE(tcp.ListenTcp("127.0.0.1:0").ok());
  ASSERT_NE(tcp.BoundTcpPort(), 0);
  ASSERT_TRUE(tcp.Start().ok());
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{.sin_family = AF_INET, .sin_port = htons(tcp.BoundTcpPort())};
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  NbdTestClient c(fd);
  ASSERT_TRUE(c.Go("other", true, true));
  ASSERT_EQ(c.Write(4096, Pattern(4096, 6)), 0u);
  std::vector<uint8_t> data;
  ASSERT_EQ(c.Read(4096, 4096, &data), 0u);
  EXPECT_EQ(data, Pattern(4096, 6));
  EXPECT_EQ(tcp.ListenTcp("no-port").code(), EBUSY);
}

TEST(NbdServer, ServeNbdConnectionRunsOnTheCallingThread) {
  TestPool pool(32 * kMiB);
  ASSERT_TRUE(pool.set().CreateVolume("vol", kMiB).ok());
  TestExportProvider provider(pool.set());
  int fds[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
  std::atomic<bool> stopping{false};
  std::thread server([&] { ServeNbdConnection(fds[1], provider, {}, stopping); });
  {
    NbdTestClient c(fds[0]);
    ASSERT_TRUE(c.Go("vol", false, false));
    ASSERT_EQ(c.Write(0, Pattern(8192, 2)), 0u);
    ASSERT_TRUE(c.SendRequest(kCmdDisc, 0, 0, 0, 0));
  }
  server.join();
  ::close(fds[1]);
  EXPECT_EQ(provider.pins(), 0);
}


// The daemon's in-flight budget is shared by every connection: over it, a
// connection reads no new request until completions free room, and
// nothing more than the budget is ever held (issue 12 item 4c).
TEST(NbdServer, ConnectionsShareTheDaemonInflightBudget) {
  InflightBudget budget(2 * kMiB);  // outlives the server
  NbdServerOptions options;
  options.shared_budget = &budget;
  NbdServerHarness h(options);
  auto a = h.Open();
  auto b = h.Open();
  h.gate().Close();
  // Senders of their own: a server that reads nothing leaves them blocked.
  auto send = [](NbdTestClient* c, uint64_t first) {
    for (uint64_t i = first; i < first + 4; i++)
      EXPECT_TRUE(c->SendRequest(kCmdWrite, 0, i, i * kMiB, kMiB, Pattern(kMiB, static_cast<uint8_t>(i))));
  };
  std::thread send_a(send, a.get(), 0), send_b(send, b.get(), 4);
  for (int i = 0; i < 2000 && budget.in_flight() < 2 * kMiB; i++) ::usleep(5'000);
  ::usleep(200'000);
  EXPECT_EQ(budget.in_flight(), 2 * kMiB);
  EXPECT_GT(budget.waits(), 0u);
  h.gate().Open();
  send_a.join();
  send_b.join();
  for (uint64_t i = 0; i < 4; i++) {
    uint64_t cookie = 0;
    EXPECT_EQ(a->ReadReply(&cookie), 0u);
    EXPECT_EQ(b->ReadReply(&cookie), 0u);
  }
  // A slot's bytes are given back just after its reply is sent.
  for (int i = 0; i < 2000 && budget.in_flight() > 0; i++) ::usleep(1'000);
  EXPECT_EQ(budget.in_flight(), 0u);
  EXPECT_EQ(budget.peak(), 2 * kMiB);
  EXPECT_EQ(h.pool().Read(*h.pool().Find("vol"), 7 * kMiB, 4096).value(), Pattern(4096, 7));
}

}  // namespace
}  // namespace edgestor::testing
