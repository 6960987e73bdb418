// Tests of the inflate machinery below Archive: checkpoints with sparse windows, live
// streams and the stream pool. Deflate data is made here with zlib.
#include "core/read/inflate_index.h"

#include "core/read/stream_pool.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <zlib.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "npzfs/file_util.h"
#include "tests/test_util.h"

namespace npzfs {
namespace {

using testing::RealisticInt16;
using testing::TempDir;

std::string RawDeflate(const std::string& data, int level = 6) {
  z_stream s{};
  EXPECT_EQ(deflateInit2(&s, level, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY), Z_OK);
  std::string out(deflateBound(&s, data.size()), '\0');
  s.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  s.avail_in = static_cast<uInt>(data.size());
  s.next_out = reinterpret_cast<Bytef*>(out.data());
  s.avail_out = static_cast<uInt>(out.size());
  EXPECT_EQ(deflate(&s, Z_FINISH), Z_STREAM_END);
  out.resize(s.total_out);
  deflateEnd(&s);
  return out;
}

// A raw deflate file with some leading junk, so that data_offset matters.
struct DeflateFile {
  TempDir dir;
  std::string plain;
  UniqueFd fd;
  DeflateSource source;

  explicit DeflateFile(std::string data, int level = 6) : plain(std::move(data)) {
    std::string compressed = RawDeflate(plain, level);
    std::string path = dir.Join("data.bin");
    testing::WriteFileOrDie(path, std::string(37, 'J') + compressed);
    Result<UniqueFd> opened = OpenFile(path, O_RDONLY);
    EXPECT_TRUE(opened.ok());
    fd = std::move(opened).value();
    source = DeflateSource{fd.get(), 37, compressed.size(), path + ": member test"};
  }
};

// The first pass as member_reader does it: checkpoints every `spacing` bytes at block
// boundaries, sparse windows from the lookahead.
std::vector<Checkpoint> FirstPass(const DeflateSource& src, size_t total, size_t spacing,
                                  std::string* output) {
  std::vector<Checkpoint> cps(1);
  auto s = InflateStream::Create(src, /*track_blocks=*/true);
  EXPECT_TRUE(s.ok());
  std::vector<std::byte> buf(total + 1);
  std::vector<std::byte> window(kDeflateWindow);
  size_t len = 0, span_start = 0;
  while (true) {
    Result<size_t> got = (*s)->Read(buf.data() + len, buf.size() - len, true);
    EXPECT_TRUE(got.ok()) << got.status().message();
    if (!got.ok()) break;
    len += *got;
    if ((*s)->ended()) break;
    if ((*s)->at_boundary() && len - span_start >= spacing) {
      Checkpoint cp = (*s)->Position();
      EXPECT_EQ(cp.out, len);
      uint32_t wlen = (*s)->Window(window.data());
      EXPECT_EQ(wlen, kDeflateWindow);
      auto ahead = (*s)->FillLookahead();
      EXPECT_TRUE(ahead.ok());
      auto sparse = MakeSparseWindow(src, cp, std::span(window.data(), wlen), *ahead);
      EXPECT_TRUE(sparse.ok()) << sparse.status().message();
      // It lives as long as the index: no spare capacity (the deflateBound scratch, 33 KiB
      // where 2-3 KB are used, made a 1 GiB member's index take 66 MiB of memory).
      EXPECT_LE(sparse->capacity(), sparse->size() + 32) << "a window holds memory it does not use";
      cp.window = *sparse;
      cps.push_back(cp);
      span_start = len;
    }
  }
  output->assign(reinterpret_cast<const char*>(buf.data()), len);
  return cps;
}

TEST(InflateIndex, ARestoreFromEverySparseCheckpointGivesIdenticalBytes) {
  DeflateFile f(RealisticInt16(2 << 20, 7));  // 4 MiB
  std::string out;
  std::vector<Checkpoint> cps = FirstPass(f.source, f.plain.size(), 256 << 10, &out);
  ASSERT_EQ(out, f.plain);
  ASSERT_GE(cps.size(), 10u);
  for (size_t k = 0; k < cps.size(); ++k) {
    size_t end = k + 1 < cps.size() ? cps[k + 1].out : f.plain.size();
    auto s = InflateStream::Create(f.source);
    ASSERT_TRUE(s.ok());
    ASSERT_TRUE((*s)->Restore(cps[k]).ok());
    std::string span(end - cps[k].out, '\0');
    Result<size_t> got = (*s)->Read(reinterpret_cast<std::byte*>(span.data()), span.size(), false);
    ASSERT_TRUE(got.ok()) << got.status().message();
    ASSERT_EQ(*got, span.size());
    EXPECT_TRUE(span == f.plain.substr(cps[k].out, span.size())) << "span " << k;
  }
}

TEST(InflateIndex, SparseWindowsKeepFewBytesAndCompressSmall) {
  DeflateFile f(RealisticInt16(2 << 20, 8));
  std::string out;
  std::vector<Checkpoint> cps = FirstPass(f.source, f.plain.size(), 256 << 10, &out);
  ASSERT_GE(cps.size(), 10u);
  std::vector<std::byte> w(kDeflateWindow);
  uint64_t total_window = 0;
  for (size_t k = 1; k < cps.size(); ++k) {
    ASSERT_TRUE(ExpandWindow(f.source, cps[k], w.data()).ok());
    size_t nonzero = 0;
    for (std::byte b : w) nonzero += b != std::byte{0};
    EXPECT_LT(nonzero, kDeflateWindow / 2) << "checkpoint " << k;
    total_window += cps[k].window.size();
  }
  double per_cp = static_cast<double>(total_window) / static_cast<double>(cps.size() - 1);
  std::printf("average stored sparse window: %.0f bytes (full window: 32768)\n", per_cp);
  EXPECT_LT(per_cp, 8192.0);
}

TEST(InflateIndex, AFullWindowIsNotNeededWhenDataIsHighlyRepetitive) {
  // Long runs reference the window heavily; restores must still be exact.
  std::string data;
  std::mt19937 rng(3);
  const char* words[] = {"frame ", "adc ", "npzfs ", "window ", "span ", "checkpoint\n"};
  while (data.size() < (2u << 20)) data += words[rng() % 6];
  DeflateFile f(data, 9);
  std::string out;
  std::vector<Checkpoint> cps = FirstPass(f.source, f.plain.size(), 64 << 10, &out);
  ASSERT_EQ(out, f.plain);
  ASSERT_GE(cps.size(), 3u);
  for (size_t k = 1; k < cps.size(); ++k) {
    auto s = InflateStream::Create(f.source);
    ASSERT_TRUE(s.ok());
    ASSERT_TRUE((*s)->Restore(cps[k]).ok());
    std::string span(std::min<size_t>(100000, f.plain.size() - cps[k].out), '\0');
    ASSERT_TRUE((*s)->Read(reinterpret_cast<std::byte*>(span.data()), span.size(), false).ok());
    EXPECT_TRUE(span == f.plain.substr(cps[k].out, span.size())) << "checkpoint " << k;
  }
}

TEST(InflateIndex, CorruptDeflateDataIsAnEioNamingTheMember) {
  DeflateFile f(RealisticInt16(1 << 18, 9));
  // Break the first block header.
  std::string bytes = testing::ReadFileOrDie(f.dir.Join("data.bin"));
  bytes[37] = '\xff';  // first block header: BTYPE 11, which is invalid
  testing::WriteFileOrDie(f.dir.Join("data.bin"), bytes);
  auto s = InflateStream::Create(f.source);
  ASSERT_TRUE(s.ok());
  std::vector<std::byte> buf(f.plain.size());
  Result<size_t> got = (*s)->Read(buf.data(), buf.size(), false);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), EIO);
  EXPECT_NE(got.status().message().find("member test"), std::string::npos);
}

