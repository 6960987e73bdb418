// The runtime files of a daemon: where they are (core/base/runtime_dir.h chooses the
// directory and names them after the archive) and the lock of a writable mount.
//
// The spool is not used for them: it is made only on the first new member and removed by
// finalize, and a runtime file inside it would keep it alive.
//
// Files: `.result` (finalize outcome for `npz umount`, removed by it once read), `.progress`
// (finalize bytes done and total while finalizing), `.lock` (held by a writable daemon,
// holding its pid, the npz recover command for its spool and the spool, MountLockText: a second
// writable mount of the archive is refused), `.log` (the log
// when there is no syslog and no -o log=). The index directory `.index/` (for the index
// sidecar when it cannot be kept next to the archive) is named there too: RuntimeIndexDir.
//
// Plain functions and a value type: thread-safe.
#pragma once

#include <string>

#include "core/base/runtime_dir.h"
#include "npzfs/file_util.h"
#include "npzfs/status.h"

namespace npzfs::fs {

struct RuntimeFiles {
  std::string dir;  // "" when no directory could be used: then none of the files exist
  std::string why_none;  // then: why (ChooseRuntimeDir)
  std::string result, progress, lock, log;
};

// Chooses the runtime directory (creating it if needed) and names the files for
// `archive_path` (absolute). Never an error: an empty `dir` says none could be used.
RuntimeFiles ChooseRuntimeFiles(const std::string& archive_path);

// The exclusive lock of a writable mount, holding the daemon's pid. Released (and its file
// removed) when destroyed, on every path out of the daemon.
class MountLock {
 public:
  MountLock() = default;
  MountLock(MountLock&&) = default;
  MountLock& operator=(MountLock&& other) noexcept;
  ~MountLock();

  // Takes the lock at `path` and writes the pid and `record` into it (MountLockText). EBUSY
  // naming the archive and the pid that holds it if another daemon does.
  static Result<MountLock> Take(const std::string& path, const std::string& archive_path,
                                MountRecord record);
  // Writes this process's pid into the lock again: the daemon's, after fuse_daemonize forked
  // and the process that took the lock exited. Nothing if no lock is held.
  Status RecordPid();

 private:
  void Release();
  UniqueFd fd_;
  std::string path_;
  MountRecord record_;
};

// Removes what earlier daemons left in `dir` (only files of this user): result files older
// than a week (mounts nobody unmounted with `npz umount`, which removes a result once read),
// and the lock and progress files of daemons that were killed (a lock nobody holds; taking
// it to find out is why MountLock::Take waits a moment for a lock held under a dead pid).
void RemoveStaleRuntimeFiles(const std::string& dir);

}  // namespace npzfs::fs
