// Fuzz target for the NBD server: the input is what a client sends.
//
// It is fed to ServeNbdConnection through a socketpair (written in full,
// then the write side shut down) while another thread reads and drops the
// server's replies. The server must answer or disconnect, and never crash,
// hang, or touch memory it should not.
//
// So that random bytes reach past the handshake, the first input byte picks
// how the rest is used:
//   0: sent as it is (greeting and option parsing);
//   1: XORed over a valid session (handshake, then one of every command), so
//      sparse mutations make mostly-valid messages with a few bad fields;
//   2: a valid handshake, then XORed over the requests only;
//   3: a valid handshake, then requests shaped from the input: right magic,
//      fields taken modulo ranges where the volume's edges are.
// Bit 2 of the first byte turns structured replies off in modes 2 and 3.
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include <spdlog/spdlog.h>

#include "frontend/nbd/nbd_server.h"
#include "io/borrowed_device.h"
#include "io/fault_device.h"
#include "volume/volume_set.h"

namespace edgestor {
namespace {

constexpr uint64_t kDeviceBytes = 8 << 20;
constexpr size_t kMaxInputBytes = 256 * 1024;

// Two small volumes on an in-memory pool, shared by every run.
class FuzzProvider : public ExportProvider {
 public:
  FuzzProvider() : device_(kDeviceBytes) {
    set_ = VolumeSet::Create(Borrow(device_), {.cluster_size = 4096, .journal_bytes = 1 << 20}).value();
    (void)set_->CreateVolume("vol", 1 << 20);
    (void)set_->CreateVolume("b", 64 << 10);
  }
  std::vector<std::string> ListExports() override { return {"vol", "b"}; }
  Result<Volume*> AcquireExport(const std::string& name) override { return set_->FindVolume(name); }
  void ReleaseExport(Volume*) override {}
  std::unique_ptr<VolumeChannel> OpenChannel(uint32_t depth) override { return set_->OpenChannel(depth); }

