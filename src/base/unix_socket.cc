#include "base/unix_socket.h"

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <vector>

namespace edgestor {

namespace {

// getpwnam_r/getgrnam_r need a scratch buffer; entries longer than this are
// not worth supporting.
constexpr size_t kNameLookupBytes = 16 * 1024;
constexpr int kListenBacklog = 64;

Status Errno(int err, const std::string& what) { return Status(err, what + ": " + std::strerror(err)); }

Result<sockaddr_un> Address(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof addr.sun_path)
    return Status(ENAMETOOLONG, "socket path '" + path + "' is empty or longer than 107 bytes");
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  return addr;
}

template <typename Id>
bool ParseId(const std::string& s, Id* id) {
  unsigned long value = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (ec != std::errc() || end != s.data() + s.size() || value > static_cast<Id>(-2)) return false;
  *id = static_cast<Id>(value);
  return true;
}

Result<uid_t> LookUpUser(const std::string& name) {
  uid_t uid = 0;
  if (ParseId(name, &uid)) return uid;
  passwd entry{}, *found = nullptr;
  std::vector<char> scratch(kNameLookupBytes);
  int err = ::getpwnam_r(name.c_str(), &entry, scratch.data(), scratch.size(), &found);
  if (err != 0 || found == nullptr) return Status(EINVAL, "unknown user '" + name + "'");
  return found->pw_uid;
}

const char* KindOf(mode_t mode) {
  if (S_ISREG(mode)) return "a regular file";
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISLNK(mode)) return "a symbolic link";
  if (S_ISBLK(mode)) return "a block device";
  return "not a socket";
}

// Makes room for a new socket at `path`: nothing there, or a stale socket
// (removed). Anything else stays and is an error.
Status ClearStaleSocket(const std::string& path, const sockaddr_un& addr) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) return errno == ENOENT ? Status::Ok() : Errno(errno, "cannot stat " + path);
  if (!S_ISSOCK(st.st_mode))
    return Status(EEXIST, path + " exists and is " + KindOf(st.st_mode) + "; not replacing it with a socket");
  int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (probe < 0) return Errno(errno, "socket");
  int rc = ::connect(probe, reinterpret_cast<const sockaddr*>(&addr), sizeof addr);
  int err = rc == 0 ? 0 : errno;
  ::close(probe);
  if (rc == 0) return Status(EADDRINUSE, "another server is listening on " + path);
  // Only "refused" proves nobody accepts there; a full backlog (EAGAIN) is a
  // live server, and a probe we may not make proves nothing.
  if (err != ECONNREFUSED && err != ENOENT)
    return Errno(err, "cannot tell whether a server is listening on " + path + "; not replacing it");
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) return Errno(errno, "cannot remove stale socket " + path);
  return Status::Ok();
}

// Gives the socket file just bound at `path` its owner and mode, never
// following a symbolic link (a path swapped under us changes nothing else).
Status ApplyAccess(const std::string& path, const SocketAccess& access) {
  if (access.owner || access.group) {
    uid_t uid = access.owner ? *access.owner : static_cast<uid_t>(-1);
    gid_t gid = access.group ? *access.group : static_cast<gid_t>(-1);
    if (::lchown(path.c_str(), uid, gid) != 0) return Errno(errno, "cannot change the owner of " + path);
  }
  struct stat st;
  if (::fchmodat(AT_FDCWD, path.c_str(), access.mode, AT_SYMLINK_NOFOLLOW) != 0) {
    // Without /proc the C library cannot chmod without following links;
    // then a plain chmod of what is (still) a socket.
    int err = errno;
    bool socket = ::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode);
    if (err != EOPNOTSUPP || !socket || ::chmod(path.c_str(), access.mode) != 0)
      return Errno(err, "cannot set the mode of " + path);
  }
  if (::lstat(path.c_str(), &st) != 0) return Errno(errno, "cannot stat " + path);
  if (!S_ISSOCK(st.st_mode) || (st.st_mode & 07777) != access.mode)
    return Status(EAGAIN, path + " changed while it was being set up");
  return Status::Ok();
}

}  // namespace

