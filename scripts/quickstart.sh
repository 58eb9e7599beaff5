#!/usr/bin/env bash
# Quick start: from a fresh checkout to a served volume.
#
# Installs the dependencies, builds the release binary, creates the default
# pool var/pool.img (20 GiB, sparse) with a thin volume vol0 (8 GiB) unless
# they exist, writes 4 MiB of random data into vol0 and reads it back, then
# serves every volume over NBD in the foreground (Ctrl-C stops it cleanly)
# and prints the URI to attach to. Safe to run again.
#
#   scripts/quickstart.sh           serve in the foreground
#   scripts/quickstart.sh --check   (CI) serve in the background, attach with
#                                   nbdinfo and qemu-io, stop with SIGTERM
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

POOL=var/pool.img
POOL_SIZE=20G
VOLUME=vol0
VOLUME_SIZE=8G
EDGESTOR=$root/build/src/cli/edgestor

step() { echo "==> $*"; }
edgestor() { "$EDGESTOR" "$@"; }

install_and_build() {
  step "installing dependencies"
  scripts/install-deps.sh
  step "building (release, log in var/build.log)"
  mkdir -p var
  if ! scripts/build.sh release >var/build.log 2>&1; then
    tail -n 40 var/build.log >&2
    echo "quickstart: build failed; full log in var/build.log" >&2
    exit 1
  fi
}

ensure_pool() {
  if [[ ! -e $POOL ]]; then
    step "creating pool $POOL ($POOL_SIZE, sparse)"
    edgestor pool create "$POOL" --size "$POOL_SIZE"
  elif ! edgestor pool info "$POOL" >/dev/null; then
    echo "quickstart: $POOL exists but cannot be opened as a pool (see above); remove it to start over" >&2
    exit 1
  else
    step "using existing pool $POOL"
  fi
}

ensure_volume() {
  if edgestor --pool "$POOL" vol info "$VOLUME" >/dev/null 2>&1; then
    step "using existing volume $VOLUME"
  else
    step "creating volume $VOLUME ($VOLUME_SIZE, thin)"
    edgestor --pool "$POOL" vol create "$VOLUME" --size "$VOLUME_SIZE"
  fi
}

demo_write_read() {
  step "writing 4 MiB of random data at offset 1 MiB of $VOLUME and reading it back"
  head -c 4M /dev/urandom >var/demo.in
  edgestor --pool "$POOL" vol write "$VOLUME" --offset 1M --input var/demo.in
  edgestor --pool "$POOL" vol read "$VOLUME" --offset 1M --length 4M --output var/demo.out
  cmp var/demo.in var/demo.out
  echo "verified"
}

show_pool() {
  step "pool and volumes"
  edgestor pool info "$POOL"
  edgestor --pool "$POOL" vol list
}

serve() {
  step "serving $POOL over NBD (Ctrl-C to stop)"
  exec "$EDGESTOR" serve --pool "$POOL"
}

check_serving() {
  step "serving $POOL in the background and attaching to it"
  "$EDGESTOR" serve --pool "$POOL" &
  local pid=$! uri="nbd+unix:///$VOLUME?socket=$root/var/pool.nbd.sock"
  for _ in $(seq 100); do [[ -S var/pool.nbd.sock ]] && break; sleep 0.1; done
  nbdinfo "$uri"
  qemu-io -f raw -c 'write -P 0x5a 0 1M' -c 'read -P 0x5a 0 1M' "$uri"
  kill -TERM "$pid"
  wait "$pid"
  echo "served, attached and stopped cleanly"
}

install_and_build
ensure_pool
ensure_volume
demo_write_read
show_pool
if [[ ${1:-} == --check ]]; then check_serving; else serve; fi
