#!/usr/bin/env bash
# Encryption at rest and compression end to end: the CLI's key options, a
# daemon started locked and unlocked over the control socket, real NBD
# clients (qemu-io, nbdcopy, qemu-img) on encrypted and compressed volumes,
# a scan of the raw pool file for plaintext, wrong keys, passphrases and
# rekey. Usage: encryption_test.sh PATH/TO/edgestor
set -uo pipefail

EDGESTOR=$(realpath "$1")
work=$(mktemp -d /tmp/edgestor-encryption-test.XXXXXX)
pool=$work/pool.img
sock=$work/pool.nbd.sock

cleanup() {
  [[ -n $daemon_pid ]] && kill -9 "$daemon_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=tests/lib/daemon.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/daemon.sh"

json_field() {  # json_field VOLUME FIELD: from `vol info --json`
  es vol info "$1" --json | python3 -c "import json,sys; print(json.load(sys.stdin)['$2'])"
}

key=$work/pool.key
head -c 32 /dev/urandom >"$key"
chmod 600 "$key"
wrong=$work/wrong.key
head -c 32 /dev/urandom >"$wrong"
chmod 600 "$wrong"
# 4 MiB of text that compresses well and is easy to find in the raw file:
# one for the encrypted volume, another for the unencrypted one.
make_text() {  # make_text WORD FILE
  python3 -c "
import sys
lines = ''.join('customer %d: %s balance=%d\\n' % (i, sys.argv[1], i * 37 % 1000) for i in range(120000))
open(sys.argv[2], 'w').write(lines[:4 << 20])" "$1" "$2"
}
make_text CONFIDENTIAL-RECORD "$work/text4m"
make_text PUBLIC-RECORD "$work/public4m"

"$EDGESTOR" --keyfile "$key" pool create "$pool" --size 2G >/dev/null || exit 1
check "encrypted + zstd volume created offline" es --keyfile "$key" vol create secret --size 64M --encrypt --compress zstd
check "encrypted volume refused without the key" refuses_saying "locked" es vol create other --size 1M --encrypt

start_daemon || exit 1
pool_is_locked() {
  rpc pool.info | python3 -c "import json,sys; d = json.load(sys.stdin); assert d['locked'] and d['key_source'] == 'key file', d" &&
    rpc vol.info '{"name": "secret"}' | python3 -c "import json,sys; d = json.load(sys.stdin); assert d['locked'] and d['encrypted'], d"
}
check "daemon without a key reports the pool and the volume locked" pool_is_locked
check "a locked encrypted volume is refused to NBD clients, saying how to unlock" refuses_saying "pool unlock" qemu-io -f raw -c "read 0 4k" "$(uri secret)"
check "and to a vhost-user export" refuses_saying "pool unlock" es export vhost secret --socket "$work/secret.vhost.sock"
check "unlock with the wrong key is refused" refuses_saying "wrong key" es --keyfile "$wrong" pool unlock
check "unlock with the right key" es --keyfile "$key" pool unlock
check "and the pool reports itself unlocked" refuses pool_is_locked
check "nbdcopy writes text into the encrypted volume" nbdcopy "$work/text4m" "$(uri secret)"
check "qemu-io writes and reads a pattern" qemu-io -f raw -c 'write -P 0x5c 8M 1M' -c 'read -P 0x5c 8M 1M' -c flush "$(uri secret)"
check "compressed volume through the daemon" es vol create packed --size 64M --compress lz4 --no-encrypt
check "nbdcopy writes text into the compressed volume" nbdcopy "$work/public4m" "$(uri packed)"
check "compressed volume stores text in under half the space" python3 -c "
import json, subprocess, sys
info = json.loads(subprocess.check_output(['$EDGESTOR', '--pool', '$pool', 'vol', 'info', 'packed', '--json']))
print(info)
assert info['written_bytes'] == 4 << 20 and info['allocated_bytes'] * 2 < info['written_bytes'], info
assert info['packed_frames'] > 0, info  # nbdcopy's 256K requests: frames packed at 512-byte sectors"
check "nbdcopy reads the compressed volume back" bash -c "nbdcopy '$(uri packed)' '$work/packed.out' && cmp -n 4194304 '$work/packed.out' '$work/public4m'"
# Small writes into compressed clusters leave those clusters plain (their
# next small writes go in place) until the background compresses them again.
check "qemu-io writes 4K and 8K into compressed clusters and reads them back" qemu-io -f raw \
  -c 'write -P 0xa1 4k 4k' -c 'write -P 0xa2 1028k 8k' -c 'read -P 0xa1 4k 4k' -c 'read -P 0xa2 1028k 8k' -c flush "$(uri packed)"
check "those two clusters are held plain, the other 62 stay compressed" python3 -c "
import json, subprocess
info = json.loads(subprocess.check_output(['$EDGESTOR', '--pool', '$pool', 'vol', 'info', 'packed', '--json']))
assert info['hot_plain_clusters'] == 2 and info['compressed_clusters'] == 62, info"
check "vol set changes compression through the daemon" es vol set packed --compress zstd:9
check "daemon stops cleanly" stop_daemon

check "the raw pool file holds the unencrypted volume's text (the scan works)" grep -q -a "PUBLIC-RECORD" "$pool"
check "but no plaintext of the encrypted volume" refuses grep -q -a "CONFIDENTIAL" "$pool"
check "fsck is clean" es pool fsck

start_daemon --keyfile "$key" -- --recompress-idle 1 || exit 1
check "after a restart, qemu-io writes into a cluster left plain and reads every pattern back" qemu-io -f raw \
  -c 'write -P 0xa3 12k 4k' -c 'read -P 0xa1 4k 4k' -c 'read -P 0xa3 12k 4k' -c 'read -P 0xa2 1028k 8k' -c flush "$(uri packed)"
recompressed() {  # the cluster written after the restart is compressed again once cold
  for _ in $(seq 100); do
    json_field packed recompressed_clusters | grep -qx 1 && return 0
    sleep 0.1
  done
  json_field packed recompressed_clusters
  return 1
}
check "the background compresses it again (serve --recompress-idle 1)" recompressed
check "and the data still reads back" qemu-io -f raw -c 'read -P 0xa1 4k 4k' -c 'read -P 0xa3 12k 4k' "$(uri packed)"
check "packed clusters nobody wrote since read back after the restart" bash -c \
  "nbdcopy '$(uri packed)' '$work/packed2.out' && cmp -n 2097152 -i 2097152 '$work/packed2.out' '$work/public4m' &&
   cmp -n 4096 '$work/packed2.out' '$work/public4m'"
check "restarted with --keyfile, the data reads back" bash -c "nbdcopy '$(uri secret)' '$work/secret.out' && cmp -n 4194304 '$work/secret.out' '$work/text4m'"
check "and the pattern" qemu-io -f raw -c 'read -P 0x5c 8M 1M' "$(uri secret)"
check "daemon stops cleanly" stop_daemon

check "a wrong key file fails the offline open" refuses_saying "wrong key" es --keyfile "$wrong" vol read secret --length 4k
check "rekey to a passphrase" bash -c "printf 'correct horse battery\n' >'$work/pass' && '$EDGESTOR' --keyfile '$key' pool rekey '$pool' --new-passphrase-file '$work/pass'"
check "the old key no longer opens the pool" refuses es --keyfile "$key" vol read secret --length 4k
check "a wrong passphrase is refused" refuses_saying "wrong key" bash -c "printf 'wrong\n' >'$work/badpass' && '$EDGESTOR' --pool '$pool' --passphrase-file '$work/badpass' vol read secret --length 4k"
check "the new passphrase reads the data" bash -c "'$EDGESTOR' --pool '$pool' --passphrase-file '$work/pass' vol read secret --length 4M | cmp - '$work/text4m'"
check "fsck is clean after rekey" es pool fsck

echo "encryption test: $passed passed, $failed failed"
((failed == 0))
