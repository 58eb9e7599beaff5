// Fuzz target for the daemon's JSON-RPC methods (docs/CONTROL_API.md): the
// input is what a control client sends. A real daemon serves a small pool
// (a volume, a snapshot, a clone) in a temporary directory; each input is
// answered as a control-socket line. Every answer must be a JSON-RPC
// response; the daemon must never crash, hang, or touch memory it should
// not, and must still answer pool.info afterwards.
//
// The first input byte picks how the rest is used:
//   even: the bytes are the request line as they are (the JSON parser and
//         request framing);
//   odd:  a request is built from the input: a method from the registered
//         ones, and params whose keys are the ones the methods read and whose
//         values take every JSON type (strings from the input, numbers at
//         the edges, booleans, null, arrays, objects), so the handlers'
//         parameter checks and the engine's refusals are reached.
// Socket paths are kept inside the temporary directory: export.add would
// otherwise create sockets wherever the input says.
#include <stdlib.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "daemon/daemon.h"
#include "io/device.h"

namespace edgestor {
namespace {

using nlohmann::json;

const char* const kMethods[] = {"pool.info",   "pool.unlock",   "vol.list",      "vol.info",    "vol.create",
                                "vol.set",     "vol.resize",    "vol.delete",    "vol.clone",   "vol.flatten",
                                "export.list", "export.add",    "export.remove", "snap.create", "snap.list",
                                "snap.delete", "snap.rollback", "stats.io",      "job.list",    "job.get",
                                "job.wait",    "job.cancel",    "no.such.method"};
const char* const kKeys[] = {"name",  "volume",   "snapshot", "size",   "compress", "encrypt", "force",
                             "discard_current", "readonly", "socket", "queues",   "protocol", "key", "passphrase",
                             "id",    "timeout_ms", "volumes", "wait", "transient"};
const char* const kNames[] = {"v", "v@s", "c", "s", "new", "v@", "@s", "", "a/b", "..", "v@s@t", "c@s"};

// A daemon on a pool with a volume "v", its snapshot "v@s" and a clone "c".
struct Fixture {
  std::string dir;
  std::unique_ptr<Daemon> daemon;

