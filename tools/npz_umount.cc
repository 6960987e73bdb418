// npz umount: unmount an npzfs mount and wait for the daemon's finalize to finish.
//
// `fusermount3 -u` returns as soon as the kernel has detached the mount, before the daemon
// has written the new members into the archive. So the daemon publishes two
// xattrs on the mount root: "user.npzfs.pid" (its pid) and "user.npzfs.result" (the path of
// a file it writes atomically after finalize: first line "ok" or "error: <message>"). We read
// both while the mount is live, take a pidfd on the daemon (so a recycled pid cannot fool
// us), unmount, wait for the pidfd to become readable (the process exited), then read the
// result. kill(pid, 0) polling is only a fallback for kernels without pidfd_open: it cannot
// tell a zombie from a live process, so it is bounded by the result file appearing.
#include <poll.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <fcntl.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "npzfs/file_util.h"
#include "tools/npz_cli.h"

extern char** environ;

namespace npzfs::tool {
namespace {

Result<std::string> GetXattr(const std::string& path, const char* name) {
  char buf[4096];
  ssize_t n = getxattr(path.c_str(), name, buf, sizeof buf);
  if (n < 0) return ErrnoStatus(errno, path, std::string("getxattr ") + name);
  return std::string(buf, static_cast<size_t>(n));
}

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\0')) s.pop_back();
  return s;
}

struct ChildResult {
  int exit_code = 0;
  std::string output;  // stdout and stderr together
};

// Runs argv (searched in PATH) and collects its output. ENOENT if the program is missing.
Result<ChildResult> RunProgram(const std::vector<std::string>& argv) {
  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) != 0) return ErrnoStatus(errno, argv[0], "pipe");
  UniqueFd read_end(pipe_fds[0]);
  UniqueFd write_end(pipe_fds[1]);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, write_end.get(), STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, write_end.get(), STDERR_FILENO);
  std::vector<char*> cargv;
  for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  pid_t pid = 0;
  int err = posix_spawnp(&pid, argv[0].c_str(), &actions, nullptr, cargv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  write_end.Reset();
  if (err != 0) return ErrnoStatus(err, argv[0], "cannot run");

  ChildResult result;
  char buf[4096];
  while (true) {
    ssize_t n = read(read_end.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    result.output.append(buf, static_cast<size_t>(n));
  }
  int wstatus = 0;
  while (waitpid(pid, &wstatus, 0) < 0 && errno == EINTR) {
  }
  result.exit_code = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 128 + WTERMSIG(wstatus);
  return result;
}

// Waits until process `pid` has exited. Uses a pidfd taken before the unmount (`pidfd`,
// may be invalid); otherwise polls kill(pid, 0) until the result file exists. Returns false
// if `timeout_s` (0: none) passed first.
bool WaitForExit(pid_t pid, const UniqueFd& pidfd, const std::string& result_path,
                 uint64_t timeout_s) {
  bool told = false;
  const auto start = std::chrono::steady_clock::now();
  auto timed_out = [&] {
    return timeout_s != 0 &&
           std::chrono::steady_clock::now() - start > std::chrono::seconds(timeout_s);
  };
  auto maybe_tell = [&] {
    if (!told && isatty(STDERR_FILENO) == 1 &&
        std::chrono::steady_clock::now() - start > std::chrono::seconds(1)) {
      std::fprintf(stderr, "npz: waiting for npzfs (pid %d) to finalize the archive...\n",
                   static_cast<int>(pid));
      told = true;
    }
  };
  if (pidfd.valid()) {
    while (true) {
      struct pollfd p = {pidfd.get(), POLLIN, 0};
      int r = poll(&p, 1, 200);
      if (r > 0) return true;
      if (r < 0 && errno != EINTR) break;  // fall back to polling below
      if (timed_out()) return false;
      maybe_tell();
    }
  }
  struct stat st;
  while (kill(pid, 0) == 0 && stat(result_path.c_str(), &st) != 0) {
    if (timed_out()) return false;
    maybe_tell();
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return true;
}

// The absolute path of `path` with symlinks resolved, without touching `path` itself (a
// dead FUSE mount fails every stat with ENOTCONN): only its parent is resolved.
std::string CanonicalMountPath(const std::string& path) {
  if (char* full = realpath(path.c_str(), nullptr)) {
    std::string result(full);
    free(full);
    return result;
  }
  std::string parent = DirName(path);
  if (char* full = realpath(parent.c_str(), nullptr)) {
    std::string result(full);
    free(full);
    return (result == "/" ? "" : result) + "/" + BaseName(path);
  }
  return path;
}

// Whether `canonical` is a mount point, from /proc/self/mounts (octal escapes decoded).
bool IsMountPoint(const std::string& canonical) {
  FILE* f = std::fopen("/proc/self/mounts", "re");
  if (f == nullptr) return true;  // cannot tell: let fusermount3 decide
  std::unique_ptr<FILE, int (*)(FILE*)> closer(f, std::fclose);
  char line[8192];
  while (std::fgets(line, sizeof line, f) != nullptr) {
    const char* p = std::strchr(line, ' ');
    if (p == nullptr) continue;
    std::string target;
    for (++p; *p != '\0' && *p != ' '; ++p) {
      if (*p == '\\' && p[1] >= '0' && p[1] <= '7' && p[2] && p[3]) {
        target += static_cast<char>((p[1] - '0') * 64 + (p[2] - '0') * 8 + (p[3] - '0'));
        p += 3;
      } else {
        target += *p;
      }
    }
    if (target == canonical) return true;
  }
  return false;
}

}  // namespace

int RunUmount(const std::vector<std::string>& raw_args) {
  auto parsed = ParseArgs(raw_args, {{"timeout", OptionSpec::Kind::kValue, 0}});
  if (!parsed.ok()) return UsageError("umount", parsed.status().message());
  if (parsed->help) return PrintCommandHelp("umount");
  if (parsed->positional.size() != 1) return UsageError("umount", "expected one MOUNTPOINT");
  uint64_t timeout_s = 0;
  if (auto t = parsed->Last("timeout")) {
    auto value = ParseUint(*t, "--timeout");
    if (!value.ok()) return UsageError("umount", value.status().message());
    timeout_s = *value;
  }
  const std::string mnt = parsed->positional[0];

  struct stat st;
  const bool stat_ok = stat(mnt.c_str(), &st) == 0;
  const int stat_errno = errno;
  if (!IsMountPoint(CanonicalMountPath(mnt))) {
    if (!stat_ok) return ReportError(ErrnoStatus(stat_errno, mnt, "stat"));
    return ReportError(Status::Error(EINVAL, mnt + ": not a mount point"));
  }
  if (!stat_ok) {
    const int err = stat_errno;
    if (err == ENOTCONN) {
      // A dead daemon left its mount behind: clear it, and say finalize did not run.
      RunProgram({"fusermount3", "-u", "-z", mnt}).status().ok();
      return ReportError(Status::Error(
          ENOTCONN, mnt + ": the npzfs daemon had died (Transport endpoint is not connected); "
                          "the stale mount was removed. Its new members are still in the "
                          "spool: run 'npz recover ARCHIVE' or mount the archive again"));
    }
    return ReportError(ErrnoStatus(err, mnt, "stat"));
  }

  // Learn who to wait for while the mount is still live.
  auto pid_text = GetXattr(mnt, "user.npzfs.pid");
  auto result_path = GetXattr(mnt, "user.npzfs.result");
  pid_t pid = 0;
  UniqueFd pidfd;
  if (pid_text.ok() && result_path.ok()) {
    auto value = ParseUint(Trim(*pid_text), "user.npzfs.pid");
    if (!value.ok() || *value == 0 || *value > INT32_MAX) {
      return ReportError(
          Status::Error(EINVAL, mnt + ": bad user.npzfs.pid xattr '" + Trim(*pid_text) + "'"));
    }
    pid = static_cast<pid_t>(*value);
#ifdef SYS_pidfd_open
    long fd = syscall(SYS_pidfd_open, pid, 0);
    if (fd >= 0) pidfd.Reset(static_cast<int>(fd));
#endif
  }

  auto run = RunProgram({"fusermount3", "-u", mnt});
  if (!run.ok()) {
    if (run.status().code() == ENOENT) {
      return ReportError(Status::Error(
          ENOENT, "fusermount3: not found: install the fuse3 package (tools/install-deps.sh)"));
    }
    return ReportError(run.status());
  }
  if (run->exit_code != 0) {
    std::string why = Trim(run->output);
    std::string hint;
    if (why.find("busy") != std::string::npos) {
      hint =
          " (the mount is busy: close the files open in it and leave the directory; "
          "'fuser -vm " +
          mnt + "' shows who holds it)";
    }
    return ReportError(Status::Error(EBUSY, mnt + ": fusermount3 -u failed: " + why + hint));
  }

  if (pid == 0) {
    // Not an npzfs mount (or one too old to publish its pid): nothing to wait for.
    std::fprintf(stderr,
                 "npz: %s: unmounted, but it did not say which npzfs daemon served it "
                 "(no user.npzfs.pid xattr), so finalize was not awaited\n",
                 mnt.c_str());
    return kExitOk;
  }

  const std::string result_file = Trim(*result_path);
  if (!WaitForExit(pid, pidfd, result_file, timeout_s)) {
    return ReportError(
        Status::Error(ETIMEDOUT, mnt + ": unmounted, but npzfs (pid " + std::to_string(pid) +
                                     ") is still finalizing after " + std::to_string(timeout_s) +
                                     " s; the archive is complete once that process exits"));
  }

  auto fd = OpenFile(result_file, O_RDONLY);
  if (!fd.ok()) {
    return ReportError(Status::Error(EIO, mnt + ": the npzfs daemon (pid " + std::to_string(pid) +
                                              ") exited without writing its result " + result_file +
                                              "; if it died, run 'npz recover ARCHIVE'"));
  }
  std::string text(64 * 1024, '\0');
  auto n = PreadFull(fd->get(), text.data(), text.size(), 0, result_file);
  if (!n.ok()) return ReportError(n.status());
  text.resize(*n);
  const std::string first_line = text.substr(0, text.find('\n'));
  if (first_line == "ok") return kExitOk;
  std::string reason = first_line;
  if (reason.rfind("error: ", 0) == 0) reason = reason.substr(7);
  if (reason.empty()) reason = "(empty result file " + result_file + ")";
  return ReportError(Status::Error(EIO, mnt + ": finalize failed: " + reason));
}

}  // namespace npzfs::tool
