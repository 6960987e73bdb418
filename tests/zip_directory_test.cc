// Tests for the central directory parser. Archives are generated at test time by numpy,
// CPython's zipfile and Info-ZIP `zip`; every listing is cross-checked entry by entry
// against libzip, and data offsets are checked by reading the member bytes at them.
#include "npzfs/zip_directory.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <zip.h>
#include <zlib.h>

#include <cstdlib>
#include <memory>
#include <random>

#include "npzfs/file_util.h"
#include "tests/test_util.h"

namespace npzfs {
namespace {

using testing::ReadFileOrDie;
using testing::RunPython;
using testing::TempDir;
using testing::WriteFileOrDie;

Result<ZipDirectory> ReadDir(const std::string& path) {
  NPZ_ASSIGN_OR_RETURN(UniqueFd fd, OpenFile(path, O_RDONLY));
  return ReadZipDirectory(fd.get(), path);
}

struct ZipCloser {
  void operator()(zip_t* z) const { zip_discard(z); }
};

// Every entry of `dir` must match libzip's view of `path`: name, sizes, CRC, method.
void ExpectMatchesLibzip(const std::string& path, const ZipDirectory& dir) {
  int err = 0;
  std::unique_ptr<zip_t, ZipCloser> z(zip_open(path.c_str(), ZIP_RDONLY, &err));
  ASSERT_NE(z, nullptr) << "libzip cannot open " << path << " (error " << err << ")";
  const zip_int64_t n = zip_get_num_entries(z.get(), 0);
  ASSERT_EQ(static_cast<size_t>(n), dir.entries.size());
  for (zip_int64_t i = 0; i < n; ++i) {
    zip_stat_t st;
    zip_stat_init(&st);
    ASSERT_EQ(zip_stat_index(z.get(), static_cast<zip_uint64_t>(i), ZIP_FL_ENC_RAW, &st), 0);
    const ZipEntry& e = dir.entries[static_cast<size_t>(i)];
    EXPECT_EQ(e.name, st.name) << "entry " << i;
    EXPECT_EQ(e.uncompressed_size, st.size) << e.name;
    EXPECT_EQ(e.compressed_size, st.comp_size) << e.name;
    EXPECT_EQ(e.crc32, st.crc) << e.name;
    EXPECT_EQ(e.method, st.comp_method) << e.name;
  }
}

// The member's content, read from the archive at data_offset (inflated if deflated).
std::string MemberBytes(const std::string& archive, const ZipEntry& e) {
  auto fd = OpenFile(archive, O_RDONLY);
  EXPECT_TRUE(fd.ok());
  std::string raw(e.compressed_size, '\0');
  EXPECT_TRUE(PreadExact(fd->get(), raw.data(), raw.size(), e.data_offset, archive).ok());
  if (e.method == 0) return raw;
  EXPECT_EQ(e.method, 8);
  std::string out(e.uncompressed_size, '\0');
  z_stream zs{};
  EXPECT_EQ(inflateInit2(&zs, -MAX_WBITS), Z_OK);
  zs.next_in = reinterpret_cast<Bytef*>(raw.data());
  zs.avail_in = static_cast<uInt>(raw.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(out.size());
  EXPECT_EQ(inflate(&zs, Z_FINISH), Z_STREAM_END) << e.name;
  EXPECT_EQ(zs.total_out, out.size());
  inflateEnd(&zs);
  return out;
}

uint32_t Crc(const std::string& s) {
  return static_cast<uint32_t>(crc32_z(0, reinterpret_cast<const Bytef*>(s.data()), s.size()));
}

// numpy writes `<name>.npy` members; the test also saves each array alone for comparison.
const char kSavezScript[] = R"(
import numpy as np, io, sys
d = sys.argv[1] if len(sys.argv) > 1 else DIR
arrays = {'adc': np.arange(1000, dtype='<i2').reshape(10, 100),
          'f': np.linspace(0, 1, 777),
          'empty': np.zeros((0, 3), dtype='u1'),
          'names': np.array(['a', 'bc', 'def'])}
FN(d + '/a.npz', **arrays)
for k, v in arrays.items():
    b = io.BytesIO(); np.save(b, v)
    open(d + '/' + k + '.expected', 'wb').write(b.getvalue())
)";

std::string SavezScript(const TempDir& dir, const std::string& fn) {
  std::string s = kSavezScript;
  // FN first: the directory's random name may itself contain "FN".
  s.replace(s.find("FN"), 2, fn);
  s.replace(s.find("DIR"), 3, "'" + dir.path() + "'");
  return s;
}

TEST(ZipDirectory, ReadsNumpySavezWithDataOffsetsFromTheLocalZip64Headers) {
  TempDir dir;
  RunPython(SavezScript(dir, "np.savez"));
  auto d = ReadDir(dir.Join("a.npz"));
  ASSERT_TRUE(d.ok()) << d.status().message();
  ASSERT_EQ(d->entries.size(), 4u);
  ExpectMatchesLibzip(dir.Join("a.npz"), *d);
  for (const ZipEntry& e : d->entries) {
    EXPECT_EQ(e.method, 0);
    EXPECT_FALSE(e.encrypted());
    // numpy's local header carries a 20-byte ZIP64 extra the central record lacks.
    EXPECT_EQ(e.data_offset, e.local_header_offset + 30 + e.name.size() + 20) << e.name;
    const std::string key = e.name.substr(0, e.name.size() - 4);
    EXPECT_EQ(MemberBytes(dir.Join("a.npz"), e), ReadFileOrDie(dir.Join(key + ".expected")));
  }
  EXPECT_EQ(d->entries[0].name, "adc.npy");
  EXPECT_EQ(d->cd_offset + d->cd_size + 22, d->archive_size);
  EXPECT_EQ(d->cd_crc32, Crc(d->cd_bytes));
  EXPECT_EQ(d->cd_bytes.size(), d->cd_size);
}

TEST(ZipDirectory, ReadsNumpySavezCompressedAndTheDataInflatesToTheArrays) {
  TempDir dir;
  RunPython(SavezScript(dir, "np.savez_compressed"));
  auto d = ReadDir(dir.Join("a.npz"));
  ASSERT_TRUE(d.ok()) << d.status().message();
  ASSERT_EQ(d->entries.size(), 4u);
  ExpectMatchesLibzip(dir.Join("a.npz"), *d);
  for (const ZipEntry& e : d->entries) {
    EXPECT_EQ(e.method, 8);
    const std::string key = e.name.substr(0, e.name.size() - 4);
    const std::string bytes = MemberBytes(dir.Join("a.npz"), e);
    EXPECT_EQ(bytes, ReadFileOrDie(dir.Join(key + ".expected")));
    EXPECT_EQ(Crc(bytes), e.crc32);
  }
}

TEST(ZipDirectory, TakesSizesFromTheCentralDirectoryWhenZipfileWroteToAPipe) {
  TempDir dir;
  RunPython(R"(
import zipfile, subprocess, os
out = open(')" +
            dir.Join("pipe.zip") + R"(', 'wb')
p = subprocess.Popen(['cat'], stdin=subprocess.PIPE, stdout=out)
with zipfile.ZipFile(p.stdin, 'w') as zf:
    zf.writestr('small.txt', b'hello world' * 3)
    with zf.open('z64.bin', 'w', force_zip64=True) as f:   # 8-byte descriptor sizes
        f.write(os.urandom(5000))
    zi = zipfile.ZipInfo('deflated.txt'); zi.compress_type = zipfile.ZIP_DEFLATED
    zf.writestr(zi, b'abc' * 10000)
    zf.comment = b'made through a pipe'
p.stdin.close(); p.wait()
)");
  auto d = ReadDir(dir.Join("pipe.zip"));
  ASSERT_TRUE(d.ok()) << d.status().message();
  ASSERT_EQ(d->entries.size(), 3u);
  ExpectMatchesLibzip(dir.Join("pipe.zip"), *d);
  for (const ZipEntry& e : d->entries) {
    EXPECT_TRUE(e.flags & 8) << e.name << " should use a data descriptor";
    EXPECT_EQ(Crc(MemberBytes(dir.Join("pipe.zip"), e)), e.crc32) << e.name;
  }
  EXPECT_EQ(d->entries[0].uncompressed_size, 33u);
  EXPECT_EQ(d->entries[1].uncompressed_size, 5000u);
  std::string abc;
  for (int i = 0; i < 10000; ++i) abc += "abc";
  EXPECT_EQ(MemberBytes(dir.Join("pipe.zip"), d->entries[2]), abc);
  EXPECT_EQ(d->comment, "made through a pipe");
}

TEST(ZipDirectory, ReadsInfoZipPipeOutputAndItsUnixTimestamps) {
  TempDir dir;
  RunPython(R"(
import os, subprocess
d = ')" + dir.path() +
            R"('
os.mkdir(d + '/src')
open(d + '/src/one.txt', 'wb').write(b'one' * 1000)
open(d + '/src/two.bin', 'wb').write(os.urandom(3000))
for f in ('one.txt', 'two.bin'):
    os.utime(d + '/src/' + f, (1234567890, 1234567890))
# -X: no extra fields; default: UT and ux extras; to a pipe: data descriptors.
subprocess.check_call(['zip', '-q', '-X', '-r', '../regular.zip', '.'], cwd=d + '/src')
subprocess.check_call(['zip', '-q', '-r', '../info.zip', 'one.txt', 'two.bin'], cwd=d + '/src')
with open(d + '/piped.zip', 'wb') as out:
    subprocess.check_call('cat one.txt | zip -q - - | cat', shell=True, cwd=d + '/src', stdout=out)
)");
  auto info = ReadDir(dir.Join("info.zip"));
  ASSERT_TRUE(info.ok()) << info.status().message();
  ASSERT_EQ(info->entries.size(), 2u);
  ExpectMatchesLibzip(dir.Join("info.zip"), *info);
  for (const ZipEntry& e : info->entries) {
    EXPECT_EQ(e.mtime, 1234567890) << e.name << " should take the UT extra's time";
    EXPECT_EQ(e.version_made_by >> 8, 3) << e.name;
    EXPECT_EQ(Crc(MemberBytes(dir.Join("info.zip"), e)), e.crc32);
  }
  EXPECT_EQ(MemberBytes(dir.Join("info.zip"), info->entries[0]),
            ReadFileOrDie(dir.Join("src/one.txt")));

  auto piped = ReadDir(dir.Join("piped.zip"));
  ASSERT_TRUE(piped.ok()) << piped.status().message();
  ASSERT_EQ(piped->entries.size(), 1u);
  ExpectMatchesLibzip(dir.Join("piped.zip"), *piped);
  EXPECT_EQ(piped->entries[0].name, "-");
  EXPECT_TRUE(piped->entries[0].flags & 8);
  EXPECT_EQ(MemberBytes(dir.Join("piped.zip"), piped->entries[0]),
            ReadFileOrDie(dir.Join("src/one.txt")));

  auto regular = ReadDir(dir.Join("regular.zip"));
  ASSERT_TRUE(regular.ok()) << regular.status().message();
  ExpectMatchesLibzip(dir.Join("regular.zip"), *regular);
}

TEST(ZipDirectory, KeepsTheArchiveCommentAndDuplicateNamesInOrder) {
  TempDir dir;
  RunPython(R"(
import zipfile, warnings
warnings.simplefilter('ignore')
with zipfile.ZipFile(')" +
            dir.Join("c.zip") + R"(', 'w') as zf:
    zf.writestr('x.npy', b'first')
    zf.writestr('y.npy', b'other')
    zf.writestr('x.npy', b'second')
    zf.comment = b'PK\x05\x06 looks like an end record but is the comment'
)");
  auto d = ReadDir(dir.Join("c.zip"));
  ASSERT_TRUE(d.ok()) << d.status().message();
  ASSERT_EQ(d->entries.size(), 3u);
  EXPECT_EQ(d->comment, std::string("PK\x05\x06 looks like an end record but is the comment"));
  EXPECT_EQ(d->entries[0].name, "x.npy");
  EXPECT_EQ(d->entries[2].name, "x.npy");
  EXPECT_EQ(MemberBytes(dir.Join("c.zip"), d->entries[0]), "first");
  EXPECT_EQ(MemberBytes(dir.Join("c.zip"), d->entries[2]), "second");
}

TEST(ZipDirectory, ReadsMoreThan65535EntriesThroughTheZip64EndRecord) {
  TempDir dir;
  RunPython(R"(
import zipfile
with zipfile.ZipFile(')" +
            dir.Join("many.zip") + R"(', 'w') as zf:
    for i in range(70000):
        zf.writestr('m%05d' % i, str(i))
)");
  auto d = ReadDir(dir.Join("many.zip"));
  ASSERT_TRUE(d.ok()) << d.status().message();
  ASSERT_EQ(d->entries.size(), 70000u);
  ExpectMatchesLibzip(dir.Join("many.zip"), *d);
  EXPECT_EQ(d->entries[69999].name, "m69999");
  EXPECT_EQ(MemberBytes(dir.Join("many.zip"), d->entries[69999]), "69999");
  EXPECT_EQ(MemberBytes(dir.Join("many.zip"), d->entries[12345]), "12345");
  // The central directory ends where the ZIP64 end record (56) + locator (20) begin.
  EXPECT_EQ(d->cd_offset + d->cd_size + 56 + 20 + 22, d->archive_size);
}

// A sparse archive whose second member starts beyond 4 GiB: zipfile writes genuine ZIP64
// central fields while the zeros of the first member become a hole (little disk, ~2 s).
TEST(ZipDirectory, ReadsZip64OffsetsAndSizesBeyondFourGiB) {
  TempDir dir;
  RunPython(R"(
import zipfile, numpy as np, io
CHUNK = 64 << 20
ZEROS = bytes(CHUNK)
class Sparse:
    def __init__(self, f): self.f = f
    def write(self, b):
        if len(b) == CHUNK and b == ZEROS:
            self.f.seek(CHUNK, 1); return CHUNK
        return self.f.write(b)
    def tell(self): return self.f.tell()
    def seek(self, *a): return self.f.seek(*a)
    def flush(self): self.f.flush()
with open(')" +
            dir.Join("big.zip") + R"(', 'wb') as raw:
    with zipfile.ZipFile(Sparse(raw), 'w') as zf:
        with zf.open('zeros.bin', 'w', force_zip64=True) as f:
            for i in range((4 << 30) // CHUNK + 2):
                f.write(ZEROS)
        b = io.BytesIO(); np.save(b, np.arange(10)); zf.writestr('after.npy', b.getvalue())
        open(')" +
            dir.Join("after.expected") + R"(', 'wb').write(b.getvalue())
)");
  auto d = ReadDir(dir.Join("big.zip"));
  ASSERT_TRUE(d.ok()) << d.status().message();
  ASSERT_EQ(d->entries.size(), 2u);
  ExpectMatchesLibzip(dir.Join("big.zip"), *d);
  EXPECT_EQ(d->entries[0].uncompressed_size, (uint64_t{4} << 30) + (uint64_t{128} << 20));
  EXPECT_GT(d->entries[1].local_header_offset, uint64_t{0xFFFFFFFF});
  EXPECT_GT(d->cd_offset, uint64_t{0xFFFFFFFF});
  EXPECT_EQ(MemberBytes(dir.Join("big.zip"), d->entries[1]),
            ReadFileOrDie(dir.Join("after.expected")));
}

// ---- bad inputs: a clear error naming the file, never a crash ----

void ExpectError(const std::string& path, int code, const std::string& cause) {
  auto d = ReadDir(path);
  ASSERT_FALSE(d.ok()) << path << " should not parse";
  EXPECT_EQ(d.status().code(), code) << d.status().message();
  EXPECT_EQ(d.status().message().rfind(path, 0), 0u) << d.status().message();
  EXPECT_NE(d.status().message().find(cause), std::string::npos) << d.status().message();
}

std::string SmallArchive(const TempDir& dir) {
  RunPython(R"(
import zipfile
with zipfile.ZipFile(')" +
            dir.Join("ok.zip") + R"(', 'w') as zf:
    zf.writestr('a.npy', b'A' * 1000)
    zf.writestr('b.npy', b'B' * 2000)
)");
  return ReadFileOrDie(dir.Join("ok.zip"));
}

void Put32(std::string& s, size_t at, uint32_t v) {
  for (int i = 0; i < 4; ++i) s[at + i] = static_cast<char>((v >> (8 * i)) & 0xff);
}
void Put16(std::string& s, size_t at, uint16_t v) {
  s[at] = static_cast<char>(v & 0xff);
  s[at + 1] = static_cast<char>(v >> 8);
}

TEST(ZipDirectory, RejectsAnEmptyFileAsNotAZipArchive) {
  TempDir dir;
  WriteFileOrDie(dir.Join("empty.npz"), "");
  ExpectError(dir.Join("empty.npz"), EINVAL, "not a zip archive");
}

TEST(ZipDirectory, RejectsATextFileAsNotAZipArchive) {
  TempDir dir;
  WriteFileOrDie(dir.Join("text.npz"), std::string(100000, 'x'));
  ExpectError(dir.Join("text.npz"), EINVAL, "not a zip archive");
}

TEST(ZipDirectory, RejectsAnArchiveTruncatedMidFile) {
  TempDir dir;
  const std::string ok = SmallArchive(dir);
  WriteFileOrDie(dir.Join("t.zip"), ok.substr(0, 1500));
  ExpectError(dir.Join("t.zip"), EINVAL, "not a zip archive");
}

TEST(ZipDirectory, RejectsACentralDirectoryCutShortBeforeItsEndRecord) {
  TempDir dir;
  std::string z = SmallArchive(dir);
  // Drop the last 10 bytes of the central directory but keep the end record.
  const size_t end = z.size() - 22;
  z.erase(end - 10, 10);
  WriteFileOrDie(dir.Join("cd.zip"), z);
  ExpectError(dir.Join("cd.zip"), EINVAL, "runs past");
}

TEST(ZipDirectory, RejectsAnEndRecordPointingBeyondTheFile) {
  TempDir dir;
  std::string z = SmallArchive(dir);
  Put32(z, z.size() - 22 + 16, 0x7FFFFFF0);  // central directory offset
  WriteFileOrDie(dir.Join("beyond.zip"), z);
  ExpectError(dir.Join("beyond.zip"), EINVAL, "central directory");
}

TEST(ZipDirectory, ACorruptDirectoryOffsetIsNotTakenForBytesPutInFront) {
  TempDir dir;
  std::string z = SmallArchive(dir);
  auto d = ReadDir(dir.Join("ok.zip"));
  ASSERT_TRUE(d.ok());
  // The end record's offset says 223 bytes too little; the members did not move.
  Put32(z, z.size() - 22 + 16, static_cast<uint32_t>(d->cd_offset - 223));
  WriteFileOrDie(dir.Join("offset.zip"), z);
  ExpectError(dir.Join("offset.zip"), EINVAL, "the end record is corrupt");
  auto r = ReadDir(dir.Join("offset.zip"));
  EXPECT_EQ(r.status().message().find("put in front"), std::string::npos)
      << r.status().message();
  // Bytes really put in front still say so.
  WriteFileOrDie(dir.Join("sfx.zip"), std::string(223, '#') + SmallArchive(dir));
  ExpectError(dir.Join("sfx.zip"), EINVAL, "223 bytes were put in front of the archive");
}

TEST(ZipDirectory, RejectsAnAbsurdEntryCountWithoutAllocatingForIt) {
  TempDir dir;
  std::string z = SmallArchive(dir);
  Put16(z, z.size() - 22 + 8, 0xFFFE);
  Put16(z, z.size() - 22 + 10, 0xFFFE);
  WriteFileOrDie(dir.Join("count.zip"), z);
  ExpectError(dir.Join("count.zip"), EINVAL, "entries");
}

TEST(ZipDirectory, RejectsAnEntryWhoseDataRunsBeyondTheFile) {
  TempDir dir;
  std::string z = SmallArchive(dir);
  auto d = ReadDir(dir.Join("ok.zip"));
  ASSERT_TRUE(d.ok());
  // Second central record: compressed size (offset 20) made huge.
  const size_t second = d->cd_offset + 46 + d->entries[0].name.size();
  Put32(z, second + 20, 0x7FFFFFFF);
  WriteFileOrDie(dir.Join("data.zip"), z);
  ExpectError(dir.Join("data.zip"), EINVAL, "entry 1 (b.npy): data");
}

TEST(ZipDirectory, RejectsALocalHeaderOffsetBeyondTheMemberArea) {
  TempDir dir;
  std::string z = SmallArchive(dir);
  auto d = ReadDir(dir.Join("ok.zip"));
  ASSERT_TRUE(d.ok());
  Put32(z, d->cd_offset + 42, 0x10000000);
  WriteFileOrDie(dir.Join("lho.zip"), z);
  ExpectError(dir.Join("lho.zip"), EINVAL, "entry 0 (a.npy): local header offset");
}

TEST(ZipDirectory, RejectsACorruptNameLengthInTheCentralDirectory) {
  TempDir dir;
  std::string z = SmallArchive(dir);
  auto d = ReadDir(dir.Join("ok.zip"));
  ASSERT_TRUE(d.ok());
  Put16(z, d->cd_offset + 28, 0xFFFF);
  WriteFileOrDie(dir.Join("name.zip"), z);
  ExpectError(dir.Join("name.zip"), EINVAL, "run past the end of the central directory");
}

TEST(ZipDirectory, RejectsAMissingZip64ExtraWhenASizeSaysZip64) {
  TempDir dir;
  std::string z = SmallArchive(dir);
  auto d = ReadDir(dir.Join("ok.zip"));
  ASSERT_TRUE(d.ok());
  Put32(z, d->cd_offset + 24, 0xFFFFFFFF);
  WriteFileOrDie(dir.Join("z64.zip"), z);
  ExpectError(dir.Join("z64.zip"), EINVAL, "no ZIP64 extra");
}

TEST(ZipDirectory, EveryTruncationOfAValidArchiveIsAnErrorNotACrash) {
  TempDir dir;
  const std::string ok = SmallArchive(dir);
  for (size_t len = 0; len < ok.size(); len += 7) {
    WriteFileOrDie(dir.Join("cut.zip"), ok.substr(0, len));
    auto d = ReadDir(dir.Join("cut.zip"));
    EXPECT_FALSE(d.ok()) << "length " << len;
    if (!d.ok()) {
      EXPECT_EQ(d.status().message().rfind(dir.Join("cut.zip"), 0), 0u);
    }
  }
}

// Thousands of archives with a few random bytes overwritten in the directory area: each
// either parses into entries that lie inside the member area, or is a clear error.
TEST(ZipDirectory, RandomCorruptionOfTheDirectoryIsAnErrorOrStillConsistent) {
  TempDir dir;
  RunPython(SavezScript(dir, "np.savez"));
  const std::string ok = ReadFileOrDie(dir.Join("a.npz"));
  auto good = ReadDir(dir.Join("a.npz"));
  ASSERT_TRUE(good.ok());
  const size_t from = good->cd_offset;
  std::mt19937 rng(12345);
  const std::string path = dir.Join("corrupt.npz");
  int parsed = 0, rejected = 0;
  for (int round = 0; round < 1500; ++round) {
    std::string z = ok;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int i = 0; i < flips; ++i) {
      const size_t at = from + rng() % (z.size() - from);
      z[at] = static_cast<char>(rng() % 3 == 0 ? 0xFF : rng());
    }
    WriteFileOrDie(path, z);
    auto d = ReadDir(path);
    if (!d.ok()) {
      ++rejected;
      EXPECT_EQ(d.status().message().rfind(path, 0), 0u) << d.status().message();
      EXPECT_TRUE(d.status().code() == EINVAL || d.status().code() == EIO);
      continue;
    }
    ++parsed;
    for (const ZipEntry& e : d->entries) {
      EXPECT_LE(e.data_offset + e.compressed_size, d->cd_offset);
      EXPECT_LE(d->cd_offset + d->cd_size, d->archive_size);
    }
  }
  EXPECT_GT(rejected, 0);
  EXPECT_GT(parsed, 0);  // flips in names, times and CRCs are not structural
}

TEST(ZipDirectory, ConvertsDosTimesAndClampsImpossibleFields) {
  // 2009-02-13 23:31:30 local time, as zipfile and Info-ZIP would write it.
  const uint16_t date = static_cast<uint16_t>(((2009 - 1980) << 9) | (2 << 5) | 13);
  const uint16_t time = static_cast<uint16_t>((23 << 11) | (31 << 5) | 15);
  struct tm tm {};
  tm.tm_year = 109, tm.tm_mon = 1, tm.tm_mday = 13, tm.tm_hour = 23, tm.tm_min = 31, tm.tm_sec = 30,
  tm.tm_isdst = -1;
  EXPECT_EQ(DosDateTimeToUnix(date, time), static_cast<int64_t>(mktime(&tm)));
  struct tm epoch {};
  epoch.tm_year = 80, epoch.tm_mday = 1, epoch.tm_isdst = -1;
  EXPECT_EQ(DosDateTimeToUnix(0, 0), static_cast<int64_t>(mktime(&epoch)));
}

}  // namespace
}  // namespace npzfs
