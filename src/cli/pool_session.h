// An open pool for the duration of one offline command.
//
// The CLI and the daemon must never open the same pool at once: each takes an
// exclusive flock() on the pool path (on a separate read-only descriptor) and
// holds it until it exits. PoolSession bundles that lock with the open
// VolumeSet so that both live exactly as long as the command.
#pragma once

#include <memory>
#include <string>

#include "volume/volume_set.h"

namespace edgestor::cli {

// Exclusive, non-blocking advisory lock on a pool path. Move-only.
class PoolLock {
 public:
  // Opens `path` with `open_flags` (O_RDONLY, plus O_CREAT|O_EXCL to create an
  // empty file) and locks it. Throws CliError if the path cannot be opened
  // ("cannot <purpose> pool PATH: ...") or another process holds the lock.
  static PoolLock Acquire(const std::string& path, int open_flags, const std::string& purpose = "open");

  PoolLock(PoolLock&& other) noexcept;
  PoolLock& operator=(PoolLock&&) = delete;
  PoolLock(const PoolLock&) = delete;
  ~PoolLock();

 private:
  explicit PoolLock(int fd) : fd_(fd) {}
  int fd_ = -1;
};

class PoolSession {
 public:
  // Locks `path` and opens the pool on it (recovering it if needed).
  // Throws CliError on failure; nothing is written if it is not a pool.
  static std::unique_ptr<PoolSession> Open(const std::string& path);

  PoolSession(std::string path, PoolLock lock, std::unique_ptr<VolumeSet> pool);
  // Closes the pool if Close() was not called (after a failed command),
  // ignoring errors: the command's own error is the one reported.
  ~PoolSession();

  const std::string& path() const { return path_; }
  VolumeSet& pool() { return *pool_; }

  // Returns the volume `name`; throws CliError if there is none.
  Volume& FindVolume(const std::string& name);
  VolumeInfo GetVolumeInfo(const std::string& name);

  // Writes the final checkpoint. Throws CliError on failure.
  void Close();

 private:
  std::string path_;
  PoolLock lock_;  // declared before pool_: released after the pool is closed
  std::unique_ptr<VolumeSet> pool_;
  bool closed_ = false;
};

}  // namespace edgestor::cli
