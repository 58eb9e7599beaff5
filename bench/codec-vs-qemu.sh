#!/usr/bin/env bash
# Encryption at rest and compression: `edgestor serve` against qemu-nbd, the
# same client (fio's nbd engine, nbdcopy) and the same jobs in the same run.
#
#   bench/codec-vs-qemu.sh                   both parts, 2 runs x 10 s per side (about 15 minutes)
#   BENCH_SECONDS=3 bench/codec-vs-qemu.sh   shorter runs (SECONDS=3 works too)
#   BENCH_PARTS=comp bench/codec-vs-qemu.sh  only the compression part
#
# Part "enc" (encryption): 4K random read and overwrite at QD1 and QD32, 128K
# sequential read and overwrite at QD8, on four servers of pre-filled images:
#   ours plain  edgestor serve, pool created without a key
#   ours enc    edgestor --keyfile KEY serve, volume created with --encrypt (AES-256-XTS)
#   qemu raw    qemu-nbd on a raw file (the plain peer, for reference)
#   qemu luks   qemu-nbd on a qcow2 with LUKS encryption (what users have today)
# Part "comp" (compression): a real data set (a tar of /usr/include and
# /usr/lib/python3*) written once per codec and run through NBD with nbdcopy
# into our compressed volumes (lz4, zstd, zstd:9, and off for reference), beside
# `qemu-img convert -c -O qcow2` (zlib, zstd) and qemu-nbd with its compress
# filter (the same nbdcopy client); then 4K random reads at QD1 and QD32 over
# the data, ours against qemu-nbd -r on the compressed qcow2s.
#
# Environment (defaults in brackets):
#   SECONDS / BENCH_SECONDS  seconds per timed fio run [10]
#   BENCH_RUNS               runs per side, interleaved (A B C D, A B C D) [2]
#   BENCH_PARTS              "enc comp" or one of them [both]
#   BENCH_SIZE               enc part: volume = raw file = qcow2 virtual size [2G]
#   BENCH_POOL_SIZE          each of our pool files (sparse) [8G]
#   BENCH_SEQ_QD             queue depth of the 128K sequential cases [8]
#   BENCH_ENC_CASES          [read:1 read:32 overwrite:1 overwrite:32 seqread:8 seqwrite:8]
#   BENCH_DATA_MAX           cap of the data set (head -c) [512M]
#   BENCH_CODECS             our codecs written [off lz4 zstd zstd:9]
#   BENCH_QEMU_CODECS        qcow2 compression types [zlib zstd] (zstd dropped if unsupported)
#   BENCH_READ_CODECS        our volumes read at random [off lz4 zstd]
#   BENCH_COMP_CASES         [read:1 read:32]
#   BENCH_DIR                work directory [var/bench-codec/<date-time> in the checkout]
#   BENCH_EDGESTOR           the edgestor binary [build/src/cli/edgestor; not built here]
#   BENCH_QEMU_AIO           qemu-nbd --aio for every qemu-nbd [io_uring, else native, else threads]
#
# Prints tables with the median over runs, the spread, the ratios with their
# goals (PASS/MISS, never a failure), server CPU µs per I/O and server RSS.
# Exits non-zero only if a run itself fails (a tool missing, a server error,
# crash or hang).
run_seconds=${BENCH_SECONDS:-$SECONDS}  # first line: bash's SECONDS ticks from here on
set -euo pipefail
((run_seconds > 0)) || run_seconds=10

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
runs=${BENCH_RUNS:-2}
parts=${BENCH_PARTS:-"enc comp"}
size=${BENCH_SIZE:-2G}
pool_size=${BENCH_POOL_SIZE:-8G}
seq_qd=${BENCH_SEQ_QD:-8}
enc_cases=${BENCH_ENC_CASES:-"read:1 read:32 overwrite:1 overwrite:32 seqread:$seq_qd seqwrite:$seq_qd"}
data_max=${BENCH_DATA_MAX:-512M}
codecs=${BENCH_CODECS:-"off lz4 zstd zstd:9"}
qemu_codecs=${BENCH_QEMU_CODECS:-"zlib zstd"}
read_codecs=${BENCH_READ_CODECS:-"off lz4 zstd"}
comp_cases=${BENCH_COMP_CASES:-"read:1 read:32"}
edgestor=${BENCH_EDGESTOR:-$root/build/src/cli/edgestor}
# A run that takes this much longer than asked is a hang.
fio_timeout=$((run_seconds * 4 + 60))
copy_timeout=900

me="codec-vs-qemu.sh"
for tool in fio python3 qemu-nbd qemu-img nbdinfo nbdcopy numfmt tar timeout; do
  command -v $tool >/dev/null || {
    echo "$me: $tool is required (apt-get install fio python3 qemu-utils libnbd-bin coreutils tar)" >&2
    exit 2
  }
