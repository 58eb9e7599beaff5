// The control API: one handler per JSON-RPC method (docs/CONTROL_API.md).
#include <cerrno>
#include <filesystem>

#include "daemon/daemon.h"
#include "daemon/info_json.h"
#include "daemon/rpc_params.h"
#include "codec/key_wrap.h"

namespace edgestor {

using nlohmann::json;

using rpc::BoolParam;
using rpc::SizeParam;
using rpc::StringParam;

void Daemon::RegisterMethods() {
  control_.Register("pool.info", [this](const json&) -> Result<json> {
    json out = pool_->Info();
    out["path"] = options_.pool_path;
    return out;
  });
  control_.Register("vol.list", [this](const json&) -> Result<json> {
    return json{{"volumes", pool_->ListVolumes()}};
  });
  control_.Register("vol.info", [this](const json& params) -> Result<json> {
    ES_ASSIGN_OR_RETURN(std::string name, StringParam(params, "name"));
    ES_ASSIGN_OR_RETURN(VolumeInfo info, pool_->GetVolumeInfo(name));
    return json(info);
  });
  control_.Register("vol.create", [this](const json& params) -> Result<json> {
    ES_ASSIGN_OR_RETURN(std::string name, StringParam(params, "name"));
    ES_ASSIGN_OR_RETURN(uint64_t size, SizeParam(params, "size"));
    VolumeCreateOptions options;
    if (params.contains("encrypt")) {
      if (!params["encrypt"].is_boolean()) return Status(EINVAL, "parameter \"encrypt\" must be true or false");
      options.encrypt = params["encrypt"].get<bool>();
    }
    if (params.contains("compress")) {
      ES_ASSIGN_OR_RETURN(std::string compress, StringParam(params, "compress"));
      ES_ASSIGN_OR_RETURN(options.compression, ParseCompression(compress));
    }
    ES_ASSIGN_OR_RETURN(Volume * volume, pool_->CreateVolume(name, size, options));
    ES_ASSIGN_OR_RETURN(VolumeInfo info, pool_->GetVolumeInfo(volume->name()));
    return json(info);
  });
  control_.Register("vol.set", [this](const json& params) -> Result<json> {
    ES_ASSIGN_OR_RETURN(std::string name, StringParam(params, "name"));
    ES_ASSIGN_OR_RETURN(std::string compress, StringParam(params, "compress"));
    ES_ASSIGN_OR_RETURN(CompressionSetting setting, ParseCompression(compress));
    ES_RETURN_IF_ERROR(pool_->SetVolumeCompression(name, setting));
    ES_ASSIGN_OR_RETURN(VolumeInfo info, pool_->GetVolumeInfo(name));
    return json(info);
  });
  // The secret arrives as a parameter and is never logged or echoed.
  control_.Register("pool.unlock", [this](const json& params) -> Result<json> {
    PoolSecret secret;
    if (params.contains("key")) {
      ES_ASSIGN_OR_RETURN(std::string hex, StringParam(params, "key"));
      auto key = ParsePoolKeyFile(std::span(reinterpret_cast<const uint8_t*>(hex.data()), hex.size()));
      WipeSecret(hex.data(), hex.size());
      if (!key.ok()) return Status(EINVAL, "parameter \"key\" must be 64 hex digits");
      secret.key.emplace(key->span());
    } else {
      ES_ASSIGN_OR_RETURN(secret.passphrase, StringParam(params, "passphrase"));
    }
    Status s = pool_->Unlock(secret);
    WipeSecret(secret.passphrase.data(), secret.passphrase.size());
    ES_RETURN_IF_ERROR(s);
    RetryUnrestoredExports();  // exports of encrypted volumes wait for the key
    return json{{"locked", false}};
  });
  control_.Register("vol.resize", [this](const json& params) -> Result<json> {
    ES_ASSIGN_OR_RETURN(std::string name, StringParam(params, "name"));
    ES_ASSIGN_OR_RETURN(uint64_t size, SizeParam(params, "size"));
    bool force = params.value("force", false);
    std::lock_guard lock(mu_);  // no connection may attach while we shrink
    ES_ASSIGN_OR_RETURN(Volume * volume, pool_->FindVolume(name));
    if (size < volume->size() && users_.count(volume))
      return Status(EBUSY, "volume '" + name + "' is attached by " + std::to_string(users_[volume]) +
                               " NBD connection(s); disconnect them before shrinking");
    if (std::string exports = ExportsLocked(volume); size < volume->size() && !exports.empty())
      return Status(EBUSY, "volume '" + name + "' is " + exports + "; remove the export before shrinking");
    ES_RETURN_IF_ERROR(pool_->ResizeVolume(name, size, force));
    for (auto& [mountpoint, e] : file_exports_)
      if (&e->volume() == volume) e->SizeChanged();  // the file follows the volume
    ES_ASSIGN_OR_RETURN(VolumeInfo info, pool_->GetVolumeInfo(name));
    return json(info);
  });
  control_.Register("vol.delete", [this](const json& params) -> Result<json> {
    ES_ASSIGN_OR_RETURN(std::string name, StringParam(params, "name"));
    {
      std::lock_guard lock(mu_);
      ES_ASSIGN_OR_RETURN(Volume * volume, pool_->FindVolume(name));
      if (users_.count(volume))
        return Status(EBUSY, "volume '" + name + "' is exported and attached by " + std::to_string(users_[volume]) +
                                 " NBD connection(s); disconnect them first");
      if (std::string exports = ExportsLocked(volume); !exports.empty())
        return Status(EBUSY, "volume '" + name + "' is " + exports +
                                 "; remove the export first (edgestor export remove --socket PATH | --mountpoint DIR)");
      ES_RETURN_IF_ERROR(pool_->DeleteVolume(name));
    }
    FollowBackgroundRelease(name);  // a large volume's space is released in the background
    return json{{"deleted", name}};
  });
  control_.Register("export.list", [this](const json&) -> Result<json> {
    json exports = json::array();
    std::lock_guard lock(mu_);
    for (const std::string& name : pool_->VolumeNames()) {
      uint32_t connections = 0;
      auto found = pool_->FindVolume(name);
      if (found.ok() && users_.count(found.value())) connections = users_[found.value()];
      exports.push_back({{"name", name}, {"protocol", "nbd"}, {"uri", NbdUri(name)}, {"connections", connections}});
    }
    // Snapshots are exported by name only: listed while clients have them open.
    for (const auto& [volume, connections] : users_)
      if (volume->read_only())
        exports.push_back({{"name", volume->name()},
                           {"protocol", "nbd"},
                           {"uri", NbdUri(volume->name())},
                           {"connections", connections},
                           {"readonly", true}});
    for (const auto& [socket, e] : vhost_exports_)
      exports.push_back({{"name", e->volume().name()},
                         {"protocol", "vhost-user-blk"},
                         {"socket", socket},
                         {"queues", e->options().queues},
                         {"readonly", e->options().read_only},
                         {"serial", e->options().serial},
                         {"persistent", stored_exports_.count(socket) > 0},
                         {"connections", e->connected() ? 1 : 0}});
    for (const auto& [mountpoint, e] : file_exports_)
      exports.push_back({{"name", e->volume().name()},
                         {"protocol", "file"},
                         {"mountpoint", mountpoint},
                         {"file", e->file_path()},
                         {"threads", e->options().threads},
                         {"readonly", e->options().read_only},
                         {"persistent", stored_exports_.count(mountpoint) > 0},
                         {"connections", e->open_count()}});
    // Stored exports that could not be restored (a locked pool, a volume
    // gone): not serving, said why.
    for (const auto& [key, why] : unrestored_exports_) {
      const json& params = stored_exports_[key];
      bool file = params.value("protocol", "") == "file";
      exports.push_back({{"name", params.value("name", "")},
                         {"protocol", params.value("protocol", "")},
                         {file ? "mountpoint" : "socket", key},
                         {"persistent", true},
                         {"connections", 0},
                         {"error", why}});
    }
    return json{{"exports", exports}};
  });
  // Stored (and restored at the next start) unless "transient".
  control_.Register("export.add", [this](const json& params) -> Result<json> {
    ES_ASSIGN_OR_RETURN(bool transient, BoolParam(params, "transient", false));
    ES_ASSIGN_OR_RETURN(json result, AddExportRpc(params));
    result["persistent"] = !transient;
    if (transient) return result;
    std::string key = result["key"].get<std::string>();
    json stored = params;
    stored.erase("transient");
    stored[params["protocol"] == "file" ? "mountpoint" : "socket"] = key;
    if (Status s = StoreExport(key, &stored); !s.ok()) {
      // Nothing half done: an export that would not come back is not kept.
      (void)(params["protocol"] == "file" ? RemoveFileExport(key, true) : RemoveVhostExport(key));
      return s.WithContext("export removed again: cannot store it (add it with \"transient\" to run it unstored)");
    }
    return result;
  });
  control_.Register("export.remove", [this](const json& params) -> Result<json> {
    bool file = params.contains("mountpoint");
    ES_ASSIGN_OR_RETURN(std::string path, StringParam(params, file ? "mountpoint" : "socket"));
    std::string key = file ? std::filesystem::absolute(path).lexically_normal().string()
                           : std::filesystem::absolute(path).string();
    bool stored;
    {
      std::lock_guard lock(mu_);
      stored = stored_exports_.count(key) > 0;
    }
    Status s;
    if (file) {
      ES_ASSIGN_OR_RETURN(bool force, BoolParam(params, "force", false));
      s = RemoveFileExport(path, force);
    } else {
      s = RemoveVhostExport(path);
    }
    // A stored export that failed to restore is not running: removing it
    // forgets it.
    if (!s.ok() && !(s.code() == ENOENT && stored)) return s;
    if (stored)
      ES_RETURN_IF_ERROR(StoreExport(key, nullptr).WithContext(
          "the export is stopped, but the state file still names it, so the next start would restore it; make " +
          options_.state_file + " writable and remove the export again"));
    return json{{"removed", path}};
  });
  RegisterSnapshotMethods();
  RegisterOperationsMethods();
}

Result<json> Daemon::AddExportRpc(const json& params) {
  ES_ASSIGN_OR_RETURN(std::string name, StringParam(params, "name"));
  ES_ASSIGN_OR_RETURN(std::string protocol, StringParam(params, "protocol"));
  if (protocol == "file") return AddFileExportRpc(name, params);
  if (protocol != "vhost-user-blk")
    return Status(EINVAL, "protocol must be \"vhost-user-blk\" or \"file\" (every volume is always exported over NBD)");
  return AddVhostExportRpc(name, params);
}

Result<json> Daemon::AddVhostExportRpc(const std::string& name, const json& params) {
  vhost::VhostExportOptions options;
  ES_ASSIGN_OR_RETURN(options.socket_path, StringParam(params, "socket"));
  if (params.contains("queues")) {
    if (!params["queues"].is_number_unsigned() || params["queues"].get<uint64_t>() > vhost::kMaxQueues)
      return Status(EINVAL, "queues must be from 1 to " + std::to_string(vhost::kMaxQueues));
    options.queues = static_cast<uint16_t>(params["queues"].get<uint64_t>());
  }
  options.read_only = params.value("readonly", false);
  if (params.contains("socket_owner")) {
    ES_ASSIGN_OR_RETURN(std::string owner, StringParam(params, "socket_owner"));
    ES_RETURN_IF_ERROR(ParseSocketOwner(owner, &options.access));
  }
  if (params.contains("socket_mode")) {
    ES_ASSIGN_OR_RETURN(std::string mode, StringParam(params, "socket_mode"));
    ES_RETURN_IF_ERROR(ParseSocketMode(mode, &options.access));
  }
  ES_RETURN_IF_ERROR(AddVhostExport(name, options));
  std::string socket = std::filesystem::absolute(options.socket_path).string();
  return json{{"name", name}, {"socket", socket}, {"key", socket}};
}

Result<json> Daemon::AddFileExportRpc(const std::string& name, const json& params) {
  fuse::FileExportOptions options;
  ES_ASSIGN_OR_RETURN(options.mountpoint, StringParam(params, "mountpoint"));
  ES_ASSIGN_OR_RETURN(options.read_only, BoolParam(params, "readonly", false));
  if (params.contains("threads")) {
    if (!params["threads"].is_number_unsigned() || params["threads"].get<uint64_t>() == 0 ||
        params["threads"].get<uint64_t>() > fuse::kMaxThreads)
      return Status(EINVAL, "threads must be from 1 to " + std::to_string(fuse::kMaxThreads));
    options.threads = static_cast<uint32_t>(params["threads"].get<uint64_t>());
  }
  ES_ASSIGN_OR_RETURN(fuse::FileExportOptions started, AddFileExport(name, options));
  std::string file = (std::filesystem::path(started.mountpoint) / name).string();
  return json{{"name", name},
              {"mountpoint", started.mountpoint},
              {"file", file},
              {"readonly", started.read_only},
              {"key", started.mountpoint}};
}

}  // namespace edgestor
