#include "frontend/vhost/virtqueue.h"

#include <cerrno>
#include <cstring>

namespace edgestor::vhost {

namespace {

// Loads and stores on guest-shared memory: one access each, never cached
// or split by the compiler.
uint16_t Load16(const uint16_t* p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
void Store16(uint16_t* p, uint16_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }

}  // namespace

Status Virtqueue::Start(std::shared_ptr<const GuestMemory> memory, const Layout& layout, uint16_t last_avail_idx,
                        bool event_idx) {
  uint32_t n = layout.size;
  if (n == 0 || n > kMaxQueueSize || (n & (n - 1)) != 0)
    return Status(EINVAL, "queue size " + std::to_string(n) + " is not a power of two up to 1024");
  auto* desc = memory->FromFrontEnd(layout.desc, sizeof(Desc) * n);
  auto* avail = memory->FromFrontEnd(layout.avail, 2 * (3 + n));
  auto* used = memory->FromFrontEnd(layout.used, 2 * 3 + sizeof(UsedElem) * n);
  if (!desc || !avail || !used) return Status(EINVAL, "a ring of the virtqueue lies outside guest memory");
  if (reinterpret_cast<uintptr_t>(desc) % 16 || reinterpret_cast<uintptr_t>(avail) % 2 ||
      reinterpret_cast<uintptr_t>(used) % 4)
    return Status(EINVAL, "a ring of the virtqueue is misaligned");
  memory_ = std::move(memory);
  size_ = static_cast<uint16_t>(n);
  desc_ = reinterpret_cast<Desc*>(desc);
  avail_ = reinterpret_cast<uint16_t*>(avail);
  used_ = reinterpret_cast<uint16_t*>(used);
  event_idx_ = event_idx;
  last_avail_idx_ = last_avail_idx;
  used_idx_ = Load16(&used_[1]);
  signalled_valid_ = false;
  return Status::Ok();
}

uint16_t Virtqueue::AvailIdx() const {
  uint16_t idx = Load16(&avail_[1]);
  std::atomic_thread_fence(std::memory_order_acquire);  // ring entries after the index
  return idx;
}

Result<std::optional<uint16_t>> Virtqueue::Pop() {
  uint16_t avail_idx = AvailIdx();
  uint16_t pending = static_cast<uint16_t>(avail_idx - last_avail_idx_);
  if (pending == 0) return std::optional<uint16_t>();
  if (pending > size_) return Status(EINVAL, "guest made more buffers available than the queue holds");
  uint16_t head = Load16(&avail_[2 + last_avail_idx_ % size_]);
  last_avail_idx_++;
  if (head >= size_) return Status(EINVAL, "available ring names descriptor " + std::to_string(head));
  return std::optional<uint16_t>(head);
}

Status Virtqueue::AddSegment(const Desc& desc, std::vector<Segment>* segments) const {
  if (desc.len == 0) return Status::Ok();
  uint8_t* data = memory_->FromGuest(desc.addr, desc.len);
  if (!data) return Status(EFAULT, "descriptor points outside guest memory");
  segments->push_back({data, desc.len, (desc.flags & kDescWrite) != 0});
  return Status::Ok();
}

Status Virtqueue::WalkIndirect(const Desc& table_desc, std::vector<Segment>* segments) const {
  if (table_desc.len == 0 || table_desc.len % sizeof(Desc) != 0 || (table_desc.flags & kDescNext))
    return Status(EINVAL, "bad indirect descriptor table");
  uint32_t count = table_desc.len / sizeof(Desc);
  if (count > kMaxQueueSize * 4) return Status(EINVAL, "indirect descriptor table too long");
  const uint8_t* table = memory_->FromGuest(table_desc.addr, table_desc.len);
  if (!table) return Status(EFAULT, "indirect descriptor table outside guest memory");
  uint32_t i = 0;
  for (uint32_t visited = 0;; visited++) {
    if (visited >= count) return Status(ELOOP, "indirect descriptor chain loops");
    Desc d;
    std::memcpy(&d, table + i * sizeof(Desc), sizeof d);
    if (d.flags & kDescIndirect) return Status(EINVAL, "nested indirect descriptor table");
    ES_RETURN_IF_ERROR(AddSegment(d, segments));
    if (!(d.flags & kDescNext)) return Status::Ok();
    if (d.next >= count) return Status(EINVAL, "indirect descriptor chain leaves its table");
    i = d.next;
  }
}

Status Virtqueue::Walk(uint16_t head, std::vector<Segment>* segments) const {
  segments->clear();
  uint16_t i = head;
  for (uint32_t visited = 0;; visited++) {
    if (visited >= size_) return Status(ELOOP, "descriptor chain loops or is longer than the queue");
    Desc d;
    std::memcpy(&d, &desc_[i], sizeof d);  // one copy: the guest may change it
    if (d.flags & kDescIndirect) {
      if (visited != 0 || (d.flags & kDescNext)) return Status(EINVAL, "indirect descriptor inside a chain");
      return WalkIndirect(d, segments);
    }
    ES_RETURN_IF_ERROR(AddSegment(d, segments));
    if (!(d.flags & kDescNext)) return Status::Ok();
    if (d.next >= size_) return Status(EINVAL, "descriptor chain names descriptor " + std::to_string(d.next));
    i = d.next;
  }
}

void Virtqueue::Push(uint16_t head, uint32_t written) {
  auto* ring = reinterpret_cast<UsedElem*>(used_ + 2);
  UsedElem elem{head, written};
  std::memcpy(&ring[used_idx_ % size_], &elem, sizeof elem);
  used_idx_++;
  std::atomic_thread_fence(std::memory_order_release);  // the entry before the index
  Store16(&used_[1], used_idx_);
}

bool Virtqueue::ShouldNotify() {
  // The used index must be visible before we read the guest's wishes.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  uint16_t old = signalled_used_;
  bool valid = signalled_valid_;
  signalled_used_ = used_idx_;
  signalled_valid_ = true;
  if (!event_idx_) return !(Load16(&avail_[0]) & kAvailNoInterrupt);
  if (!valid) return true;
  uint16_t used_event = Load16(&avail_[2 + size_]);
  return static_cast<uint16_t>(used_idx_ - used_event - 1) < static_cast<uint16_t>(used_idx_ - old);
}

bool Virtqueue::ArmKick() {
  if (event_idx_) {
    auto* avail_event = reinterpret_cast<uint16_t*>(reinterpret_cast<uint8_t*>(used_ + 2) + sizeof(UsedElem) * size_);
    Store16(avail_event, last_avail_idx_);
  }
  std::atomic_thread_fence(std::memory_order_seq_cst);  // publish before looking again
  return AvailIdx() != last_avail_idx_;
}

}  // namespace edgestor::vhost
