// The seek table: an extra field in the central directory entry of a deflated member that
// npzfs wrote, listing the member's independent deflate chunks.
//
// npzfs deflates a member as a run of chunks. Each chunk is deflated by its own zlib state
// and ends with a full flush (byte-aligned, referencing nothing before it); the last one
// ends the stream. Concatenated they are one ordinary deflate stream, so every zip reader
// inflates the member as usual; a reader that knows this table can start inflating at any
// chunk with an empty window, check each chunk's CRC-32 before serving it, and inflate
// chunks on several cores. The byte format is specified in core/README.md ("Seek table
// extra field"); the constants below are its names.
//
// The writer fills a SeekTableLayout while it deflates and encodes it with
// EncodeSeekTableExtra; ZipWriter puts the block into the member's central entry. Readers
// get the block's data from ZipEntry::seek_table (the directory parser copies it out) and
// call ParseSeekTable, which checks it against the entry's sizes and CRC before anything
// trusts it.
//
// Plain functions and values: thread-safe as any local data. A SeekTable is immutable once
// parsed and may be shared read-only between threads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "npzfs/archive_writer.h"
#include "npzfs/status.h"

namespace npzfs {

// Format constants (see core/README.md).
inline constexpr std::string_view kSeekTableSignature = "NPZS";
inline constexpr uint8_t kSeekTableVersion = 1;
// signature 4, version 1, flags 1, reserved 2, chunk_size 4, first_chunk_size 4, count 4.
inline constexpr size_t kSeekTableFixedSize = 20;
inline constexpr size_t kSeekTableEntrySize = 8;  // compressed size u32 + CRC-32 u32
inline constexpr size_t kSeekTableCrcSize = 4;
// At most this many chunks: the block (4 + 24 + 8 * 8000 = 64,028 bytes) plus the largest
// ZIP64 extra (28 bytes) leaves room under the 65,535-byte extra area of a central entry.
inline constexpr size_t kMaxSeekChunks = 8000;
// The chunk size never exceeds this, so a chunk's compressed size always fits in 32 bits.
inline constexpr uint64_t kMaxSeekChunkSize = uint64_t{1} << 30;

// What the writer records while it deflates a member.
struct SeekTableLayout {
  uint32_t chunk_size = 0;        // uncompressed bytes of every chunk but the first and last
  uint32_t first_chunk_size = 0;  // uncompressed bytes of the first chunk (0: empty member)
  std::vector<uint32_t> compressed_sizes;  // one per chunk, in order
  std::vector<uint32_t> crc32s;            // CRC-32 of each chunk's uncompressed bytes
};

// One chunk of a parsed table. Offsets are relative to the member's compressed data (`in`)
// and uncompressed data (`out`).
struct SeekChunk {
  uint64_t in = 0;
  uint64_t out = 0;
  uint32_t in_size = 0;
  uint32_t out_size = 0;
  uint32_t crc32 = 0;
};

class SeekTable {
 public:
  const std::vector<SeekChunk>& chunks() const { return chunks_; }
  uint32_t chunk_size() const { return chunk_size_; }
  uint32_t first_chunk_size() const { return first_chunk_size_; }
  // The index of the chunk holding uncompressed offset `out`; offsets at or past the end
  // map to the last chunk.
  size_t ChunkIndexAt(uint64_t out) const;

 private:
  friend Result<SeekTable> ParseSeekTable(std::string_view, uint64_t, uint64_t, uint32_t,
                                          const std::string&);
  uint32_t chunk_size_ = 0;
  uint32_t first_chunk_size_ = 0;
  std::vector<SeekChunk> chunks_;
};

// The number of chunks a member of `uncompressed_size` bytes is cut into, with a first
// chunk of min(first_chunk_size, uncompressed_size) bytes and then `chunk_size` bytes each
// (the last may be shorter). An empty member is one chunk. `chunk_size` must be > 0.
uint64_t SeekChunkCount(uint64_t uncompressed_size, uint64_t first_chunk_size, uint64_t chunk_size);

// The chunk size for such a member: `preferred` doubled until the table fits in
// kMaxSeekChunks entries. 0 if it would have to exceed kMaxSeekChunkSize (a member of
// several TiB): the member is then deflated as one stream, without a table.
uint64_t SeekChunkSizeFor(uint64_t uncompressed_size, uint64_t first_chunk_size,
                          uint64_t preferred = kDefaultDeflateChunkBytes);

// Merges neighbouring chunks after the first (pairs 1+2, 3+4, ...; the chunk size doubles)
// until `layout` has at most kMaxSeekChunks chunks. Two independent chunks in a row are one
// independent chunk, so the deflate data stays as it is; only the table changes.
// `uncompressed_size` is the member's. False if the chunk size would exceed
// kMaxSeekChunkSize (the member is then written without a table).
bool CoarsenSeekTable(SeekTableLayout* layout, uint64_t uncompressed_size);

// The complete extra block (header ID, data size, data) for a central directory entry.
// EINVAL if the layout is malformed (no chunk, more than kMaxSeekChunks, sizes and CRCs of
// different lengths, a zero chunk size).
Result<std::string> EncodeSeekTableExtra(const SeekTableLayout& layout);

// The data of the first seek table block in a central entry's extra area, or an empty view
// if there is none. Blocks are walked by their lengths; a block running past the area ends
// the walk (as zipfile does).
std::string_view FindSeekTableData(std::string_view extra_area);

// Parses `data` (the block's data, without its 4-byte header) and checks it against the
// member's central directory values. `what` names the member in messages
// ("data.npz: member adc.npy"). EINVAL, naming `what` and the cause, when:
//   the block is truncated or longer than its chunk count says; the signature, version,
//   flags or reserved bytes are wrong; the table CRC does not match; the chunk size is 0;
//   the chunk count is 0, above kMaxSeekChunks, or not the count the layout implies for
//   `uncompressed_size`; the first chunk is larger than the member (or empty in a non-empty
//   member); a chunk has no compressed bytes; the compressed sizes do not add up to
//   `compressed_size`; the chunk CRCs do not combine to `crc32`.
Result<SeekTable> ParseSeekTable(std::string_view data, uint64_t compressed_size,
                                 uint64_t uncompressed_size, uint32_t crc32,
                                 const std::string& what);

}  // namespace npzfs
