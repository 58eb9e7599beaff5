#!/usr/bin/env bash
# Builds edgestor and runs every test with ctest.
#
#   scripts/test.sh [release]   the optimized build in build/
#   scripts/test.sh asan        under AddressSanitizer/UBSan, in build-asan/
#
# CI runs both. Extra arguments are passed to ctest (e.g. -R cli).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mode=${1:-release}
shift || true

case $mode in
  release) dir=$root/build ;;
  asan)
    dir=$root/build-asan
    export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
    export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
    ;;
  *)
    echo "usage: scripts/test.sh [release|asan] [ctest arguments...]" >&2
    exit 2
    ;;
esac

"$root/scripts/build.sh" "$mode"
echo "test: $mode"
ctest --test-dir "$dir" --output-on-failure -j2 "$@"