TEST(InflateIndex, CompressedDataCutShortIsAnEio) {
  DeflateFile f(RealisticInt16(1 << 18, 10));
  DeflateSource cut = f.source;
  cut.compressed_size /= 2;
  auto s = InflateStream::Create(cut);
  ASSERT_TRUE(s.ok());
  std::vector<std::byte> buf(f.plain.size());
  Result<size_t> got = (*s)->Read(buf.data(), buf.size(), false);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), EIO);
  EXPECT_NE(got.status().message().find("ends before"), std::string::npos);
}

TEST(InflateIndex, ACorruptStoredWindowIsAnEio) {
  DeflateFile f(RealisticInt16(1 << 20, 11));
  std::string out;
  std::vector<Checkpoint> cps = FirstPass(f.source, f.plain.size(), 256 << 10, &out);
  ASSERT_GE(cps.size(), 2u);
  Checkpoint bad = cps[1];
  bad.window = "garbage";
  auto s = InflateStream::Create(f.source);
  ASSERT_TRUE(s.ok());
  Status st = (*s)->Restore(bad);
  EXPECT_EQ(st.code(), EIO);
  EXPECT_NE(st.message().find("window"), std::string::npos);
}

TEST(StreamPool, AParkedStreamIsTakenOnlyAtItsPositionAndTheOldestIsEvicted) {
  DeflateFile f(RealisticInt16(1 << 18, 12));
  StreamPool<InflateStream> pool(2);
  std::vector<std::byte> buf(1000);
  for (int i = 0; i < 3; ++i) {
    auto s = InflateStream::Create(f.source);
    ASSERT_TRUE(s.ok());
    ASSERT_TRUE((*s)->Read(buf.data(), 100 * (i + 1), false).ok());
    pool.Park(7, std::move(s).value());
  }
  EXPECT_EQ(pool.size(), 2u);
  EXPECT_EQ(pool.Take(7, 100), nullptr);  // the first one was evicted
  EXPECT_EQ(pool.Take(8, 200), nullptr);  // another member
  auto s = pool.Take(7, 200);
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->resume_pos(), 200u);
  // Continuing the stream gives the next bytes.
  ASSERT_TRUE(s->Read(buf.data(), 50, false).ok());
  EXPECT_EQ(std::memcmp(buf.data(), f.plain.data() + 200, 50), 0);
  EXPECT_EQ(pool.size(), 1u);
}

}  // namespace
}  // namespace npzfs
