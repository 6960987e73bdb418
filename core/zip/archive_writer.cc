// Adding members to a ZIP archive: in place under an undo journal, or by copy and rename.
//
// The problem. Adding members means writing new local headers and data where the central
// directory now is, then a new central directory and end records. Copying the whole archive
// to do that (the first version's only way) costs O(archive) time and twice the disk space:
// 2.7 s to add 208 bytes to a 1 GiB archive on ext4, where Python's zipfile in append mode
// takes 0.07 s. Done in place without care, a crash or ENOSPC halfway leaves an archive
// whose end record is gone, and every reader calls the whole file "not a zip archive".
//
// The design: in-place append under an undo journal (the default).
//   1. Lock the archive (core/zip/archive_lock.h: flock on the file; two appenders, or an
//      appender and a recovery, never interleave). If a journal is there, an earlier append
//      was interrupted: undo it first (RecoverAppendUnderLock).
//   2. Read the directory. Old members' bytes [0, cd_offset) are never written again.
//   3. Write ".<name>.npzfs-journal" (core/zip/append_journal.h): the old size, the old
//      mtime, the old entry count, the new members' names and the old bytes of
//      [cd_offset, size) (directory, end records, comment); fsync it and its directory.
//      Until that is done the archive is untouched.
//   4. Write the new members from cd_offset on (over the old directory), then the old
//      central records verbatim, the new ones and fresh end records (ZIP64 when the count,
//      an offset or a size needs it) with the old comment; cut any old tail beyond; fsync.
//   5. Remove the journal and fsync the directory. Only now is the append durable, and only
//      now may a caller (finalize) delete the spool it came from.
// Any error in 4 undoes the append at once (truncate to the old size, which frees the new
// blocks first; put the saved bytes back; restore the mtime; fsync; remove the journal).
// A crash anywhere leaves either no journal (the old archive, or the complete new one) or a
// journal, and recovery (at the next append, mount, npz command or npz recover) puts the old
// archive back byte for byte, mtime included, so a sidecar index of the old archive is
// still valid. A crash after 4's fsync but before 5 rolls back a complete append; the spool
// still exists then, and the next finalize adds its members again.
// Cost: the new bytes plus twice the old central directory, whatever the archive's size.
// An archive with more than one hard link (its journal would be found through one name
// only) or with more than a journal holds after its directory's start (1 GiB + 1 MiB) is
// appended by copy instead, with a log line. A journal is applied only to the file it was
// written for, and only while that file is in a state this append could have left: not
// after another program (zipfile's "a" mode) appended to it after the crash; undoing would
// cut its members off (append_journal.h says how both are told). Such a journal is set
// aside; the retried finalize then finds its members already there with the same bytes and
// adds nothing (skip_identical_existing), so they are not added twice.
//
// Copy and rename (WriteOptions::append_mode = kCopy, npz add --copy, -o finalize=copy),
// for users whose other processes may open the archive during the append: the new archive
// is built in ".<name>.npzfs-tmp-XXXXXX" (AtomicFile), the old prefix copied with
// copy_file_range (extent sharing on XFS/btrfs), then fsynced and renamed over the old one.
// A process opening the archive at any moment sees the old or the new archive, never a
// partial one; the cost is a full copy. It takes the same lock and recovers a journal first.
//
// Creating an archive (none there yet) builds a temp file and renames it, holding the
// directory's lock (a concurrent creator then appends to ours instead of replacing it).
//
// Creating an archive from a deflated shadow (adoption). With -o compress the daemon deflates
// a growing member's chunks in the background into a shadow file (core/write/deflate_shadow.h)
// whose first 4 KiB are left free. When finalize creates the archive and that file is on the
// archive's filesystem, copying its chunks (most of the member) would only move bytes that are
// already where an archive needs them. So the file becomes the archive:
//   - the member's local header goes at offset 0, padded (a padding extra field, ID 0x504e) to
//     end exactly where the .npy header's chunk begins; that chunk is one stored deflate block
//     (5 bytes + the header, its size known in advance) ending where the first shadow chunk
//     starts;
//   - the shadow's chunks stay where they are (ZipWriter::set_in_place_source);
//   - the rest of the member is deflated after them, then the other new members and the
//     central directory; the file is cut there, given the mode a new file gets (0666 & ~umask),
//     fsynced, and renamed into place (RENAME_NOREPLACE), and the directory is fsynced.
// Until the rename the shadow's recorded chunks are untouched (the writes go before them and
// after the last one, and the shadow only offers adoption when finalize takes all its chunks),
// so a crash or an error leaves a shadow that the next finalize uses again. The cost is the
// new bytes that were not deflated yet, plus an fsync of what writeback has not written yet:
// the background work's output is never copied. Readers see an ordinary archive (numpy,
// zipfile, unzip and libzip accept padded local headers and stored blocks).
//
// Alternatives rejected.
//   - Appending after the old end record (keeping the old directory): a reader still finds
//     no end record at the end of the file while the append runs, so it gains nothing, and
//     the old directory stays as dead bytes in the archive forever.
//   - A redo journal (write the new tail to the journal, then copy it in): doubles the
//     bytes written for the new members; the undo journal only holds the old directory.
//   - Rewriting old members through libzip: it re-encodes headers (old members would not
//     stay byte-identical) and buffers more than we want.
#include "npzfs/archive_writer.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zlib.h>

