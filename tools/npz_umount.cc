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
//
// npz umount must not hang on a daemon that does not answer (stopped with SIGSTOP or in a
// debugger, or hung): every stat, lstat, realpath or getxattr of its mount root waits for it.
// So the mount is identified without asking it (ResolveMountPoint, then mountinfo), and the
// xattrs, which only it can give, are asked for by a child process that is given up on after
// a time-out (AskDaemon).
#include <limits.h>
#include <poll.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <fcntl.h>

#include <algorithm>
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
#include "core/base/runtime_dir.h"
#include "core/base/text_codec.h"
#include "core/write/spool.h"
#include "core/zip/append_journal.h"
#include "npzfs/file_util.h"
#include "tools/npz_cli.h"
#include "tools/progress.h"

extern char** environ;

namespace npzfs::tool {
namespace {

constexpr auto kPollInterval = std::chrono::milliseconds(200);
// How long the daemon may take to answer the questions about itself (its pid, result and
// progress files) before npz umount gives up on it, unless --timeout is shorter. A live
// daemon answers at once; this bounds the wait for one that is stopped or hung. The finalize
// after the unmount, which may take long, is waited for without limit (or up to --timeout).
constexpr auto kAnswerTimeout = std::chrono::seconds(10);

using Clock = std::chrono::steady_clock;

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

Result<std::string> RealPath(const std::string& path, const std::string& given) {
  char* full = realpath(path.c_str(), nullptr);
  if (full == nullptr) {
    return ErrnoStatus(errno, given, path == given ? "cannot resolve" : "cannot resolve " + path);
  }
  std::string result(full);
  free(full);
  return result;
}

// The absolute path that `path` names, symlinks resolved, found without asking the
// filesystem mounted there: a stat, lstat or realpath of a mount root is answered by its
// daemon (never, if it is stopped; ENOTCONN if it died). Only the parent directory, which is
// outside the mount, goes through realpath(3); the last component is read with readlink(2),
// which looks only at the entry in the parent's filesystem (EINVAL: not a symlink, done) and,
// for a symlink, the same steps go on from its target, relative to that parent. A path
// ending in "." or ".." names no entry in a parent and goes through realpath whole.
Result<std::string> ResolveMountPoint(const std::string& given) {
  std::string path = given;
  for (int links = 0;; ++links) {
    while (path.size() > 1 && path.back() == '/') path.pop_back();
    const std::string base = BaseName(path);
    if (path == "/" || base == "." || base == "..") return RealPath(path, given);
    NPZ_ASSIGN_OR_RETURN(std::string parent, RealPath(DirName(path), given));
    if (parent == "/") parent.clear();
    path = parent + "/" + base;
    if (links > 40) return ErrnoStatus(ELOOP, given, "cannot resolve");
    std::string target(PATH_MAX, '\0');
    const ssize_t n = readlink(path.c_str(), target.data(), target.size());
    if (n < 0 && errno == EINVAL) return path;  // not a symlink
    if (n < 0) {
      return ErrnoStatus(errno, given, links == 0 ? "cannot resolve" : "a symlink to " + path);
    }
    target.resize(static_cast<size_t>(n));
    path = target.front() == '/' ? target : parent + "/" + target;
  }
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
    std::string waiting;
    if (!Read(&done, &total, &waiting)) return seen_;
    seen_ = true;
    if (!waiting.empty() && waiting != said_waiting_) {  // the daemon waits for a lock
      said_waiting_ = waiting;
      PrintMessage(waiting);
    }
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
  bool Read(uint64_t* done, uint64_t* total, std::string* waiting) const {
    if (path_.empty()) return false;
    auto fd = OpenFile(path_, O_RDONLY);
    if (!fd.ok()) return false;
    std::string text(4096, '\0');
    auto n = PreadFull(fd->get(), text.data(), text.size() - 1, 0, path_);
    unsigned long long d = 0, t = 0;
    if (!n.ok() || std::sscanf(text.c_str(), "%llu %llu", &d, &t) != 2) return false;
    *done = d;
    *total = t;
    text.resize(*n);
    constexpr std::string_view kWaiting = "\nwaiting: ";
    if (const size_t at = text.find(kWaiting); at != std::string::npos) {
      *waiting = text.substr(at + kWaiting.size());
      *waiting = waiting->substr(0, waiting->find('\n'));
    }
    return true;
  }

  const std::string label_;
  const std::string path_;
  const Clock::time_point start_;
  const Clock::duration delay_, interval_;
  std::optional<ProgressBar> bar_;
  bool seen_ = false, printed_ = false;
  std::string said_waiting_;
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

// One xattr of the mount root as the child of AskDaemon got it: a fixed-size record.
struct XattrAnswer {
  int error = 0;  // errno of getxattr, 0 if it succeeded
  uint32_t size = 0;
  char value[4096];
};

// Asks the daemon for the xattrs of its mount root (pid, result file, progress file) and
// waits for its answers until `deadline`. A daemon that is stopped (SIGSTOP, a debugger) or
// hung never answers, and a getxattr waits for it forever: so a child process asks, sending
// each answer down a pipe as soon as it has it, and on time-out the child is killed and not
// waited for. Why a child and not a thread: a request that the daemon has already read (it
// hangs, rather than was stopped before reading it) makes the asker's wait uninterruptible
// even by SIGKILL; a thread in that state would keep npz itself from exiting, while an
// orphaned child just lingers until the daemon answers or dies (then init reaps it).
// Errors: ETIMEDOUT with the advice for the user, ENOTCONN if the daemon died, else the
// failed getxattr.
Result<Daemon> AskDaemon(const std::string& mnt, Clock::time_point deadline, uint64_t waited_s) {
  const std::string names[] = {std::string(kPidAttribute), std::string(kResultAttribute),
                               std::string(kProgressAttribute)};
  constexpr size_t kCount = std::size(names);
  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) != 0) return ErrnoStatus(errno, mnt, "pipe");
  UniqueFd read_end(pipe_fds[0]);
  UniqueFd write_end(pipe_fds[1]);
  const pid_t child = fork();
  if (child < 0) return ErrnoStatus(errno, mnt, "fork");
  if (child == 0) {  // only async-signal-safe calls from here on
    // A child left waiting for a hung daemon must not hold npz's stdin, stdout and stderr:
    // whoever reads them (a pipe, a test harness) would wait for it too.
    const int null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null_fd >= 0) {
      for (int fd = 0; fd <= 2; ++fd) (void)dup2(null_fd, fd);
    }
    for (const std::string& name : names) {
      XattrAnswer a = {};
      const ssize_t n = getxattr(mnt.c_str(), name.c_str(), a.value, sizeof a.value);
      a.error = n < 0 ? errno : 0;
      a.size = n < 0 ? 0 : static_cast<uint32_t>(n);
      const char* p = reinterpret_cast<const char*>(&a);
      for (size_t left = sizeof a; left > 0;) {
        const ssize_t w = write(write_end.get(), p, left);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) _exit(1);
        p += w;
        left -= static_cast<size_t>(w);
      }
    }
    _exit(0);
  }
  write_end.Reset();
  std::string got;  // the records received so far
  char buf[sizeof(XattrAnswer)];
  bool child_done = false;  // the pipe reached its end: the child exited (or died)
  while (!child_done) {
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) break;
    struct pollfd p = {read_end.get(), POLLIN, 0};
    const int r = poll(&p, 1, static_cast<int>(std::min<int64_t>(left, 1000)));
    if (r < 0 && errno != EINTR) {
      const int err = errno;
      (void)kill(child, SIGKILL);
      return ErrnoStatus(err, mnt, "poll");
    }
    if (r <= 0) continue;
    const ssize_t n = read(read_end.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n > 0) got.append(buf, static_cast<size_t>(n));
    child_done = n <= 0;
  }
  std::vector<XattrAnswer> answers(got.size() / sizeof(XattrAnswer));
  if (!answers.empty()) {
    std::memcpy(answers.data(), got.data(), answers.size() * sizeof(XattrAnswer));
  }
  auto text = [&](size_t i) {
    return Trim(
        std::string(answers[i].value, std::min<size_t>(answers[i].size, sizeof answers[i].value)));
  };
  std::optional<pid_t> pid;
  if (!answers.empty() && answers[0].error == 0) {
    if (auto value = ParseUint(text(0), names[0]);
        value.ok() && *value > 0 && *value <= INT32_MAX) {
      pid = static_cast<pid_t>(*value);
    }
  }
  if (!child_done) {
    // Still waiting for the daemon. SIGKILL ends a wait for a request the daemon has not
    // read yet (a stopped daemon); for one it has, the child lingers as said above.
    (void)kill(child, SIGKILL);
    const std::string who =
        pid ? "npzfs daemon (pid " + std::to_string(*pid) + ")" : "npzfs daemon";
    const std::string cont = pid ? "'kill -CONT " + std::to_string(*pid) + "'"
                                 : "'kill -CONT' it ('pgrep -a npzfs' lists the daemons)";
    return Status::Error(ETIMEDOUT, mnt + ": the " + who + " does not answer (waited " +
                                        std::to_string(waited_s) + " s): if it was stopped, " +
                                        cont +
                                        "; else check it (its log), or detach the mount "
                                        "with 'fusermount3 -uz " +
                                        mnt + "' (the daemon finalizes once it runs again)");
  }
  while (waitpid(child, nullptr, 0) < 0 && errno == EINTR) {
  }
  if (answers.size() < kCount) {
    return Status::Error(EIO, mnt + ": could not ask the npzfs daemon for its " +
                                  names[answers.size()] + " xattr (the asking process failed)");
  }
  if (answers[0].error != 0) return ErrnoStatus(answers[0].error, mnt, "getxattr " + names[0]);
  if (!pid) return Status::Error(EINVAL, mnt + ": bad " + names[0] + " xattr '" + text(0) + "'");
  Daemon d;
  d.pid = *pid;
  if (answers[1].error == 0) d.result_file = text(1);
  if (answers[2].error == 0) d.progress_file = text(2);
