// Zip archives built byte by byte, for tests and fuzzers that need members whose stored
// bytes, CRC-32 and sizes they choose exactly: a raw deflate stream no compressor writes,
// a CRC or size that lies, an extra field in the central entry only. core's ZipWriter always
// compresses itself and always writes true values, which is what these must be able to
// break. No GoogleTest here, so that the fuzz harnesses can use it too.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace npzfs::testing {

// One member: `data` is stored as given (raw deflate for method 8); `crc32` and
// `uncompressed_size` are written as given, true or not. `central_extra` is the central
// entry's whole extra area (e.g. a seek table block); the local header has none.
struct ZipMemberSpec {
  std::string name;
  uint16_t method = 0;
  std::string data;
  uint32_t crc32 = 0;
  uint64_t uncompressed_size = 0;
  std::string central_extra;
};

// The bytes of a zip archive (no ZIP64, no comment, DOS time 1980-01-01 00:00) holding
// `members` in order. Sizes and offsets must fit in 32 bits.
std::string BuildZip(const std::vector<ZipMemberSpec>& members);

}  // namespace npzfs::testing
