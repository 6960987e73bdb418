// Random access into a raw deflate stream: checkpoints, live inflate streams, sparse
// windows. The design essay is at the top of core/read/inflate_index.cc.
//
// A Checkpoint is an access point: from it, inflate can start without the bytes before it,
// given the bits of a partly used input byte and the part of the 32 KiB window that the
// following output actually references (the "sparse window", stored deflated). It sits at a
// deflate block boundary, or, in a block too long to wait for its end, at the start of a
// code inside it (then the block's header is decoded again first). The span of checkpoint
// k is the output between checkpoint k and k+1.
//
// Ownership: an InflateStream owns its z_stream (heap-held so it never moves), its input
// buffer and its lookahead; it reads compressed bytes with pread from a caller-owned fd
// that must stay open while the stream lives.
// Threads: an InflateStream is used by one thread at a time (a StreamPool hands it out
// exclusively). The free functions are thread-safe.
#pragma once

#include <zlib.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>

#include "npzfs/status.h"

namespace npzfs {

inline constexpr uint32_t kDeflateWindow = 32768;

struct Checkpoint {
  uint64_t out = 0;          // uncompressed offset where the span starts
  uint64_t in = 0;           // compressed bytes wholly consumed before it (relative to data)
  uint8_t bits = 0;          // 0..7 bits of byte in-1 not yet consumed (inflatePrime)
  uint64_t header_bit = 0;   // bit offset of the header of the deflate block holding `out`
  uint32_t span_crc = 0;     // CRC-32 of the span from here to the next checkpoint (or end)
  uint32_t window_size = 0;  // dictionary length: min(32768, out)
  std::string window;        // raw deflate of the sparse window; empty when window_size == 0

  // Bit offset of the checkpoint in the compressed data.
  uint64_t bit() const { return in * 8 - bits; }
  // At a block boundary the next block's header starts right here; otherwise the checkpoint
  // is inside a block (a huge one) and decoding first re-reads that block's header.
  bool at_block_start() const { return header_bit == bit(); }
};

// Bounds on span lengths: the first pass ends a span at the first block boundary after
// MinSpanLength bytes (index_file.h: `spacing`, or more for a checkpoint with a large
// window), or cuts inside the block at twice that; a stored block (at most 65535 bytes)
// cannot be cut. Both lengths are clamped to [kMinSpacing, kMaxSpacing], so no span of any
// member, and none read from a sidecar, exceeds kMaxSpanBytes.
inline constexpr uint64_t kMinSpacing = 64 << 10;
inline constexpr uint64_t kMaxSpacing = 4 << 20;
inline constexpr uint64_t kMaxStoredBlock = 65535;
inline constexpr uint64_t kMaxSpanBytes = 2 * kMaxSpacing + kMaxStoredBlock;

// Where a member's raw deflate data lives.
struct DeflateSource {
  int fd = -1;                   // not owned
  uint64_t data_offset = 0;      // absolute offset of the first compressed byte
  uint64_t compressed_size = 0;  // bytes of compressed data
  std::string name;              // "archive.npz: member a.npy", prefixes every message
};

// One live raw-inflate stream (zlib) over a DeflateSource.
class InflateStream {
 public:
  // With `track_blocks` (the first pass) the stream inflates with Z_BLOCK, so it knows where
  // every block starts, can stop at block ends, and can tell the position of the code it is
  // decoding (CodePosition). Without, it inflates with Z_NO_FLUSH (a few percent faster).
  // Errors: ENOMEM if zlib cannot allocate.
  static Result<std::unique_ptr<InflateStream>> Create(DeflateSource source,
                                                       bool track_blocks = false);
  class PassKey {  // lets only Create construct, while std::make_unique does the allocation
    friend class InflateStream;
    PassKey() = default;
  };
  InflateStream(DeflateSource source, bool track_blocks, PassKey);
  ~InflateStream();
  InflateStream(const InflateStream&) = delete;
  InflateStream& operator=(const InflateStream&) = delete;