#include <cstdlib>
#include <memory>
#include <set>

#include "core/base/atomic_file.h"
#include "core/base/byte_codec.h"
#include "core/base/crc32.h"
#include "core/base/thread_pool.h"
#include "core/zip/append_journal.h"
#include "core/zip/archive_lock.h"
#include "core/zip/file_copy.h"
#include "core/zip/zip_format.h"
#include "core/zip/zip_writer.h"
#include "npzfs/file_util.h"
#include "npzfs/zip_directory.h"

namespace npzfs {
namespace {

constexpr size_t kCopyBuffer = size_t{1} << 20;

uint64_t MemberSize(const NewMember& m) {
  uint64_t n = 0;
  for (const MemberPiece& p : m.pieces) n += p.fd >= 0 ? p.length : p.bytes.size();
  return n;
}

bool SameFile(const struct stat& a, const struct stat& b) {
  return a.st_dev == b.st_dev && a.st_ino == b.st_ino && a.st_size == b.st_size &&
         a.st_mtim.tv_sec == b.st_mtim.tv_sec && a.st_mtim.tv_nsec == b.st_mtim.tv_nsec;
}

// Every message leads with the archive (a temp file or source path follows it).
Status WithArchive(const std::string& path, const Status& s) {
  return s.ok() || s.message().rfind(path + ":", 0) == 0 ? s : s.WithContext(path);
}

// A symlink ResolveArchivePath could not follow (its target is missing, or a loop): writing
// at its path would replace the link instead of making what it points to.
Status RefuseUnreachableLink(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0 || !S_ISLNK(st.st_mode) || ::stat(path.c_str(), &st) == 0) {
    return Status::Ok();
  }
  return ErrnoStatus(errno, path,
                     "a symbolic link whose target cannot be reached; create the target or "
                     "remove the link");
}

// What one call is asked to do, checked once.
// Where a writer says it waits for another one's lock.
const ArchiveLogFn& LockWait(const WriteOptions& options) {
  return options.lock_wait ? options.lock_wait : options.log;
}

struct Request {
  std::string path;  // the archive, symlinks resolved
  const std::vector<NewMember>* members = nullptr;
  const WriteOptions* options = nullptr;
};

Result<Request> Validate(const std::string& requested_path, const std::vector<NewMember>& members,
                         const WriteOptions& options) {
  if (options.compress_level < -1 || options.compress_level > 9) {
    return Status::Error(EINVAL, requested_path + ": compression level " +
                                     std::to_string(options.compress_level) +
                                     " is not -1 (stored) or 0..9");
  }
  Request r;
  r.members = &members;
  r.options = &options;
  r.path = ResolveArchivePath(requested_path);
  std::set<std::string> new_names;
  for (const NewMember& m : members) {
    if (m.name.empty() || m.name.size() > 0xFFFF) {
      return Status::Error(EINVAL, r.path + ": invalid member name \"" + m.name + "\"");
    }
    if (!new_names.insert(m.name).second && options.reject_existing_names) {
      return Status::Error(EINVAL, r.path + ": member " + m.name + " is given twice");
    }
  }
  return r;
}

// Copies the usable pre-deflated chunks of `p` into the open member; returns how many
// uncompressed bytes of the piece they cover (0 when they do not fit this write).
Result<uint64_t> CopyPredeflated(ZipWriter& writer, const MemberPiece& p,
                                 const WriteOptions& options, const std::string& what) {
  const PredeflatedChunks* d = p.predeflated.get();
  if (d == nullptr || d->chunks.empty() || options.compress_level < 0 ||
      d->level != options.compress_level || d->chunk_size != options.chunk_size ||
      d->chunks.size() * d->chunk_size > p.length) {
    return uint64_t{0};
  }
  for (const PredeflatedChunks::Chunk& c : d->chunks) {
    NPZ_RETURN_IF_ERROR(writer.AddDeflatedChunk(d->fd, c.offset, c.compressed_size, d->chunk_size,
                                                c.crc32, what + ": deflated chunks " + d->source));
  }
  return d->chunks.size() * d->chunk_size;
}

// The rest of a piece from `done` on: read and compressed (or copied).
Status CopyRest(ZipWriter& writer, const MemberPiece& p, uint64_t done, const std::string& name) {
  return writer.CopyFrom(p.fd, p.offset + done, p.length - done,
                         "member " + name + ": source " +
                             (p.source.empty() ? "fd " + std::to_string(p.fd) : p.source));
}

ZipMemberOptions MemberOptions(const NewMember& m, const WriteOptions& options) {
  ZipMemberOptions mo;
  mo.compress_level = options.compress_level;
  mo.crc32 = m.crc32;
  mo.size_hint = MemberSize(m);
  mo.chunk_size = options.chunk_size;
  mo.leading_chunk = m.leading_chunk;
  return mo;
}

// Writes the new members from the `first`-th on through `writer`. `step_failure` is set by
// the progress hook of an in-place append (a test-injected failure) and checked after each
// piece.
Status WriteMembers(ZipWriter& writer, const Request& r, const Status* step_failure,
                    size_t first = 0) {
  for (size_t i = first; i < r.members->size(); ++i) {
    const NewMember& m = (*r.members)[i];
    NPZ_RETURN_IF_ERROR(writer.BeginMember(m.name, MemberOptions(m, *r.options)));
    for (const MemberPiece& p : m.pieces) {
      if (p.fd >= 0) {
        NPZ_ASSIGN_OR_RETURN(const uint64_t done,
                             CopyPredeflated(writer, p, *r.options, "member " + m.name));
        NPZ_RETURN_IF_ERROR(CopyRest(writer, p, done, m.name));
      } else {
        NPZ_RETURN_IF_ERROR(writer.Write(p.bytes.data(), p.bytes.size()));
      }
      if (step_failure != nullptr) NPZ_RETURN_IF_ERROR(*step_failure);
    }
    NPZ_RETURN_IF_ERROR(writer.EndMember());
  }
  return Status::Ok();
}

// Progress over `total` bytes, reported to the caller's callback.
class Progress {
 public:
  Progress(const WriteOptions& options, uint64_t total) : options_(options), total_(total) {
    if (options_.progress) options_.progress(0, total_);
  }
  void Add(uint64_t n) {
    done_ += n;
    if (options_.progress) options_.progress(done_, total_);
  }
  uint64_t done() const { return done_; }

