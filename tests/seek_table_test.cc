// Tests for the seek table extra field: round trips, and every malformed variant rejected
// with a message naming the member and the cause.
#include "core/zip/seek_table.h"
#include "npzfs/archive_writer.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <zlib.h>

#include <random>

#include "core/base/byte_codec.h"
#include "core/zip/zip_format.h"
#include "npzfs/file_util.h"
#include "npzfs/zip_directory.h"
#include "tests/test_util.h"

namespace npzfs {
namespace {

using testing::RunPython;
using testing::TempDir;

constexpr char kWhat[] = "a.npz: member x.npy";

uint32_t Crc(std::string_view s) {
  return static_cast<uint32_t>(crc32_z(0, reinterpret_cast<const Bytef*>(s.data()), s.size()));
}

// A member of `size` random bytes cut as the writer would, with made-up compressed sizes.
struct Member {
  std::string bytes;
  SeekTableLayout layout;
  uint64_t compressed = 0;
};

Member MakeMember(uint64_t size, uint32_t first, uint32_t chunk, uint32_t seed = 1) {
  Member m;
  std::mt19937 rng(seed);
  m.bytes.resize(size);
  for (char& c : m.bytes) c = static_cast<char>(rng());
  m.layout.chunk_size = chunk;
  m.layout.first_chunk_size = first;
  uint64_t at = 0;
  const uint64_t count = SeekChunkCount(size, first, chunk);
  for (uint64_t i = 0; i < count; ++i) {
    const uint64_t n =
        i == 0 ? std::min<uint64_t>(first, size) : std::min<uint64_t>(chunk, size - at);
    m.layout.crc32s.push_back(Crc(std::string_view(m.bytes).substr(at, n)));
    const uint32_t compressed = static_cast<uint32_t>(n / 2 + 5 + i);
    m.layout.compressed_sizes.push_back(compressed);
    m.compressed += compressed;
    at += n;
  }
  return m;
}

// The block's data (without the 4-byte extra header).
std::string DataOf(const SeekTableLayout& layout) {
  auto block = EncodeSeekTableExtra(layout);
  EXPECT_TRUE(block.ok()) << block.status().message();
  return block.ok() ? block->substr(zip::kExtraHeaderSize) : std::string();
}

// Recomputes the trailing table CRC after a test edited the data.
std::string WithFixedCrc(std::string data) {
  const size_t at = data.size() - kSeekTableCrcSize;
  SetLe32(data, at, Crc(std::string_view(data).substr(0, at)));
  return data;
}

Result<SeekTable> Parse(const std::string& data, const Member& m) {
  return ParseSeekTable(data, m.compressed, m.bytes.size(), Crc(m.bytes), kWhat);
}

void ExpectRejected(const Result<SeekTable>& r, const std::string& cause) {
  ASSERT_FALSE(r.ok()) << "accepted, expected: " << cause;
  EXPECT_EQ(r.status().code(), EINVAL);
  EXPECT_EQ(r.status().message().rfind(std::string(kWhat) + ": seek table: ", 0), 0u)
      << r.status().message();
  EXPECT_NE(r.status().message().find(cause), std::string::npos) << r.status().message();
}

TEST(SeekTable, RoundTripsAHeaderChunkFollowedByEqualChunksAndAShortLastOne) {
  const Member m = MakeMember(128 + 2500, 128, 1000);
  ASSERT_EQ(m.layout.compressed_sizes.size(), 4u);
  const std::string data = DataOf(m.layout);
  EXPECT_EQ(data.size(), kSeekTableFixedSize + 4 * kSeekTableEntrySize + kSeekTableCrcSize);
  auto table = Parse(data, m);
  ASSERT_TRUE(table.ok()) << table.status().message();
  EXPECT_EQ(table->chunk_size(), 1000u);
  EXPECT_EQ(table->first_chunk_size(), 128u);
  const std::vector<uint64_t> outs = {0, 128, 1128, 2128};
  const std::vector<uint32_t> out_sizes = {128, 1000, 1000, 500};
  uint64_t in = 0;
  ASSERT_EQ(table->chunks().size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    const SeekChunk& c = table->chunks()[i];
    EXPECT_EQ(c.out, outs[i]) << i;
    EXPECT_EQ(c.out_size, out_sizes[i]) << i;
    EXPECT_EQ(c.in, in) << i;
    EXPECT_EQ(c.in_size, m.layout.compressed_sizes[i]) << i;
    EXPECT_EQ(c.crc32, Crc(std::string_view(m.bytes).substr(c.out, c.out_size))) << i;
    in += c.in_size;
  }
  EXPECT_EQ(table->ChunkIndexAt(0), 0u);
  EXPECT_EQ(table->ChunkIndexAt(127), 0u);
  EXPECT_EQ(table->ChunkIndexAt(128), 1u);
  EXPECT_EQ(table->ChunkIndexAt(1127), 1u);
  EXPECT_EQ(table->ChunkIndexAt(1128), 2u);
  EXPECT_EQ(table->ChunkIndexAt(2627), 3u);
  EXPECT_EQ(table->ChunkIndexAt(1u << 30), 3u);
}

TEST(SeekTable, RoundTripsAnEmptyMemberAndAMemberSmallerThanOneChunk) {
  for (uint64_t size : {0, 1, 999}) {
    const Member m = MakeMember(size, static_cast<uint32_t>(size), 1 << 20);
    ASSERT_EQ(m.layout.compressed_sizes.size(), 1u);
    auto table = Parse(DataOf(m.layout), m);
    ASSERT_TRUE(table.ok()) << size << ": " << table.status().message();
    ASSERT_EQ(table->chunks().size(), 1u);
    EXPECT_EQ(table->chunks()[0].out_size, size);
    EXPECT_EQ(table->ChunkIndexAt(0), 0u);
  }
}

TEST(SeekTable, TheBlockStartsWithItsHeaderIdAndLength) {
  const Member m = MakeMember(5000, 5000, 1 << 20);
  auto block = EncodeSeekTableExtra(m.layout);
  ASSERT_TRUE(block.ok());
  EXPECT_EQ(GetLe16(block->data()), 0x5a4e);
  EXPECT_EQ(GetLe16(block->data() + 2), block->size() - 4);
  EXPECT_EQ(block->substr(4, 4), "NPZS");
}

TEST(SeekTable, FindSkipsOtherBlocksAndStopsAtAMalformedOne) {
  const Member m = MakeMember(3000, 100, 1000);
  const std::string block = *EncodeSeekTableExtra(m.layout);
  std::string zip64;
  PutLe16(zip64, zip::kZip64ExtraId);
  PutLe16(zip64, 8);
  PutLe64(zip64, 12345);
  std::string ut = std::string("UT\x05\x00\x01", 5) + std::string(4, '\x07');
  EXPECT_EQ(FindSeekTableData(zip64 + ut + block), block.substr(4));
  EXPECT_EQ(FindSeekTableData(block + zip64), block.substr(4));
  EXPECT_TRUE(FindSeekTableData(zip64 + ut).empty());
  EXPECT_TRUE(FindSeekTableData("").empty());
  // A block claiming more bytes than the area holds ends the walk.
  std::string bad = zip64;
  SetLe32(bad, 0, 0x7fff0001);  // id 0x0001, length 0x7fff
  EXPECT_TRUE(FindSeekTableData(bad + block).empty());
  // A truncated seek table block itself is not returned.
  EXPECT_TRUE(FindSeekTableData(block.substr(0, block.size() - 1)).empty());
}

TEST(SeekTable, EveryTruncationIsRejected) {
  const Member m = MakeMember(4000, 64, 1000);
  const std::string data = DataOf(m.layout);
  for (size_t n = 0; n < data.size(); ++n) {
    auto r = Parse(data.substr(0, n), m);
    EXPECT_FALSE(r.ok()) << "prefix of " << n << " bytes accepted";
    if (!r.ok()) {
      EXPECT_EQ(r.status().code(), EINVAL);
    }
  }
  ExpectRejected(Parse(data.substr(0, 10), m), "truncated");
  ExpectRejected(Parse(data + "x", m), "bytes for 5 chunks");
}

TEST(SeekTable, EveryFlippedByteIsRejected) {
  const Member m = MakeMember(4000, 64, 1000);
  const std::string data = DataOf(m.layout);
  for (size_t i = 0; i < data.size(); ++i) {
    std::string bad = data;
    bad[i] = static_cast<char>(bad[i] ^ 0x10);
    EXPECT_FALSE(Parse(bad, m).ok()) << "byte " << i << " flipped and accepted";
  }
  std::string bad = data;
  bad[kSeekTableFixedSize + 1] ^= 1;  // a compressed size, table CRC left stale
  ExpectRejected(Parse(bad, m), "table CRC-32 mismatch");
}

TEST(SeekTable, HeaderFieldsOtherThanVersionOneAreRejected) {
  const Member m = MakeMember(4000, 64, 1000);
  const std::string data = DataOf(m.layout);
  struct Edit {
    size_t at;
    char value;
    const char* cause;
  };
  for (const Edit& e : {Edit{0, 'X', "bad signature"}, Edit{4, 2, "unsupported version 2"},
                        Edit{5, 1, "unknown flags"}, Edit{6, 1, "reserved"}}) {
    std::string bad = data;
    bad[e.at] = e.value;
    ExpectRejected(Parse(WithFixedCrc(bad), m), e.cause);
  }
}

TEST(SeekTable, SizesThatDoNotAddUpToTheMembersAreRejected) {
  const Member m = MakeMember(4000, 64, 1000);
  Member other = m;
  other.compressed += 1;
  ExpectRejected(Parse(DataOf(m.layout), other), "compressed bytes");
  // A longer or shorter member needs another chunk count or other CRCs.
  for (int64_t delta : {-1, 1, -1000, 1000}) {
    auto r = ParseSeekTable(DataOf(m.layout), m.compressed,
                            static_cast<uint64_t>(static_cast<int64_t>(m.bytes.size()) + delta),
                            Crc(m.bytes), kWhat);
    EXPECT_FALSE(r.ok()) << "uncompressed size off by " << delta << " accepted";
  }
  ExpectRejected(
      ParseSeekTable(DataOf(m.layout), m.compressed, m.bytes.size() + 1000, Crc(m.bytes), kWhat),
      "chunks, but a member of 5000 bytes has 6");
  SeekTableLayout empty_chunk = m.layout;
  empty_chunk.compressed_sizes[2] = 0;
  Member same_total = m;
  same_total.compressed -= m.layout.compressed_sizes[2];
  ExpectRejected(Parse(DataOf(empty_chunk), same_total), "chunk 2 is empty");
}

TEST(SeekTable, ChunkCrcsThatDoNotCombineToTheMembersAreRejected) {
  const Member m = MakeMember(4000, 64, 1000);
  SeekTableLayout swapped = m.layout;
  std::swap(swapped.crc32s[1], swapped.crc32s[2]);
  ExpectRejected(Parse(DataOf(swapped), m), "do not combine");
  // A table copied from another member of the same shape.
  const Member other = MakeMember(4000, 64, 1000, /*seed=*/2);
  ExpectRejected(Parse(DataOf(other.layout), m), "do not combine");
}

TEST(SeekTable, WrongCountsAndLayoutsAreRejected) {
  const Member m = MakeMember(4000, 64, 1000);
  SeekTableLayout extra = m.layout;
  extra.compressed_sizes.push_back(7);
  extra.crc32s.push_back(0);
  Member more = m;
  more.compressed += 7;
  ExpectRejected(Parse(DataOf(extra), more), "6 chunks, but a member of 4000 bytes has 5");

  SeekTableLayout fewer = m.layout;
  fewer.compressed_sizes.pop_back();
  fewer.crc32s.pop_back();
  ExpectRejected(Parse(DataOf(fewer), m), "4 chunks");

  std::string zero_count = DataOf(m.layout);
  SetLe32(zero_count, 16, 0);
  ExpectRejected(Parse(WithFixedCrc(zero_count), m), "chunk count 0");
  std::string huge_count = DataOf(m.layout);
  SetLe32(huge_count, 16, kMaxSeekChunks + 1);
  ExpectRejected(Parse(WithFixedCrc(huge_count), m), "chunk count 8001");

  std::string zero_chunk = DataOf(m.layout);
  SetLe32(zero_chunk, 8, 0);
  ExpectRejected(Parse(WithFixedCrc(zero_chunk), m), "chunk size 0");

  std::string first_too_big = DataOf(m.layout);
  SetLe32(first_too_big, 12, 4001);
  ExpectRejected(Parse(WithFixedCrc(first_too_big), m), "first chunk of 4001 bytes");
  std::string first_empty = DataOf(m.layout);
  SetLe32(first_empty, 12, 0);
  ExpectRejected(Parse(WithFixedCrc(first_empty), m), "first chunk of 0 bytes");
}

TEST(SeekTable, EncodeRefusesLayoutsItCannotWrite) {
  SeekTableLayout none;
  none.chunk_size = 1 << 20;
  EXPECT_EQ(EncodeSeekTableExtra(none).status().code(), EINVAL);
  SeekTableLayout mismatched = MakeMember(3000, 100, 1000).layout;
  mismatched.crc32s.pop_back();
  EXPECT_EQ(EncodeSeekTableExtra(mismatched).status().code(), EINVAL);
  SeekTableLayout too_many;
  too_many.chunk_size = 1;
  too_many.compressed_sizes.assign(kMaxSeekChunks + 1, 1);
  too_many.crc32s.assign(kMaxSeekChunks + 1, 0);
  EXPECT_EQ(EncodeSeekTableExtra(too_many).status().code(), EINVAL);
  too_many.compressed_sizes.pop_back();
  too_many.crc32s.pop_back();
  auto largest = EncodeSeekTableExtra(too_many);
  ASSERT_TRUE(largest.ok());
  // With the largest ZIP64 extra beside it, the central entry's extra area stays in 16 bits.
  EXPECT_LE(largest->size() + 4 + 24, zip::kMaxExtraLength);
}

TEST(SeekTable, TheChunkSizeGrowsForVeryLargeMembers) {
  constexpr uint64_t kChunk = kDefaultDeflateChunkBytes, kGiB = uint64_t{1} << 30;
  EXPECT_EQ(SeekChunkSizeFor(0, 0), kChunk);
  EXPECT_EQ(SeekChunkSizeFor(kGiB, 128), kChunk);
  EXPECT_EQ(SeekChunkSizeFor(kMaxSeekChunks * kChunk - kChunk, 128), kChunk);
  for (uint64_t size : {8 * kGiB, 100 * kGiB, 1000 * kGiB}) {
    const uint64_t c = SeekChunkSizeFor(size, 128);
    EXPECT_GT(c, kChunk) << size;
    EXPECT_EQ(c & (c - 1), 0u) << size;  // a power-of-two multiple of the default
    EXPECT_LE(SeekChunkCount(size, 128, c), kMaxSeekChunks) << size;
    EXPECT_GT(SeekChunkCount(size, 128, c / 2), kMaxSeekChunks) << size;
  }
  EXPECT_EQ(SeekChunkSizeFor(uint64_t{1} << 50, 128), 0u);  // 1 PiB: no table
}

TEST(SeekTable, TheDirectoryParserCopiesTheBlockOutOfTheCentralRecord) {
  TempDir dir;
  const std::string path = dir.Join("t.zip");
  const Member m = MakeMember(3000, 100, 1000);
  const std::string block = *EncodeSeekTableExtra(m.layout);
  std::string hex;
  for (unsigned char c : block) {
    static constexpr char kDigits[] = "0123456789abcdef";
    hex += kDigits[c >> 4];
    hex += kDigits[c & 15];
  }
  RunPython(R"(
import zipfile
with zipfile.ZipFile(')" +
            path + R"(', 'w') as zf:
    zf.writestr('plain.txt', b'no table here')
    info = zipfile.ZipInfo('with.bin')
    info.extra = bytes.fromhex(')" +
            hex + R"(')
    zf.writestr(info, b'x' * 10)
)");
  auto fd = OpenFile(path, O_RDONLY);
  ASSERT_TRUE(fd.ok());
  auto d = ReadZipDirectory(fd->get(), path);
  ASSERT_TRUE(d.ok()) << d.status().message();
  ASSERT_EQ(d->entries.size(), 2u);
  EXPECT_TRUE(d->entries[0].seek_table.empty());
  EXPECT_EQ(d->entries[1].seek_table, block.substr(4));
}

}  // namespace
}  // namespace npzfs
