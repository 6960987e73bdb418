// Adds members to a ZIP archive (or writes a new one), atomically.
//
// The new archive is always built in a temp file in the archive's directory
// (".<name>.npzfs-tmp-XXXXXX"), fsynced, renamed over the archive, and the directory is
// fsynced. A reader holding the old archive open keeps seeing the old bytes; a crash leaves
// either the old archive or the new one, never a mix. On any error the temp file is removed
// and the old archive is untouched.
//
// Ownership: member pieces that name an fd borrow it (the caller keeps it open for the
// duration of the call). Functions are thread-safe with respect to different archives;
// two concurrent appends to the same archive race (the last rename wins) and must be
// serialised by the caller.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "npzfs/status.h"

namespace npzfs {

struct MemberPiece {  // one run of bytes of a new member
  std::string bytes;  // used when fd < 0
  int fd = -1;        // a file range (not owned) when fd >= 0
  uint64_t offset = 0, length = 0;
  std::string source = {};  // names the fd's file in error messages (optional)
};

struct NewMember {
  std::string name;  // e.g. "adc.npy"
  std::vector<MemberPiece> pieces;
  std::optional<uint32_t> crc32;  // of all pieces, if the caller already knows it
  // When deflating: the first this many bytes form a chunk of their own (a .npy header), so
  // the data's chunks start at data offsets. 0: none.
  uint64_t leading_chunk = 0;
};

struct WriteOptions {
  // -1: stored; 0..9: deflate at that level, in independent chunks with a seek table in
  // the central directory (core/README.md, "Seek table extra field").
  int compress_level = -1;
  size_t threads = 0;                       // deflate workers; 0: one per online CPU
  uint64_t chunk_size = uint64_t{1} << 20;  // uncompressed bytes per deflate chunk
  bool reject_existing_names = true;        // EEXIST if a new name is already in the archive
  std::function<void(uint64_t done, uint64_t total)> progress;  // may be empty
};

// Creates `archive_path` holding `members`, or, if it exists, a new archive holding the old
// members byte-identical followed by `members`. Atomic (see above).
// Errors: EINVAL the existing file is not a zip archive, or a bad option/member (empty name,
// duplicate new names); EEXIST a new name is already in the archive (reject_existing_names);
// EIO a source piece is shorter than claimed; EBUSY the archive was modified or replaced
// while the new one was being built; the errno of any failed system call (ENOSPC, EACCES,
// EROFS, ...). Every message starts with the archive path and names the cause.
// With no members an existing archive is left untouched (no rewrite) and a missing one is
// created as an empty archive. An existing empty file (0 bytes) counts as an empty archive. A
// symlinked archive path is resolved and its target replaced; an existing archive's mode is kept
// (and its owner, when the caller may set it).
Status AppendToArchive(const std::string& archive_path, const std::vector<NewMember>& members,
                       const WriteOptions& options);

// Like AppendToArchive but never keeps an existing file's members: overwrites `out_path`
// atomically with exactly `members` (npz pack). Duplicate new names are EINVAL when
// options.reject_existing_names is set.
Status WriteArchive(const std::string& out_path, const std::vector<NewMember>& members,
                    const WriteOptions& options);

}  // namespace npzfs
