#include "npzfs/file_util.h"

#include <fcntl.h>
#include <gtest/gtest.h>

#include "tests/test_util.h"

namespace npzfs {
namespace {

TEST(FileUtil, OpeningAMissingFileNamesThePathAndTheCause) {
  auto fd = OpenFile("/nonexistent/npzfs/file", O_RDONLY);
  ASSERT_FALSE(fd.ok());
  EXPECT_EQ(fd.status().code(), ENOENT);
  EXPECT_NE(fd.status().message().find("/nonexistent/npzfs/file"), std::string::npos);
  EXPECT_NE(fd.status().message().find("No such file"), std::string::npos);
}

TEST(FileUtil, PreadExactReportsAShortFileAsEio) {
  testing::TempDir dir;
  testing::WriteFileOrDie(dir.Join("f"), "abc");
  auto fd = OpenFile(dir.Join("f"), O_RDONLY);
  ASSERT_TRUE(fd.ok());
  char buf[8];
  Status s = PreadExact(fd->get(), buf, 8, 0, dir.Join("f"));
  EXPECT_EQ(s.code(), EIO);
  EXPECT_TRUE(PreadExact(fd->get(), buf, 2, 1, dir.Join("f")).ok());
  EXPECT_EQ(std::string(buf, 2), "bc");
}

TEST(FileUtil, WrittenBytesReadBackAtTheirOffset) {
  testing::TempDir dir;
  auto fd = OpenFile(dir.Join("w"), O_RDWR | O_CREAT, 0644);
  ASSERT_TRUE(fd.ok());
  ASSERT_TRUE(PwriteAll(fd->get(), "hello", 5, 3, dir.Join("w")).ok());
  auto size = FileSize(fd->get(), dir.Join("w"));
  ASSERT_TRUE(size.ok());
  EXPECT_EQ(*size, 8u);
  EXPECT_TRUE(FsyncFd(fd->get(), dir.Join("w")).ok());
  EXPECT_TRUE(FsyncParentDir(dir.Join("w")).ok());
}

TEST(FileUtil, CountEntriesSkipsDotsStopsAtTheLimitAndNamesAMissingDirectory) {
  testing::TempDir dir;
  EXPECT_EQ(*CountEntries(dir.path(), 5), 0u);
  testing::WriteFileOrDie(dir.Join("a"), "");
  testing::WriteFileOrDie(dir.Join(".b"), "");
  testing::WriteFileOrDie(dir.Join("c"), "");
  EXPECT_EQ(*CountEntries(dir.path(), 5), 3u);
  EXPECT_EQ(*CountEntries(dir.path(), 1), 1u);
  auto missing = CountEntries(dir.Join("missing"), 1);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), ENOENT);
  EXPECT_NE(missing.status().message().find(dir.Join("missing")), std::string::npos);
}

TEST(FileUtil, DirNameAndBaseNameSplitAtTheLastSlash) {
  EXPECT_EQ(DirName("a/b/c.npz"), "a/b");
  EXPECT_EQ(BaseName("a/b/c.npz"), "c.npz");
  EXPECT_EQ(DirName("c.npz"), ".");
  EXPECT_EQ(DirName("/c.npz"), "/");
}

TEST(ResultType, CarriesAValueOrAnError) {
  Result<int> good = 7;
  ASSERT_TRUE(good.ok());
  EXPECT_EQ(*good, 7);
  Result<int> bad = Status::Error(ENOENT, "x: missing");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), ENOENT);
  Result<int> zero = Status::Error(0, "no code");
  EXPECT_EQ(zero.status().code(), EIO);
}

}  // namespace
}  // namespace npzfs
