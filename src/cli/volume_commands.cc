// vol create | list | info | resize | delete
#include <iostream>
#include <optional>

#include "base/size_parse.h"
#include "cli/cli_error.h"
#include "cli/commands.h"
#include "cli/daemon_client.h"
#include "cli/output.h"
#include "cli/pool_session.h"
#include "daemon/control_server.h"
#include "daemon/daemon.h"
#include "daemon/info_json.h"

namespace edgestor::cli {
namespace {

constexpr size_t kMaxVolumeNameLength = 64;

bool IsNameChar(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
}

}  // namespace

bool IsValidVolumeName(const std::string& name) {
  if (name.empty() || name.size() > kMaxVolumeNameLength) return false;
  if (name[0] == '.' || name[0] == '-') return false;
  for (char c : name) {
    if (!IsNameChar(c)) return false;
  }
  return true;
}

static std::string Describe(const VolumeInfo& info) {
  return FormatSize(info.size) + (info.encrypted ? ", encrypted" : "") +
         (info.compression.algorithm != Compression::kOff ? ", compression " + FormatCompression(info.compression)
                                                          : "");
}

void RunVolumeCreate(const VolumeArgs& args, const VolumeCreateArgs& create) {
  VolumeCreateOptions options;
  options.encrypt = create.encrypt;
  if (create.compress) options.compression = Unwrap(ParseCompression(*create.compress), "bad --compress");
  VolumeInfo info;
  if (auto socket = DaemonSocket(args)) {
    nlohmann::json params = {{"name", args.name}, {"size", create.size}};
    if (create.encrypt) params["encrypt"] = *create.encrypt;
    if (create.compress) params["compress"] = *create.compress;
    info = Call(*socket, "vol.create", params, "cannot create volume " + args.name).get<VolumeInfo>();
  } else {
    std::unique_ptr<PoolSession> session = PoolSession::Open(args.pool);
    Unwrap(session->pool().CreateVolume(args.name, create.size, options), "cannot create volume " + args.name);
    info = session->GetVolumeInfo(args.name);
    session->Close();
  }
  std::cout << "created volume " << args.name << ": " << Describe(info) << "\n";
}

void RunVolumeSetCompression(const VolumeArgs& args, const std::string& compress) {
  CompressionSetting setting = Unwrap(ParseCompression(compress), "bad --compress");
  if (auto socket = DaemonSocket(args)) {
    Call(*socket, "vol.set", {{"name", args.name}, {"compress", compress}}, "cannot change volume " + args.name);
  } else {
    std::unique_ptr<PoolSession> session = PoolSession::Open(args.pool);
    Check(session->pool().SetVolumeCompression(args.name, setting), "cannot change volume " + args.name);
    session->Close();
  }
  std::cout << "volume " << args.name << ": new writes use compression " << FormatCompression(setting) << "\n";
}

void RunPoolUnlock(const VolumeArgs& args) {
  if (GetKeyArgs().empty()) Fail("pool unlock needs --keyfile or --passphrase-file");
  PoolSecret secret = LoadSecret(GetKeyArgs());
  if (auto socket = DaemonSocket(args)) {
    nlohmann::json params = nlohmann::json::object();
    if (secret.key) {
      static const char* kHex = "0123456789abcdef";
      std::string hex;
      for (uint8_t byte : secret.key->span()) (hex += kHex[byte >> 4]) += kHex[byte & 15];
      params["key"] = hex;
    } else {
      params["passphrase"] = secret.passphrase;
    }
    Call(*socket, "pool.unlock", params, "cannot unlock pool");
    std::cout << "pool unlocked: encrypted volumes are readable\n";
    return;
  }
  // No daemon: opening with the secret checks it (PoolSession fails on a wrong key).
  std::unique_ptr<PoolSession> session = PoolSession::Open(args.pool);
  session->Close();
  std::cout << "the key is correct for pool " << args.pool << " (no daemon is serving it; nothing to unlock)\n";
}

static std::vector<VolumeInfo> ListVolumes(const VolumeArgs& args) {
  if (auto socket = DaemonSocket(args))
    return Call(*socket, "vol.list", nlohmann::json::object(), "cannot list volumes")["volumes"].get<std::vector<VolumeInfo>>();
  std::unique_ptr<PoolSession> session = PoolSession::Open(args.pool);
  std::vector<VolumeInfo> volumes = session->pool().ListVolumes();
  session->Close();
  return volumes;
}

void RunVolumeList(const VolumeArgs& args, bool json) {
  std::vector<VolumeInfo> volumes = ListVolumes(args);
  if (json) {
    nlohmann::json list = nlohmann::json::array();
    for (const VolumeInfo& v : volumes) list.push_back(VolumeInfoJson(v));
    PrintJson({{"volumes", list}});
  } else {
    std::cout << VolumeListText(volumes);
  }
}

static VolumeInfo GetVolumeInfo(const VolumeArgs& args) {
  if (auto socket = DaemonSocket(args))
    return Call(*socket, "vol.info", {{"name", args.name}}, "cannot get information on volume " + args.name).get<VolumeInfo>();
  std::unique_ptr<PoolSession> session = PoolSession::Open(args.pool);
  VolumeInfo info = session->GetVolumeInfo(args.name);
  session->Close();
  return info;
}

void RunVolumeInfo(const VolumeArgs& args, bool json) {
  VolumeInfo info = GetVolumeInfo(args);
  if (json) {
    PrintJson(VolumeInfoJson(info));
  } else {
    std::cout << VolumeInfoText(info);
  }
}

void RunVolumeResize(const VolumeArgs& args, uint64_t new_size, bool force) {
  if (auto socket = DaemonSocket(args)) {
    uint64_t old_size = GetVolumeInfo(args).size;
    if (new_size < old_size && !force)
      Fail("shrinking " + args.name + " from " + FormatSize(old_size) + " to " + FormatSize(new_size) +
           " would discard data beyond the new end; pass --force");
    Call(*socket, "vol.resize", {{"name", args.name}, {"size", new_size}, {"force", force}},
         "cannot resize volume " + args.name);
    std::cout << "resized volume " << args.name << " from " << FormatSize(old_size) << " to " << FormatSize(new_size)
              << "\n";
    return;
  }
  std::unique_ptr<PoolSession> session = PoolSession::Open(args.pool);
  uint64_t old_size = session->GetVolumeInfo(args.name).size;
  if (new_size == old_size) {
    session->Close();
    std::cout << "volume " << args.name << " is already " << FormatSize(new_size) << "\n";
    return;
  }
  if (new_size < old_size && !force) {
    Fail("shrinking " + args.name + " from " + FormatSize(old_size) + " to " + FormatSize(new_size) +
         " would discard data beyond the new end; pass --force");
  }
  Check(session->pool().ResizeVolume(args.name, new_size, force), "cannot resize volume " + args.name);
  session->Close();
  std::cout << "resized volume " << args.name << " from " << FormatSize(old_size) << " to " << FormatSize(new_size)
            << "\n";
}

void RunVolumeDelete(const VolumeArgs& args) {
  if (auto socket = DaemonSocket(args)) {
    Call(*socket, "vol.delete", {{"name", args.name}}, "cannot delete volume " + args.name);
    std::cout << "deleted volume " << args.name << "\n";
    return;
  }
  std::unique_ptr<PoolSession> session = PoolSession::Open(args.pool);
  (void)session->FindVolume(args.name);  // a clear "no volume named" error
  Check(session->pool().DeleteVolume(args.name), "cannot delete volume " + args.name);
  session->Close();
  std::cout << "deleted volume " << args.name << "\n";
}

}  // namespace edgestor::cli
