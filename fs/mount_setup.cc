#include "fs/mount_setup.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>

#include "core/base/atomic_file.h"
#include "core/base/mount_table.h"
#include "core/base/names.h"
#include "core/base/runtime_dir.h"
#include "core/base/text_codec.h"
#include "fs/log.h"
#include "npzfs/archive_writer.h"

namespace npzfs::fs {
namespace {

void PrintNote(const std::string& message) { std::fprintf(stderr, "npzfs: %s\n", message.c_str()); }

std::string MakeAbsolute(const std::string& path) {
  if (path.empty() || path[0] == '/') return path;
  char cwd[PATH_MAX];
  if (getcwd(cwd, sizeof cwd) == nullptr) return path;
  return std::string(cwd) + "/" + path;
}

// `path` (absolute) with the symlinks, "." and ".." of the part that exists resolved; the
// part that does not exist yet is appended as it is.
std::string ResolvedPath(const std::string& path) {
  std::string head = path, tail;
  char resolved[PATH_MAX];
  while (realpath(head.c_str(), resolved) == nullptr) {
    if (head.empty() || head == "/" || head == ".") return path;
    tail = "/" + BaseName(head) + tail;
    head = DirName(head);
  }
  const std::string out = resolved;
  return out == "/" && !tail.empty() ? tail : out + tail;
}

// Whether `path` (absolute, resolved) is the mount point or below it: by name, or by the
// device and inode of its existing ancestors (the same directory seen through a bind
// mount, which may propagate the mount there too).
bool IsInside(const std::string& path, const std::string& mount_dir) {
  if (PathBelow(path, mount_dir).has_value()) return true;
  struct stat mount_st {};
  if (stat(mount_dir.c_str(), &mount_st) != 0) return false;  // made later: nothing is below
  for (std::string dir = path;; dir = DirName(dir)) {
    struct stat st {};
    if (stat(dir.c_str(), &st) == 0 && st.st_dev == mount_st.st_dev &&
        st.st_ino == mount_st.st_ino) {
      return true;
    }
    if (dir == "/" || dir == "." || dir.empty()) return false;
  }
}

// The daemon reaches its spool and its index by path while it serves the mount: inside the
// mount point, it would wait on its own mount (the first create hangs in the kernel).
// `what` names the path ("-o spool=/x/y").
Status CheckOutsideMount(const Mount& m, const std::string& what, const std::string& path) {
  if (!IsInside(ResolvedPath(path), m.mount_dir)) return Status::Ok();
  return Status::Error(EINVAL, what + " is inside the mount point " + m.mount_dir +
                                   ": the daemon would wait on its own mount; choose a "
                                   "directory outside it");
}

// Where the random-access index is kept: -o index=DIR, else where `npz index` keeps it too
// (DefaultIndexPlace: next to the archive, or in the runtime directory for a dataset nobody
// may write), except that a mount over the archive's directory keeps it in the runtime
// directory and never reads beside the archive (that would be through its own mount).
void ChooseIndexPlace(const Mount& m, ArchiveOptions& ao) {
  if (!m.options.index_enabled) return;
  if (!m.options.index_dir.empty()) {
    ao.index_dir = MakeAbsolute(m.options.index_dir);
  } else if (IsInside(ResolvedPath(DirName(m.archive_path)), m.mount_dir)) {
    ao.index_dir = RuntimeIndexDir(/*create=*/true, LogWarning);
  } else {
    IndexPlace place = DefaultIndexPlace(m.archive_path, LogWarning);
    ao.index_dir = std::move(place.dir);
    ao.index_fallback_dir = std::move(place.fallback);
  }
}

void LogLine(const std::string& line) { LogInfo(line); }

// Opens the archive. A missing one is an error naming its absolute path, unless -o create
// (then nullptr: the mount starts empty and the archive is made on unmount). An append that
// a killed process left half done is undone first (its journal); a read-only mount that may
// not do so still mounts, with a warning.
Result<std::shared_ptr<Archive>> OpenArchive(const Mount& m) {
  auto recovered = RecoverInterruptedAppend(m.archive_path, LogLine);
  if (!recovered.ok()) {
    if (m.writable()) return recovered.status();
    LogWarning("cannot undo an interrupted append: " + recovered.status().message());
  }
  struct stat st {};
  if (stat(m.archive_path.c_str(), &st) != 0) {
    if (errno != ENOENT) return ErrnoStatus(errno, m.archive_path, "stat");
    if (m.options.create) return std::shared_ptr<Archive>();
    struct stat spool {};
    if (stat(m.spool_dir.c_str(), &spool) == 0) {
      if (SpoolInUse(m.spool_dir)) {
        return Status::Error(EBUSY, "no such archive yet: " + m.archive_path + ": its spool " +
                                        m.spool_dir +
                                        " is in use by a writable mount that will create it, or "
                                        "by npz recover; mount it once that one is done");
      }
      return Status::Error(ENOENT, "no such archive: " + m.archive_path + ", but the spool " +
                                       m.spool_dir +
                                       " of an earlier mount is there: mount with -o create "
                                       "to resume it, or run npz recover " +
                                       m.archive_path + " to make the archive of it");
    }
    return Status::Error(ENOENT, "no such archive: " + m.archive_path +
                                     " (to start a new archive there, mount with -o create)");
  }
  if (!S_ISREG(st.st_mode)) {
    return Status::Error(EINVAL, m.options.archive + ": not a regular file");
  }
  // An empty file (touch data.npz) is a new archive to -o create, as it is to npz add.
  if (st.st_size == 0 && m.options.create) return std::shared_ptr<Archive>();
  ArchiveOptions ao;
  ao.cache_bytes = m.options.cache_mib << 20;
  ao.index_enabled = m.options.index_enabled;
  ChooseIndexPlace(m, ao);
  ao.verify = m.options.verify;
  ao.log = [](const std::string& line) { LogWarning(line); };
  return Archive::Open(m.archive_path, std::move(ao));
}

// As mount-zip does: refuse to stack on a mount point or to hide files (unless -o nonempty);
// the default mount point is created (and removed at the end) by us.
Status PrepareMountPoint(const Options& options, MountPoint& mp) {
  mp.path = MakeAbsolute(options.mountpoint);
  const std::string shown = "mount point '" + options.mountpoint + "'";
  int mkdir_errno = 0;  // why the mount point derived from the archive's name was not made
  if (options.mountpoint_derived) {
    if (mkdir(mp.path.c_str(), 0755) == 0) {
      mp.created = true;
    } else {
      mkdir_errno = errno;
    }
  }
  struct stat st {};
  if (stat(mp.path.c_str(), &st) != 0) {
    const int err = errno;
    if (err == ENOENT && mkdir_errno != 0 && mkdir_errno != EEXIST) {
      return Status::Error(mkdir_errno, shown +
                                            ": cannot create it: " + std::strerror(mkdir_errno) +
                                            " (give a mount point: npzfs ARCHIVE DIR)");
    }
    return Status::Error(err, shown + ": " + std::strerror(err));
  }
  if (!S_ISDIR(st.st_mode)) return Status::Error(ENOTDIR, shown + " is not a directory");
  char canonical[PATH_MAX];
  auto table = ReadMountTable();
  if (table.ok() && realpath(mp.path.c_str(), canonical) != nullptr) {
    if (auto on = FindMount(*table, canonical)) {
      return Status::Error(EBUSY, shown + " is already a mount point (" + on->fstype + " from " +
                                      on->source +
                                      "): unmount it first, or choose another "
                                      "directory");
    }
  }
  // (A mount point that cannot be listed is not refused here: the mount itself says why.)
  if (Result<size_t> n = CountEntries(mp.path, 1); !options.nonempty && n.ok() && *n > 0) {
    return Status::Error(ENOTEMPTY, shown +
                                        " is not empty: the mount would hide its files "
                                        "(mount with -o nonempty to do so anyway)");
  }
  return Status::Ok();
}

// A mount with -o spool=DIR neither shows nor finalizes the members an earlier mount that
// died left in the spool beside the archive: says so, with the command that adds them.
void WarnAboutDefaultSpool(const Mount& m) {
  const std::string beside = DefaultSpoolDir(m.archive_path);
  if (m.options.spool_dir.empty() || ResolvedPath(beside) == ResolvedPath(m.spool_dir) ||
      !SpoolAwaitsRecovery(beside)) {
    return;
  }
  LogWarning(beside + " holds new members of an earlier mount of " + m.archive_path +
             " that died; this mount uses -o spool=" + m.options.spool_dir +
             " and does not show them: once it is unmounted, run `" +
             NpzRecoverCommand(m.archive_path, beside, Spool::kRecordedLevel) +
             "` to add them to the archive");
}

// Resumes the spool an earlier daemon left; with -o ro only says that one is waiting.
Status ResumeSpool(Mount& m) {
  WarnAboutDefaultSpool(m);
  struct stat st {};
  if (stat(m.spool_dir.c_str(), &st) != 0) return Status::Ok();  // made on the first new member
  if (m.options.read_only) {
    if (S_ISDIR(st.st_mode) && !SpoolHoldsMembers(m.spool_dir)) return Status::Ok();
    if (SpoolInUse(m.spool_dir)) {
      LogInfo(m.spool_dir +
              " is the spool of a writable mount that is running: its new "
              "members reach the archive when that one is unmounted");
    } else {
      LogWarning(m.spool_dir +
                 " holds new members of an earlier mount; they are not shown with -o ro "
                 "(mount without ro, or run npz recover, to add them to the archive)");
    }
    return Status::Ok();
  }
  // Without -o compress, the level the spool records (that of the mount that made it).
  const std::optional<int> given = m.options.compress_level;
  auto spool =
      Spool::Open(m.spool_dir, LogLine, m.archive_path, given.value_or(Spool::kRecordedLevel));
  if (!spool.ok() && st.st_uid != getuid() &&
      (spool.status().code() == EACCES || spool.status().code() == EPERM)) {
    // Another user's spool (a group-writable archive): theirs to finalize.
    return Status::Error(spool.status().code(),
                         m.spool_dir + " is the spool of " + DescribeUid(st.st_uid) +
                             (SpoolInUse(m.spool_dir) ? ", whose writable mount is running"
                                                      : ", left by a mount of theirs") +
                             ": mount with -o spool=DIR of your own, or with -o ro (" +
                             spool.status().message() + ")");
  }
  if (!spool.ok()) return spool.status();
  const std::optional<int> recorded = (*spool)->recorded_compress_level();
  const auto said = [](std::optional<int> level) {
    return level ? "deflated at level " + std::to_string(*level) +
                       " (-o compress=" + std::to_string(*level) + ")"
                 : std::string("stored (the spool records no level)");
  };
  if (!given && recorded) {
    m.options.compress_level = recorded;  // finalize, background deflate, recover command
    m.spool.SetBackgroundDeflate(recorded);
    LogInfo(m.spool_dir + ": the new members are " + said(recorded) +
            ", as the spool records for the mount that made it");
  }
  if (given && given != recorded && !(*spool)->members().empty()) {
    LogWarning(m.spool_dir + ": the mount that made these members asked for them " +
               said(recorded) + "; this mount's -o compress has every new member " + said(given));
  }
  m.spool.Set(std::move(spool).value());
  return Status::Ok();
}

// Temp files of a killed copy-mode finalize or npz pack, next to the archive. Called once no
// finalize of this archive can be running (the mount lock, and the spool lock if a spool was
// resumed, are ours); a directory we may not write is left alone.
void RemoveStaleTemps(const Mount& m) {
  if (!m.writable() || access(DirName(m.archive_path).c_str(), W_OK) != 0) return;
  auto removed = RemoveStaleTempFiles(m.archive_path, LogLine);
  if (!removed.ok()) LogWarning("cannot remove stale temp files: " + removed.status().message());
}

// The command that finalizes this mount's spool should the daemon die (npz umount prints it).
std::string RecoverCommand(const Mount& m) {
  // Without -o compress, the spool records the level (stored, or that of an earlier mount
  // whose spool this one resumed).
  return NpzRecoverCommand(m.archive_path, m.spool_dir,
                           m.options.compress_level.value_or(Spool::kRecordedLevel));
}

// Runtime files; a writable mount takes the archive's lock, then clears what an earlier
// daemon left (a stale result must never be read as this run's).
Status PrepareRuntime(Mount& m) {
  if (!m.writable()) return Status::Ok();
  if (m.runtime.dir.empty()) {
    LogWarning(m.runtime.why_none +
               ": a second writable mount of this archive is refused only at its first new "
               "file, and npz umount cannot report the finalize (set XDG_RUNTIME_DIR or TMPDIR "
               "to a directory of yours)");
    return Status::Ok();
  }
  NPZ_ASSIGN_OR_RETURN(m.lock,
                       MountLock::Take(m.runtime.lock, m.archive_path,
                                       MountRecord{RecoverCommand(m), m.spool_dir, m.mount_dir}));
  RemoveStaleRuntimeFiles(m.runtime.dir);
  unlink(m.runtime.result.c_str());
  unlink(m.runtime.progress.c_str());
  return Status::Ok();
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
  Spool* spool = m.spool.get();
  if (spool == nullptr) return;
  for (const auto& member : spool->members()) {
    Status s = m.table->AddMember(member->name(), NodeKind::kGrowing, 0, member, m.start_time);
    if (!s.ok()) {
      LogWarning(spool->dir() + ": resumed member " + member->name() +
                 " is not shown: its name is taken in the archive (" + s.message() +
                 "); finalize leaves it out if the archive's member has the same bytes (an "
                 "earlier finalize added it), else fails saying how to rename it");
    }
  }
}

// Finalize progress for `npz umount`: "DONE TOTAL\n" in bytes, rewritten in place at most a
// few times a second (no fsync: it is a display), removed when finalize ends; while the
// finalize waits for another writer's lock, a second line "waiting: ..." says for whom.
class ProgressFile {
 public:
  explicit ProgressFile(const std::string& path) : path_(path) {
    if (path.empty()) return;
    auto fd = OpenFile(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd.ok()) fd_ = std::move(fd).value();
  }
  ~ProgressFile() {
    if (fd_.valid()) unlink(path_.c_str());
  }
  void Update(uint64_t done, uint64_t total) {
    const auto now = std::chrono::steady_clock::now();
    total_ = total;
    if (waiting_ && fd_.valid()) {  // progress: the lock was granted
      waiting_ = false;
      (void)::ftruncate(fd_.get(), kLineBytes);
    }
    if (!fd_.valid() || (done != total && now - last_ < kInterval)) return;
    last_ = now;
    WriteLine(done, total);
  }
  // Another writer holds the archive: `line` (naming it) follows the progress line until
  // progress resumes, for npz umount to show.
  void Waiting(const std::string& line) {
    if (!fd_.valid()) return;
    waiting_ = true;
    WriteLine(0, total_);
    const std::string text = "waiting: " + line + "\n";
    (void)PwriteAll(fd_.get(), text.data(), text.size(), kLineBytes, path_);
  }

