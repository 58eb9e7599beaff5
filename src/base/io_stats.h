// IoStats: what one volume or one export served, for metrics and iostat.
//
// Per kind of operation: requests completed, bytes moved, requests that
// failed, and a latency histogram with fixed bucket bounds (Prometheus
// style: cumulative when rendered, stored per bucket here). Recorded with
// relaxed atomics by every thread that completes a request; a snapshot of
// several counters may be slightly skewed, never torn.
//
// The counters are sharded: each thread writes the shard its index picks
// (threads take indexes in turn), so the I/O threads of one volume (NBD
// connections, vhost-user queues) do not pass cache lines back and forth
// on every request; Snapshot() sums the shards. bench/io_stats_bench.cc
// measures the cost per request.
//
// The engine records every request of a volume in the volume's IoStats,
// and in the submitter's as well when the request names one
// (VolumeIo::stats): that is how an export counts what it sent.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <string_view>

namespace edgestor {

// Mirrors VolumeOp's order (volume/volume.h), without depending on it.
enum class IoKind : uint8_t { kRead, kWrite, kFlush, kDiscard, kWriteZeroes };
inline constexpr size_t kIoKinds = 5;
std::string_view IoKindName(IoKind kind);  // "read", "write", "flush", "discard", "write_zeroes"

// Upper bounds of the latency buckets, in microseconds; a last, unbounded
// bucket (+Inf) follows them.
inline constexpr std::array<uint64_t, 14> kLatencyBucketsUs = {25,   50,    100,   250,    500,    1000,   2500,
                                                               5000, 10000, 25000, 50000, 100000, 250000, 1000000};
inline constexpr size_t kLatencyBuckets = kLatencyBucketsUs.size() + 1;

// A plain copy of one kind's counters.
struct IoKindCounters {
  uint64_t ops = 0;
  uint64_t bytes = 0;
  uint64_t errors = 0;
  uint64_t latency_ns_sum = 0;
  std::array<uint64_t, kLatencyBuckets> latency_buckets{};  // per bucket, not cumulative
};

struct IoStatsSnapshot {
  std::array<IoKindCounters, kIoKinds> kinds{};
  uint64_t in_flight = 0;
  const IoKindCounters& operator[](IoKind kind) const { return kinds[static_cast<size_t>(kind)]; }
};

class IoStats {
 public:
  IoStats() = default;
  IoStats(const IoStats&) = delete;
  IoStats& operator=(const IoStats&) = delete;

  // A request was accepted (in flight until Finished).
  void Started() { shards_[ShardIndex()].in_flight.fetch_add(1, std::memory_order_relaxed); }
  // A request Started earlier completed after `latency_ns`; `bytes` is
  // its length (moved for reads and writes, covered for the others).
  void Finished(IoKind kind, uint64_t bytes, uint64_t latency_ns, bool ok);

  IoStatsSnapshot Snapshot() const;

  // The monotonic clock the latencies are measured with.
  static uint64_t NowNs();

 private:
  static constexpr size_t kShards = 8;
  struct KindCounters {
    std::atomic<uint64_t> ops{0};
    std::atomic<uint64_t> bytes{0};
    std::atomic<uint64_t> errors{0};
    std::atomic<uint64_t> latency_ns_sum{0};
    std::array<std::atomic<uint64_t>, kLatencyBuckets> buckets{};
  };
  struct alignas(64) Shard {
    std::array<KindCounters, kIoKinds> kinds;
    // Started here and Finished on another shard only if a request
    // completes on another thread: the sum over shards is right either way
    // (unsigned, modulo 2^64).
    std::atomic<uint64_t> in_flight{0};
  };
  // This thread's shard: threads take indexes in turn at their first use.
  static size_t ShardIndex();

  std::array<Shard, kShards> shards_;
};

}  // namespace edgestor
