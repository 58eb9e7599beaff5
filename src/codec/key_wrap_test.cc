#include "codec/key_wrap.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string_view>
#include <vector>

#include "codec/testing/hex.h"

namespace edgestor {
namespace {

using testing::Bytes;
using testing::FromHex;

std::span<const uint8_t> AsBytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

Bytes ToBytes(std::span<const uint8_t> s) { return Bytes(s.begin(), s.end()); }

// Low-cost parameters (the floor) so the tests stay quick under sanitizers.
constexpr ScryptParams kTestParams{.n = kScryptMinN, .r = 8, .p = 1};

TEST(DataKey, IsRandomWithDifferentHalves) {
  auto a = NewDataKey();
  auto b = NewDataKey();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(ToBytes(a->span()), ToBytes(b->span()));
  EXPECT_FALSE(std::equal(a->data(), a->data() + 32, a->data() + 32));
}

TEST(KeyWrap, RoundTrips) {
  auto pool = NewPoolKey();
  auto data = NewDataKey();
  ASSERT_TRUE(pool.ok() && data.ok());
  auto wrapped = WrapDataKey(*pool, *data);
  ASSERT_TRUE(wrapped.ok());
  EXPECT_EQ(wrapped->size(), 72u);
  // The key does not appear in the clear.
  EXPECT_EQ(std::search(wrapped->begin(), wrapped->end(), data->data(), data->data() + 16), wrapped->end());
  auto unwrapped = UnwrapDataKey(*pool, *wrapped);
  ASSERT_TRUE(unwrapped.ok()) << unwrapped.status().ToString();
  EXPECT_EQ(ToBytes(unwrapped->span()), ToBytes(data->span()));
}

TEST(KeyWrap, WrongPoolKeyIsRefused) {
  auto pool = NewPoolKey();
  auto other = NewPoolKey();
  auto data = NewDataKey();
  ASSERT_TRUE(pool.ok() && other.ok() && data.ok());
  auto wrapped = WrapDataKey(*pool, *data);
  ASSERT_TRUE(wrapped.ok());
  auto unwrapped = UnwrapDataKey(*other, *wrapped);
  ASSERT_FALSE(unwrapped.ok());
  EXPECT_EQ(unwrapped.status().code(), EACCES);
}

TEST(KeyWrap, TamperedWrappedKeyIsRefused) {
  auto pool = NewPoolKey();
  auto data = NewDataKey();
  ASSERT_TRUE(pool.ok() && data.ok());
  auto wrapped = WrapDataKey(*pool, *data);
  ASSERT_TRUE(wrapped.ok());
  for (size_t i = 0; i < kWrappedKeyBytes; i++) {
    WrappedKey bad = *wrapped;
    bad[i] ^= 0x01;
    EXPECT_EQ(UnwrapDataKey(*pool, bad).status().code(), EACCES) << "byte " << i;
  }
}

TEST(KeyWrap, WrongLengthIsInvalid) {
  auto pool = NewPoolKey();
  ASSERT_TRUE(pool.ok());
  Bytes short_blob(71), long_blob(73);
  EXPECT_EQ(UnwrapDataKey(*pool, short_blob).status().code(), EINVAL);
  EXPECT_EQ(UnwrapDataKey(*pool, long_blob).status().code(), EINVAL);
  EXPECT_EQ(UnwrapDataKey(*pool, {}).status().code(), EINVAL);
}

// RFC 7914 section 12, the first two test vectors.
TEST(Scrypt, MatchesRfc7914Vectors) {
  uint8_t out[64];
  ASSERT_TRUE(Scrypt({}, {}, {.n = 16, .r = 1, .p = 1}, out).ok());
  EXPECT_EQ(ToBytes(out), FromHex("77d6576238657b203b19ca42c18a0497f16b4844e3074ae8dfdffa3fede21442"
                                  "fcd0069ded0948f8326a753a0fc81f17e8d3e0fb2e0d3628cf35e20c38d18906"));
  ASSERT_TRUE(Scrypt(AsBytes("password"), AsBytes("NaCl"), {.n = 1024, .r = 8, .p = 16}, out).ok());
  EXPECT_EQ(ToBytes(out), FromHex("fdbabe1c9d3472007856e7190d01e9fe7c6ad7cbc8237830e77376634b373162"
                                  "2eaf30d92e22a3886ff109279d9830dac727afb94a83ee6d8360cbdfa2cc0640"));
}

TEST(Scrypt, ChecksParameterBounds) {
  EXPECT_TRUE(CheckScryptParams({}).ok());
  EXPECT_TRUE(CheckScryptParams(kTestParams).ok());
  EXPECT_EQ(CheckScryptParams({.n = 3 << 14}).code(), EINVAL);             // not a power of two
  EXPECT_EQ(CheckScryptParams({.n = 1 << 13}).code(), EINVAL);             // below the floor
  EXPECT_EQ(CheckScryptParams({.n = 1ull << 21, .r = 1}).code(), EINVAL);  // above the ceiling
  EXPECT_EQ(CheckScryptParams({.n = 1 << 20, .r = 8}).code(), EINVAL);     // 1 GiB of memory
  EXPECT_EQ(CheckScryptParams({.r = 0}).code(), EINVAL);
  EXPECT_EQ(CheckScryptParams({.r = 33}).code(), EINVAL);
  EXPECT_EQ(CheckScryptParams({.p = 0}).code(), EINVAL);
  EXPECT_EQ(CheckScryptParams({.p = 17}).code(), EINVAL);
  uint8_t out[65];
  EXPECT_EQ(Scrypt(AsBytes("x"), {}, {.n = 1}, std::span(out, 32)).code(), EINVAL);
  EXPECT_EQ(Scrypt(AsBytes("x"), {}, {.n = 16}, std::span(out, 65)).code(), EINVAL);
}

TEST(PassphraseKdf, DerivesTheSameKeyAgain) {
  auto kdf = NewPassphraseKdf();  // the defaults, once
  ASSERT_TRUE(kdf.ok());
  EXPECT_EQ(kdf->params.n, uint64_t{1} << 15);
  auto a = DerivePoolKey("correct horse battery staple", *kdf);
  auto b = DerivePoolKey("correct horse battery staple", *kdf);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(ToBytes(a->span()), ToBytes(b->span()));
}

TEST(PassphraseKdf, PassphraseAndSaltBothMatter) {
  auto kdf = NewPassphraseKdf(kTestParams);
  auto other_salt = NewPassphraseKdf(kTestParams);
  ASSERT_TRUE(kdf.ok() && other_salt.ok());
  EXPECT_NE(kdf->salt, other_salt->salt);
  auto a = DerivePoolKey("passphrase", *kdf);
  auto b = DerivePoolKey("passphrasf", *kdf);
  auto c = DerivePoolKey("passphrase", *other_salt);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_NE(ToBytes(a->span()), ToBytes(b->span()));
  EXPECT_NE(ToBytes(a->span()), ToBytes(c->span()));
  EXPECT_EQ(DerivePoolKey("", *kdf).status().code(), EINVAL);
  EXPECT_EQ(NewPassphraseKdf({.n = 1024}).status().code(), EINVAL);
}

TEST(PassphraseKdf, WrongPassphraseCannotUnwrap) {
  auto kdf = NewPassphraseKdf(kTestParams);
  ASSERT_TRUE(kdf.ok());
  auto right = DerivePoolKey("right", *kdf);
  auto wrong = DerivePoolKey("wrong", *kdf);
  auto data = NewDataKey();
  ASSERT_TRUE(right.ok() && wrong.ok() && data.ok());
  auto wrapped = WrapDataKey(*right, *data);
  ASSERT_TRUE(wrapped.ok());
  EXPECT_TRUE(UnwrapDataKey(*right, *wrapped).ok());
  EXPECT_EQ(UnwrapDataKey(*wrong, *wrapped).status().code(), EACCES);
}

TEST(PassphraseKdf, RecordRoundTrips) {
  auto kdf = NewPassphraseKdf({.n = 1 << 16, .r = 4, .p = 2});
  ASSERT_TRUE(kdf.ok());
  auto record = EncodePassphraseKdf(*kdf);
  EXPECT_EQ(record.size(), 48u);
  auto back = DecodePassphraseKdf(record);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->params.n, uint64_t{1} << 16);
  EXPECT_EQ(back->params.r, 4u);
  EXPECT_EQ(back->params.p, 2u);
  EXPECT_EQ(back->salt, kdf->salt);
}

TEST(PassphraseKdf, RecordOutOfBoundsIsRefused) {
  auto kdf = NewPassphraseKdf();
  ASSERT_TRUE(kdf.ok());
  const auto good = EncodePassphraseKdf(*kdf);
  auto refused = [&](size_t index, uint8_t value) {
    auto bad = good;
    bad[index] = value;
    return DecodePassphraseKdf(bad).status().code() == EINVAL;
  };
  EXPECT_TRUE(refused(0, 2));     // unknown KDF
  EXPECT_TRUE(refused(1, 10));    // N = 2^10: below the floor
  EXPECT_TRUE(refused(1, 40));    // N = 2^40
  EXPECT_TRUE(refused(1, 200));   // shift out of range
  EXPECT_TRUE(refused(2, 1));     // reserved
  EXPECT_TRUE(refused(13, 1));    // reserved
  EXPECT_TRUE(refused(4, 0));     // r = 0
  EXPECT_TRUE(refused(7, 1));     // r huge
  EXPECT_TRUE(refused(8, 0));     // p = 0
  EXPECT_TRUE(refused(11, 0x80)); // p huge
  EXPECT_FALSE(refused(20, 0x55));  // the salt is free
  EXPECT_EQ(DecodePassphraseKdf(std::span(good).first(47)).status().code(), EINVAL);
}

TEST(KeyFile, AcceptsRawAndHex) {
  const Bytes raw = FromHex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f");
  const std::string hex = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
  std::string upper = hex;
  std::transform(upper.begin(), upper.end(), upper.begin(), ::toupper);
  const std::vector<std::string> texts = {std::string(raw.begin(), raw.end()), hex, upper, hex + "\n",
                                          hex + "\r\n"};
  for (const std::string& text : texts) {
    auto key = ParsePoolKeyFile(AsBytes(text));
    ASSERT_TRUE(key.ok()) << key.status().ToString();
    EXPECT_EQ(ToBytes(key->span()), raw);
  }
}

TEST(KeyFile, RefusesAnythingElse) {
  const std::string hex = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
  std::string bad_digit = hex;
  bad_digit[17] = 'g';
  const std::vector<std::string> texts = {std::string(), std::string(31, 'a'), std::string(33, 'a'),
                                          hex.substr(1), hex + "0", hex + "\n\n", hex + " ", " " + hex, bad_digit};
  for (const std::string& text : texts) {
    auto key = ParsePoolKeyFile(AsBytes(text));
    ASSERT_FALSE(key.ok()) << text;
    EXPECT_EQ(key.status().code(), EINVAL);
    EXPECT_EQ(key.status().message().find("0001020304"), std::string::npos);  // never echoes the key
  }
}

class KeyFileOnDisk : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = "/tmp/edgestor-keyfile-XXXXXX";
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string Write(const std::string& name, const std::string& contents, mode_t mode) {
    std::string path = dir_ + "/" + name;
    std::ofstream(path, std::ios::binary) << contents;
    EXPECT_EQ(chmod(path.c_str(), mode), 0);
    return path;
  }
  std::string dir_;
};

