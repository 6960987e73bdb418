// Tests for the spool directory: name escaping, locking, resume after a killed writer, and
// finalize into an archive that numpy loads (stored and deflated), including the failure
// paths that must leave both the archive and the spool intact.
#include "core/write/spool.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <functional>
#include <set>

#include "tests/test_util.h"

namespace npzfs {
namespace {

namespace fs = std::filesystem;
using testing::ReadFileOrDie;
using testing::RunPython;
using testing::SmallTmpfs;
using testing::TempDir;
using testing::WriteFileOrDie;

std::span<const std::byte> Bytes(std::string_view s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

// '<u2' frames of 12 elements: element k of frame i is (i * 12 + k) mod 65536.
std::string U16Frames(uint64_t first, uint64_t count) {
  std::string out;
  for (uint64_t v = first * 12; v < (first + count) * 12; ++v) {
    out += static_cast<char>(v & 0xff);
    out += static_cast<char>((v >> 8) & 0xff);
  }
  return out;
}

// Python that checks a member equals `n` such frames of shape (3, 4).
std::string PyExpectFrames(const std::string& key, uint64_t n) {
  return "a = z['" + key + "']\nassert a.dtype == np.dtype('<u2'), a.dtype\nassert a.shape == (" +
         std::to_string(n) + ", 3, 4), a.shape\nassert (a.ravel() == np.arange(" +
         std::to_string(n * 12) + ").astype('<u2')).all()\n";
}

std::string NumpyHeaderFor(uint64_t n) {
  return NpyHeader::ForFrames("<u2", {3, 4}, false, n)->Format();
}

NpyHeader U16Layout() { return *NpyHeader::ForFrames("<u2", {3, 4}, false, 0); }

struct Logged {
  std::vector<std::string> lines;
  SpoolLogFn fn() {
    return [this](const std::string& l) { lines.push_back(l); };
  }
  bool Contains(const std::string& needle) const {
    for (const auto& l : lines)
      if (l.find(needle) != std::string::npos) return true;
    return false;
  }
};

// Writes `bytes` to a member in one writer session starting at `offset`.
Status Record(GrowingMember& m, uint64_t offset, const std::string& bytes) {
  WriterSession w;
  NPZ_RETURN_IF_ERROR(m.BeginWrite(&w, false));
  auto r = m.Write(&w, offset, Bytes(bytes));
  m.EndWrite(&w);
  return r.ok() ? Status::Ok() : r.status();
}

std::set<std::string> ListDir(const std::string& dir) {
  std::set<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) out.insert(e.path().filename());
  return out;
}

// Ends the calling (child) process by SIGKILL, as a daemon killed in the middle of its work:
// no destructor runs, nothing is cleaned up.
[[noreturn]] void DieBySigkill() {
  ::kill(::getpid(), SIGKILL);
  ::_exit(8);
}

// Runs `steps` in a child process, which must end by DieBySigkill() with everything it made
// still alive; a step that fails returns a non-zero code naming it (the child exits with it
// and the test fails here).
void RunInAChildKilledBySigkill(const std::function<int()>& steps) {
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) ::_exit(steps());
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "child status " << status;
}

TEST(Spool, DefaultSpoolDirIsAHiddenSiblingOfTheArchive) {
  EXPECT_EQ(DefaultSpoolDir("/data/run/x.npz"), "/data/run/.x.npz.npzfs-spool");
  EXPECT_EQ(DefaultSpoolDir("x.npz"), "./.x.npz.npzfs-spool");
}

TEST(Spool, MemberNamesEscapeIntoOneFileNameAndBack) {
  const std::vector<std::string> names = {"adc.npy", "dir/sub/b.npy", "50%.npy", ".hidden",
                                          "%2F",     "a/.b",          "..",      "x%",
                                          "%25",     "/lead",         "é.npy"};
  std::set<std::string> escaped;
  for (const auto& n : names) {
    std::string e = EscapeMemberName(n);
    EXPECT_EQ(e.find('/'), std::string::npos) << n;
    EXPECT_NE(e[0], '.') << n;
    auto back = UnescapeMemberName(e);
    ASSERT_TRUE(back.ok()) << n << ": " << back.status().message();
    EXPECT_EQ(*back, n);
    escaped.insert(e);
  }
  EXPECT_EQ(escaped.size(), names.size()) << "distinct names give distinct files";
  EXPECT_EQ(EscapeMemberName("a/b%c"), "a%2Fb%25c");
  for (const char* bad : {"%", "%2", "%zz", "%41", "a/b", ".x", "a%2E", ""}) {
    EXPECT_EQ(UnescapeMemberName(bad).status().code(), EINVAL) << bad;
  }
}

TEST(Spool, OpeningCreatesTheDirectoryAndLocksOutASecondUser) {
  TempDir t;
  const std::string dir = t.Join(".a.npz.npzfs-spool");
  {
    auto first = Spool::Open(dir);
    ASSERT_TRUE(first.ok()) << first.status().message();
    EXPECT_TRUE(fs::is_directory(dir));
    auto second = Spool::Open(dir);
    ASSERT_FALSE(second.ok());
    EXPECT_EQ(second.status().code(), EBUSY);
    EXPECT_NE(second.status().message().find(dir), std::string::npos);
    // The holder is named (here this very process), so a user can tell which one it is.
    EXPECT_NE(second.status().message().find("pid " + std::to_string(::getpid())),
              std::string::npos)
        << second.status().message();
    EXPECT_EQ(RecoverSpool(t.Join("a.npz"), dir, {}).code(), EBUSY);
  }
  EXPECT_TRUE(Spool::Open(dir).ok()) << "the lock goes with the Spool";
  WriteFileOrDie(t.Join("file"), "");
  EXPECT_EQ(Spool::Open(t.Join("file")).status().code(), ENOTDIR);
}

TEST(Spool, FinalizeWritesEveryMemberAndNumpyLoadsThem) {
  TempDir t;
  const std::string archive = t.Join("run.npz");
  const std::string dir = DefaultSpoolDir(archive);
  Logged log;
  auto spool = Spool::Open(dir, log.fn());
  ASSERT_TRUE(spool.ok());
  auto adc = (*spool)->Create("adc.npy");
  ASSERT_TRUE(adc.ok());
  ASSERT_TRUE(Record(**adc, 0, NumpyHeaderFor(77) + U16Frames(0, 5) + "\x01\x02").ok());
  auto raw = (*spool)->Create("sub/raw.npy", U16Layout());
  ASSERT_TRUE(raw.ok());
  ASSERT_TRUE(Record(**raw, 0, U16Frames(0, 7)).ok());
  auto meta = (*spool)->Create("meta.json");
  ASSERT_TRUE(meta.ok());
  ASSERT_TRUE(Record(**meta, 0, "{\"run\": 1}").ok());
  ASSERT_TRUE((*spool)->Create("never.npy").ok());
  ASSERT_TRUE((*spool)->Create("empty.txt").ok());  // an empty verbatim file is kept
  auto empty = (*spool)->Create("empty.npy", U16Layout());
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ((*spool)->Create("adc.npy").status().code(), EEXIST);
  EXPECT_EQ((*spool)->members().size(), 6u);

  ASSERT_TRUE((*spool)->Finalize(archive, {}).ok());
  EXPECT_FALSE(fs::exists(dir)) << "spool removed after success";
  EXPECT_TRUE(log.Contains("adc.npy: dropped 2 bytes")) << "partial frame dropped, logged";
  EXPECT_TRUE(log.Contains("never.npy: never received"));
  EXPECT_EQ((*spool)->Create("late.npy").status().code(), ESHUTDOWN);

  std::string out = RunPython(
      "import numpy as np, zipfile\n"
      "zf = zipfile.ZipFile('" +
      archive +
      "')\n"
      "assert zf.testzip() is None\n"
      "assert sorted(zf.namelist()) == ['adc.npy', 'empty.npy', 'empty.txt', 'meta.json', "
      "'sub/raw.npy'], "
      "zf.namelist()\n"
      "assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())\n"
      "assert zf.read('meta.json') == b'{\"run\": 1}'\n"
      "assert zf.read('empty.txt') == b''\n"
      "z = np.load('" +
      archive + "')\n" + PyExpectFrames("adc", 5) + PyExpectFrames("sub/raw", 7) +
      PyExpectFrames("empty", 0) + "print('ok')\n");
  EXPECT_EQ(out, "ok\n");
}

TEST(Spool, ADeflatedShadowWithoutItsSpoolFileIsRemovedAndTheSpoolGoesAfterFinalize) {
  TempDir t;
  const std::string archive = t.Join("run.npz"), dir = DefaultSpoolDir(archive);
  {
    auto spool = Spool::Open(dir, {}, archive, 6);
    ASSERT_TRUE(spool.ok());
    auto m = (*spool)->Create("k0.npy", U16Layout());
    ASSERT_TRUE(m.ok());
    ASSERT_TRUE(Record(**m, 0, U16Frames(0, 3)).ok());
  }
  // A finalize killed after it removed k1.npy's spool file, before its shadow.
  const std::string gone = dir + "/k1.npy";
  WriteFileOrDie(DeflateShadow::IndexPath(gone), "records of a member already finalized");
  WriteFileOrDie(DeflateShadow::DataPath(gone), "its deflated chunks");
  // A quarantined spool file whose name ends like a shadow's is kept for a human.
  const std::string kept = dir + "/.corrupt-odd.npzfs-deflate";
  WriteFileOrDie(kept, "bytes of a member that could not be resumed");
  Logged log;
  auto spool = Spool::Open(dir, log.fn(), archive);
  ASSERT_TRUE(spool.ok()) << spool.status().message();
  EXPECT_EQ((*spool)->members().size(), 1u);
  EXPECT_FALSE(fs::exists(DeflateShadow::IndexPath(gone)));
  EXPECT_FALSE(fs::exists(DeflateShadow::DataPath(gone)));
  EXPECT_TRUE(log.Contains("deflated shadow without its spool file k1.npy")) << log.lines.size();
  EXPECT_TRUE(fs::exists(kept));
  ASSERT_TRUE(fs::remove(kept));
  ASSERT_TRUE((*spool)->Finalize(archive, {}).ok());
  EXPECT_FALSE(fs::exists(dir));
}

TEST(Spool, ASpoolKeptForFilesThatAreNotMembersKeepsItsLockAndOpensAgain) {
  TempDir t;
  const std::string archive = t.Join("run.npz"), dir = DefaultSpoolDir(archive);
  auto spool = Spool::Open(dir, {}, archive);
  ASSERT_TRUE(spool.ok());
  auto m = (*spool)->Create("a.npy", U16Layout());
  ASSERT_TRUE(m.ok());
  ASSERT_TRUE(Record(**m, 0, U16Frames(0, 2)).ok());
  WriteFileOrDie(dir + "/.someone-elses-dotfile", "x");
  ASSERT_TRUE((*spool)->Finalize(archive, {}).ok());
  spool->reset();
  EXPECT_TRUE(fs::exists(dir + "/.npzfs-lock")) << "without it no mount would take the spool";
  EXPECT_FALSE(fs::exists(dir + "/a.npy"));
  auto again = Spool::Open(dir, {}, archive);
  ASSERT_TRUE(again.ok()) << again.status().message();
  EXPECT_TRUE((*again)->members().empty());
}

TEST(Spool, FinalizeWithCompressionDeflatesTheMembers) {
  TempDir t;
  const std::string archive = t.Join("c.npz");
  auto spool = Spool::Open(DefaultSpoolDir(archive));
  ASSERT_TRUE(spool.ok());
  auto m = (*spool)->Create("adc.npy", U16Layout());
  ASSERT_TRUE(m.ok());
  ASSERT_TRUE(Record(**m, 0, U16Frames(0, 300)).ok());
  WriteOptions opts;
  opts.compress_level = 6;
  std::vector<std::pair<uint64_t, uint64_t>> progress;
  opts.progress = [&](uint64_t done, uint64_t total) { progress.emplace_back(done, total); };
  ASSERT_TRUE((*spool)->Finalize(archive, opts).ok());
  // The caller's progress callback is passed through to the archive writer.
  ASSERT_FALSE(progress.empty());
  for (size_t i = 0; i < progress.size(); ++i) {
    EXPECT_LE(progress[i].first, progress[i].second);
    if (i > 0) {
      EXPECT_GE(progress[i].first, progress[i - 1].first);
    }
  }
  std::string out = RunPython(
      "import numpy as np, zipfile\n"
      "zf = zipfile.ZipFile('" +
      archive +
      "')\n"
      "assert zf.testzip() is None\n"
      "assert zf.getinfo('adc.npy').compress_type == zipfile.ZIP_DEFLATED\n"
      "z = np.load('" +
      archive + "')\n" + PyExpectFrames("adc", 300) + "print('ok')\n");
  EXPECT_EQ(out, "ok\n");
}

TEST(Spool, FinalizeWithNothingWrittenCreatesNoArchive) {
  TempDir t;
  const std::string archive = t.Join("none.npz");
  auto spool = Spool::Open(DefaultSpoolDir(archive));
  ASSERT_TRUE(spool.ok());
  ASSERT_TRUE((*spool)->Create("a.npy").ok());  // created, never written
  ASSERT_TRUE((*spool)->Finalize(archive, {}).ok());
  EXPECT_FALSE(fs::exists(archive));
  EXPECT_FALSE(fs::exists(DefaultSpoolDir(archive)));
}

TEST(Spool, FinalizeAppendsToANumpyArchiveAndKeepsItsMembers) {
  TempDir t;
  const std::string archive = t.Join("old.npz");
  RunPython("import numpy as np\nnp.savez('" + archive + "', old=np.arange(10))\n");
  auto spool = Spool::Open(DefaultSpoolDir(archive));
  ASSERT_TRUE(spool.ok());
  auto m = (*spool)->Create("new.npy", U16Layout());
  ASSERT_TRUE(m.ok());
  ASSERT_TRUE(Record(**m, 0, U16Frames(0, 3)).ok());
  ASSERT_TRUE((*spool)->Finalize(archive, {}).ok());
  std::string out = RunPython(
      "import numpy as np, zipfile\n"
      "assert zipfile.ZipFile('" +
      archive +
      "').testzip() is None\n"
      "z = np.load('" +
      archive +
      "')\n"
      "assert (z['old'] == np.arange(10)).all()\n" +
      PyExpectFrames("new", 3) + "print('ok')\n");
  EXPECT_EQ(out, "ok\n");
}

TEST(Spool, AFinalizeRetriedAfterItsMembersReachedTheArchiveOnlyRemovesTheSpool) {
  TempDir t;
  const std::string archive = t.Join("run.npz");
  const std::string dir = DefaultSpoolDir(archive);
  {
    auto spool = Spool::Open(dir);
    ASSERT_TRUE(spool.ok());
    auto adc = (*spool)->Create("adc.npy", U16Layout());
    ASSERT_TRUE(adc.ok());
    ASSERT_TRUE(Record(**adc, 0, U16Frames(0, 9)).ok());
  }
  // A finalize that died after the archive was durable, before the spool was removed:
  // the spool is back (as after a crash) and the member is already in the archive.
  fs::copy(dir, t.Join("spool-copy"), fs::copy_options::recursive);
  {
    auto spool = Spool::Open(dir);
    ASSERT_TRUE(spool.ok());
    ASSERT_TRUE((*spool)->Finalize(archive, {}).ok());
  }
  fs::rename(t.Join("spool-copy"), dir);
  const std::string before = ReadFileOrDie(archive);
  Logged log;
  auto spool = Spool::Open(dir, log.fn());
  ASSERT_TRUE(spool.ok());
  ASSERT_TRUE((*spool)->Finalize(archive, {}).ok());
  EXPECT_TRUE(log.Contains("member adc.npy is already there with the same bytes"));
  EXPECT_EQ(ReadFileOrDie(archive), before);
  EXPECT_FALSE(fs::exists(dir));
  // Different bytes under the same name are still refused.
  {
    auto again = Spool::Open(dir);
    ASSERT_TRUE(again.ok());
    auto adc = (*again)->Create("adc.npy", U16Layout());
    ASSERT_TRUE(adc.ok());
    ASSERT_TRUE(Record(**adc, 0, U16Frames(1, 9)).ok());
    EXPECT_EQ((*again)->Finalize(archive, {}).code(), EEXIST);
  }
}

TEST(Spool, AFailedFinalizeLeavesTheSpoolIntactAndCanBeRetried) {
  TempDir t;
  const std::string dir = t.Join("spool");
  Logged log;
  auto spool = Spool::Open(dir, log.fn());
  ASSERT_TRUE(spool.ok());
  auto m = (*spool)->Create("adc.npy", U16Layout());
  ASSERT_TRUE(m.ok());
  ASSERT_TRUE(Record(**m, 0, U16Frames(0, 4) + "\x09").ok());
  const std::string spool_file = (*m)->spool_path();
  const std::string before = ReadFileOrDie(spool_file);

  Status s = (*spool)->Finalize(t.Join("missing/dir/x.npz"), {});
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("missing/dir"), std::string::npos) << s.message();
  EXPECT_TRUE(log.Contains("left intact"));
  EXPECT_EQ(ReadFileOrDie(spool_file), before) << "partial frame kept in the spool too";
  EXPECT_TRUE(fs::exists(dir + "/" + std::string(Spool::kLockFileName)));

