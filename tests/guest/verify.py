#!/usr/bin/env python3
"""Checks, on the host, a volume image read back after the guest test.

    verify.py IMAGE SIZE SEED DISCARD_OFFSET DISCARD_LENGTH

Expects exactly what tests/guest/init.sh left on its disk: the pattern of
tests/guest/pattern.awk over the whole volume (built again here, in Python,
so a generator bug cannot hide on both sides), with the discarded range
reading as zeros. A wrong block is described by what it holds: another
block's pattern (misplaced), another run's pattern (stale), zeros (lost),
or something else.
"""
import re
import sys

BLOCK = 4096
LINE = re.compile(rb"edgestor-guest seed=(\w+) offset=(\d{12}) ")


def expected_block(seed, offset):
    line = b"edgestor-guest seed=%s offset=%012d " % (seed, offset)
    line = line.ljust(63, b".") + b"\n"
    return line * (BLOCK // len(line))


def describe(data):
    if data == bytes(len(data)):
        return "zeros"
    m = LINE.match(data)
    if m:
        return "the pattern of seed %s for offset %d" % (m.group(1).decode(), int(m.group(2)))
    return "other data: %r..." % data[:48]


def main():
    image, size, seed, discard_offset, discard_length = sys.argv[1:]
    size, discard_offset, discard_length = int(size), int(discard_offset), int(discard_length)
    seed = seed.encode()
    zeros = bytes(BLOCK)
    with open(image, "rb") as f:
        data = f.read()
    if len(data) != size:
        print("verify: the volume holds %d bytes, expected %d" % (len(data), size))
        return 1
    bad = 0
    for offset in range(0, size, BLOCK):
        discarded = discard_offset <= offset < discard_offset + discard_length
        want = zeros if discarded else expected_block(seed, offset)
        got = data[offset:offset + BLOCK]
        if got != want:
            if bad < 10:
                print("verify: block at offset %d: expected %s, found %s"
                      % (offset, describe(want), describe(got)))
            bad += 1
    if bad:
        print("verify: %d of %d blocks differ" % (bad, size // BLOCK))
        return 1
    print("verify: all %d blocks as the guest wrote them (%d discarded bytes read as zeros)"
          % (size // BLOCK, discard_length))
    return 0


if __name__ == "__main__":
    sys.exit(main())
