// Deflate members whose blocks never end: one block of megabytes to hundreds of megabytes.
// Spans must stay bounded (checkpoints inside the block), reads must be exact, and memory
// must stay within the bound whatever the block sizes.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <zlib.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <string>

#include "npzfs/archive.h"
#include "tests/deflate_fixtures.h"
#include "tests/sidecar_util.h"
#include "tests/test_util.h"

namespace npzfs {
namespace {

// Under AddressSanitizer freed memory stays in a quarantine (256 MiB by default) and under
// ThreadSanitizer shadow memory counts as RSS: the ceiling is checked in plain builds only.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kRssMeaningful = false;
#else
constexpr bool kRssMeaningful = true;
#endif

using testing::DeflateBlock;
using testing::TempDir;

std::string Inflate(const std::string& raw, size_t size) {
  std::string out(size + 1, '\0');
  z_stream s{};
  EXPECT_EQ(inflateInit2(&s, -15), Z_OK);
  s.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(raw.data()));
  s.avail_in = static_cast<uInt>(raw.size());
  s.next_out = reinterpret_cast<Bytef*>(out.data());
  s.avail_out = static_cast<uInt>(out.size());
  EXPECT_EQ(inflate(&s, Z_FINISH), Z_STREAM_END);
  out.resize(s.total_out);
  inflateEnd(&s);
  return out;
}

uint32_t Crc(const std::string& s) {
  return static_cast<uint32_t>(crc32(0, reinterpret_cast<const Bytef*>(s.data()), s.size()));
}

// A field of /proc/self/status in KiB (VmHWM: the peak since the last ResetPeakRss).
uint64_t StatusKib(const std::string& key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind(key + ":", 0) == 0) return std::stoull(line.substr(key.size() + 1));
  }
  return 0;
}
void ResetPeakRss() {
  std::ofstream f("/proc/self/clear_refs");
  f << "5";  // resets VmHWM to the current RSS
}
// How far the peak rose above `start_kib` (VmRSS read after ResetPeakRss), or 0: memory
// freed meanwhile (pool threads finishing an earlier test's work) can leave the peak below
// the start, and the kernel's RSS counters are per-CPU approximations.
uint64_t PeakGrowthKib(uint64_t start_kib) {
  const uint64_t peak_kib = StatusKib("VmHWM");
  return peak_kib > start_kib ? peak_kib - start_kib : 0;
}

std::string Read(MemberReader& r, uint64_t offset, size_t n) {
  std::string buf(n, '\0');
  auto got = r.ReadAt(offset, std::as_writable_bytes(std::span(buf)));
  EXPECT_TRUE(got.ok()) << got.status().message();
  buf.resize(got.ok() ? *got : 0);
  return buf;
}

TEST(HugeBlock, TheTestGeneratorsWriteWhatZlibInflates) {
  DeflateBlock b = testing::NoisyFixedBlock(300000, 1);
  EXPECT_EQ(Inflate(b.raw, b.plain.size()), b.plain);
  const std::string prefix = "header bytes";
  const std::string zeros = testing::ZerosFixedBlock(prefix, 1000003);
  std::string expect = prefix + std::string(1000003 - prefix.size(), '\0');
  EXPECT_EQ(Inflate(zeros, expect.size()), expect);
  EXPECT_EQ(testing::ZerosCrc(prefix, expect.size()), Crc(expect));
}

TEST(HugeBlock, ASingleNoisyBlockIsCutIntoBoundedSpansThatReadExactly) {
  TempDir dir;
  DeflateBlock b = testing::NoisyFixedBlock(4 << 20, 2);
  const std::string path = dir.Join("noisy.zip");
  testing::WriteRawDeflateZip(path, "noisy.bin", b.raw, Crc(b.plain), b.plain.size());
  ArchiveOptions o;
  o.checkpoint_spacing = 64 << 10;  // cuts every 128 KiB inside the one block
  o.cache_bytes = 1 << 20;
  {
    auto a = Archive::Open(path, o);
    ASSERT_TRUE(a.ok()) << a.status().message();
    auto r = *(*a)->OpenMember(0);
    std::string all;
    for (uint64_t off = 0; off < b.plain.size(); off += 100000) all += Read(*r, off, 100000);
    ASSERT_TRUE(all == b.plain);
    ASSERT_TRUE((*a)->BuildIndex(0).ok());  // the background indexer may still be at it
    ASSERT_TRUE((*a)->SaveIndex().ok());
    // Every checkpoint is a cut inside the one block, at twice the least length of the span
    // before it (longer than 2 * spacing where a window is large), so the block is cut
    // several times and no span is longer than that.
    testing::Sidecar sidecar;
    ASSERT_NO_FATAL_FAILURE(testing::ReadSidecar(path, (*a)->IndexPath(), &sidecar));
    ASSERT_EQ(sidecar.records.size(), 1u);
    const std::vector<Checkpoint>& cps = sidecar.records[0].checkpoints;
    EXPECT_GE(cps.size(), 3u);
    for (size_t k = 1; k < cps.size(); ++k) {
      EXPECT_FALSE(cps[k].at_block_start()) << k;
      EXPECT_EQ(cps[k].header_bit, 0u) << k;
      EXPECT_LE(cps[k].out - cps[k - 1].out, 2 * MinSpanLength(cps[k - 1], o.checkpoint_spacing))
          << k;
    }
  }
  // From the saved checkpoints (all inside the block): random reads, no first pass.
  auto a = Archive::Open(path, o);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ((*a)->index_state(0), IndexState::kComplete);
  auto r = *(*a)->OpenMember(0);
  std::mt19937_64 rng(3);
  for (int n = 0; n < 200; ++n) {
    const uint64_t off = rng() % b.plain.size();
    const size_t len = 1 + rng() % 200000;
    ASSERT_TRUE(Read(*r, off, len) == b.plain.substr(off, len)) << off;
  }
  EXPECT_EQ((*a)->first_pass_spans(0), 0u);
}

