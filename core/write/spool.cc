// The spool directory: one spool file per new member, resumed after a crash, turned into
// archive members by one atomic AppendToArchive at finalize.
//
// Finalize order is what makes it safe: (1) snapshot every member (header with the final
// count + a file range of its complete frames, and the chunks the background deflater has
// done); (2) AppendToArchive adds them in place under its undo journal (or by copy and
// rename) and returns once the archive is durable; (3) only then are the spool files
// unlinked and the directory removed. A crash or error before (2) completes leaves the old
// archive (recovered from the journal) and the whole spool; a crash during (3) leaves a
// durable archive plus leftovers, and the next finalize finds those members already in the
// archive with the same size and CRC-32 (skip_identical_existing): it only removes them.
//
// Spool directory layout
// ----------------------
// One flat directory, one spool file per member:
//  * "<escaped>": the member name escaped into one file name (EscapeMemberName), whenever
//    that takes at most MaxEscapedSpoolFileName() bytes (NAME_MAX less room for the names
//    derived from a spool file: its deflated shadow, a quarantined copy). This is the
//    layout of every npzfs before long names, and any such file of up to NAME_MAX bytes,
//    left by an older daemon, still resumes.
//  * "%L<id>" and its name file "%N<id>" for a longer name (a member path may take up to
//    4095 bytes, a zip name 65535, but a file name only 255). The name file holds the member
//    name, byte for byte; <id> is the 64-bit FNV-1a hash of the name in 16 hex digits, with
//    "-<k>" added if that pair is taken (a collision). A '%' followed by 'L' or 'N' is never
//    an escape, so these names cannot be taken for escaped ones; the hash in the file name
//    lets Open check the name file. A name file rather than a user xattr: it works on every
//    filesystem.
// Crash safety rests on one rule: a "%L<id>" data file never exists without its name file.
// The name file is written and fsynced, and the directory fsynced, before the data file is
// created or renamed to "%L<id>"; it is removed only after the data file was removed or
// renamed away and the directory fsynced (DropNameFile). A crash in between leaves a name
// file without data (the create or rename did not happen, or the remove or rename away did):
// Open removes it with a log line. A data file without its name file (or one whose name does
// not match its hash) can only come from outside damage: Open sets it aside as
// ".corrupt-<file>" with a log line and never guesses a name.
#include "core/write/spool.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstring>
#include <set>

#include "core/base/names.h"
#include "core/base/text_codec.h"
#include "core/zip/archive_lock.h"

