// VolumeServices: what a ThinVolume needs from the engine that owns it.
//
// The volume set owns the pool, the map cache budget, the committer and the
// codec workers, and hands each volume this bundle when it makes one. A
// volume reports back only through VolumeEvents, so the data path depends
// on these few calls and never on VolumeSetImpl (no include loop inside the
// volume layer).
#pragma once

#include "base/status.h"
#include "pool/pool.h"
#include "volume/codec_pool.h"
#include "volume/committer.h"
#include "volume/thin_map.h"

namespace edgestor {

// Calls a volume makes to its owner. Each is cheap and takes no volume lock:
// the owner may lock its own state (owner -> volume is the lock order, so a
// volume must never hold its mutex while calling these).
class VolumeEvents {
 public:
  // Before each request: EBADF once the pool is closed, EIO once it stopped
  // after a device error.
  virtual Status CheckUsable() const = 0;
  // A request dirtied map pages that were clean: the space kept back for
  // the next checkpoint's metadata grows with them.
  virtual void MapPagesDirtied() = 0;
  // After each request completes: the owner may ask the committer for a
  // checkpoint (journal or dirty pages past their threshold).
  virtual void RequestFinished() = 0;

 protected:
  ~VolumeEvents() = default;
};

struct VolumeServices {
  Pool& pool;
  MapCacheBudget& budget;
  Committer& committer;     // FLUSH and FUA wait here for their group commit
  CodecPool& codec_pool;    // compressed clusters decode and re-encode here
  VolumeEvents& events;
  // Clusters per volume that partial writes may leave plain (see
  // PoolOpenOptions::hot_plain_clusters).
  uint64_t hot_plain_limit = 0;
};

}  // namespace edgestor
