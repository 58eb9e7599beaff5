#include "codec/compressor.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <random>
#include <string>
#include <vector>

namespace edgestor {
namespace {

using Bytes = std::vector<uint8_t>;
constexpr size_t kCluster = 64 * 1024;

// Log-file-like text: compresses well, but not trivially.
Bytes TextLike(size_t size, uint64_t seed) {
  static const char* const kWords[] = {"volume", "cluster", "write", "flush", "snapshot", "error",
                                       "ok",     "pool",    "sector", "the",  "of",       "and"};
  std::mt19937_64 rng(seed);
  std::string text;
  while (text.size() < size) {
    text += std::to_string(rng() % 100000) + " ";
    for (int i = 0; i < 8; i++) text += std::string(kWords[rng() % 12]) + " ";
    text += "\n";
  }
  return Bytes(text.begin(), text.begin() + static_cast<ptrdiff_t>(size));
}

Bytes Random(size_t size, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Bytes out(size);
  for (auto& b : out) b = static_cast<uint8_t>(rng());
  return out;
}

class CompressorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto made = Compressor::Create();
    ASSERT_TRUE(made.ok());
    c_ = std::move(made).value();
  }
  // Compresses a cluster and returns the frame padded with zeros to whole
  // sectors, as it would be read back from disk.
  Bytes Frame(Compression algorithm, int level, const Bytes& cluster) {
    Bytes out(cluster.size(), 0);
    auto size = c_->Compress(algorithm, level, cluster, out);
    EXPECT_TRUE(size.ok()) << size.status().ToString();
    if (!size.ok()) return {};
    out.resize((*size + kCompressionSector - 1) / kCompressionSector * kCompressionSector);
    return out;
  }
  std::unique_ptr<Compressor> c_;
};

TEST(ParseCompression, AcceptsTheDocumentedForms) {
  struct Case {
    const char* text;
    Compression algorithm;
    int level;
  };
  for (const Case& c : {Case{"off", Compression::kOff, 0}, Case{"lz4", Compression::kLz4, 0},
                        Case{"zstd", Compression::kZstd, kZstdDefaultLevel}, Case{"zstd:1", Compression::kZstd, 1},
                        Case{"zstd:19", Compression::kZstd, 19}}) {
    auto s = ParseCompression(c.text);
    ASSERT_TRUE(s.ok()) << c.text;
    EXPECT_EQ(s->algorithm, c.algorithm);
    EXPECT_EQ(s->level, c.level);
  }
  EXPECT_EQ(FormatCompression(*ParseCompression("zstd")), "zstd:3");
  EXPECT_EQ(FormatCompression(*ParseCompression("lz4")), "lz4");
  EXPECT_EQ(FormatCompression(*ParseCompression("off")), "off");
}

TEST(ParseCompression, RefusesEverythingElse) {
  for (const char* text : {"", "LZ4", "gzip", "zstd:", "zstd:0", "zstd:20", "zstd:3x", "zstd:-1", "zstd: 3",
                           "lz4:1", "off "}) {
    auto s = ParseCompression(text);
    ASSERT_FALSE(s.ok()) << text;
    EXPECT_EQ(s.status().code(), EINVAL);
    EXPECT_NE(s.status().message().find("zstd:"), std::string::npos) << s.status().message();
  }
}

TEST_F(CompressorTest, PartialDecodeGivesTheRequestedPrefix) {
  const Bytes cluster = TextLike(kCluster, 4);
  for (Compression algorithm : {Compression::kLz4, Compression::kZstd}) {
    Bytes frame = Frame(algorithm, algorithm == Compression::kZstd ? 3 : 0, cluster);
    ASSERT_FALSE(frame.empty());
    for (size_t needed : {size_t{1}, size_t{4096}, size_t{12288}, kCluster - 1, kCluster}) {
      Bytes back(kCluster, 0xee);
      ASSERT_TRUE(c_->Decompress(algorithm, frame, back, needed).ok()) << needed;
      EXPECT_TRUE(std::equal(back.begin(), back.begin() + needed, cluster.begin())) << needed;
    }
    Bytes back(kCluster);
    EXPECT_EQ(c_->Decompress(algorithm, frame, back, kCluster + 1).code(), EINVAL);
    // A frame cut short cannot give a prefix it does not hold.
    Bytes cut(frame.begin(), frame.begin() + frame.size() / 2);
    EXPECT_EQ(c_->Decompress(algorithm, cut, back, kCluster - 1).code(), EUCLEAN);
  }
}

