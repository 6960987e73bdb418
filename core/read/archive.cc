// Archive: the member tree (sanitizing, duplicates), reader construction, and the sidecar
// index file (format spec: core/README.md, "Index file format").
#include "npzfs/archive.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <unordered_set>

#include "core/base/atomic_file.h"
#include "core/base/text_codec.h"
#include "core/read/deflated_member.h"
#include "core/zip/zip_format.h"
#include "npzfs/file_util.h"

namespace npzfs {
namespace {

constexpr char kIndexMagic[8] = {'N', 'P', 'Z', 'F', 'S', 'I', 'D', 'X'};
constexpr uint32_t kIndexVersion = 1;
constexpr uint32_t kMaxStoredWindow = 1u << 16;  // a deflated 32 KiB window is far smaller

// "a//./b" -> "a/b"; nullopt for names that must not appear (.., NUL, empty).
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
    if (!out.empty()) out += '/';
    out.append(part);
  }
  if (out.empty()) {
    *why = "is empty once sanitized";
    return std::nullopt;
  }
  return out;
}

class Writer {
 public:
  void U8(uint8_t v) { out_.push_back(static_cast<char>(v)); }
  void U32(uint32_t v) {
    for (int i = 0; i < 4; ++i) U8(static_cast<uint8_t>(v >> (8 * i)));
  }
  void U64(uint64_t v) {
    for (int i = 0; i < 8; ++i) U8(static_cast<uint8_t>(v >> (8 * i)));
  }
  void Bytes(const void* p, size_t n) { out_.append(static_cast<const char*>(p), n); }
  std::string& str() { return out_; }

 private:
  std::string out_;
};

class Reader {
 public:
  explicit Reader(std::string_view in) : in_(in) {}
  bool U8(uint8_t* v) {
    if (in_.size() - pos_ < 1) return false;
    *v = static_cast<uint8_t>(in_[pos_++]);
    return true;
  }
  bool U32(uint32_t* v) {
    uint64_t x;
    if (!Le(4, &x)) return false;
    *v = static_cast<uint32_t>(x);
    return true;
  }
  bool U64(uint64_t* v) { return Le(8, v); }
  bool Bytes(size_t n, std::string* out) {
    if (in_.size() - pos_ < n) return false;
    out->assign(in_.substr(pos_, n));
    pos_ += n;
    return true;
  }
  size_t remaining() const { return in_.size() - pos_; }

 private:
  bool Le(int n, uint64_t* v) {
    if (in_.size() - pos_ < static_cast<size_t>(n)) return false;
    uint64_t x = 0;
    for (int i = 0; i < n; ++i) x |= uint64_t{static_cast<uint8_t>(in_[pos_ + i])} << (8 * i);
    pos_ += n;
    *v = x;
    return true;
  }
  std::string_view in_;
  size_t pos_ = 0;
};

}  // namespace

Archive::~Archive() = default;