 private:
  const WriteOptions& options_;
  uint64_t total_;
  uint64_t done_ = 0;
};

uint64_t NewBytes(const Request& r) {
  uint64_t total = 0;
  for (const NewMember& m : *r.members) total += MemberSize(m);
  return total;
}

std::unique_ptr<ThreadPool> PoolFor(const WriteOptions& options) {
  if (options.compress_level < 0) return nullptr;
  return std::make_unique<ThreadPool>(options.threads);
}

// Builds the archive in a temp file and renames it over `r.path`: the copy mode, npz pack,
// and the creation of a new archive. `old_fd`/`old` describe the members to keep (none when
// old_fd < 0); `before_rename` may veto the rename.
Status BuildAndRename(const Request& r, int old_fd, const ZipDirectory& old,
                      const std::function<Status()>& before_rename) {
  AtomicFileOptions file_options;
  file_options.replace_existing = r.options->replace_existing;
  NPZ_ASSIGN_OR_RETURN(AtomicFile tmp, AtomicFile::Create(r.path, file_options));
  Progress progress(*r.options, old.cd_offset + NewBytes(r));
  auto on_bytes = [&progress](uint64_t n) {
    progress.Add(n);
    (void)AppendStepReached(AppendStep::kMemberData, progress.done());  // crash tests only
  };
  uint64_t start = 0;
  if (old_fd >= 0 && old.cd_offset > 0) {
    NPZ_RETURN_IF_ERROR(WithArchive(r.path, CopyFileRange(old_fd, 0, tmp.fd(), 0, old.cd_offset,
                                                          r.path, tmp.temp_path(), on_bytes)));
    start = old.cd_offset;
  }
  std::unique_ptr<ThreadPool> pool = PoolFor(*r.options);
  ZipWriter writer(tmp.fd(), tmp.temp_path(), start);
  writer.set_progress(on_bytes);
  writer.set_thread_pool(pool.get());
  NPZ_RETURN_IF_ERROR(WithArchive(r.path, WriteMembers(writer, r, nullptr)));
  NPZ_RETURN_IF_ERROR(
      WithArchive(r.path, writer.Finish(old.cd_bytes, old.entries.size(), old.comment)));
  return tmp.Commit(before_rename);
}

// Steps 4 of the protocol: new members, new directory, fsync.
Status WriteNewTail(const Request& r, int fd, const ZipDirectory& old, uint64_t old_size) {
  Progress progress(*r.options, NewBytes(r));
  Status injected;
  std::unique_ptr<ThreadPool> pool = PoolFor(*r.options);
  ZipWriter writer(fd, r.path, old.cd_offset);
  writer.set_progress([&](uint64_t n) {
    progress.Add(n);
    if (injected.ok()) injected = AppendStepReached(AppendStep::kMemberData, progress.done());
  });
  writer.set_thread_pool(pool.get());
  NPZ_RETURN_IF_ERROR(WriteMembers(writer, r, &injected));
  NPZ_RETURN_IF_ERROR(writer.Finish(old.cd_bytes, old.entries.size(), old.comment));
  NPZ_RETURN_IF_ERROR(AppendStepReached(AppendStep::kDirectoryWritten));
  if (writer.offset() < old_size && ::ftruncate(fd, static_cast<off_t>(writer.offset())) != 0) {
    return ErrnoStatus(errno, r.path, "cannot cut the old tail");
  }
  NPZ_RETURN_IF_ERROR(FsyncFd(fd, r.path));
  return AppendStepReached(AppendStep::kArchiveSynced);
}

// Steps 3 to 5 of the protocol, on the locked archive whose directory is `old`.
Status AppendInPlace(const Request& r, const ArchiveLock& lock, const ZipDirectory& old) {
  struct stat st;
  if (::fstat(lock.fd(), &st) != 0) return ErrnoStatus(errno, r.path, "cannot stat");
  AppendJournal journal;
  journal.device = static_cast<uint64_t>(st.st_dev);
  journal.inode = static_cast<uint64_t>(st.st_ino);
  journal.old_size = static_cast<uint64_t>(st.st_size);
  journal.old_cd_offset = old.cd_offset;
  journal.old_mtime_sec = static_cast<int64_t>(st.st_mtim.tv_sec);
  journal.old_mtime_nsec = static_cast<uint32_t>(st.st_mtim.tv_nsec);
  journal.old_entries = old.entries.size();
  for (const NewMember& m : *r.members) journal.new_names.push_back(m.name);
  NPZ_ASSIGN_OR_RETURN(journal.prefix_crc, JournalPrefixCrc(lock.fd(), old.cd_offset, r.path));
  journal.saved.resize(journal.old_size - journal.old_cd_offset);
  NPZ_RETURN_IF_ERROR(PreadExact(lock.fd(), journal.saved.data(), journal.saved.size(),
                                 journal.old_cd_offset, r.path));
  const std::string journal_path = AppendJournalPath(r.path);
  NPZ_RETURN_IF_ERROR(WithArchive(r.path, WriteAppendJournal(journal_path, journal)));

  Status wrote = WithArchive(r.path, WriteNewTail(r, lock.fd(), old, journal.old_size));
  if (!wrote.ok()) {
    Status undone = UndoAppend(lock.fd(), r.path, journal);
    if (undone.ok()) undone = RemoveAppendJournal(journal_path);
    if (!undone.ok()) {
      return Status::Error(wrote.code(), wrote.message() +
                                             "; undoing the partial append failed too (" +
                                             undone.message() + "); " + journal_path +
                                             " is kept and restores the archive at the next "
                                             "npz command, mount or npz recover");
    }
    return wrote;
  }
  Status removed = RemoveAppendJournal(journal_path);
  if (!removed.ok()) {
    return removed.WithContext(r.path +
                               ": members appended, but the journal could not be "
                               "removed durably (a later recovery may undo the append)");
  }
  // Old members keep their offsets: the sidecar index of the old archive stays valid for
  // them, and the caller carries it to the new fingerprint (Archive::CarryIndexForward).
  return Status::Ok();
}

Result<DirectoryLock> LockDirectoryToCreate(const std::string& path, const ArchiveLogFn& log) {
  auto lock = DirectoryLock::Acquire(DirName(path), log);
  if (!lock.ok()) return lock.status().WithContext(path + ": cannot create it");
  return lock;
}

// The leading chunk (at most 64 KiB) as one stored deflate block, not final (RFC 1951,
// 3.2.4): it starts and ends on a byte boundary, as every chunk does.
std::string StoredBlock(std::string_view bytes) {
  std::string b;
  b.push_back('\0');  // BFINAL 0, BTYPE 00, then padding to the byte boundary
  PutLe16(b, static_cast<uint16_t>(bytes.size()));
  PutLe16(b, static_cast<uint16_t>(~bytes.size()));
  b.append(bytes);
  return b;
}

// The first member's data piece when the archive can be made of the file holding its
// pre-deflated chunks (see the essay); nullptr otherwise.
const MemberPiece* AdoptablePiece(const Request& r) {
  if (r.options->compress_level < 0 || r.members->empty()) return nullptr;
  const NewMember& m = r.members->front();
  const size_t k = m.leading_chunk > 0 ? 1 : 0;  // pieces: [the leading chunk], the data
  if (m.pieces.size() != k + 1 || m.leading_chunk > zip::kMax16 ||
      (k == 1 && (m.pieces[0].fd >= 0 || m.pieces[0].bytes.size() != m.leading_chunk))) {
    return nullptr;
  }
  const MemberPiece& p = m.pieces[k];
  const PredeflatedChunks* d = p.predeflated.get();
  if (p.fd < 0 || d == nullptr || d->adoptable_path.empty() || d->chunks.empty() ||
      d->level != r.options->compress_level || d->chunk_size != r.options->chunk_size ||
      d->chunks.size() * d->chunk_size > p.length) {
    return nullptr;
  }
  // Room for the largest local header (ZIP64 extra and a padding field) and the block.
  const uint64_t room = zip::kLocalHeaderSize + m.name.size() + 2 * zip::kExtraHeaderSize + 16 +
                        (k == 1 ? 5 + m.leading_chunk : 0);
  if (room > d->first_chunk_offset) return nullptr;
  uint64_t at = d->first_chunk_offset;
  for (const PredeflatedChunks::Chunk& c : d->chunks) {
    if (c.offset != at) return nullptr;
    at += c.compressed_size;
  }
  return &p;
}

// Creates r.path from the file holding the first member's pre-deflated chunks: the local
// header and the leading chunk go before the chunks, the rest of the member, the other
// members and the directory after them, and the file is renamed into place. Returns false,
// having written nothing, when that file is not on the archive's filesystem.
Result<bool> CreateByAdoption(const Request& r, const MemberPiece& piece,
                              const std::function<Status()>& before_rename) {
  const PredeflatedChunks& d = *piece.predeflated;
  const NewMember& first = r.members->front();
  const std::string& path = d.adoptable_path;
  struct stat chunks_st, dir_st;
  if (::fstat(d.fd, &chunks_st) != 0 || ::stat(DirName(r.path).c_str(), &dir_st) != 0 ||
      chunks_st.st_dev != dir_st.st_dev || !S_ISREG(chunks_st.st_mode) || chunks_st.st_nlink != 1) {
    return false;
  }
  NPZ_ASSIGN_OR_RETURN(UniqueFd fd, OpenRegularFile(path, O_RDWR, 0));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0 || st.st_dev != chunks_st.st_dev ||
      st.st_ino != chunks_st.st_ino) {
    return false;  // the path no longer names the file whose chunks we have
  }

