// Tests of CRC-32 checking through the core API: stored members' verify passes and chunk
// checks, the verify modes, a sidecar whose records are wrong, and an archive that changes
// while it is open. Archives are made by numpy and zipfile at test time, then damaged.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <functional>
#include <future>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/base/crc32.h"
#include "core/base/thread_pool.h"
#include "core/read/index_file.h"
#include "core/read/read_pools.h"
#include "core/read/stored_member.h"
#include "npzfs/archive.h"
#include "npzfs/archive_writer.h"
#include "npzfs/file_util.h"
#include "tests/sidecar_util.h"
#include "tests/test_util.h"

namespace npzfs {
namespace {

using testing::ReadFileOrDie;
using testing::RunPython;
using testing::TempDir;
using testing::WriteFileOrDie;

class VerifyTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();  // NOLINT: lives for the whole suite, deleted in TearDownTestSuite
    RunPython(R"PY(
import numpy as np, zipfile, os
D = ')PY" + dir_->path() +
              R"PY('
rng = np.random.default_rng(11)
adc = rng.integers(-3000, 3000, size=1_600_000).astype('<i2')   # 3.2 MB: 4 chunks of 1 MiB
small = np.arange(10, dtype='<f8')
np.savez(D + '/stored.npz', adc=adc, small=small)
big = rng.integers(-3000, 3000, size=8_700_000).astype('<i2')  # 17.4 MB: 17 chunks
np.savez(D + '/big.npz', big=big)
with zipfile.ZipFile(D + '/big.npz') as z:
    open(D + '/big.npy', 'wb').write(z.read('big.npy'))
t = np.arange(1_500_000)
smooth = (1000 * np.sin(t / 500.0) + rng.normal(0, 30, t.size)).astype('<i2')
np.savez_compressed(D + '/comp.npz', adc=adc, small=small, smooth=smooth)
with zipfile.ZipFile(D + '/comp.npz') as z:
    open(D + '/smooth.npy', 'wb').write(z.read('smooth.npy'))
with zipfile.ZipFile(D + '/stored.npz') as z:
    open(D + '/adc.npy', 'wb').write(z.read('adc.npy'))
    info = z.getinfo('adc.npy')
data = bytearray(open(D + '/stored.npz', 'rb').read())
data_start = info.header_offset + 30 + 7 + 20   # name 'adc.npy', numpy's 20-byte ZIP64 extra
assert data[data_start:data_start + 6] == b'\x93NUMPY'

flip = bytearray(data)
flip[data_start + 2_500_000] ^= 0x01          # one bit, in the third chunk
open(D + '/flip.npz', 'wb').write(bytes(flip))

crc = bytearray(data)                          # the CRC-32 in the central directory only
for i in central_records(crc, 'adc.npy'):
    crc[i + 16] ^= 0x55
open(D + '/badcrc.npz', 'wb').write(bytes(crc))

# An empty stored member whose CRC-32 is not 0.
with zipfile.ZipFile(D + '/empty.zip', 'w') as z:
    z.writestr('empty.bin', b'')
    z.writestr('ok.bin', b'fine')
e = bytearray(open(D + '/empty.zip', 'rb').read())
for i in central_records(e, 'empty.bin'):
    e[i + 16] = 0x12
open(D + '/empty.zip', 'wb').write(bytes(e))
)PY");
  }
  static void TearDownTestSuite() {
    delete dir_;  // NOLINT
    dir_ = nullptr;
  }

  static std::string Path(const std::string& name) { return dir_->Join(name); }
  std::string Scratch(const std::string& name) {
    const std::string dst = scratch_.Join(name);
    std::filesystem::copy_file(Path(name), dst);
    return dst;
  }

  ArchiveOptions Options(VerifyMode mode = VerifyMode::kDefault) {
    ArchiveOptions o;
    o.verify = mode;
    o.checkpoint_spacing = 128 << 10;
    o.log = [this](const std::string& line) {
      std::lock_guard<std::mutex> lock(log_mu_);
      log_ += line + "\n";
    };
    return o;
  }
  std::string Log() {
    std::lock_guard<std::mutex> lock(log_mu_);
    return log_;
  }
  size_t LogCount(const std::string& needle) {
    const std::string log = Log();
    size_t n = 0;
    for (size_t p = log.find(needle); p != std::string::npos; p = log.find(needle, p + 1)) ++n;
    return n;
  }

  static std::shared_ptr<MemberReader> Open(Archive& a, const std::string& path) {
    std::optional<size_t> i = a.Find(path);
    EXPECT_TRUE(i.has_value()) << path;
    if (!i) return nullptr;
    auto r = a.OpenMember(*i);
    EXPECT_TRUE(r.ok()) << r.status().message();
    return r.ok() ? *r : nullptr;
  }

