// Tests of Archive and the member readers against archives numpy and zipfile write at
// test time: every byte is compared with what zipfile reads.
#include "npzfs/archive.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <thread>

#include "core/base/names.h"
#include "core/base/runtime_dir.h"
#include "npzfs/file_util.h"
#include "tests/test_util.h"
#include "tests/zip_bytes.h"

namespace npzfs {
namespace {

using testing::ReadFileOrDie;
using testing::RunPython;
using testing::TempDir;
using testing::WriteFileOrDie;

// Archives shared by the tests (made once: numpy is slow to start).
class ArchiveTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();  // NOLINT: lives for the whole suite, deleted in TearDownTestSuite
    RunPython(R"PY(
import numpy as np, zipfile, os
D = ')PY" + dir_->path() +
              R"PY('
rng = np.random.default_rng(5)
t = np.arange(1_500_000)
adc = (1000 * np.sin(t / 500.0) + rng.normal(0, 30, t.size)).astype('<i2')
f32 = np.cumsum(rng.normal(0, 1, 700_000)).astype('<f4')
small = np.arange(10, dtype='<f8')
np.savez_compressed(D + '/comp.npz', adc=adc, small=small, **{'grp/sub/f32': f32})
np.savez(D + '/stored.npz', adc=adc, small=small)
np.savez(D + '/empty.npz')
for arch in ['comp.npz', 'stored.npz']:
    with zipfile.ZipFile(D + '/' + arch) as z:
        for name in z.namelist():
            out = D + '/ref/' + arch + '/' + name
            os.makedirs(os.path.dirname(out), exist_ok=True)
            open(out, 'wb').write(z.read(name))

with zipfile.ZipFile(D + '/tree.zip', 'w', zipfile.ZIP_DEFLATED) as z:
    z.writestr('dup.npy', b'first')
    z.writestr('../evil.npy', b'evil')
    z.writestr('/abs.npy', b'abs')
    z.writestr('a/./b//c.npy', b'abc')
    z.writestr('dir/', b'')
    z.writestr('meta.json', b'{"k": 1}')
    z.writestr('emptyfile', b'')
    z.writestr('x', b'file and directory')
    z.writestr('x/y', b'child')
    z.writestr('lz.bin', b'x' * 1000, compress_type=zipfile.ZIP_LZMA)
    z.writestr('enc.bin', b'secret', compress_type=zipfile.ZIP_STORED)
    z.writestr('dup.npy', b'second-wins')
data = bytearray(open(D + '/tree.zip', 'rb').read())
with zipfile.ZipFile(D + '/tree.zip') as z:
    for info in z.infolist():
        if info.filename == 'enc.bin':
            data[info.header_offset + 6] |= 1
for i in central_records(data, 'enc.bin'):
    data[i + 8] |= 1
open(D + '/tree.zip', 'wb').write(bytes(data))

# CRC-32 damaged in the central directory (deflated and stored members).
for src, dst in [('comp.npz', 'badcrc.npz'), ('stored.npz', 'badcrc_stored.npz')]:
    data = bytearray(open(D + '/' + src, 'rb').read())
    for i in central_records(data, 'adc.npy'):
        data[i + 16] ^= 0x55
    open(D + '/' + dst, 'wb').write(bytes(data))

# Deflate data damaged in the middle of adc.npy.
data = bytearray(open(D + '/comp.npz', 'rb').read())
with zipfile.ZipFile(D + '/comp.npz') as z:
    info = z.getinfo('adc.npy')
mid = info.header_offset + 100 + info.compress_size // 2
for k in range(mid, mid + 2000):
    data[k] = (data[k] * 7 + 13) & 0xff
open(D + '/baddata.npz', 'wb').write(bytes(data))

# Names the kernel cannot carry, beside names it can.
with zipfile.ZipFile(D + '/longnames.zip', 'w') as z:
    z.writestr('x' * 5000 + '.npy', b'long component')
    z.writestr('y' * 256, b'one byte too long')
    z.writestr('k' * 255, b'255 bytes is fine')
    z.writestr('/'.join(['d' * 200] * 21) + '/f.npy', b'path too long')
    z.writestr('normal.npy', b'normal')

# Sizes that lie: a.npy's central directory sizes run 8163 bytes into b.npy.
np.savez(D + '/lying.npz', a=np.arange(50000, dtype='<i8'), b=np.arange(5000, dtype='<f8'))
data = bytearray(open(D + '/lying.npz', 'rb').read())
for i in central_records(data, 'a.npy'):
    for f in (20, 24):
        size = int.from_bytes(data[i + f:i + f + 4], 'little')
        data[i + f:i + f + 4] = (size + 8163).to_bytes(4, 'little')
open(D + '/lying.npz', 'wb').write(bytes(data))
with zipfile.ZipFile(D + '/lying.npz') as z:
    open(D + '/ref_lying_b.npy', 'wb').write(z.read('b.npy'))

# Local headers that name another member: b.npy's central record points at a.npy's local
# header (same sizes and CRC, so only the name tells), and c.npy's local header says d.npy.
a = np.arange(100, dtype='<i8')
np.savez(D + '/names.npz', a=a, b=a, c=np.arange(7, dtype='<f4'), e=np.arange(3))
data = bytearray(open(D + '/names.npz', 'rb').read())
with zipfile.ZipFile(D + '/names.npz') as z:
    a_at, c_at = z.getinfo('a.npy').header_offset, z.getinfo('c.npy').header_offset
for i in central_records(data, 'b.npy'):
    data[i + 42:i + 46] = a_at.to_bytes(4, 'little')
assert data[c_at + 30:c_at + 35] == b'c.npy'
data[c_at + 30:c_at + 35] = b'd.npy'
open(D + '/names.npz', 'wb').write(bytes(data))
)PY");
  }
  static void TearDownTestSuite() {
    delete dir_;  // NOLINT
    dir_ = nullptr;
  }

