#include "ops/service_notify.h"

#include <sys/stat.h>
#include <systemd/sd-daemon.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>

#include <spdlog/pattern_formatter.h>
#include <spdlog/spdlog.h>

namespace edgestor {

ServiceNotifier::~ServiceNotifier() { StopWatchdog(); }

void ServiceNotifier::Ready(const std::string& status) { sd_notifyf(0, "READY=1\nSTATUS=%s", status.c_str()); }

void ServiceNotifier::Status(const std::string& status) { sd_notifyf(0, "STATUS=%s", status.c_str()); }

void ServiceNotifier::Stopping(const std::string& status) { sd_notifyf(0, "STOPPING=1\nSTATUS=%s", status.c_str()); }

bool ServiceNotifier::StartWatchdog(std::function<bool()> healthy) {
  uint64_t usec = 0;
  if (sd_watchdog_enabled(0, &usec) <= 0 || usec == 0) return false;
  auto period = std::chrono::microseconds(usec / 2);
  watchdog_ = std::thread([this, period, healthy = std::move(healthy)] {
    std::unique_lock lock(mu_);
    while (!stop_) {
      lock.unlock();
      bool ok = healthy();
      if (ok) sd_notify(0, "WATCHDOG=1");
      else spdlog::error("health check failed: not pinging the systemd watchdog");
      lock.lock();
      wake_.wait_for(lock, period, [this] { return stop_; });
    }
  });
  spdlog::info("systemd watchdog on: pinging every {} ms", period.count() / 1000);
  return true;
}

void ServiceNotifier::StopWatchdog() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  if (watchdog_.joinable()) watchdog_.join();
}

namespace {

// "<N>": the syslog priority journald reads at the start of a line.
class SyslogPriorityFlag : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&, spdlog::memory_buf_t& dest) override {
    const char* prefix = "<6>";
    switch (msg.level) {
      case spdlog::level::trace:
      case spdlog::level::debug: prefix = "<7>"; break;
      case spdlog::level::info: prefix = "<6>"; break;
      case spdlog::level::warn: prefix = "<4>"; break;
      case spdlog::level::err: prefix = "<3>"; break;
      case spdlog::level::critical: prefix = "<2>"; break;
      default: break;
    }
    dest.append(prefix, prefix + 3);
  }
  std::unique_ptr<custom_flag_formatter> clone() const override { return std::make_unique<SyslogPriorityFlag>(); }
};

// JOURNAL_STREAM is "DEV:INODE" of the journal's stream; it is inherited by
// children too, so it counts only if stderr is still that stream.
bool StderrIsJournal() {
  const char* stream = std::getenv("JOURNAL_STREAM");
  if (!stream) return false;
  unsigned long long dev = 0, ino = 0;
  if (std::sscanf(stream, "%llu:%llu", &dev, &ino) != 2) return false;
  struct stat st;
  if (::fstat(2, &st) != 0) return false;
  return st.st_dev == dev && st.st_ino == ino;
}

}  // namespace

bool UseJournalLogPrefixes() {
  if (!StderrIsJournal()) return false;
  auto formatter = std::make_unique<spdlog::pattern_formatter>();
  formatter->add_flag<SyslogPriorityFlag>('*').set_pattern("%*%v");
  spdlog::set_formatter(std::move(formatter));
  return true;
}

}  // namespace edgestor