  // Also a name that is already in the archive: EEXIST, nothing changes.
  const std::string archive = t.Join("x.npz");
  RunPython("import numpy as np\nnp.savez('" + archive + "', adc=np.arange(3))\n");
  const std::string archive_before = ReadFileOrDie(archive);
  EXPECT_EQ((*spool)->Finalize(archive, {}).code(), EEXIST);
  EXPECT_EQ(ReadFileOrDie(archive), archive_before);
  EXPECT_EQ(ReadFileOrDie(spool_file), before);

  // The same spool finalizes once the problem is gone.
  fs::create_directories(t.Join("missing/dir"));
  ASSERT_TRUE((*spool)->Finalize(t.Join("missing/dir/x.npz"), {}).ok());
  EXPECT_EQ(RunPython("import numpy as np\nz = np.load('" + t.Join("missing/dir/x.npz") + "')\n" +
                      PyExpectFrames("adc", 4) + "print('ok')\n"),
            "ok\n");
  EXPECT_FALSE(fs::exists(dir));
}

TEST(Spool, FinalizeOnAFullDiskIsEnospcAndLeavesArchiveAndSpoolIntact) {
  TempDir t;
  SmallTmpfs small(t.Join("small"), "1m");
  if (!small.mounted()) NPZ_SKIP_UNLESS_CI("cannot mount a tmpfs here (needs root)");
  const std::string archive = t.Join("small/data.npz");
  RunPython("import numpy as np\nnp.savez('" + archive + "', old=np.arange(1000))\n");
  const std::string archive_before = ReadFileOrDie(archive);
  const std::string dir = t.Join("spool");  // the spool lives elsewhere, with room
  auto spool = Spool::Open(dir);
  ASSERT_TRUE(spool.ok());
  auto m = (*spool)->Create("big.npy", U16Layout());
  ASSERT_TRUE(m.ok());
  const std::string frames = U16Frames(0, 2 * 1024 * 1024 / 24);  // 2 MiB > 1 MiB of room
  ASSERT_TRUE(Record(**m, 0, frames).ok());
  const std::string spool_before = ReadFileOrDie((*m)->spool_path());

  Status s = (*spool)->Finalize(archive, {});
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), ENOSPC) << s.message();
  EXPECT_EQ(ReadFileOrDie(archive), archive_before);
  EXPECT_EQ(ListDir(t.Join("small")), std::set<std::string>{"data.npz"}) << "no temp file left";
  EXPECT_EQ(ReadFileOrDie((*m)->spool_path()), spool_before);
  EXPECT_EQ((*spool)->members().size(), 1u);
}

