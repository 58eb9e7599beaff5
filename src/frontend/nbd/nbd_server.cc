// NbdServer: listening sockets, the accept thread, one thread per connection.
#include "frontend/nbd/nbd_server.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cassert>
#include <cerrno>
#include <chrono>
#include <cstring>

#include <spdlog/spdlog.h>

#include "base/unix_socket.h"
#include "frontend/nbd/nbd_handshake.h"
#include "frontend/nbd/nbd_socket.h"
#include "frontend/nbd/nbd_transmission.h"

namespace edgestor {

namespace {

constexpr int kListenBacklog = 64;
// After accept() fails for lack of descriptors, wait before trying again
// rather than spinning on a listener that stays readable.
constexpr auto kAcceptErrorPause = std::chrono::milliseconds(100);

Status Errno(const std::string& what) { return Status(errno, what + ": " + std::strerror(errno)); }

}  // namespace

void ServeNbdConnection(int fd, ExportProvider& provider, const NbdServerOptions& options,
                        const std::atomic<bool>& stopping, NbdStats* stats, std::atomic<const Volume*>* attached) {
  NbdStats unused;
  if (!stats) stats = &unused;
  Status s = nbd::ConfigureConnectionSocket(fd);
  if (!s.ok()) {
    spdlog::warn("nbd: cannot configure connection: {}", s.ToString());
    return;
  }
  auto session = nbd::Negotiate(fd, provider, options, stopping);
  if (!session.ok()) {
    if (session.status().code() == EPROTO) stats->protocol_errors.fetch_add(1, std::memory_order_relaxed);
    spdlog::debug("nbd: handshake ended: {}", session.status().ToString());
    return;
  }
  stats->sessions.fetch_add(1, std::memory_order_relaxed);
  std::unique_ptr<VolumeChannel> channel = provider.OpenChannel(options.queue_depth);
  if (channel) {
    if (attached) attached->store(session->volume);
    session->io_stats = provider.ExportStats(session->volume);
    nbd::NbdTransmission transmission(fd, *session->volume, *channel, *session, options, stopping, *stats);
    transmission.Run();
    if (attached) attached->store(nullptr);
  } else {
    spdlog::error("nbd: export {}: no I/O queue for the connection", session->volume->name());
  }
  provider.ReleaseExport(session->volume);
}

NbdServer::NbdServer(ExportProvider& provider, NbdServerOptions options) : provider_(provider), options_(options) {
  assert(options.max_connections > 0 && options.queue_depth > 0);
  wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
}

NbdServer::~NbdServer() {
  Stop();
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

Status NbdServer::AddListener(int fd, const std::string& unix_path) {
  if (::listen(fd, kListenBacklog) != 0) {
    Status s = Errno("listen");
    ::close(fd);
    return s;
  }
  listeners_.push_back({fd, unix_path});
  return Status::Ok();
}

Status NbdServer::ListenUnix(const std::string& path, const SocketAccess& access) {
  if (started_) return Status(EBUSY, "listen before Start()");
  ES_ASSIGN_OR_RETURN(int fd, ListenUnixSocket(path, access));
  if (::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK) != 0) {
    Status s = Errno("cannot make " + path + " non-blocking");
    ::close(fd);
    RemoveSocketFile(path);
    return s;
  }
  return AddListener(fd, path);
}

Status NbdServer::ListenTcp(const std::string& host_port) {
  if (started_) return Status(EBUSY, "listen before Start()");
  std::string host, port;
  ES_RETURN_IF_ERROR(SplitHostPort(host_port, &host, &port));
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  int rc = ::getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &found);
  if (rc != 0) return Status(EINVAL, "cannot resolve '" + host_port + "': " + ::gai_strerror(rc));
  Status last(EADDRNOTAVAIL, "no address to listen on for " + host_port);
  for (addrinfo* ai = found; ai; ai = ai->ai_next) {
    int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
    if (fd < 0) continue;
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_storage bound{};
    socklen_t len = sizeof bound;
    if (::bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 ||
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len) != 0) {
      last = Errno("cannot bind " + host_port);
      ::close(fd);
      continue;
    }
    tcp_port_ = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                                  : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
    ::freeaddrinfo(found);
    return AddListener(fd, "");
  }
  ::freeaddrinfo(found);
  return last;
}

uint16_t NbdServer::BoundTcpPort() const { return tcp_port_; }

