# The data the guest writes across its disk: every 4 KiB block holds 64
# copies of one 64-byte line naming the run's seed and the block's byte
# offset, so a block that lands in the wrong place, or data from another
# run, is recognizable by eye and by tests/guest/verify.py (which builds the
# same bytes independently on the host).
#   awk -v blocks=N -v seed=S -f pattern.awk > FILE
BEGIN {
  for (b = 0; b < blocks; b++) {
    # %012.0f, not %d: busybox awk's %d wraps at 2^31, offsets do not
    line = sprintf("edgestor-guest seed=%s offset=%012.0f ", seed, b * 4096)
    while (length(line) < 63) line = line "."
    line = line "\n"
    block = line line; block = block block; block = block block
    block = block block; block = block block; block = block block
    printf "%s", block
  }
}
