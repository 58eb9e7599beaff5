#include "frontend/nbd/nbd_transmission.h"

#include <sys/uio.h>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>

#include <spdlog/spdlog.h>

#include "frontend/nbd/nbd_protocol.h"
#include "frontend/nbd/nbd_socket.h"

namespace edgestor::nbd {

namespace {

// Once the first byte of a request arrived, the rest (header and payload)
// must keep coming: a client silent this long mid-request is dropped.
constexpr int kMessageIdleTimeoutMs = 60'000;
// Requests in flight per connection are bounded by the options, and by this.
constexpr uint32_t kMaxQueueDepth = 1024;
// Slot buffers up to this size are kept for the next request; larger ones
// are freed when their request completes, so an idle connection holds at
// most queue depth x this much.
constexpr size_t kRetainedBufferBytes = 1 << 20;
// BLOCK_STATUS: extents per reply, and the range examined per request
// (Volume::Describe walks the map 4 KiB at a time under the volume's lock).
constexpr size_t kMaxExtentsPerReply = 1024;
constexpr uint64_t kMaxBlockStatusBytes = 256ull << 20;
constexpr size_t kBlockStatusEntryBytes = 8;
// Error messages sent to clients are cut to this length.
constexpr size_t kMaxErrorMessageBytes = 512;
// Successful replies sent in one sendmsg(), at most (two iovecs each).
constexpr size_t kMaxBatchedReplies = 64;
// How often a connection with nothing of its own in flight looks again for
// room in the shared budget other connections and queues hold.
constexpr int kSharedBudgetRecheckMs = 5;
static_assert(2 * kMaxBatchedReplies <= kMaxWriteParts);

// Maps an engine errno to the protocol's small set of error values.
uint32_t NbdError(int code) {
  switch (code) {
    case EPERM:
    case EROFS:
    case EACCES: return kEperm;
    case EIO: return kEio;
    case ENOMEM: return kEnomem;
    case EINVAL: return kEinval;
    case ENOSPC:
    case EDQUOT:
    case EFBIG: return kEnospc;
    case EOVERFLOW: return kEoverflow;
    case ENOTSUP: return kEnotsup;
    case ESHUTDOWN:
    case EBADF: return kEshutdown;  // EBADF: the pool was closed under us
    default: return kEio;
  }
}

VolumeOp OpFor(uint16_t type) {
  switch (type) {
    case kCmdRead: return VolumeOp::kRead;
    case kCmdWrite: return VolumeOp::kWrite;
    case kCmdFlush: return VolumeOp::kFlush;
    case kCmdTrim: return VolumeOp::kDiscard;
    case kCmdWriteZeroes: return VolumeOp::kWriteZeroes;
  }
  assert(false && "not a volume command");
  return VolumeOp::kFlush;
}

// The end of a session that is nobody's fault is not worth a warning.
bool IsOrdinaryEnd(const Status& status) {
  switch (status.code()) {
    case 0:
    case ENOTCONN:
    case ESHUTDOWN:
    case EPIPE:
    case ECONNRESET: return true;
    default: return false;
  }
}

}  // namespace

NbdTransmission::NbdTransmission(int fd, Volume& volume, IoQueue& queue, const NbdSession& session,
                                 const NbdServerOptions& options, const std::atomic<bool>& stopping,
                                 NbdStats& stats)
    : fd_(fd),
      reader_(fd, stopping),
      volume_(volume),
      queue_(queue),
      session_(session),
      stopping_(stopping),
      stats_(stats),
      max_payload_(MaxPayloadBytes(options)),
      max_buffered_(std::max<uint64_t>(options.max_buffered_bytes, max_payload_)),
      shared_budget_(options.shared_budget) {
  assert(fd >= 0 && session.volume == &volume);
  assert(!session.block_status || session.structured_replies);
  uint32_t depth = std::clamp<uint32_t>(options.queue_depth, 1, kMaxQueueDepth);
  for (uint32_t i = 0; i < depth; i++) {
    slots_.push_back(std::make_unique<Slot>());
    slots_.back()->owner = this;
    free_.push_back(slots_.back().get());
  }
  unsent_.reserve(kMaxBatchedReplies);
  unsent_parts_.reserve(2 * kMaxBatchedReplies);
  block_status_.reserve(4 + kMaxExtentsPerReply * kBlockStatusEntryBytes);
}

NbdTransmission::~NbdTransmission() { assert(inflight_ == 0 && free_.size() == slots_.size()); }

void NbdTransmission::Run() {
  while (!closing_ || inflight_ > 0) {
    assert(inflight_ + unsent_.size() + free_.size() == slots_.size());
    if (!closing_ && stopping_.load(std::memory_order_relaxed)) {
      Close("server is stopping");
      continue;
    }
    // Take in every request already waiting, up to the queue depth, before
    // waiting for anything.
    if (!closing_ && !free_.empty() && inflight_ > 0 && RequestWaiting()) {
      TakeRequest();
      continue;
    }
    FlushReplies();  // before waiting: the client may be waiting for them
    if (inflight_ == 0) {
      if (!closing_) TakeRequest();  // waits for the client
      continue;
    }
    queue_.Poll(/*wait=*/true);  // waits for the device only
    FlushReplies();
  }
  FlushReplies();
  assert(inflight_ == 0 && buffered_bytes_ == 0 && unsent_.empty());
}

// True if TakeRequest() would not wait for the client: a whole request
// header is buffered, or the socket failed (TakeRequest reports it). Only
// when no header is buffered does it cost a (non-blocking) recv().
bool NbdTransmission::RequestWaiting() {
  if (reader_.buffered() < kRequestHeaderBytes) reader_.ReceiveAvailable();
  return reader_.buffered() >= kRequestHeaderBytes || reader_.failed();
}

void NbdTransmission::TakeRequest() {
  uint8_t raw[kRequestHeaderBytes];
  // Between requests a client may stay silent for ever; within one it may
  // not. (With requests in flight, Run() saw a whole header first.)
  Status s = inflight_ == 0 ? reader_.WaitForInput(kNoTimeout) : Status::Ok();
  if (s.ok()) s = reader_.ReadExact(raw, sizeof raw, kMessageIdleTimeoutMs);
  if (!s.ok()) return Close("cannot read request", s);
  WireReader r(raw);
  uint32_t magic = 0;
  Request req;
  (void)(r.U32(&magic) && r.U16(&req.flags) && r.U16(&req.type) && r.U64(&req.cookie) && r.U64(&req.offset) &&
         r.U32(&req.length));
  assert(r.ok() && r.remaining() == 0);
  if (magic != kRequestMagic) return Close("bad request magic", Status(EPROTO, "protocol violation"));

  if (req.type == kCmdDisc) return Close("client disconnected");
  if (req.type == kCmdWrite && req.length > 0) return TakeWrite(req);
  if (req.type == kCmdBlockStatus) return TakeBlockStatus(req);
  Rejection rejection = Check(req);
  if (rejection.error) return ReplyError(req, rejection.error, rejection.message);
  if (req.length == 0 && req.type != kCmdFlush) return ReplyOk(req, nullptr);  // nothing to do
  Slot* slot = AcquireSlot(req);
  if (!slot) return ReplyError(req, kEnomem, "no memory for the request's buffer");
  Submit(slot);
}

// A WRITE's payload follows its header and must be consumed, whether or not
// the request is valid, to stay in step with the stream.
void NbdTransmission::TakeWrite(const Request& req) {
  assert(req.type == kCmdWrite && req.length > 0);
  if (req.length > max_payload_) {
    ReplyError(req, kEinval, "write larger than the maximum payload");
    // Beyond what the protocol asks servers to accept we need not read it.
    if (req.length > kMaxPayloadBytes) return Close("write payload too large", Status(EPROTO, "protocol violation"));
    Status s = reader_.Discard(req.length, kMessageIdleTimeoutMs);
    if (!s.ok()) Close("cannot read write payload", s);
    return;
  }
  Slot* slot = AcquireSlot(req);
  if (!slot) {
    ReplyError(req, kEnomem, "no memory for the request's buffer");
    Status s = reader_.Discard(req.length, kMessageIdleTimeoutMs);
    if (!s.ok()) Close("cannot read write payload", s);
    return;
  }
  Status s = reader_.ReadExact(slot->buffer.get(), req.length, kMessageIdleTimeoutMs);
  if (!s.ok()) {
    ReleaseSlot(slot);  // never acknowledged: dropping it loses nothing promised
    return Close("cannot read write payload", s);
  }
  Rejection rejection = Check(req);
  if (rejection.error) {
    ReplyError(req, rejection.error, rejection.message);
    return ReleaseSlot(slot);
  }
  Submit(slot);
}

// Block status is answered at once from the thin map (no data I/O).
void NbdTransmission::TakeBlockStatus(const Request& req) {
  Rejection rejection = Check(req);
  if (!rejection.error && req.length == 0) rejection = {kEinval, "empty block status range"};
  if (rejection.error) return ReplyError(req, rejection.error, rejection.message);
  bool one = req.flags & kCmdFlagReqOne;
  uint64_t length = std::min<uint64_t>(req.length, kMaxBlockStatusBytes);
  auto extents = volume_.Describe(req.offset, length, one ? 1 : kMaxExtentsPerReply);
  if (!extents.ok()) return ReplyError(req, NbdError(extents.status().code()), extents.status().message());
  assert(!extents->empty() && extents->size() <= kMaxExtentsPerReply);

  block_status_.assign(4 + extents->size() * kBlockStatusEntryBytes, 0);
  Put32(block_status_.data(), kBaseAllocationContextId);
  uint8_t* entry = block_status_.data() + 4;
  for (const VolumeExtent& e : *extents) {
    assert(e.length > 0 && e.length <= length);
    Put32(entry, static_cast<uint32_t>(e.length));
    Put32(entry + 4, e.written ? 0 : kStateHole | kStateZero);
    entry += kBlockStatusEntryBytes;
  }
  uint8_t header[kChunkHeaderBytes];
  Put32(header, kStructuredReplyMagic);
  Put16(header + 4, kReplyFlagDone);
  Put16(header + 6, kChunkBlockStatus);
  Put64(header + 8, req.cookie);
  Put32(header + 16, static_cast<uint32_t>(block_status_.size()));
  iovec parts[2] = {{header, sizeof header}, {block_status_.data(), block_status_.size()}};
  stats_.requests.fetch_add(1, std::memory_order_relaxed);
  Send(parts);
}

// Everything the protocol asks us to refuse, with the error it names.
NbdTransmission::Rejection NbdTransmission::Check(const Request& r) const {
  uint16_t allowed = kCmdFlagFua;  // valid on every command
  switch (r.type) {
    case kCmdRead:
      if (session_.structured_replies) allowed |= kCmdFlagDf;  // we always send one chunk
      break;
    case kCmdWrite:
    case kCmdTrim:
    case kCmdFlush: break;
    case kCmdWriteZeroes: allowed |= kCmdFlagNoHole | kCmdFlagFastZero; break;
    case kCmdBlockStatus: allowed |= kCmdFlagReqOne; break;
    default: return {kEinval, "unknown command"};
  }
  if (r.flags & ~allowed) return {kEinval, "command flags not valid for this command"};
  bool changes_data = r.type == kCmdWrite || r.type == kCmdTrim || r.type == kCmdWriteZeroes;
  if (changes_data && volume_.read_only()) return {kEperm, "the export is read-only (a snapshot)"};
  if (r.type == kCmdFlush) return {};  // offset and length are reserved
  if (r.type == kCmdBlockStatus && !session_.block_status) return {kEinval, "base:allocation was not negotiated"};
  bool data = r.type == kCmdRead || r.type == kCmdWrite;
  if (data && r.length > max_payload_) return {kEinval, "request larger than the maximum payload"};
  // Only a client that agreed to our minimum block size is held to it;
  // others get byte granularity (the protocol's default sizes).
  bool misaligned = r.offset % kMinBlockBytes || r.length % kMinBlockBytes;
  if (session_.block_sizes_agreed && r.type != kCmdBlockStatus && misaligned)
    return {kEinval, "request not aligned to the 512-byte minimum block size this client agreed to"};
  uint64_t size = volume_.size();
  if (r.offset > size || r.length > size - r.offset) {
    bool writes = r.type == kCmdWrite || r.type == kCmdWriteZeroes;
    return {writes ? kEnospc : kEinval, "request beyond the end of the export"};
  }
  return {};
}

uint32_t NbdTransmission::PayloadBytes(const Request& r) const {
  return r.type == kCmdRead || r.type == kCmdWrite ? r.length : 0;
}

// Bounds the payload memory of one connection: a request that would exceed
// it waits for earlier ones to complete and be answered. No new request is
// read meanwhile: that is the back-pressure on the client.
void NbdTransmission::WaitForBufferSpace(uint32_t bytes) {
  while (buffered_bytes_ + bytes > max_buffered_ && (inflight_ > 0 || !unsent_.empty())) {
    if (unsent_.empty()) queue_.Poll(/*wait=*/true);
    FlushReplies();
  }
  // The daemon's budget, held by other connections and queues too.
  while (shared_budget_ && bytes > 0 && !shared_budget_->TryAcquire(bytes)) {
    if (inflight_ == 0 && unsent_.empty()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(kSharedBudgetRecheckMs));
      continue;
    }
    if (unsent_.empty()) queue_.Poll(/*wait=*/true);
    FlushReplies();
  }
}

