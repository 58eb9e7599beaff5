// Test support shared by the volume tests: tagged sector patterns and a
// model of what each sector of a volume may hold after a crash.
//
// Every write fills each 512-byte sector with a 16-byte pattern naming the
// write (a tag) and the sector, repeated. Reading a sector back therefore
// tells which write it came from, or that it is zeros (tag 0), or garbage.
#pragma once

#include <cstdint>
#include <cstring>
#include <set>
#include <string>
#include <vector>

namespace edgestor::testing {

inline constexpr uint64_t kZeroTag = 0;
inline constexpr uint64_t kGarbageTag = ~0ull;

inline void FillSector(uint8_t* sector, uint64_t tag, uint64_t sector_index) {
  if (tag == kZeroTag) {
    std::memset(sector, 0, 512);
    return;
  }
  std::memcpy(sector, &tag, 8);
  std::memcpy(sector + 8, &sector_index, 8);
  // Odd tags repeat the header (compresses well), even tags continue with
  // pseudo-random bytes (does not compress), so compressed volumes see
  // clusters whose stored size changes from write to write.
  uint64_t state = tag * 0x9e3779b97f4a7c15ull ^ sector_index;
  for (int i = 16; i < 512; i += 8) {
    uint64_t word;
    if (tag & 1) {
      std::memcpy(&word, sector + (i % 16), 8);
    } else {
      state += 0x9e3779b97f4a7c15ull;  // splitmix64
      word = state;
      word = (word ^ (word >> 30)) * 0xbf58476d1ce4e5b9ull;
      word = (word ^ (word >> 27)) * 0x94d049bb133111ebull;
      word ^= word >> 31;
    }
    std::memcpy(sector + i, &word, 8);
  }
}

// Returns the tag of a sector, or kGarbageTag if it is neither zeros nor an
// intact pattern for this sector index (e.g. another volume's data).
inline uint64_t DecodeSector(const uint8_t* sector, uint64_t sector_index) {
  uint64_t tag;
  std::memcpy(&tag, sector, 8);
  uint8_t expected[512];
  FillSector(expected, tag, sector_index);
  if (std::memcmp(expected, sector, 512) == 0) return tag;
  return kGarbageTag;
}

// What a volume's sectors may hold. `flushed[s]` is the tag known durable;
// `since[s]` the tags written (or attempted) since. After a crash a sector
// must hold one of flushed[s] or since[s] (invariants 1 and 2 of the brief).
class VolumeModel {
 public:
  explicit VolumeModel(uint64_t max_sectors) : flushed_(max_sectors, kZeroTag), since_(max_sectors) {}

  // A write (or discard/zeroes with tag 0) was submitted; `durable` when it
  // completed with FUA.
  void Write(uint64_t first_sector, uint64_t sectors, uint64_t tag, bool durable) {
    for (uint64_t s = first_sector; s < first_sector + sectors; s++) {
      if (durable) {
        flushed_[s] = tag;
        since_[s].clear();
      } else {
        since_[s].push_back(tag);
      }
    }
  }
  // A flush completed: the latest value of every sector is durable.
  void Flush() {
    for (uint64_t s = 0; s < flushed_.size(); s++) {
      if (!since_[s].empty()) flushed_[s] = since_[s].back();
      since_[s].clear();
    }
  }
  bool Allows(uint64_t sector, uint64_t tag) const {
    if (flushed_[sector] == tag) return true;
    for (uint64_t t : since_[sector])
      if (t == tag) return true;
    return false;
  }
  // After a crash and verification: what was read is now the durable truth.
  void Settle(uint64_t sector, uint64_t tag) {
    flushed_[sector] = tag;
    since_[sector].clear();
  }
  // The latest value (what a read must return while no crash happened).
  uint64_t Latest(uint64_t sector) const { return since_[sector].empty() ? flushed_[sector] : since_[sector].back(); }
  // Sectors past a shrink are gone: growing again exposes zeros.
  void Truncate(uint64_t from_sector) {
    for (uint64_t s = from_sector; s < flushed_.size(); s++) {
      flushed_[s] = kZeroTag;
      since_[s].clear();
    }
  }
  uint64_t max_sectors() const { return flushed_.size(); }

 private:
  std::vector<uint64_t> flushed_;
  std::vector<std::vector<uint64_t>> since_;
};

}  // namespace edgestor::testing