  // Reads the member through in `chunk` steps; returns the first error (ok at a clean end)
  // and the bytes read before it.
  static Status ReadThrough(MemberReader& r, size_t chunk, std::string* out) {
    out->clear();
    std::string buf(chunk, '\0');
    for (uint64_t off = 0;; off += chunk) {
      auto got = r.ReadAt(off, std::as_writable_bytes(std::span(buf)));
      if (!got.ok()) return got.status();
      if (*got == 0) return Status::Ok();
      out->append(buf, 0, *got);
    }
  }

  // The path of a copy of big.npz with a saved verified record (and of its sidecar).
  Result<std::string> BigWithRecord(std::string* sidecar = nullptr) {
    const std::string path = Scratch("big.npz");
    NPZ_ASSIGN_OR_RETURN(std::shared_ptr<Archive> a, Archive::Open(path, Options()));
    NPZ_RETURN_IF_ERROR(a->VerifyMember(*a->Find("big.npy")));
    NPZ_RETURN_IF_ERROR(a->SaveIndex());
    if (sidecar) *sidecar = a->IndexPath();
    return path;
  }

  // That copy opened afresh: its chunks are checked against the record as they are touched.
  Result<std::shared_ptr<Archive>> OpenBigWithRecord() {
    NPZ_ASSIGN_OR_RETURN(const std::string path, BigWithRecord());
    return Archive::Open(path, Options());
  }

  // A copy of comp.npz whose deflated member smooth.npy has a complete index saved in the
  // sidecar. Out: the copy's path, the member's index, the sidecar's path.
  void CompWithSavedIndex(std::string* path, size_t* smooth, std::string* sidecar) {
    *path = Scratch("comp.npz");
    auto a = Archive::Open(*path, Options());
    ASSERT_TRUE(a.ok());
    *smooth = *(*a)->Find("smooth.npy");
    ASSERT_TRUE((*a)->BuildIndex(*smooth).ok());
    ASSERT_TRUE((*a)->SaveIndex().ok());
    *sidecar = (*a)->IndexPath();
  }

  // Overwrites `n` bytes of member `name`'s stored data, `at(entry)` bytes in, keeping the
  // archive's size and mtime, so that a saved index or record still applies to it.
  static void DamageKeepingMtime(const std::string& path, const std::string& name, size_t n,
                                 const std::function<uint64_t(const ZipEntry&)>& at) {
    struct stat st;
    ASSERT_EQ(::stat(path.c_str(), &st), 0);
    {
      auto fd = OpenFile(path, O_RDWR);
      ASSERT_TRUE(fd.ok());
      auto dir = ReadZipDirectory(fd->get(), path);
      ASSERT_TRUE(dir.ok());
      bool found = false;
      for (const ZipEntry& e : dir->entries) {
        if (e.name != name) continue;
        found = true;
        const std::string junk(n, '\x5a');
        ASSERT_TRUE(PwriteAll(fd->get(), junk.data(), n, e.data_offset + at(e), path).ok());
      }
      ASSERT_TRUE(found) << name;
    }
    struct timespec times[2] = {st.st_atim, st.st_mtim};
    ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), times, 0), 0);
  }

  // big.npz opened and big.npy read through (every chunk checked once), then a sleep, so
  // that a change made to the archive next moves its ctime (it has nanoseconds here).
  struct CheckedBig {
    std::string path;
    std::shared_ptr<Archive> archive;
    std::shared_ptr<MemberReader> reader;
    std::string bytes;  // big.npy as read
  };
  void OpenAndReadBig(CheckedBig* big) {
    big->path = Scratch("big.npz");
    auto a = Archive::Open(big->path, Options());
    ASSERT_TRUE(a.ok()) << a.status().message();
    big->archive = *a;
    big->reader = Open(*big->archive, "big.npy");
    ASSERT_NE(big->reader, nullptr);
    ASSERT_TRUE(ReadThrough(*big->reader, 1 << 20, &big->bytes).ok());
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  // 16 bytes of big.npy's second chunk overwritten and the mtime put back, as rsync
  // --inplace -t does: only the ctime tells.
  static void DamageSecondChunk(const std::string& path) {
    DamageKeepingMtime(path, "big.npy", 16,
                       [](const ZipEntry&) { return kStoredChunkBytes + 100; });
  }
  static Result<size_t> ReadSecondChunk(MemberReader& r) {
    std::string buf(4096, '\0');
    return r.ReadAt(kStoredChunkBytes, std::as_writable_bytes(std::span(buf)));
  }

  // Keeps the VerifyPool's one thread busy until the returned promise is set: every task
  // queued meanwhile waits (FIFO).
  static std::promise<void> HoldVerifyPool() {
    std::promise<void> gate;
    VerifyPool().Submit([opened = gate.get_future().share()] { opened.wait(); });
    return gate;
  }

  // Waits until every task queued on the VerifyPool so far has run (one thread, FIFO).
  static void DrainVerifyPool() {
    TaskGroup group(VerifyPool());
    group.Run([] {});
    group.Wait();
  }

  static TempDir* dir_;
  TempDir scratch_;
  std::mutex log_mu_;
  std::string log_;  // guarded by log_mu_
};
TempDir* VerifyTest::dir_ = nullptr;