done
fio --enghelp 2>/dev/null | grep -qx $'\tnbd' || { echo "$me: this fio has no nbd engine" >&2; exit 2; }
# The binary is not built here (the machine is small and shared): build it with
# scripts/build.sh release, or point BENCH_EDGESTOR at one.
[[ -x $edgestor ]] || { echo "$me: no edgestor binary at $edgestor (scripts/build.sh release, or BENCH_EDGESTOR=path)" >&2; exit 2; }
# The flags this benchmark needs; a binary older than the codecs lacks them.
help=$("$edgestor" --help 2>&1; "$edgestor" vol create --help 2>&1) || true
[[ $help == *--keyfile* && $help == *--compress* && $help == *--encrypt* ]] || {
  echo "$me: $edgestor has no --keyfile / vol create --encrypt --compress (too old a build?)" >&2
  exit 2
}
size_bytes=$(numfmt --from=iec "$size")
data_max_bytes=$(numfmt --from=iec "$data_max")

# ---- work dir: on the file system of the checkout (or BENCH_DIR), the same for all servers
work=${BENCH_DIR:-$root/var/bench-codec/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$work"
work=$(cd "$work" && pwd)  # qemu-nbd wants an absolute socket path
results=$work/results.jsonl
: >"$results"
clk_tck=$(getconf CLK_TCK)
failed=0

declare -A server_pid=()  # name -> pid of every server we started and did not stop yet

# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"

# Stops every server we started and deletes the big files (images, the data
# set, the key); the logs, fio JSON and results.jsonl stay.
# shellcheck disable=SC2317  # called by the trap
cleanup() {
  local name
  for name in "${!server_pid[@]}"; do stop_server "$name"; done
  rm -f "$work"/*.img "$work"/*.qcow2 "$work"/*.sock "$work"/data.tar "$work"/pool.key "$work"/luks.secret
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
      unset "server_pid[$name]"
      exit 1
    fi
    nbdinfo --size "$(uri "$name" "$export")" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "  $name: export $export not ready after 10 s" >&2
  exit 1
}

# Our daemon on pool $2, as server $1 (NBD socket $work/$1.sock), waiting for
# export $3. Further arguments go before `serve` (global options: --keyfile).
start_ours() {
  local name=$1 pool=$2 export=$3
  shift 3
  "$edgestor" "$@" serve --pool "$pool" --nbd-socket "$work/$name.sock" >>"$work/$name.log" 2>&1 &
  server_pid[$name]=$!
  wait_ready "$name" "$export"
}

# qemu-nbd as server $1 with export $2; the rest says what to serve (-f raw
# FILE, --image-opts ..., -r). Every qemu-nbd gets the same cache and aio
# options: O_DIRECT like our daemon. -t: stays up between clients; -e 4:
# readiness probes and fio may overlap.
start_qemu() {
  local name=$1 export=$2
  shift 2
  qemu-nbd --cache=none --aio="$qemu_aio" -t -e 4 -k "$work/$name.sock" -x "$export" "$@" \
    >>"$work/$name.log" 2>&1 &
  server_pid[$name]=$!
  wait_ready "$name" "$export"
}

# Fails the whole run if server $1 is gone (prints what fio or nbdcopy said).
check_alive() {
  local name=$1 what=$2 errfile=$3 pid=${server_pid[$1]}
  kill -0 "$pid" 2>/dev/null && return 0
  echo "  $what: the server $name (pid $pid) DIED; the client said:" >&2
  sed 's/^/    /' "$errfile" >&2
  echo "  its log $work/$name.log ends:" >&2
  tail -n 20 "$work/$name.log" | sed 's/^/    /' >&2
  unset "server_pid[$name]"
  failed=1
  exit 1
}

# Runs fio against a server, measuring the server's CPU time and RSS.
# run_fio PART SIDE SERVER EXPORT MODE QD RUN REGION_BYTES
run_fio() {
  local part=$1 side=$2 name=$3 export=$4 mode=$5 qd=$6 run=$7 region=$8 pid=${server_pid[$3]} before after rc=0
  local out=$work/$part-$side-$mode-qd$qd-$run.json job=()
  case $mode in
    read) job=(--rw=randread --bs=4k) ;;
    overwrite) job=(--rw=randwrite --bs=4k) ;;  # over pre-filled data: every write replaces a block
    seqread) job=(--rw=read --bs=128k) ;;
    seqwrite) job=(--rw=write --bs=128k) ;;
  esac
  before=$(cpu_ticks "$pid")
  timeout -k 10 "$fio_timeout" fio --name="$side" --ioengine=nbd --uri="$(uri "$name" "$export")" \
    --iodepth="$qd" --size="$region" --runtime="$run_seconds" --time_based --randrepeat=0 "${job[@]}" \
    --output-format=json --output="$out" >"$out.err" 2>&1 || rc=$?
  check_alive "$name" "$part $side $mode qd$qd run $run (fio exit $rc)" "$out.err"
  after=$(cpu_ticks "$pid")
  if ((rc != 0)); then
    ((rc == 124 || rc == 137)) && echo "  $side $mode qd$qd run $run: fio HUNG (no end after ${fio_timeout}s)" >&2
    echo "  $side $mode qd$qd run $run FAILED (fio exit $rc):" >&2
    sed 's/^/    /' "$out.err" >&2
    failed=1
    return 0
  fi
  [[ -s $out.err ]] || rm -f "$out.err"
  python3 - "$part" "$side" "$mode" "$qd" "$run" "$out" "$((after - before))" "$clk_tck" \
    "$(rss_kib "$pid")" "$(hwm_kib "$pid")" >>"$results" <<'EOF'
import json, sys
part, side, mode, qd, run, path, ticks, clk_tck, rss, hwm = sys.argv[1:11]
job = json.load(open(path))["jobs"][0]
d = job["read" if mode in ("read", "seqread") else "write"]
ios = d["total_ios"]
pct = lambda lat: lat["percentile"]["99.000000"] / 1000.0 if lat.get("percentile") else None
rec = {"part": part, "side": side, "mode": mode, "qd": int(qd), "run": int(run), "ios": ios,
       "iops": d["iops"], "mib_s": d["bw_bytes"] / 2**20, "p99_us": pct(d["clat_ns"]),
       "cpu_us_per_io": int(ticks) * 1e6 / int(clk_tck) / max(ios, 1),
       "rss_kib": int(rss), "hwm_kib": int(hwm), "error": job["error"]}
print(json.dumps(rec))
value = f"{rec['mib_s']:.0f} MiB/s" if mode.startswith("seq") else f"{rec['iops']:.0f} IOPS"
print(f"  {side:10} {mode} qd{qd} run {run}: {value}, p99 {rec['p99_us']:.0f} µs, "
      f"server {rec['cpu_us_per_io']:.1f} µs CPU/IO, RSS {rec['rss_kib'] / 1024:.1f} MiB", file=sys.stderr)
EOF
}

# Sequential 1 MiB writes over the whole export, through the server that
# will serve it, so that every side has data everywhere it is read, and
# 4K writes replace data (overwrite, not first write).
prefill() {
  local name=$1 export=$2 out=$work/fill-$1.json
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
print(f"  prefill {sys.argv[2]:10}: {j['io_bytes'] / 2**30:.1f} GiB at {j['bw_bytes'] / 2**20:.0f} MiB/s")
EOF
}

# Runs a command (with a time limit), printing one line of JSON: wall seconds,
# the CPU seconds of the command and its children, their peak RSS.
measure() {
  python3 - "$copy_timeout" "$@" <<'EOF'
import json, resource, subprocess, sys, time
t0 = time.monotonic()
rc = subprocess.call(["timeout", "-k", "10", sys.argv[1]] + sys.argv[2:], stdin=subprocess.DEVNULL)
wall = time.monotonic() - t0
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": rc, "seconds": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "maxrss_kib": ru.ru_maxrss}))
EOF
}

# Appends a record of one write of the data set. write_record SIDE CODEC RUN
# MEASURE_JSON PHYSICAL_BYTES SERVER_CPU_TICKS|"" RSS_KIB PEAK_RSS_KIB LOGICAL_BYTES|"" REPORTED_RATIO|""
write_record() {
  python3 - "$@" "$data_bytes" "$clk_tck" >>"$results" <<'EOF'
import json, sys
side, codec, run, m, physical, ticks, rss, hwm, logical, ratio, data, clk_tck = sys.argv[1:13]
m = json.loads(m)
# Ours: the daemon's CPU over the copy (nbdcopy, the client, is not counted, as
# fio is not in the fio cases). qemu-img convert: its own CPU (it reads the
# file, compresses and writes). qemu-nbd: the server's CPU.
cpu_s = int(ticks) / int(clk_tck) if ticks else m["cpu_s"]
rec = {"part": "write", "side": side, "codec": codec, "run": int(run), "seconds": m["seconds"],
       "mib_s": int(data) / 2**20 / m["seconds"], "cpu_s": cpu_s, "rss_kib": int(rss), "hwm_kib": int(hwm),
       "data_bytes": int(data), "physical": int(physical),
       "logical": int(logical) if logical else None, "reported_ratio": float(ratio) if ratio else None}
print(json.dumps(rec))
print(f"  {side:16} run {run}: {rec['mib_s']:.0f} MiB/s, {int(data) / 2**20:.0f} MiB -> {int(physical) / 2**20:.1f} MiB "
      f"(ratio {int(data) / max(int(physical), 1):.2f}), CPU {cpu_s:.2f} s, RSS {int(rss) / 1024:.1f} MiB "
      f"(peak {int(hwm) / 1024:.1f})",
      file=sys.stderr)
EOF
}

# ---- qemu-nbd's aio: the same for every qemu-nbd; io_uring unless it fails here
probe_aio() {
  local aio
  truncate -s 1M "$work/probe.img"
  for aio in ${BENCH_QEMU_AIO:-io_uring native threads}; do
    qemu-nbd --cache=none --aio="$aio" -f raw -t -k "$work/probe.sock" "$work/probe.img" >"$work/probe.log" 2>&1 &
    local pid=$! ok=0 i
    for ((i = 0; i < 50; i++)); do
      kill -0 $pid 2>/dev/null || break
      nbdinfo --size "nbd+unix:///?socket=$work/probe.sock" >/dev/null 2>&1 && { ok=1; break; }
      sleep 0.1
    done
    kill $pid 2>/dev/null || true
    wait $pid 2>/dev/null || true
    if ((ok)); then
      rm -f "$work/probe.img" "$work/probe.log"
      echo "$aio"
      return 0
    fi
  done
  echo "$me: qemu-nbd --cache=none does not start with any of --aio=${BENCH_QEMU_AIO:-io_uring native threads}:" >&2
  cat "$work/probe.log" >&2
  exit 2
}
qemu_aio=$(probe_aio)

echo "bench: $runs runs x ${run_seconds}s per case and side, interleaved; parts: $parts"
echo "bench: work dir $work on:"
df -T "$work" | sed 's/^/  /'
echo "bench: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //');" \
  "AES-NI: $(grep -qw aes /proc/cpuinfo && echo yes || echo no)), kernel $(uname -r)"
echo "bench: $(fio --version), $(qemu-nbd --version | head -1), nbdcopy $(nbdcopy --version | head -1 | awk '{print $2}');" \
  "every qemu-nbd with --cache=none --aio=$qemu_aio"
echo "bench: $edgestor ($(stat -c %y "$edgestor" | cut -d. -f1))"

# ======================================================================
# Part 1: encryption
# ======================================================================
if [[ " $parts " == *" enc "* ]]; then
  echo "bench: encryption: size $size per side (our pools $pool_size, sparse), sequential cases at QD$seq_qd"
  # The pool key: 32 random bytes, readable by us only (the CLI may refuse a
  # key file others can read).
  key=$work/pool.key
  (umask 077 && head -c 32 /dev/urandom >"$key")
  # qemu's LUKS passphrase, from a file rather than the command line.
  (umask 077 && head -c 24 /dev/urandom | base64 >"$work/luks.secret")
  secret=(--object "secret,id=sec0,file=$work/luks.secret")

  "$edgestor" pool create "$work/plain.img" --size "$pool_size" >/dev/null
  "$edgestor" --pool "$work/plain.img" vol create filled --size "$size" >/dev/null
  "$edgestor" --keyfile "$key" pool create "$work/enc.img" --size "$pool_size" >/dev/null
  "$edgestor" --keyfile "$key" --pool "$work/enc.img" vol create filled --size "$size" --encrypt >/dev/null
  info=$("$edgestor" --pool "$work/enc.img" vol info filled --json)
  [[ $info == *'"encrypted": true'* ]] || { echo "$me: the volume of enc.img is not encrypted: $info" >&2; exit 1; }
  truncate -s "$size" "$work/raw.img"
  # LUKS inside qcow2 (encrypt.format=luks: AES-256-XTS with plain64 IVs by
  # default, the same cipher as ours), 64 KiB clusters.
  qemu-img create -q -f qcow2 "${secret[@]}" -o encrypt.format=luks,encrypt.key-secret=sec0 "$work/luks.qcow2" "$size"

  start_ours plain "$work/plain.img" filled
  start_ours enc "$work/enc.img" filled --keyfile "$key"
  start_qemu raw filled -f raw "$work/raw.img"
  start_qemu luks filled "${secret[@]}" --image-opts \
    "driver=qcow2,file.filename=$work/luks.qcow2,encrypt.key-secret=sec0"
  echo "bench: prefilling ($size each, 1 MiB sequential writes through each server)"
  for s in plain enc raw luks; do prefill "$s" filled; done
  sync -f "$work"

  for c in $enc_cases; do
    mode=${c%:*} qd=${c#*:}
    echo "bench: enc $mode qd$qd"
    for ((run = 1; run <= runs; run++)); do
      for s in plain enc raw luks; do run_fio enc "$s" "$s" filled "$mode" "$qd" "$run" "$size_bytes"; done
    done
  done
  for s in plain enc raw luks; do stop_server "$s"; done
  settle "$work/plain.img" "$work/enc.img" "$work/raw.img" "$work/luks.qcow2"
fi

# ======================================================================
# Part 2: compression
# ======================================================================
if [[ " $parts " == *" comp "* ]]; then
  # The data set: real files (headers, Python sources and bytecode, shared
  # objects), the kind of data a compressed volume holds. tar stops with
  # SIGPIPE when head has enough, hence the || true.
  data=$work/data.tar
  { tar -cf - /usr/include /usr/lib/python3* 2>/dev/null || true; } | head -c "$data_max_bytes" >"$data"
  data_bytes=$(stat -c %s "$data")
  # Padded with zeros (as tar pads its archives) to a multiple of 64 KiB: qemu's
  # compress filter takes whole clusters only, and NBD wants whole sectors.
  truncate -s $(((data_bytes + 65535) / 65536 * 65536)) "$data"
  data_bytes=$(stat -c %s "$data")
  region=$data_bytes  # random reads stay inside the data
  comp_vol_size=$(((data_bytes + 2 ** 20 - 1) / 2 ** 20 * 2 ** 20))
  ((comp_vol_size > size_bytes)) || comp_vol_size=$size_bytes
  echo "bench: compression: data set $(numfmt --to=iec-i --suffix=B "$data_bytes") ($data_bytes bytes," \
    "cap $data_max): tar of /usr/include /usr/lib/python3*"
  # qcow2's zstd compression exists since QEMU 5.1 but may be compiled out.
  qc=""
  for t in $qemu_codecs; do
    if qemu-img create -q -f qcow2 -o compression_type="$t" "$work/probe.qcow2" 1M >/dev/null 2>&1; then
      qc+="$t "
    else
      echo "bench: this qemu-img has no qcow2 compression_type=$t; skipped"
    fi
    rm -f "$work/probe.qcow2"
  done
  qemu_codecs=$qc

  # One daemon serves all our compressed volumes; a new volume per codec and
  # run (created through the daemon, never deleted, so no freed space is reused).
  "$edgestor" pool create "$work/comp.img" --size "$pool_size" >/dev/null
  "$edgestor" --pool "$work/comp.img" vol create warmup --size 1M >/dev/null
  start_ours comp "$work/comp.img" warmup
  volname() { echo "${1//:/}-$2"; }  # zstd:9, run 2 -> zstd9-2
  pool_free_bytes() {
    python3 -c 'import json,sys; print(json.loads(sys.argv[1])["free_bytes"])' \
      "$("$edgestor" --pool "$work/comp.img" pool info --json)"
  }

  echo "bench: writing the data set (nbdcopy --flush into ours and qemu-nbd's compress filter; qemu-img convert -c)"
  for ((run = 1; run <= runs; run++)); do
    # ours: nbdcopy into a new volume; --flush so the time includes making it durable
    for codec in $codecs; do
      vol=$(volname "$codec" "$run")
      "$edgestor" --pool "$work/comp.img" vol create "$vol" --size "$comp_vol_size" --compress "$codec" >/dev/null
      wait_ready comp "$vol"
      pid=${server_pid[comp]}
      free_before=$(pool_free_bytes)
      before=$(cpu_ticks "$pid")
      m=$(measure nbdcopy --flush "$data" "$(uri comp "$vol")" 2>"$work/nbdcopy-$vol.err")
      check_alive comp "nbdcopy into $vol" "$work/nbdcopy-$vol.err"
      after=$(cpu_ticks "$pid")
      [[ $(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["rc"])' "$m") == 0 ]] ||
        { echo "  nbdcopy into $vol FAILED:" >&2; sed 's/^/    /' "$work/nbdcopy-$vol.err" >&2; exit 1; }
      # logical (written_bytes) from the daemon; physical: what the pool lost
      # in free space (data, and any map pages written meanwhile), like du
      # of a qcow2 with its metadata
      info=$("$edgestor" --pool "$work/comp.img" vol info "$vol" --json)
      read -r logical ratio < <(python3 -c 'import json,sys; j=json.loads(sys.argv[1]);
print(j["written_bytes"], j.get("compression_ratio") or "")' "$info")
      physical=$((free_before - $(pool_free_bytes)))
      write_record "ours-$codec" "$codec" "$run" "$m" "$physical" "$((after - before))" "$(rss_kib "$pid")" \
        "$(hwm_kib "$pid")" "$logical" "$ratio"
    done
    # qemu-img convert -c: what users run to get a compressed qcow2; reads the
    # file directly (no NBD). sync(1) on the output: durable, like --flush.
    for t in $qemu_codecs; do
      out=$work/conv-$t.qcow2
      rm -f "$out"
      # shellcheck disable=SC2016  # $1..$3 are the inner shell's
      m=$(measure sh -c 'qemu-img convert -c -O qcow2 -o compression_type="$1" "$2" "$3" && sync "$3"' \
        sh "$t" "$data" "$out" 2>"$work/convert-$t.err")
      [[ $(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["rc"])' "$m") == 0 ]] ||
        { echo "  qemu-img convert ($t) FAILED:" >&2; sed 's/^/    /' "$work/convert-$t.err" >&2; exit 1; }
      rss=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["maxrss_kib"])' "$m")
      write_record "qemu-img-$t" "$t" "$run" "$m" "$(du -B1 "$out" | cut -f1)" "" "$rss" "$rss" "" ""
    done
    # qemu-nbd with the compress filter over a new qcow2: every write is
    # compressed; the same client (nbdcopy --flush) as ours.
    for t in $qemu_codecs; do
      out=$work/filt-$t.qcow2
      qemu-img create -q -f qcow2 -o compression_type="$t" "$out" "$comp_vol_size"
      start_qemu "filt-$t" data --image-opts "driver=compress,file.driver=qcow2,file.file.filename=$out"
      pid=${server_pid[filt-$t]}
      before=$(cpu_ticks "$pid")
      m=$(measure nbdcopy --flush "$data" "$(uri "filt-$t" data)" 2>"$work/nbdcopy-filt-$t.err")
      check_alive "filt-$t" "nbdcopy into qemu-nbd compress ($t)" "$work/nbdcopy-filt-$t.err"
      after=$(cpu_ticks "$pid")
      rss=$(rss_kib "$pid") hwm=$(hwm_kib "$pid")
      [[ $(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["rc"])' "$m") == 0 ]] ||
        { echo "  nbdcopy into qemu-nbd compress ($t) FAILED:" >&2; sed 's/^/    /' "$work/nbdcopy-filt-$t.err" >&2; exit 1; }
      stop_server "filt-$t"
      write_record "qemu-nbd-$t" "$t" "$run" "$m" "$(du -B1 "$out" | cut -f1)" "$((after - before))" "$rss" "$hwm" "" ""
      settle "$out"
    done
  done
  sync -f "$work"

  # Random reads over the data: ours (the volumes of the last run) against
  # qemu-nbd -r on the qcow2s of the last qemu-img convert, and on the data
  # file itself (raw, uncompressed: the reference).
  read_sides=""
  for codec in $read_codecs; do
    [[ " $codecs " == *" $codec "* ]] && read_sides+="ours-$codec "
  done
  start_qemu rd-raw data -r -f raw "$data"
  read_sides+="qemu-raw "
  for t in $qemu_codecs; do
    start_qemu "rd-$t" data -r -f qcow2 "$work/conv-$t.qcow2"
    read_sides+="qemu-$t "
  done
  for c in $comp_cases; do
    mode=${c%:*} qd=${c#*:}
    echo "bench: comp $mode qd$qd over the data set"
    for ((run = 1; run <= runs; run++)); do
      for s in $read_sides; do
        if [[ $s == ours-* ]]; then
          run_fio comp "$s" comp "$(volname "${s#ours-}" "$runs")" "$mode" "$qd" "$run" "$region"
        else
          run_fio comp "$s" "rd-${s#qemu-}" data "$mode" "$qd" "$run" "$region"
        fi
      done
    done
  done
  for s in $read_sides; do [[ $s == ours-* ]] || stop_server "rd-${s#qemu-}"; done
  stop_server comp
fi

# ---- the tables
python3 - "$results" "$runs" <<'EOF'
import json, statistics, sys

recs = [json.loads(line) for line in open(sys.argv[1])]

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

def ratio_cell(r, rr):
    return fmt(r, ".2f") + (f" ({', '.join(f'{x:.2f}' for x in rr)})" if len(rr) > 1 else "")

verdict = lambda ok: "PASS" if ok else "MISS"

def table(header, rows):
    widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]
    line = lambda row: "| " + " | ".join(str(c).ljust(widths[i]) for i, c in enumerate(row)) + " |"
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))

def fio_table(part, sides, labels, pairs):
    """pairs: (label, a, b, goal or None)"""
    prs = [r for r in recs if r["part"] == part]
    if not prs:
        return
    header = ["case"] + [labels[s] for s in sides] + [p[0] for p in pairs] + \
             ["server CPU µs/IO " + "/".join(s for s in sides), "RSS MiB " + "/".join(s for s in sides), "goals"]
    rows, details = [], []
    for mode, qd in dict.fromkeys((r["mode"], r["qd"]) for r in prs):
        by = {s: sorted((r for r in prs if (r["mode"], r["qd"], r["side"]) == (mode, qd, s)), key=lambda r: r["run"])
              for s in sides}
        key = "mib_s" if mode.startswith("seq") else "iops"
        unit = " MiB/s" if key == "mib_s" else ""
        cell = lambda s: (f"{fmt(med(by[s], key), ',.0f')}{unit} (±{spread([r[key] for r in by[s]]):.0f}%)"
                          if by[s] else "-")
        ratios, goals = [], []
        for label, a, b, goal in pairs:
            r, rr = paired_ratio(by[a], by[b], key)
            ratios.append(ratio_cell(r, rr))
            if goal is not None and r is not None:
                goals.append(f"{label} ≥{goal} {verdict(r >= goal)}")
        name = f"{mode} {'128K' if mode.startswith('seq') else '4K'} qd{qd}"
        rows.append([name] + [cell(s) for s in sides] + ratios +
                    [" / ".join(fmt(med(by[s], "cpu_us_per_io"), ".1f") for s in sides),
                     " / ".join(fmt(med(by[s], "rss_kib") and med(by[s], "rss_kib") / 1024, ".1f") for s in sides),
                     "; ".join(goals)])
        details.append(f"  {name:18} " + "; ".join(
            f"{labels[s]} " + ", ".join(f"{r[key]:,.0f}" for r in by[s]) for s in sides if by[s]) + (unit or " IOPS"))
    table(header, rows)
    print()
    print("Each run, in order (interleaved " + ", ".join(labels[s] for s in sides) + "):")
    print("\n".join(details))
    print("Peak RSS (VmHWM, after the last run): " + ", ".join(
        f"{labels[s]} {max(r['hwm_kib'] for r in prs if r['side'] == s) / 1024:.1f} MiB"
        for s in sides if any(r["side"] == s for r in prs)))
    print()

# ---- encryption
if any(r["part"] == "enc" for r in recs):
    print("\n== Encryption at rest: ours (plain pool; encrypted volume, AES-256-XTS) vs qemu-nbd (raw; qcow2+LUKS)\n")
    fio_table("enc", ["plain", "enc", "raw", "luks"],
              {"plain": "ours plain", "enc": "ours enc", "raw": "qemu raw", "luks": "qemu luks"},
              [("enc/plain", "enc", "plain", 0.85), ("enc/luks", "enc", "luks", 2),
               ("luks/raw", "luks", "raw", None)])

# ---- compression: writing the data set
w = [r for r in recs if r["part"] == "write"]
if w:
    data = w[0]["data_bytes"]
    print(f"\n== Compression: writing the data set ({data / 2**20:.1f} MiB: tar of /usr/include /usr/lib/python3*)\n")
    header = ["writer", "MiB/s", "each run", "physical MiB", "ratio data/physical", "reported ratio",
              "CPU s", "CPU s/GiB", "RSS MiB after (peak)"]
    rows = []
    for side in dict.fromkeys(r["side"] for r in w):
        rs = sorted((r for r in w if r["side"] == side), key=lambda r: r["run"])
        phys = med(rs, "physical")
        cpu = med(rs, "cpu_s")
        rows.append([side, f"{med(rs, 'mib_s'):,.0f} (±{spread([r['mib_s'] for r in rs]):.0f}%)",
                     ", ".join(f"{r['mib_s']:.0f}" for r in rs), f"{phys / 2**20:.1f}",
                     f"{data / phys:.2f}" if phys else "-",
                     fmt(med(rs, "reported_ratio"), ".2f"), f"{cpu:.2f}", f"{cpu / (data / 2**30):.2f}",
                     f"{med(rs, 'rss_kib') / 1024:.1f} ({max(r['hwm_kib'] for r in rs) / 1024:.1f})"])
    table(header, rows)
    print()
    print("ours-*: nbdcopy --flush through NBD into a new volume of our daemon (physical: the pool's free space it took;")
    print("  reported ratio: the daemon's compression_ratio = written_bytes / allocated_bytes; CPU: the daemon's).")
    print("qemu-img-*: qemu-img convert -c -O qcow2 -o compression_type=T DATA OUT, then sync OUT; reads the file")
    print("  directly, no NBD (physical: du -B1 of the qcow2, its metadata included; CPU: qemu-img's own).")
    print("qemu-nbd-*: nbdcopy --flush into qemu-nbd with its compress filter over a new qcow2 (CPU: the server's).")
    print("ratio data/physical: the data set's size over the bytes it took on disk (larger is better).")
    print("RSS: VmRSS of the server after the copy, peak: its VmHWM (ours: one daemon for all the volumes, so its")
    print("  peak so far); qemu-img: its peak (ru_maxrss) in both columns.")
    goal_pairs = [("ours-zstd", "qemu-img-zstd"), ("ours-lz4", "qemu-img-zlib"), ("ours-zstd", "qemu-nbd-zstd"),
                  ("ours-lz4", "qemu-nbd-zlib")]
    for a, b in goal_pairs:
        ra = [r for r in w if r["side"] == a]
        rb = [r for r in w if r["side"] == b]
        if ra and rb:
            print(f"  {a} vs {b}: throughput {med(ra, 'mib_s') / med(rb, 'mib_s'):.2f}x theirs, "
                  f"compression ratio {med(rb, 'physical') / med(ra, 'physical'):.2f}x theirs, "
                  f"CPU per byte {med(ra, 'cpu_s') / med(rb, 'cpu_s'):.2f}x theirs")
    print()

# ---- compression: random reads
if any(r["part"] == "comp" for r in recs):
    sides = list(dict.fromkeys(r["side"] for r in recs if r["part"] == "comp"))
    pairs = []
    for label, a, b, goal in (("ours lz4/qemu zlib", "ours-lz4", "qemu-zlib", 3),
                              ("ours zstd/qemu zstd", "ours-zstd", "qemu-zstd", 3),
                              ("ours lz4/ours off", "ours-lz4", "ours-off", None),
                              ("qemu zlib/qemu raw", "qemu-zlib", "qemu-raw", None)):
        if a in sides and b in sides:
            pairs.append((label, a, b, goal))
    print("\n== Compression: 4K random reads over the data set (ours: the volumes written last;"
          " qemu-nbd -r on the qcow2 of the last qemu-img convert; qemu-raw: the data file itself)\n")
    prs = [r for r in recs if r["part"] == "comp"]
    cases = list(dict.fromkeys((r["mode"], r["qd"]) for r in prs))
    by = lambda s, c: sorted((r for r in prs if r["side"] == s and (r["mode"], r["qd"]) == c), key=lambda r: r["run"])
    header = ["server"]
    for mode, qd in cases:
        header += [f"{mode} qd{qd} IOPS", "each run", "CPU µs/IO"]
    header += ["RSS MiB (peak)"]
    rows = []
    for s in sides:
        row = [s]
        for c in cases:
            rs = by(s, c)
            row += [f"{med(rs, 'iops'):,.0f} (±{spread([r['iops'] for r in rs]):.0f}%)" if rs else "-",
                    ", ".join(f"{r['iops']:,.0f}" for r in rs), fmt(med(rs, "cpu_us_per_io"), ".1f")]
        allr = [r for r in prs if r["side"] == s]
        row.append(f"{med(allr, 'rss_kib') / 1024:.1f} ({max(r['hwm_kib'] for r in allr) / 1024:.1f})")
        rows.append(row)
    table(header, rows)
    print()
    header = ["ratio (IOPS)"] + [f"{mode} qd{qd}" for mode, qd in cases] + ["goal"]
    rows = []
    for label, a, b, goal in pairs:
        row, goals = [label], []
        for c in cases:
            r, rr = paired_ratio(by(a, c), by(b, c), "iops")
            row.append(ratio_cell(r, rr))
            if goal is not None and r is not None:
                goals.append(f"qd{c[1]} {verdict(r >= goal)}")
        row.append(f"≥{goal}: " + ", ".join(goals) if goal is not None else "(for reference)")
        rows.append(row)
    table(header, rows)
    print()
    print("RSS: VmRSS of the server after the runs (median), peak: its VmHWM (ours: the daemon that also took the")
    print("writes above, so its peak may come from them).")
    print()

print("Values: median over runs, with the spread (max - min) / median. Ratios: median over runs of one side / the")
print("other side's run in the same round (each run's ratio in brackets). Server CPU: utime+stime of the server")
print("process (/proc/PID/stat, all threads) over the fio run, per I/O; the client runs on the same CPUs and is not")
print("counted. RSS: VmRSS of the server after the run (median). Goals (never a failure): encrypted ≥0.85x plain and")
print("≥2x qcow2+LUKS; compressed 4K random reads ≥3x qemu-nbd on the compressed qcow2.")
EOF

complaints=$(cat "$work"/plain.log "$work"/enc.log "$work"/comp.log 2>/dev/null | grep -iE 'error|warn' |
  grep -v 'received SIGTERM' || true)
if [[ -n $complaints ]]; then
  echo "bench: our daemon logged warnings or errors ($work/plain.log, enc.log, comp.log):"
  head -20 <<<"$complaints" | sed 's/^/  /'
fi
echo "bench: results in $results"
exit $failed
