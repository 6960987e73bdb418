#include "npzfs/file_util.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <optional>

#include "core/base/names.h"
#include "core/base/runtime_dir.h"

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

TEST(FileUtil, PreadExactReportsAShortFileAsEioWithItsCauseKeptThroughContext) {
  testing::TempDir dir;
  testing::WriteFileOrDie(dir.Join("f"), "abc");
  auto fd = OpenFile(dir.Join("f"), O_RDONLY);
  ASSERT_TRUE(fd.ok());
  char buf[8];
  Status s = PreadExact(fd->get(), buf, 8, 0, dir.Join("f"));
  EXPECT_EQ(s.code(), EIO);
  EXPECT_EQ(s.cause(), Status::Cause::kUnexpectedEndOfFile);
  const Status wrapped = s.WithContext("member x");
  EXPECT_EQ(wrapped.cause(), Status::Cause::kUnexpectedEndOfFile);
  EXPECT_EQ(wrapped.message(), "member x: " + s.message());
  EXPECT_EQ(Status::Error(EIO, "other").cause(), Status::Cause::kUnspecified);
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

// Points XDG_RUNTIME_DIR at `dir` for the life of the object.
class RuntimeDirIn {
 public:
  explicit RuntimeDirIn(const std::string& dir) {
    if (const char* old = std::getenv("XDG_RUNTIME_DIR")) old_ = old;
    setenv("XDG_RUNTIME_DIR", dir.c_str(), 1);
  }
  ~RuntimeDirIn() {
    if (old_) {
      setenv("XDG_RUNTIME_DIR", old_->c_str(), 1);
    } else {
      unsetenv("XDG_RUNTIME_DIR");
    }
  }

 private:
  std::optional<std::string> old_;
};

TEST(RuntimeDir, AMountRecordIsReadBackFromItsLockFileOnlyWhileNoDaemonHoldsIt) {
  testing::TempDir dir;
  const std::string lock = dir.Join("a.npz-0123.lock");
  const MountRecord written{"npz recover /d/a.npz --spool '/s p' --compress=6", "/s p", "/m"};
  testing::WriteFileOrDie(lock, MountLockText(42, written));
  const MountRecord read = ReadMountRecord(lock);
  EXPECT_EQ(read.recover_command, written.recover_command);
  EXPECT_EQ(read.spool_dir, written.spool_dir);
  EXPECT_EQ(read.mount_dir, written.mount_dir);
  {
    const UniqueFd held(::open(lock.c_str(), O_RDONLY));
    ASSERT_EQ(::flock(held.get(), LOCK_EX), 0);  // a live daemon mounted since
    EXPECT_EQ(ReadMountRecord(lock).recover_command, "");
  }
  // A path with a newline is not recorded; an older daemon's lock holds no spool line.
  testing::WriteFileOrDie(lock, MountLockText(42, {"npz recover /d/a\nb.npz", "/s\np", "/m"}));
  EXPECT_EQ(ReadMountRecord(lock).recover_command, "");
  EXPECT_EQ(ReadMountRecord(lock).spool_dir, "");
  testing::WriteFileOrDie(lock, "42\nnpz recover /d/a.npz\n");
  EXPECT_EQ(ReadMountRecord(lock).recover_command, "npz recover /d/a.npz");
  EXPECT_EQ(ReadMountRecord(lock).spool_dir, "");
  EXPECT_EQ(ReadMountRecord(dir.Join("missing.lock")).recover_command, "");
}

TEST(RuntimeDir, FilesAreNamedAfterTheArchiveAndAHashOfItsAbsolutePath) {
  const std::string a = RuntimeFileStem("/run/x", "/data/a/run.npz");
  EXPECT_EQ(a.rfind("/run/x/run.npz-", 0), 0u) << a;
  EXPECT_EQ(a.size(), std::string("/run/x/run.npz-").size() + 16);
  EXPECT_EQ(RuntimeFileStem("/run/x", "/data/a/run.npz"), a);
  EXPECT_NE(RuntimeFileStem("/run/x", "/data/b/run.npz"), a);
}

TEST(RuntimeDir, AbsoluteArchivePathResolvesTheDirectoryButNotTheFile) {
  testing::TempDir dir;
  ASSERT_EQ(mkdir(dir.Join("real").c_str(), 0755), 0);
  ASSERT_EQ(symlink(dir.Join("real").c_str(), dir.Join("link").c_str()), 0);
  char resolved[PATH_MAX];
  ASSERT_NE(realpath(dir.path().c_str(), resolved), nullptr);
  auto path = AbsoluteArchivePath(dir.Join("link/data.npz"));
  ASSERT_TRUE(path.ok()) << path.status().message();
  EXPECT_EQ(*path, std::string(resolved) + "/real/data.npz");
  auto missing = AbsoluteArchivePath(dir.Join("none/data.npz"));
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), ENOENT);
  EXPECT_NE(missing.status().message().find("none/data.npz"), std::string::npos);
}

TEST(RuntimeDir, TheIndexGoesNextToAWritableArchiveElseIntoThePrivateRuntimeDirectory) {
  testing::TempDir dir;
  RuntimeDirIn runtime(dir.Join("xdg"));
  ASSERT_EQ(mkdir(dir.Join("xdg").c_str(), 0700), 0);
  const std::string index_dir = dir.Join("xdg/npzfs/index");
  IndexPlace writable = DefaultIndexPlace(dir.Join("data.npz"));
  EXPECT_EQ(writable.dir, "");  // next to the archive
  EXPECT_EQ(writable.fallback, std::optional<std::string>(index_dir));
  // A directory that cannot be written (here: one that does not exist; root may write any
  // directory that exists) sends the index to the runtime directory, and reads the one
  // next to the archive if that has none.
  IndexPlace read_only = DefaultIndexPlace("/nonexistent-npzfs/data.npz");
  EXPECT_EQ(read_only.dir, index_dir);
  EXPECT_EQ(read_only.fallback, std::optional<std::string>(""));
  struct stat st {};
  ASSERT_EQ(stat(dir.Join("xdg/npzfs").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  ASSERT_EQ(stat(index_dir.c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
}

TEST(RuntimeDir, ARuntimeDirectoryOthersMayEnterIsNotUsed) {
  testing::TempDir dir;
  RuntimeDirIn runtime(dir.Join("xdg"));
  ASSERT_EQ(mkdir(dir.Join("xdg").c_str(), 0700), 0);
  ASSERT_EQ(mkdir(dir.Join("xdg/npzfs").c_str(), 0755), 0);
  EXPECT_NE(ChooseRuntimeDir(), dir.Join("xdg/npzfs"));
}

TEST(RuntimeDir, ArchivesOfOneNameGetIndexesOfTheirOwnInASharedIndexDirectory) {
  const std::string a = SharedIndexFileName("/data/a/run.npz");
  const std::string b = SharedIndexFileName("/data/b/run.npz");
  EXPECT_NE(a, b);
  EXPECT_EQ(a, ".run.npz-" + NameHash("/data/a/run.npz") + ".npzfs-index");
  EXPECT_EQ(IndexFileName("/data/a/run.npz"), ".run.npz.npzfs-index");
  EXPECT_EQ(NameHash(""), "cbf29ce484222325");  // FNV-1a's offset basis: spool names use it
  EXPECT_EQ(NameHash("a"), "af63dc4c8601ec8c");
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
