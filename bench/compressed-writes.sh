#!/usr/bin/env bash
# Compressed writes: 4 KiB random overwrites through the engine (in process,
# bench/engine_bench) on a volume with compression against the same volume
# without, in the same run, interleaved. The data compresses about 2:1, so
# every write into a compressed cluster is a read-merge-compress rewrite.
#
#   bench/compressed-writes.sh                 lz4 and zstd vs off, QD 1 and 32, 2 runs x 8 s (about 3 minutes)
#   BENCH_CODECS=lz4 BENCH_QDS=32 bench/compressed-writes.sh
#
# Environment (defaults in brackets):
#   BENCH_SECONDS            seconds per timed run [8]
#   BENCH_RUNS               runs per side, interleaved [2]
#   BENCH_SIZE               volume size [2G]
#   BENCH_CODECS             compressed sides [lz4 zstd]
#   BENCH_QDS                queue depths [1 32]
#   BENCH_EDGESTOR_BUILD     build dir holding bench/engine_bench [build]
#   BENCH_SETTLE             1: one more run per compressed side with a 2 s
#                            idle time, then wait for the background to
#                            compress the hot clusters again (about 1 minute
#                            each); prints the time, CPU and space [1]
#
# Prints per side and queue depth the IOPS, CPU per I/O, write
# amplification and the volume's space at the end of every run, and the
# median ratio compressed / off (goal at QD32: >= 0.5x). Exits non-zero
# only if a run fails.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
run_seconds=${BENCH_SECONDS:-8}
runs=${BENCH_RUNS:-2}
size=${BENCH_SIZE:-2G}
codecs=${BENCH_CODECS:-"lz4 zstd"}
qds=${BENCH_QDS:-"1 32"}
build=${BENCH_EDGESTOR_BUILD:-$root/build}
bench=$build/bench/engine_bench
[[ -x $bench ]] || "$root/scripts/build.sh" release --target engine_bench
work=$root/var/bench-compressed/$(date +%Y%m%d-%H%M%S)
mkdir -p "$work"
trap 'rm -f "$work"/*.img' EXIT
results=$work/results.jsonl

echo "bench: compressed overwrites, $runs runs x ${run_seconds}s, volume $size, sides off $codecs, QD $qds"
for qd in $qds; do
  for ((run = 1; run <= runs; run++)); do
    for side in off $codecs; do
      out=$work/$side-qd$qd-$run.json
      "$bench" --pool "$work/pool.img" --pool-size 8G --volume-size "$size" --mode overwrite --qd "$qd" \
        --seconds "$run_seconds" --compression "$side" --seed "$run" >"$out" 2>"$out.err" ||
        { echo "  $side qd$qd run $run FAILED:" >&2; sed 's/^/    /' "$out.err" >&2; exit 1; }
      rm -f "$work/pool.img"
      sync -f "$work"
      python3 - "$side" "$qd" "$run" "$out" >>"$results" <<'PY'
import json, sys
side, qd, run, path = sys.argv[1:5]
out = json.load(open(path))
rec = {"side": side, "qd": int(qd), "run": int(run), "iops": out["iops"],
       "cpu_us_per_io": out["cpu_us_per_io"], "wa": out["wa"],
       "volume_mib": out.get("volume_allocated_bytes", 0) / 2**20, "hot_plain": out.get("hot_plain_clusters", 0)}
print(json.dumps(rec))
print(f"  {side:5} qd{qd:<3} run {run}: {rec['iops']:8.0f} IOPS, {rec['cpu_us_per_io']:6.1f} µs CPU/IO, "
      f"write amplification {rec['wa']:.2f}x, volume holds {rec['volume_mib']:.0f} MiB "
      f"({rec['hot_plain']} clusters held plain)", file=sys.stderr)
PY
    done
  done
done

python3 - "$results" <<'PY'
import json, statistics, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
print("\ncompressed 4 KiB random overwrites (medians; ratio = median over runs of compressed / off in the same run):")
print(f"{'side':6} {'qd':>3} {'IOPS':>9} {'CPU µs/IO':>10} {'WA':>6} {'MiB held':>9} {'vs off':>8}")
for qd in sorted({r["qd"] for r in recs}):
    base = {r["run"]: r["iops"] for r in recs if r["qd"] == qd and r["side"] == "off"}
    for side in dict.fromkeys(r["side"] for r in recs):
        rs = [r for r in recs if r["qd"] == qd and r["side"] == side]
        ratios = [r["iops"] / base[r["run"]] for r in rs if base.get(r["run"])]
        ratio = statistics.median(ratios) if ratios else float("nan")
        goal = "" if side == "off" or qd < 32 else ("  PASS (>= 0.5x)" if ratio >= 0.5 else "  MISS (< 0.5x)")
        print(f"{side:6} {qd:>3} {statistics.median(r['iops'] for r in rs):9.0f} "
              f"{statistics.median(r['cpu_us_per_io'] for r in rs):10.1f} {statistics.median(r['wa'] for r in rs):6.2f} "
              f"{statistics.median(r.get('volume_mib', 0) for r in rs):9.0f} {ratio:8.2f}{goal}")
print("MiB held: the volume's space at the end of the run (partial writes hold hot clusters plain until they\n"
      "have been left alone for recompress_idle_ms, 30 s by default; the runs end before that)")
PY

if [[ ${BENCH_SETTLE:-1} == 1 ]]; then
  echo
  echo "space: one run per side with recompress idle 2 s, then wait for the background recompression"
  for side in $codecs; do
    out=$work/$side-settle.json
    "$bench" --pool "$work/pool.img" --pool-size 8G --volume-size "$size" --mode overwrite --qd 32 \
      --seconds "$run_seconds" --compression "$side" --seed 9 --recompress-idle-ms 2000 --settle-seconds 600 >"$out" 2>"$out.err" ||
      { echo "  $side settle run FAILED:" >&2; sed 's/^/    /' "$out.err" >&2; exit 1; }
    rm -f "$work/pool.img"
    python3 - "$side" "$out" <<'PY'
import json, sys
side, path = sys.argv[1:3]
out = json.load(open(path))
st = out["settle"]
print(f"  {side:5}: {out['iops']:8.0f} IOPS while the background also ran; after the load the volume held "
      f"{out['volume_allocated_bytes'] / 2**20:.0f} MiB ({out['hot_plain_clusters']} clusters plain); "
      f"{st['recompressed_clusters']} clusters compressed again, {st['seconds']:.0f} s and "
      f"{st['cpu_us'] / max(st['recompressed_clusters'], 1):.0f} µs CPU each later: "
      f"{st['volume_allocated_bytes'] / 2**20:.0f} MiB ({st['hot_plain_clusters_left']} still plain)")
PY
  done
fi
