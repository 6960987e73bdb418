// Tests of FindSpeculativeStart (core/read/block_finder.h) against zlib. Every stream is made
// here with zlib's deflate, and zlib's inflate with Z_BLOCK, run over the whole stream, gives
// the ground truth: the bit offset and uncompressed offset of every block boundary, and the
// bytes. A start found must sit on those boundaries with the true window, and zlib resumed
// from it must go on with the true bytes.
#include "core/read/block_finder.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "npzfs/file_util.h"
#include "tests/test_util.h"

namespace npzfs {
namespace {

using testing::RealisticInt16;
using testing::TempDir;

constexpr size_t kJunk = 37;  // bytes before the deflate data in every file: data_offset

// Text like a CSV log: repeated field names and formats, changing numbers.
std::string CsvText(size_t bytes, uint32_t seed) {
  std::mt19937 rng(seed);
  static const char* kSensors[] = {"pressure", "temperature", "humidity", "flow",
                                   "voltage",  "current",     "rpm",      "torque"};
  std::string out;
  char line[128];
  for (unsigned row = 0; out.size() < bytes; ++row) {
    // One draw per statement: the same text whatever order a compiler evaluates arguments in.
    const char* sensor = kSensors[rng() % 8];
    const auto count = static_cast<unsigned>(rng() % 100000);
    const double value = static_cast<double>(rng() % 1000000) / 1000.0;
    const char* state = rng() % 5 ? "ok" : "warn";
    std::snprintf(line, sizeof line, "2024-03-%02u %02u:%02u:%02u,%s,%u,%.3f,%s\n",
                  1 + row / 86400 % 28, row / 3600 % 24, row / 60 % 60, row % 60, sensor, count,
                  value, state);
    out += line;
  }
  out.resize(bytes);
  return out;
}

// Pseudo-random bytes (for stored segments and garbage).
std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string out(n, '\0');
  for (char& c : out) c = static_cast<char>(rng());
  return out;
}

// A part of a stream: `bytes` of input deflated with `level` and `strategy`, then `flush`.
struct Segment {
  size_t bytes;
  int level;
  int strategy;
  int flush;
};

// Runs deflate with `flush` until it has taken all of its input and written all it can.
void Pump(z_stream* s, int flush, std::string* out) {
  char buf[1 << 16];
  int r;
  do {
    s->next_out = reinterpret_cast<Bytef*>(buf);
    s->avail_out = sizeof buf;
    r = deflate(s, flush);
    ASSERT_NE(r, Z_STREAM_ERROR);
    out->append(buf, sizeof buf - s->avail_out);
  } while (s->avail_out == 0 || (flush == Z_FINISH && r != Z_STREAM_END));
}

// Raw deflate of `plain`, its segments deflated as `plan` says (cycled through).
std::string RawDeflate(const std::string& plain, const std::vector<Segment>& plan) {
  z_stream s{};
  EXPECT_EQ(deflateInit2(&s, plan[0].level, Z_DEFLATED, -15, 8, plan[0].strategy), Z_OK);
  std::string out;
  size_t pos = 0;
  for (size_t k = 0; pos < plain.size(); ++k) {
    const Segment& seg = plan[k % plan.size()];
    if (k > 0) {
      char buf[1 << 16];
      s.next_out = reinterpret_cast<Bytef*>(buf);
      s.avail_out = sizeof buf;
      EXPECT_EQ(deflateParams(&s, seg.level, seg.strategy), Z_OK);
      out.append(buf, sizeof buf - s.avail_out);
    }
    const size_t n = std::min(seg.bytes, plain.size() - pos);
    s.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(plain.data() + pos));
    s.avail_in = static_cast<uInt>(n);
    pos += n;
    Pump(&s, pos == plain.size() ? Z_FINISH : seg.flush, &out);
  }
  if (plain.empty()) Pump(&s, Z_FINISH, &out);
  deflateEnd(&s);
  return out;
}

std::string RawDeflate(const std::string& plain, int level, int strategy = Z_DEFAULT_STRATEGY) {
  return RawDeflate(plain, {{plain.size() + 1, level, strategy, Z_NO_FLUSH}});
}