TEST(Spool, ASpoolLeftByAKilledWriterIsResumedAndFinalized) {
  TempDir t;
  const std::string archive = t.Join("k.npz");
  const std::string dir = DefaultSpoolDir(archive);
  // The child records like a daemon would and is killed without any cleanup.
  ASSERT_NO_FATAL_FAILURE(RunInAChildKilledBySigkill([&] {
    auto spool = Spool::Open(dir);
    if (!spool.ok()) return 2;
    auto a = (*spool)->Create("a.npy");
    auto b = (*spool)->Create("dir/b.npy", U16Layout());
    auto c = (*spool)->Create("notes.txt");
    if (!a.ok() || !b.ok() || !c.ok()) return 3;
    WriterSession wa, wb, wc;
    (void)(*a)->BeginWrite(&wa, false);
    (void)(*b)->BeginWrite(&wb, false);
    (void)(*c)->BeginWrite(&wc, false);
    std::string a_bytes = NumpyHeaderFor(0) + U16Frames(0, 6) + "\x01\x02\x03";
    if (!(*a)->Write(&wa, 0, Bytes(a_bytes)).ok()) return 4;
    if (!(*b)->Write(&wb, 0, Bytes(U16Frames(0, 2))).ok()) return 5;
    if (!(*b)->Fsync().ok()) return 6;
    if (!(*c)->Write(&wc, 0, Bytes("line 1\n")).ok()) return 7;
    DieBySigkill();
  }));

  Logged log;
  auto spool = Spool::Open(dir, log.fn());
  ASSERT_TRUE(spool.ok()) << spool.status().message();
  auto a = (*spool)->Find("a.npy");
  auto b = (*spool)->Find("dir/b.npy");
  auto c = (*spool)->Find("notes.txt");
  ASSERT_TRUE(a && b && c);
  EXPECT_EQ(a->frame_count(), 6u);
  EXPECT_EQ(b->frame_count(), 2u);
  EXPECT_TRUE(log.Contains("dropped 3 bytes of a partial frame"));
  EXPECT_TRUE(log.Contains("resumed member dir/b.npy"));
  // Recording carries on in visible coordinates.
  const uint64_t h = NumpyHeaderFor(0).size();
  ASSERT_TRUE(Record(*a, h + 6 * 24, U16Frames(6, 4)).ok());
  ASSERT_TRUE(Record(*c, 7, "line 2\n").ok());
  ASSERT_TRUE((*spool)->Finalize(archive, {}).ok());
  std::string out = RunPython(
      "import numpy as np, zipfile\n"
      "zf = zipfile.ZipFile('" +
      archive +
      "')\n"
      "assert zf.testzip() is None\n"
      "assert zf.read('notes.txt') == b'line 1\\nline 2\\n'\n"
      "z = np.load('" +
      archive + "')\n" + PyExpectFrames("a", 10) + PyExpectFrames("dir/b", 2) + "print('ok')\n");
  EXPECT_EQ(out, "ok\n");
}

TEST(Spool, RecoverFinalizesALeftoverSpoolAndExplainsAMissingOne) {
  TempDir t;
  const std::string archive = t.Join("r.npz");
  const std::string dir = DefaultSpoolDir(archive);
  Status none = RecoverSpool(archive, dir, {});
  EXPECT_EQ(none.code(), ENOENT);
  EXPECT_NE(none.message().find("no spool"), std::string::npos);
  EXPECT_NE(none.message().find(dir), std::string::npos);
  {
    auto spool = Spool::Open(dir);
    ASSERT_TRUE(spool.ok());
    auto m = (*spool)->Create("x.npy", U16Layout());
    ASSERT_TRUE(m.ok());
    ASSERT_TRUE(Record(**m, 0, U16Frames(0, 9)).ok());
  }  // the "daemon" goes away without finalizing
  ASSERT_TRUE(RecoverSpool(archive, dir, {}).ok());
  EXPECT_FALSE(fs::exists(dir));
  EXPECT_EQ(RunPython("import numpy as np\nz = np.load('" + archive + "')\n" +
                      PyExpectFrames("x", 9) + "print('ok')\n"),
            "ok\n");
}

TEST(Spool, RecoverDeflatesAtTheLevelTheSpoolRecordsUnlessToldOtherwise) {
  TempDir t;
  // Four archives whose mounts (-o compress=1) died; each recovered another way.
  const std::vector<std::pair<std::string, int>> cases = {{"recorded", Spool::kRecordedLevel},
                                                          {"stored", Spool::kStoredLevel},
                                                          {"one", 1},
                                                          {"nine", 9}};
  std::map<std::string, std::string> sizes;  // compressed size of the member, as printed
  for (const auto& [name, recover_level] : cases) {
    const std::string archive = t.Join(name + ".npz");
    const std::string dir = DefaultSpoolDir(archive);
    {
      auto spool = Spool::Open(dir, {}, archive, 1);
      ASSERT_TRUE(spool.ok()) << spool.status().message();
      auto m = (*spool)->Create("x.npy", U16Layout());
      ASSERT_TRUE(m.ok());
      ASSERT_TRUE(Record(**m, 0, U16Frames(0, 500)).ok());
    }
    EXPECT_NE(ReadFileOrDie(dir + "/.npzfs-lock").find("\ncompress 1\n"), std::string::npos)
        << name;
    Logged log;
    WriteOptions options;
    options.compress_level = recover_level;
    ASSERT_TRUE(RecoverSpool(archive, dir, options, log.fn()).ok()) << name;
    EXPECT_EQ(log.Contains("deflated at level 1"), recover_level == Spool::kRecordedLevel) << name;
    const char* expected = recover_level == Spool::kStoredLevel ? "ZIP_STORED" : "ZIP_DEFLATED";
    sizes[name] = RunPython(
        "import numpy as np, zipfile\n"
        "zf = zipfile.ZipFile('" +
        archive +
        "')\n"
        "assert zf.testzip() is None\n"
        "assert zf.getinfo('x.npy').compress_type == zipfile." +
        expected + "\nz = np.load('" + archive + "')\n" + PyExpectFrames("x", 500) +
        "print(zf.getinfo('x.npy').compress_size)\n");
  }
  // The same bytes at level 1 and at 9 differ in size: the recorded level was level 1.
  EXPECT_EQ(sizes["recorded"], sizes["one"]);
  EXPECT_NE(sizes["one"], sizes["nine"]);
}

