// What every reader of one archive shares: the read-only fd and what the archive file looked
// like when it was opened, the span cache, the parked inflate streams, the options and the
// log. Owned jointly by the Archive and every member state and reader (a reader may outlive
// the Archive object).
//
// The archive must not change under a live mount: members are served from fixed offsets, so
// a rewritten or truncated file would be read as silently wrong or short data. Every read
// calls CheckUnchanged first: one fstat (a few hundred nanoseconds, next to a FUSE round
// trip of tens of microseconds), so a change is caught by the very next read.
//
// Threads: every member is safe to use from many threads at once.
#pragma once

#include <sys/stat.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>

#include "core/read/decode_stream.h"
#include "core/read/inflate_index.h"
#include "core/read/snapshot_store.h"
#include "core/read/span_cache.h"
#include "core/read/stream_pool.h"
#include "npzfs/archive.h"
#include "npzfs/file_util.h"
#include "npzfs/status.h"

namespace npzfs {

struct ArchiveShared {
  // `st` is the fstat of `fd_in` taken before the directory was read.
  ArchiveShared(UniqueFd fd_in, std::string path_in, const struct stat& st,
                const ArchiveOptions& options);

  void Log(const std::string& line) const {
    if (log) log(line);
  }

  // Ok while the archive file keeps the size and mtime it had at Open. Otherwise EIO naming
  // the archive and what changed; the first failure is logged, and every later call fails
  // the same way (the archive is not read again by this process).
  Status CheckUnchanged();

  const UniqueFd fd;
  const std::string path;
  const uint64_t size;     // st_size at Open
  const int64_t mtime_ns;  // st_mtim at Open, in nanoseconds
  const VerifyMode verify;
  const bool background_index;
  SpanCache cache;
  StreamPool<InflateStream> pool;      // zlib streams: first passes, spans inside blocks
  StreamPool<DecodeStream> fast_pool;  // fast-engine streams: spans from block starts
  SnapshotStore snapshots;             // fast-path resume points (an eighth of the cache)
  const std::function<void(const std::string&)> log;

 private:
  std::atomic<bool> changed_{false};  // set once; then changed_status_ is final
  std::mutex mu_;                     // guards changed_status_; a leaf lock
  Status changed_status_;
};

// Nanoseconds of a stat's mtime.
inline int64_t MtimeNs(const struct stat& st) {
  return int64_t{st.st_mtim.tv_sec} * 1000000000 + st.st_mtim.tv_nsec;
}

}  // namespace npzfs
