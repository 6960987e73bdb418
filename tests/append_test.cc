// Tests for the in-place append under an undo journal: the journal format, a failure or a
// kill at every step of the protocol followed by recovery, locking between appenders, what
// readers see, ZIP64 limits, and ENOSPC at every step.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <random>
#include <thread>

#include "core/base/byte_codec.h"
#include "core/zip/append_journal.h"
#include "core/zip/zip_format.h"
#include "core/zip/zip_writer.h"
#include "npzfs/archive_writer.h"
#include "npzfs/file_util.h"
#include "npzfs/zip_directory.h"
#include "tests/archive_test_util.h"
#include "tests/test_util.h"

namespace npzfs {
namespace {

using testing::Crc;
using testing::FromBytes;
using testing::ListDir;
using testing::ReadAllWithLibzip;
using testing::ReadDir;
using testing::ReadFileOrDie;
using testing::RunPython;
using testing::ScopedTmpfs;
using testing::TempDir;
using testing::VerifyWithPython;
using testing::WriteFileOrDie;

std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng() % 16);  // compressible, not trivially
  return s;
}

struct FileState {
  std::string bytes;
  int64_t mtime_ns = 0;
  bool operator==(const FileState&) const = default;
};

FileState StateOf(const std::string& path) {
  FileState s;
  s.bytes = ReadFileOrDie(path);
  struct stat st;
  EXPECT_EQ(stat(path.c_str(), &st), 0);
  s.mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  return s;
}

// An archive of `count` members (member i: 1000 * (i + 1) bytes), stored or deflated.
void MakeArchive(const std::string& path, int count, int level = -1) {
  std::vector<NewMember> members;
  for (int i = 0; i < count; ++i) {
    members.push_back(FromBytes("old" + std::to_string(i) + ".bin",
                                RandomBytes(1000 * static_cast<size_t>(i + 1), i)));
  }
  WriteOptions o;
  o.compress_level = level;
  ASSERT_TRUE(WriteArchive(path, members, o).ok());
  // An mtime in the past, so that "restored" and "rewritten now" differ.
  struct timespec times[2] = {{0, UTIME_OMIT}, {1600000000, 123456789}};
  ASSERT_EQ(utimensat(AT_FDCWD, path.c_str(), times, 0), 0);
}

WriteOptions Deflate() {
  WriteOptions o;
  o.compress_level = 6;
  o.chunk_size = 256 << 10;
  return o;
}

// The members a test appends: a 3 MiB one (12 chunks when deflated) and a small one.
std::vector<NewMember> NewMembers() {
  return {FromBytes("new-big.bin", RandomBytes(3 << 20, 99)), FromBytes("new-small.txt", "hi")};
}

bool HasMember(const std::string& archive, const std::string& name) {
  auto d = ReadDir(archive);
  if (!d.ok()) return false;
  for (const ZipEntry& e : d->entries) {
    if (e.name == name) return true;
  }
  return false;
}

// Runs `fn` in a child process with NPZFS_TEST_KILL_AT=`kill_at`; expects the child to die
// of SIGKILL there.
// A log sink that keeps each line in `lines`.
std::function<void(const std::string&)> CollectInto(std::vector<std::string>* lines) {
  return [lines](const std::string& l) { lines->push_back(l); };
}

void RunAndKillAt(const std::string& kill_at, const std::function<void()>& fn) {
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    setenv("NPZFS_TEST_KILL_AT", kill_at.c_str(), 1);
    fn();
    _exit(3);  // not killed: the parent reports it
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
      << "the child was not killed at " << kill_at << " (status " << status << ")";
}

// ---------------------------------------------------------------------------- journal format

AppendJournal SampleJournal() {
  AppendJournal j;
  j.device = 0x803;
  j.inode = 1234567;
  j.prefix_crc = 0xdeadbeef;
  j.old_size = 5000;
  j.old_cd_offset = 4000;
  j.old_mtime_sec = -1600000000;
  j.old_mtime_nsec = 123456789;
  j.old_entries = 70000;
  j.new_names = {"adc.npy", "", std::string(300, 'n')};
  j.saved = RandomBytes(1000, 5);
  return j;
}

TEST(AppendJournal, RoundTrips) {
  const AppendJournal j = SampleJournal();
  const std::string bytes = EncodeAppendJournal(j);
  EXPECT_EQ(bytes.size(), kAppendJournalHeaderSize + 3 * 2 + 7 + 300 + j.saved.size() + 4);
  EXPECT_EQ(bytes.substr(0, 8), "NPZFSJNL");
  auto back = DecodeAppendJournal(bytes, "j");
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_EQ(back->version, kAppendJournalVersion);
  EXPECT_EQ(back->device, j.device);
  EXPECT_EQ(back->inode, j.inode);
  EXPECT_EQ(back->prefix_crc, j.prefix_crc);
  EXPECT_EQ(back->old_size, j.old_size);
  EXPECT_EQ(back->old_cd_offset, j.old_cd_offset);
  EXPECT_EQ(back->old_mtime_sec, j.old_mtime_sec);
  EXPECT_EQ(back->old_mtime_nsec, j.old_mtime_nsec);
  EXPECT_EQ(back->old_entries, j.old_entries);
  EXPECT_EQ(back->new_names, j.new_names);
  EXPECT_EQ(back->saved, j.saved);
}

// The layout version 2 had: the first new name only, no old entry count.
std::string VersionTwoJournal(const AppendJournal& j) {
  std::string out = "NPZFSJNL";
  PutLe32(out, 2);
  PutLe32(out, j.prefix_crc);
  PutLe64(out, j.device);
  PutLe64(out, j.inode);
  PutLe64(out, j.old_size);
  PutLe64(out, j.old_cd_offset);
  PutLe64(out, static_cast<uint64_t>(j.old_mtime_sec));
  PutLe32(out, j.old_mtime_nsec);
  PutLe32(out, static_cast<uint32_t>(j.new_names.front().size()));
  PutLe64(out, j.saved.size());
  out += j.new_names.front();
  out += j.saved;
  PutLe32(out, Crc(out));
  return out;
}

TEST(AppendJournal, AVersionTwoJournalIsStillReadWithItsFirstName) {
  const AppendJournal j = SampleJournal();
  auto back = DecodeAppendJournal(VersionTwoJournal(j), "j");
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_EQ(back->version, 2u);
  EXPECT_EQ(back->prefix_crc, j.prefix_crc);
  EXPECT_EQ(back->old_cd_offset, j.old_cd_offset);
  EXPECT_EQ(back->new_names, std::vector<std::string>{"adc.npy"});
  EXPECT_EQ(back->saved, j.saved);
}

TEST(AppendJournal, AJournalWithoutNewNamesIsRejected) {
  AppendJournal j = SampleJournal();
  j.new_names.clear();
  auto r = DecodeAppendJournal(EncodeAppendJournal(j), "j");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("no new member names"), std::string::npos)
      << r.status().message();
}

