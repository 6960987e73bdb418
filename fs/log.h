// Logging for the npzfs daemon: one line per event, to stderr while the daemon runs in the
// foreground and to syslog (ident "npzfs") once it has daemonized.
//
// Core modules report errors as Status values; the FUSE layer logs each failed request once
// through LogError and replies the errno. Every function here is thread-safe (the sink is
// chosen once, before the session loop starts, and each line is written with one call).
#pragma once

#include <string>

namespace npzfs::fs {

// Switches the sink. Call before starting threads; the default is stderr.
void LogToSyslog(bool enabled);

void LogInfo(const std::string& line);
void LogWarning(const std::string& line);
void LogError(const std::string& line);

}  // namespace npzfs::fs