Result<std::shared_ptr<Archive>> Archive::Open(const std::string& path, ArchiveOptions options) {
  NPZ_ASSIGN_OR_RETURN(UniqueFd fd, OpenFile(path, O_RDONLY));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return ErrnoStatus(errno, path, "fstat");
  if (!S_ISREG(st.st_mode)) return Status::Error(EINVAL, path + ": not a regular file");
  NPZ_ASSIGN_OR_RETURN(ZipDirectory dir, ReadZipDirectory(fd.get(), path));

  auto archive = std::make_shared<Archive>(PassKey());
  archive->archive_mtime_ns_ = int64_t{st.st_mtim.tv_sec} * 1000000000 + st.st_mtim.tv_nsec;
  archive->shared_ = std::make_shared<ArchiveShared>(std::move(fd), path, options.cache_bytes,
                                                     options.max_parked_streams, options.log);
  archive->options_ = std::move(options);
  archive->directory_ = std::move(dir);
  const ArchiveShared& shared = *archive->shared_;

  // Tree rules: sanitize, skip directories, last duplicate wins.
  std::vector<ArchiveMember>& members = archive->members_;
  std::unordered_map<std::string, size_t> slot;
  const std::vector<ZipEntry>& entries = archive->directory_.entries;
  for (size_t e = 0; e < entries.size(); ++e) {
    const ZipEntry& entry = entries[e];
    if (!entry.name.empty() && entry.name.back() == '/') continue;  // directory entry
    // Without the UTF-8 flag a name is CP437, as zipfile (and so numpy) reads it.
    const std::string name =
        (entry.flags & zip::kFlagUtf8) != 0 ? entry.name : Cp437ToUtf8(entry.name);
    std::string why;
    std::optional<std::string> clean = SanitizePath(name, &why);
    if (!clean.has_value()) {
      shared.Log(path + ": skipping member \"" + name + "\": its name " + why);
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
      shared.Log(path + ": duplicate member name " + m.path + ": the last entry wins");
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
  if (!dirs.empty()) {
    std::vector<ArchiveMember> kept;
    for (ArchiveMember& m : members) {
      if (dirs.count(m.path)) {
        shared.Log(path + ": skipping member " + m.path + ": it is also a directory name");
        continue;
      }
      kept.push_back(std::move(m));
    }
    members = std::move(kept);
  }
  archive->deflated_.resize(members.size());
  for (size_t i = 0; i < members.size(); ++i) {
    archive->by_path_.emplace(members[i].path, i);
    if (members[i].open_errno == 0 && members[i].entry.method == 8) {
      archive->deflated_[i] =
          std::make_shared<DeflatedMember>(archive->shared_, i, members[i].path, members[i].entry,
                                           archive->options_.checkpoint_spacing);
    }
  }
  if (archive->options_.index_enabled) {
    Status s = archive->LoadIndex();
    if (!s.ok()) shared.Log(s.message() + " (ignored; the index will be rebuilt)");
  }
  return archive;
}

const std::string& Archive::path() const { return shared_->path; }
int Archive::fd() const { return shared_->fd.get(); }

std::optional<size_t> Archive::Find(std::string_view path) const {
  auto it = by_path_.find(std::string(path));
  if (it == by_path_.end()) return std::nullopt;
  return it->second;
}

Result<std::shared_ptr<MemberReader>> Archive::OpenMember(size_t i) {
  if (i >= members_.size()) {
    return Status::Error(ERANGE, path() + ": no member number " + std::to_string(i));
  }
  const ArchiveMember& m = members_[i];
  if (m.open_errno != 0) return Status::Error(m.open_errno, m.open_error);
  if (deflated_[i] != nullptr) return MakeDeflatedReader(deflated_[i]);
  return MakeStoredReader(shared_, m.path, m.entry);
}

IndexState Archive::index_state(size_t i) const {
  if (i >= members_.size() || deflated_[i] == nullptr) return IndexState::kNotNeeded;
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

Status Archive::BuildIndex(size_t i, const std::function<void(uint64_t, uint64_t)>& progress) {
  if (i >= members_.size()) {
    return Status::Error(ERANGE, path() + ": no member number " + std::to_string(i));
  }
  if (members_[i].open_errno != 0) {
    return Status::Error(members_[i].open_errno, members_[i].open_error);
  }
  if (deflated_[i] == nullptr) return Status::Ok();
  return deflated_[i]->BuildIndex(progress);
}

ArchiveStats Archive::stats() const {
  ArchiveStats s;
  s.cache_hits = shared_->cache.hits();
  s.cache_misses = shared_->cache.misses();
  s.spans_inflated = s.cache_misses;  // each miss inflates its span
  for (const auto& d : deflated_) {
    if (d != nullptr) s.spans_inflated += d->first_pass_spans();
  }
  return s;
}

bool Archive::index_dirty() const {
  for (const auto& d : deflated_) {
    if (d != nullptr && d->dirty()) return true;
  }
  return false;
}

std::string Archive::IndexPath() const {
  std::string dir = options_.index_dir.empty() ? DirName(path()) : options_.index_dir;
  return dir + "/." + BaseName(path()) + ".npzfs-index";
}

Status Archive::SaveIndex() {
  if (!options_.index_enabled) return Status::Ok();
  std::lock_guard<std::mutex> lock(save_mu_);
  if (!index_dirty()) return Status::Ok();
  std::vector<std::pair<size_t, DeflatedMember::Snapshot>> snaps;
  for (size_t i = 0; i < deflated_.size(); ++i) {
    if (deflated_[i] == nullptr) continue;
    DeflatedMember::Snapshot snap = deflated_[i]->TakeSnapshot();
    if (snap.complete || snap.checkpoints.size() > 1) snaps.emplace_back(i, std::move(snap));
  }
  Writer w;
  w.Bytes(kIndexMagic, sizeof kIndexMagic);
  w.U32(kIndexVersion);
  w.U32(0);
  w.U64(directory_.archive_size);
  w.U64(static_cast<uint64_t>(archive_mtime_ns_));
  w.U32(directory_.cd_crc32);
  w.U32(0);
  w.U64(directory_.entries.size());
  w.U64(snaps.size());
  for (const auto& [i, snap] : snaps) {
    const ZipEntry& e = members_[i].entry;
    w.U64(members_[i].entry_index);
    w.U64(e.local_header_offset);
    w.U64(e.data_offset);
    w.U64(e.compressed_size);
    w.U64(e.uncompressed_size);
    w.U32(e.crc32);
    w.U8(snap.complete ? 1 : 0);
    w.U8(0);
    w.U8(0);
    w.U8(0);
    w.U64(snap.checkpoints.size());
    for (const Checkpoint& cp : snap.checkpoints) {
      w.U64(cp.out);
      w.U64(cp.in);
      w.U8(cp.bits);
      w.U32(cp.span_crc);
      w.U32(cp.window_size);
      w.U32(static_cast<uint32_t>(cp.window.size()));
      w.Bytes(cp.window.data(), cp.window.size());
    }
  }
  w.U32(static_cast<uint32_t>(
      crc32_z(0, reinterpret_cast<const Bytef*>(w.str().data()), w.str().size())));

  NPZ_RETURN_IF_ERROR(WriteFileAtomically(IndexPath(), w.str()));
  for (const auto& [i, snap] : snaps) deflated_[i]->MarkSaved(snap.version);
  return Status::Ok();
}

Status Archive::LoadIndex() {
  const std::string file = IndexPath();
  Result<UniqueFd> opened = OpenFile(file, O_RDONLY);
  if (!opened.ok()) {
    if (opened.status().code() == ENOENT) return Status::Ok();
    return opened.status();
  }
  NPZ_ASSIGN_OR_RETURN(uint64_t size, FileSize(opened->get(), file));
  auto bad = [&](const std::string& why) { return Status::Error(EINVAL, file + ": " + why); };
  if (size > std::max<uint64_t>(uint64_t{64} << 20, directory_.archive_size)) {
    return bad("implausibly large index file");
  }
  if (size < sizeof kIndexMagic + 4) return bad("truncated index file");
  std::string bytes(size, '\0');
  NPZ_RETURN_IF_ERROR(PreadExact(opened->get(), bytes.data(), size, 0, file));
  uint32_t stored_crc = 0;
  for (int i = 0; i < 4; ++i) {
    stored_crc |= uint32_t{static_cast<uint8_t>(bytes[size - 4 + i])} << (8 * i);
  }
  if (crc32_z(0, reinterpret_cast<const Bytef*>(bytes.data()), size - 4) != stored_crc) {
    return bad("CRC-32 of the index file does not match (corrupt)");
  }
  Reader r(std::string_view(bytes).substr(0, size - 4));
  std::string magic;
  uint32_t version = 0, reserved = 0, cd_crc = 0;
  uint64_t archive_size = 0, mtime = 0, entry_count = 0, records = 0;
  if (!r.Bytes(sizeof kIndexMagic, &magic) || std::memcmp(magic.data(), kIndexMagic, 8) != 0) {
    return bad("not an npzfs index file (bad magic)");
  }
  if (!r.U32(&version) || version != kIndexVersion) return bad("unsupported index version");
  if (!r.U32(&reserved) || !r.U64(&archive_size) || !r.U64(&mtime) || !r.U32(&cd_crc) ||
      !r.U32(&reserved) || !r.U64(&entry_count) || !r.U64(&records)) {
    return bad("truncated header");
  }
  if (archive_size != directory_.archive_size || static_cast<int64_t>(mtime) != archive_mtime_ns_ ||
      cd_crc != directory_.cd_crc32 || entry_count != directory_.entries.size()) {
    return bad("stale index: the archive changed since it was written");
  }
  std::unordered_map<size_t, size_t> by_entry;
  for (size_t i = 0; i < members_.size(); ++i) by_entry.emplace(members_[i].entry_index, i);
  std::vector<std::pair<size_t, std::pair<std::vector<Checkpoint>, bool>>> loaded;
  for (uint64_t rec = 0; rec < records; ++rec) {
    uint64_t entry_index, lho, data_offset, csize, usize, count;
    uint32_t crc;
    uint8_t complete, pad;
    if (!r.U64(&entry_index) || !r.U64(&lho) || !r.U64(&data_offset) || !r.U64(&csize) ||
        !r.U64(&usize) || !r.U32(&crc) || !r.U8(&complete) || !r.U8(&pad) || !r.U8(&pad) ||
        !r.U8(&pad) || !r.U64(&count)) {
      return bad("truncated member record");
    }
    auto it = by_entry.find(entry_index);
    if (it == by_entry.end() || deflated_[it->second] == nullptr) {
      return bad("record for entry " + std::to_string(entry_index) + " matches no deflated member");
    }
    const size_t i = it->second;
    const ZipEntry& e = members_[i].entry;
    if (lho != e.local_header_offset || data_offset != e.data_offset ||
        csize != e.compressed_size || usize != e.uncompressed_size || crc != e.crc32 ||
        complete > 1) {
      return bad("record for " + members_[i].path + " does not match the archive");
    }
    // Each checkpoint takes at least 29 bytes: bounds the count before reserving.
    if (count == 0 || count > r.remaining() / 29) return bad("bad checkpoint count");
    std::vector<Checkpoint> cps(count);
    uint32_t whole = 0;
    for (uint64_t k = 0; k < count; ++k) {
      Checkpoint& cp = cps[k];
      uint32_t wbytes = 0;
      if (!r.U64(&cp.out) || !r.U64(&cp.in) || !r.U8(&cp.bits) || !r.U32(&cp.span_crc) ||
          !r.U32(&cp.window_size) || !r.U32(&wbytes) || wbytes > kMaxStoredWindow ||
          !r.Bytes(wbytes, &cp.window)) {
        return bad("truncated checkpoint in " + members_[i].path);
      }
      const bool first_ok = k > 0 || (cp.out == 0 && cp.in == 0 && cp.bits == 0);
      const bool order_ok = k == 0 || (cp.out > cps[k - 1].out && cp.in >= cps[k - 1].in);
      if (!first_ok || !order_ok || cp.out >= std::max<uint64_t>(usize, 1) || cp.in > csize ||
          cp.bits > 7 || (cp.bits != 0 && cp.in == 0) ||
          cp.window_size != std::min<uint64_t>(kDeflateWindow, cp.out) ||
          (cp.window_size == 0) != cp.window.empty()) {
        return bad("inconsistent checkpoint in " + members_[i].path);
      }
      if (k > 0) {
        whole = static_cast<uint32_t>(crc32_combine64(
            whole, cps[k - 1].span_crc, static_cast<z_off64_t>(cp.out - cps[k - 1].out)));
      }
    }
    if (complete) {
      whole = static_cast<uint32_t>(crc32_combine64(
          whole, cps.back().span_crc, static_cast<z_off64_t>(usize - cps.back().out)));
      if (whole != e.crc32) return bad("span CRCs of " + members_[i].path + " do not add up");
    }
    loaded.emplace_back(i, std::make_pair(std::move(cps), complete == 1));
  }
  if (r.remaining() != 0) return bad("trailing bytes");
  for (auto& [i, data] : loaded) {
    deflated_[i]->Load(std::move(data.first), data.second);
    deflated_[i]->MarkSaved(0);
  }
  return Status::Ok();
}

}  // namespace npzfs
