// Encrypted and compressed volumes: what reaches the device, the key
// hierarchy (unlock, wrong key, rekey) and space accounting.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <random>
#include <thread>
#include <cstring>
#include <string>

#include "io/borrowed_device.h"
#include "pool/pool.h"
#include "volume/checkpoint_codec.h"
#include "volume/testing/test_pool.h"

namespace edgestor {
namespace {

using testing::KeyFileSecret;
using testing::OpenWith;
using testing::TestPool;

constexpr uint64_t kMiB = 1 << 20;

PoolSecret PassphraseSecret(const std::string& passphrase) {
  PoolSecret secret;
  secret.passphrase = passphrase;
  return secret;
}

PoolCreateOptions EncryptedPool(PoolSecret secret) {
  PoolCreateOptions options;
  options.secret = std::move(secret);
  options.kdf.n = kScryptMinN;  // fast in tests; the default is 2^15
  return options;
}

// A recognizable plaintext: a phrase repeated, so any 16-byte window of it
// would show up in a scan.
std::vector<uint8_t> SecretText(size_t len) {
  static const std::string kPhrase = "TOP-SECRET customer record 0042; ";
  std::vector<uint8_t> out(len);
  for (size_t i = 0; i < len; i++) out[i] = static_cast<uint8_t>(kPhrase[i % kPhrase.size()]);
  return out;
}

std::vector<uint8_t> RandomBytes(size_t len, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> out(len);
  for (auto& b : out) b = static_cast<uint8_t>(rng());
  return out;
}

bool Contains(const std::vector<uint8_t>& haystack, std::span<const uint8_t> needle) {
  return std::search(haystack.begin(), haystack.end(), needle.begin(), needle.end()) != haystack.end();
}

// The data key of `volume`, recovered the way an attacker with the pool key
// would: read the checkpoint, unwrap. Lets the test scan for the key itself.
DataKey DataKeyOf(FaultDevice& device, const std::string& volume, const PoolKey& pool_key) {
  auto pool = Pool::Open(Borrow(device));
  EXPECT_TRUE(pool.ok());
  auto payload = (*pool)->ReadCheckpointPayload();
  EXPECT_TRUE(payload.ok());
  auto contents = ParseCheckpoint(*payload, (*pool)->format_version(), (*pool)->geometry().cluster_size,
                                  (*pool)->total_blocks());
  EXPECT_TRUE(contents.ok());
  for (const VolumeRecord& v : contents->volumes) {
    if (v.name != volume) continue;
    EXPECT_EQ(v.attributes.encrypted, 1);
    auto key = UnwrapDataKey(pool_key, v.attributes.wrapped_key);
    EXPECT_TRUE(key.ok());
    return std::move(key).value();
  }
  ADD_FAILURE() << "no volume " << volume;
  return DataKey();
}

TEST(EncryptedVolume, PlaintextAndDataKeyNeverReachTheDevice) {
  for (bool compress : {false, true}) {
    SCOPED_TRACE(compress ? "compressed" : "not compressed");
    TestPool pool(64 * kMiB, EncryptedPool(KeyFileSecret(1)), OpenWith(KeyFileSecret(1)));
    VolumeCreateOptions options{.encrypt = true};
    if (compress) options.compression = CompressionSetting{Compression::kZstd, 3};
    Volume* v = pool.set().CreateVolume("secret", 16 * kMiB, options).value();
    auto text = SecretText(1 * kMiB);
    ASSERT_TRUE(pool.Write(*v, 0, text).ok());
    // Unaligned and partial writes take the other path; cover them too.
    auto tail = SecretText(3 * 512);
    auto buf = AllocateAligned(tail.size());
    std::memcpy(buf.get(), tail.data(), tail.size());
    ASSERT_TRUE(pool.Io(*v, VolumeOp::kWrite, 5 * kMiB + 512, tail.size(), buf.get()).ok());
    ASSERT_TRUE(pool.Close().ok());

    std::vector<uint8_t> image = pool.device().durable_image();
    EXPECT_FALSE(Contains(image, std::span(text.data(), 16))) << "plaintext found on the device";
    EXPECT_FALSE(Contains(image, std::span(text.data() + 1000, 16)));
    DataKey key = DataKeyOf(pool.device(), "secret", *KeyFileSecret(1).key);
    EXPECT_FALSE(Contains(image, std::span(key.data(), 16))) << "data key found on the device";
    EXPECT_FALSE(Contains(image, std::span(key.data() + 32, 16)));
    EXPECT_FALSE(Contains(image, std::span(KeyFileSecret(1).key->data(), 16))) << "pool key found on the device";

    // The right key reads it back after a restart.
    ASSERT_TRUE(pool.Reopen().ok());
    v = pool.Find("secret");
    auto back = pool.Read(*v, 0, text.size());
    ASSERT_TRUE(back.ok()) << back.status().ToString();
    EXPECT_EQ(back.value(), text);
    auto back_tail = pool.Read(*v, 5 * kMiB + 512, tail.size());
    ASSERT_TRUE(back_tail.ok());
    EXPECT_EQ(back_tail.value(), tail);
  }
}

TEST(EncryptedVolume, WrongKeyIsRefusedAndChangesNothing) {
  TestPool pool(64 * kMiB, EncryptedPool(KeyFileSecret(1)), OpenWith(KeyFileSecret(1)));
  Volume* v = pool.set().CreateVolume("secret", 4 * kMiB, {.encrypt = true}).value();
  ASSERT_TRUE(pool.Write(*v, 0, SecretText(65536)).ok());
  ASSERT_TRUE(pool.Close().ok());
  std::vector<uint8_t> before = pool.device().durable_image();

  auto opened = VolumeSet::Open(Borrow(pool.device()), OpenWith(KeyFileSecret(2)));
  ASSERT_FALSE(opened.ok());
  EXPECT_EQ(opened.status().code(), EACCES);
  EXPECT_NE(opened.status().message().find("wrong key"), std::string::npos) << opened.status().message();
  // A passphrase for a key-file pool is the wrong kind of secret.
  opened = VolumeSet::Open(Borrow(pool.device()), OpenWith(PassphraseSecret("guess")));
  ASSERT_FALSE(opened.ok());
  EXPECT_EQ(opened.status().code(), EINVAL);
  EXPECT_TRUE(pool.device().durable_image() == before) << "a refused open wrote to the pool";
}

TEST(EncryptedVolume, LockedPoolRefusesEncryptedIoUntilUnlocked) {
  TestPool pool(64 * kMiB, EncryptedPool(KeyFileSecret(1)), OpenWith(KeyFileSecret(1)));
  Volume* secret = pool.set().CreateVolume("secret", 4 * kMiB, {.encrypt = true}).value();
  Volume* plain = pool.set().CreateVolume("plain", 4 * kMiB).value();
  auto text = SecretText(8192);
  ASSERT_TRUE(pool.Write(*secret, 0, text).ok());
  ASSERT_TRUE(pool.Write(*plain, 0, text).ok());
  ASSERT_TRUE(pool.CloseAndReopenWith({}).ok());  // no key: opens locked

  EXPECT_TRUE(pool.set().Info().locked);
  EXPECT_TRUE(pool.set().GetVolumeInfo("secret")->locked);
  auto refused = pool.Read(*pool.Find("secret"), 0, 4096);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), EACCES);
  EXPECT_EQ(pool.set().CreateVolume("another", kMiB, {.encrypt = true}).status().code(), EACCES);
  EXPECT_EQ(pool.Read(*pool.Find("plain"), 0, 8192).value(), text);  // plain volumes work locked

