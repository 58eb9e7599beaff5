#!/usr/bin/env bash
# Snapshot benchmark, two parts:
#
# 1. Copy-on-write: 4 KiB random writes (fio's nbd engine) into a volume
#    that was just snapshotted, against the same volume without a snapshot,
#    against qcow2 with an internal snapshot (`qemu-img snapshot -c`) served
#    by qemu-nbd, and qcow2 without one. Every side starts from a fresh
#    image filled with 1 MiB sequential writes; the sides are interleaved,
#    BENCH_RUNS times.
# 2. Snapshot creation time for a 1 GiB and a 100 GiB written volume (every
#    cluster mapped: one 4 KiB block written per 64 KiB cluster), taken
#    through the running daemon: it should grow with the map's directory,
#    not with the data.
# 3. 1,000 snapshots of one 1 GiB volume through the daemon, with four 4 KiB
#    writes (qemu-io) before each: time per create, the oldest and newest
#    read back over NBD, then all deleted in random order; daemon memory.
#
#   bench/snapshot-vs-qcow2.sh            both parts (about 6 minutes)
#   BENCH_PARTS=cow bench/snapshot-vs-qcow2.sh
#
# Environment (defaults in brackets):
#   BENCH_SECONDS   seconds per timed run [5]
#   BENCH_RUNS      runs per side, interleaved [2]
#   BENCH_SIZE      volume / image size for part 1 [2G]
#   BENCH_QDS       queue depths for part 1 ["1 32"]
#   BENCH_BIG       size of the large volume of part 2 [100G]
#   BENCH_PARTS     "cow create many" [all three]
#   BENCH_MANY      snapshots in part 3 [1000]
#   BENCH_EDGESTOR  use this edgestor binary (no build)
#
# Prints per side and queue depth: IOPS, server CPU per I/O, server RSS and
# write amplification (bytes the server wrote to its file / bytes fio
# wrote), with the ratios ours-after-snapshot / ours-plain and / qcow2 with
# snapshot. Exits non-zero only if a run fails.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
run_seconds=${BENCH_SECONDS:-5}
runs=${BENCH_RUNS:-2}
size=${BENCH_SIZE:-2G}
qds=${BENCH_QDS:-"1 32"}
big=${BENCH_BIG:-100G}
parts=${BENCH_PARTS:-"cow create many"}
many=${BENCH_MANY:-1000}
fio_timeout=$((run_seconds * 4 + 60))

for tool in fio python3 qemu-nbd qemu-img qemu-io nbdinfo nbdcopy timeout; do
  command -v $tool >/dev/null || { echo "snapshot-vs-qcow2.sh: $tool is required" >&2; exit 2; }
done

if [[ -n ${BENCH_EDGESTOR:-} ]]; then
  edgestor=$BENCH_EDGESTOR
else
  "$root/scripts/build.sh" release --target edgestor >/dev/null
  edgestor=$root/build/src/cli/edgestor
fi

work=$root/var/bench-snapshot/$(date +%Y%m%d-%H%M%S)
mkdir -p "$work"
results=$work/results.jsonl
: >"$results"
clk_tck=$(getconf CLK_TCK)
failed=0
declare -A server_pid=()
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"

