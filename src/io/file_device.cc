// FileDevice: opening files and block devices, and the synchronous I/O path.
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cassert>
#include <cerrno>
#include <cstring>
#include <utility>

#include <spdlog/spdlog.h>

#include "io/file_device_impl.h"

namespace edgestor {

namespace {

// Closes a descriptor on every early return while a device is being opened.
class FdCloser {
 public:
  explicit FdCloser(int fd) : fd_(fd) {}
  ~FdCloser() {
    if (fd_ >= 0) close(fd_);
  }
  FdCloser(const FdCloser&) = delete;
  FdCloser& operator=(const FdCloser&) = delete;
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }
  void reset(int fd) {
    if (fd_ >= 0) close(fd_);
    fd_ = fd;
  }

 private:
  int fd_;
};

std::string Where(uint64_t offset, size_t len, const std::string& path) {
  return std::to_string(len) + " bytes at offset " + std::to_string(offset) + " of " + path;
}

// The directory entry of a new file is durable only once its parent
// directory has been synced; without it a power cut could lose the file.
Status SyncParentDirectory(const std::string& path) {
  size_t slash = path.rfind('/');
  std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Status(errno, "cannot open directory " + dir);
  int rc = fsync(fd);
  int err = errno;
  close(fd);
  if (rc != 0) return Status(err, "cannot sync directory " + dir);
  return Status::Ok();
}

// With `create`: makes a missing (or empty) regular file `size` bytes long.
// The file is sparse; an existing non-empty file keeps its size.
Status CreateIfMissingOrEmpty(const std::string& path, uint64_t size) {
  if (size % kSectorSize != 0) {
    return Status(EINVAL, "cannot create " + path + ": size " + std::to_string(size) + " is not a multiple of " +
                              std::to_string(kSectorSize));
  }
  bool created = true;
  FdCloser fd(open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  if (fd.get() < 0 && errno == EEXIST) {
    created = false;
    fd.reset(open(path.c_str(), O_RDWR | O_CLOEXEC));
  }
  if (fd.get() < 0) return Status(errno, "cannot open " + path);
  struct stat st;
  if (fstat(fd.get(), &st) != 0) return Status(errno, "cannot stat " + path);
  if (!S_ISREG(st.st_mode) || st.st_size != 0) return Status::Ok();  // block device or existing data
  if (ftruncate(fd.get(), static_cast<off_t>(size)) != 0) {
    return Status(errno, "cannot grow " + path + " to " + std::to_string(size) + " bytes");
  }
  if (created) return SyncParentDirectory(path);
  return Status::Ok();
}

// Size in bytes of a regular file or block device, rounded down to whole
// sectors (a trailing partial sector can never be addressed).
Result<uint64_t> DeviceSize(int fd, const std::string& path) {
  struct stat st;
  if (fstat(fd, &st) != 0) return Status(errno, "cannot stat " + path);
  uint64_t size = 0;
  if (S_ISREG(st.st_mode)) {
    size = static_cast<uint64_t>(st.st_size);
  } else if (S_ISBLK(st.st_mode)) {
    if (ioctl(fd, BLKGETSIZE64, &size) != 0) return Status(errno, "cannot get the size of block device " + path);
  } else {
    return Status(EINVAL, "cannot open " + path + ": not a regular file or block device");
  }
  return size / kSectorSize * kSectorSize;
}

// Some file systems accept O_DIRECT at open() and refuse it at the first
// transfer; one aligned read tells. Returns false if O_DIRECT is refused.
bool DirectReadWorks(int fd) {
  AlignedBuffer probe = AllocateAligned(kIoAlignment);
  ssize_t n;
  do {
    n = pread(fd, probe.get(), kIoAlignment, 0);
  } while (n < 0 && errno == EINTR);
  return !(n < 0 && errno == EINVAL);
}

void WarnNoDirect(const std::string& path) {
  spdlog::warn("{} does not support O_DIRECT; using buffered I/O", path);
}

}  // namespace

FileDevice::FileDevice(std::string path, int fd, uint64_t size, bool read_only)
    : path_(std::move(path)), fd_(fd), size_(size), read_only_(read_only) {
  assert(fd_ >= 0);
  assert(size_ % kSectorSize == 0);
}

FileDevice::~FileDevice() { close(fd_); }

std::unique_ptr<IoQueue> FileDevice::CreateQueue(uint32_t depth) { return CreateFileQueue(*this, depth); }

Status FileDevice::CheckTransfer(uint64_t offset, const void* buf, size_t len, bool write) const {
  if (offset % kSectorSize != 0 || len % kSectorSize != 0) {
    return Status(EINVAL, "unaligned I/O: " + Where(offset, len, path_));
  }
  if (reinterpret_cast<uintptr_t>(buf) % kIoAlignment != 0) {
    return Status(EINVAL, "I/O buffer not aligned to " + std::to_string(kIoAlignment) + ": " + Where(offset, len, path_));
  }
  if (offset > size_ || len > size_ - offset) {
    return Status(EINVAL, "I/O past end of device (" + std::to_string(size_) + " bytes): " + Where(offset, len, path_));
  }
  if (write && read_only_) return Status(EROFS, "write to read-only device: " + Where(offset, len, path_));
  return Status::Ok();
}

int FileDevice::CheckRequest(const IoRequest& req) const {
  if (req.op == IoOp::kFlush) return 0;
  Status s = CheckTransfer(req.offset, req.buf, req.length, req.op == IoOp::kWrite);
  return -s.code();
}

Status FileDevice::ReadSync(uint64_t offset, void* buf, size_t len) {
  ES_RETURN_IF_ERROR(CheckTransfer(offset, buf, len, /*write=*/false));
  auto* p = static_cast<uint8_t*>(buf);
  size_t done = 0;
  while (done < len) {
    ssize_t n = pread(fd_, p + done, len - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status(errno, "cannot read " + Where(offset + done, len - done, path_));
    // The device is sized at open; a file that shrank since then ends early.
    if (n == 0) return Status(EIO, "unexpected end of file reading " + Where(offset + done, len - done, path_));
    done += static_cast<size_t>(n);
  }
  assert(done == len);
  CountRead(len);
  return Status::Ok();
}

Status FileDevice::WriteSync(uint64_t offset, const void* buf, size_t len) {
  ES_RETURN_IF_ERROR(CheckTransfer(offset, buf, len, /*write=*/true));
  const auto* p = static_cast<const uint8_t*>(buf);
  size_t done = 0;
  while (done < len) {
    ssize_t n = pwrite(fd_, p + done, len - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status(errno, "cannot write " + Where(offset + done, len - done, path_));
    if (n == 0) return Status(EIO, "device accepted no bytes writing " + Where(offset + done, len - done, path_));
    done += static_cast<size_t>(n);
  }
  assert(done == len);
  CountWrite(len);
  return Status::Ok();
}

Status FileDevice::FlushSync() {
  int rc;
  do {
    rc = fdatasync(fd_);
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) return Status(errno, "cannot flush " + path_);
  CountFlush();
  return Status::Ok();
}

Status FileDevice::Allocate(uint64_t offset, uint64_t len) {
  if (read_only_) return Status(EROFS, path_ + " is opened read-only");
  if (offset > size_ || len > size_ - offset) return Status(EINVAL, "allocation past the end of " + path_);
  struct stat st;
  if (fstat(fd_, &st) != 0) return Status(errno, "cannot stat " + path_);
  if (!S_ISREG(st.st_mode) || len == 0) return Status::Ok();
  int rc;
  do {
    rc = fallocate(fd_, 0, static_cast<off_t>(offset), static_cast<off_t>(len));
  } while (rc != 0 && errno == EINTR);
  if (rc == 0) return Status::Ok();
  if (errno == EOPNOTSUPP) return Status::Ok();
  if (errno == ENOSPC)
    return Status(ENOSPC, "the file system holding " + path_ + " is full (cannot reserve " + std::to_string(len) +
                              " bytes); free space on the host");
  return Status(errno, "cannot allocate space in " + path_);
}

DeviceStats FileDevice::stats() const {
  DeviceStats s;
  s.bytes_read = bytes_read_.load(std::memory_order_relaxed);
  s.bytes_written = bytes_written_.load(std::memory_order_relaxed);
  s.reads = reads_.load(std::memory_order_relaxed);
  s.writes = writes_.load(std::memory_order_relaxed);
  s.flushes = flushes_.load(std::memory_order_relaxed);
  return s;
}

void FileDevice::CountRead(uint64_t bytes) {
  reads_.fetch_add(1, std::memory_order_relaxed);
  bytes_read_.fetch_add(bytes, std::memory_order_relaxed);
}

void FileDevice::CountWrite(uint64_t bytes) {
  writes_.fetch_add(1, std::memory_order_relaxed);
  bytes_written_.fetch_add(bytes, std::memory_order_relaxed);
}

void FileDevice::CountFlush() { flushes_.fetch_add(1, std::memory_order_relaxed); }

Result<std::unique_ptr<Device>> OpenFileDevice(const std::string& path, const FileDeviceOptions& options) {
  if (options.create && options.read_only) return Status(EINVAL, "cannot create " + path + " read-only");
  if (options.create) ES_RETURN_IF_ERROR(CreateIfMissingOrEmpty(path, options.create_size));

  const int flags = (options.read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC;
  bool direct = options.direct;
  FdCloser fd(open(path.c_str(), flags | (direct ? O_DIRECT : 0)));
  if (fd.get() < 0 && direct && errno == EINVAL) {  // e.g. tmpfs before Linux 6.6
    direct = false;
    WarnNoDirect(path);
    fd.reset(open(path.c_str(), flags));
  }
  if (fd.get() < 0) return Status(errno, "cannot open " + path);
  if (direct && !DirectReadWorks(fd.get())) {
    direct = false;
    WarnNoDirect(path);
    fd.reset(open(path.c_str(), flags));
    if (fd.get() < 0) return Status(errno, "cannot open " + path);
  }
  ES_ASSIGN_OR_RETURN(uint64_t size, DeviceSize(fd.get(), path));
  return std::unique_ptr<Device>(std::make_unique<FileDevice>(path, fd.release(), size, options.read_only));
}

}  // namespace edgestor
