#!/usr/bin/env bash
# A real QEMU guest on an edgestor volume, end to end: Debian's kernel with
# the initramfs of scripts/build-guest.sh boots with the volume as its disk,
# and tests/guest/init.sh checks the disk's size, makes and checks an ext4
# filesystem, writes a per-block pattern over the whole disk with O_DIRECT
# and reads it back, discards a range and flushes, and reports on the serial
# console. Then the host reads the volume back, through the daemon's NBD
# export and offline through the engine after a clean daemon shutdown, and
# requires exactly what the guest wrote.
#
# Usage: guest_test.sh PATH/TO/edgestor [options]
#   --transport nbd-nvme|nbd-virtio|vhost   how QEMU attaches the volume
#             nbd-*: QEMU's NBD client on the daemon's export, seen by the
#             guest as an NVMe controller or a virtio-blk device.
#             vhost: the daemon's vhost-user-blk export (edgestor export
#             vhost, 2 queues) on --vhost-socket; the guest finds the disk
#             by the serial the back-end reports.
#   --vhost-socket PATH     the vhost-user-blk socket (default: WORK/VOL.vhost.sock;
#                           @WORK@ in PATH or in --serve-arg is the temp dir)
#   --serve-arg ARG         an extra argument for `edgestor serve` (repeatable)
#   --accel auto|kvm|tcg    default auto ($EDGESTOR_GUEST_ACCEL): KVM if a
#                           probe boot works, else TCG
#   --guest-dir DIR         kernel + initramfs (default var/guest, $EDGESTOR_GUEST_DIR)
#   --size MIB              volume size in MiB (default 64)
#   --timeout SECONDS       for the guest run (default 600)
#   --restart-backend       vhost only: while the guest reads its pattern back
#                           (written and flushed), kill -9 the daemon, start
#                           it again and re-export; QEMU reconnects and the
#                           new back-end runs again the requests left in
#                           flight (INFLIGHT_SHMFD). Not during writes: a
#                           write acknowledged but not yet flushed is lost
#                           with the back-end, and the guest cannot know.
#   --kill                  stop the daemon with kill -9 instead of SIGTERM:
#                           the guest's flushes alone must have made its
#                           data durable (checked after recovery)
# Exits 0 on success, 1 on failure, 77 (skip) without QEMU or a kernel.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
here=$repo/tests/guest

usage() { sed -n '/^# Usage:/,/^# Exits/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[[ $# -ge 1 && $1 != -* ]] || usage
EDGESTOR=$(realpath "$1")
shift
transport=nbd-nvme
vhost_socket=
serve_args=()
accel=${EDGESTOR_GUEST_ACCEL:-auto}
guest_dir=${EDGESTOR_GUEST_DIR:-$repo/var/guest}
size_mib=64
guest_timeout=600
kill_daemon=0
restart_backend=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --transport) transport=${2:?}; shift 2 ;;
    --vhost-socket) vhost_socket=${2:?}; shift 2 ;;
    --serve-arg) serve_args+=("${2:?}"); shift 2 ;;
    --accel) accel=${2:?}; shift 2 ;;
    --guest-dir) guest_dir=${2:?}; shift 2 ;;
    --size) size_mib=${2:?}; shift 2 ;;
    --timeout) guest_timeout=${2:?}; shift 2 ;;
    --kill) kill_daemon=1; shift ;;
    --restart-backend) restart_backend=1; shift ;;
    *) usage ;;
  esac
done
case $transport in nbd-nvme | nbd-virtio | vhost) ;; *) usage ;; esac
case $accel in auto | kvm | tcg) ;; *) usage ;; esac

skip() { echo "skip: $*"; exit 77; }
command -v qemu-system-x86_64 >/dev/null || skip "qemu-system-x86_64 is not installed (Debian package qemu-system-x86)"
compgen -G '/boot/vmlinuz-*-amd64' >/dev/null || skip "no /boot/vmlinuz-*-amd64 (Debian package linux-image-amd64)"