NbdTransmission::Slot* NbdTransmission::AcquireSlot(const Request& request) {
  uint32_t bytes = PayloadBytes(request);
  assert(bytes <= max_payload_);
  WaitForBufferSpace(bytes);
  assert(!free_.empty());
  Slot* slot = free_.back();
  if (bytes > slot->capacity) {
    slot->buffer.reset();  // never hold the old and the new one at once
    slot->capacity = 0;
    slot->buffer = TryAllocateAligned(bytes);  // zeroed: a failed read never sends old heap contents
    if (!slot->buffer) {
      if (shared_budget_ && bytes > 0) shared_budget_->Release(bytes);
      return nullptr;
    }
    slot->capacity = bytes;
  }
  free_.pop_back();
  slot->request = request;
  buffered_bytes_ += bytes;
  return slot;
}

void NbdTransmission::ReleaseSlot(Slot* slot) {
  uint32_t bytes = PayloadBytes(slot->request);
  assert(buffered_bytes_ >= bytes && free_.size() < slots_.size());
  buffered_bytes_ -= bytes;
  if (shared_budget_ && bytes > 0) shared_budget_->Release(bytes);
  if (slot->capacity > kRetainedBufferBytes) {
    slot->buffer.reset();
    slot->capacity = 0;
  }
  free_.push_back(slot);
}

