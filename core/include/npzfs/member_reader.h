// Random-access readers for members: one reader per open file.
//
// A MemberReader hands out the uncompressed bytes of one member at any offset. There is
// one implementation per way of getting bytes (as in mount-zip): a stored member is a
// pread from the archive file; a deflated member goes through the shared span cache, the
// checkpoint index and parked inflate streams (core/read/); a new member that is still
// growing is read through its open-time snapshot (core/write/).
//
// Read() is what the FUSE layer calls: it either copies the bytes into the caller's buffer
// or, where the bytes sit unchanged in a file, answers "splice them from this fd at this
// offset", so the daemon can reply without copying through user space.
//
// Ownership: readers are created by Archive::OpenMember and are cheap handles. Every
// reader of one member shares that member's state (index, CRC status); a reader keeps the
// archive's fd, cache and stream pool alive for as long as it exists, so it may outlive
// the Archive object.
//
// Threads: every method is safe to call from many threads at once on one reader (the FUSE
// daemon runs multi-threaded, and two processes may read one member at once).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "npzfs/status.h"

namespace npzfs {

// The answer to one Read: `length` bytes (0 only at or past the end of the member), in one
// of three places:
//   - copied into the caller's buffer (splice_fd < 0 and `pieces` empty);
//   - in [splice_offset, splice_offset + length) of splice_fd (not owned; open at least as
//     long as the reader);
//   - in memory the reader already holds (decoded spans in the cache): `pieces`, in order,
//     whose sizes add up to `length`, valid for as long as this answer lives (`hold` keeps
//     them from being freed or reused). The caller copies them out and drops the answer.
//     There may be many: one per span the bytes come from, and a seek table's spans may be
//     as small as one byte.
struct ReadAnswer {
  size_t length = 0;
  int splice_fd = -1;
  uint64_t splice_offset = 0;
  std::vector<std::span<const std::byte>> pieces;
  std::vector<std::shared_ptr<const void>> hold;

  static ReadAnswer Copied(size_t n) {
    ReadAnswer a;
    a.length = n;
    return a;
  }
  static ReadAnswer Spliced(size_t n, int fd, uint64_t offset) {
    ReadAnswer a = Copied(n);
    a.splice_fd = fd;
    a.splice_offset = offset;
    return a;
  }
};

class MemberReader {
 public:
  virtual ~MemberReader() = default;

  // Uncompressed size of the member (from the central directory).
  virtual uint64_t size() const = 0;

  // Fills `dest` with the bytes at `offset`. The result is short only at the end of the
  // member (0 at or past the end). Errors, all naming the archive and the member:
  //   EIO  corrupt deflate data, a CRC-32 mismatch (this read and every later read of the
  //        member fail once a mismatch was seen), a member shorter than its directory
  //        entry says, or a failed pread of the archive.
  virtual Result<size_t> ReadAt(uint64_t offset, std::span<std::byte> dest) = 0;

  // Answers a read of up to dest.size() bytes at `offset`: a splice or held-memory answer
  // where the reader can give one (either spares the caller a copy), else the bytes copied
  // into `dest` (the default). Same errors and end-of-member rule as ReadAt.
  virtual Result<ReadAnswer> Read(uint64_t offset, std::span<std::byte> dest) {
    NPZ_ASSIGN_OR_RETURN(size_t n, ReadAt(offset, dest));
    return ReadAnswer::Copied(n);
  }

  // The error every read of the member returns from now on, once the member is known to be
  // bad (a CRC-32 mismatch, corrupt deflate data); ok while it is not known to be. Bytes
  // served before that was known may have been wrong (see verify modes): the FUSE daemon
  // drops the kernel's cached pages of such a member at the next open.
  virtual Status known_bad() const { return Status::Ok(); }
};

// Fills `dest` exactly from `reader` at `offset`: the reader's error, or EIO naming `name`
// if the member ends first.
Status ReadExactAt(MemberReader& reader, uint64_t offset, std::span<std::byte> dest,
                   const std::string& name);

// numpyWriter's readFrames on an archive member: frames [start, stop) of the .npy behind
// `reader`, reading only the header and those frames. Errors as ReadNpyHeaderFrom and
// ReadFramesFrom (npzfs/npy_reader.h), naming `name` (e.g. "tmp.npz:adc").
Result<std::vector<std::byte>> ReadMemberFrames(MemberReader& reader, uint64_t start, uint64_t stop,
                                                const std::string& name);

}  // namespace npzfs
