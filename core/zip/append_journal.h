// The undo journal of an in-place append: what it holds, how it is written, and how an
// interrupted append is undone from it. Format: core/README.md, "Append journal"; protocol:
// the essay at the top of archive_writer.cc.
//
// An in-place append overwrites the archive's old central directory and end records (the
// region [old_cd_offset, old_size)) with new members, then writes a new directory. Before it
// touches the archive it writes ".<archive>.npzfs-journal" next to it, holding the old size,
// the old mtime and the bytes of that region, fsyncs it and its directory. Undoing puts the
// bytes back, truncates to the old size and restores the mtime: the archive is then
// byte-identical to what it was, and so is every fingerprint (size, mtime, directory CRC)
// a sidecar index holds.
//
// A journal is applied only to the file it was written for. The append never writes below
// old_cd_offset, so the journal records the device, the inode and a CRC-32 of the bytes
// there it never touches (the first and the last 64 KiB before old_cd_offset): a file
// rewritten in place since (np.savez and zipfile's "w" mode truncate the same inode; a new
// file may get the freed inode number) fails that check and is left alone. One exception
// (version 3): a file on another inode that does not read as a zip, whose untouched bytes
// match the CRC, is a copy of the archive taken during the append (a backup, a restored
// snapshot) along with its journal, and the journal is its only way back: it is applied.
//
// It is also applied only to a file in a state the append itself could have left: another
// program may have appended to the archive after the crash (zipfile's "a" mode writes where
// the directory it found begins), and undoing would cut its members off. So the journal
// records the names of all the members the append writes (the first one's local header goes
// at old_cd_offset) and how many entries the old directory held. Recovery undoes the append
// when the archive
//   - has no readable directory: the append died while writing, unless another member's
//     local header lies at old_cd_offset;
//   - still has the old directory (same offset, same count): the append had not begun;
//   - has exactly the old entries and then the append's members, in order, the first at
//     old_cd_offset, and nothing after the end records but the old bytes the append had
//     not cut yet (a kill at "directory-written"): the append was complete.
// Anything else (more entries, other names, bytes after the end records) was written by
// another program: the journal is set aside as stale, the archive left as it is; except a
// directory that lists none of the old members: zipfile's "a" mode, given the file a
// killed append broke (not a zip then), writes a new zip at its end, and leaving that would
// leave the old members unlisted. That archive is undone too, after the bytes it cuts off,
// the other program's zip among them, are kept in "<journal>.cut-<seconds>". A retried
// finalize then finds its members already there with the same bytes and skips them
// (WriteOptions::skip_identical_existing). Version 2 journals (no names but the first, no
// old count) keep their rule: only the local header at old_cd_offset is checked.
//
// An archive with more than one hard link is never appended in place (the journal is found
// through one name only): the caller copies it instead.
//
// Every function here expects the caller to hold the archive's lock (core/zip/archive_lock.h).
// Plain functions over values and fds: thread-safe for different archives.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "npzfs/status.h"

