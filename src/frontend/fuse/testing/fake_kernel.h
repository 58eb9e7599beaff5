// Test support: plays the kernel's side of a FUSE connection over a
// SOCK_SEQPACKET socket pair, so an export can be driven request by request
// without a mount (and without root): build requests, send them, read the
// replies. Used by fuse_file_export_test and fuse_fuzz.
#pragma once

#include <linux/fuse.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

namespace edgestor::fuse::testing {

// One request: header, fixed argument, trailing bytes.
class FuseRequest {
 public:
  FuseRequest(uint32_t opcode, uint64_t nodeid) {
    header_.opcode = opcode;
    header_.nodeid = nodeid;
    header_.uid = ::getuid();
    header_.gid = ::getgid();
    header_.pid = static_cast<uint32_t>(::getpid());
  }
  template <typename T>
  FuseRequest& Arg(const T& arg) {
    return Bytes(&arg, sizeof arg);
  }
  FuseRequest& Bytes(const void* data, size_t n) {
    const auto* p = static_cast<const uint8_t*>(data);
    body_.insert(body_.end(), p, p + n);
    return *this;
  }
  std::vector<uint8_t> Serialize(uint64_t unique) const {
    fuse_in_header h = header_;
    h.unique = unique;
    h.len = static_cast<uint32_t>(sizeof h + body_.size());
    std::vector<uint8_t> out(h.len);
    std::memcpy(out.data(), &h, sizeof h);
    if (!body_.empty()) std::memcpy(out.data() + sizeof h, body_.data(), body_.size());
    return out;
  }

 private:
  fuse_in_header header_{};
  std::vector<uint8_t> body_;
};

struct FuseReply {
  int error = 0;  // 0 or a negative errno, as the kernel gets it
  uint64_t unique = 0;
  std::vector<uint8_t> payload;
};

class FakeKernel {
 public:
  // Creates the pair; export_fd() goes to FileExportOptions::connection_fd
  // (the export then owns it).
  FakeKernel() {
    int pair[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) == 0) {
      kernel_fd_ = pair[0];
      export_fd_ = pair[1];
    }
  }
  ~FakeKernel() {
    if (kernel_fd_ >= 0) ::close(kernel_fd_);
  }
  FakeKernel(const FakeKernel&) = delete;
  FakeKernel& operator=(const FakeKernel&) = delete;

  bool ok() const { return kernel_fd_ >= 0; }
  int export_fd() const { return export_fd_; }

  bool Send(const std::vector<uint8_t>& message) const {
    return ::send(kernel_fd_, message.data(), message.size(), 0) == static_cast<ssize_t>(message.size());
  }
  // The next reply, or nothing within `timeout_ms`.
  std::optional<FuseReply> Receive(int timeout_ms) const {
    pollfd p{kernel_fd_, POLLIN, 0};
    if (::poll(&p, 1, timeout_ms) <= 0) return std::nullopt;
    ssize_t n = ::recv(kernel_fd_, reply_buffer_.data(), reply_buffer_.size(), 0);
    fuse_out_header h;
    if (n < static_cast<ssize_t>(sizeof h)) return std::nullopt;
    std::memcpy(&h, reply_buffer_.data(), sizeof h);
    return FuseReply{h.error, h.unique,
                     std::vector<uint8_t>(reply_buffer_.begin() + sizeof h, reply_buffer_.begin() + n)};
  }
  // Reads replies until the one to `unique`; nothing if none comes within
  // `timeout_ms` of the last.
  std::optional<FuseReply> Await(uint64_t unique, int timeout_ms) const {
    while (auto reply = Receive(timeout_ms))
      if (reply->unique == unique) return reply;
    return std::nullopt;
  }
  // Reads replies until every one of `uniques` came (in any order): their
  // errors, or nothing if one does not come within `timeout_ms` of the last.
  std::optional<std::vector<int>> AwaitAll(const std::vector<uint64_t>& uniques, int timeout_ms) const {
    std::vector<int> errors(uniques.size());
    size_t pending = uniques.size();
    while (pending > 0) {
      auto reply = Receive(timeout_ms);
      if (!reply) return std::nullopt;
      for (size_t i = 0; i < uniques.size(); i++)
        if (uniques[i] == reply->unique) {
          errors[i] = reply->error;
          pending--;
        }
    }
    return errors;
  }
  // INIT, as the kernel opens a connection: true if answered without error.
  bool Init() const {
    fuse_init_in init{.major = FUSE_KERNEL_VERSION, .minor = FUSE_KERNEL_MINOR_VERSION, .max_readahead = 1 << 17};
    if (!Send(FuseRequest(FUSE_INIT, 0).Arg(init).Serialize(1))) return false;
    auto reply = Await(1, 5000);
    return reply && reply->error == 0;
  }

 private:
  int kernel_fd_ = -1;
  int export_fd_ = -1;
  mutable std::vector<uint8_t> reply_buffer_ = std::vector<uint8_t>(2 << 20);  // a reply is at most 1 MiB + header
};

}  // namespace edgestor::fuse::testing
