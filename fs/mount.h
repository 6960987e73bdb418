// The state of one mount, shared by every FUSE handler: what was mounted, the spool (made on
// the first new member), the open files, and the counters behind user.npzfs.stats.
//
// Ownership: main() owns the Mount and passes it as the session's userdata; it outlives the
// session loop. The Mount owns every open file's FileHandle (HandleTable): a handle the
// kernel never released (a lazy unmount while files were open) is freed with the Mount, so
// nothing it holds (readers, the Archive through them, writer sessions) leaks.
//
// Thread safety: handlers run on the threads of fuse_session_loop_mt. The plain fields are
// set before the loop starts and then only read; SpoolSlot, HandleTable, ArchivedLayouts
// and MountStats are thread-safe; the Archive, Spool, GrowingMember and InodeTable are
// thread-safe themselves.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/write/spool.h"
#include "fs/inode_table.h"
#include "fs/options.h"
#include "fs/runtime.h"
#include "npzfs/archive.h"
#include "npzfs/archive_writer.h"
#include "npzfs/member_reader.h"

namespace npzfs::fs {

// One open file: the reader every read goes through, and for new members the member itself
// plus a writer session when opened for writing (ended when the handle is destroyed).
struct FileHandle {
  std::shared_ptr<MemberReader> reader;    // archived, or a growing member's snapshot/live view
  std::shared_ptr<GrowingMember> growing;  // new member: write, fsync, truncate
  WriterSession session;                   // token != 0 while this handle is the writer
  bool writer = false;
  bool archived = false;
  std::atomic<uint64_t>* writers = nullptr;  // MountStats counter to decrement, if a writer

  FileHandle() = default;
  FileHandle(const FileHandle&) = delete;
  FileHandle& operator=(const FileHandle&) = delete;
  ~FileHandle();
};

// Every open file's handle. fi->fh is the handle's address; Release removes it.
class HandleTable {
 public:
  FileHandle* Add(std::unique_ptr<FileHandle> handle);
  std::unique_ptr<FileHandle> Remove(FileHandle* handle);
  // Destroys every handle still open (after the session: ends their writer sessions).
  void Clear();
  size_t size() const;

 private:
  mutable std::mutex mu_;
  std::unordered_map<FileHandle*, std::unique_ptr<FileHandle>> handles_;
};

// The spool, opened at mount when one exists (resumed) and otherwise made on the first new
// member: an archive on a read-only dataset mounts and serves its members without one.
class SpoolSlot {
 public:
  // The mount's compression level (-o compress, or the level a resumed spool records):
  // every spool this slot holds deflates completed chunks in the background at it
  // (Spool::StartBackgroundDeflate), once AllowThreads was called, and a spool GetOrCreate
  // makes records it (nullopt: stored). Call before Set or GetOrCreate.
  void SetBackgroundDeflate(std::optional<int> level) { background_level_ = level; }
  // The daemon has forked (fuse_daemonize): the background deflater may start now. A thread
  // started before the fork would not exist in the daemon, and finalize would wait for it
  // forever. Before this call, Set keeps the spool without starting it.
  void AllowThreads();
  void Set(std::unique_ptr<Spool> spool);
  Spool* get() const;  // nullptr until made; then valid for the Mount's life
  // The spool of `archive_path`, made now in `dir` if needed (Spool::Open). EROFS, with one
  // log line (the first time) naming the file and the cause, if new members could never be
  // finalized into the archive (CheckCanAppend with `mode`: the archive or its directory is
  // not writable), or if the spool cannot be made (the line then suggests -o spool=DIR);
  // but ENOSPC or EDQUOT, with a line saying to free space, when the disk is full: the next
  // create tries again.
  Result<Spool*> GetOrCreate(const std::string& dir, const std::string& archive_path,
                             WriteOptions::AppendMode mode);

 private:
  // Starts the spool's background deflater if there is a spool, -o compress and the fork
  // is done (mu_ held; Spool::StartBackgroundDeflate does nothing the second time).
  void StartBackgroundLocked();

  mutable std::mutex mu_;
  std::unique_ptr<Spool> spool_;
  bool failure_logged_ = false;
  bool nospace_logged_ = false;  // until a spool is made: a full disk is said once
  std::optional<int> background_level_;
  bool threads_allowed_ = false;
};

// Counters for the user.npzfs.stats xattr.
struct MountStats {
  std::atomic<uint64_t> requests{0};      // FUSE requests handled
  std::atomic<uint64_t> bytes_served{0};  // bytes answered to reads
  std::atomic<uint64_t> writers{0};       // handles open for writing now
};

// The frame layout of archived .npy members, for their read-only user.npy.* xattrs: read
// from the member's header on first use and kept.
class ArchivedLayouts {
 public:
  // nullopt if the member is not a .npy or its header cannot be read.
  std::optional<NpyHeader> Get(Archive& archive, size_t member_index);

 private:
  std::mutex mu_;
  std::unordered_map<size_t, std::optional<NpyHeader>> layouts_;
};

struct Mount {
  Options options;
  std::string archive_path;          // absolute
  std::string spool_dir;             // absolute; the spool itself may not exist yet
  std::string mount_dir;             // the mount point, absolute, its symlinks resolved
  RuntimeFiles runtime;              // result, progress, lock, log ("" each when unavailable)
  MountLock lock;                    // the runtime lock of a writable mount
  std::shared_ptr<Archive> archive;  // nullptr: the archive does not exist yet (-o create)
  SpoolSlot spool;
  std::unique_ptr<InodeTable> table;
  HandleTable handles;
  MountStats stats;
  ArchivedLayouts layouts;
  uid_t uid = 0;  // owner shown for every node
  gid_t gid = 0;
  int64_t start_time = 0;  // mtime of new directories and members
  // -s: one thread serves every request, so nothing may wait for another request.
  bool single_threaded = false;

  bool writable() const { return !options.read_only; }
  WriteOptions::AppendMode append_mode() const {
    return options.finalize_copy ? WriteOptions::AppendMode::kCopy
                                 : WriteOptions::AppendMode::kInPlace;
  }
  // The result file `npz umount` reads ("" for a read-only mount: nothing is finalized).
  const std::string& result_path() const;
};

}  // namespace npzfs::fs