bool BitAt(const std::string& raw, uint64_t bit) {
  return (static_cast<uint8_t>(raw[bit / 8]) >> (bit % 8)) & 1;
}

struct Boundary {
  uint64_t bit;  // where the block's header starts in the compressed data
  uint64_t out;  // uncompressed offset of its first byte
  bool final;    // BFINAL
  int type;      // BTYPE: 0 stored, 1 fixed, 2 dynamic
};

// A raw deflate stream in a file (after kJunk bytes), with zlib's ground truth.
struct Stream {
  std::string plain, raw;
  std::vector<Boundary> blocks;         // every block start, in stream order
  std::map<uint64_t, uint64_t> out_at;  // bit offset of a boundary -> uncompressed offset
  TempDir dir;
  UniqueFd fd;
  DeflateSource source;

  Stream(std::string plain_in, std::string raw_in)
      : plain(std::move(plain_in)), raw(std::move(raw_in)) {
    FindBoundaries();
    const std::string path = dir.Join("data.bin");
    testing::WriteFileOrDie(path, std::string(kJunk, 'J') + raw + std::string(11, 'T'));
    Result<UniqueFd> opened = OpenFile(path, O_RDONLY);
    EXPECT_TRUE(opened.ok());
    fd = std::move(opened).value();
    source = DeflateSource{fd.get(), kJunk, raw.size(), path + ": member test"};
  }

  uint64_t bits() const { return uint64_t{raw.size()} * 8; }

  // zlib's inflate with Z_BLOCK returns at every block boundary (data_type bit 128); the
  // bit offset is what it consumed less the unused bits of its last byte.
  void FindBoundaries() {
    z_stream s{};
    ASSERT_EQ(inflateInit2(&s, -15), Z_OK);
    std::string out(plain.size() + 1, '\0');
    s.next_in = reinterpret_cast<Bytef*>(raw.data());
    s.avail_in = static_cast<uInt>(raw.size());
    s.next_out = reinterpret_cast<Bytef*>(out.data());
    s.avail_out = static_cast<uInt>(out.size());
    std::vector<std::pair<uint64_t, uint64_t>> at = {{0, 0}};
    int r;
    while ((r = inflate(&s, Z_BLOCK)) == Z_OK) {
      if ((s.data_type & 128) && !(s.data_type & 64)) {
        at.emplace_back(s.total_in * 8 - (s.data_type & 7), s.total_out);
      }
    }
    EXPECT_EQ(r, Z_STREAM_END) << "zlib did not inflate the test's own stream";
    EXPECT_EQ(s.total_in, raw.size());
    EXPECT_TRUE(out.substr(0, s.total_out) == plain) << "zlib's output is not the input";
    inflateEnd(&s);
    for (size_t i = 0; i < at.size(); ++i) {
      const uint64_t bit = at[i].first;
      ASSERT_TRUE(i == 0 || bit > at[i - 1].first) << "boundaries out of order";
      blocks.push_back(
          {bit, at[i].second, BitAt(raw, bit), BitAt(raw, bit + 1) + 2 * BitAt(raw, bit + 2)});
      out_at[bit] = at[i].second;
    }
    ASSERT_TRUE(blocks.back().final) << "the last boundary found is not the final block's";
  }

  // The first non-final dynamic block starting at or after `bit`, or null.
  const Boundary* NextDynamic(uint64_t bit) const {
    for (const Boundary& b : blocks) {
      if (b.bit >= bit && b.type == 2 && !b.final) return &b;
    }
    return nullptr;
  }
  size_t dynamic_blocks() const {
    return std::count_if(blocks.begin(), blocks.end(),
                         [](const Boundary& b) { return b.type == 2 && !b.final; });
  }
};

