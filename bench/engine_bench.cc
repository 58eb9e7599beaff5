// engine_bench: 4 KiB random I/O through one thin volume, in process.
//
// Creates a fresh pool on a file and one volume in it, then keeps `qd`
// VolumeIo requests in flight from one thread on one IoQueue and prints one
// line of JSON with the figures bench/engine.sh compares against fio on a raw
// file (see bench/README.md for what each figure means).
//
// Modes:
//   firstwrite  4 KiB writes to never-written blocks (a permutation: no repeats)
//   overwrite   4 KiB writes over a volume filled beforehand
//   read        4 KiB reads of a volume filled beforehand
//   rss         memory check: --ios first writes over a big volume, then
//               --read-ios reads of written blocks; reports peak RSS and the
//               map cache against what the whole map would need
//
// The timed phase excludes pool creation and prefill; for writes it ends with
// a Flush so the metadata commits it caused are counted.
#include <sys/resource.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cassert>
#include <cerrno>
#include <chrono>
#include <thread>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "base/size_parse.h"
#include "base/status.h"
#include "codec/compressor.h"
#include "io/device.h"
#include "volume/thin_map.h"
#include "volume/volume.h"
#include "volume/volume_set.h"

namespace edgestor::bench {
namespace {

using Clock = std::chrono::steady_clock;
using Json = nlohmann::json;

constexpr uint64_t kIoBytes = 4096;              // the benchmarked request size
constexpr uint64_t kPrefillIoBytes = 1ull << 20;  // prefill: sequential 1 MiB writes
constexpr uint32_t kPrefillDepth = 8;
constexpr uint32_t kMaxDepth = 1024;
constexpr uint64_t kRssReadIos = 100000;
constexpr uint64_t kRssWriteIos = 2621440;  // 10 GiB of 4 KiB writes
constexpr char kVolumeName[] = "bench";
static_assert(kPrefillIoBytes % kIoBytes == 0);

enum class Mode { kFirstWrite, kOverwrite, kRead, kRss };

struct Options {
  std::string pool;
  uint64_t pool_size = 8ull << 30;
  uint64_t volume_size = 4ull << 30;
  uint32_t cluster_size = 64 * 1024;
  Mode mode = Mode::kOverwrite;
  std::string mode_name = "overwrite";
  uint32_t qd = 1;
  double seconds = 10;
  std::optional<uint64_t> ios;  // when set, replaces the time limit
  uint64_t read_ios = kRssReadIos;
  uint64_t map_cache = 64ull << 20;
  uint64_t seed = 1;
  std::string compression_name = "off";
  CompressionSetting compression;  // on: the data written compresses about 2:1
  std::optional<uint32_t> recompress_idle_ms;  // unset: the pool's default
  double settle_seconds = 0;  // after the timed phase: wait for the recompressor, at most this long
};

// Set once from the options, before any runner exists.
bool g_compressible_data = false;

[[noreturn]] void Die(const Status& status, const std::string& what) {
  std::cerr << "engine_bench: " << what << ": " << status.ToString() << "\n";
  std::exit(1);
}

// A pseudo-random permutation of [0, n) that needs no memory: a 4-round
// Feistel network over the smallest even bit width covering n, with cycle
// walking for values past n (at most 4x the domain, so a few steps on
// average). Lets firstwrite pick blocks without repeats on a 1 TiB volume.
class BlockPermutation {
 public:
  BlockPermutation(uint64_t n, uint64_t seed) : n_(n) {
    assert(n > 0 && n < (1ull << 62));
    int bits = 2;
    while ((1ull << bits) < n) bits += 2;
    half_bits_ = bits / 2;
    half_mask_ = (1ull << half_bits_) - 1;
    std::mt19937_64 rng(seed);
    for (uint64_t& key : keys_) key = rng();
  }

  uint64_t size() const { return n_; }

  uint64_t operator()(uint64_t i) const {
    assert(i < n_);
    uint64_t x = i;
    do x = Encrypt(x);
    while (x >= n_);
    return x;
  }