TEST_F(VerifyTest, AStoredMemberWithAFlippedByteIsEioByTheEndAndAfterwards) {
  auto a = Archive::Open(Path("flip.npz"), Options());
  ASSERT_TRUE(a.ok()) << a.status().message();
  auto r = Open(**a, "adc.npy");
  std::string got;
  Status s = ReadThrough(*r, 1 << 16, &got);
  ASSERT_FALSE(s.ok()) << "a flipped byte was served to the end with rc=0";
  EXPECT_EQ(s.code(), EIO);
  EXPECT_NE(s.message().find("flip.npz: member adc.npy: CRC-32 mismatch"), std::string::npos)
      << s.message();
  // Every later read fails too, even of bytes that are intact.
  std::string buf(100, '\0');
  auto again = r->ReadAt(0, std::as_writable_bytes(std::span(buf)));
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.status().code(), EIO);
  EXPECT_EQ(LogCount("CRC-32 mismatch"), 1u) << Log();
  // The other member is unaffected.
  std::string small;
  EXPECT_TRUE(ReadThrough(*Open(**a, "small.npy"), 100, &small).ok());
}

TEST_F(VerifyTest, AWrongCrcInTheDirectoryIsEioForAReaderOfTheEnd) {
  auto a = Archive::Open(Path("badcrc.npz"), Options());
  ASSERT_TRUE(a.ok());
  auto r = Open(**a, "adc.npy");
  // A reader that only reads the last byte waits for the pass and gets its verdict.
  std::byte last[1];
  auto got = r->ReadAt(r->size() - 1, last);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), EIO);
  EXPECT_NE(Log().find("badcrc.npz: member adc.npy: CRC-32 mismatch"), std::string::npos);
}

TEST_F(VerifyTest, AnEmptyStoredMemberWithANonZeroCrcIsEioNotAnEmptyFile) {
  auto a = Archive::Open(Path("empty.zip"), Options());
  ASSERT_TRUE(a.ok());
  std::byte b[16];
  auto got = Open(**a, "empty.bin")->ReadAt(0, b);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), EIO);
  auto ok = Open(**a, "ok.bin")->ReadAt(0, b);
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(*ok, 4u);
}

TEST_F(VerifyTest, StrictModeServesNoByteOfABadMember) {
  auto a = Archive::Open(Path("flip.npz"), Options(VerifyMode::kStrict));
  ASSERT_TRUE(a.ok());
  std::byte head[64];
  auto got = Open(**a, "adc.npy")->ReadAt(0, head);  // far from the damage
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), EIO);
  // Deflated members too: the whole member is checked before its first byte is served.
  auto c = Archive::Open(Path("badcrc.npz"), Options(VerifyMode::kStrict));
  ASSERT_TRUE(c.ok());
  auto r = Open(**c, "adc.npy");
  EXPECT_FALSE(r->ReadAt(0, head).ok());
}

TEST_F(VerifyTest, VerifyOffServesTheBytesUncheckedAndSplicesThem) {
  auto a = Archive::Open(Path("flip.npz"), Options(VerifyMode::kOff));
  ASSERT_TRUE(a.ok());
  auto r = Open(**a, "adc.npy");
  std::string got;
  ASSERT_TRUE(ReadThrough(*r, 1 << 16, &got).ok());
  EXPECT_EQ(got.size(), r->size());
  std::vector<std::byte> buf(4096);
  auto answer = r->Read(4096, buf);
  ASSERT_TRUE(answer.ok());
  EXPECT_EQ(answer->splice_fd, (*a)->fd());
  EXPECT_EQ(answer->length, 4096u);
  EXPECT_EQ((*a)->verify_bytes(*(*a)->Find("adc.npy")), 0u);
}

TEST_F(VerifyTest, AVerifiedMemberIsSplicedAfterOnePassOverIt) {
  auto a = Archive::Open(Path("stored.npz"), Options());
  ASSERT_TRUE(a.ok());
  const size_t adc = *(*a)->Find("adc.npy");
  auto r = Open(**a, "adc.npy");
  ASSERT_TRUE((*a)->VerifyMember(adc).ok());
  std::vector<std::byte> buf(1000);
  auto answer = r->Read(1 << 20, buf);
  ASSERT_TRUE(answer.ok());
  EXPECT_EQ(answer->splice_fd, (*a)->fd()) << "a verified member is spliced";
  EXPECT_EQ(answer->splice_offset, (*a)->members()[adc].entry.data_offset + (1 << 20));
  // The pass read the member once.
  EXPECT_EQ((*a)->verify_bytes(adc), r->size());
}

