// Blocking socket I/O for a connection's thread, with explicit bounds on how
// long a stalled or vanished peer can hold that thread.
#pragma once

#include <sys/uio.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "base/status.h"

namespace edgestor::nbd {

inline constexpr int kNoTimeout = -1;
// How often a blocked read looks at the stop flag.
inline constexpr int kStopCheckMs = 200;
// A peer that accepts no reply bytes for this long is treated as gone.
inline constexpr int kSendTimeoutMs = 60'000;
// Most iovecs one WriteAll sends (well under IOV_MAX).
inline constexpr size_t kMaxWriteParts = 128;

// Makes `fd` blocking and bounds blocking sends by kSendTimeoutMs.
Status ConfigureConnectionSocket(int fd);

// Waits until `fd` is readable (data, end of stream or an error). Errors:
// ETIMEDOUT after `idle_timeout_ms` (kNoTimeout: never), ESHUTDOWN once
// `stopping` is set.
Status WaitReadable(int fd, const std::atomic<bool>& stopping, int idle_timeout_ms);

// Reads exactly `len` bytes. Errors: ENOTCONN if the peer closed the stream,
// ETIMEDOUT if no byte arrived for `idle_timeout_ms` (kNoTimeout: wait
// forever), ESHUTDOWN if `stopping` was set while waiting, else the errno.
Status ReadExact(int fd, void* buf, size_t len, const std::atomic<bool>& stopping, int idle_timeout_ms);
// Reads and drops `len` bytes (an unwanted payload), same errors.
Status Discard(int fd, uint64_t len, const std::atomic<bool>& stopping, int idle_timeout_ms);

// Writes every byte of `parts` (at most kMaxWriteParts) in order, without
// SIGPIPE. ETIMEDOUT if the peer took nothing for kSendTimeoutMs.
Status WriteAll(int fd, std::span<const iovec> parts);
Status WriteAll(int fd, const void* buf, size_t len);

// Reads a connection's socket ahead of need into a buffer allocated once, so
// that one recv() takes in every pipelined request that has arrived and they
// are parsed out of memory. Used by the connection's thread only.
//
// A failed recv() (end of stream, reset) is remembered: the bytes received
// before it are still handed out, reads beyond them return the failure.
// Errors of the reads: ENOTCONN if the peer closed the stream, ETIMEDOUT if no
// byte arrived for `idle_timeout_ms` (kNoTimeout: wait forever), ESHUTDOWN if
// `stopping` was set while waiting, else the errno of recv().
class SocketReader {
 public:
  static constexpr size_t kBufferBytes = 64 * 1024;

  SocketReader(int fd, const std::atomic<bool>& stopping);

  size_t buffered() const { return end_ - begin_; }
  // A recv() failed; nothing will be buffered any more.
  bool failed() const { return !error_.ok(); }

  // One recv() without waiting, taking in whatever has arrived.
  // REQUIRES: buffered() < kBufferBytes.
  void ReceiveAvailable();
  // Waits until at least one byte is buffered (or a recv failed). Polls
  // before reading: it is meant for a client that has nothing more in
  // flight, which is usually still reading our replies.
  Status WaitForInput(int idle_timeout_ms);
  // The next `len` bytes: the buffered ones, then from the socket. A long
  // remainder is received straight into `buf`.
  Status ReadExact(void* buf, size_t len, int idle_timeout_ms);
  // Drops the next `len` bytes.
  Status Discard(uint64_t len, int idle_timeout_ms);

  // ---- Without waiting (for a connection that also waits for its device)
  // The buffered bytes, to parse a header before taking it.
  const uint8_t* Peek() const { return buffer_.get() + begin_; }
  // Drops `len` buffered bytes. REQUIRES: len <= buffered().
  void Skip(size_t len);
  // Up to `len` of the next bytes, from the buffer, then from one recv()
  // straight into `out`. Returns how many; 0 with failed() if the stream
  // ended or broke.
  size_t ReadAvailable(void* out, size_t len);
  // Drops up to `len` of the next bytes in the same way; returns how many.
  size_t DiscardAvailable(uint64_t len);
  // Why the stream ended (when failed()).
  const Status& error() const { return error_; }
  // Milliseconds since a recv() last brought bytes (or since construction).
  int64_t IdleMs() const;

 private:
  // A remainder this long skips the buffer (a large write payload).
  static constexpr size_t kDirectReadBytes = kBufferBytes / 2;

  size_t Take(uint8_t* out, size_t len);
  Status Fill(int idle_timeout_ms);
  Status Receive(uint8_t* into, size_t len, int idle_timeout_ms, size_t* got);
  ssize_t ReceiveNow(uint8_t* into, size_t len);

  const int fd_;
  const std::atomic<bool>& stopping_;
  std::unique_ptr<uint8_t[]> buffer_;
  size_t begin_ = 0;  // buffered bytes are [begin_, end_)
  size_t end_ = 0;
  Status error_;  // of the recv() that failed
  int64_t received_ms_;  // steady clock, when bytes last arrived
};

// Replies queued in order and sent without blocking, so that the thread
// sending them can also take requests and reap its device while a slow
// client reads. A part is either borrowed (the caller keeps its bytes alive
// until SendAvailable reports its tag) or copied at once (small replies:
// errors, block status). Copies are bounded by the caller: it stops taking
// requests while copied_bytes() is above its limit.
class SocketWriter {
 public:
  explicit SocketWriter(int fd);

  bool empty() const { return head_ == parts_.size(); }
  // Bytes held by copies not yet sent (and not yet reclaimed).
  size_t copied_bytes() const { return copies_.size(); }
  // How long the queue has waited for the client: since bytes last left,
  // or since it stopped being empty. 0 when empty.
  int64_t StalledMs() const;

  // Queues `len` bytes at `data`. `tag`, if not null, is reported by
  // SendAvailable once this part and everything before it has left.
  void PushBorrowed(const void* data, size_t len, void* tag);
  // Queues a copy of `parts`, in order.
  void PushCopy(std::span<const iovec> parts);
  // Sends without waiting as much as the socket takes now (one sendmsg()
  // per kMaxWriteParts parts); appends the tags of the parts that left
  // entirely to `released`. On a socket error everything queued is dropped
  // (DropAll) and the error returned; a full socket is no error.
  Status SendAvailable(std::vector<void*>* released);
  // Forgets everything queued (the client is gone), releasing its tags.
  void DropAll(std::vector<void*>* released);

 private:
  struct Part {
    const uint8_t* data = nullptr;  // borrowed bytes, or null for a copy
    size_t copy_offset = 0;         // a copy's place in copies_
    size_t len = 0;
    void* tag = nullptr;
  };
  const uint8_t* Start(const Part& part) const {
    return part.data != nullptr ? part.data : copies_.data() + part.copy_offset;
  }
  void Advance(size_t sent, std::vector<void*>* released);
  void Compact();
  void Push(Part part);

  const int fd_;
  std::vector<Part> parts_;     // queued parts are [head_, size); reused
  size_t head_ = 0;
  size_t head_sent_ = 0;        // bytes of parts_[head_] already sent
  std::vector<uint8_t> copies_;  // bytes of copied parts, reset when empty
  int64_t progress_ms_ = 0;     // steady clock, when bytes last left
};

}  // namespace edgestor::nbd
