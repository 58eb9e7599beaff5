// ThinVolume::ClusterRewrite: the state of one asynchronous rewrite of a
// whole cluster (thin_volume_rewrite.cc), shared with the frame packer
// (thin_volume_pack.cc). Private to the volume layer.
#pragma once

#include <cstdint>

#include "base/aligned_buffer.h"
#include "volume/thin_volume.h"

namespace edgestor {

struct ThinVolume::ClusterRewrite {
  IoRequest req;
  ThinVolume* volume = nullptr;
  VolumeIo* io = nullptr;
  IoQueue* queue = nullptr;
  CachedPage* page = nullptr;  // pinned until the swap
  uint64_t cluster = 0;
  uint64_t at = 0, length = 0;  // the request's bytes within the cluster
  const uint8_t* src = nullptr;  // their plaintext, in the request's buffer; null: zeroing
  bool reencode = false;         // decode, merge, compress; else copy blocks as stored
  bool leave_plain = false;      // re-encoding a partial write into a compressed cluster: store it plain
  bool recompress = false;       // no request data: compress a plain cluster left alone (Recompress)
  bool skipped = false;          // recompressing saved nothing: the cluster stays as it is
  format::MapEntry old_entry{};
  BlockRun old_run{};            // {0, 0} if the cluster was unmapped
  uint64_t write_mask = 0;       // blocks the request writes
  uint64_t keep_mask = 0;        // old written blocks it does not
  format::MapEntry new_entry{};  // what the swap stores (phys 0: the cluster reads as zeros)
  // A compressed frame that waits for its place in a pack (thin_volume_pack.cc):
  uint32_t frame_sectors = 0;    // its length; 0: not packed
  uint64_t frame_bits = 0;       // the written bits its entry will carry
  uint64_t pack_sector = 0;      // where the pack's layout put it
  bool encoding = false;         // counted in encoding_ (it may bring a frame to pack)
  PackWrite* pack = nullptr;     // the pack it is in, once closed
  IoRequest close_req;           // the first frame of a pack: its closing, posted to this queue
  IoRequest write_req;           // the pack's write (first frame), or this frame's own
  int write_result = 0;          // how this frame's write ended
  AlignedBuffer buffer;          // one cluster, laid out as the cluster
  AlignedBuffer frame;           // re-encoding: the old frame, then the new one
};

}  // namespace edgestor