TEST_F(VerifyTest, AVerifiedRecordIsSavedAndAFreshArchiveChecksOnlyTheChunksItTouches) {
  const std::string path = Scratch("stored.npz");
  {
    auto a = Archive::Open(path, Options());
    ASSERT_TRUE(a.ok());
    EXPECT_FALSE((*a)->index_dirty());
    ASSERT_TRUE((*a)->VerifyMember(*(*a)->Find("adc.npy")).ok());
    EXPECT_TRUE((*a)->index_dirty());
    ASSERT_TRUE((*a)->SaveIndex().ok());
  }
  auto a = Archive::Open(path, Options());
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(Log().find("ignored"), std::string::npos) << Log();
  const size_t adc = *(*a)->Find("adc.npy");
  auto r = Open(**a, "adc.npy");
  std::vector<std::byte> buf(1000);
  auto answer = r->Read((2 << 20) + 10, buf);  // inside the third chunk
  ASSERT_TRUE(answer.ok());
  EXPECT_EQ(answer->splice_fd, (*a)->fd()) << "a chunk checked against the record is spliced";
  EXPECT_EQ((*a)->verify_bytes(adc), uint64_t{1} << 20) << "one chunk read, no pass";
  // The bytes are right.
  const std::string ref = ReadFileOrDie(Path("adc.npy"));
  auto copy = r->ReadAt((2 << 20) + 10, buf);
  ASSERT_TRUE(copy.ok());
  EXPECT_EQ(std::memcmp(buf.data(), ref.data() + (2 << 20) + 10, buf.size()), 0);
  EXPECT_EQ((*a)->verify_bytes(adc), uint64_t{1} << 20) << "a checked chunk is not read again";
}

// Rewrites the sidecar of `archive` with `edit` applied to its records.
void EditSidecar(const std::string& archive, const std::string& sidecar,
                 const std::function<void(std::vector<IndexRecord>&)>& edit) {
  testing::Sidecar contents;
  ASSERT_NO_FATAL_FAILURE(testing::ReadSidecar(archive, sidecar, &contents));
  edit(contents.records);
  WriteFileOrDie(sidecar,
                 EncodeIndexFile(contents.fingerprint, contents.entries, contents.records));
}

// A forgery of the stored records in `sidecar` that passes every load check: chunk CRCs
// `first` and `first + 1` are changed so that they still combine to the member's CRC-32
// (CRC-32 is linear).
void ForgeTwoChunkCrcs(const std::string& archive, const std::string& sidecar, size_t first) {
  EditSidecar(archive, sidecar, [first](std::vector<IndexRecord>& records) {
    for (IndexRecord& rec : records) {
      if (rec.kind != RecordKind::kStored || rec.chunk_crcs.size() < first + 2) continue;
      const uint32_t d = 0x5a5a1234;
      rec.chunk_crcs[first] ^= d;
      rec.chunk_crcs[first + 1] ^= Crc32Combine(d, 0, kStoredChunkBytes);
    }
  });
}

TEST_F(VerifyTest, ASidecarWithWrongChunkCrcsIsDistrustedAndTheGoodMemberReadsCorrectly) {
  const std::string path = Scratch("stored.npz");
  std::string sidecar;
  {
    auto a = Archive::Open(path, Options());
    ASSERT_TRUE(a.ok());
    ASSERT_TRUE((*a)->VerifyMember(*(*a)->Find("adc.npy")).ok());
    ASSERT_TRUE((*a)->SaveIndex().ok());
    sidecar = (*a)->IndexPath();
  }
  ForgeTwoChunkCrcs(path, sidecar, 0);
  auto a = Archive::Open(path, Options());
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(Log().find("ignored"), std::string::npos) << "the forgery must pass the load checks";
  auto r = Open(**a, "adc.npy");
  std::string got;
  ASSERT_TRUE(ReadThrough(*r, 100000, &got).ok());
  EXPECT_TRUE(got == ReadFileOrDie(Path("adc.npy")));
  EXPECT_NE(Log().find("verified again"), std::string::npos) << Log();
  // The new record replaces the forged one.
  EXPECT_TRUE((*a)->index_dirty());
  ASSERT_TRUE((*a)->SaveIndex().ok());
}

TEST_F(VerifyTest, ASequentialReaderOfAVerifiedMemberHasTheNextChunksCheckedAheadOfIt) {
  auto a = OpenBigWithRecord();
  ASSERT_TRUE(a.ok()) << a.status().message();
  const size_t big = *(*a)->Find("big.npy");
  auto r = Open(**a, "big.npy");
  const std::string ref = ReadFileOrDie(Path("big.npy"));
  constexpr uint64_t kRead = 5 << 20;  // past SequentialRun::kStreaming, inside chunk 4
  static_assert(kRead > SequentialRun::kStreaming);
  std::string buf(256 << 10, '\0');
  for (uint64_t off = 0; off < kRead; off += buf.size()) {
    auto got = r->ReadAt(off, std::as_writable_bytes(std::span(buf)));
    ASSERT_TRUE(got.ok()) << got.status().message();
    ASSERT_EQ(*got, buf.size());
    ASSERT_EQ(std::memcmp(buf.data(), ref.data() + off, buf.size()), 0) << off;
  }
  DrainVerifyPool();
  // The chunks read, and kCheckAheadChunks more, each read once to check it.
  const uint64_t touched = kRead / kStoredChunkBytes;
  EXPECT_EQ((*a)->verify_bytes(big),
            (touched + StoredMember::kCheckAheadChunks) * kStoredChunkBytes);
  // The last chunk checked ahead is served without being read to check it again (a jump
  // there is no sequential read, so nothing more is checked ahead).
  const uint64_t before = (*a)->verify_bytes(big);
  const uint64_t last = (touched + StoredMember::kCheckAheadChunks - 1) * kStoredChunkBytes;
  auto got = r->ReadAt(last, std::as_writable_bytes(std::span(buf)));
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(std::memcmp(buf.data(), ref.data() + last, buf.size()), 0);
  DrainVerifyPool();
  EXPECT_EQ((*a)->verify_bytes(big), before);
}

