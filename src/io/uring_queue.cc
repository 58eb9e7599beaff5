// The asynchronous path of FileDevice: one io_uring ring per IoQueue, with a
// small synchronous fallback for systems where io_uring is not allowed.
#include <liburing.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cassert>
#include <cerrno>
#include <cstring>
#include <deque>
#include <mutex>
#include <utility>

#include <spdlog/spdlog.h>

#include "io/file_device_impl.h"

namespace edgestor {

namespace {

constexpr uint32_t kMinQueueDepth = 8;
// io_uring accepts up to 32768 entries; more than this buys nothing for one
// thread and pins a lot of kernel memory.
constexpr uint32_t kMaxQueueDepth = 4096;

uint32_t RingDepth(uint32_t depth) {
  uint32_t d = std::bit_ceil(std::clamp(depth, kMinQueueDepth, kMaxQueueDepth));
  assert(std::has_single_bit(d) && d >= kMinQueueDepth && d <= kMaxQueueDepth);
  return d;
}

// Turns a kernel result into the IoRequest contract: 0 or -errno, with a
// short read reported as -EIO. A short write is usually a host file system
// that just filled (buffered I/O on tmpfs, say): the rest is written here to
// learn why, so that the request fails with ENOSPC, not a vague EIO.
int CompletionResult(int fd, const IoRequest& req, int res) {
  if (res < 0) return res;
  if (req.op == IoOp::kFlush) return 0;
  if (static_cast<uint32_t>(res) == req.length) return 0;
  if (req.op != IoOp::kWrite) return -EIO;
  uint32_t done = static_cast<uint32_t>(res);
  while (done < req.length) {
    ssize_t n = pwrite(fd, req.buf + done, req.length - done, static_cast<off_t>(req.offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno == EINVAL ? -EIO : -errno;  // EINVAL: an unaligned rest under O_DIRECT
    if (n == 0) return -EIO;
    done += static_cast<uint32_t>(n);
  }
  return 0;
}

void CountSuccess(FileDevice& device, const IoRequest& req) {
  switch (req.op) {
    case IoOp::kRead: device.CountRead(req.length); break;
    case IoOp::kWrite: device.CountWrite(req.length); break;
    case IoOp::kFlush: device.CountFlush(); break;
  }
}

// Calls `req->done`. A request must complete exactly once.
void Complete(FileDevice& device, IoRequest* req, int result) {
  assert(req->done != nullptr);
  assert(result <= 0);
  if (result == 0) CountSuccess(device, *req);
  req->done(req, result);
}

class UringQueue final : public IoQueue {
 public:
  UringQueue(FileDevice& device, uint32_t depth) : device_(device), fd_(device.fd()), depth_(depth) {
    // COOP_TASKRUN: completions are processed when this thread enters the
    // kernel anyway, instead of interrupting it for each one (kernel 5.19+).
    init_result_ = io_uring_queue_init(depth_, &ring_, IORING_SETUP_COOP_TASKRUN);
    if (init_result_ == -EINVAL) init_result_ = io_uring_queue_init(depth_, &ring_, 0);
  }
  ~UringQueue() override;

  // 0, or the -errno from io_uring_queue_init: then the queue is unusable.
  int init_result() const { return init_result_; }

  void Submit(IoRequest* req) override;
  int Poll(bool wait) override;
  uint32_t InFlight() const override {
    return static_cast<uint32_t>(overflow_.size() + rejected_.size()) + in_ring_ + foreign_outstanding();
  }

 private:
  bool TryPrepare(IoRequest* req);
  void FillRing();
  bool SubmitToKernel(bool wait);
  int CompleteRejected();
  int Reap();
  // While foreign completions are outstanding, a poll of their eventfd sits
  // in the ring, so a thread waiting for the device also wakes for them.
  void ArmForeignWakeup();
  // Polls for the fd WatchFd named, one per event (POLLIN, POLLOUT), so a
  // waiting thread also wakes for its socket. One-shot; at most one of each
  // sits in the ring, and one armed for an earlier wait still counts.
  void ArmFdWakeups();
  // A wakeup poll's completion (not a request's): returns true and notes
  // that it left the ring; *watched: it was an fd's, not the eventfd's.
  bool TakeWakeup(const io_uring_cqe* cqe, bool* watched);
  bool IsWakeup(const io_uring_cqe* cqe) const {
    void* data = io_uring_cqe_get_data(cqe);
    return data == &foreign_wakeup_ || data == &fd_wakeup_[0] || data == &fd_wakeup_[1];
  }

  FileDevice& device_;
  const int fd_;  // borrowed from device_
  const uint32_t depth_;
  io_uring ring_{};
  int init_result_ = 0;
  uint32_t in_ring_ = 0;  // prepared or submitted, CQE not yet reaped; <= depth_
  std::deque<IoRequest*> overflow_;  // valid, waiting for ring space
  std::deque<std::pair<IoRequest*, int>> rejected_;  // failed the checks; completed by Poll
  bool polling_ = false;
  bool foreign_wakeup_armed_ = false;  // its poll is in the ring (not counted in in_ring_)
  char foreign_wakeup_ = 0;            // its address marks the poll's completion
  // The same for the watched fd: [0] POLLIN, [1] POLLOUT.
  bool fd_wakeup_armed_[2] = {false, false};
  char fd_wakeup_[2] = {0, 0};
};

UringQueue::~UringQueue() {
  if (init_result_ != 0) return;
  // The kernel may still be writing into submitters' buffers; wait for it
  // before the ring goes away. Callbacks are not run: the owner abandoned them.
  if (InFlight() > 0) spdlog::warn("I/O queue on {} destroyed with {} requests in flight", device_.name(), InFlight());
  while (in_ring_ > 0) {
    int rc = io_uring_submit_and_wait(&ring_, 1);
    if (rc < 0 && rc != -EINTR) break;
    io_uring_cqe* cqe = nullptr;
    while (in_ring_ > 0 && io_uring_peek_cqe(&ring_, &cqe) == 0) {
      bool wakeup = IsWakeup(cqe);
      io_uring_cq_advance(&ring_, 1);
      if (!wakeup) in_ring_--;
    }
  }
  io_uring_queue_exit(&ring_);
}

void UringQueue::Submit(IoRequest* req) {
  assert(req != nullptr && req->done != nullptr);
  int check = device_.CheckRequest(*req);
  if (check != 0) {
    rejected_.emplace_back(req, check);
    return;
  }
  // Keep the order of submission: nothing may overtake the overflow list.
  if (!overflow_.empty() || !TryPrepare(req)) overflow_.push_back(req);
}

// Puts `req` into a submission queue entry, if the ring has room.
bool UringQueue::TryPrepare(IoRequest* req) {
  if (in_ring_ >= depth_) return false;  // bounds the CQEs outstanding, too
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  if (sqe == nullptr) return false;
  switch (req->op) {
    case IoOp::kRead: io_uring_prep_read(sqe, fd_, req->buf, req->length, req->offset); break;
    case IoOp::kWrite: io_uring_prep_write(sqe, fd_, req->buf, req->length, req->offset); break;
    case IoOp::kFlush: io_uring_prep_fsync(sqe, fd_, IORING_FSYNC_DATASYNC); break;
  }
  io_uring_sqe_set_data(sqe, req);
  in_ring_++;
  return true;
}

void UringQueue::FillRing() {
  while (!overflow_.empty() && TryPrepare(overflow_.front())) overflow_.pop_front();
}

// Returns false on an error that retrying now would not cure.
bool UringQueue::SubmitToKernel(bool wait) {
  for (;;) {
    int rc = wait ? io_uring_submit_and_wait(&ring_, 1) : io_uring_submit(&ring_);
    if (rc >= 0) return true;
    if (rc == -EINTR) continue;
    // EAGAIN/EBUSY: the kernel is short of resources or completions; the
    // entries stay in the SQ and the next Poll() tries again.
    if (rc != -EAGAIN && rc != -EBUSY) spdlog::error("io_uring_enter on {} failed: {}", device_.name(), strerror(-rc));
    return false;
  }
}

int UringQueue::CompleteRejected() {
  int n = 0;
  // Only those present now: a callback may submit more invalid requests.
  for (size_t count = rejected_.size(); count > 0; count--, n++) {
    auto [req, result] = rejected_.front();
    rejected_.pop_front();
    Complete(device_, req, result);
  }
  return n;
}

int UringQueue::Reap() {
  int n = 0;
  io_uring_cqe* cqe = nullptr;
  while (io_uring_peek_cqe(&ring_, &cqe) == 0) {
    bool watched = false;
    if (TakeWakeup(cqe, &watched)) {
      io_uring_cq_advance(&ring_, 1);
      n += watched ? 1 : RunForeign(/*wait=*/false);
      continue;
    }
    auto* req = static_cast<IoRequest*>(io_uring_cqe_get_data(cqe));
    int res = cqe->res;
    io_uring_cq_advance(&ring_, 1);  // before the callback, which may Submit
    assert(in_ring_ > 0);
    in_ring_--;
    Complete(device_, req, CompletionResult(fd_, *req, res));
    n++;
  }
  return n;
}

int UringQueue::Poll(bool wait) {
  assert(!polling_ && "IoQueue::Poll is not reentrant");
  polling_ = true;
  int n = CompleteRejected();
  n += RunForeign(/*wait=*/false);
  FillRing();
  if (wait && n == 0) {
    ArmForeignWakeup();
    ArmFdWakeups();
  }
  SubmitToKernel(/*wait=*/wait && n == 0 && (in_ring_ > 0 || foreign_wakeup_armed_));
  n += Reap();
  // A wait can end early (a signal, a wakeup whose completion an earlier
  // look already ran) with nothing reaped; wait again.
  while (wait && n == 0 && (in_ring_ > 0 || foreign_outstanding() > 0)) {
    ArmForeignWakeup();
    if (!(in_ring_ > 0 || foreign_wakeup_armed_) || !SubmitToKernel(/*wait=*/true)) break;
    n += Reap();
  }
  // Reaping made room, and callbacks may have submitted follow-up requests:
  // start them now rather than leaving the device idle until the next Poll().
  FillRing();
  if (io_uring_sq_ready(&ring_) > 0) SubmitToKernel(/*wait=*/false);
  polling_ = false;
  return n;
}

void UringQueue::ArmForeignWakeup() {
  if (foreign_wakeup_armed_ || foreign_outstanding() == 0 || foreign_fd() < 0) return;
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  if (sqe == nullptr) return;  // the SQ is full: device completions wake this Poll, the next one arms it
  io_uring_prep_poll_add(sqe, foreign_fd(), POLLIN);
  io_uring_sqe_set_data(sqe, &foreign_wakeup_);
  foreign_wakeup_armed_ = true;
}

void UringQueue::ArmFdWakeups() {
  auto [fd, events] = TakeWatch();
  if (fd < 0) return;
  const short kinds[2] = {POLLIN, POLLOUT};
  for (int i = 0; i < 2; i++) {
    if (!(events & kinds[i]) || fd_wakeup_armed_[i]) continue;
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (sqe == nullptr) return;  // the SQ is full: device completions end this wait
    io_uring_prep_poll_add(sqe, fd, kinds[i]);
    io_uring_sqe_set_data(sqe, &fd_wakeup_[i]);
    fd_wakeup_armed_[i] = true;
  }
}

bool UringQueue::TakeWakeup(const io_uring_cqe* cqe, bool* watched) {
  void* data = io_uring_cqe_get_data(cqe);
  for (int i = 0; i < 2; i++) {
    if (data != &fd_wakeup_[i]) continue;
    assert(fd_wakeup_armed_[i]);
    fd_wakeup_armed_[i] = false;
    *watched = true;
    return true;
  }
  if (data != &foreign_wakeup_) return false;
  foreign_wakeup_armed_ = false;
  *watched = false;
  return true;
}

// Used where io_uring_queue_init is refused (seccomp, old kernels, memlock):
// correct but not concurrent, each request runs synchronously inside Poll().
class SyncQueue final : public IoQueue {
 public:
  explicit SyncQueue(FileDevice& device) : device_(device) {}
  ~SyncQueue() override {
    if (!queue_.empty()) spdlog::warn("I/O queue on {} destroyed with {} requests not run", device_.name(), queue_.size());
  }

  void Submit(IoRequest* req) override {
    assert(req != nullptr && req->done != nullptr);
    queue_.push_back(req);
  }

  int Poll(bool wait) override {
    int n = RunForeign(/*wait=*/false);
    for (size_t count = queue_.size(); count > 0; count--, n++) {
      IoRequest* req = queue_.front();
      queue_.pop_front();
      req->done(req, -Execute(*req).code());  // the sync path counts stats
    }
    if (wait && n == 0) n += RunForeign(/*wait=*/true);
    return n;
  }

  uint32_t InFlight() const override { return static_cast<uint32_t>(queue_.size()) + foreign_outstanding(); }

 private:
  Status Execute(const IoRequest& req) {
    switch (req.op) {
      case IoOp::kRead: return device_.ReadSync(req.offset, req.buf, req.length);
      case IoOp::kWrite: return device_.WriteSync(req.offset, req.buf, req.length);
      case IoOp::kFlush: return device_.FlushSync();
    }
    return Status(EINVAL, "unknown I/O operation");
  }

  FileDevice& device_;
  std::deque<IoRequest*> queue_;
};

}  // namespace

std::unique_ptr<IoQueue> CreateFileQueue(FileDevice& device, uint32_t depth) {
  auto queue = std::make_unique<UringQueue>(device, RingDepth(depth));
  int rc = queue->init_result();
  if (rc == 0) return queue;
  static std::once_flag warned;
  std::call_once(warned, [&] {
    spdlog::warn("io_uring unavailable ({}); I/O queues on {} run synchronously", strerror(-rc), device.name());
  });
  return std::make_unique<SyncQueue>(device);
}

}  // namespace edgestor
