// Reads a ZIP archive's central directory into plain values.
//
// libzip exposes no member's data offset (zip_stat has none), and the FUSE daemon needs exactly
// that: where a member's bytes begin in the archive file. So the directory is parsed here,
// by hand, with every length bounds-checked against the file size before it is trusted.
// A truncated archive or a corrupt length is an error value, never a crash or a huge
// allocation.
//
// What it understands: ZIP64 end records and ZIP64 extras (numpy's force_zip64 local
// headers whose lengths differ from the central record's), data descriptors (flag bit 3;
// sizes and CRC are taken from the central directory, which is authoritative), archive
// comments, Info-ZIP "UT" extended timestamps, more than 65535 entries, and npzfs's own seek
// table extra block (copied out, unparsed).
//
// Ownership and threads: ReadZipDirectory only preads from the caller's fd (it does not
// move the file position or keep the fd). The result is a plain value, safe to share
// read-only between threads.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "npzfs/status.h"

namespace npzfs {

struct ZipEntry {
  std::string name;                  // raw name bytes as stored (no encoding conversion)
  uint16_t method = 0;               // 0 stored, 8 deflated, others unsupported by readers
  uint16_t flags = 0;                // general purpose bits (bit 0 encrypted, bit 3 descriptor)
  uint16_t version_made_by = 0;      // high byte: host system (3 = Unix)
  uint32_t crc32 = 0;                // from the central directory
  uint64_t compressed_size = 0;      // from the central directory (ZIP64 extra if needed)
  uint64_t uncompressed_size = 0;    // from the central directory (ZIP64 extra if needed)
  uint64_t local_header_offset = 0;  // offset of "PK\3\4"
  uint64_t data_offset = 0;          // from the LOCAL header's name and extra lengths
  uint32_t external_attr = 0;        // high 16 bits: Unix mode when made by Unix
  uint16_t dos_time = 0, dos_date = 0;
  int64_t mtime = 0;  // unix seconds (UT extra if present, else DOS local time)
  // Data of npzfs's seek table extra block (header ID 0x5a4e) in the central record, as
  // stored and not yet checked; empty if there is none. Parse it with ParseSeekTable
  // (core/zip/seek_table.h), which validates it against this entry.
  std::string seek_table;
  bool local_name_differs = false;  // the local header gives a different name (EntryConflicts)
  bool encrypted() const { return flags & 1; }
};

// True when two entries (of one archive before and after an append, say) locate and check
// the same member bytes: offsets, sizes, method and CRC-32 agree.
inline bool SameMemberData(const ZipEntry& a, const ZipEntry& b) {
  return a.local_header_offset == b.local_header_offset && a.data_offset == b.data_offset &&
         a.compressed_size == b.compressed_size && a.uncompressed_size == b.uncompressed_size &&
         a.crc32 == b.crc32 && a.method == b.method;
}

struct ZipDirectory {
  std::vector<ZipEntry> entries;  // central directory order, duplicates kept
  uint64_t cd_offset = 0;         // where the central directory starts
  uint64_t cd_size = 0;           // its length in bytes
  uint64_t archive_size = 0;      // size of the file when read
  std::string comment;            // archive comment (from the end record)
  uint32_t cd_crc32 = 0;          // crc32 of the central directory bytes (index fingerprint)
  std::string cd_bytes;           // raw central directory records (for append: copied verbatim)
};

// Reads the directory of the archive open at `fd` (`path` is only used in messages).
// Errors (all name `path` and the cause):
//   EINVAL  not a zip archive (no end record), an inconsistent end record or central
//           record (bad signature, lengths running past the directory, entry beyond the
//           file, absurd entry count), multi-disk archives.
//   EIO     the file is truncated or a read failed.
Result<ZipDirectory> ReadZipDirectory(int fd, const std::string& path);

// For each entry, why its bytes are not its own, or "" when they are: its local header
// gives a different name (two entries of different names pointing at one local header, say),
// as zipfile refuses ("File name in directory ... and header ... differ"); or its bytes
// overlap another entry's, a central directory whose sizes lie (the data would run into the
// next member's local header and data), as numpy and zipfile refuse ("Overlapped entries").
// Sorted by local header offset, an entry is refused when its data runs past the next local
// header; both are refused when the next local header starts inside this entry's own header.
// Entries that repeat the same local header with the same name and sizes describe the same
// bytes and are fine.
std::vector<std::string> EntryConflicts(const std::vector<ZipEntry>& entries);

// Converts a DOS date/time pair (local time, as zipfile and Info-ZIP write it) to unix
// seconds. Out-of-range fields are clamped (a zero date reads as 1980-01-01).
int64_t DosDateTimeToUnix(uint16_t dos_date, uint16_t dos_time);

// Limits that keep a corrupt archive from causing huge allocations.
inline constexpr uint64_t kMaxCentralDirectorySize = uint64_t{1} << 30;  // 1 GiB

}  // namespace npzfs
