// The FUSE low-level operations table of npzfs: thin glue from kernel requests to core.
//
// Each handler turns one request into calls on the Archive (archived members), the Spool and
// its GrowingMembers (new members), the MemberReader of an open file and the InodeTable
// (names and inode numbers), then replies exactly once. A core Status becomes its errno in
// the reply plus one log line (none for the expected errnos, see npzfs_ops.cc). The state
// they share is the Mount (fs/mount.h), the session's userdata.
#pragma once

#include <fuse_lowlevel.h>

#include "fs/mount.h"

namespace npzfs::fs {

// Largest read and write request: 1 MiB (256 pages, the kernel's default
// /proc/sys/fs/fuse/max_pages_limit). The session must get "-o max_read=" with the same value
// as conn->max_read, or it refuses to start.
inline constexpr unsigned kMaxRequestBytes = 1u << 20;

// The operations table (static storage).
const fuse_lowlevel_ops& NpzfsOperations();

}  // namespace npzfs::fs
