#include "frontend/fuse/fuse_file_export.h"

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>

#include <fcntl.h>
#include <linux/falloc.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <atomic>
#include <cassert>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <mutex>
#include <thread>
#include <vector>

#include <spdlog/spdlog.h>

#include "base/aligned_buffer.h"
#include "base/bounce_cache.h"

namespace edgestor::fuse {

namespace {

constexpr fuse_ino_t kRootIno = FUSE_ROOT_ID;
constexpr fuse_ino_t kFileIno = 2;
constexpr double kAttrTimeoutSeconds = 1.0;

// The largest write the kernel sends (libfuse's own maximum), and what one
// read of the FUSE device needs room for: the request and its headers.
constexpr uint32_t kMaxWrite = 1u << 20;
constexpr uint32_t kReceiveBytes = kMaxWrite + 4096;
// A WRITE request's headers (fuse_in_header and fuse_write_in, 40 bytes
// each since protocol 7.9). The receive buffer starts this far before a
// 4 KiB boundary, so a write's data lands aligned and goes to the device
// without a copy.
constexpr uint32_t kWriteHeaderBytes = 80;
constexpr size_t kInHeaderBytes = 40;  // fuse_in_header, which every request starts with
// Writes at least this large keep the receive buffer they arrived in (the
// worker takes a fresh one); smaller ones are copied out of it.
constexpr uint32_t kKeepReceiveBufferBytes = 64u << 10;
// Receive buffers a worker keeps for reuse (a 1 MiB write stream at QD8
// would otherwise allocate and zero a fresh one per request); dropped when
// the worker goes idle.
constexpr size_t kSpareReceiveBuffers = 16;
// Requests one worker reads from the device before it reaps completions.
constexpr int kReceiveBatch = 16;
// The kernel's asynchronous requests (async direct I/O, which a loop device
// issues) are limited to max_background in flight; its default of 12 would
// cap a QD32 client.
constexpr unsigned kMaxBackground = 64;
constexpr int kBudgetRecheckMs = 5;
constexpr int kIdleReleaseMs = 1000;
constexpr uint64_t kKeptBounceBytes = 8ull << 20;

// errno values FUSE carries back to the caller; anything else becomes EIO.
int ReplyErrno(int code) { return code > 0 && code < 512 ? code : EIO; }

void LogFromLibfuse(enum fuse_log_level level, const char* fmt, va_list ap) {
  char line[512];
  vsnprintf(line, sizeof line, fmt, ap);
  size_t n = strlen(line);
  while (n > 0 && line[n - 1] == '\n') line[--n] = '\0';
  if (level <= FUSE_LOG_ERR)
    spdlog::error("fuse: {}", line);
  else if (level <= FUSE_LOG_NOTICE)
    spdlog::info("fuse: {}", line);
  else
    spdlog::debug("fuse: {}", line);
}

}  // namespace

class Worker;

class FileExportImpl {
 public:
  FileExportImpl(Volume& volume, const FileExportOptions& options)
      : volume_(volume), options_(options), budget_(std::max<uint64_t>(options.inflight_bytes, 1)) {
    mode_ = options.read_only ? 0400 : 0600;
    uid_ = ::geteuid();
    gid_ = ::getegid();
    start_time_ = ::time(nullptr);
  }
  ~FileExportImpl();

  Status Mount();
  Status OpenSession(const std::string& path);
  static Status DetachStaleMounts(const std::string& path);
  Status StartWorkers(const std::function<std::unique_ptr<VolumeChannel>()>& make_channel);
  void Stop();
  void SizeChanged();

  Volume& volume() { return volume_; }
  const FileExportOptions& options() const { return options_; }
  const std::string& file_name() const { return volume_.name(); }
  fuse_session* session() { return session_; }
  int device_fd() const { return device_fd_; }
  int stop_fd() const { return stop_fd_; }
  bool stopping() const { return stopping_.load(std::memory_order_acquire); }
  InflightBudget& budget() { return budget_; }
  std::atomic<uint32_t>& opens() { return opens_; }
  IoStats& io_stats() { return io_stats_; }

  struct stat FileAttr();
  struct stat DirAttr();
  // Applies a SETATTR to the file; EPERM for a change of size.
  int SetFileAttr(const struct stat& attr, int to_set);