TEST(Spool, AMountWithAnotherLevelRecordsItsOwnAndOneKeepingTheRecordChangesNothing) {
  TempDir t;
  const std::string archive = t.Join("a.npz"), dir = DefaultSpoolDir(archive);
  const std::string lock = dir + "/.npzfs-lock";
  {
    auto spool = Spool::Open(dir, {}, archive, 6);
    ASSERT_TRUE(spool.ok());
    EXPECT_EQ((*spool)->recorded_compress_level(), std::nullopt);  // a new spool
  }
  EXPECT_EQ(ReadFileOrDie(lock), archive + "\ncompress 6\n");
  {
    auto spool = Spool::Open(dir, {}, archive, Spool::kRecordedLevel);
    ASSERT_TRUE(spool.ok());
    EXPECT_EQ((*spool)->recorded_compress_level(), std::optional<int>(6));
  }
  EXPECT_EQ(ReadFileOrDie(lock), archive + "\ncompress 6\n");
  {
    auto spool = Spool::Open(dir, {}, archive, Spool::kStoredLevel);
    ASSERT_TRUE(spool.ok());
    EXPECT_EQ((*spool)->recorded_compress_level(), std::optional<int>(6));
  }
  EXPECT_EQ(ReadFileOrDie(lock), archive + "\n");
  // Only a whole line "compress D" counts; lines this npzfs does not know are skipped.
  const std::vector<std::pair<std::string, std::optional<int>>> records = {
      {"\nsomething new\ncompress 12\ncompress 3\n", 3},
      {"\ncompress 4294967299\n", std::nullopt},
      {"\ncompress3\n", std::nullopt},
      {"\ncompress +3\n", std::nullopt},
      {"\ncompress\t3\n", std::nullopt},
      {"\ncompress 3", std::nullopt},  // cut short
      {std::string("\ncompress 3\n\0\0", 14), 3},
  };
  for (const auto& [tail, level] : records) {
    WriteFileOrDie(lock, archive + tail);
    auto spool = Spool::Open(dir, {}, archive);
    ASSERT_TRUE(spool.ok()) << spool.status().message();
    EXPECT_EQ((*spool)->recorded_compress_level(), level) << tail;
  }
  // Two levels (a hand edit): the last counts, and that is said.
  WriteFileOrDie(lock, archive + "\ncompress 2\ncompress 7\n");
  {
    Logged log;
    auto twice = Spool::Open(dir, log.fn(), archive);
    ASSERT_TRUE(twice.ok()) << twice.status().message();
    EXPECT_EQ((*twice)->recorded_compress_level(), std::optional<int>(7));
    EXPECT_TRUE(log.Contains("records two compression levels (compress 2, then compress 7)"))
        << log.lines.size();
  }
  EXPECT_EQ(Spool::Open(dir, {}, archive, 10).status().code(), EINVAL);
  EXPECT_EQ(Spool::Open(dir, {}, archive, -3).status().code(), EINVAL);
}

TEST(Spool, RemoveAndRenameFollowTheAppendOnlyRules) {
  TempDir t;
  auto spool = Spool::Open(t.Join("s"));
  ASSERT_TRUE(spool.ok());
  Spool& s = **spool;
  auto empty = s.Create("empty.npy");
  auto full = s.Create("full.npy", U16Layout());
  ASSERT_TRUE(empty.ok() && full.ok());
  ASSERT_TRUE(Record(**full, 0, U16Frames(0, 1)).ok());

  EXPECT_EQ(s.Remove("full.npy").code(), EPERM);
  EXPECT_TRUE(fs::exists((*full)->spool_path()));
  EXPECT_EQ(s.Rename("full.npy", "other.npy").code(), EPERM);
  EXPECT_EQ(s.Rename("empty.npy", "full.npy").code(), EEXIST);
  EXPECT_EQ(s.Remove("ghost.npy").code(), ENOENT);

  const std::string old_spool_file = (*empty)->spool_path();
  ASSERT_TRUE(s.Rename("empty.npy", "d/renamed.npy").ok());
  EXPECT_EQ(s.Find("empty.npy"), nullptr);
  ASSERT_NE(s.Find("d/renamed.npy"), nullptr);
  EXPECT_TRUE(fs::exists(t.Join("s/d%2Frenamed.npy")));
  EXPECT_FALSE(fs::exists(old_spool_file));
  // The renamed member is the same object, now under its new name.
  EXPECT_EQ(s.Find("d/renamed.npy"), *empty);
  EXPECT_EQ((*empty)->name(), "d/renamed.npy");
  EXPECT_EQ((*empty)->spool_path(), t.Join("s/d%2Frenamed.npy"));
  ASSERT_TRUE(s.Remove("d/renamed.npy").ok());
  EXPECT_FALSE(fs::exists(t.Join("s/d%2Frenamed.npy")));
  // A declared header is not data: renaming to a verbatim name starts that file empty.
  auto declared = s.Create("h.npy", U16Layout());
  ASSERT_TRUE(declared.ok());
  ASSERT_TRUE(s.Rename("h.npy", "h.txt").ok());
  EXPECT_EQ(s.Find("h.txt")->visible_size(), 0u);
  EXPECT_EQ(s.Find("full.npy")->visible_size(), NumpyHeaderFor(1).size() + 24);
}

TEST(Spool, ASpoolDirectoryRemovedByAnotherProgramStillFinalizesWithoutAnError) {
  TempDir t;
  const std::string dir = t.Join("s"), archive = t.Join("a.npz");
  auto spool = Spool::Open(dir);
  ASSERT_TRUE(spool.ok());
  auto adc = (*spool)->Create("adc.npy");
  ASSERT_TRUE(adc.ok());
  ASSERT_TRUE(Record(**adc, 0, NumpyHeaderFor(3) + U16Frames(0, 3)).ok());
  fs::remove_all(dir);  // a /tmp cleaner; the open spool file still holds the frames
  Status finalized = (*spool)->Finalize(archive, {});
  ASSERT_TRUE(finalized.ok()) << finalized.message();
  EXPECT_EQ(RunPython("import numpy as np\n"
                      "z = np.load('" +
                      archive + "')\n" + PyExpectFrames("adc", 3) + "print('ok')\n"),
            "ok\n");
}

TEST(Spool, ASpoolRecordsItsArchiveAndIsRefusedToAnother) {
  TempDir t;
  const std::string dir = t.Join("s"), a = t.Join("a.npz"), b = t.Join("b.npz");
  {
    auto spool = Spool::Open(dir, {}, a);
    ASSERT_TRUE(spool.ok()) << spool.status().message();
    ASSERT_TRUE((*spool)->Create("x.txt").ok());
  }  // a daemon of a.npz died: its spool stays
  EXPECT_EQ(ReadFileOrDie(dir + "/.npzfs-lock"), a + "\n");
  auto other = Spool::Open(dir, {}, b);
  ASSERT_FALSE(other.ok());
  EXPECT_EQ(other.status().code(), EINVAL);
  EXPECT_NE(other.status().message().find("the spool of " + a + ", not of " + b), std::string::npos)
      << other.status().message();
  EXPECT_TRUE(fs::exists(dir + "/x.txt"));
  // Its own archive, by another path to the same directory, resumes it.
  fs::create_directory_symlink(t.path(), t.Join("link"));
  auto own = Spool::Open(dir, {}, t.Join("link") + "/a.npz");
  ASSERT_TRUE(own.ok()) << own.status().message();
  EXPECT_EQ((*own)->members().size(), 1u);
}