  EXPECT_EQ(pool.set().Unlock(KeyFileSecret(9)).code(), EACCES);
  ASSERT_TRUE(pool.set().Unlock(KeyFileSecret(1)).ok());
  EXPECT_FALSE(pool.set().Info().locked);
  EXPECT_EQ(pool.Read(*pool.Find("secret"), 0, 8192).value(), text);
}

TEST(EncryptedVolume, PassphrasePoolUnlocksOnlyWithItsPassphrase) {
  TestPool pool(64 * kMiB, EncryptedPool(PassphraseSecret("correct horse")), OpenWith(PassphraseSecret("correct horse")));
  Volume* v = pool.set().CreateVolume("secret", 4 * kMiB, {.encrypt = true}).value();
  auto text = SecretText(65536);
  ASSERT_TRUE(pool.Write(*v, 0, text).ok());
  EXPECT_EQ(pool.set().Info().key_source, "passphrase");
  ASSERT_TRUE(pool.Close().ok());
  auto wrong = VolumeSet::Open(Borrow(pool.device()), OpenWith(PassphraseSecret("correct horse ")));
  EXPECT_EQ(wrong.status().code(), EACCES);
  ASSERT_TRUE(pool.Reopen().ok());
  EXPECT_EQ(pool.Read(*pool.Find("secret"), 0, text.size()).value(), text);
}

