// snap create | list | delete | rollback, clone, vol flatten.
//
// Each goes through the daemon when one serves the pool (the snap.* and
// vol.clone/vol.flatten methods), and otherwise opens the pool itself.
#include <iostream>

#include "base/size_parse.h"
#include "cli/cli_error.h"
#include "cli/commands.h"
#include "cli/daemon_client.h"
#include "cli/output.h"
#include "cli/pool_session.h"
#include "daemon/info_json.h"

namespace edgestor::cli {
namespace {

const char* const kNameRule = "use 1 to 64 of A-Z a-z 0-9 . _ -, not starting with . or -";

struct SnapshotRef {
  std::string volume;
  std::string name;  // the part after '@'
  std::string full() const { return volume + "@" + name; }
};

// "VOL@SNAP", both parts valid names; fails with one line saying what is wrong.
SnapshotRef ParseSnapshotArg(const std::string& arg) {
  size_t at = arg.find('@');
  if (at == std::string::npos)
    Fail("'" + arg + "' is not a snapshot: expected VOLUME@SNAPSHOT (for example vol0@before-upgrade)");
  SnapshotRef ref{arg.substr(0, at), arg.substr(at + 1)};
  if (!IsValidVolumeName(ref.volume)) Fail("invalid volume name '" + ref.volume + "' in '" + arg + "': " + kNameRule);
  if (!IsValidVolumeName(ref.name)) Fail("invalid snapshot name '" + ref.name + "' in '" + arg + "': " + kNameRule);
  return ref;
}

void CheckVolumeName(const std::string& name) {
  if (!IsValidVolumeName(name)) Fail("invalid volume name '" + name + "': " + kNameRule);
}

std::string Plural(uint64_t n, const std::string& noun) {
  return std::to_string(n) + " " + noun + (n == 1 ? "" : "s");
}

}  // namespace

void RunSnapshotCreate(const VolumeArgs& args) {
  SnapshotRef ref = ParseSnapshotArg(args.name);
  const std::string what = "cannot create snapshot " + ref.full();
  SnapshotInfo info;
  if (auto socket = DaemonSocket(args)) {
    info = Call(*socket, "snap.create", {{"volume", ref.volume}, {"name", ref.name}}, what).get<SnapshotInfo>();
  } else {
    std::unique_ptr<PoolSession> session = PoolSession::Open(args.pool);
    info = Unwrap(session->pool().CreateSnapshot(ref.volume, ref.name), what);
    session->Close();
  }
  std::cout << "created snapshot " << info.full_name() << " (" << FormatSize(info.size) << ", "
            << FormatSize(info.referenced_bytes) << " referenced)\n";
}

void RunSnapshotList(const VolumeArgs& args, bool json) {
  if (!args.name.empty()) CheckVolumeName(args.name);
  const std::string what = args.name.empty() ? "cannot list snapshots" : "cannot list snapshots of " + args.name;
  std::vector<SnapshotInfo> snapshots;
  if (auto socket = DaemonSocket(args)) {
    nlohmann::json params = nlohmann::json::object();
    if (!args.name.empty()) params["volume"] = args.name;
    snapshots = Call(*socket, "snap.list", params, what)["snapshots"].get<std::vector<SnapshotInfo>>();
  } else {
    std::unique_ptr<PoolSession> session = PoolSession::Open(args.pool);
    snapshots = Unwrap(session->pool().ListSnapshots(args.name), what);
    session->Close();
  }
  if (json) PrintJson({{"snapshots", snapshots}});
  else std::cout << SnapshotListText(snapshots);
}

void RunSnapshotDelete(const VolumeArgs& args) {
  SnapshotRef ref = ParseSnapshotArg(args.name);
  const std::string what = "cannot delete snapshot " + ref.full();
  if (auto socket = DaemonSocket(args)) {
    Call(*socket, "snap.delete", {{"volume", ref.volume}, {"name", ref.name}}, what);
  } else {
    std::unique_ptr<PoolSession> session = PoolSession::Open(args.pool);
    Check(session->pool().DeleteSnapshot(ref.volume, ref.name), what);
    session->Close();
  }
  std::cout << "deleted snapshot " << ref.full() << "\n";
}

void RunSnapshotRollback(const VolumeArgs& args, const RollbackArgs& rollback) {
  SnapshotRef ref = ParseSnapshotArg(args.name);
  const std::string what = "cannot roll back " + ref.volume + " to " + ref.full();
  std::string kept;
  if (auto socket = DaemonSocket(args)) {
    nlohmann::json params = {{"volume", ref.volume},
                             {"snapshot", ref.name},
                             {"discard_current", rollback.discard_current},
                             {"force", rollback.force}};
    nlohmann::json result = Call(*socket, "snap.rollback", params, what);
    if (result["kept_snapshot"].is_string()) kept = result["kept_snapshot"].get<std::string>();
    const nlohmann::json& detached = result["detached"];
    uint64_t connections = detached["nbd_connections"].get<uint64_t>();
    if (connections > 0)
      std::cout << "disconnected " << Plural(connections, "NBD connection") << " of " << ref.volume << "\n";
    for (const auto& socket_path : detached["vhost_exports"])
      std::cout << "removed the vhost-user export of " << ref.volume << " on " << socket_path.get<std::string>()
                << "\n";
  } else {
    std::unique_ptr<PoolSession> session = PoolSession::Open(args.pool);
    kept = Unwrap(session->pool().Rollback(ref.volume, ref.name, !rollback.discard_current), what);
    session->Close();
  }
  std::cout << "rolled back volume " << ref.volume << " to snapshot " << ref.full() << "\n";
  if (kept.empty()) {
    std::cout << "its previous content was discarded\n";
  } else {
    std::cout << "its previous content is kept as snapshot " << ref.volume << "@" << kept
              << "; to roll forward again: edgestor snap rollback " << ref.volume << "@" << kept << "\n";
  }
}

void RunClone(const VolumeArgs& args, const std::string& clone) {
  SnapshotRef ref = ParseSnapshotArg(args.name);
  CheckVolumeName(clone);
  const std::string what = "cannot clone " + ref.full() + " as " + clone;
  VolumeInfo info;
  if (auto socket = DaemonSocket(args)) {
    info = Call(*socket, "vol.clone", {{"snapshot", ref.full()}, {"name", clone}}, what).get<VolumeInfo>();
  } else {
    std::unique_ptr<PoolSession> session = PoolSession::Open(args.pool);
    Unwrap(session->pool().CloneSnapshot(ref.volume, ref.name, clone), what);
    info = session->GetVolumeInfo(clone);
    session->Close();
  }
  std::cout << "created volume " << clone << ": " << FormatSize(info.size) << ", a clone of " << ref.full()
            << " (shares its data; `edgestor vol flatten " << clone << "` makes it independent)\n";
}

void RunVolumeFlatten(const VolumeArgs& args) {
  const std::string what = "cannot flatten volume " + args.name;
  std::string origin;
  uint64_t copied = 0;
  if (auto socket = DaemonSocket(args)) {
    origin = Call(*socket, "vol.info", {{"name", args.name}}, what).get<VolumeInfo>().origin;
    // A job in the daemon: followed here, and it goes on (and survives a
    // restart) if this command is interrupted.
    uint64_t job = Call(*socket, "vol.flatten", {{"name", args.name}, {"wait", false}}, what)["job"].get<uint64_t>();
    std::cerr << "flattening " << args.name << " as job " << job << " (`edgestor job wait " << job << "` follows it)\n";
    nlohmann::json ended = FollowJob(*socket, job, what);
    if (ended["state"] != "succeeded")
      Fail(what + ": job " + std::to_string(job) + " " + ended["state"].get<std::string>() + ": " +
           ended["result"].get<std::string>());
    copied = ended["output"]["copied_clusters"].get<uint64_t>();
  } else {
    std::unique_ptr<PoolSession> session = PoolSession::Open(args.pool);
    origin = session->GetVolumeInfo(args.name).origin;
    {
      ProgressLine progress("flattening " + args.name, "clusters");
      copied = Unwrap(session->pool().FlattenVolume(
                          args.name, [&progress](uint64_t done, uint64_t total) {
                            progress.Update(done, total);
                            return true;
                          }),
                      what);
    }
    session->Close();
  }
  std::cout << "flattened volume " << args.name << ": copied " << Plural(copied, "cluster")
            << (origin.empty() ? "" : " shared with " + origin) << "; it no longer depends on a snapshot\n";
}

}  // namespace edgestor::cli
