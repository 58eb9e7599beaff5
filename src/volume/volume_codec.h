// VolumeCodec: what happens to a volume's data between the caller's buffer
// and the device. Compression works on whole clusters, encryption on 4 KiB
// blocks, in that order: compressing ciphertext would gain nothing.
//
// Encryption: AES-256-XTS with the volume family's data key; the tweak of a
// block is its logical 4 KiB block number in the volume (for a compressed
// cluster, the cluster's first logical block plus the block's index in the
// stored frame). Logical tweaks keep ciphertext valid wherever the block is
// stored, so relocation and sharing between a volume and its snapshots
// never need re-encryption.
//
// Threading: all methods are thread-safe. The OpenSSL and zstd contexts are
// not, so the codec keeps a small free list of each and lends one per call
// (a lock around a pop and a push, no allocation once warm).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "base/status.h"
#include "codec/compressor.h"
#include "codec/secret_bytes.h"
#include "codec/sector_cipher.h"

namespace edgestor {

class VolumeCodec {
 public:
  // `key` is the data key (nullptr: no encryption); the codec keeps it only
  // inside OpenSSL contexts.
  static Result<std::unique_ptr<VolumeCodec>> Create(const DataKey* key, CompressionSetting compression);
  ~VolumeCodec();

  bool encrypted() const { return cipher_ != nullptr; }
  CompressionSetting compression() const;
  void set_compression(CompressionSetting setting);
  bool compressing() const { return compression().algorithm != Compression::kOff; }

  // Encrypts whole 4 KiB blocks of `in` into `out` (may be the same
  // buffer); block k uses tweak first_block + k. No-op copy when plain.
  Status Encrypt(uint64_t first_block, std::span<const uint8_t> in, std::span<uint8_t> out);
  // Decrypts whole 4 KiB blocks in place. No-op when plain.
  Status Decrypt(uint64_t first_block, std::span<uint8_t> buf);

  // Compresses a whole cluster into `out` (at least cluster-sized), padded
  // with zeros to whole 4 KiB blocks; returns the frame's length in 512-byte
  // sectors (a packed frame takes only those). ENOSPC when it would not save
  // a block or compression is off: store it plain.
  Result<uint32_t> Compress(std::span<const uint8_t> cluster, std::span<uint8_t> out);
  // Decompresses a stored frame (its blocks as read, after decryption) into
  // exactly cluster.size() bytes. The algorithm is read from the frame, so
  // clusters written before a change of setting still read. EUCLEAN if the
  // frame is damaged.
  // With `needed`, only cluster[0, needed) must be right (see Compressor).
  Status Decompress(std::span<const uint8_t> stored, std::span<uint8_t> cluster, size_t needed = 0);

 private:
  VolumeCodec(std::unique_ptr<SectorCipher> cipher, CompressionSetting compression);
  template <typename T>
  struct FreeList {
    std::mutex mu;
    std::vector<std::unique_ptr<T>> items;
  };
  Result<std::unique_ptr<SectorCipher>> TakeCipher();
  Result<std::unique_ptr<Compressor>> TakeCompressor();

  std::unique_ptr<SectorCipher> cipher_;  // prototype, cloned per thread; null when plain
  std::atomic<uint8_t> algorithm_;
  std::atomic<int> level_;
  FreeList<SectorCipher> ciphers_;
  FreeList<Compressor> compressors_;
};

}  // namespace edgestor
