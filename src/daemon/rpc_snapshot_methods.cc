// The control API's snapshot and clone methods (docs/CONTROL_API.md).
//
// Snapshots are NBD exports too ("VOL@SNAP", read-only), so the daemon
// refuses what would pull a disk from under a client: deleting a snapshot
// a client has open, and rolling back a volume a client has open (unless
// forced, which detaches the clients first).
#include <cerrno>

#include "daemon/daemon.h"
#include "daemon/info_json.h"
#include "daemon/rpc_params.h"

namespace edgestor {

using nlohmann::json;
using rpc::BoolParam;
using rpc::StringParam;

namespace {

struct SnapshotName {
  std::string volume;
  std::string name;
};

// "VOL@SNAP" -> {VOL, SNAP}; the engine checks the names themselves.
Result<SnapshotName> SplitSnapshotName(const std::string& full) {
  size_t at = full.find('@');
  if (at == std::string::npos || at == 0 || at + 1 == full.size())
    return Status(EINVAL, "'" + full + "' is not a snapshot name: expected VOLUME@SNAPSHOT");
  return SnapshotName{full.substr(0, at), full.substr(at + 1)};
}

}  // namespace

void Daemon::RegisterSnapshotMethods() {
  control_.Register("snap.create", [this](const json& params) -> Result<json> {
    ES_ASSIGN_OR_RETURN(std::string volume, StringParam(params, "volume"));
    ES_ASSIGN_OR_RETURN(std::string name, StringParam(params, "name"));
    ES_ASSIGN_OR_RETURN(SnapshotInfo info, pool_->CreateSnapshot(volume, name));
    return json(info);
  });
  control_.Register("snap.list", [this](const json& params) -> Result<json> {
    std::string volume;
    if (params.contains("volume") && !params["volume"].is_null()) {
      ES_ASSIGN_OR_RETURN(volume, StringParam(params, "volume"));
    }
    ES_ASSIGN_OR_RETURN(std::vector<SnapshotInfo> snapshots, pool_->ListSnapshots(volume));
    return json{{"snapshots", snapshots}};
  });
  control_.Register("snap.delete", [this](const json& params) -> Result<json> {
    ES_ASSIGN_OR_RETURN(std::string volume, StringParam(params, "volume"));
    ES_ASSIGN_OR_RETURN(std::string name, StringParam(params, "name"));
    const std::string full = volume + "@" + name;
    {
      std::lock_guard lock(mu_);  // no client may open it while we delete it
      ES_ASSIGN_OR_RETURN(Volume * view, pool_->FindVolume(full));
      std::string attachments = AttachmentsLocked(view);
      if (!attachments.empty())
        return Status(EBUSY, "snapshot '" + full + "' is " + attachments + "; disconnect them first");
      ES_RETURN_IF_ERROR(pool_->DeleteSnapshot(volume, name));
    }
    FollowBackgroundRelease(full);
    return json{{"deleted", full}};
  });
  control_.Register("snap.rollback", [this](const json& params) -> Result<json> {
    ES_ASSIGN_OR_RETURN(std::string volume, StringParam(params, "volume"));
    ES_ASSIGN_OR_RETURN(std::string snapshot, StringParam(params, "snapshot"));
    ES_ASSIGN_OR_RETURN(bool discard_current, BoolParam(params, "discard_current", false));
    ES_ASSIGN_OR_RETURN(bool force, BoolParam(params, "force", false));
    std::unique_lock lock(mu_);  // held from the detach to the rollback: nothing attaches between
    ES_ASSIGN_OR_RETURN(Volume * target, pool_->FindVolume(volume));
    if (target->read_only()) return Status(EINVAL, "'" + volume + "' is a snapshot: roll back its volume instead");
    std::string attachments = AttachmentsLocked(target);
    if (!attachments.empty() && !force)
      return Status(EBUSY, "volume '" + volume + "' is " + attachments +
                               "; its clients would see the disk change under them: detach them first, or force "
                               "the rollback (--force) to disconnect them");
    Detached detached;
    if (!attachments.empty()) {
      ES_ASSIGN_OR_RETURN(detached, DetachLocked(lock, target));
    }
    ES_ASSIGN_OR_RETURN(std::string kept, pool_->Rollback(volume, snapshot, !discard_current));
    lock.unlock();
    // The detached exports are gone for good: the stored ones are forgotten
    // (add them again to serve the rolled-back volume).
    for (const auto& keys : {detached.vhost_sockets, detached.file_mountpoints})
      for (const std::string& key : keys) (void)StoreExport(key, nullptr);
    // Names as snap.rollback takes them: rolling back to kept_snapshot undoes this.
    json out = {{"volume", volume},
                {"snapshot", snapshot},
                {"kept_snapshot", kept.empty() ? json(nullptr) : json(kept)},
                {"detached", {{"nbd_connections", detached.nbd_connections},
                              {"vhost_exports", detached.vhost_sockets},
                              {"file_exports", detached.file_mountpoints}}}};
    return out;
  });
  control_.Register("vol.clone", [this](const json& params) -> Result<json> {
    ES_ASSIGN_OR_RETURN(std::string full, StringParam(params, "snapshot"));
    ES_ASSIGN_OR_RETURN(std::string name, StringParam(params, "name"));
    ES_ASSIGN_OR_RETURN(SnapshotName origin, SplitSnapshotName(full));
    ES_ASSIGN_OR_RETURN(Volume * clone, pool_->CloneSnapshot(origin.volume, origin.name, name));
    ES_ASSIGN_OR_RETURN(VolumeInfo info, pool_->GetVolumeInfo(clone->name()));
    return json(info);
  });
  // A job (job.* methods), running while the clone is in use; no daemon
  // lock is held meanwhile (the engine keeps the clone from being deleted
  // under it). With "wait" (the default) the call returns when it ends.
  control_.Register("vol.flatten", [this](const json& params) -> Result<json> {
    ES_ASSIGN_OR_RETURN(std::string name, StringParam(params, "name"));
    ES_ASSIGN_OR_RETURN(bool wait, BoolParam(params, "wait", true));
    ES_ASSIGN_OR_RETURN(uint64_t id, StartFlattenJob(name, JobSpec{}));
    if (!wait) return json{{"name", name}, {"job", id}};
    JobInfo info;
    do {
      ES_ASSIGN_OR_RETURN(info, jobs_.Wait(id, std::chrono::seconds(60)));
    } while (info.state == JobState::kRunning);
    if (info.state == JobState::kFailed) return Status(info.error, info.result);
    if (info.state != JobState::kSucceeded) return Status(ECANCELED, "job " + std::to_string(id) + ": " + info.result);
    return json{{"name", name}, {"job", id}, {"copied_clusters", info.output.value("copied_clusters", uint64_t{0})}};
  });
}

}  // namespace edgestor
