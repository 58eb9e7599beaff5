// Fuzz target for the vhost-user-blk back-end: what a front-end sends on
// the socket, and what a guest puts in its rings.
//
// The first input byte, modulo 3, picks the mode:
//   0: rings. A virtqueue of 16 descriptors in guest memory whose
//      descriptor table, available ring and request headers are a valid
//      baseline (three requests) XORed with the input; a BlkQueue serves
//      it until it has returned what it took, or 200 ms pass.
//   1: messages. A valid negotiation (features, queue setup, config)
//      XORed with the input is sent to a live export, whose replies are
//      read and dropped.
//   2: shared memory. A front-end shares guest memory and an inflight
//      region through files whose sizes, offsets and contents are a valid
//      baseline XORed with the input: files shorter than the regions
//      declared over them (truncated, empty, offsets past their end),
//      inflight headers and entries that lie; then it starts a queue over
//      them and kicks it with a request.
// The back-end must never crash (a SIGBUS from a region past its file's
// end included), hang or touch memory outside what was shared.
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <spdlog/spdlog.h>

#include "frontend/vhost/blk_queue.h"
#include "frontend/vhost/vhost_blk_export.h"
#include "io/borrowed_device.h"
#include "io/fault_device.h"
#include "volume/volume_set.h"

namespace edgestor {
namespace {

constexpr uint64_t kDeviceBytes = 8 << 20;
constexpr size_t kGuestBytes = 1 << 20;
constexpr uint16_t kRing = 16;

struct Fixture {
  Fixture() : device(kDeviceBytes) {
    spdlog::set_level(spdlog::level::off);
    set = VolumeSet::Create(Borrow(device), {.cluster_size = 4096, .journal_bytes = 1 << 20}).value();
    volume = set->CreateVolume("vol", 1 << 20).value();
    memfd = ::memfd_create("guest", MFD_CLOEXEC);
    (void)!::ftruncate(memfd, kGuestBytes);
    guest = static_cast<uint8_t*>(::mmap(nullptr, kGuestBytes, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0));
    vhost::MemoryTable table{};
    table.nregions = 1;
    table.regions[0] = {0, kGuestBytes, reinterpret_cast<uint64_t>(guest), 0};
    memory = vhost::GuestMemory::Map(table, std::span(&memfd, 1)).value();
    socket_path = "/tmp/edgestor-vhost-fuzz-" + std::to_string(::getpid()) + ".sock";
    vhost::VhostExportOptions options{socket_path, 2, false, "fuzz"};
    exported = vhost::VhostBlkExport::Start(*volume, options, [this] { return set->OpenChannel(32); }).value();
  }
  FaultDevice device;
  std::unique_ptr<VolumeSet> set;
  Volume* volume;
  int memfd;
  uint8_t* guest;
  std::shared_ptr<vhost::GuestMemory> memory;
  std::string socket_path;
  std::unique_ptr<vhost::VhostBlkExport> exported;
};

Fixture& GetFixture() {
  static Fixture* fixture = new Fixture();  // lives for the process
  return *fixture;
}

void XorOver(uint8_t* base, size_t base_size, const uint8_t* data, size_t size) {
  for (size_t i = 0; i < size && i < base_size; i++) base[i] ^= data[i];
}

// Guest layout: descriptors at 0, avail at 4096, used at 8192, request
// headers at 16384 + 64 * i, data at 65536 + 8192 * i, status at 32768 + i.
void RunRings(const uint8_t* data, size_t size) {
  Fixture& f = GetFixture();
  std::memset(f.guest, 0, 65536);
  auto* desc = reinterpret_cast<vhost::Desc*>(f.guest);
  auto* avail = reinterpret_cast<uint16_t*>(f.guest + 4096);
  const uint32_t types[3] = {vhost::kBlkOut, vhost::kBlkIn, vhost::kBlkFlushCmd};
  for (uint16_t i = 0; i < 3; i++) {
    uint64_t header_at = 16384 + 64 * i;
    vhost::BlkOutHeader header{types[i], 0, uint64_t{i} * 8};
    std::memcpy(f.guest + header_at, &header, sizeof header);
    uint16_t d = static_cast<uint16_t>(i * 3);
    bool has_data = types[i] != vhost::kBlkFlushCmd;
    desc[d] = {header_at, 16, vhost::kDescNext, static_cast<uint16_t>(d + (has_data ? 1 : 2))};
    desc[d + 1] = {65536 + 8192ull * i, 4096,
                   static_cast<uint16_t>(vhost::kDescNext | (types[i] == vhost::kBlkIn ? vhost::kDescWrite : 0)),
                   static_cast<uint16_t>(d + 2)};
    desc[d + 2] = {32768ull + i, 1, vhost::kDescWrite, 0};
    avail[2 + i] = d;
  }
  avail[1] = 3;
  // The input: over the descriptor table, then the avail ring, then the headers.
  XorOver(f.guest, 16 * kRing, data, size);
  if (size > 16 * kRing) XorOver(f.guest + 4096, 2 * (3 + kRing), data + 16 * kRing, size - 16 * kRing);
  size_t headers_at = 16 * kRing + 2 * (3 + kRing);
  if (size > headers_at) XorOver(f.guest + 16384, 64 * 3, data + headers_at, size - headers_at);

  vhost::BlkSettings settings{f.volume, false, "fuzz", [&f] { return f.set->OpenChannel(32); }};
  vhost::BlkQueue queue(settings, 0);
  int kick = ::eventfd(0, EFD_CLOEXEC);
  vhost::Virtqueue::Layout layout{kRing, reinterpret_cast<uint64_t>(f.guest), reinterpret_cast<uint64_t>(avail),
                                  reinterpret_cast<uint64_t>(f.guest + 8192)};
  if (queue.Start(f.memory, layout, 0, data[0] & 2, kick).ok()) {
    uint64_t one = 1;
    (void)!::write(kick, &one, sizeof one);
    auto* used_idx = reinterpret_cast<volatile uint16_t*>(f.guest + 8192 + 2);
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(200);
    uint16_t wanted = avail[1] > kRing ? 0 : avail[1];  // an impossible index stops the queue
    while (*used_idx != wanted && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    queue.Stop();
  }
  ::close(kick);
}

void Put(std::vector<uint8_t>& out, uint32_t request, const void* payload, uint32_t size) {
  uint32_t header[3] = {request, 1, size};
  out.insert(out.end(), reinterpret_cast<uint8_t*>(header), reinterpret_cast<uint8_t*>(header) + 12);
  out.insert(out.end(), static_cast<const uint8_t*>(payload), static_cast<const uint8_t*>(payload) + size);
}

void RunMessages(const uint8_t* data, size_t size) {
  Fixture& f = GetFixture();
  std::vector<uint8_t> stream;
  uint64_t features = (1ull << 32) | (1ull << 30) | (1ull << 29), protocol = (1ull << 3) | (1ull << 9);
  Put(stream, 1, nullptr, 0);
  Put(stream, 2, &features, 8);
  Put(stream, 15, nullptr, 0);
  Put(stream, 16, &protocol, 8);
  Put(stream, 17, nullptr, 0);
  uint32_t config[3] = {0, 60, 0};
  Put(stream, 24, config, 12);
  uint32_t state[2] = {1, 64};
  Put(stream, 8, state, 8);
  Put(stream, 10, state, 8);
  uint64_t addr[5] = {1, 0x1000, 0x3000, 0x2000, 0};
  Put(stream, 9, addr, sizeof addr);
  Put(stream, 11, state, 8);
  Put(stream, 18, state, 8);
  uint64_t inflight[3] = {0, 0, 0x400002};
  Put(stream, 31, inflight, 24);
  XorOver(stream.data(), stream.size(), data + 1, size - 1);
  if (size - 1 > stream.size()) stream.insert(stream.end(), data + 1 + stream.size(), data + size);

  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, f.socket_path.c_str(), sizeof a.sun_path - 1);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
    (void)!::send(fd, stream.data(), stream.size(), MSG_NOSIGNAL);
    ::shutdown(fd, SHUT_WR);
    // Drain replies until the back-end closes (it must, at the end of the stream).
    char buf[4096];
    for (;;) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 5000) != 1) {
        std::fprintf(stderr, "vhost_fuzz: the back-end neither answered nor closed within 5 s\n");
        std::abort();
      }
      if (::recv(fd, buf, sizeof buf, 0) <= 0) break;
    }
  }
  ::close(fd);
  // Wait for the export to be free for the next input.
  for (int i = 0; i < 1000 && f.exported->connected(); i++) std::this_thread::sleep_for(std::chrono::milliseconds(1));
}