 private:
  Volume& volume_;
  FileExportOptions options_;
  InflightBudget budget_;
  fuse_session* session_ = nullptr;
  int device_fd_ = -1;
  int stop_fd_ = -1;
  std::atomic<bool> stopping_{false};
  std::atomic<uint32_t> opens_{0};
  IoStats io_stats_;  // every request the kernel sent to the volume
  std::vector<std::unique_ptr<Worker>> workers_;
  std::mutex attr_mu_;  // guards mode_, uid_, gid_ (chmod and chown are kept in memory only)
  mode_t mode_;
  uid_t uid_;
  gid_t gid_;
  time_t start_time_;
};

// One request of the kernel's in flight on the volume.
struct FuseRequest {
  VolumeIo io{};
  fuse_req_t req = nullptr;
  Worker* worker = nullptr;
  AlignedBuffer data;       // read or write data
  uint64_t capacity = 0;    // of `data`, if from the bounce cache
  bool receive_buffer = false;  // `data` is a receive buffer the write arrived in
  uint64_t charged = 0;     // budget bytes
};

// A thread reading requests from the FUSE device and serving them on its
// own VolumeChannel. Handlers run inside ReceiveOne (fuse_session_process_buf)
// on this thread; completions run inside its channel's Poll.
class Worker {
 public:
  Worker(FileExportImpl& impl, std::unique_ptr<VolumeChannel> channel)
      : impl_(impl), channel_(std::move(channel)), bounce_cache_(kKeptBounceBytes) {}
  ~Worker() { assert(!thread_.joinable()); }

  Status Start();
  void Join() {
    if (thread_.joinable()) thread_.join();
  }

  // Called by the handlers, on this worker's thread.
  static Worker* Current() { return current_; }
  void Read(fuse_req_t req, size_t size, off_t offset);
  void Write(fuse_req_t req, const char* buf, size_t size, off_t offset);
  void Flush(fuse_req_t req);
  void Fallocate(fuse_req_t req, int mode, off_t offset, off_t length);

 private:
  enum class Received { kOne, kNone, kGone };
  void Run();
  Received ReceiveOne();
  void WaitIdle(bool watch_device);
  bool NewReceiveBuffer();
  // Clamps [offset, offset+size) to the volume: false (and *error) if the
  // request is malformed or wholly past its end.
  bool ClampToVolume(off_t offset, uint64_t size, uint64_t* length, int* error, int past_end_error);
  FuseRequest* NewRequest(fuse_req_t req, VolumeOp op, uint64_t offset, uint64_t length);
  void Submit(FuseRequest* r);
  static void Done(VolumeIo* io, const Status& status);
  void Finish(FuseRequest* r);

  static thread_local Worker* current_;

  FileExportImpl& impl_;
  std::unique_ptr<VolumeChannel> channel_;
  BounceCache bounce_cache_;
  std::thread thread_;
  AlignedBuffer receive_;        // where the next request is read
  uint8_t* receive_mem_ = nullptr;
  size_t received_bytes_ = 0;  // of the request being handled
  std::vector<AlignedBuffer> spare_receive_;
  uint32_t in_flight_ = 0;
  // Budget taken for the next request before reading it (its size is not
  // known before); a handler takes its share in `consumed_`.
  bool reserved_ = false;
  uint64_t consumed_ = 0;
  bool gone_ = false;  // the file system was unmounted under us
};

thread_local Worker* Worker::current_ = nullptr;

// --- libfuse operations --------------------------------------------------

namespace {

FileExportImpl& ImplOf(fuse_req_t req) { return *static_cast<FileExportImpl*>(fuse_req_userdata(req)); }

void OpInit(void*, fuse_conn_info* conn) {
  // No splice: handlers read the request from our own buffer.
  conn->want &= ~(FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE);
  conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;  // every write reaches the volume, in order of completion
  // An open with O_TRUNC then comes as a SETATTR of the size, which
  // SetFileAttr refuses (the kernel would otherwise empty its view of the
  // file as soon as OPEN succeeds).
  conn->want &= ~FUSE_CAP_ATOMIC_O_TRUNC;
  if (conn->capable & FUSE_CAP_ASYNC_DIO) conn->want |= FUSE_CAP_ASYNC_DIO;
  conn->max_write = kMaxWrite;
  conn->max_background = kMaxBackground;
  conn->congestion_threshold = kMaxBackground * 3 / 4;
}

void ReplyEntry(fuse_req_t req) {
  fuse_entry_param entry{};
  entry.ino = kFileIno;
  entry.attr = ImplOf(req).FileAttr();
  entry.attr_timeout = kAttrTimeoutSeconds;
  entry.entry_timeout = kAttrTimeoutSeconds;
  fuse_reply_entry(req, &entry);
}

void OpLookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  if (parent != kRootIno) return (void)fuse_reply_err(req, ENOTDIR);
  if (ImplOf(req).file_name() != name) return (void)fuse_reply_err(req, ENOENT);
  ReplyEntry(req);
}

void OpGetattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
  if (ino == kRootIno) {
    struct stat st = ImplOf(req).DirAttr();
    return (void)fuse_reply_attr(req, &st, kAttrTimeoutSeconds);
  }
  if (ino != kFileIno) return (void)fuse_reply_err(req, ENOENT);
  struct stat st = ImplOf(req).FileAttr();
  fuse_reply_attr(req, &st, kAttrTimeoutSeconds);
}

