#!/usr/bin/env bash
# End-to-end test of the edgestor command-line tool.
#
# Usage: cli_test.sh PATH/TO/edgestor
#
# Works on sparse pool files in a temporary directory. Each check prints what
# it checks; the script stops at the first failure (exit 1) and otherwise
# prints "N passed, 0 failed".
set -euo pipefail

EDGESTOR=$(realpath "${1:?usage: cli_test.sh PATH/TO/edgestor}")
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
unset EDGESTOR_POOL

MiB=$((1 << 20))
passed=0
current="setup"

check() {
  current=$1
  echo "- $current"
}
pass() { passed=$((passed + 1)); }
fail() {
  echo "FAILED: $current: $*" >&2
  if [[ -s err ]]; then sed 's/^/  stderr: /' err >&2; fi
  echo "$passed passed, 1 failed"
  exit 1
}
trap 'fail "unexpected error in line $LINENO"' ERR

# Runs edgestor with stdin from $STDIN (default /dev/null); stdout goes to
# ./out, stderr to ./err, the exit status to $rc.
run() {
  "$EDGESTOR" "$@" <"${STDIN:-/dev/null}" >out 2>err && rc=0 || rc=$?
}
es_ok() {
  run "$@"
  ((rc == 0)) || fail "'edgestor $*' exited with $rc"
}
# es_fails STATUS ARGS...: the command must exit with STATUS. A failure
# (status 1) must explain itself in exactly one "edgestor: " line (log
# warnings such as the O_DIRECT fallback aside).
es_fails() {
  local want=$1
  shift
  run "$@"
  ((rc == want)) || fail "'edgestor $*' exited with $rc, expected $want"
  if ((want == 1)); then
    local lines
    lines=$(grep -vc '^edgestor: warning: ' err || true)
    ((lines == 1)) || fail "expected one error line on stderr, got $lines"
    grep -q '^edgestor: ' err || fail "error line does not start with 'edgestor: '"
  fi
}
err_has() { grep -qiE -- "$1" err || fail "stderr does not match '$1'"; }
out_has() { grep -qE -- "$1" out || fail "stdout does not match '$1'"; }
# json_true EXPR: EXPR (Python, the parsed stdout bound to d) holds.
json_true() {
  python3 -c "import json; d = json.load(open('out')); assert $1, d" 2>err || fail "JSON check failed: $1"
}
same_file() { cmp -s "$1" "$2" || fail "$1 and $2 differ"; }
md5() { md5sum "$1" | cut -d' ' -f1; }

P=(--pool "$WORK/p.img")

check "pool create makes a sparse 1 GiB pool"
es_ok pool create p.img --size 1G
out_has "created pool"
[[ $(stat -c %s p.img) == $((1024 * MiB)) ]] || fail "size is $(stat -c %s p.img)"
used_kib=$(du -k p.img | cut -f1)
((used_kib < 32 * 1024)) || fail "pool file uses $used_kib KiB on disk"
pass

check "pool create refuses an existing pool and leaves it unchanged"
sum=$(md5 p.img)
es_fails 1 pool create p.img --size 2G
err_has "already"
[[ $(md5 p.img) == "$sum" ]] || fail "pool file changed"
[[ $(stat -c %s p.img) == $((1024 * MiB)) ]] || fail "pool file resized"
pass

check "pool create keeps the size of an existing non-pool file"
truncate -s 64M f.img
es_ok pool create f.img --size 1G
es_ok pool info f.img --json
json_true "d['device_bytes'] == 64 * 2**20"
pass

check "pool create refuses a file system unless --force"
truncate -s 64M fs.img
mkfs.ext4 -q -F fs.img
sum=$(md5 fs.img)
es_fails 1 pool create fs.img
err_has "ext4"
err_has "--force"
[[ $(md5 fs.img) == "$sum" ]] || fail "fs.img changed"
es_ok pool create fs.img --force
es_ok pool fsck fs.img
pass

check "pool create refuses a pool whose labels are all damaged unless --force"
truncate -s 64M dmg.img
es_ok pool create dmg.img
for block in 0 1 $((64 * 256 - 2)) $((64 * 256 - 1)); do
  printf '\xff' | dd of=dmg.img bs=1 seek=$((block * 4096 + 100)) conv=notrunc status=none
