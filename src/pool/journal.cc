// Pool: the journal half of the commit protocol.
#include <cassert>
#include <cerrno>
#include <cstring>

#include "pool/pool.h"

namespace edgestor {

using format::kBlockSize;

uint64_t Pool::JournalBlockOffset(uint64_t seq) const {
  assert(geometry_.journal_blocks >= format::kMinJournalBlocks && geometry_.journal_start >= 2);
  return (geometry_.journal_start + seq % geometry_.journal_blocks) * kBlockSize;
}

void Pool::AppendRecord(format::RecordType type, std::span<const uint8_t> body, std::span<const BlockRun> frees) {
  assert(sizeof(format::RecordHeader) + body.size() <= format::kJournalPayload);
  assert(type == format::RecordType::kMapSet && "the only record type");
  for ([[maybe_unused]] const BlockRun& run : frees)
    assert(run.block != 0 && run.count >= 1 && run.block + run.count <= geometry_.total_blocks);
  format::RecordHeader header{static_cast<uint16_t>(type), static_cast<uint16_t>(body.size())};
  std::lock_guard lock(mu_);
  const uint8_t* h = reinterpret_cast<const uint8_t*>(&header);
  pending_records_.insert(pending_records_.end(), h, h + sizeof header);
  pending_records_.insert(pending_records_.end(), body.begin(), body.end());
  pending_frees_.insert(pending_frees_.end(), frees.begin(), frees.end());
  for (const BlockRun& run : frees) pending_free_blocks_ += run.count;
  UpdateJournalPressure();
  UpdateFreesPressure();
}

void Pool::UpdateFreesPressure() {
  frees_waiting_.store(pending_free_blocks_ > 0 && pending_free_blocks_ * 4 >= allocator_.free_blocks(),
                       std::memory_order_relaxed);
}

void Pool::UpdateJournalPressure() {
  assert(journal_head_seq_ >= label_.replay_seq);
  assert(journal_head_seq_ - label_.replay_seq <= geometry_.journal_blocks && "the ring never overruns");
  // Pending records are counted as if packed at 3/4 density.
  uint64_t pending_blocks = pending_records_.size() * 4 / 3 / format::kJournalPayload + 1;
  uint64_t used = journal_head_seq_ - label_.replay_seq + pending_blocks;
  journal_used_blocks_.store(used, std::memory_order_relaxed);
  journal_wants_checkpoint_.store(used * 2 > geometry_.journal_blocks, std::memory_order_relaxed);
}

// Packs the records into whole journal blocks and writes them, each to a
// block never written before in this checkpoint generation.
Status Pool::WriteJournalBlocks(const std::vector<uint8_t>& records) {
  assert(!records.empty());
  AlignedBuffer buf = AllocateAligned(kBlockSize);
  size_t pos = 0;
  while (pos < records.size()) {
    uint64_t seq;
    uint64_t gen;
    {
      std::lock_guard lock(mu_);
      seq = journal_head_seq_;
      gen = label_.checkpoint_gen;
      if (seq - label_.replay_seq >= geometry_.journal_blocks)
        return Status(ENOSPC, "journal is full; a checkpoint is overdue");
    }
    std::memset(buf.get(), 0, kBlockSize);
    format::JournalBlockHeader h{};
    h.magic = format::kJournalMagic;
    h.seq = seq;
    h.checkpoint_gen = gen;
    uint8_t* out = buf.get() + sizeof h;
    while (pos < records.size()) {
      format::RecordHeader rh;
      std::memcpy(&rh, records.data() + pos, sizeof rh);
      size_t len = sizeof rh + rh.length;
      assert(len <= format::kJournalPayload && pos + len <= records.size() && "AppendRecord packed it whole");
      if (h.used_bytes + len > format::kJournalPayload) break;
      std::memcpy(out + h.used_bytes, records.data() + pos, len);
      h.used_bytes += static_cast<uint32_t>(len);
      h.record_count++;
      pos += len;
    }
    assert(h.record_count > 0);
    assert(h.used_bytes <= format::kJournalPayload && h.magic == format::kJournalMagic && h.crc == 0);
    std::memcpy(buf.get(), &h, sizeof h);
    uint32_t crc = MetadataCrc(gen, buf.get(), offsetof(format::JournalBlockHeader, crc));
    std::memcpy(buf.get() + offsetof(format::JournalBlockHeader, crc), &crc, 4);
    // The block lies in the ring, never over a label or allocatable space.
    assert(JournalBlockOffset(seq) / kBlockSize >= geometry_.journal_start &&
           JournalBlockOffset(seq) / kBlockSize < geometry_.journal_start + geometry_.journal_blocks);
    ES_RETURN_IF_ERROR(device_->WriteSync(JournalBlockOffset(seq), buf.get(), kBlockSize));
    std::lock_guard lock(mu_);
    assert(journal_head_seq_ == seq && "WriteJournalBlocks runs under commit_mu_ alone");
    journal_head_seq_ = seq + 1;
    UpdateJournalPressure();
  }
  assert(pos == records.size());
  return Status::Ok();
}

// Journal blocks WriteJournalBlocks packs `records` into.
static uint64_t JournalBlocksFor(const std::vector<uint8_t>& records) {
  uint64_t blocks = 0;
  size_t used = format::kJournalPayload;  // forces a first block
  for (size_t pos = 0; pos < records.size();) {
    format::RecordHeader rh;
    std::memcpy(&rh, records.data() + pos, sizeof rh);
    size_t len = sizeof rh + rh.length;
    assert(len <= format::kJournalPayload && pos + len <= records.size());
    if (used + len > format::kJournalPayload) {
      blocks++;
      used = 0;
    }
    used += len;
    pos += len;
  }
  return blocks;
}

Status Pool::Commit() {
  std::lock_guard commit(commit_mu_);
  ES_RETURN_IF_ERROR(CheckNotFailed());
  std::vector<uint8_t> records;
  std::vector<BlockRun> frees;
  {
    std::lock_guard lock(mu_);
    assert(journal_head_seq_ - label_.replay_seq <= geometry_.journal_blocks);
    // Records that piled up behind another commit may not fit: refuse
    // before writing anything. They stay pending; a checkpoint (which the
    // caller runs instead) makes them durable without the journal.
    uint64_t room = geometry_.journal_blocks - (journal_head_seq_ - label_.replay_seq);
    if (JournalBlocksFor(pending_records_) > room)
      return Status(ENOSPC, "journal has no room for this commit; a checkpoint must run first");
    records.swap(pending_records_);
    frees.swap(pending_frees_);
    pending_free_blocks_ = 0;
    UpdateFreesPressure();
  }
  // First flush: the data of every completed write is durable before any
  // record that makes it readable (a written bit, a new mapping).
  Status s = device_->FlushSync();
  if (!s.ok()) return Fail(s.WithContext("flushing data"));
  if (records.empty()) {
    assert(frees.empty());
    return Status::Ok();
  }
  s = WriteJournalBlocks(records);
  if (!s.ok()) return Fail(s.WithContext("writing journal"));
  s = device_->FlushSync();
  if (!s.ok()) return Fail(s.WithContext("flushing journal"));
  // Only now may these records drop their references (and free space that
  // nothing references any more).
  std::lock_guard lock(mu_);
  for (const BlockRun& run : frees) ReleaseLocked(run);
  return Status::Ok();
}

Result<uint64_t> Pool::ReplayJournal(const RecordVisitor& apply) {
  AlignedBuffer buf = AllocateAligned(kBlockSize);
  uint64_t applied = 0;
  uint64_t seq = label_.replay_seq;
  for (; seq - label_.replay_seq < geometry_.journal_blocks; seq++) {
    ES_RETURN_IF_ERROR(device_->ReadSync(JournalBlockOffset(seq), buf.get(), kBlockSize));
    format::JournalBlockHeader h;
    std::memcpy(&h, buf.get(), sizeof h);
    bool valid = h.magic == format::kJournalMagic && h.seq == seq && h.checkpoint_gen == label_.checkpoint_gen &&
                 h.used_bytes <= format::kJournalPayload &&
                 MetadataCrc(h.checkpoint_gen, buf.get(), offsetof(format::JournalBlockHeader, crc)) == h.crc;
    if (!valid) break;  // end of the journal (or a torn last commit)
    const uint8_t* p = buf.get() + sizeof h;
    uint32_t pos = 0;
    for (uint32_t r = 0; r < h.record_count; r++) {
      format::RecordHeader rh;
      if (pos + sizeof rh > h.used_bytes) return Status(EUCLEAN, "journal block " + std::to_string(seq) + " has a truncated record");
      std::memcpy(&rh, p + pos, sizeof rh);
      pos += sizeof rh;
      if (pos + rh.length > h.used_bytes) return Status(EUCLEAN, "journal block " + std::to_string(seq) + " has a truncated record");
      ES_RETURN_IF_ERROR(apply(static_cast<format::RecordType>(rh.type), std::span<const uint8_t>(p + pos, rh.length)));
      pos += rh.length;
      applied++;
    }
  }
  std::lock_guard lock(mu_);
  journal_head_seq_ = seq;
  UpdateJournalPressure();
  return applied;
}

}  // namespace edgestor
