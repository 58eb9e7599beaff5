// vol write | read: byte-granular access to a volume through its data path.
//
// The volume serves any byte range, but ranges not aligned to 4 KiB take its
// synchronous path, so the CLI keeps to sectors. Both commands stream in
// chunks of at most kChunkBytes through one aligned buffer; a write that
// starts or ends inside a sector first reads that sector back from the volume
// (read-modify-write), so neighbouring bytes are kept.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <optional>

#include "base/size_parse.h"
#include "cli/cli_error.h"
#include "cli/commands.h"
#include "cli/pool_session.h"

namespace edgestor::cli {
namespace {

constexpr uint64_t kChunkBytes = 1 << 20;
constexpr uint32_t kQueueDepth = 64;
static_assert(kChunkBytes % kIoAlignment == 0);

uint64_t AlignDown(uint64_t x) { return x / kSectorSize * kSectorSize; }
uint64_t AlignUp(uint64_t x) { return AlignDown(x + kSectorSize - 1); }

// An open input or output file (or stdin/stdout); closes what it opened.
class StreamFile {
 public:
  StreamFile(const std::string& path, bool output) : name_(path.empty() ? (output ? "stdout" : "stdin") : path) {
    if (path.empty()) {
      fd_ = output ? STDOUT_FILENO : STDIN_FILENO;
      return;
    }
    fd_ = output ? ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)
                 : ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0)
      Fail((output ? "cannot create output file " : "cannot open input file ") + path + ": " + std::strerror(errno));
    owned_ = true;
  }
  ~StreamFile() {
    if (owned_) ::close(fd_);
  }
  StreamFile(const StreamFile&) = delete;
  StreamFile& operator=(const StreamFile&) = delete;

  // Size of a regular input file, if it is one (then known before writing).
  std::optional<uint64_t> RegularFileSize() const {
    struct stat st;
    if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) return std::nullopt;
    off_t pos = ::lseek(fd_, 0, SEEK_CUR);
    if (pos < 0 || pos > st.st_size) return std::nullopt;
    return static_cast<uint64_t>(st.st_size - pos);
  }

  // Reads up to `len` bytes, fewer only at end of input.
  size_t ReadFull(uint8_t* buf, size_t len) {
    size_t done = 0;
    while (done < len) {
      ssize_t n = ::read(fd_, buf + done, len - done);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) Fail("cannot read " + name_ + ": " + std::strerror(errno));
      if (n == 0) break;
      done += static_cast<size_t>(n);
    }
    return done;
  }

  // Writes all of `buf`. Returns false if the reader went away (EPIPE).
  bool WriteAll(const uint8_t* buf, size_t len) {
    size_t done = 0;
    while (done < len) {
      ssize_t n = ::write(fd_, buf + done, len - done);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EPIPE) return false;
      if (n < 0) Fail("cannot write " + name_ + ": " + std::strerror(errno));
      done += static_cast<size_t>(n);
    }
    return true;
  }

 private:
  std::string name_;
  int fd_ = -1;
  bool owned_ = false;
};

// Synchronous aligned transfers on one volume through one IoQueue.
class VolumeChannel {
 public:
  VolumeChannel(PoolSession& session, const std::string& name)
      : name_(name), volume_(session.FindVolume(name)), queue_(session.pool().device().CreateQueue(kQueueDepth)) {}

  uint64_t size() const { return volume_.size(); }

  void Transfer(VolumeOp op, uint64_t offset, uint8_t* buf, uint64_t len) {
    assert(offset % kSectorSize == 0 && len % kSectorSize == 0 && len <= kChunkBytes);
    VolumeIo io{.op = op, .offset = offset, .length = len, .buf = buf};
    Status status = RunSync(volume_, io, *queue_);
    const char* verb = op == VolumeOp::kRead ? "cannot read " : "cannot write ";
    Check(status, verb + std::to_string(len) + " bytes at offset " + std::to_string(offset) + " of volume " + name_);
  }

 private:
  std::string name_;
  Volume& volume_;
  std::unique_ptr<IoQueue> queue_;
};

std::string RangeText(uint64_t offset, uint64_t length) {
  return std::to_string(length) + " bytes at offset " + std::to_string(offset);
}