// The layout npzfs 0.1.0 wrote: no device, no prefix CRC, the mtime in nanoseconds.
std::string VersionOneJournal(const AppendJournal& j, int64_t mtime_ns) {
  std::string out = "NPZFSJNL";
  PutLe32(out, 1);
  PutLe32(out, 0);
  PutLe64(out, j.inode);
  PutLe64(out, j.old_size);
  PutLe64(out, j.old_cd_offset);
  PutLe64(out, static_cast<uint64_t>(mtime_ns));
  PutLe64(out, j.saved.size());
  out += j.saved;
  PutLe32(out, Crc(out));
  return out;
}

TEST(AppendJournal, AVersionOneJournalIsStillReadWithAnMtimeBefore1970SplitCorrectly) {
  const AppendJournal j = SampleJournal();
  auto back = DecodeAppendJournal(VersionOneJournal(j, -99500000000), "j");  // -99.5 s
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_EQ(back->version, 1u);
  EXPECT_EQ(back->inode, j.inode);
  EXPECT_EQ(back->old_size, j.old_size);
  EXPECT_EQ(back->saved, j.saved);
  EXPECT_EQ(back->old_mtime_sec, -100);
  EXPECT_EQ(back->old_mtime_nsec, 500000000u);
}

TEST(AppendJournal, EveryTruncationAndEveryFlippedByteIsRejected) {
  const std::string bytes = EncodeAppendJournal(SampleJournal());
  for (size_t n = 0; n < bytes.size(); n += 7) {
    auto r = DecodeAppendJournal(bytes.substr(0, n), "/x/.a.npz.npzfs-journal");
    ASSERT_FALSE(r.ok()) << "prefix of " << n << " bytes accepted";
    EXPECT_EQ(r.status().code(), EINVAL);
    EXPECT_EQ(r.status().message().rfind("/x/.a.npz.npzfs-journal: not a valid append journal", 0),
              0u)
        << r.status().message();
  }
  EXPECT_FALSE(DecodeAppendJournal(bytes + "x", "j").ok());
  for (size_t i = 0; i < bytes.size(); i += 3) {
    std::string bad = bytes;
    bad[i] = static_cast<char>(bad[i] ^ 0x40);
    EXPECT_FALSE(DecodeAppendJournal(bad, "j").ok()) << "byte " << i << " flipped and accepted";
  }
}

TEST(AppendJournal, ASavedRegionThatDoesNotMatchTheOldSizeIsRejected) {
  AppendJournal j = SampleJournal();
  j.old_size = 4999;  // saved holds 1000 bytes, the region only 999
  auto r = DecodeAppendJournal(EncodeAppendJournal(j), "j");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("does not match the old size"), std::string::npos);
}

// ------------------------------------------------------------------ failures at every step

TEST(InPlaceAppend, AFailureAtAnyStepBeforeTheJournalIsRemovedLeavesTheArchiveByteIdentical) {
  for (AppendStep step :
       {AppendStep::kJournalWrite, AppendStep::kJournalDurable, AppendStep::kMemberData,
        AppendStep::kDirectoryWritten, AppendStep::kArchiveSynced}) {
    for (int level : {-1, 6}) {
      TempDir dir;
      const std::string archive = dir.Join("a.npz");
      MakeArchive(archive, 3);
      const FileState before = StateOf(archive);
      WriteOptions o = Deflate();
      o.compress_level = level;
      FailAppendStepForTesting(step);
      Status s = AppendToArchive(archive, NewMembers(), o);
      FailAppendStepForTesting(std::nullopt);
      EXPECT_EQ(s.code(), EIO) << static_cast<int>(step) << ": " << s.message();
      EXPECT_EQ(s.message().rfind(archive + ": ", 0), 0u) << s.message();
      EXPECT_NE(s.message().find("injected failure"), std::string::npos) << s.message();
      EXPECT_TRUE(StateOf(archive) == before) << "step " << static_cast<int>(step);
      EXPECT_EQ(ListDir(dir.path()), std::vector<std::string>{"a.npz"});
    }
  }
}

TEST(InPlaceAppend, AFailedSyncAfterTheJournalIsRemovedIsReportedAndTheMembersStay) {
  TempDir dir;
  const std::string archive = dir.Join("a.npz");
  MakeArchive(archive, 2);
  FailAppendStepForTesting(AppendStep::kJournalRemoved);
  Status s = AppendToArchive(archive, NewMembers(), {});
  FailAppendStepForTesting(std::nullopt);
  EXPECT_EQ(s.code(), EIO);
  EXPECT_NE(s.message().find("members appended, but the journal could not be removed durably"),
            std::string::npos)
      << s.message();
  EXPECT_TRUE(HasMember(archive, "new-big.bin"));
  EXPECT_EQ(ListDir(dir.path()), std::vector<std::string>{"a.npz"});
}

// ------------------------------------------------------------------- kills and recovery

TEST(InPlaceAppend, AKillAtAnyStepThenRecoveryGivesTheOldArchiveOrTheNewOne) {
  const std::vector<std::string> steps = {
      "journal-write",       "journal-durable",   "member-data:1",  "member-data:1500000",
      "member-data:3145728", "directory-written", "archive-synced", "journal-removed"};
  for (const std::string& step : steps) {
    for (int level : {-1, 6}) {
      SCOPED_TRACE(step + " level " + std::to_string(level));
      TempDir dir;
      const std::string archive = dir.Join("a.npz");
      MakeArchive(archive, 3, level);
      const FileState before = StateOf(archive);
      WriteOptions o = Deflate();
      o.compress_level = level;
      RunAndKillAt(step, [&] { (void)AppendToArchive(archive, NewMembers(), o); });
      std::vector<std::string> lines;
      auto recovered = RecoverInterruptedAppend(
          archive, [&](const std::string& line) { lines.push_back(line); });
      ASSERT_TRUE(recovered.ok()) << recovered.status().message();
      if (step == "journal-removed") {
        // The append was complete: nothing to undo.
        EXPECT_FALSE(*recovered);
        EXPECT_TRUE(HasMember(archive, "new-big.bin"));
        EXPECT_EQ(VerifyWithPython(archive, dir.path()),
                  "old0.bin,old1.bin,old2.bin,new-big.bin,new-small.txt\n");
      } else {
        EXPECT_TRUE(StateOf(archive) == before);
        EXPECT_EQ(*recovered, step != "journal-write");  // a torn journal is just removed
        ASSERT_EQ(lines.size(), 1u);
      }
      EXPECT_EQ(ListDir(dir.path()), std::vector<std::string>{"a.npz"});
    }
  }
}

