#!/usr/bin/env bash
# Engine benchmark: 4 KiB random I/O through edgestor next to fio on a raw
# file of the same size on the same file system, in the same run.
#
#   bench/engine.sh                 all cases, 8 s per run (about 5-7 minutes)
#   SECONDS=3 bench/engine.sh       shorter runs (BENCH_SECONDS works too)
#   BENCH_RSS=1 bench/engine.sh     then also the memory check (mode rss)
#
# Environment (defaults in brackets):
#   SECONDS / BENCH_SECONDS  seconds per timed run [8]
#   BENCH_RUNS               runs per side and case, interleaved [2]
#   BENCH_SIZE               volume size = raw file size [4G]
#   BENCH_POOL_SIZE          pool file size (sparse) [8G]
#   BENCH_CLUSTER_SIZE       pool cluster size [64K]
#   BENCH_CASES              e.g. "overwrite:1 read:32" [all six]
#   BENCH_RSS_ARGS           extra engine_bench arguments for the rss mode
#   BENCH_BUILD_DIR          build engine_bench there with cmake (Release)
#                            instead of scripts/build.sh release
#   BENCH_JOBS               build parallelism with BENCH_BUILD_DIR [nproc]
#   BENCH_CMAKE_ARGS         extra cmake configure arguments with BENCH_BUILD_DIR
#
# Prints a table with both runs of each side, the spread, the median ratio to
# raw, CPU per I/O, write amplification and the goals (PASS/MISS; never
# fails on a goal). Exits non-zero only if a run itself fails.
run_seconds=${BENCH_SECONDS:-$SECONDS}  # first line: bash's SECONDS ticks from here on
set -euo pipefail
((run_seconds > 0)) || run_seconds=8

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
runs=${BENCH_RUNS:-2}
size=${BENCH_SIZE:-4G}
pool_size=${BENCH_POOL_SIZE:-8G}
cluster_size=${BENCH_CLUSTER_SIZE:-64K}
cases=${BENCH_CASES:-"firstwrite:1 firstwrite:32 overwrite:1 overwrite:32 read:1 read:32"}

for tool in fio python3; do
  command -v $tool >/dev/null || { echo "engine.sh: $tool is required (apt-get install $tool)" >&2; exit 2; }
done

# ---- build
if [[ -n ${BENCH_BUILD_DIR:-} || ! -x $root/scripts/build.sh ]]; then
  build=${BENCH_BUILD_DIR:-$root/build}
  # shellcheck disable=SC2086  # BENCH_CMAKE_ARGS is a list of arguments
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release ${BENCH_CMAKE_ARGS:-} >/dev/null
  cmake --build "$build" --parallel "${BENCH_JOBS:-$(nproc)}" --target engine_bench
else
  build=$root/build
  "$root/scripts/build.sh" release --target engine_bench
fi
bench=$build/bench/engine_bench