TEST_F(VerifyTest, ARandomReaderOfAVerifiedMemberGetsNoChunkCheckedAhead) {
  auto a = OpenBigWithRecord();
  ASSERT_TRUE(a.ok()) << a.status().message();
  const size_t big = *(*a)->Find("big.npy");
  auto r = Open(**a, "big.npy");
  std::string buf(256 << 10, '\0');
  const uint64_t chunks[] = {9, 2, 14, 5};
  for (uint64_t c : chunks) {
    ASSERT_TRUE(r->ReadAt(c * kStoredChunkBytes, std::as_writable_bytes(std::span(buf))).ok());
  }
  DrainVerifyPool();
  EXPECT_EQ((*a)->verify_bytes(big), std::size(chunks) * kStoredChunkBytes);
}

TEST_F(VerifyTest, ConcurrentReadersOfOneUncheckedChunkCheckItOnce) {
  auto a = OpenBigWithRecord();
  ASSERT_TRUE(a.ok()) << a.status().message();
  const size_t big = *(*a)->Find("big.npy");
  const std::string ref = ReadFileOrDie(Path("big.npy"));
  constexpr uint64_t kChunk = 6;
  constexpr size_t kPiece = 128 << 10;
  std::vector<std::thread> readers;
  std::vector<int> good(kStoredChunkBytes / kPiece, 0);
  for (size_t i = 0; i < good.size(); ++i) {
    readers.emplace_back([&, i] {
      auto r = (*a)->OpenMember(big);
      if (!r.ok()) return;
      std::string buf(kPiece, '\0');
      const uint64_t off = kChunk * kStoredChunkBytes + i * kPiece;
      auto got = (*r)->ReadAt(off, std::as_writable_bytes(std::span(buf)));
      good[i] =
          got.ok() && *got == kPiece && std::memcmp(buf.data(), ref.data() + off, kPiece) == 0;
    });
  }
  for (std::thread& t : readers) t.join();
  EXPECT_EQ(std::count(good.begin(), good.end(), 1), static_cast<long>(good.size()));
  EXPECT_EQ((*a)->verify_bytes(big), kStoredChunkBytes) << "one thread checks, the others wait";
}

TEST_F(VerifyTest, AWrongSidecarCrcMetByCheckAheadIsDistrustedOnTheReadersPath) {
  std::string sidecar;
  auto made = BigWithRecord(&sidecar);
  ASSERT_TRUE(made.ok()) << made.status().message();
  const std::string path = *made;
  // Chunks 8 and 9: met by check-ahead of a reader of the first chunks.
  ForgeTwoChunkCrcs(path, sidecar, 8);
  auto a = Archive::Open(path, Options());
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(Log().find("ignored"), std::string::npos) << "the forgery must pass the load checks";
  auto r = Open(**a, "big.npy");
  std::string got;
  ASSERT_TRUE(ReadThrough(*r, 256 << 10, &got).ok());
  EXPECT_TRUE(got == ReadFileOrDie(Path("big.npy")));
  EXPECT_EQ(LogCount("verified again"), 1u) << Log();
  EXPECT_EQ(LogCount("CRC-32 mismatch"), 0u) << Log();
}

// Replaces a deflated window by the same bytes with every non-zero byte changed: still a
// well-formed window, but the wrong one.
std::string ForgeWindow(const std::string& window, uint32_t size) {
  std::string plain(size, '\0');
  z_stream s{};
  inflateInit2(&s, -15);
  s.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(window.data()));
  s.avail_in = static_cast<uInt>(window.size());
  s.next_out = reinterpret_cast<Bytef*>(plain.data());
  s.avail_out = size;
  EXPECT_EQ(inflate(&s, Z_FINISH), Z_STREAM_END);
  inflateEnd(&s);
  for (char& c : plain) {
    if (c != 0) c = static_cast<char>(c ^ 0x5a);
  }
  z_stream d{};
  deflateInit2(&d, 6, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY);
  std::string out(deflateBound(&d, size), '\0');
  d.next_in = reinterpret_cast<Bytef*>(plain.data());
  d.avail_in = size;
  d.next_out = reinterpret_cast<Bytef*>(out.data());
  d.avail_out = static_cast<uInt>(out.size());
  EXPECT_EQ(deflate(&d, Z_FINISH), Z_STREAM_END);
  out.resize(d.total_out);
  deflateEnd(&d);
  return out;
}