TEST(Spool, MembersInASpoolThatRecordsNoArchiveAreTakenOnlyByTheArchiveItSitsBeside) {
  TempDir t;
  const std::string a = t.Join("a.npz"), b = t.Join("b.npz");
  const std::string shared = t.Join("shared"), beside = DefaultSpoolDir(a);
  for (const std::string& dir : {shared, beside}) {
    auto spool = Spool::Open(dir, {}, a, 3);
    ASSERT_TRUE(spool.ok()) << spool.status().message();
    ASSERT_TRUE((*spool)->Create("x.txt").ok());
  }
  WriteFileOrDie(shared + "/.npzfs-lock", "");  // emptied by hand, or an older npzfs
  auto refused = Spool::Open(shared, {}, b);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), EINVAL);
  EXPECT_NE(refused.status().message().find("holds new members but records no archive"),
            std::string::npos)
      << refused.status().message();
  EXPECT_EQ(ReadFileOrDie(shared + "/.npzfs-lock"), "");
  // Beside its archive the spool is that archive's; a broken level line is said, not guessed.
  WriteFileOrDie(beside + "/.npzfs-lock", "\ncompress 99\n");
  Logged log;
  auto taken = Spool::Open(beside, log.fn(), a);
  ASSERT_TRUE(taken.ok()) << taken.status().message();
  EXPECT_EQ((*taken)->members().size(), 1u);
  EXPECT_EQ((*taken)->recorded_compress_level(), std::nullopt);
  EXPECT_TRUE(log.Contains("\"compress 99\" names no compression level")) << log.lines.size();
}

TEST(Spool, ARecordCutShortInItsFirstLineCountsAsNone) {
  TempDir t;
  const std::string a = t.Join("a.npz"), dir = DefaultSpoolDir(a);
  ASSERT_TRUE(Spool::Open(dir, {}, a).ok());
  // A crash while the first record was written (before any member): part of another path.
  const std::string torn = t.Join("other-archiv");
  WriteFileOrDie(dir + "/.npzfs-lock", torn);
  auto spool = Spool::Open(dir, {}, a);
  ASSERT_TRUE(spool.ok()) << spool.status().message();
  EXPECT_EQ(ReadFileOrDie(dir + "/.npzfs-lock").substr(0, a.size() + 1), a + "\n");
  spool->reset();
  // The same bytes with their newline are a whole record: another archive's spool.
  WriteFileOrDie(dir + "/.npzfs-lock", torn + "\n");
  EXPECT_EQ(Spool::Open(dir, {}, a).status().code(), EINVAL);
}

TEST(Spool, ASpoolMovedWithItsArchivesDirectoryIsTakenOverOnlyOnceTheOldArchiveIsGone) {
  TempDir t;
  fs::create_directories(t.Join("day1"));
  const std::string old_archive = t.Join("day1/run.npz");
  WriteFileOrDie(old_archive, "an archive");
  {
    auto spool = Spool::Open(DefaultSpoolDir(old_archive), {}, old_archive);
    ASSERT_TRUE(spool.ok()) << spool.status().message();
    ASSERT_TRUE((*spool)->Create("x.txt").ok());
  }  // its daemon died
  // Copied: the old archive is still there, and the spool stays its own.
  fs::copy(t.Join("day1"), t.Join("copy"), fs::copy_options::recursive);
  const std::string copied = t.Join("copy/run.npz");
  auto refused = Spool::Open(DefaultSpoolDir(copied), {}, copied);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("the spool of " + old_archive), std::string::npos)
      << refused.status().message();
  // Moved: the spool where the moved archive keeps its spool is taken over, with a log line.
  fs::rename(t.Join("day1"), t.Join("moved"));
  const std::string moved = t.Join("moved/run.npz");
  std::vector<std::string> lines;
  auto taken = Spool::Open(
      DefaultSpoolDir(moved), [&](const std::string& l) { lines.push_back(l); }, moved);
  ASSERT_TRUE(taken.ok()) << taken.status().message();
  EXPECT_EQ((*taken)->members().size(), 1u);
  EXPECT_EQ(ReadFileOrDie(DefaultSpoolDir(moved) + "/.npzfs-lock").rfind(moved + "\n", 0), 0u);
  ASSERT_FALSE(lines.empty());
  EXPECT_NE(lines.front().find("the spool of " + old_archive + ", which is "), std::string::npos)
      << lines.front();
  EXPECT_NE(lines.front().find(moved), std::string::npos) << lines.front();
  taken->reset();
  // A spool elsewhere (-o spool=DIR) whose archive is gone is still refused: nothing ties it
  // to this archive.
  fs::rename(DefaultSpoolDir(moved), t.Join("elsewhere"));
  WriteFileOrDie(t.Join("elsewhere/.npzfs-lock"), old_archive + "\n");
  auto elsewhere = Spool::Open(t.Join("elsewhere"), {}, moved);
  ASSERT_FALSE(elsewhere.ok());
  EXPECT_EQ(elsewhere.status().code(), EINVAL);
}

TEST(Spool, OnlyADirectoryMovedWithItsSpoolHandsItToTheArchiveOfThatNameInIt) {
  TempDir t;
  fs::create_directories(t.Join("day1"));
  fs::create_directories(t.Join("d2"));
  const std::string a = t.Join("day1/a.npz"), b = t.Join("day1/b.npz");
  WriteFileOrDie(a, "an archive");
  WriteFileOrDie(b, "another");
  // A's daemon wrote into the spool where b.npz keeps its by default (-o spool=), and died;
  // a.npz was then moved out: the spool is not b.npz's.
  {
    auto spool = Spool::Open(DefaultSpoolDir(b), {}, a);
    ASSERT_TRUE(spool.ok()) << spool.status().message();
    ASSERT_TRUE((*spool)->Create("x.txt").ok());
  }
  WriteFileOrDie(DefaultSpoolDir(b) + "/.npzfs-lock", a + "\n");  // no identity to follow
  fs::rename(a, t.Join("d2/a.npz"));
  auto refused = Spool::Open(DefaultSpoolDir(b), {}, b);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("the spool of " + a + ", not of " + b),
            std::string::npos)
      << refused.status().message();
  // A spool of a.npz beside it, the directory renamed: the a.npz there takes it over.
  fs::rename(DefaultSpoolDir(b), DefaultSpoolDir(a));
  fs::rename(t.Join("d2/a.npz"), a);
  fs::rename(t.Join("day1"), t.Join("day2"));
  const std::string moved = t.Join("day2/a.npz");
  Logged log;
  auto taken = Spool::Open(DefaultSpoolDir(moved), log.fn(), moved);
  ASSERT_TRUE(taken.ok()) << taken.status().message();
  EXPECT_TRUE(log.Contains("which is gone; taken over by " + moved));
}

TEST(Spool, TheMovedArchiveItselfIsRecognisedByItsIdentityWhereverItsSpoolIs) {
  TempDir t;
  const std::string spool_dir = t.Join("scratch");
  fs::create_directories(t.Join("current"));
  const std::string archive = t.Join("current/run.npz");
  WriteFileOrDie(archive, "an archive");
  struct statx sx {};
  ASSERT_EQ(statx(AT_FDCWD, archive.c_str(), 0, STATX_BTIME, &sx), 0);
  if ((sx.stx_mask & STATX_BTIME) == 0) GTEST_SKIP() << "no birth times on this filesystem";
  {
    auto spool = Spool::Open(spool_dir, {}, archive);
    ASSERT_TRUE(spool.ok()) << spool.status().message();
    ASSERT_TRUE((*spool)->Create("x.txt").ok());
  }
  fs::rename(t.Join("current"), t.Join("2026-12-01"));
  fs::create_directories(t.Join("current"));
  WriteFileOrDie(archive, "a new archive at the old path");
  // The moved archive takes its spool, although the spool is not beside it and its recorded
  // path names a file again.
  std::vector<std::string> lines;
  auto moved = Spool::Open(
      spool_dir, [&](const std::string& l) { lines.push_back(l); }, t.Join("2026-12-01/run.npz"));
  ASSERT_TRUE(moved.ok()) << moved.status().message();
  EXPECT_EQ((*moved)->members().size(), 1u);
  ASSERT_FALSE(lines.empty());
  EXPECT_NE(lines.front().find("which is now " + t.Join("2026-12-01/run.npz")), std::string::npos)
      << lines.front();
  moved->reset();
  // Now recorded as the moved archive's: the new file at the old path is refused, and told
  // that the file there is not the one the spool was for.
  auto other = Spool::Open(spool_dir, {}, archive);
  ASSERT_FALSE(other.ok());
  EXPECT_NE(other.status().message().find("the spool of " + t.Join("2026-12-01/run.npz")),
            std::string::npos)
      << other.status().message();
}