  static std::string Path(const std::string& name) { return dir_->Join(name); }
  static std::string Ref(const std::string& archive, const std::string& member) {
    return ReadFileOrDie(dir_->Join("ref/" + archive + "/" + member));
  }

  // Copies a shared archive into a scratch dir, so sidecar tests do not interfere.
  std::string CopyToScratch(const std::string& name) {
    std::string dst = scratch_.Join(name);
    std::filesystem::copy_file(Path(name), dst);
    return dst;
  }

  ArchiveOptions Options() {
    ArchiveOptions o;
    o.checkpoint_spacing = 128 << 10;
    o.log = [this](const std::string& line) {
      std::lock_guard<std::mutex> lock(log_mu_);  // background passes log from other threads
      log_ += line + "\n";
    };
    return o;
  }

  static std::string ReadAll(MemberReader& r, size_t chunk) {
    std::string out(r.size(), '\0');
    size_t done = 0;
    while (done < out.size()) {
      size_t n = std::min(chunk, out.size() - done);
      Result<size_t> got = r.ReadAt(done, std::as_writable_bytes(std::span(out.data() + done, n)));
      EXPECT_TRUE(got.ok()) << got.status().message();
      if (!got.ok() || *got == 0) break;
      done += *got;
    }
    out.resize(done);
    return out;
  }

  static TempDir* dir_;
  TempDir scratch_;
  std::string Log() {
    std::lock_guard<std::mutex> lock(log_mu_);
    return log_;
  }
  void ClearLog() {
    std::lock_guard<std::mutex> lock(log_mu_);
    log_.clear();
  }

  std::mutex log_mu_;
  std::string log_;  // guarded by log_mu_
};
TempDir* ArchiveTest::dir_ = nullptr;

std::shared_ptr<MemberReader> OpenByPath(Archive& a, const std::string& path) {
  std::optional<size_t> i = a.Find(path);
  EXPECT_TRUE(i.has_value()) << path;
  if (!i) return nullptr;
  auto r = a.OpenMember(*i);
  EXPECT_TRUE(r.ok()) << r.status().message();
  return r.ok() ? *r : nullptr;
}

TEST_F(ArchiveTest, ListsSanitizedPathsWithTheLastDuplicateWinning) {
  auto a = Archive::Open(Path("tree.zip"), Options());
  ASSERT_TRUE(a.ok()) << a.status().message();
  std::vector<std::string> paths;
  for (const ArchiveMember& m : (*a)->members()) paths.push_back(m.path);
  std::sort(paths.begin(), paths.end());
  std::vector<std::string> expected = {"a/b/c.npy", "abs.npy", "dup.npy",   "emptyfile",
                                       "enc.bin",   "lz.bin",  "meta.json", "x/y"};
  EXPECT_EQ(paths, expected);
  auto dup = OpenByPath(**a, "dup.npy");
  ASSERT_NE(dup, nullptr);
  EXPECT_EQ(ReadAll(*dup, 4), "second-wins");
  EXPECT_EQ(ReadAll(*OpenByPath(**a, "a/b/c.npy"), 100), "abc");
  EXPECT_EQ(ReadAll(*OpenByPath(**a, "emptyfile"), 100), "");
  EXPECT_NE(Log().find("../evil.npy"), std::string::npos) << Log();
  EXPECT_NE(Log().find("duplicate member name dup.npy"), std::string::npos) << Log();
  EXPECT_NE(Log().find("member x: it is also a directory"), std::string::npos) << Log();
  EXPECT_FALSE((*a)->Find("dir").has_value());
  EXPECT_FALSE((*a)->Find("x").has_value());
}

