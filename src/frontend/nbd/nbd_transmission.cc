#include "frontend/nbd/nbd_transmission.h"

#include <poll.h>
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
// Copied replies (errors, block status) a client may leave unread before
// the connection takes no more requests: the bound on what a client that
// sends and never reads can make us hold beyond the slots.
constexpr size_t kMaxCopiedReplyBytes = 1 << 20;
// Average payload of the requests in flight from which the connection also
// wakes for new requests while the device works (Wait).
constexpr uint64_t kWakeForRequestsBytes = 64 * 1024;
// How often a connection with nothing of its own in flight looks again for
// room in the shared budget other connections and queues hold.
constexpr int kSharedBudgetRecheckMs = 5;

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

NbdTransmission::NbdTransmission(int fd, Volume& volume, VolumeChannel& channel, const NbdSession& session,
                                 const NbdServerOptions& options, const std::atomic<bool>& stopping,
                                 NbdStats& stats)
    : fd_(fd),
      reader_(fd, stopping),
      writer_(fd),
      volume_(volume),
      channel_(channel),
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
  released_.reserve(depth);
  block_status_.reserve(4 + kMaxExtentsPerReply * kBlockStatusEntryBytes);
}

NbdTransmission::~NbdTransmission() { assert(inflight_ == 0 && free_.size() == slots_.size()); }

void NbdTransmission::Run() {
  for (;;) {
    assert(inflight_ + replying_ + (receiving_ ? 1 : 0) + free_.size() == slots_.size());
    if (!closing_ && stopping_.load(std::memory_order_relaxed)) Close("server is stopping");
    CheckTimeouts();
    Stall stall = TakeRequests();
    SendReplies();
    if (closing_ && inflight_ == 0 && writer_.empty()) break;
    Wait(stall);
    SendReplies();  // what that wait completed, before taking more
  }
  assert(inflight_ == 0 && replying_ == 0 && buffered_bytes_ == 0 && !receiving_);
}

// Takes every request that has arrived, as long as there is room for it.
NbdTransmission::Stall NbdTransmission::TakeRequests() {
  while (!closing_) {
    if (receiving_) {
      if (!ContinuePayload()) return closing_ ? Stall::kClosed : Stall::kInput;
      continue;
    }
    if (discard_left_ > 0) {
      if (!ContinueDiscard()) return closing_ ? Stall::kClosed : Stall::kInput;
      continue;
    }
    // A client that sends and never reads our replies gets no more service.
    if (writer_.copied_bytes() > kMaxCopiedReplyBytes || free_.empty()) return Stall::kRoom;
    if (!HeaderBuffered()) return closing_ ? Stall::kClosed : Stall::kInput;
    Request request = PeekHeader();
    Stall stall = Stall::kRoom;
    if (!ReserveRoom(request, &stall)) return stall;
    reader_.Skip(kRequestHeaderBytes);
    Dispatch(request);
  }
  return Stall::kClosed;
}

// True once a whole request header is buffered. Costs a (non-blocking)
// recv() only when it is not. Closes the connection if the stream ended.
bool NbdTransmission::HeaderBuffered() {
  if (reader_.buffered() < kRequestHeaderBytes) reader_.ReceiveAvailable();
  if (reader_.buffered() >= kRequestHeaderBytes) return true;
  if (reader_.failed()) {
    if (reader_.buffered() == 0) Close("cannot read request", reader_.error());
    else Close("stream ended inside a request header", reader_.error());
  }
  return false;
}

NbdTransmission::Request NbdTransmission::PeekHeader() const {
  assert(reader_.buffered() >= kRequestHeaderBytes);
  WireReader r(std::span(reader_.Peek(), kRequestHeaderBytes));
  uint32_t magic = 0;
  Request req;
  (void)(r.U32(&magic) && r.U16(&req.flags) && r.U16(&req.type) && r.U64(&req.cookie) && r.U64(&req.offset) &&
         r.U32(&req.length));
  assert(r.ok() && r.remaining() == 0);
  req.bad_magic = magic != kRequestMagic;
  return req;
}

bool NbdTransmission::ReserveRoom(const Request& request, Stall* stall) {
  uint32_t bytes = PayloadBytes(request);
  if (bytes == 0) return true;
  // Over the connection's bound only when it holds nothing else, so no
  // request size waits for ever.
  if (buffered_bytes_ > 0 && buffered_bytes_ + bytes > max_buffered_) {
    *stall = Stall::kRoom;
    return false;
  }
  if (shared_budget_ && !shared_budget_->TryAcquire(bytes)) {
    *stall = buffered_bytes_ > 0 ? Stall::kRoom : Stall::kBudget;
    return false;
  }
  return true;
}

