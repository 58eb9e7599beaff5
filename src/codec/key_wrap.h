// The key hierarchy: random data keys, wrapped by a pool key that comes from
// a passphrase (scrypt) or a key file.
//
//   passphrase --scrypt(salt, N, r, p)--> pool key (32 bytes) ---+
//   key file (32 raw bytes or 64 hex digits) --> pool key -------+
//                                                                |
//   data key (64 random bytes, one per volume family) --AES-KW---+--> 72 bytes
//                                                                    stored in the pool
//
// Rotating the pool key unwraps each data key with the old pool key and
// wraps it with the new one; no data is rewritten.
//
// Wrap mode: AES-256 key wrap (RFC 3394, NIST SP 800-38F "KW"), not AES-GCM.
// KW was designed for exactly this job: wrapping high-entropy keys. It is
// deterministic, so there is no nonce to generate, store or ever reuse; its
// 64-bit integrity check over the whole wrapped key rejects a wrong pool key
// or a damaged blob; and the result is 8 bytes longer than the key (72 bytes)
// against GCM's 28. What KW lacks is associated data; nothing here needs it,
// since a data key is only ever looked up by where it is stored.
//
// All functions are thread-safe (no shared state besides OpenSSL's RNG).
// Errors never contain key material or key-file contents.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "base/status.h"
#include "codec/secret_bytes.h"

namespace edgestor {

// ---- Random keys (OpenSSL RAND_bytes) ----

// A fresh data key whose two XTS halves differ. EIO if the RNG fails.
Result<DataKey> NewDataKey();
// A fresh pool key, for "key file" pools. EIO if the RNG fails.
Result<PoolKey> NewPoolKey();

// ---- Wrapping data keys ----

inline constexpr size_t kWrappedKeyBytes = kDataKeyBytes + 8;
using WrappedKey = std::array<uint8_t, kWrappedKeyBytes>;

// Wraps `data_key` with `pool_key` (AES-256 KW). EIO if OpenSSL fails.
Result<WrappedKey> WrapDataKey(const PoolKey& pool_key, const DataKey& data_key);
// Unwraps. EINVAL if `wrapped` is not kWrappedKeyBytes long; EACCES if the
// integrity check fails: a wrong pool key (wrong passphrase or key file) or
// a damaged wrapped key, which cannot be told apart.
Result<DataKey> UnwrapDataKey(const PoolKey& pool_key, std::span<const uint8_t> wrapped);

// ---- Pool key from a passphrase: scrypt (RFC 7914) ----
//
// scrypt because it is memory-hard and OpenSSL 3.0 (Debian 12) has it;
// Argon2 arrived only in OpenSSL 3.2. Memory per derivation is 128 * r * N
// bytes: 32 MiB with the defaults, about 0.1 s on one core.

struct ScryptParams {
  uint64_t n = uint64_t{1} << 15;  // CPU/memory cost; a power of two
  uint32_t r = 8;                  // block size
  uint32_t p = 1;                  // parallelism
};

// Bounds on parameters we create or accept from disk. The floor keeps a
// damaged or forged record from weakening the KDF; the ceilings keep it
// from making an open exhaust memory or time on a small host.
inline constexpr uint64_t kScryptMinN = uint64_t{1} << 14;
inline constexpr uint64_t kScryptMaxN = uint64_t{1} << 20;
inline constexpr uint32_t kScryptMaxR = 32;
inline constexpr uint32_t kScryptMaxP = 16;
inline constexpr uint64_t kScryptMaxMemory = uint64_t{256} << 20;  // 128 * r * N

// EINVAL unless n is a power of two in [kScryptMinN, kScryptMaxN], r in
// [1, kScryptMaxR], p in [1, kScryptMaxP] and 128 * r * n <= kScryptMaxMemory.
Status CheckScryptParams(const ScryptParams& params);

// Raw scrypt into `out` (1 to 64 bytes). Checks the parameters like
// CheckScryptParams except the floor on n (n > 1 suffices): this is the
// primitive, for known-answer tests. EINVAL for bad parameters or `out`
// size; EIO if OpenSSL fails.
Status Scrypt(std::span<const uint8_t> passphrase, std::span<const uint8_t> salt,
              const ScryptParams& params, std::span<uint8_t> out);

inline constexpr size_t kKdfSaltBytes = 32;

// What a pool stores to derive its key again from the passphrase.
struct PassphraseKdf {
  ScryptParams params;
  std::array<uint8_t, kKdfSaltBytes> salt{};
};

// New KDF settings with a random salt. EINVAL if `params` fail
// CheckScryptParams; EIO if the RNG fails.
Result<PassphraseKdf> NewPassphraseKdf(const ScryptParams& params = {});

// Derives the pool key. EINVAL for an empty passphrase or parameters failing
// CheckScryptParams; EIO if OpenSSL fails.
Result<PoolKey> DerivePoolKey(std::string_view passphrase, const PassphraseKdf& kdf);

// Fixed 48-byte little-endian record of a PassphraseKdf, for the pool to
// store: [0] kdf id (1 = scrypt), [1] log2(n), [2..4) zero, [4..8) r,
// [8..12) p, [12..16) zero, [16..48) salt.
inline constexpr size_t kKdfRecordBytes = 16 + kKdfSaltBytes;
std::array<uint8_t, kKdfRecordBytes> EncodePassphraseKdf(const PassphraseKdf& kdf);
// EINVAL for a wrong size, unknown kdf id, non-zero reserved bytes or
// parameters failing CheckScryptParams.
Result<PassphraseKdf> DecodePassphraseKdf(std::span<const uint8_t> record);

// ---- Pool key from a key file ----

// Accepts exactly 32 raw bytes, or exactly 64 hex digits (either case),
// optionally followed by one "\n" or "\r\n". EINVAL otherwise.
Result<PoolKey> ParsePoolKeyFile(std::span<const uint8_t> contents);

struct PoolKeyFile {
  PoolKey key;
  // Permission warnings for the caller to show; the key is usable anyway.
  bool group_readable = false;
  bool world_readable = false;
};

// Reads and parses a key file. ENOENT/EACCES/... from open(); EINVAL if it
// is not a regular file, is larger than a few KiB, or ParsePoolKeyFile
// refuses its contents.
Result<PoolKeyFile> ReadPoolKeyFile(const std::string& path);

}  // namespace edgestor