TEST_F(ArchiveTest, NamesTheKernelCannotCarryAreSkippedAndTheirSiblingsListed) {
  auto a = Archive::Open(Path("longnames.zip"), Options());
  ASSERT_TRUE(a.ok()) << a.status().message();
  std::vector<std::string> paths;
  for (const ArchiveMember& m : (*a)->members()) paths.push_back(m.path);
  std::sort(paths.begin(), paths.end());
  EXPECT_EQ(paths, (std::vector<std::string>{std::string(255, 'k'), "normal.npy"}));
  EXPECT_EQ(ReadAll(*OpenByPath(**a, "normal.npy"), 100), "normal");
  EXPECT_EQ(ReadAll(*OpenByPath(**a, std::string(255, 'k')), 100), "255 bytes is fine");
  EXPECT_NE(Log().find("has a component of 5004 bytes"), std::string::npos) << Log();
  EXPECT_NE(Log().find("has a component of 256 bytes"), std::string::npos) << Log();
  EXPECT_NE(Log().find("is 4226 bytes long"), std::string::npos) << Log();
  // Each skipped name is one readable log line, not 5000 bytes of 'x'.
  EXPECT_EQ(Log().find(std::string(100, 'x')), std::string::npos);
}

TEST_F(ArchiveTest, AMemberWhoseSizesRunIntoTheNextMemberIsRefusedAtOpen) {
  auto a = Archive::Open(Path("lying.npz"), Options());
  ASSERT_TRUE(a.ok()) << a.status().message();
  ASSERT_EQ((*a)->members().size(), 1u);
  EXPECT_EQ((*a)->members()[0].path, "b.npy");
  EXPECT_NE(Log().find("skipping member a.npy: its data"), std::string::npos) << Log();
  EXPECT_NE(Log().find("runs into the local header of b.npy"), std::string::npos) << Log();
  EXPECT_TRUE(ReadAll(*OpenByPath(**a, "b.npy"), 1000) ==
              ReadFileOrDie(dir_->Join("ref_lying_b.npy")));
}

TEST_F(ArchiveTest, AMemberWhoseLocalHeaderNamesAnotherIsRefusedAtOpen) {
  auto a = Archive::Open(Path("names.npz"), Options());
  ASSERT_TRUE(a.ok()) << a.status().message();
  std::vector<std::string> paths;
  for (const ArchiveMember& m : (*a)->members()) paths.push_back(m.path);
  EXPECT_EQ(paths, (std::vector<std::string>{"a.npy", "e.npy"}));
  EXPECT_NE(Log().find("skipping member b.npy: its local header gives a different name"),
            std::string::npos)
      << Log();
  EXPECT_NE(Log().find("skipping member c.npy: its local header gives a different name"),
            std::string::npos)
      << Log();
}

TEST_F(ArchiveTest, AMemberClaimingMoreBytesThanAFileCanHoldIsSkipped) {
  // A ZIP64 extra may claim up to 2^64 - 1 bytes; a file's size (off_t) ends at 2^63 - 1, and
  // the kernel refuses a negative one.
  std::string zip64 = {'\x01', '\x00', '\x08', '\x00'};  // ID 1, 8 bytes: the size alone
  const uint64_t claimed = uint64_t{1} << 63;
  for (int i = 0; i < 8; ++i) zip64.push_back(static_cast<char>(claimed >> (8 * i)));
  testing::ZipMemberSpec huge{"huge.npy", 8, std::string("\x03\x00", 2), 0, 0xFFFFFFFF, zip64};
  testing::ZipMemberSpec fine{"fine.npy", 0, "ok", 0x79DCDD47, 2, ""};  // CRC-32 of "ok"
  WriteFileOrDie(Path("huge.zip"), testing::BuildZip({huge, fine}));
  auto a = Archive::Open(Path("huge.zip"), Options());
  ASSERT_TRUE(a.ok()) << a.status().message();
  ASSERT_EQ((*a)->members().size(), 1u);
  EXPECT_EQ((*a)->members()[0].path, "fine.npy");
  EXPECT_EQ(ReadAll(*OpenByPath(**a, "fine.npy"), 10), "ok");
  EXPECT_NE(Log().find("skipping member huge.npy: it claims 9223372036854775808 bytes"),
            std::string::npos)
      << Log();
}

TEST_F(ArchiveTest, EncryptedAndUnsupportedMembersAreListedButDoNotOpen) {
  auto a = Archive::Open(Path("tree.zip"), Options());
  ASSERT_TRUE(a.ok()) << a.status().message();
  std::optional<size_t> enc = (*a)->Find("enc.bin"), lz = (*a)->Find("lz.bin");
  ASSERT_TRUE(enc && lz);
  auto r1 = (*a)->OpenMember(*enc);
  ASSERT_FALSE(r1.ok());
  EXPECT_EQ(r1.status().code(), EPERM);
  EXPECT_NE(r1.status().message().find("tree.zip: member enc.bin is encrypted"), std::string::npos);
  auto r2 = (*a)->OpenMember(*lz);
  ASSERT_FALSE(r2.ok());
  EXPECT_EQ(r2.status().code(), ENOTSUP);
  EXPECT_NE(r2.status().message().find("method 14"), std::string::npos);
  EXPECT_EQ((*a)->members()[*lz].open_errno, ENOTSUP);
}

TEST_F(ArchiveTest, AnEmptyArchiveHasNoMembers) {
  auto a = Archive::Open(Path("empty.npz"), Options());
  ASSERT_TRUE(a.ok()) << a.status().message();
  EXPECT_TRUE((*a)->members().empty());
  EXPECT_TRUE((*a)->SaveIndex().ok());
}

