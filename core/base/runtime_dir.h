// The per-user runtime directory where npzfs keeps files that must not go next to an
// archive, and where an archive's index goes when its own directory is not writable.
//
// A mount must work on a dataset nobody may write (a read-only filesystem, a shared
// directory), so nothing the daemon needs for itself goes next to the archive. Runtime files
// go to the first directory that works of:
//   $XDG_RUNTIME_DIR/npzfs   (per user, set up by the login session)
//   /run/npzfs               (root)
//   $TMPDIR or /tmp, in npzfs-<uid> (made 0700; used only if it is ours and private)
// Every file is named after the archive: "<archive base>-<16 hex digits of a hash of its
// absolute path>.<kind>", so two archives with the same name never share one. The daemon
// (fs/runtime.h) and the npz tool both name files this way, so each finds the index the
// other saved.
//
// Plain functions over values: thread-safe.
#pragma once

#include <functional>
#include <string>

#include "npzfs/status.h"

namespace npzfs {

// "dir/data.npz" -> "/abs/dir/data.npz", with the symlinks of the directory resolved (not
// of the file: a symlinked archive keeps its own name). The directory must exist, the
// archive need not. Errors name `archive` and the directory.
Result<std::string> AbsoluteArchivePath(const std::string& archive);

// The runtime directory, made if `create` and missing; "" when none can be used (or, without
// `create`, none exists yet).
std::string ChooseRuntimeDir(bool create);

// "<runtime_dir>/<archive base>-<hash of archive_path>": add ".lock", ".index"...
// `archive_path` as AbsoluteArchivePath gives it.
std::string RuntimeFileStem(const std::string& runtime_dir, const std::string& archive_path);

// The directory an archive's index is kept in by default, as ArchiveOptions::index_dir
// takes it: "" (next to the archive, ".<name>.npzfs-index") when the archive's directory is
// writable; else "<runtime dir>/<stem>.index", made if `create` (a failure to make it is
// logged through `log` and that path returned anyway, so that saving then names it); "" if
// there is no runtime directory. `archive_path` as AbsoluteArchivePath gives it.
std::string DefaultIndexDir(const std::string& archive_path, bool create,
                            const std::function<void(const std::string&)>& log = {});
// The runtime directory's index directory for the archive, made if `create` ("" if there is
// no runtime directory): DefaultIndexDir's fallback.
std::string RuntimeIndexDir(const std::string& archive_path, bool create,
                            const std::function<void(const std::string&)>& log = {});

}  // namespace npzfs
