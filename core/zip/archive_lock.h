// The locks that keep npzfs's writers of one archive from interleaving.
//
// Every npzfs process that changes an existing archive (an in-place append, a copy-mode
// append, npz pack over it, journal recovery, stale temp file cleanup) first takes an
// exclusive flock on the archive file itself. A lock on the file rather than on a lock file
// leaves nothing behind, and readers, which never lock, are not slowed down. Because a
// copy-mode append renames a new inode over the path, Acquire checks after locking that the
// path still names the inode it locked, and starts again if not.
//
// Creating an archive that does not exist yet cannot lock the file, so creators lock the
// directory instead (flock on a directory fd), check again that the archive is missing, and
// rename their temp file into place while holding it. Stale temp file cleanup takes the
// directory lock and then the archive lock: with both held, no npzfs writer of this archive
// is running. Lock order: directory, then archive. No path holds an archive lock while it
// waits for a directory lock.
//
// flock is per open file description and is released when its fd closes (also when the
// process dies), so a killed writer never leaves a lock held. A writer that has to wait says
// so once through its `waiting` callback, naming the holder (its pid and name, from
// /proc/locks) when it can be told: a finalize of a large archive may hold the lock for
// minutes, and a silent `npz pack` would look hung. Threads: a lock object is a plain owner
// of one fd; different objects are independent.
#pragma once

#include <sys/stat.h>

#include <functional>
#include <string>

#include "npzfs/file_util.h"
#include "npzfs/status.h"

namespace npzfs {

// Called once, before a wait for a lock another process holds: "PATH: waiting for ...".
using LockWaitFn = std::function<void(const std::string& line)>;

// "pid N, NAME" of a process holding a flock on the file `fd` is open on, from /proc/locks;
// "" if it cannot be told (no /proc, another pid namespace, or nobody holds one).
std::string FlockHolder(int fd);

class ArchiveLock {
 public:
  // Opens `path` with `open_flags` (O_RDONLY or O_RDWR; O_CLOEXEC added) and waits for an
  // exclusive flock on it. ENOENT if it does not exist (also when it disappeared while
  // waiting); the errno of open/flock/stat otherwise, naming the path.
  static Result<ArchiveLock> Acquire(const std::string& path, int open_flags,
                                     const LockWaitFn& waiting = {});

  int fd() const { return fd_.get(); }
  // The locked file's stat, taken after the lock was granted.
  const struct stat& stat() const { return st_; }

 private:
  ArchiveLock(UniqueFd fd, const struct stat& st) : fd_(std::move(fd)), st_(st) {}
  UniqueFd fd_;
  struct stat st_;
};

class DirectoryLock {
 public:
  // Waits for an exclusive flock on the directory `dir` (saying so through `waiting`, as
  // ArchiveLock::Acquire does).
  static Result<DirectoryLock> Acquire(const std::string& dir, const LockWaitFn& waiting = {});

 private:
  explicit DirectoryLock(UniqueFd fd) : fd_(std::move(fd)) {}
  UniqueFd fd_;
};

}  // namespace npzfs