TEST(EncryptedVolume, RekeyRewrapsWithoutRewritingData) {
  TestPool pool(64 * kMiB, EncryptedPool(KeyFileSecret(1)), OpenWith(KeyFileSecret(1)));
  Volume* v = pool.set().CreateVolume("secret", 8 * kMiB, {.encrypt = true}).value();
  auto text = SecretText(4 * kMiB);
  ASSERT_TRUE(pool.Write(*v, 0, text).ok());
  ASSERT_TRUE(pool.set().Checkpoint().ok());
  std::vector<uint8_t> before = pool.device().durable_image();

  ASSERT_TRUE(pool.set().Rekey(PassphraseSecret("new passphrase"), ScryptParams{.n = kScryptMinN}).ok());
  std::vector<uint8_t> after = pool.device().durable_image();
  uint64_t changed_blocks = 0;
  for (size_t b = 0; b < before.size() / 4096; b++)
    changed_blocks += std::memcmp(before.data() + b * 4096, after.data() + b * 4096, 4096) != 0;
  // Labels (4) and the checkpoint chain; never the 4 MiB of data.
  EXPECT_LE(changed_blocks, 8u);

  ASSERT_TRUE(pool.CloseAndReopenWith(OpenWith(PassphraseSecret("new passphrase"))).ok());
  EXPECT_EQ(pool.Read(*pool.Find("secret"), 0, text.size()).value(), text);
  ASSERT_TRUE(pool.Close().ok());
  EXPECT_EQ(VolumeSet::Open(Borrow(pool.device()), OpenWith(KeyFileSecret(1))).status().code(), EINVAL);
}

TEST(EncryptedVolume, PoolWithoutKeyCannotEncryptUntilRekeyed) {
  TestPool pool(64 * kMiB);
  auto refused = pool.set().CreateVolume("secret", kMiB, {.encrypt = true});
  EXPECT_EQ(refused.status().code(), EINVAL);
  ASSERT_TRUE(pool.set().Rekey(KeyFileSecret(3)).ok());
  ASSERT_TRUE(pool.set().CreateVolume("secret", kMiB, {.encrypt = true}).ok());
  EXPECT_EQ(pool.set().Info().key_source, "key file");
}

TEST(CompressedVolume, StoresCompressibleDataInFewerBlocksAndReadsItBack) {
  TestPool pool(128 * kMiB);
  Volume* v = pool.set().CreateVolume("c", 32 * kMiB, {.compression = CompressionSetting{Compression::kZstd, 3}}).value();
  auto text = SecretText(8 * kMiB);
  auto noise = RandomBytes(2 * kMiB, 7);
  ASSERT_TRUE(pool.Write(*v, 0, text).ok());
  ASSERT_TRUE(pool.Write(*v, 16 * kMiB, noise).ok());
  auto info = pool.set().GetVolumeInfo("c").value();
  EXPECT_EQ(info.written_bytes, 10 * kMiB);
  EXPECT_EQ(info.compressed_clusters, 8 * kMiB / 65536);  // text compresses, noise does not
  EXPECT_LE(info.allocated_bytes, 2 * kMiB + kMiB / 2);   // text: one block per cluster
  ASSERT_TRUE(pool.CloseAndReopen().ok());
  v = pool.Find("c");
  EXPECT_EQ(pool.Read(*v, 0, text.size()).value(), text);
  EXPECT_EQ(pool.Read(*v, 16 * kMiB, noise.size()).value(), noise);
  // A 4 KiB read inside a compressed cluster.
  auto piece = pool.Read(*v, 65536 + 8192, 4096).value();
  EXPECT_TRUE(std::equal(piece.begin(), piece.end(), text.begin() + 65536 + 8192));
}

// Reads `name` whole, closes, reopens, reads it again, closes and runs
// fsck: the content must equal `expect` throughout and the pool be clean.
void ExpectSurvivesReopenAndFsck(TestPool& pool, const std::string& name, const std::vector<uint8_t>& expect) {
  EXPECT_EQ(pool.Read(*pool.Find(name), 0, expect.size()).value(), expect);
  ASSERT_TRUE(pool.CloseAndReopen().ok());
  EXPECT_EQ(pool.Read(*pool.Find(name), 0, expect.size()).value(), expect);
  ASSERT_TRUE(pool.Close().ok());
  auto report = CheckPool(pool.device());
  ASSERT_TRUE(report.ok() && report->ok());
}

// Waits up to 5 s for the background to have compressed a cluster of `name` again.
void WaitForRecompression(TestPool& pool, const std::string& name) {
  for (int i = 0; i < 500 && pool.set().GetVolumeInfo(name)->recompressed_clusters == 0; i++)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
}

// With hot_plain_clusters = 0 every partial write compresses the cluster
// again (the default leaves it plain: PartialWritesLeaveAClusterPlain...).
PoolOpenOptions AlwaysCompress() {
  PoolOpenOptions options;
  options.hot_plain_clusters = 0;
  return options;
}

PoolOpenOptions RecompressAfter(uint32_t idle_ms, uint64_t hot_plain_clusters = 65536) {
  PoolOpenOptions options;
  options.recompress_idle_ms = idle_ms;
  options.hot_plain_clusters = hot_plain_clusters;
  return options;
}