namespace npzfs {
namespace {

// The hashed layout of long names (see the top of this file).
constexpr std::string_view kLongDataPrefix = "%L";
constexpr std::string_view kLongNamePrefix = "%N";
constexpr size_t kHashDigits = 16;
constexpr int kMaxHashProbes = 100;
// A name file holds at most a zip member name.
constexpr uint64_t kMaxNameFileBytes = 65535;
// Where Open sets aside a spool file it cannot resume.
constexpr std::string_view kQuarantinePrefix = ".corrupt-";

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

bool IsLongDataFile(std::string_view file) { return file.starts_with(kLongDataPrefix); }
bool IsNameFile(std::string_view file) { return file.starts_with(kLongNamePrefix); }

// "%L<id>" -> "%N<id>".
std::string NameFileOf(std::string_view data_file) {
  return std::string(kLongNamePrefix) + std::string(data_file.substr(kLongDataPrefix.size()));
}

// "%N<id>" -> "%L<id>".
std::string DataFileOf(std::string_view name_file) {
  return std::string(kLongDataPrefix) + std::string(name_file.substr(kLongNamePrefix.size()));
}

// Does `name` belong to "<id>" ("<hash>" or "<hash>-<k>")?
bool IdMatches(std::string_view id, std::string_view name) {
  if (id.size() < kHashDigits || id.substr(0, kHashDigits) != NameHash(name)) return false;
  const std::string_view probe = id.substr(kHashDigits);
  if (probe.empty()) return true;
  return probe.size() >= 2 && probe[0] == '-' &&
         std::all_of(probe.begin() + 1, probe.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// The member name a hashed spool file "<dir>/%L<id>" belongs to, from its name file.
Result<std::string> ReadNameFile(const std::string& dir, const std::string& data_file) {
  const std::string path = dir + "/" + NameFileOf(data_file);
  auto fd = OpenRegularFile(path, O_RDONLY);
  if (!fd.ok() && fd.status().code() == ENOENT) {
    return Status::Error(ENOENT, path + ": missing, so the member name of " + data_file +
                                     " is unknown (damaged spool?)");
  }
  NPZ_RETURN_IF_ERROR(fd.status());
  NPZ_ASSIGN_OR_RETURN(uint64_t size, FileSize(fd->get(), path));
  if (size == 0 || size > kMaxNameFileBytes) {
    return Status::Error(EINVAL,
                         path + ": a name file of " + std::to_string(size) + " bytes (damaged?)");
  }
  std::string name(size, '\0');
  NPZ_RETURN_IF_ERROR(PreadExact(fd->get(), name.data(), name.size(), 0, path));
  if (!IdMatches(std::string_view(data_file).substr(kLongDataPrefix.size()), name)) {
    return Status::Error(EINVAL, path + ": the name it holds does not match the hash in " +
                                     data_file + " (damaged?)");
  }
  return name;
}

// ".corrupt-<file>", cut (with a hash of the whole name) where an older daemon's spool file
// name leaves no room for the prefix.
std::string QuarantineFileName(const std::string& file) {
  std::string q = std::string(kQuarantinePrefix) + file;
  if (q.size() <= NAME_MAX) return q;
  const size_t keep = NAME_MAX - kQuarantinePrefix.size() - 1 - kHashDigits;
  return std::string(kQuarantinePrefix) + file.substr(0, keep) + "~" + NameHash(file);
}

// The archive's absolute path with every symlink resolved, the file's own too when it
// exists: the same archive by any path has one identity. As given if nothing resolves.
std::string ArchiveIdentity(const std::string& archive_path) {
  char resolved[PATH_MAX];
  if (::realpath(archive_path.c_str(), resolved) != nullptr) return resolved;
  if (::realpath(DirName(archive_path).c_str(), resolved) == nullptr) return archive_path;
  const std::string dir = resolved;
  return (dir == "/" ? dir : dir + "/") + BaseName(archive_path);
}

// The spool is never the archive's own directory: every file of a spool becomes a member and
// is then deleted, the archive among them.
Status CheckNotArchiveDirectory(const std::string& dir, const std::string& archive) {
  char resolved[PATH_MAX];
  if (::realpath(dir.c_str(), resolved) == nullptr) return Status::Ok();  // Open reports it
  if (DirName(archive) != resolved) return Status::Ok();
  return Status::Error(EINVAL, dir + ": the directory of the archive " + archive +
                                   " cannot be its spool (every file of a spool is added to "
                                   "the archive and then deleted): choose another directory");
}

// Whether `dir` is where `archive_path` (as the mount or npz recover names it) keeps its
// spool by default: the spool then moved with the archive's directory.
bool IsDefaultSpoolOf(const std::string& dir, const std::string& archive_path) {
  char a[PATH_MAX], b[PATH_MAX];
  return ::realpath(dir.c_str(), a) != nullptr &&
         ::realpath(DefaultSpoolDir(archive_path).c_str(), b) != nullptr &&
         std::string_view(a) == std::string_view(b);
}

// A file's identity across renames: device, inode and birth time (statx), so that an inode
// number the filesystem gave to a new file after deleting the old one does not pass for it.
struct FileId {
  uint64_t dev = 0, ino = 0;
  int64_t birth_s = 0;
  uint32_t birth_ns = 0;
  bool operator==(const FileId&) const = default;
};

// nullopt when `path` does not exist or its birth time is unknown (the filesystem keeps none).
std::optional<FileId> IdOf(const std::string& path) {
  struct statx sx {};
  if (::statx(AT_FDCWD, path.c_str(), 0, STATX_INO | STATX_BTIME, &sx) != 0 ||
      (sx.stx_mask & STATX_BTIME) == 0) {
    return std::nullopt;
  }
  return FileId{makedev(sx.stx_dev_major, sx.stx_dev_minor), sx.stx_ino, sx.stx_btime.tv_sec,
                sx.stx_btime.tv_nsec};
}

// The spool lock file's record of the archive the spool is for: its absolute path (all
// symlinks resolved) on the first line; then, each on a line of its own, when the archive
// existed then its FileId ("id DEV INO BIRTH_S BIRTH_NS"), and when the members are to be
// deflated the level ("compress LEVEL"). Older spools hold the path alone, or nothing; older
// npzfs ignore the lines they do not know.
struct SpoolRecord {
  std::string path;
  std::optional<FileId> id;
  std::optional<int> level;
  std::string bad_level;  // a "compress" line that names no level (hand-edited?)
  std::optional<int> overridden_level;  // a level an earlier "compress" line named, if other
};

SpoolRecord ParseRecord(std::string_view text) {
  SpoolRecord r;
  size_t eol = text.find('\n');
  // Every npzfs ended the path with a newline: a first line cut short is a record whose
  // write a crash interrupted, before any member was made (the record is made durable
  // first), so it counts as none.
  if (eol == std::string_view::npos) return r;
  r.path = std::string(text.substr(0, eol));
  while (!r.path.empty() && r.path.back() == '\0') r.path.pop_back();
  // Only whole lines count after the path: one cut short (a torn write) says nothing.
  while (eol != std::string_view::npos) {
    const size_t start = eol + 1;
    eol = text.find('\n', start);
    if (eol == std::string_view::npos) break;
    const std::string line(text.substr(start, eol - start));
    unsigned long long dev = 0, ino = 0;
    long long sec = 0;
    unsigned ns = 0;
    if (std::sscanf(line.c_str(), "id %llu %llu %lld %u", &dev, &ino, &sec, &ns) == 4) {
      r.id = FileId{dev, ino, sec, ns};
    } else if (line.size() == 10 && line.starts_with("compress ") && line[9] >= '0' &&
               line[9] <= '9') {
      const int level = line[9] - '0';
      if (r.level && *r.level != level) r.overridden_level = r.level;
      r.level = level;
    } else if (line.starts_with("compress")) {
      r.bad_level = line;
    }
  }
  return r;
}

// The lock file's text: at most a record's worth (two paths and the short lines).
Result<std::string> ReadRecordText(int lock_fd, const std::string& lock_path) {
  std::string text(2 * PATH_MAX + 64, '\0');
  NPZ_ASSIGN_OR_RETURN(size_t n, PreadFull(lock_fd, text.data(), text.size(), 0, lock_path));
  text.resize(n);
  return text;
}

std::string RecordText(const SpoolRecord& r) {
  std::string text = r.path + "\n";
  if (r.id) {
    text += "id " + std::to_string(r.id->dev) + " " + std::to_string(r.id->ino) + " " +
            std::to_string(r.id->birth_s) + " " + std::to_string(r.id->birth_ns) + "\n";
  }
  if (r.level) text += "compress " + std::to_string(*r.level) + "\n";
  return text;
}

// Writes the record over the old one, unless it holds `text` already: the new bytes first,
// then the file cut to them, so that a failed write (a full disk) leaves the old record
// readable rather than none. Then, in either case, the lock file and the spool directory are
// made durable: members made after this never outlive their record in a power cut (a record
// written by an open that died before its fsync is synced by the next).
Status WriteRecord(int lock_fd, const std::string& lock_path, const std::string& text,
                   bool already_there) {
  if (!already_there) {
    // Padded with empty lines over a longer old record: a crash before the cut must not
    // leave lines of the old one after the new.
    NPZ_ASSIGN_OR_RETURN(uint64_t old_size, FileSize(lock_fd, lock_path));
    std::string padded = text;
    if (old_size > padded.size()) padded.append(old_size - padded.size(), '\n');
    NPZ_RETURN_IF_ERROR(PwriteAll(lock_fd, padded.data(), padded.size(), 0, lock_path));
    if (::ftruncate(lock_fd, static_cast<off_t>(text.size())) != 0) {
      return ErrnoStatus(errno, lock_path, "ftruncate failed");
    }
  }
  NPZ_RETURN_IF_ERROR(FsyncFd(lock_fd, lock_path));
  return FsyncDir(DirName(lock_path));
}

bool IsFullDisk(const Status& s) { return s.code() == ENOSPC || s.code() == EDQUOT; }

// Checks the spool's record against `archive` (its ArchiveIdentity; `archive_path` as
// given) and records `archive`. The spool is this archive's when it records the same path,
// or the same file moved elsewhere (FileId), or nothing (a spool of an older npzfs, or one
// never recorded) while it holds no file or sits where `archive_path` keeps its spool by
// default. A spool that records another archive is taken over only when that archive
// is gone and the spool is where `archive_path` keeps its spool by default, for the same
// file name, out of the recorded directory: the directory holding both was moved or renamed
// after a daemon died (a copy leaves the old archive in
// place, and the spool stays that one's). The record gets `compress_level` (a level,
// Spool::kStoredLevel, or Spool::kRecordedLevel to keep the recorded one); `*recorded_level`
// is the level recorded before. A full disk that refuses the record leaves it pending
// (returned): Spool::Create writes it before the first member, and fails while it cannot
// when the spool recorded nothing (`*pending_required`), so no spool holds members without
// a record. A spool that recorded an archive keeps that record meanwhile (the new bytes go
// first), from which the next open decides as this one did.
Result<std::string> ClaimSpool(int lock_fd, const std::string& lock_path, const std::string& dir,
                               const std::string& archive, const std::string& archive_path,
                               int compress_level, const SpoolLogFn& log,
                               std::optional<int>* recorded_level, std::optional<int>* record_level,
                               bool* pending_required) {
  NPZ_ASSIGN_OR_RETURN(const std::string on_disk, ReadRecordText(lock_fd, lock_path));
  const SpoolRecord owner = ParseRecord(on_disk);
  *recorded_level = owner.level;
  *pending_required = owner.path.empty();
  SpoolRecord record{archive, IdOf(archive), owner.level, {}, {}};
  if (compress_level != Spool::kRecordedLevel) {
    record.level = compress_level >= 0 ? std::optional<int>(compress_level) : std::nullopt;
  }
  *record_level = record.level;
  const std::optional<FileId>& mine = record.id;
  const std::string text = RecordText(record);
  if (!owner.bad_level.empty() && log) {
    log(lock_path + ": \"" + EscapeControlBytes(owner.bad_level) +
        "\" names no compression level (compress 0..9): ignored, so the members are stored "
        "unless a level is given");
  }
  if (owner.overridden_level && log) {
    log(lock_path + ": records two compression levels (compress " +
        std::to_string(*owner.overridden_level) + ", then compress " +
        std::to_string(*owner.level) + "): the last one counts");
  }
  if (owner.path.empty() && !IsDefaultSpoolOf(dir, archive_path) && SpoolHoldsMembers(dir)) {
    // Members with no record (a spool of an npzfs older than the record, or a lock file
    // emptied by hand): whose they are is not for this archive to guess.
    return Status::Error(
        EINVAL, dir + ": holds new members but records no archive (" + lock_path +
                    " records no archive path on its first line): if they are for " + archive +
                    ", write that path as the first line of " + lock_path +
                    ", ending with a newline, and run this again");
  }
  if (owner.path == archive && owner.id && mine && !(*owner.id == *mine) && log) {
    log(dir + ": the file at " + archive +
        " is not the one this spool was made for (it was replaced since: by a finalize or "
        "npz add in copy mode, or by another program); its new members are added to it");
  }
  if (!owner.path.empty() && owner.path != archive) {
    const bool same_file = owner.id && mine && *owner.id == *mine;
    struct stat st;
    const bool owner_gone = ::lstat(owner.path.c_str(), &st) != 0 && errno == ENOENT;
    // Moved with its directory: the same file name, in another directory than the one that
    // holds the spool now (a spool whose directory did not move stays its archive's, and an
    // archive moved out of it is found by its identity, or by --spool).
    char spool_parent[PATH_MAX];
    const bool moved_with_directory = BaseName(owner.path) == BaseName(archive) &&
                                      ::realpath(DirName(dir).c_str(), spool_parent) != nullptr &&
                                      DirName(owner.path) != spool_parent;
    if (same_file) {
      if (log) log(dir + ": the spool of " + owner.path + ", which is now " + archive);
    } else if (owner_gone && moved_with_directory && IsDefaultSpoolOf(dir, archive_path)) {
      if (log) {
        log(dir + ": the spool of " + owner.path + ", which is gone; taken over by " + archive +
            ", which keeps its spool here (the directory was moved or renamed)");
      }
    } else {
      const std::optional<FileId> there = IdOf(owner.path);
      const bool replaced = owner.id && there && !(*owner.id == *there);
      return Status::Error(
          EINVAL, dir + ": the spool of " + owner.path + ", not of " + archive +
                      (replaced ? " (the file at that path is not the one it was for: it was "
                                  "replaced since; if " +
                                      archive + " is that archive, moved, write its path into " +
                                      lock_path + ")"
                                : " (its new members belong to that archive: run `" +
                                      NpzRecoverCommand(owner.path, dir, Spool::kRecordedLevel) +
                                      "`; if the archive was moved here, write its new path "
                                      "into " +
                                      lock_path + ")"));
    }
  }
  Status recorded = WriteRecord(lock_fd, lock_path, text, on_disk == text);
  if (IsFullDisk(recorded)) {
    // The spool is ours all the same (we hold its lock), and refusing would fail a mount.
    if (log) {
      log(recorded.message() + " (the spool's record is written before its next new member)");
    }
    return text;
  }
  NPZ_RETURN_IF_ERROR(recorded);
  return std::string();
}

}  // namespace

size_t MaxEscapedSpoolFileName() {
  static const size_t max = [] {
    size_t added = kQuarantinePrefix.size();
    for (const std::string& side :
         {DeflateShadow::DataPath("d/x"), DeflateShadow::IndexPath("d/x")}) {
      added = std::max(added, BaseName(side).size() - 1);
    }
    return NAME_MAX - added;
  }();
  return max;
}

std::string EscapeMemberName(std::string_view member_name) {
  std::string out;
  out.reserve(member_name.size() + 8);
  for (size_t i = 0; i < member_name.size(); ++i) {
    const char c = member_name[i];
    if (c == '%') {
      out += "%25";
    } else if (c == '/') {
      out += "%2F";
    } else if (c == '.' && i == 0) {
      out += "%2E";  // spool files never start with '.': those are not members
    } else {
      out += c;
    }
  }
  return out;
}

Result<std::string> UnescapeMemberName(std::string_view file_name) {
  std::string out;
  for (size_t i = 0; i < file_name.size(); ++i) {
    const char c = file_name[i];
    if (c != '%') {
      if (c == '/' || (i == 0 && c == '.')) {
        return Status::Error(EINVAL, std::string(file_name) + ": not an escaped member name");
      }
      out += c;
      continue;
    }
    if (i + 2 >= file_name.size()) {
      return Status::Error(EINVAL, std::string(file_name) + ": truncated %-escape");
    }
    const int hi = HexValue(file_name[i + 1]), lo = HexValue(file_name[i + 2]);
    const char decoded = static_cast<char>(hi * 16 + lo);
    // Accept exactly what EscapeMemberName produces, so the mapping is one-to-one.
    const bool valid =
        hi >= 0 && lo >= 0 && (decoded == '%' || decoded == '/' || (decoded == '.' && i == 0));
    if (!valid) {
      return Status::Error(EINVAL, std::string(file_name) + ": unexpected escape '" +
                                       std::string(file_name.substr(i, 3)) + "'");
    }
    out += decoded;
    i += 2;
  }
  if (out.empty()) return Status::Error(EINVAL, "empty spool file name");
  return out;
}

Spool::Spool(std::string dir, UniqueFd lock_fd, SpoolLogFn log)
    : dir_(std::move(dir)), lock_fd_(std::move(lock_fd)), log_(std::move(log)) {}

Spool::~Spool() = default;

void Spool::Log(const std::string& line) const {
  if (log_) log_(line);
}

Result<std::string> Spool::NewSpoolPath(const std::string& name) const {
  const std::string escaped = EscapeMemberName(name);
  if (escaped.size() <= MaxEscapedSpoolFileName()) return dir_ + "/" + escaped;
  const std::string hash = NameHash(name);
  for (int k = 0; k < kMaxHashProbes; ++k) {
    const std::string id = k == 0 ? hash : hash + "-" + std::to_string(k);
    const std::string data_path = dir_ + "/" + std::string(kLongDataPrefix) + id;
    const std::string name_path = dir_ + "/" + std::string(kLongNamePrefix) + id;
    struct stat st;
    if (::lstat(data_path.c_str(), &st) == 0) continue;  // taken (O_EXCL below for the pair)
    if (errno != ENOENT) return ErrnoStatus(errno, data_path, "cannot stat");
    auto fd = OpenFile(name_path, O_WRONLY | O_CREAT | O_EXCL, 0644);
    if (!fd.ok() && fd.status().code() == EEXIST) continue;  // another name with this hash
    NPZ_RETURN_IF_ERROR(fd.status());
    // Durable before the data file exists: a "%L<id>" never outlives its name.
    Status written = WriteAll(fd->get(), name.data(), name.size(), name_path);
    if (written.ok()) written = FsyncFd(fd->get(), name_path);
    if (written.ok()) written = FsyncDir(dir_);
    if (!written.ok()) {
      ::unlink(name_path.c_str());
      return written;
    }
    return data_path;
  }
  return Status::Error(EEXIST, dir_ + ": no free spool file for member " + name + " (" +
                                   std::to_string(kMaxHashProbes) + " spool files with its hash " +
                                   hash + ")");
}

Status Spool::DropNameFile(const std::string& spool_path) const {
  const std::string file = BaseName(spool_path);
  if (!IsLongDataFile(file)) return Status::Ok();
  // The data file's removal or rename first, durably: then the name may go.
  NPZ_RETURN_IF_ERROR(FsyncDir(dir_));
  const std::string name_path = dir_ + "/" + NameFileOf(file);
  if (::unlink(name_path.c_str()) != 0 && errno != ENOENT) {
    return ErrnoStatus(errno, name_path, "cannot remove the name file");
  }
  return Status::Ok();
}

Status CheckIsSpool(const std::string& dir, bool allow_empty) {
  const std::string lock_path = dir + "/" + std::string(kSpoolLockFileName);
  struct stat lock {};
  const bool found = ::lstat(lock_path.c_str(), &lock) == 0;
  if (found && S_ISREG(lock.st_mode)) return Status::Ok();
  if (found) {
    return Status::Error(EINVAL, dir + ": not an npzfs spool (its " +
                                     std::string(kSpoolLockFileName) + " is " +
                                     FileKind(lock.st_mode) + ", not a regular file)");
  }
  if (allow_empty) {
    NPZ_ASSIGN_OR_RETURN(size_t entries, CountEntries(dir, 1));
    if (entries == 0) return Status::Ok();
  }
  return Status::Error(
      EINVAL, dir + ": not an npzfs spool (no " + std::string(kSpoolLockFileName) + " in it" +
                  (allow_empty ? ", and it is not empty" : "") +
                  "): every file of a spool is added to the archive and then deleted, so only a "
                  "directory npzfs made" +
                  (allow_empty ? " or an empty one" : "") + " is used");
}

std::string NpzRecoverCommand(const std::string& archive_path, const std::string& spool_dir,
                              int compress_level) {
  std::string command = "npz recover " + ShellWord(archive_path);
  if (spool_dir != DefaultSpoolDir(archive_path) && !IsDefaultSpoolOf(spool_dir, archive_path)) {
    command += " --spool " + ShellWord(spool_dir);
  }
  if (compress_level >= 0) command += " --compress=" + std::to_string(compress_level);
  if (compress_level == Spool::kStoredLevel) command += " --store";
  return command;
}

namespace {

// The names in `dir` other than ".", ".." and the lock file; nullopt if it cannot be listed
// (errno set).
std::optional<std::vector<std::string>> OtherFilesIn(const std::string& dir) {
  std::unique_ptr<DIR, int (*)(DIR*)> d(::opendir(dir.c_str()), ::closedir);
  if (!d) return std::nullopt;
  std::vector<std::string> names;
  while (const dirent* e = ::readdir(d.get())) {
    const std::string_view name = e->d_name;
    if (name != "." && name != ".." && name != kSpoolLockFileName) names.emplace_back(name);
  }
  return names;
}

}  // namespace

bool SpoolHoldsAnything(const std::string& dir) {
  const auto names = OtherFilesIn(dir);
  if (!names) return errno != ENOENT;  // what cannot be listed may hold members
  return !names->empty();
}

bool SpoolHoldsMembers(const std::string& dir) {
  const auto names = OtherFilesIn(dir);
  if (!names) return errno != ENOENT;
  // Spool files never start with '.': those are shadows, quarantined files, others' files.
  return std::any_of(names->begin(), names->end(),
                     [](const std::string& n) { return n.front() != '.'; });
}

bool SpoolInUse(const std::string& dir) {
  auto fd =
      OpenFile(dir + "/" + std::string(kSpoolLockFileName), O_RDONLY | O_NOFOLLOW | O_NONBLOCK);
  return fd.ok() && ::flock(fd->get(), LOCK_SH | LOCK_NB) != 0 && errno == EWOULDBLOCK;
}

bool SpoolAwaitsRecovery(const std::string& dir) {
  struct stat st;
  return ::stat(dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode) && SpoolHoldsMembers(dir) &&
         !SpoolInUse(dir);
}

Result<std::unique_ptr<Spool>> Spool::Open(const std::string& dir, SpoolLogFn log,
                                           const std::string& archive_path, int compress_level) {
  if (compress_level < kRecordedLevel || compress_level > 9) {
    return Status::Error(EINVAL, dir + ": compression level " + std::to_string(compress_level) +
                                     " (0..9, or stored)");
  }
  bool created = false;
  if (::mkdir(dir.c_str(), 0755) == 0) {
    NPZ_RETURN_IF_ERROR(FsyncParentDir(dir));
    created = true;
  } else if (errno != EEXIST) {
    return ErrnoStatus(errno, dir, "cannot create the spool directory");
  }
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0) return ErrnoStatus(errno, dir, "cannot stat the spool");
  if (!S_ISDIR(st.st_mode)) {
    return Status::Error(ENOTDIR, dir + ": spool path exists and is not a directory");
  }
  // A directory that exists already is resumed only if it is a spool: -o spool=DIR or
  // npz recover --spool DIR pointed at a directory of the user's files would add them all to
  // the archive and delete them.
  if (!created) NPZ_RETURN_IF_ERROR(CheckIsSpool(dir, /*allow_empty=*/true));
  const std::string archive = archive_path.empty() ? "" : ArchiveIdentity(archive_path);
  if (!archive.empty()) NPZ_RETURN_IF_ERROR(CheckNotArchiveDirectory(dir, archive));

  const std::string lock_path = dir + "/" + std::string(kLockFileName);
  NPZ_ASSIGN_OR_RETURN(UniqueFd lock_fd, OpenFile(lock_path, O_RDWR | O_CREAT, 0644));
  if (::flock(lock_fd.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) {
      const std::string holder = FlockHolder(lock_fd.get());
      return Status::Error(
          EBUSY, dir + ": spool is in use by " +
                     (holder.empty() ? "another npzfs daemon or npz recover" : holder) + " (lock " +
                     lock_path + " is held)");
    }
    return ErrnoStatus(errno, lock_path, "flock failed");
  }
  std::string pending_record;
  bool pending_required = false;
  std::optional<int> recorded_level, record_level;
  if (!archive.empty()) {
    NPZ_ASSIGN_OR_RETURN(
        pending_record,
        ClaimSpool(lock_fd.get(), lock_path, dir, archive, archive_path, compress_level, log,
                   &recorded_level, &record_level, &pending_required));
  }
  std::unique_ptr<Spool> spool(new Spool(dir, std::move(lock_fd), std::move(log)));
  spool->pending_record_ = std::move(pending_record);
  spool->pending_required_ = pending_required;
  spool->recorded_level_ = recorded_level;
  spool->record_level_ = record_level;

  std::vector<std::string> files;
  std::set<std::string> name_files;  // "%N<id>" whose data file was not seen (yet)
  // ".<file>.npzfs-deflate[-index]", and <file>
  std::vector<std::pair<std::string, std::string>> shadows;
  {
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) return ErrnoStatus(errno, dir, "cannot list the spool directory");
    while (struct dirent* e = ::readdir(d)) {
      if (e->d_name[0] == '.') {  // ".", "..", the lock, quarantined files, shadows
        // (A quarantined file whose name ends like a shadow's is kept for a human.)
        std::string file = DeflateShadow::SpoolFileOf(e->d_name);
        if (!std::string_view(e->d_name).starts_with(kQuarantinePrefix) && !file.empty()) {
          shadows.emplace_back(e->d_name, std::move(file));
        }
        continue;
      }
      if (IsNameFile(e->d_name)) {
        name_files.emplace(e->d_name);
      } else {
        files.emplace_back(e->d_name);
      }
    }
    ::closedir(d);
  }
  std::sort(files.begin(), files.end());