 private:
  static uint64_t Mix(uint64_t x) {  // splitmix64 finaliser
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
  }
  uint64_t Encrypt(uint64_t x) const {
    uint64_t left = x >> half_bits_, right = x & half_mask_;
    for (uint64_t key : keys_) {
      uint64_t next = left ^ (Mix(right ^ key) & half_mask_);
      left = right;
      right = next;
    }
    return (left << half_bits_) | right;
  }

  uint64_t n_;
  int half_bits_ = 1;
  uint64_t half_mask_ = 1;
  uint64_t keys_[4] = {};
};

// Process CPU time and peak memory (all threads, from getrusage).
struct Usage {
  uint64_t user_us = 0;
  uint64_t sys_us = 0;
  uint64_t max_rss_kib = 0;

  static Usage Now() {
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    auto us = [](const timeval& tv) { return uint64_t(tv.tv_sec) * 1000000 + uint64_t(tv.tv_usec); };
    return {us(ru.ru_utime), us(ru.ru_stime), uint64_t(ru.ru_maxrss)};
  }
};

// Where the next request goes: an offset, or nullopt once the source is dry.
using OffsetSource = std::function<std::optional<uint64_t>()>;

// Keeps up to `depth` requests of one kind in flight on one queue. Buffers
// are allocated once, up front, and filled with random non-zero bytes (an
// all-zero cluster write would be turned into a discard by the engine);
// with g_compressible_data, the second half of every 4 KiB block repeats one
// word, so the data compresses about 2:1.
//
// Not thread-safe: the thread calling Run() owns the runner and the queue.
class LoadRunner {
 public:
  LoadRunner(Volume& volume, IoQueue& queue, VolumeOp op, uint64_t io_bytes, uint32_t depth, uint64_t seed)
      : volume_(volume), queue_(queue), op_(op), io_bytes_(io_bytes), slots_(depth) {
    assert(depth > 0 && depth <= kMaxDepth);
    assert(io_bytes % kIoBytes == 0);
    std::mt19937_64 rng(seed);
    for (Slot& slot : slots_) {
      slot.runner = this;
      slot.buf = AllocateAligned(io_bytes);
      for (uint64_t i = 0; i < io_bytes; i += sizeof(uint64_t)) {
        bool repeat = g_compressible_data && i % kIoBytes >= kIoBytes / 2;
        uint64_t word = repeat ? 0x5a5a5a5a5a5a5a5aull : rng() | 1;  // never zero
        std::memcpy(slot.buf.get() + i, &word, sizeof word);
      }
      idle_.push_back(&slot);
    }
  }

  // Issues requests at offsets from `next` until it runs dry, `max_ios` have
  // been issued or `deadline` has passed, then waits for all in flight.
  // Returns the first error any request reported (issuing stops at it).
  Status Run(const OffsetSource& next, uint64_t max_ios, std::optional<Clock::time_point> deadline) {
    uint64_t issued = 0;
    bool stop = false;
    while (true) {
      if (!stop && deadline && Clock::now() >= *deadline) stop = true;
      while (!stop && !idle_.empty()) {
        std::optional<uint64_t> offset = issued < max_ios && error_.ok() ? next() : std::nullopt;
        if (!offset) {
          stop = true;
          break;
        }
        Issue(*offset);
        issued++;
      }
      if (!error_.ok()) stop = true;
      if (idle_.size() == slots_.size()) break;  // nothing in flight
      inflight_sum_ += slots_.size() - idle_.size();
      polls_++;
      queue_.Poll(/*wait=*/true);
    }
    assert(completed_ == issued);
    return error_;
  }

  uint64_t completed() const { return completed_; }
  // Requests in flight when the runner waited, on average: `depth` unless
  // submission is the bottleneck.
  double average_inflight() const { return polls_ ? double(inflight_sum_) / double(polls_) : 0; }

 private:
  struct Slot {
    VolumeIo io;
    AlignedBuffer buf;
    LoadRunner* runner = nullptr;
  };

