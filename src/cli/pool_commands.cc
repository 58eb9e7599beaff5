// pool create | info | fsck
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <iostream>
#include <utility>

#include "base/size_parse.h"
#include "cli/cli_error.h"
#include "cli/commands.h"
#include "cli/daemon_client.h"
#include "daemon/info_json.h"
#include "cli/key_args.h"
#include "cli/output.h"
#include "cli/pool_session.h"

namespace edgestor::cli {
namespace {

// Undoes what a failed `pool create` did to the file system: removes a file
// it created, or shrinks an empty file it grew back to zero bytes. A failed
// create thus leaves the path as it found it.
class CreateRollback {
 public:
  enum class Action { kNothing, kUnlink, kTruncate };
  CreateRollback(std::string path, Action action) : path_(std::move(path)), action_(action) {}
  ~CreateRollback() {
    if (action_ == Action::kUnlink) (void)::unlink(path_.c_str());
    if (action_ == Action::kTruncate) (void)::truncate(path_.c_str(), 0);
  }
  CreateRollback(const CreateRollback&) = delete;
  CreateRollback& operator=(const CreateRollback&) = delete;
  void Dismiss() { action_ = Action::kNothing; }

 private:
  std::string path_;
  Action action_;
};

// Makes the directory entry of a newly created pool file durable.
void SyncParentDirectory(const std::string& path) {
  size_t slash = path.rfind('/');
  std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) Fail("cannot sync directory " + dir + ": " + std::strerror(errno));
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0) Fail("cannot sync directory " + dir + ": " + std::strerror(err));
}

}  // namespace

void RunPoolCreate(const PoolCreateArgs& args) {
  const std::string& path = args.path;
  struct stat st;
  bool existed = ::stat(path.c_str(), &st) == 0;
  if (!existed && errno != ENOENT) Fail("cannot create pool " + path + ": " + std::strerror(errno));
  if (existed && !S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
    Fail("cannot create pool " + path + ": not a regular file or block device");
  }

  // Lock first (creating an empty file if needed), so that no other process
  // can be formatting or serving the same path meanwhile.
  PoolLock lock = PoolLock::Acquire(path, existed ? O_RDONLY : O_RDONLY | O_CREAT | O_EXCL, "create");
  using Action = CreateRollback::Action;
  Action undo = !existed                                 ? Action::kUnlink
                : S_ISREG(st.st_mode) && st.st_size == 0 ? Action::kTruncate
                                                         : Action::kNothing;
  CreateRollback rollback(path, undo);

  // A new or empty file grows (sparsely) to args.size; an existing file or a
  // block device keeps its own size.
  FileDeviceOptions device_options;
  device_options.create = true;
  device_options.create_size = args.size;
  std::unique_ptr<Device> device = Unwrap(OpenFileDevice(path, device_options), "cannot create pool " + path);

  PoolCreateOptions options;
  options.cluster_size = args.cluster_size;
  options.journal_bytes = args.journal_bytes;
  options.secret = LoadSecret(GetKeyArgs());
  options.encrypt_by_default = args.encrypt;
  options.compression = Unwrap(ParseCompression(args.compress), "bad --compress");
  options.force = args.force;
  options.preallocate = args.preallocate;
  Result<std::unique_ptr<VolumeSet>> created = VolumeSet::Create(std::move(device), options);
  if (!created.ok() && created.status().code() == EEXIST) {
    Fail("refusing to format " + path + ": " + created.status().message() +
         "; add --force to format it anyway (what it holds is lost)");
  }
  PoolSession session(path, std::move(lock), Unwrap(std::move(created), "cannot create pool " + path));
  PoolInfo info = session.pool().Info();
  session.Close();
  if (!existed) SyncParentDirectory(path);
  rollback.Dismiss();

  std::cout << "created pool " << path << ": " << FormatSize(info.device_bytes) << ", cluster size "
            << FormatSize(info.cluster_size) << ", " << FormatSize(info.free_bytes) << " free"
            << (info.key_source != "none" ? ", pool key from a " + info.key_source : std::string()) << "\n";
}

void RunPoolRekey(const std::string& path, const KeyArgs& new_key) {
  if (new_key.empty()) Fail("pool rekey needs --new-keyfile or --new-passphrase-file");
  PoolSecret secret = LoadSecret(new_key);
  std::unique_ptr<PoolSession> session = PoolSession::Open(path);  // unlocks with the current key
  Check(session->pool().Rekey(secret), "cannot rekey pool " + path);
  PoolInfo info = session->pool().Info();
  session->Close();
  std::cout << "pool " << path << " now opens with its new " << info.key_source
            << "; data keys rewrapped, no data rewritten\n";
}

void RunPoolInfo(const VolumeArgs& args, bool json) {
  const std::string& path = args.pool;
  PoolInfo info;
  if (auto socket = DaemonSocket(args)) {
    info = Call(*socket, "pool.info", nlohmann::json::object(), "cannot read pool " + path).get<PoolInfo>();
  } else {
    std::unique_ptr<PoolSession> session = PoolSession::Open(path);
    info = session->pool().Info();
    session->Close();
  }
  if (json) {
    PrintJson(PoolInfoJson(path, info));
  } else {
    std::cout << PoolInfoText(path, info);
  }
}

bool RunPoolFsck(const std::string& path, bool json) {
  // Locked like every other command: a pool being changed by a daemon would
  // show problems that are not there.
  PoolLock lock = PoolLock::Acquire(path, O_RDONLY);
  FileDeviceOptions options;
  options.read_only = true;
  std::unique_ptr<Device> device = Unwrap(OpenFileDevice(path, options), "cannot open pool " + path);
  FsckReport report = Unwrap(CheckPool(*device), "cannot check pool " + path);
  if (json) {
    PrintJson(FsckReportJson(path, report));
  } else {
    for (const std::string& note : report.notes) std::cout << "note: " << note << "\n";
    for (const std::string& problem : report.problems) std::cout << "problem: " << problem << "\n";
    std::cout << FsckSummaryText(path, report);
  }
  return report.ok();
}

}  // namespace edgestor::cli
