#include "core/zip/archive_lock.h"

#include <fcntl.h>
#include <sys/file.h>

#include <cerrno>

namespace npzfs {
namespace {

Status Flock(int fd, const std::string& path) {
  while (::flock(fd, LOCK_EX) != 0) {
    if (errno != EINTR) return ErrnoStatus(errno, path, "cannot lock");
  }
  return Status::Ok();
}

}  // namespace

Result<ArchiveLock> ArchiveLock::Acquire(const std::string& path, int open_flags) {
  while (true) {
    NPZ_ASSIGN_OR_RETURN(UniqueFd fd, OpenRegularFile(path, open_flags));
    NPZ_RETURN_IF_ERROR(Flock(fd.get(), path));
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

Result<DirectoryLock> DirectoryLock::Acquire(const std::string& dir) {
  NPZ_ASSIGN_OR_RETURN(UniqueFd fd, OpenFile(dir, O_RDONLY | O_DIRECTORY));
  NPZ_RETURN_IF_ERROR(Flock(fd.get(), dir));
  return DirectoryLock(std::move(fd));
}

}  // namespace npzfs