namespace npzfs {

inline constexpr std::string_view kAppendJournalMagic = "NPZFSJNL";
// Version 2 added the device, the prefix CRC, an exact mtime and the first new name; version 3
// every new name and the old entry count. Older journals (version 1: npzfs 0.1.0; version 2:
// before a foreign append after a crash was recognised) are still read and applied, each
// with the checks its fields allow.
inline constexpr uint32_t kAppendJournalVersion = 3;
// magic 8, version 4, prefix_crc 4, device 8, inode 8, old_size 8, old_cd_offset 8,
// old_mtime_sec 8, old_mtime_nsec 4, names_length 4, saved_length 8, old_entries 8; then the
// names (each a u16 length and its bytes), the saved bytes and a CRC-32.
inline constexpr size_t kAppendJournalHeaderSize = 80;
// The largest old region a journal holds (a central directory and its end records); an
// archive with more after its old directory is appended by copy instead.
inline constexpr uint64_t kMaxJournalSavedBytes = (uint64_t{1} << 30) + (uint64_t{1} << 20);
// The most bytes the names take in a journal (each name and its 2-byte length); more new
// names than that (they would not fit one central directory either) mean an append by copy.
inline constexpr uint64_t kMaxJournalNamesBytes = uint64_t{1} << 30;
// How much of each end of the untouched prefix the prefix CRC covers.
inline constexpr uint64_t kJournalPrefixSample = 64 << 10;

struct AppendJournal {
  uint32_t version = kAppendJournalVersion;  // as decoded; always written as the current one
  uint64_t device = 0;                       // st_dev of the archive (version 2)
  uint64_t inode = 0;                        // st_ino of the archive it belongs to
  uint32_t prefix_crc = 0;     // JournalPrefixCrc of the archive at old_cd_offset (version 2)
  uint64_t old_size = 0;       // archive size before the append
  uint64_t old_cd_offset = 0;  // start of the overwritten region (old central directory)
  int64_t old_mtime_sec = 0;   // archive mtime before the append
  uint32_t old_mtime_nsec = 0;
  uint64_t old_entries = 0;  // entries of the old central directory (version 3)
  // The members the append writes, in order; the first one's local header goes at
  // old_cd_offset. Version 2 holds the first name only, version 1 none.
  std::vector<std::string> new_names;
  std::string saved;  // the old bytes of [old_cd_offset, old_size)
};

// The bytes `names` take in a journal.
uint64_t JournalNamesBytes(const std::vector<std::string>& names);

// CRC-32 of [0, n) then [cd_offset - n, cd_offset) of the file at `fd`, where
// n = min(cd_offset, kJournalPrefixSample): bytes an append never writes.
Result<uint32_t> JournalPrefixCrc(int fd, uint64_t cd_offset, const std::string& path);

// "<dir>/.<base>.npzfs-journal" for "<dir>/<base>".
std::string AppendJournalPath(const std::string& archive_path);

std::string EncodeAppendJournal(const AppendJournal& journal);
// EINVAL naming `path` and the cause: bad magic or version, truncated, trailing bytes,
// CRC-32 mismatch, a saved region that does not match old_size - old_cd_offset, no new name
// (version 3) or a name running past the names.
Result<AppendJournal> DecodeAppendJournal(std::string_view bytes, const std::string& path);

// Creates the journal (O_EXCL: EEXIST if one is there), writes it, fsyncs it and its
// directory. On error the partial journal is removed and the archive was not touched.
Status WriteAppendJournal(const std::string& journal_path, const AppendJournal& journal);
// Puts the archive open at `fd` back as the journal describes (truncate to the old size,
// the saved bytes at old_cd_offset, the old mtime) and fsyncs it.
Status UndoAppend(int fd, const std::string& archive_path, const AppendJournal& journal);
// Unlinks the journal and fsyncs its directory (so it cannot reappear after a crash).
Status RemoveAppendJournal(const std::string& journal_path);

// If the archive open at `fd` (locked by the caller) has a journal, undoes the interrupted
// append and removes the journal; returns whether anything was restored. A journal that does
// not decode was never complete, so the archive was never touched: it is removed (if the
// archive still reads as a zip; otherwise EIO and both are kept). A journal of another file
// (device, inode or prefix CRC differ, another member's local header at old_cd_offset, or
// the archive is shorter than the region it saved) is renamed to "<journal>.stale" and left
// alone. Each action is logged through `log`.
Result<bool> RecoverAppendUnderLock(int fd, const std::string& archive_path,
                                    const std::function<void(const std::string&)>& log);

// The steps of the in-place append protocol and of its recovery, in order. Tests can make a
// step fail (EIO) or kill the process there.
enum class AppendStep {
  kJournalWrite,      // half of the journal written, not yet synced
  kJournalDurable,    // journal and directory fsynced; archive untouched
  kMemberData,        // new member bytes partly written over the old directory
  kDirectoryWritten,  // new central directory and end records written, not synced
  kArchiveSynced,     // archive fsynced; the journal still exists (or, for an archive made
                      // of a deflated shadow, it is not yet renamed into place)
  kJournalRemoved,    // journal unlinked; its directory not yet fsynced
  kRecoverRestored,   // recovery: old bytes put back and synced; journal not yet removed
};

// Called at each step. Returns EIO if FailAppendStepForTesting named it (this thread only).
// Kills the process (SIGKILL) if the environment variable NPZFS_TEST_KILL_AT names it:
// "journal-write", "journal-durable", "member-data:BYTES" (once at least BYTES new bytes are
// written; `bytes` says how many are), "directory-written", "archive-synced",
// "journal-removed", "recover-restored". For crash tests only.
Status AppendStepReached(AppendStep step, uint64_t bytes = 0);
void FailAppendStepForTesting(std::optional<AppendStep> step);

}  // namespace npzfs
