// The per-user runtime directory where npzfs keeps files that must not go next to an
// archive, and where an archive's index goes when its own directory is not writable.
//
// A mount must work on a dataset nobody may write (a read-only filesystem, a shared
// directory), so nothing the daemon needs for itself goes next to the archive. Runtime files
// go to the first directory that works of:
//   $XDG_RUNTIME_DIR/npzfs   (per user, set up by the login session)
//   /run/npzfs               (root)
//   $TMPDIR or /tmp, in npzfs-<uid> (made 0700; used only if it is ours and private)
// Every file is named after the archive: "<archive base>-<NameHash of its absolute path>
// .<kind>", so two archives with the same name never share one. The daemon (fs/runtime.h)
// and the npz tool both name files this way, and both use DefaultIndexPlace, so each finds
// the index the other saved.
//
// Plain functions over values: thread-safe.
#pragma once

#include <functional>
#include <optional>
#include <string>

#include "npzfs/status.h"

namespace npzfs {

// "dir/data.npz" -> "/abs/dir/data.npz", with the symlinks of the directory resolved (not
// of the file: a symlinked archive keeps its own name). The directory must exist, the
// archive need not. Errors name `archive` and the directory.
Result<std::string> AbsoluteArchivePath(const std::string& archive);

// The runtime directory (made if missing); "" when none can be used, and then, if
// `why_none` is given, "no runtime directory: " and why each place was refused (not set,
// another user's, open to others, not writable...).
std::string ChooseRuntimeDir(std::string* why_none = nullptr);

// "<runtime_dir>/<archive base>-<NameHash of archive_path>": add ".lock", ".result"...
// `archive_path` as AbsoluteArchivePath gives it.
std::string RuntimeFileStem(const std::string& runtime_dir, const std::string& archive_path);

// What a writable daemon records in its lock file for `npz umount`, should it die.
struct MountRecord {
  std::string recover_command;  // the `npz recover` that finalizes its spool, with its options
  std::string spool_dir;        // that spool, an absolute path
  std::string mount_dir;        // its mount point, an absolute path
};
// The lock file of a writable mount (RuntimeFileStem + ".lock", fs/runtime.h): the daemon's
// pid on the first line, then the recover command, the spool and the mount point, a line
// each (left empty if it holds a newline).
std::string MountLockText(long pid, const MountRecord& record);
// The record in the lock file at `lock_path`; empty fields for what it does not hold (no
// file, one written by an older daemon, or one a live daemon holds: that one was mounted
// after the daemon asked about, and its spool may be another).
MountRecord ReadMountRecord(const std::string& lock_path);

// "<runtime dir>/index", made if missing and `create`: where the indexes of archives whose
// directory is not writable are kept (named by SharedIndexFileName, core/base/names.h). ""
// if there is no runtime directory; with `create`, that and a failure to make it are logged
// through `log`.
std::string RuntimeIndexDir(bool create, const std::function<void(const std::string&)>& log = {});

// Where an archive's index is kept when no directory is given (ArchiveOptions::index_dir and
// index_fallback_dir): next to the archive ("") when its directory is writable, with the
// runtime directory's as a fallback to read (a mount over the archive's own directory keeps
// it there); else the runtime directory's (made if missing), with the one next to the
// archive (saved there by whoever may write that directory, such as the dataset's owner)
// as the fallback.
// `archive_path` as AbsoluteArchivePath gives it.
struct IndexPlace {
  std::string dir;
  std::optional<std::string> fallback;
};
IndexPlace DefaultIndexPlace(const std::string& archive_path,
                             const std::function<void(const std::string&)>& log = {});

}  // namespace npzfs
