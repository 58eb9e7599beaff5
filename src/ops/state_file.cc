#include "ops/state_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace edgestor {
namespace {

Status Errno(const std::string& what) { return Status(errno, what + ": " + std::strerror(errno)); }

Status WriteAll(int fd, const std::string& data, const std::string& path) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Errno("cannot write " + path);
    done += static_cast<size_t>(n);
  }
  return Status::Ok();
}

Status FsyncDirectoryOf(const std::string& path) {
  std::string dir = std::filesystem::path(path).parent_path().string();
  int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Errno("cannot open directory " + dir);
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0) return Status(err, "cannot fsync directory " + dir + ": " + std::strerror(err));
  return Status::Ok();
}

}  // namespace

std::string DefaultStateFile(const std::string& pool_path) {
  std::filesystem::path p(pool_path);
  return (p.parent_path() / (p.stem().string() + ".state.json")).string();
}

Result<nlohmann::json> LoadStateFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    if (errno == ENOENT) return nlohmann::json::object();
    return Errno("cannot read " + path);
  }
  std::stringstream text;
  text << in.rdbuf();
  nlohmann::json state = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (state.is_discarded() || !state.is_object())
    return Status(EINVAL, path + " is not a JSON object: repair or remove it (it holds the exports and jobs to restore)");
  if (state.contains("version") && state["version"] != kStateFileVersion)
    return Status(EINVAL, path + " has version " + state["version"].dump() + "; this edgestor reads version " +
                              std::to_string(kStateFileVersion));
  return state;
}

Status SaveStateFile(const std::string& path, const nlohmann::json& state) {
  nlohmann::json out = state;
  out["version"] = kStateFileVersion;
  std::string text = out.dump(2) + "\n";
  std::string temporary = path + ".tmp";
  int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return Errno("cannot create " + temporary);
  Status s = WriteAll(fd, text, temporary);
  if (s.ok() && ::fsync(fd) != 0) s = Errno("cannot fsync " + temporary);
  ::close(fd);
  if (s.ok() && ::rename(temporary.c_str(), path.c_str()) != 0) s = Errno("cannot rename " + temporary + " to " + path);
  if (!s.ok()) {
    ::unlink(temporary.c_str());
    return s;
  }
  return FsyncDirectoryOf(path);
}

}  // namespace edgestor
