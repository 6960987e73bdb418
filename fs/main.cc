// npzfs: mounts a NumPy .npz archive as a directory of .npy files.
//
// Start-up order matters: everything that can fail for a reason the user must see (bad
// options, a missing directory, an archive that is not a zip, a spool held by another
// daemon) is checked BEFORE daemonizing, while stderr is still the terminal. Then the
// session loop runs (multi-threaded), and after unmount the new members are finalized into
// the archive and the outcome is written to the result file that `npz umount` reads
// (protocol: getxattr on the mount root, "user.npzfs.pid" and "user.npzfs.result").
#include <fuse_lowlevel.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <memory>
#include <string>

#include "core/base/atomic_file.h"
#include "fs/log.h"
#include "fs/npzfs_ops.h"
#include "fs/options.h"
#include "npzfs/file_util.h"

namespace npzfs::fs {
namespace {

// Frees fuse_args and the mountpoint string of fuse_cmdline_opts at scope exit.
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

// "dir/data.npz" -> "/abs/dir/data.npz". The directory must exist (the archive need not).
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

std::string MakeAbsolute(const std::string& path) {
  if (path.empty() || path[0] == '/') return path;
  char cwd[PATH_MAX];
  if (getcwd(cwd, sizeof cwd) == nullptr) return path;
  return std::string(cwd) + "/" + path;
}

// Opens the archive if it exists. nullptr (no error) if it does not: the mount starts empty.
Result<std::shared_ptr<Archive>> OpenArchiveIfPresent(const Mount& m) {
  struct stat st {};
  if (stat(m.archive_path.c_str(), &st) != 0) {
    if (errno == ENOENT) return std::shared_ptr<Archive>();
    return ErrnoStatus(errno, m.options.archive, "stat");
  }
  if (!S_ISREG(st.st_mode)) {
    return Status::Error(EINVAL, m.options.archive + ": not a regular file");
  }
  ArchiveOptions ao;
  ao.cache_bytes = m.options.cache_mib << 20;
  ao.index_enabled = m.options.index_enabled;
  ao.index_dir = MakeAbsolute(m.options.index_dir);
  ao.log = [](const std::string& line) { LogWarning(line); };
  return Archive::Open(m.archive_path, std::move(ao));
}

// Fills the inode table from the archive and from spool members a previous daemon left.
void BuildTree(Mount& m) {
  if (m.archive != nullptr) {
    const auto& members = m.archive->members();
    for (size_t i = 0; i < members.size(); ++i) {
      Status s = m.table->AddMember(members[i].path, NodeKind::kArchived, i, nullptr,
                                    members[i].entry.mtime);
      if (!s.ok()) LogWarning(m.options.archive + ": member skipped: " + s.message());
    }
  }
  if (m.spool != nullptr) {
    for (const auto& member : m.spool->members()) {
      Status s = m.table->AddMember(member->name(), NodeKind::kGrowing, 0, member, m.start_time);
      if (!s.ok()) {
        LogError(m.spool->dir() + ": resumed member " + member->name() +
                 " hidden (its name is taken in the archive; finalize will fail): " + s.message());
        continue;
      }
      LogInfo("resumed new member " + member->name() + " from " + m.spool->dir() + ": " +
              std::to_string(member->frame_count()) + " frames, " +
              std::to_string(member->data_bytes()) + " data bytes");
    }
  }
}

// Adds the new members to the archive. Returns the outcome for the result file.
Status FinalizeSpool(Mount& m) {
  if (m.spool == nullptr) return Status::Ok();
  WriteOptions wo;
  wo.compress_level = m.options.compress_level.value_or(-1);
  wo.reject_existing_names = true;
  constexpr uint64_t kLargeFinalize = 64ull << 20;
  int64_t last_report = 0;
  wo.progress = [&last_report](uint64_t done, uint64_t total) {
    if (total < kLargeFinalize) return;
    int64_t now = static_cast<int64_t>(time(nullptr));
    if (done != total && now - last_report < 2) return;
    last_report = now;
    LogInfo("finalize: " + std::to_string(done >> 20) + " of " + std::to_string(total >> 20) +
            " MiB");
  };
  size_t count = m.spool->members().size();
  Status s = m.spool->Finalize(m.archive_path, wo);
  if (s.ok() && count > 0) {
    LogInfo("finalized " + std::to_string(count) + " new member(s) into " + m.archive_path);
  }
  return s;
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
  if (m.options.show_help) {
    std::printf("%s", UsageText(argv[0]).c_str());
    std::printf("FUSE options:\n");
    std::fflush(stdout);
    fuse_cmdline_help();
    fuse_lowlevel_help();
    return 0;
  }
  if (m.options.show_version) {
    std::printf("npzfs %s (libfuse %s)\n", NPZFS_VERSION, fuse_pkgversion());
    return 0;
  }

  // ---- everything that can fail visibly, before daemonizing ----
  auto abs = AbsoluteArchivePath(m.options.archive);
  if (!abs.ok()) {
    PrintError(abs.status().message());
    return 1;
  }
  m.archive_path = *abs;
  m.result_path = DirName(m.archive_path) + "/." + BaseName(m.archive_path) + ".npzfs-result";
  m.uid = getuid();
  m.gid = getgid();
  m.start_time = static_cast<int64_t>(time(nullptr));

  auto archive = OpenArchiveIfPresent(m);
  if (!archive.ok()) {
    PrintError("cannot mount: " + archive.status().message());
    return 1;
  }
  m.archive = std::move(archive).value();

  std::string mountpoint = MakeAbsolute(m.options.mountpoint);
  bool created_mountpoint = false;
  if (m.options.mountpoint_derived && mkdir(mountpoint.c_str(), 0755) == 0) {
    created_mountpoint = true;
  }
  struct stat mst {};
  if (stat(mountpoint.c_str(), &mst) != 0) {
    PrintError("cannot mount " + m.options.archive + ": mount point '" + m.options.mountpoint +
               "': " + std::strerror(errno));
    return 1;
  }
  if (!S_ISDIR(mst.st_mode)) {
    PrintError("cannot mount " + m.options.archive + ": mount point '" + m.options.mountpoint +
               "' is not a directory");
    return 1;
  }

  if (!m.options.read_only) {
    std::string dir = m.options.spool_dir.empty() ? DefaultSpoolDir(m.archive_path)
                                                  : MakeAbsolute(m.options.spool_dir);
    auto spool = Spool::Open(dir, [](const std::string& line) { LogInfo(line); });
    if (!spool.ok()) {
      PrintError("cannot mount " + m.options.archive + ": " + spool.status().message());
      if (created_mountpoint) rmdir(mountpoint.c_str());
      return 1;
    }
    m.spool = std::move(spool).value();
    // -o compress: deflate completed chunks while frames arrive (one background thread).
    if (m.options.compress_level) m.spool->StartBackgroundDeflate(*m.options.compress_level);
  } else {
    std::string dir = m.options.spool_dir.empty() ? DefaultSpoolDir(m.archive_path)
                                                  : MakeAbsolute(m.options.spool_dir);
    struct stat sst {};
    if (stat(dir.c_str(), &sst) == 0) {
      LogWarning(dir +
                 " holds new members of an earlier mount; they are not shown with -o ro "
                 "(mount without ro, or run npz recover, to add them to the archive)");
    }
  }
  // A stale result must never be read as this run's. Removed only now that the spool lock
  // is ours, so a second daemon refused above cannot delete the first one's result.
  unlink(m.result_path.c_str());
  m.table = std::make_unique<InodeTable>(m.start_time);
  BuildTree(m);

  // Session arguments: 1 MiB reads (must match conn->max_read set in Init), kernel-side
  // permission checks on the modes we report, and a name for mount(8).
  fuse_opt_add_arg(&args, "-omax_read=1048576");
  fuse_opt_add_arg(&args, "-odefault_permissions");
  fuse_opt_add_arg(&args, "-osubtype=npzfs");
  if (m.archive_path.find(',') == std::string::npos) {
    fuse_opt_add_arg(&args, ("-ofsname=" + m.archive_path).c_str());
  }
  fuse_opt_add_arg(&args, mountpoint.c_str());
  fuse_cmdline_opts cmd{};
  auto cleanup_unused_spool = [&] {
    // Nothing was written: finalize only removes the empty spool again.
    if (m.spool != nullptr && m.spool->members().empty()) (void)FinalizeSpool(m);
    if (created_mountpoint) rmdir(mountpoint.c_str());
  };
  if (fuse_parse_cmdline(&args, &cmd) != 0) {
    cleanup_unused_spool();
    return 2;
  }
  std::unique_ptr<char, FreeDeleter> cmd_mountpoint(cmd.mountpoint);

  const fuse_lowlevel_ops& ops = NpzfsOperations();
  std::unique_ptr<fuse_session, SessionDeleter> se(fuse_session_new(&args, &ops, sizeof(ops), &m));
  if (se == nullptr) {
    PrintError("cannot start a FUSE session for " + m.options.archive);
    cleanup_unused_spool();
    return 1;
  }
  if (fuse_set_signal_handlers(se.get()) != 0) {
    cleanup_unused_spool();
    return 1;
  }
  if (fuse_session_mount(se.get(), cmd.mountpoint) != 0) {
    PrintError("cannot mount " + m.options.archive + " on " + mountpoint);
    fuse_remove_signal_handlers(se.get());
    cleanup_unused_spool();
    return 1;
  }
  LogInfo("mounted " + m.archive_path + " on " + mountpoint +
          (m.archive == nullptr ? " (new archive)" : "") + (m.options.read_only ? " (ro)" : ""));

  fuse_daemonize(cmd.foreground);
  if (!cmd.foreground) LogToSyslog(true);

  int loop_result;
  if (cmd.singlethread) {
    loop_result = fuse_session_loop(se.get());
  } else {
    std::unique_ptr<fuse_loop_config, LoopConfigDeleter> config(fuse_loop_cfg_create());
    fuse_loop_cfg_set_clone_fd(config.get(), cmd.clone_fd);
    // UINT_MAX means "not given": keep libfuse's defaults (it logs an error otherwise).
    if (cmd.max_idle_threads != UINT_MAX) {
      fuse_loop_cfg_set_idle_threads(config.get(), cmd.max_idle_threads);
    }
    if (cmd.max_threads != UINT_MAX) fuse_loop_cfg_set_max_threads(config.get(), cmd.max_threads);
    loop_result = fuse_session_loop_mt(se.get(), config.get());
  }
  fuse_session_unmount(se.get());
  fuse_remove_signal_handlers(se.get());
  se.reset();  // runs Destroy (saves the index) if the kernel did not already
  if (loop_result < 0) LogError("session loop failed: " + std::string(std::strerror(-loop_result)));

  Status finalized = FinalizeSpool(m);
  if (!finalized.ok()) LogError("finalize failed: " + finalized.message());
  Status written = WriteFileAtomically(
      m.result_path, finalized.ok() ? "ok\n" : "error: " + finalized.message() + "\n");
  if (!written.ok()) LogError("cannot write the result file: " + written.message());
  if (created_mountpoint) rmdir(mountpoint.c_str());
  return finalized.ok() && written.ok() ? 0 : 1;
}

}  // namespace
}  // namespace npzfs::fs

int main(int argc, char** argv) { return npzfs::fs::Run(argc, argv); }
