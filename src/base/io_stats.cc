#include "base/io_stats.h"

#include <algorithm>
#include <cassert>
#include <ctime>

namespace edgestor {

std::string_view IoKindName(IoKind kind) {
  switch (kind) {
    case IoKind::kRead: return "read";
    case IoKind::kWrite: return "write";
    case IoKind::kFlush: return "flush";
    case IoKind::kDiscard: return "discard";
    case IoKind::kWriteZeroes: return "write_zeroes";
  }
  return "unknown";
}

uint64_t IoStats::NowNs() {
  timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return static_cast<uint64_t>(now.tv_sec) * 1000000000ull + static_cast<uint64_t>(now.tv_nsec);
}

size_t IoStats::ShardIndex() {
  static std::atomic<size_t> next{0};
  thread_local size_t index = next.fetch_add(1, std::memory_order_relaxed) % kShards;
  return index;
}

void IoStats::Finished(IoKind kind, uint64_t bytes, uint64_t latency_ns, bool ok) {
  size_t index = static_cast<size_t>(kind);
  assert(index < kIoKinds);
  Shard& shard = shards_[ShardIndex()];
  KindCounters& k = shard.kinds[index];
  k.ops.fetch_add(1, std::memory_order_relaxed);
  k.bytes.fetch_add(bytes, std::memory_order_relaxed);
  if (!ok) k.errors.fetch_add(1, std::memory_order_relaxed);
  k.latency_ns_sum.fetch_add(latency_ns, std::memory_order_relaxed);
  uint64_t latency_us = (latency_ns + 999) / 1000;  // a bucket holds latencies <= its bound
  size_t bucket = std::lower_bound(kLatencyBucketsUs.begin(), kLatencyBucketsUs.end(), latency_us) - kLatencyBucketsUs.begin();
  k.buckets[bucket].fetch_add(1, std::memory_order_relaxed);
  shard.in_flight.fetch_sub(1, std::memory_order_relaxed);
}

IoStatsSnapshot IoStats::Snapshot() const {
  IoStatsSnapshot out;
  uint64_t in_flight = 0;
  for (const Shard& shard : shards_) {
    for (size_t i = 0; i < kIoKinds; ++i) {
      const KindCounters& k = shard.kinds[i];
      IoKindCounters& c = out.kinds[i];
      c.ops += k.ops.load(std::memory_order_relaxed);
      c.bytes += k.bytes.load(std::memory_order_relaxed);
      c.errors += k.errors.load(std::memory_order_relaxed);
      c.latency_ns_sum += k.latency_ns_sum.load(std::memory_order_relaxed);
      for (size_t b = 0; b < kLatencyBuckets; ++b) c.latency_buckets[b] += k.buckets[b].load(std::memory_order_relaxed);
    }
    in_flight += shard.in_flight.load(std::memory_order_relaxed);
  }
  // Started and Finished race with this read: never show a negative depth.
  int64_t depth = static_cast<int64_t>(in_flight);
  out.in_flight = depth > 0 ? static_cast<uint64_t>(depth) : 0;
  return out;
}

}  // namespace edgestor