  Progress progress(*r.options, NewBytes(r));
  auto on_bytes = [&progress](uint64_t n) {
    progress.Add(n);
    (void)AppendStepReached(AppendStep::kMemberData, progress.done());  // crash tests only
  };
  std::unique_ptr<ThreadPool> pool = PoolFor(*r.options);
  ZipWriter writer(fd.get(), path, 0);
  writer.set_progress(on_bytes);
  writer.set_thread_pool(pool.get());
  writer.set_in_place_source(d.fd);

  const std::string block = first.leading_chunk > 0 ? StoredBlock(first.pieces[0].bytes) : "";
  ZipMemberOptions mo = MemberOptions(first, *r.options);
  mo.local_header_size = d.first_chunk_offset - block.size();
  NPZ_RETURN_IF_ERROR(PwriteAll(fd.get(), block.data(), block.size(), mo.local_header_size, path));
  NPZ_RETURN_IF_ERROR(writer.BeginMember(first.name, mo));
  if (!block.empty()) {
    NPZ_RETURN_IF_ERROR(writer.AddDeflatedChunk(
        d.fd, mo.local_header_size, static_cast<uint32_t>(block.size()), first.leading_chunk,
        Crc32(0, first.pieces[0].bytes.data(), first.pieces[0].bytes.size()), path));
  }
  NPZ_ASSIGN_OR_RETURN(const uint64_t done,
                       CopyPredeflated(writer, piece, *r.options, "member " + first.name));
  NPZ_RETURN_IF_ERROR(CopyRest(writer, piece, done, first.name));
  NPZ_RETURN_IF_ERROR(writer.EndMember());
  NPZ_RETURN_IF_ERROR(WriteMembers(writer, r, nullptr, /*first=*/1));
  NPZ_RETURN_IF_ERROR(writer.Finish("", 0, ""));
  if (::ftruncate(fd.get(), static_cast<off_t>(writer.offset())) != 0) {
    return ErrnoStatus(errno, path, "cannot cut the file to the archive's end");
  }
  if (::fchmod(fd.get(), 0666 & ~CurrentUmask()) != 0) return ErrnoStatus(errno, path, "fchmod");
  NPZ_RETURN_IF_ERROR(FsyncFd(fd.get(), path));
  NPZ_RETURN_IF_ERROR(AppendStepReached(AppendStep::kArchiveSynced));
  NPZ_RETURN_IF_ERROR(before_rename());
  int renamed = ::renameat2(AT_FDCWD, path.c_str(), AT_FDCWD, r.path.c_str(), RENAME_NOREPLACE);
  if (renamed != 0 && errno == EINVAL) {
    // A filesystem without RENAME_NOREPLACE: before_rename has just checked, under the
    // directory lock that every npzfs writer takes, that nothing is there.
    renamed = ::rename(path.c_str(), r.path.c_str());
  }
  if (renamed != 0) return ErrnoStatus(errno, r.path, "cannot rename " + path + " to it");
  Status synced = FsyncParentDir(r.path);
  if (!synced.ok()) {
    return synced.WithContext(r.path + ": written, but its directory could not be synced");
  }
  if (r.options->log) {
    r.options->log(r.path + ": member " + first.name + ": made of " + path +
                   " (its deflated chunks stay where they are, renamed into place)");
  }
  return true;
}

