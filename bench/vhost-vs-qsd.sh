#!/usr/bin/env bash
# vhost-user-blk benchmark: the same fio jobs inside a QEMU guest (Debian's
# kernel and the initramfs of scripts/build-guest.sh, with fio) on three
# vhost-user-blk back-ends, the same run, interleaved:
#   ours   edgestor serve + edgestor export vhost VOL --queues 2 (pool file sparse)
#   raw    qemu-storage-daemon's vhost-user-blk export of a raw file (O_DIRECT)
#   qcow2  the same on a thin qcow2 (qemu-img create -f qcow2): what users have today
#
#   bench/vhost-vs-qsd.sh                     2 rounds x 10 s per job (about 18 minutes under TCG)
#   BENCH_SECONDS=5 bench/vhost-vs-qsd.sh     shorter jobs (SECONDS=5 works too)
#   BENCH_CASES="firstwrite:32 read:32" bench/vhost-vs-qsd.sh
#
# Environment (defaults in brackets):
#   SECONDS / BENCH_SECONDS  seconds per timed fio job [10]
#   BENCH_RUNS               rounds; each boots one guest per side: ours, raw, qcow2 [2]
#   BENCH_SIZE               volume = raw file = qcow2 virtual size [2G]
#   BENCH_POOL_SIZE          our pool file (sparse) [16G]
#   BENCH_SEQ_QD             queue depth of the 128K sequential cases [8]
#   BENCH_CASES              [firstwrite:1 firstwrite:32 read:1 read:32 overwrite:1
#                            overwrite:32 seqread:8 seqwrite:8]
#   BENCH_DIR                work directory [var/bench-vhost/<date-time> in the checkout]
#   BENCH_EDGESTOR           the edgestor binary [build/src/cli/edgestor; not built here]
#   BENCH_GUEST_DIR          kernel + initramfs, built there by scripts/build-guest.sh [var/guest]
#   BENCH_ACCEL              auto, kvm or tcg [auto: KVM if a probe boot works, cached
#                            in BENCH_GUEST_DIR/accel-probe as tests/guest/guest_test.sh does]
#   BENCH_GUEST_RAM          guest memory [1G]
#   BENCH_GUEST_CPUS         guest vCPUs [2]
#   BENCH_GUEST_IOENGINE     fio's ioengine in the guest [io_uring if it works, else libaio]
#   BENCH_QSD_AIO            qemu-storage-daemon's aio [io_uring, else native, else threads]
#
# Prints a table with the median of each side, the spread between rounds, the
# ratios, the servers' CPU per I/O and RSS, and the goals (PASS/MISS; never a
# failure). Exits non-zero only if a run itself fails (a tool missing, a
# server or the guest failing, dying or hanging).
run_seconds=${BENCH_SECONDS:-$SECONDS}  # first line: bash's SECONDS ticks from here on
set -euo pipefail
((run_seconds > 0)) || run_seconds=10

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
me=vhost-vs-qsd.sh
runs=${BENCH_RUNS:-2}
size=${BENCH_SIZE:-2G}
pool_size=${BENCH_POOL_SIZE:-16G}
seq_qd=${BENCH_SEQ_QD:-8}
cases=${BENCH_CASES:-"firstwrite:1 firstwrite:32 read:1 read:32 overwrite:1 overwrite:32 seqread:$seq_qd seqwrite:$seq_qd"}
edgestor=${BENCH_EDGESTOR:-$root/build/src/cli/edgestor}
guest_dir=${BENCH_GUEST_DIR:-$root/var/guest}
accel=${BENCH_ACCEL:-auto}
guest_ram=${BENCH_GUEST_RAM:-1G}
guest_cpus=${BENCH_GUEST_CPUS:-2}
guest_ioengine=${BENCH_GUEST_IOENGINE:-}
queues=2
sides="ours raw qcow2"

