// attach VOL / detach DEV: a volume of the running daemon as /dev/nbdN,
// through the kernel's NBD client (nbd-client), on hosts that have it.
// Hosts without the nbd module get the file export instead.
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <iostream>
#include <vector>

#include "cli/cli_error.h"
#include "cli/commands.h"
#include "cli/daemon_client.h"

extern char** environ;

namespace edgestor::cli {

namespace {

namespace fs = std::filesystem;

void RequireNbdModule() {
  if (fs::exists("/sys/module/nbd")) return;
  Fail("this host's kernel has no NBD client: the module 'nbd' is not loaded (load it with `modprobe nbd`). Without "
       "it, export the volume as a file and put a loop device on it: `edgestor export file VOL --mountpoint DIR`, "
       "then `losetup --direct-io=on --find --show DIR/VOL`");
}

// Runs nbd-client with `args`; fails with its exit status.
void RunNbdClient(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  argv.push_back(const_cast<char*>("nbd-client"));
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid;
  if (int err = posix_spawnp(&pid, "nbd-client", nullptr, nullptr, argv.data(), environ); err != 0)
    Fail(err == ENOENT ? "nbd-client is not installed (Debian package nbd-client)"
                       : std::string("cannot run nbd-client: ") + strerror(err));
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) Fail("nbd-client failed (see its message above)");
}

// The first /dev/nbdN no client holds (its pid file is absent).
std::string FreeNbdDevice() {
  for (int n = 0; fs::exists("/sys/block/nbd" + std::to_string(n)); n++)
    if (!fs::exists("/sys/block/nbd" + std::to_string(n) + "/pid")) return "/dev/nbd" + std::to_string(n);
  Fail("every /dev/nbdN is in use (load the module with more devices: modprobe nbd nbds_max=N)");
}

// The daemon's NBD socket, from the volume's export URI
// (nbd+unix:///VOL?socket=PATH).
std::string NbdSocketOf(const std::string& control, const std::string& volume) {
  nlohmann::json result = Call(control, "export.list", nlohmann::json::object(), "cannot list exports");
  for (const auto& e : result["exports"]) {
    if (e["protocol"] != "nbd" || e["name"] != volume) continue;
    std::string uri = e["uri"].get<std::string>();
    auto at = uri.find("?socket=");
    if (at != std::string::npos) return uri.substr(at + 8);
  }
  Fail("the daemon does not export '" + volume + "' over NBD (is it a volume of this pool?)");
}

}  // namespace

void RunAttach(const VolumeArgs& args, const std::string& device) {
  auto control = DaemonSocket(args);
  if (!control) Fail("attach goes through the daemon: start `edgestor serve --pool " + args.pool + "` first");
  RequireNbdModule();
  std::string socket = NbdSocketOf(*control, args.name);
  std::string dev = device.empty() ? FreeNbdDevice() : device;
  RunNbdClient({"-unix", socket, dev, "-N", args.name, "-b", "4096"});
  std::cout << dev << "\n";
}

void RunDetach(const std::string& device) {
  RequireNbdModule();
  RunNbdClient({"-d", device});
  std::cout << "detached " << device << "\n";
}

}  // namespace edgestor::cli
