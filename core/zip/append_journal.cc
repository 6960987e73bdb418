#include "core/zip/append_journal.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <csignal>
#include <cstdlib>
#include <cstring>

#include "core/base/byte_codec.h"
#include "core/base/crc32.h"
#include "core/base/names.h"
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

std::string EncodeAppendJournal(const AppendJournal& j) {
  std::string out;
  out.reserve(kAppendJournalHeaderSize + j.saved.size() + 4);
  out += kAppendJournalMagic;
  PutLe32(out, kAppendJournalVersion);
  PutLe32(out, j.prefix_crc);
  PutLe64(out, j.device);
  PutLe64(out, j.inode);
  PutLe64(out, j.old_size);
  PutLe64(out, j.old_cd_offset);
  PutLe64(out, static_cast<uint64_t>(j.old_mtime_sec));
  PutLe32(out, j.old_mtime_nsec);
  PutLe32(out, static_cast<uint32_t>(j.first_name.size()));
  PutLe64(out, j.saved.size());
  out += j.first_name;
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
  if (j.version != 1 && j.version != kAppendJournalVersion) {
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
  } else {
    j.prefix_crc = word;
    whole = r.U64(&j.device) && r.U64(&j.inode) && r.U64(&j.old_size) && r.U64(&j.old_cd_offset) &&
            r.U64(&mtime) && r.U32(&j.old_mtime_nsec) && r.U32(&name_length);
    j.old_mtime_sec = static_cast<int64_t>(mtime);
  }
  if (!whole || !r.U64(&saved_length)) return Invalid(path, "truncated header");
  if (reserved != 0 || j.old_mtime_nsec >= 1000000000 || name_length > zip::kMax16) {
    return Invalid(path, "reserved field, mtime or name length out of range");
  }
  if (!r.Bytes(name_length, &j.first_name)) return Invalid(path, "truncated name");
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
  return name != j.first_name;
}

}  // namespace

Result<bool> RecoverAppendUnderLock(int fd, const std::string& archive_path,
                                    const std::function<void(const std::string&)>& log) {
  const std::string journal_path = AppendJournalPath(archive_path);
  auto opened = OpenFile(journal_path, O_RDONLY);
  if (!opened.ok()) {
    if (opened.status().code() == ENOENT) return false;
    return opened.status();
  }
  NPZ_ASSIGN_OR_RETURN(uint64_t size, FileSize(opened->get(), journal_path));
  if (size > kMaxJournalSavedBytes + kAppendJournalHeaderSize + 4) {
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
  if (same && journal->version >= 2) {
    NPZ_ASSIGN_OR_RETURN(const uint32_t prefix_crc,
                         JournalPrefixCrc(fd, journal->old_cd_offset, archive_path));
    same = static_cast<uint64_t>(st.st_dev) == journal->device &&
           prefix_crc == journal->prefix_crc &&
           !ForeignMemberAt(fd, archive_path, static_cast<uint64_t>(st.st_size), *journal);
  }
  if (!same) {
    const std::string aside = journal_path + ".stale";
    if (::rename(journal_path.c_str(), aside.c_str()) != 0) {
      return ErrnoStatus(errno, journal_path, "cannot set aside a journal of another file");
    }
    if (log) {
      log(journal_path + ": belongs to an earlier file at " + archive_path +
          " (replaced or rewritten since); moved to " + aside + ", the archive was left alone");
    }
    return false;
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