// Creates a missing archive under the directory lock. Sets *exists when another process
// created it first (the caller then appends to it).
Status CreateArchive(const Request& r, bool* exists) {
  NPZ_ASSIGN_OR_RETURN(DirectoryLock dir_lock, LockDirectoryToCreate(r.path, LockWait(*r.options)));
  NPZ_RETURN_IF_ERROR(RefuseUnreachableLink(r.path));
  struct stat st;
  if (::lstat(r.path.c_str(), &st) == 0) {
    *exists = true;
    return Status::Ok();
  }
  auto still_missing = [&]() -> Status {
    if (::lstat(r.path.c_str(), &st) == 0) {
      return Status::Error(EBUSY, r.path +
                                      ": created by another program while members were "
                                      "being added; nothing was written");
    }
    return Status::Ok();
  };
  if (const MemberPiece* piece = AdoptablePiece(r)) {
    Result<bool> adopted = CreateByAdoption(r, *piece, still_missing);
    if (!adopted.ok()) return WithArchive(r.path, adopted.status());
    if (*adopted) return Status::Ok();
  }
  return BuildAndRename(r, -1, ZipDirectory{}, still_missing);
}

// CRC-32 of a member's pieces (given, or read).
Result<uint32_t> MemberCrc(const NewMember& m) {
  if (m.crc32) return *m.crc32;
  uint32_t crc = 0;
  std::string buf;
  for (const MemberPiece& p : m.pieces) {
    if (p.fd < 0) {
      crc = Crc32(crc, p.bytes.data(), p.bytes.size());
      continue;
    }
    buf.resize(kCopyBuffer);
    for (uint64_t done = 0; done < p.length;) {
      const size_t want = static_cast<size_t>(std::min<uint64_t>(p.length - done, buf.size()));
      NPZ_RETURN_IF_ERROR(PreadExact(p.fd, buf.data(), want, p.offset + done, p.source));
      crc = Crc32(crc, buf.data(), want);
      done += want;
    }
  }
  return static_cast<uint32_t>(crc);
}

