// Tests of the read paths of deflated members through the core API: the fast path ahead of
// the checkpoints, the background indexer behind it, read-ahead of known spans, parallel
// readers with a tiny cache, and the counters that show which path served a read.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/read/deflated_member.h"
#include "core/read/inflate_engine.h"
#include "core/read/read_pools.h"
#include "npzfs/archive.h"
#include "tests/test_util.h"

namespace npzfs {
namespace {

using testing::ReadFileOrDie;
using testing::TempDir;

class FastPathTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();  // NOLINT: the suite's, deleted in TearDownTestSuite
    testing::RunPython(R"PY(
import numpy as np, zipfile
D = ')PY" + dir_->path() +
                       R"PY('
rng = np.random.default_rng(31)
t = np.arange(6_000_000)
adc = (1000 * np.sin(t / 500.0) + rng.normal(0, 30, t.size)).astype('<i2')   # 12 MB
np.savez_compressed(D + '/comp.npz', adc=adc, small=np.arange(5))
with zipfile.ZipFile(D + '/comp.npz') as z:
    open(D + '/adc.npy', 'wb').write(z.read('adc.npy'))
# The directory's CRC-32 of adc.npy is wrong.
data = bytearray(open(D + '/comp.npz', 'rb').read())
for i in central_records(data, 'adc.npy'):
    data[i + 16] ^= 0x55
open(D + '/badcrc.npz', 'wb').write(bytes(data))
# adc.npy's deflate data is overwritten with 0xff for 256 bytes at 60% of its length.
data = bytearray(open(D + '/comp.npz', 'rb').read())
with zipfile.ZipFile(D + '/comp.npz') as z:
    info = z.getinfo('adc.npy')
h = info.header_offset
start = h + 30 + int.from_bytes(data[h + 26:h + 28], 'little') + int.from_bytes(data[h + 28:h + 30], 'little')
at = start + info.compress_size * 6 // 10
data[at:at + 256] = b'\xff' * 256
open(D + '/corrupt.npz', 'wb').write(bytes(data))
)PY");
    ref_ = new std::string(ReadFileOrDie(dir_->Join("adc.npy")));  // NOLINT: as dir_
  }
  static void TearDownTestSuite() {
    delete dir_;  // NOLINT
    delete ref_;  // NOLINT
  }

  ArchiveOptions Options(bool background_index) {
    ArchiveOptions o;
    o.checkpoint_spacing = 256 << 10;
    o.background_index = background_index;
    o.index_enabled = false;
    // The sink is shared with the lambda: a pool task of the archive may log after the test
    // (and this fixture) ended.
    o.log = [sink = log_](const std::string& line) {
      std::lock_guard<std::mutex> lock(sink->mu);
      sink->text += line + "\n";
    };
    return o;
  }

  static std::string Read(MemberReader& r, uint64_t off, size_t n) {
    std::string buf(n, '\0');
    auto got = r.ReadAt(off, std::as_writable_bytes(std::span(buf)));
    EXPECT_TRUE(got.ok()) << got.status().message();
    buf.resize(got.ok() ? *got : 0);
    return buf;
  }

  // Reads the whole member in 1 MiB requests; the first error, or Ok.
  static Status ReadToTheEnd(MemberReader& r) {
    std::string buf(1 << 20, '\0');
    for (uint64_t off = 0; off < r.size(); off += buf.size()) {
      auto got = r.ReadAt(off, std::as_writable_bytes(std::span(buf)));
      if (!got.ok()) return got.status();
    }
    return Status::Ok();
  }

  // A request of the kernel's readahead size, and the run of them that one frame of
  // np.load(mmap_mode='r') brings (see the reader-of-frames test).
  static constexpr uint64_t kRequest = 128 << 10, kFrameRun = 6 * kRequest;

  static void ReadRequest(MemberReader& r, uint64_t off) {
    ASSERT_TRUE(Read(r, off, kRequest) == ref_->substr(off, kRequest)) << "offset " << off;
  }

