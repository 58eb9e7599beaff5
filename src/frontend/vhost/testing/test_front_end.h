// A vhost-user front-end for tests: plays QEMU's part against a
// VhostBlkExport. Guest memory is a memfd mapped here; the front-end's
// virtual addresses are simply our own pointers into it, and guest-physical
// address 0 is its first byte. Rings and buffers are laid out by hand, so
// tests can build any request a hostile guest could.
//
// Message and feature numbers are spelled out here rather than taken from
// vhost_user_protocol.h, so a wrong constant there cannot pass unnoticed.
#pragma once

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <optional>
#include <string>
#include <vector>

namespace edgestor::vhost::testing {

inline constexpr uint64_t kGuestMemoryBytes = 32ull << 20;
inline constexpr uint16_t kRingSize = 64;
inline constexpr int kTimeoutMs = 20'000;

struct TestDesc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};

class TestFrontEnd {
 public:
  explicit TestFrontEnd(const std::string& socket_path, uint32_t queues = 1, uint64_t memory_bytes = kGuestMemoryBytes)
      : queues_(queues), memory_bytes_(memory_bytes) {
    memfd_ = ::memfd_create("guest", MFD_CLOEXEC);
    EXPECT_GE(memfd_, 0);
    EXPECT_EQ(::ftruncate(memfd_, static_cast<off_t>(memory_bytes_)), 0);
    memory_ = static_cast<uint8_t*>(::mmap(nullptr, memory_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, memfd_, 0));
    EXPECT_NE(memory_, MAP_FAILED);
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, socket_path.c_str(), sizeof addr.sun_path - 1);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    EXPECT_TRUE(connected_) << "connect " << socket_path << ": " << std::strerror(errno);
    for (uint32_t q = 0; q < queues; q++) {
      kick_.push_back(::eventfd(0, EFD_CLOEXEC));
      call_.push_back(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
      used_seen_.push_back(0);
      avail_idx_.push_back(0);
    }
    next_buffer_ = RingArea(queues);
  }
  ~TestFrontEnd() {
    if (fd_ >= 0) ::close(fd_);
    for (int fd : kick_) ::close(fd);
    for (int fd : call_) ::close(fd);
    ::munmap(memory_, memory_bytes_);
    ::close(memfd_);
  }
  void Disconnect() {
    ::close(fd_);
    fd_ = -1;
  }

