// Small helpers for unix sockets: the daemon's control socket, the
// vhost-user exports, and their clients.
#pragma once

#include <cstddef>
#include <string>

#include "base/status.h"

namespace edgestor {

// Binds and listens on `path`, replacing a stale socket file (one nobody
// listens on). EADDRINUSE if a live server owns it.
Result<int> ListenUnixSocket(const std::string& path);
Result<int> ConnectUnixSocket(const std::string& path);
Status WriteAll(int fd, const void* data, size_t len);

}  // namespace edgestor
