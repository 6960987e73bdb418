#include "npzfs/file_util.h"

#include <dirent.h>
#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

namespace npzfs {

Status ErrnoStatus(int err, const std::string& path, const std::string& what) {
  return Status::Error(err, path + ": " + what + ": " + std::strerror(err));
}

void UniqueFd::Reset(int fd) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

std::string DescribeUid(uint32_t uid) {
  std::string who = "uid " + std::to_string(uid);
  struct passwd pw;
  struct passwd* found = nullptr;
  char buf[4096];
  if (::getpwuid_r(uid, &pw, buf, sizeof buf, &found) == 0 && found != nullptr) {
    who += " (" + std::string(found->pw_name) + ")";
  }
  return who;
}

Result<UniqueFd> OpenFile(const std::string& path, int flags, mode_t mode) {
  int fd;
  do {
    fd = ::open(path.c_str(), flags | O_CLOEXEC, mode);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return ErrnoStatus(errno, path, "cannot open");
  return UniqueFd(fd);
}

Result<size_t> CountEntries(const std::string& dir, size_t limit) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return ErrnoStatus(errno, dir, "cannot list the directory");
  size_t n = 0;
  int err = 0;
  while (n < limit) {
    errno = 0;
    const struct dirent* e = ::readdir(d);
    if (e == nullptr) {
      err = errno;  // 0 at the end; else the listing failed: no count to trust
      break;
    }
    if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) ++n;
  }
  ::closedir(d);
  if (err != 0) return ErrnoStatus(err, dir, "cannot list the directory");
  return n;
}

const char* FileKind(mode_t mode) {
  if (S_ISREG(mode)) return "a regular file";
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISLNK(mode)) return "a symbolic link";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  return "not a regular file";
}

Result<UniqueFd> OpenRegularFile(const std::string& path, int flags, mode_t mode) {
  NPZ_ASSIGN_OR_RETURN(UniqueFd fd, OpenFile(path, flags | O_NONBLOCK, mode));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return ErrnoStatus(errno, path, "cannot stat");
  if (S_ISDIR(st.st_mode)) return Status::Error(EISDIR, path + ": is a directory");
  if (!S_ISREG(st.st_mode)) {
    return Status::Error(EINVAL, path + ": not a regular file (" + FileKind(st.st_mode) + ")");
  }
  if ((flags & O_NONBLOCK) == 0) NPZ_RETURN_IF_ERROR(ClearNonBlocking(fd.get(), path));
  return fd;
}

Status ClearNonBlocking(int fd, const std::string& path) {
  const int fl = ::fcntl(fd, F_GETFL);
  if (fl < 0 || ::fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0) {
    return ErrnoStatus(errno, path, "fcntl failed");
  }
  return Status::Ok();
}

Result<size_t> PreadFull(int fd, void* buf, size_t n, uint64_t offset, const std::string& path) {
  auto* p = static_cast<char*>(buf);
  size_t done = 0;
  while (done < n) {
    ssize_t r = ::pread(fd, p + done, n - done, static_cast<off_t>(offset + done));
    if (r < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, path, "read failed");
    }
    if (r == 0) break;
    done += static_cast<size_t>(r);
  }
  return done;
}

Status UnexpectedEndOfFile(const std::string& path, uint64_t at, uint64_t wanted, uint64_t from) {
  return Status::Error(EIO,
                       path + ": unexpected end of file at offset " + std::to_string(at) +
                           " (wanted " + std::to_string(wanted) + " bytes from offset " +
                           std::to_string(from) + ")",
                       Status::Cause::kUnexpectedEndOfFile);
}

Status PreadExact(int fd, void* buf, size_t n, uint64_t offset, const std::string& path) {
  NPZ_ASSIGN_OR_RETURN(size_t got, PreadFull(fd, buf, n, offset, path));
  if (got != n) return UnexpectedEndOfFile(path, offset + got, n, offset);
  return Status::Ok();
}

Status PwriteAll(int fd, const void* buf, size_t n, uint64_t offset, const std::string& path) {
  const auto* p = static_cast<const char*>(buf);
  size_t done = 0;
  while (done < n) {
    ssize_t r = ::pwrite(fd, p + done, n - done, static_cast<off_t>(offset + done));
    if (r < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, path, "write failed");
    }
    done += static_cast<size_t>(r);
  }
  return Status::Ok();
}

Status WriteAll(int fd, const void* buf, size_t n, const std::string& path) {
  const auto* p = static_cast<const char*>(buf);
  size_t done = 0;
  while (done < n) {
    ssize_t r = ::write(fd, p + done, n - done);
    if (r < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, path, "write failed");
    }
    done += static_cast<size_t>(r);
  }
  return Status::Ok();
}

Status FsyncFd(int fd, const std::string& path) {
  if (::fsync(fd) != 0) return ErrnoStatus(errno, path, "fsync failed");
  return Status::Ok();
}

Status FsyncDir(const std::string& dir) {
  NPZ_ASSIGN_OR_RETURN(UniqueFd fd, OpenFile(dir, O_RDONLY | O_DIRECTORY));
  return FsyncFd(fd.get(), dir);
}

Status FsyncParentDir(const std::string& path) { return FsyncDir(DirName(path)); }

mode_t CurrentUmask() {
  const mode_t mask = ::umask(0);
  ::umask(mask);
  return mask;
}

Result<uint64_t> FileSize(int fd, const std::string& path) {
  struct stat st;
  if (::fstat(fd, &st) != 0) return ErrnoStatus(errno, path, "stat failed");
  return static_cast<uint64_t>(st.st_size);
}

std::string DirName(const std::string& path) {
  auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string BaseName(const std::string& path) {
  auto slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::optional<std::string> PathBelow(const std::string& path, const std::string& dir) {
  if (dir == "/") {
    if (!path.starts_with("/")) return std::nullopt;
    return path == "/" ? std::string() : path;
  }
  if (!path.starts_with(dir)) return std::nullopt;
  if (path.size() == dir.size()) return std::string();
  if (path[dir.size()] != '/') return std::nullopt;
  return path.substr(dir.size());
}

}  // namespace npzfs