TEST_F(ArchiveTest, AFileThatIsNotAZipIsAClearError) {
  WriteFileOrDie(scratch_.Join("junk.npz"), std::string(1000, 'j'));
  auto a = Archive::Open(scratch_.Join("junk.npz"), Options());
  ASSERT_FALSE(a.ok());
  EXPECT_NE(a.status().message().find("junk.npz"), std::string::npos);
  auto missing = Archive::Open(scratch_.Join("missing.npz"), Options());
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), ENOENT);
}

TEST_F(ArchiveTest, EveryMemberReadsExactlyLikeZipfile) {
  for (std::string archive : {"comp.npz", "stored.npz"}) {
    auto a = Archive::Open(Path(archive), Options());
    ASSERT_TRUE(a.ok()) << a.status().message();
    ASSERT_GE((*a)->members().size(), 2u);
    for (size_t i = 0; i < (*a)->members().size(); ++i) {
      const ArchiveMember& m = (*a)->members()[i];
      std::string ref = Ref(archive, m.entry.name);
      auto r = (*a)->OpenMember(i);
      ASSERT_TRUE(r.ok()) << r.status().message();
      EXPECT_EQ((*r)->size(), ref.size());
      EXPECT_TRUE(ReadAll(**r, 100003) == ref) << archive << " " << m.path;
      EXPECT_TRUE(ReadAll(**r, 1 << 24) == ref) << archive << " " << m.path;
      // Read: a stored member, checked by now (a read reached its end), answers with a splice
      // of the archive; a deflated member with the cached span holding the bytes.
      std::vector<std::byte> head(100);
      auto answer = (*r)->Read(0, head);
      ASSERT_TRUE(answer.ok()) << answer.status().message();
      EXPECT_EQ(answer->length, std::min<size_t>(100, ref.size()));
      if (m.entry.method == 0) {
        EXPECT_EQ(answer->splice_fd, (*a)->fd());
        EXPECT_EQ(answer->splice_offset, m.entry.data_offset);
      } else {
        EXPECT_EQ(answer->splice_fd, -1);
        ASSERT_EQ(answer->pieces.size(), 1u);
        ASSERT_EQ(answer->pieces[0].size(), answer->length);
        EXPECT_TRUE(std::memcmp(answer->pieces[0].data(), ref.data(), answer->length) == 0);
      }
      // Past the end: 0 bytes.
      std::byte b[4];
      auto past = (*r)->ReadAt(ref.size(), b);
      ASSERT_TRUE(past.ok());
      EXPECT_EQ(*past, 0u);
    }
  }
}

TEST_F(ArchiveTest, AThousandRandomReadsMatchTheReference) {
  ArchiveOptions o = Options();
  o.checkpoint_spacing = 64 << 10;
  o.cache_bytes = 1 << 20;  // smaller than the members: spans are evicted and re-inflated
  auto a = Archive::Open(Path("comp.npz"), o);
  ASSERT_TRUE(a.ok()) << a.status().message();
  std::vector<std::string> refs;
  std::vector<std::shared_ptr<MemberReader>> readers;
  for (size_t i = 0; i < (*a)->members().size(); ++i) {
    refs.push_back(Ref("comp.npz", (*a)->members()[i].entry.name));
    readers.push_back(*(*a)->OpenMember(i));
  }
  std::mt19937_64 rng(42);
  std::string buf;
  for (int n = 0; n < 1000; ++n) {
    size_t i = rng() % refs.size();
    const std::string& ref = refs[i];
    uint64_t off = rng() % (ref.size() + 10);
    size_t len = rng() % 3 == 0 ? rng() % 600000 : rng() % 5000;
    buf.assign(len, '\0');
    auto got = readers[i]->ReadAt(off, std::as_writable_bytes(std::span(buf)));
    ASSERT_TRUE(got.ok()) << got.status().message();
    size_t expect = off >= ref.size() ? 0 : std::min<size_t>(len, ref.size() - off);
    ASSERT_EQ(*got, expect);
    ASSERT_TRUE(buf.compare(0, expect, ref, std::min<size_t>(off, ref.size()), expect) == 0)
        << "member " << i << " offset " << off << " length " << len;
  }
}

