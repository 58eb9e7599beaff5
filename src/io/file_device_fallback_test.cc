// The fallbacks of FileDevice, forced with a seccomp filter in a child
// process: O_DIRECT refused at open (as by tmpfs before Linux 6.6) and
// io_uring refused (as by container runtimes' default seccomp profiles).
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>

#include <gtest/gtest.h>

#include "io/device.h"

namespace edgestor {
namespace {

#if defined(__x86_64__)
constexpr uint32_t kAuditArch = AUDIT_ARCH_X86_64;
#elif defined(__aarch64__)
constexpr uint32_t kAuditArch = AUDIT_ARCH_AARCH64;
#else
constexpr uint32_t kAuditArch = 0;
#endif

// Makes io_uring_setup fail with ENOSYS and openat with O_DIRECT fail with
// EINVAL, for this process only. Returns false if the filter is refused.
bool RefuseDirectIoAndUring() {
  sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, kAuditArch, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_openat, 0, 3),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, args[2])),  // low word of flags
      BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, O_DIRECT, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EINVAL),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  sock_fprog program{static_cast<unsigned short>(sizeof(filter) / sizeof(filter[0])), filter};
  return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 && prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program) == 0;
}

void Check(bool ok, int step) {
  if (!ok) _exit(step);
}

void OnDone(IoRequest* req, int result) { *static_cast<int*>(req->context) = result; }

// Runs in the child; exits with 0 on success, else the number of the
// failed step.
[[noreturn]] void ExerciseFallbacks(const std::string& path) {
  Check(RefuseDirectIoAndUring(), 10);
  FileDeviceOptions options;
  options.create = true;
  options.create_size = 1 << 20;
  options.direct = true;
  auto device = OpenFileDevice(path, options);
  Check(device.ok(), 11);

  AlignedBuffer out = AllocateAligned(8192);
  AlignedBuffer in = AllocateAligned(8192);
  for (int i = 0; i < 8192; i++) out[i] = static_cast<uint8_t>(i * 7 + 3);
  Check((*device)->WriteSync(0, out.get(), 4096).ok(), 12);

  auto queue = (*device)->CreateQueue(8);
  int results[4] = {1, 1, 1, 1};
  IoRequest reqs[4] = {
      {IoOp::kWrite, 4096, 4096, out.get() + 4096, OnDone, &results[0]},
      {IoOp::kFlush, 0, 0, nullptr, OnDone, &results[1]},
      {IoOp::kRead, 0, 8192, in.get(), OnDone, &results[2]},
      {IoOp::kRead, 1 << 20, 4096, in.get(), OnDone, &results[3]},  // past the end
  };
  for (IoRequest& r : reqs) queue->Submit(&r);
  Check(queue->InFlight() == 4 && results[3] == 1, 13);  // nothing completes in Submit
  int completed = 0;
  while (queue->InFlight() > 0) completed += queue->Poll(true);
  Check(completed == 4, 14);
  Check(results[0] == 0 && results[1] == 0 && results[2] == 0 && results[3] == -EINVAL, 15);
  Check(std::memcmp(in.get(), out.get(), 8192) == 0, 16);
  Check((*device)->stats().bytes_written == 8192 && (*device)->stats().flushes == 1, 17);
  _exit(0);
}

TEST(FileDeviceFallbackTest, WorksWithoutODirectAndWithoutIoUring) {
  if (kAuditArch == 0) GTEST_SKIP() << "seccomp filter written for x86-64 and arm64 only";
  char dir[] = "/tmp/edgestor-io-fallback-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  std::string path = std::string(dir) + "/dev";
  EXPECT_EXIT(ExerciseFallbacks(path), testing::ExitedWithCode(0), "");
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace edgestor
