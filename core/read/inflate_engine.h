// Raw-deflate decoders behind one small interface: zlib's inflate, and ISA-L's isal_inflate
// when npzfs is built with ISA-L (meson option `isal`, auto).
//
// Why two. ISA-L decodes numpy data about 1.55x faster than zlib on this machine (416 vs
// 267 MB/s of output for a 1 GiB int16 member, both bound by Huffman decoding; 1 MiB span
// from a checkpoint 2.4 vs 3.8 ms). But ISA-L cannot stop at a deflate block boundary and
// has no public way into the middle of a block, so zlib stays for the first pass that finds
// checkpoints (Z_BLOCK), for checkpoints inside a block (Z_TREES), as the fallback when ISA-L
// is missing, and as the reference the tests compare with.
//
// What an engine does: start at a block boundary (the unused bits of the byte before the
// next input, and the sparse window as dictionary), decode input into output, and save its
// state to resume from later (in memory only). ISA-L's state is a plain struct: a save is
// its fields up to the history buffer plus the valid part of that buffer (~54 KiB); zlib's
// is copied with inflateCopy (~40 KiB).
//
// Ownership: an engine owns its decoder state (RAII). Threads: one thread at a time per
// engine; different engines are independent.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>

#include "npzfs/status.h"

namespace npzfs {

class InflateEngine {
 public:
  virtual ~InflateEngine() = default;

  // Restarts at a block boundary: `bits` (0..7) unused bits of the byte before the next
  // input (`byte` is that byte), and `dict` (at most 32 KiB) as the output before it.
  // Errors: EIO a dictionary the engine refuses.
  virtual Status Reset(uint8_t bits, uint8_t byte, std::span<const std::byte> dict) = 0;

  struct Step {
    size_t consumed = 0;  // bytes of `in` taken (bits of them may still be buffered inside)
    size_t produced = 0;  // bytes written to `out`
    bool ended = false;   // the final block is complete and all of its output delivered
  };
  // Decodes from `in` into `out` until `out` is full, `in` is used up, or the stream ends.
  // Errors: EIO corrupt deflate data (the message says what; the caller adds the member).
  virtual Result<Step> Inflate(std::span<const std::byte> in, std::span<std::byte> out) = 0;

  // After an Inflate: true when the engine stopped between two blocks on a byte boundary,
  // holding no input bits and no output, so that the next input byte starts a block (as
  // after a full flush, where each chunk of a seek table ends). False inside a block or a
  // block header, and after the final block.
  virtual bool AtByteAlignedBlockBoundary() const = 0;
  // After an Inflate that used up its input: when the engine stopped between two blocks with
  // all output delivered, how many bits of that input it holds unused (the next block's
  // header starts that many bits before the input's end). Nullopt inside a block, after the
  // final block, or when the engine cannot tell (zlib without Z_BLOCK: speculation, which
  // needs this, is for ISA-L builds only).
  virtual std::optional<uint64_t> BitsHeldBetweenBlocks() const = 0;

  // A saved decoder state, in memory only: restoring it into an engine of the same kind
  // resumes decoding, given the input from where this engine's input stopped.
  class State {
   public:
    virtual ~State() = default;
    virtual size_t memory() const = 0;  // bytes held, for bounding how many are kept
  };
  // Errors: ENOMEM.
  virtual Result<std::unique_ptr<State>> Save() const = 0;
  // Errors: EINVAL a state from another kind of engine; ENOMEM.
  virtual Status Restore(const State& state) = 0;

  virtual const char* name() const = 0;  // "isa-l" or "zlib"
};

// The fastest engine of this build (ISA-L when built with it), and zlib's.
Result<std::unique_ptr<InflateEngine>> MakeFastEngine();
Result<std::unique_ptr<InflateEngine>> MakeZlibEngine();
// True when MakeFastEngine gives ISA-L.
bool FastEngineIsIsal();

}  // namespace npzfs
