// Finding a way into a deflate stream without decoding what comes before: the first step of
// splitting a first pass between cores (core/read/fast_path.cc, DeflatedMember::SkipFar).
// The design essay is at the top of block_finder.cc.
//
// Threads: the function is thread-safe (it uses only its arguments and its own buffers).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "core/read/inflate_index.h"
#include "npzfs/status.h"

namespace npzfs {

// A guessed way into a deflate stream, found from compressed bytes alone. It is a guess until
// somebody decoding the stream from its start arrives at `first_bit` between two blocks: then
// every field holds (the bytes decoded from first_bit on do not depend on what came before,
// except through the window, which is known at resume_bit).
struct SpeculativeStart {
  uint64_t first_bit = 0;         // bit offset (in the data) of the first block header found
  uint64_t resume_bit = 0;        // a later block boundary where the 32 KiB window is known
  uint64_t out_between = 0;       // bytes the blocks from first_bit to resume_bit decode to
  std::vector<std::byte> window;  // the kDeflateWindow bytes before resume_bit
};

struct SpeculationLimits {
  uint64_t search_bytes = 1 << 20;  // how far past `from_bit` a first header may start
  uint64_t warmup_bytes = 4 << 20;  // output allowed between first_bit and resume_bit
  uint64_t candidates = 64;         // whole valid headers decoded from before giving up
  uint64_t blocks = 8192;           // blocks decoded in all (an empty block costs a header)
};

// Looks for a dynamic-Huffman block header at or after bit `from_bit` of `source`'s data
// that decodes as a chain of valid blocks until the last 32 KiB of output no longer depend
// on the bytes before it; returns the first such place, or nullopt if there is none within
// the limits (or the stream ends first). Reads at most search_bytes + about warmup_bytes of
// compressed data. Errors: EIO a failed pread, ENOMEM.
Result<std::optional<SpeculativeStart>> FindSpeculativeStart(const DeflateSource& source,
                                                             uint64_t from_bit,
                                                             const SpeculationLimits& limits);

}  // namespace npzfs
