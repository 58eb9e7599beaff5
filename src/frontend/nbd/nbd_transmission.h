// NBD transmission phase of one connection: reads requests, submits them to
// the volume through the connection's own IoQueue, writes the replies.
//
// Single-threaded: everything runs on the connection's thread, including
// the completion callbacks, which run inside IoQueue::Poll or, for the
// engine's synchronous paths (flush, discard, unaligned I/O, early errors),
// inside Volume::Submit itself. That thread is the only writer of the
// socket, so replies need no lock.
//
// System calls per request are few: requests are parsed out of a receive
// buffer that one recv() fills with all that has arrived, and the replies of
// the requests one IoQueue::Poll completed leave in one sendmsg().
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
#include "io/inflight_budget.h"
#include "io/device.h"
#include "volume/volume.h"

namespace edgestor::nbd {

class NbdTransmission {
 public:
  NbdTransmission(int fd, Volume& volume, IoQueue& queue, const NbdSession& session, const NbdServerOptions& options,
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
  };
  // Longest header of a successful reply (a structured read's data chunk).
  static constexpr size_t kOkHeaderBytes = kChunkHeaderBytes + 8;
  // A preallocated request in flight: the engine's VolumeIo and the buffer
  // its data lives in, reused from request to request. Once it completed,
  // it holds its reply's header until the reply has been sent.
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

  bool RequestWaiting();
  void TakeRequest();
  void TakeWrite(const Request& request);
  void TakeBlockStatus(const Request& request);
  Rejection Check(const Request& request) const;
  uint32_t PayloadBytes(const Request& request) const;
  // Waits until `bytes` fit the connection's bound, then takes them from
  // the shared budget (if any), waiting for room there too.
  void WaitForBufferSpace(uint32_t bytes);
  // A free slot with a buffer for the request's payload; nullptr if that
  // buffer cannot be allocated. May complete earlier requests first.
  Slot* AcquireSlot(const Request& request);
  void ReleaseSlot(Slot* slot);
  void Submit(Slot* slot);
  static void OnDone(VolumeIo* io, const Status& status);
  void Finish(Slot* slot, const Status& status);

  size_t OkHeader(const Request& request, uint8_t* header);
  void ReplyOk(const Request& request, const uint8_t* data);
  void QueueReply(Slot* slot);
  void FlushReplies();
  void ReplyError(const Request& request, uint32_t error, std::string_view message);
  void Send(std::span<const iovec> parts);
  void Close(std::string_view why, const Status& status = Status::Ok());

  const int fd_;
  SocketReader reader_;
  Volume& volume_;
  IoQueue& queue_;
  const NbdSession session_;
  const std::atomic<bool>& stopping_;
  NbdStats& stats_;
  const uint32_t max_payload_;
  const uint64_t max_buffered_;
  InflightBudget* const shared_budget_;  // the daemon's (options.shared_budget), or null
  std::vector<std::unique_ptr<Slot>> slots_;
  std::vector<Slot*> free_;       // slots neither in flight nor in unsent_
  // Successful replies of completed requests, sent together by FlushReplies
  // (one sendmsg for all a Poll round finished). Their slots are not free
  // until then: the iovecs point into them.
  std::vector<Slot*> unsent_;
  std::vector<iovec> unsent_parts_;
  std::vector<uint8_t> block_status_;  // reused BLOCK_STATUS payload
  uint32_t inflight_ = 0;         // requests submitted and not yet completed
  uint64_t buffered_bytes_ = 0;   // payload bytes of the slots not free
  bool closing_ = false;          // take no more requests
  bool broken_ = false;           // the socket failed: send no more replies
};

}  // namespace edgestor::nbd
