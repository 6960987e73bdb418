// The inflate engines against each other and against zlib's reference output, on a corpus
// made at test time: numpy archives, Info-ZIP at -1/-6/-9, fixed-Huffman and stored blocks,
// an empty member, one huge fixed-Huffman block. Run in a build with ISA-L this compares
// ISA-L with zlib; in a build without, zlib with itself through both code paths.
#include <fcntl.h>
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "core/base/crc32.h"
#include "core/read/decode_stream.h"
#include "core/read/inflate_engine.h"
#include "core/read/inflate_index.h"
#include "npzfs/file_util.h"
#include "npzfs/zip_directory.h"
#include "tests/deflate_fixtures.h"
#include "tests/test_util.h"

namespace npzfs {
namespace {

using testing::ReadFileOrDie;
using testing::TempDir;

struct CorpusMember {
  std::string archive, name, ref;  // ref: what zipfile reads
  DeflateSource source;
};

class EngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();  // NOLINT: the suite's, deleted in TearDownTestSuite
    testing::RunPython(R"PY(
import numpy as np, zipfile, os, subprocess, zlib
D = ')PY" + dir_->path() +
                       R"PY('
rng = np.random.default_rng(21)
t = np.arange(1_000_000)
adc = (1000 * np.sin(t / 500.0) + rng.normal(0, 30, t.size)).astype('<i2')
walk = np.cumsum(rng.normal(0, 1, 300_000)).astype('<f4')
np.savez_compressed(D + '/numpy.npz', adc=adc, walk=walk, small=np.arange(7),
                    empty=np.zeros((0, 4), dtype='<i2'))
src = D + '/src'
os.makedirs(src)
np.save(src + '/adc.npy', adc[:300_000])
open(src + '/text.txt', 'w').write('npzfs engine corpus\n' * 5000)
for level in (1, 6, 9):
    subprocess.run(['zip', '-q', '-%d' % level, '-r', D + '/zip%d.zip' % level, '.'], cwd=src,
                   check=True)
with zipfile.ZipFile(D + '/special.zip', 'w') as z:
    z.writestr(zipfile.ZipInfo('stored_blocks.bin'), adc[:200_000].tobytes(),
               compress_type=zipfile.ZIP_DEFLATED, compresslevel=0)
    z.writestr('empty.bin', b'', compress_type=zipfile.ZIP_DEFLATED)
# Fixed-Huffman blocks (zlib's Z_FIXED), as a raw stream in a zip made by hand below.
c = zlib.compressobj(6, zlib.DEFLATED, -15, 8, zlib.Z_FIXED)
fixed = c.compress(adc[:300_000].tobytes()) + c.flush()
open(D + '/fixed.raw', 'wb').write(fixed)
open(D + '/fixed.ref', 'wb').write(adc[:300_000].tobytes())
)PY");
    const std::string fixed_ref = ReadFileOrDie(dir_->Join("fixed.ref"));
    testing::WriteRawDeflateZip(dir_->Join("fixed.zip"), "fixed.bin",
                                ReadFileOrDie(dir_->Join("fixed.raw")),
                                Crc32(0, fixed_ref.data(), fixed_ref.size()), fixed_ref.size());
    testing::DeflateBlock noisy = testing::NoisyFixedBlock(1 << 20, 4);
    testing::WriteRawDeflateZip(dir_->Join("oneblock.zip"), "oneblock.bin", noisy.raw,
                                Crc32(0, noisy.plain.data(), noisy.plain.size()),
                                noisy.plain.size());
    testing::WriteFileOrDie(dir_->Join("oneblock.ref"), noisy.plain);
  }
  static void TearDownTestSuite() {
    delete dir_;  // NOLINT
    dir_ = nullptr;
  }

  // Every deflated member of the corpus, with zipfile's bytes as reference.
  std::vector<CorpusMember> Corpus() {
    std::vector<CorpusMember> out;
    for (std::string archive : {"numpy.npz", "zip1.zip", "zip6.zip", "zip9.zip", "special.zip",
                                "fixed.zip", "oneblock.zip"}) {
      const std::string path = dir_->Join(archive);
      auto fd = OpenFile(path, O_RDONLY);
      EXPECT_TRUE(fd.ok());
      auto dir = ReadZipDirectory(fd->get(), path);
      EXPECT_TRUE(dir.ok()) << dir.status().message();
      testing::RunPython("import zipfile\nz = zipfile.ZipFile('" + path +
                         "')\nfor i in z.infolist():\n  open('" + scratch_.path() +
                         "/' + i.filename.replace('/', '_') + '.ref', 'wb').write(z.read(i))\n");
      for (const ZipEntry& e : dir->entries) {
        if (e.method != 8) continue;
        CorpusMember m;
        m.archive = archive;
        m.name = e.name;
        std::string ref_name = e.name;
        for (char& c : ref_name) c = c == '/' ? '_' : c;
        m.ref = archive == "oneblock.zip" ? ReadFileOrDie(dir_->Join("oneblock.ref"))
                                          : ReadFileOrDie(scratch_.Join(ref_name + ".ref"));
        m.source = DeflateSource{fd->get(), e.data_offset, e.compressed_size,
                                 archive + ": member " + e.name};
        out.push_back(std::move(m));
      }
      fds_.push_back(std::move(fd).value());
    }
    EXPECT_GE(out.size(), 12u);
    return out;
  }

