// ThinVolume: packing compressed frames. Rounding every frame up to whole
// 4 KiB blocks wastes about 2 KiB per cluster; instead, the frames of an
// unencrypted compressing volume that are ready at about the same time are
// laid back to back at 512-byte sectors over one allocated run and written
// with one device write (format.h, "Packed frames").
//
// A pack is open while rewrites of the volume are still encoding: a frame
// that comes back from its codec step joins it, and the last rewrite to
// stop encoding (or a frame that fills it) closes it. A lone request's
// frame is therefore written at once, and a stream of whole-cluster writes
// (nbdcopy, imports, fills) gets packs of up to kMaxPackBlocks. The pack is
// written on the queue of its first frame; each frame's rewrite then
// finishes on its own queue (PostForeign), swapping its entry in as any
// rewrite does. A frame whose swap loses a race releases only its own
// sectors: the pool frees a block two frames share with the second one.
//
// Power loss: the pack's blocks are fresh, so a torn pack write damages
// nothing that a durable entry names, and no entry names a frame before its
// write completed (the commit that makes entries durable flushes first).
#include <cassert>
#include <cerrno>
#include <cstring>

#include "volume/cluster_rewrite.h"

namespace edgestor {

using format::kBlockSize;

namespace {
constexpr uint64_t kMaxPackBlocks = 128;  // 512 KiB: about 30 frames of text
constexpr size_t kMaxPackFrames = 64;
// A pack closes once past the limits: one more frame (under 64 blocks) and
// a block of layout gap per frame still fit one run.
static_assert(kMaxPackBlocks + 64 + kMaxPackFrames <= kMaxRunBlocks);
}  // namespace

struct ThinVolume::PackWrite {
  ThinVolume* volume = nullptr;
  std::vector<ClusterRewrite*> frames;
  AlignedBuffer buffer;         // the frames laid out, for a write of several
  bool one_write = false;       // every frame in frames[0]->write_req
  uint32_t writes_pending = 0;  // device writes not yet completed
};

void ThinVolume::BeginEncoding() {
  std::lock_guard lock(pack_mu_);
  encoding_++;
}

// On the thread of `frame`'s queue (if any). The pack is written by the
// owner of its first frame, on that frame's queue: that thread polls it
// until the pack is done, since its own request waits for it. (The thread
// closing the pack may have no frame in it and stop polling its queue.)
void ThinVolume::EndEncoding(ClusterRewrite* frame) {
  std::vector<ClusterRewrite*> closed;  // empty unless this call closes the pack
  {
    std::lock_guard lock(pack_mu_);
    assert(encoding_ > 0);
    encoding_--;
    if (frame != nullptr) {
      assert(frame->frame_sectors > 0 && frame->new_entry.phys_block == 0);
      frame->queue->ExpectForeign(&frame->req);  // its completion, after the pack's write
      pack_.push_back(frame);
      pack_sectors_ += frame->frame_sectors;
    }
    const bool full = format::SectorsToBlocks(pack_sectors_) >= kMaxPackBlocks || pack_.size() >= kMaxPackFrames;
    // While some rewrite still encodes, its frame will come and close the pack.
    const bool closes = !pack_.empty() && (encoding_ == 0 || full);
    if (!closes && frame != nullptr && pack_.size() == 1) {
      // The first frame of a pack another thread may close: its queue
      // expects the closing.
      frame->close_req.context = frame;
      frame->close_req.done = &ThinVolume::OnPackClosed;
      frame->queue->ExpectForeign(&frame->close_req);
    }
    if (closes) {
      closed.swap(pack_);
      pack_sectors_ = 0;
    }
  }
  if (closed.empty()) return;
  ClusterRewrite* first = closed.front();
  auto* pack = new PackWrite{.volume = this, .frames = std::move(closed)};
  first->pack = pack;
  // A frame alone, closed by its own thread (every write at QD1), is
  // written at once; otherwise its first frame's thread writes it.
  if (first == frame) return WritePack(pack, *frame->queue);
  first->queue->PostForeign(&first->close_req, 0);
}

void ThinVolume::OnPackClosed(IoRequest* req, int) {
  auto* first = static_cast<ClusterRewrite*>(req->context);
  first->volume->WritePack(first->pack, *first->queue);
}

// Places each frame after the one before it, at a sector boundary, but
// never two starting in one block (the pool keys a frame by its first
// block) and never spanning as many blocks as a cluster (so it still
// saves a block wherever it lies). Returns the blocks the pack spans.
uint64_t ThinVolume::LayOutPack(std::vector<ClusterRewrite*>& frames) const {
  constexpr uint64_t kPerBlock = format::kSectorsPerBlock;
  uint64_t next = 0;  // first free sector
  for (size_t i = 0; i < frames.size(); i++) {
    ClusterRewrite* frame = frames[i];
    uint64_t start = next;
    const bool shares_first_block = i > 0 && start / kPerBlock == frames[i - 1]->pack_sector / kPerBlock;
    const bool too_long = format::SectorsToBlocks(start % kPerBlock + frame->frame_sectors) >= cluster_blocks_;
    if (shares_first_block || too_long) start = format::SectorsToBlocks(start) * kPerBlock;
    assert(format::SectorsToBlocks(start % kPerBlock + frame->frame_sectors) < cluster_blocks_);
    frame->pack_sector = start;
    next = start + frame->frame_sectors;
  }
  return format::SectorsToBlocks(next);
}

// On the first frame's queue.
void ThinVolume::WritePack(PackWrite* pack, IoQueue& queue) {
  assert(!pack->frames.empty() && &queue == pack->frames.front()->queue);
  if (pack->frames.size() == 1) return WriteFramesAlone(pack, queue);
  const uint64_t blocks = LayOutPack(pack->frames);
  assert(blocks <= kMaxRunBlocks);
  pack->buffer = TryAllocateUninitialized(blocks * kBlockSize);
  if (!pack->buffer) return WriteFramesAlone(pack, queue);  // each from its own buffer
  auto first = pool_.AllocateRun(blocks);
  // No free run this long (a fragmented, nearly full pool): each frame on
  // its own, in whatever space is left.
  if (!first.ok() && first.status().code() == ENOSPC) return WriteFramesAlone(pack, queue);
  if (!first.ok()) return FinishPack(pack, -first.status().code());
  std::vector<BlockRun> runs;
  runs.reserve(pack->frames.size());
  for (ClusterRewrite* frame : pack->frames) {
    runs.push_back(PackedRun(first.value(), frame));
    const BlockRun& run = runs.back();
    frame->new_entry = format::CompressedEntry(run.block, run.count, frame->frame_bits, run.head, run.tail);
  }
  pool_.SharePackedEdges(runs);
  packed_frames_.fetch_add(pack->frames.size(), std::memory_order_relaxed);
  pack->one_write = true;
  SubmitPackWrite(pack, pack->frames.front(), first.value(), blocks, FillPack(pack, blocks), queue);
}

// Each frame in a run of whole blocks of its own (head and tail 0, as
// before packing), written from its own buffer (Compress zeroed its padding).
void ThinVolume::WriteFramesAlone(PackWrite* pack, IoQueue& queue) {
  std::vector<std::pair<ClusterRewrite*, uint64_t>> writes;  // counted before any is submitted
  for (ClusterRewrite* frame : pack->frames) {
    const uint64_t blocks = format::SectorsToBlocks(frame->frame_sectors);
    auto first = pool_.AllocateRun(blocks);
    if (!first.ok()) {
      frame->write_result = -first.status().code();
      continue;
    }
    frame->new_entry = format::CompressedEntry(first.value(), blocks, frame->frame_bits);
    writes.emplace_back(frame, first.value());
  }
  if (writes.empty()) return FinishPack(pack, 0);
  for (auto& [frame, first] : writes)
    SubmitPackWrite(pack, frame, first, format::SectorsToBlocks(frame->frame_sectors), frame->frame.get(), queue);
}

void ThinVolume::SubmitPackWrite(PackWrite* pack, ClusterRewrite* frame, uint64_t first_block, uint64_t blocks,
                                 uint8_t* data, IoQueue& queue) {
  frame->pack = pack;
  pack->writes_pending++;
  IoRequest& req = frame->write_req;
  req.op = IoOp::kWrite;
  req.offset = first_block * kBlockSize;
  req.length = static_cast<uint32_t>(blocks * kBlockSize);
  req.buf = data;
  req.context = frame;
  req.done = &ThinVolume::OnPackWritten;
  queue.Submit(&req);
}

BlockRun ThinVolume::PackedRun(uint64_t first_block, const ClusterRewrite* frame) const {
  constexpr uint64_t kPerBlock = format::kSectorsPerBlock;
  const uint64_t head = frame->pack_sector % kPerBlock;
  const uint64_t count = format::SectorsToBlocks(head + frame->frame_sectors);
  const uint64_t tail = count * kPerBlock - head - frame->frame_sectors;
  assert(count >= 1 && count < cluster_blocks_ && tail < kPerBlock);
  return {first_block + frame->pack_sector / kPerBlock, count, static_cast<uint8_t>(head), static_cast<uint8_t>(tail)};
}

// Copies each frame to its place; the sectors between frames are zeros
// (Compress zeroed each frame's own padding).
uint8_t* ThinVolume::FillPack(PackWrite* pack, uint64_t blocks) {
  uint8_t* out = pack->buffer.get();
  std::memset(out, 0, blocks * kBlockSize);
  for (const ClusterRewrite* frame : pack->frames) {
    assert((frame->pack_sector + frame->frame_sectors) * format::kSectorSize <= blocks * kBlockSize);
    std::memcpy(out + frame->pack_sector * format::kSectorSize, frame->frame.get(),
                frame->frame_sectors * format::kSectorSize);
  }
  return out;
}

void ThinVolume::OnPackWritten(IoRequest* req, int result) {
  auto* frame = static_cast<ClusterRewrite*>(req->context);
  PackWrite* pack = frame->pack;
  assert(pack != nullptr && pack->writes_pending > 0);
  if (pack->one_write) {
    for (ClusterRewrite* each : pack->frames) each->write_result = result;
  } else {
    frame->write_result = result;
  }
  if (--pack->writes_pending == 0) FinishPack(pack, 0);
}

// Each frame's rewrite finishes on its own queue (it expected this), where
// its swap stores the entry or, on an error or a lost race, frees the frame.
// `result`, if an error, is every frame's.
void ThinVolume::FinishPack(PackWrite* pack, int result) {
  assert(result <= 0);
  for (ClusterRewrite* frame : pack->frames)
    frame->queue->PostForeign(&frame->req, result < 0 ? result : frame->write_result);
  delete pack;
}

}  // namespace edgestor