// The new members to write: without those the archive already holds identically (when
// options.skip_identical_existing), EEXIST for other names it already holds (when
// options.reject_existing_names).
Result<std::vector<NewMember>> MembersToWrite(const Request& r, const ZipDirectory& old) {
  std::vector<NewMember> out;
  for (const NewMember& m : *r.members) {
    const ZipEntry* existing = nullptr;
    for (const ZipEntry& e : old.entries) {
      if (e.name == m.name) existing = &e;  // the last one, as zipfile and numpy read it
    }
    if (existing != nullptr && r.options->skip_identical_existing &&
        existing->uncompressed_size == MemberSize(m)) {
      NPZ_ASSIGN_OR_RETURN(uint32_t crc, MemberCrc(m));
      if (crc == existing->crc32) {
        if (r.options->log) {
          r.options->log(r.path + ": member " + m.name +
                         " is already there with the same bytes; not added again");
        }
        continue;
      }
    }
    if (existing != nullptr && r.options->reject_existing_names) {
      return Status::Error(EEXIST, r.path + ": member " + m.name + " already exists");
    }
    out.push_back(m);
  }
  return out;
}

// Opens and locks an existing archive (recovering an interrupted append), reads its
// directory and checks the new names against it.
Status AddToExisting(const Request& request, const ArchiveLock& lock) {
  const std::string& path = request.path;
  NPZ_RETURN_IF_ERROR(RecoverAppendUnderLock(lock.fd(), path, request.options->log).status());
  struct stat st;
  if (::fstat(lock.fd(), &st) != 0) return ErrnoStatus(errno, path, "cannot stat");
  if (!S_ISREG(st.st_mode)) return Status::Error(EINVAL, path + ": not a regular file");
  ZipDirectory old;
  // An empty file (from touch or mktemp) holds no members: treat it as a new archive.
  if (st.st_size > 0) {
    NPZ_ASSIGN_OR_RETURN(old, ReadZipDirectory(lock.fd(), path));
  }
  if (request.options->check_existing) NPZ_RETURN_IF_ERROR(request.options->check_existing(old));
  NPZ_ASSIGN_OR_RETURN(const std::vector<NewMember> members, MembersToWrite(request, old));
  if (members.empty()) return Status::Ok();  // nothing to add: leave the file alone
  Request r = request;
  r.members = &members;
  if (r.options->append_mode == WriteOptions::AppendMode::kInPlace) {
    // The journal is found through this name only, and holds one central directory and the
    // new names.
    std::vector<std::string> names;
    for (const NewMember& m : members) names.push_back(m.name);
    std::string why;
    if (st.st_nlink > 1) {
      why = "it has " + std::to_string(st.st_nlink) + " hard links";
    } else if (static_cast<uint64_t>(st.st_size) - old.cd_offset > kMaxJournalSavedBytes) {
      why = "more than 1 GiB follows its central directory's start";
    } else if (JournalNamesBytes(names) > kMaxJournalNamesBytes) {
      why = "the new members' names take more than 1 GiB";
    }
    if (why.empty()) return AppendInPlace(r, lock, old);
    if (r.options->log) {
      r.options->log(path + ": members added by copy and rename, not in place: " + why);
    }
  }
  return BuildAndRename(r, lock.fd(), old, [&]() -> Status {
    struct stat now;
    if (::stat(r.path.c_str(), &now) != 0 || !SameFile(now, st)) {
      return Status::Error(EBUSY, r.path +
                                      ": the archive was changed or replaced while members "
                                      "were being added; nothing was written");
    }
    return Status::Ok();
  });
}