void OpSetattr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set, fuse_file_info*) {
  if (ino == kRootIno) return (void)fuse_reply_err(req, EPERM);
  if (ino != kFileIno) return (void)fuse_reply_err(req, ENOENT);
  if (int err = ImplOf(req).SetFileAttr(*attr, to_set)) return (void)fuse_reply_err(req, err);
  struct stat st = ImplOf(req).FileAttr();
  fuse_reply_attr(req, &st, kAttrTimeoutSeconds);
}

void OpOpen(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  if (ino == kRootIno) return (void)fuse_reply_err(req, EISDIR);
  if (ino != kFileIno) return (void)fuse_reply_err(req, ENOENT);
  auto& impl = ImplOf(req);
  if ((fi->flags & O_ACCMODE) != O_RDONLY && impl.options().read_only) return (void)fuse_reply_err(req, EROFS);
  if (fi->flags & O_TRUNC) return (void)fuse_reply_err(req, EPERM);  // see OpInit
  // Every read and write goes to the volume: no page cache of the export's
  // own, so what an fsync covers is exactly what was written through it.
  fi->direct_io = 1;
  fi->keep_cache = 0;
  impl.opens().fetch_add(1, std::memory_order_relaxed);
  if (fuse_reply_open(req, fi) != 0) impl.opens().fetch_sub(1, std::memory_order_relaxed);  // the opener was interrupted
}

void OpRelease(fuse_req_t req, fuse_ino_t, fuse_file_info*) {
  ImplOf(req).opens().fetch_sub(1, std::memory_order_relaxed);
  fuse_reply_err(req, 0);
}

void OpRead(fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset, fuse_file_info*) {
  if (ino != kFileIno) return (void)fuse_reply_err(req, EISDIR);
  Worker::Current()->Read(req, size, offset);
}

void OpWrite(fuse_req_t req, fuse_ino_t ino, const char* buf, size_t size, off_t offset, fuse_file_info*) {
  if (ino != kFileIno) return (void)fuse_reply_err(req, EISDIR);
  if (ImplOf(req).options().read_only) return (void)fuse_reply_err(req, EROFS);
  Worker::Current()->Write(req, buf, size, offset);
}

// close() (flush) and fsync both make what was written durable.
void OpFlush(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
  if (ino != kFileIno || ImplOf(req).options().read_only) return (void)fuse_reply_err(req, 0);
  Worker::Current()->Flush(req);
}

void OpFsync(fuse_req_t req, fuse_ino_t ino, int, fuse_file_info* fi) { OpFlush(req, ino, fi); }

void OpFallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length, fuse_file_info*) {
  if (ino != kFileIno) return (void)fuse_reply_err(req, EISDIR);
  if (ImplOf(req).options().read_only) return (void)fuse_reply_err(req, EROFS);
  Worker::Current()->Fallocate(req, mode, offset, length);
}

void OpOpendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  if (ino != kRootIno) return (void)fuse_reply_err(req, ENOTDIR);
  fuse_reply_open(req, fi);
}