// Words drawn from a small vocabulary: compresses about 3:1, so a
// cluster's frame spans several blocks and ends inside one.
std::vector<uint8_t> WordText(size_t len, uint64_t seed) {
  static const char* kWords[] = {"pool ", "volume ", "cluster ", "frame ", "sector ", "journal ", "commit ",
                                 "snapshot ", "edge ", "packed ", "zstd ", "lz4 ", "block ", "map ", "page "};
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> out;
  out.reserve(len + 16);
  while (out.size() < len) {
    const char* word = kWords[rng() % std::size(kWords)];
    out.insert(out.end(), word, word + std::strlen(word));
    if (rng() % 7 == 0) out.push_back(static_cast<uint8_t>('0' + rng() % 10));
  }
  out.resize(len);
  return out;
}

// Frames of one request are laid back to back at 512-byte sectors; the
// pool's space follows the frames exactly as they are freed one by one,
// and a block two frames share is freed with the second.
TEST(CompressedVolume, FramesWrittenTogetherArePackedAndFreedSectorBySector) {
  TestPool pool(128 * kMiB, {}, AlwaysCompress());
  const CompressionSetting zstd{Compression::kZstd, 3};
  Volume* packed = pool.set().CreateVolume("packed", 4 * kMiB, {.compression = zstd}).value();
  Volume* single = pool.set().CreateVolume("single", 4 * kMiB, {.compression = zstd}).value();
  auto text = WordText(2 * kMiB, 1);
  ASSERT_TRUE(pool.Flush(*packed).ok());
  const uint64_t free_at_start = pool.set().Info().free_bytes;
  ASSERT_TRUE(pool.Write(*packed, 0, text).ok());  // one request: 32 clusters
  ASSERT_TRUE(pool.Flush(*packed).ok());
  const uint64_t free_after_packed = pool.set().Info().free_bytes;
  for (uint64_t at = 0; at < text.size(); at += 65536)  // one request per cluster: a frame each
    ASSERT_TRUE(pool.Write(*single, at, std::vector<uint8_t>(text.begin() + at, text.begin() + at + 65536)).ok());
  ASSERT_TRUE(pool.Flush(*single).ok());
  const uint64_t free_after_single = pool.set().Info().free_bytes;
  auto p = pool.set().GetVolumeInfo("packed").value();
  auto s = pool.set().GetVolumeInfo("single").value();
  EXPECT_EQ(p.packed_frames, 32u);
  EXPECT_EQ(s.packed_frames, 0u);
  EXPECT_EQ(p.compressed_clusters, 32u);
  EXPECT_EQ(free_at_start - free_after_packed, p.allocated_bytes);  // the charges add up to the pack
  EXPECT_EQ(free_after_packed - free_after_single, s.allocated_bytes);
  EXPECT_LT(p.allocated_bytes + 32 * 1024, s.allocated_bytes) << "packing saves over 1 KiB per cluster";
  // Frames that end inside a block share it with the next: of 32 frames, up to 31.
  const uint64_t edges = pool.set().Info().shared_edge_blocks;
  EXPECT_GT(edges, 0u);
  EXPECT_LE(edges, 31u);
  EXPECT_EQ(pool.Read(*packed, 0, text.size()).value(), text);

  // Free frames out of the middle of the pack: every other cluster, then a
  // partial write into one (rewritten elsewhere), then the rest.
  std::vector<uint8_t> expect = text;
  for (uint64_t c = 1; c < 32; c += 2) {
    ASSERT_TRUE(pool.Io(*packed, VolumeOp::kDiscard, c * 65536, 65536).ok());
    std::fill(expect.begin() + c * 65536, expect.begin() + (c + 1) * 65536, 0);
  }
  auto piece = RandomBytes(8192, 5);
  ASSERT_TRUE(pool.Write(*packed, 4 * 65536 + 4096, piece).ok());
  std::copy(piece.begin(), piece.end(), expect.begin() + 4 * 65536 + 4096);
  EXPECT_EQ(pool.Read(*packed, 0, expect.size()).value(), expect);
  ASSERT_TRUE(pool.Flush(*packed).ok());
  // A block shared with a freed frame is its neighbour's now, though
  // charged to neither: the pool holds the charges plus at most one block
  // per remaining frame.
  const uint64_t used = free_at_start - pool.set().Info().free_bytes;
  const uint64_t charged = pool.set().GetVolumeInfo("packed")->allocated_bytes + s.allocated_bytes;
  EXPECT_GE(used, charged);
  EXPECT_LE(used, charged + 16 * 4096);
  ASSERT_TRUE(pool.Io(*packed, VolumeOp::kDiscard, 0, 4 * kMiB).ok());
  ASSERT_TRUE(pool.Io(*single, VolumeOp::kDiscard, 0, 4 * kMiB).ok());
  ASSERT_TRUE(pool.Flush(*packed).ok());
  EXPECT_EQ(pool.set().Info().free_bytes, free_at_start) << "no edge block left behind";
  EXPECT_EQ(pool.set().Info().shared_edge_blocks, 0u);
  ASSERT_TRUE(pool.Write(*packed, 0, text).ok());
  const uint64_t edges_written = pool.set().Info().shared_edge_blocks;
  EXPECT_GT(edges_written, 0u);
  ExpectSurvivesReopenAndFsck(pool, "packed", text);  // leaves the pool closed
  ASSERT_TRUE(pool.Reopen().ok());
  EXPECT_EQ(pool.set().Info().shared_edge_blocks, edges_written) << "recovery finds every shared edge again";
}

