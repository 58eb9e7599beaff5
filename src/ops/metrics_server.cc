#include "ops/metrics_server.h"

#include <httplib.h>

#include <cerrno>
#include <chrono>
#include <thread>

#include <spdlog/spdlog.h>

#include "base/unix_socket.h"

namespace edgestor {
namespace {

constexpr int kThreads = 2;
constexpr time_t kTimeoutSeconds = 5;
constexpr const char* kContentType = "text/plain; version=0.0.4; charset=utf-8";

}  // namespace

struct MetricsServer::Impl {
  httplib::Server server;
  std::thread thread;
};

Result<std::unique_ptr<MetricsServer>> MetricsServer::Start(const std::string& host_port,
                                                            std::function<std::string()> render) {
  std::string host, port_text;
  ES_RETURN_IF_ERROR(SplitHostPort(host_port, &host, &port_text));
  int port = -1;
  try {
    size_t used = 0;
    port = std::stoi(port_text, &used);
    if (used != port_text.size()) port = -1;
  } catch (const std::exception&) {
    port = -1;
  }
  if (port < 0 || port > 65535) return Status(EINVAL, "bad port in '" + host_port + "'");
  if (host.empty()) host = "0.0.0.0";

  auto impl = std::make_unique<Impl>();
  httplib::Server& server = impl->server;
  server.new_task_queue = [] { return new httplib::ThreadPool(kThreads); };
  server.set_read_timeout(kTimeoutSeconds, 0);
  server.set_write_timeout(kTimeoutSeconds, 0);
  server.set_idle_interval(0, 0);
  server.set_keep_alive_max_count(100);
  server.set_keep_alive_timeout(kTimeoutSeconds);
  server.set_payload_max_length(0);
  // Not httplib's default, which adds SO_REUSEPORT: a second daemon must
  // not share the port with the first.
  server.set_socket_options([](socket_t socket) {
    int yes = 1;
    ::setsockopt(socket, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  });
  server.Get("/metrics", [render](const httplib::Request&, httplib::Response& response) {
    response.set_content(render(), kContentType);
  });
  server.Get("/", [](const httplib::Request&, httplib::Response& response) {
    response.set_content("edgestor metrics: see /metrics\n", "text/plain; charset=utf-8");
  });
  server.set_error_handler([](const httplib::Request&, httplib::Response& response) {
    if (response.body.empty()) response.set_content("only GET /metrics is served here\n", "text/plain; charset=utf-8");
  });
  int bound = port == 0 ? server.bind_to_any_port(host) : (server.bind_to_port(host, port) ? port : -1);
  if (bound <= 0) return Status(EADDRNOTAVAIL, "cannot listen for metrics on " + host_port + " (address in use or not local?)");
  impl->thread = std::thread([&server] {
    if (!server.listen_after_bind()) spdlog::error("metrics listener stopped unexpectedly");
  });
  // Stop() is a no-op until the loop runs: wait for it, so a Stop() that
  // follows at once cannot leave the thread listening for ever.
  for (int i = 0; i < 5000 && !server.is_running(); i++) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  return std::unique_ptr<MetricsServer>(new MetricsServer(std::move(impl), static_cast<uint16_t>(bound)));
}

MetricsServer::MetricsServer(std::unique_ptr<Impl> impl, uint16_t port) : impl_(std::move(impl)), port_(port) {}

MetricsServer::~MetricsServer() { Stop(); }

void MetricsServer::Stop() {
  if (!impl_) return;
  impl_->server.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
  impl_.reset();
}

}  // namespace edgestor
