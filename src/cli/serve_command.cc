// edgestor serve: the daemon in the foreground (or as a systemd service:
// packaging/edgestor.service).
#include <signal.h>

#include <algorithm>
#include <iostream>
#include <variant>

#include <spdlog/spdlog.h>

#include "base/unix_socket.h"
#include "cli/cli_error.h"
#include "cli/commands.h"
#include "cli/key_args.h"
#include "daemon/daemon.h"
#include "ops/service_notify.h"
#include "ops/state_file.h"

namespace edgestor::cli {
namespace {

// The serve flags stored as settings, by flag name.
using SettingField = std::variant<std::string*, uint64_t*, uint32_t*>;
std::vector<std::pair<std::string, SettingField>> SettingFields(ServeArgs& args) {
  return {{"nbd-socket", &args.nbd_socket},
          {"nbd-listen", &args.nbd_listen},
          {"control-group", &args.control_group},
          {"nbd-socket-owner", &args.nbd_socket_owner},
          {"nbd-socket-mode", &args.nbd_socket_mode},
          {"map-cache", &args.map_cache_bytes},
          {"inflight-memory", &args.inflight_bytes},
          {"hot-plain-clusters", &args.hot_plain_clusters},
          {"recompress-idle", &args.recompress_idle_seconds},
          {"metrics-listen", &args.metrics_listen}};
}

// Flags not given take the value the last serve stored; returns the
// settings to store now (every given or stored one).
nlohmann::json MergeStoredSettings(ServeArgs& args) {
  nlohmann::json stored = nlohmann::json::object();
  if (!args.forget_settings) {
    auto state = LoadStateFile(args.state_file.empty() ? DefaultStateFile(args.pool) : args.state_file);
    if (!state.ok()) Fail(state.status().ToString());
    if (state->contains("settings") && (*state)["settings"].is_object()) stored = (*state)["settings"];
  }
  nlohmann::json settings = nlohmann::json::object();
  for (auto& [name, field] : SettingFields(args)) {
    bool given = std::find(args.given.begin(), args.given.end(), name) != args.given.end();
    std::visit(
        [&, name = name](auto* value) {
          using T = std::remove_pointer_t<decltype(value)>;
          if (!given && stored.contains(name)) {
            bool fits = std::is_same_v<T, std::string> ? stored[name].is_string() : stored[name].is_number_unsigned();
            if (!fits) Fail("the stored setting " + name + " is " + stored[name].dump() + ": give --" + name + " or --forget-settings");
            *value = stored[name].get<T>();
            given = true;
          }
          if (given) settings[name] = *value;
        },
        field);
  }
  return settings;
}

DaemonOptions OptionsFrom(const ServeArgs& args) {
  DaemonOptions options;
  options.pool_path = args.pool;
  options.control_socket = args.control_socket;
  options.nbd_socket = args.nbd_socket;
  options.nbd_listen = args.nbd_listen;
  options.map_cache_bytes = args.map_cache_bytes;
  options.inflight_bytes = args.inflight_bytes;
  options.hot_plain_clusters = args.hot_plain_clusters;
  options.recompress_idle_ms = args.recompress_idle_seconds * 1000;
  options.metrics_listen = args.metrics_listen;
  options.state_file = args.state_file;
  if (!args.control_group.empty()) {
    options.control_access.group = Unwrap(LookUpGroup(args.control_group), "--control-group");
    options.control_access.mode = 0660;
  }
  if (!args.nbd_socket_owner.empty())
    Check(ParseSocketOwner(args.nbd_socket_owner, &options.nbd_access), "--nbd-socket-owner");
  if (!args.nbd_socket_mode.empty()) Check(ParseSocketMode(args.nbd_socket_mode, &options.nbd_access), "--nbd-socket-mode");
  return options;
}

void PrintWelcome(const ServeArgs& args, Daemon& daemon) {
  std::cerr << "edgestor: serving pool " << args.pool << "\n"
            << "  control socket: " << daemon.options().control_socket << "\n"
            << "  NBD socket:     " << daemon.options().nbd_socket << "\n";
  if (!args.nbd_listen.empty()) std::cerr << "  NBD TCP port:   " << daemon.nbd_tcp_port() << "\n";
  if (daemon.metrics_port()) std::cerr << "  metrics:        port " << daemon.metrics_port() << ", path /metrics\n";
  std::cerr << "  state file:     " << daemon.options().state_file << " (exports and settings restored at start)\n";
  for (const std::string& name : daemon.ListExports()) std::cerr << "  export " << name << ": " << daemon.NbdUri(name) << "\n";
  std::vector<std::string> exports = daemon.ListExports();
  if (!exports.empty()) {
    std::string uri = daemon.NbdUri(exports.front());
    std::cerr << "Try, in another terminal:\n"
              << "  nbdinfo '" << uri << "'\n"
              << "  qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' '" << uri << "'\n";
  }
  std::cerr << "Stop with Ctrl-C (SIGINT) or SIGTERM." << std::endl;
}

}  // namespace

void RunServe(const ServeArgs& given_args) {
  // Block the stop signals before any thread starts, so every thread
  // inherits the mask and only sigwait() below receives them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  // Under systemd, journald files each line at its level; info lines
  // (exports restored, jobs) belong in the journal.
  if (UseJournalLogPrefixes() && spdlog::get_level() > spdlog::level::info) spdlog::set_level(spdlog::level::info);

  ServeArgs args = given_args;
  nlohmann::json settings = MergeStoredSettings(args);
  DaemonOptions options = OptionsFrom(args);
  options.settings = std::move(settings);
  options.secret = LoadSecret(args.key);
  ServiceNotifier notifier;
  notifier.Status("opening pool " + args.pool);
  std::unique_ptr<Daemon> daemon = Unwrap(Daemon::Start(options), "cannot serve pool " + args.pool);
  PrintWelcome(args, *daemon);
  notifier.Ready("serving pool " + args.pool + ": " + std::to_string(daemon->ListExports().size()) + " volumes");
  notifier.StartWatchdog([d = daemon.get()] { return d->Healthy(); });

  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  spdlog::warn("received {}, draining I/O and closing the pool", signal_number == SIGINT ? "SIGINT" : "SIGTERM");
  notifier.Stopping("draining I/O and closing the pool");
  notifier.StopWatchdog();
  Check(daemon->Stop(), "cannot close pool " + args.pool);
  std::cerr << "edgestor: pool " << args.pool << " closed cleanly" << std::endl;
}

}  // namespace edgestor::cli
