#include "io/signature_probe.h"

#include <blkid/blkid.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <memory>

namespace edgestor {

namespace {

struct FdCloser {
  int fd;
  ~FdCloser() {
    if (fd >= 0) close(fd);
  }
};

struct ProbeDeleter {
  void operator()(blkid_struct_probe* probe) const { blkid_free_probe(probe); }
};

// Copies [offset, offset+len) of the device into the same place of `fd`.
Status CopyRange(Device& device, int fd, uint64_t offset, uint64_t len) {
  constexpr uint64_t kChunk = 256 * 1024;
  AlignedBuffer buf = AllocateAligned(kChunk);
  for (uint64_t done = 0; done < len;) {
    uint64_t n = std::min(kChunk, len - done);
    ES_RETURN_IF_ERROR(device.ReadSync(offset + done, buf.get(), n));
    ssize_t w = pwrite(fd, buf.get(), n, static_cast<off_t>(offset + done));
    if (w != static_cast<ssize_t>(n)) return Status(errno ? errno : EIO, "cannot copy device bytes for probing");
    done += n;
  }
  return Status::Ok();
}

}  // namespace

Status ProbeForeignSignatures(Device& device) {
  uint64_t size = device.size() / kSectorSize * kSectorSize;
  FdCloser image{memfd_create("edgestor-probe", MFD_CLOEXEC)};
  if (image.fd < 0) return Status(errno, "cannot create a memory file to probe " + device.name());
  if (ftruncate(image.fd, static_cast<off_t>(size)) != 0)
    return Status(errno, "cannot size the memory file to probe " + device.name());
  uint64_t head = std::min(size, kSignatureProbeBytes);
  ES_RETURN_IF_ERROR(CopyRange(device, image.fd, 0, head).WithContext("probing " + device.name()));
  uint64_t tail_start = size - std::min(size - head, kSignatureProbeBytes);
  ES_RETURN_IF_ERROR(CopyRange(device, image.fd, tail_start, size - tail_start).WithContext("probing " + device.name()));

  std::unique_ptr<blkid_struct_probe, ProbeDeleter> probe(blkid_new_probe());
  if (!probe) return Status(ENOMEM, "cannot start libblkid");
  if (blkid_probe_set_device(probe.get(), image.fd, 0, static_cast<blkid_loff_t>(size)) != 0)
    return Status(EIO, "libblkid cannot probe " + device.name());
  blkid_probe_enable_superblocks(probe.get(), 1);
  blkid_probe_set_superblocks_flags(probe.get(), BLKID_SUBLKS_TYPE);
  blkid_probe_enable_partitions(probe.get(), 1);
  blkid_probe_set_partitions_flags(probe.get(), BLKID_PARTS_MAGIC);
  int rc = blkid_do_safeprobe(probe.get());
  if (rc == 1) return Status::Ok();
  if (rc == -2)
    return Status(EEXIST, device.name() + " holds several conflicting signatures (file systems or partition tables)");
  if (rc < 0) return Status(EIO, "libblkid failed to probe " + device.name());
  const char* value = nullptr;
  if (blkid_probe_lookup_value(probe.get(), "PTTYPE", &value, nullptr) == 0 && value)
    return Status(EEXIST, device.name() + " holds a " + std::string(value) + " partition table");
  if (blkid_probe_lookup_value(probe.get(), "TYPE", &value, nullptr) == 0 && value)
    return Status(EEXIST, device.name() + " holds a " + std::string(value) + " signature (file system or volume member)");
  return Status(EEXIST, device.name() + " holds a signature libblkid recognizes");
}

}  // namespace edgestor
