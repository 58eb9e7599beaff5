// The vhost-user protocol for one export: the listening socket, and a
// session per front-end connection that answers its messages and runs the
// virtqueues (BlkQueue).
#include "frontend/vhost/vhost_blk_export.h"

#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include <spdlog/spdlog.h>

#include "base/unix_socket.h"
#include "frontend/vhost/blk_queue.h"
#include "frontend/vhost/guest_memory.h"
#include "frontend/vhost/vhost_user_protocol.h"

namespace edgestor::vhost {

namespace {

// A file descriptor closed when dropped.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) {
      Reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  ~Fd() { Reset(); }
  void Reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_ = -1;
};

struct Message {
  MessageHeader header{};
  std::vector<uint8_t> payload;
  std::vector<Fd> fds;
  template <typename T>
  bool Get(T* out) const {
    if (payload.size() < sizeof(T)) return false;
    std::memcpy(out, payload.data(), sizeof(T));
    return true;
  }
};

// Reads one message. ECONNRESET at a clean end of stream.
Result<Message> ReadMessage(int fd) {
  Message m;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFds)];
  iovec iov{&m.header, sizeof m.header};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n;
  do n = ::recvmsg(fd, &msg, MSG_CMSG_CLOEXEC | MSG_WAITALL);
  while (n < 0 && errno == EINTR);
  if (n == 0) return Status(ECONNRESET, "front-end disconnected");
  if (n < 0) return Status(errno, "reading a vhost-user message failed");
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; i++) {
      int received;
      std::memcpy(&received, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      m.fds.emplace_back(received);
    }
  }
  if (static_cast<size_t>(n) != sizeof m.header || (msg.msg_flags & MSG_CTRUNC))
    return Status(EPROTO, "truncated vhost-user message header");
  if ((m.header.flags & kVersionMask) != kFlagVersion) return Status(EPROTO, "unknown vhost-user protocol version");
  if (m.header.size > kMaxPayload) return Status(EPROTO, "vhost-user message too large");
  m.payload.resize(m.header.size);
  size_t got = 0;
  while (got < m.payload.size()) {
    ssize_t r = ::recv(fd, m.payload.data() + got, m.payload.size() - got, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return Status(EPROTO, "truncated vhost-user message payload");
    got += static_cast<size_t>(r);
  }
  return m;
}

Status SendReply(int fd, uint32_t request, const void* payload, uint32_t size, int send_fd = -1) {
  MessageHeader header{request, kFlagVersion | kFlagReply, size};
  std::vector<uint8_t> out(sizeof header + size);
  std::memcpy(out.data(), &header, sizeof header);
  if (size) std::memcpy(out.data() + sizeof header, payload, size);
  if (send_fd < 0) return WriteAll(fd, out.data(), out.size());
  iovec iov{out.data(), out.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(c), &send_fd, sizeof(int));
  if (::sendmsg(fd, &msg, MSG_NOSIGNAL) != static_cast<ssize_t>(out.size())) return Status(EPIPE, "sending a reply failed");
  return Status::Ok();
}

// The inflight tracking memory (INFLIGHT_SHMFD), shared with the front-end,
// which keeps it across our restarts.
class InflightRegion {
 public:
  static Result<std::shared_ptr<InflightRegion>> Map(int fd, uint64_t offset, uint64_t size, uint16_t queues,
                                                     uint16_t queue_size) {
    if (queues == 0 || queue_size == 0 || queue_size > kMaxQueueSize || size < queues * InflightQueueBytes(queue_size) ||
        size > (64ull << 20))
      return Status(EINVAL, "inflight region has impossible dimensions");
    ES_RETURN_IF_ERROR(CheckFileCovers(fd, offset, size));
    void* base = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, static_cast<off_t>(offset));
    if (base == MAP_FAILED) return Status(errno, "cannot map the inflight region");
    return std::shared_ptr<InflightRegion>(new InflightRegion(base, size, queues, queue_size));
  }
  ~InflightRegion() { ::munmap(base_, size_); }
  // Null for a queue beyond the region or of another size.
  InflightQueueHeader* Queue(uint32_t index, uint16_t queue_size) {
    if (index >= queues_ || queue_size != queue_size_) return nullptr;
    return reinterpret_cast<InflightQueueHeader*>(static_cast<uint8_t*>(base_) + index * InflightQueueBytes(queue_size_));
  }

 private:
  InflightRegion(void* base, uint64_t size, uint16_t queues, uint16_t queue_size)
      : base_(base), size_(size), queues_(queues), queue_size_(queue_size) {}
  void* base_;
  uint64_t size_;
  uint16_t queues_, queue_size_;
};

