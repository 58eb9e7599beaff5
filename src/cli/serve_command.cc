// edgestor serve: the daemon in the foreground.
#include <signal.h>

#include <iostream>

#include <spdlog/spdlog.h>

#include "base/unix_socket.h"
#include "cli/cli_error.h"
#include "cli/commands.h"
#include "cli/key_args.h"
#include "daemon/daemon.h"

namespace edgestor::cli {

void RunServe(const ServeArgs& args) {
  // Block the stop signals before any thread starts, so every thread
  // inherits the mask and only sigwait() below receives them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  DaemonOptions options;
  options.pool_path = args.pool;
  options.control_socket = args.control_socket;
  options.nbd_socket = args.nbd_socket;
  options.nbd_listen = args.nbd_listen;
  options.map_cache_bytes = args.map_cache_bytes;
  options.inflight_bytes = args.inflight_bytes;
  options.hot_plain_clusters = args.hot_plain_clusters;
  options.recompress_idle_ms = args.recompress_idle_seconds * 1000;
  if (!args.control_group.empty()) {
    options.control_access.group = Unwrap(LookUpGroup(args.control_group), "--control-group");
    options.control_access.mode = 0660;
  }
  if (!args.nbd_socket_owner.empty())
    Check(ParseSocketOwner(args.nbd_socket_owner, &options.nbd_access), "--nbd-socket-owner");
  if (!args.nbd_socket_mode.empty()) Check(ParseSocketMode(args.nbd_socket_mode, &options.nbd_access), "--nbd-socket-mode");
  options.secret = LoadSecret(args.key);
  std::unique_ptr<Daemon> daemon = Unwrap(Daemon::Start(options), "cannot serve pool " + args.pool);

  std::cerr << "edgestor: serving pool " << args.pool << "\n"
            << "  control socket: " << daemon->options().control_socket << "\n"
            << "  NBD socket:     " << daemon->options().nbd_socket << "\n";
  if (!args.nbd_listen.empty()) std::cerr << "  NBD TCP port:   " << daemon->nbd_tcp_port() << "\n";
  for (const std::string& name : daemon->ListExports()) std::cerr << "  export " << name << ": " << daemon->NbdUri(name) << "\n";
  std::vector<std::string> exports = daemon->ListExports();
  if (!exports.empty()) {
    std::string uri = daemon->NbdUri(exports.front());
    std::cerr << "Try, in another terminal:\n"
              << "  nbdinfo '" << uri << "'\n"
              << "  qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' '" << uri << "'\n";
  }
  std::cerr << "Stop with Ctrl-C (SIGINT) or SIGTERM." << std::endl;

  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  spdlog::warn("received {}, draining I/O and closing the pool", signal_number == SIGINT ? "SIGINT" : "SIGTERM");
  Check(daemon->Stop(), "cannot close pool " + args.pool);
  std::cerr << "edgestor: pool " << args.pool << " closed cleanly" << std::endl;
}

}  // namespace edgestor::cli
