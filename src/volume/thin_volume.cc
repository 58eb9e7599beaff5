// ThinVolume: the asynchronous data path (read, aligned write in place,
// aligned discard and write-zeroes) and its completion, including the
// hand-off of FLUSH/FUA to the committer. Copy-on-write and compressed
// rewrites are in thin_volume_rewrite.cc; writes arriving under a
// snapshot's write barrier are parked until it is lowered; unaligned I/O
// becomes aligned requests through a bounce buffer
// (thin_volume_unaligned.cc); control operations are in
// thin_volume_control.cc.
#include "volume/thin_volume.h"

#include <cassert>
#include <cerrno>
#include <cstring>

#include "volume/checkpoint_codec.h"
#include "volume/cluster_bits.h"

namespace edgestor {

using format::kBlockSize;

// One device I/O belonging to a VolumeIo: a run of 4 KiB blocks (or sectors)
// inside one cluster.
struct ThinVolume::SubIo {
  IoRequest req;
  ThinVolume* volume;
  VolumeIo* io;
  CachedPage* page;     // pinned while the I/O is in flight
  uint64_t cluster;
  uint64_t phys_block;  // cluster's first block when submitted
  uint64_t written_mask;  // writes: blocks to mark written on success
  uint64_t first_logical_block;  // encryption tweak of the first block
  AlignedBuffer bounce;   // encrypted writes: the ciphertext; compressed reads: the frame
  // Compressed reads: where the requested bytes of the cluster go, and the
  // page's change count when the frame's location was looked up.
  uint8_t* compressed_out = nullptr;
  uint64_t compressed_at = 0, compressed_length = 0;
  uint32_t page_changes = 0;
  SubIo* next = nullptr;  // a read's sub-I/Os waiting to be submitted
  // Merged into one device I/O (SubIoBatch): the sub-I/Os after this one,
  // and this one's own length while `req` covers them all.
  SubIo* merged = nullptr;
  uint32_t own_length = 0;
};

// Sub-I/Os of one request that follow each other both on the device and in
// the request's buffer go to the device as one I/O: a 1 MiB write into
// fresh, consecutive clusters is one write, not sixteen, and a sequential
// read of two clusters one read. Each still finishes on its own (its map
// entry, its written bits). Sub-I/Os with a buffer of their own (encrypted
// writes, compressed reads) are never merged.
class ThinVolume::SubIoBatch {
 public:
  explicit SubIoBatch(IoQueue& queue) : queue_(queue) {}
  ~SubIoBatch() { Flush(); }
  SubIoBatch(const SubIoBatch&) = delete;
  SubIoBatch& operator=(const SubIoBatch&) = delete;

  void Add(SubIo* sub) {
    bool mergeable = !sub->bounce && !sub->compressed_out;
    if (head_ && mergeable && sub->req.op == head_->req.op && sub->req.offset == end_offset_ &&
        sub->req.buf == end_buf_ && uint64_t{length_} + sub->req.length <= kMaxMergedBytes) {
      tail_->merged = sub;
      tail_ = sub;
      Extend(sub);
      return;
    }
    Flush();
    if (!mergeable) return ThinVolume::SubmitSubIo(sub, queue_);
    head_ = tail_ = sub;
    length_ = 0;
    end_offset_ = sub->req.offset;
    end_buf_ = sub->req.buf;
    Extend(sub);
  }

  void Flush() {
    if (!head_) return;
    head_->own_length = head_->req.length;
    head_->req.length = length_;
    SubIo* head = head_;
    head_ = tail_ = nullptr;
    ThinVolume::SubmitSubIo(head, queue_);
  }

 private:
  static constexpr uint64_t kMaxMergedBytes = 4 << 20;
  void Extend(SubIo* sub) {
    length_ += sub->req.length;
    end_offset_ += sub->req.length;
    end_buf_ += sub->req.length;
  }

