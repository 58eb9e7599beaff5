#!/usr/bin/env bash
# The daemon's sockets: what a socket path may replace (only a stale
# socket: never the pool image or any other file), and who may connect
# (the control socket is the daemon's user's, a group at most; NBD and
# vhost-user sockets can be given to the user QEMU runs as). The access
# checks that change owners run as root only.
# Usage: daemon_sockets_test.sh PATH/TO/edgestor
set -uo pipefail

EDGESTOR=$(realpath "$1")
work=$(mktemp -d /tmp/edgestor-sockets-test.XXXXXX)
pool=$work/pool.img
sock=$work/pool.nbd.sock
control=$work/pool.control.sock

cleanup() {
  [[ -n $daemon_pid ]] && kill -9 "$daemon_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=tests/lib/daemon.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/daemon.sh"
need() { command -v "$1" >/dev/null || { echo "skip: $1 is not installed"; return 1; }; }

mode_of() { stat -c %a "$1"; }
owner_of() { stat -c %U:%G "$1"; }
# identity PATH: what must not change about a file a command was refused on.
identity() { stat -c '%i %s %F' "$1"; }
# A socket file left by a server that died: bound, never listened on, closed.
stale_socket() { python3 -c 'import socket, sys; s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.close()' "$1"; }

"$EDGESTOR" pool create "$pool" --size 1G >/dev/null || exit 1
"$EDGESTOR" --pool "$pool" vol create vol0 --size 64M >/dev/null || exit 1
pool_identity=$(identity "$pool")

# --- What a socket path may replace ---------------------------------------
check "serve --control naming the pool image is refused" \
  refuses_saying "regular file" timeout 10 "$EDGESTOR" serve --pool "$pool" --control "$pool"
check "serve --nbd-socket naming the pool image is refused" \
  refuses_saying "regular file" timeout 10 "$EDGESTOR" serve --pool "$pool" --nbd-socket "$pool"
check "the pool image is still there, the same file" test "$(identity "$pool")" = "$pool_identity"
check "fsck: the pool is intact" "$EDGESTOR" pool fsck "$pool"

stale_socket "$control"
stale_socket "$sock"
start_daemon || exit 1
check "a daemon starts over the stale sockets a killed one left" test -S "$control" -a -S "$sock"
"$EDGESTOR" pool create "$work/other.img" --size 1G >/dev/null || exit 1
check "another pool's daemon does not take over the live control socket" \
  refuses_saying "listening" timeout 10 "$EDGESTOR" serve --pool "$work/other.img" --control "$control"
check "nor the live NBD socket" \
  refuses_saying "listening" timeout 10 "$EDGESTOR" serve --pool "$work/other.img" --nbd-socket "$sock"
check "the first daemon still answers" rpc pool.info

check "export vhost --socket naming the pool image is refused, saying why" \
  refuses_saying "regular file" "$EDGESTOR" --pool "$pool" export vhost vol0 --socket "$pool"
check "the pool image is still there, the same file" test "$(identity "$pool")" = "$pool_identity"
echo "notes" >"$work/notes.txt"
check "export vhost over any regular file is refused" \
  refuses "$EDGESTOR" --pool "$pool" export vhost vol0 --socket "$work/notes.txt"
check "that file is kept" grep -qx notes "$work/notes.txt"
mkdir "$work/dir"
check "export vhost over a directory is refused" refuses "$EDGESTOR" --pool "$pool" export vhost vol0 --socket "$work/dir"
ln -s "$pool" "$work/link.sock"
check "export vhost over a symlink to the pool is refused" \
  refuses "$EDGESTOR" --pool "$pool" export vhost vol0 --socket "$work/link.sock"
check "the symlink and the pool are kept" test -L "$work/link.sock" -a "$(identity "$pool")" = "$pool_identity"
check "export vhost over the live NBD socket is refused" \
  refuses_saying "listening" "$EDGESTOR" --pool "$pool" export vhost vol0 --socket "$sock"
if need qemu-io; then
  check "NBD still serves after all that" qemu-io -f raw -c 'write -P 7 0 64k' -c 'read -P 7 0 64k' "$(uri vol0)"
fi
stale_socket "$work/stale.sock"
check "export vhost replaces a stale socket" "$EDGESTOR" --pool "$pool" export vhost vol0 --socket "$work/stale.sock"

# --- Who may connect -------------------------------------------------------
check "the control socket is the daemon's user's only (0600)" test "$(mode_of "$control")" = 600
check "the NBD socket too by default (0600)" test "$(mode_of "$sock")" = 600
check "a vhost-user socket too by default (0600)" test "$(mode_of "$work/stale.sock")" = 600
check "export vhost --socket-mode 0660 is applied" \
  "$EDGESTOR" --pool "$pool" export vhost vol0 --socket "$work/g.sock" --socket-mode 0660
check "... as 0660" test "$(mode_of "$work/g.sock")" = 660
check "a bad --socket-mode is refused, saying why" \
  refuses_saying "octal" "$EDGESTOR" --pool "$pool" export vhost vol0 --socket "$work/bad.sock" --socket-mode 0999
check "an unknown --socket-owner is refused, saying why" \
  refuses_saying "unknown user" "$EDGESTOR" --pool "$pool" export vhost vol0 --socket "$work/bad.sock" --socket-owner no-such-user-edgestor
check "no socket is left behind by the refusals" test ! -e "$work/bad.sock"
check "SIGTERM drains and exits 0" stop_daemon
check "the daemon's sockets are gone" test ! -e "$control" -a ! -e "$sock"

if [[ $(id -u) -eq 0 ]] && need setpriv && id nobody >/dev/null 2>&1; then
  chmod 0755 "$work"  # let nobody reach the sockets; their own modes decide
  as_nobody() { setpriv --reuid=nobody --regid=nogroup --clear-groups "$@"; }
  start_daemon -- --nbd-socket-owner nobody --control-group adm || exit 1
  check "--nbd-socket-owner gives the NBD socket to that user" test "$(owner_of "$sock")" = nobody:root
  check "--control-group: the control socket is 0660, of that group" \
    test "$(mode_of "$control")" = 660 -a "$(owner_of "$control")" = root:adm
  check "that user may not use the control socket" refuses as_nobody /usr/bin/python3 -c \
    'import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])' "$control"
  if need nbdinfo; then
    check "that user reads the NBD export (nbdinfo)" as_nobody nbdinfo --size "$(uri vol0)"
  else
    check "that user connects to the NBD socket" as_nobody /usr/bin/python3 -c \
      'import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])' "$sock"
  fi
  check "export vhost --socket-owner nobody:nogroup --socket-mode 0600" \
    "$EDGESTOR" --pool "$pool" export vhost vol0 --socket "$work/qemu.sock" --socket-owner nobody:nogroup --socket-mode 0600
  check "... gives the vhost-user socket to that user" \
    test "$(owner_of "$work/qemu.sock")" = nobody:nogroup -a "$(mode_of "$work/qemu.sock")" = 600
  check "that user connects to its vhost-user socket" as_nobody /usr/bin/python3 -c \
    'import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])' "$work/qemu.sock"
  check "export.add over JSON-RPC takes socket_owner and socket_mode" \
    rpc export.add '{"name": "vol0", "protocol": "vhost-user-blk", "socket": "'"$work/rpc.sock"'", "socket_owner": ":nogroup", "socket_mode": "0660"}'
  check "... applied" test "$(owner_of "$work/rpc.sock")" = root:nogroup -a "$(mode_of "$work/rpc.sock")" = 660
  check "SIGTERM drains and exits 0" stop_daemon
else
  echo "skip: the owner checks need root, setpriv and the user nobody"
fi

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