#ifdef SYS_pidfd_open
  long fd = syscall(SYS_pidfd_open, d.pid, 0);
  if (fd >= 0) d.pidfd.Reset(static_cast<int>(fd));
#endif
  return d;
}

// Waits until the daemon has exited, showing its progress. Uses the pidfd taken before the
// unmount; otherwise polls kill(pid, 0) until the result file exists. Returns false if
// `deadline` (none: wait for ever) passed first.
bool WaitForExit(const Daemon& d, FinalizeProgress& progress,
                 std::optional<Clock::time_point> deadline) {
  bool told = false;
  const auto start = Clock::now();
  auto keep_waiting = [&] {
    if (deadline && Clock::now() > *deadline) return false;
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

// The user who made `entry`, if it is another than this process's (FUSE's user_id option).
std::optional<uint32_t> OtherOwner(const MountEntry& entry) {
  const std::optional<uint32_t> owner = entry.fuse_owner();
  if (!owner || *owner == getuid()) return std::nullopt;
  return owner;
}

// Only a mount's owner (or root) may unmount it: EPERM naming the owner for anyone else.
Status RefuseAnotherUsersMount(const std::string& mnt, const MountEntry& entry) {
  const std::optional<uint32_t> owner = OtherOwner(entry);
  if (!owner || getuid() == 0) return Status::Ok();
  return Status::Error(EPERM, mnt + ": mounted by " + DescribeUid(*owner) +
                                  ": only that user (or root) may unmount it; run 'npz "
                                  "umount " +
                                  mnt + "' as that user");
}

// `asked` (the daemon's refusal to answer, EACCES) explained for another user's mount: its
// daemon answers no one else, root included, unless mounted with -o allow_other. `asked`
// itself otherwise.
Status ExplainUnansweredAsk(const std::string& mnt, const MountEntry& entry, const Status& asked) {
  const std::optional<uint32_t> owner = OtherOwner(entry);
  if (!owner || (asked.code() != EACCES && asked.code() != EPERM)) return asked;
  return Status::Error(asked.code(),
                       mnt + ": mounted by " + DescribeUid(*owner) +
                           ", whose npzfs daemon answers no other user (it was mounted without "
                           "-o allow_other): run 'npz umount " +
                           mnt + "' as that user; as root, 'umount " + mnt +
                           "' unmounts it and the daemon finalizes, but nothing can report "
                           "the result here");
}

// What a dead daemon of `archive` recorded in its lock file (same user, same runtime
// directory, and no daemon mounted since: that one would hold the lock); empty if nothing.
// Read it while the dead daemon's stale mount is still there: once it is gone, any npzfs
// daemon starting (of any archive) removes the unheld lock file as a killed daemon's.
MountRecord DeadDaemonRecord(const std::string& archive) {
  const std::string runtime = ChooseRuntimeDir();
  return runtime.empty() ? MountRecord{}
                         : ReadMountRecord(RuntimeFileStem(runtime, archive) + ".lock");
}

// "" when a dead daemon of `archive` left nothing to recover: its spool (known from its
// record) holds no member and no append of the archive was interrupted. Else what to run:
// the command it recorded, with its own options, or `npz recover ARCHIVE` and which option
// to add (the spool records the compression level itself). `recorded`: DeadDaemonRecord.
std::string RecoverAdvice(const std::string& archive, const MountRecord& recorded) {
  struct stat st;
  if (!recorded.spool_dir.empty() && !SpoolHoldsMembers(recorded.spool_dir) &&
      ::lstat(AppendJournalPath(archive).c_str(), &st) != 0 && errno == ENOENT) {
    return {};
  }
  if (!recorded.recover_command.empty()) {
    const std::string& command = recorded.recover_command;
    const bool compress = command.find(" --compress=") != std::string::npos;
    return "run `" + command + "`" + (compress ? " (the chunks already deflated are used)" : "");
  }
  return "run `npz recover " + ShellWord(archive) +
         "` (with --spool DIR if it was mounted with -o spool=DIR)";
}

// The outcome the daemon wrote to its result file once it finished: ok or its reason. The
// file is removed once read.
Status ReadResult(const std::string& mnt, const Daemon& d, const std::string& archive) {
  if (d.result_file.empty()) return Status::Ok();  // a read-only mount finalizes nothing
  auto fd = OpenFile(d.result_file, O_RDONLY);
  if (!fd.ok()) {
    const std::string advice = RecoverAdvice(archive, DeadDaemonRecord(archive));
    return Status::Error(
        EIO, mnt + ": the npzfs daemon (pid " + std::to_string(d.pid) +
                 ") exited without writing its result " + d.result_file +
                 (advice.empty() ? "; its spool holds no new member and no append of " + archive +
                                       " was interrupted: nothing to recover"
                                 : "; if it died, " + advice));
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

// Refuses an npzfs filesystem that is mounted at more than one place: bind mounts (`mount
// --bind MNT B`, also of a subdirectory of MNT) share the filesystem of the original, and so
// its device (major:minor, one per FUSE connection) in mountinfo. Its daemon finalizes and
// exits only once the last of these mounts is gone: unmounting one of several would leave npz
// umount waiting for an exit that does not come, and unmounting a bind is not what the user
// asked for. Which mount is the daemon's own: the first of them listed with root "/", as
// mountinfo lists mounts in the order they were made (the mount namespace's list, appended
// to; since Linux 6.8 ordered by the 64-bit unique mount id), a bind mount can only be made
// of an existing mount, and `mount --move` keeps a mount's place; the mount ids of the first
// field are reused and tell no order. If the daemon's own mount was detached (umount -l) and
// a single bind mount of its root is left, that one is the last: unmounting it ends the
// daemon just the same, so it is unmounted as the original would be. A single bind mount of
// a subdirectory left is refused: the daemon publishes its pid on its root only. Copies of
// the mount that mount propagation made (under a peer or slave of its parent: a bind mount
// of a directory above it on a shared "/") are not refused: the unmount removes them too.
Status RefuseBindMounts(const MountEntry& entry, const std::vector<MountEntry>& table) {
  std::vector<const MountEntry*> same;  // every mount of this filesystem, entry included
  const MountEntry* own = nullptr;      // the daemon's own mount, if still mounted
  for (const MountEntry& e : table) {
    if (e.fstype != entry.fstype || e.device != entry.device) continue;
    // Copies that mount propagation made of it go with it (no bind the user made).
    if (IsPropagatedCopy(e, entry, table)) continue;
    same.push_back(&e);
    if (own == nullptr && e.root == "/") own = &e;
  }
  const std::string& mnt = entry.mount_point;
  if (same.size() == 1 && entry.root == "/") return Status::Ok();
  if (same.size() == 1) {
    return Status::Error(EINVAL, mnt + " is a bind mount of the directory " + entry.root +
                                     " of the npzfs mount of " + entry.source +
                                     ", which is not mounted anywhere else: 'umount " + mnt +
                                     "' removes it, and its daemon then finalizes (npz umount "
                                     "cannot wait for that: the daemon is known from its root)");
  }
  if (own != nullptr && own->mount_point != mnt) {
    return Status::Error(EINVAL, mnt + " is a bind mount of the npzfs mount at " +
                                     own->mount_point + ": unmount that one (or 'umount " + mnt +
                                     "' to remove only the bind)");
  }
  std::string others;
  for (const MountEntry* e : same) {
    if (e->mount_point == mnt) continue;
    others += (others.empty() ? "" : " ") + e->mount_point;
  }
  return Status::Error(EBUSY, mnt + ": this npzfs mount is also mounted at " + others +
                                  " (bind mounts); remove them first ('umount " + others +
                                  "'), or its daemon goes on serving them and never finalizes");
}

// `given` made absolute and "." and ".." taken out by name alone: nothing is asked of any
// filesystem, not even the one it may lie in.
std::string LexicalAbsolute(const std::string& given) {
  std::string path = given;
  if (path.empty() || path[0] != '/') {
    char cwd[PATH_MAX];
    if (getcwd(cwd, sizeof cwd) != nullptr) path = std::string(cwd) + "/" + path;
  }
  std::vector<std::string> parts;
  size_t start = 0;
  while (start <= path.size()) {
    const size_t slash = std::min(path.find('/', start), path.size());
    const std::string part = path.substr(start, slash - start);
    if (part == "..") {
      if (!parts.empty()) parts.pop_back();
    } else if (!part.empty() && part != ".") {
      parts.push_back(part);
    }
    start = slash + 1;
  }
  std::string out;
  for (const std::string& part : parts) out += "/" + part;
  return out.empty() ? "/" : out;
}

// A path below an npzfs mount point is refused before anything resolves it: resolving it
// goes through the mount root, which waits for the daemon (for ever, if it is stopped).
Status RefuseInsideNpzfsMount(const std::string& given) {
  const std::string path = LexicalAbsolute(given);
  NPZ_ASSIGN_OR_RETURN(std::vector<MountEntry> table, ReadMountTable());
  for (const MountEntry& e : table) {
    if (e.mount_point == path) return Status::Ok();  // a mount point (nested ones too)
  }
  for (const MountEntry& e : table) {
    if (e.fstype != kNpzfsMountType) continue;
    // Below it (the mount points themselves were let through above).
    if (PathBelow(path, e.mount_point).has_value()) {
      return Status::Error(EINVAL, given +
                                       ": not a mount point, but a path inside the npzfs "
                                       "mount at " +
                                       e.mount_point + " (npz umount " + e.mount_point +
                                       " unmounts that)");
    }
  }
  return Status::Ok();
}

// The npzfs mount on `mnt` (resolved by ResolveMountPoint; `given` is what the user typed).
// Anything else (not a mount point, another filesystem, a filesystem mounted at several
// places: RefuseBindMounts) is refused and left alone.
Result<MountEntry> FindNpzfsMount(const std::string& given, const std::string& mnt) {
  NPZ_ASSIGN_OR_RETURN(std::vector<MountEntry> table, ReadMountTable());
  std::optional<MountEntry> entry = FindMount(table, mnt);
  const std::string name = given == mnt ? mnt : given + " (" + mnt + ")";
  if (!entry) return Status::Error(EINVAL, name + ": not a mount point");
  if (entry->fstype != kNpzfsMountType) {
    return Status::Error(EINVAL, name + ": a " + entry->fstype + " mount (" + entry->source +
                                     "), not an npzfs mount: npz umount leaves it alone "
                                     "(unmount it with umount or fusermount3 -u)");
  }
  NPZ_RETURN_IF_ERROR(RefuseBindMounts(*entry, table));
  return *entry;
}

// A dead daemon left its mount behind (ENOTCONN): clear it, and say how to finalize what it
// received (nothing, if the mount was read-only).
Status ClearDeadMount(const std::string& mnt, const MountEntry& entry) {
  const std::string& archive = entry.source;
  const MountRecord recorded = entry.read_only() ? MountRecord{} : DeadDaemonRecord(archive);
  (void)RunProgram({"fusermount3", "-u", "-z", mnt});
  if (entry.read_only()) {
    // A spool beside the archive that nobody holds is an earlier writable mount's that died.
    const std::string beside = DefaultSpoolDir(archive);
    const bool waiting = SpoolAwaitsRecovery(beside);
    return Status::Error(
        ENOTCONN, mnt +
                      ": the npzfs daemon had died (Transport endpoint is not connected); the "
                      "stale mount was removed. It was a read-only mount of " +
                      archive + ": nothing was lost" +
                      (waiting ? ". But the spool " + beside +
                                     " beside it holds new members of an earlier writable "
                                     "mount that died: run `" +
                                     NpzRecoverCommand(archive, beside, Spool::kRecordedLevel) +
                                     "` to add them to the archive"
                               : std::string()));
  }
  const std::string died =
      mnt +
      ": the npzfs daemon had died (Transport endpoint is not connected); the stale mount "
      "was removed";
  const std::string advice = RecoverAdvice(archive, recorded);
  if (advice.empty()) {
    return Status::Error(ENOTCONN, died +
                                       ". It had received no new member (its spool holds "
                                       "none): nothing to recover");
  }
  return Status::Error(ENOTCONN, died +
                                     ", and nothing was finalized. New members it received, if "
                                     "any, are in its spool: " +
                                     advice + ", or mount the archive again with the same options");
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
  // --timeout bounds the whole command: the daemon's answers (at most kAnswerTimeout
  // without it) and the wait for its finalize.
  const auto start = Clock::now();
  std::optional<Clock::time_point> deadline;
  if (timeout_s != 0) deadline = start + std::chrono::seconds(timeout_s);
  const auto answer_timeout = timeout_s != 0 ? std::min<std::chrono::seconds>(
                                                   std::chrono::seconds(timeout_s), kAnswerTimeout)
                                             : kAnswerTimeout;
  if (Status inside = RefuseInsideNpzfsMount(parsed->positional[0]); !inside.ok()) {
    return ReportError(inside);
  }
  // From here on `mnt` is the mount point itself: absolute, symlinks resolved.
  auto resolved = ResolveMountPoint(parsed->positional[0]);
  if (!resolved.ok()) return ReportError(resolved.status());
  const std::string mnt = *resolved;
  auto entry = FindNpzfsMount(parsed->positional[0], mnt);
  if (!entry.ok()) return ReportError(entry.status());
  const std::string archive = entry->source;  // the archive's absolute path
  if (Status owner = RefuseAnotherUsersMount(mnt, *entry); !owner.ok()) {
    return ReportError(owner);
  }
  // Learn who to wait for while the mount is still live.
  auto daemon =
      AskDaemon(mnt, start + answer_timeout, static_cast<uint64_t>(answer_timeout.count()));
  if (!daemon.ok()) {
    // ENOTCONN: the daemon died (or is exiting: a zombie holds the mount for a moment).
    if (daemon.status().code() == ENOTCONN) return ReportError(ClearDeadMount(mnt, *entry));
    return ReportError(ExplainUnansweredAsk(mnt, *entry, daemon.status()));
  }
  Status unmounted = Unmount(mnt);
  if (!unmounted.ok()) return ReportError(unmounted);
  FinalizeProgress progress(archive, daemon->progress_file);
  if (!WaitForExit(*daemon, progress, deadline)) {
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
