// FaultDevice: an in-memory Device that loses unflushed writes on PowerCut().
//
// Model: durable_ is what a disk holds after power loss; pending_ lists the
// writes completed since the last flush, in completion order; current_ is
// durable_ with pending_ applied, i.e. what reads see. Invariant (between
// operations, unless durable_image() was handed out):
//   current_ == durable_ + pending_ applied in order.
#include "io/fault_device.h"

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <cstring>
#include <deque>
#include <utility>

namespace edgestor {

namespace {

std::string Where(uint64_t offset, size_t len) {
  return std::to_string(len) + " bytes at offset " + std::to_string(offset) + " of fault-device";
}

void Apply(std::vector<uint8_t>& image, uint64_t offset, const std::vector<uint8_t>& data) {
  assert(offset + data.size() <= image.size());
  std::copy(data.begin(), data.end(), image.begin() + static_cast<ptrdiff_t>(offset));
}

// Buffers must be aligned as on a real O_DIRECT device, so that code tested
// here does not fail only in production.
Status CheckBuffer(const void* buf, uint64_t offset, size_t len) {
  if (reinterpret_cast<uintptr_t>(buf) % kIoAlignment == 0) return Status::Ok();
  return Status(EINVAL, "I/O buffer not aligned to " + std::to_string(kIoAlignment) + ": " + Where(offset, len));
}

}  // namespace

// Requests wait in `queue_` until Poll(), which runs them all under the
// device mutex and then calls their callbacks without it, so a callback may
// use the device (sync path or this queue) freely.
class FaultDevice::Queue final : public IoQueue {
 public:
  explicit Queue(FaultDevice& device) : device_(device) {}
  // Requests never polled are dropped, as a crash would drop them.
  ~Queue() override {
    for (IoRequest* req : queue_) device_.queued_bytes_.fetch_sub(req->length, std::memory_order_relaxed);
  }

  void Submit(IoRequest* req) override {
    assert(req != nullptr && req->done != nullptr);
    queue_.push_back(req);
    device_.queued_bytes_.fetch_add(req->length, std::memory_order_relaxed);
  }

  int Poll(bool wait) override {
    int n = RunForeign(/*wait=*/false);
    if (!queue_.empty()) n += RunQueued(wait);
    if (wait && n == 0) n += RunForeign(/*wait=*/true);
    return n;
  }

  uint32_t InFlight() const override { return static_cast<uint32_t>(queue_.size()) + foreign_outstanding(); }

 private:
  int RunQueued(bool wait) {
    // Only the requests present now: callbacks may submit more.
    std::vector<std::pair<IoRequest*, int>> finished;
    finished.reserve(queue_.size());
    {
      std::unique_lock<std::mutex> lock(device_.mu_);
      if (device_.holding_) {
        if (!wait) return 0;
        device_.released_.wait(lock, [this] { return !device_.holding_; });
      }
      for (IoRequest* req : queue_) {
        finished.emplace_back(req, -Execute(*req).code());
        device_.queued_bytes_.fetch_sub(req->length, std::memory_order_relaxed);
      }
    }
    queue_.clear();
    for (auto [req, result] : finished) req->done(req, result);
    return static_cast<int>(finished.size());
  }

  // REQUIRES: device_.mu_ held.
  Status Execute(const IoRequest& req) {
    switch (req.op) {
      case IoOp::kRead: return device_.ReadLocked(req.offset, req.buf, req.length);
      case IoOp::kWrite: return device_.WriteLocked(req.offset, req.buf, req.length);
      case IoOp::kFlush: return device_.FlushLocked();
    }
    return Status(EINVAL, "unknown I/O operation");
  }