# shellcheck disable=SC2317  # called by the trap
cleanup() {
  local name
  for name in "${!server_pid[@]}"; do stop_server "$name"; done
  rm -f "$work"/*.img "$work"/*.qcow2 "$work"/*.sock
}
trap cleanup EXIT
trap 'exit 130' INT TERM

write_bytes() { awk '/^write_bytes:/ {print $2}' "/proc/$1/io"; }

wait_ready() {
  local name=$1 export=$2 i
  for ((i = 0; i < 100; i++)); do
    kill -0 "${server_pid[$name]}" 2>/dev/null || { echo "  $name died; log:" >&2; cat "$work/$name.log" >&2; exit 1; }
    nbdinfo --size "$(uri "$name" "$export")" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "  $name: export $export not ready after 10 s" >&2
  exit 1
}

start_ours() {  # name pool export
  "$edgestor" serve --pool "$2" --nbd-socket "$work/$1.sock" >>"$work/$1.log" 2>&1 &
  server_pid[$1]=$!
  wait_ready "$1" "$3"
}

start_qemu() {  # name file export
  qemu-nbd -f qcow2 --cache=none --aio=io_uring -t -e 4 -k "$work/$1.sock" -x "$3" "$2" >>"$work/$1.log" 2>&1 &
  server_pid[$1]=$!
  wait_ready "$1" "$3"
}

fill() {  # name export size [extra fio args]
  local out=$work/$1-fill.json
  timeout -k 10 1800 fio --name=fill --ioengine=nbd --uri="$(uri "$1" "$2")" --rw=write --bs=1M --iodepth=8 \
    --size="$3" "${@:4}" --output-format=json --output="$out" >"$out.err" 2>&1 ||
    { echo "  fill through $1 FAILED:" >&2; cat "$out.err" >&2; exit 1; }
}

# run_cow SIDE SERVER EXPORT QD RUN: 4 KiB random writes, time-based.
run_cow() {
  local side=$1 name=$2 export=$3 qd=$4 run=$5 pid=${server_pid[$2]} out=$work/$1-qd$4-$5.json
  local ticks0 bytes0 ticks1 bytes1 rc=0
  ticks0=$(cpu_ticks "$pid") bytes0=$(write_bytes "$pid")
  timeout -k 10 "$fio_timeout" fio --name="$side" --ioengine=nbd --uri="$(uri "$name" "$export")" --rw=randwrite \
    --bs=4k --iodepth="$qd" --size="$size" --time_based --runtime="$run_seconds" --randrepeat=0 \
    --output-format=json --output="$out" >"$out.err" 2>&1 || rc=$?
  kill -0 "$pid" 2>/dev/null || { echo "  $side: the server DIED" >&2; cat "$work/$name.log" >&2; exit 1; }
  ((rc == 0)) || { echo "  $side qd$qd run $run FAILED:" >&2; cat "$out.err" >&2; failed=1; return 0; }
  ticks1=$(cpu_ticks "$pid") bytes1=$(write_bytes "$pid")
  python3 - "$side" "$qd" "$run" "$out" "$((ticks1 - ticks0))" "$clk_tck" "$(rss_kib "$pid")" \
    "$((bytes1 - bytes0))" >>"$results" <<'EOF'
import json, sys
side, qd, run, path, ticks, clk, rss, written = sys.argv[1:9]
w = json.load(open(path))["jobs"][0]["write"]
ios = max(w["total_ios"], 1)
rec = {"side": side, "qd": int(qd), "run": int(run), "iops": w["iops"],
       "cpu_us_per_io": int(ticks) * 1e6 / int(clk) / ios, "rss_mib": int(rss) / 1024,
       "write_amp": int(written) / max(w["io_bytes"], 1)}
print(json.dumps(rec))
print(f"  {side:16} qd{qd} run {run}: {rec['iops']:8.0f} IOPS, {rec['cpu_us_per_io']:6.1f} µs CPU/IO, "
      f"RSS {rec['rss_mib']:.1f} MiB, write amplification {rec['write_amp']:.1f}x", file=sys.stderr)
EOF
}

# One side, one run: a fresh image, filled, snapshotted or not, then every QD.
cow_side() {
  local side=$1 run=$2 qd
  case $side in
    ours-plain | ours-snapshot)
      "$edgestor" pool create "$work/cow.img" --size "$((2 * ${size%G} + 4))G" >/dev/null
      "$edgestor" --pool "$work/cow.img" vol create vol --size "$size" >/dev/null
      start_ours "$side" "$work/cow.img" vol
      fill "$side" vol "$size"
      [[ $side == ours-snapshot ]] && "$edgestor" --pool "$work/cow.img" snap create vol@before >/dev/null
      for qd in $qds; do
        # Each depth starts right after a snapshot: a new one per depth.
        [[ $side == ours-snapshot && $qd != "${qds%% *}" ]] &&
          "$edgestor" --pool "$work/cow.img" snap create "vol@qd$qd" >/dev/null
        run_cow "$side" "$side" vol "$qd" "$run"
      done
      stop_server "$side"
      settle "$work/cow.img"
      ;;
    qcow2-plain | qcow2-snapshot)
      qemu-img create -q -f qcow2 "$work/cow.qcow2" "$size"
      start_qemu "$side" "$work/cow.qcow2" vol
      fill "$side" vol "$size"
      for qd in $qds; do
        if [[ $side == qcow2-snapshot ]]; then
          stop_server "$side"
          qemu-img snapshot -c "qd$qd" "$work/cow.qcow2"
          start_qemu "$side" "$work/cow.qcow2" vol
        fi
        run_cow "$side" "$side" vol "$qd" "$run"
      done
      stop_server "$side"
      settle "$work/cow.qcow2"
      ;;
  esac
}

echo "bench: $(nproc) CPUs, kernel $(uname -r), $(fio --version), $(qemu-nbd --version | head -1)"
echo "bench: work dir $work"

if [[ " $parts " == *" cow "* ]]; then
  echo "bench: copy-on-write, $runs runs x ${run_seconds}s, size $size, QD $qds (fresh, filled image per side and run)"
  for ((run = 1; run <= runs; run++)); do
    for side in ours-snapshot ours-plain qcow2-snapshot qcow2-plain; do cow_side "$side" "$run"; done
  done
  python3 - "$results" <<'EOF'
import json, statistics, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
med = lambda side, qd, key: statistics.median(r[key] for r in recs if r["side"] == side and r["qd"] == qd)
print("\ncopy-on-write 4 KiB random writes (medians):")
print(f"{'side':16} {'qd':>3} {'IOPS':>8} {'CPU µs/IO':>10} {'RSS MiB':>8} {'write amp':>9}")
for qd in sorted({r["qd"] for r in recs}):
    for side in ("ours-snapshot", "ours-plain", "qcow2-snapshot", "qcow2-plain"):
        print(f"{side:16} {qd:>3} {med(side, qd, 'iops'):8.0f} {med(side, qd, 'cpu_us_per_io'):10.1f} "
              f"{med(side, qd, 'rss_mib'):8.1f} {med(side, qd, 'write_amp'):9.1f}")
    print(f"  qd{qd}: ours after snapshot / ours plain = {med('ours-snapshot', qd, 'iops') / med('ours-plain', qd, 'iops'):.2f}x,"
          f" / qcow2 after internal snapshot = {med('ours-snapshot', qd, 'iops') / med('qcow2-snapshot', qd, 'iops'):.2f}x")
EOF
fi

if [[ " $parts " == *" create "* ]]; then
  echo "bench: snapshot creation, 1G and $big volumes with every cluster mapped"
  "$edgestor" pool create "$work/create.img" --size "$((${big%G} + 16))G" >/dev/null
  "$edgestor" --pool "$work/create.img" vol create small --size 1G >/dev/null
  "$edgestor" --pool "$work/create.img" vol create big --size "$big" >/dev/null
  start_ours create "$work/create.img" small
  fill create small 1G
  t0=$(date +%s)
  # One 4 KiB block per 64 KiB cluster maps every cluster (as much map as
  # a fully written volume) without writing 100 GiB.
  # (io_size: without it fio wraps around until it has written the full size.)
  fill create big "$big" --bs=4k --rw=write:60k --iodepth=32 --io_size="$((${big%G} * 64))M"
  echo "  mapped every cluster of big in $(($(date +%s) - t0)) s"
  for vol in small big; do
    for n in 1 2 3; do
      # A few writes first, so the snapshot has dirty pages to store too.
      fio --name=touch --ioengine=nbd --uri="$(uri create "$vol")" --rw=randwrite --bs=4k --size=1G --io_size=4M \
        --output=/dev/null >/dev/null 2>&1
      t=$(python3 -c 'import time; print(time.monotonic())')
      "$edgestor" --pool "$work/create.img" snap create "$vol@s$n" >/dev/null
      python3 - "$t" "$vol" "$n" >>"$results.create" <<'EOF'
import sys, time
ms = (time.monotonic() - float(sys.argv[1])) * 1000
print(f"{sys.argv[2]} {sys.argv[3]} {ms:.1f}")
EOF
    done
  done
  echo "  daemon RSS with 6 snapshots: $(($(rss_kib "${server_pid[create]}") / 1024)) MiB"
  stop_server create
  python3 - "$results.create" "$big" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
t = {v: statistics.median(float(ms) for vol, n, ms in rows if vol == v) for v in ("small", "big")}
print(f"\nsnapshot create (CLI through the daemon, median of 3, ms): 1G {t['small']:.1f}, {sys.argv[2]} {t['big']:.1f}"
      f" -> ratio {t['big'] / t['small']:.1f}x for 100x the data")
EOF
fi
if [[ " $parts " == *" many "* ]]; then
  echo "bench: $many snapshots of one 1G volume, four 4 KiB writes before each"
  "$edgestor" pool create "$work/many.img" --size 8G >/dev/null
  "$edgestor" --pool "$work/many.img" vol create vol --size 1G >/dev/null
  start_ours many "$work/many.img" vol
  fill many vol 1G
  rss0=$(rss_kib "${server_pid[many]}")
  t0=$(date +%s.%N)
  for ((i = 0; i < many; i++)); do
    cmds=()
    for prime in 7919 104729 1299709 15485863; do
      cmds+=(-c "write -P $((i % 250 + 1)) $(((i * prime + prime) % 262144 * 4096)) 4k")
    done
    qemu-io -f raw "${cmds[@]}" "$(uri many vol)" >/dev/null
    "$edgestor" --pool "$work/many.img" snap create "vol@s$i" >/dev/null
  done
  t1=$(date +%s.%N)
  rss1=$(rss_kib "${server_pid[many]}")
  # The oldest and newest read whole over NBD; the first write before each
  # is checked in them.
  for i in 0 $((many - 1)); do
    qemu-io -r -f raw -c "read -P $((i % 250 + 1)) $(((i * 7919 + 7919) % 262144 * 4096)) 4k" \
      "$(uri many "vol@s$i")" | grep -q "read 4096/4096" || { echo "  vol@s$i does not read back" >&2; failed=1; }
    nbdcopy "$(uri many "vol@s$i")" null: || { echo "  reading vol@s$i failed" >&2; failed=1; }
  done
  t2=$(date +%s.%N)
  "$edgestor" --pool "$work/many.img" snap list vol --json >"$work/many-list.json"
  t3=$(date +%s.%N)
  for i in $(seq 0 $((many - 1)) | shuf --random-source=<(yes)); do
    "$edgestor" --pool "$work/many.img" snap delete "vol@s$i" >/dev/null
  done
  t4=$(date +%s.%N)
  rss2=$(rss_kib "${server_pid[many]}")
  hwm=$(hwm_kib "${server_pid[many]}")
  stop_server many
  python3 - "$many" "$t0" "$t1" "$t2" "$t3" "$t4" "$rss0" "$rss1" "$rss2" "$hwm" <<'EOF'
import sys
n = int(sys.argv[1]); t0, t1, t2, t3, t4 = map(float, sys.argv[2:7]); rss0, rss1, rss2, hwm = (int(x) / 1024 for x in sys.argv[7:11])
print(f"\n{n} snapshots: create loop {t1 - t0:.1f} s ({(t1 - t0) / n * 1000:.0f} ms per write+snapshot, CLI and qemu-io"
      f" start included); oldest+newest read whole {t2 - t1:.1f} s; list {t3 - t2:.2f} s; delete all (random order)"
      f" {t4 - t3:.1f} s ({(t4 - t3) / n * 1000:.0f} ms each)")
print(f"daemon RSS: {rss0:.1f} MiB before, {rss1:.1f} MiB with {n} snapshots, {rss2:.1f} MiB after deleting them"
      f" (peak {hwm:.1f} MiB)")
EOF
fi
exit $failed
