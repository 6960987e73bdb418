// npzfs: mounts a NumPy .npz archive as a directory of .npy files.
//
// main() parses the options, prepares the mount while stderr is still the terminal
// (mount_setup.h), mounts, daemonizes and runs the multi-threaded session loop; after the
// unmount it finalizes the new members into the archive (FinishMount).
#include <fuse_lowlevel.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>

#include "fs/log.h"
#include "fs/mount_setup.h"
#include "fs/npzfs_ops.h"
#include "fs/options.h"

namespace npzfs::fs {
namespace {

// Once the session has ended, a SIGTERM (a system shutdown), SIGINT or SIGHUP must not cut
// the finalize short: the archive would have to be restored from its journal and the new
// members would wait in the spool for the next mount. Such a signal is noted and the
// finalize goes on (SIGKILL still stops it; recovery then undoes the partial append).
std::atomic<int> g_finalize_signal{0};

extern "C" void NoteFinalizeSignal(int sig) { g_finalize_signal.store(sig); }

// Installed the moment libfuse's own handlers go (the session has ended), so that no signal
// falls between them and the finalize; SA_RESTART, so that none makes a system call of the
// finalize fail with EINTR.
void NoteSignalsFromNowOn() {
  struct sigaction sa {};
  sa.sa_handler = NoteFinalizeSignal;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  for (int s : {SIGTERM, SIGINT, SIGHUP}) sigaction(s, &sa, nullptr);
}

int FinishMountDespiteSignals(Mount& m) {
  const int rc = FinishMount(m);
  if (const int sig = g_finalize_signal.load(); sig != 0) {
    const char* name = sigabbrev_np(sig);
    LogWarning(std::string("SIG") + (name != nullptr ? name : "?") +
               " arrived during finalize; the finalize was completed first");
  }
  FlushLogRepeats();  // the counts of lines repeated during finalize
  return rc;
}

// Frees fuse_args at scope exit.
struct FuseArgsOwner {
  fuse_args* args;
  ~FuseArgsOwner() { fuse_opt_free_args(args); }
};
struct FreeDeleter {
  void operator()(char* p) const { free(p); }  // NOLINT: libfuse mallocs it
};
struct SessionDeleter {
  void operator()(fuse_session* se) const { fuse_session_destroy(se); }
};
struct LoopConfigDeleter {
  void operator()(fuse_loop_config* c) const { fuse_loop_cfg_destroy(c); }
};

void PrintError(const std::string& message) {
  std::fprintf(stderr, "npzfs: %s\n", message.c_str());
}

int PrintHelpOrVersion(const Options& options, const char* program) {
  if (options.show_help) {
    std::printf("%s", UsageText(program).c_str());
    std::printf("FUSE options:\n");
    std::fflush(stdout);
    fuse_cmdline_help();
    fuse_lowlevel_help();
  } else {
    std::printf("npzfs %s (libfuse %s, inflate %s)\n", NPZFS_VERSION, fuse_pkgversion(),
                InflateEngineName());
  }
  if (std::fflush(stdout) != 0 || std::ferror(stdout) != 0) {
    PrintError(std::string("stdout: write failed: ") + std::strerror(errno));
    return 1;
  }
  return 0;
}

LogLevel LevelOf(Verbosity v) {
  switch (v) {
    case Verbosity::kQuiet:
      return LogLevel::kWarning;
    case Verbosity::kVerbose:
      return LogLevel::kDebug;
    case Verbosity::kNormal:
      break;
  }
  return LogLevel::kInfo;
}

// Session arguments: 1 MiB reads (must match conn->max_read set in Init), kernel-side
// permission checks on the modes we report, and the archive's absolute path as the source
// mount(8) and /proc/self/mountinfo show (`npz umount` reads it back; commas escaped).
void AddSessionArguments(fuse_args* args, const Mount& m, const MountPoint& mp) {
  fuse_opt_add_arg(args, "-omax_read=1048576");
  fuse_opt_add_arg(args, "-odefault_permissions");
  fuse_opt_add_arg(args, "-osubtype=npzfs");
  char* fsname = nullptr;
  if (fuse_opt_add_opt_escaped(&fsname, ("fsname=" + m.archive_path).c_str()) == 0) {
    fuse_opt_add_arg(args, (std::string("-o") + fsname).c_str());
  }
  free(fsname);  // NOLINT: libfuse mallocs it
  fuse_opt_add_arg(args, mp.path.c_str());
}

int RunLoop(fuse_session* se, const fuse_cmdline_opts& cmd) {
  if (cmd.singlethread) return fuse_session_loop(se);
  std::unique_ptr<fuse_loop_config, LoopConfigDeleter> config(fuse_loop_cfg_create());
  fuse_loop_cfg_set_clone_fd(config.get(), cmd.clone_fd);
  // UINT_MAX means "not given": keep libfuse's defaults (it logs an error otherwise).
  if (cmd.max_idle_threads != UINT_MAX) {
    fuse_loop_cfg_set_idle_threads(config.get(), cmd.max_idle_threads);
  }
  if (cmd.max_threads != UINT_MAX) fuse_loop_cfg_set_max_threads(config.get(), cmd.max_threads);
  return fuse_session_loop_mt(se, config.get());
}

// Mounts, daemonizes and serves until unmounted. Returns the exit code of a failure before
// the mount, or nullopt once the session has ended (finalize comes next).
std::optional<int> Serve(Mount& m, fuse_args* args, const MountPoint& mp) {
  fuse_cmdline_opts cmd{};
  if (fuse_parse_cmdline(args, &cmd) != 0) return 2;
  std::unique_ptr<char, FreeDeleter> cmd_mountpoint(cmd.mountpoint);
  m.single_threaded = cmd.singlethread != 0;
  const fuse_lowlevel_ops& ops = NpzfsOperations();
  std::unique_ptr<fuse_session, SessionDeleter> se(fuse_session_new(args, &ops, sizeof(ops), &m));
  if (se == nullptr) {
    // libfuse fails here on an option it does not know or cannot parse (it has said which,
    // above); its other causes (no memory) do not happen in practice. A usage error, then.
    PrintError("cannot start a FUSE session for " + m.options.archive +
               ": an option is not one npzfs or FUSE knows, or has a bad value (see npzfs "
               "--help)");
    return 2;
  }
  if (fuse_set_signal_handlers(se.get()) != 0) return 1;
  if (fuse_session_mount(se.get(), cmd.mountpoint) != 0) {
    PrintError("cannot mount " + m.options.archive + " on " + mp.path);
    fuse_remove_signal_handlers(se.get());
    return 1;
  }
  const bool use_syslog = cmd.foreground ? false : ChooseDaemonLog(m);
  LogInfo("mounted " + m.archive_path + " on " + m.mount_dir +
          (m.archive == nullptr ? " (new archive)" : "") + (m.options.read_only ? " (ro)" : ""));
  fuse_daemonize(cmd.foreground);
  if (!cmd.foreground) LogDaemonized(use_syslog);
  // Threads only from here on: a fork keeps none but the calling thread. The lock shows
  // the daemon's pid, not that of the process that started it.
  m.spool.AllowThreads();
  if (Status s = m.lock.RecordPid(); !s.ok()) LogWarning(s.message());
  const int loop_result = RunLoop(se.get(), cmd);
  fuse_session_unmount(se.get());
  fuse_remove_signal_handlers(se.get());
  NoteSignalsFromNowOn();
  se.reset();  // runs Destroy (saves the index) if the kernel did not already
  FlushLogRepeats();
  if (loop_result < 0) LogError("session loop failed: " + std::string(std::strerror(-loop_result)));
  return std::nullopt;
}

int Run(int argc, char** argv) {
  fuse_args args = FUSE_ARGS_INIT(argc, argv);
  FuseArgsOwner args_owner{&args};
  auto parsed = ParseOptions(&args);
  if (!parsed.ok()) {
    PrintError(parsed.status().message());
    return 2;
  }
  Mount m;
  m.options = std::move(parsed).value();
  if (m.options.show_help || m.options.show_version) return PrintHelpOrVersion(m.options, argv[0]);
  SetLogLevel(LevelOf(m.options.verbosity));
  MountPoint mp;
  Status prepared = PrepareMount(m, mp);
  if (!prepared.ok()) {
    PrintError(prepared.message());
    return 1;
  }
  AddSessionArguments(&args, m, mp);
  if (std::optional<int> failed = Serve(m, &args, mp)) return *failed;
  return FinishMountDespiteSignals(m);
}

}  // namespace
}  // namespace npzfs::fs

int main(int argc, char** argv) { return npzfs::fs::Run(argc, argv); }
