// Deflates the completed chunks of growing members in the background, while frames arrive,
// so that finalizing a compressed archive copies compressed bytes instead of compressing.
//
// One thread (at a lower CPU priority) for all the members of a spool, so at most one core,
// and never on a writer's path: writers do not call it and never wait for it. The thread
// looks at the tracked members every 50 ms (and when woken): whenever a member's visible
// data holds a chunk (256 KiB of data after the .npy header) that its shadow
// (core/write/deflate_shadow.h) does not, it reads that chunk from the spool file (bytes
// below the visible size never change), deflates it and appends it to the shadow. Readers of
// the growing member are untouched: they read the spool file, which is never written here.
//
// Durability. A shadow record may survive a power cut only if the spool bytes it was
// deflated from do too: otherwise the writer could later write other frames at those
// offsets, and finalize would copy the stale chunk. So before a shadow writes records
// (DeflateShadow::Sync), this thread fdatasyncs the member's spool file (and, once per
// member, fsyncs its directory). That is at most one fdatasync per 64 MiB of data (256
// chunks) and one when the thread goes idle, on this thread, never on a writer's path; the
// writers' own durability (Fsync) is unchanged.
//
// Errors (ENOSPC, EIO) stop the background work for that member only: its shadow is
// removed (freeing the space for the raw frames), a log line says so, and finalize deflates
// that member from the spool file as if there had been no background work.
//
// Ownership: holds shared_ptrs of the members it tracks and owns their shadows until Take
// hands one over. Thread safety: every method may be called from any thread. Lock order:
// this object's mutex, then a GrowingMember's (the thread asks members for their size).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/write/deflate_shadow.h"
#include "core/write/growing_member.h"

namespace npzfs {

class BackgroundDeflater {
 public:
  // Makes the bytes written to a member's spool file `fd` (at `path`) durable.
  using SyncSpoolFn = std::function<Status(int fd, const std::string& path)>;
  // fdatasync(2).
  static Status DataSyncSpool(int fd, const std::string& path);

  // Starts the thread. `level` 0..9; `chunk_size` uncompressed bytes per chunk (the archive
  // writer's chunk size, so that finalize can use the chunks). `sync_spool` replaces
  // DataSyncSpool only for tests that watch when the spool files are synced.
  BackgroundDeflater(int level, uint64_t chunk_size, SpoolLogFn log,
                     SyncSpoolFn sync_spool = DataSyncSpool);
  // Stops the thread after the chunk in progress and records what was deflated (Sync).
  ~BackgroundDeflater();
  BackgroundDeflater(const BackgroundDeflater&) = delete;
  BackgroundDeflater& operator=(const BackgroundDeflater&) = delete;

  int level() const { return level_; }
  uint64_t chunk_size() const { return chunk_size_; }

  // Starts deflating `member` (its existing shadow is resumed). Idempotent.
  void Track(std::shared_ptr<GrowingMember> member);
  // Stops deflating `member` and hands over its shadow (nullptr if it has none), after the
  // chunk in progress, if any, is complete.
  std::unique_ptr<DeflateShadow> Take(const GrowingMember* member);
  // New data may be there: look now rather than at the next 50 ms tick.
  void Wake();
  // Waits until no tracked member has a complete chunk left to deflate (tests and the
  // benchmark; finalize never needs to wait).
  void WaitUntilIdle();

 private:
  struct Entry {
    std::shared_ptr<GrowingMember> member;
    std::unique_ptr<DeflateShadow> shadow;
    bool disabled = false;  // an error stopped the work for this member
    bool taken = false;     // Take is waiting for the chunk in progress: start no other
  };
  // What the thread does next, chosen under mu_.
  struct Work {
    Entry* entry = nullptr;
    uint64_t header_length = 0;
    uint64_t data_bytes = 0;  // visible data bytes of the member
  };
  void Run();
  Work PickWork();
  Status DeflateNextChunk(const Work& work, std::string& in, std::string& out);
  Status SyncIdleShadows(std::unique_lock<std::mutex>& lock);
  void Disable(Entry& e, const Status& why);

  const int level_;
  const uint64_t chunk_size_;
  const SpoolLogFn log_;
  const SyncSpoolFn sync_spool_;
  std::mutex mu_;  // guards entries_, busy_, idle_, stop_
  std::condition_variable wake_, changed_;
  std::vector<std::unique_ptr<Entry>> entries_;
  Entry* busy_ = nullptr;  // the entry the thread works on without mu_
  bool idle_ = false;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace npzfs