void NbdTransmission::Dispatch(const Request& req) {
  if (req.bad_magic) return Close("bad request magic", Status(EPROTO, "protocol violation"));
  if (req.type == kCmdDisc) return Close("client disconnected");
  if (req.type == kCmdWrite && req.length > 0) return TakeWrite(req);
  if (req.type == kCmdBlockStatus) return TakeBlockStatus(req);
  Rejection rejection = Check(req);
  if (rejection.error) {
    if (shared_budget_ && PayloadBytes(req) > 0) shared_budget_->Release(PayloadBytes(req));
    return ReplyError(req, rejection.error, rejection.message);
  }
  if (req.length == 0 && req.type != kCmdFlush) return ReplyOk(req);  // nothing to do
  Slot* slot = AcquireSlot(req);
  if (!slot) return ReplyError(req, kEnomem, "no memory for the request's buffer");
  Submit(slot);
}

// A WRITE's payload follows its header and must be consumed, whether or not
// the request is valid, to stay in step with the stream. It is taken as it
// arrives (ContinuePayload), never waited for.
void NbdTransmission::TakeWrite(const Request& req) {
  assert(req.type == kCmdWrite && req.length > 0);
  if (req.length > max_payload_) {
    ReplyError(req, kEinval, "write larger than the maximum payload");
    // Beyond what the protocol asks servers to accept we need not read it.
    if (req.length > kMaxPayloadBytes) return Close("write payload too large", Status(EPROTO, "protocol violation"));
    discard_left_ = req.length;
    return;
  }
  Slot* slot = AcquireSlot(req);
  if (!slot) {
    ReplyError(req, kEnomem, "no memory for the request's buffer");
    discard_left_ = req.length;
    return;
  }
  receiving_ = slot;
  received_ = 0;
}

// Takes what has arrived of the payload; submits the write once whole.
// False if it must wait for more (or the stream ended: then closing).
bool NbdTransmission::ContinuePayload() {
  Slot* slot = receiving_;
  const Request& req = slot->request;
  assert(received_ < req.length);
  received_ += static_cast<uint32_t>(reader_.ReadAvailable(slot->buffer.get() + received_, req.length - received_));
  if (received_ < req.length) {
    if (reader_.failed()) Close("cannot read write payload", reader_.error());
    return false;
  }
  receiving_ = nullptr;
  Rejection rejection = Check(req);
  if (rejection.error) {
    ReplyError(req, rejection.error, rejection.message);
    ReleaseSlot(slot);
    return true;
  }
  Submit(slot);
  return true;
}

bool NbdTransmission::ContinueDiscard() {
  assert(discard_left_ > 0);
  discard_left_ -= reader_.DiscardAvailable(discard_left_);
  if (discard_left_ == 0) return true;
  if (reader_.failed()) Close("cannot read write payload", reader_.error());
  return false;
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
  ReplyCopy(parts);
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

// The buffer a request needs: a read's or write's data, unless it is
// larger than we accept (refused, and a write's payload dropped).
uint32_t NbdTransmission::PayloadBytes(const Request& r) const {
  bool data = r.type == kCmdRead || r.type == kCmdWrite;
  return data && !r.bad_magic && r.length <= max_payload_ ? r.length : 0;
}

NbdTransmission::Slot* NbdTransmission::AcquireSlot(const Request& request) {
  uint32_t bytes = PayloadBytes(request);
  assert(bytes <= max_payload_ && !free_.empty());
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
  slot->io.stats = session_.io_stats;
  inflight_++;
  channel_.Submit(volume_, &slot->io);  // may call OnDone before it returns
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
  ReplyError(slot->request, NbdError(status.code()), status.message());  // copies the message
  ReleaseSlot(slot);
}

void NbdTransmission::Wait(Stall stall) {
  short events = 0;
  if (stall == Stall::kInput) events |= POLLIN;
  if (!writer_.empty()) events |= POLLOUT;
  if (inflight_ > 0) {
    // While the device works, wake for room to send, for the rest of a
    // request that has begun (a write's payload streaming in), and for new
    // requests only while large ones are in flight. Small new requests wait
    // for the next completion and then go to the device together, one
    // submission for many (each costs a doorbell on a virtual disk): waking
    // for each cost 15% at 4K QD32, and a 128K completion takes long enough
    // that waiting for it cost a quarter of sequential throughput.
    bool large = buffered_bytes_ >= uint64_t{inflight_} * kWakeForRequestsBytes;
    short watch = events & (MidRequest() || large ? (POLLIN | POLLOUT) : POLLOUT);
    if (watch) channel_.WatchFd(fd_, watch);
    channel_.Poll(/*wait=*/true);
    return;
  }
  // Nothing at the device: wait for the socket alone, in slices short
  // enough to notice the stop flag and the timeouts (CheckTimeouts).
  int timeout_ms = kStopCheckMs;
  if (stall == Stall::kBudget) timeout_ms = kSharedBudgetRecheckMs;
  if (events == 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(timeout_ms));
    return;
  }
  pollfd p{.fd = fd_, .events = events, .revents = 0};
  (void)::poll(&p, 1, timeout_ms);  // EINTR and errors: the next round looks again
}