Result<ArchiveLock> LockForWriting(const std::string& path, WriteOptions::AppendMode mode,
                                   const ArchiveLogFn& log) {
  auto lock = ArchiveLock::Acquire(path, O_RDWR, log);
  // A read-only file can still be replaced by a copy (the directory decides).
  if (!lock.ok() && mode == WriteOptions::AppendMode::kCopy &&
      (lock.status().code() == EACCES || lock.status().code() == EROFS)) {
    return ArchiveLock::Acquire(path, O_RDONLY, log);
  }
  return lock;
}

}  // namespace

Status AppendToArchive(const std::string& archive_path, const std::vector<NewMember>& members,
                       const WriteOptions& options) {
  NPZ_ASSIGN_OR_RETURN(Request r, Validate(archive_path, members, options));
  while (true) {
    auto lock = LockForWriting(r.path, options.append_mode, LockWait(options));
    if (lock.ok()) return AddToExisting(r, *lock);
    if (lock.status().code() != ENOENT) return lock.status();
    bool exists = false;
    NPZ_RETURN_IF_ERROR(CreateArchive(r, &exists));
    if (!exists) return Status::Ok();
  }
}

Status CheckCanAppend(const std::string& archive_path, WriteOptions::AppendMode mode) {
  const std::string path = ResolveArchivePath(archive_path);
  const std::string dir = DirName(path);
  if (::access(dir.c_str(), W_OK) != 0) {
    return ErrnoStatus(errno, path,
                       "its directory " + dir + " is not writable, and adding members needs it");
  }
  if (mode == WriteOptions::AppendMode::kInPlace && ::access(path.c_str(), W_OK) != 0 &&
      errno != ENOENT) {
    return ErrnoStatus(errno, path, "not writable, and adding members in place needs it");
  }
  return Status::Ok();
}