void NbdTransmission::Submit(Slot* slot) {
  const Request& r = slot->request;
  bool flush = r.type == kCmdFlush;
  slot->io = VolumeIo{};
  slot->io.op = OpFor(r.type);
  // FUA matters only where data is written; on a read it would cost a commit.
  slot->io.fua = (r.flags & kCmdFlagFua) && r.type != kCmdRead;
  slot->io.offset = flush ? 0 : r.offset;
  slot->io.length = flush ? 0 : r.length;
  slot->io.buf = PayloadBytes(r) ? slot->buffer.get() : nullptr;
  slot->io.done = &NbdTransmission::OnDone;
  slot->io.context = slot;
  inflight_++;
  volume_.Submit(&slot->io, queue_);  // may call OnDone before it returns
}

void NbdTransmission::OnDone(VolumeIo* io, const Status& status) {
  auto* slot = static_cast<Slot*>(io->context);
  assert(&slot->io == io);
  slot->owner->Finish(slot, status);
}

void NbdTransmission::Finish(Slot* slot, const Status& status) {
  assert(inflight_ > 0);
  inflight_--;
  if (status.ok()) return QueueReply(slot);
  // Sent at once: the message lives only as long as `status`.
  ReplyError(slot->request, NbdError(status.code()), status.message());
  ReleaseSlot(slot);
}

