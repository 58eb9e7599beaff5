#!/bin/sh
# /init of the edgestor test guest (built into the initramfs by
# scripts/build-guest.sh, run by busybox ash). Everything it reports goes to
# the serial console; the host (tests/guest/guest_test.sh) reads the last
# "GUEST-RESULT: PASS" or "GUEST-RESULT: FAIL <reason>" line. It always ends
# with poweroff, so QEMU exits instead of the host waiting for a timeout.
#
# Kernel command line (read from /proc/cmdline; dotted names are not passed
# to init as arguments):
#   edgestor.test=probe|disk   probe: boot and load modules only (KVM check)
#   edgestor.size=BYTES        the disk size the guest must see
#   edgestor.serial=S          the disk's serial (empty: the only disk)
#   edgestor.seed=HEX          names this run inside the pattern
#   edgestor.discard=OFF:LEN   the byte range to discard after the pattern
#   edgestor.fs=1|0            make, mount and check an ext4 filesystem first

export PATH=/usr/local/sbin:/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "GUEST-BOOTED: $(uname -r)"

test_name=disk size='' serial='' seed='' discard='' fs=1
read -r cmdline </proc/cmdline
for word in $cmdline; do
  case $word in
    edgestor.test=*) test_name=${word#*=} ;;
    edgestor.size=*) size=${word#*=} ;;
    edgestor.serial=*) serial=${word#*=} ;;
    edgestor.seed=*) seed=${word#*=} ;;
    edgestor.discard=*) discard=${word#*=} ;;
    edgestor.fs=*) fs=${word#*=} ;;
  esac
done

log() { echo "GUEST: [$(cut -d' ' -f1 /proc/uptime)s] $*"; }
finish() {
  echo "GUEST-RESULT: $*"
  poweroff -f
  sleep 30  # poweroff -f does not return; never let init exit (a panic)
}
fail() {
  log "failed: $*"
  echo "--- guest kernel log (last 40 lines) ---"
  dmesg | tail -n 40
  finish "FAIL $*"
}

while read -r module; do
  # "File exists" (built in, or loaded as a dependency) is harmless; a
  # module that really failed shows up as a missing disk below.
  insmod "/lib/modules/$(uname -r)/$module" 2>/dev/null || log "insmod $module: $(insmod "/lib/modules/$(uname -r)/$module" 2>&1)"
done </etc/modules
log "modules loaded"
[ "$test_name" = probe ] && finish PASS

if [ -z "$size" ] || [ -z "$seed" ]; then
  fail "edgestor.size and edgestor.seed are required on the kernel command line"
fi

# The test disk: the one whose serial matches (virtio-blk has /sys/block/X/
# serial, NVMe the controller's, space padded), else the only disk there is.
find_disk() {
  candidates=
  for dir in /sys/block/*; do
    name=${dir##*/}
    case $name in loop* | ram* | zram*) continue ;; esac
    if [ -n "$serial" ]; then
      found=$(cat "$dir/serial" "$dir/device/serial" 2>/dev/null | tr -d ' ')
      [ "$found" = "$serial" ] && echo "$name" && return
    else
      candidates="$candidates $name"
    fi
  done
  # shellcheck disable=SC2086  # one disk name a word
  set -- $candidates
  [ $# -eq 1 ] && echo "$1"
}
disk=
for _ in $(seq 300); do  # probing is asynchronous after insmod
  disk=$(find_disk)
  [ -n "$disk" ] && [ -b "/dev/$disk" ] && break
  sleep 0.1
done
[ -n "$disk" ] || fail "no test disk (serial '${serial}') among: $(cd /sys/block && echo *)"
dev=/dev/$disk
log "disk $dev: $(cat /sys/block/"$disk"/size) sectors, logical block $(cat /sys/block/"$disk"/queue/logical_block_size), discard max $(cat /sys/block/"$disk"/queue/discard_max_bytes) bytes"

# Size: what sysfs says (512-byte sectors) and what the ioctl says.
seen=$(($(cat /sys/block/"$disk"/size) * 512))
[ "$seen" = "$size" ] || fail "size: /sys/block/$disk/size says $seen bytes, expected $size"
seen=$(blockdev --getsize64 "$dev")
[ "$seen" = "$size" ] || fail "size: BLKGETSIZE64 says $seen bytes, expected $size"
log "size ok: $size bytes"