uint64_t OfferedFeatures(bool read_only) {
  uint64_t f = kFeatureVersion1 | kFeatureIndirectDesc | kFeatureEventIdx | kFeatureProtocolFeatures | kBlkSegMax |
               kBlkBlkSize | kBlkFlush | kBlkTopology | kBlkMq | kBlkDiscard | kBlkWriteZeroes;
  return read_only ? f | kBlkRo : f;
}

constexpr uint64_t kOfferedProtocolFeatures = kProtocolMq | kProtocolReplyAck | kProtocolConfig | kProtocolInflightShmfd;

// One front-end connection: its negotiated state and its queues.
class Session {
 public:
  Session(Volume& volume, const VhostExportOptions& options, std::function<std::unique_ptr<VolumeChannel>()> make_channel,
          IoStats* io_stats)
      : volume_(volume), options_(options) {
    BlkSettings settings{&volume, options.read_only, options.serial, std::move(make_channel),
                         options.queue_inflight_bytes, options.shared_budget, io_stats};
    rings_.resize(options.queues);
    for (uint32_t i = 0; i < options.queues; i++) rings_[i].queue = std::make_unique<BlkQueue>(settings, i);
  }
  ~Session() { StopAll(); }

  // Serves messages until the front-end goes away or breaks the protocol.
  void Run(int fd) {
    fd_ = fd;
    for (;;) {
      auto message = ReadMessage(fd);
      if (!message.ok()) {
        if (message.status().code() != ECONNRESET) spdlog::warn("vhost-blk {}: {}", options_.socket_path, message.status().message());
        return;
      }
      Status s = Handle(message.value());
      if (s.code() == EPROTO) {
        spdlog::warn("vhost-blk {}: {}; disconnecting", options_.socket_path, s.message());
        return;
      }
      if (!s.ok()) spdlog::warn("vhost-blk {}: request {} failed: {}", options_.socket_path, message->header.request, s.message());
      bool ack = (message->header.flags & kFlagNeedReply) && (protocol_features_ & kProtocolReplyAck) && !replied_;
      if (ack) {
        uint64_t result = s.ok() ? 0 : 1;
        if (!SendReply(fd, message->header.request, &result, sizeof result).ok()) return;
      }
    }
  }

 private:
  struct Ring {
    std::unique_ptr<BlkQueue> queue;
    Virtqueue::Layout layout;
    uint16_t base = 0;
    Fd kick;
    bool enabled = false;
  };

  Status Reply(const Message& m, const void* payload, uint32_t size) {
    replied_ = true;
    return SendReply(fd_, m.header.request, payload, size);
  }
  Status ReplyU64(const Message& m, uint64_t value) { return Reply(m, &value, sizeof value); }

  Result<Ring*> RingOf(uint64_t index) {
    if (index >= rings_.size()) return Status(EINVAL, "no virtqueue " + std::to_string(index));
    return &rings_[index];
  }

