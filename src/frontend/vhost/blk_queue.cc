#include "frontend/vhost/blk_queue.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <cstring>
#include <utility>

#include <spdlog/spdlog.h>

#include "frontend/vhost/vhost_user_protocol.h"

namespace edgestor::vhost {

// One guest request in flight.
struct BlkQueue::Request {
  VolumeIo io;
  BlkQueue* queue;
  uint16_t head;
  std::vector<Segment> in;   // device-writable buffers: data (reads), then the status byte
  std::vector<Segment> out;  // device-readable buffers: header, then data (writes)
  uint64_t in_bytes = 0;     // writable bytes, status byte included
  uint64_t out_bytes = 0;
  AlignedBuffer bounce;
  uint64_t bounce_capacity = 0;
  bool direct = false;       // io.buf points into guest memory (no bounce)
  uint32_t written = 0;      // bytes written into the guest's buffers, status included
  uint64_t budgeted = 0;     // bytes taken from the budgets, given back in Finish
};

namespace {

// Copies `length` bytes starting `skip` bytes into the chain's buffers.
void Gather(const std::vector<Segment>& segments, uint64_t skip, uint8_t* dst, uint64_t length) {
  for (const Segment& s : segments) {
    if (length == 0) return;
    if (skip >= s.length) {
      skip -= s.length;
      continue;
    }
    uint64_t n = std::min<uint64_t>(s.length - skip, length);
    std::memcpy(dst, s.data + skip, n);
    dst += n;
    length -= n;
    skip = 0;
  }
}

void Scatter(const std::vector<Segment>& segments, const uint8_t* src, uint64_t length) {
  for (const Segment& s : segments) {
    if (length == 0) return;
    uint64_t n = std::min<uint64_t>(s.length, length);
    std::memcpy(s.data, src, n);
    src += n;
    length -= n;
  }
}

// The `length` bytes starting `skip` bytes into the chain, if they lie in
// one piece of host memory aligned for O_DIRECT (a guest buffer of
// physically contiguous pages, as a guest's large requests often are);
// nullptr otherwise.
uint8_t* ContiguousAligned(const std::vector<Segment>& segments, uint64_t skip, uint64_t length) {
  uint8_t* start = nullptr;
  uint64_t found = 0;
  for (const Segment& s : segments) {
    if (found == length) break;
    if (skip >= s.length) {
      skip -= s.length;
      continue;
    }
    uint8_t* piece = s.data + skip;
    if (start == nullptr) start = piece;
    else if (piece != start + found) return nullptr;
    found += std::min<uint64_t>(s.length - skip, length - found);
    skip = 0;
  }
  if (found != length || reinterpret_cast<uintptr_t>(start) % kBufferAlignment != 0) return nullptr;
  return start;
}

uint8_t* StatusByte(const std::vector<Segment>& in) {
  const Segment& last = in.back();
  return last.data + last.length - 1;
}

}  // namespace

BlkQueue::BlkQueue(const BlkSettings& settings, uint32_t index)
    : settings_(settings), index_(index), budget_(settings.inflight_bytes) {}

BlkQueue::~BlkQueue() { Stop(); }

Status BlkQueue::Start(std::shared_ptr<const GuestMemory> memory, const Virtqueue::Layout& layout,
                       uint16_t last_avail_idx, bool event_idx, int kick_fd, InflightQueueHeader* inflight,
                       std::shared_ptr<void> inflight_owner) {
  if (running()) return Status(EBUSY, "queue already running");
  ES_RETURN_IF_ERROR(ring_.Start(std::move(memory), layout, last_avail_idx, event_idx));
  inflight_ = inflight;
  inflight_owner_ = std::move(inflight_owner);
  resubmit_.clear();
  if (inflight_) {
    InflightQueueHeader header;
    std::memcpy(&header, inflight_, sizeof header);  // once: the front-end may change it under us
    if (header.desc_num != layout.size) return Status(EINVAL, "inflight region is for another queue size");
    resubmit_ = RecoverInflight(header);
  }
  stop_fd_ = ::eventfd(0, EFD_CLOEXEC);
  if (stop_fd_ < 0) return Status(errno, "eventfd failed");
  channel_ = settings_.make_channel();
  kick_fd_ = kick_fd;
  stopping_ = false;
  broken_ = false;
  thread_ = std::thread(&BlkQueue::Run, this);
  return Status::Ok();
}

uint16_t BlkQueue::Stop() {
  if (!running()) return ring_.last_avail_idx();
  stopping_ = true;
  uint64_t one = 1;
  (void)!::write(stop_fd_, &one, sizeof one);
  thread_.join();
  ::close(stop_fd_);
  stop_fd_ = -1;
  channel_.reset();
  return ring_.last_avail_idx();
}

std::vector<uint16_t> BlkQueue::RecoverInflight(const InflightQueueHeader& h) {
  assert(h.desc_num == ring_.size());
  if (h.version == 0) {  // fresh region
    inflight_->version = 1;
    inflight_->used_idx = ring_.used_idx();
    return {};
  }
  if (h.used_idx != ring_.used_idx()) {
    // Stopped between returning last_batch_head and recording it.
    if (h.last_batch_head < h.desc_num) TrackedDesc(h.last_batch_head)->inflight = 0;
    inflight_->used_idx = ring_.used_idx();
  }
  std::vector<std::pair<uint64_t, uint16_t>> taken;
  for (uint16_t i = 0; i < h.desc_num; i++)
    if (TrackedDesc(i)->inflight == 1) taken.emplace_back(TrackedDesc(i)->counter, i);
  std::sort(taken.begin(), taken.end());
  std::vector<uint16_t> heads;
  for (auto& [counter, head] : taken) {
    heads.push_back(head);
    inflight_counter_ = std::max(inflight_counter_, counter);
  }
  // Every head taken is either returned or still in flight.
  ring_.set_last_avail_idx(static_cast<uint16_t>(ring_.used_idx() + heads.size()));
  spdlog::debug("vhost-blk queue {}: inflight region: used index {}, {} request(s) in flight", index_,
                ring_.used_idx(), heads.size());
  if (!heads.empty())
    spdlog::warn("vhost-blk queue {}: running {} request(s) a previous back-end left in flight", index_, heads.size());
  return heads;
}

void BlkQueue::Run() {
  for (uint16_t head : resubmit_) Begin(head);
  resubmit_.clear();
  // Parked requests were taken from the ring: they run even when stopping.
  while (!stopping_ || !parked_.empty()) {
    StartParked();
    bool took = !broken_ && !stopping_ && parked_.empty() && TakeAvailable();
    if (channel_->InFlight() > 0) {
      channel_->Poll(/*wait=*/true);
      Notify();
      continue;
    }
    Notify();
    if (!parked_.empty()) {
      WaitForSharedBudget();
      continue;
    }
    if (stopping_) break;
    if (took || (!broken_ && ring_.ArmKick())) continue;  // more may have come meanwhile
    pollfd fds[2] = {{kick_fd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
    // Idle: once no request came for a while, the kept buffers go back.
    int rc = ::poll(fds, 2, bounce_cache_.kept_bytes() > 0 ? kIdleReleaseMs : -1);
    if (rc == 0) bounce_cache_.Clear();
    if (rc < 0 && errno != EINTR) break;
    uint64_t count;
    if (fds[0].revents & POLLIN) (void)!::read(kick_fd_, &count, sizeof count);
  }
  // Stopping: requests already taken are finished and returned.
  while (in_flight_ > 0 && channel_->InFlight() > 0) channel_->Poll(/*wait=*/true);
  Notify();
  bounce_cache_.Clear();
}

void BlkQueue::StartParked() {
  while (!parked_.empty() && TryAcquireBoth(budget_, settings_.shared_budget, parked_.front()->budgeted)) {
    Request* r = parked_.front();
    parked_.pop_front();
    StartData(r);
  }
}

void BlkQueue::WaitForSharedBudget() {
  assert(!parked_.empty() && channel_->InFlight() == 0);
  // Once stopping, stop_fd_ stays readable: just sleep.
  pollfd stop{stop_fd_, POLLIN, 0};
  ::poll(stopping_ ? nullptr : &stop, stopping_ ? 0 : 1, kBudgetRecheckMs);
}

bool BlkQueue::TakeAvailable() {
  bool took = false;
  // Bounded batch, so completions are reaped between batches; none while a
  // request waits for budget.
  for (int i = 0; i < 64 && parked_.empty(); i++) {
    auto head = ring_.Pop();
    if (!head.ok()) {
      spdlog::error("vhost-blk queue {}: {}; queue stopped until the guest resets it", index_, head.status().message());
      broken_ = true;
      return took;
    }
    if (!head.value()) break;
    took = true;
    Begin(*head.value());
  }
  return took;
}

void BlkQueue::Begin(uint16_t head) {
  Request* r = NewRequest();
  r->queue = this;
  r->head = head;
  in_flight_++;
  if (inflight_) {
    TrackedDesc(head)->counter = ++inflight_counter_;
    std::atomic_thread_fence(std::memory_order_release);
    TrackedDesc(head)->inflight = 1;
  }
  std::vector<Segment> chain;
  Status walked = ring_.Walk(head, &chain);
  bool writable_seen = false, layout_ok = true;
  for (const Segment& s : chain) {
    if (s.device_writable) {
      writable_seen = true;
      r->in.push_back(s);
      r->in_bytes += s.length;
    } else {
      layout_ok &= !writable_seen;  // readable buffers come first
      r->out.push_back(s);
      r->out_bytes += s.length;
    }
  }
  if (!walked.ok() || r->in_bytes == 0) {
    // A chain we could not walk (or without a status byte) is returned
    // untouched: which of its buffers is the status byte cannot be trusted.
    spdlog::warn("vhost-blk queue {}: request returned unanswered: {}", index_,
                 walked.ok() ? "no writable buffer for the status" : walked.message());
    r->in.clear();
    r->in_bytes = 0;
    return Finish(r, kBlkStatusIoErr);
  }
  BlkOutHeader header;
  if (!layout_ok || r->out_bytes < sizeof header) return Finish(r, kBlkStatusIoErr);
  Gather(r->out, 0, reinterpret_cast<uint8_t*>(&header), sizeof header);

  uint64_t data_in = r->in_bytes - 1, data_out = r->out_bytes - sizeof header;
  VolumeIo& io = r->io;
  io.context = r;
  io.done = &BlkQueue::OnVolumeIoDone;
  io.stats = settings_.io_stats;
  switch (header.type) {
    case kBlkIn:
    case kBlkOut: {
      bool write = header.type == kBlkOut;
      uint64_t length = write ? data_out : data_in;
      if (write && settings_.read_only) return Finish(r, kBlkStatusIoErr);
      if (length % 512 || length > kMaxRequestBytes || header.sector > (UINT64_MAX >> 9))
        return Finish(r, kBlkStatusIoErr);
      if (length == 0) return Finish(r, kBlkStatusOk);
      io.op = write ? VolumeOp::kWrite : VolumeOp::kRead;
      io.offset = header.sector * 512;
      io.length = length;
      r->budgeted = length;
      if (!parked_.empty() || !TryAcquireBoth(budget_, settings_.shared_budget, length)) {
        parked_.push_back(r);  // after those parked before it: requests start in order
        return;
      }
      return StartData(r);
    }
    case kBlkFlushCmd:
      io.op = VolumeOp::kFlush;
      break;
    case kBlkGetId: {
      uint8_t id[kBlkIdBytes] = {};
      std::memcpy(id, settings_.serial.data(), std::min(settings_.serial.size(), kBlkIdBytes));
      uint64_t n = std::min<uint64_t>(data_in, kBlkIdBytes);
      Scatter(r->in, id, n);
      r->written = static_cast<uint32_t>(n);
      return Finish(r, kBlkStatusOk);
    }
    case kBlkDiscardCmd:
    case kBlkWriteZeroesCmd: {
      BlkDiscardWriteZeroes range;
      if (settings_.read_only || data_out != sizeof range) return Finish(r, kBlkStatusIoErr);  // max_discard_seg = 1
      Gather(r->out, sizeof header, reinterpret_cast<uint8_t*>(&range), sizeof range);
      if (range.num_sectors > kMaxDiscardSectors || range.sector > (UINT64_MAX >> 9))
        return Finish(r, kBlkStatusIoErr);
      io.op = header.type == kBlkDiscardCmd ? VolumeOp::kDiscard : VolumeOp::kWriteZeroes;
      io.offset = range.sector * 512;
      io.length = uint64_t{range.num_sectors} * 512;
      if (io.length == 0) return Finish(r, kBlkStatusOk);
      break;
    }
    default:
      return Finish(r, kBlkStatusUnsupported);
  }
  channel_->Submit(*settings_.volume, &io);
}

void BlkQueue::StartData(Request* r) {
  VolumeIo& io = r->io;
  assert(r->budgeted == io.length && (io.op == VolumeOp::kRead || io.op == VolumeOp::kWrite));
  // Data in one aligned piece of guest memory is read or written by the
  // device where it is: no copy. The guest could change a write's data
  // while it is written, but only its own (as with any disk); the memory
  // stays mapped until the request is answered, since the ring keeps the
  // table it started with (see Virtqueue::Start).
  bool write = io.op == VolumeOp::kWrite;
  uint8_t* guest_data = write ? ContiguousAligned(r->out, sizeof(BlkOutHeader), io.length)
                              : ContiguousAligned(r->in, 0, io.length);
  if (guest_data) {
    r->direct = true;
    io.buf = guest_data;
    direct_requests_++;
    return channel_->Submit(*settings_.volume, &io);
  }
  r->bounce = bounce_cache_.Take(io.length, &r->bounce_capacity);  // wholly overwritten before use
  if (!r->bounce) {
    spdlog::warn("vhost-blk queue {}: no memory for a {}-byte request", index_, io.length);
    return Finish(r, kBlkStatusIoErr);
  }
  // A write's data is copied once, now: the guest cannot change it later.
  if (io.op == VolumeOp::kWrite) Gather(r->out, sizeof(BlkOutHeader), r->bounce.get(), io.length);
  io.buf = r->bounce.get();
  channel_->Submit(*settings_.volume, &io);
}

void BlkQueue::OnVolumeIoDone(VolumeIo* io, const Status& status) {
  auto* r = static_cast<Request*>(io->context);
  if (status.ok() && io->op == VolumeOp::kRead) {
    if (!r->direct) Scatter(r->in, r->bounce.get(), io->length);
    r->written = static_cast<uint32_t>(io->length);
  }
  r->queue->Finish(r, status.ok() ? kBlkStatusOk : kBlkStatusIoErr);
}

void BlkQueue::Finish(Request* r, uint8_t status) {
  // The bounce buffer is done with (a read's data is in the guest's buffers):
  // its memory and budget are free before the guest sees the request return.
  if (r->bounce) bounce_cache_.Give(std::move(r->bounce), r->bounce_capacity);
  if (r->budgeted) ReleaseBoth(budget_, settings_.shared_budget, r->budgeted);
  if (r->in_bytes > 0) {
    *StatusByte(r->in) = status;
    r->written++;
  }
  if (inflight_) inflight_->last_batch_head = r->head;
  ring_.Push(r->head, r->written);
  if (inflight_) {
    TrackedDesc(r->head)->inflight = 0;
    std::atomic_thread_fence(std::memory_order_release);
    inflight_->used_idx = ring_.used_idx();
  }
  pushed_ = true;
  in_flight_--;
  Recycle(r);
}

// Requests are reused (with their segment lists' capacity): the ring's
// size of them at most.
BlkQueue::Request* BlkQueue::NewRequest() {
  if (spare_requests_.empty()) return new Request{};
  Request* r = spare_requests_.back().release();
  spare_requests_.pop_back();
  return r;
}

void BlkQueue::Recycle(Request* r) {
  assert(!r->bounce);
  if (spare_requests_.size() >= ring_.size()) {
    delete r;
    return;
  }
  std::vector<Segment> in = std::move(r->in), out = std::move(r->out);
  *r = Request{};
  r->in = std::move(in);
  r->out = std::move(out);
  r->in.clear();
  r->out.clear();
  spare_requests_.emplace_back(r);
}

void BlkQueue::Notify() {
  if (!pushed_) return;
  pushed_ = false;
  if (!ring_.ShouldNotify()) return;
  std::lock_guard lock(call_mu_);
  if (call_fd_ < 0) return;
  uint64_t one = 1;
  (void)!::write(call_fd_, &one, sizeof one);
}

int BlkQueue::ExchangeCallFd(int fd) {
  std::lock_guard lock(call_mu_);
  return std::exchange(call_fd_, fd);
}

}  // namespace edgestor::vhost
