#include "fs/runtime.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <vector>

#include "core/base/mount_table.h"
#include "core/base/runtime_dir.h"

namespace npzfs::fs {
namespace {

// Whether `fd` is still the file at `path` (a releasing daemon unlinks the lock file).
bool StillLinked(int fd, const std::string& path) {
  struct stat a {
  }, b{};
  return fstat(fd, &a) == 0 && stat(path.c_str(), &b) == 0 && a.st_ino == b.st_ino &&
         a.st_dev == b.st_dev;
}

// The pid written in a lock file, its first line ("" if none).
std::string LockHolder(int fd, const std::string& lock_path) {
  char pid[32] = {};
  (void)PreadFull(fd, pid, sizeof pid - 1, 0, lock_path);
  std::string holder(pid);
  holder = holder.substr(0, holder.find('\n'));
  while (!holder.empty() && holder.back() == ' ') holder.pop_back();
  return holder;
}

// Whether `holder` (a pid as text) names a running process.
bool Runs(const std::string& holder) {
  char* end = nullptr;
  const long pid = std::strtol(holder.c_str(), &end, 10);
  if (holder.empty() || *end != '\0' || pid <= 0) return false;
  return kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM;
}

Result<UniqueFd> LockOnce(const std::string& lock_path, const std::string& archive_path) {
  // A lock held under a pid that does not run is held for an instant: by a daemon that has
  // not written its pid yet, or by RemoveStaleRuntimeFiles testing whether it is stale.
  // Wait for that rather than refuse the mount.
  constexpr int kTries = 50;
  constexpr useconds_t kPause = 10000;
  for (int attempt = 1;; ++attempt) {
    NPZ_ASSIGN_OR_RETURN(UniqueFd fd, OpenFile(lock_path, O_RDWR | O_CREAT, 0644));
    if (flock(fd.get(), LOCK_EX | LOCK_NB) == 0) return fd;
    if (errno != EWOULDBLOCK) return ErrnoStatus(errno, lock_path, "flock failed");
    const std::string holder = LockHolder(fd.get(), lock_path);
    if (Runs(holder) || attempt == kTries) {
      return Status::Error(EBUSY, archive_path + ": already mounted for writing by npzfs (pid " +
                                      (holder.empty() ? "?" : holder) +
                                      "); two writable mounts would share one spool of new "
                                      "members (lock " +
                                      lock_path + ")");
    }
    usleep(kPause);
  }
}

// Removes the lock file at `path` if no daemon holds it (it was killed), the way a daemon
// releasing it does: unlinked while held. Returns whether it was removed.
bool RemoveUnheldLock(const std::string& path) {
  UniqueFd fd(open(path.c_str(), O_RDWR | O_NOFOLLOW | O_CLOEXEC));
  if (!fd.valid() || flock(fd.get(), LOCK_EX | LOCK_NB) != 0) return false;
  return StillLinked(fd.get(), path) && unlink(path.c_str()) == 0;
}

// Whether the lock at `path`, held by no daemon, records a mount point where an npzfs mount
// still is (its daemon died: a stale mount).
bool StaleMountAwaitsUmount(const std::string& path) {
  const MountRecord record = ReadMountRecord(path);
  if (record.mount_dir.empty()) return false;
  auto table = ReadMountTable();
  if (!table.ok()) return false;
  const std::optional<MountEntry> entry = FindMount(*table, record.mount_dir);
  return entry && entry->fstype == kNpzfsMountType;
}

}  // namespace

RuntimeFiles ChooseRuntimeFiles(const std::string& archive_path) {
  RuntimeFiles f;
  f.dir = ChooseRuntimeDir(&f.why_none);
  if (f.dir.empty()) return f;
  const std::string stem = RuntimeFileStem(f.dir, archive_path);
  f.result = stem + ".result";
  f.progress = stem + ".progress";
  f.lock = stem + ".lock";
  f.log = stem + ".log";
  return f;
}

Result<MountLock> MountLock::Take(const std::string& path, const std::string& archive_path,
                                  MountRecord record) {
  // A daemon that releases the lock unlinks the file while holding it; a lock taken on a file
  // that is no longer linked is worthless, so take it again on the new file.
  constexpr int kAttempts = 5;
  for (int attempt = 1;; ++attempt) {
    NPZ_ASSIGN_OR_RETURN(UniqueFd fd, LockOnce(path, archive_path));
    if (StillLinked(fd.get(), path) || attempt == kAttempts) {
      MountLock lock;
      lock.fd_ = std::move(fd);
      lock.path_ = path;
      lock.record_ = record;
      NPZ_RETURN_IF_ERROR(lock.RecordPid());
      return lock;
    }
  }
}

Status MountLock::RecordPid() {
  if (!fd_.valid()) return Status::Ok();
  const std::string text = MountLockText(getpid(), record_);
  if (ftruncate(fd_.get(), 0) != 0) return ErrnoStatus(errno, path_, "ftruncate failed");
  return PwriteAll(fd_.get(), text.data(), text.size(), 0, path_);
}

MountLock& MountLock::operator=(MountLock&& other) noexcept {
  if (this != &other) {
    Release();
    fd_ = std::move(other.fd_);
    path_ = std::move(other.path_);
    record_ = std::move(other.record_);
  }
  return *this;
}

MountLock::~MountLock() { Release(); }

void MountLock::Release() {
  if (!fd_.valid()) return;
  unlink(path_.c_str());  // while still holding it (see Take)
  fd_.Reset();
}

void RemoveStaleRuntimeFiles(const std::string& dir) {
  constexpr time_t kStaleSeconds = 7 * 24 * 3600;
  std::vector<std::string> names;
  if (DIR* d = opendir(dir.c_str())) {
    while (struct dirent* e = readdir(d)) names.emplace_back(e->d_name);
    closedir(d);
  }
  const time_t now = time(nullptr);
  auto ours = [](const std::string& path, struct stat* st) {
    return lstat(path.c_str(), st) == 0 && S_ISREG(st->st_mode) && st->st_uid == getuid();
  };
  auto stem_of = [&](const std::string& name) {
    return dir + "/" + name.substr(0, name.rfind('.'));
  };
  for (const std::string& name : names) {
    const std::string path = dir + "/" + name;
    struct stat st {};
    if (!ours(path, &st)) continue;
    if (name.ends_with(".result")) {
      if (now - st.st_mtime > kStaleSeconds) unlink(path.c_str());
    } else if (name.ends_with(".lock")) {
      // A live daemon removes its progress file before its lock: a free lock means both
      // belong to a daemon that was killed. Unless its stale mount is still there: `npz
      // umount` of it prints the recover command the lock records.
      if (StaleMountAwaitsUmount(path)) continue;
      if (RemoveUnheldLock(path)) unlink((stem_of(name) + ".progress").c_str());
    } else if (name.ends_with(".progress")) {
      struct stat lock {};
      if (lstat((stem_of(name) + ".lock").c_str(), &lock) != 0 && errno == ENOENT) {
        unlink(path.c_str());
      }
    }
  }
}

}  // namespace npzfs::fs