done
es_fails 1 pool info dmg.img
err_has "damaged"
es_fails 1 pool create dmg.img
err_has "label"
es_ok pool create dmg.img --force
es_ok pool fsck dmg.img
pass

check "pool create refuses a grown pool file (its labels moved) unless --force"
truncate -s 64M grown.img
es_ok pool create grown.img
truncate -s 80M grown.img
es_fails 1 pool create grown.img
err_has "label"
es_ok pool create grown.img --force
pass

check "pool create --preallocate reserves the whole file; without it only the journal"
es_ok pool create pre.img --size 64M --preallocate
used_kib=$(du -k pre.img | cut -f1)
((used_kib >= 64 * 1024)) || fail "preallocated pool file uses only $used_kib KiB"
es_ok pool create sparse.img --size 256M --journal-size 4M
used_kib=$(du -k sparse.img | cut -f1)
((used_kib >= 4 * 1024 && used_kib < 32 * 1024)) || fail "sparse pool file uses $used_kib KiB"
pass

check "pool create with an invalid cluster size is a usage error and creates nothing"
es_fails 2 pool create new.img --cluster-size 3K
[[ ! -e new.img ]] || fail "new.img was created"
pass

check "pool info (human and --json)"
es_ok pool info p.img
out_has "cluster size: +64 KiB"
es_ok pool info p.img --json
json_true "d['device_bytes'] == 2**30 and d['cluster_size'] == 65536 and d['volume_count'] == 0"
json_true "d['free_bytes'] > 0 and d['free_bytes'] <= d['data_bytes'] <= d['device_bytes']"
pass

check "vol create (with --pool)"
es_ok "${P[@]}" vol create vol0 --size 64M
out_has "created volume vol0"
pass

check "vol create of an existing name fails"
es_fails 1 "${P[@]}" vol create vol0 --size 64M
pass

check "vol list --json (pool from EDGESTOR_POOL)"
EDGESTOR_POOL=$WORK/p.img es_ok vol list --json
json_true "[v['name'] for v in d['volumes']] == ['vol0'] and d['volumes'][0]['size'] == 64 * 2**20"
pass

check "vol list and vol info (human)"
es_ok "${P[@]}" vol list
out_has "^vol0 +[0-9]+ +64 MiB"
es_ok "${P[@]}" vol info vol0
out_has "size: +64 MiB"
out_has "data path: +[0-9]+ copy-on-writes, .* unaligned writes \\([0-9]+ waits for them\\) since open"
pass

check "vol info --json of a fresh volume: nothing allocated"
es_ok "${P[@]}" vol info vol0 --json
json_true "d['name'] == 'vol0' and d['size'] == 64 * 2**20 and d['written_bytes'] == 0 and d['allocated_bytes'] == 0"
pass

check "vol write at an unaligned offset, read back"
head -c 100000 /dev/urandom >pattern
es_ok "${P[@]}" vol write vol0 --offset 12345 --input pattern
es_ok "${P[@]}" vol read vol0 --offset 12345 --length 100000 --output readback
same_file pattern readback
pass

check "the bytes around an unaligned write are still zeros"
es_ok "${P[@]}" vol read vol0 --length 12345 --output before
head -c 12345 /dev/zero >zeros
same_file zeros before
es_ok "${P[@]}" vol read vol0 --offset 112345 --length 5000 --output after
head -c 5000 /dev/zero >zeros
same_file zeros after
pass

check "vol write from stdin inside existing data keeps its neighbours (read-modify-write)"
head -c 1000 /dev/urandom >small
cp pattern expect
dd if=small of=expect bs=1 seek=50000 conv=notrunc status=none
STDIN=small es_ok "${P[@]}" vol write vol0 --offset $((12345 + 50000))
es_ok "${P[@]}" vol read vol0 --offset 12345 --length 100000 --output readback
same_file expect readback
pass

check "vol write of a few bytes inside one sector"
printf 'HelloWorld' >hello
es_ok "${P[@]}" vol write vol0 --offset 200700 --input hello
es_ok "${P[@]}" vol read vol0 --offset 200000 --length 2048 --output sector
{ head -c 700 /dev/zero; cat hello; head -c $((2048 - 710)) /dev/zero; } >expect
same_file expect sector
pass

