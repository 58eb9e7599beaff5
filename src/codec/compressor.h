// Compressor: per-cluster lz4 / zstd compression with a small frame.
//
// A compressed cluster occupies only the 4 KiB sectors it needs, so
// compression pays only if the result needs at least one sector fewer than
// the cluster; otherwise Compress says "does not fit" (ENOSPC) and the
// caller stores the cluster as is.
//
// Frame (what Compress writes and Decompress reads; little-endian):
//   [0..4)  payload length in bytes
//   [4]     algorithm: 1 = lz4 (block format), 2 = zstd (one frame, with
//           its content size)
//   [5..8)  zero
//   [8..)   payload, then anything (the writer pads the last sector with
//           zeros; the reader ignores the padding)
// The frame makes a compressed extent self-describing: the map needs only
// its sector count, and the exact payload length needed by lz4 is inside.
// There is no checksum here; damage is caught by the checksum codec above
// or, at worst, by the strict parse below.
//
// Decompress parses on-disk data: any malformed, truncated or mismatched
// input gives EUCLEAN, never a crash or a read/write out of bounds.
//
// Threading: a Compressor owns zstd contexts and is not thread-safe; each
// I/O thread owns its own.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "base/status.h"

struct ZSTD_CCtx_s;
struct ZSTD_DCtx_s;

namespace edgestor {

enum class Compression : uint8_t { kOff = 0, kLz4 = 1, kZstd = 2 };

inline constexpr int kZstdMinLevel = 1;
inline constexpr int kZstdMaxLevel = 19;
inline constexpr int kZstdDefaultLevel = 3;
inline constexpr size_t kCompressionSector = 4096;            // allocation unit on disk
inline constexpr size_t kCompressedFrameHeaderBytes = 8;
inline constexpr size_t kMaxCompressionInput = size_t{1} << 20;  // largest cluster we accept

// A pool's or volume's compression choice.
struct CompressionSetting {
  Compression algorithm = Compression::kOff;
  int level = 0;  // zstd only: kZstdMinLevel..kZstdMaxLevel; 0 otherwise
};

// "off", "lz4", "zstd" (level kZstdDefaultLevel) or "zstd:LEVEL" with LEVEL
// in 1..19. EINVAL with a message naming the accepted forms otherwise.
Result<CompressionSetting> ParseCompression(std::string_view text);
// The inverse: "off", "lz4", "zstd:3".
std::string FormatCompression(const CompressionSetting& setting);

class Compressor {
 public:
  // ENOMEM if zstd cannot allocate its contexts.
  static Result<std::unique_ptr<Compressor>> Create();
  ~Compressor();
  Compressor(const Compressor&) = delete;
  Compressor& operator=(const Compressor&) = delete;

  // Compresses `in` (a cluster, at most kMaxCompressionInput bytes) into a
  // frame in `out` and returns the frame's size. ENOSPC ("does not fit") if
  // the frame would not be at least one kCompressionSector smaller than
  // `in` once rounded up to sectors, if it does not fit in `out`, or if the
  // algorithm is kOff; the caller then stores `in` as is. EINVAL for a bad
  // level (zstd) or size. `level` is ignored for lz4. Bytes of `out` past
  // the returned size (and all of `out` after an error) may have been used
  // as scratch: the caller zeroes the padding up to the sector boundary.
  // REQUIRES: `in` and `out` do not overlap.
  Result<size_t> Compress(Compression algorithm, int level, std::span<const uint8_t> in,
                          std::span<uint8_t> out);
  Result<size_t> Compress(const CompressionSetting& setting, std::span<const uint8_t> in,
                          std::span<uint8_t> out) {
    return Compress(setting.algorithm, setting.level, in, out);
  }

  // Decompresses the frame at the start of `in` (the sectors read back,
  // padding included) into exactly out.size() bytes (the cluster size).
  // EUCLEAN ("compressed data is damaged") if the frame is malformed, names
  // another algorithm, or does not decompress to exactly out.size() bytes;
  // `out` is then undefined. EINVAL for kOff, or an `out` of 8 bytes or
  // less or larger than kMaxCompressionInput.
  // With `needed` (1..out.size()), only out[0, needed) must be right: lz4
  // stops decoding there (a 4 KiB read early in a cluster costs a fraction
  // of a full decode), and the length check is then on `needed` only.
  Status Decompress(Compression algorithm, std::span<const uint8_t> in, std::span<uint8_t> out, size_t needed = 0);

 private:
  Compressor(ZSTD_CCtx_s* cctx, ZSTD_DCtx_s* dctx) : cctx_(cctx), dctx_(dctx) {}
  Result<size_t> CompressLz4(std::span<const uint8_t> in, std::span<uint8_t> out);
  Result<size_t> CompressZstd(int level, std::span<const uint8_t> in, std::span<uint8_t> out);

  ZSTD_CCtx_s* cctx_;  // owned
  ZSTD_DCtx_s* dctx_;  // owned
};

}  // namespace edgestor
