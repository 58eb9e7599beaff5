#!/usr/bin/env bash
# NBD benchmark: fio's nbd engine against `edgestor serve`, against qemu-nbd
# serving a raw file (the limit of the transport) and against qemu-nbd serving
# a thin qcow2 (what users have today), the same jobs in the same run. The
# 128 KiB sequential cases also run fio with io_uring and O_DIRECT on the raw
# image itself: the limit of the disk, without any server.
#
#   bench/nbd-vs-qemu.sh                 all cases, 2 runs x 5 s per side (about 6-7 minutes)
#   SECONDS=3 bench/nbd-vs-qemu.sh       shorter runs (BENCH_SECONDS works too)
#   BENCH_CASES="read:32 firstwrite:32" bench/nbd-vs-qemu.sh
#
# Environment (defaults in brackets):
#   SECONDS / BENCH_SECONDS  seconds per timed run [5]
#   BENCH_RUNS               runs per side and case, interleaved ours, raw, qcow2 [2]
#   BENCH_SIZE               volume size = raw file size = qcow2 virtual size [2G]
#   BENCH_POOL_SIZE          our pool file size (sparse) [16G]
#   BENCH_SEQ_QD             queue depth of the 128 KiB sequential cases [8]
#   BENCH_CASES              e.g. "read:32 overwrite:1" [all ten: read, firstwrite and
#                            overwrite at QD1 and QD32, seqread, seqwrite, fsync:1,
#                            sectorwrite:32 (512-byte random writes: our
#                            read-modify-write of partial blocks)]
#   BENCH_EDGESTOR           use this edgestor binary (no build)
#   BENCH_BUILD_DIR          build edgestor there with cmake (Release) instead of
#                            scripts/build.sh release
#   BENCH_JOBS               build parallelism with BENCH_BUILD_DIR [1]
#   BENCH_CMAKE_ARGS         extra cmake configure arguments with BENCH_BUILD_DIR
#
# Prints a table with the median of each side, the spread between runs, the
# ratios, p99 completion latency, server CPU per I/O, server RSS and the goals
# (PASS/MISS; never fails on a goal). Exits non-zero only if a run itself
# fails (a server error, crash or hang, fio missing).
run_seconds=${BENCH_SECONDS:-$SECONDS}  # first line: bash's SECONDS ticks from here on
set -euo pipefail
((run_seconds > 0)) || run_seconds=5

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
runs=${BENCH_RUNS:-2}
size=${BENCH_SIZE:-2G}
pool_size=${BENCH_POOL_SIZE:-16G}
seq_qd=${BENCH_SEQ_QD:-8}
cases=${BENCH_CASES:-"read:1 read:32 firstwrite:1 firstwrite:32 overwrite:1 overwrite:32 seqread:$seq_qd seqwrite:$seq_qd fsync:1 sectorwrite:32"}
sides="ours raw qcow2"
# A run that takes this much longer than asked is a hang.
fio_timeout=$((run_seconds * 4 + 60))

for tool in fio python3 qemu-nbd qemu-img nbdinfo timeout; do
  command -v $tool >/dev/null || {
    echo "nbd-vs-qemu.sh: $tool is required (apt-get install fio python3 qemu-utils libnbd-bin)" >&2
    exit 2
  }
done
fio --enghelp 2>/dev/null | grep -qx $'\tnbd' || { echo "nbd-vs-qemu.sh: this fio has no nbd engine" >&2; exit 2; }

# ---- build
if [[ -n ${BENCH_EDGESTOR:-} ]]; then
  edgestor=$BENCH_EDGESTOR
elif [[ -n ${BENCH_BUILD_DIR:-} || ! -x $root/scripts/build.sh ]]; then
  build=${BENCH_BUILD_DIR:-$root/build}
  # shellcheck disable=SC2086  # BENCH_CMAKE_ARGS is a list of arguments
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release ${BENCH_CMAKE_ARGS:-} >/dev/null
  cmake --build "$build" --parallel "${BENCH_JOBS:-1}" --target edgestor
  edgestor=$build/src/cli/edgestor
else
  "$root/scripts/build.sh" release --target edgestor || {
    echo "nbd-vs-qemu.sh: the build failed; BENCH_EDGESTOR=path uses a built binary," \
      "BENCH_BUILD_DIR=dir [BENCH_CMAKE_ARGS=...] builds elsewhere" >&2
    exit 1
  }
  edgestor=$root/build/src/cli/edgestor
