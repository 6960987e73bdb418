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
// One change is harmless and common: an append in place (`npz add`, another mount's
// finalize, Python's zipfile in append mode) writes new members and a new directory after
// the old members' bytes, which it never touches. So when the size or mtime changes,
// CheckUnchanged waits for the appender's lock (writers of npzfs hold an exclusive flock on
// the archive for the whole append), reads the directory again and accepts the change if
// every entry known at Open is still there, the same in every field that locates or checks
// its bytes. The old members are then served as before (their CRC checks still guard every
// byte); the new ones appear at the next mount. Any other change of size or mtime gives EIO.
//
// A writer can keep the size and put the mtime back (`rsync --inplace -t`, `touch -r`), but
// not the ctime, which every change of the file's data or status sets. A change of the
// ctime alone (also a chmod or a rename of the archive, which change no byte) is accepted,
// and so is an append, but each starts a new change epoch: a stored member then checks every
// chunk again against the CRC-32s it recorded before serving it (its pass found them good),
// instead of splicing the bytes it checked before the change. Deflated members are left as
// they are: cached spans hold the bytes decoded before the change, and a span decoded after
// it is checked against the index's CRC-32 when the member is indexed (before that, as on
// any first read, bytes are served as they decode and the member's CRC-32 judges at the end).
//
// Threads: every member is safe to use from many threads at once.
#pragma once

#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "core/read/decode_stream.h"
#include "core/read/inflate_index.h"
#include "core/read/snapshot_store.h"
#include "core/read/span_cache.h"
#include "core/read/stream_pool.h"
#include "npzfs/archive.h"
#include "npzfs/file_util.h"
#include "npzfs/status.h"
#include "npzfs/zip_directory.h"

namespace npzfs {

// Where the reads of one member go, to tell a reader streaming through it from a random one:
// deflated members decode spans ahead of a streaming reader, stored members check chunks
// ahead of it. It also learns how long a reader of objects reads in order after each jump
// (typical_run): np.load(mmap_mode='r') reads a frame as the kernel's read-around of the
// first fault and then its readahead, a run of about the same length for every frame.
// Lock-free and safe from many threads (several readers of one member blur the record,
// which at worst starts or stops the work ahead a little early or late).
class SequentialRun {
 public:
  // A read that starts within this distance of where the last one ended counts as in order
  // (several FUSE threads deliver the kernel's readahead slightly out of order).
  static constexpr uint64_t kSlack = 2 << 20;
  // A reader streams once it has read this much in order.
  static constexpr uint64_t kStreaming = 4 << 20;

  // Records a read of `n` bytes at `offset`; returns the bytes read in order up to its end
  // (just `n` for a read that jumped: it starts a new run).
  uint64_t Note(uint64_t offset, uint64_t n) {
    const uint64_t expected = next_.exchange(offset + n);
    const bool in_order =
        offset >= expected ? offset - expected <= kSlack : expected - offset <= kSlack;
    if (in_order) return run_.fetch_add(n) + n;
    const uint64_t ended = run_.exchange(n);
    if (ended > 0) before_last_.store(last_.exchange(ended));
    return n;
  }

  // The length of the runs that ended lately: the smaller of the last two (one long run,
  // a `cat` say, does not make the next jump decode far ahead), 0 until two have ended.
  uint64_t typical_run() const { return std::min(last_.load(), before_last_.load()); }

 private:
  std::atomic<uint64_t> next_{0};  // where a sequential reader reads next
  std::atomic<uint64_t> run_{0};   // bytes read in order up to there
  std::atomic<uint64_t> last_{0};  // the length of the run that ended last
  std::atomic<uint64_t> before_last_{0};  // and of the one before it
};

struct ArchiveShared {
  // `st` is the fstat of `fd_in` taken before the directory was read; `entries` is that
  // directory's (kept to recognize an append).
  ArchiveShared(UniqueFd fd_in, std::string path_in, const struct stat& st,
                std::vector<ZipEntry> entries, const ArchiveOptions& options);

  void Log(const std::string& line) const {
    if (log) log(line);
  }

  // Ok while the archive file keeps the size and mtime it had at Open, or changed only by
  // appends (see above). Otherwise EIO naming the archive and what changed, logged once per
  // change; the archive is checked again only when its size or mtime changes again (a
  // recovery that puts the old archive back makes it readable again).
  Status CheckUnchanged();
  // Counts the accepted changes (a ctime changed alone, an append) since Open: see above.
  uint64_t change_epoch() const { return change_epoch_.load(std::memory_order_acquire); }
  // True once an append was accepted: the directory read at Open no longer describes the
  // file (an index saved now must be written for the directory as it is now).
  bool appended() const { return appended_.load(std::memory_order_acquire); }

  const UniqueFd fd;
  const std::string path;
  const uint64_t size;     // st_size at Open
  const int64_t mtime_ns;  // st_mtim at Open, in nanoseconds
  const VerifyMode verify;
  const bool background_index;
  const uint64_t speculate_bytes;  // ArchiveOptions::speculate_bytes
  SpanCache cache;
  StreamPool<InflateStream> pool;      // zlib streams: first passes, spans inside blocks
  StreamPool<DecodeStream> fast_pool;  // fast-engine streams: spans from block starts
  SnapshotStore snapshots;             // fast-path resume points (an eighth of the cache)
  const std::function<void(const std::string&)> log;

 private:
  // Why the file as it is now (size, mtime) is not an append of the archive read at Open.
  Status CheckAppendOnly(const struct stat& st);
  // A ctime not seen yet (size and mtime kept, or an append under way) starts a new change
  // epoch. Requires mu_.
  void NoteCtime(const struct stat& st);

  const std::vector<ZipEntry> entries_;  // the directory read at Open
  // The (size, mtime, ctime) last found good: at Open, then after each accepted change.
  std::atomic<uint64_t> good_size_;
  std::atomic<int64_t> good_mtime_ns_;
  std::atomic<int64_t> good_ctime_ns_;
  std::atomic<uint64_t> change_epoch_{0};
  std::atomic<bool> appended_{false};
  std::mutex mu_;  // serializes the checks of a change; guards the three below; a leaf lock
  uint64_t bad_size_ = 0;  // the (size, mtime) last found bad, and why
  int64_t bad_mtime_ns_ = 0;
  Status bad_status_;
};

// Nanoseconds of a stat's mtime, for comparing fingerprints (wraps, well defined, for mtimes
// beyond the year 2262).
inline int64_t MtimeNs(const struct stat& st) {
  return static_cast<int64_t>(static_cast<uint64_t>(st.st_mtim.tv_sec) * 1000000000u +
                              static_cast<uint64_t>(st.st_mtim.tv_nsec));
}
inline int64_t CtimeNs(const struct stat& st) {
  return static_cast<int64_t>(static_cast<uint64_t>(st.st_ctim.tv_sec) * 1000000000u +
                              static_cast<uint64_t>(st.st_ctim.tv_nsec));
}

}  // namespace npzfs