for tool in qemu-system-x86_64 qemu-storage-daemon qemu-img fio python3 numfmt timeout; do
  command -v $tool >/dev/null || {
    echo "$me: $tool is required (apt-get install qemu-system-x86 qemu-utils fio python3 coreutils;" \
      "qemu-storage-daemon is in qemu-system-common)" >&2
    exit 2
  }
done
[[ $accel == auto || $accel == kvm || $accel == tcg ]] || { echo "$me: BENCH_ACCEL is auto, kvm or tcg" >&2; exit 2; }
# The binary is not built here (the machine is small and shared).
[[ -x $edgestor ]] || { echo "$me: no edgestor binary at $edgestor (scripts/build.sh release, or BENCH_EDGESTOR=path)" >&2; exit 2; }
"$edgestor" export vhost --help >/dev/null 2>&1 || {
  echo "$me: $edgestor has no 'export vhost' (too old a build?)" >&2
  exit 2
}
for c in $cases; do
  case $c in
    firstwrite:1 | firstwrite:32 | read:1 | read:32 | overwrite:1 | overwrite:32 | seqread:* | seqwrite:*) ;;
    *) echo "$me: unknown case '$c' in BENCH_CASES" >&2; exit 2 ;;
  esac
done
size_bytes=$(numfmt --from=iec "$size")
((size_bytes % (8 << 20) == 0)) || { echo "$me: BENCH_SIZE must be a multiple of 8M" >&2; exit 2; }

# The guest: the fio image is only made when fio is installed on the host.
bash "$root/scripts/build-guest.sh" "$guest_dir" >/dev/null || {
  echo "$me: scripts/build-guest.sh $guest_dir failed" >&2
  exit 1
}
initrd=$guest_dir/initramfs-fio.cpio.gz
[[ -f $initrd ]] || { echo "$me: no $initrd (scripts/build-guest.sh makes it when fio is installed)" >&2; exit 2; }