TEST(Spool, ASpoolWhoseRecordAFullDiskRefusedTakesNoMemberUntilItIsWritten) {
  TempDir t;
  const std::string small = t.Join("small");
  SmallTmpfs tmpfs(small, "64k");
  if (!tmpfs.mounted()) NPZ_SKIP_UNLESS_CI("cannot mount a tmpfs here (needs root)");
  const std::string dir = small + "/spool";
  fs::create_directories(dir);
  WriteFileOrDie(dir + "/.npzfs-lock", "");  // an earlier spool that recorded nothing
  const std::string filler = small + "/filler";
  {
    const int fd = ::open(filler.c_str(), O_WRONLY | O_CREAT, 0644);
    ASSERT_GE(fd, 0);
    const std::string block(4096, 'x');
    while (::write(fd, block.data(), block.size()) > 0) {
    }
    ::close(fd);
  }
  const std::string archive = t.Join("a.npz");
  std::vector<std::string> lines;
  auto spool = Spool::Open(
      dir, [&](const std::string& l) { lines.push_back(l); }, archive);
  ASSERT_TRUE(spool.ok()) << spool.status().message();  // a mount would still work
  EXPECT_EQ(ReadFileOrDie(dir + "/.npzfs-lock"), "");
  auto refused = (*spool)->Create("x.txt");
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), ENOSPC);
  EXPECT_TRUE((*spool)->members().empty());
  fs::remove(filler);
  auto created = (*spool)->Create("x.txt");
  ASSERT_TRUE(created.ok()) << created.status().message();
  EXPECT_EQ(ReadFileOrDie(dir + "/.npzfs-lock"), archive + "\n");
}

TEST(Spool, TheArchivesOwnDirectoryIsNeverItsSpoolEvenEmptyOrWithALockFile) {
  TempDir t;
  const std::string dir = t.Join("d");
  fs::create_directories(dir);
  const std::string archive = dir + "/new.npz";  // not made yet (-o create)
  auto spool = Spool::Open(dir, {}, archive);
  ASSERT_FALSE(spool.ok());
  EXPECT_EQ(spool.status().code(), EINVAL);
  EXPECT_NE(spool.status().message().find("cannot be its spool"), std::string::npos);
  WriteFileOrDie(dir + "/.npzfs-lock", "");
  WriteFileOrDie(archive, "an archive made meanwhile");
  EXPECT_EQ(RecoverSpool(archive, dir, WriteOptions{}).code(), EINVAL);
  EXPECT_EQ(ReadFileOrDie(archive), "an archive made meanwhile");
  EXPECT_FALSE(fs::exists(dir + "/.npzfs-lock") && fs::file_size(dir + "/.npzfs-lock") > 0);
}

TEST(Spool, AnExistingDirectoryOfOtherFilesIsNeverTakenForASpool) {
  TempDir t;
  const std::string dir = t.Join("data");
  fs::create_directories(dir);
  WriteFileOrDie(dir + "/notes.txt", "mine");
  WriteFileOrDie(dir + "/x.npy", NumpyHeaderFor(1) + U16Frames(0, 1));
  auto spool = Spool::Open(dir);
  ASSERT_FALSE(spool.ok());
  EXPECT_EQ(spool.status().code(), EINVAL);
  EXPECT_NE(spool.status().message().find(dir + ": not an npzfs spool"), std::string::npos)
      << spool.status().message();
  // Nothing in it was touched, and no lock file was made.
  EXPECT_EQ(ReadFileOrDie(dir + "/notes.txt"), "mine");
  EXPECT_TRUE(fs::exists(dir + "/x.npy"));
  EXPECT_FALSE(fs::exists(dir + "/.npzfs-lock"));
  // A lock file that is no file is no spool either, and says so.
  fs::create_directory(dir + "/.npzfs-lock");
  auto odd = Spool::Open(dir);
  ASSERT_FALSE(odd.ok());
  EXPECT_NE(odd.status().message().find("its .npzfs-lock is a directory"), std::string::npos)
      << odd.status().message();
  EXPECT_EQ(ReadFileOrDie(dir + "/notes.txt"), "mine");
}

TEST(Spool, AnExistingEmptyDirectoryBecomesASpoolButRecoverWantsARealOne) {
  TempDir t;
  const std::string dir = t.Join("empty");
  fs::create_directories(dir);
  Status recovered = RecoverSpool(t.Join("a.npz"), dir, WriteOptions{});
  EXPECT_EQ(recovered.code(), EINVAL) << recovered.message();
  EXPECT_TRUE(fs::is_directory(dir));  // not removed as a finished spool
  auto spool = Spool::Open(dir);
  ASSERT_TRUE(spool.ok()) << spool.status().message();
  EXPECT_TRUE((*spool)->members().empty());
  EXPECT_TRUE(fs::exists(dir + "/.npzfs-lock"));
}

TEST(Spool, AnUnreadableSpoolFileIsSetAsideNotFatal) {
  TempDir t;
  const std::string dir = t.Join("s");
  fs::create_directories(dir);
  WriteFileOrDie(dir + "/.npzfs-lock", "");  // made with every spool
  WriteFileOrDie(dir + "/bad.npy", "not a numpy file");
  WriteFileOrDie(dir + "/%zz", "bad escape");
  WriteFileOrDie(dir + "/good.npy", NumpyHeaderFor(1) + U16Frames(0, 1));
  Logged log;
  auto spool = Spool::Open(dir, log.fn());
  ASSERT_TRUE(spool.ok()) << spool.status().message();
  EXPECT_EQ((*spool)->members().size(), 1u);
  EXPECT_NE((*spool)->Find("good.npy"), nullptr);
  EXPECT_TRUE(fs::exists(dir + "/.corrupt-bad.npy"));
  EXPECT_TRUE(fs::exists(dir + "/.corrupt-%zz"));
  EXPECT_TRUE(log.Contains("bad.npy: cannot resume"));
}

// ------------------------------------------------------------ member paths longer than a file name

// A member path longer than a file name (NAME_MAX), with every character escaping touches: a
// leading '.', '/' and '%'. Every component fits in a file name, as the kernel demands.
std::string LongName(char c, const std::string& ext = ".npy") {
  return "." + std::string(200, c) + "/50%/" + std::string(240, c) + "/" + std::string(230, c) +
         ext;
}

// The spool directory's files, without the lock.
std::set<std::string> SpoolFiles(const std::string& dir) {
  std::set<std::string> out = ListDir(dir);
  out.erase(std::string(Spool::kLockFileName));
  return out;
}

// The one "%L<id>" data file in `dir` (fails the test if there is not exactly one).
std::string HashedDataFile(const std::string& dir) {
  std::vector<std::string> found;
  for (const auto& f : ListDir(dir)) {
    if (f.starts_with("%L")) found.push_back(f);
  }
  EXPECT_EQ(found.size(), 1u);
  return found.empty() ? std::string("%L?") : found[0];
}

std::string NameFileOf(const std::string& data_file) { return "%N" + data_file.substr(2); }

TEST(Spool, EveryFileNameDerivedFromAnEscapedSpoolFileFitsInAFileName) {
  const size_t max = MaxEscapedSpoolFileName();
  EXPECT_EQ(max, 234u) << "core/README.md (\"Spool directory\") documents this limit";
  const std::string longest = "/d/" + std::string(max, 'a');
  for (const std::string& side :
       {DeflateShadow::DataPath(longest), DeflateShadow::IndexPath(longest)}) {
    EXPECT_LE(BaseName(side).size(), size_t{NAME_MAX}) << side;
  }
  EXPECT_LE((".corrupt-" + std::string(max, 'a')).size(), size_t{NAME_MAX});

  // Up to the limit a spool file is the escaped name, as it always was; beyond, it is hashed.
  TempDir t;
  auto spool = Spool::Open(t.Join("s"));
  ASSERT_TRUE(spool.ok());
  const std::string at_limit = "d/" + std::string(max - 8, 'x') + ".npy";  // "/" -> "%2F"
  ASSERT_EQ(EscapeMemberName(at_limit).size(), max);
  auto a = (*spool)->Create(at_limit);
  ASSERT_TRUE(a.ok()) << a.status().message();
  EXPECT_EQ((*a)->spool_path(), t.Join("s/" + EscapeMemberName(at_limit)));
  auto b = (*spool)->Create("d/x" + at_limit.substr(2));
  ASSERT_TRUE(b.ok()) << b.status().message();
  EXPECT_TRUE(BaseName((*b)->spool_path()).starts_with("%L")) << (*b)->spool_path();
}

