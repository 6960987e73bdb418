#include "core/zip/file_copy.h"

#include <fcntl.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>

#include "npzfs/file_util.h"
#include "tests/test_util.h"

namespace npzfs {
namespace {

std::string RandomBytes(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

// Copies `length` bytes of a random source at `src_offset` into a fresh file at `dst_offset`
// and returns that file's bytes; `reported` gets the sum of the progress callbacks.
std::string CopyInto(const testing::TempDir& dir, const std::string& src_bytes, uint64_t src_offset,
                     uint64_t dst_offset, uint64_t length, uint64_t* reported, Status* status) {
  testing::WriteFileOrDie(dir.Join("src"), src_bytes);
  auto src = OpenFile(dir.Join("src"), O_RDONLY);
  auto dst = OpenFile(dir.Join("dst"), O_RDWR | O_CREAT | O_TRUNC, 0644);
  EXPECT_TRUE(src.ok() && dst.ok());
  *reported = 0;
  *status = CopyFileRange(src->get(), src_offset, dst->get(), dst_offset, length, dir.Join("src"),
                          dir.Join("dst"), [&](uint64_t n) { *reported += n; });
  return testing::ReadFileOrDie(dir.Join("dst"));
}

TEST(FileCopy, BytesArriveIntactWhetherTheOffsetsShareAPlaceInABlockOrNot) {
  testing::TempDir dir;
  // Over 16 MiB, so that the copy takes more than one step of the early writeback.
  const std::string src = RandomBytes((size_t{17} << 20) + 4321, 7);
  struct Case {
    uint64_t src_offset, dst_offset;
  };
  // Same place in a 4 KiB block (copy_file_range may share extents) and not (user space).
  for (const Case c :
       {Case{0, 0}, Case{4096, 8192}, Case{100, 4196}, Case{128, 165}, Case{5000, 3}}) {
    SCOPED_TRACE(std::to_string(c.src_offset) + " -> " + std::to_string(c.dst_offset));
    const uint64_t length = src.size() - c.src_offset;
    uint64_t reported = 0;
    Status status;
    const std::string out =
        CopyInto(dir, src, c.src_offset, c.dst_offset, length, &reported, &status);
    ASSERT_TRUE(status.ok()) << status.message();
    EXPECT_EQ(reported, length);
    ASSERT_EQ(out.size(), c.dst_offset + length);
    EXPECT_EQ(out.substr(0, c.dst_offset), std::string(c.dst_offset, '\0'));
    EXPECT_TRUE(out.substr(c.dst_offset) == src.substr(c.src_offset));  // not printed: 17 MiB
  }
}

TEST(FileCopy, ASourceThatEndsEarlyIsEioNamingTheSourceOnBothPaths) {
  testing::TempDir dir;
  const std::string src = RandomBytes(10000, 8);
  for (const uint64_t dst_offset : {uint64_t{0}, uint64_t{37}}) {
    SCOPED_TRACE(dst_offset);
    uint64_t reported = 0;
    Status status;
    CopyInto(dir, src, 0, dst_offset, 20000, &reported, &status);
    EXPECT_EQ(status.code(), EIO);
    EXPECT_NE(status.message().find(dir.Join("src")), std::string::npos) << status.message();
    EXPECT_NE(status.message().find("unexpected end of file"), std::string::npos);
  }
}

}  // namespace
}  // namespace npzfs
