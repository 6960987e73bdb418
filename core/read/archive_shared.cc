#include "core/read/archive_shared.h"

#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

namespace npzfs {
namespace {

// Fast-path resume points get an eighth of the cache budget, and at least room for a few
// dozen (an ISA-L snapshot is ~54 KiB).
constexpr uint64_t kMinSnapshotBytes = 4 << 20;

}  // namespace

ArchiveShared::ArchiveShared(UniqueFd fd_in, std::string path_in, const struct stat& st,
                             std::vector<ZipEntry> entries, const ArchiveOptions& options)
    : fd(std::move(fd_in)),
      path(std::move(path_in)),
      size(static_cast<uint64_t>(st.st_size)),
      mtime_ns(MtimeNs(st)),
      verify(options.verify),
      background_index(options.background_index),
      speculate_bytes(options.speculate_bytes),
      cache(options.cache_bytes),
      pool(options.max_parked_streams),
      fast_pool(options.max_parked_streams),
      snapshots(std::max<uint64_t>(options.cache_bytes / 8, kMinSnapshotBytes)),
      log(options.log),
      entries_(std::move(entries)),
      good_size_(size),
      good_mtime_ns_(mtime_ns),
      good_ctime_ns_(CtimeNs(st)) {}

void ArchiveShared::NoteCtime(const struct stat& st) {
  if (CtimeNs(st) == good_ctime_ns_.load(std::memory_order_relaxed)) return;
  // The epoch moves first: a reader whose fast path sees the new ctime must also see the
  // new epoch (see the top of the header).
  change_epoch_.fetch_add(1, std::memory_order_acq_rel);
  good_ctime_ns_.store(CtimeNs(st), std::memory_order_release);
}

Status ArchiveShared::CheckUnchanged() {
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return ErrnoStatus(errno, path, "fstat");
  const uint64_t now_size = static_cast<uint64_t>(st.st_size);
  if (now_size == good_size_.load(std::memory_order_acquire) &&
      MtimeNs(st) == good_mtime_ns_.load(std::memory_order_acquire) &&
      CtimeNs(st) == good_ctime_ns_.load(std::memory_order_acquire)) {
    return Status::Ok();
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (now_size == good_size_.load(std::memory_order_relaxed) &&
      MtimeNs(st) == good_mtime_ns_.load(std::memory_order_relaxed)) {
    // Its data or status changed with size and mtime kept (or put back), or another reader
    // accepted this change meanwhile.
    NoteCtime(st);
    return Status::Ok();
  }
  if (!bad_status_.ok() && now_size == bad_size_ && MtimeNs(st) == bad_mtime_ns_) {
    return bad_status_;  // already found bad, and logged
  }
  // An npzfs appender (npz add, another mount's finalize) holds the archive's lock while it
  // writes, which may take minutes (a large member deflated). It never touches an old
  // member's bytes, so reads go on from the directory read at open, and the change is
  // checked by the first read after the lock is free, when the directory is whole again.
  if (::flock(fd.get(), LOCK_SH | LOCK_NB) != 0) {
    if (errno != EWOULDBLOCK) return ErrnoStatus(errno, path, "cannot lock");
    // Stored members check their chunks again meanwhile, should the archive have been
    // changed in place before this append began.
    NoteCtime(st);
    return Status::Ok();
  }
  if (::fstat(fd.get(), &st) != 0) {
    Status s = ErrnoStatus(errno, path, "fstat");
    ::flock(fd.get(), LOCK_UN);
    return s;
  }
  Status appended = CheckAppendOnly(st);
  ::flock(fd.get(), LOCK_UN);
  if (appended.ok()) {
    change_epoch_.fetch_add(1, std::memory_order_acq_rel);  // before the fingerprint (NoteCtime)
    good_size_.store(static_cast<uint64_t>(st.st_size), std::memory_order_release);
    good_mtime_ns_.store(MtimeNs(st), std::memory_order_release);
    good_ctime_ns_.store(CtimeNs(st), std::memory_order_release);
    return Status::Ok();
  }
  bad_size_ = static_cast<uint64_t>(st.st_size);
  bad_mtime_ns_ = MtimeNs(st);
  bad_status_ = Status::Error(
      EIO, path + ": the archive changed while it was open (" + appended.message() +
               "): its members are not served until it is as it was (an interrupted append "
               "is undone by `npz recover " +
               path + "` or any npz command on it); or mount it again to read the new archive");
  Log(bad_status_.message());
  return bad_status_;
}

Status ArchiveShared::CheckAppendOnly(const struct stat& st) {
  const uint64_t now_size = static_cast<uint64_t>(st.st_size);
  if (now_size == size && MtimeNs(st) == mtime_ns) {
    // Back as it was at Open (a recovery undid an append): nothing to check.
    appended_.store(false, std::memory_order_release);
    return Status::Ok();
  }
  // An append adds at least one directory record: the file grows.
  if (now_size == size) return Status::Error(EIO, "its modification time changed");
  if (now_size < size) {
    return Status::Error(EIO, "its size changed from " + std::to_string(size) + " to " +
                                  std::to_string(now_size) + " bytes");
  }
  Result<ZipDirectory> now = ReadZipDirectory(fd.get(), path);
  if (!now.ok()) {
    return Status::Error(EIO,
                         "it grew, and its directory cannot be read: " + now.status().message());
  }
  if (now->entries.size() <= entries_.size()) {
    return Status::Error(EIO, "it grew, but has no new member");
  }
  for (size_t i = 0; i < entries_.size(); ++i) {
    const ZipEntry& a = entries_[i];
    const ZipEntry& b = now->entries[i];
    if (!SameMemberData(a, b) || a.name != b.name || a.flags != b.flags ||
        a.data_offset + a.compressed_size > now->cd_offset) {
      return Status::Error(EIO, "it grew, but member " + a.name + " is not as it was");
    }
  }
  appended_.store(true, std::memory_order_release);
  Log(path + ": the archive grew by an append (" +
      std::to_string(now->entries.size() - entries_.size()) +
      " new directory entries): the members mounted are still served; mount it again to see "
      "the new ones");
  return Status::Ok();
}

}  // namespace npzfs