  for (const std::string& file : files) {
    const std::string path = dir + "/" + file;
    struct stat fst;
    if (::lstat(path.c_str(), &fst) != 0 || !S_ISREG(fst.st_mode)) {
      spool->Log(path + ": not a regular file, ignored");
      continue;
    }
    const bool hashed = IsLongDataFile(file);
    const std::string name_file = hashed ? NameFileOf(file) : std::string();
    if (hashed) name_files.erase(name_file);
    Result<std::string> name = hashed ? ReadNameFile(dir, file) : UnescapeMemberName(file);
    if (name.ok() && spool->members_.count(*name)) {
      name = Status::Error(EEXIST, "member " + *name + " was resumed from another spool file");
    }
    Result<std::shared_ptr<GrowingMember>> member =
        name.ok() ? GrowingMember::Resume(*name, path, spool->log_)
                  : Result<std::shared_ptr<GrowingMember>>(name.status());
    if (!member.ok()) {
      // Keep the bytes (and the name) for a human, out of the way of later mounts and
      // finalize. The name file first: a crash in between leaves a data file without a name,
      // which the next Open sets aside in turn.
      std::string moved;
      if (hashed) {
        const std::string from = dir + "/" + name_file;
        const std::string to = dir + "/" + QuarantineFileName(name_file);
        if (::rename(from.c_str(), to.c_str()) == 0) {
          moved = " and its name file to " + to;
        } else if (errno != ENOENT) {
          return ErrnoStatus(errno, from, "cannot set aside the name file of " + path);
        }
      }
      const std::string quarantine = dir + "/" + QuarantineFileName(file);
      if (::rename(path.c_str(), quarantine.c_str()) != 0) {
        return ErrnoStatus(errno, path, "cannot set aside an unreadable spool file");
      }
      spool->Log(path + ": cannot resume (" + member.status().message() + "); moved to " +
                 quarantine + moved);
      continue;
    }
    const auto& m = *member;
    spool->Log(dir + ": resumed member " + m->name() + " (" +
               (m->is_npy() ? std::to_string(m->frame_count()) + " frames, " : std::string()) +
               std::to_string(m->data_bytes()) + " data bytes)");
    spool->members_.emplace(m->name(), m);
  }
  // Deflated shadows without their spool file: a finalize (or the removal of an empty
  // member) that a crash cut short between the two. What they hold is derived from bytes
  // that are gone, or already in the archive.
  for (const auto& [shadow, file] : shadows) {
    struct stat st;
    if (::lstat((dir + "/" + file).c_str(), &st) == 0 || errno != ENOENT) continue;
    const std::string path = dir + "/" + shadow;
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
      return ErrnoStatus(errno, path, "cannot remove a leftover deflated shadow");
    }
    spool->Log(path + ": deflated shadow without its spool file " + file +
               " (left by a finalize that a crash cut short); removed");
  }
  // Name files without their data file: a create, rename or remove that a crash cut short
  // (see the top of this file). The member did not exist, or exists under another name.
  for (const std::string& name_file : name_files) {
    const std::string path = dir + "/" + name_file;
    const std::string data_file = DataFileOf(name_file);
    auto name = ReadNameFile(dir, data_file);
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
      return ErrnoStatus(errno, path, "cannot remove a leftover name file");
    }
    spool->Log(path + ": name file" + (name.ok() ? " of member " + *name : std::string()) +
               " without its data file " + data_file +
               " (left by a create, rename or remove that a crash cut short); removed");
  }
  return spool;
}