// Checks a start found from `from_bit` with `limits` against the ground truth.
void ExpectTrue(const Stream& s, uint64_t from_bit, const SpeculationLimits& limits,
                const SpeculativeStart& start) {
  SCOPED_TRACE("from bit " + std::to_string(from_bit) + ", found " +
               std::to_string(start.first_bit) + " -> " + std::to_string(start.resume_bit));
  EXPECT_GE(start.first_bit, from_bit);
  EXPECT_LT(start.first_bit, from_bit + limits.search_bytes * 8) << "past the search limit";
  EXPECT_LE(start.out_between, limits.warmup_bytes) << "past the warm-up limit";
  auto first = s.out_at.find(start.first_bit);
  auto resume = s.out_at.find(start.resume_bit);
  ASSERT_NE(first, s.out_at.end()) << "first_bit is not a block boundary";
  ASSERT_NE(resume, s.out_at.end()) << "resume_bit is not a block boundary";
  ASSERT_GT(start.resume_bit, start.first_bit);
  EXPECT_EQ(start.out_between, resume->second - first->second);
  ASSERT_GE(resume->second, kDeflateWindow);
  ASSERT_EQ(start.window.size(), kDeflateWindow);
  EXPECT_EQ(std::memcmp(start.window.data(), s.plain.data() + resume->second - kDeflateWindow,
                        kDeflateWindow),
            0)
      << "the window is not the 32 KiB before resume_bit";
  // The first place that works: an earlier dynamic block in range was passed over only
  // because decoding from it to the same resume point would have passed the warm-up limit.
  for (const Boundary& b : s.blocks) {
    if (b.bit >= from_bit && b.bit < start.first_bit && b.type == 2 && !b.final) {
      EXPECT_GT(resume->second - b.out, limits.warmup_bytes)
          << "the dynamic block at bit " << b.bit << " was passed over";
    }
  }
}

// Some bit offsets spread through the stream, most of them not multiples of 8, and a few
// exactly at, just before and just after block boundaries.
std::vector<uint64_t> Offsets(const Stream& s, size_t spread) {
  std::vector<uint64_t> out;
  for (size_t i = 0; i < spread; ++i) out.push_back(s.bits() * i / spread + (i * 5) % 8);
  const size_t step = std::max<size_t>(1, s.blocks.size() / 6);
  for (size_t i = 1; i < s.blocks.size(); i += step) {
    out.push_back(s.blocks[i].bit);
    out.push_back(s.blocks[i].bit - 1);
    out.push_back(s.blocks[i].bit + 1);
  }
  return out;
}

