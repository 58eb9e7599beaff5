// ListenUnixSocket: what it may replace, and the access it gives.
#include "base/unix_socket.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace edgestor {
namespace {

class UnixSocketTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/edgestor-sock-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string Path(const std::string& name) const { return dir_ + "/" + name; }
  static std::string Contents(const std::string& path) {
    std::ifstream in(path);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }
  static mode_t ModeOf(const std::string& path) {
    struct stat st {};
    EXPECT_EQ(::lstat(path.c_str(), &st), 0);
    return st.st_mode;
  }

  std::string dir_;
};

TEST_F(UnixSocketTest, RegularFileAtThePathIsRefusedAndKept) {
  std::string pool = Path("pool.img");
  std::ofstream(pool) << "customer data";
  auto fd = ListenUnixSocket(pool);
  ASSERT_FALSE(fd.ok());
  EXPECT_EQ(fd.status().code(), EEXIST);
  EXPECT_NE(fd.status().message().find("regular file"), std::string::npos) << fd.status().message();
  EXPECT_EQ(Contents(pool), "customer data");
}

TEST_F(UnixSocketTest, DirectoryAndSymlinkAtThePathAreRefusedAndKept) {
  std::string dir = Path("d");
  ASSERT_EQ(::mkdir(dir.c_str(), 0700), 0);
  EXPECT_EQ(ListenUnixSocket(dir).status().code(), EEXIST);
  EXPECT_TRUE(S_ISDIR(ModeOf(dir)));
  std::string target = Path("target"), link = Path("link");
  std::ofstream(target) << "kept";
  ASSERT_EQ(::symlink(target.c_str(), link.c_str()), 0);
  EXPECT_EQ(ListenUnixSocket(link).status().code(), EEXIST);
  EXPECT_TRUE(S_ISLNK(ModeOf(link)));
  EXPECT_EQ(Contents(target), "kept");
}

TEST_F(UnixSocketTest, LiveSocketIsRefusedAndKeepsServing) {
  std::string path = Path("live.sock");
  auto first = ListenUnixSocket(path);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_EQ(ListenUnixSocket(path).status().code(), EADDRINUSE);
  auto client = ConnectUnixSocket(path);
  ASSERT_TRUE(client.ok()) << client.status().ToString();  // the first server still owns it
  ::close(client.value());
  ::close(first.value());
}

TEST_F(UnixSocketTest, StaleSocketIsReplaced) {
  std::string path = Path("stale.sock");
  auto dead = ListenUnixSocket(path);
  ASSERT_TRUE(dead.ok());
  ::close(dead.value());  // the file stays: a server that died
  ASSERT_TRUE(S_ISSOCK(ModeOf(path)));
  auto fresh = ListenUnixSocket(path);
  ASSERT_TRUE(fresh.ok()) << fresh.status().ToString();
  auto client = ConnectUnixSocket(path);
  EXPECT_TRUE(client.ok());
  if (client.ok()) ::close(client.value());
  ::close(fresh.value());
}

TEST_F(UnixSocketTest, DefaultIsTheOwnerOnlyWhateverTheUmask) {
  mode_t old = ::umask(0);
  auto fd = ListenUnixSocket(Path("s.sock"));
  ::umask(old);
  ASSERT_TRUE(fd.ok());
  EXPECT_EQ(ModeOf(Path("s.sock")) & 07777, kDefaultSocketMode);
  EXPECT_EQ(kDefaultSocketMode, 0600u);
  ::close(fd.value());
}

TEST_F(UnixSocketTest, OwnerGroupAndModeAreApplied) {
  SocketAccess access;
  // Root may give the socket away (to the user QEMU runs as); anyone may
  // name their own ids.
  bool root = ::geteuid() == 0;
  access.owner = root ? 1 : ::geteuid();
  access.group = root ? 1 : ::getegid();
  access.mode = 0660;
  std::string path = Path("q.sock");
  auto fd = ListenUnixSocket(path, access);
  ASSERT_TRUE(fd.ok()) << fd.status().ToString();
  struct stat st {};
  ASSERT_EQ(::lstat(path.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0660u);
  EXPECT_EQ(st.st_uid, *access.owner);
  EXPECT_EQ(st.st_gid, *access.group);
  ::close(fd.value());
}

TEST_F(UnixSocketTest, AccessThatCannotBeAppliedLeavesNoSocket) {
  SocketAccess access;
  access.mode = 01777;  // beyond permission bits
  EXPECT_EQ(ListenUnixSocket(Path("bad.sock"), access).status().code(), EINVAL);
  EXPECT_FALSE(std::filesystem::exists(std::filesystem::symlink_status(Path("bad.sock"))));
  if (::geteuid() != 0) {
    access.mode = 0600;
    access.owner = 0;  // only root may give a file to root
    EXPECT_EQ(ListenUnixSocket(Path("bad.sock"), access).status().code(), EPERM);
    EXPECT_FALSE(std::filesystem::exists(std::filesystem::symlink_status(Path("bad.sock"))));
  }
}

TEST_F(UnixSocketTest, StoppingRemovesOnlyASocket) {
  std::string path = Path("s.sock");
  auto fd = ListenUnixSocket(path);
  ASSERT_TRUE(fd.ok());
  ::close(fd.value());
  RemoveSocketFile(path);
  EXPECT_FALSE(std::filesystem::exists(std::filesystem::symlink_status(path)));
  std::ofstream(path) << "put here since";  // e.g. the socket was replaced by hand
  RemoveSocketFile(path);
  EXPECT_EQ(Contents(path), "put here since");
}

TEST(SocketAccessParse, OwnerTakesNamesIdsAndGroups) {
  SocketAccess a;
  ASSERT_TRUE(ParseSocketOwner("root", &a).ok());
  EXPECT_EQ(a.owner, 0u);
  EXPECT_FALSE(a.group.has_value());
  SocketAccess b;
  ASSERT_TRUE(ParseSocketOwner("1:2", &b).ok());
  EXPECT_EQ(b.owner, 1u);
  EXPECT_EQ(b.group, 2u);
  SocketAccess c;
  ASSERT_TRUE(ParseSocketOwner(":root", &c).ok());
  EXPECT_FALSE(c.owner.has_value());
  EXPECT_EQ(c.group, 0u);
  for (const char* bad : {"", ":", "root:", "no-such-user-edgestor", "root:no-such-group-edgestor", "-1"})
    EXPECT_EQ(ParseSocketOwner(bad, &c).code(), EINVAL) << bad;
}

TEST(SocketAccessParse, ModeIsOctalPermissionBits) {
  SocketAccess a;
  ASSERT_TRUE(ParseSocketMode("0660", &a).ok());
  EXPECT_EQ(a.mode, 0660u);
  ASSERT_TRUE(ParseSocketMode("600", &a).ok());
  EXPECT_EQ(a.mode, 0600u);
  for (const char* bad : {"", "0999", "1777", "04755", "rw", "66 0", "-600"})
    EXPECT_EQ(ParseSocketMode(bad, &a).code(), EINVAL) << bad;
}

}  // namespace
}  // namespace edgestor
