// FaultDevice: an in-memory Device that simulates power loss and media errors.
//
// It keeps a durable image plus the ordered list of writes completed since
// the last completed flush. Reads see everything written. PowerCut() decides
// what survived: each unflushed write is kept or dropped at random, and a kept
// one may be torn (only some of its 512-byte sectors land). After a cut the
// device holds just the durable image, like a disk after a power failure, and
// is usable again (the test reopens the pool on it).
//
// Thread-safe: all methods may be called from any thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <random>
#include <vector>

#include "io/device.h"

namespace edgestor {

class FaultDevice : public Device {
 public:
  explicit FaultDevice(uint64_t size);
  ~FaultDevice() override;

  uint64_t size() const override;
  std::string name() const override { return "fault-device"; }
  std::unique_ptr<IoQueue> CreateQueue(uint32_t depth) override;
  Status ReadSync(uint64_t offset, void* buf, size_t len) override;
  Status WriteSync(uint64_t offset, const void* buf, size_t len) override;
  Status FlushSync() override;
  Status Allocate(uint64_t offset, uint64_t len) override;
  DeviceStats stats() const override;

  // Simulates a sparse file on a host file system: a 4 KiB block gets host
  // space when first written or Allocate()d. While the host is full, a write
  // touching a block without host space fails with ENOSPC (changing
  // nothing), and so does Allocate() of such a block.
  void SetHostFull(bool full);
  // Blocks that have host space.
  uint64_t host_backed_blocks() const;

  // After `ops` more device operations (reads, writes, flushes) succeed, the
  // device "loses power": every later operation fails with EIO and changes
  // nothing, until PowerCut() is called. Negative disarms.
  void FailAfter(int64_t ops);

  // Simulates the power loss: keeps each unflushed write with probability
  // 1/2, tears a kept write at a random 512-byte boundary set with
  // probability `tear_probability`, applies the survivors in order to the
  // durable image and forgets the rest. Re-enables the device.
  // Returns how many unflushed writes were dropped or torn.
  uint64_t PowerCut(std::mt19937_64& rng, double tear_probability = 0.25);

  // A stalled disk: requests submitted through queues are held, neither
  // run nor completed (Poll without wait returns 0, with wait it blocks),
  // until ReleaseCompletions(), after which they and later ones run as
  // usual. The synchronous path is not held.
  void HoldCompletions();
  void ReleaseCompletions();
  // A slow disk for the synchronous path: ReadSync and WriteSync wait (not
  // holding the device) until ReleaseSyncIo(). sync_io_waiting() counts
  // those waiting, so a test knows its request reached the device.
  void HoldSyncIo();
  void ReleaseSyncIo();
  uint64_t sync_io_waiting() const;
  // Data bytes of reads and writes submitted through queues and not yet run
  // (while held: everything a front-end put in flight on the device).
  uint64_t queued_bytes() const;

  // Reads and writes touching [offset, offset+len) fail with EIO.
  void InjectError(uint64_t offset, uint64_t len);
  void ClearErrors();

  // Direct access to the durable image (for tests that corrupt bytes or scan
  // for plaintext). Bypasses the unflushed list; do not mix with live I/O.
  // It holds only flushed data: call it with no unflushed writes (or after
  // PowerCut) to see everything. Changes made through the reference are
  // seen by the next operation, on top of any still-unflushed writes.
  std::vector<uint8_t>& durable_image();
  // True from the failure FailAfter() armed until PowerCut().
  bool lost_power() const;
  // Number of writes completed since the last flush.
  size_t unflushed_writes() const;

 private:
  class Queue;
  struct PendingWrite {
    uint64_t offset;
    std::vector<uint8_t> data;
  };
  // The operations themselves, shared by the sync path and Queue.
  // REQUIRES: mu_ held (for all *Locked methods and CheckOp).
  Status CheckOp(uint64_t offset, size_t len, bool is_io);
  Status ReadLocked(uint64_t offset, void* buf, size_t len);
  Status WriteLocked(uint64_t offset, const void* buf, size_t len);
  Status FlushLocked();
  // ENOSPC if the host is full and [offset, offset+len) has a block without
  // host space; otherwise gives every block there host space.
  Status BackLocked(uint64_t offset, uint64_t len);
  // Rebuilds current_ from durable_ + pending_ after durable_image() was
  // handed out, so edits made through it become visible to reads.
  void RefreshAfterImageAccessLocked();

  mutable std::mutex mu_;
  std::vector<uint8_t> durable_;
  std::vector<uint8_t> current_;  // durable_ with pending_ applied
  std::vector<PendingWrite> pending_;
  std::vector<std::pair<uint64_t, uint64_t>> error_ranges_;
  int64_t ops_until_failure_ = -1;
  bool failed_ = false;
  bool image_exposed_ = false;  // durable_image() was called since the last refresh
  bool host_full_ = false;
  std::vector<bool> host_backed_;  // per 4 KiB block
  bool holding_ = false;           // HoldCompletions() until ReleaseCompletions()
  std::condition_variable released_;
  bool holding_sync_ = false;     // HoldSyncIo() until ReleaseSyncIo()
  uint64_t sync_io_waiting_ = 0;  // GUARDED_BY(mu_)
  std::condition_variable sync_released_;
  // Waits while the synchronous path is held. REQUIRES: `lock` holds mu_.
  void WaitForSyncRelease(std::unique_lock<std::mutex>& lock);
  std::atomic<uint64_t> queued_bytes_{0};
  DeviceStats stats_;
};

}  // namespace edgestor
