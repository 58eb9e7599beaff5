// Random keys, AES key wrap and key files. The passphrase KDF is in
// passphrase_kdf.cc.
#include "codec/key_wrap.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cassert>
#include <cerrno>

#include "codec/openssl_util.h"

namespace edgestor {
namespace {

using codec_internal::CipherCtxPtr;
using codec_internal::OpenSslError;

constexpr size_t kHalfDataKeyBytes = kDataKeyBytes / 2;
constexpr size_t kMaxKeyFileBytes = 4096;  // a key file is 32..66 bytes; refuse big files early
constexpr int kMaxKeyDraws = 4;            // equal XTS halves: probability 2^-256 per draw

Status RandomBytes(std::span<uint8_t> out) {
  if (RAND_bytes(out.data(), static_cast<int>(out.size())) != 1) return OpenSslError("RAND_bytes");
  return Status::Ok();
}

int HexDigit(uint8_t c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Runs one AES-256 key wrap or unwrap of `in` into `out`; returns the bytes
// written, or -1 if OpenSSL refused (for unwrap: the integrity check).
Result<int> RunKeyWrap(const PoolKey& pool_key, int encrypt, std::span<const uint8_t> in,
                       std::span<uint8_t> out) {
  CipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  if (!ctx) return OpenSslError("EVP_CIPHER_CTX_new");
  EVP_CIPHER_CTX_set_flags(ctx.get(), EVP_CIPHER_CTX_FLAG_WRAP_ALLOW);
  if (EVP_CipherInit_ex2(ctx.get(), EVP_aes_256_wrap(), pool_key.data(), nullptr, encrypt, nullptr) != 1) {
    return OpenSslError("AES-256 key wrap setup");
  }
  // EVP_CipherUpdate may be told the output holds in.size() + 8 bytes.
  assert(out.size() >= in.size() + 8);
  int written = 0;
  if (EVP_CipherUpdate(ctx.get(), out.data(), &written, in.data(), static_cast<int>(in.size())) != 1) {
    ERR_clear_error();
    return -1;
  }
  return written;
}

}  // namespace

void WipeSecret(void* p, size_t size) { OPENSSL_cleanse(p, size); }

Result<DataKey> NewDataKey() {
  DataKey key;
  for (int draw = 0; draw < kMaxKeyDraws; draw++) {
    ES_RETURN_IF_ERROR(RandomBytes(key.span()));
    if (CRYPTO_memcmp(key.data(), key.data() + kHalfDataKeyBytes, kHalfDataKeyBytes) != 0) return key;
  }
  return Status(EIO, "random number generator keeps returning equal key halves");
}

Result<PoolKey> NewPoolKey() {
  PoolKey key;
  ES_RETURN_IF_ERROR(RandomBytes(key.span()));
  return key;
}

Result<WrappedKey> WrapDataKey(const PoolKey& pool_key, const DataKey& data_key) {
  SecretBytes<kWrappedKeyBytes + 8> out;  // room for what OpenSSL may be told
  ES_ASSIGN_OR_RETURN(int written, RunKeyWrap(pool_key, 1, data_key.span(), out.span()));
  if (written != static_cast<int>(kWrappedKeyBytes)) return OpenSslError("AES-256 key wrap");
  WrappedKey wrapped;
  for (size_t i = 0; i < kWrappedKeyBytes; i++) wrapped[i] = out.data()[i];
  return wrapped;
}

Result<DataKey> UnwrapDataKey(const PoolKey& pool_key, std::span<const uint8_t> wrapped) {
  if (wrapped.size() != kWrappedKeyBytes) {
    return Status(EINVAL, "wrapped data key must be " + std::to_string(kWrappedKeyBytes) + " bytes");
  }
  SecretBytes<kWrappedKeyBytes + 8> out;
  ES_ASSIGN_OR_RETURN(int written, RunKeyWrap(pool_key, 0, wrapped, out.span()));
  if (written != static_cast<int>(kDataKeyBytes)) {
    return Status(EACCES, "cannot unwrap the data key: wrong pool key (passphrase or key file) "
                          "or damaged wrapped key");
  }
  return DataKey(std::span<const uint8_t, kDataKeyBytes>(out.data(), kDataKeyBytes));
}

Result<PoolKey> ParsePoolKeyFile(std::span<const uint8_t> contents) {
  constexpr size_t kHexDigits = 2 * kPoolKeyBytes;
  if (contents.size() == kPoolKeyBytes) return PoolKey(contents.first<kPoolKeyBytes>());

  std::span<const uint8_t> text = contents;
  if (text.size() == kHexDigits + 1 && text.back() == '\n') text = text.first(kHexDigits);
  if (text.size() == kHexDigits + 2 && text[kHexDigits] == '\r' && text.back() == '\n') {
    text = text.first(kHexDigits);
  }
  const Status bad(EINVAL, "key file must hold exactly 32 raw bytes or 64 hex digits");
  if (text.size() != kHexDigits) return bad;
  PoolKey key;
  for (size_t i = 0; i < kPoolKeyBytes; i++) {
    int hi = HexDigit(text[2 * i]);
    int lo = HexDigit(text[2 * i + 1]);
    if (hi < 0 || lo < 0) return bad;  // `key` wipes what it holds so far
    key.data()[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return key;
}

Result<PoolKeyFile> ReadPoolKeyFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status(errno, "cannot open key file " + path);
  struct FdCloser {
    int fd;
    ~FdCloser() { ::close(fd); }
  } closer{fd};

  struct stat st;
  if (::fstat(fd, &st) != 0) return Status(errno, "cannot stat key file " + path);
  if (!S_ISREG(st.st_mode)) return Status(EINVAL, "key file " + path + " is not a regular file");
  if (st.st_size > static_cast<off_t>(kMaxKeyFileBytes)) {
    return Status(EINVAL, "key file " + path + " is too large to be a key file");
  }

  SecretBytes<kMaxKeyFileBytes + 1> buf;  // one spare byte detects growth
  size_t used = 0;
  while (used < buf.size()) {
    ssize_t n = ::read(fd, buf.data() + used, buf.size() - used);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status(errno, "cannot read key file " + path);
    if (n == 0) break;
    used += static_cast<size_t>(n);
  }
  if (used > kMaxKeyFileBytes) return Status(EINVAL, "key file " + path + " is too large to be a key file");

  Result<PoolKey> key = ParsePoolKeyFile(std::span<const uint8_t>(buf.data(), used));
  if (!key.ok()) return key.status().WithContext(path);
  return PoolKeyFile{.key = std::move(key).value(),
                     .group_readable = (st.st_mode & S_IRGRP) != 0,
                     .world_readable = (st.st_mode & S_IROTH) != 0};
}

}  // namespace edgestor
