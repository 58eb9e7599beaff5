// NBD handshake: the greeting and fixed-newstyle option haggling, up to the
// moment the client enters the transmission phase with an export.
#pragma once

#include <atomic>
#include <cstdint>

#include "base/status.h"
#include "frontend/nbd/nbd_server.h"

namespace edgestor::nbd {

// Block sizes we advertise (NBD_INFO_BLOCK_SIZE). 512-byte requests work
// but a write smaller than 4 KiB takes the engine's synchronous
// read-modify-write path, so 4 KiB is preferred. The minimum binds only
// clients that asked for it (NbdSession::block_sizes_agreed); the engine
// serves any byte range.
inline constexpr uint32_t kMinBlockBytes = 512;
inline constexpr uint32_t kPreferredBlockBytes = 4096;
// Volume::Submit refuses READ/WRITE larger than this; it is also the payload
// size the protocol asks every server to accept.
inline constexpr uint32_t kMaxPayloadBytes = 32u << 20;

// READ/WRITE payload limit for these options, within the bounds above.
uint32_t MaxPayloadBytes(const NbdServerOptions& options);

// What option haggling agreed on.
struct NbdSession {
  Volume* volume = nullptr;  // acquired from the provider; the caller releases it
  uint16_t transmission_flags = 0;
  bool structured_replies = false;
  bool block_status = false;  // base:allocation was selected for this export
  // The client asked for NBD_INFO_BLOCK_SIZE in the NBD_OPT_GO that entered
  // transmission, and so agreed to keep to the sizes we advertised: its
  // requests not aligned to kMinBlockBytes get EINVAL. Any other client
  // (NBD_OPT_EXPORT_NAME, or GO without that request; asking in NBD_OPT_INFO
  // commits to nothing) is served at byte granularity, as the protocol's
  // default block sizes ask.
  bool block_sizes_agreed = false;
  IoStats* io_stats = nullptr;  // also counts this connection's requests (the provider's ExportStats)
};

// Sends the greeting on `fd` and haggles options until the client enters
// transmission (returns the session) or aborts, leaves, stalls or breaks the
// protocol (returns why; no export is held then).
Result<NbdSession> Negotiate(int fd, ExportProvider& provider, const NbdServerOptions& options,
                             const std::atomic<bool>& stopping);

}  // namespace edgestor::nbd
