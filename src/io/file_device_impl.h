// Private to src/io: the Device over a regular file or block device, shared
// by file_device.cc (open, sync path) and uring_queue.cc (async path).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "io/device.h"

namespace edgestor {

// The synchronous methods are thread-safe: they use pread/pwrite on a shared
// descriptor and atomic counters. Each IoQueue is used by one thread.
class FileDevice final : public Device {
 public:
  // Takes ownership of `fd`. `size` is a multiple of kSectorSize.
  FileDevice(std::string path, int fd, uint64_t size, bool read_only);
  ~FileDevice() override;
  FileDevice(const FileDevice&) = delete;
  FileDevice& operator=(const FileDevice&) = delete;

  uint64_t size() const override { return size_; }
  std::string name() const override { return path_; }
  std::unique_ptr<IoQueue> CreateQueue(uint32_t depth) override;
  Status ReadSync(uint64_t offset, void* buf, size_t len) override;
  Status WriteSync(uint64_t offset, const void* buf, size_t len) override;
  Status FlushSync() override;
  // fallocate on a regular file; nothing to do on a block device, nor on a
  // file system that cannot reserve space (the write path then reports a
  // full host per request).
  Status Allocate(uint64_t offset, uint64_t len) override;
  DeviceStats stats() const override;

  int fd() const { return fd_; }
  // Checks the Device contract for one transfer: sector-aligned offset and
  // length, kIoAlignment-aligned buffer, inside the device, and not a write
  // to a read-only device. Returns EINVAL or EROFS with a message.
  Status CheckTransfer(uint64_t offset, const void* buf, size_t len, bool write) const;
  // Same checks for an asynchronous request; returns 0 or -errno.
  int CheckRequest(const IoRequest& req) const;

  // Counters for completed operations (both paths).
  void CountRead(uint64_t bytes);
  void CountWrite(uint64_t bytes);
  void CountFlush();

 private:
  const std::string path_;
  const int fd_;
  const uint64_t size_;
  const bool read_only_;
  std::atomic<uint64_t> bytes_read_{0};
  std::atomic<uint64_t> bytes_written_{0};
  std::atomic<uint64_t> reads_{0};
  std::atomic<uint64_t> writes_{0};
  std::atomic<uint64_t> flushes_{0};
};

// Creates the queue for CreateQueue: an io_uring ring of at least `depth`
// entries, or, where io_uring is unavailable, a queue that performs the
// requests synchronously inside Poll().
std::unique_ptr<IoQueue> CreateFileQueue(FileDevice& device, uint32_t depth);

}  // namespace edgestor
