#include "frontend/nbd/nbd_socket.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <cassert>
#include <cerrno>
#include <climits>
#include <cstring>
#include <string>
#include <vector>

namespace edgestor::nbd {

namespace {

static_assert(kMaxWriteParts <= IOV_MAX);
// Chunk used to drop unwanted bytes.
constexpr size_t kDiscardChunkBytes = 64 * 1024;

Status Errno(int err, const char* what) { return Status(err, std::string(what) + " failed"); }

int64_t NowMs() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(steady_clock::now().time_since_epoch()).count();
}

}  // namespace

Status WaitReadable(int fd, const std::atomic<bool>& stopping, int idle_timeout_ms) {
  int waited_ms = 0;
  while (true) {
    if (stopping.load(std::memory_order_relaxed)) return Status(ESHUTDOWN, "server is stopping");
    if (idle_timeout_ms != kNoTimeout && waited_ms >= idle_timeout_ms)
      return Status(ETIMEDOUT, "client sent nothing for " + std::to_string(idle_timeout_ms / 1000) + " s");
    int slice = idle_timeout_ms == kNoTimeout ? kStopCheckMs : std::min(kStopCheckMs, idle_timeout_ms - waited_ms);
    pollfd p{.fd = fd, .events = POLLIN, .revents = 0};
    int rc = ::poll(&p, 1, slice);
    if (rc > 0) return Status::Ok();  // readable, or hangup/error for recv to report
    if (rc < 0 && errno != EINTR) return Errno(errno, "poll");
    if (rc == 0) waited_ms += slice;
  }
}

Status ConfigureConnectionSocket(int fd) {
  int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) < 0) return Errno(errno, "fcntl");
  timeval tv{.tv_sec = kSendTimeoutMs / 1000, .tv_usec = 0};
  if (::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) < 0) return Errno(errno, "setsockopt(SO_SNDTIMEO)");
  return Status::Ok();
}

Status ReadExact(int fd, void* buf, size_t len, const std::atomic<bool>& stopping, int idle_timeout_ms) {
  auto* p = static_cast<uint8_t*>(buf);
  size_t done = 0;
  while (done < len) {
    // Never a blocking recv(): it would wait past the stop flag and the
    // timeout. Data usually is there already, so try before polling.
    ssize_t n = ::recv(fd, p + done, len - done, MSG_DONTWAIT);
    if (n == 0) return Status(ENOTCONN, "client closed the connection");
    if (n > 0) {
      done += static_cast<size_t>(n);
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      ES_RETURN_IF_ERROR(WaitReadable(fd, stopping, idle_timeout_ms));
    } else if (errno != EINTR) {
      return Errno(errno, "recv");
    }
  }
  assert(done == len);
  return Status::Ok();
}

Status Discard(int fd, uint64_t len, const std::atomic<bool>& stopping, int idle_timeout_ms) {
  std::vector<uint8_t> scratch(static_cast<size_t>(std::min<uint64_t>(len, kDiscardChunkBytes)));
  while (len > 0) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(len, scratch.size()));
    ES_RETURN_IF_ERROR(ReadExact(fd, scratch.data(), n, stopping, idle_timeout_ms));
    len -= n;
  }
  return Status::Ok();
}

Status WriteAll(int fd, std::span<const iovec> parts) {
  assert(parts.size() <= kMaxWriteParts);
  iovec iov[kMaxWriteParts];
  size_t count = 0;
  for (const iovec& part : parts)
    if (part.iov_len > 0) iov[count++] = part;
  size_t first = 0;
  while (first < count) {
    msghdr msg{};
    msg.msg_iov = iov + first;
    msg.msg_iovlen = count - first;
    ssize_t n = ::sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return Status(ETIMEDOUT, "client stopped reading replies");
      return Errno(errno, "sendmsg");
    }
    // Skip what was sent: whole parts, then the start of a partial one.
    auto sent = static_cast<size_t>(n);
    while (first < count && sent >= iov[first].iov_len) sent -= iov[first++].iov_len;
    if (first < count) {
      iov[first].iov_base = static_cast<uint8_t*>(iov[first].iov_base) + sent;
      iov[first].iov_len -= sent;
    }
  }
  return Status::Ok();
}

Status WriteAll(int fd, const void* buf, size_t len) {
  iovec part{.iov_base = const_cast<void*>(buf), .iov_len = len};
  return WriteAll(fd, std::span(&part, 1));
}

