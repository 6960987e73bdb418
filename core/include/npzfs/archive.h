// An opened .npz (ZIP) archive for reading: its visible member tree and random-access
// readers for its members.
//
// Tree rules (the FUSE layer and the npz tool show exactly members()):
//   - names are sanitized: a leading '/' is stripped, '.' and empty components are
//     dropped; a name with a '..' component, a NUL byte, a component over 255 bytes, a
//     length of PATH_MAX or more, or that becomes empty is skipped with a log line (its
//     siblings are listed as usual);
//   - an entry whose bytes overlap another entry's (its data runs into the next local
//     header: the central directory's sizes lie) is skipped with a log line;
//   - duplicate names: the LAST central-directory entry wins (as zipfile and numpy);
//   - directory entries ("x/") are not members; a file whose path is also a directory of
//     another member ("a" and "a/b.npy") is skipped with a log line;
//   - encrypted members (flag bit 0) are listed with open_errno = EPERM, members with a
//     method other than 0 (stored) or 8 (deflated) with open_errno = ENOTSUP; OpenMember
//     on them fails with that errno and open_error.
//
// Random access to deflated members: see core/read/inflate_index.cc (design essay). The index
// of checkpoints is saved in a sidecar file ".<archive name>.npzfs-index" next to the
// archive (or ".<archive name>-<hash>.npzfs-index" in ArchiveOptions::index_dir) and reused
// while the archive is unchanged; its format is specified in core/README.md, "Index file
// format".
//
// Stored members are checked too: a verify pass over the whole member (in the background,
// from the first read), then chunk CRCs kept in the sidecar (core/read/stored_member.h).
// ArchiveOptions::verify chooses how strict this is.
//
// The archive file must not change while it is open: a change of its size or mtime makes
// every later read EIO, with one log line.
//
// Ownership: Archive owns the read-only fd of the archive, the span cache and the pool of
// parked inflate streams (through a shared block that member readers also hold, so readers
// may outlive the Archive). Destroying the Archive stops its members' background verify
// passes. Thread-safety: every const method and OpenMember, BuildIndex, VerifyMember,
// SaveIndex may be called from many threads at once after Open.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "npzfs/member_reader.h"
#include "npzfs/status.h"
#include "npzfs/zip_directory.h"

namespace npzfs {

// How much CRC-32 checking reads get (every member's CRC-32 covers all of its bytes, so a
// check needs one pass over the whole member; core/read/stored_member.h, inflate_index.cc).
enum class VerifyMode {
  // Every byte is checked: a member's first pass checks its CRC-32 (in the background for
  // stored members), saved per-span CRCs check every span before it is served after that.
  // Bytes read before the first pass has finished are served unchecked, and a read that
  // reaches the end of the member waits for the verdict (EIO on a mismatch).
  kDefault,
  kStrict,  // as kDefault, but no byte of a member is served before its first pass finished
  kOff,     // no CRC-32 is checked; stored members are spliced unchecked
};

struct ArchiveOptions {
  uint64_t cache_bytes = 128ull << 20;         // decompressed span cache budget (cache=MiB)
  uint64_t checkpoint_spacing = 256ull << 10;  // between access points (64 KiB - 4 MiB)
  bool index_enabled = true;                   // index=off: no sidecar read or written
  // Where the sidecar is read and saved. Empty: next to the archive, as
  // ".<archive name>.npzfs-index"; a directory holds the indexes of many archives, each
  // named ".<archive name>-<hash of its absolute path>.npzfs-index" (SharedIndexFileName).
  std::string index_dir;
  // A second place to read a sidecar from (never written), used when index_dir has none
  // that applies (missing, stale, not trusted, damaged): "" for next to the archive. For a
  // dataset whose directory the reader cannot write, the index its owner saved beside it.
  std::optional<std::string> index_fallback_dir;
  size_t max_parked_streams = 16;              // live inflate streams kept across members
  VerifyMode verify = VerifyMode::kDefault;    // verify=strict|off
  // Learn a deflated member's checkpoints on a background thread while a reader runs ahead
  // of them (core/read/deflated_member.h); off, they are learned only by reads in the first
  // span and by BuildIndex.
  bool background_index = true;
  // A reader this many bytes (or more) beyond every resume point of a deflated member gets
  // a second core on its wait: a DecodePool thread guesses a way into the second half of the
  // gap and decodes it while the reader decodes the first (core/read/fast_path.cc). 0: never.
  // Only with ISA-L and two or more online CPUs.
  uint64_t speculate_bytes = 32ull << 20;
  std::function<void(const std::string&)> log;  // warnings (unsafe names, CRC...); may be empty
};

struct ArchiveMember {
  std::string path;        // sanitized relative path as shown in the mount ("a/b.npy")
  ZipEntry entry;          // from the central directory
  size_t entry_index = 0;  // position of `entry` in the central directory
  int open_errno = 0;      // non-zero: listed but cannot be opened (EPERM / ENOTSUP)
  std::string open_error;  // why, for the log
};

enum class IndexState {
  kNotNeeded,  // stored member (or one that cannot be opened)
  kNone,       // deflated, no checkpoint beyond the start yet
  kPartial,    // the first pass stopped part way
  kComplete,   // every span is known and the CRC-32 of the whole member was checked
  kSeekable,   // deflated by npzfs in independent chunks: its seek table is the index
};

// Counters of an open archive (user.npzfs.stats of a mount).
struct ArchiveStats {
  uint64_t spans_inflated = 0;    // spans of deflated members inflated (first passes and misses)
  uint64_t cache_hits = 0;        // span cache lookups answered from the cache
  uint64_t cache_misses = 0;      // span cache lookups that had to inflate
  uint64_t first_pass_spans = 0;  // spans inflated by first passes (learning checkpoints)
  uint64_t speculations = 0;      // far reads whose decoding was split between two cores
};

class DeflatedMember;     // core/read/deflated_member.h
class StoredMember;       // core/read/stored_member.h
struct ArchiveShared;     // core/read/archive_shared.h
struct IndexFingerprint;  // core/read/index_file.h
struct IndexRecord;       // core/read/index_file.h

class Archive {
 public:
  // Opens `path` read-only, reads its central directory and (unless disabled) the sidecar
  // index. Errors name the archive: ENOENT/EACCES from open, EINVAL not a zip archive, EIO
  // truncated. A stale or corrupt sidecar is not an error (log line; rebuilt on demand).
  static Result<std::shared_ptr<Archive>> Open(const std::string& path, ArchiveOptions options);
  ~Archive();