Result<std::shared_ptr<GrowingMember>> Spool::Create(const std::string& name,
                                                     std::optional<NpyHeader> declared) {
  std::lock_guard lock(mu_);
  if (finalized_) return Status::Error(ESHUTDOWN, dir_ + ": spool already finalized");
  if (name.empty()) return Status::Error(EINVAL, dir_ + ": empty member name");
  if (members_.count(name)) return Status::Error(EEXIST, name + ": already a new member");
  if (!pending_record_.empty()) {
    // The record a full disk refused at Open (ClaimSpool). A spool that recorded nothing
    // takes no member before it is written: ENOSPC while the disk is still full.
    const std::string lock_path = dir_ + "/" + std::string(kLockFileName);
    Status written = WriteRecord(lock_fd_.get(), lock_path, pending_record_, false);
    if (written.ok()) {
      pending_record_.clear();
    } else if (pending_required_ || !IsFullDisk(written)) {
      return written;
    }
  }
  NPZ_ASSIGN_OR_RETURN(std::string path, NewSpoolPath(name));
  auto created = GrowingMember::Create(name, path, std::move(declared), log_);
  if (!created.ok()) {
    Status dropped = DropNameFile(path);
    if (!dropped.ok()) Log(dropped.message());
    return created.status();
  }
  std::shared_ptr<GrowingMember> m = std::move(created).value();
  members_.emplace(name, m);
  if (background_) background_->Track(m);
  return m;
}