SocketReader::SocketReader(int fd, const std::atomic<bool>& stopping)
    : fd_(fd),
      stopping_(stopping),
      buffer_(std::make_unique_for_overwrite<uint8_t[]>(kBufferBytes)),
      received_ms_(NowMs()) {
  assert(fd >= 0);
}

int64_t SocketReader::IdleMs() const { return NowMs() - received_ms_; }

void SocketReader::ReceiveAvailable() {
  assert(buffered() < kBufferBytes);
  if (failed()) return;
  if (begin_ > 0) {  // a partial message: move it to the front, to make room
    std::memmove(buffer_.get(), buffer_.get() + begin_, buffered());
    end_ -= begin_;
    begin_ = 0;
  }
  ssize_t n = ReceiveNow(buffer_.get() + end_, kBufferBytes - end_);
  if (n > 0) end_ += static_cast<size_t>(n);
  assert(begin_ <= end_ && end_ <= kBufferBytes);
}

Status SocketReader::WaitForInput(int idle_timeout_ms) {
  if (buffered() > 0) return Status::Ok();
  if (!failed()) ES_RETURN_IF_ERROR(WaitReadable(fd_, stopping_, idle_timeout_ms));
  return Fill(idle_timeout_ms);
}

Status SocketReader::ReadExact(void* buf, size_t len, int idle_timeout_ms) {
  auto* out = static_cast<uint8_t*>(buf);
  size_t done = Take(out, len);
  while (done < len) {
    assert(buffered() == 0);
    size_t rest = len - done;
    if (rest >= kDirectReadBytes) {
      size_t got = 0;
      ES_RETURN_IF_ERROR(Receive(out + done, rest, idle_timeout_ms, &got));
      done += got;
    } else {
      ES_RETURN_IF_ERROR(Fill(idle_timeout_ms));
      done += Take(out + done, rest);
    }
  }
  assert(done == len);
  return Status::Ok();
}

Status SocketReader::Discard(uint64_t len, int idle_timeout_ms) {
  while (len > 0) {
    if (buffered() == 0) ES_RETURN_IF_ERROR(Fill(idle_timeout_ms));
    size_t n = static_cast<size_t>(std::min<uint64_t>(len, buffered()));
    begin_ += n;
    len -= n;
  }
  return Status::Ok();
}

void SocketReader::Skip(size_t len) {
  assert(len <= buffered());
  begin_ += len;
  if (begin_ == end_) begin_ = end_ = 0;
}

size_t SocketReader::ReadAvailable(void* out, size_t len) {
  auto* p = static_cast<uint8_t*>(out);
  size_t done = Take(p, len);
  if (done == len || failed()) return done;
  if (len - done >= kDirectReadBytes) {
    ssize_t n = ReceiveNow(p + done, len - done);
    return done + (n > 0 ? static_cast<size_t>(n) : 0);
  }
  ReceiveAvailable();
  return done + Take(p + done, len - done);
}

size_t SocketReader::DiscardAvailable(uint64_t len) {
  if (buffered() == 0) ReceiveAvailable();
  size_t n = static_cast<size_t>(std::min<uint64_t>(len, buffered()));
  Skip(n);
  return n;
}

// Hands out up to `len` buffered bytes.
size_t SocketReader::Take(uint8_t* out, size_t len) {
  size_t n = std::min(len, buffered());
  if (n > 0) std::memcpy(out, buffer_.get() + begin_, n);
  begin_ += n;
  if (begin_ == end_) begin_ = end_ = 0;
  return n;
}

// Receives at least one byte into the empty buffer, waiting if need be.
Status SocketReader::Fill(int idle_timeout_ms) {
  assert(buffered() == 0);
  begin_ = end_ = 0;
  size_t got = 0;
  ES_RETURN_IF_ERROR(Receive(buffer_.get(), kBufferBytes, idle_timeout_ms, &got));
  end_ = got;
  return Status::Ok();
}

// Receives between 1 and `len` bytes, waiting for the first. Never a
// blocking recv(): it would wait past the stop flag and the timeout. Data
// usually is there already, so try before polling.
Status SocketReader::Receive(uint8_t* into, size_t len, int idle_timeout_ms, size_t* got) {
  assert(len > 0);
  while (!failed()) {
    ssize_t n = ReceiveNow(into, len);
    if (n > 0) {
      *got = static_cast<size_t>(n);
      return Status::Ok();
    }
    if (n == 0) ES_RETURN_IF_ERROR(WaitReadable(fd_, stopping_, idle_timeout_ms));
  }
  return error_;
}

