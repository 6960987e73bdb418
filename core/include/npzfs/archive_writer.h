// Adds members to a ZIP archive (or writes a new one), crash-safely.
//
// Two ways to add to an existing archive (design essay: core/zip/archive_writer.cc):
//   - In place (default): the new members, a new central directory and end records are
//     written over the old central directory, under an undo journal next to the archive
//     (".<name>.npzfs-journal"). Time and extra disk space are O(new bytes + directory),
//     whatever the archive's size. Old members' bytes never move and are never rewritten.
//   - Copy (AppendMode::kCopy): the new archive is built in a temp file in the archive's
//     directory (".<name>.npzfs-tmp-XXXXXX"), fsynced and renamed over the archive.
// What other processes see:
//   - One that had the archive open before keeps reading correct bytes of every old member
//     in both modes: those bytes never change. (In copy mode it keeps the old inode and never
//     sees the new members; in place, re-reading the directory after the append shows them.)
//   - One that opens the archive while an append runs: in copy mode, the old archive or the
//     new one, never a mix. In place, it may find no valid directory until the append ends
//     (an error such as "not a zip archive" or a bad central directory signature), and should
//     retry; it never gets wrong bytes of an old member.
//   - After a crash (either mode): the old archive, or the complete new one. In place, a
//     journal left by the crash is undone (the old archive restored byte for byte, mtime
//     included) by the next append, RecoverInterruptedAppend (at mount, at any npz command)
//     or npz recover. On any error the archive is as before.
// A new archive is written to a temp file and renamed into place, or, when its first member's
// deflated chunks lie in an adoptable file (PredeflatedChunks::adoptable_path), written into
// that file around those chunks, which is then renamed into place.
//
// Ownership: member pieces that name an fd borrow it (the caller keeps it open for the
// duration of the call). Thread-safe: concurrent calls on the same archive, from threads or
// processes, are serialised by an flock on the archive (or on its directory while it does not
// exist yet).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "npzfs/status.h"
#include "npzfs/zip_directory.h"

