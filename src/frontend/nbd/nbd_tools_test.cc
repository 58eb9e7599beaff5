// Interoperability: real NBD clients (libnbd's nbdinfo, QEMU's qemu-io and
// qemu-img) against an in-process server on a temporary unix socket.
// Skipped where the tools are not installed.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "frontend/nbd/nbd_test_support.h"

namespace edgestor::testing {
namespace {

bool HaveTool(const std::string& tool) {
  return std::system(("command -v " + tool + " >/dev/null 2>&1").c_str()) == 0;
}

// Runs a shell command; returns its exit status and output (stdout+stderr).
int RunTool(const std::string& command, std::string* output) {
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  if (!pipe) return -1;
  char buf[4096];
  output->clear();
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, pipe)) > 0;) output->append(buf, n);
  int status = ::pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string Uri(const NbdServerHarness& h, const std::string& name) {
  return "'nbd+unix:///" + name + "?socket=" + h.socket() + "'";
}

struct MapLine {
  uint64_t offset, length;
  uint32_t type;
};

std::vector<MapLine> ParseMap(const std::string& text) {
  std::vector<MapLine> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    MapLine m{};
    if (std::sscanf(line.c_str(), "%lu %lu %u", &m.offset, &m.length, &m.type) == 3) out.push_back(m);
  }
  return out;
}

TEST(NbdTools, NbdinfoMapShowsDataAndHoles) {
  if (!HaveTool("nbdinfo")) GTEST_SKIP() << "nbdinfo (libnbd-bin) is not installed";
  NbdServerHarness h;
  Volume* vol = h.pool().Find("vol");
  ASSERT_TRUE(h.pool().Write(*vol, kMiB, Pattern(kMiB, 1)).ok());
  std::string out;
  ASSERT_EQ(RunTool("nbdinfo --map " + Uri(h, "vol"), &out), 0) << out;
  std::vector<MapLine> map = ParseMap(out);
  ASSERT_EQ(map.size(), 3u) << out;
  EXPECT_EQ(map[0].offset, 0u);
  EXPECT_EQ(map[0].type, 3u);  // hole,zero
  EXPECT_EQ(map[1].offset, kMiB);
  EXPECT_EQ(map[1].length, kMiB);
  EXPECT_EQ(map[1].type, 0u);  // data
  EXPECT_EQ(map[2].offset + map[2].length, 16 * kMiB);
  EXPECT_EQ(map[2].type, 3u);
}

TEST(NbdTools, NbdinfoSeesSizeBlockSizesAndMultiConn) {
  if (!HaveTool("nbdinfo")) GTEST_SKIP() << "nbdinfo (libnbd-bin) is not installed";
  NbdServerHarness h;
  std::string out;
  ASSERT_EQ(RunTool("nbdinfo --json " + Uri(h, "other"), &out), 0) << out;
  for (const char* expected : {"\"export-size\": 4194304", "\"can_multi_conn\": true", "\"can_fua\": true",
                               "\"can_trim\": true", "\"can_zero\": true", "\"can_fast_zero\": true",
                               "\"block_size_minimum\": 512", "\"block_size_preferred\": 4096",
                               "\"block_size_maximum\": 33554432", "\"base:allocation\""})
    EXPECT_NE(out.find(expected), std::string::npos) << expected << " missing in:\n" << out;
  ASSERT_EQ(RunTool("nbdinfo --list 'nbd+unix://?socket=" + h.socket() + "'", &out), 0) << out;
  EXPECT_NE(out.find("export=\"vol\""), std::string::npos) << out;
  EXPECT_NE(out.find("export=\"other\""), std::string::npos) << out;
}

TEST(NbdTools, QemuIoWritesAndReadsBackAPattern) {
  if (!HaveTool("qemu-io")) GTEST_SKIP() << "qemu-io (qemu-utils) is not installed";
  NbdServerHarness h;
  std::string out;
  std::string cmd = "qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'write -z 512k 64k' -c 'discard 768k 64k' "
                    "-c 'flush' -c 'read -P 0xab 0 512k' -c 'read -P 0 512k 64k' -c 'read -P 0xab 576k 192k' " +
                    Uri(h, "vol");
  ASSERT_EQ(RunTool(cmd, &out), 0) << out;
  EXPECT_NE(out.find("wrote 1048576/1048576 bytes at offset 0"), std::string::npos) << out;
  EXPECT_NE(out.find("read 524288/524288 bytes at offset 0"), std::string::npos) << out;
  EXPECT_EQ(out.find("Pattern verification failed"), std::string::npos) << out;
  // And the engine holds what QEMU wrote.
  auto back = h.pool().Read(*h.pool().Find("vol"), 0, 4096);
  EXPECT_EQ(back.value(), std::vector<uint8_t>(4096, 0xab));
  EXPECT_TRUE(h.WaitUnpinned());
}

TEST(NbdTools, QemuImgConvertCopiesTheExport) {
  if (!HaveTool("qemu-img")) GTEST_SKIP() << "qemu-img (qemu-utils) is not installed";
  NbdServerHarness h;
  Volume* vol = h.pool().Find("other");
  auto data = Pattern(kMiB, 3);
  ASSERT_TRUE(h.pool().Write(*vol, 2 * kMiB, data).ok());
  std::string copy = h.dir() + "/copy.raw", out;
  ASSERT_EQ(RunTool("qemu-img convert -f raw -O raw " + Uri(h, "other") + " " + copy, &out), 0) << out;
  std::ifstream in(copy, std::ios::binary);
  std::vector<uint8_t> image((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_EQ(image.size(), 4 * kMiB);
  std::vector<uint8_t> expect(4 * kMiB, 0);
  std::copy(data.begin(), data.end(), expect.begin() + 2 * kMiB);
  EXPECT_TRUE(image == expect);
}

}  // namespace
}  // namespace edgestor::testing