TEST(Spool, AMemberPathLongerThanAFileNameIsWrittenReadAndFinalizedWithItsExactName) {
  TempDir t;
  const std::string archive = t.Join("long.npz");
  const std::string dir = DefaultSpoolDir(archive);
  const std::string npy = LongName('a'), txt = LongName('b', ".txt");
  ASSERT_GT(npy.size(), size_t{NAME_MAX});
  auto spool = Spool::Open(dir);
  ASSERT_TRUE(spool.ok());
  auto m = (*spool)->Create(npy, U16Layout());
  ASSERT_TRUE(m.ok()) << m.status().message();
  ASSERT_TRUE(Record(**m, 0, U16Frames(0, 5)).ok());
  auto v = (*spool)->Create(txt);
  ASSERT_TRUE(v.ok()) << v.status().message();
  ASSERT_TRUE(Record(**v, 0, "verbatim bytes\n").ok());
  EXPECT_EQ((*spool)->Find(npy), *m);
  EXPECT_EQ((*m)->frame_count(), 5u);
  // Read back as a reader sees it.
  std::string shown((*m)->visible_size(), '\0');
  auto got = (*m)->ReadAt(0, std::span(reinterpret_cast<std::byte*>(shown.data()), shown.size()));
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(shown, NumpyHeaderFor(5) + U16Frames(0, 5));

  // Two pairs of a hashed data file and its name file, each a short file name.
  const std::set<std::string> files = SpoolFiles(dir);
  EXPECT_EQ(files.size(), 4u);
  for (const std::string& f : files) {
    EXPECT_LE(f.size(), size_t{NAME_MAX}) << f;
    EXPECT_TRUE(f.starts_with("%L") || f.starts_with("%N")) << f;
    if (f.starts_with("%L")) {
      EXPECT_EQ(files.count(NameFileOf(f)), 1u) << f;
    }
  }
  EXPECT_EQ(ReadFileOrDie(dir + "/" + NameFileOf(BaseName((*m)->spool_path()))), npy);

  ASSERT_TRUE((*spool)->Finalize(archive, {}).ok());
  EXPECT_FALSE(fs::exists(dir));
  EXPECT_EQ(RunPython("import numpy as np, zipfile\n"
                      "zf = zipfile.ZipFile('" +
                      archive +
                      "')\n"
                      "assert zf.testzip() is None\n"
                      "assert sorted(zf.namelist()) == sorted(['" +
                      npy + "', '" + txt +
                      "']), zf.namelist()\n"
                      "assert zf.read('" +
                      txt +
                      "') == b'verbatim bytes\\n'\n"
                      "z = np.load('" +
                      archive + "')\n" + PyExpectFrames(npy.substr(0, npy.size() - 4), 5) +
                      "print('ok')\n"),
            "ok\n");
}

TEST(Spool, AMemberPathLongerThanAFileNameResumesAfterACrash) {
  TempDir t;
  const std::string archive = t.Join("k.npz");
  const std::string dir = DefaultSpoolDir(archive);
  const std::string npy = LongName('k'), txt = LongName('t', ".txt");
  ASSERT_NO_FATAL_FAILURE(RunInAChildKilledBySigkill([&] {
    auto spool = Spool::Open(dir);
    if (!spool.ok()) return 2;
    auto a = (*spool)->Create(npy);
    auto c = (*spool)->Create(txt);
    if (!a.ok() || !c.ok()) return 3;
    if (!Record(**a, 0, NumpyHeaderFor(0) + U16Frames(0, 6) + "\x01\x02\x03").ok()) return 4;
    if (!Record(**c, 0, "line 1\n").ok()) return 5;
    DieBySigkill();
  }));

  Logged log;
  auto spool = Spool::Open(dir, log.fn());
  ASSERT_TRUE(spool.ok()) << spool.status().message();
  ASSERT_EQ((*spool)->members().size(), 2u);
  auto a = (*spool)->Find(npy);
  auto c = (*spool)->Find(txt);
  ASSERT_TRUE(a && c);
  EXPECT_EQ(a->frame_count(), 6u);
  EXPECT_TRUE(log.Contains("resumed member " + npy + " (6 frames"));
  EXPECT_TRUE(log.Contains("dropped 3 bytes of a partial frame"));
  ASSERT_TRUE(Record(*a, NumpyHeaderFor(0).size() + 6 * 24, U16Frames(6, 2)).ok());
  ASSERT_TRUE(Record(*c, 7, "line 2\n").ok());
  ASSERT_TRUE((*spool)->Finalize(archive, {}).ok());
  EXPECT_EQ(RunPython("import numpy as np, zipfile\n"
                      "zf = zipfile.ZipFile('" +
                      archive + "')\nassert zf.read('" + txt +
                      "') == b'line 1\\nline 2\\n'\n"
                      "z = np.load('" +
                      archive + "')\n" + PyExpectFrames(npy.substr(0, npy.size() - 4), 8) +
                      "print('ok')\n"),
            "ok\n");
}

TEST(Spool, RenamesBetweenLongAndShortNamesMoveTheNameFileAndSurviveAReopen) {
  TempDir t;
  const std::string dir = t.Join("s");
  const std::string long1 = LongName('p'), long2 = LongName('q');
  // Reopens the spool (as the next mount would) and checks it holds exactly `name`.
  auto expect_only = [&](const std::string& name, std::unique_ptr<Spool>& spool) {
    spool.reset();
    Logged log;
    auto again = Spool::Open(dir, log.fn());
    ASSERT_TRUE(again.ok()) << again.status().message();
    spool = std::move(*again);
    ASSERT_EQ(spool->members().size(), 1u) << name;
    EXPECT_EQ(spool->members()[0]->name(), name);
    EXPECT_EQ(spool->members()[0]->layout(), U16Layout().WithFrameCount(0)) << name;
    EXPECT_FALSE(log.Contains("cannot resume")) << name;
    EXPECT_FALSE(log.Contains("without its data file")) << name;
  };
  auto opened = Spool::Open(dir);
  ASSERT_TRUE(opened.ok());
  std::unique_ptr<Spool> spool = std::move(*opened);
  ASSERT_TRUE(spool->Create("short.npy", U16Layout()).ok());

  ASSERT_TRUE(spool->Rename("short.npy", long1).ok());  // short -> long
  const std::string data1 = HashedDataFile(dir);
  EXPECT_EQ(SpoolFiles(dir), (std::set<std::string>{data1, NameFileOf(data1)}));
  EXPECT_EQ(ReadFileOrDie(dir + "/" + NameFileOf(data1)), long1);
  EXPECT_EQ(spool->Find(long1)->spool_path(), dir + "/" + data1);
  expect_only(long1, spool);

  ASSERT_TRUE(spool->Rename(long1, long2).ok());  // long -> long
  const std::string data2 = HashedDataFile(dir);
  EXPECT_NE(data2, data1);
  EXPECT_EQ(SpoolFiles(dir), (std::set<std::string>{data2, NameFileOf(data2)}));
  EXPECT_EQ(ReadFileOrDie(dir + "/" + NameFileOf(data2)), long2);
  expect_only(long2, spool);

  ASSERT_TRUE(spool->Rename(long2, "d/back.npy").ok());  // long -> short
  EXPECT_EQ(SpoolFiles(dir), (std::set<std::string>{"d%2Fback.npy"}));
  expect_only("d/back.npy", spool);

  // A failed rename leaves no name file behind; an unlink removes both files.
  auto full = spool->Create(long1, U16Layout());
  ASSERT_TRUE(full.ok());
  ASSERT_TRUE(Record(**full, 0, U16Frames(0, 1)).ok());
  EXPECT_EQ(spool->Rename(long1, long2).code(), EPERM);
  EXPECT_EQ(spool->Rename("d/back.npy", long1).code(), EEXIST);
  EXPECT_EQ(SpoolFiles(dir).size(), 3u);
  ASSERT_TRUE(spool->Rename("d/back.npy", long2).ok());
  EXPECT_EQ(spool->Remove(long1).code(), EPERM);
  ASSERT_TRUE(spool->Remove(long2).ok());
  EXPECT_EQ(spool->Find(long2), nullptr);
  const std::string left = HashedDataFile(dir);
  EXPECT_EQ(SpoolFiles(dir), (std::set<std::string>{left, NameFileOf(left)}));
  EXPECT_EQ(spool->Find(long1)->spool_path(), dir + "/" + left);
}

