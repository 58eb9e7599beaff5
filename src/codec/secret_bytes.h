// SecretBytes<N>: a fixed-size buffer of key material that wipes itself.
//
// Keys live only in these (and inside OpenSSL's contexts, which wipe their
// own key schedules when freed). A SecretBytes is move-only: a move copies
// the bytes and wipes the source, so no stray copy outlives its owner. There
// is deliberately no way to print one.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>

namespace edgestor {

// Overwrites `size` bytes at `p` with zeros in a way the compiler may not
// elide (OPENSSL_cleanse).
void WipeSecret(void* p, size_t size);

template <size_t N>
class SecretBytes {
 public:
  static constexpr size_t kSize = N;

  SecretBytes() = default;
  // Copies `bytes`; the caller wipes its own copy.
  explicit SecretBytes(std::span<const uint8_t, N> bytes) {
    for (size_t i = 0; i < N; i++) bytes_[i] = bytes[i];
  }
  ~SecretBytes() { WipeSecret(bytes_.data(), N); }

  SecretBytes(const SecretBytes&) = delete;
  SecretBytes& operator=(const SecretBytes&) = delete;
  SecretBytes(SecretBytes&& other) noexcept : bytes_(other.bytes_) { other.Wipe(); }
  SecretBytes& operator=(SecretBytes&& other) noexcept {
    if (this != &other) {
      bytes_ = other.bytes_;
      other.Wipe();
    }
    return *this;
  }

  void Wipe() { WipeSecret(bytes_.data(), N); }

  uint8_t* data() { return bytes_.data(); }
  const uint8_t* data() const { return bytes_.data(); }
  static constexpr size_t size() { return N; }
  std::span<uint8_t, N> span() { return std::span<uint8_t, N>(bytes_); }
  std::span<const uint8_t, N> span() const { return std::span<const uint8_t, N>(bytes_); }

 private:
  std::array<uint8_t, N> bytes_{};
};

// The two kinds of key in the hierarchy (see key_wrap.h).
inline constexpr size_t kDataKeyBytes = 64;  // AES-256-XTS: two AES-256 keys
inline constexpr size_t kPoolKeyBytes = 32;  // AES-256 key-wrapping key
using DataKey = SecretBytes<kDataKeyBytes>;
using PoolKey = SecretBytes<kPoolKeyBytes>;

}  // namespace edgestor