TEST(InPlaceAppend, AKillDuringRecoveryIsRecoveredAgain) {
  TempDir dir;
  const std::string archive = dir.Join("a.npz");
  MakeArchive(archive, 3);
  const FileState before = StateOf(archive);
  RunAndKillAt("directory-written", [&] { (void)AppendToArchive(archive, NewMembers(), {}); });
  RunAndKillAt("recover-restored", [&] { (void)RecoverInterruptedAppend(archive); });
  EXPECT_EQ(ListDir(dir.path()), (std::vector<std::string>{".a.npz.npzfs-journal", "a.npz"}));
  auto recovered = RecoverInterruptedAppend(archive);
  ASSERT_TRUE(recovered.ok()) << recovered.status().message();
  EXPECT_TRUE(*recovered);
  EXPECT_TRUE(StateOf(archive) == before);
  EXPECT_EQ(ListDir(dir.path()), std::vector<std::string>{"a.npz"});
}

TEST(InPlaceAppend, TheNextAppendUndoesAnInterruptedOneFirst) {
  for (auto mode : {WriteOptions::AppendMode::kInPlace, WriteOptions::AppendMode::kCopy}) {
    TempDir dir;
    const std::string archive = dir.Join("a.npz");
    MakeArchive(archive, 2);
    RunAndKillAt("member-data:1000000", [&] { (void)AppendToArchive(archive, NewMembers(), {}); });
    std::vector<std::string> lines;
    WriteOptions o;
    o.append_mode = mode;
    o.log = [&](const std::string& line) { lines.push_back(line); };
    ASSERT_TRUE(AppendToArchive(archive, {FromBytes("next.txt", "next")}, o).ok());
    auto d = ReadDir(archive);
    ASSERT_TRUE(d.ok()) << d.status().message();
    ASSERT_EQ(d->entries.size(), 3u);
    EXPECT_EQ(d->entries[2].name, "next.txt");
    ASSERT_EQ(lines.size(), 1u);
    EXPECT_NE(lines[0].find("restored to its state before an interrupted append"),
              std::string::npos)
        << lines[0];
    EXPECT_EQ(ListDir(dir.path()), std::vector<std::string>{"a.npz"});
  }
}

TEST(InPlaceAppend, AJournalThatWasNeverCompleteIsRemovedAndTheArchiveLeftAlone) {
  TempDir dir;
  const std::string archive = dir.Join("a.npz");
  MakeArchive(archive, 2);
  const FileState before = StateOf(archive);
  WriteFileOrDie(dir.Join(".a.npz.npzfs-journal"), "NPZFSJNL\x01\x00");
  std::vector<std::string> lines;
  auto r = RecoverInterruptedAppend(archive, CollectInto(&lines));
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_FALSE(*r);
  EXPECT_TRUE(StateOf(archive) == before);
  EXPECT_EQ(ListDir(dir.path()), std::vector<std::string>{"a.npz"});
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_NE(lines[0].find("removed an incomplete append journal"), std::string::npos);
}

TEST(InPlaceAppend, AnUnreadableJournalBesideADamagedArchiveIsKeptWithBoth) {
  TempDir dir;
  const std::string archive = dir.Join("a.npz");
  MakeArchive(archive, 2);
  const std::string bytes = ReadFileOrDie(archive);
  WriteFileOrDie(archive, bytes.substr(0, bytes.size() - 30));  // no end record
  WriteFileOrDie(dir.Join(".a.npz.npzfs-journal"), "garbage");
  auto r = RecoverInterruptedAppend(archive);
  EXPECT_EQ(r.status().code(), EIO);
  EXPECT_NE(r.status().message().find("both are kept"), std::string::npos) << r.status().message();
  EXPECT_EQ(ListDir(dir.path()), (std::vector<std::string>{".a.npz.npzfs-journal", "a.npz"}));
}

TEST(InPlaceAppend, AJournalOfAReplacedFileIsSetAsideAndNotApplied) {
  TempDir dir;
  const std::string archive = dir.Join("a.npz");
  MakeArchive(archive, 2);
  RunAndKillAt("directory-written", [&] { (void)AppendToArchive(archive, NewMembers(), {}); });
  // Another program replaces the half-appended archive by a new file.
  MakeArchive(dir.Join("other.npz"), 4);
  ASSERT_EQ(rename(dir.Join("other.npz").c_str(), archive.c_str()), 0);
  const FileState replaced = StateOf(archive);
  std::vector<std::string> lines;
  auto r = RecoverInterruptedAppend(archive, CollectInto(&lines));
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_FALSE(*r);
  EXPECT_TRUE(StateOf(archive) == replaced);
  EXPECT_EQ(ListDir(dir.path()), (std::vector<std::string>{".a.npz.npzfs-journal.stale", "a.npz"}));
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_NE(lines[0].find("replaced or rewritten since"), std::string::npos) << lines[0];
}

// Kills an append to `archive` (made by MakeArchive(archive, 2)) once it has begun writing,
// then rewrites the same inode (O_TRUNC) with the bytes of `replacement`.
void KillAppendThenRewriteInPlace(const std::string& archive, const std::string& replacement) {
  RunAndKillAt("member-data:1", [&] { (void)AppendToArchive(archive, NewMembers(), {}); });
  struct stat before, after;
  ASSERT_EQ(stat(archive.c_str(), &before), 0);
  auto fd = OpenFile(archive, O_WRONLY | O_TRUNC);
  ASSERT_TRUE(fd.ok());
  ASSERT_TRUE(PwriteAll(fd->get(), replacement.data(), replacement.size(), 0, archive).ok());
  ASSERT_EQ(fstat(fd->get(), &after), 0);
  ASSERT_EQ(after.st_ino, before.st_ino);
}

TEST(InPlaceAppend, AJournalOfAFileRewrittenInPlaceIsSetAsideAndNotApplied) {
  // Rewritten with other members: the bytes the append never touches differ. Rewritten with
  // the same two members and three more: they are identical, but another member's local
  // header now lies where the append wrote its first one.
  for (int level : {6, -1}) {
    SCOPED_TRACE(level);
    TempDir dir;
    const std::string archive = dir.Join("a.npz");
    MakeArchive(archive, 2);
    if (level == 6) {
      MakeArchive(dir.Join("other.npz"), 5, level);
    } else {
      // A copy with three members appended, so that its first two are byte-identical even
      // when the clock ticks on to the next DOS time (2 s) between the two archives.
      WriteFileOrDie(dir.Join("other.npz"), ReadFileOrDie(archive));
      std::vector<NewMember> more;
      for (int i = 2; i < 5; ++i)
        more.push_back(FromBytes("old" + std::to_string(i) + ".bin", "x"));
      ASSERT_TRUE(AppendToArchive(dir.Join("other.npz"), more, {}).ok());
    }
    const std::string other = ReadFileOrDie(dir.Join("other.npz"));
    ASSERT_EQ(unlink(dir.Join("other.npz").c_str()), 0);
    KillAppendThenRewriteInPlace(archive, other);
    std::vector<std::string> lines;
    auto r = RecoverInterruptedAppend(archive, CollectInto(&lines));
    ASSERT_TRUE(r.ok()) << r.status().message();
    EXPECT_FALSE(*r);
    EXPECT_EQ(ReadFileOrDie(archive), other);
    EXPECT_EQ(ListDir(dir.path()),
              (std::vector<std::string>{".a.npz.npzfs-journal.stale", "a.npz"}));
    ASSERT_EQ(lines.size(), 1u);
    // Other members: the untouched bytes differ. The same two and three more: a member of
    // the rewrite lies where the append began.
    EXPECT_NE(lines[0].find(level == 6 ? "replaced or rewritten since"
                                       : "holds a member another program wrote where the "
                                         "interrupted append was to begin"),
              std::string::npos)
        << lines[0];
  }
}