# ---- work dir: on the file system of the checkout (or BENCH_DIR), the same for all servers
work=${BENCH_DIR:-$root/var/bench-vhost/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$work"
work=$(cd "$work" && pwd)  # sockets and QEMU want absolute paths
results=$work/results.jsonl
memory=$work/memory.jsonl
: >"$results"
: >"$memory"
clk_tck=$(getconf CLK_TCK)
failed=0
pool=$work/pool.img

declare -A server_pid=()  # name -> pid of every server we started and did not stop yet
qemu_pid=
watcher_pid=

# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"

stop_qemu() {
  [[ -n $qemu_pid ]] || return 0
  kill -KILL "$qemu_pid" 2>/dev/null || true
  wait "$qemu_pid" 2>/dev/null || true
  qemu_pid=
}

# shellcheck disable=SC2317  # called by the trap
cleanup() {
  local name
  if [[ -n $watcher_pid ]]; then kill "$watcher_pid" 2>/dev/null || true; fi
  stop_qemu
  for name in "${!server_pid[@]}"; do stop_server "$name"; done
  rm -f "$work"/*.img "$work"/*.qcow2 "$work"/*.sock
  sync -f "$work" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Fails the run if server $1 exited (prints the end of its log).
check_alive() {
  local name=$1 what=$2 pid=${server_pid[$1]}
  kill -0 "$pid" 2>/dev/null && return 0
  echo "  $what: the server $name (pid $pid) DIED; its log $work/$name.log ends:" >&2
  tail -n 20 "$work/$name.log" | sed 's/^/    /' >&2
  unset "server_pid[$name]"
  exit 1
}

# Our daemon, once for the whole run: every round exports a new volume.
start_ours() {
  local i
  "$edgestor" serve --pool "$pool" >>"$work/ours.log" 2>&1 &
  server_pid[ours]=$!
  for ((i = 0; i < 100; i++)); do
    check_alive ours "start"
    "$edgestor" --pool "$pool" export list >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "  our daemon does not answer on its control socket after 10 s" >&2
  exit 1
}

# qemu-storage-daemon as server $1, exporting image $2 of format $3 on socket
# $4 with the aio $5; sets qsd_ok=0 when it does not come up (the aio probe
# tries the next aio then).
start_qsd() {
  local name=$1 image=$2 format=$3 socket=$4 aio=$5 i
  rm -f "$socket"
  qemu-storage-daemon \
    --blockdev "driver=file,filename=$image,node-name=f0,cache.direct=on,aio=$aio" \
    --blockdev "driver=$format,file=f0,node-name=n0" \
    --export "type=vhost-user-blk,id=e0,node-name=n0,addr.type=unix,addr.path=$socket,writable=on,num-queues=$queues" \
    >>"$work/$name.log" 2>&1 &
  server_pid[$name]=$!
  qsd_ok=0
  for ((i = 0; i < 100; i++)); do
    if ! kill -0 "${server_pid[$name]}" 2>/dev/null; then
      wait "${server_pid[$name]}" 2>/dev/null || true
      unset "server_pid[$name]"
      return 0
    fi
    [[ -S $socket ]] && { qsd_ok=1; return 0; }
    sleep 0.1
  done
  echo "  $name: no socket $socket after 10 s" >&2
  exit 1
}

# The same aio for every qemu-storage-daemon: io_uring unless it fails here.
probe_aio() {
  local aio
  truncate -s 1M "$work/probe.img"
  for aio in ${BENCH_QSD_AIO:-io_uring native threads}; do
    start_qsd probe "$work/probe.img" raw "$work/probe.sock" "$aio"
    if ((qsd_ok)); then
      kill -TERM "${server_pid[probe]}" 2>/dev/null || true
      wait "${server_pid[probe]}" 2>/dev/null || true  # its exit status is not what is probed
      unset "server_pid[probe]"
      rm -f "$work/probe.img" "$work/probe.log"
      qsd_aio=$aio
      return 0
    fi
  done
  echo "$me: qemu-storage-daemon does not start with cache.direct=on and any of aio=${BENCH_QSD_AIO:-io_uring native threads}:" >&2
  cat "$work/probe.log" >&2
  exit 2
}

# ---- the guest
# vhost-user shares guest memory with the back-end: a shared memfd, attached
# to the guest through a NUMA node.
memory_args=(-object "memory-backend-memfd,id=mem,size=$guest_ram,share=on" -numa "node,memdev=mem")

# KVM first when it works; a short boot without a disk decides, and the
# verdict is cached in the guest dir in the format of tests/guest/guest_test.sh
# (per QEMU, host kernel and guest kernel), so a hanging KVM costs 60 s once.
choose_accel() {
  if [[ $accel != auto ]]; then accel_note="$accel (asked for)"; return; fi
  if [[ ! -r /dev/kvm || ! -w /dev/kvm ]]; then accel=tcg accel_note="tcg (no usable /dev/kvm)"; return; fi
  local key cache=$guest_dir/accel-probe log=$work/probe-kvm.log started=$SECONDS rc=0 verdict
  key="$(qemu-system-x86_64 --version | head -n 1) | host $(uname -r) | guest $(cat "$guest_dir/kernel-version")"
  if [[ -f $cache && $(head -n 1 "$cache") == "$key" ]]; then
    accel=$(sed -n 2p "$cache")
    accel_note="$accel (KVM probe result from $cache: $(sed -n 3p "$cache"))"
    return
  fi
  timeout --kill-after=5 60 qemu-system-x86_64 -machine q35 -accel kvm -m "$guest_ram" -smp "$guest_cpus" \
    -nographic -nodefaults -no-reboot -monitor none -serial "file:$log" \
    -kernel "$guest_dir/vmlinuz" -initrd "$guest_dir/initramfs.cpio.gz" \
    -append "console=ttyS0 panic=-1 quiet edgestor.test=probe" "${memory_args[@]}" 2>"$log.stderr" &
  qemu_pid=$!
  wait "$qemu_pid" || rc=$?
  qemu_pid=
  if tr -d '\r' <"$log" | grep -aq '^GUEST-RESULT: PASS'; then
    accel=kvm verdict="a KVM guest booted in $((SECONDS - started)) s"
  elif ((rc == 124 || rc == 137)); then
    accel=tcg verdict="a KVM guest hung (no result in 60 s)"
  else
    accel=tcg verdict="a KVM guest failed (qemu exit $rc: $(tail -n 1 "$log.stderr"))"
  fi
  printf '%s\n%s\n%s\n' "$key" "$accel" "$verdict" >"$cache"
  accel_note="$accel ($verdict)"
}

# The guest's jobs (see edgestor.fio in tests/guest/init.sh), first writes
# first, while the volume is empty. They write into the first half (QD1: the
# first eighth; QD32, which gets further in the same time: the rest). The
# second half is filled once with 1 MiB writes, then read and overwritten.
half=$((size_bytes / 2))
eighth=$((size_bytes / 8))
first_jobs=() other_jobs=()
for c in $cases; do
  mode=${c%:*} qd=${c#*:}
  case $mode in
    firstwrite)
      if ((qd == 1)); then region=0:$eighth; else region=$eighth:$((half - eighth)); fi
      first_jobs+=("firstwrite-qd$qd=randwrite:4k:$qd:$region:once")
      ;;
    read) other_jobs+=("read-qd$qd=randread:4k:$qd:$half:$half") ;;
    overwrite) other_jobs+=("overwrite-qd$qd=randwrite:4k:$qd:$half:$half") ;;
    seqread) other_jobs+=("seqread-qd$qd=read:128k:$qd:$half:$half") ;;
    seqwrite) other_jobs+=("seqwrite-qd$qd=write:128k:$qd:$half:$half") ;;
  esac
done
guest_jobs=("${first_jobs[@]}")
((${#other_jobs[@]} == 0)) || guest_jobs+=("fill-qd8=write:1M:8:$half:$half:all" "${other_jobs[@]}")
fio_spec=$(IFS=,; echo "${guest_jobs[*]}")
guest_timeout=$((120 + ${#guest_jobs[@]} * (run_seconds * 3 + 30) + size_bytes / (4 << 20)))

# Boots the guest on vhost-user socket $3 of server $2 (side $1, round $4),
# sampling the server at every job marker; appends a record per job.
run_guest() {
  local side=$1 name=$2 socket=$3 run=$4 log=$work/$1-$4.serial rc=0
  local append="edgestor.test=fio edgestor.size=$size_bytes edgestor.runtime=$run_seconds edgestor.fio=$fio_spec"
  [[ -n $guest_ioengine ]] && append+=" edgestor.ioengine=$guest_ioengine"
  : >"$log"
  qemu-system-x86_64 -machine q35 -accel "$accel" -m "$guest_ram" -smp "$guest_cpus" \
    -nographic -nodefaults -no-reboot -monitor none -serial "file:$log" \
    -kernel "$guest_dir/vmlinuz" -initrd "$initrd" -append "console=ttyS0 panic=-1 quiet $append" \
    "${memory_args[@]}" -chardev "socket,id=c0,path=$socket" -device "vhost-user-blk-pci,chardev=c0,num-queues=$queues" \
    2>"$log.stderr" &
  qemu_pid=$!
  python3 - "$log" "$qemu_pid" "${server_pid[$name]}" "$side" "$run" "$guest_timeout" "$clk_tck" \
    "$run_seconds" "$size_bytes" >>"$results" <<'EOF' &
import json, os, re, sys, time
log, qemu, server, side, run, timeout, clk_tck, seconds, size = sys.argv[1:10]
qemu, server, run, clk_tck, seconds, size = int(qemu), int(server), int(run), int(clk_tck), int(seconds), int(size)

def stat_fields(pid):
    s = open(f"/proc/{pid}/stat").read()
    return s[s.rindex(")") + 2:].split()  # from the 3rd field on

def alive(pid):
    try:
        return stat_fields(pid)[0] not in "ZX"  # a child not yet waited for is a zombie
    except (FileNotFoundError, ProcessLookupError):
        return False

def cpu_ticks(pid):
    f = stat_fields(pid)
    return int(f[11]) + int(f[12])  # utime, stime: all threads, exited ones included

def status(pid):
    out = {}
    for line in open(f"/proc/{pid}/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM", "RssAnon", "RssShmem"):
            out[k] = int(v.split()[0])
    return out

begin, done = {}, {}
result = None
pos, pending = 0, b""
deadline = time.monotonic() + float(timeout)
last_round = False
while True:
    with open(log, "rb") as f:
        f.seek(pos)
        data = f.read()
    pos += len(data)
    pending += data
    *lines, pending = pending.split(b"\n")
    for raw in lines:
        line = raw.decode(errors="replace").replace("\r", "")
        # The window is GO..DONE: fio's own start-up and exit are left out.
        if m := re.search(r"GUEST-FIO-(BEGIN|GO): (\S+)", line):
            begin[m.group(2)] = (cpu_ticks(server), time.monotonic())
        elif m := re.search(r"GUEST-FIO-DONE: (\S+)", line):
            done[m.group(1)] = (cpu_ticks(server), time.monotonic())
        elif m := re.search(r"GUEST-FIO: (\S+) (.*)", line):
            name = m.group(1)
            ticks, t = done.pop(name, None) or (cpu_ticks(server), time.monotonic())
            kv = dict(w.split("=", 1) for w in m.group(2).split() if "=" in w)
            t0, w0 = begin.get(name, (ticks, t))
            st = status(server)
            mode = name.split("-qd")[0]
            ios = int(kv["ios"])
            rec = {"side": side, "run": run, "job": name, "mode": mode, "qd": int(kv["qd"]),
                   "rw": kv["rw"], "bs": int(kv["bs"]), "ios": ios, "runtime_ms": int(kv["runtime_ms"]),
                   "iops": float(kv["iops"]), "mib_s": int(kv["bw_kib"]) / 1024.0,
                   "lat_us": float(kv["lat_us"]), "p99_us": float(kv["p99_us"]), "error": int(kv["error"]),
                   "cpu_ticks": ticks - t0, "cpu_us_per_io": (ticks - t0) * 1e6 / clk_tck / max(ios, 1),
                   "window_s": t - w0, "rss_kib": st.get("VmRSS"), "anon_kib": st.get("RssAnon"),
                   "shmem_kib": st.get("RssShmem"), "hwm_kib": st.get("VmHWM"),
                   # The first-write regions of the job list above: 1/8 of the disk at QD1, 3/8 else.
                   "short": mode == "firstwrite" and (int(kv["runtime_ms"]) < 950 * seconds or
                                                      ios * int(kv["bs"]) >= (size // 8) * (1 if int(kv["qd"]) == 1 else 3))}
            print(json.dumps(rec), flush=True)
            value = f"{rec['mib_s']:.0f} MiB/s" if rec["bs"] >= 131072 else f"{rec['iops']:.0f} IOPS"
            print(f"    {side:5} {name:15} {value:>10}, lat {rec['lat_us']:.0f} µs, server "
                  f"{rec['cpu_us_per_io']:.1f} µs CPU/IO ({rec['cpu_ticks']} ticks), RSS "
                  f"{(rec['rss_kib'] or 0) / 1024:.1f} MiB (anon {(rec['anon_kib'] or 0) / 1024:.1f})",
                  file=sys.stderr, flush=True)
        elif m := re.search(r"GUEST-RESULT: (.*)", line):
            result = m.group(1).strip()
        elif m := re.search(r"GUEST-FIO-ENGINE: (\S+)", line):
            print(f"    guest fio ioengine: {m.group(1)}", file=sys.stderr, flush=True)
    if last_round:
        break
    if not alive(qemu):
        last_round = True  # one more read: what QEMU wrote before it exited
        continue
    if not alive(server):
        print(f"  the server (pid {server}) DIED while the guest ran", file=sys.stderr)
        sys.exit(3)
    if time.monotonic() > deadline:
        print(f"  the guest did not finish within {timeout} s", file=sys.stderr)
        sys.exit(2)
    time.sleep(0.02)
if result != "PASS":
    print(f"  guest: {result or 'no GUEST-RESULT line'}", file=sys.stderr)
    sys.exit(1)
EOF
  # In the background: a trapped signal interrupts wait, not a foreground job.
  watcher_pid=$!
  wait "$watcher_pid" || rc=$?
  watcher_pid=
  if ((rc != 0)); then
    stop_qemu
    echo "  $side round $run FAILED; the guest's console ($log) ends:" >&2
    tr -d '\r' <"$log" | sed 's/\x1b\[[0-9;?]*[a-zA-Z]//g; s/\x1bc//g' | tail -n 40 | sed 's/^/    /' >&2
    [[ -s $log.stderr ]] && sed 's/^/    qemu: /' "$log.stderr" >&2
    check_alive "$name" "$side round $run"
    failed=1
    exit 1
  fi
  rc=0
  wait "$qemu_pid" || rc=$?
  qemu_pid=
  if ((rc != 0)); then
    echo "  $side round $run: the guest passed but QEMU exited with $rc:" >&2
    sed 's/^/    /' "$log.stderr" >&2
    failed=1
  fi
  tr -d '\r' <"$log" | grep -a '^GUEST: fio:' | sed "s/^/    $side: /" >&2 || true
}

# ---- set up
choose_accel
probe_aio
echo "bench: $runs rounds x (ours, raw, qcow2), one guest boot each, ${run_seconds}s per job;" \
  "size $size (our pool $pool_size, sparse)"
echo "bench: work dir $work on:"
df -T "$work" | sed 's/^/  /'
echo "bench: $(nproc) CPUs, kernel $(uname -r), $(qemu-system-x86_64 --version | head -1)"
echo "bench: accel $accel_note; guest $guest_cpus vCPUs, $guest_ram, kernel $(cat "$guest_dir/kernel-version"), $initrd"
echo "bench: $edgestor ($(stat -c %y "$edgestor" | cut -d. -f1)); qemu-storage-daemon aio=$qsd_aio, cache.direct=on"
echo "bench: $queues queues on every side; guest jobs: ${guest_jobs[*]}"

"$edgestor" pool create "$pool" --size "$pool_size" >/dev/null
start_ours
sleep 1
memory_record ours-idle "$(rss_kib "${server_pid[ours]}")"

# ---- the rounds, interleaved
for ((run = 1; run <= runs; run++)); do
  for side in $sides; do
    started=$SECONDS
    echo "bench: round $run, $side"
    # Every round starts from empty space: a new volume in our pool (created
    # through the daemon, never deleted, so no freed space is reused), a new
    # sparse raw file, a new qcow2, each behind a new qemu-storage-daemon.
    case $side in
      ours)
        socket=$work/ours-$run.sock
        "$edgestor" --pool "$pool" vol create "vol$run" --size "$size_bytes" >/dev/null
        "$edgestor" --pool "$pool" export vhost "vol$run" --socket "$socket" --queues "$queues" >/dev/null
        run_guest ours ours "$socket" "$run"
        "$edgestor" --pool "$pool" export remove --socket "$socket" >/dev/null
        ;;
      raw | qcow2)
        socket=$work/$side-$run.sock
        if [[ $side == raw ]]; then
          image=$work/raw-$run.img
          truncate -s "$size_bytes" "$image"
        else
          image=$work/qcow2-$run.qcow2
          qemu-img create -q -f qcow2 "$image" "$size_bytes"
        fi
        start_qsd "$side" "$image" "$side" "$socket" "$qsd_aio"
        ((qsd_ok)) || { echo "  qemu-storage-daemon ($side) did not start:" >&2; cat "$work/$side.log" >&2; exit 1; }
        sleep 1
        memory_record "$side-idle" "$(rss_kib "${server_pid[$side]}")"
        run_guest "$side" "$side" "$socket" "$run"
        memory_record "$side-end-$run" "$(rss_kib "${server_pid[$side]}")"
        stop_server "$side"
        settle "$image"
        ;;
    esac
    echo "    ($((SECONDS - started)) s)"
  done
done

memory_record ours-end "$(rss_kib "${server_pid[ours]}")"
memory_record ours-peak "$(awk '/^VmHWM:/ {print $2}' "/proc/${server_pid[ours]}/status")"
stop_server ours

# ---- the table
python3 - "$results" "$memory" "$run_seconds" "$size" "$accel" <<'EOF'
import json, statistics, sys

recs = [json.loads(line) for line in open(sys.argv[1])]
mem = {}
for r in map(json.loads, open(sys.argv[2])):
    mem.setdefault(r["what"], []).append(r["rss_kib"] / 1024.0)
accel = sys.argv[5]
sides = ("ours", "raw", "qcow2")
labels = {"firstwrite": "first write 4K", "read": "read 4K", "overwrite": "overwrite 4K",
          "seqread": "seq read 128K", "seqwrite": "seq write 128K", "fill": "fill 1M (setup)"}

def spread(values):
    return 100.0 * (max(values) - min(values)) / statistics.median(values) if len(values) > 1 and statistics.median(values) else 0.0

def med(rs, key):
    vals = [r[key] for r in rs if r.get(key) is not None]
    return statistics.median(vals) if vals else None

def paired_ratio(a, b, key):
    """Median over rounds of a[round] / b[round] (the boots sat next to each other)."""
    bb = {r["run"]: r[key] for r in b}
    ratios = [r[key] / bb[r["run"]] for r in a if bb.get(r["run"])]
    return (statistics.median(ratios) if ratios else None), ratios

def fmt(v, spec):
    return "-" if v is None else format(v, spec)

def ratio_cell(r, rs):
    return fmt(r, ".2f") + (f" ({', '.join(f'{x:.2f}' for x in rs)})" if len(rs) > 1 else "")

verdict = lambda ok: "PASS" if ok else "MISS"
header = ["case", "ours", "qsd raw", "qsd qcow2", "ours/raw", "ours/qcow2",
          "server CPU µs/IO ours/raw/qcow2", "CPU ours/raw, ours/qcow2", "lat µs ours/raw/qcow2",
          "RSS MiB ours/raw/qcow2", "goals"]
rows, details, notes = [], [], []
for job in dict.fromkeys(r["job"] for r in recs):
    by = {s: sorted((r for r in recs if r["job"] == job and r["side"] == s), key=lambda r: r["run"]) for s in sides}
    any_rec = next(r for s in sides for r in by[s])
    mode, qd = any_rec["mode"], any_rec["qd"]
    key = "mib_s" if any_rec["bs"] >= 131072 else "iops"
    unit = " MiB/s" if key == "mib_s" else ""
    cell = lambda s: (f"{fmt(med(by[s], key), ',.0f')}{unit} (±{spread([r[key] for r in by[s]]):.0f}%)"
                      if by[s] else "-")
    r_raw, rr_raw = paired_ratio(by["ours"], by["raw"], key)
    r_q, rr_q = paired_ratio(by["ours"], by["qcow2"], key)
    c_raw, cr_raw = paired_ratio(by["ours"], by["raw"], "cpu_us_per_io")
    c_q, cr_q = paired_ratio(by["ours"], by["qcow2"], "cpu_us_per_io")
    goals = []
    if mode != "fill":
        if r_raw is not None:
            goals.append(f"≥1x raw {verdict(r_raw >= 1.0)}")
        if mode == "firstwrite" and r_q is not None:
            goals.append(f"≥3x qcow2 {verdict(r_q >= 3.0)}")
        if c_raw is not None:
            goals.append(f"CPU <raw {verdict(c_raw < 1.0)}")
        if c_q is not None:
            goals.append(f"CPU <qcow2 {verdict(c_q < 1.0)}")
    name = f"{labels.get(mode, mode)} qd{qd}"
    rows.append([name, cell("ours"), cell("raw"), cell("qcow2"), ratio_cell(r_raw, rr_raw), ratio_cell(r_q, rr_q),
                 " / ".join(fmt(med(by[s], "cpu_us_per_io"), ".1f") for s in sides),
                 f"{fmt(c_raw, '.2f')}, {fmt(c_q, '.2f')}",
                 " / ".join(fmt(med(by[s], "lat_us"), ",.0f") for s in sides),
                 " / ".join(fmt(med(by[s], "rss_kib") and med(by[s], "rss_kib") / 1024, ".1f") for s in sides),
                 "; ".join(goals)])
    details.append(f"  {name:24} " + "; ".join(
        f"{s} " + ", ".join(f"{r[key]:,.0f} @ {r['cpu_us_per_io']:.1f} µs" for r in by[s]) for s in sides)
        + f" ({unit.strip() or 'IOPS'} @ server CPU/IO)")
    if any(r["short"] for s in sides for r in by[s]):
        notes.append(f"{name}: a first-write run wrote its whole region before its time was up; raise BENCH_SIZE")
    if any(r["error"] for s in sides for r in by[s]):
        notes.append(f"{name}: fio reported an error in the guest")

widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]
line = lambda row: "| " + " | ".join(str(c).ljust(widths[i]) for i, c in enumerate(row)) + " |"
print()
print(line(header))
print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
for row in rows:
    print(line(row))
print()
print("Each round, in order (ours, raw, qcow2 interleaved; value @ server CPU µs per I/O):")
print("\n".join(details))
print()
print("Values: fio in the guest (direct=1, one job), median over rounds of IOPS (128K and the fill: MiB/s) with the")
print("spread (max - min) / median. Ratios: median over rounds of ours / the peer's boot in the same round (each")
print("round's in brackets). Server CPU: utime+stime of the server process (/proc/PID/stat, all threads) between")
print("the guest's markers around the job, per I/O the guest completed; CPU ours/peer < 1 is better. lat: fio's")
print("mean total latency. RSS: VmRSS of the server after the job (it counts the guest memory pages the server")
print("touched in the shared memfd; see RssAnon below).")
if accel == "tcg":
    print("TCG: the guest is emulated, so its own CPU bounds the IOPS of every side alike, and the guest's vCPU")
    print("threads compete with the server for the host CPUs; server CPU per I/O is the fairer figure.")
for note in notes:
    print("note:", note)

print()
print("Server memory (MiB):")
anon = {s: med([r for r in recs if r["side"] == s], "anon_kib") for s in sides}
hwm = {s: max((r["hwm_kib"] or 0 for r in recs if r["side"] == s), default=None) for s in sides}
for s in sides:
    idle = mem.get(f"{s}-idle")
    print(f"  {s:6} idle before a guest {fmt(idle and statistics.median(idle), '.1f')}, "
          f"during jobs VmRSS median {fmt(med([r for r in recs if r['side'] == s], 'rss_kib') and med([r for r in recs if r['side'] == s], 'rss_kib') / 1024, '.1f')}"
          f" (RssAnon {fmt(anon[s] and anon[s] / 1024, '.1f')}), peak VmHWM {fmt(hwm[s] and hwm[s] / 1024, '.1f')}"
          + (" (one daemon for all rounds)" if s == "ours" else " (per qemu-storage-daemon, the largest)"))
if "ours-end" in mem:
    print(f"  ours   at the end (volumes exported: {len({r['run'] for r in recs})}, none now): {mem['ours-end'][0]:.1f}")
EOF

complaints=$(grep -iE 'error|warn' "$work"/ours.log 2>/dev/null | grep -v 'received SIGTERM' || true)
if [[ -n $complaints ]]; then
  echo "bench: our daemon logged warnings or errors ($work/ours.log):"
  head -20 <<<"$complaints" | sed 's/^/  /'
fi
echo "bench: results in $results; guest consoles in $work/*.serial"
exit $failed