# ---- work dir: on the file system of the checkout, like a real pool file
stamp=$(date +%Y%m%d-%H%M%S)
work=$root/var/bench/$stamp
mkdir -p "$work"
results=$work/results.jsonl
# shellcheck disable=SC2317  # called by the trap
cleanup() { rm -f "$work"/*.img; }
trap cleanup EXIT

echo "bench: $runs runs x ${run_seconds}s per case and side; size $size (pool $pool_size, cluster $cluster_size)"
echo "bench: work dir $work on:"
df -T "$work" | sed 's/^/  /'
echo "bench: $(nproc) CPUs, kernel $(uname -r), $(fio --version)"

# Appends one result record; `json` is the output file of the run.
record() {
  local kind=$1 mode=$2 qd=$3 run=$4 json=$5
  python3 - "$kind" "$mode" "$qd" "$run" "$json" "$run_seconds" "$work/fio-baseline.cpu" >>"$results" <<'EOF'
import json, sys
kind, mode, qd, run, path, seconds, baseline = sys.argv[1:8]
with open(path) as f:
    out = json.load(f)
rec = {"kind": kind, "mode": mode, "qd": int(qd), "run": int(run)}
if kind == "engine":
    rec.update(iops=out["iops"], cpu_us_per_io=out["cpu_us_per_io"], wa=out["wa"],
               short=bool(out["exhausted"]))
else:
    job = out["jobs"][0]
    ios = max(sum(job[d]["total_ios"] for d in ("read", "write")), 1)
    runtime_ms = job.get("job_runtime") or max(job[d]["runtime"] for d in ("read", "write"))
    # fio's usr/sys % cover its job thread only; the process total (less
    # fio's start-up cost) also counts io_uring's worker threads.
    fio_thread_us = (job["usr_cpu"] + job["sys_cpu"]) / 100.0 * runtime_ms * 1000.0
    process_us = (float(open(path + ".cpu").read()) - float(open(baseline).read())) * 1e6
    rec.update(iops=job["read"]["iops"] + job["write"]["iops"],
               cpu_us_per_io=max(process_us, fio_thread_us) / ios, fio_thread_cpu_us_per_io=fio_thread_us / ios,
               wa=1.0 if mode != "read" else None, short=runtime_ms < 950 * float(seconds))
print(json.dumps(rec))
print(f"  {kind:6} {mode} qd{qd} run {run}: {rec['iops']:.0f} IOPS", file=sys.stderr)
EOF
}

# Deletes files and waits for the file system to commit (and, when mounted
# with -o discard, to trim) the freed space, so that work does not land in
# the next timed run. A file written at random has an extent per block.
settle() {
  rm -f "$@"
  sync -f "$work"
}

failed=0
run_engine() {
  local mode=$1 qd=$2 run=$3 out=$work/engine-$1-qd$2-$3.json
  if "$bench" --pool "$work/pool.img" --pool-size "$pool_size" --volume-size "$size" \
    --cluster-size "$cluster_size" --mode "$mode" --qd "$qd" --seconds "$run_seconds" \
    >"$out" 2>"$out.err"; then
    record engine "$mode" "$qd" "$run" "$out"
  else
    echo "  engine $mode qd$qd run $run FAILED:" >&2
    sed 's/^/    /' "$out.err" >&2
    failed=1
  fi
  settle "$work/pool.img"
}

raw_filled=$work/raw-filled.img
run_fio() {
  local mode=$1 qd=$2 run=$3 out=$work/raw-$1-qd$2-$3.json file rw extra=()
  case $mode in
    firstwrite)
      # A fresh sparse file; fio's random map hands out each block once, and
      # the run stops at the time limit or when every block is written.
      file=$work/raw-fresh.img
      truncate -s "$size" "$file"
      rw=randwrite
      extra=(--norandommap=0)
      ;;
    overwrite) file=$raw_filled rw=randwrite extra=(--time_based) ;;
    read) file=$raw_filled rw=randread extra=(--time_based) ;;
  esac
  if measure_cpu "$out.cpu" fio --name=raw --filename="$file" --ioengine=io_uring --direct=1 --bs=4k \
    --iodepth="$qd" --rw="$rw" --size="$size" --runtime="$run_seconds" --randrepeat=0 "${extra[@]}" \
    --output-format=json --output="$out" >"$out.err" 2>&1; then
    record raw "$mode" "$qd" "$run" "$out"
  else
    echo "  fio $mode qd$qd run $run FAILED:" >&2
    sed 's/^/    /' "$out.err" >&2
    failed=1
  fi
  [[ $mode != firstwrite ]] || settle "$file"
}

# Runs a command; writes the CPU time (user + sys, seconds) that it and all
# its descendants used to the file $1. fio's own usr/sys figures count only
# its job thread, not the io_uring worker threads (iou-wrk) the kernel hands
# blocking work to (first writes into a sparse file), which getrusage(SELF)
# does count on the engine side.
measure_cpu() {
  python3 -c '
import resource, subprocess, sys
code = subprocess.run(sys.argv[2:]).returncode
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
open(sys.argv[1], "w").write(f"{usage.ru_utime + usage.ru_stime}\n")
sys.exit(code)' "$@"
}

# fio's start-up and exit cost, to subtract: the least of three one-I/O runs.
truncate -s "$size" "$work/baseline.img"
for i in 1 2 3; do
  measure_cpu "$work/fio-baseline-$i.cpu" fio --name=base --filename="$work/baseline.img" --ioengine=io_uring \
    --direct=1 --bs=4k --iodepth=32 --rw=randread --size="$size" --number_ios=1 --output-format=json \
    --output=/dev/null
done
sort -g "$work"/fio-baseline-?.cpu | head -1 >"$work/fio-baseline.cpu"
rm -f "$work/baseline.img"
echo "bench: fio start-up and exit cost $(cat "$work/fio-baseline.cpu") s of CPU (subtracted)"

# The raw peer of overwrite and read: a file written once, end to end.
if [[ $cases == *overwrite* || $cases == *read* ]]; then
  echo "bench: filling the raw file ($size)"
  fio --name=fill --filename="$raw_filled" --ioengine=io_uring --direct=1 --bs=1M --iodepth=8 \
    --rw=write --size="$size" --output-format=json --output="$work/raw-fill.json" >/dev/null
fi

for c in $cases; do
  mode=${c%:*} qd=${c#*:}
  echo "bench: $mode qd$qd"
  for ((run = 1; run <= runs; run++)); do
    run_engine "$mode" "$qd" "$run"
    run_fio "$mode" "$qd" "$run"
  done
done

# ---- the table
python3 - "$results" <<'EOF'
import json, statistics, sys

recs = [json.loads(line) for line in open(sys.argv[1])]
# Goals from the issue: (IOPS ratio to raw, highest write amplification).
goals = {"firstwrite": (0.7, 1.2), "overwrite": (0.9, 1.05), "read": (0.9, None)}

def spread(values):
    return 100.0 * (max(values) - min(values)) / statistics.median(values) if values else 0.0

def runs(values):
    return ", ".join(f"{v:,.0f}" for v in values) + (f" (spread {spread(values):.0f}%)" if len(values) > 1 else "")

def fmt(value, spec):
    return format(value, spec) if value is not None else "-"

header = ["case", "engine IOPS (runs, spread)", "raw IOPS (runs, spread)", "ratio (median)",
          "engine CPU µs/IO", "raw CPU µs/IO (fio's)", "WA", "goal"]
rows, notes = [], []
for mode, qd in dict.fromkeys((r["mode"], r["qd"]) for r in recs):
    side = {k: sorted((r for r in recs if (r["mode"], r["qd"], r["kind"]) == (mode, qd, k)),
                      key=lambda r: r["run"]) for k in ("engine", "raw")}
    e, w = side["engine"], side["raw"]
    pairs = {r["run"]: r["iops"] for r in w}
    ratios = [r["iops"] / pairs[r["run"]] for r in e if pairs.get(r["run"])]
    ratio = statistics.median(ratios) if ratios else None
    median = lambda rs, key: statistics.median(x[key] for x in rs) if rs and all(x[key] is not None for x in rs) else None
    wa = median(e, "wa")
    min_ratio, max_wa = goals[mode]
    verdict = []
    if ratio is not None:
        verdict.append(f"≥{min_ratio}x {'PASS' if ratio >= min_ratio else 'MISS'}")
    if max_wa is not None and wa is not None:
        verdict.append(f"WA≤{max_wa} {'PASS' if wa <= max_wa else 'MISS'}")
    rows.append([f"{mode} qd{qd}", runs([r["iops"] for r in e]), runs([r["iops"] for r in w]),
                 fmt(ratio, ".2f") + (f" ({', '.join(f'{x:.2f}' for x in ratios)})" if len(ratios) > 1 else ""),
                 fmt(median(e, "cpu_us_per_io"), ".1f"),
                 fmt(median(w, "cpu_us_per_io"), ".1f") + f" ({fmt(median(w, 'fio_thread_cpu_us_per_io'), '.1f')})",
                 fmt(wa, ".3f"), "; ".join(verdict)])
    if any(r["short"] for r in e + w):
        notes.append(f"{mode} qd{qd}: a run ran out of fresh blocks before its time; raise BENCH_SIZE")

widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]
line = lambda row: "| " + " | ".join(str(c).ljust(widths[i]) for i, c in enumerate(row)) + " |"
print()
print(line(header))
print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
for row in rows:
    print(line(row))
print()
print("IOPS: each run in order (engine and raw interleaved); spread = (max - min) / median.")
print("ratio: median over runs of engine IOPS / raw IOPS of the raw run next to it (each run's ratio in brackets).")
print("CPU µs/IO: user+sys time of the process (all threads) per I/O, median; raw: fio's process less its start-up")
print("cost, with fio's own usr/sys figure (its job thread only) in brackets. WA: pool device bytes written per client byte")
print("(raw: 1.0 by definition). Goals: overwrite, read ≥0.9x raw; first write ≥0.7x; WA ≤1.05 overwrite, ≤1.2 first write.")
for note in notes:
    print("note:", note)
EOF
echo "bench: results in $results"

# ---- memory check
if [[ ${BENCH_RSS:-0} == 1 ]]; then
  echo "bench: rss mode (1 TiB volume, 10 GiB of random 4 KiB writes at QD32, then 100k reads)"
  # shellcheck disable=SC2086  # BENCH_RSS_ARGS is a list of arguments
  if "$bench" --pool "$work/rss-pool.img" --mode rss ${BENCH_RSS_ARGS:-} >"$work/rss.json" 2>"$work/rss.err"; then
    python3 - "$work/rss.json" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
mib = lambda b: b / (1 << 20)
w, r = j["write"], j["read"]
print(f"  volume {mib(j['volume_size']) / (1 << 20):.2f} TiB, map cache budget {mib(j['map_cache_bytes']):.0f} MiB")
print(f"  writes: {w['ios']:,} in {w['seconds']:.1f} s = {w['iops']:,.0f} IOPS, WA {w['wa']:.3f}")
print(f"  reads:  {r['ios']:,} in {r['seconds']:.1f} s = {r['iops']:,.0f} IOPS, "
      f"device reads {r['device_reads']:,} ({r['device_reads'] / max(r['ios'], 1):.2f} per read)")
print(f"  peak RSS {j['peak_rss_kib'] / 1024:.0f} MiB")
print(f"  map pages cached {r['cached_map_pages']:,} of a limit of {r['map_cache_limit_pages']:,}")
print(f"  whole map: {j['map_pages_written']:,} pages written of {j['map_pages_volume']:,}; "
      f"{mib(j['map_full_memory_bytes']):.0f} MiB in memory if all cached ({mib(j['map_full_disk_bytes']):.0f} MiB on disk)")
EOF
  else
    echo "  rss mode FAILED:" >&2
    sed 's/^/    /' "$work/rss.err" >&2
    failed=1
  fi
  echo "bench: deleting the rss pool"
fi
exit $failed
