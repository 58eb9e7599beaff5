#include "codec/compressor.h"

#include <lz4.h>
#include <zstd.h>
#include <zstd_errors.h>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <charconv>

namespace edgestor {
namespace {

constexpr size_t kLengthOffset = 0;
constexpr size_t kAlgorithmOffset = 4;

Status Damaged(const char* why) { return Status(EUCLEAN, std::string("compressed data is damaged: ") + why); }

Status DoesNotFit() { return Status(ENOSPC, "compressed cluster would not save a sector; store it as is"); }

void PutHeader(std::span<uint8_t> out, Compression algorithm, size_t payload) {
  assert(out.size() >= kCompressedFrameHeaderBytes && payload <= UINT32_MAX);
  for (size_t i = 0; i < 4; i++) out[kLengthOffset + i] = static_cast<uint8_t>(payload >> (8 * i));
  out[kAlgorithmOffset] = static_cast<uint8_t>(algorithm);
  out[5] = out[6] = out[7] = 0;
}

// The frame's payload, after checking the header against what the caller
// expects; an empty span if the header is bad.
std::span<const uint8_t> Payload(Compression algorithm, std::span<const uint8_t> in, size_t cluster) {
  if (in.size() < kCompressedFrameHeaderBytes) return {};
  size_t length = 0;
  for (size_t i = 0; i < 4; i++) length |= size_t{in[kLengthOffset + i]} << (8 * i);
  if (in[kAlgorithmOffset] != static_cast<uint8_t>(algorithm)) return {};
  if (in[5] != 0 || in[6] != 0 || in[7] != 0) return {};
  // A frame is never larger than its cluster: Compress refuses those.
  if (length == 0 || length > in.size() - kCompressedFrameHeaderBytes ||
      length > cluster - kCompressedFrameHeaderBytes) {
    return {};
  }
  return in.subspan(kCompressedFrameHeaderBytes, length);
}

}  // namespace

Result<CompressionSetting> ParseCompression(std::string_view text) {
  if (text == "off") return CompressionSetting{};
  if (text == "lz4") return CompressionSetting{.algorithm = Compression::kLz4};
  if (text == "zstd") return CompressionSetting{.algorithm = Compression::kZstd, .level = kZstdDefaultLevel};
  constexpr std::string_view kZstdPrefix = "zstd:";
  if (text.starts_with(kZstdPrefix)) {
    std::string_view digits = text.substr(kZstdPrefix.size());
    int level = 0;
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), level);
    if (!digits.empty() && ec == std::errc() && end == digits.data() + digits.size() && level >= kZstdMinLevel &&
        level <= kZstdMaxLevel) {
      return CompressionSetting{.algorithm = Compression::kZstd, .level = level};
    }
    return Status(EINVAL, "bad zstd level in \"" + std::string(text) + "\": use zstd:1 to zstd:19");
  }
  return Status(EINVAL,
                "unknown compression \"" + std::string(text) + "\": use off, lz4, zstd or zstd:LEVEL (1-19)");
}

std::string FormatCompression(const CompressionSetting& setting) {
  switch (setting.algorithm) {
    case Compression::kOff: return "off";
    case Compression::kLz4: return "lz4";
    case Compression::kZstd: return "zstd:" + std::to_string(setting.level);
  }
  return "unknown";
}

Result<std::unique_ptr<Compressor>> Compressor::Create() {
  ZSTD_CCtx* cctx = ZSTD_createCCtx();
  ZSTD_DCtx* dctx = ZSTD_createDCtx();
  if (cctx == nullptr || dctx == nullptr) {
    ZSTD_freeCCtx(cctx);
    ZSTD_freeDCtx(dctx);
    return Status(ENOMEM, "cannot allocate zstd contexts");
  }
  return std::unique_ptr<Compressor>(new Compressor(cctx, dctx));
}

Compressor::~Compressor() {
  ZSTD_freeCCtx(cctx_);
  ZSTD_freeDCtx(dctx_);
}

Result<size_t> Compressor::Compress(Compression algorithm, int level, std::span<const uint8_t> in,
                                    std::span<uint8_t> out) {
  if (in.empty() || in.size() > kMaxCompressionInput) {
    return Status(EINVAL, "compression input must be 1 byte to 1 MiB");
  }
  if (algorithm == Compression::kZstd && (level < kZstdMinLevel || level > kZstdMaxLevel)) {
    return Status(EINVAL, "zstd level must be " + std::to_string(kZstdMinLevel) + " to " +
                              std::to_string(kZstdMaxLevel));
  }
  if (algorithm == Compression::kOff) return DoesNotFit();
  if (algorithm != Compression::kLz4 && algorithm != Compression::kZstd) {
    return Status(EINVAL, "unknown compression algorithm");
  }
  // The largest frame that still saves a sector.
  const size_t sectors = (in.size() + kCompressionSector - 1) / kCompressionSector;
  const size_t limit = std::min((sectors - 1) * kCompressionSector, out.size());
  if (limit <= kCompressedFrameHeaderBytes) return DoesNotFit();

  std::span<uint8_t> frame = out.first(limit);
  std::span<uint8_t> room = frame.subspan(kCompressedFrameHeaderBytes);
  Result<size_t> payload =
      algorithm == Compression::kLz4 ? CompressLz4(in, room) : CompressZstd(level, in, room);
  if (!payload.ok()) return payload.status();
  PutHeader(frame, algorithm, *payload);
  const size_t total = kCompressedFrameHeaderBytes + *payload;
  assert(total <= limit);
  return total;
}

