// KeyRing: pool keys from secrets, data keys wrapped and unwrapped.
#include "volume/key_ring.h"

#include <cassert>
#include <cerrno>

namespace edgestor {

Result<std::pair<KeyProtection, std::optional<PoolKey>>> KeyRing::NewKeyProtection(const PoolSecret& secret,
                                                                                   const ScryptParams& kdf) {
  KeyProtection keys;
  if (secret.empty()) return std::make_pair(std::move(keys), std::optional<PoolKey>());
  PoolKey key;
  if (secret.key) {
    keys.source = format::kKeySourceKeyFile;
    key = PoolKey(secret.key->span());
  } else {
    keys.source = format::kKeySourcePassphrase;
    ES_ASSIGN_OR_RETURN(PassphraseKdf settings, NewPassphraseKdf(kdf));
    keys.kdf = EncodePassphraseKdf(settings);
    ES_ASSIGN_OR_RETURN(key, DerivePoolKey(secret.passphrase, settings));
  }
  ES_ASSIGN_OR_RETURN(DataKey check, NewDataKey());
  ES_ASSIGN_OR_RETURN(keys.key_check, WrapDataKey(key, check));
  assert(keys.source == format::kKeySourceKeyFile || keys.source == format::kKeySourcePassphrase);
  return std::make_pair(std::move(keys), std::optional<PoolKey>(std::move(key)));
}

Result<PoolKey> KeyRing::DeriveKey(const PoolSecret& secret) const {
  KeyProtection keys = pool_.key_protection();
  PoolKey key;
  switch (keys.source) {
    case format::kKeySourceNone:
      return Status(EINVAL, "pool has no key: it was created without --keyfile or --passphrase (add one with "
                            "`edgestor pool rekey`)");
    case format::kKeySourceKeyFile:
      if (!secret.key) return Status(EINVAL, "pool is protected by a key file; give --keyfile");
      key = PoolKey(secret.key->span());
      break;
    default: {
      // Open refused any other source (CheckLabelGeometry).
      assert(keys.source == format::kKeySourcePassphrase);
      if (secret.passphrase.empty()) return Status(EINVAL, "pool is protected by a passphrase; give --passphrase-file");
      ES_ASSIGN_OR_RETURN(PassphraseKdf kdf, DecodePassphraseKdf(keys.kdf));
      ES_ASSIGN_OR_RETURN(key, DerivePoolKey(secret.passphrase, kdf));
    }
  }
  auto check = UnwrapDataKey(key, keys.key_check);
  if (!check.ok() && check.status().code() == EACCES)
    return Status(EACCES, "wrong key: the pool key does not match (nothing was changed)");
  if (!check.ok()) return check.status();
  return key;
}

bool KeyRing::pool_has_key() const { return pool_.key_protection().source != format::kKeySourceNone; }

Result<std::pair<DataKey, WrappedKey>> KeyRing::NewVolumeKey() const {
  assert(key_ && "a volume key needs the pool key");
  ES_ASSIGN_OR_RETURN(DataKey data_key, NewDataKey());
  ES_ASSIGN_OR_RETURN(WrappedKey wrapped, WrapDataKey(*key_, data_key));
  return std::make_pair(std::move(data_key), wrapped);
}

Result<DataKey> KeyRing::UnwrapVolumeKey(std::span<const uint8_t> wrapped) const {
  assert(key_ && "unwrapping needs the pool key");
  assert(wrapped.size() == format::kWrappedKeyBytes);
  return UnwrapDataKey(*key_, wrapped);
}

}  // namespace edgestor
