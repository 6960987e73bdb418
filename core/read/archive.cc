// Archive: the member tree (sanitizing, duplicates), reader construction, and loading and
// saving the sidecar index (its format: core/read/index_file.cc and core/README.md).
#include "npzfs/archive.h"

#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <unordered_set>

#include "core/base/atomic_file.h"
#include "core/base/names.h"
#include "core/base/runtime_dir.h"
#include "core/base/text_codec.h"
#include "core/read/deflated_member.h"
#include "core/read/index_file.h"
#include "core/read/inflate_engine.h"
#include "core/read/stored_member.h"
#include "core/zip/seek_table.h"
#include "core/zip/zip_format.h"
#include "npzfs/file_util.h"

namespace npzfs {
namespace {

// What the kernel can carry: a path component of at most NAME_MAX bytes, a path shorter than
// PATH_MAX (the mount point's own path comes on top; what is left is the user's concern).
constexpr size_t kMaxNameComponent = NAME_MAX;
constexpr size_t kMaxPath = PATH_MAX;

// "a//./b" -> "a/b"; nullopt for names that must not appear (.., NUL, empty, a component or
// a path too long for the kernel).
std::optional<std::string> SanitizePath(std::string_view name, std::string* why) {
  if (name.find('\0') != std::string_view::npos) {
    *why = "contains a NUL byte";
    return std::nullopt;
  }
  std::string out;
  size_t start = 0;
  while (start <= name.size()) {
    size_t slash = name.find('/', start);
    if (slash == std::string_view::npos) slash = name.size();
    std::string_view part = name.substr(start, slash - start);
    start = slash + 1;
    if (part.empty() || part == ".") continue;
    if (part == "..") {
      *why = "has a '..' component";
      return std::nullopt;
    }
    if (part.size() > kMaxNameComponent) {
      *why = "has a component of " + std::to_string(part.size()) + " bytes (the limit is " +
             std::to_string(kMaxNameComponent) + ")";
      return std::nullopt;
    }
    if (!out.empty()) out += '/';
    out.append(part);
  }
  if (out.empty()) {
    *why = "is empty once sanitized";
    return std::nullopt;
  }
  if (out.size() >= kMaxPath) {
    *why = "is " + std::to_string(out.size()) + " bytes long (the limit is " +
           std::to_string(kMaxPath - 1) + ")";
    return std::nullopt;
  }
  return out;
}

// A name as a log line shows it: long names are cut, so one line stays readable.
std::string ShownName(std::string_view name) {
  constexpr size_t kShown = 80;
  if (name.size() <= kShown) return std::string(name);
  return std::string(name.substr(0, kShown)) + "...";
}

// Tree rules: sanitize, skip directories and entries whose bytes overlap, last duplicate
// wins; then a file that is also a directory of another member is skipped.
using LogFn = std::function<void(const std::string&)>;

std::vector<ArchiveMember> MemberTree(const std::vector<ZipEntry>& entries, const std::string& path,
                                      const LogFn& log) {
  auto Log = [&](const std::string& line) {
    if (log) log(line);
  };
  const std::vector<std::string> overlap = EntryConflicts(entries);
  std::vector<ArchiveMember> members;
  std::unordered_map<std::string, size_t> slot;
  for (size_t e = 0; e < entries.size(); ++e) {
    const ZipEntry& entry = entries[e];
    if (!entry.name.empty() && entry.name.back() == '/') continue;  // directory entry
    // Without the UTF-8 flag a name is CP437, as zipfile (and so numpy) reads it.
    const std::string name =
        (entry.flags & zip::kFlagUtf8) != 0 ? entry.name : Cp437ToUtf8(entry.name);
    std::string why;
    std::optional<std::string> clean = SanitizePath(name, &why);
    if (!clean.has_value()) {
      Log(path + ": skipping member \"" + ShownName(name) + "\": its name " + why);
      continue;
    }
    if (!overlap[e].empty()) {
      Log(path + ": skipping member " + ShownName(*clean) + ": " + overlap[e]);
      continue;
    }
    if (entry.uncompressed_size > static_cast<uint64_t>(INT64_MAX)) {
      // A ZIP64 size can claim up to 2^64 - 1 bytes; a file (off_t) holds at most 2^63 - 1.
      Log(path + ": skipping member " + ShownName(*clean) + ": it claims " +
          std::to_string(entry.uncompressed_size) + " bytes, more than a file can hold");
      continue;
    }
    ArchiveMember m;
    m.path = *clean;
    m.entry = entry;
    m.entry_index = e;
    if (entry.encrypted()) {
      m.open_errno = EPERM;
      m.open_error = path + ": member " + m.path + " is encrypted (not supported)";
    } else if (entry.method != 0 && entry.method != 8) {
      m.open_errno = ENOTSUP;
      m.open_error = path + ": member " + m.path + " uses compression method " +
                     std::to_string(entry.method) + " (only stored and deflated are supported)";
    }
    auto it = slot.find(m.path);
    if (it != slot.end()) {
      Log(path + ": duplicate member name " + m.path + ": the last entry wins");
      members[it->second] = std::move(m);
    } else {
      slot.emplace(m.path, members.size());
      members.push_back(std::move(m));
    }
  }
  // A file that is also a directory of another member cannot be shown: the directory wins.
  std::unordered_set<std::string> dirs;
  for (const ArchiveMember& m : members) {
    for (size_t s = m.path.find('/'); s != std::string::npos; s = m.path.find('/', s + 1)) {
      dirs.insert(m.path.substr(0, s));
    }
  }
  if (dirs.empty()) return members;
  std::vector<ArchiveMember> kept;
  for (ArchiveMember& m : members) {
    if (dirs.count(m.path)) {
      Log(path + ": skipping member " + m.path + ": it is also a directory name");
      continue;
    }
    kept.push_back(std::move(m));
  }
  return kept;
}

// The umask, read without changing it: umask(2) can only be read by setting it, which would
// race with other threads creating files.
mode_t ProcessUmask() {
  constexpr mode_t kFallback = 022;
  FILE* f = std::fopen("/proc/self/status", "re");
  if (f == nullptr) return kFallback;
  char line[256];
  mode_t mask = kFallback;
  while (std::fgets(line, sizeof line, f) != nullptr) {
    unsigned value = 0;
    if (std::sscanf(line, "Umask: %o", &value) == 1) {
      mask = static_cast<mode_t>(value & 0777);
      break;
    }
  }
  std::fclose(f);
  return mask;
}

}  // namespace

Archive::~Archive() {
  for (const auto& stored : stored_) {
    if (stored != nullptr) stored->Cancel();
  }
  for (const auto& deflated : deflated_) {
    if (deflated != nullptr) deflated->Cancel();
  }
}

Result<std::shared_ptr<Archive>> Archive::Open(const std::string& path, ArchiveOptions options) {
  NPZ_ASSIGN_OR_RETURN(UniqueFd fd, OpenRegularFile(path, O_RDONLY));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return ErrnoStatus(errno, path, "fstat");
  NPZ_ASSIGN_OR_RETURN(ZipDirectory dir, ReadZipDirectory(fd.get(), path));

  auto archive = std::make_shared<Archive>(PassKey());
  options.checkpoint_spacing =
      std::clamp<uint64_t>(options.checkpoint_spacing, kMinSpacing, kMaxSpacing);
  archive->archive_mode_ = st.st_mode;
  archive->archive_uid_ = st.st_uid;
  auto absolute = AbsoluteArchivePath(path);
  archive->absolute_path_ = absolute.ok() ? *absolute : path;
  archive->shared_ = std::make_shared<ArchiveShared>(std::move(fd), path, st, dir.entries, options);
  archive->options_ = std::move(options);
  archive->directory_ = std::move(dir);
  archive->members_ = MemberTree(archive->directory_.entries, path, archive->options_.log);
  archive->MakeMemberStates();
  if (archive->options_.index_enabled) {
    size_t loaded = 0;
    Status s = archive->LoadIndex(archive->IndexPath(), &loaded);
    const std::optional<std::string>& fallback = archive->options_.index_fallback_dir;
    if (loaded == 0 && fallback.has_value()) {
      // Said only if neither applies: the fallback's complaint if it had a sidecar.
      Status f = archive->LoadIndex(archive->IndexPathIn(*fallback), &loaded);
      if (loaded > 0 || !f.ok()) s = f;
    }
    if (!s.ok()) archive->shared_->Log(s.message() + " (ignored; the index will be rebuilt)");
  }
  return archive;
}

void Archive::MakeMemberStates() {
  deflated_.resize(members_.size());
  stored_.resize(members_.size());
  for (size_t i = 0; i < members_.size(); ++i) {
    const ArchiveMember& m = members_[i];
    by_path_.emplace(m.path, i);
    if (m.open_errno != 0) continue;
    if (m.entry.method == 8) {
      deflated_[i] = std::make_shared<DeflatedMember>(shared_, i, m.path, m.entry,
                                                      options_.checkpoint_spacing);
      UseSeekTable(i);
    } else if (m.entry.compressed_size == m.entry.uncompressed_size) {
      stored_[i] = std::make_shared<StoredMember>(shared_, m.path, m.entry);
    }
  }
}

void Archive::UseSeekTable(size_t i) {
  const ArchiveMember& m = members_[i];
  if (m.entry.seek_table.empty()) return;
  const std::string what = path() + ": member " + m.path;
  Result<SeekTable> table = ParseSeekTable(m.entry.seek_table, m.entry.compressed_size,
                                           m.entry.uncompressed_size, m.entry.crc32, what);
  if (!table.ok()) {
    shared_->Log(table.status().message() +
                 " (the seek table is ignored; the member is read "
                 "as a plain deflate stream)");
    return;
  }
  if (!deflated_[i]->UseSeekTable(*table)) {
    shared_->Log(what + ": seek table chunks larger than a span may be (ignored)");
  }
}

const std::string& Archive::path() const { return shared_->path; }
int Archive::fd() const { return shared_->fd.get(); }

std::optional<size_t> Archive::Find(std::string_view path) const {
  auto it = by_path_.find(std::string(path));
  if (it == by_path_.end()) return std::nullopt;
  return it->second;
}

Status Archive::CheckMember(size_t i) const {
  if (i >= members_.size()) {
    return Status::Error(ERANGE, path() + ": no member number " + std::to_string(i));
  }
  const ArchiveMember& m = members_[i];
  if (m.open_errno != 0) return Status::Error(m.open_errno, m.open_error);
  if (deflated_[i] == nullptr && stored_[i] == nullptr) {
    return Status::Error(EIO, path() + ": member " + m.path +
                                  ": stored member whose compressed and uncompressed sizes differ");
  }
  return Status::Ok();
}

Result<std::shared_ptr<MemberReader>> Archive::OpenMember(size_t i) {
  NPZ_RETURN_IF_ERROR(CheckMember(i));
  if (deflated_[i] != nullptr) return MakeDeflatedReader(deflated_[i]);
  return MakeStoredReader(stored_[i]);
}

IndexState Archive::index_state(size_t i) const {
  if (i >= members_.size() || deflated_[i] == nullptr) return IndexState::kNotNeeded;
  if (deflated_[i]->seekable()) return IndexState::kSeekable;
  if (deflated_[i]->complete()) return IndexState::kComplete;
  return deflated_[i]->checkpoint_count() > 1 ? IndexState::kPartial : IndexState::kNone;
}

uint64_t Archive::index_bytes(size_t i) const {
  if (i >= members_.size() || deflated_[i] == nullptr) return 0;
  return deflated_[i]->index_bytes();
}

uint64_t Archive::first_pass_spans(size_t i) const {
  if (i >= members_.size() || deflated_[i] == nullptr) return 0;
  return deflated_[i]->first_pass_spans();
}

uint64_t Archive::fast_chunks(size_t i) const {
  if (i >= members_.size() || deflated_[i] == nullptr) return 0;
  return deflated_[i]->fast_chunks();
}

uint64_t Archive::span_restores(size_t i) const {
  if (i >= members_.size() || deflated_[i] == nullptr) return 0;
  return deflated_[i]->span_restores();
}

std::vector<uint64_t> Archive::span_starts(size_t i) const {
  std::vector<uint64_t> starts;
  if (i >= members_.size() || deflated_[i] == nullptr) return starts;
  for (const Checkpoint& cp : deflated_[i]->TakeSnapshot().checkpoints) starts.push_back(cp.out);
  return starts;
}

const char* InflateEngineName() { return FastEngineIsIsal() ? "isa-l" : "zlib"; }

uint64_t Archive::speculations(size_t i) const {
  if (i >= members_.size() || deflated_[i] == nullptr) return 0;
  return deflated_[i]->speculations();
}

uint64_t Archive::verify_bytes(size_t i) const {
  if (i >= members_.size() || stored_[i] == nullptr) return 0;
  return stored_[i]->check_bytes();
}

Status Archive::BuildIndex(size_t i, const std::function<void(uint64_t, uint64_t)>& progress) {
  NPZ_RETURN_IF_ERROR(CheckMember(i));
  if (deflated_[i] == nullptr) return Status::Ok();
  return deflated_[i]->BuildIndex(progress);
}

Status Archive::IndexUpTo(size_t i, uint64_t offset) {
  NPZ_RETURN_IF_ERROR(CheckMember(i));
  if (deflated_[i] == nullptr) return Status::Ok();
  return deflated_[i]->IndexUpTo(offset);
}

ArchiveStats Archive::stats() const {
  ArchiveStats s;
  s.cache_hits = shared_->cache.hits();
  s.cache_misses = shared_->cache.misses();
  for (const auto& d : deflated_) {
    if (d == nullptr) continue;
    s.first_pass_spans += d->first_pass_spans();
    s.speculations += d->speculations();
  }
  s.spans_inflated = s.cache_misses + s.first_pass_spans;  // each miss inflates its span
  return s;
}

Status Archive::FinishStartedIndexes(uint64_t budget) {
  if (!options_.index_enabled) return Status::Ok();  // nothing would keep it
  Status first;
  for (const auto& d : deflated_) {
    if (d == nullptr || !d->indexer_started() || d->complete()) continue;
    const uint64_t left = d->size() - std::min(d->size(), d->indexed_bytes());
    if (left > budget) continue;
    budget -= left;
    Status s = d->BuildIndex({});
    if (!s.ok() && first.ok()) first = s;
  }
  return first;
}

Status Archive::VerifyMember(size_t i) {
  NPZ_RETURN_IF_ERROR(CheckMember(i));
  if (stored_[i] != nullptr) return stored_[i]->Verify();
  return deflated_[i]->BuildIndex({});
}

bool Archive::index_dirty() const {
  for (size_t i = 0; i < members_.size(); ++i) {
    if (deflated_[i] != nullptr && deflated_[i]->dirty()) return true;
    if (stored_[i] != nullptr && stored_[i]->dirty()) return true;
  }
  return false;
}

std::string Archive::IndexPath() const { return IndexPathIn(options_.index_dir); }

std::string Archive::IndexPathIn(const std::string& dir) const {
  if (dir.empty()) return DirName(path()) + "/" + IndexFileName(path());
  return dir + "/" + SharedIndexFileName(absolute_path_);
}

IndexFingerprint Archive::Fingerprint() const {
  return IndexFingerprint{directory_.archive_size, shared_->mtime_ns, directory_.cd_crc32,
                          directory_.entries.size()};
}

Status Archive::SaveIndex() {
  if (!options_.index_enabled) return Status::Ok();
  std::lock_guard<std::mutex> lock(save_mu_);
  // After CarryIndexForward the sidecar describes the new archive; this one is gone.
  if (carried_forward_ || !index_dirty()) return Status::Ok();
  // After an append by another process (the mount kept serving the old members), the
  // records are written for the archive as it is now, like CarryIndexForward does.
  if (shared_->appended()) return WriteIndexForArchiveNow();
  std::vector<std::pair<size_t, uint64_t>> versions;  // (member, version saved)
  const std::vector<IndexRecord> records = Records(&versions);
  NPZ_RETURN_IF_ERROR(WriteIndex(Fingerprint(), directory_.entries, records));
  for (const auto& [i, version] : versions) {
    if (deflated_[i] != nullptr) deflated_[i]->MarkSaved(version);
    if (stored_[i] != nullptr) stored_[i]->MarkSaved(version);
  }
  return Status::Ok();
}

std::vector<IndexRecord> Archive::Records(
    std::vector<std::pair<size_t, uint64_t>>* versions) const {
  std::vector<IndexRecord> records;
  for (size_t i = 0; i < members_.size(); ++i) {
    IndexRecord rec;
    rec.entry_index = members_[i].entry_index;
    if (deflated_[i] != nullptr) {
      if (deflated_[i]->seekable()) continue;  // its seek table is its index
      DeflatedMember::Snapshot snap = deflated_[i]->TakeSnapshot();
      if (!snap.complete && snap.checkpoints.size() <= 1) continue;
      rec.checkpoints = std::move(snap.checkpoints);
      rec.complete = snap.complete;
      if (versions != nullptr) versions->emplace_back(i, snap.version);
    } else if (stored_[i] != nullptr) {
      std::optional<StoredMember::Record> verified = stored_[i]->TakeRecord();
      if (!verified.has_value()) continue;
      rec.kind = RecordKind::kStored;
      rec.chunk_crcs = std::move(verified->chunk_crcs);
      if (versions != nullptr) versions->emplace_back(i, verified->version);
    } else {
      continue;
    }
    records.push_back(std::move(rec));
  }
  return records;
}

Status Archive::WriteIndex(const IndexFingerprint& fingerprint,
                           const std::vector<ZipEntry>& entries,
                           const std::vector<IndexRecord>& records) const {
  // Readable by whoever may read the archive (its read and write bits, under the umask).
  AtomicFileOptions file_options;
  file_options.mode = (archive_mode_ & 0666) & ~ProcessUmask();
  file_options.keep_existing_mode = false;
  return WriteFileAtomically(IndexPath(), EncodeIndexFile(fingerprint, entries, records),
                             file_options);
}

Status Archive::CarryIndexForward() {
  if (!options_.index_enabled) return Status::Ok();
  std::lock_guard<std::mutex> lock(save_mu_);
  carried_forward_ = true;
  return WriteIndexForArchiveNow();
}

Status Archive::WriteIndexForArchiveNow() {
  NPZ_ASSIGN_OR_RETURN(UniqueFd fd, OpenRegularFile(path(), O_RDONLY));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return ErrnoStatus(errno, path(), "fstat");
  NPZ_ASSIGN_OR_RETURN(ZipDirectory now, ReadZipDirectory(fd.get(), path()));
  // What the archive shows now: a new member may hide an old one of the same name.
  std::vector<uint8_t> kinds(now.entries.size(), 0);
  for (const ArchiveMember& m : MemberTree(now.entries, path(), {})) {
    if (m.open_errno != 0) continue;
    kinds[m.entry_index] =
        uint8_t(m.entry.method == 8 ? RecordKind::kDeflated : RecordKind::kStored);
  }
  std::vector<IndexRecord> kept;
  for (IndexRecord& rec : Records(nullptr)) {
    const size_t e = rec.entry_index;
    if (e < now.entries.size() && kinds[e] == uint8_t(rec.kind) &&
        SameMemberData(now.entries[e], directory_.entries[e])) {
      kept.push_back(std::move(rec));
    }
  }
  if (kept.empty()) {  // nothing to carry: no sidecar (the old one would only be stale)
    if (::unlink(IndexPath().c_str()) != 0 && errno != ENOENT) {
      return ErrnoStatus(errno, IndexPath(), "unlink");
    }
    return Status::Ok();
  }
  const IndexFingerprint fingerprint{now.archive_size, MtimeNs(st), now.cd_crc32,
                                     now.entries.size()};
  return WriteIndex(fingerprint, now.entries, kept);
}

Status Archive::LoadIndex(const std::string& file, size_t* loaded) {
  *loaded = 0;
  std::vector<uint8_t> kinds(directory_.entries.size(), 0);
  std::unordered_map<size_t, size_t> member_of_entry;
  for (size_t i = 0; i < members_.size(); ++i) {
    if (deflated_[i] != nullptr) kinds[members_[i].entry_index] = uint8_t(RecordKind::kDeflated);
    if (stored_[i] != nullptr) kinds[members_[i].entry_index] = uint8_t(RecordKind::kStored);
    member_of_entry.emplace(members_[i].entry_index, i);
  }
  const uint64_t max_bytes = std::max<uint64_t>(uint64_t{64} << 20, directory_.archive_size);
  NPZ_ASSIGN_OR_RETURN(std::vector<IndexRecord> records,
                       LoadIndexFile(file, max_bytes, Fingerprint(), directory_.entries, kinds,
                                     IndexTrust{archive_uid_, archive_mode_}));
  for (IndexRecord& rec : records) {
    const size_t i = member_of_entry.at(rec.entry_index);
    if (rec.kind == RecordKind::kStored) {
      stored_[i]->Load(std::move(rec.chunk_crcs));
      stored_[i]->MarkSaved(0);
    } else {
      deflated_[i]->Load(std::move(rec.checkpoints), rec.complete);
      deflated_[i]->MarkSaved(0);
    }
  }
  *loaded = records.size();
  if (!records.empty()) loaded_index_path_ = file;
  return Status::Ok();
}

}  // namespace npzfs
