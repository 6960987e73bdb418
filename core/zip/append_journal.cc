#include "core/zip/append_journal.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <ctime>

#include "core/base/byte_codec.h"
#include "core/base/crc32.h"
#include "core/base/names.h"
#include "core/zip/file_copy.h"
#include "core/zip/zip_format.h"
#include "npzfs/file_util.h"
#include "npzfs/zip_directory.h"

namespace npzfs {
namespace {

thread_local std::optional<AppendStep> g_failing_step;

static_assert(kMaxJournalSavedBytes == kMaxCentralDirectorySize + (uint64_t{1} << 20),
              "a journal saves one central directory and its end records");

const char* StepName(AppendStep step) {
  switch (step) {
    case AppendStep::kJournalWrite:
      return "journal-write";
    case AppendStep::kJournalDurable:
      return "journal-durable";
    case AppendStep::kMemberData:
      return "member-data";
    case AppendStep::kDirectoryWritten:
      return "directory-written";
    case AppendStep::kArchiveSynced:
      return "archive-synced";
    case AppendStep::kJournalRemoved:
      return "journal-removed";
    case AppendStep::kRecoverRestored:
      return "recover-restored";
  }
  return "?";
}

uint32_t Crc32Of(std::string_view bytes) {
  return static_cast<uint32_t>(
      ::crc32_z(0, reinterpret_cast<const Bytef*>(bytes.data()), bytes.size()));
}

Status Invalid(const std::string& path, const std::string& cause) {
  return Status::Error(EINVAL, path + ": not a valid append journal: " + cause);
}

}  // namespace

Status AppendStepReached(AppendStep step, uint64_t bytes) {
  if (g_failing_step == step) {
    return Status::Error(EIO,
                         std::string("injected failure at step ") + StepName(step) + " (test)");
  }
  const char* const kill_at = std::getenv("NPZFS_TEST_KILL_AT");  // read each time: fork tests
  if (kill_at == nullptr) return Status::Ok();
  const std::string want(kill_at);
  const std::string name = StepName(step);
  if (want == name) ::raise(SIGKILL);
  if (step == AppendStep::kMemberData && want.rfind(name + ":", 0) == 0 &&
      bytes >= std::strtoull(want.c_str() + name.size() + 1, nullptr, 10)) {
    ::raise(SIGKILL);
  }
  return Status::Ok();
}

void FailAppendStepForTesting(std::optional<AppendStep> step) { g_failing_step = step; }

std::string AppendJournalPath(const std::string& archive_path) {
  return DirName(archive_path) + "/" + SideFileName(archive_path, ".npzfs-journal");
}

uint64_t JournalNamesBytes(const std::vector<std::string>& names) {
  uint64_t n = 0;
  for (const std::string& name : names) n += 2 + name.size();
  return n;
}

std::string EncodeAppendJournal(const AppendJournal& j) {
  const uint64_t names_length = JournalNamesBytes(j.new_names);
  std::string out;
  out.reserve(kAppendJournalHeaderSize + names_length + j.saved.size() + 4);
  out += kAppendJournalMagic;
  PutLe32(out, kAppendJournalVersion);
  PutLe32(out, j.prefix_crc);
  PutLe64(out, j.device);
  PutLe64(out, j.inode);
  PutLe64(out, j.old_size);
  PutLe64(out, j.old_cd_offset);
  PutLe64(out, static_cast<uint64_t>(j.old_mtime_sec));
  PutLe32(out, j.old_mtime_nsec);
  PutLe32(out, static_cast<uint32_t>(names_length));
  PutLe64(out, j.saved.size());
  PutLe64(out, j.old_entries);
  for (const std::string& name : j.new_names) {
    PutLe16(out, static_cast<uint16_t>(name.size()));
    out += name;
  }
  out += j.saved;
  PutLe32(out, Crc32Of(out));
  return out;
}

Result<AppendJournal> DecodeAppendJournal(std::string_view bytes, const std::string& path) {
  ByteReader r(bytes);
  std::string magic;
  uint32_t word = 0, reserved = 0, name_length = 0;
  uint64_t mtime = 0, saved_length = 0;
  AppendJournal j;
  if (!r.Bytes(kAppendJournalMagic.size(), &magic) || magic != kAppendJournalMagic) {
    return Invalid(path, "bad magic");
  }
  if (!r.U32(&j.version) || !r.U32(&word)) return Invalid(path, "truncated header");
  if (j.version < 1 || j.version > kAppendJournalVersion) {
    return Invalid(path, "unsupported version " + std::to_string(j.version));
  }
  bool whole = true;
  if (j.version == 1) {  // reserved, inode, old_size, old_cd_offset, old_mtime_ns
    reserved = word;
    whole = r.U64(&j.inode) && r.U64(&j.old_size) && r.U64(&j.old_cd_offset) && r.U64(&mtime);
    // Floor division: a negative remainder would be an invalid tv_nsec for futimens.
    const int64_t ns = static_cast<int64_t>(mtime);
    j.old_mtime_sec = ns / 1000000000 - (ns % 1000000000 < 0 ? 1 : 0);
    j.old_mtime_nsec = static_cast<uint32_t>(ns - j.old_mtime_sec * 1000000000);
  } else {  // versions 2 and 3 share the fields up to saved_length
    j.prefix_crc = word;
    whole = r.U64(&j.device) && r.U64(&j.inode) && r.U64(&j.old_size) && r.U64(&j.old_cd_offset) &&
            r.U64(&mtime) && r.U32(&j.old_mtime_nsec) && r.U32(&name_length);
    j.old_mtime_sec = static_cast<int64_t>(mtime);
  }
  if (!whole || !r.U64(&saved_length) || (j.version >= 3 && !r.U64(&j.old_entries))) {
    return Invalid(path, "truncated header");
  }
  const uint64_t name_limit = j.version >= 3 ? kMaxJournalNamesBytes : zip::kMax16;
  if (reserved != 0 || j.old_mtime_nsec >= 1000000000 || name_length > name_limit) {
    return Invalid(path, "reserved field, mtime or name length out of range");
  }
  std::string names;
  if (!r.Bytes(name_length, &names)) return Invalid(path, "truncated name");
  if (j.version == 2) {
    j.new_names.push_back(std::move(names));
  } else if (j.version >= 3) {
    ByteReader nr(names);
    uint16_t n = 0;
    while (nr.remaining() > 0) {
      std::string& name = j.new_names.emplace_back();
      if (!nr.U16(&n) || !nr.Bytes(n, &name)) return Invalid(path, "a name runs past the names");
    }
    if (j.new_names.empty()) return Invalid(path, "no new member names");
  }
  if (saved_length != r.remaining() - std::min<size_t>(r.remaining(), 4) ||
      !r.Bytes(saved_length, &j.saved)) {
    return Invalid(path, "truncated or overlong saved region");
  }
  uint32_t crc = 0;
  if (!r.U32(&crc) || r.remaining() != 0) return Invalid(path, "truncated trailer");
  if (crc != Crc32Of(bytes.substr(0, bytes.size() - 4))) return Invalid(path, "CRC-32 mismatch");
  if (j.old_cd_offset > j.old_size || j.old_size - j.old_cd_offset != saved_length) {
    return Invalid(path, "saved region does not match the old size");
  }
  return j;
}

Result<uint32_t> JournalPrefixCrc(int fd, uint64_t cd_offset, const std::string& path) {
  const size_t n = static_cast<size_t>(std::min(cd_offset, kJournalPrefixSample));
  std::string buf(n, '\0');
  NPZ_RETURN_IF_ERROR(PreadExact(fd, buf.data(), n, 0, path));
  uint32_t crc = Crc32(0, buf.data(), n);
  NPZ_RETURN_IF_ERROR(PreadExact(fd, buf.data(), n, cd_offset - n, path));
  return Crc32(crc, buf.data(), n);
}

Status WriteAppendJournal(const std::string& journal_path, const AppendJournal& journal) {
  const std::string bytes = EncodeAppendJournal(journal);
  NPZ_ASSIGN_OR_RETURN(UniqueFd fd, OpenFile(journal_path, O_WRONLY | O_CREAT | O_EXCL, 0600));
  auto write_all = [&]() -> Status {
    const size_t half = bytes.size() / 2;
    NPZ_RETURN_IF_ERROR(PwriteAll(fd.get(), bytes.data(), half, 0, journal_path));
    NPZ_RETURN_IF_ERROR(AppendStepReached(AppendStep::kJournalWrite));
    NPZ_RETURN_IF_ERROR(
        PwriteAll(fd.get(), bytes.data() + half, bytes.size() - half, half, journal_path));
    NPZ_RETURN_IF_ERROR(FsyncFd(fd.get(), journal_path));
    NPZ_RETURN_IF_ERROR(FsyncParentDir(journal_path));
    return AppendStepReached(AppendStep::kJournalDurable);
  };
  Status st = write_all();
  if (!st.ok()) ::unlink(journal_path.c_str());  // never synced: the archive is untouched
  return st;
}

Status UndoAppend(int fd, const std::string& archive_path, const AppendJournal& journal) {
  // Truncating first frees the appended bytes (ENOSPC cannot stop the rest); the saved
  // region lies below the old size, in blocks the file held before the append.
  if (::ftruncate(fd, static_cast<off_t>(journal.old_size)) != 0) {
    return ErrnoStatus(errno, archive_path, "cannot truncate back to its old size");
  }
  NPZ_RETURN_IF_ERROR(PwriteAll(fd, journal.saved.data(), journal.saved.size(),
                                journal.old_cd_offset, archive_path));
  struct timespec times[2];
  times[0].tv_nsec = UTIME_OMIT;
  times[1].tv_sec = static_cast<time_t>(journal.old_mtime_sec);
  times[1].tv_nsec = static_cast<long>(journal.old_mtime_nsec);
  if (::futimens(fd, times) != 0) {
    return ErrnoStatus(errno, archive_path, "cannot restore its modification time");
  }
  return FsyncFd(fd, archive_path);
}

Status RemoveAppendJournal(const std::string& journal_path) {
  if (::unlink(journal_path.c_str()) != 0 && errno != ENOENT) {
    return ErrnoStatus(errno, journal_path, "cannot remove the append journal");
  }
  NPZ_RETURN_IF_ERROR(AppendStepReached(AppendStep::kJournalRemoved));
  return FsyncParentDir(journal_path);
}

namespace {

// A journal that does not decode: the append died before the journal was durable.
Result<bool> DropIncompleteJournal(int fd, const std::string& archive_path,
                                   const std::string& journal_path, const Status& why,
                                   const std::function<void(const std::string&)>& log) {
  auto dir = ReadZipDirectory(fd, archive_path);
  if (!dir.ok()) {
    return Status::Error(EIO, archive_path + ": damaged (" + dir.status().message() +
                                  "), and its append journal cannot be used (" + why.message() +
                                  "); both are kept for inspection");
  }
  NPZ_RETURN_IF_ERROR(RemoveAppendJournal(journal_path));
  if (log) {
    log(journal_path + ": removed an incomplete append journal (the append never touched " +
        archive_path + "): " + why.message());
  }
  return false;
}

// Whether the file holds, at old_cd_offset, a complete local header of a member other than
// the one the append began with: another program extended the archive there.
bool ForeignMemberAt(int fd, const std::string& path, uint64_t size, const AppendJournal& j) {
  const uint64_t at = j.old_cd_offset;
  std::string head(zip::kLocalHeaderSize, '\0');
  if (size < at + head.size() || !PreadExact(fd, head.data(), head.size(), at, path).ok()) {
    return false;  // a header not (fully) written: the append's
  }
  ByteReader r(head);
  uint32_t signature = 0;
  uint16_t name_length = 0;
  if (!r.U32(&signature) || signature != zip::kLocalHeaderSig || !r.Skip(22) ||
      !r.U16(&name_length)) {
    return false;  // the old directory, or a torn header: the append's
  }
  std::string name(name_length, '\0');
  if (size < at + head.size() + name_length ||
      !PreadExact(fd, name.data(), name.size(), at + head.size(), path).ok()) {
    return false;
  }
  return j.new_names.empty() || name != j.new_names.front();
}

// Where the end records after the directory `d` end when they are laid out as
// ZipWriter::Finish writes them (a ZIP64 end record and locator if needed, the end record,
// the comment); nullopt when they are not.
Result<std::optional<uint64_t>> EndOfEndRecords(int fd, const std::string& path, uint64_t size,
                                                const ZipDirectory& d) {
  uint64_t at = d.cd_offset + d.cd_size;
  char signature[4];
  if (size < at + sizeof signature) return std::optional<uint64_t>();
  NPZ_RETURN_IF_ERROR(PreadExact(fd, signature, sizeof signature, at, path));
  if (GetLe32(signature) == zip::kZip64EndSig) {
    at += zip::kZip64EndSize + zip::kZip64LocatorSize;
    if (size < at + sizeof signature) return std::optional<uint64_t>();
    NPZ_RETURN_IF_ERROR(PreadExact(fd, signature, sizeof signature, at, path));
  }
  if (GetLe32(signature) != zip::kEndSig) return std::optional<uint64_t>();
  return std::optional<uint64_t>(at + zip::kEndSize + d.comment.size());
}

// Why the archive open at `fd` (`size` bytes, the file the journal `j` was written for, whose
// directory now reads as `now`) is not in a state that j's own append could have left, or ""
// if it is (version 3; the rule is at the top of append_journal.h). A directory that does not
// read is the append's: it died while writing.
Result<std::string> ForeignChangeSince(int fd, const std::string& path, uint64_t size,
                                       const AppendJournal& j, const Result<ZipDirectory>& now) {
  if (!now.ok()) return std::string();
  const ZipDirectory& d = *now;
  if (d.cd_offset == j.old_cd_offset && d.entries.size() == j.old_entries) {
    return std::string();  // the old directory: the append had not begun
  }
  const uint64_t expected = j.old_entries + j.new_names.size();
  if (d.entries.size() != expected) {
    return "its directory holds " + std::to_string(d.entries.size()) +
           " members, the interrupted append would have left " + std::to_string(expected);
  }
  for (size_t i = 0; i < j.new_names.size(); ++i) {
    const ZipEntry& e = d.entries[j.old_entries + i];
    if (e.name != j.new_names[i]) {
      return "its directory holds member " + e.name + " where the interrupted append wrote " +
             j.new_names[i];
    }
  }
  if (d.entries[j.old_entries].local_header_offset != j.old_cd_offset) {
    return std::string("the first member the interrupted append wrote is not where it wrote it");
  }
  NPZ_ASSIGN_OR_RETURN(const std::optional<uint64_t> end, EndOfEndRecords(fd, path, size, d));
  if (!end) return std::string("its end records are not where the interrupted append wrote them");
  if (*end == size) return std::string();
  // Killed before it cut the old tail ("directory-written"): what follows its end records is
  // what was there before, up to the old size.
  bool old_tail = size == j.old_size && *end > j.old_cd_offset && *end < size;
  if (old_tail) {
    std::string tail(size - *end, '\0');
    NPZ_RETURN_IF_ERROR(PreadExact(fd, tail.data(), tail.size(), *end, path));
    old_tail = std::string_view(j.saved).substr(*end - j.old_cd_offset) == tail;
  }
  if (old_tail) return std::string();
  return std::to_string(size - *end) + " bytes follow its end records that the interrupted " +
         "append did not leave there";
}

// Whether the archive's directory lists none of the old members: not a later append to the
// archive, but a new zip that another program wrote onto the file the append broke
// (zipfile's "a" mode starts a new zip at the end of a file that is not a zip). Setting the
// journal aside would leave the old members unlisted; undoing the append cuts that zip off.
bool NewZipOverBrokenAppend(const ZipDirectory& now, const AppendJournal& j) {
  return !now.entries.empty() &&
         std::all_of(now.entries.begin(), now.entries.end(),
                     [&](const ZipEntry& e) { return e.local_header_offset >= j.old_cd_offset; });
}

// Copies the bytes an undo cuts or overwrites, [old_cd_offset, size), into a new file
// "<journal>.cut-<seconds>" beside the archive (fsynced): what another program wrote there
// is kept for its owner. Returns the file's path.
Result<std::string> KeepCutBytes(int fd, const std::string& archive_path,
                                 const std::string& journal_path, uint64_t size,
                                 const AppendJournal& j) {
  const std::string kept = journal_path + ".cut-" + std::to_string(::time(nullptr));
  NPZ_ASSIGN_OR_RETURN(UniqueFd out, OpenFile(kept, O_WRONLY | O_CREAT | O_EXCL, 0600));
  NPZ_RETURN_IF_ERROR(
      CopyFileRange(fd, j.old_cd_offset, out.get(), 0, size - j.old_cd_offset, archive_path, kept));
  NPZ_RETURN_IF_ERROR(FsyncFd(out.get(), kept));
  NPZ_RETURN_IF_ERROR(FsyncParentDir(kept));
  return kept;
}

// Renames the journal to "<journal>.stale" and logs why it was not applied.
Status SetJournalAside(const std::string& journal_path, const std::string& what,
                       const std::function<void(const std::string&)>& log) {
  const std::string aside = journal_path + ".stale";
  if (::rename(journal_path.c_str(), aside.c_str()) != 0) {
    return ErrnoStatus(errno, journal_path, "cannot set aside a journal of another file");
  }
  if (log) log(journal_path + ": " + what + "; moved to " + aside + ", the archive was left alone");
  return Status::Ok();
}

}  // namespace

Result<bool> RecoverAppendUnderLock(int fd, const std::string& archive_path,
                                    const std::function<void(const std::string&)>& log) {
  const std::string journal_path = AppendJournalPath(archive_path);
  auto opened = OpenRegularFile(journal_path, O_RDONLY);
  if (!opened.ok()) {
    if (opened.status().code() == ENOENT) return false;
    return opened.status();
  }
  NPZ_ASSIGN_OR_RETURN(uint64_t size, FileSize(opened->get(), journal_path));
  if (size > kAppendJournalHeaderSize + kMaxJournalNamesBytes + kMaxJournalSavedBytes + 4) {
    return DropIncompleteJournal(fd, archive_path, journal_path, Invalid(journal_path, "too large"),
                                 log);
  }
  std::string bytes(size, '\0');
  NPZ_RETURN_IF_ERROR(PreadExact(opened->get(), bytes.data(), bytes.size(), 0, journal_path));
  auto journal = DecodeAppendJournal(bytes, journal_path);
  if (!journal.ok()) {
    return DropIncompleteJournal(fd, archive_path, journal_path, journal.status(), log);
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) return ErrnoStatus(errno, archive_path, "cannot stat");
  bool same = static_cast<uint64_t>(st.st_ino) == journal->inode &&
              static_cast<uint64_t>(st.st_size) >= journal->old_cd_offset;
  // Whether the bytes the append never writes are those the journal saw (read at most once).
  std::optional<uint32_t> prefix_crc;
  auto prefix_matches = [&]() -> Result<bool> {
    if (!prefix_crc) {
      NPZ_ASSIGN_OR_RETURN(prefix_crc, JournalPrefixCrc(fd, journal->old_cd_offset, archive_path));
    }
    return *prefix_crc == journal->prefix_crc;
  };
  if (journal->version >= 3 && !same &&
      static_cast<uint64_t>(st.st_size) >= journal->old_cd_offset &&
      !ReadZipDirectory(fd, archive_path).ok()) {
    // Another file, but not a zip as it is: a copy of the archive taken during the append
    // (a backup, a restored snapshot) along with its journal. If the bytes the append never
    // touches are the same, the journal is the only way back to a readable archive.
    NPZ_ASSIGN_OR_RETURN(const bool copy, prefix_matches());
    if (copy) {
      if (log) {
        log(journal_path + ": written for another file (device " + std::to_string(journal->device) +
            ", inode " + std::to_string(journal->inode) + "), but " + archive_path +
            " is a copy of it that an interrupted append left unreadable: applying it");
      }
      journal->device = static_cast<uint64_t>(st.st_dev);
      journal->inode = static_cast<uint64_t>(st.st_ino);
      same = true;
    }
  }
  if (same && journal->version >= 2) {
    NPZ_ASSIGN_OR_RETURN(const bool intact, prefix_matches());
    same = static_cast<uint64_t>(st.st_dev) == journal->device && intact;
    if (same && ForeignMemberAt(fd, archive_path, static_cast<uint64_t>(st.st_size), *journal)) {
      NPZ_RETURN_IF_ERROR(SetJournalAside(
          journal_path,
          "not applied: " + archive_path +
              " holds a member another program wrote where the interrupted append was to "
              "begin (it appended to the archive, or rewrote it, since); undoing would cut "
              "off what it wrote",
          log));
      return false;
    }
  }
  if (!same) {
    NPZ_RETURN_IF_ERROR(SetJournalAside(
        journal_path,
        "belongs to an earlier file at " + archive_path + " (replaced or rewritten since)", log));
    return false;
  }
  if (journal->version >= 3) {
    const Result<ZipDirectory> now = ReadZipDirectory(fd, archive_path);
    NPZ_ASSIGN_OR_RETURN(
        const std::string foreign,
        ForeignChangeSince(fd, archive_path, static_cast<uint64_t>(st.st_size), *journal, now));
    // A foreign change has a directory that reads.
    if (!foreign.empty() && NewZipOverBrokenAppend(*now, *journal)) {
      NPZ_ASSIGN_OR_RETURN(const std::string kept,
                           KeepCutBytes(fd, archive_path, journal_path,
                                        static_cast<uint64_t>(st.st_size), *journal));
      if (log) {
        log(archive_path + ": another program wrote a new zip onto it after an interrupted " +
            "append (" + foreign + "), and its directory lists none of the old members; " +
            "the old archive is restored, and the bytes after its old members, that zip " +
            "among them, are kept in " + kept);
      }
    } else if (!foreign.empty()) {
      const std::string what = "not applied: " + archive_path +
                               " was appended to by another program after the interrupted " +
                               "append (" + foreign +
                               "); undoing it would cut off what that program wrote";
      NPZ_RETURN_IF_ERROR(SetJournalAside(journal_path, what, log));
      return false;
    }
  }
  NPZ_RETURN_IF_ERROR(UndoAppend(fd, archive_path, *journal));
  NPZ_RETURN_IF_ERROR(AppendStepReached(AppendStep::kRecoverRestored));
  NPZ_RETURN_IF_ERROR(RemoveAppendJournal(journal_path));
  if (log) {
    log(archive_path + ": restored to its state before an interrupted append (" +
        std::to_string(journal->old_size) + " bytes, " + std::to_string(journal->saved.size()) +
        " bytes of central directory put back)");
  }
  return true;
}

}  // namespace npzfs