void OpReaddir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset, fuse_file_info*) {
  if (ino != kRootIno) return (void)fuse_reply_err(req, ENOTDIR);
  auto& impl = ImplOf(req);
  struct Entry {
    const char* name;
    struct stat st;
  };
  const Entry entries[] = {{".", impl.DirAttr()}, {"..", impl.DirAttr()}, {impl.file_name().c_str(), impl.FileAttr()}};
  std::vector<char> out(std::min<size_t>(size, 4096));
  size_t used = 0;
  for (off_t i = offset; i >= 0 && i < static_cast<off_t>(std::size(entries)); i++) {
    size_t need = fuse_add_direntry(req, out.data() + used, out.size() - used, entries[i].name, &entries[i].st, i + 1);
    if (need > out.size() - used) break;
    used += need;
  }
  fuse_reply_buf(req, out.data(), used);
}

void OpStatfs(fuse_req_t req, fuse_ino_t) {
  // One file the size of the volume. 4 KiB blocks: a loop device over the
  // file takes its discard granularity from f_bsize.
  struct statvfs st{};
  st.f_bsize = st.f_frsize = 4096;
  st.f_blocks = ImplOf(req).volume().size() / 4096;
  st.f_files = 1;
  st.f_namemax = 255;
  fuse_reply_statfs(req, &st);
}

fuse_lowlevel_ops MakeOps() {
  fuse_lowlevel_ops ops{};
  ops.init = OpInit;
  ops.lookup = OpLookup;
  ops.getattr = OpGetattr;
  ops.setattr = OpSetattr;
  ops.open = OpOpen;
  ops.release = OpRelease;
  ops.read = OpRead;
  ops.write = OpWrite;
  ops.flush = OpFlush;
  ops.fsync = OpFsync;
  ops.fallocate = OpFallocate;
  ops.opendir = OpOpendir;
  ops.readdir = OpReaddir;
  ops.statfs = OpStatfs;
  return ops;
}

const fuse_lowlevel_ops kOps = MakeOps();

}  // namespace

// --- Worker --------------------------------------------------------------

Status Worker::Start() {
  if (!NewReceiveBuffer()) return Status(ENOMEM, "no memory for a FUSE receive buffer");
  thread_ = std::thread([this] { Run(); });
  return Status::Ok();
}

bool Worker::NewReceiveBuffer() {
  if (!spare_receive_.empty()) {
    receive_ = std::move(spare_receive_.back());
    spare_receive_.pop_back();
  } else {
    // Zeroed once: libfuse reads a request's fixed-size arguments and names
    // where the kernel put them; a request shorter than it claims (which
    // the kernel never sends) then reads zeros or old bytes, never past
    // the buffer.
    receive_ = TryAllocateAligned(kReceiveBytes + kBufferAlignment);
    if (!receive_) return false;
  }
  receive_mem_ = receive_.get() + kBufferAlignment - kWriteHeaderBytes;
  return true;
}

void Worker::Run() {
  current_ = this;
  InflightBudget* shared = impl_.options().shared_budget;
  while (!impl_.stopping() && !gone_) {
    if (!reserved_) reserved_ = TryAcquireBoth(impl_.budget(), shared, kReceiveBytes);
    bool took = false;
    for (int i = 0; reserved_ && i < kReceiveBatch; i++) {
      Received got = ReceiveOne();
      if (got != Received::kOne) {
        gone_ = got == Received::kGone;
        break;
      }
      took = true;
      if (!reserved_) reserved_ = TryAcquireBoth(impl_.budget(), shared, kReceiveBytes);
    }
    if (gone_) break;
    if (channel_->InFlight() > 0) {
      if (reserved_) channel_->WatchFd(impl_.device_fd(), POLLIN);
      channel_->Poll(/*wait=*/true);
      continue;
    }
    if (took) continue;
    // Idle: hold no budget while waiting for the kernel (idle exports
    // would otherwise keep the daemon's budget from NBD and vhost-user).
    // Without a reservation we could not read anyway: wait for room.
    bool had_room = reserved_;
    if (reserved_) ReleaseBoth(impl_.budget(), shared, kReceiveBytes);
    reserved_ = false;
    WaitIdle(had_room);
  }
  // Requests already read are answered, even when stopping.
  while (in_flight_ > 0 && channel_->InFlight() > 0) channel_->Poll(/*wait=*/true);
  if (reserved_) ReleaseBoth(impl_.budget(), shared, kReceiveBytes);
  reserved_ = false;
  bounce_cache_.Clear();
  current_ = nullptr;
}