TEST_F(VerifyTest, ASidecarWithAWrongWindowIsDistrustedAndTheMemberReadsCorrectly) {
  std::string path, sidecar;
  size_t smooth = 0;
  ASSERT_NO_FATAL_FAILURE(CompWithSavedIndex(&path, &smooth, &sidecar));
  int forged = 0;
  EditSidecar(path, sidecar, [&](std::vector<IndexRecord>& records) {
    for (IndexRecord& rec : records) {
      if (rec.kind != RecordKind::kDeflated || rec.checkpoints.size() < 5) continue;
      for (size_t k = 1; k < rec.checkpoints.size(); ++k) {
        Checkpoint& cp = rec.checkpoints[k];
        cp.window = ForgeWindow(cp.window, cp.window_size);
        ++forged;
      }
    }
  });
  ASSERT_GT(forged, 0);
  auto a = Archive::Open(path, Options());
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(Log().find("ignored"), std::string::npos) << "the forgery must pass the load checks";
  EXPECT_EQ((*a)->index_state(smooth), IndexState::kComplete);
  const std::string ref = ReadFileOrDie(Path("smooth.npy"));
  auto r = Open(**a, "smooth.npy");
  const uint64_t off = ref.size() / 2;
  std::string buf(100000, '\0');
  auto got = r->ReadAt(off, std::as_writable_bytes(std::span(buf)));
  ASSERT_TRUE(got.ok()) << got.status().message();
  EXPECT_TRUE(buf == ref.substr(off, buf.size()));
  EXPECT_NE(Log().find("rebuilt from the data"), std::string::npos) << Log();
  // The sidecar's checkpoints were dropped: a first pass rebuilds them (a complete index
  // would have needed none).
  ASSERT_TRUE((*a)->BuildIndex(smooth).ok());
  EXPECT_GT((*a)->first_pass_spans(smooth), 0u) << "the checkpoints came from a new first pass";
  std::string all;
  Status through = ReadThrough(*r, 1 << 20, &all);
  ASSERT_TRUE(through.ok()) << through.message() << "\n" << Log();
  EXPECT_TRUE(all == ref);
}

TEST_F(VerifyTest, ASidecarOthersCouldHaveForgedIsIgnored) {
  std::string path, sidecar;
  size_t smooth = 0;
  ASSERT_NO_FATAL_FAILURE(CompWithSavedIndex(&path, &smooth, &sidecar));
  ASSERT_EQ(::chmod(path.c_str(), 0644), 0);
  auto state = [&] {
    auto a = Archive::Open(path, Options());
    EXPECT_TRUE(a.ok());
    return a.ok() ? (*a)->index_state(smooth) : IndexState::kNone;
  };
  ASSERT_EQ(::chmod(sidecar.c_str(), 0644), 0);
  EXPECT_EQ(state(), IndexState::kComplete);
  // Writable by others who cannot write the archive.
  ASSERT_EQ(::chmod(sidecar.c_str(), 0666), 0);
  EXPECT_EQ(state(), IndexState::kNone);
  EXPECT_EQ(LogCount("not trusted: mode 0666 lets others write it"), 1u) << Log();
  ASSERT_EQ(::chmod(path.c_str(), 0666), 0);  // unless they can write the archive too
  EXPECT_EQ(state(), IndexState::kComplete);
  ASSERT_EQ(::chmod(path.c_str(), 0644), 0);
  ASSERT_EQ(::chmod(sidecar.c_str(), 0644), 0);
  // Owned by someone else (this test runs as root, so any owner but root is someone else).
  if (::geteuid() != 0) NPZ_SKIP_UNLESS_CI("chown needs root");
  ASSERT_EQ(::chown(sidecar.c_str(), 12345, 12345), 0);
  EXPECT_EQ(state(), IndexState::kNone);
  EXPECT_EQ(LogCount("not trusted: owned by uid 12345"), 1u) << Log();
  ASSERT_EQ(::chown(path.c_str(), 12345, 12345), 0);  // unless they own the archive
  EXPECT_EQ(state(), IndexState::kComplete);
}

TEST_F(VerifyTest, DamagedDataUnderASavedIndexIsEioAfterTheRebuildFailsToo) {
  std::string path, sidecar;
  size_t smooth = 0;
  ASSERT_NO_FATAL_FAILURE(CompWithSavedIndex(&path, &smooth, &sidecar));
  // Damage the middle of smooth.npy's data.
  ASSERT_NO_FATAL_FAILURE(DamageKeepingMtime(
      path, "smooth.npy", 2000, [](const ZipEntry& e) { return e.compressed_size / 2; }));
  auto a = Archive::Open(path, Options());
  ASSERT_TRUE(a.ok());
  ASSERT_EQ((*a)->index_state(smooth), IndexState::kComplete);
  auto r = Open(**a, "smooth.npy");
  std::string all;
  Status s = ReadThrough(*r, 1 << 20, &all);
  ASSERT_FALSE(s.ok()) << "damaged data was served";
  EXPECT_EQ(s.code(), EIO);
  EXPECT_NE(Log().find("rebuilt from the data"), std::string::npos) << Log();
  // Every later read fails: the member is bad, not the index.
  std::byte b[16];
  EXPECT_FALSE(r->ReadAt(0, b).ok());
}

