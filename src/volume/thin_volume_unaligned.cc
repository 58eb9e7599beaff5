// ThinVolume: requests not aligned to 4 KiB (NBD clients that agreed to no
// block size send them, and any client may pass an unaligned buffer). Each
// becomes aligned parts on a bounce buffer, submitted through the ordinary
// asynchronous data path, so copy-on-write, compression, packing and
// map-page loading work for it as for any request:
//
//   read         the range widened to whole blocks, then copied out;
//   write, zero  with partial blocks at either end: those blocks are read,
//                the request's bytes (or zeros) merged in, and the widened
//                range written back. A zeroing request zeroes its whole
//                blocks as such (a discard stays a discard), and an edge
//                block left all zeros too (no space for zeros).
//
// A read-modify-write must not lose a concurrent write to the other bytes
// of its partial blocks (two 512-byte writes into one block, say). From
// before its read until its write is done it holds a gate over the clusters
// of its widened range:
//
//   * the gate is granted once the I/O already in flight on those clusters
//     has finished (OnClusterIdleLocked);
//   * parts of other requests (reads too, so a stream of them cannot keep
//     the gate from being granted) that reach a gated cluster park off
//     their thread and start again on their queue once the gate goes;
//   * gates never overlap: an unaligned write whose range overlaps one
//     waits in arrival order, so a gate's own parts never park.
//
// No step holds the volume mutex across device I/O; only the gated
// clusters wait, the rest of the volume goes on.
#include <algorithm>
#include <cassert>
#include <cerrno>
#include <cstring>
#include <iterator>
#include <memory>

#include "volume/cluster_bits.h"
#include "volume/thin_volume.h"

namespace edgestor {

using format::kBlockSize;

struct ThinVolume::UnalignedIo {
  ThinVolume* volume = nullptr;
  VolumeIo* io = nullptr;  // the client's request
  IoQueue* queue = nullptr;
  uint64_t lo = 0, hi = 0;  // the request widened to whole blocks
  uint64_t first_cluster = 0, end_cluster = 0;  // the clusters of [lo, hi)
  bool gated = false;    // a read-modify-write: holds, or waits for, a gate
  bool granted = false;  // no I/O but its own in flight under its gate
  AlignedBuffer buffer;  // the bytes of [lo, hi)
  VolumeIo parts[3];     // one step's aligned requests
  uint32_t parts_used = 0;
  uint32_t pending = 0;  // parts in flight, plus a guard while submitting
  int error = 0;         // the first part's error
  void (ThinVolume::*next)(UnalignedIo*) = nullptr;  // runs when the parts are done
  IoRequest resume;                  // the gate granted: posted to `queue`
  std::vector<ParkedPart*> parked;   // parts of other requests waiting for the gate

