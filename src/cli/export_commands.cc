// daemon_client helpers, and export vhost | file | list | remove (daemon only).
#include <iostream>

#include "cli/cli_error.h"
#include "cli/commands.h"
#include "cli/daemon_client.h"
#include "cli/output.h"
#include "daemon/control_server.h"
#include "daemon/daemon.h"

namespace edgestor::cli {

std::optional<std::string> DaemonSocket(const VolumeArgs& args) {
  if (!args.control.empty()) return args.control;
  if (args.pool.empty()) return std::nullopt;
  std::string socket = DefaultControlSocket(args.pool);
  if (CallControl(socket, "pool.info", nlohmann::json::object()).ok()) return socket;
  return std::nullopt;
}

nlohmann::json Call(const std::string& socket, const std::string& method, const nlohmann::json& params,
                    const std::string& what) {
  return Unwrap(CallControl(socket, method, params), what + " (through the daemon at " + socket + ")");
}

std::string RequireDaemon(const VolumeArgs& args, const std::string& what) {
  auto socket = DaemonSocket(args);
  if (!socket) Fail(what + " the daemon: start `edgestor serve --pool " + args.pool + "` first");
  return *socket;
}

static std::string RequireDaemon(const VolumeArgs& args) { return RequireDaemon(args, "exports are served by"); }

void RunExportVhost(const VolumeArgs& args, const VhostExportArgs& vhost) {
  std::string socket = RequireDaemon(args);
  nlohmann::json params = {{"name", args.name},     {"protocol", "vhost-user-blk"}, {"socket", vhost.socket},
                           {"queues", vhost.queues}, {"readonly", vhost.read_only}, {"transient", vhost.transient}};
  if (!vhost.socket_owner.empty()) params["socket_owner"] = vhost.socket_owner;
  if (!vhost.socket_mode.empty()) params["socket_mode"] = vhost.socket_mode;
  nlohmann::json result = Call(socket, "export.add", params, "cannot export volume " + args.name);
  std::cout << "exporting volume " << args.name << " over vhost-user-blk on " << result["socket"].get<std::string>()
            << " (" << vhost.queues << (vhost.queues == 1 ? " queue" : " queues")
            << (vhost.read_only ? ", read-only" : "") << (vhost.transient ? ", until the daemon stops" : "") << ")\n"
            << "attach with: qemu-system-x86_64 ... -object memory-backend-memfd,id=mem,size=RAM,share=on "
               "-numa node,memdev=mem -chardev socket,id=c0,path="
            << result["socket"].get<std::string>() << " -device vhost-user-blk-pci,chardev=c0,num-queues=" << vhost.queues
            << "\n";
}

void RunExportFile(const VolumeArgs& args, const FileExportArgs& file) {
  std::string socket = RequireDaemon(args);
  nlohmann::json params = {{"name", args.name},
                           {"protocol", "file"},
                           {"mountpoint", file.mountpoint},
                           {"threads", file.threads},
                           {"readonly", file.read_only},
                           {"transient", file.transient}};
  nlohmann::json result = Call(socket, "export.add", params, "cannot export volume " + args.name);
  std::string path = result["file"].get<std::string>();
  bool read_only = result["readonly"].get<bool>();
  std::cout << "exporting volume " << args.name << " as the file " << path << (read_only ? " (read-only)" : "")
            << (file.transient ? " until the daemon stops" : "") << "\n"
            << "as a block device: losetup --direct-io=on " << (read_only ? "--read-only " : "") << "--find --show "
            << path << "\n";
}

void RunExportList(const VolumeArgs& args, bool json) {
  nlohmann::json result = Call(RequireDaemon(args), "export.list", nlohmann::json::object(), "cannot list exports");
  if (json) {
    PrintJson(result);
    return;
  }
  std::vector<std::vector<std::string>> rows = {{"VOLUME", "PROTOCOL", "WHERE", "CONNECTIONS", "STORED"}};
  std::vector<std::string> problems;
  for (const auto& e : result["exports"]) {
    const char* where = e["protocol"] == "nbd"                            ? "uri"
                        : e["protocol"] == "file" && !e.contains("error") ? "file"
                        : e["protocol"] == "file"                         ? "mountpoint"
                                                                          : "socket";
    // NBD exports are every volume, always: nothing to store.
    std::string stored = e["protocol"] == "nbd" ? "-" : e.value("persistent", false) ? "yes" : "no (transient)";
    std::string connections = e.contains("error") ? "NOT RESTORED" : std::to_string(e["connections"].get<uint64_t>());
    rows.push_back({e["name"].get<std::string>(), e["protocol"].get<std::string>(), e[where].get<std::string>(),
                    connections, stored});
    if (e.contains("error")) problems.push_back(e[where].get<std::string>() + ": " + e["error"].get<std::string>());
  }
  std::cout << RenderTable(rows);
  for (const std::string& p : problems) std::cout << "not restored: " << p << "\n";
}

void RunExportRemove(const VolumeArgs& args, const ExportRemoveArgs& remove) {
  bool file = !remove.mountpoint.empty();
  const std::string& where = file ? remove.mountpoint : remove.socket;
  nlohmann::json params = file ? nlohmann::json{{"mountpoint", where}, {"force", remove.force}}
                               : nlohmann::json{{"socket", where}};
  Call(RequireDaemon(args), "export.remove", params, "cannot remove export " + where);
  std::cout << (file ? "unmounted file export " : "removed export ") << where << "\n";
}

}  // namespace edgestor::cli
