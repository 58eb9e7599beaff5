#include "daemon/daemon.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>

#include <spdlog/spdlog.h>

#include "ops/state_file.h"


namespace edgestor {

namespace {

std::string SiblingPath(const std::string& pool_path, const std::string& suffix) {
  std::filesystem::path p(pool_path);
  return (p.parent_path() / (p.stem().string() + suffix)).string();
}

// Detaching a volume's clients (a forced rollback) gives up if new ones keep
// attaching this long; it looks again at least this often.
constexpr auto kDetachTimeout = std::chrono::seconds(30);
constexpr auto kDetachRetry = std::chrono::milliseconds(100);

// The same advisory lock the CLI takes: one process per pool.
Result<int> LockPool(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status(errno, "cannot open pool " + path);
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int err = errno;
    ::close(fd);
    if (err == EWOULDBLOCK) return Status(EBUSY, "pool " + path + " is in use by another process (is a daemon serving it?)");
    return Status(err, "cannot lock pool " + path);
  }
  return fd;
}

// The daemon may serve block devices (a loop device over a file export,
// the kernel's NBD client) to its own host. When memory runs short, the
// kernel reclaims by writing dirty pages, possibly to those very devices:
// if our threads' own allocations then entered reclaim and waited for that
// writeback, the daemon would wait on itself. PR_SET_IO_FLUSHER makes the
// kernel treat our allocations as unable to wait on I/O (as for loop's own
// workers). It holds for the calling thread and the threads it creates
// after, so it is set before any. Needs CAP_SYS_RESOURCE; without it, the
// daemon runs on and says so.
void MarkAsIoFlusher() {
  if (::prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) == 0) {
    spdlog::debug("marked as an I/O flusher (PR_SET_IO_FLUSHER)");
    return;
  }
  spdlog::warn("cannot mark the daemon as an I/O flusher (PR_SET_IO_FLUSHER: {}): serving block devices to this "
               "host (loop over a file export, nbd-client) may deadlock under memory pressure; run as root or with "
               "CAP_SYS_RESOURCE",
               std::strerror(errno));
}

}  // namespace

std::string DefaultControlSocket(const std::string& pool_path) { return SiblingPath(pool_path, ".control.sock"); }
std::string DefaultNbdSocket(const std::string& pool_path) { return SiblingPath(pool_path, ".nbd.sock"); }

Result<std::unique_ptr<Daemon>> Daemon::Start(DaemonOptions options) {
  if (options.control_socket.empty()) options.control_socket = DefaultControlSocket(options.pool_path);
  if (options.nbd_socket.empty()) options.nbd_socket = DefaultNbdSocket(options.pool_path);
  if (options.state_file.empty()) options.state_file = DefaultStateFile(options.pool_path);
  MarkAsIoFlusher();
  ES_ASSIGN_OR_RETURN(int lock_fd, LockPool(options.pool_path));
  auto state = LoadStateFile(options.state_file);
  if (!state.ok()) {
    ::close(lock_fd);
    return state.status();
  }
  auto pool = OpenPoolFile(options.pool_path, PoolOpenOptions{.map_cache_bytes = options.map_cache_bytes,
                                                              .secret = options.secret,
                                                              .hot_plain_clusters = options.hot_plain_clusters,
                                                              .recompress_idle_ms = options.recompress_idle_ms});
  if (!pool.ok()) {
    ::close(lock_fd);
    return pool.status().WithContext("cannot open pool " + options.pool_path);
  }
  std::unique_ptr<Daemon> daemon(new Daemon(options, lock_fd, std::move(pool).value()));
  daemon->nbd_ = std::make_unique<NbdServer>(*daemon, NbdServerOptions{.shared_budget = &daemon->inflight_budget_});
  ES_RETURN_IF_ERROR(daemon->nbd_->ListenUnix(options.nbd_socket, options.nbd_access));
  if (!options.nbd_listen.empty()) ES_RETURN_IF_ERROR(daemon->nbd_->ListenTcp(options.nbd_listen));
  daemon->RegisterMethods();
  ES_RETURN_IF_ERROR(daemon->control_.Listen(options.control_socket, options.control_access));
  ES_RETURN_IF_ERROR(daemon->nbd_->Start());
  if (!options.metrics_listen.empty()) {
    ES_ASSIGN_OR_RETURN(daemon->metrics_, MetricsServer::Start(options.metrics_listen, [d = daemon.get()] {
                          return d->MetricsText();
                        }));
    spdlog::info("metrics on http://{}/metrics (port {})", options.metrics_listen, daemon->metrics_->port());
  }
  daemon->RestoreState(state.value());
  daemon->FollowBackgroundRelease("deletes of an earlier run");  // the engine resumed them at open
  ES_RETURN_IF_ERROR(daemon->SaveState().WithContext("cannot write the daemon's state file"));
  daemon->control_.Start();
  spdlog::info("serving pool {} ({} volumes); control socket {}, NBD socket {}", options.pool_path,
               daemon->pool_->VolumeNames().size(), options.control_socket, options.nbd_socket);
  return daemon;
}