# ext4 first, over the whole disk: the pattern below then overwrites it, so
# that the host's check still covers every byte. Checked in the guest only:
# across an unmount, a cache drop and a remount, so the reads come from the
# disk, and with e2fsck.
if [ "$fs" = 1 ]; then
  mkfs.ext4 -F -q "$dev" || fail "mkfs.ext4 $dev"
  mount -t ext4 "$dev" /mnt || fail "mount ext4"
  dd if=/dev/urandom of=/mnt/data bs=64k count=64 2>/dev/null || fail "write a file on ext4"
  mkdir -p /mnt/dir || fail "mkdir on ext4"
  echo "edgestor $seed" >/mnt/dir/note || fail "write a small file on ext4"
  (cd /mnt && md5sum data dir/note) >/tmp/sums
  sync
  umount /mnt || fail "umount ext4"
  e2fsck -f -n "$dev" >/tmp/fsck.log 2>&1 || { cat /tmp/fsck.log; fail "e2fsck after umount"; }
  echo 3 >/proc/sys/vm/drop_caches
  mount -t ext4 -o ro "$dev" /mnt || fail "remount ext4"
  (cd /mnt && md5sum -c /tmp/sums) >/dev/null || fail "ext4 file contents changed across umount/remount"
  umount /mnt || fail "umount ext4 (second time)"
  log "ext4 ok: mkfs, mount, write, e2fsck, remount and checksums"
fi

# The pattern, over the whole disk with O_DIRECT (busybox dd allocates its
# buffer with mmap for O_DIRECT, so it is aligned).
blocks=$((size / 4096))
[ $((blocks * 4096)) = "$size" ] || fail "size $size is not a multiple of 4096"
awk -v blocks="$blocks" -v seed="$seed" -f /etc/pattern.awk >/tmp/pattern || fail "generate the pattern"
log "pattern generated ($blocks blocks)"

# Compares the whole disk with /tmp/pattern through O_DIRECT reads; on a
# mismatch names the offset and shows what is there instead.
verify() {  # verify WHAT
  if ! out=$(dd if="$dev" bs=1M iflag=direct 2>/tmp/dd.err | cmp - /tmp/pattern 2>&1); then
    cat /tmp/dd.err
    byte=$(echo "$out" | sed -n 's/.*differ: char \([0-9]*\).*/\1/p')
    if [ -n "$byte" ]; then
      block=$(((byte - 1) / 4096))
      log "first difference at byte $((byte - 1)), block offset $((block * 4096)); the disk has:"
      dd if="$dev" bs=4096 skip="$block" count=1 iflag=direct 2>/dev/null | head -c 64 | hexdump -C
      log "expected:"
      dd if=/tmp/pattern bs=4096 skip="$block" count=1 2>/dev/null | head -c 64 | hexdump -C
    fi
    fail "$1: $out"
  fi
}

# conv=fsync ends the write with fsync() on the device: a FLUSH to the disk.
dd if=/tmp/pattern of="$dev" bs=1M oflag=direct conv=notrunc,fsync 2>/tmp/dd.err || { cat /tmp/dd.err; fail "O_DIRECT write of the pattern"; }
log "pattern written with O_DIRECT"
verify "O_DIRECT read-back after the write"
log "pattern verified with O_DIRECT"

if [ -n "$discard" ]; then
  offset=${discard%:*} length=${discard#*:}
  blkdiscard -o "$offset" -l "$length" "$dev" || fail "blkdiscard -o $offset -l $length"
  # The guest's expectation follows: the discarded range reads as zeros.
  dd if=/dev/zero of=/tmp/pattern bs=4096 seek=$((offset / 4096)) count=$((length / 4096)) conv=notrunc 2>/dev/null
  log "discarded $length bytes at $offset"
fi

# Flush every way a guest does: sync(2), BLKFLSBUF, fsync on the device.
sync
blockdev --flushbufs "$dev" || fail "blockdev --flushbufs"
dd if=/dev/null of="$dev" count=0 conv=notrunc,fsync 2>/dev/null || fail "fsync $dev"
log "flushed"
verify "O_DIRECT read-back after discard and flush"
log "pattern with the discarded range verified with O_DIRECT"

finish PASS
