// Looks for what a device already holds before it is formatted: a file
// system, a partition table or a RAID/LVM member (anything libblkid knows).
#pragma once

#include <string>

#include "base/status.h"
#include "io/device.h"

namespace edgestor {

// Bytes read from each end of the device for the probe: every signature
// libblkid looks for in the formats we care about (file systems, MBR/GPT
// and the backup GPT, LVM, MD, ZFS labels) lies within them.
inline constexpr uint64_t kSignatureProbeBytes = 2ull << 20;

// Ok if libblkid finds nothing; EEXIST naming what it found ("an ext4 file
// system", "a gpt partition table"); other errors if the device cannot be
// read or probed. Reads only the two ends of the device (into a sparse
// memory file of the device's size), so it works on any Device.
Status ProbeForeignSignatures(Device& device);

}  // namespace edgestor