Daemon::Daemon(DaemonOptions options, int lock_fd, std::unique_ptr<VolumeSet> pool)
    : options_(std::move(options)),
      lock_fd_(lock_fd),
      pool_(std::move(pool)),
      inflight_budget_(std::max<uint64_t>(options_.inflight_bytes, 1)) {}

Daemon::~Daemon() {
  Status s = Stop();
  if (!s.ok()) spdlog::error("stopping the daemon: {}", s.ToString());
}

Status Daemon::Stop() {
  {
    std::lock_guard lock(mu_);
    if (stopped_) return Status::Ok();
    stopped_ = true;
  }
  // Jobs first: they stop "interrupted", and the resumable ones are stored.
  jobs_.Shutdown();
  if (metrics_) metrics_->Stop();
  control_.Stop();
  if (nbd_) nbd_->Stop();  // waits for in-flight requests to complete and reply
  std::map<std::string, std::unique_ptr<vhost::VhostBlkExport>> vhost;
  std::map<std::string, std::unique_ptr<fuse::FuseFileExport>> files;
  {
    std::lock_guard lock(mu_);
    vhost.swap(vhost_exports_);
    files.swap(file_exports_);
  }
  vhost.clear();  // each finishes its requests in flight
  for (auto& [mountpoint, e] : files)
    if (e->open_count() > 0)
      spdlog::warn("unmounting the file export at {} while {} still has it open: it gets ENOTCONN from now on",
                   mountpoint, e->open_count() == 1 ? "one user" : std::to_string(e->open_count()) + " users");
  files.clear();  // each answers its requests in flight, then unmounts
  Status s = pool_->Close();
  if (s.ok()) spdlog::info("pool {} closed cleanly", options_.pool_path);
  if (lock_fd_ >= 0) ::close(lock_fd_);
  lock_fd_ = -1;
  return s;
}

uint16_t Daemon::nbd_tcp_port() const { return nbd_ ? nbd_->BoundTcpPort() : 0; }

std::string Daemon::NbdUri(const std::string& volume) const {
  std::string socket = std::filesystem::absolute(options_.nbd_socket).string();
  return "nbd+unix:///" + volume + "?socket=" + socket;
}

std::vector<std::string> Daemon::ListExports() { return pool_->VolumeNames(); }

bool Daemon::HasExport(const std::string& name) { return pool_->FindVolume(name).ok(); }

namespace {

// An encrypted volume of a locked pool would fail every I/O: refuse to
// attach it, saying how to unlock, rather than hand out an EIO disk. A
// snapshot ("VOL@SNAP") is locked when its volume is (they share the key).
// Runs at every attach: IsLocked, not GetVolumeInfo (which computes the
// sharing figures).
Status CheckUnlocked(VolumeSet& pool, const std::string& name) {
  ES_ASSIGN_OR_RETURN(bool locked, pool.IsLocked(name));
  if (locked)
    return Status(EACCES, "volume '" + name + "' is encrypted and the pool is locked; unlock it with "
                          "`edgestor pool unlock --keyfile KEY` (or --passphrase-file)");
  return Status::Ok();
}

}  // namespace

