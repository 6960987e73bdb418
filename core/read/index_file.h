// The sidecar index file: what it holds, how it is encoded, and every check it must pass
// before anything in it is trusted. The byte layout is specified in core/README.md, "Index
// file format"; this module is its only reader and writer.
//
// A sidecar describes one archive, identified by a fingerprint (size, mtime, CRC-32 of the
// central directory, entry count). It holds one record per member that has something worth
// keeping: a deflated member's checkpoints, or a stored member's chunk CRCs once a verify
// pass has checked it. Records are matched to members by their central directory position
// and repeat the entry's identity (offsets, sizes, CRC-32), so a record is never applied to
// other bytes than those it was made from.
//
// Plain functions over values: thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/read/inflate_index.h"
#include "npzfs/status.h"
#include "npzfs/zip_directory.h"

namespace npzfs {

// What identifies the archive a sidecar was made for.
struct IndexFingerprint {
  uint64_t archive_size = 0;
  int64_t archive_mtime_ns = 0;
  uint32_t cd_crc32 = 0;
  uint64_t entry_count = 0;
  bool operator==(const IndexFingerprint&) const = default;
};

// What a sidecar may say about one entry.
enum class RecordKind : uint8_t {
  kDeflated = 1,  // checkpoints (complete or not)
  kStored = 2,    // CRC-32 of every chunk of a stored member that a verify pass checked
};

struct IndexRecord {
  size_t entry_index = 0;  // position of the member's entry in the central directory
  RecordKind kind = RecordKind::kDeflated;
  // kDeflated
  std::vector<Checkpoint> checkpoints;
  bool complete = false;  // every span known; the span CRCs add up to the entry's CRC-32
  // kStored: one CRC per kStoredChunkBytes of the member (the last chunk may be shorter);
  // they combine to the entry's CRC-32.
  std::vector<uint32_t> chunk_crcs;
};

inline constexpr uint32_t kStoredChunkBytes = 1u << 20;

// Encodes a sidecar. `entries` is the archive's central directory (each record repeats its
// entry's identity).
std::string EncodeIndexFile(const IndexFingerprint& fingerprint,
                            const std::vector<ZipEntry>& entries,
                            const std::vector<IndexRecord>& records);

// Decodes and checks a sidecar's bytes against the archive it is meant for. `kinds[e]` is
// the kind of record entry e may have (0 for entries no record may name: hidden, unreadable).
// Errors (EINVAL, naming `file`): bad magic or version, trailing CRC-32 mismatch, a stale
// fingerprint, a record that names a wrong entry or does not repeat its identity,
// checkpoints out of order or out of bounds, a span longer than kMaxSpanBytes, CRCs of a
// complete or stored record that do not combine to the entry's CRC-32.
Result<std::vector<IndexRecord>> DecodeIndexFile(std::string_view bytes, const std::string& file,
                                                 const IndexFingerprint& fingerprint,
                                                 const std::vector<ZipEntry>& entries,
                                                 const std::vector<uint8_t>& kinds);

// Who may have written a sidecar that is believed. Its checks (fingerprint, record CRCs,
// span CRCs that combine to the member's CRC-32) catch damage, not a forger: CRC-32 is
// linear, so whoever can write the sidecar can make a wrong window and matching span CRCs,
// and get wrong bytes served as checked. So the sidecar is read only if written by someone
// who could change the archive's bytes anyway: it belongs to the reader (euid), root or the
// archive's owner, and it is writable by no group or other the archive is not writable by.
struct IndexTrust {
  uint32_t archive_uid = 0;
  uint32_t archive_mode = 0;
};

// Reads and decodes the sidecar at `file`. A missing file is an empty result, not an error.
// A file larger than `max_bytes` is rejected unread, and so is one `trust` rejects (EPERM,
// naming the owner or the permission bits).
Result<std::vector<IndexRecord>> LoadIndexFile(const std::string& file, uint64_t max_bytes,
                                               const IndexFingerprint& fingerprint,
                                               const std::vector<ZipEntry>& entries,
                                               const std::vector<uint8_t>& kinds,
                                               const IndexTrust& trust);

// Bytes a checkpoint takes in the sidecar (and, near enough, in memory).
uint64_t CheckpointRecordBytes(const Checkpoint& cp);

// The least length of the span that starts at `cp`: `spacing`, or more where cp's record
// is large, so that it costs at most 1/kSpanBytesPerRecordByte (0.9%) of its span and the
// index stays under 1% of any member. A checkpoint whose sparse window is dense (noise that
// the next bytes copy a lot of: up to ~33 KiB deflated) starts a span of up to kMaxSpacing.
// The first pass ends the span at the first block boundary that far on, or cuts a longer
// block at twice it.
inline constexpr uint64_t kSpanBytesPerRecordByte = 112;
uint64_t MinSpanLength(const Checkpoint& cp, uint64_t spacing);

}  // namespace npzfs