TEST_F(CompressorTest, TextRoundTripsWithBothAlgorithms) {
  const Bytes cluster = TextLike(kCluster, 1);
  for (auto [algorithm, level] : {std::pair{Compression::kLz4, 0}, std::pair{Compression::kZstd, 1},
                                  std::pair{Compression::kZstd, 3}, std::pair{Compression::kZstd, 19}}) {
    SCOPED_TRACE(level);
    Bytes frame = Frame(algorithm, level, cluster);
    ASSERT_FALSE(frame.empty());
    EXPECT_LE(frame.size(), kCluster / 2);  // text compresses at least 2:1
    EXPECT_EQ(frame[4], static_cast<uint8_t>(algorithm));
    Bytes back(kCluster);
    ASSERT_TRUE(c_->Decompress(algorithm, frame, back).ok());
    EXPECT_EQ(back, cluster);
  }
}

TEST_F(CompressorTest, RandomDataDoesNotFit) {
  const Bytes cluster = Random(kCluster, 2);
  Bytes out(kCluster);
  EXPECT_EQ(c_->Compress(Compression::kLz4, 0, cluster, out).status().code(), ENOSPC);
  EXPECT_EQ(c_->Compress(Compression::kZstd, 3, cluster, out).status().code(), ENOSPC);
  EXPECT_EQ(c_->Compress(Compression::kOff, 0, TextLike(kCluster, 3), out).status().code(), ENOSPC);
}

TEST_F(CompressorTest, MustSaveAWholeSector) {
  Bytes out(kCluster);
  // A 4 KiB cluster can never save a sector, however well it compresses.
  EXPECT_EQ(c_->Compress(Compression::kZstd, 3, Bytes(4096, 0), out).status().code(), ENOSPC);
  // Half random, half zeros: saves sectors, and the frame ends well inside.
  Bytes half = Random(kCluster / 2, 4);
  half.resize(kCluster, 0);
  auto size = c_->Compress(Compression::kLz4, 0, half, out);
  ASSERT_TRUE(size.ok());
  EXPECT_LE(*size, kCluster - kCompressionSector);
  // An output buffer too small for the frame.
  Bytes tiny(1000);
  EXPECT_EQ(c_->Compress(Compression::kZstd, 3, half, tiny).status().code(), ENOSPC);
  EXPECT_EQ(c_->Compress(Compression::kLz4, 0, half, tiny).status().code(), ENOSPC);
}

TEST_F(CompressorTest, IgnoresWhatFollowsTheFrame) {
  const Bytes cluster = TextLike(kCluster, 5);
  for (Compression algorithm : {Compression::kLz4, Compression::kZstd}) {
    Bytes out = Random(kCluster, 6);
    auto size = c_->Compress(algorithm, 3, cluster, out);
    ASSERT_TRUE(size.ok());
    Bytes back(kCluster);
    ASSERT_TRUE(c_->Decompress(algorithm, out, back).ok());  // trailing bytes: whatever was there
    EXPECT_EQ(back, cluster);
  }
}

TEST_F(CompressorTest, RefusesBadArguments) {
  Bytes out(kCluster);
  EXPECT_EQ(c_->Compress(Compression::kZstd, 0, TextLike(kCluster, 6), out).status().code(), EINVAL);
  EXPECT_EQ(c_->Compress(Compression::kZstd, 20, TextLike(kCluster, 6), out).status().code(), EINVAL);
  EXPECT_EQ(c_->Compress(Compression::kZstd, 20, Bytes(4096), out).status().code(), EINVAL);  // before ENOSPC
  EXPECT_EQ(c_->Compress(static_cast<Compression>(7), 0, TextLike(kCluster, 6), out).status().code(), EINVAL);
  EXPECT_EQ(c_->Compress(Compression::kLz4, 0, Bytes(), out).status().code(), EINVAL);
  EXPECT_EQ(c_->Compress(Compression::kLz4, 0, Bytes(kMaxCompressionInput + 1), out).status().code(), EINVAL);
  Bytes frame = Frame(Compression::kLz4, 0, TextLike(kCluster, 6));
  EXPECT_EQ(c_->Decompress(Compression::kOff, frame, out).code(), EINVAL);
}

TEST_F(CompressorTest, DecompressNeedsTheExactSize) {
  const Bytes cluster = TextLike(kCluster, 7);
  for (Compression algorithm : {Compression::kLz4, Compression::kZstd}) {
    Bytes frame = Frame(algorithm, 3, cluster);
    Bytes smaller(kCluster - 4096), larger(kCluster + 4096);
    EXPECT_EQ(c_->Decompress(algorithm, frame, smaller).code(), EUCLEAN);
    EXPECT_EQ(c_->Decompress(algorithm, frame, larger).code(), EUCLEAN);
  }
}