class ZerosMember : public ::testing::Test {
 protected:
  static constexpr uint64_t kSize = uint64_t{256} << 20;
  static void SetUpTestSuite() {
    dir_ = new TempDir();  // NOLINT: the suite's, deleted in TearDownTestSuite
    const std::string raw = testing::ZerosFixedBlock(Prefix(), kSize);
    testing::WriteRawDeflateZip(dir_->Join("zeros.zip"), "zeros.npy", raw,
                                testing::ZerosCrc(Prefix(), kSize), kSize);
  }
  static void TearDownTestSuite() {
    delete dir_;  // NOLINT
    dir_ = nullptr;
  }
  static std::string Prefix() { return "\x93NUMPY a single deflate block of zeros"; }

  static TempDir* dir_;
};
TempDir* ZerosMember::dir_ = nullptr;

TEST_F(ZerosMember, A256MiBSingleBlockIsReadThroughWithinTheMemoryBound) {
  ArchiveOptions o;
  o.cache_bytes = 16 << 20;
  o.index_enabled = false;
  auto a = Archive::Open(dir_->Join("zeros.zip"), o);
  ASSERT_TRUE(a.ok()) << a.status().message();
  auto r = *(*a)->OpenMember(0);
  ResetPeakRss();
  const uint64_t start_kib = StatusKib("VmRSS");
  const std::string zeros(1 << 20, '\0');
  std::string buf(1 << 20, '\0');
  uint64_t off = 0;
  while (off < kSize) {
    auto got = r->ReadAt(off, std::as_writable_bytes(std::span(buf)));
    ASSERT_TRUE(got.ok()) << got.status().message();
    ASSERT_GT(*got, 0u);
    const size_t skip = off == 0 ? Prefix().size() : 0;
    if (off == 0) {
      ASSERT_EQ(buf.substr(0, skip), Prefix());
    }
    ASSERT_EQ(std::memcmp(buf.data() + skip, zeros.data(), *got - skip), 0) << off;
    off += *got;
  }
  EXPECT_EQ(off, kSize);
  ASSERT_TRUE((*a)->BuildIndex(0).ok());  // the background indexer may still be at it
  EXPECT_EQ((*a)->index_state(0), IndexState::kComplete);
  const uint64_t growth_kib = PeakGrowthKib(start_kib);
  std::printf("256 MiB single block: peak RSS %llu KiB above the start\n",
              static_cast<unsigned long long>(growth_kib));
  if (kRssMeaningful) {
    EXPECT_LE(growth_kib, (64 + 16) << 10) << "the bound is 64 MiB + the cache";
  }
  // Back into the middle: one bounded span from a checkpoint inside the block.
  const uint64_t spans = (*a)->first_pass_spans(0);
  EXPECT_GE(spans, kSize / (2 << 20));
  EXPECT_EQ(Read(*r, kSize / 2, 4096), std::string(4096, '\0'));
  EXPECT_EQ((*a)->first_pass_spans(0), spans);
}

TEST_F(ZerosMember, AFirstReadNearTheEndOfTheBlockStaysWithinTheMemoryBound) {
  ArchiveOptions o;
  o.cache_bytes = 16 << 20;
  o.index_enabled = false;
  auto a = Archive::Open(dir_->Join("zeros.zip"), o);
  ASSERT_TRUE(a.ok());
  auto r = *(*a)->OpenMember(0);
  ResetPeakRss();
  const uint64_t start_kib = StatusKib("VmRSS");
  EXPECT_EQ(Read(*r, kSize - 5000, 10000), std::string(5000, '\0'));
  if (kRssMeaningful) {
    EXPECT_LE(PeakGrowthKib(start_kib), (64 + 16) << 10);
  }
}

}  // namespace
}  // namespace npzfs