TEST_F(ArchiveTest, ADeflatedReadIsAnsweredWithHeldSpanPiecesThatOutliveTheirEviction) {
  ArchiveOptions o = Options();
  o.checkpoint_spacing = 64 << 10;
  o.cache_bytes = 1 << 20;  // a few spans: the ones held below are evicted by later reads
  auto a = Archive::Open(Path("comp.npz"), o);
  ASSERT_TRUE(a.ok()) << a.status().message();
  const std::string ref = Ref("comp.npz", "grp/sub/f32.npy");
  auto r = OpenByPath(**a, "grp/sub/f32.npy");
  ASSERT_NE(r, nullptr);
  ASSERT_GT(ref.size(), 2 * o.cache_bytes);
  // Requests of up to 300 KiB cross spans (or fast-path chunks of 256 KiB): some answers
  // have several pieces. The answers are kept while the whole member is read, so their
  // spans leave the cache.
  std::mt19937_64 rng(7);
  std::vector<std::pair<uint64_t, ReadAnswer>> kept;
  size_t several = 0;  // answers of more than one piece
  std::string scratch(300 << 10, '\0');
  for (int n = 0; n < 40; ++n) {
    const uint64_t off = rng() % ref.size();
    const size_t len = rng() % (300 << 10) + 1;
    Result<ReadAnswer> got = r->Read(off, std::as_writable_bytes(std::span(scratch.data(), len)));
    ASSERT_TRUE(got.ok()) << got.status().message();
    ASSERT_EQ(got->splice_fd, -1);
    ASSERT_FALSE(got->pieces.empty()) << "offset " << off;
    ASSERT_EQ(got->length, std::min<size_t>(len, ref.size() - off));
    several += got->pieces.size() > 1 ? 1 : 0;
    kept.emplace_back(off, std::move(got).value());
  }
  EXPECT_GT(several, 0u);
  ReadAll(*r, 1 << 20);
  for (const auto& [off, answer] : kept) {
    std::string bytes;
    for (std::span<const std::byte> piece : answer.pieces) {
      bytes.append(reinterpret_cast<const char*>(piece.data()), piece.size());
    }
    ASSERT_EQ(bytes.size(), answer.length);
    EXPECT_TRUE(bytes == ref.substr(off, answer.length)) << "offset " << off;
  }
  // Past the end: no bytes, no pieces.
  Result<ReadAnswer> end = r->Read(ref.size(), std::as_writable_bytes(std::span(scratch)));
  ASSERT_TRUE(end.ok());
  EXPECT_EQ(end->length, 0u);
  EXPECT_TRUE(end->pieces.empty());
}

TEST_F(ArchiveTest, ASavedIndexIsReusedWithoutAnotherFirstPass) {
  std::string path = CopyToScratch("comp.npz");
  std::string index_path;
  {
    auto a = Archive::Open(path, Options());
    ASSERT_TRUE(a.ok()) << a.status().message();
    EXPECT_FALSE((*a)->index_dirty());
    for (size_t i = 0; i < (*a)->members().size(); ++i) {
      uint64_t last = 0;
      ASSERT_TRUE((*a)->BuildIndex(i, [&](uint64_t done, uint64_t) { last = done; }).ok());
      EXPECT_EQ(last, (*a)->members()[i].entry.uncompressed_size);
      EXPECT_EQ((*a)->index_state(i), IndexState::kComplete);
    }
    EXPECT_TRUE((*a)->index_dirty());
    ASSERT_TRUE((*a)->SaveIndex().ok());
    EXPECT_FALSE((*a)->index_dirty());
    index_path = (*a)->IndexPath();
    EXPECT_EQ(index_path, scratch_.Join(".comp.npz.npzfs-index"));
  }
  ASSERT_TRUE(std::filesystem::exists(index_path));
  auto b = Archive::Open(path, Options());
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(Log().find("ignored"), std::string::npos) << Log();
  std::mt19937_64 rng(1);
  for (size_t i = 0; i < (*b)->members().size(); ++i) {
    EXPECT_EQ((*b)->index_state(i), IndexState::kComplete);
    std::string ref = Ref("comp.npz", (*b)->members()[i].entry.name);
    auto r = *(*b)->OpenMember(i);
    for (int n = 0; n < 50; ++n) {
      uint64_t off = rng() % ref.size();
      std::string buf(std::min<size_t>(70000, ref.size() - off), '\0');
      ASSERT_TRUE(r->ReadAt(off, std::as_writable_bytes(std::span(buf))).ok());
      ASSERT_TRUE(buf == ref.substr(off, buf.size()));
    }
    EXPECT_TRUE(ReadAll(*r, 1 << 20) == ref);
    EXPECT_EQ((*b)->first_pass_spans(i), 0u) << "member " << i << " redid its first pass";
  }
  EXPECT_FALSE((*b)->index_dirty());
}