  Status Handle(Message& m) {
    replied_ = false;
    switch (m.header.request) {
      case kGetFeatures: return ReplyU64(m, OfferedFeatures(options_.read_only));
      case kSetFeatures: {
        uint64_t features;
        if (!m.Get(&features)) return Status(EPROTO, "short SET_FEATURES");
        if (features & ~OfferedFeatures(options_.read_only)) return Status(EINVAL, "front-end acked features we did not offer");
        features_ = features;
        return Status::Ok();
      }
      case kGetProtocolFeatures: return ReplyU64(m, kOfferedProtocolFeatures);
      case kSetProtocolFeatures: {
        uint64_t features;
        if (!m.Get(&features)) return Status(EPROTO, "short SET_PROTOCOL_FEATURES");
        protocol_features_ = features & kOfferedProtocolFeatures;
        return Status::Ok();
      }
      case kSetOwner: return Status::Ok();
      case kResetOwner:
      case kResetDevice:
        StopAll();
        return Status::Ok();
      case kGetQueueNum: return ReplyU64(m, rings_.size());
      case kSetMemTable: return SetMemTable(m);
      case kSetVringNum:
      case kSetVringBase: {
        VringState state;
        if (!m.Get(&state)) return Status(EPROTO, "short vring state");
        ES_ASSIGN_OR_RETURN(Ring * ring, RingOf(state.index));
        if (ring->queue->running()) return Status(EBUSY, "virtqueue is running");
        if (m.header.request == kSetVringNum) ring->layout.size = state.num <= kMaxQueueSize ? static_cast<uint16_t>(state.num) : 0;
        else ring->base = static_cast<uint16_t>(state.num);
        return Status::Ok();
      }
      case kSetVringAddr: {
        VringAddr addr;
        if (!m.Get(&addr)) return Status(EPROTO, "short SET_VRING_ADDR");
        ES_ASSIGN_OR_RETURN(Ring * ring, RingOf(addr.index));
        if (ring->queue->running()) return Status(EBUSY, "virtqueue is running");
        ring->layout.desc = addr.desc_user_addr;
        ring->layout.avail = addr.avail_user_addr;
        ring->layout.used = addr.used_user_addr;
        return Status::Ok();
      }
      case kGetVringBase: {
        VringState state;
        if (!m.Get(&state)) return Status(EPROTO, "short GET_VRING_BASE");
        ES_ASSIGN_OR_RETURN(Ring * ring, RingOf(state.index));
        ring->base = ring->queue->Stop();
        ring->kick.Reset();  // the ring is stopped until kicked anew
        VringState reply{state.index, ring->base};
        return Reply(m, &reply, sizeof reply);
      }
      case kSetVringKick:
      case kSetVringCall:
      case kSetVringErr: return SetVringFd(m);
      case kSetVringEnable: {
        VringState state;
        if (!m.Get(&state)) return Status(EPROTO, "short SET_VRING_ENABLE");
        ES_ASSIGN_OR_RETURN(Ring * ring, RingOf(state.index));
        ring->enabled = state.num != 0;
        if (!ring->enabled) {
          ring->base = ring->queue->Stop();
          return Status::Ok();
        }
        return MaybeStart(*ring);
      }
      case kGetConfig: return GetConfig(m);
      case kGetInflightFd: return GetInflightFd(m);
      case kSetInflightFd: return SetInflightFd(m);
      case kSetConfig: return Status::Ok();  // writeback is fixed; nothing else is writable
      default: return Status(ENOTSUP, "unsupported vhost-user request " + std::to_string(m.header.request));
    }
  }

  Status SetMemTable(Message& m) {
    MemoryTable table{};
    if (m.payload.size() < 8) return Status(EPROTO, "short SET_MEM_TABLE");
    std::memcpy(&table, m.payload.data(), std::min(m.payload.size(), sizeof table));
    if (table.nregions > kMaxMemoryRegions || m.payload.size() < 8 + table.nregions * sizeof(MemoryRegion))
      return Status(EPROTO, "SET_MEM_TABLE with a bad region count");
    std::vector<int> fds;
    for (const Fd& fd : m.fds) fds.push_back(fd.get());
    ES_ASSIGN_OR_RETURN(std::shared_ptr<GuestMemory> memory, GuestMemory::Map(table, fds));
    // Queues hold the old mapping: restart the running ones on the new one.
    std::vector<Ring*> restart;
    for (Ring& ring : rings_) {
      if (!ring.queue->running()) continue;
      ring.base = ring.queue->Stop();
      restart.push_back(&ring);
    }
    memory_ = std::move(memory);
    for (Ring* ring : restart) ES_RETURN_IF_ERROR(MaybeStart(*ring));
    return Status::Ok();
  }

  Status SetVringFd(Message& m) {
    uint64_t value;
    if (!m.Get(&value)) return Status(EPROTO, "short vring descriptor message");
    ES_ASSIGN_OR_RETURN(Ring * ring, RingOf(value & kVringIndexMask));
    bool has_fd = !(value & kVringNoFd);
    if (has_fd && m.fds.size() != 1) return Status(EPROTO, "vring message without its descriptor");
    Fd fd = has_fd ? std::move(m.fds[0]) : Fd();
    switch (m.header.request) {
      case kSetVringKick:
        if (!has_fd) return Status(ENOTSUP, "polling mode (no kick descriptor) is not supported");
        if (ring->queue->running()) ring->base = ring->queue->Stop();
        ring->kick = std::move(fd);
        // Without protocol features a ring is enabled by its first kick.
        if (!(features_ & kFeatureProtocolFeatures)) ring->enabled = true;
        return MaybeStart(*ring);
      case kSetVringCall: {
        int old = ring->queue->ExchangeCallFd(fd.release());
        if (old >= 0) ::close(old);
        return Status::Ok();
      }
      default: return Status::Ok();  // error notifications: we never send any
    }
  }