// Nothing in flight on this worker: wait for a request (if the budget lets
// us take one), or for room in the budget, or for Stop.
void Worker::WaitIdle(bool watch_device) {
  pollfd fds[2] = {{impl_.stop_fd(), POLLIN, 0}, {impl_.device_fd(), POLLIN, 0}};
  bool keeps_buffers = bounce_cache_.kept_bytes() > 0 || !spare_receive_.empty();
  int timeout = !watch_device ? kBudgetRecheckMs : keeps_buffers ? kIdleReleaseMs : -1;
  int rc = ::poll(fds, watch_device ? 2 : 1, timeout);
  if (rc == 0 && watch_device) {  // idle a while: the kept buffers go back
    bounce_cache_.Clear();
    spare_receive_.clear();
  }
}

Worker::Received Worker::ReceiveOne() {
  ssize_t n;
  for (;;) {
    n = ::read(impl_.device_fd(), receive_mem_, kReceiveBytes - 1);
    if (n >= 0) break;
    // ENOENT: the request was interrupted before we read it.
    if (errno == EINTR || errno == ENOENT) continue;
    if (errno == EAGAIN) return Received::kNone;
    if (errno == ENODEV) {
      spdlog::warn("file export of {}: {} was unmounted", impl_.volume().name(), impl_.options().mountpoint);
      return Received::kGone;
    }
    spdlog::error("file export of {}: reading the FUSE device: {}", impl_.volume().name(), strerror(errno));
    return Received::kGone;
  }
  if (n == 0) {
    // The connection's other end closed (the FUSE device never reads 0).
    spdlog::warn("file export of {}: the connection closed", impl_.volume().name());
    return Received::kGone;
  }
  if (static_cast<size_t>(n) < kInHeaderBytes) {
    spdlog::warn("file export of {}: dropped a request of {} bytes, shorter than its header", impl_.volume().name(), n);
    return Received::kOne;  // the reservation stays for the next
  }
  received_bytes_ = static_cast<size_t>(n);
  receive_mem_[n] = 0;  // a name at the end of a request is terminated even if the request was not
  fuse_buf buf{};
  buf.mem = receive_mem_;
  buf.size = received_bytes_;
  consumed_ = 0;
  fuse_session_process_buf(impl_.session(), &buf);
  // The handler took `consumed_` bytes of the reservation for its request.
  ReleaseBoth(impl_.budget(), impl_.options().shared_budget, kReceiveBytes - consumed_);
  reserved_ = false;
  return Received::kOne;
}

bool Worker::ClampToVolume(off_t offset, uint64_t size, uint64_t* length, int* error, int past_end_error) {
  uint64_t volume_size = impl_.volume().size();
  if (offset < 0) {
    *error = EINVAL;
    return false;
  }
  uint64_t start = static_cast<uint64_t>(offset);
  if (start >= volume_size) {
    *error = past_end_error;
    return false;
  }
  *length = std::min<uint64_t>(size, volume_size - start);
  return true;
}

FuseRequest* Worker::NewRequest(fuse_req_t req, VolumeOp op, uint64_t offset, uint64_t length) {
  auto* r = new FuseRequest;
  r->req = req;
  r->worker = this;
  r->io.op = op;
  r->io.offset = offset;
  r->io.length = length;
  r->io.done = &Worker::Done;
  r->io.context = r;
  r->io.stats = &impl_.io_stats();
  return r;
}

void Worker::Read(fuse_req_t req, size_t size, off_t offset) {
  uint64_t length = 0;
  int error = 0;
  if (!ClampToVolume(offset, size, &length, &error, 0)) {
    if (error) return (void)fuse_reply_err(req, error);
    return (void)fuse_reply_buf(req, nullptr, 0);  // at or past the end: end of file
  }
  if (length == 0) return (void)fuse_reply_buf(req, nullptr, 0);
  FuseRequest* r = NewRequest(req, VolumeOp::kRead, static_cast<uint64_t>(offset), length);
  r->data = bounce_cache_.Take(length, &r->capacity);
  if (!r->data) {
    delete r;
    return (void)fuse_reply_err(req, ENOMEM);
  }
  r->io.buf = r->data.get();
  r->charged = consumed_ = std::min<uint64_t>(length, kReceiveBytes);
  Submit(r);
}

