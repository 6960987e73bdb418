// The spool: the directory that holds the growing members of one archive until finalize.
//
// A mount that accepts new members keeps each one in a spool file named after the member
// (EscapeMemberName; a name too long for that gets a hashed file name plus a name file, see
// "Spool directory layout" in spool.cc) inside a spool directory, by default
// "<dir>/.<base>.npzfs-spool" next to the archive, so that finalize can copy or reflink on
// the same filesystem. The spool survives a killed daemon: Spool::Open resumes every member
// it finds, keeping every complete frame. Finalize adds every member to the archive
// atomically (AppendToArchive) and removes the spool only after the archive is durable; on
// failure both stay as they were.
//
// Files in the spool directory whose names start with '.' are not members (escaping never
// produces a leading '.'), nor are the name files "%N<id>" of long names; Spool::Open takes an
// exclusive flock on "<dir>/.npzfs-lock" so two daemons (or a daemon and `npz recover`) cannot
// share a spool. The daemon does not need a lock of its own; if it wants one it must use another
// file (flock conflicts between two open() calls of the same file, even in one process).
//
// The Spool is the one registry of new members: name -> GrowingMember. A member object is
// never replaced (a rename renames it in place), so holders of a member never go stale.
//
// Ownership: Spool owns its members (shared_ptr, the daemon may hold more references) and the
// lock. Thread safety: every method may be called from any thread; Finalize must not run
// while writers are still active (it snapshots what has been written so far).
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/write/background_deflater.h"
#include "core/write/deflate_shadow.h"
#include "core/write/growing_member.h"
#include "npzfs/archive_writer.h"
#include "npzfs/file_util.h"
#include "npzfs/status.h"

namespace npzfs {

// DefaultSpoolDir(archive_path) ("data.npz" -> "./.data.npz.npzfs-spool") is in
// core/base/names.h, with the other side-file names.

// Member name <-> one spool file name. '%' -> "%25", '/' -> "%2F", a leading '.' -> "%2E";
// reversible for every name. UnescapeMemberName: EINVAL for a malformed escape.
std::string EscapeMemberName(std::string_view member_name);
Result<std::string> UnescapeMemberName(std::string_view file_name);

// The longest spool file name that is the escaped member name itself: NAME_MAX less the most
// any name derived from a spool file adds (".<file>.npzfs-deflate-index", ".corrupt-<file>"),
// so that those fit too. A member whose escaped name is longer gets the hashed layout
// ("%L<id>" + name file "%N<id>", spool.cc). Spool files of up to NAME_MAX bytes left by an
// older daemon still resume under their escaped name.
size_t MaxEscapedSpoolFileName();

class Spool {
 public:
  // The lock file inside the spool directory.
  static constexpr std::string_view kLockFileName = kSpoolLockFileName;

  // Creates `dir` (and fsyncs its parent) or opens an existing one and resumes every member
  // file in it (one log line each; a file that cannot be resumed, or a hashed one without
  // its name file, is renamed to ".corrupt-<file>" with a log line; a name file without its
  // data file, left by a crash, is removed with a log line). EBUSY if another process holds
  // the spool lock. An existing directory must be a spool (CheckIsSpool with allow_empty:
  // it holds the lock file, or nothing at all), else EINVAL and nothing in it is touched.
  //
  // `archive_path`, if given, is the archive the spool's members are for. It is written into
  // the lock file of a spool that records none (but a spool that holds files and records no
  // archive is refused, EINVAL, unless `dir` is where `archive_path` keeps its spool by
  // default: whose members they are is not for this archive to guess), and a spool that
  // records another archive is refused (EINVAL naming both): its members belong there (a daemon of
  // that archive died, and the same -o spool=DIR was given to another archive). Unless that archive
  // is gone and `dir` is where `archive_path` keeps its spool by default, with the same file
  // name, and `dir` is no longer in the recorded directory: the directory of both was moved
  // or renamed, and `archive_path` takes the spool over (a log line says so).
  //
  // The record also holds the level the members are to be deflated at (`compress_level`: a
  // zlib level, kStoredLevel, or kRecordedLevel to keep what the spool records; EINVAL for
  // anything else), so that a mount without -o compress, or `npz recover` without
  // --compress, finalizes them as the mount that made them would have.
  // The record is durable (the lock file and the directory fsynced) before the first member
  // is made: a power cut never leaves members in a spool that says nothing of their archive.
  static constexpr int kStoredLevel = -1;
  static constexpr int kRecordedLevel = -2;
  static Result<std::unique_ptr<Spool>> Open(const std::string& dir, SpoolLogFn log = {},
                                             const std::string& archive_path = {},
                                             int compress_level = kRecordedLevel);
  ~Spool();

  const std::string& dir() const { return dir_; }
  // The deflate level the spool recorded before this Open (nullopt: stored, or a spool that
  // recorded none): the level of the last mount that gave one, normally the one that made
  // its members.
  std::optional<int> recorded_compress_level() const { return recorded_level_; }

  // A new, empty member. EEXIST if `name` is already in the spool. `declared` (count
  // ignored) fixes the frame layout now (-o frame=); .npy names only (EINVAL otherwise).
  Result<std::shared_ptr<GrowingMember>> Create(const std::string& name,
                                                std::optional<NpyHeader> declared = {});
  // nullptr if absent.
  std::shared_ptr<GrowingMember> Find(const std::string& name) const;
  // Every member, sorted by name.
  std::vector<std::shared_ptr<GrowingMember>> members() const;

