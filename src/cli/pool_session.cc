#include "cli/pool_session.h"

#include "cli/key_args.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "cli/cli_error.h"

namespace edgestor::cli {

PoolLock PoolLock::Acquire(const std::string& path, int open_flags, const std::string& purpose) {
  int fd = ::open(path.c_str(), open_flags | O_CLOEXEC, 0644);
  if (fd < 0) Fail("cannot " + purpose + " pool " + path + ": " + std::strerror(errno));
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int err = errno;
    ::close(fd);
    if (err == EWOULDBLOCK) {
      Fail("pool " + path + " is in use by another process (is a daemon serving it?)");
    }
    Fail("cannot lock pool " + path + ": " + std::strerror(err));
  }
  return PoolLock(fd);
}

PoolLock::PoolLock(PoolLock&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}

PoolLock::~PoolLock() {
  if (fd_ >= 0) ::close(fd_);  // releases the flock
}

std::unique_ptr<PoolSession> PoolSession::Open(const std::string& path) {
  PoolLock lock = PoolLock::Acquire(path, O_RDONLY);
  std::unique_ptr<Device> device = Unwrap(OpenFileDevice(path, FileDeviceOptions{}), "cannot open pool " + path);
  PoolOpenOptions options;
  options.secret = LoadSecret(GetKeyArgs());
  std::unique_ptr<VolumeSet> pool = Unwrap(VolumeSet::Open(std::move(device), options), "cannot open pool " + path);
  return std::make_unique<PoolSession>(path, std::move(lock), std::move(pool));
}

PoolSession::PoolSession(std::string path, PoolLock lock, std::unique_ptr<VolumeSet> pool)
    : path_(std::move(path)), lock_(std::move(lock)), pool_(std::move(pool)) {}

PoolSession::~PoolSession() {
  if (!closed_) (void)pool_->Close();
}

Volume& PoolSession::FindVolume(const std::string& name) {
  Result<Volume*> volume = pool_->FindVolume(name);
  if (!volume.ok() && volume.status().code() == ENOENT) Fail("pool " + path_ + " has no volume named " + name);
  return *Unwrap(std::move(volume), "cannot open volume " + name);
}

VolumeInfo PoolSession::GetVolumeInfo(const std::string& name) {
  Result<VolumeInfo> info = pool_->GetVolumeInfo(name);
  if (!info.ok() && info.status().code() == ENOENT) Fail("pool " + path_ + " has no volume named " + name);
  return Unwrap(std::move(info), "cannot get information on volume " + name);
}

void PoolSession::Close() {
  closed_ = true;
  Check(pool_->Close(), "cannot close pool " + path_);
}

}  // namespace edgestor::cli