  // Positions the stream at `cp`: at a block start, inflatePrime + the sparse window as
  // dictionary; inside a block, first the block's header is decoded again from
  // cp.header_bit. Errors: EIO a corrupt checkpoint (window, header) or a failed pread.
  Status Restore(const Checkpoint& cp);

  // Writes up to `n` uncompressed bytes to `out`, first from the lookahead. Stops early at
  // the end of the stream, or, with stop_at_block (needs track_blocks), right after a block
  // that is not the last one (then at_boundary() is true). Errors: EIO corrupt deflate data,
  // compressed data running past compressed_size, a failed pread.
  Result<size_t> Read(std::byte* out, size_t n, bool stop_at_block);

  // Gives back the last `n` bytes a Read returned (they belong after a checkpoint placed
  // before them): the next Read returns them again. Only with an empty lookahead, and
  // n <= kDeflateWindow.
  void Unread(const std::byte* bytes, size_t n);

  // Inflates ahead into the lookahead until it holds kDeflateWindow bytes (or the stream
  // ends); later Reads return it first. Used on the first pass so that the output right after
  // a new checkpoint is known when its sparse window is made. Returns the lookahead.
  Result<std::span<const std::byte>> FillLookahead();

  // The checkpoint at the current position (only meaningful when at_boundary()): output
  // offset, consumed input, unused bits.
  Checkpoint Position() const;
  // Inside a Huffman-coded block (track_blocks only): the checkpoint at the start of the
  // code (literal or match) being decoded, and how many of its bytes were already output
  // (at most 258). nullopt between blocks and inside a stored block, where zlib cannot be
  // resumed mid-way. Needs an empty lookahead.
  std::optional<std::pair<Checkpoint, uint32_t>> CodePosition() const;
  // Copies the last min(32 KiB, output so far) bytes of output; returns the length.
  uint32_t Window(std::byte* buf) const;

  bool ended() const { return ended_; }
  bool at_boundary() const { return at_boundary_; }
  bool tracks_blocks() const { return track_blocks_; }
  uint64_t out_pos() const { return out_pos_; }  // offset of the next byte inflate emits
  // Offset of the next byte Read returns (out_pos minus the unread lookahead).
  uint64_t resume_pos() const { return out_pos_ - (lookahead_len_ - lookahead_used_); }

 private:
  Status Refill();
  uint64_t BitPosition() const;  // of the decoder in the compressed data

  DeflateSource src_;
  const bool track_blocks_;
  std::unique_ptr<z_stream> strm_;  // heap-held: zlib keeps a pointer back to it
  bool initialized_ = false;
  std::unique_ptr<std::byte[]> in_buf_;
  uint64_t in_next_ = 0;  // relative offset of the next compressed byte to pread
  uint64_t out_pos_ = 0;
  uint64_t header_bit_ = 0;  // header of the block being decoded (track_blocks)
  bool ended_ = false;
  bool at_boundary_ = false;
  std::unique_ptr<std::byte[]> lookahead_;
  size_t lookahead_len_ = 0;
  size_t lookahead_used_ = 0;
};

// Given the checkpoint position `cp` (window not yet set), its full window and the real
// output that follows it (`after`, at most 32 KiB: the only output that can reference the
// window), returns the deflated sparse window: every window byte that output does not
// reference is zeroed. Errors: EIO corrupt data or failed pread.
Result<std::string> MakeSparseWindow(const DeflateSource& src, const Checkpoint& cp,
                                     std::span<const std::byte> window,
                                     std::span<const std::byte> after);

// Inflates a checkpoint's stored window into `buf` (cp.window_size bytes).
Status ExpandWindow(const DeflateSource& src, const Checkpoint& cp, std::byte* buf);

// The byte before compressed offset `in`, whose high `bits` bits are the first unread bits
// of a position that is not byte-aligned (0, without reading, when bits is 0). Errors: EIO
// for bits > 7 or in == 0 (corrupt checkpoint data), a failed pread.
Result<uint8_t> ByteBefore(const DeflateSource& src, uint64_t in, uint8_t bits);

}  // namespace npzfs
