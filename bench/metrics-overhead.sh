#!/usr/bin/env bash
# Metrics overhead: 4K random I/O at QD32 over NBD (fio's nbd engine) against
# `edgestor serve` with the Prometheus listener on and scraped every second,
# against the same binary without the listener, and against a baseline binary
# built from before the metrics code (no per-request counters at all). The
# goal: metrics-on >= 0.97x metrics-off in every case.
#
#   bench/metrics-overhead.sh                      2 cases, 3 rounds x 10 s per side (about 4 minutes)
#   BENCH_SECONDS=2 BENCH_RUNS=1 bench/metrics-overhead.sh   a smoke run (about 1 minute)
#   BENCH_BASELINE_EDGESTOR= bench/metrics-overhead.sh      without the baseline side
#
# Sides, each its own daemon on its own pool (sparse, BENCH_POOL_SIZE) with one
# volume v0 (BENCH_SIZE), all started once and kept running across the rounds:
#   metrics-on   BENCH_EDGESTOR serve --forget-settings --metrics-listen 127.0.0.1:PORT;
#                during each timed run a scraper (python urllib) GETs /metrics every
#                1 s; every scrape must answer HTTP 200 with the volume's counters
#   metrics-off  BENCH_EDGESTOR serve --forget-settings (no listener; the per-request
#                counting still runs)
#   baseline     BENCH_BASELINE_EDGESTOR serve (a build without any counting)
#   raw          fio --ioengine=io_uring --direct=1 on a raw file in the same dir: the
#                limit of the disk, no server; for context only (BENCH_RAW_RUNS runs)
# Every volume (and the raw file) is filled with 1 MiB sequential writes first,
# through its own daemon (not timed). Cases: randread (4K, QD32) then randwrite
# (4K, QD32, overwriting the filled data), each BENCH_RUNS rounds; the sides'
# order rotates each round (on off baseline, off baseline on, baseline on off).
#
# Environment (defaults in brackets):
#   SECONDS / BENCH_SECONDS  seconds per timed fio run [10]
#   BENCH_RUNS               rounds per case [3]
#   BENCH_RAW_RUNS           runs of the raw reference per case, after the rounds [1]
#   BENCH_QD                 queue depth [32]
#   BENCH_SIZE               volume size = raw file size [2G]
#   BENCH_POOL_SIZE          each pool file (sparse) [16G]
#   BENCH_DIR                work directory [var/bench-metrics/<date-time> in the checkout]
#   BENCH_EDGESTOR           the current binary [build/src/cli/edgestor; not built here]
#   BENCH_BASELINE_EDGESTOR  the binary without metrics [/tmp/base/build/src/cli/edgestor
#                            if it exists; set it empty to leave the baseline out]
#
# Prints per case and side the median IOPS with the spread (min-max), server CPU
# µs per I/O and server RSS; the ratios on/off, off/baseline, on/baseline (the
# median of the per-round paired ratios, each round's ratio, and the ratio of
# the medians); the scrapes; and a PASS/MISS line per case for
# "metrics-on >= 0.97x metrics-off" (median of the paired ratios). The tables
# also go to report.md, every run to results.csv and results.jsonl in the work
# dir. Exits non-zero only if a run fails (fio error or hang, a daemon dying or
# exiting non-zero on SIGTERM, a scrape failing, a tool missing), never on a MISS.
run_seconds=${BENCH_SECONDS:-$SECONDS}  # first line: bash's SECONDS ticks from here on
set -euo pipefail
((run_seconds > 0)) || run_seconds=10

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
runs=${BENCH_RUNS:-3}
raw_runs=${BENCH_RAW_RUNS:-1}
qd=${BENCH_QD:-32}
size=${BENCH_SIZE:-2G}
pool_size=${BENCH_POOL_SIZE:-16G}
edgestor=${BENCH_EDGESTOR:-$root/build/src/cli/edgestor}
default_baseline=/tmp/base/build/src/cli/edgestor
if [[ -n ${BENCH_BASELINE_EDGESTOR+set} ]]; then
  baseline=$BENCH_BASELINE_EDGESTOR
elif [[ -x $default_baseline ]]; then
  baseline=$default_baseline
else
  baseline=