  // ---- Messages ----
  bool Send(uint32_t request, const void* payload, uint32_t size, int send_fd = -1, bool need_reply = false) {
    uint32_t header[3] = {request, 0x1u | (need_reply ? 1u << 3 : 0u), size};
    std::vector<uint8_t> bytes(sizeof header + size);
    std::memcpy(bytes.data(), header, sizeof header);
    if (size) std::memcpy(bytes.data() + sizeof header, payload, size);
    iovec iov{bytes.data(), bytes.size()};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
    if (send_fd >= 0) {
      msg.msg_control = control;
      msg.msg_controllen = sizeof control;
      cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int));
      std::memcpy(CMSG_DATA(c), &send_fd, sizeof(int));
    }
    return ::sendmsg(fd_, &msg, MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size());
  }
  // Reads one reply's payload; nullopt if the back-end hung up or timed out.
  std::optional<std::vector<uint8_t>> Receive(uint32_t expected_request) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, kTimeoutMs) != 1) return std::nullopt;
    uint32_t header[3];
    if (::recv(fd_, header, sizeof header, MSG_WAITALL) != sizeof header) return std::nullopt;
    EXPECT_EQ(header[0], expected_request);
    EXPECT_EQ(header[1] & 0x7, 0x5u);  // version 1, reply
    std::vector<uint8_t> payload(header[2]);
    if (header[2] && ::recv(fd_, payload.data(), payload.size(), MSG_WAITALL) != static_cast<ssize_t>(header[2]))
      return std::nullopt;
    return payload;
  }
  std::optional<uint64_t> CallU64(uint32_t request) {
    if (!Send(request, nullptr, 0)) return std::nullopt;
    auto reply = Receive(request);
    if (!reply || reply->size() != 8) return std::nullopt;
    uint64_t value;
    std::memcpy(&value, reply->data(), 8);
    return value;
  }
  // Sends and, with REPLY_ACK, checks the acknowledgement; returns it (0 = ok).
  uint64_t SendAcked(uint32_t request, const void* payload, uint32_t size, int send_fd = -1) {
    if (!Send(request, payload, size, send_fd, /*need_reply=*/true)) return ~0ull;
    auto reply = Receive(request);
    if (!reply || reply->size() != 8) return ~0ull;
    uint64_t value;
    std::memcpy(&value, reply->data(), 8);
    return value;
  }

  // The usual QEMU sequence: features, memory, then every ring, enabled.
  uint64_t Negotiate(bool event_idx = true) {
    uint64_t offered = NegotiateFeatures(event_idx, /*inflight=*/false);
    SetMemTable();
    for (uint32_t q = 0; q < queues_; q++) SetUpRing(q);
    return offered;
  }
  uint64_t NegotiateFeatures(bool event_idx, bool inflight) {
    uint64_t offered = CallU64(1).value_or(0);  // GET_FEATURES
    EXPECT_TRUE(offered & (1ull << 30));          // PROTOCOL_FEATURES
    uint64_t protocol = CallU64(15).value_or(0);  // GET_PROTOCOL_FEATURES
    EXPECT_TRUE(protocol & (1ull << 3));          // REPLY_ACK
    EXPECT_TRUE(protocol & (1ull << 12));         // INFLIGHT_SHMFD
    protocol &= (1ull << 0) | (1ull << 3) | (1ull << 9) | (inflight ? 1ull << 12 : 0);
    Send(16, &protocol, 8);                        // SET_PROTOCOL_FEATURES
    uint64_t features = offered & ~(event_idx ? 0 : 1ull << 29);
    EXPECT_EQ(SendAcked(2, &features, 8), 0u);     // SET_FEATURES
    EXPECT_EQ(SendAcked(3, nullptr, 0), 0u);       // SET_OWNER
    return offered;
  }
  // GET_INFLIGHT_FD: the region's descriptor and size (-1 on failure).
  std::pair<int, uint64_t> GetInflightFd() {
    uint64_t request[3] = {0, 0, 0};
    uint16_t dims[2] = {static_cast<uint16_t>(queues_), kRingSize};
    std::memcpy(&request[2], dims, 4);
    if (!Send(31, request, 24)) return {-1, 0};
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, kTimeoutMs) != 1) return {-1, 0};
    uint8_t buf[12 + 24];
    iovec iov{buf, sizeof buf};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    if (::recvmsg(fd_, &msg, MSG_WAITALL) != sizeof buf) return {-1, 0};
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    if (!c || c->cmsg_type != SCM_RIGHTS) return {-1, 0};
    int fd;
    std::memcpy(&fd, CMSG_DATA(c), sizeof fd);
    uint64_t size;
    std::memcpy(&size, buf + 12, 8);
    return {fd, size};
  }
  void SetInflightFd(int fd, uint64_t size) { EXPECT_EQ(SetInflightFdAcked(fd, size), 0u); }
  // SET_INFLIGHT_FD of `size` bytes at `offset` in `fd`; the acknowledgement (0 = ok).
  uint64_t SetInflightFdAcked(int fd, uint64_t size, uint64_t offset = 0) {
    uint64_t request[3] = {size, offset, 0};
    uint16_t dims[2] = {static_cast<uint16_t>(queues_), kRingSize};
    std::memcpy(&request[2], dims, 4);
    return SendAcked(32, request, 24, fd);
  }
  uint32_t queues() const { return queues_; }
  void SetMemTable() { EXPECT_EQ(SetMemTableFrom(memfd_, memory_bytes_), 0u); }
  // SET_MEM_TABLE declaring one region of `size` bytes at `mmap_offset` in
  // `fd`, at guest-physical 0 and at our own memory's address (so the rings
  // and buffers laid out here fall inside it); the acknowledgement (0 = ok).
  uint64_t SetMemTableFrom(int fd, uint64_t size, uint64_t mmap_offset = 0) {
    uint8_t table[8 + 32] = {};
    uint32_t one = 1;
    std::memcpy(table, &one, 4);
    uint64_t region[4] = {0, size, reinterpret_cast<uint64_t>(memory_), mmap_offset};
    std::memcpy(table + 8, region, sizeof region);
    return SendAcked(5, table, sizeof table, fd);
  }
  void SetUpRing(uint32_t q) {
    uint32_t state[2] = {q, kRingSize};
    EXPECT_EQ(SendAcked(8, state, 8), 0u);  // SET_VRING_NUM
    uint64_t addr[5];
    uint32_t index_flags[2] = {q, 0};
    std::memcpy(addr, index_flags, 8);
    addr[1] = reinterpret_cast<uint64_t>(Desc(q));
    addr[2] = reinterpret_cast<uint64_t>(Used(q));
    addr[3] = reinterpret_cast<uint64_t>(Avail(q));
    addr[4] = 0;
    EXPECT_EQ(SendAcked(9, addr, sizeof addr), 0u);  // SET_VRING_ADDR
    uint32_t base[2] = {q, 0};
    EXPECT_EQ(SendAcked(10, base, 8), 0u);  // SET_VRING_BASE
    uint64_t index = q;
    EXPECT_EQ(SendAcked(12, &index, 8, kick_[q]), 0u);  // SET_VRING_KICK
    EXPECT_EQ(SendAcked(13, &index, 8, call_[q]), 0u);  // SET_VRING_CALL
    uint32_t enable[2] = {q, 1};
    EXPECT_EQ(SendAcked(18, enable, 8), 0u);  // SET_VRING_ENABLE
  }

  // ---- Guest memory ----
  uint8_t* memory() { return memory_; }
  uint64_t Gpa(const void* p) const { return static_cast<const uint8_t*>(p) - memory_; }
  // A fresh buffer in guest memory (never reused: tests are short).
  uint8_t* Allocate(size_t bytes) {
    uint8_t* p = memory_ + next_buffer_;
    next_buffer_ += (bytes + 4095) / 4096 * 4096;
    EXPECT_LE(next_buffer_, memory_bytes_);
    std::memset(p, 0, bytes);
    return p;
  }

  // ---- Rings (each queue: 64 KiB: descriptors, avail, used) ----
  TestDesc* Desc(uint32_t q) { return reinterpret_cast<TestDesc*>(memory_ + q * 65536); }
  uint16_t* Avail(uint32_t q) { return reinterpret_cast<uint16_t*>(memory_ + q * 65536 + 16 * kRingSize); }
  uint16_t* Used(uint32_t q) { return reinterpret_cast<uint16_t*>(memory_ + q * 65536 + 32768); }

  // Makes the chain at `head` available and kicks.
  void Publish(uint32_t q, uint16_t head) {
    Avail(q)[2 + avail_idx_[q] % kRingSize] = head;
    __atomic_thread_fence(__ATOMIC_RELEASE);
    avail_idx_[q]++;
    __atomic_store_n(&Avail(q)[1], avail_idx_[q], __ATOMIC_RELEASE);
    Kick(q);
  }
  // Makes all the chains at `heads` available at once, with one kick (as a
  // guest does with a batch): the back-end sees them together.
  void PublishAll(uint32_t q, const std::vector<uint16_t>& heads) {
    for (uint16_t head : heads) Avail(q)[2 + (avail_idx_[q]++) % kRingSize] = head;
    __atomic_thread_fence(__ATOMIC_RELEASE);
    __atomic_store_n(&Avail(q)[1], avail_idx_[q], __ATOMIC_RELEASE);
    Kick(q);
  }
  int kick_fd(uint32_t q) const { return kick_[q]; }
  void Kick(uint32_t q) {
    uint64_t one = 1;
    (void)!::write(kick_[q], &one, 8);
  }
  void SetAvailIdx(uint32_t q, uint16_t idx) {
    avail_idx_[q] = idx;
    __atomic_store_n(&Avail(q)[1], idx, __ATOMIC_RELEASE);
  }
  // Waits for the next used entry: {id, len}, or nullopt on timeout.
  std::optional<std::pair<uint32_t, uint32_t>> WaitUsed(uint32_t q, int timeout_ms = kTimeoutMs) {
    for (int waited = 0; waited < timeout_ms; waited += 5) {
      uint16_t idx = __atomic_load_n(&Used(q)[1], __ATOMIC_ACQUIRE);
      if (idx != used_seen_[q]) {
        uint32_t elem[2];
        std::memcpy(elem, reinterpret_cast<uint8_t*>(Used(q) + 2) + 8 * (used_seen_[q] % kRingSize), 8);
        used_seen_[q]++;
        return std::make_pair(elem[0], elem[1]);
      }
      pollfd p{call_[q], POLLIN, 0};
      if (::poll(&p, 1, 5) == 1) {
        uint64_t count;
        (void)!::read(call_[q], &count, 8);
      }
    }
    return std::nullopt;
  }

  // A virtio-blk request as three descriptors at `first`: header, data,
  // status. Returns the status byte's location.
  uint8_t* BuildRequest(uint32_t q, uint16_t first, uint32_t type, uint64_t sector, uint8_t* data, uint32_t length,
                        bool data_writable) {
    uint8_t* header = Allocate(16);
    std::memcpy(header, &type, 4);
    std::memcpy(header + 8, &sector, 8);
    uint8_t* status = Allocate(1);
    *status = 0xff;
    TestDesc* d = Desc(q);
    uint16_t a = first, b = first + 1, c = first + 2;
    d[a] = {Gpa(header), 16, 1, b};
    if (length) {
      d[b] = {Gpa(data), length, static_cast<uint16_t>(1 | (data_writable ? 2 : 0)), c};
    } else {
      d[a].next = c;
    }
    d[c] = {Gpa(status), 1, 2, 0};
    return status;
  }

 private:
  static uint64_t RingArea(uint32_t queues) { return uint64_t{queues} * 65536; }

  uint32_t queues_;
  uint64_t memory_bytes_;
  int memfd_ = -1;
  int fd_ = -1;
  bool connected_ = false;
  uint8_t* memory_ = nullptr;
  uint64_t next_buffer_ = 0;
  std::vector<int> kick_, call_;
  std::vector<uint16_t> used_seen_, avail_idx_;
};

}  // namespace edgestor::vhost::testing