  void Issue(uint64_t offset) {
    Slot* slot = idle_.back();
    idle_.pop_back();
    slot->io = VolumeIo{};
    slot->io.op = op_;
    slot->io.offset = offset;
    slot->io.length = io_bytes_;
    slot->io.buf = slot->buf.get();
    slot->io.done = &LoadRunner::OnDone;
    slot->io.context = slot;
    volume_.Submit(&slot->io, queue_);  // may complete (call OnDone) inline
  }

  static void OnDone(VolumeIo* io, const Status& status) {
    auto* slot = static_cast<Slot*>(io->context);
    LoadRunner* runner = slot->runner;
    if (!status.ok() && runner->error_.ok())
      runner->error_ = status.WithContext("request at offset " + std::to_string(io->offset));
    runner->completed_++;
    runner->idle_.push_back(slot);
  }

  Volume& volume_;
  IoQueue& queue_;
  const VolumeOp op_;
  const uint64_t io_bytes_;
  std::vector<Slot> slots_;  // never resized: the engine holds pointers into it
  std::vector<Slot*> idle_;
  uint64_t completed_ = 0;
  uint64_t inflight_sum_ = 0;
  uint64_t polls_ = 0;
  Status error_;
};

// The pool under test and its one volume.
struct Engine {
  std::unique_ptr<VolumeSet> set;
  Volume* volume = nullptr;
};

Engine CreateEngine(const Options& opt) {
  if (::unlink(opt.pool.c_str()) != 0 && errno != ENOENT)
    Die(Status(errno, "cannot delete old pool file " + opt.pool), "create pool");
  FileDeviceOptions device_options;
  device_options.create = true;
  device_options.create_size = opt.pool_size;
  auto device = OpenFileDevice(opt.pool, device_options);
  if (!device.ok()) Die(device.status(), "open " + opt.pool);
  PoolCreateOptions create{.cluster_size = opt.cluster_size, .compression = opt.compression};
  PoolOpenOptions open{.map_cache_bytes = opt.map_cache};
  if (opt.recompress_idle_ms) open.recompress_idle_ms = *opt.recompress_idle_ms;
  auto set = VolumeSet::Create(std::move(device).value(), create, open);
  if (!set.ok()) Die(set.status(), "create pool on " + opt.pool);
  Engine engine{std::move(set).value(), nullptr};
  auto volume = engine.set->CreateVolume(kVolumeName, opt.volume_size);
  if (!volume.ok()) Die(volume.status(), "create volume");
  engine.volume = volume.value();
  return engine;
}

// Writes the whole volume sequentially, flushes and checkpoints, so the timed
// phase starts from settled metadata. Returns the seconds it took.
double Prefill(Engine& engine, uint64_t seed) {
  Clock::time_point start = Clock::now();
  // A 1 MiB write splits into one device request per cluster it covers.
  auto queue = engine.set->device().CreateQueue(kPrefillDepth * 2 * (kPrefillIoBytes / kIoBytes));
  LoadRunner runner(*engine.volume, *queue, VolumeOp::kWrite, kPrefillIoBytes, kPrefillDepth, seed);
  uint64_t size = engine.volume->size(), next = 0;
  OffsetSource sequential = [&]() -> std::optional<uint64_t> {
    if (next + kPrefillIoBytes > size) return std::nullopt;
    uint64_t offset = next;
    next += kPrefillIoBytes;
    return offset;
  };
  Status s = runner.Run(sequential, UINT64_MAX, std::nullopt);
  if (s.ok()) s = engine.set->Flush();
  if (s.ok()) s = engine.set->Checkpoint();
  if (!s.ok()) Die(s, "prefill");
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Figures of one timed phase.
struct Phase {
  uint64_t ios = 0;
  double seconds = 0;
  double average_inflight = 0;
  Usage usage;        // delta, except max_rss_kib (peak so far)
  DeviceStats device;  // delta
};

DeviceStats Delta(const DeviceStats& after, const DeviceStats& before) {
  return {after.bytes_read - before.bytes_read, after.bytes_written - before.bytes_written,
          after.reads - before.reads, after.writes - before.writes, after.flushes - before.flushes};
}

// Runs one timed phase of 4 KiB requests; writes end with a pool Flush.
Phase RunTimed(Engine& engine, VolumeOp op, uint32_t qd, const OffsetSource& next, uint64_t max_ios,
               std::optional<double> seconds, uint64_t seed) {
  auto queue = engine.set->device().CreateQueue(qd * 2);
  LoadRunner runner(*engine.volume, *queue, op, kIoBytes, qd, seed);
  DeviceStats device_before = engine.set->device().stats();
  Usage usage_before = Usage::Now();
  Clock::time_point start = Clock::now();
  std::optional<Clock::time_point> deadline;
  if (seconds) deadline = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(*seconds));
  Status s = runner.Run(next, max_ios, deadline);
  if (s.ok() && op == VolumeOp::kWrite) s = engine.set->Flush();
  if (!s.ok()) Die(s, "timed phase");
  Phase phase;
  phase.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  Usage usage_after = Usage::Now();
  phase.ios = runner.completed();
  phase.average_inflight = runner.average_inflight();
  phase.usage = {usage_after.user_us - usage_before.user_us, usage_after.sys_us - usage_before.sys_us,
                 usage_after.max_rss_kib};
  phase.device = Delta(engine.set->device().stats(), device_before);
  return phase;
}

Json PhaseJson(const Phase& p, bool writes) {
  double ios = std::max<double>(p.ios, 1);
  uint64_t client_written = writes ? p.ios * kIoBytes : 0;
  Json j = {
      {"ios", p.ios},
      {"seconds", p.seconds},
      {"iops", p.ios / p.seconds},
      {"average_inflight", p.average_inflight},
      {"cpu_user_us", p.usage.user_us},
      {"cpu_sys_us", p.usage.sys_us},
      {"cpu_us_per_io", double(p.usage.user_us + p.usage.sys_us) / ios},
      {"client_bytes_written", client_written},
      {"device_bytes_written", p.device.bytes_written},
      {"device_bytes_read", p.device.bytes_read},
      {"device_writes", p.device.writes},
      {"device_reads", p.device.reads},
      {"device_flushes", p.device.flushes},
  };
  j["wa"] = writes && client_written ? Json(double(p.device.bytes_written) / double(client_written)) : Json(nullptr);
  return j;
}

void AddPoolFigures(Json& j, Engine& engine) {
  PoolInfo info = engine.set->Info();
  j["cached_map_pages"] = info.cached_map_pages;
  j["map_cache_limit_pages"] = info.map_cache_limit_pages;
  j["pool_allocated_bytes"] = info.allocated_bytes;
  auto volume = engine.set->GetVolumeInfo(engine.volume->name());
  if (volume.ok()) {
    j["volume_allocated_bytes"] = volume->allocated_bytes;
    j["compressed_clusters"] = volume->compressed_clusters;
    j["hot_plain_clusters"] = volume->hot_plain_clusters;
  }
}

// After the load: how long the background takes to compress again the
// clusters partial writes held plain, and the space the volume holds then.
Json Settle(Engine& engine, double max_seconds) {
  auto start = std::chrono::steady_clock::now();
  Usage before = Usage::Now();
  double waited = 0;
  Result<VolumeInfo> info = engine.set->GetVolumeInfo(engine.volume->name());
  while (info.ok() && info->hot_plain_clusters > 0 && waited < max_seconds) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    info = engine.set->GetVolumeInfo(engine.volume->name());
  }
  if (!info.ok()) Die(info.status(), "volume info");
  Usage after = Usage::Now();
  return {{"seconds", waited},
          {"hot_plain_clusters_left", info->hot_plain_clusters},
          {"recompressed_clusters", info->recompressed_clusters},
          {"volume_allocated_bytes", info->allocated_bytes},
          {"cpu_us", (after.user_us - before.user_us) + (after.sys_us - before.sys_us)}};
}

// The modes firstwrite, overwrite and read: one timed phase.
Json RunThroughput(const Options& opt) {
  Engine engine = CreateEngine(opt);
  uint64_t blocks = opt.volume_size / kIoBytes;
  double prefill_seconds = 0;
  if (opt.mode != Mode::kFirstWrite) prefill_seconds = Prefill(engine, opt.seed);

  BlockPermutation fresh(blocks, opt.seed);
  std::mt19937_64 rng(opt.seed + 1);
  std::uniform_int_distribution<uint64_t> any_block(0, blocks - 1);
  uint64_t taken = 0;
  OffsetSource next = [&]() -> std::optional<uint64_t> {
    if (opt.mode != Mode::kFirstWrite) return any_block(rng) * kIoBytes;
    if (taken == fresh.size()) return std::nullopt;
    return fresh(taken++) * kIoBytes;
  };
  VolumeOp op = opt.mode == Mode::kRead ? VolumeOp::kRead : VolumeOp::kWrite;
  std::optional<double> seconds;
  if (!opt.ios) seconds = opt.seconds;
  Phase phase = RunTimed(engine, op, opt.qd, next, opt.ios.value_or(UINT64_MAX), seconds, opt.seed + 2);

  Json j = PhaseJson(phase, op == VolumeOp::kWrite);
  j["prefill_seconds"] = prefill_seconds;
  j["exhausted"] = opt.mode == Mode::kFirstWrite && taken == fresh.size();
  j["peak_rss_kib"] = phase.usage.max_rss_kib;
  AddPoolFigures(j, engine);
  if (opt.settle_seconds > 0) j["settle"] = Settle(engine, opt.settle_seconds);
  if (Status s = engine.set->Close(); !s.ok()) Die(s, "close pool");
  return j;
}

// The mode rss: first writes over a big volume, then reads of written blocks.
Json RunRss(const Options& opt) {
  Engine engine = CreateEngine(opt);
  uint64_t blocks = opt.volume_size / kIoBytes;
  uint64_t writes = std::min(opt.ios.value_or(kRssWriteIos), blocks);
  BlockPermutation order(blocks, opt.seed);

  uint64_t taken = 0;
  OffsetSource fresh = [&]() -> std::optional<uint64_t> { return order(taken++) * kIoBytes; };
  Phase write = RunTimed(engine, VolumeOp::kWrite, opt.qd, fresh, writes, std::nullopt, opt.seed + 1);
  if (write.ios != writes) Die(Status(EIO, "wrote " + std::to_string(write.ios) + " blocks"), "rss writes");
  Json j;
  j["write"] = PhaseJson(write, true);
  AddPoolFigures(j["write"], engine);

  std::mt19937_64 rng(opt.seed + 3);
  std::uniform_int_distribution<uint64_t> written(0, writes - 1);
  OffsetSource old = [&]() -> std::optional<uint64_t> { return order(written(rng)) * kIoBytes; };
  Phase read = RunTimed(engine, VolumeOp::kRead, opt.qd, old, opt.read_ios, std::nullopt, opt.seed + 4);
  j["read"] = PhaseJson(read, false);
  AddPoolFigures(j["read"], engine);

  // What the map would cost if every page it has were cached at once.
  uint64_t clusters = opt.volume_size / opt.cluster_size;
  uint64_t blocks_per_page = uint64_t(format::kEntriesPerMapPage) * (opt.cluster_size / kIoBytes);
  std::vector<bool> page_used(ThinMap::SlotsFor(clusters));
  for (uint64_t i = 0; i < writes; i++) page_used[order(i) / blocks_per_page] = true;
  uint64_t pages = std::count(page_used.begin(), page_used.end(), true);
  j["map_pages_written"] = pages;
  j["map_pages_volume"] = page_used.size();
  j["map_full_memory_bytes"] = pages * sizeof(CachedPage) + page_used.size() * sizeof(ThinMap::Slot);
  j["map_full_disk_bytes"] = pages * uint64_t(format::kBlockSize);
  j["peak_rss_kib"] = Usage::Now().max_rss_kib;
  if (Status s = engine.set->Close(); !s.ok()) Die(s, "close pool");
  return j;
}

// CLI11 check and transform for byte sizes ("64K", "8G", "1T").
CLI::Validator SizeArg() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        std::optional<uint64_t> bytes = ParseSize(text);
        if (!bytes || *bytes == 0) return "not a size: " + text;
        text = std::to_string(*bytes);
        return "";
      },
      "SIZE");
}