  // The partial blocks at either end: [lo, lo+4K) and [hi-4K, hi); a
  // request inside one block has only `head`.
  bool head() const { return io->offset % kBlockSize != 0; }
  bool tail() const { return (io->offset + io->length) % kBlockSize != 0 && (!head() || hi - lo > kBlockSize); }
};

// A part [at, at+n) of `cluster` of a request, waiting for a gate to go.
struct ThinVolume::ParkedPart {
  IoRequest req;
  ThinVolume* volume = nullptr;
  VolumeIo* io = nullptr;
  uint64_t cluster = 0, at = 0, n = 0;
};

namespace {

bool Overlap(uint64_t a_first, uint64_t a_end, uint64_t b_first, uint64_t b_end) {
  return a_first < b_end && b_first < a_end;
}

}  // namespace

void ThinVolume::SubmitUnaligned(VolumeIo* io, IoQueue& queue) {
  assert(io->op != VolumeOp::kFlush && !IsAsynchronous(*io));
  if (io->length == 0) return Complete(io);
  auto rmw = std::make_unique<UnalignedIo>();
  rmw->volume = this;
  rmw->io = io;
  rmw->queue = &queue;
  rmw->lo = io->offset / kBlockSize * kBlockSize;
  rmw->hi = (io->offset + io->length + kBlockSize - 1) / kBlockSize * kBlockSize;
  rmw->first_cluster = rmw->lo / cluster_size_;
  rmw->end_cluster = (rmw->hi + cluster_size_ - 1) / cluster_size_;
  rmw->buffer = TryAllocateUninitialized(rmw->hi - rmw->lo);  // filled by reads or the request
  if (!rmw->buffer) {
    io->progress.error = ENOMEM;
    return Complete(io);
  }
  rmw->resume.context = rmw.get();
  rmw->resume.done = &ThinVolume::OnGateGranted;
  const bool partial_ends = io->offset % kBlockSize != 0 || (io->offset + io->length) % kBlockSize != 0;
  if (io->op == VolumeOp::kRead || !partial_ends) return StartUnalignedParts(rmw.release());
  // Partial blocks: a read-modify-write under a gate.
  unaligned_writes_.fetch_add(1, std::memory_order_relaxed);
  rmw->gated = true;
  bool granted;
  {
    std::lock_guard lock(mu_);
    granted = AcquireGateLocked(rmw.get());
  }
  UnalignedIo* started = rmw.release();  // owned by its steps from here
  if (granted) ReadEdges(started);
}

// A read, or a write whose only misalignment is its buffer: one part.
void ThinVolume::StartUnalignedParts(UnalignedIo* rmw) {
  VolumeIo* io = rmw->io;
  assert(!rmw->gated && (io->op == VolumeOp::kRead || io->op == VolumeOp::kWrite));
  rmw->pending = 1;
  rmw->parts_used = 0;
  rmw->next = &ThinVolume::FinishUnaligned;
  if (io->op == VolumeOp::kWrite) std::memcpy(rmw->buffer.get(), io->buf, io->length);
  SubmitPart(rmw, io->op, rmw->lo, rmw->hi - rmw->lo, rmw->buffer.get());
  PartFinished(rmw, 0);  // the guard
}

// Submits an aligned part of `rmw` through the data path. The client's
// request was validated; the widened range may reach past the volume's
// size into its last block, which the map has.
void ThinVolume::SubmitPart(UnalignedIo* rmw, VolumeOp op, uint64_t offset, uint64_t length, uint8_t* buf) {
  assert(rmw->parts_used < std::size(rmw->parts));
  assert(offset % kBlockSize == 0 && length % kBlockSize == 0 && length > 0);
  assert(offset >= rmw->lo && offset + length <= rmw->hi);
  VolumeIo* part = &rmw->parts[rmw->parts_used++];
  *part = VolumeIo{};
  part->op = op;
  part->offset = offset;
  part->length = length;
  part->buf = buf;
  part->done = &ThinVolume::OnPartDone;
  part->context = rmw;
  part->progress.volume = this;
  part->progress.queue = rmw->queue;
  part->progress.gate_owner = rmw->gated ? rmw : nullptr;
  rmw->pending++;
  {
    std::lock_guard lock(mu_);
    inflight_ios_++;  // Finish counts it out
  }
  assert(IsAsynchronous(*part));
  if (ParkOnUncachedPage(part, *rmw->queue, offset / cluster_size_)) return;
  SubmitAsynchronous(part, *rmw->queue);
}

void ThinVolume::OnPartDone(VolumeIo* part, const Status& status) {
  PartFinished(static_cast<UnalignedIo*>(part->context), status.code());
}

void ThinVolume::PartFinished(UnalignedIo* rmw, int error) {
  if (error != 0 && rmw->error == 0) rmw->error = error;
  assert(rmw->pending > 0);
  if (--rmw->pending == 0) (rmw->volume->*rmw->next)(rmw);
}

// The gate is granted: read the partial blocks at either end (one, if the
// request lies inside a block).
void ThinVolume::ReadEdges(UnalignedIo* rmw) {
  assert(rmw->gated && rmw->granted);
  const bool head = rmw->head(), tail = rmw->tail();
  assert(head || tail);
  rmw->pending = 1;
  rmw->parts_used = 0;
  rmw->next = &ThinVolume::WriteMerged;
  if (head) SubmitPart(rmw, VolumeOp::kRead, rmw->lo, kBlockSize, rmw->buffer.get());
  if (tail) SubmitPart(rmw, VolumeOp::kRead, rmw->hi - kBlockSize, kBlockSize, rmw->buffer.get() + (rmw->hi - kBlockSize - rmw->lo));
  PartFinished(rmw, 0);
}

// The partial blocks are read: merge the request in and write the widened
// range back.
void ThinVolume::WriteMerged(UnalignedIo* rmw) {
  if (rmw->error != 0) return FinishUnaligned(rmw);
  const VolumeIo& io = *rmw->io;
  uint8_t* at = rmw->buffer.get() + (io.offset - rmw->lo);
  if (io.op == VolumeOp::kWrite) std::memcpy(at, io.buf, io.length);
  else std::memset(at, 0, io.length);
  rmw->pending = 1;
  rmw->parts_used = 0;
  rmw->next = &ThinVolume::FinishUnaligned;
  if (io.op == VolumeOp::kWrite) {
    SubmitPart(rmw, VolumeOp::kWrite, rmw->lo, rmw->hi - rmw->lo, rmw->buffer.get());
    return PartFinished(rmw, 0);
  }
  // Zeroing: the edge blocks are written merged (or zeroed, if nothing else
  // is left in them); the whole blocks between are zeroed as asked.
  const bool head = rmw->head(), tail = rmw->tail();
  auto edge = [&](uint64_t block_offset) {
    uint8_t* bytes = rmw->buffer.get() + (block_offset - rmw->lo);
    if (IsAllZero(bytes, kBlockSize)) SubmitPart(rmw, io.op, block_offset, kBlockSize, nullptr);
    else SubmitPart(rmw, VolumeOp::kWrite, block_offset, kBlockSize, bytes);
  };
  uint64_t middle_lo = rmw->lo + (head ? kBlockSize : 0);
  uint64_t middle_hi = rmw->hi - (tail ? kBlockSize : 0);
  if (head) edge(rmw->lo);
  if (middle_lo < middle_hi) SubmitPart(rmw, io.op, middle_lo, middle_hi - middle_lo, nullptr);
  if (tail) edge(rmw->hi - kBlockSize);
  PartFinished(rmw, 0);
}

void ThinVolume::FinishUnaligned(UnalignedIo* rmw) {
  VolumeIo* io = rmw->io;
  if (rmw->error == 0 && io->op == VolumeOp::kRead)
    std::memcpy(io->buf, rmw->buffer.get() + (io->offset - rmw->lo), io->length);
  if (rmw->gated) ReleaseGate(rmw);
  io->progress.error = rmw->error;
  delete rmw;
  Complete(io);
}

// ---- Gates ----

bool ThinVolume::AcquireGateLocked(UnalignedIo* rmw) {
  assert(rmw->gated && !rmw->granted);
  auto overlaps = [rmw](const UnalignedIo* other) {
    return Overlap(rmw->first_cluster, rmw->end_cluster, other->first_cluster, other->end_cluster);
  };
  if (std::any_of(gates_.begin(), gates_.end(), overlaps) ||
      std::any_of(gate_queue_.begin(), gate_queue_.end(), overlaps)) {
    rmw->queue->ExpectForeign(&rmw->resume);  // posted once it is granted
    gate_queue_.push_back(rmw);
    return false;
  }
  gates_.push_back(rmw);
  if (map_.Idle(rmw->first_cluster, rmw->end_cluster)) {
    rmw->granted = true;
    return true;
  }
  rmw->queue->ExpectForeign(&rmw->resume);
  return false;
}

// REQUIRES: mu_ held; `rmw`'s gate installed. Grants it if nothing of
// others is in flight under it any more.
void ThinVolume::GrantIfIdleLocked(UnalignedIo* rmw) {
  if (rmw->granted || !map_.Idle(rmw->first_cluster, rmw->end_cluster)) return;
  rmw->granted = true;
  rmw->queue->PostForeign(&rmw->resume, 0);
}

void ThinVolume::OnGateGranted(IoRequest* req, int result) {
  assert(result == 0);
  (void)result;
  auto* rmw = static_cast<UnalignedIo*>(req->context);
  rmw->volume->ReadEdges(rmw);
}

void ThinVolume::ReleaseGate(UnalignedIo* rmw) {
  std::vector<ParkedPart*> parked;
  {
    std::lock_guard lock(mu_);
    auto it = std::find(gates_.begin(), gates_.end(), rmw);
    assert(it != gates_.end() && rmw->granted);
    gates_.erase(it);
    parked.swap(rmw->parked);
    // Queued read-modify-writes whose range is free now install their gate,
    // in arrival order: one still blocked keeps later ones that overlap it
    // waiting behind it.
    std::vector<UnalignedIo*> waiting;
    for (UnalignedIo* queued : gate_queue_) {
      auto overlaps = [queued](const UnalignedIo* other) {
        return Overlap(queued->first_cluster, queued->end_cluster, other->first_cluster, other->end_cluster);
      };
      if (std::any_of(gates_.begin(), gates_.end(), overlaps) || std::any_of(waiting.begin(), waiting.end(), overlaps)) {
        waiting.push_back(queued);
        continue;
      }
      gates_.push_back(queued);
      GrantIfIdleLocked(queued);
    }
    gate_queue_ = std::move(waiting);
  }
  for (ParkedPart* part : parked) part->io->progress.queue->PostForeign(&part->req, 0);
}

bool ThinVolume::ParkOnGate(VolumeIo* io, IoQueue& queue, uint64_t cluster, uint64_t at, uint64_t n) {
  for (UnalignedIo* rmw : gates_) {
    if (cluster < rmw->first_cluster || cluster >= rmw->end_cluster) continue;
    if (io->progress.gate_owner == rmw) return false;
    // Gates never overlap, and a gate's parts stay inside its range.
    assert(io->progress.gate_owner == nullptr && "a read-modify-write's part reached another gate");
    auto* part = new ParkedPart{};
    part->req.context = part;
    part->req.done = &ThinVolume::OnPartUnparked;
    part->volume = this;
    part->io = io;
    part->cluster = cluster;
    part->at = at;
    part->n = n;
    io->progress.pending++;  // the request completes only after this part
    queue.ExpectForeign(&part->req);
    rmw->parked.push_back(part);
    gate_parks_.fetch_add(1, std::memory_order_relaxed);
    return true;
  }
  return false;
}

// Back on the request's queue, the gate gone: the part starts again (and
// may park at a newer gate).
void ThinVolume::OnPartUnparked(IoRequest* req, int result) {
  assert(result == 0);
  (void)result;
  std::unique_ptr<ParkedPart> part(static_cast<ParkedPart*>(req->context));
  VolumeIo* io = part->io;
  ThinVolume* volume = part->volume;
  IoQueue& queue = *io->progress.queue;
  if (io->op == VolumeOp::kRead) {
    SubIoChain chain;
    volume->CollectClusterReads(io, queue, part->cluster, part->at, part->n, chain);
    SubmitChain(chain, queue);
  } else {
    volume->StartClusterPart(io, queue, part->cluster, part->at, part->n);
  }
  volume->ReleaseGuard(io);
}

void ThinVolume::OnClusterIdleLocked(uint64_t cluster) {
  if (!held_for_reads_.empty()) ReleaseHeldRuns(cluster);
  for (UnalignedIo* rmw : gates_)
    if (!rmw->granted && cluster >= rmw->first_cluster && cluster < rmw->end_cluster) GrantIfIdleLocked(rmw);
}

}  // namespace edgestor
