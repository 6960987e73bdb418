// Helpers shared by the libFuzzer harnesses in tests/fuzz/.
//
// Every harness defines LLVMFuzzerTestOneInput (and maybe LLVMFuzzerInitialize). The same
// source builds two ways (tests/fuzz/meson.build): with clang's -fsanitize=fuzzer as a
// fuzzer, or with replay_main.cc as a plain program that runs the committed corpus once
// (suite 'unit', in every build, so a harness never rots when a core API changes).
//
// What is here: a consumer that turns the fuzz bytes into values (every input is valid:
// past the end every value is 0), FUZZ_CHECK (a failed property prints a message and
// aborts, which libFuzzer and the replay driver both report as a finding with the input
// that caused it), scratch files, and raw deflate/inflate through zlib (the reference the
// readers are checked against). Archives are built with tests/zip_bytes.h.
//
// Not thread-safe: libFuzzer calls a harness from one thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/base/byte_codec.h"
#include "npzfs/file_util.h"
#include "tests/zip_bytes.h"

namespace npzfs::fuzz {

// Values drawn from the fuzz input, little-endian; 0 (or empty) once it is used up.
class FuzzInput {
 public:
  FuzzInput(const uint8_t* data, size_t size)
      : reader_(std::string_view(reinterpret_cast<const char*>(data), size)) {}
  uint8_t U8();
  uint16_t U16();
  uint32_t U32();
  uint64_t U64();
  bool Bool() { return U8() & 1; }
  // A value in [lo, hi] (lo once the input is used up). Requires lo <= hi.
  uint64_t Range(uint64_t lo, uint64_t hi);
  // Up to `n` bytes (fewer at the end of the input).
  std::string Bytes(size_t n);
  // Everything not consumed yet.
  std::string Rest();
  bool empty() const { return reader_.remaining() == 0; }

 private:
  ByteReader reader_;
};

// Prints "fuzz check failed at FILE:LINE: WHAT" to stderr and aborts.
[[noreturn]] void Fail(const char* file, int line, const std::string& what);

#define FUZZ_CHECK(cond, what)                                                                \
  do {                                                                                        \
    if (!(cond)) ::npzfs::fuzz::Fail(__FILE__, __LINE__, std::string(#cond " -- ") + (what)); \
  } while (0)

// A directory private to this process under $TMPDIR (default /tmp), removed at exit.
const std::string& ScratchDir();
// Writes `bytes` to `path` (created or truncated). A failure aborts: it is a harness or
// machine problem, not a finding.
void WriteFileOrAbort(const std::string& path, std::string_view bytes);
// An anonymous in-memory file (memfd) holding `bytes`.
UniqueFd MemFileOrAbort(std::string_view bytes);

// Plaintext recipes (the deflate harnesses build what they compress from the input).
// Deterministic noise: xorshift32 on `s` (never 0).
uint32_t XorShift(uint32_t& s);
// Each appends to `plain`, at most `room` bytes, drawing its parameters from `in`:
// incompressible noise (stored or literal-heavy blocks), a copy of earlier output up to 32 KiB
// back (nothing while `plain` is empty), a run of one byte.
void AppendNoise(FuzzInput& in, size_t room, uint32_t& state, std::string* plain);
void AppendBackCopy(FuzzInput& in, size_t room, std::string* plain);
void AppendRun(FuzzInput& in, size_t room, std::string* plain);

// Raw deflate (no zlib or gzip wrapper) of `plain`. `level` 0..9, `strategy` a zlib
// strategy, `mem_level` 1..9; when `flush_every` > 0, a Z_SYNC_FLUSH or Z_FULL_FLUSH
// (alternating) every `flush_every` input bytes ends a block there, as streaming
// compressors do.
std::string RawDeflate(std::string_view plain, int level, int strategy, int mem_level,
                       size_t flush_every);

// Inflates the raw deflate stream `raw` whole with plain zlib: the reference every random-
// access reader is compared with. Returns false when zlib rejects the stream, when the
// stream does not end (truncated), or when the output would pass `max_output` bytes.
// `*consumed` is the number of input bytes the stream used.
bool RawInflate(std::string_view raw, size_t max_output, std::string* plain, size_t* consumed);

uint32_t Crc32(std::string_view bytes);

// Archives with members exactly as a harness wants them (tests/zip_bytes.h).
using testing::BuildZip;
using testing::ZipMemberSpec;

}  // namespace npzfs::fuzz