  Status MaybeStart(Ring& ring) {
    if (!memory_ || ring.kick.get() < 0 || !ring.enabled || ring.queue->running()) return Status::Ok();
    uint32_t index = static_cast<uint32_t>(&ring - rings_.data());
    InflightQueueHeader* tracking = inflight_ ? inflight_->Queue(index, ring.layout.size) : nullptr;
    return ring.queue->Start(memory_, ring.layout, ring.base, (features_ & kFeatureEventIdx) != 0, ring.kick.get(),
                             tracking, inflight_);
  }

  // A new tracking region for the front-end to keep: zeroed (a fresh memfd).
  Status GetInflightFd(const Message& m) {
    InflightDescription d;
    if (!m.Get(&d)) return Status(EPROTO, "short GET_INFLIGHT_FD");
    if (d.num_queues == 0 || d.num_queues > rings_.size() || d.queue_size == 0 || d.queue_size > kMaxQueueSize)
      return Status(EINVAL, "GET_INFLIGHT_FD for impossible queues");
    uint64_t size = d.num_queues * InflightQueueBytes(d.queue_size);
    Fd fd(::memfd_create("edgestor-inflight", MFD_CLOEXEC));
    if (fd.get() < 0 || ::ftruncate(fd.get(), static_cast<off_t>(size)) != 0)
      return Status(errno, "cannot create the inflight region");
    ES_ASSIGN_OR_RETURN(inflight_, InflightRegion::Map(fd.get(), 0, size, d.num_queues, d.queue_size));
    for (uint16_t q = 0; q < d.num_queues; q++) inflight_->Queue(q, d.queue_size)->desc_num = d.queue_size;
    spdlog::info("vhost-blk {}: inflight tracking for {} queue(s) of {}", options_.socket_path, d.num_queues,
                 d.queue_size);
    InflightDescription reply{size, 0, d.num_queues, d.queue_size};
    replied_ = true;
    return SendReply(fd_, m.header.request, &reply, sizeof reply, fd.get());
  }

  // The region a previous back-end used: requests left in it run again.
  Status SetInflightFd(const Message& m) {
    InflightDescription d;
    if (!m.Get(&d) || m.fds.size() != 1) return Status(EPROTO, "SET_INFLIGHT_FD without its description or descriptor");
    if (d.num_queues > rings_.size()) return Status(EINVAL, "SET_INFLIGHT_FD for more queues than we have");
    ES_ASSIGN_OR_RETURN(inflight_, InflightRegion::Map(m.fds[0].get(), d.mmap_offset, d.mmap_size, d.num_queues,
                                                       d.queue_size));
    spdlog::info("vhost-blk {}: front-end handed back its inflight region ({} queue(s))", options_.socket_path,
                 d.num_queues);
    return Status::Ok();
  }

  Status GetConfig(const Message& m) {
    ConfigSpace request;
    if (!m.Get(&request)) return Status(EPROTO, "short GET_CONFIG");
    BlkConfig config{};
    config.capacity = volume_.size() / 512;
    config.seg_max = kSegMax;
    config.blk_size = 512;
    config.physical_block_exp = 3;  // 4 KiB: the engine's block
    config.min_io_size = 8;
    config.opt_io_size = 0;
    config.writeback = 1;
    config.num_queues = static_cast<uint16_t>(rings_.size());
    config.max_discard_sectors = kMaxDiscardSectors;
    config.max_discard_seg = 1;
    config.discard_sector_alignment = 8;
    config.max_write_zeroes_sectors = kMaxDiscardSectors;
    config.max_write_zeroes_seg = 1;
    config.write_zeroes_may_unmap = 1;
    if (request.size > kMaxPayload - sizeof(ConfigSpace)) return Status(EPROTO, "GET_CONFIG too large");
    std::vector<uint8_t> out(sizeof(ConfigSpace) + request.size, 0);
    std::memcpy(out.data(), &request, sizeof request);
    if (request.offset < sizeof config) {
      size_t n = std::min<size_t>(request.size, sizeof config - request.offset);
      std::memcpy(out.data() + sizeof request, reinterpret_cast<const uint8_t*>(&config) + request.offset, n);
    }
    return Reply(m, out.data(), static_cast<uint32_t>(out.size()));
  }