TEST(CompressedVolume, OverwritesChangeStoredSizeAndFreeTheOldSpace) {
  TestPool pool(64 * kMiB, {}, AlwaysCompress());
  Volume* v = pool.set().CreateVolume("c", 8 * kMiB, {.compression = CompressionSetting{Compression::kLz4, 0}}).value();
  auto text = SecretText(65536);
  ASSERT_TRUE(pool.Write(*v, 0, text).ok());
  uint64_t small = pool.set().GetVolumeInfo("c")->allocated_bytes;
  // Half the cluster becomes noise: the cluster needs more blocks, elsewhere.
  auto noise = RandomBytes(32768, 3);
  ASSERT_TRUE(pool.Write(*v, 0, noise).ok());
  uint64_t larger = pool.set().GetVolumeInfo("c")->allocated_bytes;
  EXPECT_GT(larger, small);
  EXPECT_LT(larger, 65536u);
  std::vector<uint8_t> expect = noise;
  expect.insert(expect.end(), text.begin() + 32768, text.end());
  EXPECT_EQ(pool.Read(*v, 0, 65536).value(), expect);
  // 512-byte write inside the compressed cluster: read-modify-write.
  auto sector = AllocateAligned(512);
  std::memset(sector.get(), 0xab, 512);
  ASSERT_TRUE(pool.Io(*v, VolumeOp::kWrite, 40960 + 512, 512, sector.get()).ok());
  std::memset(expect.data() + 40960 + 512, 0xab, 512);
  EXPECT_EQ(pool.Read(*v, 0, 65536).value(), expect);
  // Old space comes back once the commits are durable.
  ASSERT_TRUE(pool.Flush(*v).ok());
  uint64_t free_before = pool.set().Info().free_bytes;
  ASSERT_TRUE(pool.Io(*v, VolumeOp::kDiscard, 0, 65536).ok());
  ASSERT_TRUE(pool.Flush(*v).ok());
  EXPECT_EQ(pool.set().Info().free_bytes - free_before, larger);
  EXPECT_EQ(pool.set().GetVolumeInfo("c")->allocated_bytes, 0u);
  ASSERT_TRUE(pool.Close().ok());
  auto report = CheckPool(pool.device());
  ASSERT_TRUE(report.ok() && report->ok());
}

TEST(CompressedVolume, ChangingCompressionAppliesToNewWritesOnly) {
  TestPool pool(64 * kMiB);
  Volume* v = pool.set().CreateVolume("c", 8 * kMiB, {.compression = CompressionSetting{Compression::kLz4, 0}}).value();
  auto text = SecretText(kMiB);
  ASSERT_TRUE(pool.Write(*v, 0, text).ok());
  ASSERT_TRUE(pool.set().SetVolumeCompression("c", {}).ok());
  ASSERT_TRUE(pool.Write(*v, 2 * kMiB, text).ok());  // stored plain now
  auto info = pool.set().GetVolumeInfo("c").value();
  EXPECT_EQ(info.compressed_clusters, kMiB / 65536);
  EXPECT_EQ(info.compression.algorithm, Compression::kOff);
  ASSERT_TRUE(pool.set().SetVolumeCompression("c", {Compression::kZstd, 9}).ok());
  ASSERT_TRUE(pool.CloseAndReopen().ok());
  v = pool.Find("c");
  EXPECT_EQ(pool.set().GetVolumeInfo("c")->compression.level, 9);
  EXPECT_EQ(pool.Read(*v, 0, text.size()).value(), text);  // lz4 clusters still read
  EXPECT_EQ(pool.Read(*v, 2 * kMiB, text.size()).value(), text);
}

TEST(CompressedVolume, DamagedCompressedDataIsAnErrorNotACrash) {
  TestPool pool(64 * kMiB);
  Volume* v = pool.set().CreateVolume("c", 4 * kMiB, {.compression = CompressionSetting{Compression::kLz4, 0}}).value();
  ASSERT_TRUE(pool.Write(*v, 0, SecretText(65536)).ok());
  ASSERT_TRUE(pool.Close().ok());
  // Garble the compressed frame wherever it is: the only block holding the
  // start of the phrase's lz4 literal run.
  std::vector<uint8_t>& image = pool.device().durable_image();
  static const std::string kPhrase = "TOP-SECRET";
  auto at = std::search(image.begin(), image.end(), kPhrase.begin(), kPhrase.end());
  ASSERT_NE(at, image.end());
  size_t block = (at - image.begin()) / 4096;
  for (size_t i = 0; i < 4096; i += 3) image[block * 4096 + i] ^= 0x5a;
  ASSERT_TRUE(pool.Reopen().ok());
  auto read = pool.Read(*pool.Find("c"), 0, 4096);
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), EUCLEAN);
}

