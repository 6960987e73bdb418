// Copying a byte range from one file to another without a round trip through user space
// where the kernel allows it: the one home for copy_file_range in npzfs's writers (the old
// members of a copy-mode append, stored members with a known CRC, pre-deflated chunks).
//
// copy_file_range shares extents on XFS and btrfs (no data is copied and no space used) and
// copies inside the kernel elsewhere. Where it is refused (EXDEV, EINVAL, ENOSYS,
// EOPNOTSUPP, EBADF: other filesystems, special files, old kernels) the rest is copied with
// pread/pwrite through a 1 MiB buffer. A plain function over borrowed fds: thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "npzfs/status.h"

namespace npzfs {

// Copies `length` bytes of `src` at `src_offset` to `dst` at `dst_offset`. `on_bytes` (may
// be empty) is called after each step with the bytes just copied. Errors: EIO if the source
// ends early (naming `src_path`, the offset and the range wanted); the errno of a failed
// read or write, naming the file.
Status CopyFileRange(int src, uint64_t src_offset, int dst, uint64_t dst_offset, uint64_t length,
                     const std::string& src_path, const std::string& dst_path,
                     const std::function<void(uint64_t)>& on_bytes = {});

}  // namespace npzfs