// Writes one chunk: `len` input bytes already placed at buf[pos % 512], so
// that buf[0] corresponds to AlignDown(pos). Fills partial head and tail
// sectors from the volume first.
void WriteChunk(VolumeChannel& channel, uint8_t* buf, uint8_t* sector, uint64_t pos, uint64_t len) {
  const uint64_t start = AlignDown(pos);
  const uint64_t data_end = pos + len;
  const uint64_t end = AlignUp(data_end);
  const uint64_t head = pos - start;
  uint64_t sector_held = UINT64_MAX;  // offset of the sector in `sector`
  if (head != 0) {
    channel.Transfer(VolumeOp::kRead, start, sector, kSectorSize);
    sector_held = start;
    std::memcpy(buf, sector, head);
  }
  if (data_end != end) {
    const uint64_t tail_sector = end - kSectorSize;
    if (sector_held != tail_sector) channel.Transfer(VolumeOp::kRead, tail_sector, sector, kSectorSize);
    const uint64_t keep_from = data_end - tail_sector;
    std::memcpy(buf + (data_end - start), sector + keep_from, kSectorSize - keep_from);
  }
  channel.Transfer(VolumeOp::kWrite, start, buf, end - start);
}

}  // namespace

void RunVolumeWrite(const VolumeWriteArgs& args) {
  StreamFile input(args.input, /*output=*/false);
  std::optional<uint64_t> input_size = input.RegularFileSize();

  std::unique_ptr<PoolSession> session = PoolSession::Open(args.volume.pool);
  const std::string& name = args.volume.name;
  VolumeChannel channel(*session, name);
  const uint64_t size = channel.size();
  auto beyond_end = [&](uint64_t length) {
    Fail("cannot write " + RangeText(args.offset, length) + " to volume " + name + ": beyond its end (" +
         FormatSize(size) + ")");
  };
  if (args.offset > size) beyond_end(input_size.value_or(0));
  if (input_size && *input_size > size - args.offset) beyond_end(*input_size);

  AlignedBuffer buf = AllocateAligned(kChunkBytes);
  AlignedBuffer sector = AllocateAligned(kIoAlignment);
  uint64_t pos = args.offset;
  for (;;) {
    const uint64_t head = pos % kSectorSize;
    const uint64_t room = std::min(kChunkBytes - head, size - pos);
    const uint64_t got = input.ReadFull(buf.get() + head, room);
    if (got > 0) WriteChunk(channel, buf.get(), sector.get(), pos, got);
    pos += got;
    if (got < room) break;  // end of input
    if (pos == size) {
      uint8_t probe;
      if (input.ReadFull(&probe, 1) != 0) {
        Fail("input extends beyond the end of volume " + name + " (" + FormatSize(size) + "); only its first " +
             std::to_string(pos - args.offset) + " bytes were written");
      }
      break;
    }
  }
  Check(session->pool().Flush(), "cannot flush pool " + args.volume.pool);
  session->Close();
  std::cout << "wrote " << (pos - args.offset) << " bytes to volume " << name << " at offset " << args.offset << "\n";
}

void RunVolumeRead(const VolumeReadArgs& args) {
  StreamFile output(args.output, /*output=*/true);

  std::unique_ptr<PoolSession> session = PoolSession::Open(args.volume.pool);
  const std::string& name = args.volume.name;
  VolumeChannel channel(*session, name);
  const uint64_t size = channel.size();
  if (args.offset > size) {
    Fail("cannot read volume " + name + " at offset " + std::to_string(args.offset) + ": beyond its end (" +
         FormatSize(size) + ")");
  }
  const uint64_t length = args.length.value_or(size - args.offset);
  if (length > size - args.offset) {
    Fail("cannot read " + RangeText(args.offset, length) + " of volume " + name + ": beyond its end (" +
         FormatSize(size) + ")");
  }

  AlignedBuffer buf = AllocateAligned(kChunkBytes);
  const uint64_t end = args.offset + length;
  uint64_t pos = args.offset;
  while (pos < end) {
    const uint64_t start = AlignDown(pos);
    const uint64_t chunk_end = std::min(AlignUp(end), start + kChunkBytes);
    channel.Transfer(VolumeOp::kRead, start, buf.get(), chunk_end - start);
    const uint64_t take = std::min(end, chunk_end) - pos;
    if (!output.WriteAll(buf.get() + (pos - start), take)) break;  // reader gone: stop quietly
    pos += take;
  }
  session->Close();
}

}  // namespace edgestor::cli
