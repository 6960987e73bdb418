// Tests for deflating growing members in the background: the shadow files and their crash
// rules, the background deflater behind a spool, finalize copying its chunks, a shadow left
// by a killed daemon, and ENOSPC that leaves the raw spool intact.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <mutex>
#include <random>
#include <thread>

#include "core/write/background_deflater.h"
#include "core/write/deflate_shadow.h"
#include "core/write/growing_member.h"
#include "core/write/spool.h"
#include "core/zip/append_journal.h"
#include "core/zip/seek_table.h"
#include "tests/archive_test_util.h"
#include "tests/test_util.h"

namespace npzfs {
namespace {

using testing::ListDir;
using testing::ReadDir;
using testing::ReadFileOrDie;
using testing::RunPython;
using testing::ScopedTmpfs;
using testing::TempDir;

constexpr uint64_t kChunk = kDefaultDeflateChunkBytes;  // the daemon's deflate chunk

// Frames of 64 KiB ('<i2', shape 32768): a slow sine plus noise, compressible.
std::string Frames(size_t count, uint32_t seed = 1, bool random = false) {
  std::mt19937 rng(seed);
  std::string out(count * 65536, '\0');
  for (size_t i = 0; i + 1 < out.size(); i += 2) {
    const int v = random ? static_cast<int>(rng()) : static_cast<int>((i / 2) % 3000) + rng() % 16;
    out[i] = static_cast<char>(v & 0xff);
    out[i + 1] = static_cast<char>((v >> 8) & 0xff);
  }
  return out;
}

NpyHeader Layout() { return *NpyHeader::ForFrames("<i2", {32768}, false, 0); }

struct Logged {
  std::mutex mu;
  std::vector<std::string> lines;
  SpoolLogFn fn() {
    return [this](const std::string& l) {
      std::lock_guard lock(mu);
      lines.push_back(l);
    };
  }
  bool Contains(const std::string& needle) {
    std::lock_guard lock(mu);
    for (const auto& l : lines) {
      if (l.find(needle) != std::string::npos) return true;
    }
    return false;
  }
};

// Writes `data` (raw frames) into a new member `name` of the spool.
void WriteMember(Spool& spool, const std::string& name, const std::string& data) {
  auto m = spool.Create(name, Layout());
  ASSERT_TRUE(m.ok()) << m.status().message();
  WriterSession w;
  ASSERT_TRUE((*m)->BeginWrite(&w, false).ok());
  for (size_t at = 0; at < data.size(); at += 300000) {
    const size_t n = std::min<size_t>(300000, data.size() - at);
    auto r =
        (*m)->Write(&w, at, std::span(reinterpret_cast<const std::byte*>(data.data() + at), n));
    ASSERT_TRUE(r.ok()) << r.status().message();
  }
  (*m)->EndWrite(&w);
}

// A spool at `dir` holding member adc.npy of `data`, its background deflate done.
Result<std::unique_ptr<Spool>> SpoolDeflatedInTheBackground(const std::string& dir,
                                                            const std::string& data, Logged& log) {
  NPZ_ASSIGN_OR_RETURN(std::unique_ptr<Spool> spool, Spool::Open(dir, log.fn()));
  spool->StartBackgroundDeflate(6);
  WriteMember(*spool, "adc.npy", data);
  spool->WaitForBackgroundDeflate();
  return spool;
}

WriteOptions Compress() {
  WriteOptions o;
  o.compress_level = 6;
  return o;
}

// The member's bytes as numpy sees them equal the frames written.
void ExpectMember(const std::string& archive, const std::string& key, const std::string& data) {
  EXPECT_EQ(RunPython(R"(
import numpy as np, zipfile
with zipfile.ZipFile(')" +
                      archive + R"(') as z:
    assert z.testzip() is None
    raw = np.load(z.open(')" +
                      key + R"(.npy'))
print(raw.shape[0], raw.tobytes() == open(')" +
                      archive + R"(.expected', 'rb').read())
)"),
            std::to_string(data.size() / 65536) + " True\n");
}

std::string SpoolFile(const TempDir& dir, const std::string& name) {
  return dir.Join("spool/" + name);
}

// ------------------------------------------------------------------------------- the shadow

TEST(DeflateShadow, OnlyChunksWhoseRecordsWereSyncedSurviveAReopen) {
  TempDir dir;
  const std::string spool_file = dir.Join("m.npy");
  {
    auto s = DeflateShadow::Open(spool_file, 6, 1000, 10000, true);
    ASSERT_TRUE(s.ok()) << s.status().message();
    for (int i = 0; i < 3; ++i) ASSERT_TRUE((*s)->Append("chunk" + std::to_string(i), i).ok());
    ASSERT_TRUE((*s)->Sync().ok());
    ASSERT_TRUE((*s)->Append("unsynced", 9).ok());  // written, not recorded: redone later
    EXPECT_EQ((*s)->chunk_count(), 4u);
  }
  EXPECT_EQ(ListDir(dir.path()),
            (std::vector<std::string>{".m.npy.npzfs-deflate", ".m.npy.npzfs-deflate-index"}));
  auto again = DeflateShadow::Open(spool_file, 6, 1000, 10000, true);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ((*again)->chunk_count(), 3u);
  auto chunks = (*again)->Chunks(10000);
  ASSERT_EQ(chunks->chunks.size(), 3u);
  EXPECT_EQ(chunks->chunks[2].offset, kDeflateShadowDataStart + 12);
  EXPECT_EQ(chunks->chunks[2].compressed_size, 6u);
  EXPECT_EQ(chunks->chunks[2].crc32, 2u);
  EXPECT_EQ((*again)->Chunks(2999)->chunks.size(), 2u);  // only whole chunks within the data
  // The unrecorded bytes were cut off: appending continues right after chunk 2.
  ASSERT_TRUE((*again)->Append("next", 3).ok());
  EXPECT_EQ((*again)->Chunks(10000)->chunks[3].offset, kDeflateShadowDataStart + 18);
}

TEST(DeflateShadow, DamagedRecordsMissingBytesAndDamagedBytesEndTheUsableChunks) {
  TempDir dir;
  const std::string spool_file = dir.Join("m.npy");
  {
    auto s = DeflateShadow::Open(spool_file, 6, 1000, 10000, true);
    ASSERT_TRUE(s.ok());
    for (int i = 0; i < 5; ++i) ASSERT_TRUE((*s)->Append(std::string(100, 'a' + i), i).ok());
    ASSERT_TRUE((*s)->Sync().ok());
  }
  const std::string index = DeflateShadow::IndexPath(spool_file);
  const std::string data = DeflateShadow::DataPath(spool_file);
  auto count = [&](uint64_t data_bytes) {
    auto s = DeflateShadow::Open(spool_file, 6, 1000, data_bytes, false);
    return s.ok() ? (*s)->chunk_count() : size_t{999};
  };
  EXPECT_EQ(count(10000), 5u);
  EXPECT_EQ(count(4999), 4u);  // chunk 4 would end past the member's data
  ASSERT_EQ(truncate(data.c_str(), kDeflateShadowDataStart + 350), 0);  // chunk 3 incomplete
  EXPECT_EQ(count(10000), 3u);
  ASSERT_EQ(truncate(index.c_str(), kDeflateShadowHeaderSize + 2 * kDeflateShadowRecordSize + 5),
            0);  // torn record
  EXPECT_EQ(count(10000), 2u);
  std::string bytes = ReadFileOrDie(index);
  bytes[kDeflateShadowHeaderSize + kDeflateShadowRecordSize + 3] ^= 1;  // record 1 damaged
  testing::WriteFileOrDie(index, bytes);
  EXPECT_EQ(count(10000), 1u);
  // Chunk 0's deflate bytes damaged (zeroed, as a power cut can leave a block of a file
  // that was never synced, or a bad disk): its intact record no longer covers them.
  const UniqueFd fd(::open(data.c_str(), O_WRONLY));
  ASSERT_EQ(::pwrite(fd.get(), "\0\0\0\0", 4, kDeflateShadowDataStart + 40), 4);
  EXPECT_EQ(count(10000), 0u);
}

TEST(DeflateShadow, AShadowOfAnotherLevelOrChunkSizeIsNotUsed) {
  TempDir dir;
  const std::string spool_file = dir.Join("m.npy");
  {
    auto s = DeflateShadow::Open(spool_file, 6, 1000, 10000, true);
    ASSERT_TRUE(s.ok());
    ASSERT_TRUE((*s)->Append("x", 1).ok());
    ASSERT_TRUE((*s)->Sync().ok());
  }
  auto other_level = DeflateShadow::Open(spool_file, 9, 1000, 10000, false);
  ASSERT_TRUE(other_level.ok());
  EXPECT_EQ((*other_level)->chunk_count(), 0u);
  auto other_size = DeflateShadow::Open(spool_file, 6, 2000, 10000, false);
  ASSERT_TRUE(other_size.ok());
  EXPECT_EQ((*other_size)->chunk_count(), 0u);
  auto same = DeflateShadow::Open(spool_file, 6, 1000, 10000, false);
  ASSERT_TRUE(same.ok());
  EXPECT_EQ((*same)->chunk_count(), 1u);  // the read-only opens changed nothing
  auto reset = DeflateShadow::Open(spool_file, 9, 1000, 10000, true);
  ASSERT_TRUE(reset.ok());
  EXPECT_EQ((*reset)->chunk_count(), 0u);
  EXPECT_EQ(ReadFileOrDie(DeflateShadow::DataPath(spool_file)), "");
  EXPECT_EQ(DeflateShadow::Open(dir.Join("none.npy"), 6, 1000, 10000, false).status().code(),
            ENOENT);
}

TEST(DeflateShadow, RecordsAreWrittenOnlyAfterTheSpoolBytesTheyCoverWereMadeDurable) {
  TempDir dir;
  const std::string spool_file = dir.Join("m.npy");
  const std::string index = DeflateShadow::IndexPath(spool_file);
  auto records_on_disk = [&] {
    struct stat st;
    EXPECT_EQ(::stat(index.c_str(), &st), 0);
    return (static_cast<uint64_t>(st.st_size) - kDeflateShadowHeaderSize) /
           kDeflateShadowRecordSize;
  };
  // What the index file held each time the shadow asked for the spool bytes to be synced.
  std::vector<uint64_t> records_at_source_sync;
  bool source_sync_fails = false;
  auto s = DeflateShadow::Open(spool_file, 6, 1000, 10000, true, [&]() -> Status {
    records_at_source_sync.push_back(records_on_disk());
    if (source_sync_fails) return Status::Error(EIO, spool_file + ": fdatasync failed");
    return Status::Ok();
  });
  ASSERT_TRUE(s.ok()) << s.status().message();
  ASSERT_TRUE((*s)->Sync().ok());  // nothing to record: nothing to sync either
  EXPECT_TRUE(records_at_source_sync.empty());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE((*s)->Append("chunk" + std::to_string(i), i).ok());
  ASSERT_TRUE((*s)->Sync().ok());
  EXPECT_EQ(records_at_source_sync, (std::vector<uint64_t>{0}));  // synced before any record
  EXPECT_EQ(records_on_disk(), 3u);
  // When the spool bytes cannot be made durable, the records that would cover them are not
  // written: after a power cut they could name chunks of data the spool file lost.
  ASSERT_TRUE((*s)->Append("chunk3", 3).ok());
  source_sync_fails = true;
  EXPECT_EQ((*s)->Sync().code(), EIO);
  EXPECT_EQ(records_at_source_sync, (std::vector<uint64_t>{0, 3}));
  EXPECT_EQ(records_on_disk(), 3u);
}

// --------------------------------------------------------------- behind a spool, at finalize

TEST(BackgroundDeflate, ChunksDeflatedWhileFramesArriveAreCopiedAtFinalize) {
  TempDir dir;
  const std::string data = Frames(90);  // 5.6 MiB: 22 complete chunks and a part
  testing::WriteFileOrDie(dir.Join("a.npz.expected"), data);
  testing::WriteFileOrDie(dir.Join("b.npz.expected"), data);
  Logged log;
  std::string shadow_bytes;
  struct stat shadow_st;
  {
    auto spool = Spool::Open(dir.Join("spool"), log.fn());
    ASSERT_TRUE(spool.ok());
    (*spool)->StartBackgroundDeflate(6);
    WriteMember(**spool, "adc.npy", data);
    (*spool)->WaitForBackgroundDeflate();
    auto shadow = DeflateShadow::Open(SpoolFile(dir, "adc.npy"), 6, kChunk, data.size(), false);
    ASSERT_TRUE(shadow.ok()) << shadow.status().message();
    EXPECT_EQ((*shadow)->chunk_count(), data.size() / kChunk);
    const std::string shadow_path = DeflateShadow::DataPath(SpoolFile(dir, "adc.npy"));
    shadow_bytes = ReadFileOrDie(shadow_path).substr(kDeflateShadowDataStart);
    ASSERT_EQ(stat(shadow_path.c_str(), &shadow_st), 0);
    ASSERT_TRUE((*spool)->Finalize(dir.Join("a.npz"), Compress()).ok());
  }
  EXPECT_TRUE(log.Contains("adc.npy: " + std::to_string(data.size() / kChunk) +
                           " chunk(s) deflated in the background are used"));
  EXPECT_FALSE(std::filesystem::exists(dir.Join("spool")));
  ExpectMember(dir.Join("a.npz"), "adc", data);
  // A new archive on the spool's filesystem: the shadow file became the archive, its chunks
  // were not copied.
  struct stat archive_st;
  ASSERT_EQ(stat(dir.Join("a.npz").c_str(), &archive_st), 0);
  EXPECT_EQ(archive_st.st_ino, shadow_st.st_ino);
  EXPECT_TRUE(log.Contains("a.npz: member adc.npy: made of "));
  // The same member finalized without background work: the same chunks after the header's
  // (which the shadow's archive holds as a stored block), so those in the archive are the
  // shadow's, unchanged.
  {
    auto spool = Spool::Open(dir.Join("spool"));
    ASSERT_TRUE(spool.ok());
    WriteMember(**spool, "adc.npy", data);
    ASSERT_TRUE((*spool)->Finalize(dir.Join("b.npz"), Compress()).ok());
  }
  auto a = ReadDir(dir.Join("a.npz")), b = ReadDir(dir.Join("b.npz"));
  ASSERT_TRUE(a.ok() && b.ok());
  const ZipEntry& ea = a->entries[0];
  const ZipEntry& eb = b->entries[0];
  const std::string member_a =
      ReadFileOrDie(dir.Join("a.npz")).substr(ea.data_offset, ea.compressed_size);
  const std::string member_b =
      ReadFileOrDie(dir.Join("b.npz")).substr(eb.data_offset, eb.compressed_size);
  auto table =
      ParseSeekTable(ea.seek_table, ea.compressed_size, ea.uncompressed_size, ea.crc32, "a.npz");
  auto table_b =
      ParseSeekTable(eb.seek_table, eb.compressed_size, eb.uncompressed_size, eb.crc32, "b.npz");
  ASSERT_TRUE(table.ok()) << table.status().message();
  ASSERT_TRUE(table_b.ok()) << table_b.status().message();
  // The header, the background chunks, the rest.
  ASSERT_EQ(table->chunks().size(), 1 + data.size() / kChunk + 1);
  ASSERT_EQ(table_b->chunks().size(), table->chunks().size());
  EXPECT_EQ(table->first_chunk_size(), 128u);
  EXPECT_EQ(table->chunks()[1].in, 5u + 128);  // a stored block: 5 bytes of block header
  const SeekChunk& first = table->chunks()[1];
  EXPECT_TRUE(member_a.substr(first.in) == member_b.substr(table_b->chunks()[1].in));
  EXPECT_TRUE(member_a.substr(first.in, shadow_bytes.size()) == shadow_bytes);
  EXPECT_EQ(member_a.substr(0, 5), std::string("\0\x80\0\x7f\xff", 5));  // LEN 128, NLEN
  EXPECT_EQ(member_a.substr(5, 6), "\x93NUMPY");
}

TEST(BackgroundDeflate, AFinalizeThatFailsBeforeTheRenameLeavesTheShadowAsUsable) {
  TempDir dir;
  const std::string data = Frames(40, 5);  // 2.5 MiB: 10 chunks
  testing::WriteFileOrDie(dir.Join("a.npz.expected"), data);
  Logged log;
  auto spool = SpoolDeflatedInTheBackground(dir.Join("spool"), data, log);
  ASSERT_TRUE(spool.ok());
  // The shadow file got the local header, the rest of the member and the directory, and
  // was synced; the rename then fails.
  FailAppendStepForTesting(AppendStep::kArchiveSynced);
  Status failed = (*spool)->Finalize(dir.Join("a.npz"), Compress());
  FailAppendStepForTesting(std::nullopt);
  EXPECT_EQ(failed.code(), EIO) << failed.message();
  EXPECT_FALSE(std::filesystem::exists(dir.Join("a.npz")));
  // The next finalize opens the shadow from disk: every chunk is still usable.
  ASSERT_TRUE((*spool)->Finalize(dir.Join("a.npz"), Compress()).ok());
  EXPECT_TRUE(log.Contains("adc.npy: 10 chunk(s) deflated in the background are used"));
  EXPECT_TRUE(log.Contains("a.npz: member adc.npy: made of "));
  ExpectMember(dir.Join("a.npz"), "adc", data);
  EXPECT_FALSE(std::filesystem::exists(dir.Join("spool")));
}

TEST(BackgroundDeflate, AShadowOnAnotherFilesystemThanTheArchiveIsCopied) {
  if (geteuid() != 0) NPZ_SKIP_UNLESS_CI("needs root to mount a tmpfs");
  TempDir dir;
  ScopedTmpfs tmpfs(dir.Join("other"), "size=64m");
  ASSERT_TRUE(tmpfs.mounted());
  const std::string data = Frames(40, 6);
  testing::WriteFileOrDie(dir.Join("a.npz.expected"), data);
  Logged log;
  auto spool = SpoolDeflatedInTheBackground(dir.Join("other/spool"), data, log);
  ASSERT_TRUE(spool.ok());
  ASSERT_TRUE((*spool)->Finalize(dir.Join("a.npz"), Compress()).ok());
  EXPECT_TRUE(log.Contains("adc.npy: 10 chunk(s) deflated in the background are used"));
  EXPECT_FALSE(log.Contains("made of"));
  ExpectMember(dir.Join("a.npz"), "adc", data);
}

TEST(BackgroundDeflate, FinalizeTakesWhatIsDoneAndDoesNotWaitForTheRest) {
  TempDir dir;
  const std::string data = Frames(512, 4);  // 32 MiB: far more than a chunk's time to deflate
  testing::WriteFileOrDie(dir.Join("a.npz.expected"), data);
  Logged log;
  auto spool = Spool::Open(dir.Join("spool"), log.fn());
  ASSERT_TRUE(spool.ok());
  (*spool)->StartBackgroundDeflate(6);
  WriteMember(**spool, "adc.npy", data);
  ASSERT_TRUE((*spool)->Finalize(dir.Join("a.npz"), Compress()).ok());
  // At most the chunks done when finalize began, plus the one in progress; the rest were
  // deflated by finalize itself.
  size_t reused = 0;
  for (const std::string& line : log.lines) {
    if (line.find(" chunk(s) deflated in the background") != std::string::npos) {
      reused = std::stoul(line.substr(line.find(": ") + 2));
    }
  }
  EXPECT_LT(reused, data.size() / kChunk);
  ExpectMember(dir.Join("a.npz"), "adc", data);
}

TEST(BackgroundDeflate, AShadowLeftByAKilledDaemonIsUsedAndItsTornTailRedone) {
  TempDir dir;
  const std::string data = Frames(100, 2);  // 6.25 MiB
  testing::WriteFileOrDie(dir.Join("a.npz.expected"), data);
  {
    auto spool = Spool::Open(dir.Join("spool"));
    ASSERT_TRUE(spool.ok());
    (*spool)->StartBackgroundDeflate(6);
    WriteMember(**spool, "adc.npy", data);
    (*spool)->WaitForBackgroundDeflate();
  }  // the daemon "dies" here, without finalize
  // What a kill in the middle of a chunk leaves: bytes of a chunk without its record, and a
  // torn record.
  const std::string spool_file = SpoolFile(dir, "adc.npy");
  {
    auto shadow = DeflateShadow::Open(spool_file, 6, kChunk, data.size(), false);
    ASSERT_TRUE(shadow.ok());
    ASSERT_EQ((*shadow)->chunk_count(), data.size() / kChunk);
  }
  std::string index = ReadFileOrDie(DeflateShadow::IndexPath(spool_file));
  testing::WriteFileOrDie(DeflateShadow::IndexPath(spool_file), index.substr(0, index.size() - 7));
  const std::string data_path = DeflateShadow::DataPath(spool_file);
  testing::WriteFileOrDie(data_path, ReadFileOrDie(data_path) + std::string(5000, 'z'));
  for (bool background : {false, true}) {
    SCOPED_TRACE(background ? "remount with compress" : "npz recover --compress");
    TempDir out;
    std::filesystem::copy(dir.Join("spool"), out.Join("spool"));
    testing::WriteFileOrDie(out.Join("a.npz.expected"), data);
    Logged log;
    auto spool = Spool::Open(out.Join("spool"), log.fn());
    ASSERT_TRUE(spool.ok()) << spool.status().message();
    if (background) {
      (*spool)->StartBackgroundDeflate(6);  // resumes the shadow, cuts the torn tail, redoes
      (*spool)->WaitForBackgroundDeflate();
    }
    ASSERT_TRUE((*spool)->Finalize(out.Join("a.npz"), Compress()).ok());
    // Background deflate redoes the torn last chunk; recovery alone keeps the whole ones.
    const size_t whole = data.size() / kChunk;
    EXPECT_TRUE(log.Contains("adc.npy: " + std::to_string(background ? whole : whole - 1) +
                             " chunk(s) deflated"));
    ExpectMember(out.Join("a.npz"), "adc", data);
    EXPECT_EQ(ListDir(out.path()), (std::vector<std::string>{"a.npz", "a.npz.expected"}));
  }
}

TEST(BackgroundDeflate, RunningOutOfSpaceStopsItAndLeavesTheRawSpoolIntact) {
  if (geteuid() != 0) NPZ_SKIP_UNLESS_CI("needs root to mount a small tmpfs");
  TempDir dir;
  ScopedTmpfs tmpfs(dir.Join("small"), "size=12m");
  ASSERT_TRUE(tmpfs.mounted());
  const std::string data = Frames(128, 3, /*random=*/true);  // 8 MiB that does not deflate
  testing::WriteFileOrDie(dir.Join("a.npz.expected"), data);
  Logged log;
  auto spool = Spool::Open(dir.Join("small/spool"), log.fn());
  ASSERT_TRUE(spool.ok());
  WriteMember(**spool, "adc.npy", data);
  (*spool)->StartBackgroundDeflate(6);  // its shadow cannot fit beside the 8 MiB
  (*spool)->WaitForBackgroundDeflate();
  EXPECT_TRUE(log.Contains("adc.npy: background deflate stopped ("));
  EXPECT_TRUE(log.Contains("No space left on device"));
  EXPECT_EQ(ListDir(dir.Join("small/spool")), (std::vector<std::string>{".npzfs-lock", "adc.npy"}));
  // Every frame is still there, byte for byte.
  auto member = (*spool)->Find("adc.npy");
  ASSERT_NE(member, nullptr);
  EXPECT_EQ(member->frame_count(), 128u);
  const std::string raw = ReadFileOrDie(dir.Join("small/spool/adc.npy"));
  EXPECT_TRUE(raw.substr(raw.size() - data.size()) == data);
  ASSERT_TRUE((*spool)->Finalize(dir.Join("a.npz"), Compress()).ok());
  ExpectMember(dir.Join("a.npz"), "adc", data);
}

// The background deflater's records are written only after the spool bytes they cover were
// synced: a power cut cannot leave a record whose spool data was lost (and later replaced
// by other frames at the same offsets, which finalize would not notice). The sync is watched
// through the deflater's hook, which still does the real fdatasync.
TEST(BackgroundDeflate, EveryRecordIsWrittenOnlyAfterTheSpoolBytesItCoversWereSynced) {
  TempDir dir;
  const std::string spool_file = dir.Join("adc.npy");
  const std::string index = DeflateShadow::IndexPath(spool_file);
  struct SyncSeen {
    uint64_t spool_size;       // the spool file's size when it was synced
    uint64_t records_on_disk;  // records in the index file at that moment
    bool is_the_spool_file;    // the fd synced is the member's spool file
  };
  std::mutex mu;
  std::vector<SyncSeen> syncs;
  auto watch = [&](int fd, const std::string& path) {
    struct stat fd_st, path_st, index_st;
    const bool index_exists = ::stat(index.c_str(), &index_st) == 0;
    SyncSeen seen{0, 0, false};
    if (::fstat(fd, &fd_st) == 0 && ::stat(spool_file.c_str(), &path_st) == 0) {
      seen.spool_size = static_cast<uint64_t>(fd_st.st_size);
      seen.is_the_spool_file = fd_st.st_dev == path_st.st_dev && fd_st.st_ino == path_st.st_ino;
    }
    if (index_exists && static_cast<uint64_t>(index_st.st_size) > kDeflateShadowHeaderSize) {
      seen.records_on_disk = (static_cast<uint64_t>(index_st.st_size) - kDeflateShadowHeaderSize) /
                             kDeflateShadowRecordSize;
    }
    {
      std::lock_guard lock(mu);
      syncs.push_back(seen);
    }
    EXPECT_EQ(path, spool_file);
    return BackgroundDeflater::DataSyncSpool(fd, path);
  };
  // Small chunks, so that a batch of records (256 chunks, 2 MiB here) fills between idle
  // moments.
  constexpr uint64_t kSmallChunk = 8 << 10;
  const std::string data = Frames(90);  // 720 chunks
  auto m = GrowingMember::Create("adc.npy", spool_file, Layout());
  ASSERT_TRUE(m.ok()) << m.status().message();
  const uint64_t header = (*m)->visible_size();
  {
    BackgroundDeflater bg(6, kSmallChunk, {}, watch);
    bg.Track(*m);
    WriterSession w;
    ASSERT_TRUE((*m)->BeginWrite(&w, false).ok());
    // Pieces of 300000 bytes, idle after every tenth (366 chunks): records come both from
    // the syncs every 256 chunks and from the syncs when the deflater is idle.
    for (size_t at = 0, piece = 0; at < data.size(); at += 300000, ++piece) {
      const size_t n = std::min<size_t>(300000, data.size() - at);
      auto r =
          (*m)->Write(&w, at, std::span(reinterpret_cast<const std::byte*>(data.data() + at), n));
      ASSERT_TRUE(r.ok()) << r.status().message();
      if (piece % 10 == 9) bg.WaitUntilIdle();
    }
    (*m)->EndWrite(&w);
    bg.WaitUntilIdle();
    auto shadow = bg.Take(m->get());
    ASSERT_NE(shadow, nullptr);
    EXPECT_EQ(shadow->chunk_count(), data.size() / kSmallChunk);
  }
  const std::string records = ReadFileOrDie(index);
  const uint64_t recorded = (records.size() - kDeflateShadowHeaderSize) / kDeflateShadowRecordSize;
  EXPECT_EQ(recorded, data.size() / kSmallChunk);
  std::lock_guard lock(mu);
  ASSERT_FALSE(syncs.empty());
  for (const SyncSeen& s : syncs) EXPECT_TRUE(s.is_the_spool_file);
  // Record k needs a sync of the spool file made while record k was not yet on disk and
  // when the file already held chunk k's bytes.
  for (uint64_t k = 0; k < recorded; ++k) {
    const uint64_t chunk_end = header + (k + 1) * kSmallChunk;
    EXPECT_TRUE(std::any_of(
        syncs.begin(), syncs.end(),
        [&](const SyncSeen& s) { return s.records_on_disk <= k && s.spool_size >= chunk_end; }))
        << "record " << k << " was written without a sync of the spool bytes it covers";
  }
}

// The deflater syncs idle shadows without its lock, while members come (Spool::Create ->
// Track) and go (Spool::Remove and finalize -> Take): that must not touch the list of members
// through iterators made before the lock was released (it crashed, or showed a
// heap-use-after-free under ASan).
TEST(BackgroundDeflate, IdleShadowsAreSyncedSafelyWhileMembersAreTrackedAndTaken) {
  TempDir dir;
  constexpr uint64_t kSmallChunk = 64 << 10;  // a chunk, and so a Sync, per round
  constexpr int kRounds = 300;
  BackgroundDeflater bg(6, kSmallChunk, {});
  // Members with data, so that each idle pass syncs shadows with the lock released.
  std::vector<std::shared_ptr<GrowingMember>> growing;
  std::vector<WriterSession> sessions(3);
  for (int k = 0; k < 3; ++k) {
    const std::string name = "g" + std::to_string(k) + ".npy";
    auto m = GrowingMember::Create(name, dir.Join(name), Layout());
    ASSERT_TRUE(m.ok()) << m.status().message();
    ASSERT_TRUE((*m)->BeginWrite(&sessions[k], false).ok());
    growing.push_back(*m);
    bg.Track(*m);
  }
  std::atomic<bool> stop{false};
  std::thread churn([&] {
    // Empty members, as Spool::Create and Spool::Remove make and drop them.
    for (int id = 0; !stop;) {
      std::vector<std::shared_ptr<GrowingMember>> members;
      for (int k = 0; k < 6; ++k, ++id) {
        const std::string name = "x" + std::to_string(id) + ".npy";
        auto m = GrowingMember::Create(name, dir.Join(name), Layout());
        if (!m.ok()) {
          ADD_FAILURE() << m.status().message();
          return;
        }
        bg.Track(*m);
        members.push_back(*m);
      }
      for (auto& m : members) {
        EXPECT_EQ(bg.Take(m.get()), nullptr);  // no data: no shadow
        ::unlink(m->spool_path().c_str());
      }
    }
  });
  const std::string frames = Frames(1);  // 64 KiB: one chunk
  for (int round = 0; round < kRounds; ++round) {
    for (int k = 0; k < 3; ++k) {
      auto r = growing[k]->Write(
          &sessions[k], round * frames.size(),
          std::span(reinterpret_cast<const std::byte*>(frames.data()), frames.size()));
      ASSERT_TRUE(r.ok()) << r.status().message();
    }
    bg.WaitUntilIdle();
  }
  stop = true;
  churn.join();
  for (int k = 0; k < 3; ++k) {
    growing[k]->EndWrite(&sessions[k]);
    auto shadow = bg.Take(growing[k].get());
    ASSERT_NE(shadow, nullptr);
    EXPECT_EQ(shadow->chunk_count(), static_cast<size_t>(kRounds));
  }
}

}  // namespace
}  // namespace npzfs