std::shared_ptr<GrowingMember> Spool::Find(const std::string& name) const {
  std::lock_guard lock(mu_);
  auto it = members_.find(name);
  return it == members_.end() ? nullptr : it->second;
}

std::vector<std::shared_ptr<GrowingMember>> Spool::members() const {
  std::lock_guard lock(mu_);
  std::vector<std::shared_ptr<GrowingMember>> out;
  out.reserve(members_.size());
  for (const auto& [name, m] : members_) out.push_back(m);
  return out;
}

Status Spool::Remove(const std::string& name) {
  std::lock_guard lock(mu_);
  auto it = members_.find(name);
  if (it == members_.end()) return Status::Error(ENOENT, name + ": not a new member");
  NPZ_RETURN_IF_ERROR(it->second->CheckRemovable());
  const std::string path = it->second->spool_path();
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return ErrnoStatus(errno, path, "cannot remove spool file");
  }
  it->second->MarkRemoved();
  if (background_) (void)background_->Take(it->second.get());  // no data: no shadow
  members_.erase(it);
  // The member is gone; a name file left behind is removed by the next Open.
  Status dropped = DropNameFile(path);
  if (!dropped.ok()) Log(name + ": removed, but " + dropped.message());
  return Status::Ok();
}

Status Spool::Rename(const std::string& from, const std::string& to) {
  std::lock_guard lock(mu_);
  if (finalized_) return Status::Error(ESHUTDOWN, dir_ + ": spool already finalized");
  auto it = members_.find(from);
  if (it == members_.end()) return Status::Error(ENOENT, from + ": not a new member");
  if (to.empty()) return Status::Error(EINVAL, dir_ + ": empty member name");
  if (members_.count(to)) return Status::Error(EEXIST, to + ": already a new member");
  std::shared_ptr<GrowingMember> m = it->second;
  NPZ_RETURN_IF_ERROR(m->CheckRemovable());  // before a name file is written for nothing
  const std::string old_path = m->spool_path();
  NPZ_ASSIGN_OR_RETURN(std::string new_path, NewSpoolPath(to));
  Status moved = m->MoveTo(to, new_path);
  // Whichever name file the spool file no longer has (the new one if the rename failed).
  Status dropped = DropNameFile(moved.ok() ? old_path : new_path);
  if (!dropped.ok()) Log(from + " -> " + to + ": " + dropped.message());
  NPZ_RETURN_IF_ERROR(moved);
  members_.erase(it);
  members_.emplace(to, std::move(m));
  return Status::Ok();
}

