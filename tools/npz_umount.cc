// npz umount: unmount an npzfs mount and wait for the daemon's finalize to finish.
//
// `fusermount3 -u` returns as soon as the kernel has detached the mount, before the daemon
// has written the new members into the archive. So the daemon publishes xattrs on the mount
// root (names in core/base/names.h): its pid, the path of a file it writes atomically after
// finalize (first line "ok" or "error: <message>"; "" for a read-only mount, which has
// nothing to finalize) and the path of a file where it publishes finalize progress. We read
// them while the mount is live, take a pidfd on the daemon (so a recycled pid cannot fool
// us), unmount, show the progress while waiting for the pidfd to become readable (the
// process exited), then read and remove the result. kill(pid, 0) polling is only a fallback
// for kernels without pidfd_open: it cannot tell a zombie from a live process, so it is
// bounded by the result file appearing.
//
// Only npzfs mounts are touched: /proc/self/mountinfo must list the target as "fuse.npzfs".
// Its source there is the archive's absolute path, which is how a dead daemon's mount still
// tells which archive to recover.
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
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/base/mount_table.h"
#include "core/base/names.h"
#include "npzfs/file_util.h"
#include "tools/npz_cli.h"
#include "tools/progress.h"

extern char** environ;

namespace npzfs::tool {
namespace {

constexpr auto kPollInterval = std::chrono::milliseconds(200);

using Clock = std::chrono::steady_clock;

Result<std::string> GetXattr(const std::string& path, std::string_view name) {
  char buf[4096];
  ssize_t n = getxattr(path.c_str(), std::string(name).c_str(), buf, sizeof buf);
  if (n < 0) return ErrnoStatus(errno, path, "getxattr " + std::string(name));
  return std::string(buf, static_cast<size_t>(n));
}

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\0')) s.pop_back();
  return s;
}

std::chrono::milliseconds MillisFromEnv(const char* name, int64_t fallback) {
  const char* env = std::getenv(name);
  if (env != nullptr && *env != '\0') return std::chrono::milliseconds(std::atoll(env));
  return std::chrono::milliseconds(fallback);
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

// Shows the daemon's finalize progress while npz umount waits: a bar on a terminal (see
// progress.h), otherwise one line every few seconds (NPZ_PROGRESS_INTERVAL_MS, default 5 s;
// the first after NPZ_PROGRESS_DELAY_MS, default 1 s).
class FinalizeProgress {
 public:
  FinalizeProgress(std::string archive, std::string progress_path)
      : label_("finalize " + BaseName(archive)),
        path_(std::move(progress_path)),
        start_(Clock::now()),
        delay_(MillisFromEnv("NPZ_PROGRESS_DELAY_MS", 1000)),
        interval_(MillisFromEnv("NPZ_PROGRESS_INTERVAL_MS", 5000)) {
    if (ProgressBar::Enabled()) bar_.emplace(label_, 0);
  }
  // True once progress was read (so a "waiting" note is not needed).
  bool Poll() {
    uint64_t done = 0, total = 0;
    if (!Read(&done, &total)) return seen_;
    seen_ = true;
    if (bar_) {
      bar_->Update(done, total);
    } else if (const auto now = Clock::now();
               now - start_ >= delay_ && (!printed_ || now - last_line_ >= interval_)) {
      printed_ = true;
      last_line_ = now;
      std::fprintf(stderr, "npz: %s: %s of %s (%d%%)\n", label_.c_str(), HumanBytes(done).c_str(),
                   HumanBytes(total).c_str(),
                   total == 0 ? 100
                              : static_cast<int>(100.0 * static_cast<double>(done) /
                                                 static_cast<double>(total)));
    }
    return true;
  }
  void Finish() {
    if (bar_) bar_->Finish();
  }

 private:
  bool Read(uint64_t* done, uint64_t* total) const {
    if (path_.empty()) return false;
    auto fd = OpenFile(path_, O_RDONLY);
    if (!fd.ok()) return false;
    char text[64] = {};
    auto n = PreadFull(fd->get(), text, sizeof text - 1, 0, path_);
    unsigned long long d = 0, t = 0;
    if (!n.ok() || std::sscanf(text, "%llu %llu", &d, &t) != 2) return false;
    *done = d;
    *total = t;
    return true;
  }

  const std::string label_;
  const std::string path_;
  const Clock::time_point start_;
  const Clock::duration delay_, interval_;
  std::optional<ProgressBar> bar_;
  bool seen_ = false, printed_ = false;
  Clock::time_point last_line_{};
};

// Who serves the mount: the daemon's pid (with a pidfd taken now, so that a recycled pid
// cannot fool the wait), and its result and progress files ("" when it has none).
struct Daemon {
  pid_t pid = 0;
  UniqueFd pidfd;
  std::string result_file;
  std::string progress_file;
};

Result<Daemon> LearnDaemon(const std::string& mnt) {
  Daemon d;
  NPZ_ASSIGN_OR_RETURN(std::string pid_text, GetXattr(mnt, kPidAttribute));
  auto value = ParseUint(Trim(pid_text), std::string(kPidAttribute));
  if (!value.ok() || *value == 0 || *value > INT32_MAX) {
    return Status::Error(
        EINVAL, mnt + ": bad " + std::string(kPidAttribute) + " xattr '" + Trim(pid_text) + "'");
  }
  d.pid = static_cast<pid_t>(*value);
  if (auto result = GetXattr(mnt, kResultAttribute); result.ok()) d.result_file = Trim(*result);
  if (auto progress = GetXattr(mnt, kProgressAttribute); progress.ok()) {
    d.progress_file = Trim(*progress);
  }
#ifdef SYS_pidfd_open
  long fd = syscall(SYS_pidfd_open, d.pid, 0);
  if (fd >= 0) d.pidfd.Reset(static_cast<int>(fd));
#endif
  return d;
}

// Waits until the daemon has exited, showing its progress. Uses the pidfd taken before the
// unmount; otherwise polls kill(pid, 0) until the result file exists. Returns false if
// `timeout_s` (0: none) passed first.
bool WaitForExit(const Daemon& d, FinalizeProgress& progress, uint64_t timeout_s) {
  bool told = false;
  const auto start = Clock::now();
  auto keep_waiting = [&] {
    if (timeout_s != 0 && Clock::now() - start > std::chrono::seconds(timeout_s)) return false;
    if (!progress.Poll() && !told && isatty(STDERR_FILENO) == 1 &&
        Clock::now() - start > std::chrono::seconds(1)) {
      std::fprintf(stderr, "npz: waiting for npzfs (pid %d) to finalize the archive...\n",
                   static_cast<int>(d.pid));
      told = true;
    }
    return true;
  };
  if (d.pidfd.valid()) {
    while (true) {
      struct pollfd p = {d.pidfd.get(), POLLIN, 0};
      int r = poll(&p, 1, static_cast<int>(kPollInterval.count()));
      if (r > 0) return true;
      if (r < 0 && errno != EINTR) break;  // fall back to polling below
      if (!keep_waiting()) return false;
    }
  }
  struct stat st;
  while (kill(d.pid, 0) == 0 && (d.result_file.empty() || stat(d.result_file.c_str(), &st) != 0)) {
    if (!keep_waiting()) return false;
    std::this_thread::sleep_for(kPollInterval);
  }
  return true;
}

// fusermount3 -u, with the causes a user can act on spelled out.
Status Unmount(const std::string& mnt) {
  auto run = RunProgram({"fusermount3", "-u", mnt});
  if (!run.ok()) {
    if (run.status().code() == ENOENT) {
      return Status::Error(
          ENOENT, "fusermount3: not found: install the fuse3 package (tools/install-deps.sh)");
    }
    return run.status();
  }
  if (run->exit_code == 0) return Status::Ok();
  std::string why = Trim(run->output);
  std::string hint;
  if (why.find("busy") != std::string::npos) {
    hint = " (the mount is busy: close the files open in it and leave the directory; 'fuser -vm " +
           mnt + "' shows who holds it)";
  }
  return Status::Error(EBUSY, mnt + ": fusermount3 -u failed: " + why + hint);
}

// The outcome the daemon wrote to its result file once it finished: ok or its reason. The
// file is removed once read.
Status ReadResult(const std::string& mnt, const Daemon& d, const std::string& archive) {
  if (d.result_file.empty()) return Status::Ok();  // a read-only mount finalizes nothing
  auto fd = OpenFile(d.result_file, O_RDONLY);
  if (!fd.ok()) {
    return Status::Error(EIO, mnt + ": the npzfs daemon (pid " + std::to_string(d.pid) +
                                  ") exited without writing its result " + d.result_file +
                                  "; if it died, run 'npz recover " + archive + "'");
  }
  std::string text(64 * 1024, '\0');
  NPZ_ASSIGN_OR_RETURN(size_t n, PreadFull(fd->get(), text.data(), text.size(), 0, d.result_file));
  text.resize(n);
  unlink(d.result_file.c_str());
  const std::string first_line = text.substr(0, text.find('\n'));
  if (first_line == "ok") return Status::Ok();
  std::string reason = first_line;
  if (reason.rfind("error: ", 0) == 0) reason = reason.substr(7);
  if (reason.empty()) reason = "(empty result file " + d.result_file + ")";
  return Status::Error(EIO, mnt + ": finalize failed: " + reason);
}

// The npzfs mount on `mnt`. Anything else (not a mount point, another filesystem) is
// refused and left alone.
Result<MountEntry> FindNpzfsMount(const std::string& mnt) {
  NPZ_ASSIGN_OR_RETURN(std::vector<MountEntry> table, ReadMountTable());
  std::optional<MountEntry> entry = FindMount(table, CanonicalMountPath(mnt));
  if (!entry) {
    struct stat st;
    if (stat(mnt.c_str(), &st) != 0) return ErrnoStatus(errno, mnt, "stat");
    return Status::Error(EINVAL, mnt + ": not a mount point");
  }
  if (entry->fstype != kNpzfsMountType) {
    return Status::Error(EINVAL, mnt + ": a " + entry->fstype + " mount (" + entry->source +
                                     "), not an npzfs mount: npz umount leaves it alone "
                                     "(unmount it with umount or fusermount3 -u)");
  }
  return *entry;
}

// A dead daemon left its mount behind (ENOTCONN): clear it, and say how to finalize what it
// received.
Status ClearDeadMount(const std::string& mnt, const std::string& archive) {
  (void)RunProgram({"fusermount3", "-u", "-z", mnt});
  return Status::Error(ENOTCONN,
                       mnt +
                           ": the npzfs daemon had died (Transport endpoint is not connected); "
                           "the stale mount was removed, and nothing was finalized. The new "
                           "members it received are in its spool: run 'npz recover " +
                           archive +
                           "' (with --spool DIR if it was mounted with -o spool=DIR, and "
                           "--compress[=LEVEL] if with -o compress: the chunks already deflated "
                           "are used), or mount the archive again with the same options");
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
  auto entry = FindNpzfsMount(mnt);
  if (!entry.ok()) return ReportError(entry.status());
  const std::string archive = entry->source;  // the archive's absolute path
  struct stat st;
  if (stat(mnt.c_str(), &st) != 0) {
    if (errno == ENOTCONN) return ReportError(ClearDeadMount(mnt, archive));
    return ReportError(ErrnoStatus(errno, mnt, "stat"));
  }
  // Learn who to wait for while the mount is still live.
  auto daemon = LearnDaemon(mnt);
  if (!daemon.ok()) {
    // Killed between the stat and now (or not reaped yet: a zombie still holds the mount
    // for a moment, so the stat above may succeed).
    if (daemon.status().code() == ENOTCONN) return ReportError(ClearDeadMount(mnt, archive));
    return ReportError(daemon.status());
  }
  Status unmounted = Unmount(mnt);
  if (!unmounted.ok()) return ReportError(unmounted);
  FinalizeProgress progress(archive, daemon->progress_file);
  if (!WaitForExit(*daemon, progress, timeout_s)) {
    return ReportError(Status::Error(
        ETIMEDOUT, mnt + ": unmounted, but npzfs (pid " + std::to_string(daemon->pid) +
                       ") is still finalizing after " + std::to_string(timeout_s) +
                       " s; the archive is complete once that process exits"));
  }
  progress.Finish();
  Status result = ReadResult(mnt, *daemon, archive);
  return result.ok() ? kExitOk : ReportError(result);
}

}  // namespace npzfs::tool
