// GuestMemory: the guest's RAM as the front-end shares it (SET_MEM_TABLE):
// up to 8 regions, each a file descriptor we map, and translation from
// guest-physical addresses (descriptors) and front-end virtual addresses
// (ring locations) to our own pointers.
//
// Every translation checks that the whole range lies inside one region:
// a descriptor pointing anywhere else gets nullptr, never a wild pointer.
// Every region must lie inside its file (CheckFileCovers): pages mapped past
// a file's end raise SIGBUS when touched, which would kill the daemon.
// Immutable once built; replaced as a whole when the table changes.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "base/status.h"
#include "frontend/vhost/vhost_user_protocol.h"

namespace edgestor::vhost {

// OK if `fd` is a regular file (a memfd, or a tmpfs or hugetlbfs file) that
// holds all of [offset, offset+size); EINVAL otherwise. Checked before any
// memory a front-end shares (guest RAM, inflight regions) is mapped. A
// front-end that shrinks the file after the check can still cause SIGBUS;
// QEMU's memfd back-ends seal their size, and ours are never resized.
Status CheckFileCovers(int fd, uint64_t offset, uint64_t size);

class GuestMemory {
 public:
  // Maps every region of `table` from its descriptor in `fds` (one per
  // region, in order). The descriptors stay owned by the caller.
  static Result<std::shared_ptr<GuestMemory>> Map(const MemoryTable& table, std::span<const int> fds);
  ~GuestMemory();
  GuestMemory(const GuestMemory&) = delete;
  GuestMemory& operator=(const GuestMemory&) = delete;

  // [address, address+length) in guest-physical space; nullptr unless it
  // lies wholly inside one region.
  uint8_t* FromGuest(uint64_t address, uint64_t length) const;
  // The same for the front-end's virtual addresses (SET_VRING_ADDR).
  uint8_t* FromFrontEnd(uint64_t address, uint64_t length) const;

 private:
  struct Mapped {
    uint64_t guest_phys;
    uint64_t frontend_virt;
    uint64_t size;
    uint8_t* host;       // region start in our address space
    void* map_base;      // what mmap returned (region start - mmap_offset)
    size_t map_length;
  };
  GuestMemory() = default;
  std::vector<Mapped> regions_;
};

}  // namespace edgestor::vhost
