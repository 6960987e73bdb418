// Tests for the parallel chunked deflater: the chunks form one ordinary deflate stream, each
// chunk inflates alone from an empty window, the seek table describes them, and the bytes
// do not depend on the number of threads.
#include "core/zip/chunked_deflater.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <zlib.h>

#include <cmath>
#include <random>

#include "core/base/thread_pool.h"
#include "core/zip/seek_table.h"
#include "npzfs/archive_writer.h"
#include "npzfs/file_util.h"
#include "tests/test_util.h"

namespace npzfs {
namespace {

// Instrument-like int16 samples (a sine plus noise): compressible, but not trivially.
std::string Samples(size_t bytes, uint32_t seed = 1) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> noise(0, 20);
  std::string out(bytes, '\0');
  for (size_t i = 0; i + 1 < bytes; i += 2) {
    const auto v =
        static_cast<int16_t>(1000 * std::sin(static_cast<double>(i) / 1000) + noise(rng));
    out[i] = static_cast<char>(v & 0xff);
    out[i + 1] = static_cast<char>((v >> 8) & 0xff);
  }
  return out;
}

uint32_t Crc(std::string_view s) {
  return static_cast<uint32_t>(crc32_z(0, reinterpret_cast<const Bytef*>(s.data()), s.size()));
}

// Raw inflate of `in`; `finished` tells whether the stream's final block was reached.
std::string Inflate(std::string_view in, bool* finished) {
  z_stream zs{};
  EXPECT_EQ(inflateInit2(&zs, -MAX_WBITS), Z_OK);
  std::string out;
  char buf[1 << 16];
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  zs.avail_in = static_cast<uInt>(in.size());
  int rc = Z_OK;
  while (rc == Z_OK) {
    zs.next_out = reinterpret_cast<Bytef*>(buf);
    zs.avail_out = sizeof buf;
    rc = inflate(&zs, Z_NO_FLUSH);
    out.append(buf, sizeof buf - zs.avail_out);
    if (rc == Z_BUF_ERROR && zs.avail_in == 0) break;  // input used up, stream not ended
  }
  EXPECT_TRUE(rc == Z_STREAM_END || rc == Z_BUF_ERROR || rc == Z_OK) << "inflate rc " << rc;
  *finished = rc == Z_STREAM_END;
  EXPECT_EQ(zs.avail_in, 0u) << "bytes left after the stream ended";
  inflateEnd(&zs);
  return out;
}

struct Deflated {
  std::string bytes;
  uint32_t crc = 0;
  uint64_t uncompressed = 0;
  bool has_table = false;
  SeekTableLayout table;
};

Deflated Deflate(const std::string& input, ChunkedDeflaterOptions o, size_t write_size = 100000) {
  Deflated d;
  o.sink = [&](std::string_view b) {
    d.bytes.append(b);
    return Status::Ok();
  };
  o.what = "test member";
  ChunkedDeflater deflater(std::move(o));
  for (size_t at = 0; at < input.size(); at += write_size) {
    const size_t n = std::min(write_size, input.size() - at);
    EXPECT_TRUE(deflater.Write(input.data() + at, n).ok());
  }
  Status st = deflater.Finish();
  EXPECT_TRUE(st.ok()) << st.message();
  d.crc = deflater.crc32();
  d.uncompressed = deflater.uncompressed_size();
  EXPECT_EQ(deflater.compressed_size(), d.bytes.size());
  if (deflater.seek_table()) {
    d.has_table = true;
    d.table = *deflater.seek_table();
  }
  return d;
}

// The table parses against the member, and every chunk inflates alone to its bytes; only
// the last chunk ends the stream.
void ExpectEveryChunkStandsAlone(const std::string& input, const Deflated& d) {
  ASSERT_TRUE(d.has_table);
  auto block = EncodeSeekTableExtra(d.table);
  ASSERT_TRUE(block.ok()) << block.status().message();
  auto table =
      ParseSeekTable(block->substr(4), d.bytes.size(), input.size(), Crc(input), "test member");
  ASSERT_TRUE(table.ok()) << table.status().message();
  for (size_t i = 0; i < table->chunks().size(); ++i) {
    const SeekChunk& c = table->chunks()[i];
    bool finished = false;
    const std::string out = Inflate(std::string_view(d.bytes).substr(c.in, c.in_size), &finished);
    ASSERT_EQ(out.size(), c.out_size) << "chunk " << i;
    EXPECT_TRUE(out == input.substr(c.out, c.out_size)) << "chunk " << i;
    EXPECT_EQ(Crc(out), c.crc32) << "chunk " << i;
    EXPECT_EQ(finished, i + 1 == table->chunks().size()) << "chunk " << i;
  }
}

TEST(ChunkedDeflater, TheChunksInflateAsOneOrdinaryStreamToTheInput) {
  const std::string input = Samples((5 << 20) + 12345);
  ThreadPool pool(3);
  ChunkedDeflaterOptions o;
  o.pool = &pool;
  const Deflated d = Deflate(input, o);
  bool finished = false;
  EXPECT_TRUE(Inflate(d.bytes, &finished) == input);
  EXPECT_TRUE(finished);
  EXPECT_EQ(d.crc, Crc(input));
  EXPECT_EQ(d.uncompressed, input.size());
  EXPECT_LT(d.bytes.size(), input.size());
  ASSERT_TRUE(d.has_table);
  EXPECT_EQ(d.table.chunk_size, kDefaultDeflateChunkBytes);
  EXPECT_EQ(d.table.compressed_sizes.size(),
            (input.size() + kDefaultDeflateChunkBytes - 1) / kDefaultDeflateChunkBytes);
  ExpectEveryChunkStandsAlone(input, d);
}

TEST(ChunkedDeflater, TheBytesDoNotDependOnTheNumberOfThreadsOrTheWriteSizes) {
  const std::string input = Samples(3 << 20, 7);
  ChunkedDeflaterOptions o;
  o.chunk_size = 256 << 10;
  const Deflated inline_result = Deflate(input, o, 4096);
  for (size_t threads : {1, 2, 5}) {
    ThreadPool pool(threads);
    o.pool = &pool;
    for (size_t write_size : {size_t{1000}, size_t{1} << 20, size_t{3} << 20}) {
      const Deflated d = Deflate(input, o, write_size);
      EXPECT_TRUE(d.bytes == inline_result.bytes)
          << threads << " threads, writes of " << write_size;
      EXPECT_EQ(d.table.compressed_sizes, inline_result.table.compressed_sizes);
    }
  }
}

TEST(ChunkedDeflater, AnEmptyMemberIsOneFinalChunk) {
  ChunkedDeflaterOptions o;
  const Deflated d = Deflate("", o);
  bool finished = false;
  EXPECT_EQ(Inflate(d.bytes, &finished), "");
  EXPECT_TRUE(finished);
  EXPECT_EQ(d.crc, 0u);
  ASSERT_TRUE(d.has_table);
  EXPECT_EQ(d.table.compressed_sizes.size(), 1u);
  EXPECT_EQ(d.table.first_chunk_size, 0u);
  ExpectEveryChunkStandsAlone("", d);
}

TEST(ChunkedDeflater, SmallMembersAndMembersEndingOnAChunkBoundaryEndTheirStream) {
  ThreadPool pool(2);
  for (size_t size :
       {size_t{1}, size_t{1000}, size_t{4096}, size_t{3 * 4096}, size_t{3 * 4096 + 1}}) {
    const std::string input = Samples(size, static_cast<uint32_t>(size));
    ChunkedDeflaterOptions o;
    o.pool = &pool;
    o.chunk_size = 4096;
    const Deflated d = Deflate(input, o, 4096);
    bool finished = false;
    EXPECT_TRUE(Inflate(d.bytes, &finished) == input) << size;
    EXPECT_TRUE(finished) << size;
    EXPECT_EQ(d.table.compressed_sizes.size(), SeekChunkCount(size, 4096, 4096)) << size;
    ExpectEveryChunkStandsAlone(input, d);
  }
}

TEST(ChunkedDeflater, ALeadingChunkHoldsTheHeaderAlone) {
  const std::string input = std::string(128, 'h') + Samples(3 << 20);
  ChunkedDeflaterOptions o;
  o.leading_chunk = 128;
  const Deflated d = Deflate(input, o, 1000);
  ASSERT_TRUE(d.has_table);
  EXPECT_EQ(d.table.first_chunk_size, 128u);
  // The header, then 3 MiB in default chunks.
  EXPECT_EQ(d.table.compressed_sizes.size(), 1 + (3 << 20) / kDefaultDeflateChunkBytes);
  ExpectEveryChunkStandsAlone(input, d);
  // A member shorter than its leading chunk is one chunk.
  const Deflated tiny = Deflate("abc", o);
  EXPECT_EQ(tiny.table.first_chunk_size, 3u);
  ExpectEveryChunkStandsAlone("abc", tiny);
}

TEST(ChunkedDeflater, TooManyChunksAreMergedIntoLargerIndependentOnes) {
  const std::string input = Samples(1 << 20, 3);  // 16,384 chunks of 64 bytes
  ThreadPool pool(2);
  ChunkedDeflaterOptions o;
  o.pool = &pool;
  o.chunk_size = 64;
  o.leading_chunk = 100;
  const Deflated d = Deflate(input, o);
  ASSERT_TRUE(d.has_table);
  EXPECT_EQ(d.table.chunk_size, 256u);  // 64 -> 128 -> 256
  EXPECT_EQ(d.table.first_chunk_size, 100u);
  EXPECT_LE(d.table.compressed_sizes.size(), kMaxSeekChunks);
  EXPECT_EQ(d.table.compressed_sizes.size(), SeekChunkCount(input.size(), 100, 256));
  ExpectEveryChunkStandsAlone(input, d);
  bool finished = false;
  EXPECT_TRUE(Inflate(d.bytes, &finished) == input);
}

TEST(ChunkedDeflater, EveryLevelRoundTrips) {
  const std::string input = Samples(300000, 9);
  for (int level = 0; level <= 9; ++level) {
    ChunkedDeflaterOptions o;
    o.level = level;
    o.chunk_size = 65536;
    const Deflated d = Deflate(input, o);
    bool finished = false;
    EXPECT_TRUE(Inflate(d.bytes, &finished) == input) << "level " << level;
    ExpectEveryChunkStandsAlone(input, d);
  }
}

TEST(ChunkedDeflater, InputSpaceAndCommitFillChunksInPlace) {
  const std::string input = Samples(2500000, 4);
  std::string out;
  ThreadPool pool(2);
  ChunkedDeflaterOptions o;
  o.pool = &pool;
  o.sink = [&](std::string_view b) {
    out.append(b);
    return Status::Ok();
  };
  uint64_t progress = 0;
  o.progress = [&](uint64_t n) { progress += n; };
  ChunkedDeflater deflater(std::move(o));
  size_t at = 0;
  while (at < input.size()) {
    auto space = deflater.InputSpace();
    ASSERT_TRUE(space.ok());
    ASSERT_FALSE(space->empty());
    const size_t n = std::min({space->size(), input.size() - at, size_t{300000}});
    std::copy_n(input.data() + at, n, space->data());
    ASSERT_TRUE(deflater.Commit(n).ok());
    at += n;
  }
  ASSERT_TRUE(deflater.Finish().ok());
  EXPECT_EQ(progress, input.size());
  bool finished = false;
  EXPECT_TRUE(Inflate(out, &finished) == input);
  EXPECT_EQ(deflater.InputSpace().status().code(), EINVAL);  // finished
}

TEST(ChunkedDeflater, ASinkErrorStopsTheDeflaterAndIsReportedAgain) {
  const std::string input = Samples(4 << 20, 5);
  ThreadPool pool(2);
  ChunkedDeflaterOptions o;
  o.pool = &pool;
  int calls = 0;
  o.sink = [&](std::string_view) {
    return ++calls == 2 ? Status::Error(ENOSPC, "out.npz: write failed: No space left on device")
                        : Status::Ok();
  };
  ChunkedDeflater deflater(std::move(o));
  Status st;
  for (size_t at = 0; at < input.size() && st.ok(); at += 65536) {
    st = deflater.Write(input.data() + at, 65536);
  }
  if (st.ok()) st = deflater.Finish();
  EXPECT_EQ(st.code(), ENOSPC) << st.message();
  EXPECT_EQ(deflater.Write("x", 1).code(), ENOSPC);
  EXPECT_EQ(deflater.Finish().code(), ENOSPC);
  EXPECT_EQ(calls, 2);
}

// Deflates `header` + `data` with the first `predeflated` data chunks (of `chunk` bytes)
// given already deflated, from a file, as the spool's background deflater leaves them.
Deflated DeflateWithPredeflatedChunks(const std::string& header, const std::string& data,
                                      size_t chunk, size_t predeflated, ThreadPool* pool) {
  testing::TempDir dir;
  const std::string path = dir.Join("chunks");
  auto fd = OpenFile(path, O_RDWR | O_CREAT | O_TRUNC);
  EXPECT_TRUE(fd.ok());
  std::vector<std::pair<uint64_t, std::string>> made;  // offset, compressed
  uint64_t at = 0;
  for (size_t i = 0; i < predeflated; ++i) {
    std::string out;
    EXPECT_TRUE(DeflateChunk(6, std::string_view(data).substr(i * chunk, chunk), false, &out).ok());
    EXPECT_TRUE(PwriteAll(fd->get(), out.data(), out.size(), at, path).ok());
    made.emplace_back(at, out);
    at += out.size();
  }
  Deflated d;
  ChunkedDeflaterOptions o;
  o.pool = pool;
  o.chunk_size = chunk;
  o.leading_chunk = header.size();
  o.sink = [&](std::string_view b) {
    d.bytes.append(b);
    return Status::Ok();
  };
  o.copy_sink = [&](int src, uint64_t offset, uint64_t length, const std::string& source) {
    std::string b(length, '\0');
    NPZ_RETURN_IF_ERROR(PreadExact(src, b.data(), b.size(), offset, source));
    d.bytes += b;
    return Status::Ok();
  };
  ChunkedDeflater deflater(std::move(o));
  EXPECT_TRUE(deflater.Write(header.data(), header.size()).ok());
  for (size_t i = 0; i < predeflated; ++i) {
    const uint32_t crc = Crc(std::string_view(data).substr(i * chunk, chunk));
    Status st = deflater.AddDeflatedChunk(
        fd->get(), made[i].first, static_cast<uint32_t>(made[i].second.size()), chunk, crc, path);
    EXPECT_TRUE(st.ok()) << st.message();
  }
  const size_t rest = predeflated * chunk;
  EXPECT_TRUE(deflater.Write(data.data() + rest, data.size() - rest).ok());
  EXPECT_TRUE(deflater.Finish().ok());
  d.crc = deflater.crc32();
  d.uncompressed = deflater.uncompressed_size();
  EXPECT_EQ(deflater.compressed_size(), d.bytes.size());
  d.has_table = deflater.seek_table() != nullptr;
  if (d.has_table) d.table = *deflater.seek_table();
  return d;
}

TEST(ChunkedDeflater, PredeflatedChunksGiveTheSameBytesAsDeflatingThemHere) {
  const std::string header(128, 'h');
  const std::string data = Samples((5 << 20) + 1000, 12);
  ThreadPool pool(2);
  ChunkedDeflaterOptions o;
  o.pool = &pool;
  o.leading_chunk = 128;
  const Deflated direct = Deflate(header + data, o);
  for (size_t predeflated : {size_t{1}, size_t{3}, size_t{5}}) {
    const Deflated d =
        DeflateWithPredeflatedChunks(header, data, kDefaultDeflateChunkBytes, predeflated, &pool);
    EXPECT_TRUE(d.bytes == direct.bytes) << predeflated << " chunks given";
    EXPECT_EQ(d.crc, Crc(header + data));
    EXPECT_EQ(d.table.compressed_sizes, direct.table.compressed_sizes);
    ExpectEveryChunkStandsAlone(header + data, d);
  }
}

TEST(ChunkedDeflater, WhenEveryChunkIsPredeflatedTheFinalBlockJoinsTheLastOne) {
  const std::string header(64, 'h');
  const std::string data = Samples(4 << 20, 13);  // exactly four chunks
  const Deflated d = DeflateWithPredeflatedChunks(header, data, 1 << 20, 4, nullptr);
  bool finished = false;
  EXPECT_TRUE(Inflate(d.bytes, &finished) == header + data);
  EXPECT_TRUE(finished);
  ASSERT_TRUE(d.has_table);
  EXPECT_EQ(d.table.compressed_sizes.size(), 5u);  // header + four; no empty fifth chunk
  ExpectEveryChunkStandsAlone(header + data, d);
}

TEST(ChunkedDeflater, APredeflatedChunkOffAChunkBoundaryIsRefused) {
  ChunkedDeflaterOptions o;
  o.chunk_size = 1000;
  o.sink = [](std::string_view) { return Status::Ok(); };
  o.copy_sink = [](int, uint64_t, uint64_t, const std::string&) { return Status::Ok(); };
  o.what = "m.npy";
  ChunkedDeflater deflater(std::move(o));
  ASSERT_TRUE(deflater.Write("abc", 3).ok());
  Status st = deflater.AddDeflatedChunk(0, 0, 10, 1000, 0, "chunks");
  EXPECT_EQ(st.code(), EINVAL);
  EXPECT_NE(st.message().find("m.npy: a pre-deflated chunk must start at a chunk boundary"),
            std::string::npos)
      << st.message();
}

TEST(ChunkedDeflater, APredeflatedChunkMustCoverTheWholeChunkAtItsPlace) {
  ChunkedDeflaterOptions o;
  o.chunk_size = 1000;
  o.leading_chunk = 128;
  std::vector<std::pair<uint64_t, uint64_t>> copied;  // (offset, length)
  o.sink = [](std::string_view) { return Status::Ok(); };
  o.copy_sink = [&](int, uint64_t offset, uint64_t length, const std::string&) {
    copied.emplace_back(offset, length);
    return Status::Ok();
  };
  o.what = "m.npy";
  ChunkedDeflater deflater(std::move(o));
  // At the start the next chunk is the leading one: 128 bytes, not chunk_size.
  Status wrong = deflater.AddDeflatedChunk(0, 0, 10, 1000, 0, "chunks");
  EXPECT_EQ(wrong.code(), EINVAL);
  EXPECT_NE(wrong.message().find("m.npy: a pre-deflated chunk of 1000 bytes where the next "
                                 "chunk holds 128"),
            std::string::npos)
      << wrong.message();
  ASSERT_TRUE(deflater.AddDeflatedChunk(0, 0, 10, 128, 0, "chunks").ok());
  EXPECT_EQ(deflater.AddDeflatedChunk(0, 10, 10, 128, 0, "chunks").code(), EINVAL);
  ASSERT_TRUE(deflater.AddDeflatedChunk(0, 10, 20, 1000, 0, "chunks").ok());
  ASSERT_TRUE(deflater.Finish().ok());
  EXPECT_EQ(deflater.uncompressed_size(), 1128u);
  EXPECT_EQ(copied, (std::vector<std::pair<uint64_t, uint64_t>>{{0, 10}, {10, 20}}));
}

TEST(ChunkedDeflater, DeflateChunkEndsWithAFullFlushOrTheFinalBlock) {
  const std::string input = Samples(100000, 6);
  std::string flushed, final;
  ASSERT_TRUE(DeflateChunk(6, input, /*final=*/false, &flushed).ok());
  ASSERT_TRUE(DeflateChunk(6, input, /*final=*/true, &final).ok());
  // A full flush ends with an empty stored block: 00 00 FF FF.
  ASSERT_GE(flushed.size(), 4u);
  EXPECT_EQ(flushed.substr(flushed.size() - 4), std::string("\x00\x00\xff\xff", 4));
  bool finished = true;
  EXPECT_TRUE(Inflate(flushed, &finished) == input);
  EXPECT_FALSE(finished);
  EXPECT_TRUE(Inflate(final, &finished) == input);
  EXPECT_TRUE(finished);
}

}  // namespace
}  // namespace npzfs