Result<size_t> Compressor::CompressLz4(std::span<const uint8_t> in, std::span<uint8_t> out) {
  int n = LZ4_compress_default(reinterpret_cast<const char*>(in.data()), reinterpret_cast<char*>(out.data()),
                               static_cast<int>(in.size()), static_cast<int>(out.size()));
  if (n <= 0) return DoesNotFit();  // lz4 fails only when the output is too small
  return static_cast<size_t>(n);
}

Result<size_t> Compressor::CompressZstd(int level, std::span<const uint8_t> in, std::span<uint8_t> out) {
  assert(level >= kZstdMinLevel && level <= kZstdMaxLevel);
  // The content size goes into the frame (the default), so Decompress can
  // check it before decompressing.
  size_t r = ZSTD_CCtx_setParameter(cctx_, ZSTD_c_compressionLevel, level);
  if (!ZSTD_isError(r)) r = ZSTD_CCtx_setParameter(cctx_, ZSTD_c_contentSizeFlag, 1);
  if (!ZSTD_isError(r)) r = ZSTD_compress2(cctx_, out.data(), out.size(), in.data(), in.size());
  if (ZSTD_isError(r)) {
    ZSTD_CCtx_reset(cctx_, ZSTD_reset_session_only);
    if (ZSTD_getErrorCode(r) == ZSTD_error_dstSize_tooSmall) return DoesNotFit();
    return Status(EIO, std::string("zstd: ") + ZSTD_getErrorName(r));
  }
  return r;
}

Status Compressor::Decompress(Compression algorithm, std::span<const uint8_t> in, std::span<uint8_t> out,
                              size_t needed) {
  if (algorithm != Compression::kLz4 && algorithm != Compression::kZstd) {
    return Status(EINVAL, "cannot decompress with compression off");
  }
  if (out.size() <= kCompressedFrameHeaderBytes || out.size() > kMaxCompressionInput) {
    return Status(EINVAL, "decompressed size must be more than 8 bytes and at most 1 MiB");
  }
  std::span<const uint8_t> payload = Payload(algorithm, in, out.size());
  if (payload.empty()) return Damaged("bad frame header");

  if (needed > out.size()) return Status(EINVAL, "needed more bytes than the cluster has");
  if (algorithm == Compression::kLz4 && needed != 0 && needed < out.size()) {
    // Decodes at least `needed` bytes; reads only `payload`, writes at most out.size().
    int n = LZ4_decompress_safe_partial(reinterpret_cast<const char*>(payload.data()), reinterpret_cast<char*>(out.data()),
                                        static_cast<int>(payload.size()), static_cast<int>(needed),
                                        static_cast<int>(out.size()));
    if (n < 0) return Damaged("lz4 block does not decode");
    if (static_cast<size_t>(n) < needed) return Damaged("lz4 block is too short");
    return Status::Ok();
  }
  if (algorithm == Compression::kLz4) {
    // Reads only `payload`, writes at most out.size() bytes, whatever the input.
    int n = LZ4_decompress_safe(reinterpret_cast<const char*>(payload.data()), reinterpret_cast<char*>(out.data()),
                                static_cast<int>(payload.size()), static_cast<int>(out.size()));
    if (n < 0) return Damaged("lz4 block does not decode");
    if (static_cast<size_t>(n) != out.size()) return Damaged("lz4 block has the wrong length");
    return Status::Ok();
  }

  // Exactly one zstd frame, filling the payload, declaring the cluster size.
  if (ZSTD_getFrameContentSize(payload.data(), payload.size()) != out.size()) {
    return Damaged("zstd frame has no or the wrong content size");
  }
  if (ZSTD_findFrameCompressedSize(payload.data(), payload.size()) != payload.size()) {
    return Damaged("zstd frame does not fill its payload");
  }
  size_t r = ZSTD_decompressDCtx(dctx_, out.data(), out.size(), payload.data(), payload.size());
  if (ZSTD_isError(r)) {
    ZSTD_DCtx_reset(dctx_, ZSTD_reset_session_only);
    return Damaged("zstd frame does not decode");
  }
  if (r != out.size()) return Damaged("zstd frame has the wrong length");
  return Status::Ok();
}

}  // namespace edgestor