fi
cases="randread randwrite"
# A run that takes this much longer than asked is a hang.
fio_timeout=$((run_seconds * 4 + 60))

me="metrics-overhead.sh"
for tool in fio python3 nbdinfo timeout; do
  command -v $tool >/dev/null || {
    echo "$me: $tool is required (apt-get install fio python3 libnbd-bin)" >&2
    exit 2
  }
done
fio --enghelp 2>/dev/null | grep -qx $'\tnbd' || { echo "$me: this fio has no nbd engine" >&2; exit 2; }
# Not built here (the machine is small and shared): scripts/build.sh release, or BENCH_EDGESTOR=path.
[[ -x $edgestor ]] || { echo "$me: no edgestor binary at $edgestor (scripts/build.sh release, or BENCH_EDGESTOR=path)" >&2; exit 2; }
help=$("$edgestor" serve --help 2>&1) || true
[[ $help == *--metrics-listen* && $help == *--forget-settings* ]] || {
  echo "$me: $edgestor serve has no --metrics-listen / --forget-settings (a build from before the metrics?)" >&2
  exit 2
}
sides="metrics-on metrics-off"
if [[ -n $baseline ]]; then
  [[ -x $baseline ]] || { echo "$me: no baseline edgestor binary at $baseline (BENCH_BASELINE_EDGESTOR= leaves it out)" >&2; exit 2; }
  sides="$sides baseline"
  baseline_has_metrics=0
  [[ $("$baseline" serve --help 2>&1 || true) == *--metrics-listen* ]] && baseline_has_metrics=1
fi
read -ra side_list <<<"$sides"