void Spool::StartBackgroundDeflate(int level) {
  std::lock_guard lock(mu_);
  if (background_ || finalized_ || level < 0 || level > 9) return;
  // The archive writer's default chunk size, which finalize uses.
  background_ = std::make_unique<BackgroundDeflater>(level, WriteOptions().chunk_size, log_);
  for (const auto& [name, m] : members_) background_->Track(m);
}

void Spool::WaitForBackgroundDeflate() {
  std::lock_guard lock(mu_);
  if (background_) background_->WaitUntilIdle();
}

// The pieces of one member for AppendToArchive: its header, then its complete frames, with
// the chunks deflated ahead of time when finalize deflates at their level and chunk size.
// `shadow` receives the member's deflated shadow (it must outlive the append).
Result<std::optional<NewMember>> Spool::NewMemberFor(const std::string& name, GrowingMember& m,
                                                     const WriteOptions& options,
                                                     std::unique_ptr<DeflateShadow>* shadow) {
  NPZ_ASSIGN_OR_RETURN(FinalizedMemberData f, m.PrepareFinalize());
  if (background_) *shadow = background_->Take(&m);
  if (!f.has_layout) {
    Log(name + ": never received a complete .npy header or a declared layout; not added");
    return std::optional<NewMember>();
  }
  if (!*shadow && options.compress_level >= 0 && f.data_length > 0) {
    // A shadow left by a daemon that died (npz recover, or the next mount).
    auto opened = DeflateShadow::Open(m.spool_path(), options.compress_level, options.chunk_size,
                                      f.data_length, /*writable=*/false);
    if (opened.ok()) *shadow = std::move(*opened);
  }
  NewMember nm;
  nm.name = name;
  if (!f.header.empty()) {
    MemberPiece header;
    header.bytes = f.header;
    nm.pieces.push_back(std::move(header));
  }
  if (f.data_length > 0) {
    MemberPiece data;
    data.fd = f.fd;
    data.offset = f.data_offset;
    data.length = f.data_length;
    if (*shadow && options.compress_level == (*shadow)->level() &&
        options.chunk_size == (*shadow)->chunk_size()) {
      data.predeflated = (*shadow)->Chunks(f.data_length);
      if (!data.predeflated->chunks.empty()) {
        Log(name + ": " + std::to_string(data.predeflated->chunks.size()) +
            " chunk(s) deflated in the background are used as they are");
      }
    }
    nm.pieces.push_back(std::move(data));
  }
  nm.crc32 = f.crc32;
  nm.leading_chunk = f.header.size();  // deflate: the header is a chunk of its own
  return std::optional<NewMember>(std::move(nm));
}