namespace npzfs {

// Chunks of a piece that were deflated ahead of time (by the spool's background deflater),
// each as the archive writer deflates a chunk: its own raw deflate state at `level`,
// ended by a full flush, `chunk_size` uncompressed bytes.
struct PredeflatedChunks {
  int fd = -1;         // the file holding the compressed bytes (not owned)
  std::string source;  // names it in messages
  int level = -1;      // the deflate level they were made at
  uint64_t chunk_size = 0;
  struct Chunk {
    uint64_t offset = 0;           // of its compressed bytes in `fd`
    uint32_t compressed_size = 0;  // > 0
    uint32_t crc32 = 0;            // of its chunk_size uncompressed bytes
  };
  std::vector<Chunk> chunks;  // the piece's first chunks.size() * chunk_size bytes, in order
  // Set when the file holding the chunks may become a new archive itself (written after its
  // chunks and renamed into place, so that they are not copied): its path, and where its
  // chunks lie back to back; the bytes before first_chunk_offset are free for the member's
  // local header and leading chunk, and nothing after the last chunk needs to be kept. Used
  // for the first member of an archive being created on the file's filesystem; the file is
  // then gone from adoptable_path.
  std::string adoptable_path;
  uint64_t first_chunk_offset = 0;
};

struct MemberPiece {  // one run of bytes of a new member
  std::string bytes;  // used when fd < 0
  int fd = -1;        // a file range (not owned) when fd >= 0
  uint64_t offset = 0, length = 0;
  std::string source = {};  // names the fd's file in error messages (optional)
  // Optional, for fd pieces: the start of the range already deflated. Used (copied as they
  // are, without reading the range) when the archive writer deflates at the same level and
  // chunk size and the piece starts at a chunk boundary (after the member's leading chunk);
  // otherwise ignored.
  std::shared_ptr<const PredeflatedChunks> predeflated = {};
};

struct NewMember {
  std::string name;  // e.g. "adc.npy"
  std::vector<MemberPiece> pieces;
  std::optional<uint32_t> crc32;  // of all pieces, if the caller already knows it
  // When deflating: the first this many bytes form a chunk of their own (a .npy header), so
  // the data's chunks start at data offsets. 0: none.
  uint64_t leading_chunk = 0;
};

// Receives one human-readable log line (recovery, cleanup). May be empty.
using ArchiveLogFn = std::function<void(const std::string& line)>;

// Uncompressed bytes per independent deflate chunk of the members npzfs deflates. A reader
// decodes from a chunk start, so smaller chunks mean less decoded per random read: 256 KiB
// costs 0.13% of size against one deflate stream of numpy int16 data (1 MiB: 0.03%). The
// chunk size doubles for members too large for the seek table's 8000 chunks (over 2 GiB).
inline constexpr uint64_t kDefaultDeflateChunkBytes = uint64_t{256} << 10;

struct WriteOptions {
  enum class AppendMode {
    kInPlace,  // write over the old central directory under an undo journal
    kCopy,     // build a copy in a temp file and rename it over the archive
  };
  AppendMode append_mode = AppendMode::kInPlace;
  // -1: stored; 0..9: deflate at that level, in independent chunks with a seek table in
  // the central directory (core/README.md, "Seek table extra field").
  int compress_level = -1;
  size_t threads = 0;                               // deflate workers; 0: one per online CPU
  uint64_t chunk_size = kDefaultDeflateChunkBytes;  // uncompressed bytes per deflate chunk
  bool reject_existing_names = true;  // EEXIST if a new name is already in the archive
  // A new member whose name is already in the archive with the same size and CRC-32 is not
  // added again (instead of EEXIST): a finalize retried after a crash that had already
  // added it. The CRC is computed from the pieces when NewMember::crc32 is not given.
  bool skip_identical_existing = false;
  // AppendToArchive: called with the archive's directory under its lock, before anything is
  // written; an error stops the append (a caller's own rule for names, as npz add's numpy
  // keys). May be empty.
  std::function<Status(const ZipDirectory& old)> check_existing;
  // WriteArchive only: whether an existing out_path is replaced. False: EEXIST if it exists,
  // also when another program creates it while the new one is being written.
  bool replace_existing = true;
  std::function<void(uint64_t done, uint64_t total)> progress;  // may be empty
  ArchiveLogFn log;  // what recovery of an interrupted append did (may be empty)
  // Said once when another process holds the archive's lock (or its directory's), before
  // waiting for it: "PATH: waiting for another writer to finish with it (pid N, NAME)".
  // Empty: said through `log`.
  ArchiveLogFn lock_wait;
};

// Creates `archive_path` holding `members`, or, if it exists, adds `members` after its old
// members (which stay byte-identical), in place or by copy (options.append_mode). Before
// that, an interrupted append of this archive is undone (see RecoverInterruptedAppend).
// Errors: EINVAL the existing file is not a zip archive, or a bad option/member (empty name,
// duplicate new names); EEXIST a new name is already in the archive (reject_existing_names);
// EIO a source piece is shorter than claimed, or a deflated source does not match its
// given CRC-32; EBUSY (copy mode) the archive was modified or replaced by another program
// while the new one was being built; the errno of any failed system call (ENOSPC, EACCES,
// EROFS, ...). Every message starts with the archive path and names the cause. In place,
// the archive file must be writable (copy mode only needs its directory to be).
// With no members an existing archive is left untouched (no rewrite) and a missing one is
// created as an empty archive. An existing empty file (0 bytes) counts as an empty archive. A
// symlinked archive path is resolved and its target changed; an existing archive's mode is kept
// (and its owner, when the caller may set it).
Status AppendToArchive(const std::string& archive_path, const std::vector<NewMember>& members,
                       const WriteOptions& options);

// Whether this process may append to `archive_path` now (access(2); nothing of free space):
// its directory must be writable (the journal, or the copy renamed into place), and so must
// an existing archive in place (a symlink's target). EACCES or EROFS naming the file and
// what needs the permission. A daemon checks it before it accepts a new member that could
// only be finalized into the archive.
Status CheckCanAppend(const std::string& archive_path, WriteOptions::AppendMode mode);

// Like AppendToArchive but never keeps an existing file's members: overwrites `out_path`
// atomically with exactly `members` (npz pack). Duplicate new names are EINVAL when
// options.reject_existing_names is set.
Status WriteArchive(const std::string& out_path, const std::vector<NewMember>& members,
                    const WriteOptions& options);

// Undoes an interrupted in-place append of `archive_path`: if its journal
// (".<name>.npzfs-journal") exists, takes the archive's lock (waiting for an append that is
// still running), puts the overwritten bytes back, truncates to the old size, restores the
// mtime, fsyncs and removes the journal. Returns true if it restored the archive, false if
// there was nothing to do (no journal: one stat, no lock). A journal that was never complete
// is removed; one of an earlier, replaced file is renamed to "<journal>.stale". `log` gets a
// line for each of these. Call it before reading the archive's directory: at mount and before
// any npz command. Errors: ENOENT the archive is missing but a journal is there; EIO the
// journal is unreadable and the archive does not read as a zip (both kept); the errno of a
// failed system call (EACCES without write permission, ...), naming the file.
Result<bool> RecoverInterruptedAppend(const std::string& archive_path,
                                      const ArchiveLogFn& log = {});

// Removes the temp files a killed copy-mode append or npz pack left next to `archive_path`
// (".<name>.npzfs-tmp-*", AtomicFile's prefix), one log line each; returns how many. It takes
// the directory's lock and the archive's first, so it waits for a copy that is still
// running and never removes its temp file. Call it at mount and in npz recover, holding the
// spool lock (so no finalize of this archive is running either). Errors name the file.
Result<size_t> RemoveStaleTempFiles(const std::string& archive_path, const ArchiveLogFn& log = {});

// The file every writer here changes for `path`: the target of a symlink (so that an append
// or a rename changes it, not the link); `path` itself otherwise, or when the link cannot be
// followed.
std::string ResolveArchivePath(const std::string& path);

}  // namespace npzfs
