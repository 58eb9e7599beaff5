// ControlServer: JSON-RPC 2.0 over a unix socket, one request per line.
//
// Each method is one handler function registered by name (as SPDK's RPC
// layer does). A handler returns a JSON result or a Status; the server turns
// a Status into a JSON-RPC error whose data carries the errno name, so the
// CLI can print the same clear line offline and online. Malformed input gets
// a JSON-RPC error for that request (or a disconnect for an oversized line);
// it never affects other clients. See docs/CONTROL_API.md.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/status.h"
#include "base/unix_socket.h"

namespace edgestor {

inline constexpr size_t kMaxControlLineBytes = 1 << 20;
inline constexpr size_t kMaxControlClients = 16;

class ControlServer {
 public:
  using Handler = std::function<Result<nlohmann::json>(const nlohmann::json& params)>;

  ControlServer() = default;
  ~ControlServer();

  // REQUIRES: before Start().
  void Register(const std::string& method, Handler handler);
  // Listens on `path` (ListenUnixSocket: only a stale socket is replaced),
  // with `access` deciding who may connect: the daemon's user by default.
  Status Listen(const std::string& path, const SocketAccess& access = {});
  void Start();
  void Stop();  // closes the listener and every client, joins threads, unlinks the socket

  // Handles one request line; exposed for tests and fuzzing.
  std::string HandleLine(const std::string& line);

 private:
  void AcceptLoop();
  void ServeClient(int fd);

  std::map<std::string, Handler> handlers_;
  std::string path_;
  int listen_fd_ = -1;
  std::atomic<bool> stopping_{false};
  std::thread accept_thread_;
  std::mutex mu_;
  std::condition_variable clients_gone_;
  std::vector<int> client_fds_;  // GUARDED_BY(mu_): one detached thread each
};

// The JSON-RPC error code for application errors; data.errno and
// data.error carry the POSIX error.
inline constexpr int kRpcApplicationError = -32000;

// Calls a method on a control socket (used by the CLI). Errors returned by
// the daemon come back as a Status with the daemon's errno and message.
Result<nlohmann::json> CallControl(const std::string& socket_path, const std::string& method,
                                   const nlohmann::json& params);

}  // namespace edgestor
