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
