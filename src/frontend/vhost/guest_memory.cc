#include "frontend/vhost/guest_memory.h"

#include <sys/mman.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>

namespace edgestor::vhost {

namespace {

// True when [address, address+length) lies inside [start, start+size).
bool Inside(uint64_t address, uint64_t length, uint64_t start, uint64_t size) {
  return address >= start && address - start <= size && length <= size - (address - start);
}

}  // namespace

Status CheckFileCovers(int fd, uint64_t offset, uint64_t size) {
  struct stat st;
  if (::fstat(fd, &st) != 0) return Status(errno, std::string("cannot stat a shared memory descriptor: ") + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) return Status(EINVAL, "shared memory is not a regular file or memfd");
  uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (offset > file_size || size > file_size - offset)
    return Status(EINVAL, std::to_string(size) + " bytes at offset " + std::to_string(offset) +
                              " do not lie within their " + std::to_string(file_size) + "-byte file");
  return Status::Ok();
}

Result<std::shared_ptr<GuestMemory>> GuestMemory::Map(const MemoryTable& table, std::span<const int> fds) {
  if (table.nregions == 0 || table.nregions > kMaxMemoryRegions || fds.size() != table.nregions)
    return Status(EINVAL, "memory table has " + std::to_string(table.nregions) + " regions and " +
                              std::to_string(fds.size()) + " descriptors");
  std::shared_ptr<GuestMemory> memory(new GuestMemory());
  for (uint32_t i = 0; i < table.nregions; i++) {
    const MemoryRegion& r = table.regions[i];
    if (r.memory_size == 0 || r.mmap_offset > UINT64_MAX - r.memory_size ||
        r.guest_phys_addr > UINT64_MAX - r.memory_size || r.userspace_addr > UINT64_MAX - r.memory_size)
      return Status(EINVAL, "memory region " + std::to_string(i) + " has an impossible size or offset");
    Status covered = CheckFileCovers(fds[i], r.mmap_offset, r.memory_size);
    if (!covered.ok()) return Status(EINVAL, "memory region " + std::to_string(i) + ": " + covered.message());
    size_t length = r.mmap_offset + r.memory_size;
    void* base = ::mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_SHARED, fds[i], 0);
    if (base == MAP_FAILED)
      return Status(errno, "cannot map guest memory region " + std::to_string(i) + ": " + std::strerror(errno));
    memory->regions_.push_back({r.guest_phys_addr, r.userspace_addr, r.memory_size,
                                static_cast<uint8_t*>(base) + r.mmap_offset, base, length});
  }
  return memory;
}

GuestMemory::~GuestMemory() {
  for (const Mapped& r : regions_) ::munmap(r.map_base, r.map_length);
}

uint8_t* GuestMemory::FromGuest(uint64_t address, uint64_t length) const {
  for (const Mapped& r : regions_)
    if (Inside(address, length, r.guest_phys, r.size)) return r.host + (address - r.guest_phys);
  return nullptr;
}

uint8_t* GuestMemory::FromFrontEnd(uint64_t address, uint64_t length) const {
  for (const Mapped& r : regions_)
    if (Inside(address, length, r.frontend_virt, r.size)) return r.host + (address - r.frontend_virt);
  return nullptr;
}

}  // namespace edgestor::vhost