  void Start() {
    char templ[] = "/tmp/edgestor-rpc-fuzz-XXXXXX";
    dir = mkdtemp(templ);
    std::string pool = dir + "/pool.img";
    auto device = OpenFileDevice(pool, {.create = true, .create_size = 256ull << 20, .direct = false});
    auto set = VolumeSet::Create(std::move(device).value(), {.cluster_size = 65536});
    (void)set.value()->CreateVolume("v", 8 << 20);
    (void)set.value()->CreateSnapshot("v", "s");
    (void)set.value()->CloneSnapshot("v", "s", "c");
    (void)set.value()->Close();
    set.value().reset();
    DaemonOptions options;
    options.pool_path = pool;
    daemon = std::move(Daemon::Start(options)).value();
  }
  ~Fixture() {
    if (daemon) (void)daemon->Stop();
    daemon.reset();
    if (!dir.empty()) std::filesystem::remove_all(dir);
  }
};

Fixture& TheDaemon() {
  // spdlog's registry first, so it is destroyed after the fixture (whose
  // Stop logs).
  static const bool quiet = [] {
    spdlog::set_level(spdlog::level::err);
    return true;
  }();
  (void)quiet;
  static Fixture fixture;
  if (!fixture.daemon) fixture.Start();
  return fixture;
}

// Reads from the input, cycling over it.
class Bytes {
 public:
  Bytes(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  uint8_t Next() { return size_ ? data_[pos_++ % size_] : 0; }
  std::string Text() {
    size_t n = Next() % 24;
    std::string out;
    for (size_t i = 0; i < n; i++) out += static_cast<char>(Next());
    return out;
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

// Any JSON value, of any type.
json AnyValue(Bytes& in, const std::string& dir, const std::string& key, int depth = 0) {
  switch (in.Next() % 10) {
    case 0: return nullptr;
    case 1: return static_cast<bool>(in.Next() & 1);
    case 2: return -1;
    case 3: return UINT64_MAX;
    case 4: return static_cast<uint64_t>(in.Next()) << (in.Next() % 60);
    case 5: return 1.5;
    case 6: return depth < 2 ? json::array({AnyValue(in, dir, key, depth + 1)}) : json::array();
    case 7: return depth < 2 ? json{{key, AnyValue(in, dir, key, depth + 1)}} : json::object();
    default: return in.Text();
  }
}

// A value of the type the methods expect for `key`, often a valid one
// (names of what exists, sizes at the edges), so the handlers' bodies and
// the engine's checks are reached.
json PlausibleValue(Bytes& in, const std::string& dir, const std::string& key) {
  uint8_t b = in.Next();
  if (key == "size") {
    const uint64_t sizes[] = {8 << 20, 16 << 20, 512, 511, 0, 1ull << 50, (1ull << 50) + 512, 4 << 20};
    return sizes[b % std::size(sizes)];
  }
  if (key == "queues") return b % 3 == 0 ? 0 : b % 3 == 1 ? 1 : 70000;
  if (key == "encrypt" || key == "force" || key == "discard_current" || key == "readonly" || key == "wait" ||
      key == "transient")
    return (b & 1) != 0;
  if (key == "id") return b % 4;  // job ids: the first few exist once flattens ran
  if (key == "timeout_ms") return b % 3 == 0 ? 0 : b % 3 == 1 ? 5 : 100000;  // the last is clamped to 30 s
  if (key == "volumes") return json::array({kNames[b % std::size(kNames)]});
  if (key == "compress") {
    const char* const settings[] = {"lz4", "off", "zstd", "zstd:19", "zstd:99", "bogus", ""};
    return settings[b % std::size(settings)];
  }
  if (key == "protocol") return b % 3 == 0 ? "vhost" : b % 3 == 1 ? "nbd" : "carrier-pigeon";
  if (key == "socket") return dir + "/s" + std::to_string(b % 3) + ".sock";
  if (key == "key" || key == "passphrase") return in.Text();
  return kNames[b % std::size(kNames)];
}

// Keeps export.add/export.remove inside the temporary directory.
bool SocketsStayInside(const std::string& line, const std::string& dir) {
  json request = json::parse(line, nullptr, false);
  if (!request.is_object() || !request.contains("params") || !request["params"].is_object()) return true;
  const json& params = request["params"];
  if (!params.contains("socket")) return true;
  return params["socket"].is_string() && params["socket"].get<std::string>().rfind(dir + "/", 0) == 0 &&
         params["socket"].get<std::string>().find("..") == std::string::npos;
}

}  // namespace
}  // namespace edgestor

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace edgestor;
  if (size < 1) return 0;
  Fixture& f = TheDaemon();
  std::string line;
  if (data[0] % 2 == 0) {
    line.assign(reinterpret_cast<const char*>(data + 1), size - 1);
  } else {
    Bytes in(data + 1, size - 1);
    json params = json::object();
    for (const char* key : kKeys) {
      uint8_t b = in.Next();  // zero bytes (most of a sparse input) give plausible values
      if (b % 4 == 3) continue;
      params[key] = b % 4 == 2 ? AnyValue(in, f.dir, key) : PlausibleValue(in, f.dir, key);
    }
    const char* method = kMethods[(data[0] >> 1) % std::size(kMethods)];
    line = json{{"jsonrpc", "2.0"}, {"id", in.Next()}, {"method", method}, {"params", params}}.dump(
        -1, ' ', false, json::error_handler_t::replace);
  }
  if (!SocketsStayInside(line, f.dir)) return 0;
  json reply = json::parse(f.daemon->HandleControlLine(line), nullptr, false);
  if (!reply.is_object() || !(reply.contains("result") || reply.contains("error"))) {
    std::fprintf(stderr, "rpc_fuzz: not a JSON-RPC response to %s\n", line.c_str());
    std::abort();
  }
  json info = json::parse(f.daemon->HandleControlLine(R"({"id":0,"method":"pool.info"})"), nullptr, false);
  if (!info.contains("result")) {
    std::fprintf(stderr, "rpc_fuzz: pool.info fails after %s\n", line.c_str());
    std::abort();
  }
  return 0;
}
