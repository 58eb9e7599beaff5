#!/usr/bin/env bash
# File-export benchmark: our FUSE file export (`edgestor export file`)
# against qemu-storage-daemon's FUSE export, the way a host service uses
# them: a loop device with direct I/O over the exported file, ext4 on it,
# mounted, and fio inside that file system. The sides, the same run,
# interleaved (ours, qsd-raw, qsd-qcow2, native, ours, ...):
#   ours       edgestor serve + edgestor export file vol0 (a plain volume; pool file sparse)
#   qsd-raw    qemu-storage-daemon --export fuse of a raw file (cache.direct=on)
#   qsd-qcow2  the same on a qcow2 (what users have today)
#   native     the loop device straight over a raw file on the same file
#              system: no FUSE, no server (the limit)
#
#   bench/file-export.sh                      2 rounds x 10 s per case and side (about 7 minutes)
#   BENCH_SECONDS=5 bench/file-export.sh      shorter runs (SECONDS=5 works too)
#   BENCH_CASES="randread seqwrite" BENCH_SIDES="ours qsd-qcow2" bench/file-export.sh
#
# Environment (defaults in brackets):
#   SECONDS / BENCH_SECONDS  seconds per timed fio run [10]
#   BENCH_RUNS               rounds, each runs every side once per case [2]
#   BENCH_SIZE               volume = raw files = qcow2 virtual size = the ext4 [2G]
#   BENCH_POOL_SIZE          our pool file (sparse) [16G]
#   BENCH_FILE_SIZE          fio's test file inside the ext4, laid out before (not timed) [1G]
#   BENCH_RAND_QD            queue depth of the 4K random cases [32]
#   BENCH_SEQ_QD             queue depth of the 1 MiB sequential cases [8]
#   BENCH_CASES              [randread randwrite seqread seqwrite]
#   BENCH_SIDES              [ours qsd-raw qsd-qcow2 native]
#   BENCH_THREADS            our export's --threads [the CLI's default]
#   BENCH_QSD_AIO            qemu-storage-daemon's aio [io_uring, else native, else threads]
#   BENCH_VERIFY             1: after the timed runs, write files on every side and read
#                            them back with checksums (fio --verify=crc32c), then e2fsck [1]
#   BENCH_DIR                work directory [var/bench-file/<date-time> in the checkout]
#   BENCH_EDGESTOR           the edgestor binary [build/src/cli/edgestor; not built here]
#
# The ext4 image is made once, without FUSE and without direct I/O (mkfs.ext4
# on a raw file, inode tables and journal initialised up front so no lazy
# init runs during the timed runs; the test file laid out through a loop
# device with --direct-io=off), then copied to every side: cp for the raw
# files, qemu-img convert for the qcow2, dd through our export for the volume.
# QEMU 7.2's FUSE export corrupts data under concurrent large direct writes
# (mkfs through `losetup --direct-io=on` over its file made an ext4 that did
# not mount), so nothing is prepared through it; what happens to its file
# systems during the timed write runs is reported: fio errors, kernel
# messages about the loop device, e2fsck -fn of every side's ext4 before the
# timed runs and after each write case (unmounted, checked, mounted again),
# and a verify pass with e2fsck at the end. Our side failing any of them
# fails the run; a peer failing them is reported and its runs go on while
# its ext4 still mounts.
#
# Figures: per case, each side's IOPS (1 MiB cases: and MB/s, 10^6 bytes) per
# round and the median; ratios ours / each peer (median over rounds of the
# runs next to each other); server CPU per I/O (utime + stime of the server
# process from /proc/PID/stat over the fio run, all threads, per I/O; the
# loop device's kernel worker and fio are not counted); the server's RSS
# after the run; the goal ours >= 1.5x qsd-qcow2 (PASS/MISS, never a
# failure). Results: results.jsonl, integrity.jsonl and results.md in the
# work dir. Needs root (mount, losetup) and /dev/fuse. Exits non-zero only
# if a run fails on our side (our daemon dying, our mount or fio failing, our
# data failing verification) or a tool is missing.
run_seconds=${BENCH_SECONDS:-$SECONDS}  # first line: bash's SECONDS ticks from here on
set -euo pipefail
((run_seconds > 0)) || run_seconds=10
started=$(date +%s)

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
me=file-export.sh
runs=${BENCH_RUNS:-2}
size=${BENCH_SIZE:-2G}
pool_size=${BENCH_POOL_SIZE:-16G}
file_size=${BENCH_FILE_SIZE:-1G}
rand_qd=${BENCH_RAND_QD:-32}
seq_qd=${BENCH_SEQ_QD:-8}
cases=${BENCH_CASES:-"randread randwrite seqread seqwrite"}
sides=${BENCH_SIDES:-"ours qsd-raw qsd-qcow2 native"}
verify=${BENCH_VERIFY:-1}
edgestor=${BENCH_EDGESTOR:-$root/build/src/cli/edgestor}
# A run that takes this much longer than asked is a hang.
fio_timeout=$((run_seconds * 4 + 60))