  void StopAll() {
    for (Ring& ring : rings_) {
      ring.base = ring.queue->Stop();
      ring.kick.Reset();
      ring.enabled = false;
      int old = ring.queue->ExchangeCallFd(-1);
      if (old >= 0) ::close(old);
    }
  }

  Volume& volume_;
  const VhostExportOptions& options_;
  int fd_ = -1;
  uint64_t features_ = 0;
  uint64_t protocol_features_ = 0;
  bool replied_ = false;  // the current message got its reply
  std::shared_ptr<GuestMemory> memory_;
  std::shared_ptr<InflightRegion> inflight_;
  std::vector<Ring> rings_;
};

}  // namespace

// The listening socket and the thread that serves one front-end at a time.
class VhostBlkExport::Impl {
 public:
  Impl(Volume& volume, const VhostExportOptions& options, std::function<std::unique_ptr<VolumeChannel>()> make_channel,
       int listen_fd)
      : volume_(volume), options_(options), make_channel_(std::move(make_channel)), listen_fd_(listen_fd) {
    thread_ = std::thread(&Impl::Serve, this);
  }
  ~Impl() { Stop(); }

  void Stop() {
    if (stopping_.exchange(true)) return;
    ::shutdown(listen_fd_.get(), SHUT_RDWR);
    {
      std::lock_guard lock(mu_);
      if (connection_ >= 0) ::shutdown(connection_, SHUT_RDWR);
    }
    thread_.join();
    RemoveSocketFile(options_.socket_path);
  }
  const IoStats& io_stats() const { return io_stats_; }
  bool connected() const {
    std::lock_guard lock(mu_);
    return connection_ >= 0;
  }

 private:
  void Serve() {
    while (!stopping_) {
      pollfd p{listen_fd_.get(), POLLIN, 0};
      if (::poll(&p, 1, 500) <= 0) continue;
      Fd connection(::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
      if (connection.get() < 0) continue;
      {
        std::lock_guard lock(mu_);
        if (stopping_) break;
        connection_ = connection.get();
      }
      spdlog::info("vhost-blk {}: front-end connected", options_.socket_path);
      {
        Session session(volume_, options_, make_channel_, &io_stats_);
        session.Run(connection.get());
      }  // queues drained and stopped before the next front-end
      {
        std::lock_guard lock(mu_);
        connection_ = -1;
      }
      spdlog::info("vhost-blk {}: front-end disconnected", options_.socket_path);
    }
  }

  Volume& volume_;
  const VhostExportOptions& options_;
  std::function<std::unique_ptr<VolumeChannel>()> make_channel_;
  Fd listen_fd_;
  std::atomic<bool> stopping_{false};
  mutable std::mutex mu_;
  int connection_ = -1;  // GUARDED_BY(mu_)
  IoStats io_stats_;     // every front-end's requests, across reconnections
  std::thread thread_;
};

Result<std::unique_ptr<VhostBlkExport>> VhostBlkExport::Start(Volume& volume, VhostExportOptions options,
                                                              std::function<std::unique_ptr<VolumeChannel>()> make_channel) {
  if (options.queues == 0 || options.queues > kMaxQueues)
    return Status(EINVAL, "queues must be from 1 to " + std::to_string(kMaxQueues));
  if (options.serial.size() > kBlkIdBytes) return Status(EINVAL, "serial is longer than 20 bytes");
  if (options.queue_inflight_bytes == 0) return Status(EINVAL, "the per-queue in-flight budget must not be 0");
  ES_ASSIGN_OR_RETURN(int fd, ListenUnixSocket(options.socket_path, options.access));
  std::unique_ptr<VhostBlkExport> out(new VhostBlkExport(volume, std::move(options), nullptr));
  out->impl_ = std::make_unique<Impl>(volume, out->options_, std::move(make_channel), fd);
  return out;
}

VhostBlkExport::VhostBlkExport(Volume& volume, VhostExportOptions options, std::unique_ptr<Impl> impl)
    : volume_(volume), options_(std::move(options)), impl_(std::move(impl)) {}

VhostBlkExport::~VhostBlkExport() { Stop(); }

void VhostBlkExport::Stop() {
  if (impl_) impl_->Stop();
}

bool VhostBlkExport::connected() const { return impl_ && impl_->connected(); }

const IoStats& VhostBlkExport::io_stats() const { return impl_->io_stats(); }

}  // namespace edgestor::vhost
