// Aligned, zero-filled heap buffers for device I/O (O_DIRECT needs both the
// address and the length aligned).
#include <cassert>
#include <cstdlib>
#include <cstring>
#include <new>

#include "io/device.h"

namespace edgestor {

void AlignedDeleter::operator()(uint8_t* p) const { std::free(p); }

AlignedBuffer AllocateAligned(size_t len) {
  // Round up so that a whole-buffer O_DIRECT transfer is always legal, and so
  // that a zero-length request still yields a usable, unique pointer.
  size_t rounded = len == 0 ? kIoAlignment : (len + kIoAlignment - 1) / kIoAlignment * kIoAlignment;
  assert(rounded >= len && rounded % kIoAlignment == 0);
  void* p = nullptr;
  if (posix_memalign(&p, kIoAlignment, rounded) != 0) throw std::bad_alloc();
  assert(reinterpret_cast<uintptr_t>(p) % kIoAlignment == 0);
  std::memset(p, 0, rounded);
  return AlignedBuffer(static_cast<uint8_t*>(p));
}

}  // namespace edgestor
