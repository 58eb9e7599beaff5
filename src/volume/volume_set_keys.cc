// VolumeSetImpl: keys at work on the volumes. The KeyRing (key_ring.h)
// holds the pool key and wraps and unwraps data keys; here volumes get the
// codecs their keys make, the pool is unlocked, and rekeyed.
#include <cassert>
#include <cerrno>
#include <cstring>

#include "volume/volume_set_impl.h"

namespace edgestor {

void VolumeSetImpl::SetCreatedState(std::optional<PoolKey> key, const format::PoolDefaults& defaults) {
  std::lock_guard lock(mu_);
  key_ring_.SetKey(std::move(key));
  defaults_ = defaults;
}

Status VolumeSetImpl::GiveCodec(ThinVolume& volume, const DataKey* key) {
  const format::VolumeAttributes& a = volume.attributes();
  CompressionSetting compression{static_cast<Compression>(a.compression), a.compression_level};
  ES_ASSIGN_OR_RETURN(std::unique_ptr<VolumeCodec> codec, VolumeCodec::Create(key, compression));
  std::lock_guard lock(volume.mutex());
  assert(volume.codec() == nullptr && "a volume is given its codec once");
  volume.SetCodec(std::move(codec));
  return Status::Ok();
}

Status VolumeSetImpl::UnlockVolumeLocked(ThinVolume& volume) {
  if (volume.codec()) return Status::Ok();
  // Plain volumes get their codec when they are made; only encrypted ones wait for the key.
  assert(volume.attributes().encrypted && key_ring_.unlocked());
  auto key = key_ring_.UnwrapVolumeKey(volume.attributes().wrapped_key);
  if (!key.ok())
    return Status(EUCLEAN, "the data key of volume " + volume.name() + " does not unwrap with the pool key (damaged)");
  return GiveCodec(volume, &key.value());
}

Status VolumeSetImpl::Unlock(const PoolSecret& secret) {
  ES_ASSIGN_OR_RETURN(PoolKey key, key_ring_.DeriveKey(secret));
  std::lock_guard lock(mu_);
  key_ring_.SetKey(std::move(key));
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
  if (key_ring_.locked())
    return Status(EACCES, "pool is locked: give its current key (--keyfile or --passphrase-file) to rekey it");
  ES_ASSIGN_OR_RETURN(auto created, KeyRing::NewKeyProtection(new_secret, kdf));
  auto& [keys, new_key] = created;
  assert(new_key.has_value() && keys.source != format::kKeySourceNone && "a non-empty secret makes a pool key");
  // Rewrap every data key; nothing changes until the checkpoint commits the
  // new label and the new wrapped keys together.
  std::map<ThinVolume*, WrappedKey> rewrapped;
  for (ThinVolume* volume : AllMapsLocked()) {
    if (!volume->attributes().encrypted) continue;
    auto data_key = key_ring_.UnwrapVolumeKey(volume->attributes().wrapped_key);
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
  key_ring_.SetKey(std::move(new_key));
  return Status::Ok();
}

}  // namespace edgestor