TEST(InPlaceAppend, AnAppendWhoseFirstHeaderNeverReachedTheDiskIsStillUndone) {
  TempDir dir;
  const std::string archive = dir.Join("a.npz");
  MakeArchive(archive, 2);
  const FileState before = StateOf(archive);
  auto d = ReadDir(archive);
  ASSERT_TRUE(d.ok());
  RunAndKillAt("member-data:100000", [&] { (void)AppendToArchive(archive, NewMembers(), {}); });
  {  // as after a power loss: the file grew, but its first new blocks read as zeros
    auto fd = OpenFile(archive, O_WRONLY);
    ASSERT_TRUE(fd.ok());
    const std::string zeros(4096, '\0');
    ASSERT_TRUE(PwriteAll(fd->get(), zeros.data(), zeros.size(), d->cd_offset, archive).ok());
  }
  auto r = RecoverInterruptedAppend(archive);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_TRUE(*r);
  EXPECT_TRUE(StateOf(archive) == before);
}

TEST(InPlaceAppend, AJournalWrittenByVersionOneIsStillApplied) {
  TempDir dir;
  const std::string archive = dir.Join("a.npz");
  MakeArchive(archive, 2);
  const FileState before = StateOf(archive);
  RunAndKillAt("member-data:1", [&] { (void)AppendToArchive(archive, NewMembers(), {}); });
  const std::string journal_path = dir.Join(".a.npz.npzfs-journal");
  auto j = DecodeAppendJournal(ReadFileOrDie(journal_path), journal_path);
  ASSERT_TRUE(j.ok()) << j.status().message();
  WriteFileOrDie(journal_path,
                 VersionOneJournal(*j, j->old_mtime_sec * 1000000000 + j->old_mtime_nsec));
  auto r = RecoverInterruptedAppend(archive);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_TRUE(*r);
  EXPECT_TRUE(StateOf(archive) == before);
  EXPECT_EQ(ListDir(dir.path()), std::vector<std::string>{"a.npz"});
}

// Appends a member as Python's zipfile does in "a" mode: where the directory it finds
// begins, then a new directory.
void AppendWithZipfile(const std::string& archive, const std::string& name) {
  RunPython("import zipfile\nwith zipfile.ZipFile('" + archive + "', 'a') as z:\n    z.writestr('" +
            name + "', b'appended by zipfile')\n");
}

std::string NamesOf(const std::string& archive) {
  auto d = ReadDir(archive);
  if (!d.ok()) return d.status().message();
  std::string names;
  for (const ZipEntry& e : d->entries) names += (names.empty() ? "" : ",") + e.name;
  return names;
}

TEST(InPlaceAppend, AJournalIsSetAsideWhenZipfileAppendedAfterTheKilledAppendAndNoMemberIsLost) {
  // Killed before the append began: zipfile writes where the old directory was. Killed once
  // the new directory was written (synced or not): zipfile writes after the new members.
  for (const std::string step : {"journal-durable", "directory-written", "archive-synced"}) {
    for (int level : {-1, 6}) {
      SCOPED_TRACE(step + " level " + std::to_string(level));
      TempDir dir;
      const std::string archive = dir.Join("a.npz");
      MakeArchive(archive, 2, level);
      WriteOptions o = Deflate();
      o.compress_level = level;
      RunAndKillAt(step, [&] { (void)AppendToArchive(archive, NewMembers(), o); });
      AppendWithZipfile(archive, "other.npy");
      const std::string ours = step == "journal-durable" ? "" : "new-big.bin,new-small.txt,";
      ASSERT_EQ(NamesOf(archive), "old0.bin,old1.bin," + ours + "other.npy");
      const FileState appended = StateOf(archive);
      std::vector<std::string> lines;
      auto r = RecoverInterruptedAppend(archive, CollectInto(&lines));
      ASSERT_TRUE(r.ok()) << r.status().message();
      EXPECT_FALSE(*r);
      EXPECT_TRUE(StateOf(archive) == appended);
      EXPECT_EQ(VerifyWithPython(archive, dir.path()), NamesOf(archive) + "\n");
      EXPECT_EQ(ListDir(dir.path()),
                (std::vector<std::string>{".a.npz.npzfs-journal.stale", "a.npz"}));
      ASSERT_EQ(lines.size(), 1u);
      EXPECT_NE(lines[0].find("moved to " + dir.Join(".a.npz.npzfs-journal.stale") +
                              ", the archive was left alone"),
                std::string::npos)
          << lines[0];
      if (step != "journal-durable") {
        EXPECT_NE(lines[0].find("was appended to by another program after the interrupted "
                                "append (its directory holds 5 members, the interrupted "
                                "append would have left 4)"),
                  std::string::npos)
            << lines[0];
      }
    }
  }
}

TEST(InPlaceAppend, ANewZipWrittenOntoAnArchiveAKilledAppendBrokeIsKeptBesideTheRestoredArchive) {
  // Killed while writing member data: the old directory is overwritten, the file is not a
  // zip, and zipfile's "a" mode starts a new zip at its end. Setting the journal aside would
  // leave only that zip listed (the old members lost from the directory): the old archive is
  // restored, and the bytes cut off, the other program's zip among them, are kept.
  TempDir dir;
  const std::string archive = dir.Join("a.npz");
  MakeArchive(archive, 2);
  const FileState before = StateOf(archive);
  RunAndKillAt("member-data:1000000", [&] { (void)AppendToArchive(archive, NewMembers(), {}); });
  AppendWithZipfile(archive, "other.npy");
  ASSERT_EQ(NamesOf(archive), "other.npy");
  std::vector<std::string> lines;
  auto r = RecoverInterruptedAppend(archive, CollectInto(&lines));
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_TRUE(*r);
  EXPECT_TRUE(StateOf(archive) == before);
  std::string kept;
  for (const std::string& name : ListDir(dir.path())) {
    if (name.starts_with(".a.npz.npzfs-journal.cut-")) kept = dir.Join(name);
  }
  ASSERT_FALSE(kept.empty()) << "no file keeps the cut bytes";
  EXPECT_EQ(RunPython("import zipfile\nprint(zipfile.ZipFile('" + kept +
                      "').read('other.npy').decode())\n"),
            "appended by zipfile\n");
  ASSERT_FALSE(lines.empty());
  EXPECT_NE(lines[0].find("are kept in " + kept), std::string::npos) << lines[0];
}

