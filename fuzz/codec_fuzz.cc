// Fuzz target for what the codec layer parses from disk: compressed cluster
// frames (lz4 and zstd, 64 KiB clusters), wrapped data keys, passphrase KDF
// records and key files. Each must be accepted or refused with a clean
// Status: never a crash, a hang, or a touch of memory it should not.
//
// The low six bits of the first input byte, modulo 6, pick the mode; the
// rest of the input is the data:
//   0, 1: the data as an lz4 / zstd frame. Bit 7 writes a valid frame header
//         over it (so the bytes reach the decoder) and bit 6 also the zstd
//         frame magic after the header;
//   2, 3: the data XORed over a valid lz4 / zstd frame of a text cluster, so
//         sparse mutations make mostly-valid frames; bit 7 restores the
//         header afterwards;
//   4:    the data XORed over a valid wrapped key, and the data as it is, to
//         UnwrapDataKey; a successful unwrap must give back the original key;
//   5:    the data XORed over a valid KDF record, and the data as it is, to
//         DecodePassphraseKdf; the data to ParsePoolKeyFile.
#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "codec/compressor.h"
#include "codec/key_wrap.h"

namespace edgestor {
namespace {

constexpr size_t kClusterBytes = 64 * 1024;
constexpr size_t kMaxInputBytes = 2 * kClusterBytes;

struct Fixture {
  std::unique_ptr<Compressor> compressor;
  std::vector<uint8_t> frames[2];  // lz4, zstd; padded to whole sectors
  PoolKey pool_key;
  DataKey data_key;
  WrappedKey wrapped{};
  std::array<uint8_t, kKdfRecordBytes> kdf_record{};
};

[[noreturn]] void Fail(const char* what) {
  std::fprintf(stderr, "codec_fuzz: %s\n", what);
  std::abort();
}

const Fixture& GetFixture() {
  static const Fixture* fixture = [] {
    auto* f = new Fixture;
    f->compressor = std::move(Compressor::Create()).value();
    std::string text;
    for (int i = 0; text.size() < kClusterBytes; i++) {
      text += "cluster " + std::to_string(i * 7919 % 1000) + " ok\n";
    }
    std::vector<uint8_t> cluster(text.begin(), text.begin() + kClusterBytes);
    for (int a = 0; a < 2; a++) {
      std::vector<uint8_t> out(kClusterBytes, 0);
      auto size = f->compressor->Compress(a == 0 ? Compression::kLz4 : Compression::kZstd, 3, cluster, out);
      if (!size.ok()) Fail("cannot build the seed frames");
      out.resize((*size + kCompressionSector - 1) / kCompressionSector * kCompressionSector);
      f->frames[a] = std::move(out);
    }
    f->pool_key = std::move(NewPoolKey()).value();
    f->data_key = std::move(NewDataKey()).value();
    f->wrapped = std::move(WrapDataKey(f->pool_key, f->data_key)).value();
    f->kdf_record = EncodePassphraseKdf(std::move(NewPassphraseKdf()).value());
    return f;
  }();
  return *fixture;
}

void PutFrameHeader(std::vector<uint8_t>& frame, Compression algorithm, size_t payload) {
  for (size_t i = 0; i < 4; i++) frame[i] = static_cast<uint8_t>(payload >> (8 * i));
  frame[4] = static_cast<uint8_t>(algorithm);
  frame[5] = frame[6] = frame[7] = 0;
}

void Decompress(Compression algorithm, const std::vector<uint8_t>& frame) {
  static std::vector<uint8_t> out(kClusterBytes);
  Status s = GetFixture().compressor->Decompress(algorithm, frame, out);
  if (!s.ok() && s.code() != EUCLEAN) Fail("Decompress gave an error other than EUCLEAN");
  // A partial decode (a read early in a cluster) of the same bytes.
  size_t needed = 1 + (frame.empty() ? 0 : frame.back()) * 257 % kClusterBytes;
  s = GetFixture().compressor->Decompress(algorithm, frame, out, needed);
  if (!s.ok() && s.code() != EUCLEAN) Fail("partial Decompress gave an error other than EUCLEAN");
}

void XorOver(std::vector<uint8_t>& base, const uint8_t* data, size_t size) {
  for (size_t i = 0; i < size && i < base.size(); i++) base[i] ^= data[i];
}

}  // namespace
}  // namespace edgestor

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace edgestor;
  if (size < 1 || size > kMaxInputBytes) return 0;
  const Fixture& f = GetFixture();
  const int mode = (data[0] & 0x3f) % 6;
  const bool fix_header = (data[0] & 0x80) != 0;
  const bool zstd_magic = (data[0] & 0x40) != 0;
  const uint8_t* rest = data + 1;
  const size_t rest_size = size - 1;
  const Compression algorithms[2] = {Compression::kLz4, Compression::kZstd};

  if (mode == 0 || mode == 1) {
    std::vector<uint8_t> frame(rest, rest + rest_size);
    if (fix_header) {
      if (frame.size() < kCompressedFrameHeaderBytes) frame.resize(kCompressedFrameHeaderBytes);
      PutFrameHeader(frame, algorithms[mode], frame.size() - kCompressedFrameHeaderBytes);
      if (zstd_magic && frame.size() >= kCompressedFrameHeaderBytes + 4) {
        const uint8_t magic[4] = {0x28, 0xb5, 0x2f, 0xfd};
        std::memcpy(frame.data() + kCompressedFrameHeaderBytes, magic, 4);
      }
    }
    Decompress(algorithms[mode], frame);
  } else if (mode == 2 || mode == 3) {
    const std::vector<uint8_t>& seed = f.frames[mode - 2];
    std::vector<uint8_t> frame = seed;
    XorOver(frame, rest, rest_size);
    if (fix_header) std::memcpy(frame.data(), seed.data(), kCompressedFrameHeaderBytes);
    Decompress(algorithms[mode - 2], frame);
  } else if (mode == 4) {
    WrappedKey mutated = f.wrapped;
    for (size_t i = 0; i < rest_size && i < mutated.size(); i++) mutated[i] ^= rest[i];
    auto key = UnwrapDataKey(f.pool_key, mutated);
    if (key.ok() && std::memcmp(key->data(), f.data_key.data(), kDataKeyBytes) != 0) {
      Fail("a mutated wrapped key unwrapped to another key");
    }
    if (!key.ok() && key.status().code() != EACCES) Fail("unwrapping 72 bytes gave an error other than EACCES");
    (void)UnwrapDataKey(f.pool_key, std::span(rest, rest_size));
  } else {
    auto record = f.kdf_record;
    for (size_t i = 0; i < rest_size && i < record.size(); i++) record[i] ^= rest[i];
    (void)DecodePassphraseKdf(record);
    (void)DecodePassphraseKdf(std::span(rest, rest_size));
    (void)ParsePoolKeyFile(std::span(rest, rest_size));
  }
  return 0;
}
