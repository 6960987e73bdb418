// Bringing a mount up and down, around the session loop (main.cc runs the loop).
//
// Start-up order matters: everything that can fail for a reason the user must see (bad
// options, a missing archive, an archive that is not a zip, a target that is already a mount
// point or holds files, another writable daemon on the same archive) is checked BEFORE
// daemonizing, while stderr is still the terminal. Nothing here needs a writable directory
// for a read-only mount, and a writable mount of an archive on a read-only dataset still
// mounts: its spool is made on the first new member (SpoolSlot).
//
// After the unmount, FinishMount finalizes the new members into the archive, publishing its
// progress in the runtime progress file, and writes the outcome to the result file that
// `npz umount` reads (protocol: getxattr on the mount root, names in core/base/names.h).
//
// Not thread-safe: main() calls these before and after the session loop.
#pragma once

#include <string>

#include "fs/mount.h"

namespace npzfs::fs {

// The mount point, and whether this daemon created it (then it removes it at the end).
struct MountPoint {
  std::string path;  // absolute
  bool created = false;
  MountPoint() = default;
  MountPoint(const MountPoint&) = delete;
  MountPoint& operator=(const MountPoint&) = delete;
  ~MountPoint();
};

// Fills `m` from m.options: the archive (opened), the runtime files and lock, the mount point
// (checked), the spool (resumed if one exists) and the inode table. The error is for the
// terminal: it names the file and the cause, and how to proceed where there is a way.
Status PrepareMount(Mount& m, MountPoint& mp);

// Where the log goes once the daemon leaves the terminal: -o log=FILE, else syslog, else the
// runtime log file (its path is printed now), else nowhere (said now). Call before
// daemonizing; returns whether to use syslog (for LogDaemonized).
bool ChooseDaemonLog(const Mount& m);

// After the session: finalize, the result file, the runtime files. Returns the exit code.
int FinishMount(Mount& m);

}  // namespace npzfs::fs