work=$(mktemp -d /tmp/edgestor-guest-test.XXXXXX)
pool=$work/pool.img
vol=guest0
size=$((size_mib * 1048576))
ram=512M
serial=edgestor-$vol  # NVMe and virtio-blk serials: at most 20 bytes
seed=$(od -An -N4 -tx4 /dev/urandom | tr -d ' \n')
# Not aligned to clusters (64 KiB) at either end, so the engine's partial
# cluster discard is covered too; 4 KiB aligned, as the guest's dd needs.
discard_offset=$((size / 3 / 1048576 * 1048576 + 12288))
discard_length=$((size / 16 + 8192))
daemon_pid=
qemu_pid=

cleanup() {
  # 2>/dev/null on the group also silences bash's "Killed" job report.
  {
    [[ -n $qemu_pid ]] && kill -9 "$qemu_pid"
    [[ -n $daemon_pid ]] && kill -9 "$daemon_pid"
    wait
  } 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM  # so that the EXIT trap runs

fail() {
  echo "FAIL: $*"
  if [[ -s $work/daemon.log ]]; then echo "--- daemon log (last 20 lines) ---"; tail -n 20 "$work/daemon.log"; fi
  exit 1
}
print_serial() {  # print_serial LOG: the console, without the BIOS's escape codes
  echo "--- guest serial console ($1) ---"
  tr -d '\r' <"$1" | sed 's/\x1b\[[0-9;?]*[a-zA-Z]//g; s/\x1bc//g'
  if [[ -s $1.stderr ]]; then echo "--- qemu stderr ---"; cat "$1.stderr"; fi
  echo "---"
}
size_mib_ok() { [[ $size_mib =~ ^[0-9]+$ ]] && ((size_mib >= 8)); }
size_mib_ok || fail "--size must be a whole number of MiB, at least 8"

echo "transport $transport, volume $vol of $size_mib MiB, seed $seed"
bash "$repo/scripts/build-guest.sh" "$guest_dir" || fail "could not build the guest (scripts/build-guest.sh)"

# --- the daemon ---------------------------------------------------------------
# shellcheck source=tests/lib/daemon.sh
source "$repo/tests/lib/daemon.sh"
# -v for the back-end restart test: its log shows the inflight recovery.
daemon_options() { ((restart_backend)) && echo -v; }
"$EDGESTOR" pool create "$pool" --size 1G >/dev/null || fail "pool create"
"$EDGESTOR" --pool "$pool" vol create "$vol" --size "$size" >/dev/null || fail "vol create"
# shellcheck disable=SC2046  # daemon_options: zero or one word
start_daemon $(daemon_options) -- "${serve_args[@]//@WORK@/$work}" || fail "the daemon did not start"
uri="nbd+unix:///$vol?socket=$work/pool.nbd.sock"

# --- how QEMU attaches the volume ----------------------------------------------
# A new transport is one more case here: the QEMU arguments that make the
# volume the guest's disk, and the serial the guest finds it by (empty: the
# guest takes its only disk).
machine_args=()
disk_args=()
case $transport in
  nbd-nvme | nbd-virtio)
    # discard=unmap: QEMU drops guest discards by default.
    disk_args=(-drive "file=$uri,format=raw,if=none,id=d0,cache=none,discard=unmap")
    if [[ $transport == nbd-nvme ]]; then
      disk_args+=(-device "nvme,drive=d0,serial=$serial")
    else
      disk_args+=(-device "virtio-blk-pci,drive=d0,serial=$serial")
    fi
    ;;
  vhost)
    vhost_socket=${vhost_socket:-$work/$vol.vhost.sock}
    vhost_socket=${vhost_socket//@WORK@/$work}
    if [[ ! -S $vhost_socket ]]; then
      "$EDGESTOR" --pool "$pool" export vhost "$vol" --socket "$vhost_socket" --queues 2 >/dev/null ||
        fail "edgestor export vhost $vol --socket $vhost_socket"
    fi
    # vhost-user shares guest memory with the backend: it must be a shared
    # memfd, attached to the guest through a NUMA node.
    machine_args=(-object "memory-backend-memfd,id=mem,size=$ram,share=on" -numa "node,memdev=mem")
    # reconnect=1: QEMU reconnects to a restarted back-end (--restart-backend).
    disk_args=(-chardev "socket,id=c0,path=$vhost_socket,reconnect=1" -device "vhost-user-blk-pci,chardev=c0,num-queues=2")
    # The back-end answers GET_ID with the volume's stable serial: the
    # guest must find its disk by it (/sys/block/vdX/serial).
    serial=$("$EDGESTOR" --pool "$pool" export list --json |
      python3 -c "import json,sys; print([e['serial'] for e in json.load(sys.stdin)['exports'] if e['protocol'] == 'vhost-user-blk'][0])") ||
      fail "no serial in edgestor export list"
    ;;
esac

# --- booting ------------------------------------------------------------------
# boot ACCEL SECONDS LOG KERNEL-ARGS [QEMU ARGS...]: runs the guest until it
# powers off or the time is up; the serial console goes to LOG.
boot() {
  local accel=$1 seconds=$2 log=$3 append=$4
  shift 4
  : >"$log"
  timeout --kill-after=5 "$seconds" qemu-system-x86_64 \
    -machine q35 -accel "$accel" -m "$ram" -smp 2 \
    -nographic -nodefaults -no-reboot -monitor none -serial "file:$log" \
    -kernel "$guest_dir/vmlinuz" -initrd "$guest_dir/initramfs.cpio.gz" \
    -append "console=ttyS0 panic=-1 quiet $append" "$@" 2>"$log.stderr" &
  qemu_pid=$!
  wait "$qemu_pid"
  local rc=$?
  qemu_pid=
  return $rc
}
guest_result() {  # guest_result LOG: the guest's last GUEST-RESULT line, without the prefix
  tr -d '\r' <"$1" | sed -n 's/^GUEST-RESULT: //p' | tail -n 1
}

# KVM first when it works; QEMU 7.2 guests have aborted or hung on some
# hosts (nested virtualization), so a short boot without a disk decides.
# The verdict is kept in the guest dir per QEMU, host kernel and guest
# kernel, so that a hanging KVM costs the probe's time once, not per test.
choose_accel() {
  if [[ $accel != auto ]]; then echo "accel: $accel (asked for)"; return; fi
  if [[ ! -r /dev/kvm || ! -w /dev/kvm ]]; then accel=tcg; echo "accel: tcg (no usable /dev/kvm)"; return; fi
  local key verdict cache=$guest_dir/accel-probe
  key="$(qemu-system-x86_64 --version | head -n 1) | host $(uname -r) | guest $(cat "$guest_dir/kernel-version")"
  if [[ -f $cache && $(head -n 1 "$cache") == "$key" ]]; then
    accel=$(sed -n 2p "$cache")
    echo "accel: $accel (KVM probe result from $cache: $(sed -n 3p "$cache"); delete it to probe again)"
    return
  fi
  local started=$SECONDS
  boot kvm 60 "$work/probe.log" "edgestor.test=probe" "${machine_args[@]}"
  local rc=$?
  if [[ $(guest_result "$work/probe.log") == PASS ]]; then
    accel=kvm verdict="a KVM guest booted in $((SECONDS - started)) s"
  else
    accel=tcg
    if ((rc == 124 || rc == 137)); then
      verdict="a KVM guest hung (no result in 60 s)"
    else
      verdict="a KVM guest failed (qemu exit $rc: $(tail -n 1 "$work/probe.log.stderr"))"
    fi
  fi
  printf '%s\n%s\n%s\n' "$key" "$accel" "$verdict" >"$cache"
  echo "accel: $accel ($verdict)"
}
choose_accel

guest_args="edgestor.test=disk edgestor.size=$size edgestor.serial=$serial edgestor.seed=$seed edgestor.discard=$discard_offset:$discard_length edgestor.fs=1"
restarter=
if ((restart_backend)); then
  [[ $transport == vhost ]] || fail "--restart-backend needs --transport vhost"
  # Once the pattern is written and flushed, the guest reads it all back
  # (seconds under TCG): kill the back-end during that and bring it back on
  # the same socket; the new daemon's pid goes to a file.
  (
    for _ in $(seq 6000); do grep -q "pattern written" "$work/serial.log" 2>/dev/null && break; sleep 0.1; done
    sleep 1
    kill -9 "$daemon_pid"
    echo "restart: killed the daemon (pid $daemon_pid) at $(tr -d '\r' <"$work/serial.log" | grep -a '^GUEST: ' | tail -n 1)"
    # shellcheck disable=SC2046  # daemon_options: zero or one word
    start_daemon $(daemon_options) -- "${serve_args[@]//@WORK@/$work}" || exit 1
    echo "$daemon_pid" >"$work/daemon.pid"
    # The export was stored: the daemon serves the socket again by itself.
    echo "restart: daemon $daemon_pid serving $vhost_socket again"
  ) &
  restarter=$!
fi

echo "booting the guest ($accel, timeout ${guest_timeout} s)"
started=$SECONDS
boot "$accel" "$guest_timeout" "$work/serial.log" "$guest_args" "${machine_args[@]}" "${disk_args[@]}"
rc=$?
if [[ -n $restarter ]]; then
  wait "$restarter"
  [[ -s $work/daemon.pid ]] || fail "the back-end was not restarted during the guest run"
  daemon_pid=$(cat "$work/daemon.pid")
  # The new back-end must have been handed QEMU's inflight region; what it
  # found there (often nothing: a request is in our hands only briefly).
  grep -q "front-end handed back its inflight region" "$work/daemon.log" ||
    fail "the restarted back-end was not given the inflight region"
  grep -a "inflight region:\|left in flight" "$work/daemon.log" | sed 's/^/  /'
  echo "ok: QEMU reconnected to the restarted back-end and handed back its inflight region"
fi
result=$(guest_result "$work/serial.log")
if [[ $result != PASS ]]; then
  print_serial "$work/serial.log"
  if ((rc == 124 || rc == 137)); then
    fail "the guest did not finish within $guest_timeout s ($accel)"
  fi
  fail "guest: ${result:-no GUEST-RESULT line (qemu exit $rc)}"
fi
((rc == 0)) || { print_serial "$work/serial.log"; fail "the guest passed but qemu exited with $rc"; }
tr -d '\r' <"$work/serial.log" | grep -a '^GUEST: ' | sed 's/^/  /'
echo "ok: the guest passed ($accel, $((SECONDS - started)) s)"

# --- the host reads the volume back -----------------------------------------------
verify() {  # verify WHAT IMAGE
  python3 "$here/verify.py" "$2" "$size" "$seed" "$discard_offset" "$discard_length" | sed 's/^/  /'
  ((PIPESTATUS[0] == 0)) || fail "$1 is not what the guest wrote"
  echo "ok: $1 is what the guest wrote"
}
qemu-img convert -f raw -O raw "$uri" "$work/nbd.raw" || fail "qemu-img could not read $uri"
verify "the volume read through the daemon's NBD export" "$work/nbd.raw"
rm -f "$work/nbd.raw"

if ((kill_daemon)); then
  # No final checkpoint: what the guest wrote survives only through the
  # flushes it sent (recovery replays the journal at the next open).
  kill -9 "$daemon_pid"
  wait "$daemon_pid" 2>/dev/null
  daemon_pid=
  "$EDGESTOR" pool fsck "$pool" >"$work/fsck.log" 2>&1 || { cat "$work/fsck.log"; fail "pool fsck after kill -9"; }
  echo "ok: the daemon was killed with -9 and fsck is clean"
else
  kill -TERM "$daemon_pid"
  if ((restart_backend)); then
    # Started by the restarter's subshell: not our child, so no exit status.
    for _ in $(seq 600); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
    ! kill -0 "$daemon_pid" 2>/dev/null || fail "the restarted daemon did not stop on SIGTERM"
    rc=0
  else
    wait "$daemon_pid"
    rc=$?
  fi
  daemon_pid=
  ((rc == 0)) || fail "the daemon exited with $rc on SIGTERM"
  "$EDGESTOR" pool fsck "$pool" >"$work/fsck.log" 2>&1 || { cat "$work/fsck.log"; fail "pool fsck after the guest run"; }
  echo "ok: the daemon stopped cleanly and fsck is clean"
fi
"$EDGESTOR" --pool "$pool" vol read "$vol" --output "$work/offline.raw" || fail "edgestor vol read"
verify "the volume read offline with edgestor vol read" "$work/offline.raw"
echo "PASS: $transport guest test ($accel)"