TEST_F(ArchiveTest, ACorruptOrStaleSidecarIsIgnoredAndRebuilt) {
  std::string path = CopyToScratch("comp.npz");
  std::string index_path;
  {
    auto a = Archive::Open(path, Options());
    ASSERT_TRUE(a.ok());
    ASSERT_TRUE((*a)->BuildIndex(*(*a)->Find("adc.npy")).ok());
    ASSERT_TRUE((*a)->SaveIndex().ok());
    index_path = (*a)->IndexPath();
  }
  std::string good = ReadFileOrDie(index_path);
  std::string bad = good;
  bad[bad.size() / 2] ^= 0x20;
  WriteFileOrDie(index_path, bad);
  {
    auto a = Archive::Open(path, Options());
    ASSERT_TRUE(a.ok());
    size_t adc = *(*a)->Find("adc.npy");
    EXPECT_EQ((*a)->index_state(adc), IndexState::kNone);
    EXPECT_NE(Log().find("CRC-32 of the index file"), std::string::npos) << Log();
    EXPECT_TRUE(ReadAll(**(*a)->OpenMember(adc), 1 << 20) == Ref("comp.npz", "adc.npy"));
    ASSERT_TRUE((*a)->BuildIndex(adc).ok());  // the background indexer may still be at it
    EXPECT_EQ((*a)->index_state(adc), IndexState::kComplete);
    ASSERT_TRUE((*a)->SaveIndex().ok());  // rebuilt
  }
  EXPECT_EQ(ReadFileOrDie(index_path).size(), good.size());
  // Not an index at all.
  ClearLog();
  WriteFileOrDie(index_path, std::string(100, 'z'));
  {
    auto a = Archive::Open(path, Options());
    ASSERT_TRUE(a.ok());
    EXPECT_NE(Log().find("ignored"), std::string::npos) << Log();
  }
  // Stale: the archive's mtime changed.
  WriteFileOrDie(index_path, good);
  ClearLog();
  struct timespec times[2] = {{0, UTIME_OMIT}, {12345, 678}};
  ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), times, 0), 0);
  {
    auto a = Archive::Open(path, Options());
    ASSERT_TRUE(a.ok());
    EXPECT_EQ((*a)->index_state(*(*a)->Find("adc.npy")), IndexState::kNone);
    EXPECT_NE(Log().find("stale index"), std::string::npos) << Log();
  }
}

TEST_F(ArchiveTest, APartialIndexIsSavedAndTheFirstPassResumesWhereItStopped) {
  std::string path = CopyToScratch("comp.npz");
  std::string ref = Ref("comp.npz", "adc.npy");
  uint64_t spans_first = 0;
  {
    auto a = Archive::Open(path, Options());
    ASSERT_TRUE(a.ok());
    size_t adc = *(*a)->Find("adc.npy");
    // A read in the first span runs the first pass for that span only.
    std::string buf(1000, '\0');
    ASSERT_TRUE(
        (**(*a)->OpenMember(adc)).ReadAt(100000, std::as_writable_bytes(std::span(buf))).ok());
    EXPECT_TRUE(buf == ref.substr(100000, 1000));
    EXPECT_EQ((*a)->index_state(adc), IndexState::kPartial);
    spans_first = (*a)->first_pass_spans(adc);
    ASSERT_TRUE((*a)->SaveIndex().ok());
  }
  auto b = Archive::Open(path, Options());
  ASSERT_TRUE(b.ok());
  size_t adc = *(*b)->Find("adc.npy");
  EXPECT_EQ((*b)->index_state(adc), IndexState::kPartial);
  EXPECT_TRUE(ReadAll(**(*b)->OpenMember(adc), 1 << 16) == ref);
  ASSERT_TRUE((*b)->BuildIndex(adc).ok());  // the background indexer may still be at it
  EXPECT_EQ((*b)->index_state(adc), IndexState::kComplete);
  // The second pass started at the saved frontier: together they did one full pass.
  ArchiveOptions no_index = Options();
  no_index.index_enabled = false;
  auto c = Archive::Open(path, no_index);
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE((*c)->BuildIndex(*(*c)->Find("adc.npy")).ok());
  EXPECT_GT(spans_first, 0u);
  EXPECT_EQ(spans_first + (*b)->first_pass_spans(adc), (*c)->first_pass_spans(adc))
      << "first " << spans_first << " second " << (*b)->first_pass_spans(adc);
}

TEST_F(ArchiveTest, WithTheIndexOffNoSidecarIsReadOrWritten) {
  std::string path = CopyToScratch("comp.npz");
  ArchiveOptions o = Options();
  o.index_enabled = false;
  auto a = Archive::Open(path, o);
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE((*a)->BuildIndex(*(*a)->Find("adc.npy")).ok());
  ASSERT_TRUE((*a)->SaveIndex().ok());
  EXPECT_FALSE(std::filesystem::exists((*a)->IndexPath()));
}

TEST_F(ArchiveTest, TheSidecarGoesToTheIndexDirWhenOneIsGiven) {
  std::string path = CopyToScratch("comp.npz");
  TempDir index_dir;
  ArchiveOptions o = Options();
  o.index_dir = index_dir.path();
  {
    auto a = Archive::Open(path, o);
    ASSERT_TRUE(a.ok());
    ASSERT_TRUE((*a)->BuildIndex(*(*a)->Find("adc.npy")).ok());
    ASSERT_TRUE((*a)->SaveIndex().ok());
  }
  // Named after the archive's absolute path: a directory of indexes of many archives.
  auto absolute = AbsoluteArchivePath(path);
  ASSERT_TRUE(absolute.ok());
  const std::string sidecar = index_dir.Join(SharedIndexFileName(*absolute));
  EXPECT_TRUE(std::filesystem::exists(sidecar));
  EXPECT_FALSE(std::filesystem::exists(scratch_.Join(".comp.npz.npzfs-index")));
  auto b = Archive::Open(path, o);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ((*b)->IndexPath(), sidecar);
  EXPECT_EQ((*b)->LoadedIndexPath(), sidecar);
  EXPECT_EQ((*b)->index_state(*(*b)->Find("adc.npy")), IndexState::kComplete);
}