  // unlink: EPERM if the member has data (GrowingMember::CheckRemovable), ENOENT if absent.
  Status Remove(const std::string& name);
  // rename: the member keeps its object (GrowingMember::MoveTo), so whoever holds it (the
  // daemon's inode table, open handles) follows the rename. EPERM if the member has data,
  // EEXIST if `to` is in the spool, ENOENT if absent.
  Status Rename(const std::string& from, const std::string& to);

  // With -o compress: deflates completed chunks of every member (present and future) in the
  // background, on one low-priority thread, and keeps them next to the spool files, so that
  // a finalize at `level` copies them instead of compressing (core/write/background_deflater.h).
  // Readers and writers of the members are not affected. Idempotent; ignored after Finalize.
  void StartBackgroundDeflate(int level);
  // Waits until the background deflater has caught up with the data written so far (tests
  // and the benchmark).
  void WaitForBackgroundDeflate();

  // Adds every member to `archive_path` in one atomic AppendToArchive (creating the archive
  // if missing; if there is nothing to add, nothing is created). .npy members get their
  // header with the final count plus their complete frames (a partial trailing frame is
  // dropped, logged); a .npy that never got a layout is skipped (logged); verbatim members
  // are copied whole. Only after the archive is durable are the spool files, the lock and
  // the directory removed. On failure the archive and the spool are as before and the Status
  // says why (ENOSPC, EEXIST for a name already in the archive, ...). `options.progress`
  // is passed through for large finalizes. When deflating, chunks deflated ahead of time
  // (by the background deflater, or left by a daemon that died) are copied as they are. After
  // success the Spool is empty and closed: further Create calls fail with ESHUTDOWN.
  Status Finalize(const std::string& archive_path, const WriteOptions& options);

 private:
  Spool(std::string dir, UniqueFd lock_fd, SpoolLogFn log);
  void Log(const std::string& line) const;
  // The spool file for a new member `name` (Create, Rename): the escaped name, or for a long
  // name a free "%L<id>" whose name file "%N<id>" this has written and made durable.
  Result<std::string> NewSpoolPath(const std::string& name) const;
  // Removes the name file of spool file `spool_path` (none for an escaped name), after making
  // the directory durable: the data file must be gone or renamed away (a crash must never
  // leave a hashed data file without its name). Returns the error; callers log it.
  Status DropNameFile(const std::string& spool_path) const;
  // The steps of Finalize (mu_ held).
  Result<std::optional<NewMember>> NewMemberFor(const std::string& name, GrowingMember& m,
                                                const WriteOptions& options,
                                                std::unique_ptr<DeflateShadow>* shadow);
  Status RemoveSpoolFiles(const std::string& archive_path);

  const std::string dir_;
  UniqueFd lock_fd_;
  const SpoolLogFn log_;
  mutable std::mutex mu_;  // guards members_ and finalized_
  std::map<std::string, std::shared_ptr<GrowingMember>> members_;
  bool finalized_ = false;
  // The record that a full disk kept ClaimSpool from writing (mu_): written before the next
  // member is made.
  std::string pending_record_;
  bool pending_required_ = false;      // Create fails while pending_record_ cannot be written
  std::optional<int> recorded_level_;  // set by Open: the level recorded before it
  std::optional<int> record_level_;    // set by Open: the level it recorded
  std::unique_ptr<BackgroundDeflater> background_;  // with StartBackgroundDeflate
};

// "npz recover ARCHIVE [--spool DIR] [--compress=LEVEL | --store]", each path a shell word:
// the command that finalizes the spool `spool_dir` of `archive_path` (--spool only when it
// is not the default one) at `compress_level`: a level (--compress=LEVEL),
// Spool::kStoredLevel (--store) or Spool::kRecordedLevel (neither: the level the spool
// records).
std::string NpzRecoverCommand(const std::string& archive_path, const std::string& spool_dir,
                              int compress_level);

// Whether the spool directory `dir` holds anything but its lock file: a spool left with
// nothing in it (its members finalized, or a first create that failed) holds no member to
// resume. True if `dir` exists but cannot be listed.
bool SpoolHoldsAnything(const std::string& dir);
// Whether it holds a spool file (a member, or the data or name file of one), not only files
// that are no member's (dotfiles: deflated shadows, quarantined files, others' files).
bool SpoolHoldsMembers(const std::string& dir);

// Whether a running daemon (or npz recover) holds the spool in `dir`: its lock file is
// locked. False if it cannot be told.
bool SpoolInUse(const std::string& dir);
// Whether `dir` is a spool directory holding members that nobody holds now: left by a mount
// (or npz recover) that died, for npz recover to add.
bool SpoolAwaitsRecovery(const std::string& dir);

// Whether `dir` is a spool that may be resumed: it holds the spool lock file, which is made
// with the directory (or, with `allow_empty`, it holds nothing). EINVAL naming `dir` and the
// remedy otherwise: every file of a spool is added to the archive and then deleted.
Status CheckIsSpool(const std::string& dir, bool allow_empty);

// `npz recover ARCHIVE`: finalizes the spool a dead daemon left behind, after removing the
// temp files of a killed copy-mode finalize (RemoveStaleTempFiles, under the spool lock). ENOENT
// with a clear message if there is no spool directory; EINVAL if it is not a spool (no lock
// file: CheckIsSpool); EBUSY if a live daemon holds it. The members are deflated at
// `options.compress_level`, or with Spool::kRecordedLevel there at the level the spool
// records (stored if none; a log line names a recorded level).
Status RecoverSpool(const std::string& archive_path, const std::string& spool_dir,
                    WriteOptions options, SpoolLogFn log = {});

}  // namespace npzfs
