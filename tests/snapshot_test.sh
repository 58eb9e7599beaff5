#!/usr/bin/env bash
# Snapshots, rollback, clones and flatten end to end: the CLI offline (its
# output, accounting and refusals), then the daemon with real NBD clients:
# qemu-io writes, a snapshot read back read-only as VOL@SNAP, nbdinfo, a
# raw NBD client whose write to the snapshot must fail with EPERM, rollback
# refused while a client is attached (NBD or vhost-user) and forced, roll
# forward, and fsck. Usage: snapshot_test.sh PATH/TO/edgestor
set -uo pipefail

EDGESTOR=$(realpath "$1")
work=$(mktemp -d /tmp/edgestor-snapshot-test.XXXXXX)
pool=$work/pool.img
sock=$work/pool.nbd.sock
unset EDGESTOR_POOL EDGESTOR_CONTROL
client_pid=

cleanup() {
  [[ -n $client_pid ]] && kill "$client_pid" 2>/dev/null
  [[ -n $daemon_pid ]] && kill -9 "$daemon_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=tests/lib/daemon.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/daemon.sh"
MiB=$((1 << 20))

# fails_cleanly PATTERN ARGS...: `edgestor ARGS` exits 1 with one line on
# stderr (log warnings aside), which says PATTERN.
fails_cleanly() {
  local pattern=$1 rc=0 err
  shift
  err=$(es "$@" 2>&1 >/dev/null) || rc=$?
  [[ $rc -eq 1 ]] || { echo "exit status $rc, expected 1: $err"; return 1; }
  [[ $(grep -vc '^edgestor: warning: ' <<<"$err") -eq 1 ]] || { echo "expected one line: $err"; return 1; }
  grep -q -- "$pattern" <<<"$err" || { echo "does not say '$pattern': $err"; return 1; }
}
# exits_with STATUS ARGS...
exits_with() {
  local want=$1 rc=0
  shift
  es "$@" >/dev/null 2>&1 || rc=$?
  [[ $rc -eq $want ]] || { echo "exit status $rc, expected $want"; return 1; }
}
# says PATTERN ARGS...: `edgestor ARGS` succeeds and prints PATTERN (ERE) on stdout.
says() {
  local pattern=$1 out
  shift
  out=$(es "$@") || return 1
  echo "$out"
  grep -qE -- "$pattern" <<<"$out" || { echo "stdout does not match '$pattern'"; return 1; }
}
# json_holds EXPR ARGS...: the JSON `edgestor ARGS` prints satisfies EXPR
# (Python; the JSON is d, the snapshots of a snap list by name are s).
json_holds() {
  local expr=$1
  shift
  es "$@" | python3 -c "
import json, sys
d = json.load(sys.stdin)
s = {x['name']: x for x in d.get('snapshots', [])} if isinstance(d, dict) else {}
assert $expr, json.dumps(d, indent=1)"
}
# same_content NAME FILE: the first bytes of volume (or snapshot) NAME are FILE's.
same_content() { es vol read "$1" --length "$(stat -c %s "$2")" | cmp - "$2"; }
# The automatic snapshot a rollback's output names (the roll-forward hint).
kept_from() { grep -oE 'snap rollback [^ ]+@rollback-[0-9-]+' "$1" | head -n 1 | sed 's/.*@//'; }

head -c $((4 * MiB)) /dev/zero | tr '\0' '\252' >"$work/aa"  # 0xaa
head -c $((4 * MiB)) /dev/zero | tr '\0' '\273' >"$work/bb"  # 0xbb

echo "== offline"
"$EDGESTOR" pool create "$pool" --size 1G >/dev/null || exit 1
es vol create vol --size 64M >/dev/null || exit 1
check "write pattern A" es vol write vol --input "$work/aa"
check "snap create vol@a" says "^created snapshot vol@a \(64 MiB, 4 MiB referenced\)" snap create vol@a
check "write pattern B over it" es vol write vol --input "$work/bb"
check "snap list shows it in a table" says "^vol@a +[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9:]{8} +4 MiB +4 MiB +- +-$" snap list
check "snap list VOL --json: bytes, unique data counted as used" \
  json_holds "len(s) == 1 and s['a']['full_name'] == 'vol@a' and s['a']['referenced_bytes'] == 4 << 20 and s['a']['used_bytes'] == 4 << 20 and not s['a']['automatic'] and s['a']['clones'] == []" \
  snap list vol --json
check "vol info --json: snapshot count and sharing" \
  json_holds "d['snapshot_count'] == 1 and d['used_bytes'] == 8 << 20 and d['used_by_snapshots_bytes'] == 4 << 20 and d['origin'] == ''" \
  vol info vol --json
check "vol info shows them" says "^used by snapshots: +4 MiB" vol info vol
check "the snapshot reads as pattern A (vol read VOL@SNAP)" same_content vol@a "$work/aa"
check "the volume reads as pattern B" same_content vol "$work/bb"

check "a name without @ is refused" fails_cleanly "expected VOLUME@SNAPSHOT" snap create vol
check "a bad snapshot name is refused" fails_cleanly "invalid snapshot name '.x'" snap create vol@.x
check "a bad volume name is refused" fails_cleanly "invalid volume name 'a/b'" snap create a/b@x
check "a missing volume is refused" fails_cleanly "no volume named 'nope'" snap create nope@x
check "a second snapshot of the same name is refused" fails_cleanly "already exists" snap create vol@a
check "deleting a missing snapshot is refused" fails_cleanly "no snapshot named 'vol@nope'" snap delete vol@nope
check "snap create without an argument is a usage error" exits_with 2 snap create
check "an unknown option is a usage error" exits_with 2 snap rollback vol@a --bogus

check "clone vol@a c1" says "^created volume c1: 64 MiB, a clone of vol@a" clone vol@a c1
check "the clone reads as pattern A" same_content c1 "$work/aa"
check "vol list shows the clone's origin" says "^c1 .* vol@a$" vol list
check "snap list shows the clone" json_holds "s['a']['clones'] == ['c1']" snap list --json
check "deleting a snapshot with a clone is refused" fails_cleanly "has clones (c1)" snap delete vol@a
check "deleting a volume with snapshots is refused" fails_cleanly "has 1 snapshot" vol delete vol
check "clone of a missing snapshot is refused" fails_cleanly "no snapshot named 'vol@zz'" clone vol@zz c2
check "clone to an existing name is refused" fails_cleanly "already exists" clone vol@a vol

es snap rollback vol@a >"$work/rollback.out" 2>&1
check "rollback prints how to roll forward" grep -qE "snap rollback vol@rollback-[0-9-]+$" "$work/rollback.out"
kept=$(kept_from "$work/rollback.out")
check "after rollback the volume reads as pattern A" same_content vol "$work/aa"
check "the kept snapshot is automatic and holds pattern B" bash -c "
  '$EDGESTOR' --pool '$pool' vol read 'vol@$kept' --length 4M | cmp - '$work/bb' &&
  '$EDGESTOR' --pool '$pool' snap list vol --json | python3 -c \"import json,sys; s={x['name']: x for x in json.load(sys.stdin)['snapshots']}; assert s['$kept']['automatic'] and s['$kept']['used_bytes'] == 4 << 20, s\""
check "roll forward to the kept snapshot" says "rolled back volume vol to snapshot vol@$kept" snap rollback "vol@$kept" --discard-current
check "after rolling forward the volume reads as pattern B" same_content vol "$work/bb"
check "--discard-current kept no new snapshot" json_holds "sorted(s) == sorted(['a', '$kept'])" snap list vol --json

check "flatten a volume that is no clone is refused" fails_cleanly "not a clone" vol flatten vol
check "vol flatten c1 copies what it shared" says "^flattened volume c1: copied 64 clusters shared with vol@a" vol flatten c1
check "the flattened clone has no origin and still reads as pattern A" bash -c "
  '$EDGESTOR' --pool '$pool' vol info c1 --json | python3 -c \"import json,sys; d=json.load(sys.stdin); assert d['origin'] == '' and d['used_bytes'] == 4 << 20, d\" &&
  '$EDGESTOR' --pool '$pool' vol read c1 --length 4M | cmp - '$work/aa'"
check "now vol@a can be deleted" says "^deleted snapshot vol@a$" snap delete vol@a
check "and the automatic one" es snap delete "vol@$kept"
check "and the volume" es vol delete vol
check "fsck is clean offline" es pool fsck

echo "== daemon"
start_daemon || exit 1
check "vol create through the daemon" es vol create live --size 64M
check "qemu-io writes pattern A (0xaa)" qemu-io -f raw -c 'write -P 0xaa 0 4M' "$(uri live)"
check "snap create through the daemon" says "^created snapshot live@s1 " snap create live@s1
check "qemu-io writes pattern B (0xbb)" qemu-io -f raw -c 'write -P 0xbb 0 4M' "$(uri live)"
check "qemu-io reads pattern A from live@s1 (read-only)" qemu-io -r -f raw -c 'read -P 0xaa 0 4M' "$(uri live@s1)"
check "and pattern B from live" qemu-io -r -f raw -c 'read -P 0xbb 0 4M' "$(uri live)"
# Copy-on-write with a real client: qemu-io's aio_write puts many 4 KiB
# writes in flight at once into clusters a snapshot shares (several into
# the same 64 KiB cluster, one with FUA); each is merged with the old blocks
# of its cluster, the snapshot keeps them all.
check "vol create cowv" es vol create cowv --size 4M
check "qemu-io fills cowv with 0xaa" qemu-io -f raw -c 'write -P 0xaa 0 4M' "$(uri cowv)"
check "snap create cowv@s" es snap create cowv@s
cow_writes=()
for off in 0 8k 20k 60k 64k 72k 1M 1028k 2044k; do cow_writes+=(-c "aio_write -P 0xcc $off 4k"); done
check "qemu-io writes 9 blocks at once into shared clusters, then one with FUA" \
  qemu-io -f raw "${cow_writes[@]}" -c aio_flush -c 'write -f -P 0xdd 128k 4k' "$(uri cowv)"
check "each written block reads back, its neighbours keep 0xaa" \
  qemu-io -r -f raw -c 'read -P 0xcc 0 4k' -c 'read -P 0xaa 4k 4k' -c 'read -P 0xcc 8k 4k' \
  -c 'read -P 0xaa 12k 8k' -c 'read -P 0xcc 20k 4k' -c 'read -P 0xcc 60k 8k' -c 'read -P 0xaa 68k 4k' \
  -c 'read -P 0xcc 72k 4k' -c 'read -P 0xdd 128k 4k' -c 'read -P 0xaa 132k 892k' -c 'read -P 0xcc 1M 4k' \
  -c 'read -P 0xcc 1028k 4k' -c 'read -P 0xcc 2044k 4k' -c 'read -P 0xaa 2048k 2M' "$(uri cowv)"
check "cowv@s still reads 0xaa whole" qemu-io -r -f raw -c 'read -P 0xaa 0 4M' "$(uri cowv@s)"
check "snap delete cowv@s" es snap delete cowv@s
check "vol delete cowv" es vol delete cowv
check "qemu-io cannot open live@s1 for writing" refuses_saying "Permission denied" qemu-io -f raw -c 'write -P 0xcc 0 4k' "$(uri live@s1)"
check "nbdinfo shows live@s1 read-only" bash -c "nbdinfo '$(uri live@s1)' | grep -q 'is_read_only: true'"
check "and live writable" bash -c "nbdinfo '$(uri live)' | grep -q 'is_read_only: false'"
check "nbdinfo --list lists volumes only" bash -c "out=\$(nbdinfo --list '$(uri live)') && grep -q 'export=\"live\"' <<<\"\$out\" && ! grep -q 'live@s1' <<<\"\$out\""
raw_write_refused() {  # a client that ignores NBD_FLAG_READ_ONLY and writes anyway
  python3 - "$sock" live@s1 <<'PY'
import socket, struct, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
def recv(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            sys.exit("server closed the connection")
        b += c
    return b
recv(18)                                  # greeting
s.sendall(struct.pack(">I", 3))           # FIXED_NEWSTYLE | NO_ZEROES
name = sys.argv[2].encode()
s.sendall(struct.pack(">QII", 0x49484156454F5054, 1, len(name)) + name)  # NBD_OPT_EXPORT_NAME
size, flags = struct.unpack(">QH", recv(10))
assert flags & 2, "NBD_FLAG_READ_ONLY not advertised: flags %#x" % flags
s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 1, 7, 0, 4096) + b"\xcc" * 4096)  # WRITE
magic, error, cookie = struct.unpack(">IIQ", recv(16))
assert cookie == 7 and error == 1, "write answered with error %d, expected EPERM (1)" % error
s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, 8, 0, 4096))  # READ
magic, error, cookie = struct.unpack(">IIQ", recv(16))
assert error == 0 and recv(4096) == b"\xaa" * 4096, "the snapshot changed"
s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 2, 9, 0, 0))  # DISC
PY
}
check "a raw NBD write to live@s1 fails with EPERM and changes nothing" raw_write_refused