TEST_F(ArchiveTest, TheFallbackIndexIsReadWhenTheIndexDirHasNoneThatAppliesAndNeverWritten) {
  std::string path = CopyToScratch("comp.npz");
  {
    auto a = Archive::Open(path, Options());  // saves beside the archive
    ASSERT_TRUE(a.ok());
    ASSERT_TRUE((*a)->BuildIndex(*(*a)->Find("adc.npy")).ok());
    ASSERT_TRUE((*a)->SaveIndex().ok());
  }
  const std::string beside = scratch_.Join(".comp.npz.npzfs-index");
  ASSERT_TRUE(std::filesystem::exists(beside));
  TempDir index_dir;
  ArchiveOptions o = Options();
  o.index_dir = index_dir.path();
  {
    auto without = Archive::Open(path, o);
    ASSERT_TRUE(without.ok());
    EXPECT_EQ((*without)->index_state(*(*without)->Find("adc.npy")), IndexState::kNone);
    EXPECT_EQ((*without)->LoadedIndexPath(), "");
  }
  o.index_fallback_dir = "";  // beside the archive
  auto a = Archive::Open(path, o);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ((*a)->index_state(*(*a)->Find("adc.npy")), IndexState::kComplete);
  EXPECT_EQ((*a)->LoadedIndexPath(), beside);
  ASSERT_TRUE((*a)->SaveIndex().ok());
  EXPECT_TRUE(std::filesystem::is_empty(index_dir.path())) << "nothing new to save";
  // A stale sidecar in the index directory gives way to the fallback's.
  const std::string own = (*a)->IndexPath();
  std::filesystem::copy_file(beside, own);
  {
    std::fstream f(own, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(20);  // inside the fingerprint: the archive's size
    f.put('\x7f');
  }
  std::vector<std::string> logged;
  o.log = [&](const std::string& line) { logged.push_back(line); };
  auto b = Archive::Open(path, o);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ((*b)->LoadedIndexPath(), beside);
  EXPECT_EQ((*b)->index_state(*(*b)->Find("adc.npy")), IndexState::kComplete);
  EXPECT_TRUE(logged.empty()) << logged.front();
}

TEST_F(ArchiveTest, ACrcMismatchIsEioForThatReadAndEveryLaterRead) {
  for (std::string archive : {"badcrc.npz", "badcrc_stored.npz"}) {
    ClearLog();
    auto a = Archive::Open(Path(archive), Options());
    ASSERT_TRUE(a.ok());
    auto r = OpenByPath(**a, "adc.npy");
    ASSERT_NE(r, nullptr);
    std::string buf(1 << 16, '\0');
    Status last;
    for (uint64_t off = 0; off < r->size(); off += buf.size()) {
      auto got = r->ReadAt(off, std::as_writable_bytes(std::span(buf)));
      if (!got.ok()) {
        last = got.status();
        // The reader finds the mismatch at the end at the latest; a background pass (stored
        // members' verify pass, deflated members' indexer) may find it before.
        break;
      }
    }
    ASSERT_FALSE(last.ok()) << archive;
    EXPECT_EQ(last.code(), EIO);
    EXPECT_NE(last.message().find("adc.npy"), std::string::npos);
    EXPECT_NE(last.message().find(archive), std::string::npos);
    EXPECT_NE(Log().find("CRC-32 mismatch"), std::string::npos) << Log();
    auto again = r->ReadAt(0, std::as_writable_bytes(std::span(buf)));
    ASSERT_FALSE(again.ok());
    EXPECT_EQ(again.status().code(), EIO);
  }
}

TEST_F(ArchiveTest, DamagedDeflateDataIsEio) {
  auto a = Archive::Open(Path("baddata.npz"), Options());
  ASSERT_TRUE(a.ok());
  auto r = OpenByPath(**a, "adc.npy");
  ASSERT_NE(r, nullptr);
  std::string buf(r->size(), '\0');
  auto got = r->ReadAt(0, std::as_writable_bytes(std::span(buf)));
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), EIO);
  EXPECT_NE(got.status().message().find("adc.npy"), std::string::npos);
  // Other members are unaffected.
  EXPECT_TRUE(ReadAll(*OpenByPath(**a, "small.npy"), 1000) == Ref("comp.npz", "small.npy"));
}