  IoQueue& queue_;
  SubIo* head_ = nullptr;
  SubIo* tail_ = nullptr;
  uint32_t length_ = 0;  // of the whole run
  uint64_t end_offset_ = 0;
  uint8_t* end_buf_ = nullptr;
};

namespace {

// Sub-I/Os kept for reuse per thread, at most. A request's sub-I/Os are
// taken on the thread that submits it and given back on the thread that
// polls its queue, the same one: once warm, the data path allocates none.
// Under AddressSanitizer none: a sub-I/O used after it finished must stay
// detectable.
#if defined(__SANITIZE_ADDRESS__)
constexpr size_t kRecycledSubIos = 0;
#else
constexpr size_t kRecycledSubIos = 256;
#endif

// A cluster's count of I/Os in flight (CachedPage::inflight) never wraps.
[[maybe_unused]] constexpr bool CanPinOneMore(uint16_t inflight) { return inflight < UINT16_MAX; }

}  // namespace

// The calling thread's recycled sub-I/Os.
std::vector<ThinVolume::SubIo*>& ThinVolume::RecycledSubIos() {
  struct Cache {
    std::vector<SubIo*> free;
    ~Cache() {
      for (SubIo* sub : free) delete sub;
    }
  };
  thread_local Cache cache;
  return cache.free;
}

ThinVolume::SubIo* ThinVolume::NewSubIo() {
  std::vector<SubIo*>& free = RecycledSubIos();
  if (free.empty()) return new SubIo{};
  SubIo* sub = free.back();
  free.pop_back();
  assert(sub->bounce == nullptr && sub->next == nullptr);
  return sub;
}

void ThinVolume::RecycleSubIo(SubIo* sub) {
  std::vector<SubIo*>& free = RecycledSubIos();
  if (free.size() >= kRecycledSubIos) {
    delete sub;
    return;
  }
  *sub = SubIo{};  // drops its bounce buffer, if any
  if (free.capacity() < kRecycledSubIos) free.reserve(kRecycledSubIos);
  free.push_back(sub);
}

ThinVolume::ThinVolume(const VolumeServices& services, uint32_t id, std::string name, uint64_t size,
                       const format::VolumeAttributes& attributes)
    : services_(services),
      pool_(services.pool),
      id_(id),
      name_(std::move(name)),
      cluster_size_(pool_.geometry().cluster_size),
      cluster_blocks_(pool_.geometry().cluster_size / kBlockSize),
      size_(size),
      map_(pool_, services.budget, ClustersFor(size, pool_.geometry().cluster_size)),
      attributes_(attributes) {}

namespace {

Status ValidateIo(const VolumeIo& io, uint64_t volume_size) {
  if (io.op == VolumeOp::kFlush) return Status::Ok();
  // Any byte range is served: what is not 4 KiB-aligned goes through a
  // bounce buffer, with a read-modify-write of its partial blocks (NBD
  // clients that agreed to no block size may send it).
  if (io.offset > volume_size || io.length > volume_size - io.offset)
    return Status(EINVAL, "I/O past the end of the volume (" + std::to_string(io.offset) + "+" +
                              std::to_string(io.length) + " > " + std::to_string(volume_size) + ")");
  bool has_data = io.op == VolumeOp::kRead || io.op == VolumeOp::kWrite;
  if (has_data && io.length > kMaxIoBytes) return Status(EINVAL, "request larger than 32 MiB");
  if (has_data && io.buf == nullptr) return Status(EINVAL, "no data buffer");
  return Status::Ok();
}

}  // namespace

void ThinVolume::Submit(VolumeIo* io, IoQueue& queue) {
  io->progress = {};
  io->progress.volume = this;
  io->progress.queue = &queue;
  io->progress.started_ns = IoStats::NowNs();
  io_stats_.Started();
  if (io->stats) io->stats->Started();
  Admit(io, queue);
}

void ThinVolume::Admit(VolumeIo* io, IoQueue& queue) {
  Status s = services_.events.CheckUsable();
  if (!s.ok()) return Fail(io, s);
  bool changes_data = io->op == VolumeOp::kWrite || io->op == VolumeOp::kDiscard || io->op == VolumeOp::kWriteZeroes;
  if (read_only_ && changes_data)
    return Fail(io, Status(EROFS, name_ + " is a snapshot: snapshots are read-only (clone it for a writable copy)"));
  {
    // The size is checked and the request counted under one lock: a shrink
    // (refused while requests are in flight) cannot come between. A refusal
    // is answered after the lock, so its callback may submit again.
    std::lock_guard lock(mu_);
    s = ValidateIo(*io, size());
    if (s.ok() && !codec_)
      s = Status(EACCES, "volume " + name_ + " is encrypted and the pool is locked; give the pool key "
                         "(--keyfile or --passphrase-file, or `edgestor pool unlock` for a daemon)");
    if (s.ok()) inflight_ios_++;
    assert(!s.ok() || inflight_ios_ > 0);
  }
  if (!s.ok()) return Fail(io, s);
  if (!IsAsynchronous(*io)) return io->op == VolumeOp::kFlush ? Complete(io) : SubmitUnaligned(io, queue);
  if (ParkOnUncachedPage(io, queue, io->offset / cluster_size_)) return;
  SubmitAsynchronous(io, queue);
}

// The data path needs 4 KiB alignment for O_DIRECT; anything else goes
// through a bounce buffer first (SubmitUnaligned). A flush is neither:
// Complete() commits it (a flush is a FUA with no data).
bool ThinVolume::IsAsynchronous(const VolumeIo& io) {
  bool aligned = io.offset % kBlockSize == 0 && io.length % kBlockSize == 0;
  switch (io.op) {
    case VolumeOp::kRead:
    case VolumeOp::kWrite:
      return aligned && reinterpret_cast<uintptr_t>(io.buf) % kIoAlignment == 0;
    case VolumeOp::kDiscard:
    case VolumeOp::kWriteZeroes:
      return aligned;
    case VolumeOp::kFlush:
      return false;
  }
  return false;
}

void ThinVolume::SubmitAsynchronous(VolumeIo* io, IoQueue& queue) {
  assert(IsAsynchronous(*io));
  if (io->op == VolumeOp::kRead) return SubmitRead(io, queue);
  // Counted before any cluster is looked at, so a snapshot that raises the
  // write barrier and then waits for this count sees every asynchronous
  // write that could land in a cluster it shares (zeroing may rewrite a
  // shared cluster too).
  io->progress.async_write = true;
  async_writes_++;
  // Counted first, then the barrier read (both sequentially consistent):
  // a snapshot raising it either sees this count or is seen here. The
  // parts of an unaligned write do not park: requests parked at their gate
  // may be counted by the snapshot, which would then wait for them forever.
  // They go on under the barrier like a write that raced it (WriteCluster).
  if (write_barrier_up_.load() && !io->progress.gate_owner && ParkBehindBarrier(io, queue)) return;
  if (io->op == VolumeOp::kWrite) return SubmitWrite(io, queue);
  SubmitZeroes(io, queue);
}

bool ThinVolume::ParkBehindBarrier(VolumeIo* io, IoQueue& queue) {
  std::lock_guard lock(mu_);
  if (!write_barrier_) return false;
  io->progress.async_write = false;
  async_writes_--;
  IoRequest& resume = io->progress.commit;  // free until the request completes
  resume = {};
  resume.context = io;
  resume.done = &ThinVolume::OnBarrierLowered;
  queue.ExpectForeign(&resume);
  held_by_barrier_.push_back(io);
  barrier_waits_.fetch_add(1, std::memory_order_relaxed);
  return true;
}

void ThinVolume::OnBarrierLowered(IoRequest* req, int result) {
  assert(result == 0);
  (void)result;
  auto* io = static_cast<VolumeIo*>(req->context);
  auto* volume = static_cast<ThinVolume*>(io->progress.volume);
  volume->SubmitAsynchronous(io, *io->progress.queue);
}

void ThinVolume::set_write_barrier(bool on) {
  write_barrier_ = on;
  write_barrier_up_.store(on);
  if (on) return;
  for (VolumeIo* io : held_by_barrier_) io->progress.queue->PostForeign(&io->progress.commit, 0);
  held_by_barrier_.clear();
}

// A map page read for a parked request.
struct ThinVolume::PageLoad {
  IoRequest req;
  ThinVolume* volume = nullptr;
  VolumeIo* io = nullptr;
  IoQueue* queue = nullptr;
  ThinMap::StoredPage where;
  AlignedBuffer buffer;
};

// A request whose clusters' map pages are not all cached waits for them
// here, one page after another, each read on the request's own queue: the
// I/O thread goes on with other requests meanwhile. Pages from
// `from_cluster` on are looked at, so each is read at most once per
// request; one evicted again before the request runs (the cache is tight)
// is then read synchronously by the lookup. Returns false if nothing is
// missing (or memory is short: the lookup reads it then).
bool ThinVolume::ParkOnUncachedPage(VolumeIo* io, IoQueue& queue, uint64_t from_cluster) {
  uint64_t end_cluster = (io->offset + io->length + cluster_size_ - 1) / cluster_size_;
  std::optional<ThinMap::StoredPage> missing;
  {
    std::lock_guard lock(mu_);
    if (from_cluster < end_cluster) missing = map_.FirstUncached(from_cluster, end_cluster);
  }
  if (!missing) return false;
  assert(missing->block != 0 && missing->block < pool_.total_blocks() && missing->slot * format::kEntriesPerMapPage < end_cluster);
  AlignedBuffer buffer = TryAllocateUninitialized(kBlockSize);  // wholly overwritten by the read
  if (!buffer) return false;
  auto* load = new PageLoad{};
  load->volume = this;
  load->io = io;
  load->queue = &queue;
  load->where = *missing;
  load->buffer = std::move(buffer);
  load->req.op = IoOp::kRead;
  load->req.offset = missing->block * kBlockSize;
  load->req.length = kBlockSize;
  load->req.buf = load->buffer.get();
  load->req.done = &ThinVolume::OnPageLoaded;
  load->req.context = load;
  queue.Submit(&load->req);
  return true;
}

void ThinVolume::OnPageLoaded(IoRequest* req, int result) {
  std::unique_ptr<PageLoad> load(static_cast<PageLoad*>(req->context));
  ThinVolume* volume = load->volume;
  VolumeIo* io = load->io;
  Status s = result < 0 ? Status(-result, "reading a map page") : Status::Ok();
  if (s.ok()) {
    format::MapPage raw;
    static_assert(sizeof raw == kBlockSize);
    std::memcpy(&raw, load->buffer.get(), sizeof raw);
    std::lock_guard lock(volume->mu_);
    s = volume->map_.InstallLoaded(load->where, raw);
  }
  if (!s.ok()) {
    io->progress.error = s.code();
    return volume->Complete(io);
  }
  uint64_t next_cluster = (load->where.slot + 1) * format::kEntriesPerMapPage;
  if (volume->ParkOnUncachedPage(io, *load->queue, next_cluster)) return;
  volume->SubmitAsynchronous(io, *load->queue);
}

void ThinVolume::Fail(VolumeIo* io, const Status& status) {
  CountFinished(*io, status.ok());
  io->done(io, status);
}

void ThinVolume::CountFinished(const VolumeIo& io, bool ok) {
  static_assert(static_cast<int>(VolumeOp::kWriteZeroes) == static_cast<int>(IoKind::kWriteZeroes));
  auto kind = static_cast<IoKind>(io.op);
  uint64_t latency_ns = IoStats::NowNs() - io.progress.started_ns;
  io_stats_.Finished(kind, io.length, latency_ns, ok);
  if (io.stats) io.stats->Finished(kind, io.length, latency_ns, ok);
}

// Splits [offset, offset+length) at cluster boundaries.
template <typename Fn>
static void ForEachCluster(uint64_t offset, uint64_t length, uint32_t cluster_size, Fn fn) {
  while (length > 0) {
    uint64_t cluster = offset / cluster_size;
    uint64_t in_cluster = offset % cluster_size;
    uint64_t n = std::min<uint64_t>(length, cluster_size - in_cluster);
    assert(n > 0 && in_cluster + n <= cluster_size);
    fn(cluster, in_cluster, n);
    offset += n;
    length -= n;
  }
}

void ThinVolume::SubIoChain::Add(SubIo* sub) {
  *last = sub;
  last = &sub->next;
}

void ThinVolume::SubmitRead(VolumeIo* io, IoQueue& queue) {
  assert(io->op == VolumeOp::kRead && io->buf != nullptr);
  io->progress.pending = 1;  // guard until every sub-I/O is submitted
  SubIoChain chain;
  ForEachCluster(io->offset, io->length, cluster_size_, [&](uint64_t cluster, uint64_t at, uint64_t n) {
    CollectClusterReads(io, queue, cluster, at, n, chain);
  });
  SubmitChain(chain, queue);
  ReleaseGuard(io);
}

void ThinVolume::SubmitChain(SubIoChain& chain, IoQueue& queue) {
  SubIoBatch batch(queue);
  while (SubIo* sub = chain.head) {
    chain.head = sub->next;
    sub->next = nullptr;
    batch.Add(sub);
  }
  chain.last = &chain.head;
}

void ThinVolume::CollectClusterReads(VolumeIo* io, IoQueue& queue, uint64_t cluster, uint64_t at, uint64_t n,
                                     SubIoChain& chain) {
  uint8_t* dst = io->buf + (cluster * cluster_size_ + at - io->offset);
  std::lock_guard lock(mu_);
  if (ParkOnGate(io, queue, cluster, at, n)) return;
  auto page = map_.Page(cluster, /*create=*/false);
  if (!page.ok()) {
    io->progress.error = page.status().code();
    return;
  }
  format::MapEntry entry = page.value() ? page.value()->entries[ThinMap::IndexInPage(cluster)] : format::MapEntry{};
  if (format::IsCompressed(entry)) {
    if (SubIo* sub = NewCompressedRead(io, page.value(), cluster, entry, at, n, dst)) chain.Add(sub);
    return;
  }
  // Walk the range, reading runs of written blocks and zero-filling the rest.
  uint64_t pos = at;
  while (pos < at + n) {
    uint64_t block = pos / kBlockSize;
    bool written = (entry.written_bits >> block) & 1;
    uint64_t run_end = pos;
    while (run_end < at + n && (((entry.written_bits >> (run_end / kBlockSize)) & 1) == written))
      run_end = std::min(at + n, (run_end / kBlockSize + 1) * kBlockSize);
    if (!written) {
      std::memset(dst + (pos - at), 0, run_end - pos);
    } else {
      // Written blocks are mapped (a phys 0 entry has no written bits).
      assert(entry.phys_block != 0 && pos % kBlockSize == 0 && run_end % kBlockSize == 0);
      assert(CanPinOneMore(page.value()->inflight[ThinMap::IndexInPage(cluster)]));
      SubIo* sub = NewSubIo();
      sub->req.op = IoOp::kRead;
      sub->req.offset = (entry.phys_block & format::kPhysBlockMask) * kBlockSize + pos;
      sub->req.length = static_cast<uint32_t>(run_end - pos);
      sub->req.buf = dst + (pos - at);
      sub->volume = this;
      sub->io = io;
      sub->page = page.value();
      sub->cluster = cluster;
      sub->phys_block = entry.phys_block;
      sub->first_logical_block = FirstLogicalBlock(cluster) + pos / kBlockSize;
      sub->page->inflight[ThinMap::IndexInPage(cluster)]++;
      sub->page->pins++;
      io->progress.pending++;
      chain.Add(sub);
    }
    pos = run_end;
  }
}

void ThinVolume::SubmitWrite(VolumeIo* io, IoQueue& queue) {
  assert(io->op == VolumeOp::kWrite && !read_only_);
  io->progress.pending = 1;  // guard until every cluster's part is started
  // The frames of a request's clusters share a pack even when each is
  // encoded right here, before the next cluster's part starts.
  const bool hold_pack = io->length > cluster_size_ && codec_ && codec_->compressing() && !codec_->encrypted();
  if (hold_pack) BeginEncoding();
  {
    SubIoBatch batch(queue);
    ForEachCluster(io->offset, io->length, cluster_size_, [&](uint64_t cluster, uint64_t at, uint64_t n) {
      if (io->progress.error) return;
      WriteCluster(io, queue, cluster, at, n, &batch);
    });
  }
  if (hold_pack) EndEncoding(nullptr);
  ReleaseGuard(io);
}

void ThinVolume::SubmitZeroes(VolumeIo* io, IoQueue& queue) {
  assert((io->op == VolumeOp::kDiscard || io->op == VolumeOp::kWriteZeroes) && !read_only_);
  io->progress.pending = 1;  // guard until every cluster's part is started
  ForEachCluster(io->offset, io->length, cluster_size_, [&](uint64_t cluster, uint64_t at, uint64_t n) {
    if (io->progress.error) return;
    ZeroCluster(io, queue, cluster, at, n);
  });
  ReleaseGuard(io);
}

void ThinVolume::StartClusterPart(VolumeIo* io, IoQueue& queue, uint64_t cluster, uint64_t at, uint64_t n) {
  if (io->op == VolumeOp::kWrite) return WriteCluster(io, queue, cluster, at, n);
  assert(io->op == VolumeOp::kDiscard || io->op == VolumeOp::kWriteZeroes);
  ZeroCluster(io, queue, cluster, at, n);
}

// Zeroes the whole blocks [at, at+n) of cluster `cluster` (discard and
// write-zeroes read back as zeros alike). Where only the map changes (the
// blocks just lose their written bits, or the cluster is freed) that is
// done here, with no device I/O; a compressed or shared cluster that keeps
// some of its data is rewritten asynchronously without the zeroed blocks.
void ThinVolume::ZeroCluster(VolumeIo* io, IoQueue& queue, uint64_t cluster, uint64_t at, uint64_t n) {
  assert(at % kBlockSize == 0 && n % kBlockSize == 0 && n > 0 && at + n <= cluster_size_);
  ClusterRewrite* rewrite = nullptr;
  {
    std::lock_guard lock(mu_);
    if (ParkOnGate(io, queue, cluster, at, n)) return;
    auto page = map_.Page(cluster, /*create=*/false);  // a page never stored reads as zeros
    if (!page.ok() || !page.value()) {
      if (!page.ok()) io->progress.error = page.status().code();
      return;
    }
    const format::MapEntry current = page.value()->entries[ThinMap::IndexInPage(cluster)];
    bool keeps_data = (current.written_bits & ~BlockMask(at / kBlockSize, n / kBlockSize)) != 0;
    bool moves = format::IsCompressed(current) || (current.phys_block != 0 && map_.IsShared(cluster, current));
    if (!keeps_data || !moves || write_barrier_) {
      // The map alone changes (or a snapshot is waiting: the synchronous
      // path, as for writes).
      io->progress.error = WriteClusterBytes(page.value(), cluster, at, n, nullptr).code();
      return;
    }
    auto begun = BeginRewrite(io, queue, page.value(), cluster, at, n, format::IsCompressed(current));
    if (!begun.ok()) {
      io->progress.error = begun.status().code();
      return;
    }
    rewrite = begun.value();
  }
  StartRewrite(rewrite);
}

// Starts the part [at, at+n) of cluster `cluster` of an aligned write:
// in place where the volume owns a plain cluster alone; as an asynchronous
// rewrite where the cluster is shared (copied) or compressed, or where a
// compressing volume writes a new or whole cluster (re-encoded); and
// synchronously while a snapshot is being taken. Also restarts the part of
// a rewrite that lost a race (see FinishRewrite). Errors go to
// io->progress.
void ThinVolume::WriteCluster(VolumeIo* io, IoQueue& queue, uint64_t cluster, uint64_t at, uint64_t n,
                              SubIoBatch* batch) {
  assert(at % kBlockSize == 0 && n % kBlockSize == 0 && at + n <= cluster_size_);
  const uint8_t* src = io->buf + (cluster * cluster_size_ + at - io->offset);
  // A whole cluster of zeros frees the cluster instead of storing zeros.
  const bool zeros = n == cluster_size_ && IsAllZero(src, n);
  SubIo* sub = nullptr;
  ClusterRewrite* rewrite = nullptr;
  {
    std::lock_guard lock(mu_);
    if (ParkOnGate(io, queue, cluster, at, n)) return;
    auto page = map_.Page(cluster, /*create=*/!zeros);  // a page never stored reads as zeros
    if (!page.ok() || (zeros && !page.value())) {
      if (!page.ok()) io->progress.error = page.status().code();
      return;
    }
    assert(page.value() != nullptr && "create=true always gives a page");
    if (zeros) {
      // The map alone changes.
      io->progress.error = WriteClusterBytes(page.value(), cluster, 0, n, nullptr).code();
      return;
    }
    const format::MapEntry current = page.value()->entries[ThinMap::IndexInPage(cluster)];
    if (write_barrier_) {
      // A snapshot is waiting for the asynchronous writes in flight.
      io->progress.error = WriteClusterBytes(page.value(), cluster, at, n, src).code();
      return;
    }
    bool shared = map_.IsShared(cluster, current);
    bool reencode = format::IsCompressed(current) ||
                    (codec_->compressing() && (current.phys_block == 0 || n == cluster_size_ || shared));
    Status s;
    if (reencode || shared) {
      auto begun = BeginRewrite(io, queue, page.value(), cluster, at, n, reencode);
      s = begun.status();
      if (begun.ok()) rewrite = begun.value();
    } else {
      auto begun = BeginInPlaceWrite(io, page.value(), cluster, at, n);
      s = begun.status();
      if (begun.ok()) sub = begun.value();
    }
    if (!s.ok()) io->progress.error = s.code();
  }
  if (rewrite) StartRewrite(rewrite);
  if (sub) SubmitInPlaceWrite(sub, queue, batch);
}

// REQUIRES: mu_ held; the cluster plain and owned by this volume alone.
Result<ThinVolume::SubIo*> ThinVolume::BeginInPlaceWrite(VolumeIo* io, CachedPage* page, uint64_t cluster,
                                                         uint64_t at, uint64_t n) {
  ES_ASSIGN_OR_RETURN(format::MapEntry entry, EnsureMapped(page, cluster));
  // In place only into a plain run this volume owns: never a shared or compressed one.
  assert(entry.phys_block != 0 && !format::IsCompressed(entry) && n > 0 && at + n <= cluster_size_);
  assert(CanPinOneMore(page->inflight[ThinMap::IndexInPage(cluster)]));
  SubIo* sub = NewSubIo();
  sub->req.op = IoOp::kWrite;
  sub->req.offset = (entry.phys_block & format::kPhysBlockMask) * kBlockSize + at;
  sub->req.length = static_cast<uint32_t>(n);
  sub->req.buf = io->buf + (cluster * cluster_size_ + at - io->offset);
  sub->volume = this;
  sub->io = io;
  sub->page = page;
  sub->cluster = cluster;
  sub->phys_block = entry.phys_block;
  sub->written_mask = BlockMask(at / kBlockSize, n / kBlockSize);
  sub->first_logical_block = FirstLogicalBlock(cluster) + at / kBlockSize;
  TouchHotPlain(cluster);
  page->inflight[ThinMap::IndexInPage(cluster)]++;
  page->pins++;
  io->progress.pending++;
  return sub;
}

// Outside the lock: encrypts into a bounce buffer if the volume is
// encrypted (the tweak depends only on the position), then submits.
void ThinVolume::SubmitInPlaceWrite(SubIo* sub, IoQueue& queue, SubIoBatch* batch) {
  if (codec_->encrypted()) {
    std::span<const uint8_t> plain(sub->req.buf, sub->req.length);
    sub->bounce = TryAllocateUninitialized(plain.size());  // wholly overwritten by the ciphertext
    if (!sub->bounce) return FinishSubIo(sub, -ENOMEM);
    Status s = codec_->Encrypt(sub->first_logical_block, plain, std::span(sub->bounce.get(), plain.size()));
    if (!s.ok()) return FinishSubIo(sub, -s.code());
    sub->req.buf = sub->bounce.get();
  }
  if (batch) return batch->Add(sub);
  SubmitSubIo(sub, queue);
}

// Reads a compressed cluster's whole frame into a bounce buffer; the
// completion decrypts, decompresses and copies out the requested bytes.
// REQUIRES: mu_ held. Returns nullptr when nothing needs reading.
ThinVolume::SubIo* ThinVolume::NewCompressedRead(VolumeIo* io, CachedPage* page, uint64_t cluster,
                                                 const format::MapEntry& entry, uint64_t at, uint64_t n, uint8_t* dst) {
  uint64_t first = at / kBlockSize, end = (at + n + kBlockSize - 1) / kBlockSize;
  if ((entry.written_bits & BlockMask(first, end - first)) == 0) {
    std::memset(dst, 0, n);  // never written: zeros without I/O
    return nullptr;
  }
  uint64_t stored = format::StoredBlocks(entry, cluster_blocks_) * kBlockSize;
  assert(format::IsCompressed(entry) && stored >= kBlockSize && stored < cluster_size_);
  assert(CanPinOneMore(page->inflight[ThinMap::IndexInPage(cluster)]));
  AlignedBuffer frame = TryAllocateUninitialized(stored);  // wholly overwritten by the read
  if (!frame) {
    io->progress.error = ENOMEM;
    return nullptr;
  }
  SubIo* sub = NewSubIo();
  sub->bounce = std::move(frame);
  sub->req.op = IoOp::kRead;
  sub->req.offset = format::FirstBlock(entry) * kBlockSize;
  sub->req.length = static_cast<uint32_t>(stored);
  sub->req.buf = sub->bounce.get();
  sub->volume = this;
  sub->io = io;
  sub->page = page;
  sub->cluster = cluster;
  sub->phys_block = entry.phys_block;
  sub->first_logical_block = FirstLogicalBlock(cluster);
  sub->compressed_out = dst;
  sub->compressed_at = at;
  sub->compressed_length = n;
  sub->page_changes = page->changes;
  page->inflight[ThinMap::IndexInPage(cluster)]++;
  page->pins++;
  io->progress.pending++;
  return sub;
}

// Completion of a compressed read, outside the volume lock.
Status ThinVolume::DecodeCompressedRead(SubIo* sub) {
  assert(sub->compressed_out != nullptr && sub->compressed_at + sub->compressed_length <= cluster_size_);
  assert(sub->first_logical_block == FirstLogicalBlock(sub->cluster));
  // Decompression writes at least the bytes copied out below.
  AlignedBuffer cluster = TryAllocateUninitialized(cluster_size_);
  if (!cluster) return Status(ENOMEM, "out of memory decompressing a cluster");
  ES_RETURN_IF_ERROR(DecodeFrame({sub->phys_block, 0}, sub->cluster, std::span(sub->bounce.get(), sub->req.length),
                                 cluster.get(), sub->compressed_at + sub->compressed_length));
  std::memcpy(sub->compressed_out, cluster.get() + sub->compressed_at, sub->compressed_length);
  return Status::Ok();
}

Status ThinVolume::DecodeFrame(const format::MapEntry& entry, uint64_t cluster, std::span<uint8_t> stored,
                               uint8_t* out, size_t needed) {
  assert(format::IsCompressed(entry) && stored.size() == format::StoredBlocks(entry, cluster_blocks_) * kBlockSize);
  ES_RETURN_IF_ERROR(codec_->Decrypt(FirstLogicalBlock(cluster), stored));
  // A packed frame starts a few sectors into its first block; its header
  // says where it ends.
  return codec_->Decompress(stored.subspan(format::FrameHead(entry) * format::kSectorSize),
                            std::span(out, cluster_size_), needed)
      .WithContext("volume " + name_ + " cluster " + std::to_string(cluster));
}

Result<format::MapEntry> ThinVolume::EnsureMapped(CachedPage* page, uint64_t cluster) {
  format::MapEntry entry = page->entries[ThinMap::IndexInPage(cluster)];
  if (entry.phys_block != 0) return entry;
  ES_ASSIGN_OR_RETURN(uint64_t block, pool_.AllocateCluster());
  assert(block != 0 && block % cluster_blocks_ == 0 && "a plain cluster is cluster-aligned");
  // Not journaled yet: the mapping becomes durable with the first written
  // bit, after the data it guards (see Complete and the commit protocol).
  entry = {block, 0};
  SetEntry(page, cluster, entry, /*journal=*/false);
  return entry;
}

void ThinVolume::SetEntry(CachedPage* page, uint64_t cluster, const format::MapEntry& entry, bool journal,
                          std::span<const BlockRun> frees) {
  assert(!read_only_);
  assert(page != nullptr && cluster < map_.clusters());
  map_.Unshare(cluster);
  format::MapEntry& slot = page->entries[ThinMap::IndexInPage(cluster)];
  assert(entry.phys_block != 0 || entry.written_bits == 0);
  assert(cluster_blocks_ == 64 || (entry.written_bits >> cluster_blocks_) == 0);
  assert(!format::IsCompressed(entry) || format::StoredBlocks(entry, cluster_blocks_) < cluster_blocks_);
  // Well formed (replay checked entries from disk; the engine makes only such).
  assert((entry.phys_block & format::kUnknownEntryBits) == 0);
  assert(format::IsCompressed(entry) ? format::StoredBlocks(entry, cluster_blocks_) >= 1 && format::FirstBlock(entry) != 0
                                     : (entry.phys_block >> format::kStoredBlocksShift) == 0);
  // Journaled entries are the engine's own: their run lies in the pool.
  assert(!journal || entry.phys_block == 0 ||
         format::FirstBlock(entry) + format::StoredBlocks(entry, cluster_blocks_) <= pool_.total_blocks());
  // Frees only go with a record, and name a run.
  assert(journal || frees.empty());
  allocated_clusters_ += (entry.phys_block != 0) - (slot.phys_block != 0);
  compressed_clusters_ += format::IsCompressed(entry) - format::IsCompressed(slot);
  if (slot.phys_block) stored_blocks_ -= format::ChargedBlocks(slot, cluster_blocks_);
  if (entry.phys_block) stored_blocks_ += format::ChargedBlocks(entry, cluster_blocks_);
  written_blocks_ += __builtin_popcountll(entry.written_bits) - __builtin_popcountll(slot.written_bits);
  slot = entry;
  page->changes++;
  bool newly_dirty = !page->dirty;
  map_.MarkDirty(page);
  if (newly_dirty) services_.events.MapPagesDirtied();
  if (!journal) return;
  format::MapSetRecord record{id_, 0, cluster, entry};
  pool_.AppendRecord(format::RecordType::kMapSet,
                     std::span(reinterpret_cast<const uint8_t*>(&record), sizeof record), frees);
}

void ThinVolume::SubmitSubIo(SubIo* sub, IoQueue& queue) {
  sub->req.done = &ThinVolume::OnSubIoDone;
  sub->req.context = sub;
  queue.Submit(&sub->req);
}

void ThinVolume::OnSubIoDone(IoRequest* req, int result) {
  auto* sub = static_cast<SubIo*>(req->context);
  if (sub->merged) sub->req.length = sub->own_length;  // each finishes as itself
  // Read the chain before finishing: a finished sub-I/O is recycled, and
  // the last one may complete (and free) the request.
  while (sub) {
    SubIo* next = sub->merged;
    sub->merged = nullptr;
    sub->volume->FinishSubIo(sub, result);
    sub = next;
  }
}

// Runs on the polling thread for each finished sub-I/O. All sub-I/Os of a
// VolumeIo complete on the thread that submitted it (one IoQueue), so
// `progress` needs no lock.
void ThinVolume::FinishSubIo(SubIo* sub, int result) {
  VolumeIo* io = sub->io;
  bool decoded = false;  // compressed read already served under the lock
  {
    std::lock_guard lock(mu_);
    uint32_t index = ThinMap::IndexInPage(sub->cluster);
    assert(sub->page->inflight[index] > 0 && sub->page->pins > 0);
    sub->page->inflight[index]--;
    sub->page->pins--;
    assert(sub->page->pins >= sub->page->inflight[index]);
    format::MapEntry entry = sub->page->entries[index];
    if (sub->compressed_out && result == 0 && sub->page->changes != sub->page_changes) {
      // The cluster may have moved while its frame was read (compressed
      // clusters move on every write and their old space is freed): read
      // the current content again, synchronously, under the lock.
      Status again = ReadClusterBytes(entry, sub->cluster, sub->compressed_at, sub->compressed_length,
                                      sub->compressed_out);
      result = again.ok() ? 0 : -again.code();
      decoded = true;
    }
    // The data is on the device (not yet durable); the written bits follow
    // it into the journal, which the next commit writes after a flush.
    if (result == 0 && sub->req.op == IoOp::kWrite && entry.phys_block == sub->phys_block &&
        (entry.written_bits | sub->written_mask) != entry.written_bits) {
      // An in-place write lands only in a plain cluster (a compressed one is rewritten).
      assert(!format::IsCompressed(entry) && sub->written_mask != 0);
      entry.written_bits |= sub->written_mask;
      SetEntry(sub->page, sub->cluster, entry, /*journal=*/true);
    }
    if (sub->page->inflight[index] == 0) OnClusterIdleLocked(sub->cluster);
  }
  if (result == 0 && sub->req.op == IoOp::kRead && !decoded) {
    if (sub->compressed_out) {
      // Decompressing a cluster is the costly step: a codec worker takes it
      // if one has room, and the sub-I/O comes back through this queue.
      sub->req.done = &ThinVolume::OnCompressedReadDecoded;
      if (services_.codec_pool.TryOffload(&sub->req, *io->progress.queue, &ThinVolume::DecodeStep)) return;
    }
    Status s = sub->compressed_out ? DecodeCompressedRead(sub)
                                   : codec_->Decrypt(sub->first_logical_block, std::span(sub->req.buf, sub->req.length));
    if (!s.ok()) result = -s.code();
  }
  EndSubIo(sub, result);
}

// On a codec worker.
int ThinVolume::DecodeStep(IoRequest* req) {
  auto* sub = static_cast<SubIo*>(req->context);
  Status s = sub->volume->DecodeCompressedRead(sub);
  return s.ok() ? 0 : -s.code();
}

// Back on the submitter's thread, the frame decoded (or not).
void ThinVolume::OnCompressedReadDecoded(IoRequest* req, int result) {
  auto* sub = static_cast<SubIo*>(req->context);
  sub->volume->EndSubIo(sub, result);
}

void ThinVolume::EndSubIo(SubIo* sub, int result) {
  VolumeIo* io = sub->io;
  if (result < 0 && io->progress.error == 0) io->progress.error = -result;
  RecycleSubIo(sub);
  ReleaseGuard(io);
}

void ThinVolume::ReleaseHeldRuns(uint64_t cluster) {
  auto it = held_for_reads_.find(cluster);
  if (it == held_for_reads_.end()) return;
  assert(!it->second.empty());
  for (const BlockRun& run : it->second) pool_.DropHeldReference(run);
  held_for_reads_.erase(it);
}

void ThinVolume::ReleaseGuard(VolumeIo* io) {
  assert(io->progress.pending > 0);
  if (--io->progress.pending == 0) Complete(io);
}

static std::string DescribeError(int code) {
  switch (code) {
    case ENOSPC: return "pool is full; discard or delete data to free space (data already written is kept)";
    case ENOMEM: return "out of memory; the request was not done, retry it";
    case EIO: return "device I/O error; check the pool's disk, then restart to recover";
    case EUCLEAN: return "metadata or compressed data is damaged; run `edgestor pool fsck` for a report";
    default: return "I/O failed";
  }
}

void ThinVolume::Complete(VolumeIo* io) {
  assert(io->progress.pending == 0 && io->progress.volume == this);
  // Before the commit, which may wait for a checkpoint that a snapshot
  // (waiting for this count) holds up.
  if (io->progress.async_write) async_writes_--;
  if (io->progress.error) return Finish(io, Status(io->progress.error, "volume " + name_ + ": " + DescribeError(io->progress.error)));
  if (io->op != VolumeOp::kFlush && !io->fua) return Finish(io, Status::Ok());
  // Durable once the next group commit is: it runs on the committer's
  // thread and comes back through this queue.
  IoRequest& commit = io->progress.commit;
  commit.done = &ThinVolume::OnCommitted;
  commit.context = io;
  io->progress.queue->ExpectForeign(&commit);
  services_.committer.Enqueue(&commit, *io->progress.queue);
}

void ThinVolume::OnCommitted(IoRequest* req, int result) {
  auto* io = static_cast<VolumeIo*>(req->context);
  auto* volume = static_cast<ThinVolume*>(io->progress.volume);
  Status status;
  // Says what to do (DescribeError) and what failed (the commit's own error).
  if (result < 0)
    status = Status(-result, "volume " + volume->name_ + ": flush failed: " + DescribeError(-result) + " (" +
                                 volume->services_.committer.last_error() + ")");
  volume->Finish(io, status);
}

void ThinVolume::Finish(VolumeIo* io, const Status& status) {
  {
    std::lock_guard lock(mu_);
    assert(inflight_ios_ > 0);
    inflight_ios_--;
    map_.EvictIfOverBudget();
  }
  CountFinished(*io, status.ok());
  io->done(io, status);
  services_.events.RequestFinished();
}

}  // namespace edgestor
