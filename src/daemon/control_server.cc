#include "daemon/control_server.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <spdlog/spdlog.h>

#include "base/unix_socket.h"

namespace edgestor {

using nlohmann::json;

namespace {

json RpcError(const json& id, int code, const std::string& message, const json& data = nullptr) {
  json error = {{"code", code}, {"message", message}};
  if (!data.is_null()) error["data"] = data;
  return {{"jsonrpc", "2.0"}, {"id", id}, {"error", error}};
}

const char* ErrnoName(int code) {
  switch (code) {
    case ENOENT: return "ENOENT";
    case EEXIST: return "EEXIST";
    case EINVAL: return "EINVAL";
    case ENOSPC: return "ENOSPC";
    case EBUSY: return "EBUSY";
    case EIO: return "EIO";
    case EROFS: return "EROFS";
    case EUCLEAN: return "EUCLEAN";
    default: return "EOTHER";
  }
}

}  // namespace

ControlServer::~ControlServer() { Stop(); }

void ControlServer::Register(const std::string& method, Handler handler) { handlers_[method] = std::move(handler); }

Status ControlServer::Listen(const std::string& path, const SocketAccess& access) {
  ES_ASSIGN_OR_RETURN(listen_fd_, ListenUnixSocket(path, access));
  path_ = path;
  return Status::Ok();
}

void ControlServer::Start() { accept_thread_ = std::thread([this] { AcceptLoop(); }); }

void ControlServer::Stop() {
  if (stopping_.exchange(true)) return;
  if (listen_fd_ >= 0) ::shutdown(listen_fd_, SHUT_RDWR);
  if (accept_thread_.joinable()) accept_thread_.join();
  if (listen_fd_ >= 0) ::close(listen_fd_);
  listen_fd_ = -1;
  std::unique_lock lock(mu_);
  for (int fd : client_fds_) ::shutdown(fd, SHUT_RDWR);
  clients_gone_.wait(lock, [this] { return client_fds_.empty(); });
  if (!path_.empty()) RemoveSocketFile(path_);
}

void ControlServer::AcceptLoop() {
  while (!stopping_) {
    int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (!stopping_) spdlog::error("control socket accept failed: {}", std::strerror(errno));
      return;
    }
    std::lock_guard lock(mu_);
    if (client_fds_.size() >= kMaxControlClients) {
      spdlog::warn("control socket: too many clients, refusing one");
      ::close(fd);
      continue;
    }
    client_fds_.push_back(fd);
    std::thread([this, fd] { ServeClient(fd); }).detach();
  }
}

void ControlServer::ServeClient(int fd) {
  std::string buffer;
  char chunk[4096];
  while (!stopping_) {
    ssize_t n = ::read(fd, chunk, sizeof chunk);
    if (n <= 0) break;
    buffer.append(chunk, static_cast<size_t>(n));
    size_t newline;
    bool ok = true;
    while (ok && (newline = buffer.find('\n')) != std::string::npos) {
      std::string reply = HandleLine(buffer.substr(0, newline)) + "\n";
      buffer.erase(0, newline + 1);
      ok = WriteAll(fd, reply.data(), reply.size()).ok();
    }
    if (!ok || buffer.size() > kMaxControlLineBytes) break;  // oversized request: drop this client
  }
  std::lock_guard lock(mu_);
  std::erase(client_fds_, fd);
  ::close(fd);
  clients_gone_.notify_all();
}

std::string ControlServer::HandleLine(const std::string& line) {
  json request = json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (request.is_discarded()) return RpcError(nullptr, -32700, "parse error: not JSON").dump();
  json id = request.is_object() && request.contains("id") ? request["id"] : json(nullptr);
  if (!request.is_object() || !request.contains("method") || !request["method"].is_string())
    return RpcError(id, -32600, "invalid request: needs a \"method\" string").dump();
  const std::string method = request["method"];
  json params = request.value("params", json::object());
  if (!params.is_object()) return RpcError(id, -32602, "invalid params: must be an object").dump();
  auto handler = handlers_.find(method);
  if (handler == handlers_.end()) return RpcError(id, -32601, "method not found: " + method).dump();
  Result<json> result = Status(EINVAL, "internal error");
  try {
    result = handler->second(params);
  } catch (const json::exception& e) {  // a parameter of the wrong type
    result = Status(EINVAL, std::string("invalid params: ") + e.what());
  }
  if (!result.ok()) {
    const Status& s = result.status();
    return RpcError(id, kRpcApplicationError, s.message(), {{"errno", s.code()}, {"error", ErrnoName(s.code())}}).dump();
  }
  return json{{"jsonrpc", "2.0"}, {"id", id}, {"result", result.value()}}.dump();
}

Result<json> CallControl(const std::string& socket_path, const std::string& method, const json& params) {
  ES_ASSIGN_OR_RETURN(int fd, ConnectUnixSocket(socket_path));
  std::string line = json{{"jsonrpc", "2.0"}, {"id", 1}, {"method", method}, {"params", params}}.dump() + "\n";
  Status s = WriteAll(fd, line.data(), line.size());
  std::string reply;
  char chunk[4096];
  while (s.ok() && reply.find('\n') == std::string::npos) {
    ssize_t n = ::read(fd, chunk, sizeof chunk);
    if (n <= 0) s = Status(ECONNRESET, "daemon closed the control connection");
    else reply.append(chunk, static_cast<size_t>(n));
  }
  ::close(fd);
  ES_RETURN_IF_ERROR(s);
  json response = json::parse(reply, nullptr, false);
  if (response.is_discarded() || !response.is_object()) return Status(EPROTO, "daemon sent a malformed reply");
  if (response.contains("error")) {
    const json& error = response["error"];
    int code = error.contains("data") ? error["data"].value("errno", EIO) : EINVAL;
    return Status(code, error.value("message", "unknown error"));
  }
  return response.value("result", json(nullptr));
}

}  // namespace edgestor