// One recv() without waiting: the bytes received, 0 if none were pending,
// -1 if it failed (recorded in error_).
ssize_t SocketReader::ReceiveNow(uint8_t* into, size_t len) {
  assert(!failed() && len > 0);
  ssize_t n = ::recv(fd_, into, len, MSG_DONTWAIT);
  if (n > 0) {
    received_ms_ = NowMs();
    return n;
  }
  if (n == 0) {
    error_ = Status(ENOTCONN, "client closed the connection");
    return -1;
  }
  if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return 0;
  error_ = Errno(errno, "recv");
  return -1;
}

SocketWriter::SocketWriter(int fd) : fd_(fd) { assert(fd >= 0); }

// A queue that never empties (a client always a little behind) would keep
// growing at the back: drop the sent parts once they are most of it.
void SocketWriter::Compact() {
  if (head_ < 64 || head_ < parts_.size() / 2) return;
  parts_.erase(parts_.begin(), parts_.begin() + static_cast<ptrdiff_t>(head_));
  head_ = 0;
}

int64_t SocketWriter::StalledMs() const { return empty() ? 0 : NowMs() - progress_ms_; }

void SocketWriter::Push(Part part) {
  if (empty()) progress_ms_ = NowMs();  // the client's time to read starts now
  parts_.push_back(part);
}

void SocketWriter::PushBorrowed(const void* data, size_t len, void* tag) {
  assert(data != nullptr || len == 0);
  Push({.data = static_cast<const uint8_t*>(data), .copy_offset = 0, .len = len, .tag = tag});
}

void SocketWriter::PushCopy(std::span<const iovec> parts) {
  for (const iovec& part : parts) {
    size_t offset = copies_.size();
    auto* bytes = static_cast<const uint8_t*>(part.iov_base);
    copies_.insert(copies_.end(), bytes, bytes + part.iov_len);
    Push({.data = nullptr, .copy_offset = offset, .len = part.iov_len, .tag = nullptr});
  }
}

Status SocketWriter::SendAvailable(std::vector<void*>* released) {
  while (!empty()) {
    iovec iov[kMaxWriteParts];
    size_t count = 0;
    size_t batch = 0;  // bytes offered
    for (size_t i = head_; i < parts_.size() && count < kMaxWriteParts; i++) {
      size_t skip = i == head_ ? head_sent_ : 0;
      if (parts_[i].len == skip) continue;
      iov[count++] = {const_cast<uint8_t*>(Start(parts_[i])) + skip, parts_[i].len - skip};
      batch += parts_[i].len - skip;
    }
    ssize_t n = 0;
    if (count > 0) {
      msghdr msg{};
      msg.msg_iov = iov;
      msg.msg_iovlen = count;
      n = ::sendmsg(fd_, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
      Status error = Errno(errno, "sendmsg");
      DropAll(released);
      return error;
    }
    Advance(n > 0 ? static_cast<size_t>(n) : 0, released);
    if (n < 0 || static_cast<size_t>(n) < batch) break;  // the socket is full
  }
  return Status::Ok();
}

void SocketWriter::DropAll(std::vector<void*>* released) {
  for (size_t i = head_; i < parts_.size(); i++)
    if (parts_[i].tag) released->push_back(parts_[i].tag);
  parts_.clear();
  copies_.clear();
  head_ = head_sent_ = 0;
}

// Moves past `sent` bytes: whole parts (reporting their tags, empty parts
// included), then into a partial one.
void SocketWriter::Advance(size_t sent, std::vector<void*>* released) {
  if (sent > 0) progress_ms_ = NowMs();
  while (head_ < parts_.size()) {
    size_t rest = parts_[head_].len - head_sent_;
    if (sent < rest) {
      head_sent_ += sent;
      Compact();
      return;
    }
    sent -= rest;
    if (parts_[head_].tag) released->push_back(parts_[head_].tag);
    head_++;
    head_sent_ = 0;
  }
  assert(sent == 0);
  parts_.clear();  // keeps the capacity: no allocation on the next reply
  copies_.clear();
  head_ = 0;
}

}  // namespace edgestor::nbd
