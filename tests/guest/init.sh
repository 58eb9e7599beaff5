#!/bin/sh
# /init of the edgestor test guest (built into the initramfs by
# scripts/build-guest.sh, run by busybox ash). Everything it reports goes to
# the serial console; the host (tests/guest/guest_test.sh) reads the last
# "GUEST-RESULT: PASS" or "GUEST-RESULT: FAIL <reason>" line. It always ends
# with poweroff, so QEMU exits instead of the host waiting for a timeout.
#
# Kernel command line (read from /proc/cmdline; dotted names are not passed
# to init as arguments):
#   edgestor.test=probe|disk|fio   probe: boot and load modules only (KVM
#                              check); fio: benchmark jobs (below)
#   edgestor.size=BYTES        the disk size the guest must see (fio: optional)
#   edgestor.serial=S          the disk's serial (empty: the only disk)
#   edgestor.seed=HEX          names this run inside the pattern
#   edgestor.discard=OFF:LEN   the byte range to discard after the pattern
#   edgestor.fs=1|0            make, mount and check an ext4 filesystem first
# edgestor.test=fio (bench/vhost-vs-qsd.sh; boots initramfs-fio.cpio.gz):
#   edgestor.fio=JOB,JOB,...   run in order, each with direct=1 on the disk;
#                              JOB = [NAME=]RW:BS:QD[:OFFSET[:SIZE[:HOW]]]
#                              (fio's rw, bs, iodepth, offset, size; offset 0
#                              and size the rest of the disk by default). HOW:
#                              empty: time based (loops over its region for
#                              the whole runtime); "once": each block at most
#                              once (random RW: fio's random map), ending at
#                              the runtime or when the region is done (first
#                              writes); "all": the whole region, however long
#                              it takes (fills).
#   edgestor.runtime=SECONDS   per job (default 10)
#   edgestor.ioengine=E        io_uring or libaio (default: io_uring if it
#                              works on the disk, else libaio)
#   Prints "GUEST-FIO-BEGIN: NAME" before each job, "GUEST-FIO-GO: NAME"
#   when fio is set up and starts the I/O, "GUEST-FIO-DONE: NAME" when the
#   I/O is over, then "GUEST-FIO: NAME rw= bs= qd= ios= runtime_ms= iops=
#   bw_kib= lat_us= p99_us= error=" (lat: fio's mean total latency; p99: of
#   completion latency, both in µs); the host samples the server at GO and
#   DONE (fio's start-up under TCG takes seconds).

export PATH=/usr/local/sbin:/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "GUEST-BOOTED: $(uname -r)"

test_name=disk size='' serial='' seed='' discard='' fs=1 fio_jobs='' runtime=10 ioengine=''
read -r cmdline </proc/cmdline
for word in $cmdline; do
  case $word in
    edgestor.test=*) test_name=${word#*=} ;;
    edgestor.size=*) size=${word#*=} ;;
    edgestor.serial=*) serial=${word#*=} ;;
    edgestor.seed=*) seed=${word#*=} ;;
    edgestor.discard=*) discard=${word#*=} ;;
    edgestor.fs=*) fs=${word#*=} ;;
    edgestor.fio=*) fio_jobs=${word#*=} ;;
    edgestor.runtime=*) runtime=${word#*=} ;;
    edgestor.ioengine=*) ioengine=${word#*=} ;;
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

case $test_name in
  disk)
    if [ -z "$size" ] || [ -z "$seed" ]; then
      fail "edgestor.size and edgestor.seed are required on the kernel command line"
    fi
    ;;
  fio)
    [ -n "$fio_jobs" ] || fail "edgestor.test=fio needs edgestor.fio=JOB,..."
    command -v fio >/dev/null || fail "no fio here: boot initramfs-fio.cpio.gz (scripts/build-guest.sh with fio installed)"
    ;;
  *) fail "unknown edgestor.test=$test_name" ;;
esac

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
if [ -n "$size" ]; then
  seen=$(($(cat /sys/block/"$disk"/size) * 512))
  [ "$seen" = "$size" ] || fail "size: /sys/block/$disk/size says $seen bytes, expected $size"
  seen=$(blockdev --getsize64 "$dev")
  [ "$seen" = "$size" ] || fail "size: BLKGETSIZE64 says $seen bytes, expected $size"
  log "size ok: $size bytes"
fi