Result<gid_t> LookUpGroup(const std::string& name) {
  gid_t gid = 0;
  if (ParseId(name, &gid)) return gid;
  group entry{}, *found = nullptr;
  std::vector<char> scratch(kNameLookupBytes);
  int err = ::getgrnam_r(name.c_str(), &entry, scratch.data(), scratch.size(), &found);
  if (err != 0 || found == nullptr) return Status(EINVAL, "unknown group '" + name + "'");
  return found->gr_gid;
}

Status ParseSocketOwner(const std::string& spec, SocketAccess* access) {
  size_t colon = spec.find(':');
  std::string user = spec.substr(0, colon);
  std::string group = colon == std::string::npos ? "" : spec.substr(colon + 1);
  if (user.empty() && group.empty()) return Status(EINVAL, "socket owner '" + spec + "' is not USER[:GROUP]");
  if (colon != std::string::npos && group.empty()) return Status(EINVAL, "socket owner '" + spec + "' names no group");
  if (!user.empty()) {
    ES_ASSIGN_OR_RETURN(access->owner, LookUpUser(user));
  }
  if (!group.empty()) {
    ES_ASSIGN_OR_RETURN(access->group, LookUpGroup(group));
  }
  return Status::Ok();
}

Status ParseSocketMode(const std::string& spec, SocketAccess* access) {
  unsigned value = 0;
  auto [end, ec] = std::from_chars(spec.data(), spec.data() + spec.size(), value, 8);
  if (spec.empty() || ec != std::errc() || end != spec.data() + spec.size() || value > 0777)
    return Status(EINVAL, "socket mode '" + spec + "' is not octal permission bits (such as 0660)");
  access->mode = static_cast<mode_t>(value);
  return Status::Ok();
}

Result<int> ConnectUnixSocket(const std::string& path) {
  ES_ASSIGN_OR_RETURN(sockaddr_un addr, Address(path));
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status(errno, "socket: " + std::string(std::strerror(errno)));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    int err = errno;
    ::close(fd);
    return Status(err, "cannot connect to " + path);
  }
  return fd;
}

Result<int> ListenUnixSocket(const std::string& path, const SocketAccess& access) {
  if (access.mode > 0777) return Status(EINVAL, "socket mode has bits beyond 0777");
  ES_ASSIGN_OR_RETURN(sockaddr_un addr, Address(path));
  ES_RETURN_IF_ERROR(ClearStaleSocket(path, addr));
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Errno(errno, "socket");
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    Status s = Errno(errno, "cannot bind " + path);
    ::close(fd);
    return s;
  }
  // Bound but not listening: a connect() is refused until the access is set.
  Status s = ApplyAccess(path, access);
  if (s.ok() && ::listen(fd, kListenBacklog) != 0) s = Errno(errno, "cannot listen on " + path);
  if (!s.ok()) {
    ::close(fd);
    RemoveSocketFile(path);
    return s;
  }
  return fd;
}

void RemoveSocketFile(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) ::unlink(path.c_str());
}

Status WriteAll(int fd, const void* data, size_t len) {
  const char* p = static_cast<const char*>(data);
  while (len > 0) {
    ssize_t n = ::send(fd, p, len, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return Status(errno ? errno : EPIPE, "write to socket failed");
    p += n;
    len -= static_cast<size_t>(n);
  }
  return Status::Ok();
}

Status SplitHostPort(const std::string& host_port, std::string* host, std::string* port) {
  size_t colon = host_port.rfind(':');
  if (colon == std::string::npos || colon + 1 == host_port.size())
    return Status(EINVAL, "expected HOST:PORT, got '" + host_port + "'");
  *host = host_port.substr(0, colon);
  *port = host_port.substr(colon + 1);
  if (host->size() >= 2 && host->front() == '[' && host->back() == ']') *host = host->substr(1, host->size() - 2);
  return Status::Ok();
}

}  // namespace edgestor
