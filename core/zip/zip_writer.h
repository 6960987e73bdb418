// A streaming ZIP writer for a seekable output file.
//
// Members are written one after another at increasing offsets of the output fd: a local
// header first, then the data (stored, or deflated in independent chunks on a worker pool,
// core/zip/chunked_deflater.h), then the local header's CRC and sizes are patched in place.
// A deflated member's central record carries its seek table (core/zip/seek_table.h). Because the
// target is seekable no data descriptor is written, which keeps every reader (numpy's zipfile,
// libzip, unzip) happy. When a member might reach 4 GiB its local header reserves a ZIP64 extra up
// front, since the header cannot grow after the data is written. Finish() writes the central
// directory (optionally preceded by raw records copied from an older archive) and the end records,
// adding the ZIP64 end record and locator when an offset, a size or the entry count needs it.
//
// Memory stays bounded: data passes through 1 MiB buffers (a few chunks in flight when
// deflating); a member is never held whole.
// When the caller supplies the CRC of a stored member, file ranges are copied as they are
// (CopyFileRange: extent sharing where the filesystem and the offsets allow it), without
// computing anything over the bytes.
//
// Ownership: the writer borrows the output fd, any source fds and the thread pool; it owns
// the deflater of the open member. Not thread-safe: one thread drives one writer (the pool's
// workers only compress chunks).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/base/thread_pool.h"
#include "core/zip/seek_table.h"
#include "npzfs/archive_writer.h"
#include "npzfs/status.h"

namespace npzfs {

class ChunkedDeflater;

struct ZipMemberOptions {
  int compress_level = -1;  // -1: stored (method 0); 0..9: deflate (method 8)
  // If known. Stored: not computed. Deflated: the CRC is computed anyway (per chunk, on the
  // workers) and a different value fails EndMember with EIO (the source changed).
  std::optional<uint32_t> crc32;
  std::optional<uint64_t> size_hint;  // uncompressed size if known: decides ZIP64 extra
  int64_t mtime = -1;                 // unix seconds for the DOS time; -1: now
  // Deflate only: uncompressed bytes per chunk, and the size of a first chunk of its own
  // (0: none), e.g. a .npy header, so that chunks after it start at data offsets.
  uint64_t chunk_size = kDefaultDeflateChunkBytes;
  uint64_t leading_chunk = 0;
  // If > 0: the local header's exact size, reached with a padding extra field (ID
  // zip::kPaddingExtraId, zero bytes), so that the data starts at a chosen offset. EINVAL if
  // the header needs more, or if the gap is under the 4 bytes of an extra field's header.
  uint64_t local_header_size = 0;
};

class ZipWriter {
 public:
  // Writes to `fd` (borrowed) starting at `start_offset`; `path` is for messages.
  ZipWriter(int fd, std::string path, uint64_t start_offset);
  ~ZipWriter();
  ZipWriter(const ZipWriter&) = delete;
  ZipWriter& operator=(const ZipWriter&) = delete;

  // Starts a member. EINVAL for an empty or over-long name, a bad level, or a member
  // already open.
  Status BeginMember(const std::string& name, const ZipMemberOptions& options);
  // Appends bytes to the open member.
  Status Write(const void* data, size_t n);
  // Appends `length` bytes of `src_fd` from `offset` to the open member. EIO if the
  // source is shorter (names `src_path`).
  Status CopyFrom(int src_fd, uint64_t offset, uint64_t length, const std::string& src_path);
  // Deflated members only: the next chunk of input given already deflated (see
  // ChunkedDeflater::AddDeflatedChunk: the leading chunk, or chunk_size bytes). Its
  // compressed bytes are copied from `src_fd` (CopyFileRange), or left where they are (see
  // set_in_place_source). EINVAL if the member is stored, or the input is not at a chunk
  // boundary or not a whole chunk.
  Status AddDeflatedChunk(int src_fd, uint64_t offset, uint32_t compressed_size,
                          uint64_t uncompressed_size, uint32_t crc32, const std::string& src_path);
  // Declares `fd` another descriptor of the output file: pre-deflated chunks read from it
  // must already lie exactly where they would be written, and are not copied. One that does
  // not is EIO (a copy within the file could overwrite chunks still to be read).
  void set_in_place_source(int fd) { in_place_fd_ = fd; }
  // Finishes the member: flushes deflate, patches the local header. EIO if the member
  // outgrew a local header that had no room for ZIP64 sizes (size_hint was wrong).
  Status EndMember();

  // Writes the central directory: `prior_records` (raw central records of `prior_count`
  // entries, e.g. from an existing archive, copied verbatim) then one record per member
  // written here, then the end records with `comment`. No member may be open.
  Status Finish(const std::string& prior_records, uint64_t prior_count, const std::string& comment);

  // Deflated members are compressed on `pool` (borrowed; must outlive the writer). Without
  // a pool, chunks are compressed on the calling thread.
  void set_thread_pool(ThreadPool* pool) { pool_ = pool; }

  // Called after each chunk of member input is consumed, with the chunk's byte count
  // (uncompressed). For progress reporting; may be left empty.
  void set_progress(std::function<void(uint64_t consumed)> progress) {
    progress_ = std::move(progress);
  }

  // The offset where the next byte would be written (the end of the archive after Finish).
  uint64_t offset() const { return offset_; }
  // Number of members written by this writer.
  size_t member_count() const { return records_.size(); }

 private:
  struct Record {
    std::string name;
    uint16_t method = 0;
    uint16_t dos_time = 0, dos_date = 0;
    uint32_t crc32 = 0;
    uint64_t compressed_size = 0, uncompressed_size = 0;
    uint64_t local_header_offset = 0;
    std::string seek_table_extra;  // the seek table block of a deflated member, or ""
  };

  Status WriteOut(const void* data, size_t n);  // at offset_, advancing it
  Status Feed(const void* data, size_t n);      // to the open member (CRC + compress)
  Status FinishDeflate();                       // the open member's last chunk and table

  int fd_;
  std::string path_;
  std::function<void(uint64_t)> progress_;
  ThreadPool* pool_ = nullptr;
  int in_place_fd_ = -1;
  uint64_t offset_;
  std::vector<Record> records_;

  // The member being written.
  bool open_ = false;
  Record cur_;
  bool cur_zip64_local_ = false;  // its local header holds a ZIP64 extra
  bool cur_crc_given_ = false;
  uint32_t cur_running_crc_ = 0;
  std::unique_ptr<ChunkedDeflater> deflater_;
};

// Encodes unix seconds as a DOS (date, time) pair in local time; clamps to 1980..2107.
void UnixToDosDateTime(int64_t unix_seconds, uint16_t* dos_date, uint16_t* dos_time);

}  // namespace npzfs
