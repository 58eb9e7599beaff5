#include "codec/sector_cipher.h"

#include <openssl/crypto.h>

#include <cassert>
#include <cerrno>
#include <cstdint>
#include <functional>

#include "codec/openssl_util.h"

namespace edgestor {
namespace {

constexpr size_t kTweakBytes = 16;
constexpr size_t kHalfKeyBytes = kDataKeyBytes / 2;

using codec_internal::OpenSslError;
using CtxPtr = codec_internal::CipherCtxPtr;

bool Overlap(std::span<const uint8_t> a, std::span<uint8_t> b) {
  std::less<const uint8_t*> lt;
  return lt(a.data(), b.data() + b.size()) && lt(b.data(), a.data() + a.size());
}

Result<CtxPtr> NewKeyedContext(std::span<const uint8_t, kDataKeyBytes> key, int encrypt) {
  CtxPtr ctx(EVP_CIPHER_CTX_new());
  if (!ctx) return OpenSslError("EVP_CIPHER_CTX_new");
  if (EVP_CipherInit_ex2(ctx.get(), EVP_aes_256_xts(), key.data(), nullptr, encrypt, nullptr) != 1) {
    return OpenSslError("AES-256-XTS key setup");
  }
  assert(EVP_CIPHER_CTX_get_key_length(ctx.get()) == static_cast<int>(kDataKeyBytes));
  assert(EVP_CIPHER_CTX_get_iv_length(ctx.get()) == static_cast<int>(kTweakBytes));
  return ctx;
}

}  // namespace

Result<std::unique_ptr<SectorCipher>> SectorCipher::Create(std::span<const uint8_t, kDataKeyBytes> key,
                                                           uint32_t sector_size) {
  if (sector_size != kXtsSector512 && sector_size != kXtsSector4096) {
    return Status(EINVAL, "XTS sector size must be 512 or 4096 bytes");
  }
  if (CRYPTO_memcmp(key.data(), key.data() + kHalfKeyBytes, kHalfKeyBytes) == 0) {
    return Status(EINVAL, "XTS key halves are equal (IEEE 1619 requires two different AES keys)");
  }
  ES_ASSIGN_OR_RETURN(CtxPtr enc, NewKeyedContext(key, 1));
  ES_ASSIGN_OR_RETURN(CtxPtr dec, NewKeyedContext(key, 0));
  return std::unique_ptr<SectorCipher>(new SectorCipher(sector_size, enc.release(), dec.release()));
}

SectorCipher::~SectorCipher() {
  // EVP_CIPHER_CTX_free wipes the key schedules before releasing them.
  EVP_CIPHER_CTX_free(enc_);
  EVP_CIPHER_CTX_free(dec_);
}

Result<std::unique_ptr<SectorCipher>> SectorCipher::Clone() const {
  CtxPtr enc(EVP_CIPHER_CTX_new());
  CtxPtr dec(EVP_CIPHER_CTX_new());
  if (!enc || !dec) return OpenSslError("EVP_CIPHER_CTX_new");
  if (EVP_CIPHER_CTX_copy(enc.get(), enc_) != 1 || EVP_CIPHER_CTX_copy(dec.get(), dec_) != 1) {
    return OpenSslError("EVP_CIPHER_CTX_copy");
  }
  return std::unique_ptr<SectorCipher>(new SectorCipher(sector_size_, enc.release(), dec.release()));
}

Status SectorCipher::Encrypt(uint64_t first_sector, std::span<const uint8_t> in, std::span<uint8_t> out) {
  return Run(enc_, first_sector, in, out);
}

Status SectorCipher::Decrypt(uint64_t first_sector, std::span<const uint8_t> in, std::span<uint8_t> out) {
  return Run(dec_, first_sector, in, out);
}

Status SectorCipher::Run(EVP_CIPHER_CTX* ctx, uint64_t first_sector, std::span<const uint8_t> in,
                         std::span<uint8_t> out) {
  if (in.size() != out.size()) return Status(EINVAL, "XTS input and output sizes differ");
  if (in.empty() || in.size() % sector_size_ != 0) {
    return Status(EINVAL, "XTS buffer is not a whole number of sectors");
  }
  if (in.data() != out.data() && Overlap(in, out)) {
    return Status(EINVAL, "XTS input and output overlap");
  }
  const uint64_t sectors = in.size() / sector_size_;
  if (sectors - 1 > UINT64_MAX - first_sector) return Status(EINVAL, "XTS sector number wraps");

  for (uint64_t k = 0; k < sectors; k++) {
    // The tweak: the sector number as a 128-bit little-endian integer.
    uint8_t tweak[kTweakBytes] = {};
    uint64_t number = first_sector + k;
    for (size_t i = 0; i < sizeof number; i++) tweak[i] = static_cast<uint8_t>(number >> (8 * i));
    // Sets only the tweak: the key schedule stays, nothing is allocated.
    if (EVP_CipherInit_ex2(ctx, nullptr, nullptr, tweak, -1, nullptr) != 1) {
      return OpenSslError("AES-256-XTS tweak setup");
    }
    const size_t offset = k * sector_size_;
    int written = 0;
    if (EVP_CipherUpdate(ctx, out.data() + offset, &written, in.data() + offset,
                         static_cast<int>(sector_size_)) != 1) {
      return OpenSslError("AES-256-XTS");
    }
    assert(written == static_cast<int>(sector_size_));
  }
  return Status::Ok();
}

}  // namespace edgestor