// A partial write into a compressed cluster stores it plain: the writes
// after it go in place (no decompress, no compress), and once nobody has
// written it for the idle time the background compresses it again.
TEST(CompressedVolume, PartialWritesLeaveAClusterPlainUntilItIsColdAgain) {
  TestPool pool(64 * kMiB, {}, RecompressAfter(300));
  Volume* v = pool.set().CreateVolume("c", 8 * kMiB, {.compression = CompressionSetting{Compression::kLz4, 0}}).value();
  std::vector<uint8_t> expect = SecretText(kMiB);
  ASSERT_TRUE(pool.Write(*v, 0, expect).ok());
  ASSERT_EQ(pool.set().GetVolumeInfo("c")->compressed_clusters, 16u);
  auto block = RandomBytes(4096, 11);
  ASSERT_TRUE(pool.Write(*v, 3 * 65536 + 8192, block).ok());
  std::copy(block.begin(), block.end(), expect.begin() + 3 * 65536 + 8192);
  auto info = pool.set().GetVolumeInfo("c").value();
  EXPECT_EQ(info.compressed_clusters, 15u);
  EXPECT_EQ(info.hot_plain_clusters, 1u);
  uint64_t rewrites = info.compressed_rewrites;
  // The next small writes into that cluster go in place.
  for (uint64_t at : {0ull, 4096ull, 40960ull}) {
    auto more = RandomBytes(4096, at + 1);
    ASSERT_TRUE(pool.Write(*v, 3 * 65536 + at, more).ok());
    std::copy(more.begin(), more.end(), expect.begin() + 3 * 65536 + at);
  }
  EXPECT_EQ(pool.set().GetVolumeInfo("c")->compressed_rewrites, rewrites);
  EXPECT_EQ(pool.Read(*v, 0, kMiB).value(), expect);
  // Cold: compressed again in the background, content unchanged.
  WaitForRecompression(pool, "c");
  info = pool.set().GetVolumeInfo("c").value();
  EXPECT_EQ(info.recompressed_clusters, 1u);
  EXPECT_EQ(info.hot_plain_clusters, 0u);
  EXPECT_EQ(info.compressed_clusters, 16u);
  ExpectSurvivesReopenAndFsck(pool, "c", expect);
}

// The list of hot clusters lives in memory: one left plain when the pool
// closed comes back to it when next written in place, and is compressed
// once cold again.
TEST(CompressedVolume, AClusterLeftPlainAtCloseIsCompressedAfterItsNextWrite) {
  TestPool pool(64 * kMiB, {}, RecompressAfter(200));
  Volume* v = pool.set().CreateVolume("c", kMiB, {.compression = CompressionSetting{Compression::kLz4, 0}}).value();
  std::vector<uint8_t> expect = SecretText(65536);
  ASSERT_TRUE(pool.Write(*v, 0, expect).ok());
  auto block = RandomBytes(4096, 31);
  ASSERT_TRUE(pool.Write(*v, 8192, block).ok());  // left plain
  std::copy(block.begin(), block.end(), expect.begin() + 8192);
  ASSERT_TRUE(pool.CloseAndReopen().ok());
  v = pool.Find("c");
  auto info = pool.set().GetVolumeInfo("c").value();
  EXPECT_EQ(info.compressed_clusters, 0u);
  EXPECT_EQ(info.hot_plain_clusters, 0u);
  block = RandomBytes(4096, 32);
  ASSERT_TRUE(pool.Write(*v, 12288, block).ok());  // in place: the cluster is a candidate again
  std::copy(block.begin(), block.end(), expect.begin() + 12288);
  EXPECT_EQ(pool.set().GetVolumeInfo("c")->hot_plain_clusters, 1u);
  WaitForRecompression(pool, "c");
  info = pool.set().GetVolumeInfo("c").value();
  EXPECT_EQ(info.recompressed_clusters, 1u);
  EXPECT_EQ(info.compressed_clusters, 1u);
  EXPECT_EQ(pool.Read(*v, 0, 65536).value(), expect);
}

// Each volume holds at most hot_plain_clusters plain; beyond, partial
// writes compress as before. Incompressible clusters are not retried.
TEST(CompressedVolume, HotPlainClustersAreBoundedPerVolume) {
  TestPool pool(64 * kMiB, {}, RecompressAfter(60000, 2));
  Volume* v = pool.set().CreateVolume("c", 8 * kMiB, {.compression = CompressionSetting{Compression::kLz4, 0}}).value();
  std::vector<uint8_t> expect = SecretText(kMiB);
  ASSERT_TRUE(pool.Write(*v, 0, expect).ok());
  for (uint64_t cluster = 0; cluster < 4; cluster++) {
    auto block = RandomBytes(4096, cluster + 20);
    ASSERT_TRUE(pool.Write(*v, cluster * 65536, block).ok());
    std::copy(block.begin(), block.end(), expect.begin() + cluster * 65536);
  }
  auto info = pool.set().GetVolumeInfo("c").value();
  EXPECT_EQ(info.hot_plain_clusters, 2u);
  EXPECT_EQ(info.compressed_clusters, 14u);
  EXPECT_EQ(pool.Read(*v, 0, kMiB).value(), expect);
}

