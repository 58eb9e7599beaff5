// NBD transmission phase of one connection: reads requests, submits them to
// the volume through the connection's own VolumeChannel, writes the replies.
//
// Single-threaded: everything runs on the connection's thread, including
// the completion callbacks, which run inside VolumeChannel::Poll or, for the
// engine's synchronous paths (discard, unaligned I/O, early errors), inside
// Volume::Submit itself. That thread is the only writer of the socket, so
// replies need no lock.
//
// Nothing blocks the loop but its one wait: requests are taken from a
// receive buffer as far as they have arrived (a write's payload over as
// many rounds as it takes), replies leave without blocking as far as the
// client reads them, and the wait covers the device, commits and the socket
// at once (VolumeChannel::WatchFd). Socket and disk work overlap, and system calls
// are few: one recv() takes in every pipelined request that has arrived,
// one sendmsg() sends the replies of everything one Poll completed.
#pragma once

#include <sys/uio.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "frontend/nbd/nbd_handshake.h"
#include "frontend/nbd/nbd_protocol.h"
#include "frontend/nbd/nbd_socket.h"
#include "base/aligned_buffer.h"
#include "base/inflight_budget.h"
#include "volume/volume.h"

namespace edgestor::nbd {

class NbdTransmission {
 public:
  NbdTransmission(int fd, Volume& volume, VolumeChannel& channel, const NbdSession& session, const NbdServerOptions& options,
                  const std::atomic<bool>& stopping, NbdStats& stats);
  ~NbdTransmission();  // REQUIRES: Run() has returned (nothing in flight)
  NbdTransmission(const NbdTransmission&) = delete;
  NbdTransmission& operator=(const NbdTransmission&) = delete;

  // Serves until the client disconnects (NBD_CMD_DISC or closing the
  // stream), breaks the protocol, or `stopping` is set. Returns only when
  // every submitted request has completed (and was answered, if the client
  // still listens), so no buffer is freed under the engine.
  void Run();

 private:
  struct Request {
    uint16_t flags = 0;
    uint16_t type = 0;
    uint64_t cookie = 0;
    uint64_t offset = 0;
    uint32_t length = 0;
    bool bad_magic = false;  // not a request: the stream is out of step
  };
  // Longest header of a successful reply (a structured read's data chunk).
  static constexpr size_t kOkHeaderBytes = kChunkHeaderBytes + 8;
  // A preallocated request: the engine's VolumeIo and the buffer its data
  // lives in, reused from request to request. It is free, receiving a
  // write's payload, in flight, or replying: completed, its reply (header
  // here, data in the buffer) queued until the client has taken it.
  struct Slot {
    VolumeIo io;
    NbdTransmission* owner = nullptr;
    Request request;
    AlignedBuffer buffer;
    size_t capacity = 0;
    uint8_t reply_header[kOkHeaderBytes];
  };
  struct Rejection {
    uint32_t error = 0;  // NBD error value; 0: the request is valid
    std::string_view message;
  };

  // Why TakeRequests stopped.
  enum class Stall : uint8_t {
    kInput,   // the next bytes have not arrived
    kRoom,    // no slot, buffer room or reply room until completions or sends free some
    kBudget,  // the daemon's shared budget is short, held by others
    kClosed,  // taking no more requests
  };

  Stall TakeRequests();
  bool HeaderBuffered();
  Request PeekHeader() const;
  // Takes `request`'s payload room (connection bound and shared budget);
  // false, taking nothing, if it does not fit now.
  bool ReserveRoom(const Request& request, Stall* stall);
  void Dispatch(const Request& request);
  void TakeWrite(const Request& request);
  bool ContinuePayload();
  bool ContinueDiscard();
  void TakeBlockStatus(const Request& request);
  Rejection Check(const Request& request) const;
  uint32_t PayloadBytes(const Request& request) const;
  // A free slot with a buffer for the request's payload, whose room
  // ReserveRoom took; nullptr (room given back) if that buffer cannot be
  // allocated.
  Slot* AcquireSlot(const Request& request);
  void ReleaseSlot(Slot* slot);
  void Submit(Slot* slot);
  static void OnDone(VolumeIo* io, const Status& status);
  void Finish(Slot* slot, const Status& status);

  // One wait: for the device (and commits) if anything is in flight, and
  // for the socket as `stall` and the unsent replies ask.
  void Wait(Stall stall);
  void CheckTimeouts();
  bool MidRequest() const;

  size_t OkHeader(const Request& request, uint8_t* header);
  void ReplyOk(const Request& request);
  void QueueReply(Slot* slot);
  void SendReplies();
  void ReplyError(const Request& request, uint32_t error, std::string_view message);
  void ReplyCopy(std::span<const iovec> parts);
  void ReleaseSent();
  void Close(std::string_view why, const Status& status = Status::Ok());

  const int fd_;
  SocketReader reader_;
  SocketWriter writer_;
  Volume& volume_;
  VolumeChannel& channel_;
  const NbdSession session_;
  const std::atomic<bool>& stopping_;
  NbdStats& stats_;
  const uint32_t max_payload_;
  const uint64_t max_buffered_;
  InflightBudget* const shared_budget_;  // the daemon's (options.shared_budget), or null
  std::vector<std::unique_ptr<Slot>> slots_;
  std::vector<Slot*> free_;      // slots in none of the states below
  Slot* receiving_ = nullptr;    // a write whose payload is still arriving
  uint32_t received_ = 0;        // bytes of its payload taken so far
  uint64_t discard_left_ = 0;    // payload bytes of a refused write still to drop
  uint32_t inflight_ = 0;        // slots submitted and not yet completed
  uint32_t replying_ = 0;        // completed slots whose reply is queued in writer_
  std::vector<void*> released_;  // reused: slots whose reply has left
  std::vector<uint8_t> block_status_;  // reused BLOCK_STATUS payload
  uint64_t buffered_bytes_ = 0;  // payload bytes of the slots not free
  bool closing_ = false;         // take no more requests
  bool broken_ = false;          // the socket failed: send no more replies
};

}  // namespace edgestor::nbd