// The crash windows of the hashed layout, each left on disk as a crash would leave it: the
// name file is made durable before its data file exists and removed only after it is gone.
TEST(Spool, ANameFileLeftWithoutItsDataFileByACrashIsRemovedWithALogLine) {
  TempDir t;
  const std::string dir = t.Join("s");
  const std::string created = LongName('c'), renamed = LongName('r');
  std::string created_data, renamed_data;
  {
    auto spool = Spool::Open(dir);
    ASSERT_TRUE(spool.ok());
    ASSERT_TRUE((*spool)->Create(created).ok());
    created_data = HashedDataFile(dir);
    ASSERT_TRUE((*spool)->Create("short.npy", U16Layout()).ok());
    ASSERT_TRUE((*spool)->Rename("short.npy", renamed).ok());
    for (const auto& f : SpoolFiles(dir)) {
      if (f.starts_with("%L") && f != created_data) renamed_data = f;
    }
    ASSERT_FALSE(renamed_data.empty());
  }
  // A create cut short before its data file was made (or a remove after it was removed).
  ASSERT_EQ(::unlink((dir + "/" + created_data).c_str()), 0);
  // A rename short -> long cut short before its rename(2) (or long -> short after it).
  ASSERT_EQ(::rename((dir + "/" + renamed_data).c_str(), (dir + "/short.npy").c_str()), 0);

  Logged log;
  auto spool = Spool::Open(dir, log.fn());
  ASSERT_TRUE(spool.ok()) << spool.status().message();
  ASSERT_EQ((*spool)->members().size(), 1u) << "no member invented, none lost";
  ASSERT_NE((*spool)->Find("short.npy"), nullptr);
  EXPECT_EQ((*spool)->Find("short.npy")->layout(), U16Layout().WithFrameCount(0));
  EXPECT_EQ(SpoolFiles(dir), (std::set<std::string>{"short.npy"}));
  EXPECT_TRUE(log.Contains(dir + "/" + NameFileOf(created_data) + ": name file of member " +
                           created + " without its data file " + created_data));
  EXPECT_TRUE(log.Contains(NameFileOf(renamed_data) + ": name file of member " + renamed));
  EXPECT_TRUE(log.Contains("; removed"));
}

TEST(Spool, AHashedDataFileWithoutAMatchingNameFileIsSetAsideNotGuessed) {
  TempDir t;
  const std::string dir = t.Join("s");
  std::string orphan, mismatched;
  {
    auto spool = Spool::Open(dir);
    ASSERT_TRUE(spool.ok());
    auto a = (*spool)->Create(LongName('o'), U16Layout());
    ASSERT_TRUE(a.ok());
    ASSERT_TRUE(Record(**a, 0, U16Frames(0, 2)).ok());
    orphan = BaseName((*a)->spool_path());
    auto b = (*spool)->Create(LongName('m'), U16Layout());
    ASSERT_TRUE(b.ok());
    mismatched = BaseName((*b)->spool_path());
    ASSERT_TRUE((*spool)->Create("good.npy", U16Layout()).ok());
  }
  ASSERT_EQ(::unlink((dir + "/" + NameFileOf(orphan)).c_str()), 0);
  WriteFileOrDie(dir + "/" + NameFileOf(mismatched), LongName('z'));  // not its hash

  Logged log;
  auto spool = Spool::Open(dir, log.fn());
  ASSERT_TRUE(spool.ok()) << spool.status().message();
  ASSERT_EQ((*spool)->members().size(), 1u);
  EXPECT_NE((*spool)->Find("good.npy"), nullptr);
  EXPECT_EQ(SpoolFiles(dir),
            (std::set<std::string>{"good.npy", ".corrupt-" + orphan, ".corrupt-" + mismatched,
                                   ".corrupt-" + NameFileOf(mismatched)}));
  EXPECT_EQ(ReadFileOrDie(dir + "/.corrupt-" + orphan), NumpyHeaderFor(2) + U16Frames(0, 2))
      << "the bytes are kept";
  EXPECT_TRUE(log.Contains(dir + "/" + orphan + ": cannot resume (" + dir + "/" +
                           NameFileOf(orphan) + ": missing"));
  EXPECT_TRUE(log.Contains("does not match the hash in " + mismatched));
}

TEST(Spool, ATakenHashSlotIsProbedPastAndBothResume) {
  TempDir t;
  const std::string dir = t.Join("s");
  const std::string name = LongName('h');
  std::string first;
  {
    auto spool = Spool::Open(dir);
    ASSERT_TRUE(spool.ok());
    ASSERT_TRUE((*spool)->Create(name).ok());
    first = HashedDataFile(dir);
    // Another name with the same hash would hold this slot: keep its data file there.
    ASSERT_TRUE((*spool)->Rename(name, "moved.txt").ok());
    WriteFileOrDie(dir + "/" + first, "");
    WriteFileOrDie(dir + "/" + NameFileOf(first), "");
    auto again = (*spool)->Create(name);
    ASSERT_TRUE(again.ok()) << again.status().message();
    EXPECT_EQ(BaseName((*again)->spool_path()), first + "-1");
    EXPECT_EQ(ReadFileOrDie(dir + "/" + NameFileOf(first + "-1")), name);
  }
  ::unlink((dir + "/" + first).c_str());
  ::unlink((dir + "/" + NameFileOf(first)).c_str());
  auto spool = Spool::Open(dir);
  ASSERT_TRUE(spool.ok()) << spool.status().message();
  EXPECT_NE((*spool)->Find(name), nullptr);
  EXPECT_NE((*spool)->Find("moved.txt"), nullptr);
}

TEST(Spool, ALongNamedMemberIsDeflatedInTheBackgroundBesideItsSpoolFile) {
  TempDir t;
  const std::string archive = t.Join("c.npz");
  const std::string dir = DefaultSpoolDir(archive);
  const std::string name = LongName('z');
  Logged log;
  auto spool = Spool::Open(dir, log.fn());
  ASSERT_TRUE(spool.ok());
  (*spool)->StartBackgroundDeflate(6);
  auto m = (*spool)->Create(name, U16Layout());
  ASSERT_TRUE(m.ok()) << m.status().message();
  const uint64_t frames = 3 * kDefaultDeflateChunkBytes / 24 + 5;
  ASSERT_TRUE(Record(**m, 0, U16Frames(0, frames)).ok());
  (*spool)->WaitForBackgroundDeflate();
  const std::string data = BaseName((*m)->spool_path());
  EXPECT_TRUE(fs::exists(dir + "/." + data + ".npzfs-deflate-index"));
  EXPECT_FALSE(log.Contains("background deflate stopped"));
  for (const std::string& f : ListDir(dir)) EXPECT_LE(f.size(), size_t{NAME_MAX}) << f;
  WriteOptions o;
  o.compress_level = 6;
  ASSERT_TRUE((*spool)->Finalize(archive, o).ok());
  EXPECT_TRUE(log.Contains("3 chunk(s) deflated in the background are used"));
  EXPECT_EQ(RunPython("import numpy as np\nz = np.load('" + archive + "')\n" +
                      PyExpectFrames(name.substr(0, name.size() - 4), frames) + "print('ok')\n"),
            "ok\n");
}

TEST(Spool, ASpoolFileOfUpToNameMaxBytesLeftByAnOlderDaemonStillResumes) {
  TempDir t;
  const std::string dir = t.Join("s");
  fs::create_directories(dir);
  WriteFileOrDie(dir + "/.npzfs-lock", "");  // made with every spool
  // Escaped names longer than today's limit for escaped names, as an older daemon made them.
  const std::string good = std::string(245, 'g') + ".npy";
  const std::string bad = std::string(250, 'b') + ".npy";
  ASSERT_GT(good.size(), MaxEscapedSpoolFileName());
  WriteFileOrDie(dir + "/" + good, NumpyHeaderFor(1) + U16Frames(0, 3));
  WriteFileOrDie(dir + "/" + bad, "not a numpy file");
  Logged log;
  auto spool = Spool::Open(dir, log.fn());
  ASSERT_TRUE(spool.ok()) << spool.status().message();
  ASSERT_EQ((*spool)->members().size(), 1u);
  auto m = (*spool)->Find(good);
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(m->frame_count(), 3u);
  EXPECT_EQ(m->spool_path(), dir + "/" + good);
  // Set aside under a name cut to fit.
  EXPECT_TRUE(log.Contains(bad + ": cannot resume"));
  for (const std::string& f : SpoolFiles(dir)) {
    EXPECT_LE(f.size(), size_t{NAME_MAX}) << f;
    if (f != good) {
      EXPECT_TRUE(f.starts_with(".corrupt-" + bad.substr(0, 200))) << f;
    }
  }
  EXPECT_EQ(SpoolFiles(dir).size(), 2u);
}

}  // namespace
}  // namespace npzfs