TEST(InPlaceAppend, AFinalizeRetriedAfterItsJournalWasSetAsideAddsNoMemberTwice) {
  TempDir dir;
  const std::string archive = dir.Join("a.npz");
  MakeArchive(archive, 2);
  RunAndKillAt("archive-synced", [&] { (void)AppendToArchive(archive, NewMembers(), {}); });
  AppendWithZipfile(archive, "other.npy");
  const FileState appended = StateOf(archive);
  // What the daemon's finalize retries with (Spool::Finalize): the same members, those
  // already there with the same bytes skipped.
  std::vector<std::string> lines;
  WriteOptions retry;
  retry.skip_identical_existing = true;
  retry.log = CollectInto(&lines);
  ASSERT_TRUE(AppendToArchive(archive, NewMembers(), retry).ok());
  EXPECT_TRUE(StateOf(archive) == appended);
  EXPECT_EQ(NamesOf(archive), "old0.bin,old1.bin,new-big.bin,new-small.txt,other.npy");
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_NE(lines[0].find("appended to by another program"), std::string::npos) << lines[0];
  EXPECT_NE(lines[1].find("member new-big.bin is already there with the same bytes"),
            std::string::npos)
      << lines[1];
  EXPECT_NE(lines[2].find("member new-small.txt is already there with the same bytes"),
            std::string::npos)
      << lines[2];
}

TEST(InPlaceAppend, BytesWrittenAfterACompleteAppendSetTheJournalAside) {
  TempDir dir;
  const std::string archive = dir.Join("a.npz");
  MakeArchive(archive, 2);
  RunAndKillAt("archive-synced", [&] { (void)AppendToArchive(archive, NewMembers(), {}); });
  {  // another program added bytes after the end record (readers tolerate them)
    auto fd = OpenFile(archive, O_WRONLY | O_APPEND);
    ASSERT_TRUE(fd.ok());
    ASSERT_EQ(write(fd->get(), "trailer", 7), 7);
  }
  const FileState appended = StateOf(archive);
  std::vector<std::string> lines;
  auto r = RecoverInterruptedAppend(archive, CollectInto(&lines));
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_FALSE(*r);
  EXPECT_TRUE(StateOf(archive) == appended);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_NE(lines[0].find("7 bytes follow its end records"), std::string::npos) << lines[0];
}

TEST(InPlaceAppend, AnAppendKilledBeforeItCutTheOldTailIsStillUndone) {
  // Junk after the old end record (readers tolerate it) is longer than what the append
  // writes: when it is killed at "directory-written", its end records are followed by the
  // rest of the old bytes, not yet cut.
  TempDir dir;
  const std::string archive = dir.Join("a.npz");
  MakeArchive(archive, 2);
  {
    auto fd = OpenFile(archive, O_WRONLY | O_APPEND);
    ASSERT_TRUE(fd.ok());
    const std::string junk(4096, 'j');
    ASSERT_EQ(write(fd->get(), junk.data(), junk.size()), static_cast<ssize_t>(junk.size()));
  }
  struct timespec times[2] = {{0, UTIME_OMIT}, {1600000000, 123456789}};
  ASSERT_EQ(utimensat(AT_FDCWD, archive.c_str(), times, 0), 0);
  const FileState before = StateOf(archive);
  RunAndKillAt("directory-written",
               [&] { (void)AppendToArchive(archive, {FromBytes("t.txt", "tiny")}, {}); });
  ASSERT_EQ(ReadFileOrDie(archive).size(), before.bytes.size());
  ASSERT_EQ(NamesOf(archive), "old0.bin,old1.bin,t.txt");
  auto r = RecoverInterruptedAppend(archive);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_TRUE(*r);
  EXPECT_TRUE(StateOf(archive) == before);
  EXPECT_EQ(ListDir(dir.path()), std::vector<std::string>{"a.npz"});
}

TEST(InPlaceAppend, AJournalWrittenByVersionTwoIsStillAppliedByItsOwnRule) {
  TempDir dir;
  const std::string archive = dir.Join("a.npz");
  MakeArchive(archive, 2);
  const FileState before = StateOf(archive);
  RunAndKillAt("archive-synced", [&] { (void)AppendToArchive(archive, NewMembers(), {}); });
  const std::string journal_path = dir.Join(".a.npz.npzfs-journal");
  auto j = DecodeAppendJournal(ReadFileOrDie(journal_path), journal_path);
  ASSERT_TRUE(j.ok()) << j.status().message();
  WriteFileOrDie(journal_path, VersionTwoJournal(*j));
  auto r = RecoverInterruptedAppend(archive);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_TRUE(*r);
  EXPECT_TRUE(StateOf(archive) == before);
  EXPECT_EQ(ListDir(dir.path()), std::vector<std::string>{"a.npz"});
}

TEST(InPlaceAppend, AnArchiveWithAnMtimeBefore1970IsRestoredExactly) {
  TempDir dir;
  const std::string archive = dir.Join("a.npz");
  MakeArchive(archive, 2);
  struct timespec times[2] = {{0, UTIME_OMIT}, {-100, 500000000}};
  ASSERT_EQ(utimensat(AT_FDCWD, archive.c_str(), times, 0), 0);
  const FileState before = StateOf(archive);
  RunAndKillAt("member-data:1", [&] { (void)AppendToArchive(archive, NewMembers(), {}); });
  auto r = RecoverInterruptedAppend(archive);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_TRUE(*r);
  EXPECT_TRUE(StateOf(archive) == before);
}

TEST(InPlaceAppend, AHardLinkedArchiveIsAppendedByCopyAndItsOtherNameKeepsTheOldBytes) {
  TempDir dir;
  const std::string archive = dir.Join("a.npz");
  MakeArchive(archive, 2);
  ASSERT_EQ(link(archive.c_str(), dir.Join("b.npz").c_str()), 0);
  const FileState before = StateOf(archive);
  std::vector<std::string> lines;
  WriteOptions o;
  o.log = [&](const std::string& line) { lines.push_back(line); };
  ASSERT_TRUE(AppendToArchive(archive, NewMembers(), o).ok());
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_NE(lines[0].find("by copy and rename, not in place: it has 2 hard links"),
            std::string::npos)
      << lines[0];
  EXPECT_TRUE(HasMember(archive, "new-small.txt"));
  EXPECT_TRUE(StateOf(dir.Join("b.npz")) == before);
  EXPECT_EQ(ListDir(dir.path()), (std::vector<std::string>{"a.npz", "b.npz"}));
}

