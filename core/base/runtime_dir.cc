#include "core/base/runtime_dir.h"

#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "core/base/names.h"
#include "npzfs/file_util.h"

namespace npzfs {
namespace {

constexpr mode_t kPrivateDirMode = 0700;
constexpr mode_t kSharedDirMode = 0755;
constexpr mode_t kIndexDirMode = 0755;

// FNV-1a, 64 bits: a stable name for an absolute path (no security depends on it).
uint64_t PathHash(const std::string& path) {
  uint64_t h = 14695981039346656037ull;
  for (unsigned char c : path) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

// `dir` exists (or, if `create`, is made with `mode`), is a directory we can write, and is
// not a link. With `private_to_us`, it must also be ours with no access for anyone else.
bool UsableDir(const std::string& dir, mode_t mode, bool private_to_us, bool create) {
  if (create && mkdir(dir.c_str(), mode) != 0 && errno != EEXIST) return false;
  struct stat st {};
  if (lstat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) return false;
  if (private_to_us && (st.st_uid != getuid() || (st.st_mode & 077) != 0)) return false;
  return access(dir.c_str(), W_OK | X_OK) == 0;
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

std::string ChooseRuntimeDir(bool create) {
  if (std::string xdg = Env("XDG_RUNTIME_DIR"); !xdg.empty()) {
    if (UsableDir(xdg + "/npzfs", kPrivateDirMode, true, create)) return xdg + "/npzfs";
  }
  if (getuid() == 0 && UsableDir("/run/npzfs", kSharedDirMode, false, create)) {
    return "/run/npzfs";
  }
  std::string tmp = Env("TMPDIR");
  if (tmp.empty()) tmp = "/tmp";
  const std::string mine = tmp + "/npzfs-" + std::to_string(getuid());
  if (UsableDir(mine, kPrivateDirMode, true, create)) return mine;
  return {};
}

std::string RuntimeFileStem(const std::string& runtime_dir, const std::string& archive_path) {
  char hash[17];
  std::snprintf(hash, sizeof hash, "%016llx",
                static_cast<unsigned long long>(PathHash(archive_path)));
  return runtime_dir + "/" + BaseName(archive_path) + "-" + hash;
}

std::string RuntimeIndexDir(const std::string& archive_path, bool create,
                            const std::function<void(const std::string&)>& log) {
  const std::string runtime = ChooseRuntimeDir(create);
  if (runtime.empty()) return {};
  const std::string dir = RuntimeFileStem(runtime, archive_path) + ".index";
  if (create && mkdir(dir.c_str(), kIndexDirMode) != 0 && errno != EEXIST && log) {
    log(ErrnoStatus(errno, dir, "cannot create the index directory").message());
  }
  return dir;
}

std::string DefaultIndexDir(const std::string& archive_path, bool create,
                            const std::function<void(const std::string&)>& log) {
  if (access(DirName(archive_path).c_str(), W_OK) == 0) return {};
  return RuntimeIndexDir(archive_path, create, log);
}

}  // namespace npzfs
