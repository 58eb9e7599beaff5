// MetricsServer: the optional HTTP listener that serves /metrics in the
// Prometheus text format (serve --metrics-listen HOST:PORT).
//
// civetweb (Debian's libcivetweb, built without TLS, so nothing more is
// linked or mapped for a listener most daemons never start) does the HTTP.
// The server only answers GET and HEAD of /metrics, on two threads, with
// short timeouts, a small request size and no files served: a scraper, or
// anything else that connects, cannot hold more than that. Rendering runs
// on the server's thread and must not block on the data path.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "base/status.h"

namespace edgestor {

class MetricsServer {
 public:
  // Listens on `host_port` ("127.0.0.1:9500", "[::1]:0"; port 0 picks a
  // free port) and answers with what `render` returns.
  static Result<std::unique_ptr<MetricsServer>> Start(const std::string& host_port, std::function<std::string()> render);
  ~MetricsServer();  // Stop()
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  // Stops listening and waits for the request being answered. Idempotent.
  void Stop();
  uint16_t port() const { return port_; }

 private:
  struct Impl;
  explicit MetricsServer(std::unique_ptr<Impl> impl, uint16_t port);
  std::unique_ptr<Impl> impl_;
  uint16_t port_;
};

}  // namespace edgestor
