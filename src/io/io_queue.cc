// IoQueue: completions of work that another thread finishes for a queue.
//
// The poster appends to a locked list and signals an eventfd; the owner
// reads (resets) the eventfd before taking the list. In that order a
// completion posted while the owner takes the list is either taken now or
// signals the eventfd again afterwards, so a waiting owner never misses one.
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cassert>
#include <cerrno>
#include <chrono>
#include <thread>

#include "io/device.h"

namespace edgestor {

IoQueue::IoQueue() : foreign_fd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {}

IoQueue::~IoQueue() {
  if (foreign_fd_ >= 0) ::close(foreign_fd_);
}

void IoQueue::ExpectForeign(IoRequest* req) {
  assert(req != nullptr && req->done != nullptr);
  (void)req;
  foreign_outstanding_++;
}

void IoQueue::PostForeign(IoRequest* req, int result) {
  assert(result <= 0);
  // Signalled under the lock: once the owner can take the completion it may
  // run it and destroy the queue, so the poster must be done with it by then.
  std::lock_guard lock(foreign_mu_);
  foreign_posted_.emplace_back(req, result);
  if (foreign_fd_ < 0) return;  // the owner polls the list instead
  uint64_t one = 1;
  while (::write(foreign_fd_, &one, sizeof one) < 0 && errno == EINTR) {
  }
}

int IoQueue::RunForeign(bool wait) {
  auto [watch_fd, watch_events] = wait ? TakeWatch() : std::pair<int, short>{-1, 0};
  if (foreign_outstanding_ == 0) return 0;
  std::vector<std::pair<IoRequest*, int>> posted;
  bool watched_ready = false;
  for (;;) {
    if (foreign_fd_ >= 0) {
      uint64_t count;
      (void)!::read(foreign_fd_, &count, sizeof count);  // EAGAIN: nothing signalled
    }
    {
      std::lock_guard lock(foreign_mu_);
      posted.swap(foreign_posted_);
    }
    if (!posted.empty() || !wait || watched_ready) break;
    if (foreign_fd_ >= 0) {
      pollfd p[2] = {{foreign_fd_, POLLIN, 0}, {watch_fd, watch_events, 0}};
      int rc = ::poll(p, watch_fd >= 0 ? 2 : 1, -1);
      watched_ready = rc > 0 && watch_fd >= 0 && p[1].revents != 0;
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  assert(posted.size() <= foreign_outstanding_);
  foreign_outstanding_ -= static_cast<uint32_t>(posted.size());
  for (auto [req, result] : posted) req->done(req, result);
  return static_cast<int>(posted.size()) + (watched_ready ? 1 : 0);
}

}  // namespace edgestor