TEST(InPlaceAppend, MoreThanAJournalCanHoldAfterTheDirectoryMeansAnAppendByCopy) {
  TempDir dir;
  const std::string archive = dir.Join("a.npz");
  MakeArchive(archive, 2);
  // Move the end record 1.1 GiB further (a sparse gap after the central directory, which
  // readers accept): the journal would have to save all of it.
  std::string bytes = ReadFileOrDie(archive);
  const size_t eocd = bytes.rfind(std::string("PK\x05\x06", 4));
  ASSERT_NE(eocd, std::string::npos);
  const std::string end_record = bytes.substr(eocd);
  const uint64_t gap = kMaxJournalSavedBytes + (64 << 20);
  {
    auto fd = OpenFile(archive, O_WRONLY | O_TRUNC);
    ASSERT_TRUE(fd.ok());
    ASSERT_TRUE(PwriteAll(fd->get(), bytes.data(), eocd, 0, archive).ok());
    ASSERT_TRUE(
        PwriteAll(fd->get(), end_record.data(), end_record.size(), eocd + gap, archive).ok());
  }
  ASSERT_TRUE(ReadDir(archive).ok()) << ReadDir(archive).status().message();
  std::vector<std::string> lines;
  WriteOptions o;
  o.log = [&](const std::string& line) { lines.push_back(line); };
  ASSERT_TRUE(AppendToArchive(archive, {FromBytes("next.txt", "next")}, o).ok());
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_NE(lines[0].find("by copy and rename, not in place: more than 1 GiB"), std::string::npos)
      << lines[0];
  EXPECT_EQ(VerifyWithPython(archive, dir.path()), "old0.bin,old1.bin,next.txt\n");
  struct stat st;
  ASSERT_EQ(stat(archive.c_str(), &st), 0);
  EXPECT_LT(st.st_size, 1 << 20);  // the gap is not copied
}

TEST(CreateArchive, ADanglingSymlinkIsAnErrorNamingIt) {
  TempDir dir;
  const std::string link_path = dir.Join("link.npz");
  ASSERT_EQ(symlink(dir.Join("missing/target.npz").c_str(), link_path.c_str()), 0);
  Status s = AppendToArchive(link_path, {FromBytes("x.txt", "x")}, {});
  EXPECT_EQ(s.code(), ENOENT) << s.message();
  EXPECT_EQ(s.message().rfind(link_path + ": a symbolic link whose target cannot be reached", 0),
            0u)
      << s.message();
  EXPECT_EQ(ListDir(dir.path()), std::vector<std::string>{"link.npz"});
}

TEST(InPlaceAppend, RecoveryWithoutAJournalTakesNoLock) {
  TempDir dir;
  const std::string archive = dir.Join("a.npz");
  MakeArchive(archive, 1);
  auto held = OpenFile(archive, O_RDONLY);
  ASSERT_TRUE(held.ok());
  ASSERT_EQ(flock(held->get(), LOCK_EX), 0);  // would block a recovery that locked
  auto r = RecoverInterruptedAppend(archive);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(*r);
}

TEST(InPlaceAppend, AJournalWhoseArchiveIsMissingIsAnError) {
  TempDir dir;
  WriteFileOrDie(dir.Join(".a.npz.npzfs-journal"), EncodeAppendJournal(SampleJournal()));
  auto r = RecoverInterruptedAppend(dir.Join("a.npz"));
  EXPECT_EQ(r.status().code(), ENOENT);
  EXPECT_NE(r.status().message().find("missing, but its append journal"), std::string::npos)
      << r.status().message();
}

// ------------------------------------------------------------------- stale temp files

TEST(StaleTempFiles, TheTempFileOfAKilledCopyIsRemovedWithALogLine) {
  TempDir dir;
  const std::string archive = dir.Join("a.npz");
  MakeArchive(archive, 2);
  const FileState before = StateOf(archive);
  WriteOptions copy;
  copy.append_mode = WriteOptions::AppendMode::kCopy;
  RunAndKillAt("member-data:1000000", [&] { (void)AppendToArchive(archive, NewMembers(), copy); });
  auto left = ListDir(dir.path());
  ASSERT_EQ(left.size(), 2u);
  EXPECT_EQ(left[0].rfind(".a.npz.npzfs-tmp-", 0), 0u) << left[0];
  // Files that only look alike stay: another archive's temp file, the index, a directory.
  WriteFileOrDie(dir.Join(".b.npz.npzfs-tmp-abcdef"), "b");
  WriteFileOrDie(dir.Join(".a.npz.npzfs-index"), "i");
  ASSERT_EQ(mkdir(dir.Join(".a.npz.npzfs-tmp-dir").c_str(), 0755), 0);
  std::vector<std::string> lines;
  auto removed = RemoveStaleTempFiles(archive, CollectInto(&lines));
  ASSERT_TRUE(removed.ok()) << removed.status().message();
  EXPECT_EQ(*removed, 1u);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_NE(lines[0].find(left[0] + ": removed the temp file ("), std::string::npos) << lines[0];
  EXPECT_TRUE(StateOf(archive) == before);
  EXPECT_EQ(ListDir(dir.path()),
            (std::vector<std::string>{".a.npz.npzfs-index", ".a.npz.npzfs-tmp-dir",
                                      ".b.npz.npzfs-tmp-abcdef", "a.npz"}));
}