  FaultDevice& device_;
  std::deque<IoRequest*> queue_;
};

FaultDevice::FaultDevice(uint64_t size) : durable_(size, 0), current_(size, 0) {
  assert(size % kSectorSize == 0);
}

FaultDevice::~FaultDevice() = default;

uint64_t FaultDevice::size() const { return current_.size(); }  // never changes

std::unique_ptr<IoQueue> FaultDevice::CreateQueue(uint32_t depth) {
  assert(depth > 0);
  (void)depth;  // every request "completes" at the next Poll; no ring to size
  return std::make_unique<Queue>(*this);
}

Status FaultDevice::ReadSync(uint64_t offset, void* buf, size_t len) {
  std::unique_lock<std::mutex> lock(mu_);
  WaitForSyncRelease(lock);
  return ReadLocked(offset, buf, len);
}

Status FaultDevice::WriteSync(uint64_t offset, const void* buf, size_t len) {
  std::unique_lock<std::mutex> lock(mu_);
  WaitForSyncRelease(lock);
  return WriteLocked(offset, buf, len);
}

void FaultDevice::WaitForSyncRelease(std::unique_lock<std::mutex>& lock) {
  if (!holding_sync_) return;
  sync_io_waiting_++;
  sync_released_.wait(lock, [this] { return !holding_sync_; });
  sync_io_waiting_--;
}

void FaultDevice::HoldSyncIo() {
  std::lock_guard<std::mutex> lock(mu_);
  holding_sync_ = true;
}

void FaultDevice::ReleaseSyncIo() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    holding_sync_ = false;
  }
  sync_released_.notify_all();
}

uint64_t FaultDevice::sync_io_waiting() const {
  std::lock_guard<std::mutex> lock(mu_);
  return sync_io_waiting_;
}

Status FaultDevice::FlushSync() {
  std::lock_guard<std::mutex> lock(mu_);
  return FlushLocked();
}

DeviceStats FaultDevice::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

// Argument errors come first and never count as operations; then the
// injected faults. Only operations that succeed count towards FailAfter().
Status FaultDevice::CheckOp(uint64_t offset, size_t len, bool is_io) {
  if (is_io) {
    if (offset % kSectorSize != 0 || len % kSectorSize != 0) return Status(EINVAL, "unaligned I/O: " + Where(offset, len));
    if (offset > current_.size() || len > current_.size() - offset) {
      return Status(EINVAL, "I/O past end of device (" + std::to_string(current_.size()) + " bytes): " + Where(offset, len));
    }
  }
  if (failed_) return Status(EIO, "fault-device has lost power");
  if (is_io) {
    for (const auto& [start, count] : error_ranges_) {
      if (offset < start + count && start < offset + len) return Status(EIO, "injected media error: " + Where(offset, len));
    }
  }
  if (ops_until_failure_ == 0) {
    failed_ = true;
    return Status(EIO, "fault-device has lost power");
  }
  if (ops_until_failure_ > 0) ops_until_failure_--;
  return Status::Ok();
}

Status FaultDevice::ReadLocked(uint64_t offset, void* buf, size_t len) {
  RefreshAfterImageAccessLocked();
  ES_RETURN_IF_ERROR(CheckBuffer(buf, offset, len));
  ES_RETURN_IF_ERROR(CheckOp(offset, len, /*is_io=*/true));
  if (len > 0) std::memcpy(buf, current_.data() + offset, len);
  stats_.reads++;
  stats_.bytes_read += len;
  return Status::Ok();
}

Status FaultDevice::WriteLocked(uint64_t offset, const void* buf, size_t len) {
  RefreshAfterImageAccessLocked();
  ES_RETURN_IF_ERROR(CheckBuffer(buf, offset, len));
  ES_RETURN_IF_ERROR(CheckOp(offset, len, /*is_io=*/true));
  ES_RETURN_IF_ERROR(BackLocked(offset, len));
  const auto* p = static_cast<const uint8_t*>(buf);
  PendingWrite& w = pending_.emplace_back(PendingWrite{offset, std::vector<uint8_t>(p, p + len)});
  Apply(current_, offset, w.data);
  stats_.writes++;
  stats_.bytes_written += len;
  return Status::Ok();
}

