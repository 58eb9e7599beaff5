#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "io/device.h"
#include "io/fault_device.h"

namespace edgestor {
namespace {

constexpr uint64_t kMiB = 1024 * 1024;

// A fresh directory, removed with everything in it at the end of the test.
class TempDir {
 public:
  explicit TempDir(const std::string& parent) {
    std::string pattern = parent + "/edgestor-io-XXXXXX";
    char* made = mkdtemp(pattern.data());
    EXPECT_NE(made, nullptr) << strerror(errno);
    path_ = pattern;
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Fills `len` bytes with a pattern that differs per `seed` and per offset.
void Fill(uint8_t* p, size_t len, uint32_t seed) {
  for (size_t i = 0; i < len; i++) p[i] = static_cast<uint8_t>((seed * 2654435761u + i * 31 + (i >> 9)) >> 3);
}

std::unique_ptr<Device> Open(const std::string& path, uint64_t create_size, bool direct = true) {
  FileDeviceOptions options;
  options.create = create_size > 0;
  options.create_size = create_size;
  options.direct = direct;
  auto device = OpenFileDevice(path, options);
  EXPECT_TRUE(device.ok()) << device.status().ToString();
  return device.ok() ? std::move(device).value() : nullptr;
}

struct Completion {
  int calls = 0;
  int result = 1;
};

void RecordCompletion(IoRequest* req, int result) {
  auto* c = static_cast<Completion*>(req->context);
  c->calls++;
  c->result = result;
}

// Submits `reqs` on one queue and polls until every callback has run.
std::vector<Completion> RunAll(IoQueue& queue, std::vector<IoRequest>& reqs) {
  std::vector<Completion> done(reqs.size());
  for (size_t i = 0; i < reqs.size(); i++) {
    reqs[i].done = RecordCompletion;
    reqs[i].context = &done[i];
    queue.Submit(&reqs[i]);
  }
  EXPECT_EQ(queue.InFlight(), reqs.size());
  int completed = 0;
  while (queue.InFlight() > 0) completed += queue.Poll(/*wait=*/true);
  EXPECT_EQ(completed, static_cast<int>(reqs.size()));
  return done;
}

TEST(AlignedBufferTest, IsAlignedAndZeroed) {
  for (size_t len : {size_t{0}, size_t{1}, size_t{512}, size_t{4096}, size_t{12345}}) {
    AlignedBuffer buf = AllocateAligned(len);
    ASSERT_NE(buf.get(), nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(buf.get()) % kIoAlignment, 0u);
    for (size_t i = 0; i < len; i++) ASSERT_EQ(buf[i], 0) << "len " << len << " byte " << i;
  }
}

TEST(FileDeviceTest, CreatesSparseFileOfRequestedSize) {
  TempDir dir("/tmp");
  auto device = Open(dir.File("dev"), 64 * kMiB);
  ASSERT_NE(device, nullptr);
  EXPECT_EQ(device->size(), 64 * kMiB);
  EXPECT_EQ(device->name(), dir.File("dev"));
  struct stat st;
  ASSERT_EQ(stat(dir.File("dev").c_str(), &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), 64 * kMiB);
  EXPECT_LT(static_cast<uint64_t>(st.st_blocks) * 512, kMiB) << "file should be sparse";
  EXPECT_EQ(st.st_mode & 0777, 0644u & ~[] { mode_t m = umask(0); umask(m); return m; }());
}

TEST(FileDeviceTest, CreateKeepsSizeOfExistingFileButGrowsEmptyOne) {
  TempDir dir("/tmp");
  ASSERT_NE(Open(dir.File("a"), kMiB), nullptr);
  auto reopened = Open(dir.File("a"), 4 * kMiB);
  ASSERT_NE(reopened, nullptr);
  EXPECT_EQ(reopened->size(), kMiB);

  int fd = open(dir.File("empty").c_str(), O_CREAT | O_WRONLY, 0644);
  ASSERT_GE(fd, 0);
  close(fd);
  auto grown = Open(dir.File("empty"), 2 * kMiB);
  ASSERT_NE(grown, nullptr);
  EXPECT_EQ(grown->size(), 2 * kMiB);
}

TEST(FileDeviceTest, OpeningMissingFileFailsWithClearError) {
  TempDir dir("/tmp");
  auto device = OpenFileDevice(dir.File("missing"), FileDeviceOptions{});
  ASSERT_FALSE(device.ok());
  EXPECT_EQ(device.status().code(), ENOENT);
  EXPECT_NE(device.status().message().find("cannot open " + dir.File("missing")), std::string::npos);
}

TEST(FileDeviceTest, SyncWriteIsReadBackAndSurvivesReopen) {
  TempDir dir("/tmp");
  AlignedBuffer out = AllocateAligned(64 * 1024);
  AlignedBuffer in = AllocateAligned(64 * 1024);
  Fill(out.get(), 64 * 1024, 7);
  {
    auto device = Open(dir.File("dev"), 8 * kMiB);
    ASSERT_NE(device, nullptr);
    ASSERT_TRUE(device->WriteSync(kMiB + 512, out.get(), 64 * 1024).ok());
    ASSERT_TRUE(device->ReadSync(kMiB + 512, in.get(), 64 * 1024).ok());
    EXPECT_EQ(std::memcmp(in.get(), out.get(), 64 * 1024), 0);
    ASSERT_TRUE(device->FlushSync().ok());
  }
  std::memset(in.get(), 0, 64 * 1024);
  auto device = Open(dir.File("dev"), 0);
  ASSERT_NE(device, nullptr);
  EXPECT_EQ(device->size(), 8 * kMiB);
  ASSERT_TRUE(device->ReadSync(kMiB + 512, in.get(), 64 * 1024).ok());
  EXPECT_EQ(std::memcmp(in.get(), out.get(), 64 * 1024), 0);
  // Untouched areas of the sparse file read as zeros.
  ASSERT_TRUE(device->ReadSync(0, in.get(), 4096).ok());
  for (int i = 0; i < 4096; i++) ASSERT_EQ(in[i], 0);
}

TEST(FileDeviceTest, AsyncQueueRunsMoreRequestsThanItsDepth) {
  TempDir dir("/tmp");
  auto device = Open(dir.File("dev"), 8 * kMiB);
  ASSERT_NE(device, nullptr);
  auto queue = device->CreateQueue(4);
  constexpr int kRequests = 64;
  constexpr uint32_t kBlock = 8192;
  AlignedBuffer out = AllocateAligned(kRequests * kBlock);
  AlignedBuffer in = AllocateAligned(kRequests * kBlock);
  Fill(out.get(), kRequests * kBlock, 99);

  std::vector<IoRequest> writes(kRequests);
  for (int i = 0; i < kRequests; i++) {
    // Scattered, so that completion order is not file order.
    writes[i] = IoRequest{IoOp::kWrite, static_cast<uint64_t>((i * 37) % kRequests) * kBlock, kBlock, out.get() + i * kBlock};
  }
  for (const Completion& c : RunAll(*queue, writes)) {
    EXPECT_EQ(c.calls, 1);
    EXPECT_EQ(c.result, 0);
  }

  std::vector<IoRequest> flush(1);
  flush[0].op = IoOp::kFlush;
  EXPECT_EQ(RunAll(*queue, flush)[0].result, 0);

  std::vector<IoRequest> reads(kRequests);
  for (int i = 0; i < kRequests; i++) {
    reads[i] = IoRequest{IoOp::kRead, static_cast<uint64_t>((i * 37) % kRequests) * kBlock, kBlock, in.get() + i * kBlock};
  }
  for (const Completion& c : RunAll(*queue, reads)) {
    EXPECT_EQ(c.calls, 1);
    EXPECT_EQ(c.result, 0);
  }
  EXPECT_EQ(std::memcmp(in.get(), out.get(), kRequests * kBlock), 0);
  EXPECT_EQ(queue->Poll(false), 0);
}

// A completion callback may submit the next step of its operation.
struct WriteThenRead {
  IoQueue* queue;
  IoRequest write;
  IoRequest read;
  int read_result = 1;
};

TEST(FileDeviceTest, CallbackMaySubmitFollowUpRequest) {
  TempDir dir("/tmp");
  auto device = Open(dir.File("dev"), kMiB);
  ASSERT_NE(device, nullptr);
  auto queue = device->CreateQueue(8);
  AlignedBuffer out = AllocateAligned(4096);
  AlignedBuffer in = AllocateAligned(4096);
  Fill(out.get(), 4096, 11);
  WriteThenRead op{queue.get()};
  op.write = IoRequest{IoOp::kWrite, 8192, 4096, out.get(), nullptr, &op};
  op.read = IoRequest{IoOp::kRead, 8192, 4096, in.get(), nullptr, &op};
  op.write.done = [](IoRequest* req, int result) {
    auto* self = static_cast<WriteThenRead*>(req->context);
    ASSERT_EQ(result, 0);
    self->queue->Submit(&self->read);
  };
  op.read.done = [](IoRequest* req, int result) { static_cast<WriteThenRead*>(req->context)->read_result = result; };
  queue->Submit(&op.write);
  int completed = 0;
  while (queue->InFlight() > 0) completed += queue->Poll(true);
  EXPECT_EQ(completed, 2);
  EXPECT_EQ(op.read_result, 0);
  EXPECT_EQ(std::memcmp(in.get(), out.get(), 4096), 0);
}

TEST(FileDeviceTest, DestroyingQueueWithRequestsInFlightRunsNoMoreCallbacks) {
  TempDir dir("/tmp");
  auto device = Open(dir.File("dev"), kMiB);
  ASSERT_NE(device, nullptr);
  AlignedBuffer buf = AllocateAligned(64 * 4096);
  std::vector<IoRequest> reqs(64);
  int completed = 0;
  {
    auto queue = device->CreateQueue(8);
    for (int i = 0; i < 64; i++) {
      reqs[i] = IoRequest{IoOp::kRead, uint64_t{4096} * i, 4096, buf.get() + 4096 * i,
                          [](IoRequest* req, int) { ++*static_cast<int*>(req->context); }, &completed};
      queue->Submit(&reqs[i]);
    }
    EXPECT_EQ(queue->Poll(false), completed);
    EXPECT_GT(queue->InFlight(), 0u);  // at most 8 can have been in the ring
  }  // the destructor waits until the kernel is done with `buf`
  EXPECT_LE(completed, 8);
  EXPECT_LE(device->stats().reads, 64u);
}

TEST(FileDeviceTest, OutOfRangeSyncIoFailsWithEinval) {
  TempDir dir("/tmp");
  auto device = Open(dir.File("dev"), kMiB);
  ASSERT_NE(device, nullptr);
  AlignedBuffer buf = AllocateAligned(8192);
  Status past = device->ReadSync(kMiB - 4096, buf.get(), 8192);
  EXPECT_EQ(past.code(), EINVAL);
  EXPECT_NE(past.message().find("I/O past end of device"), std::string::npos) << past.message();
  EXPECT_EQ(device->WriteSync(kMiB, buf.get(), 512).code(), EINVAL);
  EXPECT_EQ(device->WriteSync(UINT64_MAX - 511, buf.get(), 4096).code(), EINVAL);  // no overflow
  EXPECT_EQ(device->ReadSync(100, buf.get(), 512).code(), EINVAL);                // unaligned offset
  EXPECT_EQ(device->ReadSync(0, buf.get(), 100).code(), EINVAL);                  // unaligned length
  EXPECT_EQ(device->ReadSync(0, buf.get() + 512, 512).code(), EINVAL);            // unaligned buffer
  EXPECT_TRUE(device->ReadSync(kMiB - 4096, buf.get(), 4096).ok());
  EXPECT_EQ(device->stats().reads, 1u);
}

TEST(FileDeviceTest, OutOfRangeAsyncIoCompletesWithEinvalFromPoll) {
  TempDir dir("/tmp");
  auto device = Open(dir.File("dev"), kMiB);
  ASSERT_NE(device, nullptr);
  auto queue = device->CreateQueue(8);
  AlignedBuffer buf = AllocateAligned(4096);
  Completion c;
  IoRequest req{IoOp::kWrite, kMiB, 4096, buf.get(), RecordCompletion, &c};
  queue->Submit(&req);
  EXPECT_EQ(c.calls, 0) << "Submit must never run the callback";
  EXPECT_EQ(queue->InFlight(), 1u);
  EXPECT_EQ(queue->Poll(false), 1);
  EXPECT_EQ(c.calls, 1);
  EXPECT_EQ(c.result, -EINVAL);
  EXPECT_EQ(queue->InFlight(), 0u);
  EXPECT_EQ(device->stats().writes, 0u);
}

TEST(FileDeviceTest, ReadOnlyDeviceRejectsWritesWithErofs) {
  TempDir dir("/tmp");
  ASSERT_NE(Open(dir.File("dev"), kMiB), nullptr);
  FileDeviceOptions options;
  options.read_only = true;
  auto device = OpenFileDevice(dir.File("dev"), options);
  ASSERT_TRUE(device.ok()) << device.status().ToString();
  AlignedBuffer buf = AllocateAligned(4096);
  EXPECT_EQ((*device)->WriteSync(0, buf.get(), 4096).code(), EROFS);
  EXPECT_TRUE((*device)->ReadSync(0, buf.get(), 4096).ok());
  auto queue = (*device)->CreateQueue(8);
  std::vector<IoRequest> write{IoRequest{IoOp::kWrite, 0, 4096, buf.get()}};
  EXPECT_EQ(RunAll(*queue, write)[0].result, -EROFS);
}

TEST(FileDeviceTest, ReadBeyondEndOfShrunkFileIsEio) {
  TempDir dir("/tmp");
  auto device = Open(dir.File("dev"), kMiB);
  ASSERT_NE(device, nullptr);
  ASSERT_EQ(truncate(dir.File("dev").c_str(), kMiB / 2), 0);
  AlignedBuffer buf = AllocateAligned(4096);
  Status s = device->ReadSync(kMiB - 4096, buf.get(), 4096);
  EXPECT_EQ(s.code(), EIO);
  EXPECT_NE(s.message().find("end of file"), std::string::npos) << s.message();
  auto queue = device->CreateQueue(8);
  std::vector<IoRequest> read{IoRequest{IoOp::kRead, kMiB - 4096, 4096, buf.get()}};
  EXPECT_EQ(RunAll(*queue, read)[0].result, -EIO) << "a short read is -EIO";
}

TEST(FileDeviceTest, StatsCountCompletedOperationsAndBytes) {
  TempDir dir("/tmp");
  auto device = Open(dir.File("dev"), kMiB);
  ASSERT_NE(device, nullptr);
  AlignedBuffer buf = AllocateAligned(16384);
  ASSERT_TRUE(device->WriteSync(0, buf.get(), 16384).ok());
  ASSERT_TRUE(device->ReadSync(0, buf.get(), 4096).ok());
  ASSERT_TRUE(device->FlushSync().ok());
  auto queue = device->CreateQueue(8);
  std::vector<IoRequest> reqs{IoRequest{IoOp::kWrite, 16384, 512, buf.get()},
                              IoRequest{IoOp::kRead, 0, 8192, buf.get() + 8192}, IoRequest{IoOp::kFlush}};
  RunAll(*queue, reqs);
  DeviceStats s = device->stats();
  EXPECT_EQ(s.writes, 2u);
  EXPECT_EQ(s.bytes_written, 16384u + 512);
  EXPECT_EQ(s.reads, 2u);
  EXPECT_EQ(s.bytes_read, 4096u + 8192);
  EXPECT_EQ(s.flushes, 2u);
}

TEST(FileDeviceTest, SyncPathAndPerThreadQueuesWorkConcurrently) {
  TempDir dir("/tmp");
  auto device = Open(dir.File("dev"), 4 * kMiB);
  ASSERT_NE(device, nullptr);
  constexpr int kThreads = 4;
  constexpr uint32_t kChunk = 256 * 1024;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; t++) {
    threads.emplace_back([&, t] {
      AlignedBuffer buf = AllocateAligned(kChunk);
      Fill(buf.get(), kChunk, t);
      uint64_t base = static_cast<uint64_t>(t) * 2 * kChunk;
      EXPECT_TRUE(device->WriteSync(base, buf.get(), kChunk).ok());
      auto queue = device->CreateQueue(16);
      std::vector<IoRequest> write{IoRequest{IoOp::kWrite, base + kChunk, kChunk, buf.get()}};
      EXPECT_EQ(RunAll(*queue, write)[0].result, 0);
    });
  }
  for (auto& th : threads) th.join();
  AlignedBuffer expect = AllocateAligned(kChunk);
  AlignedBuffer got = AllocateAligned(kChunk);
  for (int t = 0; t < kThreads; t++) {
    Fill(expect.get(), kChunk, t);
    for (uint64_t half = 0; half < 2; half++) {
      ASSERT_TRUE(device->ReadSync(static_cast<uint64_t>(t) * 2 * kChunk + half * kChunk, got.get(), kChunk).ok());
      EXPECT_EQ(std::memcmp(got.get(), expect.get(), kChunk), 0) << "thread " << t << " half " << half;
    }
  }
  EXPECT_EQ(device->stats().writes, 2u * kThreads);
}

// tmpfs refused O_DIRECT before Linux 6.6; either way the device must work
// there with direct=true, and a buffered open must see the same bytes.
TEST(FileDeviceTest, DirectIoOnTmpfsWorksOrFallsBack) {
  if (!std::filesystem::is_directory("/dev/shm")) GTEST_SKIP() << "no /dev/shm";
  TempDir dir("/dev/shm");
  AlignedBuffer out = AllocateAligned(32768);
  AlignedBuffer in = AllocateAligned(32768);
  Fill(out.get(), 32768, 5);
  {
    auto device = Open(dir.File("dev"), kMiB, /*direct=*/true);
    ASSERT_NE(device, nullptr);
    ASSERT_TRUE(device->WriteSync(4096, out.get(), 16384).ok());
    auto queue = device->CreateQueue(8);
    std::vector<IoRequest> reqs{IoRequest{IoOp::kWrite, 20480, 16384, out.get() + 16384}, IoRequest{IoOp::kFlush}};
    for (const Completion& c : RunAll(*queue, reqs)) EXPECT_EQ(c.result, 0);
    std::vector<IoRequest> read{IoRequest{IoOp::kRead, 4096, 32768, in.get()}};
    EXPECT_EQ(RunAll(*queue, read)[0].result, 0);
    EXPECT_EQ(std::memcmp(in.get(), out.get(), 32768), 0);
  }
  std::memset(in.get(), 0, 32768);
  auto buffered = Open(dir.File("dev"), 0, /*direct=*/false);
  ASSERT_NE(buffered, nullptr);
  ASSERT_TRUE(buffered->ReadSync(4096, in.get(), 32768).ok());
  EXPECT_EQ(std::memcmp(in.get(), out.get(), 32768), 0);
}

}  // namespace
}  // namespace edgestor

namespace edgestor {
namespace {

// Another thread finishes work for a queue (a group commit): its callback
// runs on the queue's thread, and a Poll waiting for the device, or for
// nothing else, wakes for it.
void ExpectForeignCompletionsWakePoll(Device& device) {
  auto queue = device.CreateQueue(8);
  for (bool with_device_io : {false, true}) {
    Completion foreign, read;
    IoRequest foreign_req;
    foreign_req.done = RecordCompletion;
    foreign_req.context = &foreign;
    queue->ExpectForeign(&foreign_req);
    EXPECT_EQ(queue->InFlight(), 1u);
    AlignedBuffer buf = AllocateAligned(4096);
    IoRequest read_req{IoOp::kRead, 0, 4096, buf.get(), RecordCompletion, &read};
    if (with_device_io) queue->Submit(&read_req);
    std::thread poster([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      queue->PostForeign(&foreign_req, -EIO);
    });
    while (foreign.calls == 0) queue->Poll(/*wait=*/true);
    poster.join();
    EXPECT_EQ(foreign.calls, 1);
    EXPECT_EQ(foreign.result, -EIO);
    while (queue->InFlight() > 0) queue->Poll(/*wait=*/true);
    EXPECT_EQ(read.calls, with_device_io ? 1 : 0);
  }
}

TEST(FileDeviceTest, ForeignCompletionsRunOnTheQueueThread) {
  TempDir dir("/var/tmp");
  auto device = Open(dir.File("foreign"), 4 * kMiB);
  ASSERT_NE(device, nullptr);
  ExpectForeignCompletionsWakePoll(*device);
  FaultDevice memory(4 * kMiB);
  ExpectForeignCompletionsWakePoll(memory);
}

// A watched fd ends a wait for the device or for foreign work: a front-end
// waiting on its queue wakes for its client. The wait is one-shot.
void ExpectWatchedFdEndsAWait(Device& device) {
  auto queue = device.CreateQueue(8);
  int pipe_fds[2];
  ASSERT_EQ(::pipe(pipe_fds), 0);
  Completion foreign;
  IoRequest foreign_req;
  foreign_req.done = RecordCompletion;
  foreign_req.context = &foreign;
  queue->ExpectForeign(&foreign_req);  // keeps the queue waiting until posted
  std::thread writer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    char byte = 1;
    EXPECT_EQ(::write(pipe_fds[1], &byte, 1), 1);
  });
  auto start = std::chrono::steady_clock::now();
  int ran = 0;
  while (ran == 0) {
    queue->WatchFd(pipe_fds[0], POLLIN);
    ran = queue->Poll(/*wait=*/true);
  }
  writer.join();
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(40));
  EXPECT_EQ(foreign.calls, 0);  // the fd woke it, not the foreign work
  queue->PostForeign(&foreign_req, 0);
  while (foreign.calls == 0) queue->Poll(/*wait=*/true);  // no watch now: waits for the post
  EXPECT_EQ(foreign.result, 0);
  ::close(pipe_fds[0]);
  ::close(pipe_fds[1]);
}

TEST(FileDeviceTest, WatchedFdEndsAWait) {
  TempDir dir("/var/tmp");
  auto device = Open(dir.File("watch"), 4 * kMiB);
  ASSERT_NE(device, nullptr);
  ExpectWatchedFdEndsAWait(*device);
  FaultDevice memory(4 * kMiB);
  ExpectWatchedFdEndsAWait(memory);
}

}  // namespace
}  // namespace edgestor