void Worker::Write(fuse_req_t req, const char* buf, size_t size, off_t offset) {
  // The data must lie in the request we read: libfuse takes the size from
  // the request's own header.
  const auto* data = reinterpret_cast<const uint8_t*>(buf);
  if (data < receive_mem_ || size > received_bytes_ || data + size > receive_mem_ + received_bytes_)
    return (void)fuse_reply_err(req, EINVAL);
  uint64_t length = 0;
  int error = 0;
  if (!ClampToVolume(offset, size, &length, &error, EFBIG)) return (void)fuse_reply_err(req, error);
  if (length == 0) return (void)fuse_reply_write(req, 0);
  FuseRequest* r = NewRequest(req, VolumeOp::kWrite, static_cast<uint64_t>(offset), length);
  AlignedBuffer arrived_in = std::move(receive_);
  if (length >= kKeepReceiveBufferBytes && NewReceiveBuffer()) {
    // The data stays where it arrived; the next request goes to a fresh buffer.
    r->data = std::move(arrived_in);
    r->receive_buffer = true;
    r->io.buf = const_cast<uint8_t*>(data);
  } else {
    receive_ = std::move(arrived_in);
    r->data = bounce_cache_.Take(length, &r->capacity);
    if (!r->data) {
      delete r;
      return (void)fuse_reply_err(req, ENOMEM);
    }
    memcpy(r->data.get(), data, length);
    r->io.buf = r->data.get();
  }
  r->charged = consumed_ = std::min<uint64_t>(length, kReceiveBytes);
  Submit(r);
}

void Worker::Flush(fuse_req_t req) { Submit(NewRequest(req, VolumeOp::kFlush, 0, 0)); }

void Worker::Fallocate(fuse_req_t req, int mode, off_t offset, off_t length) {
  constexpr int kKnown = FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE;
  VolumeOp op;
  if ((mode & ~kKnown) != 0) return (void)fuse_reply_err(req, EOPNOTSUPP);
  if (mode & FALLOC_FL_PUNCH_HOLE) {
    // As on Linux file systems: a hole is punched only with KEEP_SIZE.
    if (!(mode & FALLOC_FL_KEEP_SIZE) || (mode & FALLOC_FL_ZERO_RANGE)) return (void)fuse_reply_err(req, EOPNOTSUPP);
    op = VolumeOp::kDiscard;
  } else if (mode & FALLOC_FL_ZERO_RANGE) {
    op = VolumeOp::kWriteZeroes;
  } else {
    // Plain allocation promises later writes will not fail for space; a
    // thin volume cannot promise that.
    return (void)fuse_reply_err(req, EOPNOTSUPP);
  }
  if (length <= 0) return (void)fuse_reply_err(req, EINVAL);
  uint64_t clamped = 0;
  int error = 0;
  if (!ClampToVolume(offset, static_cast<uint64_t>(length), &clamped, &error, 0)) {
    if (error) return (void)fuse_reply_err(req, error);
    // Wholly past the end: with KEEP_SIZE nothing changes; growing the
    // file is not possible.
    return (void)fuse_reply_err(req, (mode & FALLOC_FL_KEEP_SIZE) ? 0 : EFBIG);
  }
  if (!(mode & FALLOC_FL_KEEP_SIZE) && clamped < static_cast<uint64_t>(length)) return (void)fuse_reply_err(req, EFBIG);
  Submit(NewRequest(req, op, static_cast<uint64_t>(offset), clamped));
}

void Worker::Submit(FuseRequest* r) {
  in_flight_++;
  channel_->Submit(impl_.volume(), &r->io);
}

void Worker::Done(VolumeIo* io, const Status& status) {
  auto* r = static_cast<FuseRequest*>(io->context);
  if (!status.ok())
    fuse_reply_err(r->req, ReplyErrno(status.code()));
  else if (io->op == VolumeOp::kRead)
    fuse_reply_buf(r->req, reinterpret_cast<const char*>(io->buf), io->length);
  else if (io->op == VolumeOp::kWrite)
    fuse_reply_write(r->req, io->length);
  else
    fuse_reply_err(r->req, 0);
  r->worker->Finish(r);
}

void Worker::Finish(FuseRequest* r) {
  if (r->receive_buffer) {
    if (spare_receive_.size() < kSpareReceiveBuffers) spare_receive_.push_back(std::move(r->data));
  } else if (r->data) {
    bounce_cache_.Give(std::move(r->data), r->capacity);
  }
  if (r->charged) ReleaseBoth(impl_.budget(), impl_.options().shared_budget, r->charged);
  assert(in_flight_ > 0);
  in_flight_--;
  delete r;
}

