#!/usr/bin/env bash
# The daemon against real NBD clients: qemu-io, qemu-img, nbdinfo, nbdcopy
# and fio's nbd engine; the control socket through the CLI; SIGTERM and
# kill -9 recovery. Usage: daemon_test.sh PATH/TO/edgestor
set -uo pipefail

EDGESTOR=$(realpath "$1")
work=$(mktemp -d /tmp/edgestor-daemon-test.XXXXXX)
pool=$work/pool.img
sock=$work/pool.nbd.sock

cleanup() {
  [[ -n $daemon_pid ]] && kill -9 "$daemon_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=tests/lib/daemon.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/daemon.sh"
need() { command -v "$1" >/dev/null || { echo "skip: $1 is not installed"; return 1; }; }


"$EDGESTOR" pool create "$pool" --size 4G >/dev/null || exit 1
"$EDGESTOR" --pool "$pool" vol create vol0 --size 256M >/dev/null || exit 1
start_daemon || exit 1

check "CLI creates a volume through the control socket" "$EDGESTOR" --pool "$pool" vol create vol1 --size 64M
check "CLI lists through the control socket" bash -c "'$EDGESTOR' --pool '$pool' vol list --json | python3 -c 'import json,sys; v=json.load(sys.stdin)[\"volumes\"]; assert sorted(x[\"name\"] for x in v)==[\"vol0\",\"vol1\"]'"
check "pool info through the control socket while the pool is served" bash -c "'$EDGESTOR' pool info '$pool' --json | python3 -c 'import json,sys; p=json.load(sys.stdin); assert p[\"volume_count\"]==2 and p[\"free_bytes\"]>0'"
check "a second daemon on the same pool is refused" refuses timeout 5 "$EDGESTOR" serve --pool "$pool" --control "$work/other.sock" --nbd-socket "$work/other.nbd"
locked() {
  local out
  out=$("$EDGESTOR" --pool "$pool" vol write vol0 --input /dev/null 2>&1) && return 1
  [[ $out == *"in use by another process"* ]]
}
check "offline data commands see the pool locked" locked

if need nbdinfo; then
  check "nbdinfo sees the export size" bash -c "nbdinfo --size '$(uri vol0)' | grep -qx 268435456"
  check "nbdinfo lists both exports" bash -c "nbdinfo --list '$(uri vol0)' | grep -q vol1"
fi
if need qemu-io; then
  check "qemu-io writes and reads back a pattern" qemu-io -f raw -c 'write -P 0xab 1M 4M' -c 'read -P 0xab 1M 4M' -c 'read -P 0 0 1M' "$(uri vol0)"
  check "qemu-io write-zeroes and discard" qemu-io -f raw -c 'write -z 2M 1M' -c 'read -P 0 2M 1M' -c 'discard 3M 1M' -c 'read -P 0 3M 1M' -c 'read -P 0xab 4M 1M' "$(uri vol0)"
  check "a read past the end fails cleanly" refuses qemu-io -f raw -c 'read 300M 4k' "$(uri vol0)"
  # qemu asks for NBD_INFO_BLOCK_SIZE and itself aligns to the advertised
  # 512 bytes (read-modify-write); clients that agree to no block size are
  # served byte-granular by the daemon (nbd_transmission_test).
  check "qemu-io byte-unaligned write and reads" qemu-io -f raw -c 'write -P 1 209715201 3' -c 'read -P 1 209715201 3' \
    -c 'read -P 0 209715200 1' -c 'read -P 0 209715204 4092' "$(uri vol0)"
  # Eight 512-byte writes in flight at once into the sectors of one block,
  # beside a 4 KiB write into the next: each is a read-modify-write of the
  # block, and none may lose another's sectors.
  sectors=()
  for s in 3 0 6 1 7 2 5 4; do sectors+=(-c "aio_write -P $((s + 0x40)) $((210763776 + s * 512)) 512"); done
  reads=()
  for s in 0 1 2 3 4 5 6 7; do reads+=(-c "read -P $((s + 0x40)) $((210763776 + s * 512)) 512"); done
  check "qemu-io: eight sector writes in flight into one block all land" qemu-io -f raw "${sectors[@]}" \
    -c 'aio_write -P 0x50 210767872 4k' -c aio_flush "${reads[@]}" -c 'read -P 0x50 210767872 4k' "$(uri vol0)"
fi
if need nbdinfo; then
  check "nbdinfo --map shows the trimmed range as a hole" bash -c "nbdinfo --map '$(uri vol0)' | awk '\$1<=3145728 && \$1+\$2>3145728 && /hole/ {f=1} END {exit !f}'"
fi
if need qemu-img; then
  qemu-img create -q -f qcow2 "$work/src.qcow2" 64M
  qemu-io -f qcow2 -c 'write -P 0x5c 0 8M' -c 'write -P 0x33 40M 3M' "$work/src.qcow2" >/dev/null
  check "qemu-img convert qcow2 into the export" qemu-img convert -n -f qcow2 -O raw "$work/src.qcow2" "$(uri vol1)"
  check "qemu-img convert the export back out" qemu-img convert -f raw -O qcow2 "$(uri vol1)" "$work/back.qcow2"
  check "qemu-img compare: identical" qemu-img compare -f qcow2 -F qcow2 "$work/src.qcow2" "$work/back.qcow2"
fi
if need nbdcopy; then
  check "nbdcopy the export to a file and compare" bash -c "nbdcopy '$(uri vol1)' '$work/copy.raw' && qemu-img compare -f raw -F qcow2 '$work/copy.raw' '$work/src.qcow2'"
fi
if fio --enghelp 2>/dev/null | grep -qw nbd; then
  check "fio nbd engine, 4 connections, verify=crc32c" fio --name=v --ioengine=nbd --uri="$(uri vol0)" --rw=randwrite --bs=4k \
    --size=32M --offset_increment=32M --numjobs=4 --iodepth=8 --verify=crc32c --do_verify=1 --verify_state_save=0 --group_reporting
fi
attached_delete_refused() {
  qemu-io -f raw -c 'sleep 5000' "$(uri vol1)" &
  local client=$! out rc=1
  for _ in $(seq 100); do  # until the daemon counts the connection
    rpc export.list | python3 -c 'import json,sys; e={x["name"]: x for x in json.load(sys.stdin)["exports"]}; sys.exit(e["vol1"]["connections"] == 0)' && break
    sleep 0.1
  done
  if ! out=$("$EDGESTOR" --pool "$pool" vol delete vol1 2>&1) && [[ $out == *attached* ]]; then rc=0; fi
  wait "$client"
  echo "$out"
  return $rc
}
check "deleting an attached volume is refused" attached_delete_refused
vsock=$work/vol1.vhost.sock
check "export vhost adds a vhost-user-blk export" "$EDGESTOR" --pool "$pool" export vhost vol1 --socket "$vsock" --queues 2
check "export list shows it with its serial" bash -c "'$EDGESTOR' --pool '$pool' export list --json | python3 -c '
import json, sys
e = [x for x in json.load(sys.stdin)[\"exports\"] if x[\"protocol\"] == \"vhost-user-blk\"]
assert len(e) == 1 and e[0][\"name\"] == \"vol1\" and e[0][\"queues\"] == 2 and e[0][\"serial\"].startswith(\"es\"), e'"
check "a second export on the same socket is refused" refuses "$EDGESTOR" --pool "$pool" export vhost vol0 --socket "$vsock"
vhost_delete_refused() {
  local out
  out=$("$EDGESTOR" --pool "$pool" vol delete vol1 2>&1) && return 1
  grep -q "vhost-user" <<<"$out"
}
check "deleting a vhost-exported volume is refused, saying why" vhost_delete_refused
check "export remove" "$EDGESTOR" --pool "$pool" export remove --socket "$vsock"
check "the socket is gone" test ! -e "$vsock"
check "SIGTERM drains and exits 0" stop_daemon
check "fsck is clean after the daemon stopped" "$EDGESTOR" pool fsck "$pool"

# kill -9 during a write+flush workload: every flushed write must survive.
start_daemon || exit 1
if need qemu-io; then
  (for i in $(seq 0 4000); do
     qemu-io -f raw -c "write -P $((i % 250 + 1)) $((i * 65536)) 64k" -c flush "$(uri vol0)" >/dev/null 2>&1 || break
     echo "$i" >>"$work/flushed"
   done) &
  writer=$!
  sleep 1.5
  kill -9 "$daemon_pid"
  wait "$daemon_pid" 2>/dev/null
  daemon_pid=
  wait "$writer" 2>/dev/null
  last=$(tail -n 1 "$work/flushed" 2>/dev/null || echo -1)
  check "some writes were flushed before the kill (last: $last)" test "$last" -ge 0
  start_daemon || exit 1
  verify_flushed() {
    for i in $(seq 0 "$last"); do
      out=$(qemu-io -f raw -c "read -P $((i % 250 + 1)) $((i * 65536)) 64k" "$(uri vol0)" 2>&1)
      if [[ $out == *"failed"* || $out != *"read 65536/65536"* ]]; then echo "write $i lost: $out"; return 1; fi
    done
  }
  check "after kill -9 and restart every flushed write is there" verify_flushed
  check "SIGTERM after recovery exits 0" stop_daemon
  check "fsck is clean after kill -9 recovery" "$EDGESTOR" pool fsck "$pool"
fi

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