# ---- work dir: on the file system of the checkout (or BENCH_DIR), the same for all sides
work=${BENCH_DIR:-$root/var/bench-metrics/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$work"
work=$(cd "$work" && pwd)  # absolute socket paths in the URIs
results=$work/results.jsonl
: >"$results"
clk_tck=$(getconf CLK_TCK)
failed=0

declare -A server_pid=()  # name -> pid of every daemon we started and did not stop yet
declare -A binary=([metrics-on]=$edgestor [metrics-off]=$edgestor [baseline]=$baseline)

# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"

# Stops every daemon we started and deletes the big files; logs, fio JSON,
# results.* and report.md stay.
# shellcheck disable=SC2317  # called by the trap
cleanup() {
  local name
  for name in "${!server_pid[@]}"; do stop_server "$name"; done
  rm -f "$work"/*.img "$work"/*.sock "$work"/*.stop "$work"/*.ready
  sync -f "$work" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The scraper of the metrics-on side: one GET right away (then it writes
# READY), one every second from then on until STOP exists, one more at the
# end; writes a JSON summary to OUT. The first and last GETs (outside the
# timed window) read the volume's request counters, to check that they
# counted what fio did.
cat >"$work/scrape.py" <<'EOF'
import json, os, re, sys, time, urllib.error, urllib.request
url, out, ready, stop = sys.argv[1:5]
counter = re.compile(r'^edgestor_volume_requests_total\{volume="v0",op="(read|write)"\} (\S+)$', re.M)

def get():
    t = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            status, body = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, body = e.code, ""
    except Exception as e:  # refused, reset, timeout
        status, body = f"{type(e).__name__}: {e}", ""
    counts = {m.group(1): int(float(m.group(2))) for m in counter.finditer(body)}
    if status == 200 and len(counts) != 2:
        status = "200 without edgestor_volume_requests_total for v0"
    return status, counts, time.monotonic() - t, len(body)

bad = []
status, first, _, _ = get()
if status != 200:
    bad.append(["first", status])
open(ready, "w").close()
scrapes, slowest, size, tick = 0, 0.0, 0, time.monotonic() + 1.0
while not os.path.exists(stop):
    if time.monotonic() < tick:
        time.sleep(0.02)
        continue
    tick += 1.0
    status, _, took, size = get()
    scrapes += 1
    slowest = max(slowest, took)
    if status != 200:
        bad.append([scrapes, status])
status, last, _, _ = get()
if status != 200:
    bad.append(["last", status])
json.dump({"scrapes": scrapes, "bad": bad, "slowest_ms": slowest * 1000, "bytes": size,
           "first": first, "last": last}, open(out, "w"))
EOF

# Waits until the daemon of side $1 serves v0 (an NBD handshake; 10 s) and,
# for metrics-on, answers /metrics.
wait_ready() {
  local name=$1 i
  for ((i = 0; i < 100; i++)); do
    if ! kill -0 "${server_pid[$name]}" 2>/dev/null; then
      echo "  $name died at start; its log:" >&2
      sed 's/^/    /' "$work/$name.log" >&2
      unset "server_pid[$name]"
      exit 1
    fi
    if nbdinfo --size "$(uri "$name" v0)" >/dev/null 2>&1; then
      [[ $name != metrics-on ]] && return 0
      python3 -c 'import sys, urllib.request; sys.exit(urllib.request.urlopen(sys.argv[1], timeout=2).status != 200)' \
        "$metrics_url" 2>/dev/null && return 0
    fi
    sleep 0.1
  done
  echo "  $name: not ready after 10 s" >&2
  exit 1
}

# Creates the pool and volume of side $1 and starts its daemon (socket $work/$1.sock).
start_side() {
  local name=$1 bin=${binary[$1]} pool=$work/$1.img args=()
  "$bin" pool create "$pool" --size "$pool_size" >/dev/null
  "$bin" --pool "$pool" vol create v0 --size "$size" >/dev/null
  case $name in
    metrics-on) args=(--forget-settings --metrics-listen "127.0.0.1:$metrics_port") ;;
    metrics-off) args=(--forget-settings) ;;
  esac
  "$bin" serve --pool "$pool" --nbd-socket "$work/$name.sock" "${args[@]}" >>"$work/$name.log" 2>&1 &
  server_pid[$name]=$!
  wait_ready "$name"
}

# 1 MiB sequential writes over the whole volume (or the raw file), not timed.
prefill() {
  local name=$1 out=$work/$1-fill.json target=()
  if [[ $name == raw ]]; then
    target=(--ioengine=io_uring --direct=1 --filename="$work/raw.img")
  else
    target=(--ioengine=nbd --uri="$(uri "$name" v0)")
  fi
  if ! timeout -k 10 900 fio --name=fill "${target[@]}" --rw=write --bs=1M --iodepth=8 --size="$size" \
    --output-format=json --output="$out" >"$out.err" 2>&1; then
    echo "  prefill of $name FAILED:" >&2
    sed 's/^/    /' "$out.err" >&2
    exit 1
  fi
  [[ -s $out.err ]] || rm -f "$out.err"
  python3 - "$out" "$name" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]["write"]
print(f"  prefill {sys.argv[2]:11}: {j['io_bytes'] / 2**30:.1f} GiB at {j['bw_bytes'] / 2**20:.0f} MiB/s")
EOF
}

# One timed run: run_case SIDE CASE ROUND POSITION (position in the round's order, 1-based)
run_case() {
  local side=$1 mode=$2 round=$3 pos=$4 pid=0 before=0 after=0 rss=0 rc=0 scraper=0 i
  local out=$work/$side-$mode-$round.json target=() scrape_out=""
  if [[ $side == raw ]]; then
    target=(--ioengine=io_uring --direct=1 --filename="$work/raw.img")
  else
    pid=${server_pid[$side]}
    target=(--ioengine=nbd --uri="$(uri "$side" v0)")
  fi
  if [[ $side == metrics-on ]]; then
    scrape_out=$work/$side-$mode-$round.scrape.json
    rm -f "$work/scrape.ready" "$work/scrape.stop"
    python3 "$work/scrape.py" "$metrics_url" "$scrape_out" "$work/scrape.ready" "$work/scrape.stop" &
    scraper=$!
    for ((i = 0; i < 200; i++)); do
      [[ -e $work/scrape.ready ]] && break
      kill -0 "$scraper" 2>/dev/null || break
      sleep 0.05
    done
    [[ -e $work/scrape.ready ]] || { echo "  $side $mode round $round: the scraper did not start" >&2; exit 1; }
  fi
  ((pid)) && before=$(cpu_ticks "$pid")
  timeout -k 10 "$fio_timeout" fio --name="$side" "${target[@]}" --rw="$mode" --bs=4k --iodepth="$qd" \
    --size="$size" --runtime="$run_seconds" --time_based --randrepeat=0 \
    --output-format=json --output="$out" >"$out.err" 2>&1 || rc=$?
  if ((pid)); then
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "  $side $mode round $round: the daemon (pid $pid) DIED; fio exit $rc; fio said:" >&2
      sed 's/^/    /' "$out.err" >&2
      echo "  its log $work/$side.log ends:" >&2
      tail -n 20 "$work/$side.log" | sed 's/^/    /' >&2
      unset "server_pid[$side]"
      failed=1
      exit 1
    fi
    after=$(cpu_ticks "$pid")
    rss=$(rss_kib "$pid")
  fi
  if ((scraper)); then
    touch "$work/scrape.stop"
    wait "$scraper" || { echo "  $side $mode round $round: the scraper failed" >&2; failed=1; }
  fi
  if ((rc != 0)); then
    ((rc == 124 || rc == 137)) && echo "  $side $mode round $round: fio HUNG (no end after ${fio_timeout}s)" >&2
    echo "  $side $mode round $round FAILED (fio exit $rc):" >&2
    sed 's/^/    /' "$out.err" >&2
    failed=1
    return 0
  fi
  [[ -s $out.err ]] || rm -f "$out.err"
  python3 - "$side" "$mode" "$round" "$pos" "$out" "$((after - before))" "$clk_tck" "$rss" "$scrape_out" \
    >>"$results" <<'EOF' || failed=1
import json, sys
side, mode, rnd, pos, path, ticks, clk_tck, rss, scrape_path = sys.argv[1:10]
job = json.load(open(path))["jobs"][0]
op = "read" if mode == "randread" else "write"
d = job[op]
ios = d["total_ios"]
rec = {"side": side, "case": mode, "round": int(rnd), "pos": int(pos), "ios": ios, "iops": d["iops"],
       "p99_us": d["clat_ns"].get("percentile", {}).get("99.000000", 0) / 1000.0,
       "cpu_us_per_io": int(ticks) * 1e6 / int(clk_tck) / max(ios, 1) if side != "raw" else None,
       "rss_kib": int(rss) if side != "raw" else None, "error": job["error"]}
msg = ""
ok = job["error"] == 0
if scrape_path:
    s = json.load(open(scrape_path))
    counted = s["last"].get(op, 0) - s["first"].get(op, 0)
    rec.update(scrapes=s["scrapes"], scrape_failures=len(s["bad"]), scrape_bad=s["bad"],
               scrape_slowest_ms=s["slowest_ms"], scrape_bytes=s["bytes"], counted=counted)
    msg = (f", {s['scrapes']} scrapes ({len(s['bad'])} failed, slowest {s['slowest_ms']:.1f} ms, "
           f"{s['bytes']} bytes), counter +{counted} ({'=' if counted == ios else '!='} fio's {ios})")
    if s["bad"]:
        ok = False
        print(f"  {side} {mode} round {rnd}: SCRAPES FAILED: {s['bad']}", file=sys.stderr)
print(json.dumps(rec))
cpu = f", server {rec['cpu_us_per_io']:.1f} µs CPU/IO, RSS {rec['rss_kib'] / 1024:.1f} MiB" if side != "raw" else ""
print(f"  round {rnd} {side:11} {mode:9}: {rec['iops']:8,.0f} IOPS, p99 {rec['p99_us']:,.0f} µs{cpu}{msg}",
      file=sys.stderr)
sys.exit(0 if ok else 1)
EOF
}

metrics_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
metrics_url=http://127.0.0.1:$metrics_port/metrics

echo "bench: metrics overhead, 4K random read and write at QD$qd over NBD; $runs rounds x ${run_seconds}s per side" \
  "($sides; order rotated each round), raw reference $raw_runs x ${run_seconds}s; volume $size" \
  "(each pool $pool_size, sparse); daemons started once and kept running"
echo "bench: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), kernel $(uname -r), $(fio --version)"
echo "bench: current  $edgestor ($(stat -c %y "$edgestor" | cut -d. -f1))"
if [[ -n $baseline ]]; then
  echo "bench: baseline $baseline ($(stat -c %y "$baseline" | cut -d. -f1))"
  ((baseline_has_metrics)) && echo "bench: WARNING: the baseline binary knows --metrics-listen: it is not a build without metrics"
else
  echo "bench: baseline: none (BENCH_BASELINE_EDGESTOR unset and $default_baseline missing, or set empty)"
fi
echo "bench: metrics-on scraped at $metrics_url every 1 s during each timed run"
echo "bench: work dir $work on:"
df -T "$work" | sed 's/^/  /'

for s in "${side_list[@]}"; do start_side "$s"; done
sleep 1
for s in "${side_list[@]}"; do echo "  $s: pid ${server_pid[$s]}, idle RSS $(rss_kib "${server_pid[$s]}") KiB"; done
echo "bench: prefilling ($size each, 1 MiB sequential writes, QD8)"
truncate -s "$size" "$work/raw.img"
for s in "${side_list[@]}" $(((raw_runs > 0)) && echo raw); do prefill "$s"; done  # no raw file without raw runs (BENCH_RAW_RUNS=0: a tmpfs BENCH_DIR, where O_DIRECT is refused)
sync -f "$work"

for mode in $cases; do
  echo "bench: $mode 4K QD$qd"
  for ((round = 1; round <= runs; round++)); do
    n=${#side_list[@]}
    for ((k = 0; k < n; k++)); do
      run_case "${side_list[(round - 1 + k) % n]}" "$mode" "$round" $((k + 1))
    done
  done
  for ((round = 1; round <= raw_runs; round++)); do run_case raw "$mode" "$round" 1; done
done

for s in "${side_list[@]}"; do
  echo "{\"side\": \"$s\", \"end_rss_kib\": $(rss_kib "${server_pid[$s]}"), \"hwm_kib\": $(hwm_kib "${server_pid[$s]}")}" >>"$results"
  stop_server "$s"
done

# ---- the tables (stdout and report.md) and results.csv
python3 - "$results" "$work" "$sides" "$cases" "$run_seconds" "$runs" "$qd" <<'EOF' | tee "$work/report.md"
import csv, json, statistics, sys
path, work, sides, cases, seconds, runs, qd = sys.argv[1:8]
sides, cases = sides.split(), cases.split()
lines = [json.loads(l) for l in open(path)]
recs = [r for r in lines if "iops" in r]
ends = {r["side"]: r for r in lines if "end_rss_kib" in r}

with open(f"{work}/results.csv", "w", newline="") as f:
    cols = ["case", "round", "pos", "side", "iops", "ios", "p99_us", "cpu_us_per_io", "rss_kib",
            "scrapes", "scrape_failures", "counted"]
    w = csv.writer(f)
    w.writerow(cols)
    for r in recs:
        w.writerow(["" if r.get(c) is None else round(r[c], 3) if isinstance(r[c], float) else r[c] for c in cols])

med = lambda xs: statistics.median(xs) if xs else None
fmt = lambda v, spec: "-" if v is None else format(v, spec)
verdict = lambda ok: "PASS" if ok else "MISS"

def table(header, rows):
    widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]
    line = lambda row: "| " + " | ".join(str(c).ljust(widths[i]) for i, c in enumerate(row)) + " |"
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))

print(f"\n## Metrics overhead: 4K random I/O at QD{qd} over NBD, {runs} round{'s' if runs != '1' else ''} x {seconds} s\n")
side_rows, ratio_rows, verdicts = [], [], []
for case in cases:
    by = {s: sorted((r for r in recs if r["case"] == case and r["side"] == s), key=lambda r: r["round"])
          for s in sides + ["raw"]}
    for s in sides + ["raw"]:
        rs = by[s]
        if not rs:
            continue
        iops = [r["iops"] for r in rs]
        side_rows.append([case, s, fmt(med(iops), ",.0f"),
                          f"{min(iops):,.0f}-{max(iops):,.0f} ({100 * (max(iops) - min(iops)) / med(iops):.1f}%)",
                          ", ".join(f"{x:,.0f}" for x in iops),
                          fmt(med([r["cpu_us_per_io"] for r in rs if r["cpu_us_per_io"] is not None]), ".1f"),
                          fmt(med([r["rss_kib"] / 1024 for r in rs if r["rss_kib"] is not None]), ".1f")])
    for a, b in (("metrics-on", "metrics-off"), ("metrics-off", "baseline"), ("metrics-on", "baseline")):
        if not by.get(a) or not by.get(b):
            continue
        bb = {r["round"]: r["iops"] for r in by[b]}
        paired = [r["iops"] / bb[r["round"]] for r in by[a] if bb.get(r["round"])]
        of_medians = med([r["iops"] for r in by[a]]) / med([r["iops"] for r in by[b]])
        ca = med([r["cpu_us_per_io"] for r in by[a]])
        cb = med([r["cpu_us_per_io"] for r in by[b]])
        ratio_rows.append([case, f"{a.replace('metrics-', '')}/{b.replace('metrics-', '')}", fmt(med(paired), ".3f"),
                           ", ".join(f"{x:.3f}" for x in paired), f"{of_medians:.3f}",
                           f"{ca / cb:.3f}" if ca and cb else "-"])
        if (a, b) == ("metrics-on", "metrics-off") and paired:
            verdicts.append(f"{verdict(med(paired) >= 0.97)}: {case} 4K QD{qd}: metrics-on = {med(paired):.3f}x "
                            f"metrics-off (median of {len(paired)} paired rounds; ratio of medians {of_medians:.3f}; "
                            f"goal >= 0.97)")

table(["case", "side", "IOPS median", "spread min-max", "each round", "server CPU µs/IO", "RSS MiB"], side_rows)
print()
table(["case", "ratio", "IOPS, median of rounds", "each round", "of the medians", "CPU µs/IO (medians)"], ratio_rows)
print()
for v in verdicts:
    print(v)

on = [r for r in recs if r["side"] == "metrics-on"]
if on:
    scrapes = sum(r.get("scrapes", 0) for r in on)
    bad = sum(r.get("scrape_failures", 0) for r in on)
    mism = [f"{r['case']} round {r['round']}: {r['counted']} counted, fio {r['ios']}" for r in on
            if r.get("counted") != r["ios"]]
    print(f"\nScrapes of metrics-on: {scrapes} during {len(on)} timed runs (1 s apart), {bad} not HTTP 200; "
          f"slowest {max(r.get('scrape_slowest_ms', 0) for r in on):.1f} ms, {on[-1].get('scrape_bytes', 0)} bytes each. "
          + ("edgestor_volume_requests_total grew by exactly fio's I/O count in every run."
             if not mism else "Counter differs from fio's count: " + "; ".join(mism)))
if ends:
    print("Daemons at the end: " + ", ".join(f"{s} RSS {e['end_rss_kib'] / 1024:.1f} MiB (peak {e['hwm_kib'] / 1024:.1f})"
                                             for s, e in ends.items()))
orders = {}
for r in recs:
    if r["side"] != "raw" and r["case"] == cases[0]:
        orders.setdefault(r["round"], []).append((r["pos"], r["side"]))
print("Order of the sides: " + "; ".join(f"round {k}: " + " ".join(s for _, s in sorted(v))
                                         for k, v in sorted(orders.items())) + " (the same for every case)")
print("\nIOPS: fio's, median over rounds; spread: min-max of the rounds (and (max-min)/median). Ratios: median over")
print("rounds of a/b, a and b run in the same round (each round's ratio listed), and the ratio of the medians.")
print("Server CPU: utime+stime of the daemon (/proc/PID/stat, all threads) over the fio run, per I/O. RSS: VmRSS")
print("after the run. fio, the scraper (metrics-on) and the daemons share the machine's CPUs. raw: fio io_uring")
print("O_DIRECT on a filled raw file, no server, for context.")
EOF

complaints=$(cat "$work"/metrics-*.log "$work"/baseline.log 2>/dev/null | grep -iE 'error|warn' |
  grep -vE 'received SIGTERM|PR_SET_IO_FLUSHER' || true)
if [[ -n $complaints ]]; then
  echo "bench: the daemons logged warnings or errors ($work/*.log):"
  head -20 <<<"$complaints" | sed 's/^/  /'
fi
echo "bench: results in $work/results.csv, $results, report.md"
exit $failed
