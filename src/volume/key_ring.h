// KeyRing: the pool's key hierarchy at work. A pool key (from a key file or
// a passphrase) wraps one random data key per encrypted volume; the label
// holds a check value wrapped by the pool key, so a wrong key is told apart
// from a right one before anything is decrypted. See codec/key_wrap.h.
//
// Owns the pool key once it is given (absent while the pool is locked or
// has no key). Reads the label's key protection from the pool, never writes
// it: a new one reaches the label through a checkpoint (Rekey).
//
// Locking: no lock of its own. Its owner (VolumeSetImpl) guards the pool key
// with its mu_, as it guards the volumes' codecs: every non-static call but
// DeriveKey REQUIRES that lock. DeriveKey reads only the label (under the
// pool's own lock), so the slow passphrase derivation runs before mu_ is
// taken.
//
// Why separate: what "locked" means and which key wraps which live in one
// place; the engine asks for data keys and never handles the pool key.
#pragma once

#include <optional>
#include <span>
#include <utility>

#include "base/status.h"
#include "codec/key_wrap.h"
#include "codec/secret_bytes.h"
#include "pool/pool.h"
#include "volume/volume_set.h"

namespace edgestor {

class KeyRing {
 public:
  explicit KeyRing(const Pool& pool) : pool_(pool) {}

  KeyRing(const KeyRing&) = delete;
  KeyRing& operator=(const KeyRing&) = delete;

  // Pool creation, or rekey: the key protection for the label and the pool
  // key itself. An empty secret gives no protection and no key.
  static Result<std::pair<KeyProtection, std::optional<PoolKey>>> NewKeyProtection(const PoolSecret& secret,
                                                                                   const ScryptParams& kdf);

  // The pool key `secret` gives, checked against the label. EINVAL if the
  // pool has no key or `secret` is not the kind it wants; EACCES if it is
  // the wrong key. Takes no lock of the owner.
  Result<PoolKey> DeriveKey(const PoolSecret& secret) const;

  // The label holds a key check (key file or passphrase).
  bool pool_has_key() const;
  // The pool key is known: encrypted volumes can be unlocked and created.
  bool unlocked() const { return key_.has_value(); }
  // The pool has a key and it has not been given.
  bool locked() const { return pool_has_key() && !unlocked(); }

  // Takes `key` as the pool key: one DeriveKey or NewKeyProtection gave.
  void SetKey(std::optional<PoolKey> key) { key_ = std::move(key); }

  // A fresh data key for a new encrypted volume, and the same key wrapped
  // for its attributes. REQUIRES: unlocked(). EIO if the RNG or OpenSSL
  // fails.
  Result<std::pair<DataKey, WrappedKey>> NewVolumeKey() const;
  // The data key a volume's attributes hold wrapped. REQUIRES: unlocked().
  // EACCES or EINVAL if it does not unwrap (a damaged wrapped key).
  Result<DataKey> UnwrapVolumeKey(std::span<const uint8_t> wrapped) const;

 private:
  const Pool& pool_;
  std::optional<PoolKey> key_;  // GUARDED_BY(owner's mu_): set once unlocked
};

}  // namespace edgestor