Options ParseOptions(int argc, char** argv) {
  Options opt;
  CLI::App app{"edgestor engine benchmark: 4 KiB random I/O through one thin volume"};
  std::string pool_size, volume_size, cluster_size, map_cache;
  app.add_option("--pool", opt.pool, "pool file (deleted and created afresh)")->required();
  auto* pool_opt = app.add_option("--pool-size", opt.pool_size, "pool file size (sparse); rss: 200G")->transform(SizeArg());
  auto* vol_opt = app.add_option("--volume-size", opt.volume_size, "volume size; rss: 1T")->transform(SizeArg());
  app.add_option("--cluster-size", opt.cluster_size, "pool cluster size")->transform(SizeArg());
  app.add_option("--mode", opt.mode_name, "firstwrite|overwrite|read|rss")
      ->check(CLI::IsMember({"firstwrite", "overwrite", "read", "rss"}));
  auto* qd_opt = app.add_option("--qd", opt.qd, "requests in flight; rss: 32")->check(CLI::Range(1u, kMaxDepth));
  app.add_option("--seconds", opt.seconds, "length of the timed phase")->check(CLI::PositiveNumber);
  app.add_option("--ios", opt.ios, "requests in the timed phase (instead of --seconds); rss: 2621440")
      ->check(CLI::PositiveNumber);
  app.add_option("--read-ios", opt.read_ios, "rss: reads after the writes")->check(CLI::PositiveNumber);
  app.add_option("--map-cache", opt.map_cache, "map page cache budget")->transform(SizeArg());
  app.add_option("--seed", opt.seed, "random seed");
  app.add_option("--recompress-idle-ms", opt.recompress_idle_ms,
                 "compressed volumes: a cluster held plain is compressed again after this long unwritten");
  app.add_option("--settle-seconds", opt.settle_seconds,
                 "after the timed phase, wait at most this long for the background to compress hot clusters again")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--compression", opt.compression_name, "off|lz4|zstd[:LEVEL]: the volume's compression; "
                                                        "on, the data written compresses about 2:1");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    std::exit(app.exit(e));
  }
  auto compression = ParseCompression(opt.compression_name);
  if (!compression.ok()) {
    std::cerr << "engine_bench: --compression: " << compression.status().ToString() << "\n";
    std::exit(2);
  }
  opt.compression = compression.value();
  g_compressible_data = opt.compression.algorithm != Compression::kOff;
  static const std::pair<const char*, Mode> kModes[] = {
      {"firstwrite", Mode::kFirstWrite}, {"overwrite", Mode::kOverwrite}, {"read", Mode::kRead}, {"rss", Mode::kRss}};
  for (const auto& [name, mode] : kModes)
    if (opt.mode_name == name) opt.mode = mode;
  if (opt.mode == Mode::kRss) {
    if (pool_opt->count() == 0) opt.pool_size = 200ull << 30;
    if (vol_opt->count() == 0) opt.volume_size = 1ull << 40;
    if (qd_opt->count() == 0) opt.qd = 32;
  }
  if (opt.volume_size % kPrefillIoBytes != 0) {
    std::cerr << "engine_bench: --volume-size must be a multiple of 1 MiB\n";
    std::exit(2);
  }
  return opt;
}

}  // namespace
}  // namespace edgestor::bench

int main(int argc, char** argv) {
  using namespace edgestor::bench;
  Options opt = ParseOptions(argc, argv);
  Json j = opt.mode == Mode::kRss ? RunRss(opt) : RunThroughput(opt);
  Json out = {{"mode", opt.mode_name},       {"qd", opt.qd},
              {"pool_size", opt.pool_size},  {"volume_size", opt.volume_size},
              {"cluster_size", opt.cluster_size}, {"map_cache_bytes", opt.map_cache}};
  out.update(j);
  std::cout << out.dump() << std::endl;
  return 0;
}