// Fills `header` (kOkHeaderBytes) for a successful reply to `req` and counts
// the request; returns the header's length. The data of a read follows it.
size_t NbdTransmission::OkHeader(const Request& req, uint8_t* header) {
  bool has_data = req.type == kCmdRead && req.length > 0;
  stats_.requests.fetch_add(1, std::memory_order_relaxed);
  if (req.type == kCmdRead) stats_.bytes_read.fetch_add(req.length, std::memory_order_relaxed);
  if (req.type == kCmdWrite) stats_.bytes_written.fetch_add(req.length, std::memory_order_relaxed);
  size_t header_len = 0;
  if (!session_.structured_replies) {
    Put32(header, kSimpleReplyMagic);
    Put32(header + 4, 0);
    Put64(header + 8, req.cookie);
    header_len = kSimpleReplyBytes;
  } else {
    // One data chunk covering the whole read (so NBD_CMD_FLAG_DF always
    // holds), or an empty final chunk.
    Put32(header, kStructuredReplyMagic);
    Put16(header + 4, kReplyFlagDone);
    Put16(header + 6, has_data ? kChunkOffsetData : kChunkNone);
    Put64(header + 8, req.cookie);
    Put32(header + 16, has_data ? 8 + req.length : 0);
    if (has_data) Put64(header + 20, req.offset);
    header_len = has_data ? kChunkHeaderBytes + 8 : kChunkHeaderBytes;
  }
  assert(header_len <= kOkHeaderBytes);
  return header_len;
}

