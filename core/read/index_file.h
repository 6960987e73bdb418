// The sidecar index file: what it holds, how it is encoded, and every check it must pass
// before anything in it is trusted. The byte layout is specified in core/README.md, "Index
// file format"; this module is its only reader and writer.
//
// A sidecar describes one archive, identified by a fingerprint (size, mtime, CRC-32 of the
// central directory, entry count). It holds one record per member that has something worth
// keeping: a deflated member's checkpoints. Records are matched to members by their central
// directory position and must repeat the entry's identity (offsets, sizes, CRC-32), so a
// record can never be applied to other bytes than those it was made from.
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

// The index of one deflated member.
struct DeflatedRecord {
  size_t entry_index = 0;  // position of the member's entry in the central directory
  std::vector<Checkpoint> checkpoints;
  bool complete = false;  // every span known; the span CRCs add up to the entry's CRC-32
};

// Encodes a sidecar. `entries` is the archive's central directory (each record repeats its
// entry's identity).
std::string EncodeIndexFile(const IndexFingerprint& fingerprint,
                            const std::vector<ZipEntry>& entries,
                            const std::vector<DeflatedRecord>& records);

// Decodes and checks a sidecar's bytes against the archive it is meant for. `is_deflated`
// says which entry indexes are visible deflated members (records for others are an error).
// Errors (EINVAL, naming `file`): bad magic or version, trailing CRC-32 mismatch, a stale
// fingerprint, a record that does not match its entry, checkpoints out of order or out of
// bounds, span CRCs of a complete record that do not combine to the entry's CRC-32.
Result<std::vector<DeflatedRecord>> DecodeIndexFile(std::string_view bytes, const std::string& file,
                                                    const IndexFingerprint& fingerprint,
                                                    const std::vector<ZipEntry>& entries,
                                                    const std::vector<bool>& is_deflated);

// Reads the sidecar at `file` (nullopt-like empty result when it does not exist: ENOENT is
// returned as an ok, empty vector). A file larger than `max_bytes` is rejected unread.
Result<std::vector<DeflatedRecord>> LoadIndexFile(const std::string& file, uint64_t max_bytes,
                                                  const IndexFingerprint& fingerprint,
                                                  const std::vector<ZipEntry>& entries,
                                                  const std::vector<bool>& is_deflated);

}  // namespace npzfs
