#!/usr/bin/env bash
# Configures and builds edgestor with Ninja.
#
#   scripts/build.sh [release]   optimized build in build/
#   scripts/build.sh asan        -O2 -g with assertions on + AddressSanitizer/UBSan in build-asan/
#
# Extra arguments after the mode are passed to `cmake --build` (e.g. a target).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mode=${1:-release}
shift || true

case $mode in
  release) dir=$root/build config=(-DCMAKE_BUILD_TYPE=Release) ;;
  # RelWithDebInfo would define NDEBUG; the sanitizer build also checks every assert.
  asan) dir=$root/build-asan config=(-DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O2 -g" -DEDGESTOR_SANITIZE=ON) ;;
  *)
    echo "usage: scripts/build.sh [release|asan] [cmake --build arguments...]" >&2
    exit 2
    ;;
esac

jobs=$(nproc)
echo "build: $mode in ${dir#"$root"/} ($jobs jobs)"
cmake -S "$root" -B "$dir" -G Ninja "${config[@]}" >/dev/null
cmake --build "$dir" --parallel "$jobs" "$@"
