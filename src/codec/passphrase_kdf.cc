// Pool keys from passphrases: scrypt through OpenSSL, and the stored record
// of its salt and parameters.
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <bit>
#include <cerrno>

#include "codec/key_wrap.h"
#include "codec/openssl_util.h"

namespace edgestor {
namespace {

using codec_internal::OpenSslError;

constexpr uint8_t kKdfIdScrypt = 1;
constexpr size_t kMaxScryptOutput = 64;

// The shape checks shared by CheckScryptParams and Scrypt; `min_n` is the
// floor that only keys we create or read back must meet.
Status CheckShape(const ScryptParams& params, uint64_t min_n) {
  if (!std::has_single_bit(params.n) || params.n < min_n || params.n > kScryptMaxN) {
    return Status(EINVAL, "scrypt N must be a power of two from " + std::to_string(min_n) + " to " +
                              std::to_string(kScryptMaxN));
  }
  if (params.r < 1 || params.r > kScryptMaxR) {
    return Status(EINVAL, "scrypt r must be 1 to " + std::to_string(kScryptMaxR));
  }
  if (params.p < 1 || params.p > kScryptMaxP) {
    return Status(EINVAL, "scrypt p must be 1 to " + std::to_string(kScryptMaxP));
  }
  // n <= 2^20 and r <= 32: no overflow.
  if (128 * params.r * params.n > kScryptMaxMemory) {
    return Status(EINVAL, "scrypt parameters need more than " + std::to_string(kScryptMaxMemory >> 20) +
                              " MiB (128 * r * N)");
  }
  return Status::Ok();
}

void PutLe32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

uint32_t GetLe32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; i++) v |= uint32_t{p[i]} << (8 * i);
  return v;
}

}  // namespace

Status CheckScryptParams(const ScryptParams& params) { return CheckShape(params, kScryptMinN); }

Status Scrypt(std::span<const uint8_t> passphrase, std::span<const uint8_t> salt, const ScryptParams& params,
              std::span<uint8_t> out) {
  ES_RETURN_IF_ERROR(CheckShape(params, 2));
  if (out.empty() || out.size() > kMaxScryptOutput) return Status(EINVAL, "scrypt output must be 1 to 64 bytes");
  // What OpenSSL allocates: V (128 * r * (N + 2)) plus B (128 * r * p).
  const uint64_t need = 128 * uint64_t{params.r} * (params.n + 2) + 128 * uint64_t{params.r} * params.p;
  // OpenSSL takes (const char*, size_t) for the passphrase and
  // (const unsigned char*, size_t) for the salt; empty ones are allowed.
  static const uint8_t kEmpty = 0;
  const uint8_t* pass = passphrase.empty() ? &kEmpty : passphrase.data();
  const uint8_t* salt_bytes = salt.empty() ? &kEmpty : salt.data();
  if (EVP_PBE_scrypt(reinterpret_cast<const char*>(pass), passphrase.size(), salt_bytes, salt.size(), params.n,
                     params.r, params.p, need, out.data(), out.size()) != 1) {
    return OpenSslError("scrypt");
  }
  return Status::Ok();
}

Result<PassphraseKdf> NewPassphraseKdf(const ScryptParams& params) {
  ES_RETURN_IF_ERROR(CheckScryptParams(params));
  PassphraseKdf kdf{.params = params};
  if (RAND_bytes(kdf.salt.data(), static_cast<int>(kdf.salt.size())) != 1) return OpenSslError("RAND_bytes");
  return kdf;
}

Result<PoolKey> DerivePoolKey(std::string_view passphrase, const PassphraseKdf& kdf) {
  if (passphrase.empty()) return Status(EINVAL, "empty passphrase");
  ES_RETURN_IF_ERROR(CheckScryptParams(kdf.params));
  PoolKey key;
  auto pass = std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(passphrase.data()), passphrase.size());
  ES_RETURN_IF_ERROR(Scrypt(pass, kdf.salt, kdf.params, key.span()));
  return key;
}

std::array<uint8_t, kKdfRecordBytes> EncodePassphraseKdf(const PassphraseKdf& kdf) {
  std::array<uint8_t, kKdfRecordBytes> record{};
  record[0] = kKdfIdScrypt;
  record[1] = static_cast<uint8_t>(std::countr_zero(kdf.params.n));
  PutLe32(&record[4], kdf.params.r);
  PutLe32(&record[8], kdf.params.p);
  for (size_t i = 0; i < kKdfSaltBytes; i++) record[16 + i] = kdf.salt[i];
  return record;
}

Result<PassphraseKdf> DecodePassphraseKdf(std::span<const uint8_t> record) {
  if (record.size() != kKdfRecordBytes) return Status(EINVAL, "passphrase KDF record has the wrong size");
  if (record[0] != kKdfIdScrypt) return Status(EINVAL, "unknown passphrase KDF " + std::to_string(record[0]));
  for (size_t i : {2, 3, 12, 13, 14, 15}) {
    if (record[i] != 0) return Status(EINVAL, "passphrase KDF record has non-zero reserved bytes");
  }
  if (record[1] >= 64) return Status(EINVAL, "scrypt log2(N) out of range");
  PassphraseKdf kdf;
  kdf.params = {.n = uint64_t{1} << record[1], .r = GetLe32(&record[4]), .p = GetLe32(&record[8])};
  ES_RETURN_IF_ERROR(CheckScryptParams(kdf.params).WithContext("passphrase KDF record"));
  for (size_t i = 0; i < kKdfSaltBytes; i++) kdf.salt[i] = record[16 + i];
  return kdf;
}

}  // namespace edgestor
