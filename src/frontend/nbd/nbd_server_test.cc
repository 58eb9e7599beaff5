// NbdServer: listening, connection limits, stopping, and the lifetime of
// requests still in flight when a client vanishes or the server stops.
#include <gtest/gtest.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <thread>

#include "frontend/nbd/nbd_test_support.h"

namespace edgestor::testing {
namespace {

// Waits until the server has handed `n` device requests to its queue.
bool WaitSubmitted(IoGate& gate, uint64_t n) {
  for (int i = 0; i < kClientTimeoutMs / 5 && gate.submitted.load() < n; i++) ::usleep(5'000);
  return gate.submitted.load() >= n;
}

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
}

TEST(NbdServer, ReplacesAStaleSocketButNotALiveOne) {
  NbdServerHarness h;
  TestExportProvider provider(h.pool());
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
  TestExportProvider provider(h.pool());
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
  TestExportProvider provider(pool);
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

}  // namespace
}  // namespace edgestor::testing
