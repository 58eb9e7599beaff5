// Test support for the NBD frontend: an ExportProvider over a TestPool, a
// raw NBD client, and a server on a temporary unix socket.
//
// The client spells the protocol's numbers out itself rather than sharing
// nbd_protocol.h, so a wrong constant there cannot pass unnoticed.
#pragma once

#include <gtest/gtest.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "frontend/nbd/nbd_server.h"
#include "volume/testing/test_pool.h"

namespace edgestor::testing {

inline constexpr uint64_t kMiB = 1 << 20;
// A reply that has not come within this time is a failure, never a hang.
inline constexpr int kClientTimeoutMs = 20'000;
// Returned by client calls when the connection broke or the reply made no sense.
inline constexpr uint32_t kBroken = 0xffffffff;

// NBD numbers, spelled out independently of nbd_protocol.h.
enum : uint32_t { kOptExportName = 1, kOptAbort = 2, kOptList = 3, kOptStartTls = 5, kOptInfo = 6, kOptGo = 7,
                  kOptStructured = 8, kOptListMeta = 9, kOptSetMeta = 10 };
enum : uint32_t { kRepAck = 1, kRepServer = 2, kRepInfo = 3, kRepMetaContext = 4, kRepErrUnsup = 0x80000001,
                  kRepErrPolicy = 0x80000002, kRepErrInvalid = 0x80000003, kRepErrUnknown = 0x80000006,
                  kRepErrTooBig = 0x80000009 };
enum : uint16_t { kCmdRead = 0, kCmdWrite = 1, kCmdDisc = 2, kCmdFlush = 3, kCmdTrim = 4, kCmdWriteZeroes = 6,
                  kCmdBlockStatus = 7 };
enum : uint16_t { kFlagFua = 1, kFlagNoHole = 2, kFlagDf = 4, kFlagReqOne = 8, kFlagFastZero = 16 };
enum : uint32_t { kEperm = 1, kEinval = 22, kEio = 5, kEnospc = 28 };

// Holds back I/O completions while closed, so a test can keep requests in
// flight for as long as it likes.
class IoGate {
 public:
  void Close() {
    std::lock_guard lock(mu_);
    open_ = false;
  }
  void Open() {
    std::lock_guard lock(mu_);
    open_ = true;
    cv_.notify_all();
  }
  // Returns whether completions may run; with `wait`, waits a little for
  // that (a short wait: the server loop goes on looking at its socket).
  bool Pass(bool wait) {
    std::unique_lock lock(mu_);
    if (wait) cv_.wait_for(lock, std::chrono::milliseconds(1), [&] { return open_; });
    return open_;
  }
  std::atomic<uint64_t> submitted{0};  // device requests seen

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = true;
};

// Waits until the server has handed `n` device requests to its queue.
inline bool WaitSubmitted(IoGate& gate, uint64_t n) {
  for (int i = 0; i < kClientTimeoutMs / 5 && gate.submitted.load() < n; i++) ::usleep(5'000);
  return gate.submitted.load() >= n;
}

class GatedQueue : public IoQueue {
 public:
  GatedQueue(std::unique_ptr<IoQueue> inner, IoGate& gate) : inner_(std::move(inner)), gate_(gate) {}
  void Submit(IoRequest* req) override {
    gate_.submitted++;
    inner_->Submit(req);
  }
  int Poll(bool wait) override { return gate_.Pass(wait && inner_->InFlight() > 0) ? inner_->Poll(wait) : 0; }
  uint32_t InFlight() const override { return inner_->InFlight(); }
  void ExpectForeign(IoRequest* req) override { inner_->ExpectForeign(req); }
  void PostForeign(IoRequest* req, int result) override { inner_->PostForeign(req, result); }
  void WatchFd(int fd, short events) override { inner_->WatchFd(fd, events); }

 private:
  std::unique_ptr<IoQueue> inner_;
  IoGate& gate_;
};

class TestExportProvider : public ExportProvider {
 public:
  explicit TestExportProvider(VolumeSet& set, IoGate* gate = nullptr) : set_(set), gate_(gate) {}
  std::vector<std::string> ListExports() override {
    std::vector<std::string> names;
    for (const VolumeInfo& v : set_.ListVolumes()) names.push_back(v.name);
    return names;
  }
  // Snapshots ("VOL@SNAP") too, by name only, as the daemon serves them.
  bool HasExport(const std::string& name) override { return set_.FindVolume(name).ok(); }
  Result<Volume*> AcquireExport(const std::string& name) override {
    std::lock_guard lock(mu_);
    auto v = set_.FindVolume(name);
    if (v.ok()) pins_++;
    return v;
  }
  void ReleaseExport(Volume*) override {
    std::lock_guard lock(mu_);
    EXPECT_GT(pins_, 0);
    pins_--;
  }
  std::unique_ptr<VolumeChannel> OpenChannel(uint32_t depth) override {
    auto queue = set_.device().CreateQueue(depth);
    if (gate_) queue = std::make_unique<GatedQueue>(std::move(queue), *gate_);
    return std::make_unique<VolumeChannel>(std::move(queue));
  }
  int pins() {
    std::lock_guard lock(mu_);
    return pins_;
  }

 private:
  VolumeSet& set_;
  IoGate* gate_;
  std::mutex mu_;
  int pins_ = 0;
};

// Big-endian message building for the client.
struct Bytes {
  std::vector<uint8_t> v;
  Bytes& U16(uint16_t x) { return Put(x, 2); }
  Bytes& U32(uint32_t x) { return Put(x, 4); }
  Bytes& U64(uint64_t x) { return Put(x, 8); }
  Bytes& Str(const std::string& s) {
    v.insert(v.end(), s.begin(), s.end());
    return *this;
  }
  Bytes& Put(uint64_t x, int n) {
    for (int i = n - 1; i >= 0; i--) v.push_back(static_cast<uint8_t>(x >> (8 * i)));
    return *this;
  }
};
inline uint64_t GetBE(const uint8_t* p, int n) {
  uint64_t x = 0;
  for (int i = 0; i < n; i++) x = x << 8 | p[i];
  return x;
}

struct OptionReply {
  uint32_t option = 0, type = 0;
  std::vector<uint8_t> data;
};
struct ExportInfo {
  uint64_t size = 0;
  uint16_t flags = 0;
  uint32_t min_block = 0, preferred_block = 0, max_payload = 0;
  std::string name, description;
};
struct Extent {
  uint32_t length, flags;
};

// A synchronous raw NBD client: one request at a time unless the test
// pipelines by hand with SendRequest / ReadReply.
class NbdTestClient {
 public:
  explicit NbdTestClient(int fd) : fd_(fd) {}
  ~NbdTestClient() { Close(); }
  static std::unique_ptr<NbdTestClient> ConnectUnix(const std::string& path) {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      ::close(fd);
      return nullptr;
    }
    return std::make_unique<NbdTestClient>(fd);
  }
  void Close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  int fd() const { return fd_; }

  bool Send(const std::vector<uint8_t>& b) { return SendRaw(b.data(), b.size()); }
  bool SendRaw(const void* p, size_t n) {
    return ::send(fd_, p, n, MSG_NOSIGNAL) == static_cast<ssize_t>(n);
  }
  bool Recv(void* buf, size_t n) {
    auto* p = static_cast<uint8_t*>(buf);
    for (size_t done = 0; done < n;) {
      pollfd pfd{fd_, POLLIN, 0};
      if (::poll(&pfd, 1, kClientTimeoutMs) <= 0) return false;
      ssize_t r = ::recv(fd_, p + done, n - done, 0);
      if (r <= 0) return false;
      done += r;
    }
    return true;
  }
  std::vector<uint8_t> RecvN(size_t n, bool* ok) {
    std::vector<uint8_t> out(n);
    *ok = Recv(out.data(), n);
    return out;
  }
  // True if the server closed the connection (EOF or reset) within the timeout.
  bool WaitClosed() {
    uint8_t scratch[4096];
    while (true) {
      pollfd pfd{fd_, POLLIN, 0};
      if (::poll(&pfd, 1, kClientTimeoutMs) <= 0) return false;
      if (::recv(fd_, scratch, sizeof scratch, 0) <= 0) return true;
    }
  }

  // ---- Handshake ----
  bool Greet(uint32_t client_flags = 3, uint16_t* server_flags = nullptr) {
    uint8_t g[18];
    if (!Recv(g, sizeof g)) return false;
    if (GetBE(g, 8) != 0x4e42444d41474943ull || GetBE(g + 8, 8) != 0x49484156454f5054ull) return false;
    if (server_flags) *server_flags = static_cast<uint16_t>(GetBE(g + 16, 2));
    return Send(Bytes().U32(client_flags).v);
  }
  bool SendOption(uint32_t option, const std::vector<uint8_t>& data) {
    Bytes b;
    b.U64(0x49484156454f5054ull).U32(option).U32(static_cast<uint32_t>(data.size()));
    b.v.insert(b.v.end(), data.begin(), data.end());
    return Send(b.v);
  }
  bool ReadOptionReply(OptionReply* r) {
    uint8_t h[20];
    if (!Recv(h, sizeof h) || GetBE(h, 8) != 0x3e889045565a9ull) return false;
    r->option = static_cast<uint32_t>(GetBE(h + 8, 4));
    r->type = static_cast<uint32_t>(GetBE(h + 12, 4));
    bool ok = true;
    r->data = RecvN(GetBE(h + 16, 4), &ok);
    return ok;
  }
  // Sends an option and returns the type of its final reply (collecting
  // the others), or kBroken.
  uint32_t Option(uint32_t option, const std::vector<uint8_t>& data, std::vector<OptionReply>* replies = nullptr) {
    if (!SendOption(option, data)) return kBroken;
    while (true) {
      OptionReply r;
      if (!ReadOptionReply(&r) || r.option != option) return kBroken;
      if (r.type == kRepAck || (r.type & 0x80000000u)) return r.type;
      if (replies) replies->push_back(r);
    }
  }
  static std::vector<uint8_t> InfoRequest(const std::string& name, const std::vector<uint16_t>& infos) {
    Bytes b;
    b.U32(static_cast<uint32_t>(name.size())).Str(name).U16(static_cast<uint16_t>(infos.size()));
    for (uint16_t i : infos) b.U16(i);
    return b.v;
  }
  static std::vector<uint8_t> MetaRequest(const std::string& name, const std::vector<std::string>& queries) {
    Bytes b;
    b.U32(static_cast<uint32_t>(name.size())).Str(name).U32(static_cast<uint32_t>(queries.size()));
    for (const auto& q : queries) b.U32(static_cast<uint32_t>(q.size())).Str(q);
    return b.v;
  }
  static void ParseInfo(const std::vector<OptionReply>& replies, ExportInfo* info) {
    for (const OptionReply& r : replies) {
      if (r.type != kRepInfo || r.data.size() < 2) continue;
      const uint8_t* d = r.data.data();
      switch (GetBE(d, 2)) {
        case 0: info->size = GetBE(d + 2, 8), info->flags = static_cast<uint16_t>(GetBE(d + 10, 2)); break;
        case 1: info->name.assign(d + 2, d + r.data.size()); break;
        case 2: info->description.assign(d + 2, d + r.data.size()); break;
        case 3:
          info->min_block = static_cast<uint32_t>(GetBE(d + 2, 4));
          info->preferred_block = static_cast<uint32_t>(GetBE(d + 6, 4));
          info->max_payload = static_cast<uint32_t>(GetBE(d + 10, 4));
          break;
      }
    }
  }
  // Greets, optionally negotiates structured replies and base:allocation,
  // and enters transmission with NBD_OPT_GO, requesting NBD_INFO_BLOCK_SIZE
  // (agreeing to keep to the sizes) unless `request_block_size` is false.
  bool Go(const std::string& name, bool structured, bool meta, ExportInfo* info = nullptr,
          bool request_block_size = true) {
    if (!Greet()) return false;
    if (structured && Option(kOptStructured, {}) != kRepAck) return false;
    if (meta && Option(kOptSetMeta, MetaRequest(name, {"base:allocation"})) != kRepAck) return false;
    std::vector<OptionReply> replies;
    std::vector<uint16_t> infos;
    if (request_block_size) infos.push_back(3);
    if (Option(kOptGo, InfoRequest(name, infos), &replies) != kRepAck) return false;
    structured_ = structured;
    if (info) ParseInfo(replies, info);
    return true;
  }

  // Enters transmission the oldest way, NBD_OPT_EXPORT_NAME (no block sizes
  // can be agreed), without structured replies.
  bool ExportName(const std::string& name) {
    if (!Greet()) return false;
    if (!SendOption(kOptExportName, Bytes().Str(name).v)) return false;
    uint8_t reply[10];  // size and transmission flags; NO_ZEROES was set
    if (!Recv(reply, sizeof reply)) return false;
    structured_ = false;
    return true;
  }

  // ---- Transmission ----
  bool SendRequest(uint16_t type, uint16_t flags, uint64_t cookie, uint64_t offset, uint32_t length,
                   const std::vector<uint8_t>& payload = {}) {
    Bytes b;
    b.U32(0x25609513).U16(flags).U16(type).U64(cookie).U64(offset).U32(length);
    b.v.insert(b.v.end(), payload.begin(), payload.end());
    return Send(b.v);
  }
  // Reads one whole reply (all chunks). `read_length`: bytes of data a
  // successful simple READ reply carries. Returns the error (0 ok) or kBroken.
  uint32_t ReadReply(uint64_t* cookie, uint32_t read_length = 0, std::vector<uint8_t>* data = nullptr,
                     std::vector<Extent>* extents = nullptr) {
    uint8_t h[20];
    if (!structured_) {
      if (!Recv(h, 16) || GetBE(h, 4) != 0x67446698) return kBroken;
      uint32_t error = static_cast<uint32_t>(GetBE(h + 4, 4));
      *cookie = GetBE(h + 8, 8);
      if (error == 0 && read_length > 0) {
        data->resize(read_length);
        if (!Recv(data->data(), read_length)) return kBroken;
      }
      return error;
    }
    uint32_t error = 0;
    for (bool done = false; !done;) {
      if (!Recv(h, 20) || GetBE(h, 4) != 0x668e33ef) return kBroken;
      done = GetBE(h + 4, 2) & 1;
      uint16_t type = static_cast<uint16_t>(GetBE(h + 6, 2));
      *cookie = GetBE(h + 8, 8);
      bool ok = true;
      std::vector<uint8_t> p = RecvN(GetBE(h + 16, 4), &ok);
      if (!ok) return kBroken;
      if (type == 1 && data && p.size() >= 8) data->insert(data->end(), p.begin() + 8, p.end());
      if (type == 5 && extents)
        for (size_t i = 4; i + 8 <= p.size(); i += 8)
          extents->push_back({static_cast<uint32_t>(GetBE(&p[i], 4)), static_cast<uint32_t>(GetBE(&p[i + 4], 4))});
      if ((type & 0x8000) && p.size() >= 4) error = static_cast<uint32_t>(GetBE(p.data(), 4));
    }
    return error;
  }
  uint32_t Call(uint16_t type, uint16_t flags, uint64_t offset, uint32_t length, const std::vector<uint8_t>& payload = {},
                std::vector<uint8_t>* data = nullptr, std::vector<Extent>* extents = nullptr) {
    uint64_t cookie = ++next_cookie_, got = 0;
    if (!SendRequest(type, flags, cookie, offset, length, payload)) return kBroken;
    uint32_t error = ReadReply(&got, type == kCmdRead ? length : 0, data, extents);
    return got == cookie || error == kBroken ? error : kBroken;
  }
  uint32_t Write(uint64_t offset, const std::vector<uint8_t>& data, uint16_t flags = 0) {
    return Call(kCmdWrite, flags, offset, static_cast<uint32_t>(data.size()), data);
  }
  uint32_t Read(uint64_t offset, uint32_t length, std::vector<uint8_t>* data, uint16_t flags = 0) {
    data->clear();
    return Call(kCmdRead, flags, offset, length, {}, data);
  }
  uint32_t BlockStatus(uint64_t offset, uint32_t length, std::vector<Extent>* extents, uint16_t flags = 0) {
    extents->clear();
    return Call(kCmdBlockStatus, flags, offset, length, {}, nullptr, extents);
  }
  void set_structured(bool s) { structured_ = s; }

 private:
  int fd_;
  bool structured_ = false;
  uint64_t next_cookie_ = 0;
};

inline std::vector<uint8_t> Pattern(size_t len, uint8_t seed) {
  std::vector<uint8_t> out(len);
  for (size_t i = 0; i < len; i++) out[i] = static_cast<uint8_t>(seed + i * 7 + i / 4096);
  return out;
}

// A pool with volumes "vol" (16 MiB) and "other" (4 MiB), served on a
// temporary unix socket.
class NbdServerHarness {
 public:
  explicit NbdServerHarness(NbdServerOptions options = {}, uint64_t pool_bytes = 32 * kMiB)
      : pool_(pool_bytes, PoolCreateOptions{.cluster_size = 64 * 1024}), provider_(pool_.set(), &gate_) {
    char tmpl[] = "/tmp/edgestor-nbd-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    socket_ = dir_ + "/nbd.sock";
    EXPECT_TRUE(pool_.set().CreateVolume("vol", 16 * kMiB).ok());
    EXPECT_TRUE(pool_.set().CreateVolume("other", 4 * kMiB).ok());
    server_ = std::make_unique<NbdServer>(provider_, options);
    Status s = server_->ListenUnix(socket_);
    EXPECT_TRUE(s.ok()) << s.ToString();
    s = server_->Start();
    EXPECT_TRUE(s.ok()) << s.ToString();
  }
  ~NbdServerHarness() {
    server_.reset();
    std::filesystem::remove_all(dir_);
  }
  std::unique_ptr<NbdTestClient> Connect() { return NbdTestClient::ConnectUnix(socket_); }
  // A client in transmission on `name`.
  std::unique_ptr<NbdTestClient> Open(const std::string& name = "vol", bool structured = true, bool meta = true) {
    auto c = Connect();
    EXPECT_TRUE(c && c->Go(name, structured, meta));
    return c;
  }
  TestPool& pool() { return pool_; }
  TestExportProvider& provider() { return provider_; }
  IoGate& gate() { return gate_; }
  NbdServer& server() { return *server_; }
  const std::string& socket() const { return socket_; }
  const std::string& dir() const { return dir_; }
  // Waits until the server holds no export pins (its connections ended).
  bool WaitUnpinned() {
    for (int i = 0; i < kClientTimeoutMs / 10; i++) {
      if (provider_.pins() == 0 && server_->ConnectionCount() == 0) return true;
      ::usleep(10'000);
    }
    return false;
  }

 private:
  IoGate gate_;  // open unless a test closes it
  TestPool pool_;
  TestExportProvider provider_;
  std::string dir_, socket_;
  std::unique_ptr<NbdServer> server_;
};

}  // namespace edgestor::testing
