// Blocking socket I/O for a connection's thread, with explicit bounds on how
// long a stalled or vanished peer can hold that thread.
#pragma once

#include <sys/uio.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>

#include "base/status.h"

namespace edgestor::nbd {

inline constexpr int kNoTimeout = -1;
// How often a blocked read looks at the stop flag.
inline constexpr int kStopCheckMs = 200;
// A peer that accepts no reply bytes for this long is treated as gone.
inline constexpr int kSendTimeoutMs = 60'000;

// Makes `fd` blocking and bounds blocking sends by kSendTimeoutMs.
Status ConfigureConnectionSocket(int fd);

// Waits until `fd` is readable (data, end of stream or an error). Errors:
// ETIMEDOUT after `idle_timeout_ms` (kNoTimeout: never), ESHUTDOWN once
// `stopping` is set.
Status WaitReadable(int fd, const std::atomic<bool>& stopping, int idle_timeout_ms);

// Reads exactly `len` bytes. Errors: ENOTCONN if the peer closed the stream,
// ETIMEDOUT if no byte arrived for `idle_timeout_ms` (kNoTimeout: wait
// forever), ESHUTDOWN if `stopping` was set while waiting, else the errno.
Status ReadExact(int fd, void* buf, size_t len, const std::atomic<bool>& stopping, int idle_timeout_ms);
// Reads and drops `len` bytes (an unwanted payload), same errors.
Status Discard(int fd, uint64_t len, const std::atomic<bool>& stopping, int idle_timeout_ms);

// Writes every byte of `parts` in order, without SIGPIPE. ETIMEDOUT if the
// peer took nothing for kSendTimeoutMs.
Status WriteAll(int fd, std::span<const iovec> parts);
Status WriteAll(int fd, const void* buf, size_t len);

// True if a read would not block: data, end of stream or an error is pending.
bool HasInput(int fd);

}  // namespace edgestor::nbd
