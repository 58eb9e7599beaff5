// edgestor: the command-line tool. This file wires the command line (CLI11)
// to the commands in commands.h and turns failures into exit statuses:
// 0 success, 1 the command failed (one line on stderr), 2 usage error.
#include <cctype>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <memory>
#include <optional>
#include <string>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include "base/size_parse.h"
#include "cli/cli_error.h"
#include "cli/commands.h"
#include "io/device.h"

namespace edgestor::cli {
namespace {

constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;
// The engine's limits (src/pool/format.h), checked here so that an invalid
// argument is refused before any file is created or opened.
constexpr uint64_t kPoolSizeUnit = 4096;
constexpr uint64_t kMinJournalBytes = 1ull << 20;
constexpr uint64_t kMaxJournalBytes = 256ull << 20;
constexpr uint32_t kMinClusterSize = 4096;
constexpr uint32_t kMaxClusterSize = 256 * 1024;

// A size argument ("8G", "64K", "4096"): checked by `check` and replaced by
// its byte count, so the option's integer target receives plain bytes.
CLI::Validator SizeArg(std::function<std::string(uint64_t)> check = nullptr) {
  return CLI::Validator(
      [check](std::string& text) -> std::string {
        std::optional<uint64_t> bytes = ParseSize(text);
        if (!bytes) return "'" + text + "' is not a size (examples: 4096, 512K, 8G, 1.5T)";
        std::string problem = check ? check(*bytes) : "";
        if (!problem.empty()) return "'" + text + "' " + problem;
        text = std::to_string(*bytes);
        return "";
      },
      "SIZE");
}

std::string PositiveMultipleOf(uint64_t bytes, uint64_t unit) {
  if (bytes == 0 || bytes % unit != 0) return "must be a positive multiple of " + std::to_string(unit) + " bytes";
  return "";
}

std::string ClusterSizeProblem(uint64_t bytes) {
  bool power_of_two = bytes != 0 && (bytes & (bytes - 1)) == 0;
  if (!power_of_two || bytes < kMinClusterSize || bytes > kMaxClusterSize) {
    return "must be a power of two from 4K to 256K";
  }
  return "";
}

std::string JournalSizeProblem(uint64_t bytes) {
  if (bytes % kPoolSizeUnit != 0 || bytes < kMinJournalBytes || bytes > kMaxJournalBytes) {
    return "must be a multiple of 4K from 1M to 256M";
  }
  return "";
}

const CLI::Validator kVolumeName(
    [](std::string& name) -> std::string {
      if (IsValidVolumeName(name)) return "";
      return "invalid volume name '" + name + "': use 1 to 64 of A-Z a-z 0-9 . _ -, not starting with . or -";
    },
    "NAME");

// vol read also reads snapshots: VOL or VOL@SNAP.
const CLI::Validator kVolumeOrSnapshotName(
    [](std::string& name) -> std::string {
      size_t at = name.find('@');
      if (at == std::string::npos ? IsValidVolumeName(name)
                                  : IsValidVolumeName(name.substr(0, at)) && IsValidVolumeName(name.substr(at + 1)))
        return "";
      return "invalid volume or snapshot name '" + name + "': VOL or VOL@SNAP, each 1 to 64 of A-Z a-z 0-9 . _ -, "
             "not starting with . or -";
    },
    "NAME");

// The pool a command works on: its PATH argument, else --pool, else
// $EDGESTOR_POOL (CLI11 fills --pool from the environment).
std::string PoolPath(const std::string& positional, const std::string& global) {
  if (!positional.empty()) return positional;
  if (!global.empty()) return global;
  throw CLI::RequiredError("no pool given: pass PATH or --pool PATH, or set EDGESTOR_POOL",
                           CLI::ExitCodes::RequiredError);
}

void SetUpLogging(bool verbose) {
  // On stderr: stdout may be carrying volume data (vol read).
  auto logger = spdlog::stderr_color_mt("edgestor");
  logger->set_pattern("%n: %l: %v");
  spdlog::set_default_logger(logger);
  spdlog::set_level(verbose ? spdlog::level::debug : spdlog::level::warn);
}

struct Globals {
  std::string pool;
  std::string control;
  KeyArgs key;
  bool verbose = false;
};

void AddPoolCommands(CLI::App& app, Globals& g, std::function<int()>& action) {
  CLI::App* pool = app.add_subcommand("pool", "create, inspect and check pools")->require_subcommand(1);

  auto* create = pool->add_subcommand("create", "format a file or block device as a new, empty pool");
  auto c = std::make_shared<PoolCreateArgs>();
  create->add_option("PATH", c->path, "pool file (created sparse if missing) or block device");
  create->add_option("--size", c->size, "size of a new file; an existing file or device keeps its own")
      ->transform(SizeArg([](uint64_t b) { return PositiveMultipleOf(b, kPoolSizeUnit); }))
      ->default_str("20G");
  create->add_option("--cluster-size", c->cluster_size, "allocation unit of volumes")
      ->transform(SizeArg(ClusterSizeProblem))
      ->default_str("64K");
  create->add_option("--journal-size", c->journal_bytes, "metadata journal (default: 1% of the pool)")
      ->transform(SizeArg(JournalSizeProblem));
  create->add_flag("--encrypt", c->encrypt, "encrypt new volumes by default (needs --keyfile or --passphrase-file)");
  create->add_option("--compress", c->compress, "default compression of new volumes: off, lz4, zstd[:LEVEL]")
      ->default_str("off");
  create->add_flag("--force", c->force,
                   "format even over a pool label (damaged, another version or size), a file system or a "
                   "partition table: whatever the device holds is lost");
  create->add_flag("--preallocate", c->preallocate,
                   "reserve host file system space for the whole pool file now (labels and journal always are), "
                   "so that a full host can never refuse a data write");
  create->callback([c, &g, &action] {
    c->path = PoolPath(c->path, g.pool);
    action = [c] {
      RunPoolCreate(*c);
      return 0;
    };
  });

  auto path = std::make_shared<std::string>();
  auto json = std::make_shared<bool>(false);
  auto* info = pool->add_subcommand("info", "show a pool's space and settings");
  auto* fsck = pool->add_subcommand("fsck", "check a pool's consistency without changing it (exit 1 on problems)");
  for (CLI::App* sub : {info, fsck}) {
    sub->add_option("PATH", *path, "pool file or block device");
    sub->add_flag("--json", *json, "print JSON");
  }
  auto* rekey = pool->add_subcommand("rekey", "replace the pool key (rewraps data keys; no data is rewritten)");
  auto new_key = std::make_shared<KeyArgs>();
  rekey->add_option("PATH", *path, "pool file or block device");
  rekey->add_option("--new-keyfile", new_key->keyfile, "the new key file (32 bytes, or 64 hex digits)");
  rekey->add_option("--new-passphrase-file", new_key->passphrase_file, "file whose first line is the new passphrase");
  rekey->callback([path, new_key, &g, &action] {
    *path = PoolPath(*path, g.pool);
    action = [path, new_key] {
      RunPoolRekey(*path, *new_key);
      return 0;
    };
  });
  auto* unlock = pool->add_subcommand("unlock", "give a running daemon the pool key (--keyfile or --passphrase-file)");
  unlock->callback([&g, &action] {
    auto args = std::make_shared<VolumeArgs>();
    args->control = g.control;
    args->pool = g.control.empty() ? PoolPath("", g.pool) : g.pool;
    action = [args] {
      RunPoolUnlock(*args);
      return 0;
    };
  });
  info->callback([path, json, &g, &action] {
    auto args = std::make_shared<VolumeArgs>();
    args->control = g.control;
    args->pool = PoolPath(*path, g.pool);
    action = [args, json] {
      RunPoolInfo(*args, *json);
      return 0;
    };
  });
  fsck->callback([path, json, &g, &action] {
    *path = PoolPath(*path, g.pool);
    action = [path, json] { return RunPoolFsck(*path, *json) ? 0 : kExitFailure; };
  });
}

void AddVolumeCommands(CLI::App& app, Globals& g, std::function<int()>& action) {
  CLI::App* vol = app.add_subcommand("vol", "manage the thin volumes of a pool (--pool)")->require_subcommand(1);
  auto v = std::make_shared<VolumeArgs>();
  auto json = std::make_shared<bool>(false);
  auto size = std::make_shared<uint64_t>(0);
  auto force = std::make_shared<bool>(false);
  auto add_name = [v](CLI::App* sub) {
    sub->add_option("NAME", v->name, "volume name")->required()->check(kVolumeName);
  };
  auto volume_size = SizeArg([](uint64_t b) { return PositiveMultipleOf(b, kSectorSize); });
  // With a daemon's control socket the pool path is optional.
  auto pool_of = [&g, v] {
    v->control = g.control;
    return g.control.empty() ? PoolPath("", g.pool) : g.pool;
  };

  auto* create = vol->add_subcommand("create", "create a thin volume (uses no space until written)");
  add_name(create);
  create->add_option("--size", *size, "virtual size")->required()->transform(volume_size);
  auto encrypt = std::make_shared<bool>(false);
  auto no_encrypt = std::make_shared<bool>(false);
  auto compress = std::make_shared<std::string>();
  CLI::Option* encrypt_opt = create->add_flag("--encrypt", *encrypt, "encrypt with AES-256-XTS (pool default otherwise)");
  create->add_flag("--no-encrypt", *no_encrypt, "do not encrypt, whatever the pool default")->excludes(encrypt_opt);
  CLI::Option* compress_opt =
      create->add_option("--compress", *compress, "off, lz4, zstd or zstd:LEVEL (pool default otherwise)");
  create->callback([=, &action] {
    v->pool = pool_of();
    VolumeCreateArgs args{.size = *size};
    if (*encrypt || *no_encrypt) args.encrypt = *encrypt;
    if (compress_opt->count() > 0) args.compress = *compress;
    action = [=] {
      RunVolumeCreate(*v, args);
      return 0;
    };
  });

  auto* set = vol->add_subcommand("set", "change a volume's settings");
  add_name(set);
  set->add_option("--compress", *compress, "compression of new writes: off, lz4, zstd or zstd:LEVEL")->required();
  set->callback([=, &action] {
    v->pool = pool_of();
    action = [=] {
      RunVolumeSetCompression(*v, *compress);
      return 0;
    };
  });

  auto* list = vol->add_subcommand("list", "list volumes");
  list->add_flag("--json", *json, "print JSON");
  list->callback([=, &action] {
    v->pool = pool_of();
    action = [=] {
      RunVolumeList(*v, *json);
      return 0;
    };
  });

  auto* info = vol->add_subcommand("info", "show one volume");
  add_name(info);
  info->add_flag("--json", *json, "print JSON");
  info->callback([=, &action] {
    v->pool = pool_of();
    action = [=] {
      RunVolumeInfo(*v, *json);
      return 0;
    };
  });

  auto* resize = vol->add_subcommand("resize", "grow a volume, or shrink it with --force");
  add_name(resize);
  resize->add_option("--size", *size, "new virtual size")->required()->transform(volume_size);
  resize->add_flag("--force", *force, "allow shrinking (data beyond the new end is discarded)");
  resize->callback([=, &action] {
    v->pool = pool_of();
    action = [=] {
      RunVolumeResize(*v, *size, *force);
      return 0;
    };
  });

  auto* del = vol->add_subcommand("delete", "delete a volume and free its space");
  add_name(del);
  del->callback([=, &action] {
    v->pool = pool_of();
    action = [=] {
      RunVolumeDelete(*v);
      return 0;
    };
  });

  auto w = std::make_shared<VolumeWriteArgs>();
  auto* write = vol->add_subcommand("write", "write bytes from a file or stdin into a volume");
  add_name(write);
  write->add_option("--offset", w->offset, "byte offset in the volume (default 0)")->transform(SizeArg());
  write->add_option("--input", w->input, "input file (default: stdin)");
  write->callback([=, &action] {
    v->pool = pool_of();
    w->volume = *v;
    action = [=] {
      RunVolumeWrite(*w);
      return 0;
    };
  });

  auto* flatten = vol->add_subcommand("flatten", "copy the data a clone shares with its snapshot, making it independent");
  add_name(flatten);
  flatten->callback([=, &action] {
    v->pool = pool_of();
    action = [=] {
      RunVolumeFlatten(*v);
      return 0;
    };
  });

  auto r = std::make_shared<VolumeReadArgs>();
  auto length = std::make_shared<uint64_t>(0);
  auto* read = vol->add_subcommand("read", "read bytes of a volume (or of a snapshot, VOL@SNAP) to a file or stdout");
  read->add_option("NAME", v->name, "volume name, or VOL@SNAP")->required()->check(kVolumeOrSnapshotName);
  read->add_option("--offset", r->offset, "byte offset in the volume (default 0)")->transform(SizeArg());
  CLI::Option* length_opt =
      read->add_option("--length", *length, "bytes to read (default: to the end)")->transform(SizeArg());
  read->add_option("--output", r->output, "output file (default: stdout)");
  read->callback([=, &action] {
    v->pool = pool_of();
    r->volume = *v;
    if (length_opt->count() > 0) r->length = *length;
    action = [=] {
      RunVolumeRead(*r);
      return 0;
    };
  });
}

// snap create | list | delete | rollback, and clone. Snapshot arguments
// (VOL@SNAP) are checked by the commands, not here: a bad one is a failed
// command (exit 1, one line), not a usage error.
void AddSnapshotCommands(CLI::App& app, Globals& g, std::function<int()>& action) {
  CLI::App* snap = app.add_subcommand("snap", "snapshots of volumes (VOL@SNAP): create, list, delete, roll back")
                       ->require_subcommand(1);
  auto v = std::make_shared<VolumeArgs>();
  auto pool_of = [&g, v] {
    v->control = g.control;
    v->pool = g.control.empty() ? PoolPath("", g.pool) : g.pool;
  };
  auto add_snapshot = [v](CLI::App* sub) { sub->add_option("VOL@SNAP", v->name, "volume@snapshot")->required(); };
  // One command action per subcommand, run after parsing.
  auto on_parse = [&action, pool_of](CLI::App* sub, std::function<void()> run) {
    sub->callback([&action, pool_of, run] {
      pool_of();
      action = [run] {
        run();
        return 0;
      };
    });
  };

  auto* create = snap->add_subcommand("create", "take a snapshot: an immutable copy that shares data until it changes");
  add_snapshot(create);
  on_parse(create, [v] { RunSnapshotCreate(*v); });

  auto json = std::make_shared<bool>(false);
  auto* list = snap->add_subcommand("list", "list snapshots (of one volume, or all), oldest first");
  list->add_option("VOL", v->name, "only the snapshots of this volume");
  list->add_flag("--json", *json, "print JSON");
  on_parse(list, [v, json] { RunSnapshotList(*v, *json); });

  auto* del = snap->add_subcommand("delete", "delete a snapshot, freeing what only it holds");
  add_snapshot(del);
  on_parse(del, [v] { RunSnapshotDelete(*v); });

  auto rollback_args = std::make_shared<RollbackArgs>();
  auto* rollback = snap->add_subcommand(
      "rollback", "make a volume's content the snapshot's; the current content is kept as an automatic snapshot");
  add_snapshot(rollback);
  rollback->add_flag("--discard-current", rollback_args->discard_current,
                     "do not keep the current content (the rollback cannot be undone)");
  rollback->add_flag("--force", rollback_args->force,
                     "disconnect the volume's NBD clients and remove its vhost-user exports first");
  on_parse(rollback, [v, rollback_args] { RunSnapshotRollback(*v, *rollback_args); });

  auto clone_name = std::make_shared<std::string>();
  auto* clone = app.add_subcommand("clone", "create a writable volume from a snapshot, sharing its data");
  clone->add_option("VOL@SNAP", v->name, "the snapshot")->required();
  clone->add_option("NEWVOL", *clone_name, "name of the new volume")->required();
  on_parse(clone, [v, clone_name] { RunClone(*v, *clone_name); });
}

void AddExportCommands(CLI::App& app, Globals& g, std::function<int()>& action) {
  CLI::App* exp = app.add_subcommand("export", "export volumes at run time (through the daemon)")->require_subcommand(1);
  auto v = std::make_shared<VolumeArgs>();
  auto pool_of = [&g, v] {
    v->control = g.control;
    v->pool = g.control.empty() ? PoolPath("", g.pool) : g.pool;
  };
  auto vhost = std::make_shared<VhostExportArgs>();
  auto* add = exp->add_subcommand("vhost", "serve a volume as a vhost-user-blk device on a unix socket (for QEMU)");
  add->add_option("NAME", v->name, "volume name (or VOL@SNAP: a snapshot, read-only)")
      ->required()
      ->check(kVolumeOrSnapshotName);
  add->add_option("--socket", vhost->socket, "unix socket QEMU connects to")->required();
  add->add_option("--queues", vhost->queues, "virtqueues (1-16), served in parallel")->check(CLI::Range(1, 16))->default_str("1");
  add->add_flag("--readonly", vhost->read_only, "refuse writes");
  add->add_flag("--transient", vhost->transient, "do not store the export: it is gone when the daemon restarts");
  add->add_option("--socket-owner", vhost->socket_owner,
                  "USER[:GROUP] to own the socket (e.g. the user QEMU runs as; default: the daemon's user)");
  add->add_option("--socket-mode", vhost->socket_mode, "socket permissions, octal (default 0600: the owner only)");
  add->callback([=, &action] {
    pool_of();
    action = [=] {
      RunExportVhost(*v, *vhost);
      return 0;
    };
  });
  auto file = std::make_shared<FileExportArgs>();
  auto* add_file = exp->add_subcommand("file", "present a volume as one regular file through FUSE (for loop devices, "
                                               "containers and host services)");
  add_file->add_option("NAME", v->name, "volume name (or VOL@SNAP: a snapshot, read-only)")
      ->required()
      ->check(kVolumeOrSnapshotName);
  add_file->add_option("--mountpoint", file->mountpoint, "directory to mount on (created if missing); the file is DIR/NAME")
      ->required();
  add_file->add_option("--threads", file->threads, "threads serving the file (1-16)")
      ->check(CLI::Range(1, 16))
      ->default_str("2");
  add_file->add_flag("--readonly", file->read_only, "refuse writes");
  add_file->add_flag("--transient", file->transient, "do not store the export: it is gone when the daemon restarts");
  add_file->callback([=, &action] {
    pool_of();
    action = [=] {
      RunExportFile(*v, *file);
      return 0;
    };
  });
  auto json = std::make_shared<bool>(false);
  auto* list = exp->add_subcommand("list", "list exports (NBD, vhost-user and file)");
  list->add_flag("--json", *json, "print JSON");
  list->callback([=, &action] {
    pool_of();
    action = [=] {
      RunExportList(*v, *json);
      return 0;
    };
  });
  auto removal = std::make_shared<ExportRemoveArgs>();
  auto* remove = exp->add_subcommand("remove", "stop a vhost-user export or unmount a file export (requests in "
                                               "flight finish)");
  auto* by_socket = remove->add_option("--socket", removal->socket, "the vhost-user export's socket");
  auto* by_mountpoint = remove->add_option("--mountpoint", removal->mountpoint, "the file export's mount point");
  by_socket->excludes(by_mountpoint);
  remove->add_flag("--force", removal->force, "unmount a file export even while its file is open (its users get "
                                               "ENOTCONN)");
  remove->callback([=, &action] {
    if (removal->socket.empty() && removal->mountpoint.empty())
      throw CLI::ValidationError("export remove", "give --socket (vhost-user) or --mountpoint (file)");
    pool_of();
    action = [=] {
      RunExportRemove(*v, *removal);
      return 0;
    };
  });
}

void AddAttachCommands(CLI::App& app, Globals& g, std::function<int()>& action) {
  auto v = std::make_shared<VolumeArgs>();
  auto device = std::make_shared<std::string>();
  auto* attach = app.add_subcommand("attach", "connect the kernel's NBD client to a volume and print its /dev/nbdN "
                                              "(hosts with the nbd module; see export file otherwise)");
  attach->add_option("NAME", v->name, "volume name (or VOL@SNAP)")->required()->check(kVolumeOrSnapshotName);
  attach->add_option("--device", *device, "the /dev/nbdN to use (default: the first free one)");
  attach->callback([=, &g, &action] {
    v->control = g.control;
    v->pool = g.control.empty() ? PoolPath("", g.pool) : g.pool;
    action = [=] {
      RunAttach(*v, *device);
      return 0;
    };
  });
  auto detach_device = std::make_shared<std::string>();
  auto* detach = app.add_subcommand("detach", "disconnect a /dev/nbdN that attach connected");
  detach->add_option("DEVICE", *detach_device, "the /dev/nbdN")->required();
  detach->callback([=, &action] {
    action = [=] {
      RunDetach(*detach_device);
      return 0;
    };
  });
}

void AddOperationsCommands(CLI::App& app, Globals& g, std::function<int()>& action) {
  auto v = std::make_shared<VolumeArgs>();
  auto daemon_of = [&g, v] {
    v->control = g.control;
    v->pool = g.control.empty() ? PoolPath("", g.pool) : g.pool;
  };
  auto iostat = std::make_shared<IostatArgs>();
  auto* io = app.add_subcommand("iostat", "I/O per volume from the daemon: totals, or rates every INTERVAL seconds");
  io->add_option("ARGS", iostat->volumes, "[VOLUME...] [INTERVAL [COUNT]]");
  io->add_flag("-l,--latency", iostat->latency, "add average latencies and requests in flight");
  io->callback([=, &action] {
    // Trailing numbers are INTERVAL and COUNT, as for zpool iostat; other
    // words are volume names.
    auto number = [](const std::string& word) -> std::optional<double> {
      char* end = nullptr;
      double value = std::strtod(word.c_str(), &end);
      if (word.empty() || *end != '\0' || !std::isfinite(value) || !std::isdigit(static_cast<unsigned char>(word[0])))
        return std::nullopt;
      return value;
    };
    std::vector<std::string>& words = iostat->volumes;
    std::vector<double> numbers;
    while (!words.empty() && numbers.size() < 2 && number(words.back())) {
      numbers.insert(numbers.begin(), *number(words.back()));
      words.pop_back();
    }
    if (!numbers.empty()) {
      if (numbers[0] <= 0) throw CLI::ValidationError("iostat", "INTERVAL must be more than 0 seconds");
      iostat->interval_seconds = numbers[0];
    }
    if (numbers.size() == 2) {
      if (numbers[1] < 1 || numbers[1] != std::floor(numbers[1]))
        throw CLI::ValidationError("iostat", "COUNT must be a whole number of reports, 1 or more");
      iostat->count = static_cast<uint64_t>(numbers[1]);
    }
    daemon_of();
    action = [=] {
      RunIostat(*v, *iostat);
      return 0;
    };
  });
  CLI::App* job = app.add_subcommand("job", "long operations running in the daemon")->require_subcommand(1);
  auto json = std::make_shared<bool>(false);
  auto* list = job->add_subcommand("list", "jobs: state, progress, rate and ETA");
  list->add_flag("--json", *json, "print JSON");
  list->callback([=, &action] {
    daemon_of();
    action = [=] {
      RunJobList(*v, *json);
      return 0;
    };
  });
  auto id = std::make_shared<uint64_t>(0);
  auto* wait = job->add_subcommand("wait", "follow a job to its end (a progress bar on a terminal)");
  wait->add_option("ID", *id, "job id")->required();
  wait->callback([=, &action] {
    daemon_of();
    action = [=] {
      RunJobWait(*v, *id);
      return 0;
    };
  });
  auto* cancel = job->add_subcommand("cancel", "stop a job that can stop safely (flatten: what it copied stays)");
  cancel->add_option("ID", *id, "job id")->required();
  cancel->callback([=, &action] {
    daemon_of();
    action = [=] {
      RunJobCancel(*v, *id);
      return 0;
    };
  });
  auto* status = app.add_subcommand("status", "pool health, space, volumes and their exports, jobs: one screen");
  status->add_flag("--json", *json, "print JSON");
  status->callback([=, &action] {
    daemon_of();
    action = [=] {
      RunStatus(*v, *json);
      return 0;
    };
  });
}

void AddServeCommand(CLI::App& app, Globals& g, std::function<int()>& action) {
  auto args = std::make_shared<ServeArgs>();
  auto* serve = app.add_subcommand("serve", "serve every volume of a pool over NBD, with a control socket");
  serve->add_option("--nbd-socket", args->nbd_socket, "NBD unix socket (default: beside the pool)");
  serve->add_option("--nbd-listen", args->nbd_listen, "also serve NBD over TCP on HOST:PORT (e.g. 127.0.0.1:10809)");
  serve->add_option("--control-group", args->control_group,
                    "let this group use the control socket too (mode 0660; default: the daemon's user only)");
  serve->add_option("--nbd-socket-owner", args->nbd_socket_owner,
                    "USER[:GROUP] to own the NBD socket (e.g. the user QEMU runs as; default: the daemon's user)");
  serve->add_option("--nbd-socket-mode", args->nbd_socket_mode, "NBD socket permissions, octal (default 0600)");
  serve->add_option("--map-cache", args->map_cache_bytes, "memory for cached map pages")->transform(SizeArg())->default_str("64M");
  serve->add_option("--inflight-memory", args->inflight_bytes,
                    "request data all NBD and vhost-user clients together may hold in flight")
      ->transform(SizeArg())
      ->default_str("256M");
  serve->add_option("--hot-plain-clusters", args->hot_plain_clusters,
                    "compressed volumes: clusters per volume that small writes may keep uncompressed until they "
                    "cool down (0: always compress)")
      ->default_str("65536");
  serve->add_option("--recompress-idle", args->recompress_idle_seconds,
                    "seconds without writes after which such a cluster is compressed again in the background")
      ->check(CLI::Range(1u, 86400u))
      ->default_str("30");
  serve->add_option("--metrics-listen", args->metrics_listen,
                    "serve Prometheus metrics on http://HOST:PORT/metrics (e.g. 127.0.0.1:9750; default: off)");
  serve->add_option("--state-file", args->state_file,
                    "where exports, jobs and these settings are stored (default: beside the pool, POOL.state.json; "
                    "give one for a pool on a block device)");
  serve->add_flag("--forget-settings", args->forget_settings,
                  "ignore the settings the last serve stored (flags not given take their defaults)");
  serve->footer("Settings: the flags given are stored beside the pool (POOL.state.json) with its exports; a later "
                "serve without a flag takes its stored value.");
  serve->callback([serve, args, &g, &action] {
    for (const CLI::Option* option : serve->get_options())
      if (option->count() > 0 && !option->get_lnames().empty()) args->given.push_back(option->get_lnames().front());
    args->pool = PoolPath("", g.pool);
    args->control_socket = g.control;  // --control: where to answer (default: beside the pool)
    args->key = g.key;
    action = [args] {
      RunServe(*args);
      return 0;
    };
  });
}

int Main(int argc, char** argv) {
  CLI::App app{"edgestor: thin volumes on a pool of files or disks", "edgestor"};
  app.set_version_flag("--version", "edgestor " EDGESTOR_VERSION);
  app.require_subcommand(1);
  app.fallthrough();  // global options may follow the subcommand
  app.failure_message([](const CLI::App*, const CLI::Error& e) {
    return "edgestor: " + std::string(e.what()) + "\nRun 'edgestor --help' or 'edgestor COMMAND --help' for usage.\n";
  });
  app.footer(
      "Examples:\n"
      "  edgestor pool create var/pool.img --size 20G\n"
      "  edgestor --pool var/pool.img vol create vol0 --size 8G\n"
      "  edgestor pool create secure.img --size 20G --keyfile pool.key   (key: head -c 32 /dev/urandom)\n"
      "  edgestor --pool secure.img --keyfile pool.key vol create db --size 8G --encrypt --compress zstd\n"
      "  edgestor --pool var/pool.img vol write vol0 --offset 1M --input data.bin\n"
      "  edgestor --pool var/pool.img vol read vol0 --offset 1M --length 4M > data.out\n"
      "  edgestor --pool var/pool.img snap create vol0@before-upgrade\n"
      "  edgestor --pool var/pool.img snap rollback vol0@before-upgrade\n");
  Globals g;
  app.add_option("--pool", g.pool, "pool file or block device")->envname("EDGESTOR_POOL");
  app.add_option("--control", g.control, "control socket of a daemon serving the pool (default: found beside the pool)")
      ->envname("EDGESTOR_CONTROL");
  app.add_option("--keyfile", g.key.keyfile, "pool key file (32 bytes, or 64 hex digits)")->envname("EDGESTOR_KEYFILE");
  app.add_option("--passphrase-file", g.key.passphrase_file, "file whose first line is the pool passphrase")
      ->envname("EDGESTOR_PASSPHRASE_FILE");
  app.add_flag("-v,--verbose", g.verbose, "log debug messages");

  std::function<int()> action;
  AddPoolCommands(app, g, action);
  AddVolumeCommands(app, g, action);
  AddSnapshotCommands(app, g, action);
  AddExportCommands(app, g, action);
  AddAttachCommands(app, g, action);
  AddOperationsCommands(app, g, action);
  AddServeCommand(app, g, action);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : kExitUsage;
  }

  SetUpLogging(g.verbose);
  SetKeyArgs(g.key);
  std::signal(SIGPIPE, SIG_IGN);  // a closed stdout is an EPIPE, handled by vol read
  try {
    return action();
  } catch (const CliError& e) {
    std::cerr << "edgestor: " << e.what() << "\n";
  } catch (const std::exception& e) {
    std::cerr << "edgestor: internal error: " << e.what() << "\n";
  }
  return kExitFailure;
}

}  // namespace
}  // namespace edgestor::cli

int main(int argc, char** argv) { return edgestor::cli::Main(argc, argv); }
