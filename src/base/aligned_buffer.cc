#include <cassert>
#include <cstdlib>
#include <cstring>
#include <new>

#include "base/aligned_buffer.h"

namespace edgestor {

void AlignedDeleter::operator()(uint8_t* p) const { std::free(p); }

namespace {

// Round up so that a whole-buffer O_DIRECT transfer is always legal, and so
// that a zero-length request still yields a usable, unique pointer.
size_t Rounded(size_t len) {
  return len == 0 ? kBufferAlignment : (len + kBufferAlignment - 1) / kBufferAlignment * kBufferAlignment;
}

}  // namespace

AlignedBuffer TryAllocateUninitialized(size_t len) {
  size_t rounded = Rounded(len);
  void* p = nullptr;
  if (rounded < len || posix_memalign(&p, kBufferAlignment, rounded) != 0) return nullptr;
  assert(reinterpret_cast<uintptr_t>(p) % kBufferAlignment == 0);
  return AlignedBuffer(static_cast<uint8_t*>(p));
}

AlignedBuffer TryAllocateAligned(size_t len) {
  AlignedBuffer buffer = TryAllocateUninitialized(len);
  if (buffer) std::memset(buffer.get(), 0, Rounded(len));
  return buffer;
}

AlignedBuffer AllocateAligned(size_t len) {
  AlignedBuffer buffer = TryAllocateAligned(len);
  if (!buffer) throw std::bad_alloc();
  return buffer;
}

}  // namespace edgestor
