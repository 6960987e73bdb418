// CRC-32 (the ZIP/gzip polynomial) for every reader and writer of member bytes: the fastest implementation the build
// has (ISA-L's crc32_gzip_refl when built with ISA-L, else zlib's crc32_z), and zlib's
// crc32_combine to join the CRCs of adjacent runs. Pure functions: thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>

namespace npzfs {

// CRC-32 of `n` bytes at `data`, continuing `crc` (0 to start).
uint32_t Crc32(uint32_t crc, const void* data, size_t n);

// CRC-32 of A followed by B, from crc(A), crc(B) and B's length.
uint32_t Crc32Combine(uint32_t crc_a, uint32_t crc_b, uint64_t length_b);

}  // namespace npzfs
