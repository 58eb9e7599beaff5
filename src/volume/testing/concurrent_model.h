// Test support: what each sector of a volume may hold while several
// threads write it and after a crash (see concurrent_power_cut_test.cc).
#pragma once

#include <cstdint>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "volume/testing/volume_model.h"

namespace edgestor::testing {

// "{ 3 0 17 }": tags for a failure message (ostringstream: GCC 12 warns
// -Wrestrict on literal + std::string).
inline std::string TagSet(std::vector<uint64_t>::const_iterator begin, std::vector<uint64_t>::const_iterator end) {
  std::ostringstream out;
  out << "{";
  for (auto it = begin; it != end; ++it) out << " " << *it;
  out << " }";
  return out.str();
}

// Per sector, the tags it may hold. Thread-safe; its lock is a leaf, never
// held while calling the engine.
class ConcurrentModel {
 public:
  // Per sector, the index of the newest write that had completed
  // successfully at some moment (the start of a flush or snapshot).
  using Point = std::vector<uint32_t>;
  using Allowed = std::vector<std::vector<uint64_t>>;  // per sector

  explicit ConcurrentModel(uint64_t sectors) : sectors_(sectors) {}

  // Reserves [first, first+count) for one request; false if a request in
  // flight already covers any of it.
  bool Claim(uint64_t first, uint64_t count) {
    std::lock_guard lock(mu_);
    for (uint64_t s = first; s < first + count; s++)
      if (sectors_[s].claimed) return false;
    for (uint64_t s = first; s < first + count; s++) sectors_[s].claimed = true;
    return true;
  }
  // A write (tag 0: discard or write-zeroes) of claimed sectors is submitted.
  void WriteSubmitted(uint64_t first, uint64_t count, uint64_t tag) {
    std::lock_guard lock(mu_);
    for (uint64_t s = first; s < first + count; s++) sectors_[s].history.push_back(tag);
  }
  // It completed; a failed write stays possible but never becomes durable.
  void WriteCompleted(uint64_t first, uint64_t count, bool ok, bool fua) {
    std::lock_guard lock(mu_);
    for (uint64_t s = first; s < first + count; s++) {
      Sector& sector = sectors_[s];
      if (ok) sector.completed_ok = static_cast<uint32_t>(sector.history.size() - 1);
      if (ok && fua) sector.durable = std::max(sector.durable, sector.completed_ok);
      sector.claimed = false;
    }
  }
  // A read of claimed sectors completed (data null if it failed): with no
  // write in flight there, each sector holds its newest completed write.
  // Returns what is wrong, or an empty string.
  std::string ReadCompleted(uint64_t first, uint64_t count, const uint8_t* data) {
    std::lock_guard lock(mu_);
    std::string wrong;
    for (uint64_t s = first; s < first + count; s++) {
      Sector& sector = sectors_[s];
      sector.claimed = false;
      if (!data || !wrong.empty()) continue;
      uint64_t tag = DecodeSector(data + (s - first) * 512, s);
      if (Contains(sector.history, sector.completed_ok, tag)) continue;
      std::ostringstream message;
      message << "live read of sector " << s << " returned tag " << tag << ", expected one of "
              << DescribeLocked(sector, sector.completed_ok);
      wrong = message.str();
    }
    return wrong;
  }
  Point Completed() const {
    std::lock_guard lock(mu_);
    Point point(sectors_.size());
    for (size_t s = 0; s < sectors_.size(); s++) point[s] = sectors_[s].completed_ok;
    return point;
  }
  // A flush (or checkpoint, or snapshot) that started at `point` succeeded.
  void MakeDurable(const Point& point) {
    std::lock_guard lock(mu_);
    for (size_t s = 0; s < sectors_.size(); s++) sectors_[s].durable = std::max(sectors_[s].durable, point[s]);
  }
  // What a snapshot taken from `start` until now may hold: per sector, the
  // newest completed write at its start and every write submitted since.
  Allowed Since(const Point& start) const {
    std::lock_guard lock(mu_);
    Allowed allowed(sectors_.size());
    for (size_t s = 0; s < sectors_.size(); s++)
      allowed[s].assign(sectors_[s].history.begin() + start[s], sectors_[s].history.end());
    return allowed;
  }
  // After a crash: the durable tag or one written after it.
  bool Allows(uint64_t s, uint64_t tag) const {
    std::lock_guard lock(mu_);
    return Contains(sectors_[s].history, sectors_[s].durable, tag);
  }
  std::string Describe(uint64_t s) const {
    std::lock_guard lock(mu_);
    return DescribeLocked(sectors_[s], sectors_[s].durable);
  }
  // What was read after a crash is the new durable truth.
  void Settle(uint64_t s, uint64_t tag) {
    std::lock_guard lock(mu_);
    assert(!sectors_[s].claimed);
    sectors_[s] = Sector{{tag}};
  }

 private:
  struct Sector {
    // [0]: what the sector held when last settled; then every write
    // submitted since, in order (a sector's writes never overlap in time).
    std::vector<uint64_t> history{kZeroTag};
    uint32_t durable = 0;       // after a crash: one of history[durable..]
    uint32_t completed_ok = 0;  // newest write that completed successfully
    bool claimed = false;       // a request in flight covers it
  };

  static bool Contains(const std::vector<uint64_t>& history, uint32_t from, uint64_t tag) {
    return std::find(history.begin() + from, history.end(), tag) != history.end();
  }
  static std::string DescribeLocked(const Sector& sector, uint32_t from) {
    return TagSet(sector.history.begin() + from, sector.history.end());
  }

  mutable std::mutex mu_;
  std::vector<Sector> sectors_;
};

// Evidence that the rounds reached what they test.
}  // namespace edgestor::testing