// The recompressor rewrites clusters that writers may touch at any moment:
// a write that lands meanwhile wins (the recompression is dropped), and
// nothing written is ever lost. Checked block by block against a model.
TEST(CompressedVolume, RecompressionNeverLosesAConcurrentWrite) {
  constexpr uint64_t kClusters = 32;
  TestPool pool(64 * kMiB, {}, RecompressAfter(0));
  Volume* v = pool.set().CreateVolume("c", kClusters * 65536, {.compression = CompressionSetting{Compression::kLz4, 0}}).value();
  std::vector<uint8_t> expect = SecretText(kClusters * 65536);
  ASSERT_TRUE(pool.Write(*v, 0, expect).ok());
  auto queue = pool.device().CreateQueue(8);
  AlignedBuffer buf = AllocateAligned(4096);
  std::mt19937_64 rng(17);
  for (int i = 0; i < 3000; i++) {
    uint64_t offset = rng() % (kClusters * 16) * 4096;
    // Compressible blocks, each different: a recompression has work to do.
    for (size_t b = 0; b < 4096; b += 8) std::memcpy(buf.get() + b, &i, sizeof(i));
    VolumeIo io{.op = VolumeOp::kWrite, .offset = offset, .length = 4096, .buf = buf.get()};
    Status s = RunSync(*v, io, *queue);
    ASSERT_TRUE(s.ok()) << "write " << i << ": " << s.ToString();
    std::copy(buf.get(), buf.get() + 4096, expect.begin() + offset);
    if (i % 100 == 99) std::this_thread::sleep_for(std::chrono::milliseconds(15));  // let rounds run
    if (i % 20 == 19) {  // commits release the old runs for reuse
      VolumeIo flush{.op = VolumeOp::kFlush};
      ASSERT_TRUE(RunSync(*v, flush, *queue).ok());
    }
  }
  auto info = pool.set().GetVolumeInfo("c").value();
  EXPECT_GT(info.recompressed_clusters, 0u);
  ExpectSurvivesReopenAndFsck(pool, "c", expect);
}

// Clusters that move on every write (compressed ones, and hot ones being
// recompressed) release their old space only with the next commit. A
// client that never flushes must not see ENOSPC from space that merely
// waits for it: a checkpoint is asked for once that space reaches a
// quarter of the free space.
TEST(CompressedVolume, SpaceWaitingForACommitIsReleasedBeforeThePoolFills) {
  constexpr uint64_t kClusters = 32;
  TestPool pool(64 * kMiB, {}, RecompressAfter(0));
  Volume* v = pool.set().CreateVolume("c", kClusters * 65536, {.compression = CompressionSetting{Compression::kLz4, 0}}).value();
  std::vector<uint8_t> expect = SecretText(kClusters * 65536);
  ASSERT_TRUE(pool.Write(*v, 0, expect).ok());
  auto queue = pool.device().CreateQueue(8);
  AlignedBuffer buf = AllocateAligned(65536);
  std::mt19937_64 rng(23);
  for (int i = 0; i < 4000; i++) {  // about 200 MiB of moved clusters through a 64 MiB pool
    bool whole = i % 2 == 0;  // a whole cluster is compressed again; a block leaves it plain
    uint64_t length = whole ? 65536 : 4096;
    uint64_t offset = whole ? rng() % kClusters * 65536 : rng() % (kClusters * 16) * 4096;
    for (size_t b = 0; b < length; b += 8) std::memcpy(buf.get() + b, &i, sizeof(i));
    VolumeIo io{.op = VolumeOp::kWrite, .offset = offset, .length = length, .buf = buf.get()};
    Status s = RunSync(*v, io, *queue);
    ASSERT_TRUE(s.ok()) << "write " << i << ": " << s.ToString();
    std::copy(buf.get(), buf.get() + length, expect.begin() + offset);
  }
  ExpectSurvivesReopenAndFsck(pool, "c", expect);
}