 private:
  // "DONE TOTAL\n", each 20 digits: always the same length, rewritten in place.
  static constexpr size_t kLineBytes = 42;
  void WriteLine(uint64_t done, uint64_t total) {
    char line[kLineBytes + 1];
    std::snprintf(line, sizeof line, "%020llu %020llu\n", static_cast<unsigned long long>(done),
                  static_cast<unsigned long long>(total));
    (void)PwriteAll(fd_.get(), line, kLineBytes, 0, path_);
  }

  static constexpr auto kInterval = std::chrono::milliseconds(200);
  const std::string path_;
  UniqueFd fd_;
  std::chrono::steady_clock::time_point last_{};
  uint64_t total_ = 0;
  bool waiting_ = false;
};

// Adds the new members to the archive. Returns the outcome for the result file.
Status FinalizeSpool(Mount& m) {
  Spool* spool = m.spool.get();
  if (spool == nullptr) return Status::Ok();
  // An archive that was there at mount and is gone now was moved or deleted meanwhile: its
  // new members must not silently become an archive of their own at the old path.
  struct stat st {};
  const bool had_archive = m.archive != nullptr || !m.options.create;
  if (had_archive && !spool->members().empty() && ::stat(m.archive_path.c_str(), &st) != 0 &&
      errno == ENOENT) {
    return Status::Error(ENOENT, m.archive_path +
                                     ": no longer exists (moved or deleted while mounted); the "
                                     "new members stay in the spool " +
                                     spool->dir() + ": put the archive back and run `" +
                                     RecoverCommand(m) +
                                     "`, or run it as it is to make a new "
                                     "archive of the new members alone");
  }
  ProgressFile progress(m.runtime.progress);
  WriteOptions wo;
  wo.append_mode = m.append_mode();
  wo.compress_level = m.options.compress_level.value_or(-1);
  wo.reject_existing_names = true;
  wo.log = LogLine;
  wo.lock_wait = [&](const std::string& line) {
    LogLine(line);
    progress.Waiting(line);
  };
  constexpr uint64_t kLargeFinalize = 64ull << 20;
  int64_t last_report = 0;
  wo.progress = [&](uint64_t done, uint64_t total) {
    progress.Update(done, total);
    if (total < kLargeFinalize) return;
    int64_t now = static_cast<int64_t>(time(nullptr));
    if (done != total && now - last_report < 2) return;
    last_report = now;
    LogInfo("finalize: " + std::to_string(done >> 20) + " of " + std::to_string(total >> 20) +
            " MiB");
  };
  // The spool logs how many members it added (a .npy that never got a layout is not one).
  return spool->Finalize(m.archive_path, wo);
}

// The saved index describes the archive as it was; once finalize has changed the archive,
// it is rewritten for the new one with every record that still applies (old members keep
// their offsets), so the next mount needs no first pass and warns of no stale index. If
// that fails, it is removed: it would only be found stale by the next reader.
void DropStaleIndex(const Mount& m, const struct stat& before) {
  struct stat after {};
  if (m.archive == nullptr || stat(m.archive_path.c_str(), &after) != 0) return;
  if (after.st_ino == before.st_ino && after.st_size == before.st_size &&
      after.st_mtim.tv_sec == before.st_mtim.tv_sec &&
      after.st_mtim.tv_nsec == before.st_mtim.tv_nsec) {
    return;
  }
  Status carried = m.archive->CarryIndexForward();
  if (carried.ok()) return;
  const std::string index = m.archive->IndexPath();
  if (!index.empty() && unlink(index.c_str()) == 0) {
    LogInfo("removed " + index + ": it indexed the archive before finalize (" + carried.message() +
            ")");
  }
}

}  // namespace

MountPoint::~MountPoint() {
  if (created) rmdir(path.c_str());
}

Status PrepareMount(Mount& m, MountPoint& mp) {
  NPZ_ASSIGN_OR_RETURN(m.archive_path, AbsoluteArchivePath(m.options.archive));
  m.spool_dir = m.options.spool_dir.empty() ? DefaultSpoolDir(m.archive_path)
                                            : MakeAbsolute(m.options.spool_dir);
  m.mount_dir = ResolvedPath(MakeAbsolute(m.options.mountpoint));
  if (m.writable()) {
    NPZ_RETURN_IF_ERROR(CheckOutsideMount(m,
                                          m.options.spool_dir.empty()
                                              ? "the spool " + m.spool_dir
                                              : "-o spool=" + m.options.spool_dir,
                                          m.spool_dir)
                            .WithContext("cannot mount " + m.options.archive));
  }
  if (m.options.index_enabled && !m.options.index_dir.empty()) {
    const std::string dir = MakeAbsolute(m.options.index_dir);
    NPZ_RETURN_IF_ERROR(CheckOutsideMount(m, "-o index=" + m.options.index_dir, dir)
                            .WithContext("cannot mount " + m.options.archive));
    // Checked now: a typo would otherwise show only as a failed save at the unmount.
    struct stat st;
    int err = 0;
    if (::stat(dir.c_str(), &st) != 0) {
      err = errno;
    } else if (!S_ISDIR(st.st_mode)) {
      err = ENOTDIR;
    }
    if (err != 0) {
      return ErrnoStatus(err, dir, "-o index=" + m.options.index_dir + " needs a directory")
          .WithContext("cannot mount " + m.options.archive);
    }
  }
  m.uid = getuid();
  m.gid = getgid();
  m.start_time = static_cast<int64_t>(time(nullptr));
  if (!m.options.log_file.empty()) {
    NPZ_RETURN_IF_ERROR(LogToFile(MakeAbsolute(m.options.log_file)).WithContext("-o log="));
  }
  m.runtime = ChooseRuntimeFiles(m.archive_path);
  // -o compress: deflate completed chunks while frames arrive (one background thread).
  m.spool.SetBackgroundDeflate(m.options.compress_level);
  auto archive = OpenArchive(m);
  if (!archive.ok()) return archive.status().WithContext("cannot mount");
  m.archive = std::move(archive).value();
  Status s = PrepareMountPoint(m.options, mp);
  if (s.ok()) s = PrepareRuntime(m);
  if (s.ok()) s = ResumeSpool(m);
  if (!s.ok()) return s.WithContext("cannot mount " + m.options.archive);
  RemoveStaleTemps(m);
  m.table = std::make_unique<InodeTable>(m.start_time);
  BuildTree(m);
  return Status::Ok();
}

bool ChooseDaemonLog(const Mount& m) {
  if (!m.options.log_file.empty()) return false;  // already logging there
  if (SyslogAvailable()) return true;
  // Private: /run/npzfs is root's for every mount, and the log names members and paths.
  if (!m.runtime.log.empty() && LogToFile(m.runtime.log, 0600).ok()) {
    PrintNote("no syslog on /dev/log: the log goes to " + m.runtime.log);
    return false;
  }
  PrintNote("warning: no syslog on /dev/log and " +
            (m.runtime.dir.empty() ? m.runtime.why_none : "cannot write " + m.runtime.log) +
            ": nothing will be logged (mount with -o log=FILE to keep the log)");
  return false;
}

int FinishMount(Mount& m) {
  m.handles.Clear();  // a lazy unmount can leave handles the kernel never released
  if (!m.writable()) return 0;
  struct stat before {};
  stat(m.archive_path.c_str(), &before);
  Status finalized = FinalizeSpool(m);
  if (!finalized.ok()) LogError("finalize failed: " + finalized.message());
  if (finalized.ok()) DropStaleIndex(m, before);
  Status written = Status::Ok();
  if (!m.runtime.result.empty()) {
    // No fsync: its one reader, `npz umount`, reads it while this daemon exits, and after a
    // crash it means nothing (the rename alone keeps a reader from seeing half of it).
    AtomicFileOptions runtime_file;
    runtime_file.durable = false;
    written = WriteFileAtomically(m.runtime.result,
                                  finalized.ok() ? "ok\n" : "error: " + finalized.message() + "\n",
                                  runtime_file);
    if (!written.ok()) LogError("cannot write the result file: " + written.message());
  }
  m.lock = MountLock();  // released before we exit, so `npz umount` never sees it held
  return finalized.ok() && written.ok() ? 0 : 1;
}

}  // namespace npzfs::fs