// --- Impl ----------------------------------------------------------------

struct stat FileExportImpl::FileAttr() {
  struct stat st{};
  st.st_ino = kFileIno;
  st.st_nlink = 1;
  st.st_size = static_cast<off_t>(volume_.size());
  st.st_blksize = 4096;
  st.st_blocks = static_cast<blkcnt_t>(volume_.size() / 512);
  st.st_atime = st.st_mtime = st.st_ctime = start_time_;
  std::lock_guard lock(attr_mu_);
  st.st_mode = S_IFREG | mode_;
  st.st_uid = uid_;
  st.st_gid = gid_;
  return st;
}

struct stat FileExportImpl::DirAttr() {
  struct stat st{};
  st.st_ino = kRootIno;
  st.st_nlink = 2;
  st.st_mode = S_IFDIR | 0755;
  st.st_uid = ::geteuid();
  st.st_gid = ::getegid();
  st.st_atime = st.st_mtime = st.st_ctime = start_time_;
  return st;
}

int FileExportImpl::SetFileAttr(const struct stat& attr, int to_set) {
  // The size is the volume's: a truncate (or an open with O_TRUNC) must not
  // wipe it. Resizing is a control operation of the daemon.
  if ((to_set & FUSE_SET_ATTR_SIZE) && static_cast<uint64_t>(attr.st_size) != volume_.size()) return EPERM;
  std::lock_guard lock(attr_mu_);
  if (to_set & FUSE_SET_ATTR_MODE) mode_ = attr.st_mode & 07777;
  if (to_set & FUSE_SET_ATTR_UID) uid_ = attr.st_uid;
  if (to_set & FUSE_SET_ATTR_GID) gid_ = attr.st_gid;
  return 0;  // times: the file's are the export's start
}

Status FileExportImpl::Mount() {
  if (options_.connection_fd >= 0) return OpenSession("/dev/fd/" + std::to_string(options_.connection_fd));
  const std::string& path = options_.mountpoint;
  ES_RETURN_IF_ERROR(DetachStaleMounts(path));
  struct stat st{};
  if (::stat(path.c_str(), &st) != 0) {
    if (errno != ENOENT) return Status(errno, "cannot use mount point " + path);
    std::error_code ec;  // with its parents, as mkdir -p
    if (!std::filesystem::create_directories(path, ec) && ec)
      return Status(ec.value(), "cannot create mount point " + path);
    if (::stat(path.c_str(), &st) != 0) return Status(errno, "cannot use mount point " + path);
  }
  if (!S_ISDIR(st.st_mode)) return Status(ENOTDIR, "mount point " + path + " is not a directory");
  // Never mount over a live mount: whatever is there would be hidden.
  struct stat parent{};
  std::string parent_path = std::filesystem::path(path).parent_path().string();
  if (::stat(parent_path.c_str(), &parent) == 0 && parent.st_dev != st.st_dev)
    return Status(EBUSY, path + " is already a mount point (unmount it first)");
  return OpenSession(path);
}

// A FUSE server that died (a daemon killed with -9) leaves its mount behind;
// the kernel answers ENOTCONN to anything that reaches the server. statfs
// always reaches it (stat may be answered from the kernel's cache, and
// would let us stack a mount on the dead one). Several may be stacked.
Status FileExportImpl::DetachStaleMounts(const std::string& path) {
  for (int i = 0; i < 16; i++) {
    struct statfs fs{};
    if (::statfs(path.c_str(), &fs) == 0 || errno != ENOTCONN) return Status::Ok();
    spdlog::warn("file export: detaching a dead FUSE mount at {}", path);
    if (::umount2(path.c_str(), MNT_DETACH) != 0) return Status(errno, "cannot detach the dead mount at " + path);
  }
  return Status(EBUSY, "dead FUSE mounts keep appearing at " + path);
}