Status Spool::Finalize(const std::string& archive_path, const WriteOptions& options) {
  std::lock_guard lock(mu_);
  if (finalized_) return Status::Ok();
  // For the command a failure message gives: the same level again (so that what was deflated
  // in the background is used), named only when the lock file holds another (the level this
  // Open recorded, or the one before while a full disk keeps the new record pending).
  const std::optional<int> on_disk = pending_record_.empty() ? record_level_ : recorded_level_;
  const int level = options.compress_level == on_disk.value_or(kStoredLevel)
                        ? kRecordedLevel
                        : options.compress_level;

  std::vector<NewMember> news;
  std::vector<std::unique_ptr<DeflateShadow>> shadows;  // borrowed by the pieces
  uint64_t total_bytes = 0;
  for (const auto& [name, m] : members_) {
    std::unique_ptr<DeflateShadow> shadow;
    NPZ_ASSIGN_OR_RETURN(std::optional<NewMember> nm, NewMemberFor(name, *m, options, &shadow));
    shadows.push_back(std::move(shadow));
    if (!nm) continue;
    for (const MemberPiece& p : nm->pieces) total_bytes += p.fd >= 0 ? p.length : p.bytes.size();
    news.push_back(std::move(*nm));
  }

  if (!news.empty()) {
    Log(archive_path + ": finalizing " + std::to_string(news.size()) + " new member(s), " +
        std::to_string(total_bytes) + " bytes");
    WriteOptions retry_safe = options;
    retry_safe.skip_identical_existing = true;  // a finalize that died after adding them
    if (!retry_safe.log) retry_safe.log = log_;
    Status st = AppendToArchive(archive_path, news, retry_safe);
    if (st.code() == EEXIST) {
      // Another program added a member of that name (with other bytes) while the archive was
      // mounted: retrying cannot help, and nothing was added. The way out is a new name.
      st = Status::Error(EEXIST, st.message() +
                                     " (another program added a member of that name since the "
                                     "mount; nothing was added): rename the new member's file "
                                     "in the spool " +
                                     dir_ +
                                     " (named after the member, with '%', '/' and a leading "
                                     "'.' written as %25, %2F and %2E), then run `" +
                                     NpzRecoverCommand(archive_path, dir_, level) + "`");
    }
    if (!st.ok()) {
      // Keep what was deflated for a later finalize.
      for (auto& shadow : shadows) {
        if (shadow) (void)shadow->Sync();
      }
      Log(archive_path + ": finalize failed, archive and spool " + dir_ +
          " left intact: " + st.message());
      if (st.code() == EEXIST) return st;  // its message says what to do
      const bool full = st.code() == ENOSPC || st.code() == EDQUOT;
      return Status::Error(st.code(),
                           st.message() +
                               " (the archive is as it was, and the new "
                               "members stay in the spool " +
                               dir_ + ": " +
                               (full ? "free space on the filesystem of " + archive_path +
                                           " (a finalize writes there), then run"
                                     : std::string("once that is fixed, run")) +
                               " `" + NpzRecoverCommand(archive_path, dir_, level) + "`)");
    }
    Log(archive_path + ": finalized " + std::to_string(news.size()) + " new member(s)");
  }
  shadows.clear();
  background_.reset();
  return RemoveSpoolFiles(archive_path);
}