void NbdTransmission::ReplyOk(const Request& req, const uint8_t* data) {
  bool has_data = req.type == kCmdRead && req.length > 0;
  assert(!has_data || data != nullptr);
  uint8_t header[kOkHeaderBytes];
  size_t header_len = OkHeader(req, header);
  iovec parts[2] = {{header, header_len}, {const_cast<uint8_t*>(data), has_data ? req.length : 0u}};
  Send(parts);
}

// Queues the reply of a completed request for FlushReplies; the slot stays
// taken until then.
void NbdTransmission::QueueReply(Slot* slot) {
  assert(unsent_.size() < kMaxBatchedReplies);
  const Request& req = slot->request;
  unsent_parts_.push_back({slot->reply_header, OkHeader(req, slot->reply_header)});
  if (req.type == kCmdRead && req.length > 0) unsent_parts_.push_back({slot->buffer.get(), req.length});
  unsent_.push_back(slot);
  if (unsent_.size() == kMaxBatchedReplies) FlushReplies();
}

void NbdTransmission::FlushReplies() {
  if (unsent_.empty()) return;
  Send(unsent_parts_);
  for (Slot* slot : unsent_) ReleaseSlot(slot);
  unsent_.clear();
  unsent_parts_.clear();
}

void NbdTransmission::ReplyError(const Request& req, uint32_t error, std::string_view message) {
  assert(error != 0);
  stats_.requests.fetch_add(1, std::memory_order_relaxed);
  stats_.error_replies.fetch_add(1, std::memory_order_relaxed);
  uint8_t header[kChunkHeaderBytes + 6];
  size_t header_len = 0;
  message = message.substr(0, kMaxErrorMessageBytes);
  if (!session_.structured_replies) {
    Put32(header, kSimpleReplyMagic);
    Put32(header + 4, error);
    Put64(header + 8, req.cookie);
    header_len = kSimpleReplyBytes;
    message = {};  // a simple reply has no room for it
  } else {
    Put32(header, kStructuredReplyMagic);
    Put16(header + 4, kReplyFlagDone);
    Put16(header + 6, kChunkError);
    Put64(header + 8, req.cookie);
    Put32(header + 16, static_cast<uint32_t>(6 + message.size()));
    Put32(header + 20, error);
    Put16(header + 24, static_cast<uint16_t>(message.size()));
    header_len = kChunkHeaderBytes + 6;
  }
  iovec parts[2] = {{header, header_len}, {const_cast<char*>(message.data()), message.size()}};
  Send(parts);
}

void NbdTransmission::Send(std::span<const iovec> parts) {
  if (broken_) return;
  Status s = WriteAll(fd_, parts);
  if (s.ok()) return;
  broken_ = true;
  Close("cannot send reply", s);
}

void NbdTransmission::Close(std::string_view why, const Status& status) {
  if (closing_) return;
  closing_ = true;
  if (status.code() == EPROTO) stats_.protocol_errors.fetch_add(1, std::memory_order_relaxed);
  if (IsOrdinaryEnd(status))
    spdlog::debug("nbd: export {}: {}{}", volume_.name(), why, status.ok() ? "" : ": " + status.ToString());
  else
    spdlog::warn("nbd: export {}: {}: {}; closing the connection", volume_.name(), why, status.ToString());
}

}  // namespace edgestor::nbd
