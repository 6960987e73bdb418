#include "fs/log.h"

#include <fcntl.h>
#include <paths.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <syslog.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <ctime>

#include "core/base/text_codec.h"
#include "npzfs/file_util.h"

namespace npzfs::fs {
namespace {

std::atomic<int> g_level{static_cast<int>(LogLevel::kInfo)};
std::atomic<bool> g_stderr{true};
std::atomic<bool> g_syslog{false};
std::atomic<int> g_file{-1};  // the -o log= (or runtime) file, owned for the process' life

const char* Tag(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "debug: ";
    case LogLevel::kWarning:
      return "warning: ";
    case LogLevel::kError:
      return "error: ";
    case LogLevel::kInfo:
      break;
  }
  return "";
}

int SyslogPriority(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return LOG_DEBUG;
    case LogLevel::kInfo:
      return LOG_INFO;
    case LogLevel::kWarning:
      return LOG_WARNING;
    case LogLevel::kError:
      return LOG_ERR;
  }
  return LOG_INFO;
}

// "2026-11-30T12:00:00Z npzfs[123]: "
std::string FilePrefix() {
  char stamp[32];
  const time_t now = time(nullptr);
  struct tm utc {};
  gmtime_r(&now, &utc);
  strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%SZ", &utc);
  return std::string(stamp) + " npzfs[" + std::to_string(getpid()) + "]: ";
}

void Emit(LogLevel level, const std::string& raw_line) {
  if (!LogEnabled(level)) return;
  const std::string line = EscapeControlBytes(raw_line);
  // One write(2) per line so that lines from different threads never interleave.
  const std::string text = std::string(Tag(level)) + line + "\n";
  if (g_stderr.load(std::memory_order_relaxed)) {
    const std::string out = "npzfs: " + text;
    [[maybe_unused]] ssize_t n = write(STDERR_FILENO, out.data(), out.size());
  }
  if (const int fd = g_file.load(std::memory_order_relaxed); fd >= 0) {
    const std::string out = FilePrefix() + text;
    [[maybe_unused]] ssize_t n = write(fd, out.data(), out.size());
  }
  if (g_syslog.load(std::memory_order_relaxed)) {
    syslog(SyslogPriority(level), "%s%s", Tag(level), line.c_str());
  }
}

}  // namespace

void SetLogLevel(LogLevel level) { g_level.store(static_cast<int>(level)); }

bool LogEnabled(LogLevel level) {
  return static_cast<int>(level) >= g_level.load(std::memory_order_relaxed);
}

Status LogToFile(const std::string& path) {
  // Without blocking: a FIFO that nobody reads yet would hang the mount in open(2). A FIFO
  // with a reader is fine (the writes then block as writes to a pipe do).
  auto opened = OpenFile(path, O_WRONLY | O_APPEND | O_CREAT | O_NONBLOCK, 0644);
  if (!opened.ok() && opened.status().code() == ENXIO) {
    return Status::Error(ENXIO, path + ": a FIFO that no process reads");
  }
  NPZ_ASSIGN_OR_RETURN(UniqueFd fd, std::move(opened));
  NPZ_RETURN_IF_ERROR(ClearNonBlocking(fd.get(), path));
  const int old = g_file.exchange(fd.Release());
  if (old >= 0) close(old);
  return Status::Ok();
}

void LogDaemonized(bool use_syslog) {
  g_stderr.store(false);
  if (use_syslog && !g_syslog.load()) openlog("npzfs", LOG_PID, LOG_DAEMON);
  g_syslog.store(use_syslog);
}

bool SyslogAvailable() {
  const int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, _PATH_LOG, sizeof addr.sun_path - 1);
  const bool ok = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  close(fd);
  return ok;
}

void LogDebug(const std::string& line) { Emit(LogLevel::kDebug, line); }
void LogInfo(const std::string& line) { Emit(LogLevel::kInfo, line); }
void LogWarning(const std::string& line) { Emit(LogLevel::kWarning, line); }
void LogError(const std::string& line) { Emit(LogLevel::kError, line); }

}  // namespace npzfs::fs
