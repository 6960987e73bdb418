// The ZIP format's signatures, fixed record sizes and limits (PKWARE APPNOTE 6.3.x), named
// once for every reader and writer in npzfs, as LevelDB's log_format.h does for its log.
// Offsets of fields inside the records are written next to the code that reads them.
#pragma once

#include <cstddef>
#include <cstdint>

namespace npzfs::zip {

// Record signatures (little-endian "PK.." as 32-bit values).
inline constexpr uint32_t kLocalHeaderSig = 0x04034b50;     // "PK\3\4"
inline constexpr uint32_t kDataDescriptorSig = 0x08074b50;  // "PK\7\8"
inline constexpr uint32_t kCentralHeaderSig = 0x02014b50;   // "PK\1\2"
inline constexpr uint32_t kEndSig = 0x06054b50;             // "PK\5\6"
inline constexpr uint32_t kZip64EndSig = 0x06064b50;        // "PK\6\6"
inline constexpr uint32_t kZip64LocatorSig = 0x07064b50;    // "PK\6\7"

// Fixed parts of the records (variable name, extra and comment fields follow).
inline constexpr size_t kLocalHeaderSize = 30;
inline constexpr size_t kCentralHeaderSize = 46;
inline constexpr size_t kEndSize = 22;
inline constexpr size_t kZip64EndSize = 56;
inline constexpr size_t kZip64LocatorSize = 20;

// Extra field header IDs.
inline constexpr uint16_t kZip64ExtraId = 0x0001;
inline constexpr uint16_t kExtendedTimestampExtraId = 0x5455;  // Info-ZIP "UT"
// npzfs's seek table (core/zip/seek_table.h), central entries only. Bytes "NZ"; not among the
// IDs PKWARE's APPNOTE registers (0x0001-0x0023, 0x0065, 0x0066, 0x4690) or lists as third
// party mappings (Info-ZIP, Xceed, ZipIt, Microsoft 0xa220, AE-x 0x9901, ...), nor Java's
// 0xcafe or Android's 0xd935.
inline constexpr uint16_t kSeekTableExtraId = 0x5a4e;
// npzfs's padding, local headers only: zero bytes that make a member's data start where a
// file prepared in advance has it (core/README.md, "Padding extra field"). Bytes "NP"; not
// registered either.
inline constexpr uint16_t kPaddingExtraId = 0x504e;
inline constexpr size_t kExtraHeaderSize = 4;  // id + length

// Limits: a field at its maximum means "see the ZIP64 record".
inline constexpr uint64_t kMax16 = 0xFFFF;
inline constexpr uint64_t kMax32 = 0xFFFFFFFF;
inline constexpr size_t kMaxCommentLength = 0xFFFF;
inline constexpr size_t kMaxExtraLength = 0xFFFF;  // the whole extra area of one header

// Compression methods and general-purpose flags.
inline constexpr uint16_t kMethodStored = 0;
inline constexpr uint16_t kMethodDeflated = 8;
inline constexpr uint16_t kFlagEncrypted = 1 << 0;
inline constexpr uint16_t kFlagDataDescriptor = 1 << 3;
inline constexpr uint16_t kFlagUtf8 = 1 << 11;

// "Version needed to extract": 2.0 for deflate, 4.5 for ZIP64.
inline constexpr uint16_t kVersionDeflate = 20;
inline constexpr uint16_t kVersionZip64 = 45;
inline constexpr uint16_t kMadeByUnix = 3 << 8;  // host system in the high byte

}  // namespace npzfs::zip