  const std::string& path() const;
  int fd() const;  // read-only fd of the archive, valid as long as the Archive lives
  const ZipDirectory& directory() const { return directory_; }
  const std::vector<ArchiveMember>& members() const { return members_; }
  std::optional<size_t> Find(std::string_view path) const;

  // Cheap: readers of one member share its state. Errors: the member's open_errno (EPERM
  // encrypted, ENOTSUP method), EIO for a stored member whose sizes disagree, ERANGE for a
  // bad index.
  Result<std::shared_ptr<MemberReader>> OpenMember(size_t i);

  IndexState index_state(size_t i) const;
  // Bytes of checkpoint data held for member i (0 for stored members).
  uint64_t index_bytes(size_t i) const;
  // Number of spans member i has inflated during first passes (a test hook: a member whose
  // index came from the sidecar inflates none when read again).
  uint64_t first_pass_spans(size_t i) const;
  // Chunks of member i decoded ahead of its checkpoints by the fast path (a test hook).
  uint64_t fast_chunks(size_t i) const;
  // Known spans of member i whose decoder was restored at their checkpoint rather than
  // continued from the span before (a test hook).
  uint64_t span_restores(size_t i) const;
  // Far reads of member i whose decoding was split between two cores (ArchiveOptions::
  // speculate_bytes; a test hook).
  uint64_t speculations(size_t i) const;
  // The uncompressed offsets where member i's spans start, as far as they are known (a test
  // hook: which spans a read touches; empty for stored members).
  std::vector<uint64_t> span_starts(size_t i) const;
  // Totals over every member since Open.
  ArchiveStats stats() const;

  // Runs the first pass over member i now (npz index), calling progress(done, total) with
  // uncompressed bytes after each span. A no-op for stored members or a complete index.
  // Errors: EIO corrupt data or CRC mismatch; those of OpenMember.
  // (Stored members are checked by VerifyMember.)
  Status BuildIndex(size_t i, const std::function<void(uint64_t, uint64_t)>& progress = {});

  // Runs the first pass of member i until its checkpoints cover `offset` (what BuildIndex
  // does, stopping there): a tool that read ahead of the checkpoints (the fast path) keeps
  // what it read for the next run. A no-op for stored members. Errors: as BuildIndex.
  Status IndexUpTo(size_t i, uint64_t offset);

