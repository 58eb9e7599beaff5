// Running under systemd: readiness and status (sd_notify), the watchdog,
// and log lines journald files at the right priority.
//
// Everything here does nothing when the daemon was not started by systemd
// (no NOTIFY_SOCKET, no WATCHDOG_USEC, stderr not the journal).
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

namespace edgestor {

class ServiceNotifier {
 public:
  ServiceNotifier() = default;
  ~ServiceNotifier();  // StopWatchdog()
  ServiceNotifier(const ServiceNotifier&) = delete;
  ServiceNotifier& operator=(const ServiceNotifier&) = delete;

  void Ready(const std::string& status);  // READY=1 with a STATUS= line
  void Status(const std::string& status);
  void Stopping(const std::string& status);  // STOPPING=1

  // If systemd set a watchdog (WatchdogSec=), pings it at half its period
  // for as long as `healthy` answers true: a daemon whose pool failed, or
  // whose checks hang, stops pinging and systemd restarts it. Returns
  // whether a watchdog is on.
  bool StartWatchdog(std::function<bool()> healthy);
  void StopWatchdog();

 private:
  std::mutex mu_;
  std::condition_variable wake_;
  bool stop_ = false;  // GUARDED_BY(mu_)
  std::thread watchdog_;
};

// When stderr is the journal (JOURNAL_STREAM names it), prefixes every log
// line with its syslog priority ("<3>" for errors...) so journald files it
// at that level, and drops the logger's own level word. Returns whether it did.
bool UseJournalLogPrefixes();

}  // namespace edgestor