 private:
  FaultDevice device_;
  std::unique_ptr<VolumeSet> set_;
};

struct Message {
  std::vector<uint8_t> bytes;
  Message& U16(uint16_t v) { return Put(v, 2); }
  Message& U32(uint32_t v) { return Put(v, 4); }
  Message& U64(uint64_t v) { return Put(v, 8); }
  Message& Str(const std::string& s) {
    bytes.insert(bytes.end(), s.begin(), s.end());
    return *this;
  }
  Message& Put(uint64_t v, int n) {
    for (int i = n - 1; i >= 0; i--) bytes.push_back(static_cast<uint8_t>(v >> (8 * i)));
    return *this;
  }
  Message& Option(uint32_t option, const Message& data) {
    U64(0x49484156454f5054ull).U32(option).U32(static_cast<uint32_t>(data.bytes.size()));
    bytes.insert(bytes.end(), data.bytes.begin(), data.bytes.end());
    return *this;
  }
  Message& Request(uint16_t flags, uint16_t type, uint64_t offset, uint32_t length) {
    return U32(0x25609513).U16(flags).U16(type).U64(type).U64(offset).U32(length);
  }
};

std::vector<uint8_t> Handshake(bool structured) {
  Message m;
  m.U32(3);  // fixed newstyle, no zeroes
  m.Option(3, {});  // LIST
  if (structured) {
    m.Option(8, {});  // STRUCTURED_REPLY
    m.Option(10, Message().U32(3).Str("vol").U32(1).U32(15).Str("base:allocation"));
  }
  m.Option(7, Message().U32(3).Str("vol").U16(1).U16(3));  // GO, asking for block sizes
  return m.bytes;
}

std::vector<uint8_t> Requests() {
  Message m;
  m.Request(0, 1, 4096, 512);  // WRITE and its payload
  for (int i = 0; i < 512; i++) m.bytes.push_back(static_cast<uint8_t>(i * 7));
  m.Request(0, 0, 0, 8192);          // READ
  m.Request(0, 7, 0, 65536);         // BLOCK_STATUS
  m.Request(0, 4, 0, 4096);          // TRIM
  m.Request(1 | 16, 6, 8192, 4096);  // WRITE_ZEROES, FUA + FAST_ZERO
  m.Request(0, 3, 0, 0);             // FLUSH
  m.Request(4, 0, 4096, 512);        // READ, DF
  m.Request(0, 2, 0, 0);             // DISC
  return m.bytes;
}

// Eight input bytes per request: flags, command, offset in 512-byte units,
// length in 64-byte units (so some are unaligned), and a cookie. WRITEs
// carry their payload when it is not huge.
std::vector<uint8_t> ShapedRequests(const uint8_t* input, size_t size) {
  constexpr size_t kRecordBytes = 8;
  constexpr uint32_t kMaxPayload = 256 * 1024;
  Message m;
  for (size_t i = 0; i + kRecordBytes <= size; i += kRecordBytes) {
    const uint8_t* r = input + i;
    uint16_t flags = r[0] & 0x80 ? static_cast<uint16_t>(r[0] << 8) : r[0] & 0x1f;
    uint16_t type = r[1] % 10;
    uint64_t offset = (static_cast<uint64_t>(r[2]) << 8 | r[3]) % 4096 * 512;
    uint32_t length = (static_cast<uint32_t>(r[4]) << 8 | r[5]) * 64;
    m.U32(0x25609513).U16(flags).U16(type).U64(static_cast<uint64_t>(r[6]) << 8 | r[7]).U64(offset).U32(length);
    if (type == 1 && length <= kMaxPayload) m.bytes.resize(m.bytes.size() + length, r[7]);
  }
  return m.bytes;
}

// `base` with `input` XORed over it; input beyond the base is appended.
std::vector<uint8_t> Overlay(std::vector<uint8_t> base, const uint8_t* input, size_t size) {
  if (base.size() < size) base.resize(size, 0);
  for (size_t i = 0; i < size; i++) base[i] ^= input[i];
  return base;
}

std::vector<uint8_t> ClientStream(const uint8_t* data, size_t size) {
  if (size == 0) return {};
  const uint8_t* rest = data + 1;
  size_t n = size - 1;
  bool structured = !(data[0] & 4);
  std::vector<uint8_t> out, requests;
  switch (data[0] % 4) {
    case 0: return std::vector<uint8_t>(rest, rest + n);
    case 1:
      out = Handshake(true);
      requests = Requests();
      out.insert(out.end(), requests.begin(), requests.end());
      return Overlay(out, rest, n);
    case 2:
      out = Handshake(structured);
      requests = Overlay(Requests(), rest, n);
      break;
    default:
      out = Handshake(structured);
      requests = ShapedRequests(rest, n);
      break;
  }
  out.insert(out.end(), requests.begin(), requests.end());
  return out;
}

void WriteAllAndShutdown(int fd, const std::vector<uint8_t>& bytes) {
  for (size_t done = 0; done < bytes.size();) {
    ssize_t n = ::send(fd, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
    if (n <= 0) break;  // the server hung up: the rest is never read
    done += static_cast<size_t>(n);
  }
  ::shutdown(fd, SHUT_WR);
}

void DrainUntilClosed(int fd) {
  std::vector<uint8_t> scratch(64 * 1024);
  while (::recv(fd, scratch.data(), scratch.size(), 0) > 0) {
  }
}

}  // namespace
}  // namespace edgestor

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace edgestor;
  static FuzzProvider provider;
  static bool quiet = (spdlog::set_level(spdlog::level::err), true);  // bad input is the point
  (void)quiet;
  if (size > kMaxInputBytes) return 0;
  std::vector<uint8_t> stream = ClientStream(data, size);
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) return 0;
  std::atomic<bool> stopping{false};
  NbdServerOptions options{.queue_depth = 4, .max_request_bytes = 1 << 20, .max_buffered_bytes = 2 << 20};
  std::thread writer(WriteAllAndShutdown, fds[0], std::cref(stream));
  std::thread reader(DrainUntilClosed, fds[0]);
  ServeNbdConnection(fds[1], provider, options, stopping);
  ::close(fds[1]);  // the reader sees the end of the replies
  writer.join();
  reader.join();
  ::close(fds[0]);
  return 0;
}