# attach NAME [qemu-io option]: a client that stays connected (qemu-io
# sleeping) in the background; waits until the daemon counts it.
attach() {
  qemu-io ${2:+"$2"} -f raw -c 'sleep 30000' "$(uri "$1")" >/dev/null 2>&1 &
  client_pid=$!
  for _ in $(seq 100); do
    rpc export.list | python3 -c "
import json, sys
e = [x for x in json.load(sys.stdin)['exports'] if x['name'] == '$1' and x['protocol'] == 'nbd']
sys.exit(not e or e[0]['connections'] == 0)" && return 0
    sleep 0.1
  done
  echo "the client on $1 did not attach"
  return 1
}
detach() {
  kill "$client_pid" 2>/dev/null
  wait "$client_pid" 2>/dev/null
  client_pid=
}
check "a client attaches to live@s1" attach live@s1 -r
check "export list shows the attached snapshot" bash -c "'$EDGESTOR' --pool '$pool' export list | grep -qE '^live@s1 +nbd .* 1 +-$'"
check "snap delete is refused while a client reads the snapshot" fails_cleanly "live@s1' is attached by 1 NBD connection" snap delete live@s1
detach
check "a client attaches to live (writable)" attach live
check "rollback is refused while it is attached, naming the attachment" \
  fails_cleanly "live' is attached by 1 NBD connection.*--force" snap rollback live@s1
