// Small helpers shared by the codec's OpenSSL users. Private to src/codec.
#pragma once

#include <openssl/err.h>
#include <openssl/evp.h>

#include <cerrno>
#include <memory>
#include <string>

#include "base/status.h"

namespace edgestor::codec_internal {

struct CipherCtxDeleter {
  void operator()(EVP_CIPHER_CTX* ctx) const { EVP_CIPHER_CTX_free(ctx); }
};
// EVP_CIPHER_CTX_free wipes the key schedule before releasing it.
using CipherCtxPtr = std::unique_ptr<EVP_CIPHER_CTX, CipherCtxDeleter>;

// An EIO Status for a failed OpenSSL call. Drops OpenSSL's queued error
// records so they do not pile up in the thread's error queue.
inline Status OpenSslError(const char* what) {
  ERR_clear_error();
  return Status(EIO, std::string("OpenSSL: ") + what + " failed");
}

}  // namespace edgestor::codec_internal
