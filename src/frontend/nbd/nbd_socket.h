// Blocking socket I/O for a connection's thread, with explicit bounds on how
// long a stalled or vanished peer can hold that thread.
#pragma once

#include <sys/uio.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

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
};

}  // namespace edgestor::nbd