// Inflates `n` bytes (or to the end of the stream) with zlib resumed at `start`.
std::string ResumeZlib(const Stream& s, const SpeculativeStart& start, size_t n) {
  z_stream z{};
  EXPECT_EQ(inflateInit2(&z, -15), Z_OK);
  const uint64_t in = (start.resume_bit + 7) / 8;
  const int bits = static_cast<int>(in * 8 - start.resume_bit);
  if (bits != 0) {
    EXPECT_EQ(inflatePrime(&z, bits, static_cast<uint8_t>(s.raw[in - 1]) >> (8 - bits)), Z_OK);
  }
  EXPECT_EQ(inflateSetDictionary(&z, reinterpret_cast<const Bytef*>(start.window.data()),
                                 static_cast<uInt>(start.window.size())),
            Z_OK);
  std::string out(n, '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(s.raw.data() + in));
  z.avail_in = static_cast<uInt>(s.raw.size() - in);
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(n);
  const int r = inflate(&z, Z_NO_FLUSH);
  EXPECT_TRUE(r == Z_OK || r == Z_STREAM_END) << "zlib resumed at the start: " << r;
  out.resize(z.total_out);
  inflateEnd(&z);
  return out;
}

Result<std::optional<SpeculativeStart>> Find(const Stream& s, uint64_t from_bit,
                                             const SpeculationLimits& limits = {}) {
  return FindSpeculativeStart(s.source, from_bit, limits);
}

// ---- the streams, made once ----

constexpr size_t kInt16Samples = 2 << 20;  // 4 MiB

std::vector<Segment> MixedPlan() {
  return {
      {300 << 10, 6, Z_DEFAULT_STRATEGY, Z_NO_FLUSH},
      {200 << 10, 0, Z_DEFAULT_STRATEGY, Z_SYNC_FLUSH},  // stored blocks
      {250 << 10, 9, Z_FIXED, Z_BLOCK},                  // fixed blocks, unaligned end
      {300 << 10, 1, Z_HUFFMAN_ONLY, Z_FULL_FLUSH},
      {200 << 10, 6, Z_RLE, Z_PARTIAL_FLUSH},  // ends with an empty fixed block
      {150 << 10, 9, Z_FILTERED, Z_SYNC_FLUSH},
  };
}

struct StreamCase {
  const char* name;
  // The last 32 KiB of output are all known a few hundred KiB after any dynamic block: a
  // start must be found from anywhere well inside the stream. Not so (measured) for int16
  // data at level 1, where 1.6 to 2.7 MiB of warm-up are needed, and for CSV text, where
  // copies of bytes from before the start never die out: there only what is found is
  // checked.
  bool window_known_soon;
};

void PrintTo(const StreamCase& c, std::ostream* os) { *os << c.name; }

const StreamCase kCases[] = {
    {"Int16Level1", false},   {"Int16Level6", true}, {"Int16Level9", true},
    {"CsvTextLevel6", false}, {"Mixed", true},
};

const Stream& GetStream(const std::string& name) {
  static std::map<std::string, std::unique_ptr<Stream>> made;
  std::unique_ptr<Stream>& s = made[name];
  if (s != nullptr) return *s;
  std::string plain;
  std::string raw;
  if (name == "Int16Level1" || name == "Int16Level6" || name == "Int16Level9") {
    const int level = name.back() - '0';
    plain = RealisticInt16(kInt16Samples, 100 + level);
    raw = RawDeflate(plain, level);
  } else if (name == "CsvTextLevel6") {
    plain = CsvText(3 << 20, 5);
    raw = RawDeflate(plain, 6);
  } else if (name == "Mixed") {
    // int16 data, text and noise, through every strategy and flush.
    std::string text = CsvText(1 << 20, 6), noise = RandomBytes(300 << 10, 7);
    plain = RealisticInt16(1 << 20, 8);
    plain.insert(700 << 10, noise);
    plain.insert(1400 << 10, text);
    raw = RawDeflate(plain, MixedPlan());
  } else if (name == "FixedOnly") {
    plain = RealisticInt16(1 << 20, 9);
    raw = RawDeflate(plain, 6, Z_FIXED);
  } else if (name == "LongFinalBlock") {
    // A block boundary (Z_BLOCK) 20 KiB before the end: the final block is all of that.
    plain = RealisticInt16(1 << 19, 11);
    raw = RawDeflate(plain, {{plain.size() - (20 << 10), 6, Z_DEFAULT_STRATEGY, Z_BLOCK},
                             {20 << 10, 6, Z_DEFAULT_STRATEGY, Z_NO_FLUSH}});
  } else if (name == "StoredOnly") {
    plain = RealisticInt16(1 << 20, 10);
    raw = RawDeflate(plain, 0);
  } else {
    ADD_FAILURE() << "no stream " << name;
  }
  s = std::make_unique<Stream>(std::move(plain), std::move(raw));
  return *s;
}

class BlockFinderOnStreams : public ::testing::TestWithParam<StreamCase> {
 protected:
  const Stream& stream() const { return GetStream(GetParam().name); }
};

TEST_P(BlockFinderOnStreams, EveryStartFoundIsATrueBlockBoundaryWithTheTrueWindowAfterIt) {
  const Stream& s = stream();
  ASSERT_GT(s.blocks.size(), 10u);
  ASSERT_GT(s.dynamic_blocks(), 10u);
  const SpeculationLimits limits;
  size_t found = 0, tried = 0;
  uint64_t warmup = 0;
  for (uint64_t from : Offsets(s, 48)) {
    auto got = Find(s, from, limits);
    ASSERT_TRUE(got.ok()) << got.status().message();
    ++tried;
    if (!got->has_value()) continue;
    ++found;
    warmup += (*got)->out_between;
    ExpectTrue(s, from, limits, **got);
  }
  std::printf(
      "%s: %zu blocks, %zu dynamic; found from %zu of %zu offsets, %.0f KiB of warm-up "
      "on average\n",
      GetParam().name, s.blocks.size(), s.dynamic_blocks(), found, tried,
      found ? static_cast<double>(warmup) / static_cast<double>(found) / 1024.0 : 0.0);
  if (GetParam().window_known_soon) {
    EXPECT_GT(found, tried / 2);
  }
}

// The streams whose windows are known soon.
class BlockFinderOnNumpyLikeStreams : public BlockFinderOnStreams {};

TEST_P(BlockFinderOnNumpyLikeStreams, AStartIsFoundFromAnyOffsetWellInsideTheStream) {
  const Stream& s = stream();
  ASSERT_TRUE(GetParam().window_known_soon);
  // Well inside: the next dynamic block starts within the search limit, and 1 MiB of output
  // or more follows it before the final block (these streams need 200 to 450 KiB of
  // warm-up from any of their dynamic blocks).
  const SpeculationLimits limits;
  const uint64_t plenty = 1 << 20;
  size_t checked = 0;
  for (size_t i = 0; i < 64; ++i) {
    const uint64_t from = s.bits() * i / 64 + (i * 3) % 8;
    const Boundary* next = s.NextDynamic(from);
    if (next == nullptr || next->bit - from >= limits.search_bytes * 8) continue;
    if (next->out + plenty > s.blocks.back().out) continue;
    ++checked;
    auto got = Find(s, from, limits);
    ASSERT_TRUE(got.ok()) << got.status().message();
    EXPECT_TRUE(got->has_value()) << "nothing found from bit " << from << " of " << s.bits()
                                  << ": the next dynamic block starts " << next->bit - from
                                  << " bits later, at output offset " << next->out << " of "
                                  << s.plain.size();
    if (got->has_value()) ExpectTrue(s, from, limits, **got);
  }
  EXPECT_GE(checked, 16u) << "too few offsets well inside the stream";
}

TEST_P(BlockFinderOnStreams, ZlibResumedFromAStartFoundGivesTheTrueBytesAfterIt) {
  const Stream& s = stream();
  size_t resumed = 0;
  for (size_t i = 0; i < 12; ++i) {
    const uint64_t from = s.bits() * i / 12 + i % 8;
    auto got = Find(s, from);
    ASSERT_TRUE(got.ok()) << got.status().message();
    if (!got->has_value()) continue;
    auto resume = s.out_at.find((*got)->resume_bit);
    ASSERT_NE(resume, s.out_at.end()) << "resume_bit " << (*got)->resume_bit << " from " << from;
    const size_t n = std::min<size_t>(256 << 10, s.plain.size() - resume->second);
    const std::string out = ResumeZlib(s, **got, 256 << 10);
    ASSERT_EQ(out.size(), n) << "from bit " << from;
    EXPECT_TRUE(out == s.plain.substr(resume->second, n))
        << "zlib resumed at bit " << (*got)->resume_bit << " gives other bytes";
    ++resumed;
  }
  if (GetParam().window_known_soon) {
    EXPECT_GE(resumed, 6u);
  }
}

TEST_P(BlockFinderOnStreams, SearchingAgainFromTheStartFoundFindsTheSameStart) {
  const Stream& s = stream();
  for (size_t i = 0; i < 6; ++i) {
    const uint64_t from = s.bits() * i / 6 + 3;
    auto got = Find(s, from);
    ASSERT_TRUE(got.ok()) << got.status().message();
    if (!got->has_value()) continue;
    auto again = Find(s, (*got)->first_bit);
    ASSERT_TRUE(again.ok()) << again.status().message();
    ASSERT_TRUE(again->has_value());
    EXPECT_EQ((*again)->first_bit, (*got)->first_bit);
    EXPECT_EQ((*again)->resume_bit, (*got)->resume_bit);
    EXPECT_EQ((*again)->out_between, (*got)->out_between);
    EXPECT_TRUE((*again)->window == (*got)->window);
  }
}

std::string CaseName(const ::testing::TestParamInfo<StreamCase>& info) { return info.param.name; }
INSTANTIATE_TEST_SUITE_P(Streams, BlockFinderOnStreams, ::testing::ValuesIn(kCases), CaseName);
INSTANTIATE_TEST_SUITE_P(Streams, BlockFinderOnNumpyLikeStreams,
                         ::testing::Values(kCases[1], kCases[2], kCases[4]), CaseName);

// ---- nothing to find ----

TEST(BlockFinder, FindsNothingInAStreamOfStoredBlocks) {
  const Stream& s = GetStream("StoredOnly");
  ASSERT_GT(s.blocks.size(), 10u);
  for (const Boundary& b : s.blocks) ASSERT_EQ(b.type, 0) << "level 0 wrote a coded block";
  for (uint64_t from : Offsets(s, 24)) {
    auto got = Find(s, from);
    ASSERT_TRUE(got.ok()) << got.status().message();
    EXPECT_FALSE(got->has_value())
        << "found a start at bit " << (*got)->first_bit << " from " << from;
  }
}

TEST(BlockFinder, FindsNothingAtOrPastTheEndOfTheData) {
  const Stream& s = GetStream("Int16Level6");
  for (uint64_t from : {s.bits() - 1, s.bits(), s.bits() + 5, s.bits() + 8 * 11,
                        s.bits() + (uint64_t{1} << 40), UINT64_MAX}) {
    auto got = Find(s, from);
    ASSERT_TRUE(got.ok()) << got.status().message();
    EXPECT_FALSE(got->has_value()) << "from bit " << from;
  }
}

TEST(BlockFinder, FindsNothingWhenOnlyTheFinalBlockIsLeft) {
  const Stream& s = GetStream("LongFinalBlock");
  const Boundary& last = s.blocks.back();
  ASSERT_TRUE(last.final);
  ASSERT_GT(s.bits() - last.bit, 8000u) << "the final block is too short for this test";
  for (uint64_t from = last.bit; from < s.bits(); from += (s.bits() - last.bit) / 16 + 1) {
    auto got = Find(s, from);
    ASSERT_TRUE(got.ok()) << got.status().message();
    EXPECT_FALSE(got->has_value()) << "from bit " << from << ", the final block at " << last.bit;
  }
  // The dynamic block before the final one has a header to find, but no block ends after
  // it but the final one, so no window is known anywhere that one could resume at.
  const Boundary& before = s.blocks[s.blocks.size() - 2];
  ASSERT_EQ(before.type, 2);
  auto got = Find(s, before.bit);
  ASSERT_TRUE(got.ok()) << got.status().message();
  if (got->has_value()) ExpectTrue(s, before.bit, {}, **got);
}

TEST(BlockFinder, AnythingFoundInAFixedHuffmanStreamIsATrueBoundary) {
  const Stream& s = GetStream("FixedOnly");
  ASSERT_GT(s.blocks.size(), 10u);
  for (const Boundary& b : s.blocks) ASSERT_EQ(b.type, 1) << "Z_FIXED wrote another block type";
  size_t found = 0;
  for (uint64_t from : Offsets(s, 32)) {
    auto got = Find(s, from);
    ASSERT_TRUE(got.ok()) << got.status().message();
    if (!got->has_value()) continue;
    ++found;
    ExpectTrue(s, from, {}, **got);  // fails: no dynamic header is there to find
  }
  EXPECT_EQ(found, 0u);
}

// ---- limits ----

// A dynamic block far (in bits) from the boundary before it, in the middle of the stream.
const Boundary* LongBlockAfter(const Stream& s, uint64_t gap_bits, size_t* index) {
  for (size_t i = s.blocks.size() / 3; i + 2 < s.blocks.size(); ++i) {
    if (s.blocks[i + 1].bit - s.blocks[i].bit > gap_bits && s.blocks[i + 1].type == 2) {
      *index = i;
      return &s.blocks[i + 1];
    }
  }
  return nullptr;
}

TEST(BlockFinder, FindsNothingWhenTheWarmupLimitIsBelowOneWindow) {
  const Stream& s = GetStream("Int16Level6");
  SpeculationLimits tiny;
  tiny.warmup_bytes = 1 << 10;
  size_t controls = 0;
  for (size_t i = 0; i < 8; ++i) {
    const uint64_t from = s.bits() * i / 10 + i;
    auto normal = Find(s, from);
    ASSERT_TRUE(normal.ok()) << normal.status().message();
    controls += normal->has_value();
    auto got = Find(s, from, tiny);
    ASSERT_TRUE(got.ok()) << got.status().message();
    EXPECT_FALSE(got->has_value()) << "from bit " << from;
  }
  EXPECT_EQ(controls, 8u) << "the default limits should find a start from each offset";
}

TEST(BlockFinder, AHeaderIsFoundOnlyIfItStartsWithinTheSearchLimit) {
  const Stream& s = GetStream("Int16Level6");
  size_t index = 0;
  const Boundary* next = LongBlockAfter(s, 8 << 10, &index);
  ASSERT_NE(next, nullptr) << "no block of 1 KiB compressed in the stream";
  const uint64_t from = s.blocks[index].bit + 1;  // just past a header: far from the next one
  const uint64_t gap = next->bit - from;
  SpeculationLimits limits;
  limits.search_bytes = gap / 8;  // from + search_bytes * 8 <= next->bit: not reached
  auto short_search = Find(s, from, limits);
  ASSERT_TRUE(short_search.ok()) << short_search.status().message();
  EXPECT_FALSE(short_search->has_value()) << "found bit " << (*short_search)->first_bit
                                          << " with the search ending before " << next->bit;
  limits.search_bytes = 64;
  auto tiny_search = Find(s, from, limits);
  ASSERT_TRUE(tiny_search.ok()) << tiny_search.status().message();
  EXPECT_FALSE(tiny_search->has_value());
  limits.search_bytes = gap / 8 + 1;  // now the next header is the last bit searched
  auto long_enough = Find(s, from, limits);
  ASSERT_TRUE(long_enough.ok()) << long_enough.status().message();
  ASSERT_TRUE(long_enough->has_value()) << "the header at bit " << next->bit << " was not found";
  EXPECT_EQ((*long_enough)->first_bit, next->bit);
  ExpectTrue(s, from, limits, **long_enough);
}

// From the true header at `from_bit`: `tight` finds nothing (`why` says what it allows),
// `loose` finds that header, with a true start.
void ExpectOnlyTheLooseLimitsFind(const Stream& s, uint64_t from_bit,
                                  const SpeculationLimits& tight, const SpeculationLimits& loose,
                                  const char* why) {
  auto none = Find(s, from_bit, tight);
  ASSERT_TRUE(none.ok()) << none.status().message();
  EXPECT_FALSE(none->has_value()) << "a start found with " << why;
  auto found = Find(s, from_bit, loose);
  ASSERT_TRUE(found.ok()) << found.status().message();
  ASSERT_TRUE(found->has_value());
  EXPECT_EQ((*found)->first_bit, from_bit);
  ExpectTrue(s, from_bit, loose, **found);
}

TEST(BlockFinder, FindsNothingOnceTheCandidateLimitIsUsedUp) {
  const Stream& s = GetStream("Int16Level6");
  const Boundary* b = s.NextDynamic(s.bits() / 3);
  ASSERT_NE(b, nullptr);
  SpeculationLimits none, one;
  none.candidates = 0;
  one.candidates = 1;  // the true header, right at from_bit, is the first candidate
  ExpectOnlyTheLooseLimitsFind(s, b->bit, none, one, "no candidate allowed");
}

TEST(BlockFinder, FindsNothingOnceTheBlockLimitIsUsedUp) {
  // A window needs 32 KiB of output: more than one zlib block of this data. So with one
  // block header allowed in all, the true header at from_bit is parsed and nothing more.
  const Stream& s = GetStream("Int16Level6");
  const Boundary* b = s.NextDynamic(s.bits() / 3);
  ASSERT_NE(b, nullptr);
  SpeculationLimits one_block;
  one_block.blocks = 1;
  ExpectOnlyTheLooseLimitsFind(s, b->bit, one_block, SpeculationLimits(),
                               "one block header allowed");
}

TEST(BlockFinder, TheWarmupLimitBoundsTheOutputBetweenTheTwoBitOffsets) {
  const Stream& s = GetStream("Int16Level9");
  const Boundary* b = s.NextDynamic(s.bits() / 2);
  ASSERT_NE(b, nullptr);
  auto normal = Find(s, b->bit);
  ASSERT_TRUE(normal.ok()) << normal.status().message();
  ASSERT_TRUE(normal->has_value());
  ASSERT_EQ((*normal)->first_bit, b->bit);
  const uint64_t needed = (*normal)->out_between;
  SpeculationLimits limits;
  limits.warmup_bytes = needed;  // exactly enough from this header
  auto exact = Find(s, b->bit, limits);
  ASSERT_TRUE(exact.ok()) << exact.status().message();
  ASSERT_TRUE(exact->has_value());
  EXPECT_EQ((*exact)->first_bit, b->bit);
  EXPECT_EQ((*exact)->out_between, needed);
  limits.warmup_bytes = needed - 1;  // not enough from this header: a later one, or none
  limits.search_bytes = 1;
  auto short_of_it = Find(s, b->bit, limits);
  ASSERT_TRUE(short_of_it.ok()) << short_of_it.status().message();
  EXPECT_FALSE(short_of_it->has_value());
}

// ---- bad input ----

TEST(BlockFinder, GarbageNeverCrashesAndAnythingFoundIsSelfConsistent) {
  std::vector<std::string> inputs;
  for (uint32_t seed = 1; seed <= 4; ++seed) inputs.push_back(RandomBytes(3 << 20, seed));
  inputs.push_back(std::string(1 << 20, '\0'));
  inputs.push_back(std::string(1 << 20, '\xff'));
  inputs.push_back(std::string(1 << 20, '\x04'));  // BFINAL 0, BTYPE 2 at every byte
  std::string headers;  // a true dynamic header, again and again, then noise
  {
    const std::string raw = RawDeflate(RealisticInt16(1 << 16, 3), 6);
    while (headers.size() < (1 << 20)) headers += raw.substr(0, 64) + RandomBytes(64, 11);
  }
  inputs.push_back(headers);
  for (size_t k = 0; k < inputs.size(); ++k) {
    SCOPED_TRACE("input " + std::to_string(k));
    TempDir dir;
    testing::WriteFileOrDie(dir.Join("g.bin"), inputs[k]);
    Result<UniqueFd> fd = OpenFile(dir.Join("g.bin"), O_RDONLY);
    ASSERT_TRUE(fd.ok());
    const DeflateSource src{fd->get(), 0, inputs[k].size(), "garbage"};
    for (uint64_t from : {uint64_t{0}, uint64_t{13}, uint64_t{inputs[k].size() * 4 + 3}}) {
      auto got = FindSpeculativeStart(src, from, {});
      ASSERT_TRUE(got.ok()) << got.status().message();
      if (!got->has_value()) continue;
      const SpeculativeStart& st = **got;
      EXPECT_GE(st.first_bit, from);
      EXPECT_GT(st.resume_bit, st.first_bit);
      EXPECT_LE(st.resume_bit, inputs[k].size() * 8);
      EXPECT_GE(st.out_between, kDeflateWindow);
      EXPECT_EQ(st.window.size(), kDeflateWindow);
    }
  }
}

TEST(BlockFinder, AReadPastTheEndOfTheFileIsAnEioNamingTheSource) {
  const Stream& s = GetStream("Int16Level6");
  DeflateSource longer = s.source;
  longer.compressed_size += 4096;  // the file holds 11 bytes after the data
  auto got = FindSpeculativeStart(longer, s.bits() - 1024 * 8, {});
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), EIO);
  EXPECT_NE(got.status().message().find("member test"), std::string::npos)
      << got.status().message();
  DeflateSource closed = s.source;
  closed.fd = -1;
  auto bad_fd = FindSpeculativeStart(closed, 0, {});
  EXPECT_FALSE(bad_fd.ok());
}

}  // namespace
}  // namespace npzfs
