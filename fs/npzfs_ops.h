// The FUSE low-level operations table of npzfs: thin glue from kernel requests to core.
//
// Each handler turns one request into calls on the Archive (archived members), the Spool and
// its GrowingMembers (new members), the MemberReader of an open file and the InodeTable
// (names and inode numbers), then replies exactly once. A core Status becomes its errno in
// the reply plus one log line (none for the expected errnos, see npzfs_ops.cc).
//
// Ownership: main() owns the Mount and passes it as the session's userdata; it outlives the
// session loop. Open files own a FileHandle (fi->fh), freed in release.
// Thread safety: handlers run on the threads of fuse_session_loop_mt. The Mount's fields are
// set before the loop starts and then only read; the Archive, Spool, GrowingMember and
// InodeTable are thread-safe themselves.
#pragma once

#include <fuse_lowlevel.h>

#include <memory>
#include <string>

#include "core/write/spool.h"
#include "fs/inode_table.h"
#include "fs/options.h"
#include "npzfs/archive.h"

namespace npzfs::fs {

// Largest read and write request: 1 MiB (256 pages, the kernel's default
// /proc/sys/fs/fuse/max_pages_limit). The session must get "-o max_read=" with the same value
// as conn->max_read, or it refuses to start.
inline constexpr unsigned kMaxRequestBytes = 1u << 20;

struct Mount {
  Options options;
  std::string archive_path;          // absolute
  std::string result_path;           // absolute: "<dir>/.<base>.npzfs-result"
  std::shared_ptr<Archive> archive;  // nullptr: the archive does not exist yet
  std::unique_ptr<Spool> spool;      // nullptr: read-only mount
  std::unique_ptr<InodeTable> table;
  uid_t uid = 0;  // owner shown for every node
  gid_t gid = 0;
  int64_t start_time = 0;  // mtime of new directories and members
};

// The operations table (static storage).
const fuse_lowlevel_ops& NpzfsOperations();

}  // namespace npzfs::fs