  static TempDir* dir_;
  TempDir scratch_;
  std::vector<UniqueFd> fds_;
};
TempDir* EngineTest::dir_ = nullptr;

std::unique_ptr<InflateEngine> Engine(bool fast) {
  auto e = fast ? MakeFastEngine() : MakeZlibEngine();
  EXPECT_TRUE(e.ok());
  return std::move(e).value();
}

// Decodes from `cp` with the chosen engine, `n` bytes (or to the end), in reads of `step`.
std::string DecodeFrom(const DeflateSource& src, const Checkpoint& cp, bool fast, size_t n,
                       size_t step) {
  auto s = DecodeStream::Create(src, Engine(fast));
  Status st = s->Restore(cp, std::nullopt);
  EXPECT_TRUE(st.ok()) << st.message();
  std::string out;
  std::string buf(step, '\0');
  while (out.size() < n) {
    auto got = s->Read(reinterpret_cast<std::byte*>(buf.data()), std::min(step, n - out.size()));
    EXPECT_TRUE(got.ok()) << got.status().message();
    if (!got.ok() || *got == 0) break;
    out.append(buf, 0, *got);
  }
  return out;
}

// Every block boundary of the stream, with its sparse window (the first pass's way).
std::vector<Checkpoint> AllBoundaries(const DeflateSource& src, size_t size) {
  std::vector<Checkpoint> cps(1);
  auto s = InflateStream::Create(src, /*track_blocks=*/true);
  EXPECT_TRUE(s.ok());
  std::vector<std::byte> buf(size + 1);
  std::vector<std::byte> window(kDeflateWindow);
  size_t len = 0;
  while (true) {
    Result<size_t> got = (*s)->Read(buf.data() + len, buf.size() - len, true);
    EXPECT_TRUE(got.ok()) << got.status().message();
    if (!got.ok()) break;
    len += *got;
    if ((*s)->ended() || !(*s)->at_boundary()) break;
    Checkpoint cp = (*s)->Position();
    const uint32_t wlen = (*s)->Window(window.data());
    auto ahead = (*s)->FillLookahead();
    EXPECT_TRUE(ahead.ok());
    if (ahead->empty()) break;
    auto sparse = MakeSparseWindow(src, cp, std::span(window.data(), wlen), *ahead);
    EXPECT_TRUE(sparse.ok());
    cp.window = *sparse;
    cp.window_size = wlen;
    cps.push_back(cp);
  }
  return cps;
}

TEST_F(EngineTest, BothEnginesGiveZipfilesBytesForEveryMemberOfTheCorpus) {
  std::printf("fast engine: %s\n", Engine(true)->name());
  for (const CorpusMember& m : Corpus()) {
    SCOPED_TRACE(m.archive + ": " + m.name);
    for (bool fast : {false, true}) {
      for (size_t step : {size_t{4096}, size_t{1} << 20}) {
        const std::string got = DecodeFrom(m.source, Checkpoint{}, fast, m.ref.size() + 1, step);
        ASSERT_EQ(got.size(), m.ref.size()) << (fast ? "fast" : "zlib") << " step " << step;
        ASSERT_TRUE(got == m.ref) << (fast ? "fast" : "zlib") << " step " << step;
      }
    }
  }
}

TEST_F(EngineTest, ASpanFromEveryBlockBoundaryDecodesIdenticallyWithBothEngines) {
  size_t checked = 0;
  for (const CorpusMember& m : Corpus()) {
    SCOPED_TRACE(m.archive + ": " + m.name);
    const std::vector<Checkpoint> cps = AllBoundaries(m.source, m.ref.size());
    for (size_t k = 0; k < cps.size(); ++k) {
      const size_t n = std::min<size_t>(64 << 10, m.ref.size() - cps[k].out);
      const std::string expected = m.ref.substr(cps[k].out, n);
      ASSERT_TRUE(DecodeFrom(m.source, cps[k], false, n, n) == expected) << "zlib, cp " << k;
      ASSERT_TRUE(DecodeFrom(m.source, cps[k], true, n, n) == expected) << "fast, cp " << k;
      ++checked;
    }
  }
  std::printf("%zu block boundaries checked\n", checked);
  EXPECT_GT(checked, 100u);
}