Status NbdServer::Start() {
  if (started_) return Status(EBUSY, "NBD server already started");
  if (listeners_.empty()) return Status(EINVAL, "NBD server has no socket to listen on");
  if (wake_fd_ < 0) return Status(EMFILE, "cannot create the NBD server's eventfd");
  started_ = true;
  accept_thread_ = std::thread([this] { AcceptLoop(); });
  return Status::Ok();
}

void NbdServer::AcceptLoop() {
  std::vector<pollfd> fds;
  fds.push_back({wake_fd_, POLLIN, 0});
  for (const Listener& l : listeners_) fds.push_back({l.fd, POLLIN, 0});
  while (!stopping_.load()) {
    int rc = ::poll(fds.data(), fds.size(), -1);
    if (rc < 0 && errno != EINTR) {
      spdlog::error("nbd: poll on listening sockets failed: {}", std::strerror(errno));
      std::this_thread::sleep_for(kAcceptErrorPause);
      continue;
    }
    uint64_t counter;
    while (::read(wake_fd_, &counter, sizeof counter) > 0) {
    }
    ReapFinished(/*all=*/false);
    for (size_t i = 1; i < fds.size() && !stopping_.load(); i++)
      if (fds[i].revents & POLLIN) AcceptOne(fds[i].fd);
  }
}

void NbdServer::AcceptOne(int listen_fd) {
  int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
  if (fd < 0) {
    if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
      spdlog::warn("nbd: cannot accept a connection: {}", std::strerror(errno));
      std::this_thread::sleep_for(kAcceptErrorPause);
    }
    return;  // EAGAIN, ECONNABORTED, EINTR: nothing to do
  }
  if (ConnectionCount() >= options_.max_connections) {
    stats_.refused_connections.fetch_add(1, std::memory_order_relaxed);
    spdlog::warn("nbd: {} connections already; refusing one", options_.max_connections);
    ::close(fd);
    return;
  }
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);  // fails harmlessly on unix sockets
  auto connection = std::make_unique<Connection>();
  Connection* c = connection.get();
  c->fd = fd;
  std::lock_guard lock(mu_);
  connections_.push_back(std::move(connection));
  c->thread = std::thread([this, c] {
    ServeNbdConnection(c->fd, provider_, options_, stopping_, &stats_, &c->volume);
    c->finished.store(true);
    Wake();  // the accept loop joins us and closes the socket
  });
}

// The socket is closed only after its thread is joined, so Stop() can never
// shut down a descriptor number that was already reused.
void NbdServer::ReapFinished(bool all) {
  std::list<std::unique_ptr<Connection>> done;
  {
    std::lock_guard lock(mu_);
    for (auto it = connections_.begin(); it != connections_.end();) {
      auto next = std::next(it);
      if (all || (*it)->finished.load()) done.splice(done.end(), connections_, it);
      it = next;
    }
  }
  for (auto& c : done) {
    c->thread.join();
    ::close(c->fd);
  }
}

void NbdServer::Wake() {
  uint64_t one = 1;
  if (wake_fd_ >= 0) (void)!::write(wake_fd_, &one, sizeof one);
}

void NbdServer::Stop() {
  if (stopping_.exchange(true)) return;
  Wake();
  if (accept_thread_.joinable()) accept_thread_.join();
  for (const Listener& l : listeners_) {
    ::close(l.fd);
    if (!l.unix_path.empty()) RemoveSocketFile(l.unix_path);
  }
  listeners_.clear();
  {
    // Wakes connections blocked reading; each finishes its requests in
    // flight, answers them and returns.
    std::lock_guard lock(mu_);
    for (auto& c : connections_) ::shutdown(c->fd, SHUT_RD);
  }
  ReapFinished(/*all=*/true);
  assert(ConnectionCount() == 0);
}

// SHUT_RD as in Stop(): the connection's reader sees the end of the stream,
// finishes what is in flight, answers it and returns. Under mu_, so the
// descriptor cannot have been closed (and reused) yet.
size_t NbdServer::DisconnectExport(const Volume* volume) {
  assert(volume != nullptr);
  std::lock_guard lock(mu_);
  size_t n = 0;
  for (auto& c : connections_) {
    if (c->finished.load() || c->disconnecting || c->volume.load() != volume) continue;
    ::shutdown(c->fd, SHUT_RD);
    c->disconnecting = true;
    n++;
  }
  return n;
}

size_t NbdServer::ConnectionCount() const {
  std::lock_guard lock(mu_);
  size_t n = 0;
  for (const auto& c : connections_) n += !c->finished.load();
  return n;
}

}  // namespace edgestor
