#include "core/base/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <random>

namespace npzfs {
namespace {

thread_local std::optional<AtomicStep> g_failing_step;
thread_local bool g_lack_noreplace_and_links = false;

Status InjectedFailure(AtomicStep step, const std::string& path) {
  if (g_failing_step != step) return Status::Ok();
  return ErrnoStatus(EIO, path, "injected failure (test)");
}

// The replacement of `old` takes its owner, group and mode where the caller may give them:
// root keeps all three; anyone else keeps the group if they belong to it (a dataset shared
// by a group stays the group's when one of its members replaces it) but not the owner,
// since only root can give a file away. Returns the mode to set: `old`'s, less the set-user-
// ID bit when the owner changed and the set-group-ID bit when the group did.
mode_t KeepOwnerAndGroup(int fd, const struct stat& old) {
  mode_t mode = old.st_mode & 07777;
  if (::fchown(fd, old.st_uid, old.st_gid) == 0) return mode;
  if (old.st_uid != ::geteuid()) mode &= ~static_cast<mode_t>(S_ISUID);
  if (::fchown(fd, static_cast<uid_t>(-1), old.st_gid) != 0) mode &= ~static_cast<mode_t>(S_ISGID);
  return mode;
}

}  // namespace

std::string TempFilePrefix(const std::string& target) {
  return "." + BaseName(target) + ".npzfs-tmp-";
}

void AtomicFile::FailStepForTesting(std::optional<AtomicStep> step) { g_failing_step = step; }
void AtomicFile::LackNoReplaceAndLinksForTesting(bool lack) { g_lack_noreplace_and_links = lack; }

Result<AtomicFile> AtomicFile::Create(const std::string& target, const AtomicFileOptions& options) {
  NPZ_RETURN_IF_ERROR(InjectedFailure(AtomicStep::kCreate, target));
  static constexpr char kAlphabet[] =
      "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  std::random_device rd;
  std::mt19937_64 rng((static_cast<uint64_t>(rd()) << 32) ^ rd() ^ static_cast<uint64_t>(getpid()));
  const std::string dir = DirName(target);
  const std::string prefix = dir + "/" + TempFilePrefix(target);
  for (int attempt = 0; attempt < 100; ++attempt) {
    std::string temp = prefix;
    for (int i = 0; i < 6; ++i) temp.push_back(kAlphabet[rng() % (sizeof kAlphabet - 1)]);
    const int raw = ::open(temp.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (raw < 0) {
      if (errno == EEXIST || errno == EINTR) continue;
      return ErrnoStatus(errno, target, "cannot create a temp file in directory " + dir);
    }
    AtomicFile file(target, std::move(temp), UniqueFd(raw));
    file.durable_ = options.durable;
    file.replace_existing_ = options.replace_existing;
    // The final mode: explicit, the existing target's, or what creat() would have given.
    mode_t mode = 0666 & ~CurrentUmask();
    struct stat st;
    const bool exists = ::stat(target.c_str(), &st) == 0;
    if (options.mode) {
      mode = *options.mode;
    } else if (exists && options.keep_existing_mode) {
      mode = KeepOwnerAndGroup(file.fd(), st);
    }
    if (::fchmod(file.fd(), mode) != 0) return ErrnoStatus(errno, file.temp_path_, "fchmod");
    return file;
  }
  return Status::Error(EEXIST, target + ": cannot find a free temp file name in " + dir);
}

AtomicFile::AtomicFile(AtomicFile&& other) noexcept
    : target_(std::move(other.target_)),
      temp_path_(std::move(other.temp_path_)),
      fd_(std::move(other.fd_)),
      committed_(other.committed_),
      durable_(other.durable_),
      replace_existing_(other.replace_existing_) {
  other.committed_ = true;  // the moved-from object owns no temp file any more
}

AtomicFile::~AtomicFile() {
  if (!committed_ && !temp_path_.empty()) ::unlink(temp_path_.c_str());
}

Status AtomicFile::Write(const void* data, size_t n) {
  NPZ_RETURN_IF_ERROR(InjectedFailure(AtomicStep::kWrite, target_));
  return WriteAll(fd_.get(), data, n, target_);
}

Status AtomicFile::RenameOver() {
  if (::rename(temp_path_.c_str(), target_.c_str()) != 0) {
    return ErrnoStatus(errno, target_, "cannot rename " + temp_path_ + " over it");
  }
  return Status::Ok();
}

Status AtomicFile::RenameNoReplace() {
  auto exists = [&] {
    return Status::Error(EEXIST, target_ +
                                     ": exists (it was created while this file was "
                                     "being written)");
  };
  const bool lack = g_lack_noreplace_and_links;
  if (lack) {
    errno = EINVAL;
  } else if (::renameat2(AT_FDCWD, temp_path_.c_str(), AT_FDCWD, target_.c_str(),
                         RENAME_NOREPLACE) == 0) {
    return Status::Ok();
  }
  if (errno == EEXIST) return exists();
  if (errno != EINVAL && errno != ENOSYS) {
    return ErrnoStatus(errno, target_, "cannot rename " + temp_path_ + " to it");
  }
  // A filesystem without RENAME_NOREPLACE: link(2) fails with EEXIST just as atomically.
  if (lack) {
    errno = EPERM;
  } else if (::link(temp_path_.c_str(), target_.c_str()) == 0) {
    ::unlink(temp_path_.c_str());
    return Status::Ok();
  }
  if (errno == EEXIST) return exists();
  if (errno != EPERM && errno != ENOTSUP && errno != ENOSYS && errno != EMLINK) {
    return ErrnoStatus(errno, target_, "cannot link " + temp_path_ + " to it");
  }
  // Without hard links either: look, then rename. Another program that creates the target
  // between the two is replaced; nothing narrower exists on such a filesystem.
  struct stat st;
  if (::lstat(target_.c_str(), &st) == 0) return exists();
  return RenameOver();
}

Status AtomicFile::Commit(const std::function<Status()>& before_rename) {
  if (durable_) {
    NPZ_RETURN_IF_ERROR(InjectedFailure(AtomicStep::kSync, target_));
    NPZ_RETURN_IF_ERROR(FsyncFd(fd_.get(), target_));
  }
  if (before_rename) NPZ_RETURN_IF_ERROR(before_rename());
  NPZ_RETURN_IF_ERROR(InjectedFailure(AtomicStep::kRename, target_));
  NPZ_RETURN_IF_ERROR(replace_existing_ ? RenameOver() : RenameNoReplace());
  committed_ = true;
  fd_.Reset();
  if (!durable_) return Status::Ok();
  Status synced = InjectedFailure(AtomicStep::kSyncDir, target_);
  if (synced.ok()) synced = FsyncParentDir(target_);
  if (!synced.ok()) {
    return synced.WithContext(target_ + ": written, but its directory could not be synced");
  }
  return Status::Ok();
}

Status WriteFileAtomically(const std::string& target, std::string_view bytes,
                           const AtomicFileOptions& options) {
  NPZ_ASSIGN_OR_RETURN(AtomicFile file, AtomicFile::Create(target, options));
  NPZ_RETURN_IF_ERROR(file.Write(bytes));
  return file.Commit();
}

}  // namespace npzfs
