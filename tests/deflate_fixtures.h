// Deflate streams the tests need and no compressor writes on its own: one fixed-Huffman block
// of any length (zlib ends a block every few thousand symbols), and a zip holding such a
// stream as a member. Made by a small bit writer here, checked against zlib by the tests.
#pragma once

#include <cstdint>
#include <string>

namespace npzfs::testing {

struct DeflateBlock {
  std::string raw;    // raw deflate: one fixed-Huffman block, BFINAL set
  std::string plain;  // what it decodes to
};

// `size` bytes of pseudo-random literals and matches (lengths 3-258, distances up to 32 KiB
// back), in one block: every checkpoint inside it needs a real window.
DeflateBlock NoisyFixedBlock(size_t size, uint32_t seed);

// `prefix` followed by zeros up to `size` bytes, in one block of length-258 distance-1
// matches (about 1/160 of `size` compressed). Only the raw bytes are returned: the plain
// text is known.
std::string ZerosFixedBlock(const std::string& prefix, uint64_t size);

// CRC-32 of `prefix` followed by zeros up to `size` bytes.
uint32_t ZerosCrc(const std::string& prefix, uint64_t size);

// Writes a zip archive with one deflated member `name` whose compressed data is `raw`
// (sizes below 4 GiB).
void WriteRawDeflateZip(const std::string& path, const std::string& name, const std::string& raw,
                        uint32_t crc, uint64_t size);

}  // namespace npzfs::testing