// What mode 2 reads from its input (XORed over a valid baseline).
struct SharedMemoryCase {
  uint8_t flags;              // bit 0: guest file is one page; 1: region declared 64 MiB;
                              // 2: inflight file empty; 3: inflight region past its file's end
  uint32_t guest_file_bytes;  // the memfd's size (kept under 2 MiB)
  uint32_t region_bytes;      // what SET_MEM_TABLE declares
  uint32_t mmap_offset;
  uint32_t inflight_file_bytes;  // kept under 64 KiB
  uint32_t inflight_bytes;    // what SET_INFLIGHT_FD declares
  uint32_t inflight_offset;
  uint16_t inflight_queues;
  uint16_t inflight_queue_size;
  vhost::InflightQueueHeader header;
  uint8_t entries[4];         // XORed into the first entries' inflight flags
} __attribute__((packed));

// Sends one message (with `fd` if not negative) asking for an
// acknowledgement; returns it (0: accepted). Aborts if none comes.
uint64_t SendAcked(int sock, uint32_t request, const void* payload, uint32_t size, int fd = -1) {
  std::vector<uint8_t> bytes(12 + size);
  uint32_t header[3] = {request, 1u | (1u << 3), size};
  std::memcpy(bytes.data(), header, 12);
  if (size) std::memcpy(bytes.data() + 12, payload, size);
  iovec iov{bytes.data(), bytes.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  if (fd >= 0) {
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
  }
  if (::sendmsg(sock, &msg, MSG_NOSIGNAL) != static_cast<ssize_t>(bytes.size())) return ~0ull;
  pollfd p{sock, POLLIN, 0};
  if (::poll(&p, 1, 5000) != 1) {
    std::fprintf(stderr, "vhost_fuzz: no acknowledgement within 5 s\n");
    std::abort();
  }
  uint8_t reply[12 + 8];
  if (::recv(sock, reply, sizeof reply, MSG_WAITALL) != sizeof reply) return ~0ull;
  uint64_t result;
  std::memcpy(&result, reply + 12, 8);
  return result;
}

int MemFd(uint64_t bytes) {
  int fd = ::memfd_create("fuzz", MFD_CLOEXEC);
  (void)!::ftruncate(fd, static_cast<off_t>(bytes));
  return fd;
}

void RunSharedMemory(const uint8_t* data, size_t size) {
  Fixture& f = GetFixture();
  constexpr uint16_t kQueueSize = 16;
  constexpr uint64_t kFrontEndBase = 0x7f0000000000;  // the front-end's address of guest memory
  SharedMemoryCase c{};
  c.guest_file_bytes = 1 << 20;
  c.region_bytes = 1 << 20;
  c.inflight_file_bytes = 4096;
  c.inflight_bytes = static_cast<uint32_t>(vhost::InflightQueueBytes(kQueueSize));
  c.inflight_queues = 1;
  c.inflight_queue_size = kQueueSize;
  c.header.version = 1;
  c.header.desc_num = kQueueSize;
  XorOver(reinterpret_cast<uint8_t*>(&c), sizeof c, data, size);
  uint64_t guest_file = (c.flags & 1) ? 4096 : c.guest_file_bytes % (2u << 20);
  uint64_t region = (c.flags & 2) ? 64ull << 20 : c.region_bytes;
  uint64_t inflight_file = (c.flags & 4) ? 0 : c.inflight_file_bytes % (64u << 10);
  uint64_t inflight_offset = (c.flags & 8) ? inflight_file + 4096 : c.inflight_offset;

  // Guest memory: rings at 0 (descriptors), 4096 (avail), 8192 (used); one
  // write of 4 KiB at 65536, as far as the file holds them.
  int guest_fd = MemFd(guest_file);
  std::vector<uint8_t> layout(65536 + 4096 + 64, 0);
  auto* desc = reinterpret_cast<vhost::Desc*>(layout.data());
  vhost::BlkOutHeader header{vhost::kBlkOut, 0, 0};
  std::memcpy(layout.data() + 16384, &header, sizeof header);
  desc[0] = {16384, 16, vhost::kDescNext, 1};
  desc[1] = {65536, 4096, vhost::kDescNext, 2};
  desc[2] = {65536 + 4096, 1, vhost::kDescWrite, 0};
  uint16_t avail[3] = {0, 1, 0};
  std::memcpy(layout.data() + 4096, avail, sizeof avail);
  (void)!::pwrite(guest_fd, layout.data(), std::min<uint64_t>(layout.size(), guest_file), 0);
  // The inflight region: a header and entries that may lie.
  int inflight_fd = MemFd(inflight_file);
  uint8_t inflight[16 + 4 * 16] = {};
  std::memcpy(inflight, &c.header, sizeof c.header);
  for (int i = 0; i < 4; i++) inflight[16 + 16 * i] = c.entries[i];
  (void)!::pwrite(inflight_fd, inflight, std::min<uint64_t>(sizeof inflight, inflight_file), 0);

  int sock = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, f.socket_path.c_str(), sizeof a.sun_path - 1);
  int kick = ::eventfd(0, EFD_CLOEXEC), call = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (::connect(sock, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
    uint64_t features = (1ull << 32) | (1ull << 30), protocol = (1ull << 3) | (1ull << 12);
    SendAcked(sock, 16, &protocol, 8);  // SET_PROTOCOL_FEATURES (REPLY_ACK, INFLIGHT_SHMFD): acked from here on
    SendAcked(sock, 2, &features, 8);   // SET_FEATURES
    uint64_t description[3] = {c.inflight_bytes, inflight_offset, 0};
    uint16_t dims[2] = {c.inflight_queues, c.inflight_queue_size};
    std::memcpy(&description[2], dims, 4);
    SendAcked(sock, 32, description, 24, inflight_fd);  // SET_INFLIGHT_FD
    uint8_t table[8 + 32] = {};
    table[0] = 1;
    uint64_t r[4] = {0, region, kFrontEndBase, c.mmap_offset};
    std::memcpy(table + 8, r, sizeof r);
    uint64_t mapped = SendAcked(sock, 5, table, sizeof table, guest_fd);  // SET_MEM_TABLE
    uint32_t num[2] = {0, kQueueSize};
    SendAcked(sock, 8, num, 8);  // SET_VRING_NUM
    uint64_t addr[5] = {0, kFrontEndBase, kFrontEndBase + 8192, kFrontEndBase + 4096, 0};
    SendAcked(sock, 9, addr, sizeof addr);  // SET_VRING_ADDR
    uint32_t base[2] = {0, 0};
    SendAcked(sock, 10, base, 8);  // SET_VRING_BASE
    uint64_t index = 0;
    SendAcked(sock, 12, &index, 8, kick);  // SET_VRING_KICK
    SendAcked(sock, 13, &index, 8, call);  // SET_VRING_CALL
    uint32_t enable[2] = {0, 1};
    uint64_t started = SendAcked(sock, 18, enable, 8);  // SET_VRING_ENABLE
    if (mapped == 0 && started == 0) {
      uint64_t one = 1;
      (void)!::write(kick, &one, sizeof one);
      pollfd p{call, POLLIN, 0};
      (void)::poll(&p, 1, 20);  // the request's interrupt, if it could run
    }
  }
  ::close(sock);
  ::close(kick);
  ::close(call);
  ::close(guest_fd);
  ::close(inflight_fd);
  for (int i = 0; i < 1000 && f.exported->connected(); i++) std::this_thread::sleep_for(std::chrono::milliseconds(1));
}

}  // namespace
}  // namespace edgestor

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  switch (data[0] % 3) {
    case 0: edgestor::RunRings(data + 1, size - 1); break;
    case 1: edgestor::RunMessages(data, size); break;
    default: edgestor::RunSharedMemory(data + 1, size - 1); break;
  }
  return 0;
}
