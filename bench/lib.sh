# Shared by the benchmarks that run servers side by side (nbd-vs-qemu.sh,
# codec-vs-qemu.sh, vhost-vs-qsd.sh): stopping servers, sampling their CPU
# and memory. Source it after setting work (the work dir), failed (0),
# server_pid (declare -A: name -> pid), and for memory_record, memory (a
# JSON-lines file).
# shellcheck shell=bash disable=SC2154,SC2034  # work, server_pid, failed, memory: the caller's

# Deletes files and waits for the file system to commit (and, mounted with
# -o discard, to trim) the freed space, so that work does not land in the
# next timed run.
settle() {
  rm -f "$@"
  sync -f "$work"
}

# Stops a server with SIGTERM and waits for it (up to 60 s, then SIGKILL).
# Our daemon must drain and exit 0; anything else is reported.
stop_server() {
  local name=$1 pid=${server_pid[$1]:-} rc=0 i
  [[ -n $pid ]] || return 0
  unset "server_pid[$name]"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 600; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "  $name (pid $pid) still running 60 s after SIGTERM; sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
    failed=1
  fi
  wait "$pid" 2>/dev/null || rc=$?
  if ((rc != 0)); then
    echo "  $name (pid $pid) exited with status $rc; its log $work/$name.log ends:" >&2
    tail -n 5 "$work/$name.log" | sed 's/^/    /' >&2
    failed=1
  fi
}

# user + system CPU time of a process, all its threads (clock ticks).
cpu_ticks() {
  local stat
  stat=$(<"/proc/$1/stat")
  stat=${stat##*) }  # fields from the 3rd on; utime and stime are the 14th and 15th
  # shellcheck disable=SC2086
  set -- $stat
  echo $((${12} + ${13}))
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }

uri() { echo "nbd+unix:///$2?socket=$work/$1.sock"; }

memory_record() { echo "{\"what\": \"$1\", \"rss_kib\": $2}" >>"$memory"; }
