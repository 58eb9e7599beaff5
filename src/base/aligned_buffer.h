// Aligned, zero-filled heap buffers: what O_DIRECT device I/O needs (the
// address and the length aligned), for the device layer and for front-ends'
// request buffers alike.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace edgestor {

inline constexpr uint32_t kBufferAlignment = 4096;

struct AlignedDeleter {
  void operator()(uint8_t* p) const;
};
using AlignedBuffer = std::unique_ptr<uint8_t[], AlignedDeleter>;
// Returns a zero-filled buffer of `len` bytes aligned to kBufferAlignment.
// Throws std::bad_alloc: for the control path, where sizes are ours.
AlignedBuffer AllocateAligned(size_t len);
// The same without the exception (nullptr when memory is short): for sizes
// a client or guest chose, which must get ENOMEM, not a dead daemon.
AlignedBuffer TryAllocateAligned(size_t len);
// Not zero-filled, nullptr when memory is short: for the data path's
// bounce buffers, which are wholly overwritten before anything reads them.
AlignedBuffer TryAllocateUninitialized(size_t len);

}  // namespace edgestor