check "the client is still attached after the refusal" kill -0 "$client_pid"
es snap rollback live@s1 --force >"$work/forced.out" 2>&1
check "rollback --force disconnects the client and says so" grep -q "^disconnected 1 NBD connection of live$" "$work/forced.out"
check "and rolls back" grep -q "^rolled back volume live to snapshot live@s1$" "$work/forced.out"
# (qemu-io itself sleeps on, disconnected.)
connections_of() {
  rpc export.list | python3 -c "import json, sys; print(sum(x['connections'] for x in json.load(sys.stdin)['exports'] if x['name'] == '$1'))"
}
check "the daemon no longer counts the client" test "$(connections_of live)" -eq 0
detach
kept=$(kept_from "$work/forced.out")
check "the rollback kept the current content (${kept:-none})" test -n "$kept"
check "live reads pattern A after the rollback" qemu-io -r -f raw -c 'read -P 0xaa 0 4M' "$(uri live)"
check "roll forward with snap rollback live@$kept" says "rolled back volume live to snapshot live@$kept" snap rollback "live@$kept"
kept2=$(kept_from "$work/out")
check "live reads pattern B again" qemu-io -r -f raw -c 'read -P 0xbb 0 4M' "$(uri live)"

# Now: live = B (shared with $kept), s1 = A (shared with $kept2, kept by
# the roll forward), $kept = B. Nothing is unique to any one snapshot; the
# snapshots together hold A alone.
check "snap list --json accounting: automatic snapshots, nothing unique to one" \
  json_holds "sorted(s) == sorted(['s1', '$kept', '$kept2']) and not s['s1']['automatic'] and s['$kept']['automatic'] and s['$kept2']['automatic'] and all(x['referenced_bytes'] == 4 << 20 and x['used_bytes'] == 0 for x in s.values())" \
  snap list live --json
