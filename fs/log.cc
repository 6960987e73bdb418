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
#include <chrono>
#include <cstring>
#include <ctime>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

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

// Repeats. A program that retries a read of a corrupt member, or an mmap that faults on it
// page after page, gets the same error reply thousands of times. Each warning or error line
// is written once per kRepeatWindow; the copies in between are only counted, and the count
// goes out with the line's next copy, or at the end of the session (FlushLogRepeats).
// Every distinct line is remembered for its window (at most kMaxRepeatLines lines; past
// that, every window is closed early and its count written: a burst of that many distinct
// lines is rare, and one sweep keeps this simple).
constexpr auto kRepeatWindow = std::chrono::seconds(10);
constexpr size_t kMaxRepeatLines = 256;

struct Repeat {
  LogLevel level = LogLevel::kError;
  std::chrono::steady_clock::time_point written;
  uint64_t suppressed = 0;  // copies not written since `written`
};

std::mutex g_repeat_mu;
std::unordered_map<std::string, Repeat> g_repeats;  // guarded by g_repeat_mu

std::string RepeatedText(const std::string& line, uint64_t n) {
  return line + " (repeated " + std::to_string(n) + " more time" + (n == 1 ? "" : "s") + ")";
}

void Write(LogLevel level, const std::string& line);

// Whether `line` is written now; it may come back with the count of its skipped copies.
// Lines of counts closed early are added to `closed`, to be written after the lock is let go.
bool TakeRepeat(LogLevel level, std::string* line,
                std::vector<std::pair<LogLevel, std::string>>* closed) {
  const auto now = std::chrono::steady_clock::now();
  std::lock_guard lock(g_repeat_mu);
  if (auto it = g_repeats.find(*line); it != g_repeats.end()) {
    Repeat& r = it->second;
    if (now - r.written < kRepeatWindow) {
      ++r.suppressed;
      return false;
    }
    if (r.suppressed > 0) *line = RepeatedText(*line, r.suppressed);
    r.written = now;
    r.suppressed = 0;
    return true;
  }
  if (g_repeats.size() >= kMaxRepeatLines) {
    for (auto it = g_repeats.begin(); it != g_repeats.end();) {
      if (it->second.suppressed > 0) {
        closed->emplace_back(it->second.level, RepeatedText(it->first, it->second.suppressed));
      }
      it = g_repeats.erase(it);
    }
  }
  g_repeats.emplace(*line, Repeat{level, now, 0});
  return true;
}

void Emit(LogLevel level, const std::string& raw_line) {
  if (!LogEnabled(level)) return;
  std::string line = EscapeControlBytes(raw_line);
  if (level >= LogLevel::kWarning) {
    std::vector<std::pair<LogLevel, std::string>> closed;
    const bool write = TakeRepeat(level, &line, &closed);
    for (const auto& [closed_level, closed_line] : closed) Write(closed_level, closed_line);
    if (!write) return;
  }
  Write(level, line);
}

void Write(LogLevel level, const std::string& line) {
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

void FlushLogRepeats() {
  std::vector<std::pair<LogLevel, std::string>> pending;
  {
    std::lock_guard lock(g_repeat_mu);
    for (const auto& [line, r] : g_repeats) {
      if (r.suppressed > 0) pending.emplace_back(r.level, RepeatedText(line, r.suppressed));
    }
    g_repeats.clear();
  }
  for (const auto& [level, line] : pending) Write(level, line);
}

void SetLogLevel(LogLevel level) { g_level.store(static_cast<int>(level)); }

bool LogEnabled(LogLevel level) {
  return static_cast<int>(level) >= g_level.load(std::memory_order_relaxed);
}

Status LogToFile(const std::string& path, mode_t mode) {
  // Without blocking: a FIFO that nobody reads yet would hang the mount in open(2). A FIFO
  // with a reader is fine (the writes then block as writes to a pipe do).
  auto opened = OpenFile(path, O_WRONLY | O_APPEND | O_CREAT | O_NONBLOCK, mode);
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
