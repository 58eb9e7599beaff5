#!/usr/bin/env bash
# Operations end to end: metrics scraped while fio loads the daemon over
# NBD (counters follow what fio reports; every scrape passes promtool),
# iostat and status, exports and serve settings restored after SIGTERM and
# after kill -9, a flatten job killed half way and finished after the
# restart, and systemd: readiness, watchdog pings, STOPPING, journald
# priorities. Usage: operations_test.sh PATH/TO/edgestor
set -uo pipefail

EDGESTOR=$(realpath "$1")
work=$(mktemp -d /tmp/edgestor-operations-test.XXXXXX)
pool=$work/pool.img
sock=$work/pool.nbd.sock
unset EDGESTOR_POOL EDGESTOR_CONTROL NOTIFY_SOCKET WATCHDOG_USEC JOURNAL_STREAM
background=()

cleanup() {
  for pid in "${background[@]}"; do kill "$pid" 2>/dev/null; done
  [[ -n $daemon_pid ]] && kill -9 "$daemon_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=tests/lib/daemon.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/daemon.sh"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# metric NAME{LABELS}: its value in the scrape file $1.
metric() { awk -v key="$2" '$1 == key { print $2; found=1 } END { exit !found }' "$1"; }
scrape() { python3 -c "import sys,urllib.request; sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:$port/metrics', timeout=10).read().decode())" >"$1"; }

check "pool create" es pool create "$pool" --size 4G
check "vol create v0 and v1" bash -c "'$EDGESTOR' --pool '$pool' vol create v0 --size 1G && '$EDGESTOR' --pool '$pool' vol create v1 --size 1G"
port=$(free_port)
start_daemon -- --metrics-listen "127.0.0.1:$port" || exit 1

# ---- metrics under load ----
scrape "$work/before.prom"
check "the first scrape passes promtool check metrics" promtool check metrics <"$work/before.prom"
fio --name=load --ioengine=nbd --uri="$(uri v0)" --rw=randwrite --bs=4k --iodepth=16 --size=256M --io_size=64M \
  --randrepeat=0 --output-format=json --output="$work/fio.json" >/dev/null 2>&1 &
fio_pid=$!
background+=("$fio_pid")
scrapes=0 bad=0
while kill -0 "$fio_pid" 2>/dev/null; do
  scrape "$work/during.prom" || break
  promtool check metrics <"$work/during.prom" >/dev/null 2>&1 || bad=$((bad + 1))
  scrapes=$((scrapes + 1))
  sleep 0.2
done
check "fio over NBD finished" wait "$fio_pid"
scrape "$work/after.prom"
check "every scrape during the load passed promtool ($scrapes scrapes)" test "$bad" = 0 -a "$scrapes" -ge 1
check "the last scrape passes promtool" promtool check metrics <"$work/after.prom"
fio_writes=$(python3 -c "import json; print(json.load(open('$work/fio.json'))['jobs'][0]['write']['total_ios'])")
fio_bytes=$(python3 -c "import json; print(json.load(open('$work/fio.json'))['jobs'][0]['write']['io_bytes'])")
writes_counted() {
  local key=$1 before after
  before=$(metric "$work/before.prom" "$key") && after=$(metric "$work/after.prom" "$key") || return 1
  echo "$key: $before -> $after; fio wrote $fio_writes requests"
  # fio's count is of completed requests; the daemon's too: equal.
  test $((after - before)) -eq "$fio_writes"
}
check "the volume's write counter grew by what fio reports" writes_counted 'edgestor_volume_requests_total{volume="v0",op="write"}'
check "the NBD export's write counter too" writes_counted 'edgestor_export_requests_total{volume="v0",protocol="nbd",export="v0",op="write"}'
bytes_counted() {
  local before after
  before=$(metric "$work/before.prom" 'edgestor_volume_request_bytes_total{volume="v0",op="write"}')
  after=$(metric "$work/after.prom" 'edgestor_volume_request_bytes_total{volume="v0",op="write"}')
  test $((after - before)) -eq "$fio_bytes"
}
check "the byte counter grew by fio's bytes" bytes_counted
histogram_total() {
  test "$(metric "$work/after.prom" 'edgestor_volume_request_duration_seconds_count{volume="v0",op="write"}')" = \
       "$(metric "$work/after.prom" 'edgestor_volume_requests_total{volume="v0",op="write"}')"
}
check "the latency histogram counts every write" histogram_total
check "the idle volume counted nothing" test "$(metric "$work/after.prom" 'edgestor_volume_requests_total{volume="v1",op="write"}')" = 0
check "nothing in flight after the load" test "$(metric "$work/after.prom" 'edgestor_volume_requests_in_flight{volume="v0"}')" = 0
check "pool space is reported" bash -c "awk '\$1 == \"edgestor_pool_allocated_bytes\" && \$2 > 60000000 { ok=1 } END { exit !ok }' '$work/after.prom'"
check "process memory is reported" bash -c "awk '\$1 == \"process_resident_memory_bytes\" && \$2 > 0 { ok=1 } END { exit !ok }' '$work/after.prom'"
check "the pool is healthy" test "$(metric "$work/after.prom" edgestor_pool_healthy)" = 1
check "a POST is refused" bash -c "! curl -sf -X POST --data x 'http://127.0.0.1:$port/metrics'"
check "another path is 404" bash -c "test \$(curl -s -o /dev/null -w '%{http_code}' 'http://127.0.0.1:$port/nope') = 404"

# ---- iostat and status ----
says_out() { local pattern=$1; shift; local out; out=$("$@") || return 1; echo "$out"; grep -qE -- "$pattern" <<<"$out"; }
check "iostat totals show v0's writes (16k of 4 KiB: 64 MiB)" says_out "^v0 +0 +16k +0 B +64 MiB" es iostat v0
check "iostat -l adds latencies" says_out "WRITE LAT" es iostat -l
fio --name=rate --ioengine=nbd --uri="$(uri v1)" --rw=randread --bs=4k --iodepth=4 --size=64M --time_based --runtime=4 \
  >/dev/null 2>&1 &
reader=$!
background+=("$reader")
check "iostat refuses a COUNT that is no whole number" refuses_saying "COUNT must be a whole number" es iostat 1 2.5
check "a word that is no number is a volume name, not a crash" refuses_saying "no volume named '.'" es iostat .
check "iostat with an interval shows reads going on" says_out "^v1 +[1-9][0-9.]*k? " es iostat v1 1 2
wait "$reader"
check "status says ONLINE and lists the volumes" says_out "ONLINE" es status
check "status --json is JSON with the pool" bash -c "'$EDGESTOR' --pool '$pool' status --json | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d[\"pool\"][\"failure\"] == \"\"'"

# ---- exports and settings come back ----
check "a stored vhost-user export" es export vhost v0 --socket "$work/v0.vhost"
check "a transient vhost-user export" es export vhost v1 --socket "$work/v1.vhost" --transient
check "export list marks which are stored" says_out "v1 .*no \(transient\)" es export list
check "the state file names the stored export only" python3 -c "
import json; d = json.load(open('$work/pool.state.json'))
sockets = [e['socket'] for e in d['exports']]
assert sockets == ['$work/v0.vhost'], sockets
assert d['settings']['metrics-listen'] == '127.0.0.1:$port', d['settings']"
check "SIGTERM" stop_daemon
start_daemon || exit 1  # no flags: the stored settings apply
check "after a restart the stored export is back" says_out "v0 +vhost-user-blk +$work/v0.vhost" es export list
check "and the transient one is not" bash -c "! '$EDGESTOR' --pool '$pool' export list | grep -q v1.vhost"
check "the stored --metrics-listen applies without the flag" scrape "$work/restarted.prom"
# Listening, not a stale file: a front-end can connect (the guest test has
# a running QEMU reconnect to a restored export).
check "the restored vhost-user socket accepts a connection" python3 -c "import socket; socket.socket(socket.AF_UNIX).connect('$work/v0.vhost')"
kill -9 "$daemon_pid"
wait "$daemon_pid" 2>/dev/null
daemon_pid=
start_daemon || exit 1
check "after kill -9 the stored export is back too" says_out "v0 +vhost-user-blk" es export list
check "export remove forgets it" es export remove --socket "$work/v0.vhost"
check "SIGTERM" stop_daemon
start_daemon -- --forget-settings || exit 1
check "a removed export stays gone" bash -c "! '$EDGESTOR' --pool '$pool' export list | grep -q vhost-user"
check "--forget-settings: no metrics listener" bash -c "! curl -sf 'http://127.0.0.1:$port/metrics' >/dev/null"
check "SIGTERM" stop_daemon
echo '{"exports": [' >"$work/pool.state.json"
check "a damaged state file stops the start, naming the file" refuses_saying "pool.state.json" es serve
rm "$work/pool.state.json"

# ---- a flatten job killed half way resumes after the restart ----
start_daemon || exit 1
fill() { fio --name=fill --ioengine=nbd --uri="$(uri v1)" --rw=write --bs=1M --iodepth=8 --size=1G >/dev/null 2>&1; }
check "fill v1 with 1 GiB of data" fill
check "snapshot and clone" bash -c "'$EDGESTOR' --pool '$pool' snap create v1@base >/dev/null && '$EDGESTOR' --pool '$pool' clone v1@base c1 >/dev/null"
es vol flatten c1 >"$work/flatten.out" 2>&1 &
flatten_cli=$!
job_state() { rpc job.get '{"id": 1}' | python3 -c "import json,sys; d=json.load(sys.stdin); print(d['state'], d['done'], d['total'], d['resumed'])"; }
for _ in $(seq 600); do
  read -r state done total _ < <(job_state 2>/dev/null) || true
  [[ ${state:-} == running && ${done:-0} -gt 0 ]] && break
  sleep 0.05
done
echo "job 1 when killed: $(job_state)"
check "the flatten job was running, part done, when the daemon was killed" test "${state:-}" = running -a "${done:-0}" -lt "${total:-0}"
kill -9 "$daemon_pid"
wait "$daemon_pid" 2>/dev/null
daemon_pid=
wait "$flatten_cli" 2>/dev/null
start_daemon || exit 1
check "after the restart job 1 is resumed" bash -c "'$EDGESTOR' --pool '$pool' job list --json | python3 -c 'import json,sys; j=[j for j in json.load(sys.stdin)[\"jobs\"] if j[\"id\"] == 1][0]; assert j[\"resumed\"] == 1, j'"
check "job wait follows it to 100 %" says_out "job 1 succeeded" es job wait 1
check "job list shows it at 100 %" says_out "^1 +flatten +c1 +succeeded +100%" es job list
check "c1 no longer depends on a snapshot" bash -c "'$EDGESTOR' --pool '$pool' vol info c1 --json | python3 -c 'import json,sys; assert json.load(sys.stdin)[\"origin\"] == \"\"'"
check "c1 reads as v1@base" cmp <(nbdcopy "$(uri c1)" -) <(nbdcopy "$(uri v1@base)" -)
check "a second flatten job of a volume that is no clone is refused" refuses_saying "not a clone" es vol flatten c1
check "cancel of a finished job says so" refuses_saying "already ended" es job cancel 1
# A volume mapping more than 64 map pages is released in the background:
# 4 KiB every 32 MiB of a 16 GiB volume stores 512 pages.
check "a sparse 16 GiB volume" es vol create big --size 16G
python3 -c 'print("\n".join(f"write -P 0x5a {i * 32 << 20} 4k" for i in range(512)))' >"$work/big.cmds"
check "4 KiB in each of its 512 map pages" bash -c "qemu-io -f raw '$(uri big)' <'$work/big.cmds' >/dev/null"
check "vol delete returns at once" es vol delete big
release_job() {
  rpc job.list | python3 -c "
import json, sys
jobs = [j for j in json.load(sys.stdin)['jobs'] if j['kind'] == 'release' and j['target'] == 'big']
assert len(jobs) == 1, jobs
print(jobs[0]['id'])"
}
release_id=$(release_job)
check "a release job follows the background delete" test -n "$release_id"
check "it ends at 100 %" says_out "job $release_id succeeded: released the space" es job wait "${release_id:-0}"
space_released() {
  rpc pool.info | python3 -c "import json,sys; d=json.load(sys.stdin); assert d['volumes_being_deleted'] == 0 and d['background_delete_pages'] == 0, d"
}
check "and nothing is left to release" space_released
check "SIGTERM" stop_daemon

# ---- systemd: readiness, watchdog, stopping, journald priorities ----
python3 - "$work/notify.sock" "$work/notify.log" <<'PY' &
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
with open(sys.argv[2], "a") as log:
    while True:
        log.write(s.recv(4096).decode().replace("\n", " ") + "\n")
        log.flush()
PY
background+=($!)
for _ in $(seq 50); do [[ -S $work/notify.sock ]] && break; sleep 0.1; done
: >"$work/journal.log"
journal_stream=$(stat -c '%d:%i' "$work/journal.log")
NOTIFY_SOCKET=$work/notify.sock WATCHDOG_USEC=400000 JOURNAL_STREAM=$journal_stream \
  "$EDGESTOR" serve --pool "$pool" 2>>"$work/journal.log" &
daemon_pid=$!
for _ in $(seq 100); do grep -q READY=1 "$work/notify.log" 2>/dev/null && break; sleep 0.1; done
sleep 1.2
check "READY=1 with a status line" grep -q "READY=1 STATUS=serving pool" "$work/notify.log"
check "watchdog pings at half the period (several in 1.2 s)" test "$(grep -c WATCHDOG=1 "$work/notify.log")" -ge 3
check "SIGTERM" stop_daemon
check "STOPPING=1 on SIGTERM" grep -q "STOPPING=1" "$work/notify.log"
check "journald lines carry syslog priorities" grep -qE '^<[3-7]>' "$work/journal.log"
check "info lines reach the journal" grep -q '^<6>serving pool' "$work/journal.log"
unit_verifies() {
  command -v systemd-analyze >/dev/null || { echo "no systemd-analyze: not checked"; return 0; }
  mkdir -p "$work/unit"
  sed "s|/usr/local/bin/edgestor|$EDGESTOR|" "$(dirname "${BASH_SOURCE[0]}")/../packaging/edgestor.service" \
    >"$work/unit/edgestor.service"
  systemd-analyze verify "$work/unit/edgestor.service"
}
check "packaging/edgestor.service passes systemd-analyze verify" unit_verifies
check "pool fsck clean" es pool fsck

echo "operations test: $passed passed, $failed failed"
((failed == 0))
