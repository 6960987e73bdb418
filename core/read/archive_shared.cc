#include "core/read/archive_shared.h"

#include <sys/stat.h>

#include <algorithm>

namespace npzfs {
namespace {

// Fast-path resume points get an eighth of the cache budget, and at least room for a few
// dozen (an ISA-L snapshot is ~54 KiB).
constexpr uint64_t kMinSnapshotBytes = 4 << 20;

}  // namespace

ArchiveShared::ArchiveShared(UniqueFd fd_in, std::string path_in, const struct stat& st,
                             const ArchiveOptions& options)
    : fd(std::move(fd_in)),
      path(std::move(path_in)),
      size(static_cast<uint64_t>(st.st_size)),
      mtime_ns(MtimeNs(st)),
      verify(options.verify),
      background_index(options.background_index),
      cache(options.cache_bytes),
      pool(options.max_parked_streams),
      fast_pool(options.max_parked_streams),
      snapshots(std::max<uint64_t>(options.cache_bytes / 8, kMinSnapshotBytes)),
      log(options.log) {}

Status ArchiveShared::CheckUnchanged() {
  if (changed_.load(std::memory_order_acquire)) {
    std::lock_guard<std::mutex> lock(mu_);
    return changed_status_;
  }
  struct stat st;
  std::string what;
  if (::fstat(fd.get(), &st) != 0) {
    what = "fstat failed";
  } else if (static_cast<uint64_t>(st.st_size) != size) {
    what = "its size changed from " + std::to_string(size) + " to " + std::to_string(st.st_size) +
           " bytes";
  } else if (MtimeNs(st) != mtime_ns) {
    what = "its modification time changed";
  } else {
    return Status::Ok();
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (!changed_.load(std::memory_order_relaxed)) {
    changed_status_ = Status::Error(
        EIO, path + ": the archive changed while it was open (" + what +
                 "): its members are no longer served; mount it again to read the new archive");
    changed_.store(true, std::memory_order_release);
    Log(changed_status_.message());
  }
  return changed_status_;
}

}  // namespace npzfs