Result<Volume*> Daemon::AcquireExport(const std::string& name) {
  std::lock_guard lock(mu_);
  if (stopped_) return Status(ESHUTDOWN, "daemon is stopping");
  ES_ASSIGN_OR_RETURN(Volume * volume, pool_->FindVolume(name));
  ES_RETURN_IF_ERROR(CheckUnlocked(*pool_, name));
  users_[volume]++;
  return volume;
}

void Daemon::ReleaseExport(Volume* volume) {
  std::lock_guard lock(mu_);
  auto it = users_.find(volume);
  assert(it != users_.end() && it->second > 0);
  if (--it->second == 0) users_.erase(it);
  released_.notify_all();
}

std::unique_ptr<VolumeChannel> Daemon::OpenChannel(uint32_t depth) { return pool_->OpenChannel(depth); }

std::string Daemon::SerialOf(const Volume& volume) {
  std::string uuid = pool_->Info().uuid;
  std::string serial = "es" + uuid.substr(0, 8) + "-";
  if (volume.read_only()) serial += 's';  // snapshot ids are counted apart from volume ids
  serial += std::to_string(volume.id());
  return serial;  // at most 2+8+1+1+5 bytes (virtio-blk allows 20)
}

std::string Daemon::ExportsLocked(const Volume* volume) const {
  std::string out;
  for (const auto& [socket, e] : vhost_exports_)
    if (&e->volume() == volume) out += (out.empty() ? "exported over vhost-user on " : " and over vhost-user on ") + socket;
  for (const auto& [mountpoint, e] : file_exports_)
    if (&e->volume() == volume) out += (out.empty() ? "exported as a file at " : " and as a file at ") + e->file_path();
  return out;
}

Status Daemon::AddVhostExport(const std::string& name, vhost::VhostExportOptions options) {
  std::lock_guard lock(mu_);
  if (stopped_) return Status(ESHUTDOWN, "daemon is stopping");
  ES_ASSIGN_OR_RETURN(Volume * volume, pool_->FindVolume(name));
  ES_RETURN_IF_ERROR(CheckUnlocked(*pool_, name));
  options.socket_path = std::filesystem::absolute(options.socket_path).string();
  if (vhost_exports_.count(options.socket_path)) return Status(EEXIST, "an export already uses " + options.socket_path);
  if (options.serial.empty()) options.serial = SerialOf(*volume);
  if (volume->read_only()) options.read_only = true;  // a snapshot: the guest sees a read-only disk
  options.shared_budget = &inflight_budget_;
  auto started = vhost::VhostBlkExport::Start(*volume, options, [this] { return OpenChannel(256); });
  if (!started.ok()) return started.status().WithContext("cannot export " + name + " on " + options.socket_path);
  vhost_exports_[options.socket_path] = std::move(started).value();
  spdlog::info("exporting volume {} as vhost-user-blk on {} ({} queues{})", name, options.socket_path, options.queues,
               options.read_only ? ", read-only" : "");
  return Status::Ok();
}

Status Daemon::RemoveVhostExport(const std::string& socket_path) {
  std::unique_ptr<vhost::VhostBlkExport> removed;
  {
    std::lock_guard lock(mu_);
    auto it = vhost_exports_.find(std::filesystem::absolute(socket_path).string());
    if (it == vhost_exports_.end()) return Status(ENOENT, "no vhost-user export on " + socket_path);
    removed = std::move(it->second);
    vhost_exports_.erase(it);
  }
  removed->Stop();  // outside the lock: finishes the guest's requests in flight
  return Status::Ok();
}