// After a finalize: the archive is durable, now the spool may go.
Status Spool::RemoveSpoolFiles(const std::string& archive_path) {
  std::string cleanup_errors;
  std::vector<std::string> hashed;  // spool files whose name file goes after them
  for (const auto& [name, m] : members_) {
    const std::string path = m->spool_path();
    // The shadow first: a crash in between leaves a spool file whose member the next
    // finalize finds in the archive already, never a shadow without its file.
    Status shadow = DeflateShadow::Remove(path);
    if (!shadow.ok()) cleanup_errors += "; " + shadow.message();
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
      cleanup_errors += "; " + path + ": unlink: " + std::strerror(errno);
    }
    if (IsLongDataFile(BaseName(path))) hashed.push_back(path);
    m->MarkRemoved();
  }
  members_.clear();
  if (!hashed.empty()) {
    // One directory fsync for all of them (DropNameFile would do one each).
    Status synced = FsyncDir(dir_);
    if (!synced.ok()) cleanup_errors += "; " + synced.message();
    for (const std::string& path : hashed) {
      const std::string name_path = dir_ + "/" + NameFileOf(BaseName(path));
      if (synced.ok() && ::unlink(name_path.c_str()) != 0 && errno != ENOENT) {
        cleanup_errors += "; " + name_path + ": unlink: " + std::strerror(errno);
      }
    }
  }
  finalized_ = true;
  const std::string lock_path = dir_ + "/" + std::string(kLockFileName);
  // Files that are not members (someone's dotfiles, quarantined spool files) keep the
  // directory, and with it the lock file: without it, the directory would be refused as a
  // spool by every later writable mount.
  const std::vector<std::string> others = OtherFilesIn(dir_).value_or(std::vector<std::string>{});
  if (others.empty() && ::unlink(lock_path.c_str()) != 0 && errno != ENOENT) {
    cleanup_errors += "; " + lock_path + ": unlink: " + std::strerror(errno);
  }
  lock_fd_.Reset();
  if (!others.empty()) {
    Log(dir_ + ": spool directory kept, it holds files that are not members (" +
        EscapeControlBytes(others.front()) +
        (others.size() > 1 ? " and " + std::to_string(others.size() - 1) + " more" : "") + ")");
  } else {
    // No fsync of the parent directory: should a crash bring the spool back, the next
    // finalize finds its members already in the archive with the same bytes
    // (skip_identical_existing) and only removes the spool again.
    if (::rmdir(dir_.c_str()) != 0 && errno != ENOENT) {  // ENOENT: removed by someone else
      if (errno == ENOTEMPTY || errno == EEXIST) {
        Log(dir_ + ": spool directory kept, a file appeared in it while it was removed");
      } else {
        cleanup_errors += "; " + dir_ + ": rmdir: " + std::strerror(errno);
      }
    }
  }
  if (!cleanup_errors.empty()) {
    Status st = Status::Error(EIO, archive_path +
                                       ": archive written, but the spool could not "
                                       "be fully removed" +
                                       cleanup_errors);
    Log(st.message());
    return st;
  }
  return Status::Ok();
}

Status RecoverSpool(const std::string& archive_path, const std::string& spool_dir,
                    WriteOptions options, SpoolLogFn log) {
  struct stat st;
  if (::stat(spool_dir.c_str(), &st) != 0) {
    if (errno == ENOENT) {
      return Status::Error(ENOENT,
                           archive_path + ": no spool to recover (looked for " + spool_dir + ")");
    }
    return ErrnoStatus(errno, spool_dir, "cannot stat the spool");
  }
  if (!S_ISDIR(st.st_mode)) {
    return Status::Error(ENOTDIR, spool_dir + ": spool path is not a directory");
  }
  // A spool left by a daemon always holds its lock file (made with the directory); an empty
  // directory without one is no spool either, and is not removed.
  NPZ_RETURN_IF_ERROR(CheckIsSpool(spool_dir, /*allow_empty=*/false));
  {
    // A spool made for an archive that existed (its identity is recorded) whose path now
    // holds nothing: that archive was moved or deleted, and a new one of only these members
    // would be made here. Read before the lock; Open decides the rest under it.
    const std::string lock_path = spool_dir + "/" + std::string(Spool::kLockFileName);
    auto fd = OpenRegularFile(lock_path, O_RDONLY);
    const Result<std::string> on_disk =
        fd.ok() ? ReadRecordText(fd->get(), lock_path) : Result<std::string>(std::string());
    const SpoolRecord owner = ParseRecord(on_disk.ok() ? *on_disk : std::string());
    struct stat ast;
    if (owner.id && owner.path == ArchiveIdentity(archive_path) &&
        ::lstat(archive_path.c_str(), &ast) != 0 && errno == ENOENT) {
      return Status::Error(
          ENOENT, archive_path + ": gone, but the spool " + spool_dir +
                      " was made for an archive that existed there: if it was moved, run `" +
                      NpzRecoverCommand("NEW-PATH", spool_dir, Spool::kRecordedLevel) +
                      "` with its new path; to make a new archive of these members here, "
                      "delete the line starting with 'id' in " +
                      lock_path + " and run this again");
    }
  }
  // The recorded level stays whatever this recover is told: should it fail, a plain
  // `npz recover` still finalizes as the mount would have.
  NPZ_ASSIGN_OR_RETURN(auto spool, Spool::Open(spool_dir, log, archive_path));
  if (options.compress_level == Spool::kRecordedLevel) {
    const std::optional<int> recorded = spool->recorded_compress_level();
    options.compress_level = recorded.value_or(Spool::kStoredLevel);
    if (recorded && log && !spool->members().empty()) {
      log(spool_dir + ": the new members are deflated at level " + std::to_string(*recorded) +
          " (-o compress=" + std::to_string(*recorded) +
          "), as the spool records for the mount that made it");
    }
  }
  // Under the spool lock no finalize of this archive runs: temp files of a killed copy-mode
  // finalize are leftovers.
  NPZ_RETURN_IF_ERROR(RemoveStaleTempFiles(archive_path, log).status());
  return spool->Finalize(archive_path, options);
}

}  // namespace npzfs
