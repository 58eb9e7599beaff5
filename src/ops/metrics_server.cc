#include "ops/metrics_server.h"

#include <civetweb.h>

#include <cerrno>
#include <cstring>
#include <mutex>

#include "base/unix_socket.h"

namespace edgestor {
namespace {

constexpr const char* kContentType = "text/plain; version=0.0.4; charset=utf-8";

// civetweb's global state, set up once for the process.
void InitLibraryOnce() {
  static std::once_flag once;
  std::call_once(once, [] { mg_init_library(0); });
}

// "host:port" as civetweb's listening_ports takes it: IPv6 in brackets.
Result<std::string> ListeningPort(const std::string& host_port) {
  std::string host, port;
  ES_RETURN_IF_ERROR(SplitHostPort(host_port, &host, &port));
  char* end = nullptr;
  errno = 0;
  unsigned long number = std::strtoul(port.c_str(), &end, 10);
  if (port.empty() || *end != '\0' || errno != 0 || number > 65535)
    return Status(EINVAL, "bad port in '" + host_port + "'");
  if (host.empty()) return port;
  if (host.find(':') != std::string::npos) return "[" + host + "]:" + port;
  return host + ":" + port;
}

}  // namespace

struct MetricsServer::Impl {
  std::function<std::string()> render;
  mg_context* context = nullptr;

  static int Serve(mg_connection* connection, void* data) {
    auto* impl = static_cast<Impl*>(data);
    const mg_request_info* request = mg_get_request_info(connection);
    bool head = std::strcmp(request->request_method, "HEAD") == 0;
    if (!head && std::strcmp(request->request_method, "GET") != 0) {
      mg_send_http_error(connection, 405, "only GET /metrics is served here\n");
      return 405;
    }
    std::string body = impl->render();
    mg_printf(connection,
              "HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %zu\r\nCache-Control: no-store\r\n"
              "Connection: close\r\n\r\n",
              kContentType, body.size());
    if (!head) mg_write(connection, body.data(), body.size());
    return 200;
  }
};

Result<std::unique_ptr<MetricsServer>> MetricsServer::Start(const std::string& host_port,
                                                            std::function<std::string()> render) {
  ES_ASSIGN_OR_RETURN(std::string listening, ListeningPort(host_port));
  InitLibraryOnce();
  auto impl = std::make_unique<Impl>();
  impl->render = std::move(render);
  // No document_root: nothing but the handler below is ever served.
  const char* options[] = {"listening_ports", listening.c_str(), "num_threads", "2",
                           "request_timeout_ms", "5000", "max_request_size", "16384",
                           "enable_keep_alive", "no", nullptr};
  mg_callbacks callbacks{};
  // civetweb logs to stderr by default; its refusals come back below.
  callbacks.log_message = [](const mg_connection*, const char*) { return 1; };
  mg_init_data init{&callbacks, nullptr, options};
  char error_text[256] = "";
  unsigned error_code = 0;
  mg_error_data error{&error_code, error_text, sizeof error_text};
  impl->context = mg_start2(&init, &error);
  if (!impl->context)
    return Status(EADDRNOTAVAIL, "cannot listen for metrics on " + host_port + ": " +
                                     (error_text[0] ? error_text : "address in use or not local?"));
  mg_set_request_handler(impl->context, "/metrics$", &Impl::Serve, impl.get());
  mg_server_port ports[4] = {};
  int count = mg_get_server_ports(impl->context, 4, ports);
  uint16_t port = count > 0 ? static_cast<uint16_t>(ports[0].port) : 0;
  return std::unique_ptr<MetricsServer>(new MetricsServer(std::move(impl), port));
}

MetricsServer::MetricsServer(std::unique_ptr<Impl> impl, uint16_t port) : impl_(std::move(impl)), port_(port) {}

MetricsServer::~MetricsServer() { Stop(); }

void MetricsServer::Stop() {
  if (!impl_) return;
  mg_stop(impl_->context);  // joins its threads; no handler runs after
  impl_.reset();
}

}  // namespace edgestor
