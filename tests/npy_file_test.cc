// Tests for .npy files on disk: reading a header without trusting its length field, and the
// one repair routine shared by NpyAppender and resumed growing members.
#include "core/npy/npy_file.h"

#include <fcntl.h>
#include <gtest/gtest.h>

#include <string>

#include "npzfs/file_util.h"
#include "tests/test_util.h"

namespace npzfs {
namespace {

using testing::ReadFileOrDie;
using testing::TempDir;
using testing::WriteFileOrDie;

bool Contains(const Status& s, const std::string& what) {
  return s.message().find(what) != std::string::npos;
}

std::string NumpyFile(const TempDir& dir, const std::string& expr) {
  const std::string path = dir.Join("ref.npy");
  testing::RunPython("import numpy as np\nnp.save('" + path + "', " + expr + ")\n");
  return ReadFileOrDie(path);
}

TEST(NpyFile, AHeaderIsReadFromAnyLengthOfFileThatHoldsIt) {
  TempDir dir;
  const std::string npy = NumpyFile(dir, "np.arange(12, dtype='<u2').reshape(4, 3)");
  const std::string path = dir.Join("a.npy");
  WriteFileOrDie(path, npy);
  auto fd = OpenFile(path, O_RDONLY);
  ASSERT_TRUE(fd.ok());
  auto parsed = ReadNpyFileHeader(fd->get(), npy.size(), path);
  ASSERT_TRUE(parsed.ok()) << parsed.status().message();
  EXPECT_EQ(parsed->length, npy.size() - 24);
  EXPECT_EQ(parsed->header.frame_count(), 4u);
  EXPECT_EQ(*ReadNpyHeaderLength(fd->get(), npy.size(), path), parsed->length);
}

TEST(NpyFile, BadHeadersAreEinvalNamingTheFileAndTheCause) {
  TempDir dir;
  const std::string npy = NumpyFile(dir, "np.arange(3)");
  struct Case {
    std::string bytes, needle;
  } cases[] = {
      {"short", "only 5 bytes"},
      {"PK\x03\x04 this is a zip file", "not a .npy file"},
      {npy.substr(0, 40), "truncated .npy header"},
      {npy.substr(0, 8) + std::string("\xff\xff\xff\x7f", 4) + npy.substr(12), "safety limit"},
  };
  for (const Case& c : cases) {
    const std::string path = dir.Join("bad.npy");
    WriteFileOrDie(path, c.bytes);
    auto fd = OpenFile(path, O_RDONLY);
    ASSERT_TRUE(fd.ok());
    Status s = ReadNpyFileHeader(fd->get(), c.bytes.size(), path).status();
    EXPECT_EQ(s.code(), EINVAL) << c.needle;
    EXPECT_TRUE(Contains(s, path) && Contains(s, c.needle)) << s.message();
  }
}

TEST(NpyFile, RepairCountsTheCompleteFramesAndCutsAPartialOneInPlace) {
  TempDir dir;
  // A header claiming 1 frame, followed by 3 frames and half of a fourth.
  const std::string one = NumpyFile(dir, "np.arange(3, dtype='<u2').reshape(1, 3)");
  const std::string four = NumpyFile(dir, "np.arange(12, dtype='<u2').reshape(4, 3)");
  const std::string three = NumpyFile(dir, "np.arange(9, dtype='<u2').reshape(3, 3)");
  const size_t h = one.size() - 6;
  const std::string path = dir.Join("grown.npy");
  WriteFileOrDie(path, one.substr(0, h) + four.substr(h, 3 * 6 + 3));
  auto fd = OpenFile(path, O_RDWR);
  ASSERT_TRUE(fd.ok());
  const uint64_t size = h + 21;
  auto parsed = ReadNpyFileHeader(fd->get(), size, path);
  ASSERT_TRUE(parsed.ok());
  auto repair = RepairNpyFile(fd->get(), *parsed, size, path);
  ASSERT_TRUE(repair.ok()) << repair.status().message();
  EXPECT_EQ(repair->frames, 3u);
  EXPECT_EQ(repair->dropped_bytes, 3u);
  EXPECT_EQ(repair->header.frame_count(), 3u);
  EXPECT_EQ(ReadFileOrDie(path), three) << "byte-identical to numpy's 3-frame file";
  // Repairing a sound file changes nothing.
  auto again = RepairNpyFile(fd->get(), *ReadNpyFileHeader(fd->get(), three.size(), path),
                             three.size(), path);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->dropped_bytes, 0u);
  EXPECT_EQ(ReadFileOrDie(path), three);
}

TEST(NpyFile, RepairRefusesAFileShorterThanItsHeader) {
  TempDir dir;
  const std::string npy = NumpyFile(dir, "np.arange(3)");
  const std::string path = dir.Join("a.npy");
  WriteFileOrDie(path, npy);
  auto fd = OpenFile(path, O_RDWR);
  auto parsed = ReadNpyFileHeader(fd->get(), npy.size(), path);
  ASSERT_TRUE(parsed.ok());
  Status s = RepairNpyFile(fd->get(), *parsed, parsed->length - 1, path).status();
  EXPECT_EQ(s.code(), EINVAL);
  EXPECT_TRUE(Contains(s, "shorter than its own header")) << s.message();
}

}  // namespace
}  // namespace npzfs