TEST_F(KeyFileOnDisk, ReadsAKeyAndReportsPermissions) {
  const std::string hex(64, 'a');
  auto tight = ReadPoolKeyFile(Write("tight", hex + "\n", 0600));
  ASSERT_TRUE(tight.ok()) << tight.status().ToString();
  EXPECT_EQ(ToBytes(tight->key.span()), Bytes(32, 0xaa));
  EXPECT_FALSE(tight->group_readable);
  EXPECT_FALSE(tight->world_readable);
  auto loose = ReadPoolKeyFile(Write("loose", hex, 0644));
  ASSERT_TRUE(loose.ok());
  EXPECT_TRUE(loose->group_readable);
  EXPECT_TRUE(loose->world_readable);
}

TEST_F(KeyFileOnDisk, RefusesMissingOddAndHugeFiles) {
  EXPECT_EQ(ReadPoolKeyFile(dir_ + "/missing").status().code(), ENOENT);
  EXPECT_EQ(ReadPoolKeyFile(dir_).status().code(), EINVAL);  // a directory
  EXPECT_EQ(ReadPoolKeyFile(Write("huge", std::string(5000, 'a'), 0600)).status().code(), EINVAL);
  auto odd = ReadPoolKeyFile(Write("odd", "not a key\n", 0600));
  EXPECT_EQ(odd.status().code(), EINVAL);
  EXPECT_NE(odd.status().message().find("odd"), std::string::npos);  // names the file
}

}  // namespace
}  // namespace edgestor
