// A live decoder over a member's deflate data with the fast engine (ISA-L when built with
// it; core/read/inflate_engine.h): what serves bytes, where InflateStream (zlib) is what
// finds checkpoints. It starts at a checkpoint at a block start or at a snapshot of another
// DecodeStream, and keeps the CRC-32 of what it produced when the CRC of the bytes before
// its start is known, so a stream that reaches the end can check the member's CRC-32.
//
// Ownership: a DecodeStream owns its engine and input buffer; it reads with pread from the
// caller's fd (DeflateSource), which must stay open while it lives. A Snapshot shares a
// saved engine state (immutable). Threads: one thread at a time per stream (a StreamPool hands it
// out).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>

#include "core/read/inflate_engine.h"
#include "core/read/inflate_index.h"
#include "npzfs/status.h"

namespace npzfs {

class DecodeStream {
 public:
  // A resume point inside the stream, in memory only (a saved engine state: ISA-L ~54 KiB,
  // zlib ~40 KiB), for a stream with the same kind of engine.
  struct Snapshot {
    std::shared_ptr<const InflateEngine::State> state;
    uint64_t in = 0;              // offset of the next compressed byte to feed
    uint64_t out = 0;             // offset of the next byte the engine produces
    std::optional<uint32_t> crc;  // CRC-32 of bytes [0, out) when known
    size_t memory() const { return state->memory() + 64; }
  };

  // A stream with the fast engine, or with `engine` (tests compare the engines). ENOMEM.
  static Result<std::unique_ptr<DecodeStream>> Create(DeflateSource source);
  static std::unique_ptr<DecodeStream> Create(DeflateSource source,
                                              std::unique_ptr<InflateEngine> engine);

  // Starts at `cp` (which must be at a block start) with the CRC-32 of the bytes before it,
  // if known. Errors: EIO a corrupt window or a failed pread; EINVAL a checkpoint inside a
  // block (only InflateStream resumes there).
  Status Restore(const Checkpoint& cp, std::optional<uint32_t> crc_before);
  // Starts at `snap` (taken from a stream with the same kind of engine). Errors: ENOMEM,
  // EINVAL a snapshot of another engine.
  Status Restore(const Snapshot& snap);
  // Starts at the block boundary at bit `bit` of the data, with `window` (at most 32 KiB) as
  // the output before it, calling that position `out`. Errors: EIO a failed pread.
  Status RestoreAt(uint64_t bit, std::span<const std::byte> window, uint64_t out,
                   std::optional<uint32_t> crc_before);
  // Where a stream started at a guessed point really is, once known: its next byte is at
  // `out` and the CRC-32 of the bytes before it is `crc` (nullopt: unknown).
  void Rebase(uint64_t out, std::optional<uint32_t> crc);

  // Writes up to `n` bytes to `out` (short only at the end of the stream). Errors: EIO
  // corrupt deflate data, compressed data ending before the stream, a failed pread.
  Result<size_t> Read(std::byte* out, size_t n);
  // Decodes and discards `n` bytes (or up to the end).
  Result<size_t> Skip(uint64_t n);

  // A seek table's chunk: the stream reads no compressed byte at or past `end` (relative
  // to the data) until the next call; Restore lifts the limit.
  void LimitInput(uint64_t end);
  // Speculation's meeting point: the stream reads no compressed byte past the one holding
  // the bit before `bit`, and Read and Skip return short, without an error, once that input
  // is used up. False (nothing changes) when the stream has read past that byte already.
  // StopsAt tells whether the stream then stopped between two blocks exactly at `bit`;
  // LiftLimit lets it go on either way.
  bool StopBefore(uint64_t bit);
  bool StopsAt(uint64_t bit) const;
  void LiftLimit();
  // After Read has produced the chunk's bytes: checks that the chunk ends exactly there, so
  // that decoding it alone gives what a decoder of the whole stream gives: no more output,
  // every compressed byte up to the limit used, and then either the engine between two blocks
  // on a byte boundary (`last` false) or the stream's end (`last` true). EIO otherwise,
  // naming what is wrong.
  Status FinishChunk(bool last);

  // A snapshot of the current position. Errors: ENOMEM.
  Result<Snapshot> TakeSnapshot() const;

  bool ended() const { return ended_; }
  uint64_t resume_pos() const { return out_pos_; }  // offset of the next byte Read returns
  uint64_t input_pos() const { return in_next_ - in_avail_; }  // compressed bytes given
  // CRC-32 of bytes [0, resume_pos()) when the start's was known.
  std::optional<uint32_t> crc() const { return crc_; }
  const char* engine_name() const { return engine_->name(); }

  class PassKey {  // lets only Create construct, while std::make_unique does the allocation
    friend class DecodeStream;
    PassKey() = default;
  };
  DecodeStream(DeflateSource source, std::unique_ptr<InflateEngine> engine, PassKey);

 private:
  Status Refill();
  // Runs the engine once on the buffered input into `out` and moves past what it consumed
  // (and to the end, when the stream ended). The engine's error, unwrapped.
  Result<InflateEngine::Step> Advance(std::span<std::byte> out);

  DeflateSource src_;
  std::unique_ptr<InflateEngine> engine_;
  std::unique_ptr<std::byte[]> in_buf_;
  size_t in_off_ = 0;     // next unconsumed byte in in_buf_
  size_t in_avail_ = 0;   // unconsumed bytes in in_buf_
  uint64_t in_next_ = 0;  // offset (relative to the data) of the next byte to pread
  uint64_t in_end_ = 0;   // no pread at or past this offset (LimitInput; else the data's end)
  uint64_t out_pos_ = 0;
  bool soft_end_ = false;  // in_end_ is StopBefore's: running out of input there is no error
  bool ended_ = false;
  std::optional<uint32_t> crc_;
};

}  // namespace npzfs
