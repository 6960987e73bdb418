#include "core/base/runtime_dir.h"

#include <fcntl.h>
#include <limits.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/base/names.h"
#include "npzfs/file_util.h"

namespace npzfs {
namespace {

constexpr mode_t kPrivateDirMode = 0700;
constexpr mode_t kSharedDirMode = 0755;
constexpr mode_t kIndexDirMode = 0755;

// "" if `dir` exists (or is made with `mode`), is a directory we can write, and is not a
// link; else why not, naming `dir`. With `private_to_us`, it must also be ours with no access
// for anyone else (another user's directory there could read or replace our files).
std::string WhyNotUsable(const std::string& dir, mode_t mode, bool private_to_us) {
  if (mkdir(dir.c_str(), mode) != 0 && errno != EEXIST) {
    return dir + ": cannot create: " + std::strerror(errno);
  }
  struct stat st {};
  if (lstat(dir.c_str(), &st) != 0) return dir + ": " + std::strerror(errno);
  if (!S_ISDIR(st.st_mode)) return dir + ": not a directory";
  if (private_to_us && st.st_uid != getuid()) {
    return dir + ": belongs to " + DescribeUid(st.st_uid) + ", not to us";
  }
  if (private_to_us && (st.st_mode & 077) != 0) {
    char octal[8];
    std::snprintf(octal, sizeof octal, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return dir + ": others have access to it (mode " + octal + "; it must be 0700)";
  }
  if (access(dir.c_str(), W_OK | X_OK) != 0) return dir + ": " + std::strerror(errno);
  return {};
}

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? std::string() : std::string(v);
}

}  // namespace

Result<std::string> AbsoluteArchivePath(const std::string& archive) {
  std::string dir = DirName(archive);
  char resolved[PATH_MAX];
  if (realpath(dir.c_str(), resolved) == nullptr) {
    int err = errno;
    return Status::Error(err, archive + ": directory '" + dir + "': " + std::strerror(err));
  }
  std::string abs = resolved;
  if (abs != "/") abs += "/";
  return abs + BaseName(archive);
}

std::string ChooseRuntimeDir(std::string* why_none) {
  std::vector<std::string> refused;
  auto usable = [&](const std::string& dir, mode_t mode, bool private_to_us) {
    std::string why = WhyNotUsable(dir, mode, private_to_us);
    if (why.empty()) return true;
    refused.push_back(std::move(why));
    return false;
  };
  if (std::string xdg = Env("XDG_RUNTIME_DIR"); xdg.empty()) {
    refused.emplace_back("$XDG_RUNTIME_DIR is not set");
  } else if (usable(xdg + "/npzfs", kPrivateDirMode, true)) {
    return xdg + "/npzfs";
  }
  if (getuid() == 0 && usable("/run/npzfs", kSharedDirMode, false)) return "/run/npzfs";
  std::string tmp = Env("TMPDIR");
  if (tmp.empty()) tmp = "/tmp";
  const std::string mine = tmp + "/npzfs-" + std::to_string(getuid());
  if (usable(mine, kPrivateDirMode, true)) return mine;
  if (why_none != nullptr) {
    *why_none = "no runtime directory: ";
    for (size_t i = 0; i < refused.size(); ++i) *why_none += (i > 0 ? "; " : "") + refused[i];
  }
  return {};
}

std::string RuntimeFileStem(const std::string& runtime_dir, const std::string& archive_path) {
  return runtime_dir + "/" + BaseName(archive_path) + "-" + NameHash(archive_path);
}

std::string MountLockText(long pid, const MountRecord& record) {
  // A newline in a path would split the line: then it is not recorded.
  const auto line = [](const std::string& s) {
    return (s.find('\n') == std::string::npos ? s : std::string()) + "\n";
  };
  return std::to_string(pid) + "\n" + line(record.recover_command) + line(record.spool_dir) +
         line(record.mount_dir);
}

MountRecord ReadMountRecord(const std::string& lock_path) {
  UniqueFd fd(::open(lock_path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
  // Held: a live daemon of the archive wrote it (one mounted since), not the dead one.
  if (!fd.valid() || ::flock(fd.get(), LOCK_SH | LOCK_NB) != 0) return {};
  char buf[3 * PATH_MAX];
  const ssize_t n = ::pread(fd.get(), buf, sizeof buf, 0);
  if (n <= 0) return {};
  std::vector<std::string> lines;
  const std::string text(buf, static_cast<size_t>(n));
  for (size_t at = 0, eol; (eol = text.find('\n', at)) != std::string::npos; at = eol + 1) {
    lines.push_back(text.substr(at, eol - at));
  }
  MountRecord r;
  if (lines.size() >= 2 && lines[1].rfind("npz recover ", 0) == 0) r.recover_command = lines[1];
  if (lines.size() >= 3 && lines[2].starts_with('/')) r.spool_dir = lines[2];
  if (lines.size() >= 4 && lines[3].starts_with('/')) r.mount_dir = lines[3];
  return r;
}

std::string RuntimeIndexDir(bool create, const std::function<void(const std::string&)>& log) {
  std::string why_none;
  const std::string runtime = ChooseRuntimeDir(&why_none);
  if (runtime.empty()) {
    if (create && log) log(why_none + " (set XDG_RUNTIME_DIR or TMPDIR to a directory of yours)");
    return {};
  }
  const std::string dir = runtime + "/index";
  if (create && mkdir(dir.c_str(), kIndexDirMode) != 0 && errno != EEXIST && log) {
    log(ErrnoStatus(errno, dir, "cannot create the index directory").message());
  }
  return dir;
}

IndexPlace DefaultIndexPlace(const std::string& archive_path,
                             const std::function<void(const std::string&)>& log) {
  IndexPlace place;
  if (access(DirName(archive_path).c_str(), W_OK) == 0) {
    const std::string runtime = RuntimeIndexDir(/*create=*/false, log);
    if (!runtime.empty()) place.fallback = runtime;
    return place;
  }
  place.dir = RuntimeIndexDir(/*create=*/true, log);
  if (!place.dir.empty()) place.fallback = "";
  return place;
}

}  // namespace npzfs
