#include "core/base/atomic_file.h"

#include <dirent.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <string>
#include <vector>

#include "tests/test_util.h"

namespace npzfs {
namespace {

std::vector<std::string> DirectoryEntries(const std::string& dir) {
  std::vector<std::string> names;
  DIR* d = opendir(dir.c_str());
  while (struct dirent* e = readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") names.push_back(n);
  }
  closedir(d);
  return names;
}

TEST(AtomicFile, CommitReplacesTheTargetAndLeavesNoTempFile) {
  testing::TempDir dir;
  testing::WriteFileOrDie(dir.Join("t"), "old");
  ASSERT_TRUE(WriteFileAtomically(dir.Join("t"), "new contents").ok());
  EXPECT_EQ(testing::ReadFileOrDie(dir.Join("t")), "new contents");
  EXPECT_EQ(DirectoryEntries(dir.path()), std::vector<std::string>{"t"});
}

TEST(AtomicFile, AnUncommittedFileLeavesTheTargetAndTheDirectoryAsBefore) {
  testing::TempDir dir;
  testing::WriteFileOrDie(dir.Join("t"), "old");
  {
    auto file = AtomicFile::Create(dir.Join("t"));
    ASSERT_TRUE(file.ok());
    ASSERT_TRUE(file->Write("half").ok());
    EXPECT_EQ(BaseName(file->temp_path()).rfind(TempFilePrefix(dir.Join("t")), 0), 0u);
  }
  EXPECT_EQ(testing::ReadFileOrDie(dir.Join("t")), "old");
  EXPECT_EQ(DirectoryEntries(dir.path()), std::vector<std::string>{"t"});
}

TEST(AtomicFile, AFailureAtAnyStepBeforeTheRenameKeepsTheOldFileAndRemovesTheTemp) {
  for (AtomicStep step :
       {AtomicStep::kCreate, AtomicStep::kWrite, AtomicStep::kSync, AtomicStep::kRename}) {
    testing::TempDir dir;
    testing::WriteFileOrDie(dir.Join("t"), "old");
    AtomicFile::FailStepForTesting(step);
    Status s = WriteFileAtomically(dir.Join("t"), "new");
    AtomicFile::FailStepForTesting(std::nullopt);
    EXPECT_EQ(s.code(), EIO) << static_cast<int>(step);
    EXPECT_NE(s.message().find(dir.Join("t")), std::string::npos) << s.message();
    EXPECT_EQ(testing::ReadFileOrDie(dir.Join("t")), "old") << static_cast<int>(step);
    EXPECT_EQ(DirectoryEntries(dir.path()), std::vector<std::string>{"t"});
  }
}

TEST(AtomicFile, AFailedDirectorySyncIsReportedAfterTheNewFileIsInPlace) {
  testing::TempDir dir;
  testing::WriteFileOrDie(dir.Join("t"), "old");
  AtomicFile::FailStepForTesting(AtomicStep::kSyncDir);
  Status s = WriteFileAtomically(dir.Join("t"), "new");
  AtomicFile::FailStepForTesting(std::nullopt);
  EXPECT_EQ(s.code(), EIO);
  EXPECT_NE(s.message().find("directory could not be synced"), std::string::npos) << s.message();
  EXPECT_EQ(testing::ReadFileOrDie(dir.Join("t")), "new");
  EXPECT_EQ(DirectoryEntries(dir.path()), std::vector<std::string>{"t"});
}

TEST(AtomicFile, ACheckBeforeTheRenameCanAbortTheCommit) {
  testing::TempDir dir;
  testing::WriteFileOrDie(dir.Join("t"), "old");
  auto file = AtomicFile::Create(dir.Join("t"));
  ASSERT_TRUE(file.ok());
  ASSERT_TRUE(file->Write("new").ok());
  Status s = file->Commit([] { return Status::Error(EBUSY, "changed meanwhile"); });
  EXPECT_EQ(s.code(), EBUSY);
  EXPECT_EQ(testing::ReadFileOrDie(dir.Join("t")), "old");
}

TEST(AtomicFile, WithoutReplaceATargetCreatedMeanwhileIsKeptAndTheCommitIsEexist) {
  testing::TempDir dir;
  AtomicFileOptions options;
  options.replace_existing = false;
  {
    auto file = AtomicFile::Create(dir.Join("t"), options);
    ASSERT_TRUE(file.ok());
    ASSERT_TRUE(file->Write("mine").ok());
    testing::WriteFileOrDie(dir.Join("t"), "theirs");  // another writer was quicker
    Status s = file->Commit();
    EXPECT_EQ(s.code(), EEXIST) << s.message();
    EXPECT_NE(s.message().find(dir.Join("t") + ": exists"), std::string::npos) << s.message();
  }
  EXPECT_EQ(testing::ReadFileOrDie(dir.Join("t")), "theirs");
  EXPECT_EQ(DirectoryEntries(dir.path()), std::vector<std::string>{"t"});
  // With nothing there, it is created as usual.
  auto file = AtomicFile::Create(dir.Join("u"), options);
  ASSERT_TRUE(file.ok());
  ASSERT_TRUE(file->Write("new").ok());
  ASSERT_TRUE(file->Commit().ok());
  EXPECT_EQ(testing::ReadFileOrDie(dir.Join("u")), "new");
}

TEST(AtomicFile, WithoutReplaceOnAFilesystemWithoutNoReplaceOrLinksAnExistingTargetIsKept) {
  testing::TempDir dir;
  AtomicFileOptions options;
  options.replace_existing = false;
  AtomicFile::LackNoReplaceAndLinksForTesting(true);
  for (const char* name : {"t", "u"}) {
    if (std::string(name) == "t") testing::WriteFileOrDie(dir.Join(name), "theirs");
    auto file = AtomicFile::Create(dir.Join(name), options);
    ASSERT_TRUE(file.ok());
    ASSERT_TRUE(file->Write("mine").ok());
    Status s = file->Commit();
    if (std::string(name) == "t") {
      EXPECT_EQ(s.code(), EEXIST) << s.message();
    } else {
      EXPECT_TRUE(s.ok()) << s.message();
    }
  }
  AtomicFile::LackNoReplaceAndLinksForTesting(false);
  EXPECT_EQ(testing::ReadFileOrDie(dir.Join("t")), "theirs");
  EXPECT_EQ(testing::ReadFileOrDie(dir.Join("u")), "mine");
  std::vector<std::string> names = DirectoryEntries(dir.path());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"t", "u"}));
}