  // How many of the spans starting at `starts` (the last ending at `size`) hold a byte of
  // [from, to).
  static uint64_t SpansIn(const std::vector<uint64_t>& starts, uint64_t size, uint64_t from,
                          uint64_t to) {
    uint64_t n = 0;
    for (size_t k = 0; k < starts.size(); ++k) {
      const uint64_t end = k + 1 < starts.size() ? starts[k + 1] : size;
      if (starts[k] < to && end > from) ++n;
    }
    return n;
  }

  static uint64_t Misses(const Archive& a) { return a.stats().cache_misses; }

  // The cache misses once decodes in flight are done: waits up to 2 s for `want`, then 50 ms
  // more for any beyond it.
  static uint64_t SettledMisses(const Archive& a, uint64_t want) {
    for (int i = 0; i < 200 && Misses(a) < want; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    return Misses(a);
  }

  static TempDir* dir_;
  static std::string* ref_;
  struct LogSink {
    std::mutex mu;
    std::string text;
  };
  std::shared_ptr<LogSink> log_ = std::make_shared<LogSink>();
};
TempDir* FastPathTest::dir_ = nullptr;
std::string* FastPathTest::ref_ = nullptr;

TEST_F(FastPathTest, ASequentialReaderAheadOfTheCheckpointsIsServedByTheFastPath) {
  auto a = Archive::Open(dir_->Join("comp.npz"), Options(/*background_index=*/false));
  ASSERT_TRUE(a.ok());
  const size_t adc = *(*a)->Find("adc.npy");
  auto r = *(*a)->OpenMember(adc);
  std::string all;
  for (uint64_t off = 0; off < r->size(); off += 128 << 10) all += Read(*r, off, 128 << 10);
  ASSERT_TRUE(all == *ref_);
  // Only the first span went through the first pass; the rest came from the fast path.
  EXPECT_EQ((*a)->first_pass_spans(adc), 1u);
  EXPECT_GE((*a)->fast_chunks(adc), r->size() / (1 << 20) - 1);
  EXPECT_EQ((*a)->index_state(adc), IndexState::kPartial);
}

TEST_F(FastPathTest, TheFastPathChecksTheMembersCrcAtTheEnd) {
  auto a = Archive::Open(dir_->Join("badcrc.npz"), Options(/*background_index=*/false));
  ASSERT_TRUE(a.ok());
  auto r = *(*a)->OpenMember(*(*a)->Find("adc.npy"));
  const Status last = ReadToTheEnd(*r);
  ASSERT_FALSE(last.ok()) << "a bad member was read to a clean end";
  EXPECT_EQ(last.code(), EIO);
  EXPECT_NE(last.message().find("CRC-32 mismatch"), std::string::npos) << last.message();
  EXPECT_GT((*a)->fast_chunks(*(*a)->Find("adc.npy")), 0u);
  std::byte b[8];
  EXPECT_FALSE(r->ReadAt(0, b).ok()) << "every later read fails";
}

TEST_F(FastPathTest, AReaderGoingFromKnownSpansOntoTheFastPathStillChecksTheMembersCrc) {
  // The known spans' stream is parked where they end and the fast path continues it to the
  // member's end: it must carry the CRC-32 of everything before it for the final check.
  auto a = Archive::Open(dir_->Join("badcrc.npz"), Options(/*background_index=*/false));
  ASSERT_TRUE(a.ok());
  const size_t adc = *(*a)->Find("adc.npy");
  ASSERT_TRUE((*a)->IndexUpTo(adc, 6 << 20).ok());
  auto r = *(*a)->OpenMember(adc);
  const Status last = ReadToTheEnd(*r);
  ASSERT_FALSE(last.ok()) << "a bad member was read to a clean end";
  EXPECT_NE(last.message().find("CRC-32 mismatch"), std::string::npos) << last.message();
  EXPECT_GT((*a)->fast_chunks(adc), 0u);
  EXPECT_NE((*a)->index_state(adc), IndexState::kComplete);
}

TEST_F(FastPathTest, AStreamingReaderHasTheNextChunksDecodedAheadOfItAndNoMore) {
  auto a = Archive::Open(dir_->Join("comp.npz"), Options(/*background_index=*/false));
  ASSERT_TRUE(a.ok());
  const size_t adc = *(*a)->Find("adc.npy");
  auto r = *(*a)->OpenMember(adc);
  constexpr uint64_t kChunk = DeflatedMember::kFastChunk;
  // 8 MiB in order from 2 MiB on, past the first span: all of it from the fast path.
  const uint64_t from = 2 << 20, to = 10 << 20;
  for (uint64_t off = from; off < to; off += 128 << 10) {
    ASSERT_EQ(Read(*r, off, 128 << 10), ref_->substr(off, 128 << 10));
  }
  const uint64_t want = (to - from) / kChunk + DeflatedMember::kFastLead;
  for (int i = 0; i < 500 && (*a)->fast_chunks(adc) < want; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // and no more come
  EXPECT_EQ((*a)->fast_chunks(adc), want) << "kFastLead chunks ahead of the reader";
  EXPECT_EQ((*a)->first_pass_spans(adc), 0u);
}

TEST_F(FastPathTest, AStreamingReaderGetsEioAtCorruptDataAndNeverWaitsForever) {
  auto a = Archive::Open(dir_->Join("corrupt.npz"), Options(/*background_index=*/false));
  ASSERT_TRUE(a.ok());
  auto r = *(*a)->OpenMember(*(*a)->Find("adc.npy"));
  Status failed;
  uint64_t at = 0;
  std::string buf(128 << 10, '\0');
  for (; at < r->size(); at += buf.size()) {
    auto got = r->ReadAt(at, std::as_writable_bytes(std::span(buf)));
    if (!got.ok()) {
      failed = got.status();
      break;
    }
    // Ahead of the checkpoints nothing but the member's CRC-32 at the end can tell garbage
    // that decodes from good data (verify=strict waits for it); before the damage, the
    // bytes are the member's.
    if (at + *got < r->size() / 2) {
      ASSERT_TRUE(buf.substr(0, *got) == ref_->substr(at, *got)) << "wrong bytes at " << at;
    }
  }
  ASSERT_FALSE(failed.ok()) << "corrupt deflate data was read to a clean end";
  EXPECT_EQ(failed.code(), EIO) << failed.message();
  EXPECT_GT(at, r->size() / 2) << failed.message();
  // Every later read fails the same way, also where the chain had claimed chunks.
  for (uint64_t off = at; off < std::min<uint64_t>(r->size(), at + (4 << 20)); off += 64 << 10) {
    auto got = r->ReadAt(off, std::as_writable_bytes(std::span(buf)));
    EXPECT_FALSE(got.ok()) << "at " << off;
  }
}

TEST_F(FastPathTest, RandomReadsAheadOfTheCheckpointsAreExactFromSnapshotsAndStreams) {
  auto a = Archive::Open(dir_->Join("comp.npz"), Options(/*background_index=*/false));
  ASSERT_TRUE(a.ok());
  auto r = *(*a)->OpenMember(*(*a)->Find("adc.npy"));
  std::mt19937_64 rng(4);
  for (int n = 0; n < 150; ++n) {
    const uint64_t off = rng() % ref_->size();
    const size_t len = 1 + rng() % 600000;
    ASSERT_TRUE(Read(*r, off, len) == ref_->substr(off, len)) << "offset " << off;
  }
}

TEST_F(FastPathTest, TheIndexerCompletesTheIndexBehindTheReaderAndThenNoFirstPassIsNeeded) {
  auto a = Archive::Open(dir_->Join("comp.npz"), Options(/*background_index=*/true));
  ASSERT_TRUE(a.ok());
  const size_t adc = *(*a)->Find("adc.npy");
  auto r = *(*a)->OpenMember(adc);
  EXPECT_EQ(Read(*r, r->size() - 1000, 1000), ref_->substr(ref_->size() - 1000));
  // BuildIndex finishes whatever the indexer has not done yet (they share the frontier).
  ASSERT_TRUE((*a)->BuildIndex(adc).ok());
  EXPECT_EQ((*a)->index_state(adc), IndexState::kComplete);
  const uint64_t spans = (*a)->first_pass_spans(adc);
  const uint64_t chunks = (*a)->fast_chunks(adc);
  std::mt19937_64 rng(5);
  for (int n = 0; n < 100; ++n) {
    const uint64_t off = rng() % ref_->size();
    ASSERT_TRUE(Read(*r, off, 70000) == ref_->substr(off, 70000));
  }
  std::string all;
  for (uint64_t off = 0; off < r->size(); off += 1 << 20) all += Read(*r, off, 1 << 20);
  EXPECT_TRUE(all == *ref_);
  EXPECT_EQ((*a)->first_pass_spans(adc), spans) << "a complete index needs no first pass";
  EXPECT_EQ((*a)->fast_chunks(adc), chunks) << "a complete index needs no fast path";
}

TEST_F(FastPathTest, AStreamingReaderWithACompleteIndexGetsRunsOfSpansThatContinueOneStream) {
  auto a = Archive::Open(dir_->Join("comp.npz"), Options(/*background_index=*/false));
  ASSERT_TRUE(a.ok());
  const size_t adc = *(*a)->Find("adc.npy");
  ASSERT_TRUE((*a)->BuildIndex(adc).ok());
  const uint64_t spans = (*a)->first_pass_spans(adc);  // the first pass made every span
  ASSERT_GT(spans, 4 * DeflatedMember::kRunSpans);
  auto r = *(*a)->OpenMember(adc);
  // The reader streams once it has read SequentialRun::kStreaming bytes in order: count the
  // restores from a little after that.
  const uint64_t from = SequentialRun::kStreaming + (1 << 20);
  std::string all;
  uint64_t before = 0;
  for (uint64_t off = 0; off < r->size(); off += 128 << 10) {
    if (off == from) before = (*a)->span_restores(adc);
    all += Read(*r, off, 128 << 10);
  }
  ASSERT_TRUE(all == *ref_);
  // A span decoded on its own restores its stream (with two pool threads or more, nearly
  // every span does); a run restores at most once for kRunSpans spans.
  const uint64_t streamed = spans * (r->size() - from) / r->size();
  const uint64_t restores = (*a)->span_restores(adc) - before;
  EXPECT_LE(restores, streamed / 2) << streamed << " spans streamed";
  EXPECT_GT(before, 0u) << "the first span has no stream to continue: it restores one";
}

// np.load(mmap_mode='r') reads a frame as the kernel's read-around of its first page fault
// and then its readahead: 128 KiB requests in order, from 64 KiB before the frame to 128 KiB
// past its end. The same run length after every jump marks a reader of objects.
TEST_F(FastPathTest, AReaderOfFramesHasEachNextFramesSpansDecodedAtItsFirstRequestAndNoneBeyond) {
  auto a = Archive::Open(dir_->Join("comp.npz"), Options(/*background_index=*/false));
  ASSERT_TRUE(a.ok());
  const size_t adc = *(*a)->Find("adc.npy");
  ASSERT_TRUE((*a)->BuildIndex(adc).ok());  // every span known; none cached
  auto r = *(*a)->OpenMember(adc);
  const std::vector<uint64_t> starts = (*a)->span_starts(adc);
  // Two frames teach the reader's run length (and whatever they decode ahead settles).
  for (uint64_t at : {uint64_t{1} << 20, uint64_t{8} << 20}) {
    for (uint64_t off = at; off < at + kFrameRun; off += kRequest) ReadRequest(*r, off);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const uint64_t before = Misses(**a);
  const uint64_t at = (4 << 20) + 12345;  // 4.75 MiB back: a jump
  const uint64_t want = SpansIn(starts, r->size(), at, at + kFrameRun);
  ASSERT_GE(want, 3u);
  ASSERT_GT(want, SpansIn(starts, r->size(), at, at + kRequest) + 1)
      << "the old read-ahead would do";
  ReadRequest(*r, at);
  EXPECT_EQ(SettledMisses(**a, before + want) - before, want)
      << "every span of the frame, at its first request";
  for (uint64_t off = at + kRequest; off < at + kFrameRun; off += kRequest) ReadRequest(*r, off);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(Misses(**a) - before, want) << "and none past the frame";
}

TEST_F(FastPathTest, ARandomReaderOfSingleRequestsStillGetsTheNextSpanDecodedAhead) {
  auto a = Archive::Open(dir_->Join("comp.npz"), Options(/*background_index=*/false));
  ASSERT_TRUE(a.ok());
  const size_t adc = *(*a)->Find("adc.npy");
  ASSERT_TRUE((*a)->BuildIndex(adc).ok());
  auto r = *(*a)->OpenMember(adc);
  const std::vector<uint64_t> starts = (*a)->span_starts(adc);
  // Runs of one request each: nothing says how far this reader goes after a jump.
  for (uint64_t at : {uint64_t{1} << 20, uint64_t{8} << 20, uint64_t{5} << 20}) {
    ReadRequest(*r, at);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const uint64_t before = Misses(**a);
  const uint64_t at = (11 << 20) + 12345;
  const uint64_t want = SpansIn(starts, r->size(), at, at + kRequest) + 1;  // and the next
  ReadRequest(*r, at);
  EXPECT_EQ(SettledMisses(**a, before + want) - before, want);
}

TEST(SequentialRunTest, TheTypicalRunIsTheShorterOfTheLastTwoRunsThatEnded) {
  SequentialRun s;
  constexpr uint64_t kFar = 100 << 20;
  EXPECT_EQ(s.Note(kFar, 4096), 4096u) << "a jump starts a run";
  EXPECT_EQ(s.Note(kFar + 4096, 4096), 8192u) << "a read in order goes on with it";
  EXPECT_EQ(s.typical_run(), 0u) << "no run has ended";
  EXPECT_EQ(s.Note(3 * kFar, 1000), 1000u);
  EXPECT_EQ(s.typical_run(), 0u) << "one run has ended";
  s.Note(5 * kFar, 768 << 10);
  EXPECT_EQ(s.typical_run(), 1000u) << "runs of 8192 and 1000 bytes ended";
  s.Note(kFar, 768 << 10);
  EXPECT_EQ(s.typical_run(), 1000u);
  s.Note(7 * kFar, 4096);
  EXPECT_EQ(s.typical_run(), uint64_t{768} << 10) << "two runs of 768 KiB ended";
  for (uint64_t off = 7 * kFar + 4096; off < 7 * kFar + (64 << 20); off += 1 << 20) {
    s.Note(off, 1 << 20);  // a long stream
  }
  s.Note(kFar, 4096);
  EXPECT_EQ(s.typical_run(), uint64_t{768} << 10) << "one long run does not raise it";
}

TEST_F(FastPathTest, AnUnmountCompletesAStartedIndexWhenItFitsTheBudget) {
  TempDir index_dir;
  ArchiveOptions o = Options(/*background_index=*/true);
  o.index_enabled = true;  // else there is nothing to complete it for
  o.index_dir = index_dir.path();
  auto a = Archive::Open(dir_->Join("comp.npz"), o);
  ASSERT_TRUE(a.ok());
  const size_t adc = *(*a)->Find("adc.npy");
  const size_t small = *(*a)->Find("small.npy");
  auto r = *(*a)->OpenMember(adc);
  EXPECT_EQ(Read(*r, r->size() - 1000, 1000), ref_->substr(ref_->size() - 1000));
  // A budget too small for what is left completes nothing (the idle indexer may still).
  EXPECT_TRUE((*a)->FinishStartedIndexes(0).ok());
  // A member nobody read is not indexed at all, whatever the budget.
  ASSERT_TRUE((*a)->FinishStartedIndexes(uint64_t{1} << 40).ok());
  EXPECT_EQ((*a)->index_state(adc), IndexState::kComplete);
  EXPECT_NE((*a)->index_state(small), IndexState::kComplete);
}

TEST_F(FastPathTest, ParallelReadersWithATinyCacheGetCorrectBytes) {
  ArchiveOptions o = Options(/*background_index=*/true);
  o.cache_bytes = 1 << 20;
  o.max_parked_streams = 2;
  auto a = Archive::Open(dir_->Join("comp.npz"), o);
  ASSERT_TRUE(a.ok());
  auto r = *(*a)->OpenMember(*(*a)->Find("adc.npy"));
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(200 + t);
      std::string buf;
      for (int n = 0; n < 40; ++n) {
        // Thread 0 reads sequentially; the others at random.
        const uint64_t off = t == 0 ? (n * 300000ull) % ref_->size() : rng() % ref_->size();
        buf.assign(std::min<size_t>(rng() % 300000 + 1, ref_->size() - off), '\0');
        auto got = r->ReadAt(off, std::as_writable_bytes(std::span(buf)));
        if (!got.ok() || *got != buf.size() || buf != ref_->substr(off, buf.size())) ++bad;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
}

// Speculation (DeflatedMember::SkipFar) splits a far read's decoding with a second core
// when the build has ISA-L and the machine two CPUs; elsewhere it never happens.
bool CanSpeculate() { return FastEngineIsIsal() && DecodePool().size() >= 2; }

TEST_F(FastPathTest, AFarReadOnAFreshMemberIsDecodedOnTwoCoresAndEveryByteIsExact) {
  ArchiveOptions o = Options(/*background_index=*/false);
  o.speculate_bytes = 1 << 20;
  auto a = Archive::Open(dir_->Join("comp.npz"), o);
  ASSERT_TRUE(a.ok());
  const size_t adc = *(*a)->Find("adc.npy");
  auto r = *(*a)->OpenMember(adc);
  const uint64_t far = 9 << 20;
  ASSERT_TRUE(Read(*r, far, 300000) == ref_->substr(far, 300000));
  EXPECT_EQ((*a)->speculations(adc), CanSpeculate() ? 1u : 0u);
  // Behind the far read: from the reader's and the helper's snapshots; then on to the end,
  // where the member's CRC-32 is checked with the CRC carried across the helper's part.
  for (uint64_t off = 0; off < r->size(); off += 1 << 20) {
    ASSERT_TRUE(Read(*r, off, 1 << 20) == ref_->substr(off, 1 << 20)) << "offset " << off;
  }
  EXPECT_NE((*a)->index_state(adc), IndexState::kComplete) << "no first pass was needed";
}

TEST_F(FastPathTest, AFarReadThatWasSplitStillFindsABadCrcAtTheEnd) {
  ArchiveOptions o = Options(/*background_index=*/false);
  o.speculate_bytes = 1 << 20;
  auto a = Archive::Open(dir_->Join("badcrc.npz"), o);
  ASSERT_TRUE(a.ok());
  const size_t adc = *(*a)->Find("adc.npy");
  auto r = *(*a)->OpenMember(adc);
  const uint64_t far = (r->size() - (1 << 20)) & ~uint64_t{0xfff};
  std::string buf(r->size() - far, '\0');
  auto got = r->ReadAt(far, std::as_writable_bytes(std::span(buf)));
  ASSERT_FALSE(got.ok()) << "a member with a bad CRC-32 was read to a clean end";
  EXPECT_NE(got.status().message().find("CRC-32 mismatch"), std::string::npos)
      << got.status().message();
  EXPECT_EQ((*a)->speculations(adc), CanSpeculate() ? 1u : 0u);
}

TEST_F(FastPathTest, AFarReadPastCorruptDataGetsWhatADecoderFromTheStartGets) {
  // Ahead of the checkpoints the fast path serves what the deflate data decodes to, which past
  // damage may be garbage until the CRC-32 check at the end (verify=strict waits for it). Split
  // between two cores, a far read must get exactly what one decoder from the start gets (or
  // the same error). The damage is at 60% of the compressed data: in the helper's half for
  // some of these reads, in the reader's for others.
  uint64_t split_reads = 0;
  for (const uint64_t far : {uint64_t{6} << 20, uint64_t{8} << 20, uint64_t{11} << 20}) {
    std::string got[2];
    bool ok[2] = {false, false};
    for (int split = 0; split < 2; ++split) {
      ArchiveOptions o = Options(/*background_index=*/false);
      o.speculate_bytes = split ? 1 << 20 : 0;
      auto a = Archive::Open(dir_->Join("corrupt.npz"), o);
      ASSERT_TRUE(a.ok());
      auto r = *(*a)->OpenMember(*(*a)->Find("adc.npy"));
      got[split].assign(256 << 10, '\0');
      auto n = r->ReadAt(far, std::as_writable_bytes(std::span(got[split])));
      ok[split] = n.ok();
      if (n.ok()) {
        got[split].resize(*n);
      } else {
        EXPECT_EQ(n.status().code(), EIO) << n.status().message();
      }
      if (split) split_reads += (*a)->speculations(*(*a)->Find("adc.npy"));
      EXPECT_FALSE(ReadToTheEnd(*r).ok()) << "corrupt deflate data read to a clean end";
    }
    EXPECT_EQ(ok[1], ok[0]) << "at " << far;
    if (ok[0] && ok[1]) {
      EXPECT_TRUE(got[1] == got[0]) << "different bytes at " << far;
    }
  }
  if (CanSpeculate()) {
    EXPECT_GE(split_reads, 1u) << "no read was split: the test tests nothing";
  } else {
    EXPECT_EQ(split_reads, 0u);
  }
}

TEST_F(FastPathTest, ParallelFarReadersThatSplitTheirDecodingGetCorrectBytes) {
  ArchiveOptions o = Options(/*background_index=*/true);
  o.speculate_bytes = 1 << 20;
  auto a = Archive::Open(dir_->Join("comp.npz"), o);
  ASSERT_TRUE(a.ok());
  auto r = *(*a)->OpenMember(*(*a)->Find("adc.npy"));
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(300 + t);
      std::string buf;
      for (int n = 0; n < 12; ++n) {
        const uint64_t off = rng() % ref_->size();
        buf.assign(std::min<size_t>(rng() % 200000 + 1, ref_->size() - off), '\0');
        auto got = r->ReadAt(off, std::as_writable_bytes(std::span(buf)));
        if (!got.ok() || *got != buf.size() || buf != ref_->substr(off, buf.size())) ++bad;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
}

TEST_F(FastPathTest, ReadsOfAMemberWhoseArchiveIsDestroyedStillWork) {
  std::shared_ptr<MemberReader> r;
  {
    auto a = Archive::Open(dir_->Join("comp.npz"), Options(/*background_index=*/true));
    ASSERT_TRUE(a.ok());
    r = *(*a)->OpenMember(*(*a)->Find("adc.npy"));
    EXPECT_EQ(Read(*r, 5 << 20, 1000), ref_->substr(5 << 20, 1000));
  }  // the Archive goes; its indexer stops
  EXPECT_EQ(Read(*r, 9 << 20, 1000), ref_->substr(9 << 20, 1000));
}

}  // namespace
}  // namespace npzfs