// A client silent in the middle of a request, or one that takes none of
// our replies, is dropped after a while; between requests it may idle.
void NbdTransmission::CheckTimeouts() {
  if (!closing_ && MidRequest() && reader_.IdleMs() > kMessageIdleTimeoutMs)
    Close("client stalled inside a request", Status(ETIMEDOUT, "client sent nothing for " +
                                                                   std::to_string(kMessageIdleTimeoutMs / 1000) + " s"));
  if (!broken_ && writer_.StalledMs() > kSendTimeoutMs) {
    broken_ = true;
    Close("cannot send reply", Status(ETIMEDOUT, "client stopped reading replies"));
    writer_.DropAll(&released_);
    ReleaseSent();
  }
}

bool NbdTransmission::MidRequest() const {
  size_t header_part = reader_.buffered();
  return receiving_ != nullptr || discard_left_ > 0 || (header_part > 0 && header_part < kRequestHeaderBytes);
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

// A successful reply without data (a request of length 0).
void NbdTransmission::ReplyOk(const Request& req) {
  assert(!(req.type == kCmdRead && req.length > 0));
  uint8_t header[kOkHeaderBytes];
  iovec part{header, OkHeader(req, header)};
  ReplyCopy(std::span(&part, 1));
}

// Queues the reply of a completed request; the slot stays taken until the
// client has taken the reply (ReleaseSent).
void NbdTransmission::QueueReply(Slot* slot) {
  if (broken_) return ReleaseSlot(slot);
  const Request& req = slot->request;
  bool has_data = req.type == kCmdRead && req.length > 0;
  size_t header_len = OkHeader(req, slot->reply_header);
  writer_.PushBorrowed(slot->reply_header, header_len, has_data ? nullptr : slot);
  if (has_data) writer_.PushBorrowed(slot->buffer.get(), req.length, slot);
  replying_++;
}

void NbdTransmission::SendReplies() {
  if (writer_.empty()) return;
  Status s = writer_.SendAvailable(&released_);
  ReleaseSent();
  if (s.ok()) return;
  broken_ = true;
  Close("cannot send reply", s);
}

// Frees the slots whose replies have left (or were dropped).
void NbdTransmission::ReleaseSent() {
  for (void* tag : released_) {
    assert(replying_ > 0);
    replying_--;
    ReleaseSlot(static_cast<Slot*>(tag));
  }
  released_.clear();
}

void NbdTransmission::ReplyCopy(std::span<const iovec> parts) {
  if (!broken_) writer_.PushCopy(parts);
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
  ReplyCopy(parts);
}

void NbdTransmission::Close(std::string_view why, const Status& status) {
  if (closing_) return;
  closing_ = true;
  if (receiving_) {  // never acknowledged: dropping it loses nothing promised
    ReleaseSlot(receiving_);
    receiving_ = nullptr;
  }
  discard_left_ = 0;
  if (status.code() == EPROTO) stats_.protocol_errors.fetch_add(1, std::memory_order_relaxed);
  if (IsOrdinaryEnd(status))
    spdlog::debug("nbd: export {}: {}{}", volume_.name(), why, status.ok() ? "" : ": " + status.ToString());
  else
    spdlog::warn("nbd: export {}: {}: {}; closing the connection", volume_.name(), why, status.ToString());
}

}  // namespace edgestor::nbd
