# Shared by the end-to-end tests that run `edgestor serve`: checks that
# count and report, the control socket, and starting/stopping the daemon.
# Source it after setting EDGESTOR (the binary), work (a temp dir) and pool
# (the pool file), and for uri, sock (the NBD socket); it uses
# $work/pool.control.sock and $work/daemon.log.
# shellcheck shell=bash disable=SC2154  # EDGESTOR, work, pool: set by the caller

passed=0
failed=0
daemon_pid=

# The CLI on the pool; a volume's NBD URI on $sock (the daemon's NBD socket).
es() { "$EDGESTOR" --pool "$pool" "$@"; }
uri() { echo "nbd+unix:///$1?socket=$sock"; }

# check "what" command...: runs the command, counts and reports the result
# (with the command's last output lines when it fails).
check() {
  local what=$1
  shift
  if "$@" >"$work/out" 2>&1; then
    echo "ok: $what"
    passed=$((passed + 1))
  else
    echo "FAIL: $what"
    sed 's/^/    /' "$work/out" | tail -n 20
    failed=$((failed + 1))
  fi
}
refuses() { ! "$@"; }
# refuses_saying PATTERN command...: fails, and says PATTERN on stderr/stdout.
refuses_saying() {
  local pattern=$1 out
  shift
  if out=$("$@" 2>&1); then echo "unexpectedly succeeded: $out"; return 1; fi
  grep -q -- "$pattern" <<<"$out" || { echo "error does not say '$pattern': $out"; return 1; }
}

# rpc METHOD [PARAMS-JSON]: the result of a control call, as JSON.
rpc() {
  python3 - "$work/pool.control.sock" "$1" "${2:-{\}}" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
request = {"jsonrpc": "2.0", "id": 1, "method": sys.argv[2], "params": json.loads(sys.argv[3])}
s.sendall((json.dumps(request) + "\n").encode())
reply = b""
while not reply.endswith(b"\n"):
    chunk = s.recv(65536)
    if not chunk:
        sys.exit("control socket closed")
    reply += chunk
print(json.dumps(json.loads(reply)["result"]))
PY
}

# start_daemon [GLOBAL-OPTION...] [-- SERVE-OPTION...]: starts the daemon
# on $pool in the background (pid in $daemon_pid). Started means answering
# on its control socket: a stale socket file from a killed daemon, or an
# offline CLI call that takes the pool lock first, must not count (the
# latter would even make the new daemon fail to lock).
start_daemon() {
  local global=() serve=()
  while (($#)); do
    if [[ $1 == -- ]]; then shift; serve=("$@"); break; fi
    global+=("$1")
    shift
  done
  "$EDGESTOR" "${global[@]}" serve --pool "$pool" "${serve[@]}" 2>>"$work/daemon.log" &
  daemon_pid=$!
  for _ in $(seq 300); do
    rpc pool.info >/dev/null 2>&1 && return 0
    kill -0 "$daemon_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "daemon did not start:"; cat "$work/daemon.log"
  return 1
}
# SIGTERM: the daemon drains, checkpoints and must exit 0.
stop_daemon() {
  kill -TERM "$daemon_pid"
  wait "$daemon_pid"
  local rc=$?
  daemon_pid=
  return $rc
}