Result<fuse::FileExportOptions> Daemon::AddFileExport(const std::string& name, fuse::FileExportOptions options) {
  std::lock_guard lock(mu_);
  if (stopped_) return Status(ESHUTDOWN, "daemon is stopping");
  ES_ASSIGN_OR_RETURN(Volume * volume, pool_->FindVolume(name));
  ES_RETURN_IF_ERROR(CheckUnlocked(*pool_, name));
  options.mountpoint = std::filesystem::absolute(options.mountpoint).lexically_normal().string();
  if (file_exports_.count(options.mountpoint))
    return Status(EEXIST, "a file export is already mounted at " + options.mountpoint);
  options.shared_budget = &inflight_budget_;
  auto started = fuse::FuseFileExport::Start(*volume, options, [this] { return OpenChannel(256); });
  if (!started.ok()) return started.status().WithContext("cannot export " + name + " as a file at " + options.mountpoint);
  auto& e = file_exports_[options.mountpoint] = std::move(started).value();
  spdlog::info("exporting volume {} as the file {} ({} threads{})", name, e->file_path(), options.threads,
               e->options().read_only ? ", read-only" : "");
  return e->options();
}

Status Daemon::RemoveFileExport(const std::string& mountpoint, bool force) {
  std::unique_ptr<fuse::FuseFileExport> removed;
  {
    std::lock_guard lock(mu_);
    auto it = file_exports_.find(std::filesystem::absolute(mountpoint).lexically_normal().string());
    if (it == file_exports_.end()) return Status(ENOENT, "no file export at " + mountpoint);
    if (uint32_t opens = it->second->open_count(); opens > 0 && !force)
      return Status(EBUSY, it->second->file_path() + " is open (" + std::to_string(opens) +
                               " open file(s): a loop device? detach it with losetup -d); close it first, or "
                               "force the removal (--force) and its users get ENOTCONN");
    removed = std::move(it->second);
    file_exports_.erase(it);
  }
  removed->Stop();  // outside the lock: answers the requests in flight, then unmounts
  return Status::Ok();
}

std::string Daemon::AttachmentsLocked(Volume* volume) {
  std::string out;
  if (auto it = users_.find(volume); it != users_.end())
    out = "attached by " + std::to_string(it->second) + " NBD connection(s)";
  std::string exports = ExportsLocked(volume);
  if (!exports.empty()) out += (out.empty() ? "" : " and ") + exports;
  return out;
}

namespace {

// Moves the exports of `volume` out of `exports` (keyed by socket path or
// mount point), appending their keys to `keys`.
template <typename Export>
std::vector<std::unique_ptr<Export>> TakeExportsOf(std::map<std::string, std::unique_ptr<Export>>& exports,
                                                   const Volume* volume, std::vector<std::string>& keys) {
  std::vector<std::unique_ptr<Export>> taken;
  for (auto it = exports.begin(); it != exports.end();) {
    if (&it->second->volume() != volume) {
      ++it;
      continue;
    }
    keys.push_back(it->first);
    taken.push_back(std::move(it->second));
    it = exports.erase(it);
  }
  return taken;
}

}  // namespace

bool Daemon::RemoveExportsLocked(std::unique_lock<std::mutex>& lock, Volume* volume, Detached& detached) {
  auto vhost = TakeExportsOf(vhost_exports_, volume, detached.vhost_sockets);
  auto files = TakeExportsOf(file_exports_, volume, detached.file_mountpoints);
  if (vhost.empty() && files.empty()) return false;
  lock.unlock();  // as the Remove*Export calls: requests in flight finish
  for (auto& e : vhost) e->Stop();
  for (auto& e : files) e->Stop();
  lock.lock();
  return true;
}

Result<Daemon::Detached> Daemon::DetachLocked(std::unique_lock<std::mutex>& lock, Volume* volume) {
  assert(lock.owns_lock());
  Detached detached;
  const auto deadline = std::chrono::steady_clock::now() + kDetachTimeout;
  while (users_.count(volume) || !ExportsLocked(volume).empty()) {
    if (std::chrono::steady_clock::now() >= deadline)
      return Status(EBUSY, "volume '" + volume->name() + "' is still " + AttachmentsLocked(volume) +
                               ": clients kept attaching while it was being detached");
    if (RemoveExportsLocked(lock, volume, detached)) continue;
    detached.nbd_connections += nbd_->DisconnectExport(volume);
    released_.wait_for(lock, kDetachRetry);
  }
  return detached;
}

}  // namespace edgestor