TEST_F(EngineTest, ASnapshotResumesBitExactlyWithBothEngines) {
  std::mt19937_64 rng(8);
  for (const CorpusMember& m : Corpus()) {
    if (m.ref.size() < (256 << 10)) continue;
    SCOPED_TRACE(m.archive + ": " + m.name);
    for (bool fast : {false, true}) {
      auto s = DecodeStream::Create(m.source, Engine(fast));
      ASSERT_TRUE(s->Restore(Checkpoint{}, 0u).ok());
      const size_t at = 1 + rng() % (m.ref.size() - 100000);
      ASSERT_TRUE(s->Skip(at).ok());
      auto snap = s->TakeSnapshot();
      ASSERT_TRUE(snap.ok());
      // Let the original run on, then resume the snapshot in a new stream.
      std::string a(50000, '\0'), b(50000, '\0');
      ASSERT_TRUE(s->Read(reinterpret_cast<std::byte*>(a.data()), a.size()).ok());
      auto t = DecodeStream::Create(m.source, Engine(fast));
      ASSERT_TRUE(t->Restore(*snap).ok());
      ASSERT_TRUE(t->Read(reinterpret_cast<std::byte*>(b.data()), b.size()).ok());
      EXPECT_TRUE(a == m.ref.substr(at, a.size()));
      EXPECT_TRUE(b == a) << (fast ? "fast" : "zlib") << " at " << at;
      // The running CRC-32 covers every byte from the start.
      ASSERT_TRUE(t->Skip(m.ref.size()).ok());
      EXPECT_TRUE(t->ended());
      EXPECT_EQ(t->crc(), Crc32(0, m.ref.data(), m.ref.size()));
    }
  }
}

TEST_F(EngineTest, CorruptDataIsAnEioWithBothEnginesNeverAHang) {
  const std::string path = scratch_.Join("bad.raw");
  std::string raw = ReadFileOrDie(dir_->Join("fixed.raw"));
  // Invalid block type 11 right at the start, and truncation.
  std::string bad = raw;
  bad[0] = static_cast<char>(0xff);
  testing::WriteFileOrDie(path, bad + raw.substr(0, raw.size() / 2));
  auto fd = OpenFile(path, O_RDONLY);
  ASSERT_TRUE(fd.ok());
  for (bool fast : {false, true}) {
    DeflateSource bad_type{fd->get(), 0, raw.size(), "bad.raw: member x"};
    auto s = DecodeStream::Create(bad_type, Engine(fast));
    ASSERT_TRUE(s->Restore(Checkpoint{}, std::nullopt).ok());
    std::vector<std::byte> out(1 << 20);
    auto got = s->Read(out.data(), out.size());
    ASSERT_FALSE(got.ok()) << (fast ? "fast" : "zlib");
    EXPECT_EQ(got.status().code(), EIO);
    EXPECT_NE(got.status().message().find("bad.raw: member x"), std::string::npos);
    // A stream cut short: the data runs out before the final block.
    DeflateSource cut{fd->get(), bad.size(), raw.size() / 2, "bad.raw: member y"};
    auto c = DecodeStream::Create(cut, Engine(fast));
    ASSERT_TRUE(c->Restore(Checkpoint{}, std::nullopt).ok());
    got = c->Read(out.data(), out.size());
    ASSERT_FALSE(got.ok()) << (fast ? "fast" : "zlib");
    EXPECT_NE(got.status().message().find("ends before"), std::string::npos)
        << got.status().message();
  }
}

TEST(Crc32, MatchesZlibAndChainsAndCombines) {
  std::string data(300001, '\0');
  std::mt19937 rng(5);
  for (char& c : data) c = static_cast<char>(rng());
  const uint32_t whole = Crc32(0, data.data(), data.size());
  EXPECT_EQ(whole, Crc32(Crc32(0, data.data(), 1000), data.data() + 1000, data.size() - 1000));
  EXPECT_EQ(whole, Crc32Combine(Crc32(0, data.data(), 77), Crc32(0, data.data() + 77, 300001 - 77),
                                300001 - 77));
  EXPECT_EQ(Crc32(0, "123456789", 9), 0xCBF43926u);  // the CRC-32 check value
  EXPECT_EQ(Crc32(0, nullptr, 0), 0u);
}

}  // namespace
}  // namespace npzfs
