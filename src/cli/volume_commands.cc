// vol create | list | info | resize | delete
#include <iostream>

#include "base/size_parse.h"
#include "cli/cli_error.h"
#include "cli/commands.h"
#include "cli/output.h"
#include "cli/pool_session.h"

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

void RunVolumeCreate(const VolumeArgs& args, uint64_t size) {
  std::unique_ptr<PoolSession> session = PoolSession::Open(args.pool);
  Unwrap(session->pool().CreateVolume(args.name, size), "cannot create volume " + args.name);
  session->Close();
  std::cout << "created volume " << args.name << ": " << FormatSize(size) << "\n";
}

void RunVolumeList(const std::string& pool, bool json) {
  std::unique_ptr<PoolSession> session = PoolSession::Open(pool);
  std::vector<VolumeInfo> volumes = session->pool().ListVolumes();
  session->Close();
  if (json) {
    nlohmann::json list = nlohmann::json::array();
    for (const VolumeInfo& v : volumes) list.push_back(VolumeInfoJson(v));
    PrintJson({{"volumes", list}});
  } else {
    std::cout << VolumeListText(volumes);
  }
}

void RunVolumeInfo(const VolumeArgs& args, bool json) {
  std::unique_ptr<PoolSession> session = PoolSession::Open(args.pool);
  VolumeInfo info = session->GetVolumeInfo(args.name);
  session->Close();
  if (json) {
    PrintJson(VolumeInfoJson(info));
  } else {
    std::cout << VolumeInfoText(info);
  }
}

void RunVolumeResize(const VolumeArgs& args, uint64_t new_size, bool force) {
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
  std::unique_ptr<PoolSession> session = PoolSession::Open(args.pool);
  (void)session->FindVolume(args.name);  // a clear "no volume named" error
  Check(session->pool().DeleteVolume(args.name), "cannot delete volume " + args.name);
  session->Close();
  std::cout << "deleted volume " << args.name << "\n";
}

}  // namespace edgestor::cli
