// What counting one request costs the data path (base/io_stats.h), in
// nanoseconds: the engine's two clock reads and the updates of the
// volume's and an export's IoStats, as ThinVolume::Submit and ::Finish do;
// from one thread, and from two threads counting into the same IoStats at
// once (two NBD connections or vhost-user queues of one volume). Compare
// with the server CPU per I/O the other benchmarks print (7 µs for a 4K
// request over NBD on the 2-core test machine).
//   build/bench/io_stats_bench [iterations]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

#include "base/io_stats.h"

namespace edgestor {

IoStats volume_stats, export_stats;

namespace {

void CountRequests(uint64_t n) {
  for (uint64_t i = 0; i < n; i++) {
    uint64_t started = IoStats::NowNs();
    volume_stats.Started();
    export_stats.Started();
    uint64_t latency = IoStats::NowNs() - started;
    volume_stats.Finished(IoKind::kWrite, 4096, latency, true);
    export_stats.Finished(IoKind::kWrite, 4096, latency, true);
  }
}

// Nanoseconds per request and thread, with `threads` threads counting.
double Measure(int threads, uint64_t n) {
  auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> running;
  for (int t = 0; t < threads; t++) running.emplace_back(CountRequests, n);
  for (std::thread& t : running) t.join();
  return std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - start).count() /
         static_cast<double>(n);
}

}  // namespace
}  // namespace edgestor

int main(int argc, char** argv) {
  uint64_t n = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 10'000'000;
  edgestor::Measure(1, n / 10);  // warm up
  for (int round = 0; round < 3; round++)
    std::printf("counting one request: %.0f ns with one thread, %.0f ns per thread with two on the same volume\n",
                edgestor::Measure(1, n), edgestor::Measure(2, n));
  edgestor::IoStatsSnapshot s = edgestor::volume_stats.Snapshot();
  std::printf("(counted %llu writes, %llu in flight)\n",
              static_cast<unsigned long long>(s[edgestor::IoKind::kWrite].ops),
              static_cast<unsigned long long>(s.in_flight));
  return s.in_flight == 0 ? 0 : 1;
}
