#!/usr/bin/env bash
# Installs what edgestor needs to build, test and benchmark, from Debian's
# packages. Idempotent: installs only missing packages, and runs
# `apt-get update` only when something is missing. Uses sudo when not root.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build pkg-config g++ clang
  liburing-dev libblkid-dev libssl-dev libzstd-dev liblz4-dev libisal-dev
  libcli11-dev nlohmann-json3-dev libspdlog-dev libfmt-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  fio qemu-utils nbdkit libnbd-bin
  # file exports (src/frontend/fuse) and their test: a loop device over the
  # file, ext4 on it, a file-system workload from stress-ng
  libfuse3-dev fuse3 stress-ng
  # operations (issue 19): the metrics listener's HTTP server, systemd
  # readiness and watchdog, and promtool to check the metrics text
  libcivetweb-dev libsystemd-dev prometheus
  python3  # tests/cli_test.sh parses --json output with it
  # tests/guest: a QEMU guest booting Debian's kernel with an initramfs of
  # busybox-static and e2fsprogs (scripts/build-guest.sh)
  qemu-system-x86 linux-image-amd64 busybox-static e2fsprogs xz-utils
)

missing=()
for package in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$package")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#PACKAGES[@]} packages are installed"
  exit 0
fi

sudo=()
if ((EUID != 0)); then sudo=(sudo); fi
apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -y)

echo "install-deps: installing ${missing[*]}"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { "${apt[@]}" update && "${apt[@]}" install --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
  cat "$log" >&2
  echo "install-deps: apt-get failed (full output above)" >&2
  exit 1
fi
echo "install-deps: done"
