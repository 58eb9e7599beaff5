#include "daemon/control_server.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>

namespace edgestor {
namespace {

using nlohmann::json;

ControlServer& EchoServer() {
  static ControlServer server;
  static bool registered = [] {
    server.Register("echo", [](const json& params) -> Result<json> { return params; });
    server.Register("fail", [](const json&) -> Result<json> { return Status(ENOENT, "no such thing"); });
    server.Register("typed", [](const json& params) -> Result<json> { return json(params.at("n").get<uint64_t>() + 1); });
    return true;
  }();
  (void)registered;
  return server;
}

json Handle(const std::string& line) { return json::parse(EchoServer().HandleLine(line)); }

TEST(ControlServer, AnswersAMethodWithItsResult) {
  json reply = Handle(R"({"jsonrpc":"2.0","id":7,"method":"echo","params":{"a":1}})");
  EXPECT_EQ(reply["id"], 7);
  EXPECT_EQ(reply["result"]["a"], 1);
}

TEST(ControlServer, ReportsApplicationErrorsWithErrno) {
  json reply = Handle(R"({"jsonrpc":"2.0","id":1,"method":"fail"})");
  EXPECT_EQ(reply["error"]["code"], kRpcApplicationError);
  EXPECT_EQ(reply["error"]["message"], "no such thing");
  EXPECT_EQ(reply["error"]["data"]["errno"], ENOENT);
  EXPECT_EQ(reply["error"]["data"]["error"], "ENOENT");
}

TEST(ControlServer, RejectsMalformedRequestsWithTheRightCodes) {
  EXPECT_EQ(Handle("{not json")["error"]["code"], -32700);
  EXPECT_EQ(Handle(R"([1,2])")["error"]["code"], -32600);
  EXPECT_EQ(Handle(R"({"id":1})")["error"]["code"], -32600);
  EXPECT_EQ(Handle(R"({"id":1,"method":"nope"})")["error"]["code"], -32601);
  EXPECT_EQ(Handle(R"({"id":1,"method":"echo","params":[1]})")["error"]["code"], -32602);
  json wrong_type = Handle(R"({"id":1,"method":"typed","params":{"n":"x"}})");
  EXPECT_EQ(wrong_type["error"]["data"]["errno"], EINVAL);
  EXPECT_EQ(Handle(R"({"id":1,"method":"typed","params":{"n":41}})")["result"], 42);
}

TEST(ControlServer, ServesClientsOverAUnixSocket) {
  char dir[] = "/tmp/edgestor-control-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  std::string path = std::string(dir) + "/c.sock";
  ControlServer server;
  server.Register("echo", [](const json& params) -> Result<json> { return params; });
  server.Register("fail", [](const json&) -> Result<json> { return Status(EBUSY, "volume is busy"); });
  ASSERT_TRUE(server.Listen(path).ok());
  server.Start();
  auto ok = CallControl(path, "echo", {{"x", "y"}});
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(ok.value()["x"], "y");
  auto failed = CallControl(path, "fail", json::object());
  EXPECT_EQ(failed.status().code(), EBUSY);
  EXPECT_EQ(failed.status().message(), "volume is busy");
  // A second server on the same live socket is refused.
  ControlServer second;
  EXPECT_EQ(second.Listen(path).code(), EADDRINUSE);
  server.Stop();
  EXPECT_NE(access(path.c_str(), F_OK), 0);  // socket file removed
  EXPECT_FALSE(CallControl(path, "echo", json::object()).ok());
  rmdir(dir);
}

}  // namespace
}  // namespace edgestor
