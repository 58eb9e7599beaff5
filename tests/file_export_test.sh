#!/usr/bin/env bash
# File exports (FUSE) end to end, the way a host service uses them: a loop
# device with direct I/O over the exported file, ext4 on it, a real
# file-system workload (stress-ng, and fio with verification), e2fsck; a
# snapshot taken while mounted, crash-consistent after journal replay;
# kill -9 of the daemon while mounted (users get errors, never a hang) and
# every fsync'ed write back after a restart; resize followed by the file;
# the kernel NBD client path (attach), or its refusal naming the module.
#
# Usage: file_export_test.sh PATH/TO/edgestor [--seconds N]  (workload
# length, default 15; a person may run it longer). Needs root (mount,
# losetup) and /dev/fuse: exits 77 (skipped) without them.
set -uo pipefail

EDGESTOR=$(realpath "$1")
shift
seconds=15
while (($#)); do
  case $1 in
    --seconds) seconds=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

if ((EUID != 0)); then echo "skip: needs root (mount, losetup)"; exit 77; fi
if [[ ! -w /dev/fuse ]]; then echo "skip: no /dev/fuse"; exit 77; fi
for tool in losetup mkfs.ext4 e2fsck stress-ng fio; do
  command -v "$tool" >/dev/null || { echo "skip: $tool is not installed"; exit 77; }
done

work=$(mktemp -d /tmp/edgestor-file-export-test.XXXXXX)
pool=$work/pool.img
export_dir=$work/export
fs_dir=$work/fs
loop=

# shellcheck source=tests/lib/daemon.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/daemon.sh"

cleanup() {
  mountpoint -q "$fs_dir" 2>/dev/null && { umount "$fs_dir" 2>/dev/null || umount -l "$fs_dir"; }
  [[ -n $loop ]] && losetup -d "$loop" 2>/dev/null
  [[ -n $daemon_pid ]] && kill -9 "$daemon_pid" 2>/dev/null
  for m in "$export_dir" "$work/snapshot" "$work/busy"; do
    while (($(mounts_at "$m") > 0)); do umount -l "$m" || break; done
  done
  rm -rf "$work" 2>/dev/null
}
trap cleanup EXIT

# How many mounts there are at $1 (stat-free: a dead FUSE mount answers
# ENOTCONN to stat, and `mountpoint` would call it no mount at all).
mounts_at() { awk -v m="$1" '$5 == m' /proc/self/mountinfo | wc -l; }
file=$export_dir/vol0

attach_loop() {
  loop=$(losetup --direct-io=on --find --show "$file") || return 1
  # The loop device must really use direct I/O on the file (no page cache
  # between ext4 and the volume), or fsync's promise would be the cache's.
  [[ $(cat "/sys/block/${loop#/dev/}/loop/dio") == 1 ]] || { echo "loop device without direct I/O"; return 1; }
}
detach_loop() {
  losetup -d "$loop" && loop=
  # losetup -d lets go of the file once the device is idle.
  for _ in $(seq 50); do [[ $(rpc export.list | python3 -c 'import json,sys; print(sum(e["connections"] for e in json.load(sys.stdin)["exports"] if e["protocol"]=="file"))') == 0 ]] && return 0; sleep 0.1; done
  echo "the exported file is still open after losetup -d"; return 1
}

"$EDGESTOR" pool create "$pool" --size 3G >/dev/null || exit 1
es vol create vol0 --size 1G >/dev/null || exit 1
start_daemon || exit 1

check "export file mounts the volume as DIR/VOL" es export file vol0 --mountpoint "$export_dir"
check "the file is the volume's size" test "$(stat -c %s "$file")" = 1073741824
check "export list shows the file export" bash -c "'$EDGESTOR' --pool '$pool' export list | grep -E '^vol0 +file +$file'"
check "a second export on the same mount point is refused" refuses_saying "already mounted" es export file vol0 --mountpoint "$export_dir"
check "a mount point that is a file is refused" refuses_saying "not a directory" es export file vol0 --mountpoint "$pool"
mkdir -p "$work/busy" && mount -t tmpfs tmpfs "$work/busy"
check "a mount point with something mounted is refused" refuses_saying "already a mount point" \
  es export file vol0 --mountpoint "$work/busy"
umount "$work/busy"
check "truncating the file is refused (the volume's size is not the file's to change)" refuses truncate -s 0 "$file"
check "loop device with direct I/O over the file" attach_loop
check "mkfs.ext4 on the loop device" mkfs.ext4 -q -F "$loop"
mkdir -p "$fs_dir"
check "mount the file system" mount "$loop" "$fs_dir"

# A real file-system workload: stress-ng's file-system stressors (data
# with --verify, directories, links, renames, modes, fallocate, AIO),
# then fio writing and verifying files with checksums.
stressors=(--hdd 1 --hdd-bytes 64M --dir 1 --rename 1 --link 1 --chmod 1 --fallocate 1 --fallocate-bytes 64M --sync-file 1 --sync-file-bytes 64M --aio 1)
check "stress-ng file-system workload (${seconds}s)" stress-ng --temp-path "$fs_dir" --timeout "${seconds}s" \
  "${stressors[@]}" --verify --metrics-brief
check "fio writes and verifies 256 MiB of files on the mounted file system" fio --name=verify --directory="$fs_dir" \
  --rw=randwrite --bs=4k --size=64M --numjobs=4 --ioengine=libaio --iodepth=16 --direct=1 --verify=crc32c \
  --verify_fatal=1 --do_verify=1 --verify_state_save=0 --group_reporting
head -c 20M /dev/urandom >"$work/known"
check "a file written and fsync'ed" dd if="$work/known" of="$fs_dir/known" bs=1M conv=fsync status=none

# A snapshot while mounted and busy: after journal replay alone, clean.
stress-ng --temp-path "$fs_dir" --timeout 30s "${stressors[@]}" >/dev/null 2>&1 &
load=$!
sleep 2
check "snapshot while mounted and under load" es snap create vol0@live
kill "$load" 2>/dev/null
wait "$load" 2>/dev/null
check "the snapshot exports read-only as a file" es export file vol0@live --mountpoint "$work/snapshot"
check "the snapshot's file is read-only" refuses_saying "Read-only file system" bash -c "exec 3<>'$work/snapshot/vol0@live'"
check "copy the snapshot out through its file export" cp --sparse=always "$work/snapshot/vol0@live" "$work/live.img"
check "the snapshot's journal replays" e2fsck -y -E journal_only "$work/live.img"
check "the snapshot is crash-consistent: e2fsck -fn clean after journal replay alone" e2fsck -fn "$work/live.img"
check "the snapshot holds the file fsync'ed before it" bash -c "debugfs -R 'cat /known' '$work/live.img' 2>/dev/null | cmp - '$work/known'"
check "export remove unmounts the snapshot's file" es export remove --mountpoint "$work/snapshot"
check "the snapshot's mount is gone" test "$(mounts_at "$work/snapshot")" = 0
rm -f "$work/live.img"

check "export remove is refused while the loop device holds the file" refuses_saying "losetup -d" \
  es export remove --mountpoint "$export_dir"
check "delete is refused while exported as a file" refuses_saying "as a file at" es vol delete vol0
check "unmount the file system" umount "$fs_dir"
check "e2fsck -fn clean after the workload" e2fsck -fn "$loop"

# The volume grows: the file follows (the loop device sees it after -c).
check "vol resize grows the volume" es vol resize vol0 --size 1536M
check "the file follows the resize" test "$(stat -c %s "$file")" = 1610612736
check "losetup -c picks up the new size" bash -c "losetup -c '$loop' && test \$(blockdev --getsize64 '$loop') = 1610612736"

# kill -9 while mounted: the mount fails cleanly, nothing hangs; after a
# restart every fsync'ed write is there.
check "mount again" mount "$loop" "$fs_dir"
head -c 8M /dev/urandom >"$work/synced"
check "write and fsync a file before the kill" dd if="$work/synced" of="$fs_dir/synced" bs=1M conv=fsync status=none
dd if=/dev/urandom of="$fs_dir/unsynced" bs=1M count=8 status=none  # may or may not survive
kill -9 "$daemon_pid"
wait "$daemon_pid" 2>/dev/null
daemon_pid=
fails_without_hanging() {
  timeout 60 dd if="$loop" of=/dev/null bs=4k count=1 skip=$((RANDOM + 1000)) iflag=direct status=none
  local rc=$?
  ((rc == 124)) && { echo "I/O hung after the daemon died"; return 1; }
  ((rc != 0))
}
check "I/O on the loop device fails (EIO) instead of hanging once the daemon is dead" fails_without_hanging
check "the file system unmounts" timeout 60 umount "$fs_dir"
losetup -d "$loop" && loop=
check "the daemon's death left a dead mount" test "$(mounts_at "$export_dir")" = 1
start_daemon || exit 1
# The export was stored: the restarted daemon mounts it again by itself.
check "the export is restored at start" bash -c "'$EDGESTOR' --pool '$pool' export list | grep -q ' file .*$export_dir/vol0 '"
check "one mount at the mount point, not two stacked (the dead one detached)" test "$(mounts_at "$export_dir")" = 1
check "adding it again is refused: it is already there" refuses_saying "already mounted" es export file vol0 --mountpoint "$export_dir"
check "loop device again" attach_loop
check "journal replay after the kill" bash -c "e2fsck -fy '$loop'; rc=\$?; ((rc <= 1))"
check "e2fsck -fn clean after replay" e2fsck -fn "$loop"
check "mount after the kill" mount "$loop" "$fs_dir"
check "the file fsync'ed before the kill is intact" cmp "$work/synced" "$fs_dir/synced"
check "the file fsync'ed long before is intact" cmp "$work/known" "$fs_dir/known"
check "unmount" umount "$fs_dir"
check "detach the loop device" detach_loop

# The kernel NBD client, where this host has it.
if [[ -d /sys/module/nbd ]] && command -v nbd-client >/dev/null; then
  nbd_dev=
  attach_nbd() { nbd_dev=$(es attach vol0) && [[ $(blockdev --getsize64 "$nbd_dev") == 1610612736 ]]; }
  check "attach connects /dev/nbdN to the volume" attach_nbd
  check "the NBD device reads the file system" bash -c "dumpe2fs -h '$nbd_dev' >/dev/null"
  check "detach" es detach "$nbd_dev"
else
  echo "skip: attach over the kernel NBD client (no nbd module on this host); checking its refusal instead"
  check "attach without the nbd module names it and the file export" refuses_saying "module 'nbd' is not loaded" \
    es attach vol0
fi

check "daemon stops cleanly (SIGTERM) with a file export mounted" stop_daemon
check "stopping unmounted the file export" test "$(mounts_at "$export_dir")" = 0
check "pool fsck clean" "$EDGESTOR" pool fsck "$pool"

echo "file export test: $passed passed, $failed failed"
((failed == 0))