# ---- checks up front
((EUID == 0)) || { echo "$me: needs root (mount, losetup)" >&2; exit 2; }
[[ -c /dev/fuse && -w /dev/fuse ]] || { echo "$me: needs /dev/fuse" >&2; exit 2; }
[[ -e /dev/loop-control ]] || { echo "$me: needs loop devices (/dev/loop-control)" >&2; exit 2; }
for tool in fio python3 qemu-storage-daemon qemu-img losetup mkfs.ext4 e2fsck mount umount findmnt \
  fusermount3 dmesg timeout numfmt dd; do
  command -v $tool >/dev/null || {
    echo "$me: $tool is required (apt-get install fio python3 qemu-utils qemu-system-common" \
      "util-linux mount e2fsprogs fuse3 coreutils)" >&2
    exit 2
  }
done
fio --enghelp 2>/dev/null | grep -qx $'\tlibaio' || { echo "$me: this fio has no libaio engine" >&2; exit 2; }
[[ -x $edgestor ]] || { echo "$me: no edgestor binary at $edgestor (scripts/build.sh release, or BENCH_EDGESTOR=path)" >&2; exit 2; }
"$edgestor" export file --help >/dev/null 2>&1 || { echo "$me: $edgestor has no 'export file' (too old a build?)" >&2; exit 2; }
for c in $cases; do
  case $c in randread | randwrite | seqread | seqwrite) ;; *) echo "$me: unknown case '$c' in BENCH_CASES" >&2; exit 2 ;; esac
done
for s in $sides; do
  case $s in ours | qsd-raw | qsd-qcow2 | native) ;; *) echo "$me: unknown side '$s' in BENCH_SIDES" >&2; exit 2 ;; esac
done
size_bytes=$(numfmt --from=iec "$size")
file_bytes=$(numfmt --from=iec "$file_size")
((file_bytes + (256 << 20) < size_bytes * 3 / 4)) || { echo "$me: BENCH_FILE_SIZE too large for BENCH_SIZE" >&2; exit 2; }
has_side() { [[ " $sides " == *" $1 "* ]]; }

