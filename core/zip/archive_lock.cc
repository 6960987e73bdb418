#include "core/zip/archive_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/sysmacros.h>

#include <cerrno>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "core/base/text_codec.h"

namespace npzfs {

// From /proc/locks lines like "3: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF" ("->"
// marks a waiter).
std::string FlockHolder(int fd) {
  struct stat st;
  if (::fstat(fd, &st) != 0) return {};
  char id[64];
  std::snprintf(id, sizeof id, "%02x:%02x:%llu", major(st.st_dev), minor(st.st_dev),
                static_cast<unsigned long long>(st.st_ino));
  std::ifstream locks("/proc/locks");
  std::string line;
  while (std::getline(locks, line)) {
    std::istringstream fields(line);
    std::string number, kind, advisory, mode, pid, file;
    if (!(fields >> number >> kind) || kind != "FLOCK") continue;  // also skips "->"
    if (!(fields >> advisory >> mode >> pid >> file) || file != id) continue;
    std::ifstream comm("/proc/" + pid + "/comm");
    std::string name;
    std::getline(comm, name);
    return "pid " + pid + (name.empty() ? "" : ", " + PrintableName(name));
  }
  return {};
}

namespace {

Status Flock(int fd, const std::string& path, const LockWaitFn& waiting) {
  if (::flock(fd, LOCK_EX | LOCK_NB) == 0) return Status::Ok();
  if (errno != EWOULDBLOCK && errno != EINTR) return ErrnoStatus(errno, path, "cannot lock");
  if (errno == EWOULDBLOCK && waiting) {
    const std::string holder = FlockHolder(fd);
    waiting(path + ": waiting for another writer to finish with it" +
            (holder.empty() ? "" : " (" + holder + ")"));
  }
  while (::flock(fd, LOCK_EX) != 0) {
    if (errno != EINTR) return ErrnoStatus(errno, path, "cannot lock");
  }
  return Status::Ok();
}

}  // namespace

Result<ArchiveLock> ArchiveLock::Acquire(const std::string& path, int open_flags,
                                         const LockWaitFn& waiting) {
  while (true) {
    NPZ_ASSIGN_OR_RETURN(UniqueFd fd, OpenRegularFile(path, open_flags));
    NPZ_RETURN_IF_ERROR(Flock(fd.get(), path, waiting));
    struct stat locked, now;
    if (::fstat(fd.get(), &locked) != 0) return ErrnoStatus(errno, path, "cannot stat");
    if (::stat(path.c_str(), &now) != 0) {
      if (errno == ENOENT) return ErrnoStatus(ENOENT, path, "removed while waiting for its lock");
      return ErrnoStatus(errno, path, "cannot stat");
    }
    // A copy-mode writer may have renamed a new archive over the path while we waited.
    if (now.st_dev == locked.st_dev && now.st_ino == locked.st_ino) {
      return ArchiveLock(std::move(fd), locked);
    }
  }
}

Result<DirectoryLock> DirectoryLock::Acquire(const std::string& dir, const LockWaitFn& waiting) {
  NPZ_ASSIGN_OR_RETURN(UniqueFd fd, OpenFile(dir, O_RDONLY | O_DIRECTORY));
  NPZ_RETURN_IF_ERROR(Flock(fd.get(), dir, waiting));
  return DirectoryLock(std::move(fd));
}

}  // namespace npzfs
