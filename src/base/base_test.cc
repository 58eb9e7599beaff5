#include <gtest/gtest.h>

#include <cerrno>

#include "base/checksum.h"
#include "base/size_parse.h"
#include "base/status.h"

namespace edgestor {
namespace {

TEST(ParseSize, AcceptsSuffixes) {
  EXPECT_EQ(ParseSize("4096"), 4096u);
  EXPECT_EQ(ParseSize("64K"), 65536u);
  EXPECT_EQ(ParseSize("64k"), 65536u);
  EXPECT_EQ(ParseSize("20G"), 20ull << 30);
  EXPECT_EQ(ParseSize("1T"), 1ull << 40);
  EXPECT_EQ(ParseSize("8GiB"), 8ull << 30);
  EXPECT_EQ(ParseSize("1.5M"), 3ull << 19);
}

TEST(ParseSize, RejectsGarbage) {
  EXPECT_FALSE(ParseSize(""));
  EXPECT_FALSE(ParseSize("G"));
  EXPECT_FALSE(ParseSize("12X"));
  EXPECT_FALSE(ParseSize("-1"));
  EXPECT_FALSE(ParseSize("99999999999P"));
  EXPECT_FALSE(ParseSize("1.3K"));
}

TEST(FormatSize, PrintsBinaryUnits) {
  EXPECT_EQ(FormatSize(65536), "64 KiB");
  EXPECT_EQ(FormatSize(3ull << 29), "1.50 GiB");
}

TEST(Crc32c, MatchesKnownValue) {
  // RFC 3720 B.4: 32 bytes of zeros -> 0x8a9136aa.
  unsigned char zeros[32] = {};
  EXPECT_EQ(Crc32c(zeros, sizeof zeros, 0xffffffff) ^ 0xffffffff, 0x8a9136aau);
}

TEST(Status, CarriesCodeAndContext) {
  Status s(ENOSPC, "pool full");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.WithContext("write vol0").message(), "write vol0: pool full");
  Result<int> r(Status(EIO, "bad"));
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), EIO);
}

}  // namespace
}  // namespace edgestor