TEST_F(CompressorTest, WrongAlgorithmIsDamage) {
  const Bytes cluster = TextLike(kCluster, 8);
  Bytes out(kCluster);
  EXPECT_EQ(c_->Decompress(Compression::kZstd, Frame(Compression::kLz4, 0, cluster), out).code(), EUCLEAN);
  EXPECT_EQ(c_->Decompress(Compression::kLz4, Frame(Compression::kZstd, 3, cluster), out).code(), EUCLEAN);
}

TEST_F(CompressorTest, TruncatedFramesAreDamage) {
  const Bytes cluster = TextLike(kCluster, 9);
  Bytes out(kCluster);
  for (Compression algorithm : {Compression::kLz4, Compression::kZstd}) {
    const Bytes frame = Frame(algorithm, 3, cluster);
    size_t payload = frame[0] | frame[1] << 8 | frame[2] << 16;
    for (size_t cut : {size_t{0}, size_t{3}, size_t{8}, size_t{9}, payload / 2, payload + 7}) {
      Bytes cut_frame(frame.begin(), frame.begin() + static_cast<ptrdiff_t>(cut));
      EXPECT_EQ(c_->Decompress(algorithm, cut_frame, out).code(), EUCLEAN) << cut;
    }
    // A header that claims a shorter payload than was written.
    Bytes shorter = frame;
    shorter[0] = static_cast<uint8_t>(shorter[0] - 1);
    if (shorter[0] == 0xff) shorter[1]--;
    EXPECT_EQ(c_->Decompress(algorithm, shorter, out).code(), EUCLEAN);
    // Non-zero reserved header bytes.
    Bytes reserved = frame;
    reserved[6] = 1;
    EXPECT_EQ(c_->Decompress(algorithm, reserved, out).code(), EUCLEAN);
  }
}

TEST_F(CompressorTest, GarbageIsDamageNeverACrash) {
  Bytes out(kCluster);
  for (Compression algorithm : {Compression::kLz4, Compression::kZstd}) {
    EXPECT_EQ(c_->Decompress(algorithm, Bytes(kCluster, 0), out).code(), EUCLEAN);
    EXPECT_EQ(c_->Decompress(algorithm, Random(kCluster, 10), out).code(), EUCLEAN);
    // A valid header in front of random bytes.
    Bytes fake = Random(8192, 11);
    fake[0] = 0;
    fake[1] = 0x1f;  // payload 7936 bytes
    fake[2] = fake[3] = 0;
    fake[4] = static_cast<uint8_t>(algorithm);
    fake[5] = fake[6] = fake[7] = 0;
    EXPECT_EQ(c_->Decompress(algorithm, fake, out).code(), EUCLEAN);
  }
  // Bit flips in valid frames: each one either fails cleanly or decodes to
  // some 64 KiB (the frame has no checksum of its own).
  const Bytes cluster = TextLike(kCluster, 12);
  std::mt19937_64 rng(13);
  for (Compression algorithm : {Compression::kLz4, Compression::kZstd}) {
    const Bytes frame = Frame(algorithm, 3, cluster);
    for (int i = 0; i < 300; i++) {
      Bytes bad = frame;
      bad[8 + rng() % (bad.size() - 8)] ^= static_cast<uint8_t>(1 << (rng() % 8));
      Status s = c_->Decompress(algorithm, bad, out);
      EXPECT_TRUE(s.ok() || s.code() == EUCLEAN) << s.ToString();
    }
  }
}

TEST_F(CompressorTest, ReusesItsContextsAcrossCalls) {
  for (int i = 0; i < 20; i++) {
    const Bytes cluster = TextLike(kCluster, 100 + i);
    Compression algorithm = i % 2 ? Compression::kZstd : Compression::kLz4;
    Bytes frame = Frame(algorithm, 1 + i % kZstdMaxLevel, cluster);
    Bytes back(kCluster);
    ASSERT_TRUE(c_->Decompress(algorithm, frame, back).ok());
    ASSERT_EQ(back, cluster);
    // A failure in between leaves the contexts usable.
    Bytes out(kCluster);
    EXPECT_EQ(c_->Decompress(algorithm, Random(4096, i), out).code(), EUCLEAN);
  }
}

}  // namespace
}  // namespace edgestor