Status FaultDevice::BackLocked(uint64_t offset, uint64_t len) {
  if (len == 0) return Status::Ok();
  constexpr uint64_t kHostBlock = 4096;
  if (host_backed_.empty()) host_backed_.assign((current_.size() + kHostBlock - 1) / kHostBlock, false);
  uint64_t first = offset / kHostBlock, end = (offset + len + kHostBlock - 1) / kHostBlock;
  assert(end <= host_backed_.size());
  if (host_full_) {
    for (uint64_t b = first; b < end; b++)
      if (!host_backed_[b]) return Status(ENOSPC, "host file system is full (simulated): " + Where(offset, len));
  }
  for (uint64_t b = first; b < end; b++) host_backed_[b] = true;
  return Status::Ok();
}

Status FaultDevice::Allocate(uint64_t offset, uint64_t len) {
  std::lock_guard<std::mutex> lock(mu_);
  if (offset > current_.size() || len > current_.size() - offset) return Status(EINVAL, "allocation past the end: " + Where(offset, len));
  if (failed_) return Status(EIO, "fault-device has lost power");
  return BackLocked(offset, len);
}

bool FaultDevice::lost_power() const {
  std::lock_guard<std::mutex> lock(mu_);
  return failed_;
}

void FaultDevice::SetHostFull(bool full) {
  std::lock_guard<std::mutex> lock(mu_);
  host_full_ = full;
}

uint64_t FaultDevice::host_backed_blocks() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<uint64_t>(std::count(host_backed_.begin(), host_backed_.end(), true));
}

Status FaultDevice::FlushLocked() {
  RefreshAfterImageAccessLocked();
  ES_RETURN_IF_ERROR(CheckOp(0, 0, /*is_io=*/false));
  for (const PendingWrite& w : pending_) Apply(durable_, w.offset, w.data);
  pending_.clear();
  stats_.flushes++;
  return Status::Ok();
}

void FaultDevice::RefreshAfterImageAccessLocked() {
  if (!image_exposed_) return;
  current_ = durable_;
  for (const PendingWrite& w : pending_) Apply(current_, w.offset, w.data);
  image_exposed_ = false;
}

void FaultDevice::FailAfter(int64_t ops) {
  std::lock_guard<std::mutex> lock(mu_);
  // Disarming does not restore power once lost; only PowerCut() does.
  ops_until_failure_ = ops < 0 ? -1 : ops;
}

uint64_t FaultDevice::PowerCut(std::mt19937_64& rng, double tear_probability) {
  assert(tear_probability >= 0.0 && tear_probability <= 1.0);
  std::lock_guard<std::mutex> lock(mu_);
  std::bernoulli_distribution coin(0.5);
  std::bernoulli_distribution tear(tear_probability);
  uint64_t lost = 0;
  for (const PendingWrite& w : pending_) {
    if (!coin(rng)) {
      lost++;
      continue;
    }
    if (!tear(rng)) {
      Apply(durable_, w.offset, w.data);
      continue;
    }
    // A torn write: each sector lands or not, independently.
    bool torn = false;
    for (size_t at = 0; at < w.data.size(); at += kSectorSize) {
      if (coin(rng)) {
        std::memcpy(durable_.data() + w.offset + at, w.data.data() + at, kSectorSize);
      } else {
        torn = true;
      }
    }
    if (torn) lost++;
  }
  pending_.clear();
  current_ = durable_;
  failed_ = false;
  ops_until_failure_ = -1;
  return lost;
}

void FaultDevice::HoldCompletions() {
  std::lock_guard<std::mutex> lock(mu_);
  holding_ = true;
}

void FaultDevice::ReleaseCompletions() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    holding_ = false;
  }
  released_.notify_all();
}

uint64_t FaultDevice::queued_bytes() const { return queued_bytes_.load(std::memory_order_relaxed); }

void FaultDevice::InjectError(uint64_t offset, uint64_t len) {
  std::lock_guard<std::mutex> lock(mu_);
  error_ranges_.emplace_back(offset, len);
}

void FaultDevice::ClearErrors() {
  std::lock_guard<std::mutex> lock(mu_);
  error_ranges_.clear();
}

std::vector<uint8_t>& FaultDevice::durable_image() {
  std::lock_guard<std::mutex> lock(mu_);
  image_exposed_ = true;
  return durable_;
}

size_t FaultDevice::unflushed_writes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return pending_.size();
}

}  // namespace edgestor
