#include "volume/volume_codec.h"

#include <cassert>
#include <cerrno>
#include <cstring>

#include "pool/format.h"

namespace edgestor {

using format::kBlockSize;

namespace {

// Returns a borrowed context to its free list when the call ends.
template <typename T, typename List>
class Loan {
 public:
  Loan(std::unique_ptr<T> item, List& list) : item_(std::move(item)), list_(list) {}
  ~Loan() {
    std::lock_guard lock(list_.mu);
    list_.items.push_back(std::move(item_));
  }
  T* operator->() { return item_.get(); }

 private:
  std::unique_ptr<T> item_;
  List& list_;
};

}  // namespace

Result<std::unique_ptr<VolumeCodec>> VolumeCodec::Create(const DataKey* key, CompressionSetting compression) {
  std::unique_ptr<SectorCipher> cipher;
  if (key) {
    ES_ASSIGN_OR_RETURN(cipher, SectorCipher::Create(*key, kXtsSector4096));
  }
  return std::unique_ptr<VolumeCodec>(new VolumeCodec(std::move(cipher), compression));
}

VolumeCodec::VolumeCodec(std::unique_ptr<SectorCipher> cipher, CompressionSetting compression)
    : cipher_(std::move(cipher)),
      algorithm_(static_cast<uint8_t>(compression.algorithm)),
      level_(compression.level) {}

VolumeCodec::~VolumeCodec() = default;

CompressionSetting VolumeCodec::compression() const {
  return {static_cast<Compression>(algorithm_.load(std::memory_order_relaxed)), level_.load(std::memory_order_relaxed)};
}

void VolumeCodec::set_compression(CompressionSetting setting) {
  level_ = setting.level;
  algorithm_ = static_cast<uint8_t>(setting.algorithm);
}

Result<std::unique_ptr<SectorCipher>> VolumeCodec::TakeCipher() {
  {
    std::lock_guard lock(ciphers_.mu);
    if (!ciphers_.items.empty()) {
      auto cipher = std::move(ciphers_.items.back());
      ciphers_.items.pop_back();
      return cipher;
    }
  }
  return cipher_->Clone();
}

Result<std::unique_ptr<Compressor>> VolumeCodec::TakeCompressor() {
  {
    std::lock_guard lock(compressors_.mu);
    if (!compressors_.items.empty()) {
      auto compressor = std::move(compressors_.items.back());
      compressors_.items.pop_back();
      return compressor;
    }
  }
  return Compressor::Create();
}

Status VolumeCodec::Encrypt(uint64_t first_block, std::span<const uint8_t> in, std::span<uint8_t> out) {
  assert(in.size() == out.size() && in.size() % kBlockSize == 0);
  if (!cipher_) {
    if (in.data() != out.data()) std::memcpy(out.data(), in.data(), in.size());
    return Status::Ok();
  }
  ES_ASSIGN_OR_RETURN(auto cipher, TakeCipher());
  Loan loan(std::move(cipher), ciphers_);
  return loan->Encrypt(first_block, in, out);
}

Status VolumeCodec::Decrypt(uint64_t first_block, std::span<uint8_t> buf) {
  assert(buf.size() % kBlockSize == 0);
  if (!cipher_) return Status::Ok();
  ES_ASSIGN_OR_RETURN(auto cipher, TakeCipher());
  Loan loan(std::move(cipher), ciphers_);
  return loan->Decrypt(first_block, buf, buf);
}

Result<uint32_t> VolumeCodec::Compress(std::span<const uint8_t> cluster, std::span<uint8_t> out) {
  assert(cluster.size() % kBlockSize == 0 && out.size() >= cluster.size());
  CompressionSetting setting = compression();
  if (setting.algorithm == Compression::kOff) return Status(ENOSPC, "compression is off");
  ES_ASSIGN_OR_RETURN(auto compressor, TakeCompressor());
  Loan loan(std::move(compressor), compressors_);
  ES_ASSIGN_OR_RETURN(size_t bytes, loan->Compress(setting, cluster, out));
  size_t padded = (bytes + kBlockSize - 1) / kBlockSize * kBlockSize;
  // A frame that saves no block is refused (ENOSPC): it is 1 .. cluster blocks - 1.
  assert(bytes > 0 && padded < cluster.size() && padded <= out.size());
  std::memset(out.data() + bytes, 0, padded - bytes);
  return static_cast<uint32_t>((bytes + format::kSectorSize - 1) / format::kSectorSize);
}

Status VolumeCodec::Decompress(std::span<const uint8_t> stored, std::span<uint8_t> cluster, size_t needed) {
  assert(needed <= cluster.size() && cluster.size() % kBlockSize == 0);
  if (stored.size() < kCompressedFrameHeaderBytes) return Status(EUCLEAN, "compressed data is damaged (short frame)");
  // Byte 4 of the frame names the algorithm (see codec/compressor.h).
  uint8_t algorithm = stored[4];
  if (algorithm != static_cast<uint8_t>(Compression::kLz4) && algorithm != static_cast<uint8_t>(Compression::kZstd))
    return Status(EUCLEAN, "compressed data is damaged (unknown algorithm)");
  ES_ASSIGN_OR_RETURN(auto compressor, TakeCompressor());
  Loan loan(std::move(compressor), compressors_);
  return loan->Decompress(static_cast<Compression>(algorithm), stored, cluster, needed);
}

}  // namespace edgestor