// The race the recompressor must lose: a whole-cluster write lands while
// the recompression still reads the old content. The write is swapped in
// first; the recompression then finds the entry changed and drops its
// stale copy.
TEST(CompressedVolume, AWriteDuringARecompressionWins) {
  TestPool pool(64 * kMiB, {}, RecompressAfter(200));
  Volume* v = pool.set().CreateVolume("c", kMiB, {.compression = CompressionSetting{Compression::kLz4, 0}}).value();
  ASSERT_TRUE(pool.Write(*v, 0, SecretText(65536)).ok());
  ASSERT_TRUE(pool.Write(*v, 4096, RandomBytes(4096, 5)).ok());  // hot: left plain
  ASSERT_EQ(pool.set().GetVolumeInfo("c")->hot_plain_clusters, 1u);
  pool.device().HoldCompletions();
  // Once cold, the recompressor reads the plain cluster: held.
  for (int i = 0; i < 500 && pool.device().queued_bytes() == 0; i++)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ASSERT_GT(pool.device().queued_bytes(), 0u);
  uint64_t recompress_read = pool.device().queued_bytes();
  auto queue = pool.device().CreateQueue(8);
  AlignedBuffer data = AllocateAligned(65536);
  for (size_t i = 0; i < 65536; i += 8) std::memcpy(data.get() + i, &i, sizeof(i));  // compressible, new
  bool done = false;
  Status status;
  VolumeIo io{.op = VolumeOp::kWrite, .offset = 0, .length = 65536, .buf = data.get()};
  struct Waiter {
    bool* done;
    Status* status;
  } waiter{&done, &status};
  io.context = &waiter;
  io.done = [](VolumeIo* finished, const Status& s) {
    auto* w = static_cast<Waiter*>(finished->context);
    *w->status = s;
    *w->done = true;
  };
  v->Submit(&io, *queue);
  EXPECT_GT(pool.device().queued_bytes(), recompress_read);  // the write's frame, held behind the read
  pool.device().ReleaseCompletions();
  while (!done) queue->Poll(/*wait=*/true);
  ASSERT_TRUE(status.ok()) << status.ToString();
  // Let the recompression finish (it has nothing left to compress after).
  for (int i = 0; i < 100 && pool.set().GetVolumeInfo("c")->hot_plain_clusters != 0; i++)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ExpectSurvivesReopenAndFsck(pool, "c", std::vector<uint8_t>(data.get(), data.get() + 65536));
}

// Compressed clusters move on every write and their old space is reused
// after the next commit; a reader on another thread must never see another
// cluster's data or garbage (its completion re-reads a cluster that moved).
TEST(CompressedVolume, ConcurrentReadersNeverSeeMovedData) {
  constexpr uint64_t kClusters = 64;
  TestPool pool(64 * kMiB);
  Volume* v = pool.set().CreateVolume("c", kClusters * 65536, {.compression = CompressionSetting{Compression::kLz4, 0}}).value();
  // Cluster c at version t: 16-byte units {c, t}, so any 4 KiB shows which.
  auto fill = [](uint8_t* p, uint64_t cluster, uint64_t version) {
    for (size_t i = 0; i < 65536; i += 16) {
      std::memcpy(p + i, &cluster, 8);
      std::memcpy(p + i + 8, &version, 8);
    }
  };
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> reads{0}, bad{0};
  std::thread reader([&] {
    auto queue = pool.device().CreateQueue(32);
    AlignedBuffer buf = AllocateAligned(4096);
    std::mt19937_64 rng(9);
    while (!stop) {
      uint64_t cluster = rng() % kClusters, block = rng() % 16;
      VolumeIo io{.op = VolumeOp::kRead, .offset = cluster * 65536 + block * 4096, .length = 4096, .buf = buf.get()};
      if (!RunSync(*v, io, *queue).ok()) {
        bad++;
        continue;
      }
      uint64_t first_cluster, first_version;
      std::memcpy(&first_cluster, buf.get(), 8);
      std::memcpy(&first_version, buf.get() + 8, 8);
      bool zeros = first_cluster == 0 && first_version == 0;  // not written yet
      bool ok = zeros || first_cluster == cluster;
      for (size_t i = 0; ok && i < 4096; i += 16)
        ok = std::memcmp(buf.get() + i, buf.get(), 16) == 0;
      if (!ok) bad++;
      reads++;
    }
  });
  auto queue = pool.device().CreateQueue(32);
  AlignedBuffer data = AllocateAligned(65536);
  std::mt19937_64 rng(5);
  for (uint64_t version = 1; version <= 10000; version++) {
    uint64_t cluster = rng() % kClusters;
    fill(data.get(), cluster, version);
    VolumeIo io{.op = VolumeOp::kWrite, .offset = cluster * 65536, .length = 65536, .buf = data.get()};
    ASSERT_TRUE(RunSync(*v, io, *queue).ok());
    if (version % 4 == 0) {  // commits release the old frames for reuse
      VolumeIo flush{.op = VolumeOp::kFlush};
      ASSERT_TRUE(RunSync(*v, flush, *queue).ok());
    }
  }
  stop = true;
  reader.join();
  EXPECT_GT(reads.load(), 1000u);
  EXPECT_EQ(bad.load(), 0u) << "reads that saw moved or damaged data";
}

}  // namespace
}  // namespace edgestor