check "vol write of 3 MiB from stdin across chunk boundaries, read to stdout"
head -c $((3 * MiB + 77)) /dev/urandom >big
STDIN=big es_ok "${P[@]}" vol write vol0 --offset $((MiB + 3))
out_has "wrote $((3 * MiB + 77)) bytes"
es_ok "${P[@]}" vol read vol0 --offset $((MiB + 3)) --length $((3 * MiB + 77))
same_file big out
pass

check "a never-written range reads as zeros"
es_ok "${P[@]}" vol read vol0 --offset 32M --length 1M --output hole
head -c $MiB /dev/zero >zeros
same_file zeros hole
pass

check "vol info counts written data"
es_ok "${P[@]}" vol info vol0 --json
json_true "d['written_bytes'] >= 3 * 2**20 and d['allocated_bytes'] >= d['written_bytes']"
pass

check "out-of-range vol read and write fail cleanly"
es_fails 1 "${P[@]}" vol read vol0 --offset 64M --length 1
err_has "beyond"
es_fails 1 "${P[@]}" vol read vol0 --offset 65M
es_fails 1 "${P[@]}" vol write vol0 --offset $((64 * MiB - 5)) --input hello
err_has "beyond"
pass

check "vol resize grows and keeps the data"
es_ok "${P[@]}" vol resize vol0 --size 128M
es_ok "${P[@]}" vol info vol0 --json
json_true "d['size'] == 128 * 2**20"
es_ok "${P[@]}" vol read vol0 --offset $((MiB + 3)) --length $((3 * MiB + 77)) --output readback
same_file big readback
pass

check "vol resize refuses to shrink without --force"
es_fails 1 "${P[@]}" vol resize vol0 --size 2M
err_has "shrinking vol0 from 128 MiB to 2 MiB would discard data beyond the new end; pass --force"
es_ok "${P[@]}" vol info vol0 --json
json_true "d['size'] == 128 * 2**20"
pass

check "vol resize --force shrinks"
es_ok "${P[@]}" vol resize vol0 --size 2M --force
es_ok "${P[@]}" vol info vol0 --json
json_true "d['size'] == 2 * 2**20"
es_ok "${P[@]}" vol read vol0 --output whole
[[ $(stat -c %s whole) == $((2 * MiB)) ]] || fail "vol read without --length read $(stat -c %s whole) bytes"
pass

check "invalid arguments are usage errors and leave the pool unchanged"
sum=$(md5 p.img)
es_fails 2 "${P[@]}" vol create vol1 --size 12X
err_has "12X"
es_fails 2 "${P[@]}" vol create vol1 --size 1000
err_has "multiple of 512"
es_fails 2 "${P[@]}" vol create --size 1M -- -bad
es_fails 2 "${P[@]}" vol create .hidden --size 1M
es_fails 2 "${P[@]}" vol create 'a/b' --size 1M
es_fails 2 "${P[@]}" vol read vol0 --offset 1Q
es_fails 2 vol list
err_has "no pool given"
[[ $(md5 p.img) == "$sum" ]] || fail "pool file changed"
pass

check "a pool in use by another process is refused"
flock -x p.img "$EDGESTOR" "${P[@]}" vol list >out 2>err && rc=0 || rc=$?
((rc == 1)) || fail "exited with $rc"
err_has "^edgestor: pool .*p.img is in use by another process \(is a daemon serving it\?\)$"
pass

check "vol delete"
es_ok "${P[@]}" vol delete vol0
es_ok "${P[@]}" vol list --json
json_true "d['volumes'] == []"
es_fails 1 "${P[@]}" vol info vol0
err_has "no volume named vol0"
es_fails 1 "${P[@]}" vol delete vol0
pass

check "pool fsck of a clean pool exits 0"
es_ok "${P[@]}" vol create vol2 --size 16M
printf 'data' | "$EDGESTOR" "${P[@]}" vol write vol2 --offset 4096 >/dev/null 2>&1 || fail "vol write"
es_ok pool fsck p.img
out_has "clean"
es_ok --pool p.img pool fsck --json
json_true "d['ok'] is True and d['problems'] == [] and d['volumes'] == 1"
pass

