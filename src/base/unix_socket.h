// Small helpers for unix sockets: the daemon's control socket, the NBD and
// vhost-user sockets, and their clients.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <optional>
#include <string>

#include "base/status.h"

namespace edgestor {

// Who may connect to a listening socket. Connecting to a unix socket needs
// write permission on its file, so the mode decides who gets in: 0600 lets
// only the owner (the daemon's user unless `owner` says otherwise), 0660
// its group too.
struct SocketAccess {
  std::optional<uid_t> owner;  // unset: the process's user
  std::optional<gid_t> group;  // unset: the process's group
  mode_t mode = 0600;          // permission bits only (at most 0777)
};

// Default permission bits of every socket: the owner only.
inline constexpr mode_t kDefaultSocketMode = 0600;

// "USER", "USER:GROUP" or ":GROUP" (names or numeric ids) into
// access->owner/group. EINVAL naming what is unknown.
Status ParseSocketOwner(const std::string& spec, SocketAccess* access);
// An octal mode such as "0660" or "660" into access->mode: permission bits
// only. EINVAL otherwise.
Status ParseSocketMode(const std::string& spec, SocketAccess* access);
// Splits "host:port" or "[v6host]:port" (TCP listeners: NBD, metrics).
// EINVAL without a port.
Status SplitHostPort(const std::string& host_port, std::string* host, std::string* port);
// A group name or numeric id.
Result<gid_t> LookUpGroup(const std::string& name);

// Creates, binds and listens on a socket at `path`, owned and with the mode
// `access` gives (applied before listen(), so nobody can connect while the
// file still has the default permissions).
//
// Only a stale socket (a socket file nobody accepts on, left by a process
// that died) is replaced: a path holding anything else (a regular file, a
// directory, a symlink) is EEXIST and left alone; a socket a live server
// accepts on is EADDRINUSE. On any error nothing is left at `path` that was
// not there before.
Result<int> ListenUnixSocket(const std::string& path, const SocketAccess& access = {});
// Removes the socket file at `path` when its server stops; whatever else may
// have been put there since is left alone.
void RemoveSocketFile(const std::string& path);
Result<int> ConnectUnixSocket(const std::string& path);
Status WriteAll(int fd, const void* data, size_t len);

}  // namespace edgestor