TEST(StaleTempFiles, TheTempFileOfACopyStillRunningIsLeftAlone) {
  TempDir dir;
  const std::string archive = dir.Join("a.npz");
  MakeArchive(archive, 1);
  const std::string running = dir.Join(".a.npz.npzfs-tmp-runnin");
  std::atomic<bool> done{false};
  Result<size_t> removed = size_t{0};
  std::thread cleaner;
  {
    // A copy-mode writer holds the archive's lock while its temp file exists.
    auto lock = OpenFile(archive, O_RDONLY);
    ASSERT_TRUE(lock.ok());
    ASSERT_EQ(flock(lock->get(), LOCK_EX), 0);
    WriteFileOrDie(running, "in progress");
    cleaner = std::thread([&] {
      removed = RemoveStaleTempFiles(archive);
      done = true;
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    EXPECT_FALSE(done.load()) << "the cleanup did not wait for the writer's lock";
    EXPECT_EQ(ListDir(dir.path()).size(), 2u);
    ASSERT_EQ(unlink(running.c_str()), 0);  // the writer renames or removes it, then unlocks
  }
  cleaner.join();
  ASSERT_TRUE(removed.ok());
  EXPECT_EQ(*removed, 0u);
}

// ------------------------------------------------------------------ readers and writers

TEST(InPlaceAppend, AProcessThatOpenedTheArchiveBeforeReadsEveryOldMemberAfterwards) {
  for (auto mode : {WriteOptions::AppendMode::kInPlace, WriteOptions::AppendMode::kCopy}) {
    TempDir dir;
    const std::string archive = dir.Join("a.npz");
    MakeArchive(archive, 4, 6);
    auto reader = OpenFile(archive, O_RDONLY);
    ASSERT_TRUE(reader.ok());
    auto old = ReadZipDirectory(reader->get(), archive);
    ASSERT_TRUE(old.ok());
    WriteOptions o = Deflate();
    o.append_mode = mode;
    for (int round = 0; round < 3; ++round) {
      ASSERT_TRUE(AppendToArchive(
                      archive, {FromBytes("r" + std::to_string(round), RandomBytes(500000, 7))}, o)
                      .ok());
    }
    // The old fd, with the directory read before, still finds every old member's bytes.
    for (size_t i = 0; i < old->entries.size(); ++i) {
      const ZipEntry& e = old->entries[i];
      std::string raw(e.compressed_size, '\0');
      ASSERT_TRUE(PreadExact(reader->get(), raw.data(), raw.size(), e.data_offset, archive).ok());
      const std::string expected = RandomBytes(1000 * (i + 1), static_cast<uint32_t>(i));
      uLongf n = static_cast<uLongf>(expected.size());
      std::string out(expected.size(), '\0');
      z_stream zs{};
      ASSERT_EQ(inflateInit2(&zs, -MAX_WBITS), Z_OK);
      zs.next_in = reinterpret_cast<Bytef*>(raw.data());
      zs.avail_in = static_cast<uInt>(raw.size());
      zs.next_out = reinterpret_cast<Bytef*>(out.data());
      zs.avail_out = static_cast<uInt>(n);
      EXPECT_EQ(inflate(&zs, Z_FINISH), Z_STREAM_END);
      inflateEnd(&zs);
      EXPECT_TRUE(out == expected) << e.name;
    }
    // In place, the same open file now shows the new members too; a copy is another inode.
    auto now = ReadZipDirectory(reader->get(), archive);
    ASSERT_TRUE(now.ok());
    EXPECT_EQ(now->entries.size(), mode == WriteOptions::AppendMode::kInPlace ? 7u : 4u);
  }
}

TEST(InPlaceAppend, ForeignReadersAcceptTheArchiveAfterOneTwoAndTwentyAppends) {
  TempDir dir;
  RunPython(R"(
import numpy as np
d = ')" + dir.path() +
            R"('
np.savez(d + '/a.npz', adc=np.arange(5000, dtype='<i2').reshape(50, 100), tx=np.ones(7))
for i in range(20):
    np.save(d + '/m%d.npy' % i, np.arange(i * 1000, dtype='<f4').reshape(-1, 10) * i)
)");
  const std::string archive = dir.Join("a.npz");
  std::string expected = "adc.npy,tx.npy";
  for (int i = 0; i < 20; ++i) {
    const std::string name = "m" + std::to_string(i) + ".npy";
    auto fd = OpenFile(dir.Join(name), O_RDONLY);
    ASSERT_TRUE(fd.ok());
    WriteOptions o = Deflate();
    o.compress_level = i % 2 ? 6 : -1;
    ASSERT_TRUE(AppendToArchive(archive, {testing::FromFile(name, *fd, dir.Join(name))}, o).ok());
    expected += "," + name;
    if (i == 0 || i == 1 || i == 19) {
      SCOPED_TRACE("after " + std::to_string(i + 1) + " appends");
      EXPECT_EQ(VerifyWithPython(archive, dir.path()), expected + "\n");
      EXPECT_EQ(ReadAllWithLibzip(archive), i + 3);
    }
  }
  EXPECT_EQ(ListDir(dir.path()).size(), 21u);  // the archive and the 20 sources, nothing else
}

TEST(InPlaceAppend, ConcurrentAppendersNeverInterleave) {
  TempDir dir;
  const std::string archive = dir.Join("a.npz");
  MakeArchive(archive, 1);
  std::vector<std::thread> threads;
  std::vector<Status> results(4);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 8 && results[t].ok(); ++i) {
        const std::string name = "t" + std::to_string(t) + "-" + std::to_string(i);
        WriteOptions o = Deflate();
        o.compress_level = (t + i) % 2 ? 1 : -1;
        o.append_mode =
            i == 3 ? WriteOptions::AppendMode::kCopy : WriteOptions::AppendMode::kInPlace;
        results[t] = AppendToArchive(archive, {FromBytes(name, RandomBytes(40000 + i, t))}, o);
      }
    });
  }
  for (auto& th : threads) th.join();
  for (const Status& s : results) ASSERT_TRUE(s.ok()) << s.message();
  auto d = ReadDir(archive);
  ASSERT_TRUE(d.ok()) << d.status().message();
  EXPECT_EQ(d->entries.size(), 33u);
  EXPECT_EQ(ReadAllWithLibzip(archive), 33);
  EXPECT_EQ(ListDir(dir.path()), std::vector<std::string>{"a.npz"});
}

// ------------------------------------------------------------------------- ZIP64 limits

// CRC-32 of `n` zero bytes, by doubling with crc32_combine.
uint32_t CrcOfZeros(uint64_t n) {
  const std::string one(1, '\0');
  uLong power = crc32(0, reinterpret_cast<const Bytef*>(one.data()), 1);  // 2^0 zeros
  uLong crc = 0;
  for (uint64_t bit = 1; bit <= n; bit <<= 1) {
    if (n & bit) crc = crc32_combine64(crc, power, static_cast<z_off64_t>(bit));
    power = crc32_combine64(power, power, static_cast<z_off64_t>(bit));
  }
  return static_cast<uint32_t>(crc);
}

// A sparse archive holding one stored member of `size` zero bytes (a hole on disk).
void MakeSparseArchive(const std::string& path, uint64_t size) {
  const std::string name = "zeros.bin";
  std::string local, central;
  for (std::string* h : {&local, &central}) {
    const bool c = h == &central;
    PutLe32(*h, c ? zip::kCentralHeaderSig : zip::kLocalHeaderSig);
    if (c) PutLe16(*h, zip::kMadeByUnix | zip::kVersionDeflate);
    PutLe16(*h, zip::kVersionDeflate);
    PutLe16(*h, 0);  // flags
    PutLe16(*h, zip::kMethodStored);
    PutLe32(*h, (1 << 21) | (1 << 16));  // DOS time 1980-01-01
    PutLe32(*h, CrcOfZeros(size));
    PutLe32(*h, static_cast<uint32_t>(size));
    PutLe32(*h, static_cast<uint32_t>(size));
    PutLe16(*h, static_cast<uint16_t>(name.size()));
    PutLe16(*h, 0);  // extra
    if (c) {
      PutLe16(*h, 0);  // comment
      PutLe16(*h, 0);  // disk
      PutLe16(*h, 0);  // internal attributes
      PutLe32(*h, 0100644u << 16);
      PutLe32(*h, 0);  // local header offset
    }
    *h += name;
  }
  const uint64_t cd_offset = local.size() + size;
  std::string end;
  PutLe32(end, zip::kEndSig);
  PutLe32(end, 0);
  PutLe16(end, 1);
  PutLe16(end, 1);
  PutLe32(end, static_cast<uint32_t>(central.size()));
  PutLe32(end, static_cast<uint32_t>(cd_offset));
  PutLe16(end, 0);
  auto fd = OpenFile(path, O_RDWR | O_CREAT | O_TRUNC);
  ASSERT_TRUE(fd.ok());
  ASSERT_TRUE(PwriteAll(fd->get(), local.data(), local.size(), 0, path).ok());
  ASSERT_TRUE(PwriteAll(fd->get(), central.data(), central.size(), cd_offset, path).ok());
  ASSERT_TRUE(PwriteAll(fd->get(), end.data(), end.size(), cd_offset + central.size(), path).ok());
}

