// Recovery from torn metadata writes, and bad pools that must be refused
// without changing a byte.
#include <gtest/gtest.h>

#include <cstring>

#include "io/borrowed_device.h"
#include "pool/format.h"
#include "volume/testing/test_pool.h"

namespace edgestor {
namespace {

using testing::TestPool;

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kDevice = 16 * kMiB;

std::vector<uint8_t> Pattern(size_t len, uint8_t seed) {
  std::vector<uint8_t> out(len);
  for (size_t i = 0; i < len; i++) out[i] = static_cast<uint8_t>(seed * 31 + i * 13 + i / 4096);
  return out;
}

void Scribble(FaultDevice& device, uint64_t block, uint8_t value) {
  AlignedBuffer buf = AllocateAligned(format::kBlockSize);
  std::memset(buf.get(), value, format::kBlockSize);
  ASSERT_TRUE(device.WriteSync(block * format::kBlockSize, buf.get(), format::kBlockSize).ok());
  ASSERT_TRUE(device.FlushSync().ok());
}

// Opening must fail with `code` and leave every byte as it was.
void ExpectRefusedUnchanged(FaultDevice& device, int code, const std::string& message_part) {
  std::vector<uint8_t> before = device.durable_image();
  auto set = VolumeSet::Open(Borrow(device));
  ASSERT_FALSE(set.ok());
  EXPECT_EQ(set.status().code(), code) << set.status().ToString();
  EXPECT_NE(set.status().message().find(message_part), std::string::npos) << set.status().message();
  EXPECT_TRUE(device.durable_image() == before);
}

// A control operation is a checkpoint: flush, pages, chain, flush, two
// rounds of labels. Cut it at every device operation, tearing what was in
// flight, and check the pool always reopens with either the old or the new
// state and the flushed data intact.
TEST(Recovery, CheckpointCutAtEveryOperationLeavesAConsistentPool) {
  for (int64_t cut = 0; cut < 40; cut++) {
    for (uint64_t seed = 0; seed < 8; seed++) {
      TestPool pool(kDevice);
      Volume* keep = pool.set().CreateVolume("keep", 2 * kMiB).value();
      ASSERT_TRUE(pool.Write(*keep, 0, Pattern(256 * 1024, 1)).ok());
      ASSERT_TRUE(pool.Flush(*keep).ok());
      ASSERT_TRUE(pool.Write(*keep, 512 * 1024, Pattern(64 * 1024, 2)).ok());  // dirty pages, unflushed
      pool.device().FailAfter(cut);
      Status s = pool.set().CreateVolume("new", kMiB).status();
      std::mt19937_64 rng(seed * 1000 + cut);
      ASSERT_TRUE(pool.CrashAndReopen(rng, /*tear_probability=*/1.0).ok()) << "cut " << cut;
      auto report = CheckPool(pool.device());
      ASSERT_TRUE(report.ok() && report->ok()) << "cut " << cut;
      if (s.ok()) {
        EXPECT_TRUE(pool.Find("new")) << "a completed create was lost at cut " << cut;
      }
      EXPECT_EQ(pool.Read(*pool.Find("keep"), 0, 256 * 1024).value(), Pattern(256 * 1024, 1)) << "cut " << cut;
    }
  }
}

TEST(Recovery, TwoDamagedLabelCopiesAreSurvived) {
  TestPool pool(kDevice);
  ASSERT_TRUE(pool.set().CreateVolume("v", kMiB).ok());
  ASSERT_TRUE(pool.set().Close().ok());
  Scribble(pool.device(), 0, 0xAA);
  Scribble(pool.device(), kDevice / format::kBlockSize - 1, 0x55);
  ASSERT_TRUE(pool.Reopen().ok());
  EXPECT_TRUE(pool.Find("v"));
}

TEST(Recovery, AllLabelsDamagedIsRefusedWithoutWriting) {
  TestPool pool(kDevice);
  ASSERT_TRUE(pool.set().Close().ok());
  uint64_t last = kDevice / format::kBlockSize - 1;
  for (uint64_t block : {uint64_t{0}, uint64_t{1}, last - 1, last}) Scribble(pool.device(), block, 0);
  // Zeroed labels: no magic anywhere, so it no longer looks like a pool.
  ExpectRefusedUnchanged(pool.device(), EINVAL, "not an edgestor pool");
  // Corrupt (not erased) labels: magic present, checksum wrong.
  TestPool other(kDevice);
  ASSERT_TRUE(other.set().Close().ok());
  for (uint64_t block : {uint64_t{0}, uint64_t{1}, last - 1, last}) {
    AlignedBuffer buf = AllocateAligned(format::kBlockSize);
    ASSERT_TRUE(other.device().ReadSync(block * format::kBlockSize, buf.get(), format::kBlockSize).ok());
    buf[100] ^= 0xff;
    ASSERT_TRUE(other.device().WriteSync(block * format::kBlockSize, buf.get(), format::kBlockSize).ok());
  }
  ASSERT_TRUE(other.device().FlushSync().ok());
  ExpectRefusedUnchanged(other.device(), EUCLEAN, "damaged");
}

TEST(Recovery, DeviceThatIsNotAPoolIsRefused) {
  FaultDevice device(kDevice);
  std::mt19937_64 rng(7);
  for (auto& byte : device.durable_image()) byte = static_cast<uint8_t>(rng());
  ExpectRefusedUnchanged(device, EINVAL, "not an edgestor pool");
}

TEST(Recovery, TooSmallDeviceIsRefusedAtCreate) {
  FaultDevice device(512 * 1024);
  auto set = VolumeSet::Create(Borrow(device), {});
  ASSERT_FALSE(set.ok());
  EXPECT_EQ(set.status().code(), EINVAL);
  EXPECT_NE(set.status().message().find("too small"), std::string::npos);
}

TEST(Recovery, CreateOnAnExistingPoolIsRefusedUnchanged) {
  TestPool pool(kDevice);
  ASSERT_TRUE(pool.set().CreateVolume("v", kMiB).ok());
  ASSERT_TRUE(pool.set().Close().ok());
  std::vector<uint8_t> before = pool.device().durable_image();
  auto again = VolumeSet::Create(Borrow(pool.device()), {});
  EXPECT_EQ(again.status().code(), EEXIST);
  EXPECT_TRUE(pool.device().durable_image() == before);
}

TEST(Recovery, PoolOnATruncatedDeviceIsRefused) {
  TestPool pool(kDevice);
  ASSERT_TRUE(pool.set().Close().ok());
  FaultDevice truncated(kDevice / 2);
  std::copy(pool.device().durable_image().begin(), pool.device().durable_image().begin() + kDevice / 2,
            truncated.durable_image().begin());
  ExpectRefusedUnchanged(truncated, EINVAL, "truncated");
}

TEST(Recovery, DamagedMapPageIsDetectedNotTrusted) {
  TestPool pool(kDevice);
  Volume* v = pool.set().CreateVolume("v", 4 * kMiB).value();
  ASSERT_TRUE(pool.Write(*v, 0, Pattern(64 * 1024, 3)).ok());
  ASSERT_TRUE(pool.set().Close().ok());
  // Map pages are the only metadata blocks carrying the page magic.
  const auto& image = pool.device().durable_image();
  uint64_t page_block = 0;
  for (uint64_t b = 0; b < kDevice / format::kBlockSize; b++) {
    uint32_t magic;
    std::memcpy(&magic, image.data() + b * format::kBlockSize, 4);
    if (magic == format::kMapPageMagic) page_block = b;
  }
  ASSERT_NE(page_block, 0u);
  AlignedBuffer buf = AllocateAligned(format::kBlockSize);
  std::memcpy(buf.get(), image.data() + page_block * format::kBlockSize, format::kBlockSize);
  buf[64] ^= 1;
  ASSERT_TRUE(pool.device().WriteSync(page_block * format::kBlockSize, buf.get(), format::kBlockSize).ok());
  ASSERT_TRUE(pool.device().FlushSync().ok());
  ExpectRefusedUnchanged(pool.device(), EUCLEAN, "map page");
  auto report = CheckPool(pool.device());
  ASSERT_TRUE(report.ok());
  ASSERT_FALSE(report->ok());
  EXPECT_NE(report->problems[0].find("damaged"), std::string::npos) << report->problems[0];
}

}  // namespace
}  // namespace edgestor
