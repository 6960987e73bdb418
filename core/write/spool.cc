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
#include "core/write/spool.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

namespace npzfs {
namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

}  // namespace

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

std::string Spool::PathFor(const std::string& name) const {
  return dir_ + "/" + EscapeMemberName(name);
}

Result<std::unique_ptr<Spool>> Spool::Open(const std::string& dir, SpoolLogFn log) {
  if (::mkdir(dir.c_str(), 0755) == 0) {
    NPZ_RETURN_IF_ERROR(FsyncParentDir(dir));
  } else if (errno != EEXIST) {
    return ErrnoStatus(errno, dir, "cannot create the spool directory");
  }
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0) return ErrnoStatus(errno, dir, "cannot stat the spool");
  if (!S_ISDIR(st.st_mode)) {
    return Status::Error(ENOTDIR, dir + ": spool path exists and is not a directory");
  }

  const std::string lock_path = dir + "/" + std::string(kLockFileName);
  NPZ_ASSIGN_OR_RETURN(UniqueFd lock_fd, OpenFile(lock_path, O_RDWR | O_CREAT, 0644));
  if (::flock(lock_fd.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) {
      return Status::Error(EBUSY, dir +
                                      ": spool is in use by another npzfs daemon or npz "
                                      "recover (lock " +
                                      lock_path + " is held)");
    }
    return ErrnoStatus(errno, lock_path, "flock failed");
  }
  std::unique_ptr<Spool> spool(new Spool(dir, std::move(lock_fd), std::move(log)));

  std::vector<std::string> files;
  {
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) return ErrnoStatus(errno, dir, "cannot list the spool directory");
    while (struct dirent* e = ::readdir(d)) {
      if (e->d_name[0] == '.') continue;  // ".", "..", the lock, quarantined files
      files.emplace_back(e->d_name);
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
    auto name = UnescapeMemberName(file);
    Result<std::shared_ptr<GrowingMember>> member =
        name.ok() ? GrowingMember::Resume(*name, path, spool->log_)
                  : Result<std::shared_ptr<GrowingMember>>(name.status());
    if (!member.ok()) {
      // Keep the bytes for a human, out of the way of later mounts and finalize.
      const std::string quarantine = dir + "/.corrupt-" + file;
      if (::rename(path.c_str(), quarantine.c_str()) != 0) {
        return ErrnoStatus(errno, path, "cannot set aside an unreadable spool file");
      }
      spool->Log(path + ": cannot resume (" + member.status().message() + "); moved to " +
                 quarantine);
      continue;
    }
    const auto& m = *member;
    spool->Log(dir + ": resumed member " + m->name() + " (" +
               (m->is_npy() ? std::to_string(m->frame_count()) + " frames, " : std::string()) +
               std::to_string(m->data_bytes()) + " data bytes)");
    spool->members_.emplace(m->name(), m);
  }
  return spool;
}

Result<std::shared_ptr<GrowingMember>> Spool::Create(const std::string& name,
                                                     std::optional<NpyHeader> declared) {
  std::lock_guard lock(mu_);
  if (finalized_) return Status::Error(ESHUTDOWN, dir_ + ": spool already finalized");
  if (name.empty()) return Status::Error(EINVAL, dir_ + ": empty member name");
  if (members_.count(name)) return Status::Error(EEXIST, name + ": already a new member");
  NPZ_ASSIGN_OR_RETURN(auto m,
                       GrowingMember::Create(name, PathFor(name), std::move(declared), log_));
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
  if (::unlink(it->second->spool_path().c_str()) != 0 && errno != ENOENT) {
    return ErrnoStatus(errno, it->second->spool_path(), "cannot remove spool file");
  }
  it->second->MarkRemoved();
  if (background_) (void)background_->Take(it->second.get());  // no data: no shadow
  members_.erase(it);
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
  NPZ_RETURN_IF_ERROR(m->MoveTo(to, PathFor(to)));
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
    Log(name + ": never received a .npy header or a declared layout; not added");
    return std::optional<NewMember>();
  }
  if (!*shadow && options.compress_level >= 0 && f.data_length > 0) {
    // A shadow left by a daemon that died (npz recover --compress, or the next mount).
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
    if (!st.ok()) {
      // Keep what was deflated for a later finalize.
      for (auto& shadow : shadows) {
        if (shadow) (void)shadow->Sync();
      }
      Log(archive_path + ": finalize failed, archive and spool " + dir_ +
          " left intact: " + st.message());
      return st;
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
  for (const auto& [name, m] : members_) {
    if (::unlink(m->spool_path().c_str()) != 0 && errno != ENOENT) {
      cleanup_errors += "; " + m->spool_path() + ": unlink: " + std::strerror(errno);
    }
    Status shadow = DeflateShadow::Remove(m->spool_path());
    if (!shadow.ok()) cleanup_errors += "; " + shadow.message();
    m->MarkRemoved();
  }
  members_.clear();
  finalized_ = true;
  const std::string lock_path = dir_ + "/" + std::string(kLockFileName);
  if (::unlink(lock_path.c_str()) != 0 && errno != ENOENT) {
    cleanup_errors += "; " + lock_path + ": unlink: " + std::strerror(errno);
  }
  lock_fd_.Reset();
  // No fsync of the parent directory: should a crash bring the spool back, the next
  // finalize finds its members already in the archive with the same bytes
  // (skip_identical_existing) and only removes the spool again.
  if (::rmdir(dir_.c_str()) != 0) {
    if (errno == ENOTEMPTY || errno == EEXIST) {
      // Only files that are not members are left (someone else's dotfiles): harmless.
      Log(dir_ + ": spool directory kept, it holds files that are not members");
    } else {
      cleanup_errors += "; " + dir_ + ": rmdir: " + std::strerror(errno);
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
                    const WriteOptions& options, SpoolLogFn log) {
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
  NPZ_ASSIGN_OR_RETURN(auto spool, Spool::Open(spool_dir, log));
  // Under the spool lock no finalize of this archive runs: temp files of a killed copy-mode
  // finalize are leftovers.
  NPZ_RETURN_IF_ERROR(RemoveStaleTempFiles(archive_path, log).status());
  return spool->Finalize(archive_path, options);
}

}  // namespace npzfs
