// Logging for the npzfs daemon: one line per event, never lost (repeats are counted).
//
// Sinks: stderr while the daemon runs in the foreground (or has not daemonized yet); once
// daemonized, syslog (ident "npzfs") when a syslog daemon listens on /dev/log, else a log
// file. `-o log=FILE` adds FILE in every case (lines there carry a UTC timestamp and the pid).
// Verbosity (-q, -v) filters by level before any sink.
//
// Core modules report errors as Status values; the FUSE layer logs each failed request once
// through LogError and replies the errno. A warning or error line that repeats is written
// once every 10 s at most: its copies in between are counted, and the count is written with
// its next copy ("... (repeated 41 more times)") or by FlushLogRepeats. Every function here
// is thread-safe: the sinks are chosen before the session loop starts, and each line is
// written with one call.
#pragma once

#include <sys/types.h>

#include <string>

#include "npzfs/status.h"

namespace npzfs::fs {

enum class LogLevel { kDebug, kInfo, kWarning, kError };

// Lines below `level` are dropped (-q: kWarning, default kInfo, -v: kDebug).
void SetLogLevel(LogLevel level);
bool LogEnabled(LogLevel level);

// Appends every line to `path` as well (created with `mode`, under the umask, if missing).
// The error names the file.
Status LogToFile(const std::string& path, mode_t mode = 0644);
// Called after daemonizing: stderr is gone. Lines go to syslog if `syslog` (else only to the
// file, if one was set).
void LogDaemonized(bool syslog);

// Whether a syslog daemon accepts messages on /dev/log (a socket that takes a connection).
bool SyslogAvailable();

// Writes the counts of repeated lines not written yet (the session has ended).
void FlushLogRepeats();

void LogDebug(const std::string& line);
void LogInfo(const std::string& line);
void LogWarning(const std::string& line);
void LogError(const std::string& line);

}  // namespace npzfs::fs