check "vol info: 3 snapshots, A and B used, A by snapshots alone" \
  json_holds "d['snapshot_count'] == 3 and d['used_bytes'] == 8 << 20 and d['used_by_snapshots_bytes'] == 4 << 20 and d['allocated_bytes'] == 4 << 20" \
  vol info live --json
check "snap delete of the roll forward's snapshot through the daemon" es snap delete "live@$kept2"
check "then live@s1 holds pattern A alone: its used bytes" json_holds "s['s1']['used_bytes'] == 4 << 20 and s['$kept']['used_bytes'] == 0" snap list live --json

vsock=$work/live.vhost.sock
check "export live over vhost-user" es export vhost live --socket "$vsock"
check "rollback is refused while it is vhost-exported" fails_cleanly "exported over vhost-user on $vsock" snap rollback live@s1
check "rollback --force --discard-current removes the export and says so" \
  says "^removed the vhost-user export of live on $vsock$" snap rollback live@s1 --force --discard-current
check "the vhost-user socket is gone" test ! -e "$vsock"
check "live reads pattern A" qemu-io -r -f raw -c 'read -P 0xaa 0 4M' "$(uri live)"
check "--discard-current kept no snapshot" json_holds "sorted(s) == sorted(['s1', '$kept'])" snap list live --json
check "a snapshot exported over vhost-user is read-only" bash -c "
  '$EDGESTOR' --pool '$pool' export vhost live@s1 --socket '$work/s1.vhost.sock' >/dev/null &&
  '$EDGESTOR' --pool '$pool' export list --json | python3 -c \"import json,sys; e=[x for x in json.load(sys.stdin)['exports'] if x['name'] == 'live@s1' and x['protocol'] == 'vhost-user-blk']; assert e and e[0]['readonly'], e\""