TEST_F(VerifyTest, AnArchiveTruncatedWhileOpenIsEioNeverShortData) {
  for (std::string name : {"stored.npz", "comp.npz"}) {
    SCOPED_TRACE(name);
    const std::string path = Scratch(name);
    auto a = Archive::Open(path, Options(VerifyMode::kOff));
    ASSERT_TRUE(a.ok());
    auto r = Open(**a, "adc.npy");
    std::string buf(4096, '\0');
    ASSERT_TRUE(r->ReadAt(0, std::as_writable_bytes(std::span(buf))).ok());
    ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(std::filesystem::file_size(path) / 2)),
              0);
    auto got = r->ReadAt(1 << 20, std::as_writable_bytes(std::span(buf)));
    ASSERT_FALSE(got.ok());
    EXPECT_EQ(got.status().code(), EIO);
    EXPECT_NE(got.status().message().find("changed while it was open"), std::string::npos)
        << got.status().message();
    // Splicing is refused as well.
    auto answer = r->Read(0, std::as_writable_bytes(std::span(buf)));
    EXPECT_FALSE(answer.ok());
  }
  EXPECT_EQ(LogCount("changed while it was open"), 2u) << Log();
}

TEST_F(VerifyTest, AReadErrorInTheVerifyPassIsNoVerdictAndTheMemberReadsOnceTheArchiveIsBack) {
  const std::string path = Scratch("stored.npz");
  const std::string original = ReadFileOrDie(path);
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  auto a = Archive::Open(path, Options());
  ASSERT_TRUE(a.ok());
  auto r = Open(**a, "adc.npy");
  // The pass starts with the first read, but runs only once the archive is cut short.
  std::promise<void> gate = HoldVerifyPool();
  std::byte head[64];
  ASSERT_TRUE(r->ReadAt(0, head).ok());
  ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(original.size() / 2)), 0);
  gate.set_value();
  DrainVerifyPool();
  EXPECT_EQ(LogCount("the check of the member resumes at the next read"), 1u) << Log();
  // Put back as it was (a recovery does this): the pass resumes and the member reads.
  WriteFileOrDie(path, original);
  struct timespec times[2] = {{0, UTIME_OMIT}, st.st_mtim};
  ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), times, 0), 0);
  std::string bytes;
  Status read = ReadThrough(*r, 1 << 20, &bytes);
  ASSERT_TRUE(read.ok()) << read.message();
  EXPECT_EQ(bytes, ReadFileOrDie(Path("adc.npy")));
}

TEST_F(VerifyTest, AChunkThatFailedItsCheckIsNotServedUncheckedWhileTheNewPassRuns) {
  auto made = BigWithRecord();
  ASSERT_TRUE(made.ok()) << made.status().message();
  const std::string path = *made;
  // Damage chunk 2.
  ASSERT_NO_FATAL_FAILURE(DamageKeepingMtime(
      path, "big.npy", 100, [](const ZipEntry&) { return 2 * kStoredChunkBytes + 1000; }));
  auto a = Archive::Open(path, Options());
  ASSERT_TRUE(a.ok());
  auto r = Open(**a, "big.npy");
  // The new pass is held back until the second reader has asked.
  std::promise<void> gate = HoldVerifyPool();
  auto read_chunk_2 = [&r] {
    std::string buf(4096, '\0');
    return r->ReadAt(2 * kStoredChunkBytes, std::as_writable_bytes(std::span(buf))).status();
  };
  std::thread first([&] { EXPECT_EQ(read_chunk_2().code(), EIO); });
  while (LogCount("verified again") == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  Status second;
  std::thread later([&] { second = read_chunk_2(); });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // served at once, if unchecked
  gate.set_value();
  first.join();
  later.join();
  EXPECT_EQ(second.code(), EIO) << "bytes known to be suspect were served";
}

TEST_F(VerifyTest, AnArchiveRewrittenInPlaceWhileOpenIsEio) {
  const std::string path = Scratch("stored.npz");
  auto a = Archive::Open(path, Options());
  ASSERT_TRUE(a.ok());
  auto r = Open(**a, "small.npy");
  std::byte b[16];
  ASSERT_TRUE(r->ReadAt(0, b).ok());
  struct timespec times[2] = {{0, UTIME_OMIT}, {1234567, 0}};
  ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), times, 0), 0);
  auto got = r->ReadAt(0, b);
  ASSERT_FALSE(got.ok());
  EXPECT_NE(got.status().message().find("modification time changed"), std::string::npos);
}