TEST_F(ArchiveTest, FourThreadsReadingOneDeflatedMemberGetCorrectBytes) {
  ArchiveOptions o = Options();
  o.checkpoint_spacing = 128 << 10;
  o.cache_bytes = 2 << 20;
  o.max_parked_streams = 3;
  auto a = Archive::Open(Path("comp.npz"), o);  // fresh: the first pass races the readers
  ASSERT_TRUE(a.ok());
  std::string ref = Ref("comp.npz", "grp/sub/f32.npy");
  auto r = OpenByPath(**a, "grp/sub/f32.npy");
  ASSERT_NE(r, nullptr);
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(100 + t);
      std::string buf;
      for (int n = 0; n < 200; ++n) {
        uint64_t off = t == 0 ? (n * 131072ull) % ref.size() : rng() % ref.size();
        buf.assign(std::min<size_t>(rng() % 300000 + 1, ref.size() - off), '\0');
        auto got = r->ReadAt(off, std::as_writable_bytes(std::span(buf)));
        if (!got.ok() || *got != buf.size() || buf != ref.substr(off, buf.size())) ++bad;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
  // The background indexer (idle priority) may still be at it: finish the first pass.
  ASSERT_TRUE((*a)->BuildIndex(*(*a)->Find("grp/sub/f32.npy")).ok());
  EXPECT_EQ((*a)->index_state(*(*a)->Find("grp/sub/f32.npy")), IndexState::kComplete);
}

TEST(ArchiveIndexSize, TheIndexOfA64MiBInt16MemberIsUnderOnePercent) {
  TempDir dir;
  RunPython(R"PY(
import numpy as np
rng = np.random.default_rng(9)
t = np.arange(32 * 1024 * 1024)
x = (1000 * np.sin(t / 500.0) + rng.normal(0, 30, t.size)).astype('<i2')
np.savez_compressed(')PY" +
            dir.path() + R"PY(/big.npz', adc=x)
)PY");
  ArchiveOptions o;  // default spacing
  auto a = Archive::Open(dir.Join("big.npz"), o);
  ASSERT_TRUE(a.ok()) << a.status().message();
  ASSERT_TRUE((*a)->BuildIndex(0).ok());
  ASSERT_TRUE((*a)->SaveIndex().ok());
  uint64_t member = (*a)->members()[0].entry.uncompressed_size;
  uint64_t file = std::filesystem::file_size((*a)->IndexPath());
  double pct = 100.0 * static_cast<double>(file) / static_cast<double>(member);
  std::printf(
      "index of a %.1f MiB int16 member: %llu bytes in memory, %llu bytes on disk (%.3f%%)\n",
      static_cast<double>(member) / 1048576.0,
      static_cast<unsigned long long>((*a)->index_bytes(0)), static_cast<unsigned long long>(file),
      pct);
  EXPECT_LT(pct, 1.0);
}

TEST(ArchiveIndexSize, CheckpointsWithDenseWindowsStartLongerSpansAndTheIndexStaysUnderOnePercent) {
  // 30000 random bytes repeated: every byte after the first copy is a match into the window,
  // so each checkpoint's sparse window is the whole 30000 bytes (about 30 KB deflated). At
  // 64 KiB spacing without longer spans, the index measured 23% of the member.
  TempDir dir;
  RunPython(R"PY(
import numpy as np
block = np.random.default_rng(4).integers(0, 256, 30000, dtype=np.uint8)
np.savez_compressed(')PY" +
            dir.path() + R"PY(/dense.npz', x=np.tile(block, 800))
)PY");
  ArchiveOptions o;
  o.checkpoint_spacing = 64 << 10;
  auto a = Archive::Open(dir.Join("dense.npz"), o);
  ASSERT_TRUE(a.ok()) << a.status().message();
  ASSERT_TRUE((*a)->BuildIndex(0).ok());
  ASSERT_TRUE((*a)->SaveIndex().ok());
  const uint64_t member = (*a)->members()[0].entry.uncompressed_size;
  const uint64_t file = std::filesystem::file_size((*a)->IndexPath());
  EXPECT_LT(static_cast<double>(file), 0.01 * static_cast<double>(member));
  EXPECT_LT(static_cast<double>((*a)->index_bytes(0)), 0.01 * static_cast<double>(member));

  // The longer spans read back exactly, from a fresh archive using the saved index.
  std::string block(member, '\0');
  {
    auto whole = (*a)->OpenMember(0);
    ASSERT_TRUE(whole.ok());
    auto got = (*whole)->ReadAt(0, std::as_writable_bytes(std::span(block)));
    ASSERT_TRUE(got.ok()) << got.status().message();
    ASSERT_EQ(*got, member);
  }
  const size_t header = member - 30000 * 800;
  for (size_t i = header + 30000; i < member; ++i) {
    ASSERT_EQ(block[i], block[i - 30000]) << "at " << i;
  }
  auto b = Archive::Open(dir.Join("dense.npz"), o);
  ASSERT_TRUE(b.ok()) << b.status().message();
  EXPECT_EQ((*b)->index_state(0), IndexState::kComplete);
  auto r = (*b)->OpenMember(0);
  ASSERT_TRUE(r.ok());
  std::mt19937_64 rng(7);
  std::string buf;
  for (int n = 0; n < 50; ++n) {
    const uint64_t off = rng() % member;
    buf.assign(std::min<uint64_t>(rng() % 700000, member - off), '\0');
    auto got = (*r)->ReadAt(off, std::as_writable_bytes(std::span(buf)));
    ASSERT_TRUE(got.ok()) << got.status().message();
    ASSERT_EQ(*got, buf.size());
    ASSERT_TRUE(buf.compare(0, buf.size(), block, off, buf.size()) == 0) << "offset " << off;
  }
}

}  // namespace
}  // namespace npzfs