check "a pool with every label copy destroyed is refused and left unchanged"
es_ok pool create c.img --size 64M
blocks=$(($(stat -c %s c.img) / 4096))
dd if=/dev/urandom of=c.img bs=4096 seek=0 count=2 conv=notrunc status=none
dd if=/dev/urandom of=c.img bs=4096 seek=$((blocks - 2)) count=2 conv=notrunc status=none
sum=$(md5 c.img)
es_fails 1 pool info c.img
err_has "c.img"
es_fails 1 --pool c.img vol list
run pool fsck c.img
((rc == 1)) || fail "pool fsck exited with $rc"
[[ $(md5 c.img) == "$sum" ]] || fail "c.img changed"
pass

check "a file that is not a pool is refused and left unchanged"
head -c $MiB /dev/urandom >r.img
sum=$(md5 r.img)
es_fails 1 pool info r.img
es_fails 1 --pool r.img vol create v --size 1M
[[ $(md5 r.img) == "$sum" ]] || fail "r.img changed"
pass

check "a truncated pool file is refused"
es_ok pool create t.img --size 64M
truncate -s 100K t.img
sum=$(md5 t.img)
es_fails 1 pool info t.img
[[ $(md5 t.img) == "$sum" ]] || fail "t.img changed"
pass

check "a missing pool file is a clear error"
es_fails 1 pool info missing.img
err_has "missing.img"
[[ ! -e missing.img ]] || fail "missing.img was created"
pass

check "encryption and compression options: clear errors, nothing created"
es_fails 1 pool create "$WORK/e.img" --size 1G --encrypt
err_has "needs a pool key"
[[ ! -e $WORK/e.img ]] || fail "a refused pool create left a file"
es_fails 1 --keyfile "$WORK/missing.key" pool create "$WORK/e.img" --size 1G
err_has "cannot use key file"
printf 'short' >"$WORK/bad.key"
es_fails 1 --keyfile "$WORK/bad.key" pool create "$WORK/e.img" --size 1G
[[ ! -e $WORK/e.img ]] || fail "a refused pool create left a file"
es_fails 1 "${P[@]}" vol create z --size 1M --compress gzip
err_has "unknown compression"
es_fails 1 "${P[@]}" vol create z --size 1M --encrypt
err_has "no key"
es_fails 2 "${P[@]}" vol create z --size 1M --encrypt --no-encrypt
pass

check "an encrypted, compressed volume offline: key file, info, wrong key"
head -c 32 /dev/urandom >"$WORK/k"
chmod 600 "$WORK/k"
es_ok --keyfile "$WORK/k" pool create "$WORK/e.img" --size 1G --compress lz4
es_ok --pool "$WORK/e.img" --keyfile "$WORK/k" vol create s --size 8M --encrypt
out_has "encrypted, compression lz4"
yes "edgestor text" | head -c 1048576 >"$WORK/text" || true
es_ok --pool "$WORK/e.img" --keyfile "$WORK/k" vol write s --input "$WORK/text"
es_ok --pool "$WORK/e.img" vol info s --json
json_true "d['encrypted'] and d['compression'] == 'lz4' and d['written_bytes'] == 1048576 and d['allocated_bytes'] < 1048576 // 4"
es_ok --pool "$WORK/e.img" --keyfile "$WORK/k" vol read s --length 1M --output "$WORK/text.back"
same_file "$WORK/text" "$WORK/text.back"
es_fails 1 --pool "$WORK/e.img" vol read s --length 4K
err_has "locked"
head -c 32 /dev/urandom >"$WORK/k2"
chmod 600 "$WORK/k2"
es_fails 1 --pool "$WORK/e.img" --keyfile "$WORK/k2" vol read s --length 4K
err_has "wrong key"
! grep -q -a "edgestor text" "$WORK/e.img" || fail "plaintext found in the pool file"
pass

check "--version and --help"
es_ok --version
out_has "^edgestor [0-9]"
es_ok --help
out_has "pool"
pass

echo "$passed passed, 0 failed"