Status WriteArchive(const std::string& out_path, const std::vector<NewMember>& members,
                    const WriteOptions& options) {
  NPZ_ASSIGN_OR_RETURN(Request r, Validate(out_path, members, options));
  auto lock = LockForWriting(r.path, WriteOptions::AppendMode::kCopy, LockWait(options));
  if (lock.ok() && !options.replace_existing) {
    return Status::Error(EEXIST, r.path + ": exists (it was created meanwhile)");
  }
  if (lock.ok()) {
    // A journal applies to the file being replaced: settle it so it never meets the new one.
    NPZ_RETURN_IF_ERROR(RecoverAppendUnderLock(lock->fd(), r.path, options.log).status());
    return BuildAndRename(r, -1, ZipDirectory{}, {});
  }
  if (lock.status().code() != ENOENT) return lock.status();
  NPZ_ASSIGN_OR_RETURN(DirectoryLock dir_lock, LockDirectoryToCreate(r.path, LockWait(options)));
  NPZ_RETURN_IF_ERROR(RefuseUnreachableLink(r.path));
  return BuildAndRename(r, -1, ZipDirectory{}, {});
}

Result<bool> RecoverInterruptedAppend(const std::string& requested_path, const ArchiveLogFn& log) {
  const std::string archive_path = ResolveArchivePath(requested_path);
  const std::string journal_path = AppendJournalPath(archive_path);
  struct stat st;
  if (::stat(journal_path.c_str(), &st) != 0) {
    if (errno == ENOENT) return false;  // the common case: no lock, no cost
    return ErrnoStatus(errno, journal_path, "cannot stat");
  }
  auto lock = ArchiveLock::Acquire(archive_path, O_RDWR, log);
  if (!lock.ok()) {
    if (lock.status().code() == ENOENT) {
      return Status::Error(ENOENT, archive_path + ": missing, but its append journal " +
                                       journal_path + " is there (left alone)");
    }
    Status failed = lock.status().WithContext("cannot restore after an interrupted append");
    if (failed.code() == EROFS || failed.code() == EACCES) {
      return Status::Error(failed.code(), failed.message() + " (copy it and its journal " +
                                              journal_path +
                                              " to a writable directory, and run 'npz "
                                              "recover' on the copy there)");
    }
    return failed;
  }
  return RecoverAppendUnderLock(lock->fd(), archive_path, log);
}

}  // namespace npzfs

namespace npzfs {

std::string ResolveArchivePath(const std::string& path) {
  struct stat lst;
  if (::lstat(path.c_str(), &lst) == 0 && S_ISLNK(lst.st_mode)) {
    char resolved[PATH_MAX];
    if (::realpath(path.c_str(), resolved) != nullptr) return resolved;
  }
  return path;
}

Result<size_t> RemoveStaleTempFiles(const std::string& requested_path, const ArchiveLogFn& log) {
  const std::string archive_path = ResolveArchivePath(requested_path);
  const std::string dir = DirName(archive_path);
  // With the directory's lock and the archive's, no npzfs writer of this archive is running:
  // every temp file of it is a leftover.
  NPZ_ASSIGN_OR_RETURN(DirectoryLock dir_lock, DirectoryLock::Acquire(dir, log));
  auto archive_lock = ArchiveLock::Acquire(archive_path, O_RDONLY, log);
  if (!archive_lock.ok() && archive_lock.status().code() != ENOENT) return archive_lock.status();
  const std::string prefix = TempFilePrefix(archive_path);
  std::vector<std::string> stale;
  {
    std::unique_ptr<DIR, int (*)(DIR*)> d(::opendir(dir.c_str()), ::closedir);
    if (!d) return ErrnoStatus(errno, dir, "cannot list the directory");
    while (const dirent* e = ::readdir(d.get())) {
      if (std::string_view(e->d_name).substr(0, prefix.size()) == prefix) {
        stale.emplace_back(e->d_name);
      }
    }
  }
  size_t removed = 0;
  for (const std::string& name : stale) {
    const std::string path = dir + "/" + name;
    struct stat st;
    if (::lstat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    if (::unlink(path.c_str()) != 0) {
      return ErrnoStatus(errno, path, "cannot remove a stale temp file");
    }
    ++removed;
    if (log) {
      // Also how an interrupted npz pack (or copy-mode append) removes its own temp file.
      log(path + ": removed the temp file (" + std::to_string(st.st_size) +
          " bytes) of an unfinished copy of " + archive_path +
          " (npz pack, or an append with --copy or -o finalize=copy)");
    }
  }
  if (removed > 0) NPZ_RETURN_IF_ERROR(FsyncDir(dir));
  return removed;
}

}  // namespace npzfs
