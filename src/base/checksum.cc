#include "base/checksum.h"

#include <isa-l/crc.h>

#include <climits>
#include <cassert>

namespace edgestor {

uint32_t Crc32c(const void* data, size_t len, uint32_t seed) {
  assert(len <= INT_MAX);
  return crc32_iscsi(static_cast<unsigned char*>(const_cast<void*>(data)), static_cast<int>(len), seed);
}

}  // namespace edgestor