check "snap delete is refused while the snapshot is vhost-exported" fails_cleanly "exported over vhost-user" snap delete live@s1
check "export remove" es export remove --socket "$work/s1.vhost.sock"

check "clone through the daemon" says "^created volume lc: 64 MiB, a clone of live@$kept" clone "live@$kept" lc
check "the clone is served over NBD with B" qemu-io -f raw -c 'read -P 0xbb 0 4M' -c 'write -P 0xdd 4M 1M' "$(uri lc)"
check "vol info lc: its origin" json_holds "d['origin'] == 'live@$kept'" vol info lc --json
check "snap delete of the clone's origin is refused" fails_cleanly "has clones (lc)" snap delete "live@$kept"
check "vol delete of a volume with snapshots is refused through the daemon" fails_cleanly "snapshot" vol delete live
check "vol flatten through the daemon" says "^flattened volume lc: copied [0-9]+ clusters shared with live@$kept" vol flatten lc
check "the flattened clone reads B and its own write" qemu-io -r -f raw -c 'read -P 0xbb 0 4M' -c 'read -P 0xdd 4M 1M' "$(uri lc)"
check "vol info lc: no origin" json_holds "d['origin'] == ''" vol info lc --json
# rpc_holds EXPR METHOD PARAMS: the method's result (d) satisfies EXPR.
rpc_holds() {
  rpc "$2" "$3" | python3 -c "import json, sys; d = json.load(sys.stdin); assert $1, d"
}
check "snap.list over JSON-RPC" \
  rpc_holds "sorted(x['full_name'] for x in d['snapshots']) == sorted(['live@s1', 'live@$kept'])" snap.list '{"volume": "live"}'
check "snap.rollback over JSON-RPC names the kept snapshot as snap.rollback takes it" \
  rpc_holds "d['kept_snapshot'].startswith('rollback-') and d['detached'] == {'nbd_connections': 0, 'vhost_exports': [], 'file_exports': []}" \
  snap.rollback "{\"volume\": \"live\", \"snapshot\": \"$kept\"}"
check "live reads pattern B" qemu-io -r -f raw -c 'read -P 0xbb 0 4M' "$(uri live)"
check "daemon stops cleanly" stop_daemon
check "fsck is clean at the end" says "is clean \(.*3 snapshots\)" pool fsck

echo "snapshot test: $passed passed, $failed failed"
((failed == 0))