fi
[[ -x $edgestor ]] || { echo "nbd-vs-qemu.sh: no edgestor binary at $edgestor" >&2; exit 2; }

# ---- work dir: on the file system of the checkout, the same for all three
stamp=$(date +%Y%m%d-%H%M%S)
work=$root/var/bench-nbd/$stamp
mkdir -p "$work"
results=$work/results.jsonl
memory=$work/memory.jsonl
: >"$results"
: >"$memory"
clk_tck=$(getconf CLK_TCK)
failed=0

declare -A server_pid=()  # name -> pid of every server we started and did not stop yet

# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"

# shellcheck disable=SC2317  # called by the trap
cleanup() {
  local name
  for name in "${!server_pid[@]}"; do stop_server "$name"; done
  rm -f "$work"/*.img "$work"/*.qcow2 "$work"/*.sock
  sync -f "$work" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits until export $2 on server $1 answers a handshake (10 s).
wait_ready() {
  local name=$1 export=$2 i
  for ((i = 0; i < 100; i++)); do
    if ! kill -0 "${server_pid[$name]}" 2>/dev/null; then
      echo "  $name died at start; its log:" >&2
      sed 's/^/    /' "$work/$name.log" >&2
      exit 1
    fi
    nbdinfo --size "$(uri "$name" "$export")" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "  $name: export $export not ready after 10 s" >&2
  exit 1
}

# Our daemon on pool $2, as server $1 (NBD socket $work/$1.sock).
start_ours() {
  local name=$1 pool=$2 export=$3
  "$edgestor" serve --pool "$pool" --nbd-socket "$work/$name.sock" >>"$work/$name.log" 2>&1 &
  server_pid[$name]=$!
  wait_ready "$name" "$export"
}

# qemu-nbd serving file $2 (format $3) as export $4, as server $1. -t: stays
# up between clients; -e 4: readiness probes and fio may overlap.
start_qemu() {
  local name=$1 file=$2 format=$3 export=$4
  qemu-nbd -f "$format" --cache=none --aio=io_uring -t -e 4 -k "$work/$name.sock" -x "$export" "$file" \
    >>"$work/$name.log" 2>&1 &
  server_pid[$name]=$!
  wait_ready "$name" "$export"
}

# Runs fio against a server, measuring the server's CPU time and RSS.
# run_fio SIDE SERVER EXPORT CASE QD RUN
run_fio() {
  local side=$1 name=$2 export=$3 mode=$4 qd=$5 run=$6 pid=${server_pid[$2]} before after rss rc=0
  local out=$work/$side-$mode-qd$qd-$run.json job=()
  case $mode in
    read) job=(--rw=randread --bs=4k --time_based) ;;
    # Each block at most once (fio's random map); stops at the time limit or
    # when every block is written.
    firstwrite) job=(--rw=randwrite --bs=4k --norandommap=0) ;;
    overwrite) job=(--rw=randwrite --bs=4k --time_based) ;;
    seqread) job=(--rw=read --bs=128k --time_based) ;;
    seqwrite) job=(--rw=write --bs=128k --time_based) ;;
    fsync) job=(--rw=randwrite --bs=4k --fsync=1 --time_based) ;;
    sectorwrite) job=(--rw=randwrite --bs=512 --time_based) ;;
  esac
  before=$(cpu_ticks "$pid")
  timeout -k 10 "$fio_timeout" fio --name="$side" --ioengine=nbd --uri="$(uri "$name" "$export")" \
    --iodepth="$qd" --size="$size" --runtime="$run_seconds" --randrepeat=0 "${job[@]}" \
    --output-format=json --output="$out" >"$out.err" 2>&1 || rc=$?
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "  $side $mode qd$qd run $run: the server (pid $pid) DIED; fio exit $rc; fio said:" >&2
    sed 's/^/    /' "$out.err" >&2
    echo "  its log $work/$name.log ends:" >&2
    tail -n 20 "$work/$name.log" | sed 's/^/    /' >&2
    unset "server_pid[$name]"
    failed=1
    exit 1
  fi
  after=$(cpu_ticks "$pid")
  rss=$(rss_kib "$pid")
  if ((rc != 0)); then
    ((rc == 124 || rc == 137)) && echo "  $side $mode qd$qd run $run: fio HUNG (no end after ${fio_timeout}s)" >&2
    echo "  $side $mode qd$qd run $run FAILED (fio exit $rc):" >&2
    sed 's/^/    /' "$out.err" >&2
    failed=1
    return 0
  fi
  [[ -s $out.err ]] || rm -f "$out.err"
  python3 - "$side" "$mode" "$qd" "$run" "$out" "$run_seconds" "$((after - before))" "$clk_tck" "$rss" \
    >>"$results" <<'EOF'
import json, sys
side, mode, qd, run, path, seconds, ticks, clk_tck, rss = sys.argv[1:10]
job = json.load(open(path))["jobs"][0]
d = job["read" if mode in ("read", "seqread") else "write"]
ios = d["total_ios"]
runtime_ms = job.get("job_runtime") or d["runtime"]
pct = lambda lat: lat["percentile"]["99.000000"] / 1000.0 if lat.get("percentile") else None
rec = {"side": side, "mode": mode, "qd": int(qd), "run": int(run), "ios": ios,
       "iops": d["iops"], "mib_s": d["bw_bytes"] / 2**20, "p99_us": pct(d["clat_ns"]),
       "cpu_us_per_io": int(ticks) * 1e6 / int(clk_tck) / max(ios, 1), "rss_kib": int(rss),
       "error": job["error"], "short": mode == "firstwrite" and runtime_ms < 950 * float(seconds)}
if mode == "fsync":
    rec["write_p99_us"] = rec["p99_us"]
    rec["p99_us"] = pct(job["sync"]["lat_ns"])  # the flush that follows each write
print(json.dumps(rec))
value = f"{rec['mib_s']:.0f} MiB/s" if mode.startswith("seq") else f"{rec['iops']:.0f} IOPS"
print(f"  {side:5} {mode} qd{qd} run {run}: {value}, p99 {rec['p99_us']:.0f} µs, "
      f"server {rec['cpu_us_per_io']:.1f} µs CPU/IO, RSS {rec['rss_kib'] / 1024:.1f} MiB", file=sys.stderr)
EOF
}

# The limit of the disk: fio with io_uring and O_DIRECT straight on the raw
# image (no server, no socket), for the 128 KiB sequential cases.
# run_fio_file CASE QD RUN
run_fio_file() {
  local mode=$1 qd=$2 run=$3 out=$work/file-$1-qd$2-$3.json rw rc=0
  [[ $mode == seqread ]] && rw=read || rw=write
  timeout -k 10 "$fio_timeout" fio --name=file --ioengine=io_uring --direct=1 --filename="$work/raw-filled.img" \
    --rw=$rw --bs=128k --iodepth="$qd" --size="$size" --runtime="$run_seconds" --time_based \
    --output-format=json --output="$out" >"$out.err" 2>&1 || rc=$?
  if ((rc != 0)); then
    echo "  file $mode qd$qd run $run FAILED (fio exit $rc):" >&2
    sed 's/^/    /' "$out.err" >&2
    failed=1
    return 0
  fi
  rm -f "$out.err"
  python3 - "$mode" "$qd" "$run" "$out" >>"$results" <<'EOF'
import json, sys
mode, qd, run, path = sys.argv[1:5]
d = json.load(open(path))["jobs"][0]["read" if mode == "seqread" else "write"]
pct = d["clat_ns"].get("percentile", {}).get("99.000000")
print(json.dumps({"side": "file", "mode": mode, "qd": int(qd), "run": int(run), "ios": d["total_ios"],
                  "iops": d["iops"], "mib_s": d["bw_bytes"] / 2**20, "p99_us": pct / 1000.0 if pct else None,
                  "cpu_us_per_io": None, "rss_kib": 0, "error": 0, "short": False}))
print(f"  file  {mode} qd{qd} run {run}: {d['bw_bytes'] / 2**20:.0f} MiB/s (fio io_uring O_DIRECT on the raw file)",
      file=sys.stderr)
EOF
}

# Sequential 1 MiB writes over the whole export, through the server that
# will serve it, so that all three have data everywhere it is read.
prefill() {
  local name=$1 export=$2 out=$work/$1-fill.json
  if ! timeout -k 10 900 fio --name=fill --ioengine=nbd --uri="$(uri "$name" "$export")" --rw=write --bs=1M \
    --iodepth=8 --size="$size" --output-format=json --output="$out" >"$out.err" 2>&1; then
    echo "  prefill through $name FAILED:" >&2
    sed 's/^/    /' "$out.err" >&2
    exit 1
  fi
  [[ -s $out.err ]] || rm -f "$out.err"
  python3 - "$out" "$name" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]["write"]
print(f"  prefill {sys.argv[2]:5}: {j['io_bytes'] / 2**30:.1f} GiB at {j['bw_bytes'] / 2**20:.0f} MiB/s")
EOF
}

echo "bench: $runs runs x ${run_seconds}s per case and side (ours, raw, qcow2 interleaved); size $size" \
  "(our pool $pool_size, sparse); sequential cases at QD$seq_qd"
echo "bench: work dir $work on:"
df -T "$work" | sed 's/^/  /'
echo "bench: $(nproc) CPUs, kernel $(uname -r), $(fio --version), $(qemu-nbd --version | head -1)"
echo "bench: $edgestor ($(stat -c %y "$edgestor" | cut -d. -f1))"

# ---- idle memory of our daemon: one pool, one volume; then ten more
echo "bench: idle memory of our daemon"
"$edgestor" pool create "$work/idle.img" --size 4G >/dev/null
"$edgestor" --pool "$work/idle.img" vol create vol0 --size "$size" >/dev/null
start_ours idle "$work/idle.img" vol0
sleep 1
memory_record idle-1 "$(rss_kib "${server_pid[idle]}")"
for i in $(seq 1 10); do
  "$edgestor" --pool "$work/idle.img" vol create "extra$i" --size "$size" >/dev/null  # through the daemon
done
wait_ready idle extra10
sleep 1
memory_record idle-11-created "$(rss_kib "${server_pid[idle]}")"
for i in $(seq 1 10); do nbdinfo --size "$(uri idle "extra$i")" >/dev/null; done
sleep 1
memory_record idle-11-after-handshakes "$(rss_kib "${server_pid[idle]}")"
stop_server idle
start_ours idle "$work/idle.img" vol0
sleep 1
memory_record idle-11-restarted "$(rss_kib "${server_pid[idle]}")"
stop_server idle
rm -f "$work/idle.img"

# ---- the three servers of the filled images (read, overwrite, seq, fsync)
pool=$work/pool.img
"$edgestor" pool create "$pool" --size "$pool_size" >/dev/null
"$edgestor" --pool "$pool" vol create filled --size "$size" >/dev/null
start_ours ours "$pool" filled
truncate -s "$size" "$work/raw-filled.img"
start_qemu raw "$work/raw-filled.img" raw filled
qemu-img create -q -f qcow2 "$work/qcow2-filled.qcow2" "$size"
start_qemu qcow2 "$work/qcow2-filled.qcow2" qcow2 filled
sleep 1
for s in ours raw qcow2; do memory_record "$s-idle" "$(rss_kib "${server_pid[$s]}")"; done
echo "bench: prefilling ($size each, 1 MiB sequential writes through each server)"
for s in ours raw qcow2; do prefill "$s" filled; done
sync -f "$work"

# ---- the cases, interleaved
for c in $cases; do
  mode=${c%:*} qd=${c#*:}
  echo "bench: $mode qd$qd"
  for ((run = 1; run <= runs; run++)); do
    [[ $mode == seq* ]] && run_fio_file "$mode" "$qd" "$run"
    for side in $sides; do
      if [[ $mode != firstwrite ]]; then
        run_fio "$side" "$side" filled "$mode" "$qd" "$run"
        continue
      fi
      # First writes go into empty space: a new volume in our pool (created
      # through the daemon; never deleted, so no freed space is reused), a new
      # sparse raw file, a new qcow2, each behind a new qemu-nbd.
      case $side in
        ours)
          "$edgestor" --pool "$pool" vol create "fresh-qd$qd-$run" --size "$size" >/dev/null
          wait_ready ours "fresh-qd$qd-$run"
          run_fio ours ours "fresh-qd$qd-$run" "$mode" "$qd" "$run"
          ;;
        raw)
          truncate -s "$size" "$work/raw-fresh.img"
          start_qemu raw-fresh "$work/raw-fresh.img" raw fresh
          run_fio raw raw-fresh fresh "$mode" "$qd" "$run"
          stop_server raw-fresh
          settle "$work/raw-fresh.img"
          ;;
        qcow2)
          qemu-img create -q -f qcow2 "$work/qcow2-fresh.qcow2" "$size"
          start_qemu qcow2-fresh "$work/qcow2-fresh.qcow2" qcow2 fresh
          run_fio qcow2 qcow2-fresh fresh "$mode" "$qd" "$run"
          stop_server qcow2-fresh
          settle "$work/qcow2-fresh.qcow2"
          ;;
      esac
    done
  done
done

for s in ours raw qcow2; do memory_record "$s-end" "$(rss_kib "${server_pid[$s]}")"; done
t0=$(date +%s.%N)
stop_server ours
echo "bench: our daemon stopped (SIGTERM) in $(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$t0" "$(date +%s.%N)") s"
stop_server raw
stop_server qcow2

# ---- the table
python3 - "$results" "$memory" "$run_seconds" "$size" <<'EOF'
import json, statistics, sys

recs = [json.loads(line) for line in open(sys.argv[1])]
mem = {r["what"]: r["rss_kib"] / 1024.0 for r in map(json.loads, open(sys.argv[2]))}
sides = ("ours", "raw", "qcow2")

def spread(values):
    return 100.0 * (max(values) - min(values)) / statistics.median(values) if len(values) > 1 else 0.0

def med(rs, key):
    vals = [r[key] for r in rs if r.get(key) is not None]
    return statistics.median(vals) if vals else None

def paired_ratio(a, b, key):
    """Median over runs of a[run] / b[run] (the runs sat next to each other)."""
    bb = {r["run"]: r[key] for r in b}
    ratios = [r[key] / bb[r["run"]] for r in a if bb.get(r["run"])]
    return (statistics.median(ratios) if ratios else None), ratios

def fmt(v, spec):
    return "-" if v is None else format(v, spec)

verdict = lambda ok: "PASS" if ok else "MISS"
header = ["case", "ours", "raw", "qcow2", "ours/raw", "ours/qcow2", "p99 µs ours/raw/qcow2",
          "server CPU µs/IO ours/raw/qcow2", "RSS MiB ours/raw/qcow2", "goals"]
rows, details, notes = [], [], []
for mode, qd in dict.fromkeys((r["mode"], r["qd"]) for r in recs if r["side"] != "file"):
    by = {s: sorted((r for r in recs if (r["mode"], r["qd"], r["side"]) == (mode, qd, s)), key=lambda r: r["run"])
          for s in sides}
    key = "mib_s" if mode.startswith("seq") else "iops"
    unit = " MiB/s" if key == "mib_s" else ""
    cell = lambda s: (f"{fmt(med(by[s], key), ',.0f')}{unit} (±{spread([r[key] for r in by[s]]):.0f}%)"
                      if by[s] else "-")
    r_raw, rr_raw = paired_ratio(by["ours"], by["raw"], key)
    r_q, rr_q = paired_ratio(by["ours"], by["qcow2"], key)
    file_runs = sorted((r for r in recs if (r["mode"], r["qd"], r["side"]) == (mode, qd, "file")), key=lambda r: r["run"])
    r_file, rr_file = paired_ratio(by["ours"], file_runs, key)
    cpu = {s: med(by[s], "cpu_us_per_io") for s in sides}
    cpu_ratio = cpu["ours"] / cpu["raw"] if cpu["ours"] is not None and cpu["raw"] else None
    goals = []
    if (mode, qd) in (("read", 32), ("overwrite", 32)) and r_raw is not None:
        goals.append(f"≥1.2x raw {verdict(r_raw >= 1.2)}")
    if (mode, qd) == ("firstwrite", 32) and r_q is not None:
        goals.append(f"≥4x qcow2 {verdict(r_q >= 4.0)}")
    if mode.startswith("seq") and r_raw is not None:
        goals.append(f"≥1.0x raw {verdict(r_raw >= 1.0)}")
    if r_file is not None:
        goals.append(f"{r_file:.2f}x fio on the file ({med(file_runs, key):,.0f} MiB/s) ≥0.5 {verdict(r_file >= 0.5)}")
    if cpu_ratio is not None:
        goals.append(f"CPU {cpu_ratio:.2f}x raw ≤0.6 {verdict(cpu_ratio <= 0.6)}")
    name = f"{mode} {'128K' if mode.startswith('seq') else '512B' if mode == 'sectorwrite' else '4K'} qd{qd}"
    rows.append([name, cell("ours"), cell("raw"), cell("qcow2"),
                 fmt(r_raw, ".2f") + (f" ({', '.join(f'{x:.2f}' for x in rr_raw)})" if len(rr_raw) > 1 else ""),
                 fmt(r_q, ".2f") + (f" ({', '.join(f'{x:.2f}' for x in rr_q)})" if len(rr_q) > 1 else ""),
                 " / ".join(fmt(med(by[s], "p99_us"), ",.0f") for s in sides),
                 " / ".join(fmt(cpu[s], ".1f") for s in sides),
                 " / ".join(fmt(med(by[s], "rss_kib") and med(by[s], "rss_kib") / 1024, ".1f") for s in sides),
                 "; ".join(goals)])
    details.append(f"  {name:22} " + "; ".join(
        f"{s} " + ", ".join(f"{r[key]:,.0f}" for r in by[s]) for s in sides) + f"{unit or ' IOPS'}")
    if any(r["short"] for s in sides for r in by[s]):
        notes.append(f"{name}: a first-write run wrote every block before its time was up; raise BENCH_SIZE")

widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]
line = lambda row: "| " + " | ".join(str(c).ljust(widths[i]) for i, c in enumerate(row)) + " |"
print()
print(line(header))
print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
for row in rows:
    print(line(row))
print()
print("Each run, in order (ours, raw, qcow2 interleaved):")
print("\n".join(details))
print()
print("Values: median over runs of IOPS (128K cases: MiB/s), with the spread (max - min) / median. Ratios: median")
print("over runs of ours / the peer's run next to it (each run's ratio in brackets). p99: fio's completion latency")
print("(clat) percentile; fsync case: of the flush after each write. Server CPU: utime+stime of the server process")
print("(/proc/PID/stat, all threads, io_uring workers included) over the fio run, per I/O (fsync: per write+flush).")
print("RSS: VmRSS of the server after the run (median). The client (fio) runs on the same CPUs.")
for note in notes:
    print("note:", note)

print()
idle1 = mem.get("idle-1")
per_volume = {k: (mem[k] - idle1) / 10 for k in ("idle-11-created", "idle-11-after-handshakes", "idle-11-restarted")
              if k in mem and idle1 is not None}
print("Memory (VmRSS):")
if idle1 is not None:
    print(f"  our daemon idle, one pool, one volume: {idle1:.1f} MiB   goal ≤12 MiB {verdict(idle1 <= 12)}")
    for k, v in per_volume.items():
        label = {"idle-11-created": "10 more created through the daemon",
                 "idle-11-after-handshakes": "... and a handshake with each",
                 "idle-11-restarted": "daemon restarted with the 11"}[k]
        print(f"  {label + ':':38} {mem[k]:.1f} MiB = {v * 1024:+.0f} KiB per extra volume")
    if per_volume:
        worst = max(per_volume.values())
        print(f"  per extra served volume (worst of the above): {worst * 1024:.0f} KiB   "
              f"goal ≤0.5 MiB {verdict(worst <= 0.5)}")
print("  idle right after start, before the prefill: " +
      ", ".join(f"{s} {mem[s + '-idle']:.1f} MiB" for s in sides if s + "-idle" in mem))
print("  at the end: " + ", ".join(f"{s} {mem[s + '-end']:.1f} MiB" for s in sides if s + "-end" in mem))
EOF

complaints=$(cat "$work"/ours.log "$work"/idle.log 2>/dev/null | grep -iE 'error|warn' | grep -v 'received SIGTERM' || true)
if [[ -n $complaints ]]; then
  echo "bench: our daemon logged warnings or errors ($work/ours.log, idle.log):"
  head -20 <<<"$complaints" | sed 's/^/  /'
fi
echo "bench: results in $results"
exit $failed
