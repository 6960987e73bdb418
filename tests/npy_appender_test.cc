#include "npzfs/npy_appender.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "npzfs/npy_reader.h"
#include "tests/test_util.h"

namespace npzfs {
namespace {

constexpr uint64_t kValuesPerFrame = 37;  // odd, so frames do not line up with anything

// Frame i holds the uint32 values i*37 .. i*37+36, so any frame can be checked on its own
// and numpy can check a whole file with np.arange.
std::vector<std::byte> MakeFrames(uint64_t first, uint64_t n) {
  std::vector<std::byte> out(n * kValuesPerFrame * 4);
  for (uint64_t k = 0; k < n * kValuesPerFrame; ++k) {
    uint32_t v = static_cast<uint32_t>(first * kValuesPerFrame + k);
    std::memcpy(out.data() + 4 * k, &v, 4);  // little endian on this machine, as '<u4' says
  }
  return out;
}

NpyHeader Layout() { return NpyHeader::ForFrames("<u4", {kValuesPerFrame}, false, 0).value(); }

// Python that asserts `path` holds at least `min` frames of MakeFrames content, loaded
// both plainly and memory-mapped, and prints the count.
std::string CheckWithNumpy(const std::string& path, uint64_t min = 0) {
  return "a = np.load('" + path + "')\nb = np.load('" + path +
         "', mmap_mode='r')\n"
         "n = a.shape[0]\n"
         "assert a.dtype == np.dtype('<u4') and a.shape == (n, 37), (a.dtype, a.shape)\n"
         "assert n >= " +
         std::to_string(min) + ", (n, " + std::to_string(min) +
         ")\n"
         "assert np.array_equal(a, np.arange(n * 37, dtype='<u4').reshape(n, 37))\n"
         "assert np.array_equal(a, b)\n"
         "print(n)\n";
}

uint64_t NumpyCount(const std::string& path, uint64_t min = 0) {
  std::string out = testing::RunPython("import numpy as np\n" + CheckWithNumpy(path, min));
  return out.empty() ? UINT64_MAX : std::stoull(out);
}

TEST(NpyAppender, WritesAFileNumpyLoadsPlainAndMemoryMapped) {
  testing::TempDir dir;
  std::string path = dir.Join("a.npy");
  NpyAppenderOptions small;
  small.buffer_bytes = 1000;  // a few frames, so buffered, flushed and direct writes all occur
  auto a = NpyAppender::Open(path, Layout(), small);
  ASSERT_TRUE(a.ok()) << a.status().message();
  uint64_t n = 0;
  for (uint64_t i = 0; i < 20; ++i, ++n) ASSERT_TRUE((*a)->AddFrame(MakeFrames(n, 1)).ok());
  ASSERT_TRUE((*a)->AddFrames(MakeFrames(n, 30)).ok());  // larger than the buffer
  n += 30;
  ASSERT_TRUE((*a)->AddFrames(MakeFrames(n, 3)).ok());
  n += 3;
  EXPECT_EQ((*a)->frame_count(), n);
  ASSERT_TRUE((*a)->Close().ok());
  EXPECT_EQ(NumpyCount(path), n);
}

TEST(NpyAppender, TheHeaderCountsOnlyFramesThatReachedTheFile) {
  testing::TempDir dir;
  std::string path = dir.Join("a.npy");
  auto a = NpyAppender::Open(path, Layout());
  ASSERT_TRUE(a.ok()) << a.status().message();
  ASSERT_TRUE((*a)->AddFrames(MakeFrames(0, 5)).ok());
  auto before = NpyReader::Open(path);
  ASSERT_TRUE(before.ok()) << before.status().message();
  EXPECT_EQ(before->header().frame_count(), 0u);  // still buffered
  ASSERT_TRUE((*a)->Flush(Durability::kNone).ok());
  auto after = NpyReader::Open(path);
  ASSERT_TRUE(after.ok()) << after.status().message();
  EXPECT_EQ(after->header().frame_count(), 5u);
  auto frames = after->ReadFrames(1, 3);
  ASSERT_TRUE(frames.ok());
  EXPECT_EQ(*frames, MakeFrames(1, 2));
  ASSERT_TRUE((*a)->AddFrames(MakeFrames(5, 2)).ok());
  ASSERT_TRUE((*a)->Flush(Durability::kSync).ok());
  EXPECT_EQ(NpyReader::Open(path)->header().frame_count(), 7u);
  EXPECT_EQ(NumpyCount(path), 7u);
}

TEST(NpyAppender, ReopeningAppendsToTheFramesAlreadyThere) {
  testing::TempDir dir;
  std::string path = dir.Join("a.npy");
  {
    auto a = NpyAppender::Open(path, Layout());
    ASSERT_TRUE(a.ok()) << a.status().message();
    ASSERT_TRUE((*a)->AddFrames(MakeFrames(0, 3)).ok());
    ASSERT_TRUE((*a)->Close().ok());
  }
  auto b = NpyAppender::Open(path, Layout().WithFrameCount(1234));  // its count is ignored
  ASSERT_TRUE(b.ok()) << b.status().message();
  EXPECT_EQ((*b)->frame_count(), 3u);
  ASSERT_TRUE((*b)->AddFrames(MakeFrames(3, 2)).ok());
  b->reset();  // the destructor flushes too
  EXPECT_EQ(NumpyCount(path), 5u);
}

TEST(NpyAppender, AppendsToAFileNumpyWrote) {
  testing::TempDir dir;
  std::string path = dir.Join("np.npy");
  testing::RunPython("import numpy as np\nnp.save('" + path +
                     "', np.arange(4 * 37, dtype='<u4').reshape(4, 37))\n");
  auto a = NpyAppender::Open(path, Layout());
  ASSERT_TRUE(a.ok()) << a.status().message();
  EXPECT_EQ((*a)->frame_count(), 4u);
  ASSERT_TRUE((*a)->AddFrames(MakeFrames(4, 6)).ok());
  ASSERT_TRUE((*a)->Close().ok());
  EXPECT_EQ(NumpyCount(path), 10u);
}

// Headers written before numpy 1.24 have no growth room; a writer may only rewrite them in
// place when the padding happens to leave enough space. `total` 0 means no padding at all.
std::string OldStyleHeader(uint64_t frames, size_t total) {
  std::string dict =
      "{'descr': '<u4', 'fortran_order': False, 'shape': (" + std::to_string(frames) + ", 37), }";
  if (total == 0) total = 10 + dict.size() + 1;
  std::string out = "\x93NUMPY\x01";
  out.push_back('\0');
  size_t len = total - 10;
  out.push_back(static_cast<char>(len & 0xFF));
  out.push_back(static_cast<char>(len >> 8));
  out += dict;
  out.append(total - out.size() - 1, ' ');
  return out + "\n";
}

TEST(NpyAppender, AppendsBehindAnOlderHeaderWhenItsPaddingLeavesRoom) {
  testing::TempDir dir;
  std::string roomy = dir.Join("roomy.npy");
  std::string frames(reinterpret_cast<const char*>(MakeFrames(0, 2).data()), 2 * 37 * 4);
  testing::WriteFileOrDie(roomy, OldStyleHeader(2, 128) + frames);
  auto a = NpyAppender::Open(roomy, Layout());
  ASSERT_TRUE(a.ok()) << a.status().message();
  ASSERT_TRUE((*a)->AddFrames(MakeFrames(2, 3)).ok());
  ASSERT_TRUE((*a)->Close().ok());
  EXPECT_EQ(NumpyCount(roomy), 5u);
  EXPECT_EQ(NpyReader::Open(roomy)->header_length(), 128u);  // rewritten in place

  std::string tight = dir.Join("tight.npy");
  testing::WriteFileOrDie(tight, OldStyleHeader(2, 0) + frames);
  auto b = NpyAppender::Open(tight, Layout());
  EXPECT_EQ(b.status().code(), EINVAL);
  EXPECT_NE(b.status().message().find("no room to grow"), std::string::npos)
      << b.status().message();
  EXPECT_NE(b.status().message().find(tight), std::string::npos);
}

TEST(NpyAppender, GrowsTheLastAxisOfAFortranOrderArray) {
  testing::TempDir dir;
  std::string path = dir.Join("f.npy");
  auto layout = NpyHeader::ForFrames("<f8", {2, 3}, true, 0).value();
  auto a = NpyAppender::Open(path, layout);
  ASSERT_TRUE(a.ok()) << a.status().message();
  for (int i = 0; i < 4; ++i) {
    double v[6];
    for (int k = 0; k < 6; ++k) v[k] = i * 100 + k;  // Fortran order within the frame
    ASSERT_TRUE((*a)->AddFrame(std::as_bytes(std::span<const double>(v))).ok());
  }
  ASSERT_TRUE((*a)->Close().ok());
  std::string out = testing::RunPython(
      "import numpy as np\n"
      "a = np.load('" +
      path +
      "')\n"
      "assert a.shape == (2, 3, 4) and a.flags.f_contiguous, a.shape\n"
      "for i in range(4):\n"
      "  assert np.array_equal(a[:, :, i].ravel(order='F'), i * 100 + np.arange(6.0))\n"
      "print('ok')\n");
  EXPECT_EQ(out, "ok\n");
}

TEST(NpyAppender, RefusesToAppendFramesOfAnotherLayoutNamingTheFile) {
  testing::TempDir dir;
  std::string path = dir.Join("a.npy");
  ASSERT_TRUE(NpyAppender::Open(path, Layout()).ok());
  auto other = NpyAppender::Open(path, NpyHeader::ForFrames("<u4", {36}, false, 0).value());
  EXPECT_EQ(other.status().code(), EINVAL);
  EXPECT_NE(other.status().message().find(path), std::string::npos);
  EXPECT_NE(other.status().message().find("(36)"), std::string::npos) << other.status().message();
  testing::WriteFileOrDie(dir.Join("junk.npy"), "junk junk junk");
  auto junk = NpyAppender::Open(dir.Join("junk.npy"), Layout());
  EXPECT_EQ(junk.status().code(), EINVAL);
  EXPECT_NE(junk.status().message().find("junk.npy"), std::string::npos);
}

TEST(NpyAppender, RefusesLayoutsWithoutFrames) {
  testing::TempDir dir;
  auto object =
      NpyAppender::Open(dir.Join("o.npy"), NpyHeader::ForFrames("|O", {}, false, 0).value());
  EXPECT_EQ(object.status().code(), EINVAL);
  auto empty =
      NpyAppender::Open(dir.Join("e.npy"), NpyHeader::ForFrames("<i4", {0}, false, 0).value());
  EXPECT_EQ(empty.status().code(), EINVAL);
  EXPECT_NE(empty.status().message().find("zero bytes"), std::string::npos);
}

TEST(NpyAppender, RejectsWrongSizedFramesAndUseAfterClose) {
  testing::TempDir dir;
  auto a = NpyAppender::Open(dir.Join("a.npy"), Layout());
  ASSERT_TRUE(a.ok()) << a.status().message();
  auto two = MakeFrames(0, 2);
  EXPECT_EQ((*a)->AddFrame(two).code(), EINVAL);
  EXPECT_EQ((*a)->AddFrames(std::span<const std::byte>(two).first(two.size() - 1)).code(), EINVAL);
  EXPECT_EQ((*a)->frame_count(), 0u);
  ASSERT_TRUE((*a)->Close().ok());
  EXPECT_EQ((*a)->AddFrame(MakeFrames(0, 1)).code(), EBADF);
  EXPECT_EQ((*a)->Flush(Durability::kSync).code(), EBADF);
  EXPECT_EQ((*a)->Close().code(), EBADF);
}

TEST(NpyAppender, RecoverKeepsCompleteFramesAndDropsAPartialOne) {
  testing::TempDir dir;
  std::string path = dir.Join("a.npy");
  {
    auto a = NpyAppender::Open(path, Layout());
    ASSERT_TRUE(a.ok());
    ASSERT_TRUE((*a)->AddFrames(MakeFrames(0, 5)).ok());
    ASSERT_TRUE((*a)->Close().ok());
  }
  // What a crash leaves: two more frames and half a frame behind a header that says 5.
  std::string tail = std::string(reinterpret_cast<const char*>(MakeFrames(5, 3).data()),
                                 3 * kValuesPerFrame * 4 - 70);
  std::string file = testing::ReadFileOrDie(path) + tail;
  testing::WriteFileOrDie(path, file);
  auto kept = NpyAppender::Recover(path);
  ASSERT_TRUE(kept.ok()) << kept.status().message();
  EXPECT_EQ(*kept, 7u);
  EXPECT_EQ(testing::ReadFileOrDie(path).size(), Layout().FormattedLength() + 7 * 37 * 4);
  EXPECT_EQ(NumpyCount(path), 7u);
  // A header that claims more than the file holds is lowered to the truth.
  testing::WriteFileOrDie(
      path, Layout().WithFrameCount(9).Format() +
                std::string(reinterpret_cast<const char*>(MakeFrames(0, 2).data()), 2 * 37 * 4));
  EXPECT_EQ(NpyAppender::Recover(path).value(), 2u);
  EXPECT_EQ(NumpyCount(path), 2u);
  EXPECT_EQ(NpyAppender::Recover(dir.Join("none.npy")).status().code(), ENOENT);
}

// A write that fails part way (EFBIG here, ENOSPC alike) must not leave bytes behind the
// data end: the header stays right, but a reopen (or Recover) counts frames from the file
// size. A child process gets a file size limit; it exits with the step that went wrong.
TEST(NpyAppender, AFailedWriteLeavesNoBytesThatAReopenWouldCountAsFrames) {
  testing::TempDir dir;
  const std::string direct = dir.Join("direct.npy"), buffered = dir.Join("buffered.npy");
  const uint64_t frame = kValuesPerFrame * 4;
  const uint64_t two_frames = Layout().FormattedLength() + 2 * frame;
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::signal(SIGXFSZ, SIG_IGN);  // the write fails with EFBIG instead of killing the child
    NpyAppenderOptions small, large;
    small.buffer_bytes = 8;  // every AddFrames goes straight to the file
    large.buffer_bytes = 1 << 20;
    for (const auto& [path, options] : {std::pair{direct, small}, std::pair{buffered, large}}) {
      auto a = NpyAppender::Open(path, Layout(), options);
      if (!a.ok() || !(*a)->AddFrames(MakeFrames(0, 2)).ok()) _exit(10);
      if (!(*a)->Flush(Durability::kNone).ok()) _exit(11);
      struct rlimit limit;
      ::getrlimit(RLIMIT_FSIZE, &limit);
      struct rlimit tight = limit;
      tight.rlim_cur = two_frames + 3 * frame + 50;  // room for 3 frames and a half
      if (::setrlimit(RLIMIT_FSIZE, &tight) != 0) _exit(12);
      Status st = (*a)->AddFrames(MakeFrames(2, 10));
      if (st.ok()) st = (*a)->Flush(Durability::kNone);
      if (st.ok()) _exit(13);
      ::setrlimit(RLIMIT_FSIZE, &limit);
      struct stat after;
      if (::stat(path.c_str(), &after) != 0 || static_cast<uint64_t>(after.st_size) != two_frames) {
        _exit(14);
      }
      a->release();  // no destructor: it would retry the buffered frames
    }
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "step that failed (14: bytes were left behind)";
  for (const std::string& path : {direct, buffered}) {
    auto a = NpyAppender::Open(path, Layout());
    ASSERT_TRUE(a.ok()) << a.status().message();
    EXPECT_EQ((*a)->frame_count(), 2u) << path;
    ASSERT_TRUE((*a)->AddFrames(MakeFrames(2, 1)).ok());
    ASSERT_TRUE((*a)->Close().ok());
    EXPECT_EQ(NumpyCount(path), 3u) << path;
  }
}

// A child appends and syncs at random points, reporting each synced count through a pipe;
// the parent SIGKILLs it at a random moment. Recover must then give numpy a valid file with
// at least the synced frames, every one of them intact.
TEST(NpyAppender, SurvivesSigkillAtRandomMomentsWithoutLosingSyncedFrames) {
  testing::TempDir dir;
  std::mt19937_64 rng(12345);
  std::string python = "import numpy as np\n";
  uint64_t total_synced = 0;
  int partial = 0, unsynced_kept = 0;  // reported, to show what the kills hit
  constexpr int kIterations = 50;
  for (int it = 0; it < kIterations; ++it) {
    std::string path = dir.Join("crash" + std::to_string(it) + ".npy");
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    uint64_t child_seed = rng();
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      ::close(fds[0]);
      std::mt19937_64 crng(child_seed);
      NpyAppenderOptions options;
      options.buffer_bytes = 1 + crng() % 4096;
      auto a = NpyAppender::Open(path, Layout(), options);
      if (!a.ok()) ::_exit(2);
      uint64_t n = 0;
      if (::write(fds[1], &n, sizeof n) != sizeof n) ::_exit(5);  // running
      while (true) {
        uint64_t k = 1 + crng() % 20;
        if (!(*a)->AddFrames(MakeFrames(n, k)).ok()) ::_exit(3);
        n += k;
        if (crng() % 3 == 0) {
          if (!(*a)->Flush(Durability::kSync).ok()) ::_exit(4);
          if (::write(fds[1], &n, sizeof n) != sizeof n) ::_exit(5);
        }
      }
    }
    ::close(fds[1]);
    uint64_t synced = 0, value;
    // Mostly kill while appending (timed from the child's first report, so that slow
    // sanitizer builds still get there); sometimes kill while it creates the file.
    if (rng() % 8 != 0) {
      ASSERT_EQ(::read(fds[0], &value, sizeof value), static_cast<ssize_t>(sizeof value));
      std::this_thread::sleep_for(std::chrono::microseconds(rng() % 40000));
    }
    ASSERT_EQ(::kill(pid, SIGKILL), 0);
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status)) << "child exited early with " << WEXITSTATUS(status);
    while (::read(fds[0], &value, sizeof value) == sizeof value) synced = value;
    ::close(fds[0]);
    total_synced += synced;
    if (::access(path.c_str(), F_OK) != 0) {
      EXPECT_EQ(synced, 0u);  // killed before it created the file
      continue;
    }
    uint64_t size_before = testing::ReadFileOrDie(path).size();
    auto kept = NpyAppender::Recover(path);
    ASSERT_TRUE(kept.ok()) << kept.status().message();
    EXPECT_GE(*kept, synced) << path;
    partial += size_before != Layout().FormattedLength() + *kept * Layout().frame_bytes();
    unsynced_kept += *kept > synced;
    auto reader = NpyReader::Open(path);
    ASSERT_TRUE(reader.ok()) << reader.status().message();
    ASSERT_EQ(reader->header().frame_count(), *kept);
    EXPECT_EQ(*reader->ReadFrames(0, *kept), MakeFrames(0, *kept)) << path;
    python += CheckWithNumpy(path, synced);
  }
  EXPECT_GT(total_synced, 0u) << "the children never synced: the test tested nothing";
  RecordProperty("iterations_with_a_partial_frame", partial);
  RecordProperty("iterations_keeping_unsynced_frames", unsynced_kept);
  std::string out = testing::RunPython(python);
  EXPECT_GE(std::count(out.begin(), out.end(), '\n'), kIterations / 2);
}

}  // namespace
}  // namespace npzfs
