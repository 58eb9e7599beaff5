// VolumeSetImpl: the key hierarchy at work. A pool key (from a key file or
// a passphrase) wraps one random data key per encrypted volume; the label
// holds a check value wrapped by the pool key, so a wrong key is told apart
// from a right one before anything is decrypted. See codec/key_wrap.h.
#include <cerrno>
#include <cstring>

#include "volume/volume_set_impl.h"

namespace edgestor {

Result<std::pair<KeyProtection, std::optional<PoolKey>>> VolumeSetImpl::NewKeyProtection(const PoolSecret& secret,
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
  return std::make_pair(std::move(keys), std::optional<PoolKey>(std::move(key)));
}

void VolumeSetImpl::SetCreatedState(std::optional<PoolKey> key, const format::PoolDefaults& defaults) {
  std::lock_guard lock(mu_);
  pool_key_ = std::move(key);
  defaults_ = defaults;
}

Result<PoolKey> VolumeSetImpl::DeriveKey(const PoolSecret& secret) {
  KeyProtection keys = pool_->key_protection();
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

Status VolumeSetImpl::GiveCodec(ThinVolume& volume, const DataKey* key) {
  const format::VolumeAttributes& a = volume.attributes();
  CompressionSetting compression{static_cast<Compression>(a.compression), a.compression_level};
  ES_ASSIGN_OR_RETURN(std::unique_ptr<VolumeCodec> codec, VolumeCodec::Create(key, compression));
  std::lock_guard lock(volume.mutex());
  volume.SetCodec(std::move(codec));
  return Status::Ok();
}

Status VolumeSetImpl::UnlockVolumeLocked(ThinVolume& volume) {
  if (volume.codec()) return Status::Ok();
  auto key = UnwrapDataKey(*pool_key_, volume.attributes().wrapped_key);
  if (!key.ok())
    return Status(EUCLEAN, "the data key of volume " + volume.name() + " does not unwrap with the pool key (damaged)");
  return GiveCodec(volume, &key.value());
}

Status VolumeSetImpl::Unlock(const PoolSecret& secret) {
  ES_ASSIGN_OR_RETURN(PoolKey key, DeriveKey(secret));
  std::lock_guard lock(mu_);
  pool_key_ = std::move(key);
  Status first;
  for (ThinVolume* volume : AllMapsLocked()) {
    Status s = UnlockVolumeLocked(*volume);
    if (first.ok()) first = s;
  }
  return first;
}

Status VolumeSetImpl::Rekey(const PoolSecret& new_secret, const ScryptParams& kdf) {
  if (new_secret.empty()) return Status(EINVAL, "rekey needs a new key file or passphrase");
  std::lock_guard lock(mu_);
  ES_RETURN_IF_ERROR(CheckUsable());
  if (pool_->key_protection().source != format::kKeySourceNone && !pool_key_)
    return Status(EACCES, "pool is locked: give its current key (--keyfile or --passphrase-file) to rekey it");
  ES_ASSIGN_OR_RETURN(auto created, NewKeyProtection(new_secret, kdf));
  auto& [keys, new_key] = created;
  // Rewrap every data key; nothing changes until the checkpoint commits the
  // new label and the new wrapped keys together.
  std::map<ThinVolume*, WrappedKey> rewrapped;
  for (ThinVolume* volume : AllMapsLocked()) {
    if (!volume->attributes().encrypted) continue;
    auto data_key = UnwrapDataKey(*pool_key_, volume->attributes().wrapped_key);
    if (!data_key.ok())
      return Status(EUCLEAN, "the data key of volume " + volume->name() + " does not unwrap (damaged)");
    ES_ASSIGN_OR_RETURN(rewrapped[volume], WrapDataKey(*new_key, data_key.value()));
  }
  std::map<ThinVolume*, format::VolumeAttributes> old;
  for (auto& [volume, wrapped] : rewrapped) {
    std::lock_guard volume_lock(volume->mutex());
    old[volume] = volume->attributes();
    std::memcpy(volume->mutable_attributes().wrapped_key, wrapped.data(), wrapped.size());
  }
  Status s = CheckpointLocked({}, &keys);
  if (!s.ok()) {
    for (auto& [volume, attributes] : old) {
      std::lock_guard volume_lock(volume->mutex());
      volume->mutable_attributes() = attributes;
    }
    return s;
  }
  pool_key_ = std::move(new_key);
  return Status::Ok();
}

}  // namespace edgestor