TEST(AtomicFile, AnExistingTargetKeepsItsModeAndANewOneFollowsTheUmask) {
  testing::TempDir dir;
  testing::WriteFileOrDie(dir.Join("t"), "old");
  ASSERT_EQ(chmod(dir.Join("t").c_str(), 0640), 0);
  ASSERT_TRUE(WriteFileAtomically(dir.Join("t"), "new").ok());
  struct stat st;
  ASSERT_EQ(stat(dir.Join("t").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0640u);

  const mode_t old_mask = umask(022);
  ASSERT_TRUE(WriteFileAtomically(dir.Join("fresh"), "x").ok());
  umask(old_mask);
  ASSERT_EQ(stat(dir.Join("fresh").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0644u);

  AtomicFileOptions explicit_mode;
  explicit_mode.mode = 0600;
  ASSERT_TRUE(WriteFileAtomically(dir.Join("t"), "newer", explicit_mode).ok());
  ASSERT_EQ(stat(dir.Join("t").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
}

TEST(AtomicFile, AFileThatNeedNotBeDurableIsRenamedInPlaceWithoutAnySync) {
  testing::TempDir dir;
  testing::WriteFileOrDie(dir.Join("t"), "old");
  AtomicFileOptions not_durable;
  not_durable.durable = false;
  for (AtomicStep step : {AtomicStep::kSync, AtomicStep::kSyncDir}) {
    AtomicFile::FailStepForTesting(step);  // a sync would fail: none may be attempted
    EXPECT_TRUE(WriteFileAtomically(dir.Join("t"), "new", not_durable).ok());
    EXPECT_FALSE(WriteFileAtomically(dir.Join("u"), "new").ok());  // the default syncs
    AtomicFile::FailStepForTesting(std::nullopt);
    EXPECT_EQ(testing::ReadFileOrDie(dir.Join("t")), "new");
  }
}

TEST(AtomicFile, AMissingDirectoryIsAnErrorNamingTheTarget) {
  auto file = AtomicFile::Create("/nonexistent/npzfs/dir/t");
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), ENOENT);
  EXPECT_NE(file.status().message().find("/nonexistent/npzfs/dir/t"), std::string::npos);
}

}  // namespace
}  // namespace npzfs