  // Completes the first pass of deflated members whose background indexer has started (a
  // reader ran ahead of its checkpoints) and is not done, in the calling thread at normal
  // priority (the indexer itself runs only on idle cores), as long as the uncompressed bytes
  // still to index, summed over those members, stay within `budget`. Meant for an unmount:
  // a member that was nearly read through is fully indexed for the next mount, while an
  // unmount after a glance at a huge member is not held up for minutes (what was indexed
  // is saved either way, and the next mount continues from there). Errors: the first
  // member's whose pass failed (the others are still completed). A no-op with
  // index_enabled = false.
  Status FinishStartedIndexes(uint64_t budget);

  // Checks member i's CRC-32 now if it was not checked yet (a stored member's verify pass, a
  // deflated member's first pass), and returns the verdict: EIO on a mismatch.
  Status VerifyMember(size_t i);
  // Bytes read from the archive to check stored member i's CRC-32s (a test hook).
  uint64_t verify_bytes(size_t i) const;

  // True when some member learned checkpoints (or a stored member was verified) and the
  // sidecar does not have it yet.
  bool index_dirty() const;
  // Writes the sidecar if anything new was learned: temp file + fsync + rename + fsync of
  // the directory; never touches the archive. The file gets the archive's read and write
  // permission bits (under the umask). A no-op with index_enabled = false.
  Status SaveIndex();
  std::string IndexPath() const;  // where SaveIndex writes (options.index_dir)
  // The sidecar the index was loaded from at Open (IndexPath or the fallback's); "" if none
  // applied.
  const std::string& LoadedIndexPath() const { return loaded_index_path_; }

  // After new members were appended to this archive's file in place (finalize, npz add: the
  // old members' bytes and offsets unchanged), writes the sidecar for the archive as it is
  // on disk now, with everything this Archive knows about its members: each record is kept
  // if its entry is still at the same position of the new central directory with the same
  // offsets, sizes, method and CRC-32, and still visible (a new member of the same name
  // hides it); with nothing to keep, the sidecar is removed. The next Open of the archive
  // then finds a current index (or none), never a stale one.
  // Errors: those of reading the new archive's directory and of writing the sidecar (the
  // old sidecar is then left as it was). A no-op with index_enabled = false. Afterwards
  // SaveIndex does nothing (the sidecar is no longer this Archive's).
  Status CarryIndexForward();

  class PassKey {  // only Open constructs; std::make_shared does the allocation
    friend class Archive;
    PassKey() = default;
  };
  explicit Archive(PassKey) {}

 private:
  void MakeMemberStates();
  void UseSeekTable(size_t i);         // a deflated member's seek table as its index, if valid
  Status CheckMember(size_t i) const;  // the errors of OpenMember
  // Loads the sidecar at `file`; *loaded says how many records applied.
  Status LoadIndex(const std::string& file, size_t* loaded);
  std::string IndexPathIn(const std::string& dir) const;  // "": next to the archive
  IndexFingerprint Fingerprint() const;
  // Every member's record worth saving; `versions` gets (member, version) of each.
  std::vector<IndexRecord> Records(std::vector<std::pair<size_t, uint64_t>>* versions) const;
  Status WriteIndex(const IndexFingerprint& fingerprint, const std::vector<ZipEntry>& entries,
                    const std::vector<IndexRecord>& records) const;
  // Writes the sidecar for the archive file as it is now (what CarryIndexForward does);
  // save_mu_ held.
  Status WriteIndexForArchiveNow();

  std::shared_ptr<ArchiveShared> shared_;
  ZipDirectory directory_;
  std::vector<ArchiveMember> members_;
  std::unordered_map<std::string, size_t> by_path_;
  // One entry per member in each: the member's state in one of them, null in the other (both
  // null for members that cannot be opened).
  std::vector<std::shared_ptr<DeflatedMember>> deflated_;
  std::vector<std::shared_ptr<StoredMember>> stored_;
  ArchiveOptions options_;
  uint32_t archive_mode_ = 0;     // st_mode of the archive at Open (the sidecar's permissions)
  uint32_t archive_uid_ = 0;      // its owner (whose sidecar is trusted, see LoadIndexFile)
  std::string absolute_path_;     // names the sidecar in an index directory
  std::string loaded_index_path_;
  std::mutex save_mu_;            // serializes SaveIndex and CarryIndexForward calls
  bool carried_forward_ = false;  // guarded by save_mu_: SaveIndex has nothing to do
};

// The engine that decodes deflated members in this build: "isa-l", or "zlib" when npzfs was
// built without ISA-L (then far reads are never split between cores).
const char* InflateEngineName();

}  // namespace npzfs