TEST(InPlaceAppend, AnAppendThatCrossesFourGiBSwitchesToZip64) {
  TempDir dir;
  const std::string archive = dir.Join("big.zip");
  const uint64_t size = (uint64_t{4} << 30) - 5000;  // a member ending just below 4 GiB
  MakeSparseArchive(archive, size);
  auto before = ReadDir(archive);
  ASSERT_TRUE(before.ok()) << before.status().message();
  EXPECT_LT(before->cd_offset, uint64_t{4} << 30);
  const std::string big = RandomBytes(20000, 3);  // ends beyond 4 GiB
  ASSERT_TRUE(AppendToArchive(archive, {FromBytes("cross.bin", big), FromBytes("high.txt", "high")},
                              Deflate())
                  .ok());
  auto after = ReadDir(archive);
  ASSERT_TRUE(after.ok()) << after.status().message();
  ASSERT_EQ(after->entries.size(), 3u);
  EXPECT_EQ(after->entries[0].uncompressed_size, size);
  EXPECT_GT(after->entries[2].local_header_offset, uint64_t{4} << 30);
  EXPECT_GT(after->cd_offset, uint64_t{4} << 30);
  // ZIP64 end record and locator before the classic end record.
  EXPECT_EQ(after->cd_offset + after->cd_size + 56 + 20 + 22, after->archive_size);
  // zipfile and libzip (with its consistency check) read the new members; the 4 GiB of
  // zeros are not read again.
  EXPECT_EQ(RunPython(R"(
import zipfile, zlib
with zipfile.ZipFile(')" +
                      archive + R"(') as zf:
    big = zf.read('cross.bin')
    print(zf.getinfo('zeros.bin').file_size, len(big), zlib.crc32(big), zf.read('high.txt').decode())
)"),
            std::to_string(size) + " 20000 " + std::to_string(Crc(big)) + " high\n");
  EXPECT_EQ(ReadAllWithLibzip(archive, /*max_member_bytes=*/1 << 20), 3);
}

TEST(InPlaceAppend, AnAppendThatCrossesTheEntryLimitSwitchesToZip64) {
  TempDir dir;
  const std::string archive = dir.Join("many.zip");
  std::vector<NewMember> members;
  for (int i = 0; i < 65530; ++i) members.push_back(FromBytes("m" + std::to_string(i), "x"));
  ASSERT_TRUE(WriteArchive(archive, members, {}).ok());
  auto before = ReadDir(archive);
  ASSERT_TRUE(before.ok());
  EXPECT_EQ(before->cd_offset + before->cd_size + 22, before->archive_size);  // no ZIP64 yet
  std::vector<NewMember> more;
  for (int i = 0; i < 10; ++i) more.push_back(FromBytes("n" + std::to_string(i), "y"));
  ASSERT_TRUE(AppendToArchive(archive, more, {}).ok());
  auto after = ReadDir(archive);
  ASSERT_TRUE(after.ok()) << after.status().message();
  EXPECT_EQ(after->entries.size(), 65540u);
  EXPECT_EQ(after->cd_offset + after->cd_size + 56 + 20 + 22, after->archive_size);
  EXPECT_EQ(RunPython(R"(
import zipfile, subprocess
a = ')" + archive + R"('
with zipfile.ZipFile(a) as zf:
    print(len(zf.namelist()), zf.read('m65529').decode(), zf.read('n9').decode())
r = subprocess.run(['unzip', '-tq', a], capture_output=True)
assert r.returncode == 0, r.stdout + r.stderr
)"),
            "65540 x y\n");
}

// ---------------------------------------------------------------------------------- ENOSPC

// Fills `dir` (a tmpfs) until `free_bytes` remain.
void FillUntil(const std::string& dir, uint64_t free_bytes) {
  struct statvfs vfs;
  ASSERT_EQ(statvfs(dir.c_str(), &vfs), 0);
  const uint64_t avail = static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize;
  ASSERT_GE(avail, free_bytes);
  auto fd = OpenFile(dir + "/filler", O_WRONLY | O_CREAT | O_TRUNC);
  ASSERT_TRUE(fd.ok());
  const std::string block(avail - free_bytes, 'f');
  ASSERT_TRUE(WriteAll(fd->get(), block.data(), block.size(), "filler").ok());
}

TEST(InPlaceAppend, RunningOutOfSpaceAtEveryStepLeavesTheArchiveByteIdentical) {
  if (geteuid() != 0) NPZ_SKIP_UNLESS_CI("needs root to mount a small tmpfs");
  // An archive with a large central directory (the journal holds ~100 KiB) and a new
  // member of 300 KiB: sweeping the free space from 0 to 600 KiB (finely where the new
  // directory is written) makes the journal, the member data or the directory run out.
  std::vector<NewMember> members;
  for (int i = 0; i < 1500; ++i) {
    members.push_back(FromBytes("a-rather-long-member-name-" + std::to_string(i) + ".npy", "v"));
  }
  const std::string fresh = RandomBytes(300 << 10, 8);
  int journal_failures = 0, tail_failures = 0, successes = 0;
  std::vector<uint64_t> sweep = {0, 40, 80, 100, 110, 120, 160, 240, 320};
  for (uint64_t kib = 380; kib <= 460; kib += 4) sweep.push_back(kib);
  sweep.push_back(600);
  for (uint64_t free_kib : sweep) {
    SCOPED_TRACE(std::to_string(free_kib) + " KiB free");
    TempDir dir;
    ScopedTmpfs tmpfs(dir.Join("small"), "size=8m");
    ASSERT_TRUE(tmpfs.mounted());
    const std::string archive = dir.Join("small/a.npz");
    ASSERT_TRUE(WriteArchive(archive, members, {}).ok());
    const FileState before = StateOf(archive);
    FillUntil(dir.Join("small"), free_kib << 10);
    Status s = AppendToArchive(archive, {FromBytes("fresh.bin", fresh)}, {});
    if (s.ok()) {
      ++successes;
      EXPECT_TRUE(HasMember(archive, "fresh.bin"));
    } else {
      EXPECT_EQ(s.code(), ENOSPC) << s.message();
      EXPECT_EQ(s.message().rfind(archive + ": ", 0), 0u) << s.message();
      EXPECT_TRUE(StateOf(archive) == before);
      (s.message().find("npzfs-journal") != std::string::npos ? journal_failures : tail_failures)++;
    }
    EXPECT_EQ(ListDir(dir.Join("small")), (std::vector<std::string>{"a.npz", "filler"}));
  }
  EXPECT_GT(journal_failures, 0);
  EXPECT_GT(tail_failures, 0);
  EXPECT_GT(successes, 0);
}

}  // namespace
}  // namespace npzfs