// Creates the session and mounts it at `path` (libfuse takes "/dev/fd/N" as
// an already open connection).
Status FileExportImpl::OpenSession(const std::string& path) {
  static std::once_flag log_once;
  std::call_once(log_once, [] { fuse_set_log_func(LogFromLibfuse); });
  std::string fsname = "fsname=edgestor:" + volume_.name();
  // As root, let other users in, with the kernel checking the file's mode
  // (0600 unless changed): a service's user can be given the file by chown.
  std::string opts = fsname + ",subtype=edgestor,default_permissions" + (::geteuid() == 0 ? ",allow_other" : "");
  const char* argv[] = {"edgestor", "-o", opts.c_str()};
  fuse_args args = FUSE_ARGS_INIT(3, const_cast<char**>(argv));
  session_ = fuse_session_new(&args, &kOps, sizeof kOps, this);
  fuse_opt_free_args(&args);  // what option parsing allocated
  if (!session_) return Status(EINVAL, "cannot create a FUSE session (options " + opts + ")");
  if (fuse_session_mount(session_, path.c_str()) != 0) {
    fuse_session_destroy(session_);
    session_ = nullptr;
    return Status(EIO, "cannot mount FUSE at " + path + " (libfuse's reason is in the daemon's log; is /dev/fuse "
                       "there, and fuse3 installed?)");
  }
  device_fd_ = fuse_session_fd(session_);
  int flags = ::fcntl(device_fd_, F_GETFL);
  if (flags < 0 || ::fcntl(device_fd_, F_SETFL, flags | O_NONBLOCK) != 0) return Status(errno, "cannot set up /dev/fuse");
  return Status::Ok();
}

Status FileExportImpl::StartWorkers(const std::function<std::unique_ptr<VolumeChannel>()>& make_channel) {
  stop_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (stop_fd_ < 0) return Status(errno, "cannot create an eventfd");
  for (uint32_t i = 0; i < options_.threads; i++) {
    auto worker = std::make_unique<Worker>(*this, make_channel());
    ES_RETURN_IF_ERROR(worker->Start());
    workers_.push_back(std::move(worker));
  }
  return Status::Ok();
}

void FileExportImpl::Stop() {
  if (stopping_.exchange(true)) return;
  if (stop_fd_ >= 0) {
    uint64_t one = 1;
    (void)!::write(stop_fd_, &one, sizeof one);
  }
  for (auto& w : workers_) w->Join();
  workers_.clear();
  if (session_) {
    // Closes the device (the kernel then fails what it still holds with
    // ENOTCONN) and detaches the mount, lazily if the file is still open.
    fuse_session_unmount(session_);
    fuse_session_destroy(session_);
    session_ = nullptr;
  }
  if (stop_fd_ >= 0) ::close(stop_fd_);
  stop_fd_ = -1;
}

FileExportImpl::~FileExportImpl() { Stop(); }

void FileExportImpl::SizeChanged() {
  if (session_ && !stopping()) (void)fuse_lowlevel_notify_inval_inode(session_, kFileIno, 0, 0);
}

// --- FuseFileExport ------------------------------------------------------

Result<std::unique_ptr<FuseFileExport>> FuseFileExport::Start(
    Volume& volume, FileExportOptions options, std::function<std::unique_ptr<VolumeChannel>()> make_channel) {
  if (options.threads == 0 || options.threads > kMaxThreads)
    return Status(EINVAL, "threads must be from 1 to " + std::to_string(kMaxThreads));
  if (options.mountpoint.empty()) return Status(EINVAL, "a file export needs a mount point");
  if (options.connection_fd < 0)
    options.mountpoint = std::filesystem::absolute(options.mountpoint).lexically_normal().string();
  if (volume.read_only()) options.read_only = true;
  auto impl = std::make_unique<FileExportImpl>(volume, options);
  ES_RETURN_IF_ERROR(impl->Mount());
  ES_RETURN_IF_ERROR(impl->StartWorkers(make_channel));
  return std::unique_ptr<FuseFileExport>(new FuseFileExport(volume, std::move(options), std::move(impl)));
}

FuseFileExport::FuseFileExport(Volume& volume, FileExportOptions options, std::unique_ptr<FileExportImpl> impl)
    : volume_(volume), options_(std::move(options)), impl_(std::move(impl)) {}

FuseFileExport::~FuseFileExport() { Stop(); }

void FuseFileExport::Stop() { impl_->Stop(); }

void FuseFileExport::SizeChanged() { impl_->SizeChanged(); }

std::string FuseFileExport::file_path() const {
  return (std::filesystem::path(options_.mountpoint) / volume_.name()).string();
}

uint32_t FuseFileExport::open_count() const { return impl_->opens().load(std::memory_order_relaxed); }

const IoStats& FuseFileExport::io_stats() const { return impl_->io_stats(); }

}  // namespace edgestor::fuse
