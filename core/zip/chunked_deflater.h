// Parallel, seekable deflate of one member: the input is cut into chunks that are deflated
// independently on a worker pool and written in order, and a seek table records them.
//
// Each chunk is deflated by its own raw deflate state at the member's level and ends with a
// full flush (byte-aligned, referencing nothing before it); the last one ends the stream.
// The concatenation is one ordinary deflate stream (every zip reader inflates it), and the
// seek table (core/zip/seek_table.h) lets npzfs start inflating at any chunk. Design notes
// and measurements are at the top of chunked_deflater.cc.
//
// Use: feed bytes with Write (copies) or with InputSpace + Commit (fill the chunk buffer in
// place, e.g. with pread), then Finish. Compressed bytes reach `sink` in stream order, on
// the calling thread, from inside Write/Commit/Finish. At most a few chunks are in flight
// (buffered input and output), whatever the member size.
//
// Ownership: the deflater borrows the pool (which must outlive it) and owns its chunk
// buffers. Not thread-safe: one thread drives one deflater; the pool's threads only run the
// chunk compressions. The destructor waits for chunks still in flight.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/base/thread_pool.h"
#include "core/zip/seek_table.h"
#include "npzfs/archive_writer.h"
#include "npzfs/status.h"

namespace npzfs {

// Deflates `in` as one independent chunk with a raw deflate state at `level` (0..9) into
// *out (replaced). `final`: end the stream (Z_FINISH); otherwise end with a full flush.
// Thread-safe (a deflate state per thread is reused). EIO/ENOMEM if zlib fails.
Status DeflateChunk(int level, std::string_view in, bool final, std::string* out);

struct ChunkedDeflaterOptions {
  int level = 6;                                    // 0..9
  uint64_t chunk_size = kDefaultDeflateChunkBytes;  // uncompressed bytes per chunk (> 0)
  uint64_t leading_chunk = 0;                    // if > 0: the first chunk's size (a .npy header)
  ThreadPool* pool = nullptr;                    // nullptr: compress on the calling thread
  std::function<Status(std::string_view)> sink;  // receives compressed bytes, in order
  // Receives the pre-deflated chunks of AddDeflatedChunk, in order with the sink's bytes:
  // `length` bytes at `offset` of `fd` (named `source`) to copy to the output.
  std::function<Status(int fd, uint64_t offset, uint64_t length, const std::string& source)>
      copy_sink;
  // Called with each chunk's uncompressed size once it is compressed and written (may be
  // empty).
  std::function<void(uint64_t done)> progress;
  std::string what;  // names the member in messages
};

class ChunkedDeflater {
 public:
  explicit ChunkedDeflater(ChunkedDeflaterOptions options);
  ~ChunkedDeflater();
  ChunkedDeflater(const ChunkedDeflater&) = delete;
  ChunkedDeflater& operator=(const ChunkedDeflater&) = delete;

  // Copies `n` bytes of member input.
  Status Write(const void* data, size_t n);
  // Free room in the current chunk (never empty). Fill a prefix of it and call Commit with
  // the byte count. Errors: a failed chunk (sticky), or EINVAL after Finish.
  Result<std::span<char>> InputSpace();
  Status Commit(size_t n);
  // The next chunk of input, already deflated as a chunk of its own (a fresh raw deflate
  // state, ended by a full flush; the level does not matter to readers): `compressed_size`
  // bytes at `offset` of `fd`, for `uncompressed_size` input bytes whose CRC-32 is `crc32`.
  // Only at a chunk boundary, and only for a whole chunk: `uncompressed_size` must be the
  // leading chunk's size at the start (when there is one), chunk_size after it (EINVAL
  // otherwise, or without a copy_sink). The bytes go to the copy_sink in order, never
  // decompressed or checked here: the caller vouches for them.
  Status AddDeflatedChunk(int fd, uint64_t offset, uint32_t compressed_size,
                          uint64_t uncompressed_size, uint32_t crc32, const std::string& source);
  // Deflates the rest as the last chunk and delivers everything to the sink. When nothing
  // follows a pre-deflated chunk, the stream's final (empty) block is appended to it.
  Status Finish();

  // After Finish:
  uint64_t uncompressed_size() const { return uncompressed_; }
  uint64_t compressed_size() const { return compressed_; }
  uint32_t crc32() const { return crc_; }
  // The chunks as the seek table records them (coarsened to fit kMaxSeekChunks); nullptr
  // when the member is too large for any table.
  const SeekTableLayout* seek_table() const { return has_table_ ? &layout_ : nullptr; }

 private:
  struct Job;
  struct Shared;
  uint64_t CurrentChunkCapacity() const;
  Status Submit(bool final, bool merge_into_previous = false);
  Status DeliverFront();

  ChunkedDeflaterOptions o_;
  size_t max_in_flight_;
  std::shared_ptr<Shared> shared_;
  std::deque<std::shared_ptr<Job>> in_flight_;
  std::vector<std::string> spare_inputs_, spare_outputs_;  // recycled chunk buffers
  std::string current_;  // input buffer of the chunk being filled (size = its capacity)
  size_t filled_ = 0;    // bytes of current_ that hold input
  uint64_t chunks_submitted_ = 0;
  bool finished_ = false;
  Status failed_;  // sticky: after an error every call returns it

  uint64_t uncompressed_ = 0, compressed_ = 0;
  uint32_t crc_ = 0;
  SeekTableLayout layout_;
  bool has_table_ = false;
};

}  // namespace npzfs
