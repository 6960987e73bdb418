// Atomic replacement of a file: the one home for "temp file, fsync, rename, fsync the
// directory" in npzfs (archives, the sidecar index, npz outputs, runtime result files).
//
// AtomicFile::Create makes ".<base>.npzfs-tmp-XXXXXX" (O_EXCL) in the target's directory, so
// the final rename stays on one filesystem and is atomic, and a leftover from a power cut is
// recognisably ours (TempFilePrefix). Commit fsyncs the temp file, renames it over the
// target and fsyncs the directory: a crash leaves either the old file or the new one. An
// AtomicFile that is destroyed without a successful Commit unlinks its temp file, so an error
// at any step leaves the old target untouched and nothing behind.
//
// Ownership: an AtomicFile owns its temp file's descriptor and name. Not thread-safe: one
// thread drives one AtomicFile. Different AtomicFiles are independent.
#pragma once

#include <sys/types.h>

#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "npzfs/file_util.h"
#include "npzfs/status.h"

namespace npzfs {

struct AtomicFileOptions {
  // Mode of the new file. Default: 0666 & ~umask, or, when the target exists and
  // keep_existing_mode is set, the target's mode (and owner, where permitted).
  std::optional<mode_t> mode;
  bool keep_existing_mode = true;
  // Whether Commit makes the file durable (fsync of the file before the rename, of the
  // directory after). Off only for files that mean nothing after a crash (runtime files):
  // the rename alone still shows readers the old or the new contents, never a mix.
  bool durable = true;
  // Whether Commit may replace a target that exists by then. False: EEXIST naming the target
  // if one exists when the temp file is renamed (renameat2 RENAME_NOREPLACE, or link(2)
  // where a filesystem lacks it), so two writers that each checked the target was missing
  // cannot both succeed.
  bool replace_existing = true;
};

// The steps of the protocol, in order; tests can make any one of them fail.
enum class AtomicStep { kCreate, kWrite, kSync, kRename, kSyncDir };

class AtomicFile {
 public:
  // Creates the temp file next to `target`. Errors name `target` and the directory
  // (ENOENT missing directory, EACCES/EROFS not writable, ...).
  static Result<AtomicFile> Create(const std::string& target,
                                   const AtomicFileOptions& options = {});

  AtomicFile(AtomicFile&& other) noexcept;
  AtomicFile& operator=(AtomicFile&&) = delete;
  AtomicFile(const AtomicFile&) = delete;
  ~AtomicFile();  // unlinks the temp file unless committed

  int fd() const { return fd_.get(); }
  const std::string& target() const { return target_; }
  const std::string& temp_path() const { return temp_path_; }

  // Appends at the file position. Errors name the target.
  Status Write(const void* data, size_t n);
  Status Write(std::string_view bytes) { return Write(bytes.data(), bytes.size()); }

  // fsync, then `before_rename` (if given; an error from it aborts the commit, e.g. "the
  // target was changed meanwhile"), rename over the target, fsync of the directory. After an
  // error before the rename the target is untouched and the temp file is removed. After a
  // failed directory fsync the new file is in place but maybe not durable (the error says so).
  Status Commit(const std::function<Status()>& before_rename = {});

  // Test hook: makes `step` fail with EIO in every AtomicFile of the calling thread, until
  // reset with nullopt.
  static void FailStepForTesting(std::optional<AtomicStep> step);
  // Test hook: in the calling thread, renameat2(RENAME_NOREPLACE) fails with EINVAL and
  // link(2) with EPERM, as on a filesystem that has neither (some FUSE object stores).
  static void LackNoReplaceAndLinksForTesting(bool lack);

 private:
  Status RenameOver();
  Status RenameNoReplace();
  AtomicFile(std::string target, std::string temp_path, UniqueFd fd)
      : target_(std::move(target)), temp_path_(std::move(temp_path)), fd_(std::move(fd)) {}
  std::string target_;
  std::string temp_path_;
  UniqueFd fd_;
  bool committed_ = false;
  bool durable_ = true;
  bool replace_existing_ = true;
};

// Writes `bytes` to `target` atomically (AtomicFile::Create, Write, Commit).
Status WriteFileAtomically(const std::string& target, std::string_view bytes,
                           const AtomicFileOptions& options = {});

// ".<base>.npzfs-tmp-": the prefix of every temp file made for `target` (in DirName(target)).
// Stale-temp cleanup matches it.
std::string TempFilePrefix(const std::string& target);

}  // namespace npzfs
