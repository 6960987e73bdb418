#include "fs/log.h"

#include <syslog.h>
#include <unistd.h>

#include <atomic>

namespace npzfs::fs {
namespace {

std::atomic<bool> g_syslog{false};

void Emit(int priority, const char* tag, const std::string& line) {
  if (g_syslog.load(std::memory_order_relaxed)) {
    syslog(priority, "%s", line.c_str());
    return;
  }
  // One write(2) per line so that lines from different threads never interleave.
  std::string text = std::string("npzfs: ") + tag + line + "\n";
  [[maybe_unused]] ssize_t n = write(STDERR_FILENO, text.data(), text.size());
}

}  // namespace

void LogToSyslog(bool enabled) {
  if (enabled && !g_syslog.load()) openlog("npzfs", LOG_PID, LOG_DAEMON);
  g_syslog.store(enabled);
}

void LogInfo(const std::string& line) { Emit(LOG_INFO, "", line); }
void LogWarning(const std::string& line) { Emit(LOG_WARNING, "warning: ", line); }
void LogError(const std::string& line) { Emit(LOG_ERR, "error: ", line); }

}  // namespace npzfs::fs