TEST_F(VerifyTest, BytesChangedUnderAnOpenArchiveWithItsMtimePutBackAreEioNotServed) {
  CheckedBig big;
  ASSERT_NO_FATAL_FAILURE(OpenAndReadBig(&big));
  ASSERT_NO_FATAL_FAILURE(DamageSecondChunk(big.path));
  auto got = ReadSecondChunk(*big.reader);
  ASSERT_FALSE(got.ok()) << "bytes changed since they were checked were served";
  EXPECT_EQ(got.status().code(), EIO);
  EXPECT_NE(got.status().message().find("CRC-32 mismatch"), std::string::npos)
      << got.status().message();
}

TEST_F(VerifyTest, BytesChangedInPlaceAreEioEvenWhileAnAppenderHoldsTheArchive) {
  CheckedBig big;
  ASSERT_NO_FATAL_FAILURE(OpenAndReadBig(&big));
  ASSERT_NO_FATAL_FAILURE(DamageSecondChunk(big.path));
  // An append begins (its lock held, the file grown) before any read saw the damage: reads
  // go on from the directory read at open, but never splice bytes checked before.
  UniqueFd appender(::open(big.path.c_str(), O_RDWR | O_APPEND));
  ASSERT_TRUE(appender.valid());
  ASSERT_EQ(::flock(appender.get(), LOCK_EX), 0);
  ASSERT_EQ(::write(appender.get(), "new member bytes", 16), 16);
  auto got = ReadSecondChunk(*big.reader);
  ASSERT_FALSE(got.ok()) << "bytes changed since they were checked were served";
  EXPECT_EQ(got.status().code(), EIO);
}

TEST_F(VerifyTest, AChmodOfAnOpenArchiveChecksItsBytesAgainAndServesThem) {
  CheckedBig big;
  ASSERT_NO_FATAL_FAILURE(OpenAndReadBig(&big));
  const size_t i = *big.archive->Find("big.npy");
  const uint64_t checked = big.archive->verify_bytes(i);
  ASSERT_EQ(::chmod(big.path.c_str(), 0640), 0);  // the ctime moves, no byte changes
  std::string after;
  ASSERT_TRUE(ReadThrough(*big.reader, 1 << 20, &after).ok());
  EXPECT_TRUE(after == big.bytes);
  EXPECT_GE(big.archive->verify_bytes(i), checked + big.bytes.size()) << "checked again";
  EXPECT_EQ(LogCount("changed while it was open"), 0u) << Log();
}

TEST_F(VerifyTest, AnArchiveAppendedToInPlaceWhileOpenKeepsServingItsMembers) {
  for (std::string name : {"stored.npz", "comp.npz"}) {
    SCOPED_TRACE(name);
    const std::string path = Scratch(name);
    auto a = Archive::Open(path, Options());
    ASSERT_TRUE(a.ok());
    auto r = Open(**a, "adc.npy");
    std::string buf(4096, '\0');
    ASSERT_TRUE(r->ReadAt(0, std::as_writable_bytes(std::span(buf))).ok());
    NewMember added;
    added.name = "added.npy";
    added.pieces.push_back(MemberPiece{"not read by the open archive"});
    ASSERT_TRUE(AppendToArchive(path, {added}, {}).ok());
    std::string all;
    ASSERT_TRUE(ReadThrough(*r, 1 << 20, &all).ok());
    EXPECT_TRUE(all == ReadFileOrDie(Path("adc.npy")));
    // What it learns is saved for the archive as it is now: a fresh Open loads it.
    ASSERT_TRUE((*a)->BuildIndex(*(*a)->Find("adc.npy")).ok());
    ASSERT_TRUE((*a)->SaveIndex().ok());
    auto b = Archive::Open(path, Options());
    ASSERT_TRUE(b.ok());
    EXPECT_TRUE((*b)->Find("added.npy").has_value());
    EXPECT_EQ((*b)->index_state(*(*b)->Find("adc.npy")),
              name == "comp.npz" ? IndexState::kComplete : IndexState::kNotNeeded);
  }
  EXPECT_EQ(LogCount("grew by an append"), 2u) << Log();
  EXPECT_EQ(LogCount("changed while it was open"), 0u) << Log();
  EXPECT_EQ(LogCount("ignored"), 0u) << Log();
}

TEST_F(VerifyTest, BytesAddedAfterTheEndThatAreNoAppendOfMembersAreEio) {
  const std::string path = Scratch("stored.npz");
  auto a = Archive::Open(path, Options());
  ASSERT_TRUE(a.ok());
  auto r = Open(**a, "small.npy");
  std::byte b[16];
  ASSERT_TRUE(r->ReadAt(0, b).ok());
  {
    UniqueFd fd(::open(path.c_str(), O_WRONLY | O_APPEND));
    ASSERT_TRUE(fd.valid());
    ASSERT_EQ(::write(fd.get(), "junk", 4), 4);
  }
  auto got = r->ReadAt(0, b);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), EIO);
  EXPECT_FALSE(r->ReadAt(0, b).ok());
  EXPECT_EQ(LogCount("changed while it was open"), 1u) << Log();
}

}  // namespace
}  // namespace npzfs
