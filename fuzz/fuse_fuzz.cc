// Fuzz target for the FUSE file export: the requests the kernel would send.
//
// A live export (two workers, a 1 MiB volume) serves one end of a
// SOCK_SEQPACKET socket pair in place of /dev/fuse; the target plays the
// kernel on the other end. After INIT (once, not fuzzed), each input is
// XORed onto a valid baseline of requests (lookup, getattr, open, write,
// read, fallocate, setattr, fsync, opendir, readdir, statfs, flush,
// release), sent one datagram each (cut short where a mutated header
// claims less), and the replies are read back. Requests the kernel never
// sends follow: sizes that claim more data than came, names without their
// terminator, offsets past the end, unknown operations. The export must
// never crash, hang or touch memory outside its buffers, and must go on
// answering.
#include <linux/falloc.h>
#include <linux/fuse.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <spdlog/spdlog.h>

#include "frontend/fuse/fuse_file_export.h"
#include "frontend/fuse/testing/fake_kernel.h"
#include "io/borrowed_device.h"
#include "io/fault_device.h"
#include "volume/volume_set.h"

namespace edgestor {
namespace {

constexpr uint64_t kDeviceBytes = 8 << 20;
constexpr int kReplyWaitMs = 100;

using fuse::testing::FakeKernel;
using Request = fuse::testing::FuseRequest;

std::vector<std::vector<uint8_t>> Baseline() {
  std::vector<Request> requests;
  requests.emplace_back(FUSE_LOOKUP, FUSE_ROOT_ID).Bytes("vol", 4);
  requests.emplace_back(FUSE_GETATTR, 2).Arg(fuse_getattr_in{});
  requests.emplace_back(FUSE_OPEN, 2).Arg(fuse_open_in{.flags = 2 /* O_RDWR */});
  std::vector<uint8_t> data(4096, 0x5a);
  requests.emplace_back(FUSE_WRITE, 2).Arg(fuse_write_in{.offset = 4096, .size = 4096}).Bytes(data.data(), data.size());
  requests.emplace_back(FUSE_READ, 2).Arg(fuse_read_in{.offset = 0, .size = 8192});
  requests.emplace_back(FUSE_FALLOCATE, 2)
      .Arg(fuse_fallocate_in{.offset = 0, .length = 4096, .mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE});
  requests.emplace_back(FUSE_SETATTR, 2).Arg(fuse_setattr_in{.valid = FATTR_SIZE, .size = 0});
  requests.emplace_back(FUSE_FSYNC, 2).Arg(fuse_fsync_in{});
  requests.emplace_back(FUSE_OPENDIR, FUSE_ROOT_ID).Arg(fuse_open_in{});
  requests.emplace_back(FUSE_READDIR, FUSE_ROOT_ID).Arg(fuse_read_in{.offset = 0, .size = 4096});
  requests.emplace_back(FUSE_STATFS, FUSE_ROOT_ID);
  requests.emplace_back(FUSE_FLUSH, 2).Arg(fuse_flush_in{});
  requests.emplace_back(FUSE_RELEASE, 2).Arg(fuse_release_in{});
  std::vector<std::vector<uint8_t>> out;
  for (size_t i = 0; i < requests.size(); i++) out.push_back(requests[i].Serialize(i + 2));
  return out;
}

// Requests that get no reply.
bool Unanswered(uint32_t opcode) {
  return opcode == FUSE_FORGET || opcode == FUSE_BATCH_FORGET || opcode == FUSE_INTERRUPT ||
         opcode == FUSE_NOTIFY_REPLY;
}

struct Fixture {
  Fixture() : device(kDeviceBytes) {
    spdlog::set_level(spdlog::level::off);
    set = VolumeSet::Create(Borrow(device), {.cluster_size = 4096, .journal_bytes = 1 << 20}).value();
    volume = set->CreateVolume("vol", 1 << 20).value();
    fuse::FileExportOptions options{.mountpoint = "fuzz", .threads = 2, .connection_fd = kernel.export_fd()};
    auto started = fuse::FuseFileExport::Start(*volume, options, [this] { return set->OpenChannel(32); });
    if (!started.ok()) {
      std::fprintf(stderr, "fuse_fuzz: %s\n", started.status().ToString().c_str());
      std::abort();
    }
    exported = std::move(started).value();
    if (!kernel.Init()) std::abort();  // the export must answer INIT
  }

  // Reads replies until `expected` came or none came for kReplyWaitMs.
  void ReadReplies(int expected) const {
    for (int got = 0; got < expected && kernel.Receive(kReplyWaitMs); got++) {
    }
  }

  FaultDevice device;
  std::unique_ptr<VolumeSet> set;
  Volume* volume;
  FakeKernel kernel;
  std::unique_ptr<fuse::FuseFileExport> exported;
  std::vector<std::vector<uint8_t>> baseline = Baseline();
};

Fixture& GetFixture() {
  static Fixture* fixture = new Fixture();  // lives for the process
  return *fixture;
}

}  // namespace
}  // namespace edgestor

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using edgestor::Unanswered;
  auto& f = edgestor::GetFixture();
  size_t at = 0;
  int expected = 0;
  for (const auto& base : f.baseline) {
    std::vector<uint8_t> message = base;
    for (size_t i = 0; i < message.size() && at < size; i++) message[i] ^= data[at++];
    fuse_in_header h;
    std::memcpy(&h, message.data(), sizeof h);
    // INIT and DESTROY would end the session the rest of the input tests.
    if (h.opcode == FUSE_INIT || h.opcode == FUSE_DESTROY || h.opcode == CUSE_INIT) {
      fuse_in_header original;
      std::memcpy(&original, base.data(), sizeof original);
      h.opcode = original.opcode;
      std::memcpy(message.data(), &h, sizeof h);
    }
    // A header claiming less than was built: send only that much.
    if (h.len >= 8 && h.len < message.size()) message.resize(h.len);
    f.kernel.Send(message);
    if (!Unanswered(h.opcode)) expected++;
  }
  f.ReadReplies(expected);
  // The export still answers a plain request (late replies of the batch
  // may come first).
  f.kernel.Send(edgestor::Request(FUSE_GETATTR, 2).Arg(fuse_getattr_in{}).Serialize(1000));
  if (!f.kernel.Await(1000, 5000)) {
    std::fprintf(stderr, "fuse_fuzz: the export stopped answering\n");
    std::abort();
  }
  return 0;
}