# ---- work dir: on the file system of the checkout (or BENCH_DIR), the same for all sides
work=${BENCH_DIR:-$root/var/bench-file/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$work"
work=$(cd "$work" && pwd)  # qsd and mount want absolute paths
results=$work/results.jsonl
integrity=$work/integrity.jsonl
notes=$work/notes.txt
memory=$work/memory.jsonl
: >"$results"
: >"$integrity"
: >"$notes"
: >"$memory"
clk_tck=$(getconf CLK_TCK)
failed=0
pool=$work/pool.img
export_dir=$work/export  # our FUSE mount; the file is $export_dir/vol0

declare -A server_pid=()   # name -> pid of every server we started and did not stop yet
declare -A side_file=()    # side -> the file the loop device sits on
declare -A side_server=()  # side -> server name (none for native)
declare -A side_loop=()    # side -> /dev/loopN while attached
declare -A side_mnt=()     # side -> ext4 mount point while mounted
declare -A side_broken=()  # side -> why its runs stopped
declare -A side_dio=()     # side -> the loop device's dio flag
dmesg_pid=
template_loop=

# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"

note() { echo "$1" >>"$notes"; echo "  note: $1" >&2; }

# A side's failure: ours fails the run (exit status 1 at the end, its later
# runs skipped); a peer's is reported and its later runs skipped.
side_fails() {
  local side=$1 why=$2
  side_broken[$side]=$why
  if [[ $side == ours ]]; then
    failed=1
    echo "  FAILED (ours): $why" >&2
    echo "ours FAILED: $why" >>"$notes"
  else
    note "$side: $why; its remaining runs are skipped"
  fi
}

# Open count of our file export (from export list --json).
our_connections() {
  "$edgestor" --pool "$pool" export list --json 2>/dev/null | python3 -c '
import json, sys
print(sum(e.get("connections", 0) for e in json.load(sys.stdin)["exports"] if e.get("protocol") == "file"))'
}

unmount_fs() {  # $1: mount point
  findmnt -rn --mountpoint "$1" >/dev/null 2>&1 || return 0
  timeout -k 5 60 umount "$1" 2>/dev/null || { echo "  umount $1 failed or hung; lazy unmount" >&2; umount -l "$1" 2>/dev/null || true; }
}

detach_loop() {  # $1: /dev/loopN
  [[ -n $1 ]] || return 0
  losetup -d "$1" 2>/dev/null || true
}

# shellcheck disable=SC2317  # called by the trap
cleanup() {
  local side name i f
  set +e
  for side in "${!side_mnt[@]}"; do unmount_fs "${side_mnt[$side]}"; done
  unmount_fs "$work/fs-template"
  for side in "${!side_loop[@]}"; do detach_loop "${side_loop[$side]}"; done
  detach_loop "$template_loop"
  if [[ -n ${server_pid[ours]:-} ]] && findmnt -rn --mountpoint "$export_dir" >/dev/null 2>&1; then
    # losetup -d lets go of the file once the device is idle.
    for ((i = 0; i < 100; i++)); do [[ $(our_connections) == 0 ]] && break; sleep 0.1; done
    timeout -k 5 60 "$edgestor" --pool "$pool" export remove --mountpoint "$export_dir" >/dev/null 2>&1 ||
      timeout -k 5 60 "$edgestor" --pool "$pool" export remove --force --mountpoint "$export_dir" >/dev/null 2>&1
  fi
  for name in "${!server_pid[@]}"; do stop_server "$name"; done
  # Mounts left behind by a server that died.
  for f in "$export_dir" "$work/qsd-raw.export" "$work/qsd-qcow2.export" "$work/probe.export"; do
    findmnt -rn --mountpoint "$f" >/dev/null 2>&1 && { fusermount3 -u -z "$f" 2>/dev/null || umount -l "$f" 2>/dev/null; }
  done
  [[ -n $dmesg_pid ]] && kill "$dmesg_pid" 2>/dev/null && wait "$dmesg_pid" 2>/dev/null
  rm -f "$work"/*.img "$work"/*.qcow2 "$work"/*.sock "$work"/*.export
  sync -f "$work" 2>/dev/null
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Kernel messages from now on, to find errors about our loop devices.
dmesg -W >"$work/dmesg.log" 2>&1 &
dmesg_pid=$!
kernel_mark() { wc -l <"$work/dmesg.log"; }
# kernel_errors MARK DEVICE: error lines about DEVICE logged since MARK.
kernel_errors() {
  sleep 0.2
  tail -n +"$(($1 + 1))" "$work/dmesg.log" | grep -E "${2#/dev/}([^0-9]|$)" | grep -iE 'error|fail|corrupt|warn|abort' || true
}

# ---- qemu-storage-daemon
# qsd as server $1, exporting image $2 (format $3) over FUSE on the regular
# file $4, with aio $5; sets qsd_ok=0 when it does not come up.
start_qsd() {
  local name=$1 image=$2 format=$3 mnt=$4 aio=$5 i
  : >"$mnt"
  qemu-storage-daemon \
    --blockdev "driver=file,node-name=f,filename=$image,cache.direct=on,aio=$aio" \
    --blockdev "driver=$format,node-name=r,file=f" \
    --export "type=fuse,id=e,node-name=r,mountpoint=$mnt,writable=on" \
    >>"$work/$name.log" 2>&1 &
  server_pid[$name]=$!
  qsd_ok=0
  for ((i = 0; i < 100; i++)); do
    if ! kill -0 "${server_pid[$name]}" 2>/dev/null; then
      wait "${server_pid[$name]}" 2>/dev/null || true
      unset "server_pid[$name]"
      return 0
    fi
    findmnt -rn --mountpoint "$mnt" >/dev/null 2>&1 && { qsd_ok=1; return 0; }
    sleep 0.1
  done
  echo "  $name: no FUSE mount on $mnt after 10 s" >&2
  stop_server "$name"
  return 0
}

# The same aio for every qemu-storage-daemon: io_uring unless it fails here.
probe_aio() {
  local aio
  truncate -s 16M "$work/probe.img"
  for aio in ${BENCH_QSD_AIO:-io_uring native threads}; do
    start_qsd probe "$work/probe.img" raw "$work/probe.export" "$aio"
    if ((qsd_ok)); then
      kill -TERM "${server_pid[probe]}" 2>/dev/null || true
      wait "${server_pid[probe]}" 2>/dev/null || true  # its exit status is not what is probed
      unset "server_pid[probe]"
      rm -f "$work/probe.img" "$work/probe.log" "$work/probe.export"
      qsd_aio=$aio
      return 0
    fi
  done
  echo "$me: qemu-storage-daemon does not export over FUSE with cache.direct=on and any of" \
    "aio=${BENCH_QSD_AIO:-io_uring native threads}:" >&2
  cat "$work/probe.log" >&2
  exit 2
}

# ---- our daemon
start_ours() {
  local i
  "$edgestor" serve --pool "$pool" --nbd-socket "$work/ours.sock" >>"$work/ours.log" 2>&1 &
  server_pid[ours]=$!
  # Started means answering on its control socket (an offline CLI call before
  # that would take the pool lock).
  for ((i = 0; i < 300; i++)); do
    if ! kill -0 "${server_pid[ours]}" 2>/dev/null; then
      echo "  our daemon died at start; its log:" >&2
      sed 's/^/    /' "$work/ours.log" >&2
      unset "server_pid[ours]"
      exit 1
    fi
    [[ -S $work/pool.control.sock ]] && "$edgestor" --pool "$pool" export list >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "  our daemon does not answer on its control socket after 30 s" >&2
  exit 1
}

# ---- timing helpers
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }

echo "bench: $runs rounds x ${run_seconds}s per case and side (${sides// /, } interleaved); cases: $cases"
echo "bench: ext4 of $size on a loop device (--direct-io=on) over each side's file; fio test file $file_size;" \
  "libaio O_DIRECT, 4K random at QD$rand_qd, 1 MiB sequential at QD$seq_qd"
echo "bench: work dir $work on:"
df -T "$work" | sed 's/^/  /'
echo "bench: $(nproc) CPUs, kernel $(uname -r), $(fio --version), $(qemu-storage-daemon --version | head -1)"
echo "bench: $edgestor ($(stat -c %y "$edgestor" | cut -d. -f1))"
if has_side qsd-raw || has_side qsd-qcow2; then
  probe_aio
  echo "bench: qemu-storage-daemon with aio=$qsd_aio, cache.direct=on"
fi

# ---- the ext4 image, made once without FUSE and without direct I/O
t0=$(now)
template=$work/template.img
truncate -s "$size" "$template"
timeout 600 mkfs.ext4 -q -F -L bench -E lazy_itable_init=0,lazy_journal_init=0,nodiscard "$template"
template_loop=$(losetup --direct-io=off --find --show "$template")
mkdir -p "$work/fs-template"
timeout 60 mount "$template_loop" "$work/fs-template"
if ! timeout -k 10 1800 fio --name=layout --filename="$work/fs-template/test" --rw=write --bs=1M --size="$file_size" \
  --ioengine=libaio --iodepth=8 --direct=1 --end_fsync=1 --output="$work/layout.out" >/dev/null 2>&1; then
  echo "$me: laying out the test file failed:" >&2
  cat "$work/layout.out" >&2
  exit 1
fi
unmount_fs "$work/fs-template"
detach_loop "$template_loop"
template_loop=
rmdir "$work/fs-template"
timeout 600 e2fsck -fn "$template" >"$work/template.fsck" 2>&1 || { echo "$me: the template ext4 is not clean:" >&2; cat "$work/template.fsck" >&2; exit 1; }
sync -f "$work"
echo "bench: ext4 image made ($(du -h "$template" | cut -f1) allocated) in $(since "$t0") s; copying it to each side"

# ---- the sides
t0=$(now)
for side in $sides; do
  case $side in
    ours)
      "$edgestor" pool create "$pool" --size "$pool_size" >/dev/null
      "$edgestor" --pool "$pool" vol create vol0 --size "$size" >/dev/null
      start_ours
      # shellcheck disable=SC2086  # BENCH_THREADS: no option when unset
      "$edgestor" --pool "$pool" export file vol0 --mountpoint "$export_dir" ${BENCH_THREADS:+--threads $BENCH_THREADS} \
        >>"$work/ours.log" 2>&1 || { echo "$me: export file failed; our log ends:" >&2; tail -n 5 "$work/ours.log" >&2; exit 1; }
      side_file[ours]=$export_dir/vol0 side_server[ours]=ours
      [[ $(stat -c %s "${side_file[ours]}") == "$size_bytes" ]] || { echo "$me: our exported file is not $size" >&2; exit 1; }
      # notrunc: the file's size is the volume's (truncate is refused).
      timeout -k 10 1800 dd if="$template" of="${side_file[ours]}" bs=1M conv=sparse,notrunc,fsync status=none ||
        { echo "$me: copying the ext4 image into our export failed" >&2; exit 1; }
      ;;
    qsd-raw | native)
      cp --sparse=always "$template" "$work/$side.img"
      if [[ $side == native ]]; then
        side_file[native]=$work/native.img side_server[native]=
      else
        start_qsd qsd-raw "$work/qsd-raw.img" raw "$work/qsd-raw.export" "$qsd_aio"
        ((qsd_ok)) || { echo "$me: qemu-storage-daemon did not start:" >&2; cat "$work/qsd-raw.log" >&2; exit 1; }
        side_file[qsd-raw]=$work/qsd-raw.export side_server[qsd-raw]=qsd-raw
      fi
      ;;
    qsd-qcow2)
      timeout 1800 qemu-img convert -f raw -O qcow2 "$template" "$work/qsd-qcow2.qcow2"
      start_qsd qsd-qcow2 "$work/qsd-qcow2.qcow2" qcow2 "$work/qsd-qcow2.export" "$qsd_aio"
      ((qsd_ok)) || { echo "$me: qemu-storage-daemon did not start:" >&2; cat "$work/qsd-qcow2.log" >&2; exit 1; }
      side_file[qsd-qcow2]=$work/qsd-qcow2.export side_server[qsd-qcow2]=qsd-qcow2
      ;;
  esac
done
rm -f "$template"
sync -f "$work"
echo "bench: copies made in $(since "$t0") s"

# e2fsck -fn of the side's ext4 (unmounted first), recorded as check "e2fsck $2".
fsck_side() {
  local side=$1 label=$2 out=$work/$1-e2fsck-${2// /-}.out rc=0
  if [[ -n ${side_mnt[$side]:-} ]]; then unmount_fs "${side_mnt[$side]}"; unset "side_mnt[$side]"; fi
  timeout -k 10 600 e2fsck -fn "${side_loop[$side]}" >"$out" 2>&1 || rc=$?
  if ((rc == 0)); then
    integrity_record "$side" "e2fsck $label" 1 "clean"
    echo "  $side: e2fsck -fn $label: clean"
    return 0
  fi
  integrity_record "$side" "e2fsck $label" 0 "exit $rc: $(grep -v '^e2fsck [0-9]' "$out" | grep -v '^$' | head -n 3 | tr '\n' ' ')"
  echo "  $side: e2fsck -fn $label: exit $rc, NOT clean; $out:" >&2
  head -n 8 "$out" | sed 's/^/    /' >&2
  if [[ $side == ours ]]; then failed=1; echo "ours FAILED e2fsck $label: exit $rc" >>"$notes"; fi
  if [[ $side != ours ]]; then note "$side: its ext4 is NOT clean $label (e2fsck -fn exit $rc; $out)"; fi
  return 0
}

mount_side() {
  local side=$1 mnt=$work/fs-$1 mark
  mark=$(kernel_mark)
  mkdir -p "$mnt"
  if ! timeout -k 5 60 mount -o noatime "${side_loop[$side]}" "$mnt" 2>"$work/$side.mount"; then
    side_fails "$side" "mounting its ext4 (${side_loop[$side]}) failed: $(tail -n 1 "$work/$side.mount")$(
      kernel_errors "$mark" "${side_loop[$side]}" | tail -n 2 | sed 's/^/; kernel: /' | tr -d '\n')"
    return 0
  fi
  side_mnt[$side]=$mnt
  if [[ $(stat -c %s "$mnt/test" 2>/dev/null) != "$file_bytes" ]]; then
    side_fails "$side" "its ext4 mounted but has no $file_size test file"
  fi
}

# Loop device with direct I/O over the side's file; e2fsck; ext4 mounted.
attach_side() {
  local side=$1 loop
  if ! loop=$(losetup --direct-io=on --find --show "${side_file[$side]}" 2>"$work/$side.losetup"); then
    side_fails "$side" "losetup --direct-io=on over ${side_file[$side]} failed: $(tail -n 1 "$work/$side.losetup")"
    return 0
  fi
  side_loop[$side]=$loop
  side_dio[$side]=$(cat "/sys/block/${loop#/dev/}/loop/dio")
  [[ ${side_dio[$side]} == 1 ]] || note "$side: the loop device $loop fell back to buffered I/O (dio=0): its figures are not comparable"
  echo "  $side: $loop (dio=${side_dio[$side]}) over ${side_file[$side]#"$work"/}"
  fsck_side "$side" "before the timed runs"
  mount_side "$side"
}

# After a write case: every side's ext4 unmounted, checked, mounted again.
check_fs() {
  local side
  for side in $sides; do
    [[ -n ${side_loop[$side]:-} && -z ${side_broken[$side]:-} ]] || continue
    fsck_side "$side" "$1"
    mount_side "$side"
  done
}

# run_case SIDE CASE ROUND: one timed fio run inside the side's ext4, with
# the server's CPU time and RSS.
run_case() {
  local side=$1 case=$2 run=$3 name=${side_server[$1]} pid="" before=0 after=0 rss=0 rc=0 mark errs nerrs
  local out=$work/$side-$case-$run.json job=()
  if [[ -n $name ]]; then pid=${server_pid[$name]}; fi
  case $case in
    randread) job=(--rw=randread --bs=4k --iodepth="$rand_qd") ;;
    randwrite) job=(--rw=randwrite --bs=4k --iodepth="$rand_qd") ;;
    seqread) job=(--rw=read --bs=1M --iodepth="$seq_qd") ;;
    seqwrite) job=(--rw=write --bs=1M --iodepth="$seq_qd") ;;
  esac
  mark=$(kernel_mark)
  if [[ -n $pid ]]; then before=$(cpu_ticks "$pid"); fi
  timeout -k 10 "$fio_timeout" fio --name="$side" --filename="${side_mnt[$side]}/test" --size="$file_size" \
    --allow_file_create=0 --ioengine=libaio --direct=1 --time_based --runtime="$run_seconds" --randrepeat=0 \
    "${job[@]}" --output-format=json --output="$out" >"$out.err" 2>&1 || rc=$?
  if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
    wait "$pid" 2>/dev/null || true
    unset "server_pid[$name]"
    echo "  the server $name (pid $pid) DIED during $case round $run; its log $work/$name.log ends:" >&2
    tail -n 10 "$work/$name.log" | sed 's/^/    /' >&2
    side_fails "$side" "its server (pid $pid) died during $case round $run (fio exit $rc)"
    return 0
  fi
  if [[ -n $pid ]]; then after=$(cpu_ticks "$pid") rss=$(rss_kib "$pid"); fi
  errs=$(kernel_errors "$mark" "${side_loop[$side]}")
  if [[ -n $errs ]]; then
    printf '%s\n' "$errs" >"$work/$side-$case-$run.kernel"
    note "$side $case round $run: the kernel logged $(wc -l <<<"$errs") error line(s) about ${side_loop[$side]}, first: $(head -n 1 <<<"$errs")"
  fi
  if ((rc != 0)); then
    ((rc == 124 || rc == 137)) && echo "  $side $case round $run: fio HUNG (no end after ${fio_timeout}s)" >&2
    echo "  $side $case round $run: fio exit $rc:" >&2
    tail -n 5 "$out.err" | sed 's/^/    /' >&2
    side_fails "$side" "fio $case round $run failed (exit $rc: $(grep -m1 -iE 'err|fail' "$out.err" || tail -n 1 "$out.err"))"
    return 0
  fi
  [[ -s $out.err ]] || rm -f "$out.err"
  nerrs=0
  [[ -z $errs ]] || nerrs=$(wc -l <<<"$errs")
  python3 - "$side" "$case" "$run" "$out" "$((after - before))" "$clk_tck" "$rss" "${pid:+1}" "$nerrs" \
    "${side_dio[$side]}" >>"$results" <<'EOF'
import json, sys
side, case, run, path, ticks, clk_tck, rss, has_server, kernel_errors, dio = sys.argv[1:11]
job = json.load(open(path))["jobs"][0]
d = job["read" if case.endswith("read") else "write"]
ios = d["total_ios"]
rec = {"side": side, "case": case, "run": int(run), "ios": ios, "iops": d["iops"],
       "mb_s": d["bw_bytes"] / 1e6, "mib_s": d["bw_bytes"] / 2**20,
       "p99_us": d["clat_ns"]["percentile"]["99.000000"] / 1000.0 if d["clat_ns"].get("percentile") else None,
       "cpu_us_per_io": int(ticks) * 1e6 / int(clk_tck) / max(ios, 1) if has_server else None,
       "rss_kib": int(rss) if has_server else None, "error": job["error"],
       "kernel_errors": int(kernel_errors), "loop_dio": int(dio)}
print(json.dumps(rec))
value = f"{rec['iops']:,.0f} IOPS" + (f" = {rec['mb_s']:,.0f} MB/s" if case.startswith("seq") else "")
server = (f", server {rec['cpu_us_per_io']:.1f} µs CPU/IO, RSS {rec['rss_kib'] / 1024:.1f} MiB"
          if has_server else "")
print(f"  {side:9} {case:9} round {run}: {value}, p99 {rec['p99_us']:,.0f} µs{server}", file=sys.stderr)
EOF
}

# After the timed runs: fio writes files and reads them back with checksums
# (1 MiB sequential at QD8 and 4K random at QD32, O_DIRECT), then the ext4
# is unmounted and checked with e2fsck -fn.
integrity_record() {  # side check ok detail
  python3 -c 'import json, sys; print(json.dumps({"side": sys.argv[1], "check": sys.argv[2], "ok": sys.argv[3] == "1", "detail": sys.argv[4]}))' \
    "$@" >>"$integrity"
}
verify_side() {
  local side=$1 mnt=${side_mnt[$1]} spec check bs qd rw vsize rc mark errs detail bad name=${side_server[$1]}
  for spec in 1M:8:write:256M 4k:32:randwrite:64M; do
    IFS=: read -r bs qd rw vsize <<<"$spec"
    check="verify-$rw-$bs-qd$qd"
    rc=0
    mark=$(kernel_mark)
    timeout -k 10 900 fio --name="$check" --filename="$mnt/$check" --size="$vsize" --rw="$rw" --bs="$bs" \
      --iodepth="$qd" --ioengine=libaio --direct=1 --randrepeat=0 --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 \
      --output="$work/$side-$check.out" >"$work/$side-$check.err" 2>&1 || rc=$?
    errs=$(kernel_errors "$mark" "${side_loop[$side]}")
    if ((rc == 0)) && [[ -z $errs ]]; then
      integrity_record "$side" "$check" 1 "$vsize written and read back, checksums match"
      echo "  $side $check: ok"
      continue
    fi
    bad=$(cat "$work/$side-$check.err" "$work/$side-$check.out" | grep -E '^verify: |^[a-z0-9]+: verify failed' | awk '!seen[$0]++' || true)
    if [[ -n $bad ]]; then
      detail="$(wc -l <<<"$bad") bad block(s), first: $(head -n 1 <<<"$bad" | sed 's/ at file .* offset / at offset /')"
    else
      detail="fio exit $rc: $(grep -m1 -E 'err=|error' "$work/$side-$check.out" "$work/$side-$check.err" || echo '?')"
    fi
    [[ -n $errs ]] && detail+="; kernel: $(head -n 1 <<<"$errs")"
    integrity_record "$side" "$check" 0 "$detail"
    echo "  $side $check: FAILED: $detail" >&2
    if [[ $side == ours ]]; then
      failed=1
      echo "ours FAILED $check: $detail" >>"$notes"
    else
      note "$side: $check read back data other than what it wrote ($detail): its write figures are for writes that did not all land where they should"
    fi
    if [[ -n $name ]] && ! kill -0 "${server_pid[$name]:-0}" 2>/dev/null; then
      side_fails "$side" "its server died during $check"
      return 0
    fi
  done
}
echo "bench: attaching"
for side in $sides; do attach_side "$side"; done
[[ -z ${side_broken[ours]:-} ]] || exit 1  # our mount failed: nothing to compare
for name in "${!server_pid[@]}"; do memory_record "$name-before" "$(rss_kib "${server_pid[$name]}")"; done

# ---- the timed runs, interleaved
t0=$(now)
for case in $cases; do
  echo "bench: $case"
  for ((run = 1; run <= runs; run++)); do
    for side in $sides; do
      [[ -z ${side_broken[$side]:-} ]] || continue
      run_case "$side" "$case" "$run"
    done
  done
  if [[ $case == *write ]]; then check_fs "after $case"; fi
done
echo "bench: timed runs took $(since "$t0") s"
for name in "${!server_pid[@]}"; do memory_record "$name-after" "$(rss_kib "${server_pid[$name]}")"; done

# ---- integrity: verify, then e2fsck, then detach
if ((verify)); then
  echo "bench: integrity (fio --verify=crc32c, then e2fsck -fn)"
  for side in $sides; do
    [[ -n ${side_mnt[$side]:-} && -z ${side_broken[$side]:-} ]] || continue
    verify_side "$side"
  done
  for side in $sides; do
    [[ -n ${side_mnt[$side]:-} ]] || continue
    fsck_side "$side" "after the verify pass"
  done
fi
for side in $sides; do
  if [[ -n ${side_mnt[$side]:-} ]]; then unmount_fs "${side_mnt[$side]}"; unset "side_mnt[$side]"; fi
  if [[ -n ${side_loop[$side]:-} ]]; then detach_loop "${side_loop[$side]}"; unset "side_loop[$side]"; fi
done

# ---- stop: our export removed (once the loop device lets go), then the servers
if [[ -n ${server_pid[ours]:-} ]]; then
  for ((i = 0; i < 100; i++)); do [[ $(our_connections) == 0 ]] && break; sleep 0.1; done
  if ! timeout -k 5 60 "$edgestor" --pool "$pool" export remove --mountpoint "$export_dir" >>"$work/ours.log" 2>&1; then
    echo "  export remove --mountpoint $export_dir failed (connections: $(our_connections)); our log ends:" >&2
    tail -n 3 "$work/ours.log" | sed 's/^/    /' >&2
    failed=1
  fi
  t0=$(now)
  stop_server ours
  echo "bench: our daemon stopped (SIGTERM) in $(since "$t0") s"
fi
for name in qsd-raw qsd-qcow2; do
  [[ -n ${server_pid[$name]:-} ]] || continue
  f=$failed
  stop_server "$name"
  ((failed == f)) || { note "$name did not exit cleanly on SIGTERM (see $work/$name.log)"; failed=$f; }
done

# ---- the table
python3 - "$results" "$integrity" "$notes" "$memory" "$sides" "$cases" "$run_seconds" "$runs" \
  "$rand_qd" "$seq_qd" "$work/results.md" <<'EOF'
import json, statistics, sys

res_path, int_path, notes_path, mem_path, sides, cases, seconds, runs, rand_qd, seq_qd, md_path = sys.argv[1:12]
recs = [json.loads(l) for l in open(res_path) if l.strip()]
checks = [json.loads(l) for l in open(int_path) if l.strip()]
notes = [l.rstrip("\n") for l in open(notes_path) if l.strip()]
mem = {r["what"]: r["rss_kib"] / 1024.0 for r in map(json.loads, open(mem_path))}
sides, cases = sides.split(), cases.split()
peers = [s for s in ("qsd-raw", "qsd-qcow2", "native") if s in sides]
servers = [s for s in sides if s != "native"]

def med(rs, key):
    vals = [r[key] for r in rs if r.get(key) is not None]
    return statistics.median(vals) if vals else None

def paired_ratio(a, b, key):
    bb = {r["run"]: r[key] for r in b}
    ratios = [r[key] / bb[r["run"]] for r in a if bb.get(r["run"])]
    return (statistics.median(ratios) if ratios else None), ratios

fmt = lambda v, spec: "-" if v is None else format(v, spec)
label = {"randread": f"4K randread QD{rand_qd}", "randwrite": f"4K randwrite QD{rand_qd}",
         "seqread": f"1M read QD{seq_qd}", "seqwrite": f"1M write QD{seq_qd}"}
header = (["case"] + sides + [f"ours/{p}" for p in peers if "ours" in sides] +
          ["server CPU µs/IO " + "/".join(servers), "RSS MiB " + "/".join(servers), "goal ≥1.5x qsd-qcow2"])
rows, details = [], []
# Per side, the index of the first case after which e2fsck found its ext4 not clean (-1: before the runs).
corrupt_from = {}
for c in checks:
    if c["ok"] or not c["check"].startswith("e2fsck") or c["side"] in corrupt_from:
        continue
    when = c["check"][len("e2fsck "):]
    if when == "before the timed runs":
        corrupt_from[c["side"]] = -1
    elif when.startswith("after ") and when[6:] in cases:
        corrupt_from[c["side"]] = cases.index(when[6:])
for ci, case in enumerate(cases):
    by = {s: sorted((r for r in recs if (r["case"], r["side"]) == (case, s)), key=lambda r: r["run"]) for s in sides}
    seq = case.startswith("seq")
    def cell(s):
        if not by[s]:
            return "-"
        v = f"{med(by[s], 'iops'):,.0f}"
        if seq:
            v += f" ({med(by[s], 'mb_s'):,.0f} MB/s)"
        bad = corrupt_from.get(s)
        if bad is not None and bad < ci:
            v += " [ext4 already corrupt]"
        elif bad == ci:
            v += " [ext4 corrupt after]"
        if any(r["kernel_errors"] for r in by[s]):
            v += " [kernel errors]"
        if len(by[s]) < int(runs):
            v += f" [{len(by[s])} of {runs} rounds]"
        return v
    row = [label[case]] + [cell(s) for s in sides]
    goal = "n/a"
    if "ours" in sides:
        for p in peers:
            r, rr = paired_ratio(by["ours"], by[p], "iops")
            row.append(fmt(r, ".2f") + (f" ({', '.join(f'{x:.2f}' for x in rr)})" if len(rr) > 1 else ""))
            if p == "qsd-qcow2" and r is not None:
                goal = f"{'PASS' if r >= 1.5 else 'MISS'} ({r:.2f}x)"
    row.append(" / ".join(fmt(med(by[s], "cpu_us_per_io"), ".1f") for s in servers))
    row.append(" / ".join(fmt(med(by[s], "rss_kib") and med(by[s], "rss_kib") / 1024, ".1f") for s in servers))
    row.append(goal)
    rows.append(row)
    unit = "IOPS (MB/s)" if seq else "IOPS"
    details.append(f"  {label[case]:20} " + "; ".join(
        f"{s} " + (", ".join(f"{r['iops']:,.0f}" + (f" ({r['mb_s']:,.0f})" if seq else "") for r in by[s]) or "-")
        for s in sides) + f"  {unit}")

widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]
line = lambda row: "| " + " | ".join(str(c).ljust(widths[i]) for i, c in enumerate(row)) + " |"
table = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows]
out = [""] + table + ["", "Each round, in order (interleaved " + ", ".join(sides) + "):"] + details + [""]
out += [
    f"Values: median over {runs} rounds of {seconds} s of fio IOPS inside ext4 on a loop device (direct I/O) over",
    "each side's file; 1M cases also MB/s (10^6 bytes). Ratios: median over rounds of ours / the peer's run in the",
    "same round (each round's ratio in brackets). Server CPU: utime+stime of the server process (/proc/PID/stat,",
    "all threads) over the fio run, per I/O; the loop device's kernel worker and fio are not counted (native has",
    "no server). RSS: VmRSS of the server after the run (median).",
]
if checks:
    out += ["", "Integrity, in order: e2fsck -fn before the timed runs and after each write case; then fio writes",
            "files and reads them back with crc32c checksums (1M sequential QD8, 4K random QD32); e2fsck again:"]
    for s in sides:
        cs = [c for c in checks if c["side"] == s]
        if cs:
            out.append(f"  {s}:")
            out += [f"    {c['check']}: " + ("ok" if c["ok"] else "FAILED: " + c["detail"]) for c in cs]
    if corrupt_from:
        out.append("  [ext4 corrupt after]: e2fsck found the side's ext4 not clean after that case's runs;"
                   " [ext4 already corrupt]: before them.")
if mem:
    out += ["", "Server RSS (MiB) before / after the timed runs: " + ", ".join(
        f"{s} {fmt(mem.get(s + '-before'), '.1f')} / {fmt(mem.get(s + '-after'), '.1f')}" for s in servers)]
out += ["", "note: QEMU 7.2's FUSE export is known to corrupt data under concurrent large direct writes through a",
        "      loop device with --direct-io=on (1 MiB O_DIRECT writes landing at wrong offsets; mkfs.ext4 through",
        "      such a loop device made an ext4 that did not mount). The ext4 images here are made without FUSE",
        "      and copied in; the timed write runs and the integrity checks above show what happened to them."]
for n in notes:
    out.append("note: " + n)
print("\n".join(out))
with open(md_path, "w") as f:
    f.write("\n".join(out[1:]) + "\n")
EOF

complaints=$(grep -iE 'error|warn' "$work/ours.log" 2>/dev/null | grep -v 'received SIGTERM' || true)
if [[ -n $complaints ]]; then
  echo "bench: our daemon logged warnings or errors ($work/ours.log):"
  head -20 <<<"$complaints" | sed 's/^/  /'
fi
echo "bench: results in $results, $integrity, $work/results.md; took $(($(date +%s) - started)) s"
exit $failed