# One job of edgestor.fio; prints its GUEST-FIO-BEGIN and GUEST-FIO lines.
fio_job() {  # fio_job JOB
  spec=$1 name=
  case $spec in *=*) name=${spec%%=*} spec=${spec#*=} ;; esac
  IFS=: read -r rw bs qd offset region how <<EOF
$spec
EOF
  if [ -z "$rw" ] || [ -z "$bs" ] || [ -z "$qd" ]; then
    fail "bad fio job '$1' (want [NAME=]RW:BS:QD[:OFFSET[:SIZE[:HOW]]])"
  fi
  [ -n "$name" ] || name=$rw-$bs-qd$qd
  set -- --name="$name" --filename="$dev" --ioengine="$ioengine" --direct=1 --rw="$rw" --bs="$bs" \
    --iodepth="$qd" --offset="${offset:-0}" --randrepeat=0 --output-format=terse --terse-version=3 \
    --exec_prerun="/tmp/fio-mark GO $name" --exec_postrun="/tmp/fio-mark DONE $name"
  [ -n "$region" ] && set -- "$@" --size="$region"
  case $how in
    all) ;;
    once) set -- "$@" --runtime="$runtime" ;;
    '') set -- "$@" --runtime="$runtime" --time_based ;;
    *) fail "bad fio job '$spec': the 6th field is once, all or nothing" ;;
  esac
  echo "GUEST-FIO-BEGIN: $name"
  fio "$@" >/tmp/fio.out 2>/tmp/fio.err || { cat /tmp/fio.out /tmp/fio.err; fail "fio job $name"; }
  # Terse v3: reads from field 6, writes from field 47, each: KiB, KiB/s,
  # IOPS, runtime ms, slat min/max/mean/dev, clat the same, 20 clat
  # percentiles (the 13th is p99: "99.000000%=USEC"), lat min/max/mean/dev.
  # IOPS is recomputed from the bytes: fio rounds it to an integer.
  case $rw in read | randread) base=6 ;; *) base=47 ;; esac
  grep '^3;' /tmp/fio.out | awk -F';' -v b="$base" -v name="$name" -v rw="$rw" -v bs="$bs" -v qd="$qd" '
    function bytes(s,   n) {
      n = s + 0
      if (s ~ /[kK]/) n *= 1024
      else if (s ~ /[mM]/) n *= 1048576
      return n
    }
    {
      ios = $(b) * 1024 / bytes(bs); ms = $(b + 3)
      p99 = $(b + 24); sub(/.*=/, "", p99)
      printf "GUEST-FIO: %s rw=%s bs=%d qd=%d ios=%.0f runtime_ms=%d iops=%.1f bw_kib=%d lat_us=%.1f p99_us=%s error=%s\n",
        name, rw, bytes(bs), qd, ios, ms, (ms > 0 ? ios * 1000 / ms : 0), $(b + 1), $(b + 34), p99, $5
    }'
  if [ -s /tmp/fio.err ]; then sed 's/^/GUEST: fio: /' /tmp/fio.err; fi
}

if [ "$test_name" = fio ]; then
  # A guest I/O scheduler would add the same work on every side of a
  # benchmark; none hands the requests to the device as they come.
  echo none >"/sys/block/$disk/queue/scheduler" 2>/dev/null || true
  # fio runs exec_prerun/exec_postrun with their output sent to a file in
  # the working directory, so the marker names the console itself.
  cd /tmp || fail "cd /tmp"
  cat >/tmp/fio-mark <<'EOF'
#!/bin/sh
echo "GUEST-FIO-$1: $2" >/dev/console
EOF
  chmod +x /tmp/fio-mark
  if [ -z "$ioengine" ]; then
    ioengine=libaio
    fio --name=probe --filename="$dev" --ioengine=io_uring --direct=1 --rw=read --bs=4k --size=4k \
      --output-format=terse >/dev/null 2>&1 && ioengine=io_uring
  fi
  log "$(fio --version), ioengine $ioengine, runtime ${runtime}s, scheduler: $(cat "/sys/block/$disk/queue/scheduler")"
  echo "GUEST-FIO-ENGINE: $ioengine"
  for job in $(echo "$fio_jobs" | tr ',' ' '); do
    fio_job "$job"
    # Apart, so that the host's samples at the markers fall between jobs.
    sleep 1
  done
  finish PASS
fi

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
