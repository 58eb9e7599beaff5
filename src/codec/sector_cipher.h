// SectorCipher: AES-256-XTS encryption of fixed-size data units (sectors).
//
// XTS (IEEE 1619, NIST SP 800-38E) through OpenSSL's EVP interface, which
// uses AES-NI where the CPU has it. The 64-byte key is two AES-256 keys: the
// first encrypts the data, the second the tweak. The tweak of a sector is
// its sector number as a 16-byte little-endian integer (dm-crypt's
// "plain64", and the data unit sequence number of IEEE 1619), so the same
// plaintext at two sectors gives unrelated ciphertexts.
//
// XTS gives confidentiality only: it detects no tampering, and equal
// plaintext written again at the same sector gives equal ciphertext.
//
// Threading: a SectorCipher holds mutable OpenSSL contexts and is not
// thread-safe. Each I/O thread owns its own; Clone() makes another from the
// same key without the caller keeping the key around.
#pragma once

#include <cstdint>
#include <memory>
#include <span>

#include "base/status.h"
#include "codec/secret_bytes.h"

struct evp_cipher_ctx_st;  // OpenSSL's EVP_CIPHER_CTX

namespace edgestor {

// Data unit sizes a SectorCipher accepts.
inline constexpr uint32_t kXtsSector512 = 512;
inline constexpr uint32_t kXtsSector4096 = 4096;

class SectorCipher {
 public:
  // `key` is key1 (data) followed by key2 (tweak). EINVAL if the two halves
  // are equal (IEEE 1619 and OpenSSL forbid it) or `sector_size` is not 512
  // or 4096; EIO if OpenSSL fails. The cipher keeps no copy of `key`
  // outside OpenSSL's contexts.
  static Result<std::unique_ptr<SectorCipher>> Create(std::span<const uint8_t, kDataKeyBytes> key,
                                                      uint32_t sector_size);
  static Result<std::unique_ptr<SectorCipher>> Create(const DataKey& key, uint32_t sector_size) {
    return Create(key.span(), sector_size);
  }
  ~SectorCipher();
  SectorCipher(const SectorCipher&) = delete;
  SectorCipher& operator=(const SectorCipher&) = delete;

  // A second cipher with the same key and sector size, for another thread.
  Result<std::unique_ptr<SectorCipher>> Clone() const;

  // Encrypts `in` into `out`: sector k of the buffer (k = 0, 1, ...) uses
  // tweak `first_sector + k`. REQUIRES: in.size() == out.size(), a non-zero
  // multiple of sector_size(); `in` and `out` are the same buffer or do not
  // overlap; the sector numbers do not wrap past 2^64. Otherwise EINVAL and
  // `out` is untouched. EIO if OpenSSL fails (then `out` is undefined).
  // No allocation.
  Status Encrypt(uint64_t first_sector, std::span<const uint8_t> in, std::span<uint8_t> out);
  // The inverse of Encrypt, with the same requirements.
  Status Decrypt(uint64_t first_sector, std::span<const uint8_t> in, std::span<uint8_t> out);

  uint32_t sector_size() const { return sector_size_; }

 private:
  SectorCipher(uint32_t sector_size, evp_cipher_ctx_st* enc, evp_cipher_ctx_st* dec)
      : sector_size_(sector_size), enc_(enc), dec_(dec) {}
  Status Run(evp_cipher_ctx_st* ctx, uint64_t first_sector, std::span<const uint8_t> in,
             std::span<uint8_t> out);

  uint32_t sector_size_;
  evp_cipher_ctx_st* enc_;  // owned; keyed for encryption
  evp_cipher_ctx_st* dec_;  // owned; keyed for decryption
};

}  // namespace edgestor
