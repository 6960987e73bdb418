// Tests for the atomic archive writer (and, through it, the streaming ZIP writer). Every
// archive written here is checked by the readers users have: np.load, zipfile.testzip(),
// `unzip -t`, libzip, and our own directory parser.
#include "npzfs/archive_writer.h"

#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zip.h>
#include <zlib.h>

#include <algorithm>
#include <filesystem>
#include <memory>
#include <random>
#include <vector>

#include "core/zip/chunked_deflater.h"
#include "core/zip/seek_table.h"
#include "core/zip/zip_writer.h"
#include "npzfs/file_util.h"
#include "npzfs/zip_directory.h"
#include "tests/archive_test_util.h"
#include "tests/test_util.h"

namespace npzfs {
namespace {

using testing::Crc;
using testing::FromBytes;
using testing::FromFile;
using testing::ListDir;
using testing::ReadDir;
using testing::ReadFileOrDie;
using testing::RunPython;
using testing::ScopedTmpfs;
using testing::TempDir;
using testing::VerifyWithPython;
using testing::WriteFileOrDie;

void MakeNpyFiles(const TempDir& dir) {
  RunPython(R"(
import numpy as np
d = ')" + dir.path() +
            R"('
np.save(d + '/adc.npy', np.arange(50000, dtype='<i2').reshape(500, 100))
np.save(d + '/noise.npy', np.random.default_rng(1).normal(size=(300, 7)))
np.save(d + '/label.npy', np.array(['x', 'yz']))
)");
}

TEST(ArchiveWriter, WritesAStoredArchiveThatNumpyZipfileUnzipAndLibzipAccept) {
  TempDir dir;
  MakeNpyFiles(dir);
  auto adc = OpenFile(dir.Join("adc.npy"), O_RDONLY);
  auto noise = OpenFile(dir.Join("noise.npy"), O_RDONLY);
  ASSERT_TRUE(adc.ok() && noise.ok());
  std::vector<NewMember> members = {FromFile("adc.npy", *adc, dir.Join("adc.npy")),
                                    FromFile("noise.npy", *noise, dir.Join("noise.npy"))};
  // A caller-supplied CRC takes the copy_file_range path; the other is computed.
  members[0].crc32 = Crc(ReadFileOrDie(dir.Join("adc.npy")));
  ASSERT_TRUE(WriteArchive(dir.Join("out.npz"), members, {}).ok());

  EXPECT_EQ(VerifyWithPython(dir.Join("out.npz"), dir.path()), "adc.npy,noise.npy\n");
  auto d = ReadDir(dir.Join("out.npz"));
  ASSERT_TRUE(d.ok()) << d.status().message();
  ASSERT_EQ(d->entries.size(), 2u);
  for (const ZipEntry& e : d->entries) {
    EXPECT_EQ(e.method, 0);
    EXPECT_EQ(e.external_attr, 0100644u << 16);
    EXPECT_EQ(e.version_made_by >> 8, 3);
    EXPECT_EQ(e.data_offset, e.local_header_offset + 30 + e.name.size());  // no ZIP64 room
    EXPECT_EQ(e.uncompressed_size, ReadFileOrDie(dir.Join(e.name)).size());
  }
  int err = 0;
  zip_t* z = zip_open(dir.Join("out.npz").c_str(), ZIP_RDONLY | ZIP_CHECKCONS, &err);
  ASSERT_NE(z, nullptr) << "libzip consistency check failed: " << err;
  EXPECT_EQ(zip_get_num_entries(z, 0), 2);
  zip_discard(z);
  EXPECT_EQ(ListDir(dir.path()),
            (std::vector<std::string>{"adc.npy", "label.npy", "noise.npy", "out.npz"}));
}

TEST(ArchiveWriter, WritesDeflatedMembersFromMixedPieces) {
  TempDir dir;
  MakeNpyFiles(dir);
  const std::string adc = ReadFileOrDie(dir.Join("adc.npy"));
  auto fd = OpenFile(dir.Join("adc.npy"), O_RDONLY);
  ASSERT_TRUE(fd.ok());
  // adc.npy assembled from a byte piece (the header) and a file range (the data).
  NewMember m;
  m.name = "adc.npy";
  m.pieces.push_back(MemberPiece{adc.substr(0, 128)});
  MemberPiece range;
  range.fd = fd->get();
  range.offset = 128;
  range.length = adc.size() - 128;
  m.pieces.push_back(range);
  m.crc32 = Crc(adc);  // known CRC with deflate: still compressed correctly
  WriteOptions options;
  options.compress_level = 6;
  ASSERT_TRUE(WriteArchive(dir.Join("c.npz"),
                           {m, FromBytes("label.npy", ReadFileOrDie(dir.Join("label.npy"))),
                            FromBytes("zeros.bin", std::string(100000, '\0'))},
                           options)
                  .ok());
  EXPECT_EQ(VerifyWithPython(dir.Join("c.npz"), dir.path()), "adc.npy,label.npy,zeros.bin\n");
  auto d = ReadDir(dir.Join("c.npz"));
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->entries[0].method, 8);
  EXPECT_EQ(d->entries[0].uncompressed_size, adc.size());
  EXPECT_LT(d->entries[0].compressed_size, adc.size());  // counters deflate poorly, but do
  EXPECT_EQ(d->entries[0].crc32, Crc(adc));
  EXPECT_EQ(d->entries[2].uncompressed_size, 100000u);
  EXPECT_LT(d->entries[2].compressed_size, 1000u);
}

// Inflates chunk `c` of member `e` alone (from an empty window): every compressed byte is
// consumed and exactly the chunk's uncompressed size comes out (one spare byte of room
// must stay unused).
std::string InflateChunk(int fd, const std::string& archive, const ZipEntry& e,
                         const SeekChunk& c) {
  std::string in(c.in_size, '\0');
  EXPECT_TRUE(PreadExact(fd, in.data(), in.size(), e.data_offset + c.in, archive).ok());
  std::string out(c.out_size + 1, '\1');
  z_stream zs{};
  EXPECT_EQ(inflateInit2(&zs, -MAX_WBITS), Z_OK);
  zs.next_in = reinterpret_cast<Bytef*>(in.data());
  zs.avail_in = static_cast<uInt>(in.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(out.size());
  const int rc = inflate(&zs, Z_SYNC_FLUSH);
  EXPECT_TRUE(rc == Z_OK || rc == Z_STREAM_END) << rc;
  EXPECT_EQ(zs.total_out, c.out_size) << e.name << " chunk at " << c.out;
  EXPECT_EQ(zs.avail_in, 0u) << e.name << " chunk at " << c.out;
  inflateEnd(&zs);
  out.resize(c.out_size);
  return out;
}

// Inflates each chunk of `e`'s seek table alone and checks it against `expected`.
void ExpectSeekableMember(const std::string& archive, const ZipEntry& e,
                          const std::string& expected) {
  auto table = ParseSeekTable(e.seek_table, e.compressed_size, e.uncompressed_size, e.crc32,
                              archive + ": member " + e.name);
  ASSERT_TRUE(table.ok()) << table.status().message();
  auto fd = OpenFile(archive, O_RDONLY);
  ASSERT_TRUE(fd.ok());
  for (const SeekChunk& c : table->chunks()) {
    const std::string out = InflateChunk(fd->get(), archive, e, c);
    EXPECT_TRUE(out == expected.substr(c.out, c.out_size)) << e.name << " chunk at " << c.out;
    EXPECT_EQ(Crc(out), c.crc32);
  }
}

TEST(ArchiveWriter, DeflatedMembersCarryASeekTableThatEveryForeignReaderIgnores) {
  TempDir dir;
  RunPython(R"(
import numpy as np
d = ')" + dir.path() +
            R"('
t = np.arange(1_500_000)
np.save(d + '/big.npy', (1000 * np.sin(t / 500.0) + np.random.default_rng(2).normal(0, 20, t.size)).astype('<i2'))
np.save(d + '/small.npy', np.arange(10, dtype='<f8'))
np.save(d + '/empty.npy', np.zeros((0, 4), dtype='<u1'))
)");
  std::vector<NewMember> members;
  std::vector<UniqueFd> fds;
  for (const char* key : {"big", "small", "empty"}) {
    const std::string file = dir.Join(std::string(key) + ".npy");
    auto fd = OpenFile(file, O_RDONLY);
    ASSERT_TRUE(fd.ok());
    fds.push_back(std::move(*fd));
    members.push_back(FromFile(std::string(key) + ".npy", fds.back(), file));
    members.back().leading_chunk = 128;  // numpy 1.24's header length here
  }
  members.push_back(FromBytes("zero.bin", ""));
  WriteOptions options;
  options.compress_level = 6;
  options.threads = 2;
  options.chunk_size = 256 << 10;
  const std::string archive = dir.Join("c.npz");
  ASSERT_TRUE(WriteArchive(archive, members, options).ok());

  auto d = ReadDir(archive);
  ASSERT_TRUE(d.ok()) << d.status().message();
  ASSERT_EQ(d->entries.size(), 4u);
  for (const ZipEntry& e : d->entries) {
    EXPECT_EQ(e.method, 8) << e.name;
    ASSERT_FALSE(e.seek_table.empty()) << e.name;
    const std::string expected =
        e.name == "zero.bin" ? std::string() : ReadFileOrDie(dir.Join(e.name));
    EXPECT_EQ(e.uncompressed_size, expected.size());
    EXPECT_EQ(e.crc32, Crc(expected));
    ExpectSeekableMember(archive, e, expected);
  }
  auto big = ParseSeekTable(d->entries[0].seek_table, d->entries[0].compressed_size,
                            d->entries[0].uncompressed_size, d->entries[0].crc32, "big");
  ASSERT_TRUE(big.ok());
  EXPECT_EQ(big->first_chunk_size(), 128u);
  EXPECT_EQ(big->chunks().size(), SeekChunkCount(3000128, 128, 256 << 10));

  // numpy, zipfile.testzip, unzip -t (VerifyWithPython), zipinfo, libzip reading every byte.
  EXPECT_EQ(VerifyWithPython(archive, dir.path()), "big.npy,small.npy,empty.npy,zero.bin\n");
  EXPECT_EQ(RunPython(R"(
import subprocess
r = subprocess.run(['zipinfo', '-v', ')" +
                      archive + R"('], capture_output=True, text=True)
assert r.returncode == 0, r.stdout + r.stderr
print(r.stdout.count('subfield with ID 0x5a4e (unknown)'))
)"),
            "4\n");
  int err = 0;
  zip_t* z = zip_open(archive.c_str(), ZIP_RDONLY | ZIP_CHECKCONS, &err);
  ASSERT_NE(z, nullptr) << "libzip consistency check failed: " << err;
  for (zip_int64_t i = 0; i < 4; ++i) {
    zip_stat_t st;
    ASSERT_EQ(zip_stat_index(z, static_cast<zip_uint64_t>(i), 0, &st), 0);
    zip_file_t* f = zip_fopen_index(z, static_cast<zip_uint64_t>(i), 0);
    ASSERT_NE(f, nullptr);
    std::string got(st.size + 1, '\0');
    const zip_int64_t n = zip_fread(f, got.data(), got.size());
    zip_fclose(f);
    ASSERT_EQ(n, static_cast<zip_int64_t>(st.size)) << st.name;
    got.resize(static_cast<size_t>(n));
    const std::string name = st.name;
    EXPECT_TRUE(got == (name == "zero.bin" ? std::string() : ReadFileOrDie(dir.Join(name))))
        << name;
  }
  zip_discard(z);
}

// A file laid out as the background deflater's shadow: chunks back to back from 4096, room
// before them. A new archive is made of it (renamed, not copied), and every reader accepts
// the padded local header and the stored block that holds the .npy header.
TEST(ArchiveWriter, ANewArchiveIsMadeOfAFileOfPredeflatedChunksAndEveryReaderAcceptsIt) {
  TempDir dir;
  RunPython(R"(
import numpy as np
t = np.arange(1_500_000)
np.save(')" +
            dir.Join("big.npy") +
            R"(', (1000 * np.sin(t / 500.0)).astype('<i2'))
)");
  const std::string npy = ReadFileOrDie(dir.Join("big.npy"));
  ASSERT_EQ(npy.size(), 3000128u);
  const std::string header = npy.substr(0, 128), data = npy.substr(128);
  constexpr uint64_t kChunk = 256 << 10;
  constexpr uint64_t kStart = 4096;
  auto chunks = std::make_shared<PredeflatedChunks>();
  std::string shadow(kStart, '\0');
  for (uint64_t i = 0; i < 5; ++i) {  // 5 of the 12 chunks; the writer deflates the rest
    std::string out;
    ASSERT_TRUE(
        DeflateChunk(6, std::string_view(data).substr(i * kChunk, kChunk), false, &out).ok());
    chunks->chunks.push_back(
        {shadow.size(), static_cast<uint32_t>(out.size()), Crc(data.substr(i * kChunk, kChunk))});
    shadow += out;
  }
  const size_t chunks_end = shadow.size();
  shadow += "stale bytes after the chunks";
  const std::string shadow_path = dir.Join(".big.npy.npzfs-deflate");
  WriteFileOrDie(shadow_path, shadow);
  auto shadow_fd = OpenFile(shadow_path, O_RDONLY);
  auto data_fd = OpenFile(dir.Join("big.npy"), O_RDONLY);
  ASSERT_TRUE(shadow_fd.ok() && data_fd.ok());
  chunks->fd = shadow_fd->get();
  chunks->source = shadow_path;
  chunks->level = 6;
  chunks->chunk_size = kChunk;
  chunks->adoptable_path = shadow_path;
  chunks->first_chunk_offset = kStart;
  NewMember big;
  big.name = "big.npy";
  big.leading_chunk = 128;
  MemberPiece head, rest;
  head.bytes = header;
  rest.fd = data_fd->get();
  rest.offset = 128;
  rest.length = data.size();
  rest.source = dir.Join("big.npy");
  rest.predeflated = chunks;
  big.pieces = {head, rest};
  struct stat before;
  ASSERT_EQ(stat(shadow_path.c_str(), &before), 0);
  WriteOptions options;
  options.compress_level = 6;
  options.chunk_size = kChunk;
  std::vector<std::string> log;
  options.log = [&](const std::string& line) { log.push_back(line); };
  const std::string archive = dir.Join("a.npz");
  ASSERT_TRUE(AppendToArchive(archive, {big, FromBytes("zero.bin", "")}, options).ok());

  struct stat after;
  ASSERT_EQ(stat(archive.c_str(), &after), 0);
  EXPECT_EQ(after.st_ino, before.st_ino);
  EXPECT_FALSE(std::filesystem::exists(shadow_path));
  EXPECT_EQ(after.st_mode & 0777, 0666 & ~CurrentUmask());
  ASSERT_EQ(log.size(), 1u);
  EXPECT_NE(log[0].find("member big.npy: made of " + shadow_path), std::string::npos) << log[0];
  const std::string bytes = ReadFileOrDie(archive);
  auto d = ReadDir(archive);
  ASSERT_TRUE(d.ok()) << d.status().message();
  ASSERT_EQ(d->entries.size(), 2u);
  const ZipEntry& e = d->entries[0];
  EXPECT_EQ(e.local_header_offset, 0u);
  EXPECT_EQ(e.data_offset, kStart - 5 - 128);  // the stored block ends where chunk 0 starts
  EXPECT_TRUE(bytes.substr(kStart, chunks_end - kStart) ==
              shadow.substr(kStart, chunks_end - kStart));
  ExpectSeekableMember(archive, e, npy);
  EXPECT_EQ(VerifyWithPython(archive, dir.path()), "big.npy,zero.bin\n");
  EXPECT_EQ(RunPython(R"(
import subprocess
r = subprocess.run(['zipinfo', '-v', ')" +
                      archive + R"('], capture_output=True, text=True)
print(r.returncode, r.stdout.count('Central directory entry'))
)"),
            "0 2\n");
  int err = 0;
  zip_t* z = zip_open(archive.c_str(), ZIP_RDONLY | ZIP_CHECKCONS, &err);
  ASSERT_NE(z, nullptr) << "libzip consistency check failed: " << err;
  zip_file_t* f = zip_fopen_index(z, 0, 0);
  ASSERT_NE(f, nullptr);
  std::string got(npy.size() + 1, '\0');
  EXPECT_EQ(zip_fread(f, got.data(), got.size()), static_cast<zip_int64_t>(npy.size()));
  got.resize(npy.size());
  EXPECT_TRUE(got == npy);
  zip_fclose(f);
  zip_discard(z);
}

TEST(ArchiveWriter, TheDeflatedBytesAreTheSameWithOneThreadOrMany) {
  TempDir dir;
  std::mt19937 rng(3);
  std::string bytes(3 << 20, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>((rng() % 7) * (i % 13));
  for (size_t threads : {1, 2, 4}) {
    WriteOptions options;
    options.compress_level = 6;
    options.threads = threads;
    const std::string out = dir.Join("t" + std::to_string(threads) + ".zip");
    ASSERT_TRUE(WriteArchive(out, {FromBytes("m.bin", bytes)}, options).ok());
  }
  // The DOS time may tick between archives: compare the member data and the tables.
  auto one = ReadDir(dir.Join("t1.zip")), two = ReadDir(dir.Join("t2.zip")),
       four = ReadDir(dir.Join("t4.zip"));
  ASSERT_TRUE(one.ok() && two.ok() && four.ok());
  const std::string a = ReadFileOrDie(dir.Join("t1.zip")), b = ReadFileOrDie(dir.Join("t2.zip")),
                    c = ReadFileOrDie(dir.Join("t4.zip"));
  const ZipEntry& e = one->entries[0];
  EXPECT_EQ(a.substr(e.data_offset, e.compressed_size),
            b.substr(two->entries[0].data_offset, two->entries[0].compressed_size));
  EXPECT_EQ(a.substr(e.data_offset, e.compressed_size),
            c.substr(four->entries[0].data_offset, four->entries[0].compressed_size));
  EXPECT_EQ(e.seek_table, two->entries[0].seek_table);
  EXPECT_EQ(e.seek_table, four->entries[0].seek_table);
}

TEST(ArchiveWriter, ADeflatedSourceThatDoesNotMatchItsExpectedCrcFailsWithEio) {
  TempDir dir;
  NewMember m = FromBytes("x.bin", std::string(100000, 'x'));
  m.crc32 = Crc(std::string(100000, 'y'));
  WriteOptions options;
  options.compress_level = 6;
  Status s = WriteArchive(dir.Join("a.npz"), {m}, options);
  EXPECT_EQ(s.code(), EIO);
  EXPECT_NE(s.message().find("member x.bin: the data read does not match its expected CRC-32"),
            std::string::npos)
      << s.message();
  EXPECT_TRUE(ListDir(dir.path()).empty());
}

TEST(ArchiveWriter, ZipWriterWritesManyMembersAtDifferentLevelsAndStoredOnesBetween) {
  TempDir dir;
  const std::string path = dir.Join("levels.zip");
  std::string expected;
  {
    auto fd = OpenFile(path, O_RDWR | O_CREAT | O_TRUNC);
    ASSERT_TRUE(fd.ok());
    ZipWriter w(fd->get(), path, 0);
    for (int i = 0; i < 300; ++i) {
      ZipMemberOptions o;
      o.compress_level = i % 3 == 2 ? -1 : (i % 7 < 4 ? 1 : 9);  // stored and two levels
      ASSERT_TRUE(w.BeginMember("m" + std::to_string(i), o).ok());
      const std::string body =
          std::string(static_cast<size_t>(i) * 37, 'a' + i % 26) + std::to_string(i * i);
      ASSERT_TRUE(w.Write(body.data(), body.size()).ok());
      ASSERT_TRUE(w.EndMember().ok());
    }
    EXPECT_EQ(w.member_count(), 300u);
    ASSERT_TRUE(w.Finish("", 0, "").ok());
    EXPECT_EQ(w.offset(), *FileSize(fd->get(), path));
  }
  const std::string out = RunPython(R"(
import zipfile
with zipfile.ZipFile(')" + path + R"(') as zf:
    assert zf.testzip() is None
    for i, info in enumerate(zf.infolist()):
        body = chr(ord('a') + i % 26).encode() * (i * 37) + str(i * i).encode()
        assert zf.read(info) == body, info.filename
        assert info.compress_type == (0 if i % 3 == 2 else 8), info.filename
    print(len(zf.infolist()))
)");
  EXPECT_EQ(out, "300\n");
}

// Appends a member to an np.savez archive in `mode`; every old byte of the members stays.
void ExpectAppendKeepsOldMembers(WriteOptions::AppendMode mode) {
  TempDir dir;
  MakeNpyFiles(dir);
  RunPython(R"(
import numpy as np, zipfile
d = ')" + dir.path() +
            R"('
np.savez(d + '/a.npz', adc=np.load(d + '/adc.npy'), label=np.load(d + '/label.npy'))
with zipfile.ZipFile(d + '/a.npz', 'a') as zf:
    zf.comment = b'kept comment'
)");
  const std::string before = ReadFileOrDie(dir.Join("a.npz"));
  auto old = ReadDir(dir.Join("a.npz"));
  ASSERT_TRUE(old.ok()) << old.status().message();
  ASSERT_EQ(old->entries.size(), 2u);
  ASSERT_TRUE(chmod(dir.Join("a.npz").c_str(), 0640) == 0);
  struct stat st_before;
  ASSERT_EQ(stat(dir.Join("a.npz").c_str(), &st_before), 0);

  auto noise = OpenFile(dir.Join("noise.npy"), O_RDONLY);
  ASSERT_TRUE(noise.ok());
  std::vector<std::pair<uint64_t, uint64_t>> progress;
  WriteOptions options;
  options.compress_level = 1;
  options.append_mode = mode;
  options.progress = [&](uint64_t done, uint64_t total) { progress.emplace_back(done, total); };
  Status s = AppendToArchive(dir.Join("a.npz"),
                             {FromFile("noise.npy", *noise, dir.Join("noise.npy"))}, options);
  ASSERT_TRUE(s.ok()) << s.message();

  const std::string after = ReadFileOrDie(dir.Join("a.npz"));
  auto now = ReadDir(dir.Join("a.npz"));
  ASSERT_TRUE(now.ok()) << now.status().message();
  ASSERT_EQ(now->entries.size(), 3u);
  // The old prefix, the old central records, and the comment survive unchanged.
  EXPECT_EQ(after.substr(0, old->cd_offset), before.substr(0, old->cd_offset));
  EXPECT_EQ(now->cd_bytes.substr(0, old->cd_bytes.size()), old->cd_bytes);
  EXPECT_EQ(now->comment, "kept comment");
  for (size_t i = 0; i < 2; ++i) {
    const ZipEntry& e = now->entries[i];
    EXPECT_EQ(e.local_header_offset, old->entries[i].local_header_offset);
    EXPECT_EQ(e.data_offset, old->entries[i].data_offset);
  }
  EXPECT_EQ(now->entries[2].name, "noise.npy");
  EXPECT_EQ(now->entries[2].method, 8);
  EXPECT_EQ(VerifyWithPython(dir.Join("a.npz"), dir.path()), "adc.npy,label.npy,noise.npy\n");

  struct stat st;
  ASSERT_EQ(stat(dir.Join("a.npz").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0640u);
  const bool in_place = mode == WriteOptions::AppendMode::kInPlace;
  EXPECT_EQ(st.st_ino == st_before.st_ino, in_place);  // the copy is a new inode
  ASSERT_FALSE(progress.empty());
  EXPECT_EQ(progress.back().first, progress.back().second);
  // In place only the new bytes are written; a copy also copies the old members.
  EXPECT_EQ(progress.back().second,
            (in_place ? 0 : old->cd_offset) + ReadFileOrDie(dir.Join("noise.npy")).size());
  EXPECT_TRUE(std::is_sorted(progress.begin(), progress.end()));
  EXPECT_EQ(ListDir(dir.path()),
            (std::vector<std::string>{"a.npz", "adc.npy", "label.npy", "noise.npy"}));
}

TEST(ArchiveWriter, ZipWriterRefusesANameThatIsNotValidUtf8AndStillWritesAValidArchive) {
  TempDir dir;
  const std::string path = dir.Join("names.zip");
  {
    auto fd = OpenFile(path, O_RDWR | O_CREAT | O_TRUNC);
    ASSERT_TRUE(fd.ok());
    ZipWriter w(fd->get(), path, 0);
    for (const std::string& bad :
         {std::string("k\xff.npy"), std::string("\xc3(.npy"), std::string("a/\xed\xa0\x80.npy")}) {
      const Status s = w.BeginMember(bad, ZipMemberOptions{});
      EXPECT_EQ(s.code(), EINVAL) << s.message();
      EXPECT_NE(s.message().find("not valid UTF-8"), std::string::npos) << s.message();
      EXPECT_NE(s.message().find("names.zip"), std::string::npos) << s.message();
    }
    EXPECT_NE(w.BeginMember("k\xff.npy", ZipMemberOptions{}).message().find("k\\xff.npy"),
              std::string::npos);
    EXPECT_EQ(w.offset(), 0u);  // nothing was written for a refused name
    for (const std::string& good : {std::string("ascii.npy"), std::string("\xc3\xa4rger.npy")}) {
      ASSERT_TRUE(w.BeginMember(good, ZipMemberOptions{}).ok());
      ASSERT_TRUE(w.Write("abc", 3).ok());
      ASSERT_TRUE(w.EndMember().ok());
    }
    ASSERT_TRUE(w.Finish("", 0, "").ok());
  }
  const std::string out = RunPython(R"(
import zipfile
with zipfile.ZipFile(')" + path + R"(') as zf:
    assert zf.testzip() is None
    print(repr(zf.namelist()))
)");
  EXPECT_EQ(out, "['ascii.npy', '\xc3\xa4rger.npy']\n");
}

TEST(ArchiveWriter, AppendingInPlaceToASavezArchiveKeepsEveryOldMemberByteIdentical) {
  ExpectAppendKeepsOldMembers(WriteOptions::AppendMode::kInPlace);
}

TEST(ArchiveWriter, AppendingByCopyToASavezArchiveKeepsEveryOldMemberByteIdentical) {
  ExpectAppendKeepsOldMembers(WriteOptions::AppendMode::kCopy);
}

TEST(ArchiveWriter, AppendCreatesTheArchiveWhenItDoesNotExist) {
  TempDir dir;
  ASSERT_TRUE(AppendToArchive(dir.Join("new.npz"), {FromBytes("meta.json", "{}")}, {}).ok());
  auto d = ReadDir(dir.Join("new.npz"));
  ASSERT_TRUE(d.ok());
  ASSERT_EQ(d->entries.size(), 1u);
  EXPECT_EQ(d->entries[0].name, "meta.json");
  EXPECT_EQ(VerifyWithPython(dir.Join("new.npz"), dir.path()), "meta.json\n");
}

TEST(ArchiveWriter, AppendingToAnEmptyFileTreatsItAsANewArchive) {
  TempDir dir;
  WriteFileOrDie(dir.Join("empty.npz"), "");
  ASSERT_TRUE(chmod(dir.Join("empty.npz").c_str(), 0604) == 0);
  ASSERT_TRUE(AppendToArchive(dir.Join("empty.npz"), {FromBytes("x.txt", "x")}, {}).ok());
  EXPECT_EQ(VerifyWithPython(dir.Join("empty.npz"), dir.path()), "x.txt\n");
  struct stat st;
  ASSERT_EQ(stat(dir.Join("empty.npz").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0604u);
}

TEST(ArchiveWriter, AppendingNothingLeavesTheArchiveAlone) {
  TempDir dir;
  ASSERT_TRUE(WriteArchive(dir.Join("a.npz"), {FromBytes("x.npy", "old")}, {}).ok());
  struct stat before, after;
  ASSERT_EQ(stat(dir.Join("a.npz").c_str(), &before), 0);
  ASSERT_TRUE(AppendToArchive(dir.Join("a.npz"), {}, {}).ok());
  ASSERT_EQ(stat(dir.Join("a.npz").c_str(), &after), 0);
  EXPECT_EQ(before.st_ino, after.st_ino);  // not rewritten
  EXPECT_EQ(ListDir(dir.path()), std::vector<std::string>{"a.npz"});
}

TEST(ArchiveWriter, AppendingThroughASymlinkReplacesTheTargetAndKeepsTheLink) {
  TempDir dir;
  ASSERT_TRUE(WriteArchive(dir.Join("a.npz"), {FromBytes("x.npy", "old")}, {}).ok());
  ASSERT_EQ(symlink("a.npz", dir.Join("link.npz").c_str()), 0);
  ASSERT_TRUE(AppendToArchive(dir.Join("link.npz"), {FromBytes("y.npy", "new")}, {}).ok());
  struct stat st;
  ASSERT_EQ(lstat(dir.Join("link.npz").c_str(), &st), 0);
  EXPECT_TRUE(S_ISLNK(st.st_mode));
  auto d = ReadDir(dir.Join("a.npz"));
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->entries.size(), 2u);
}

TEST(ArchiveWriter, UsesZip64RecordsForMoreThan65535MembersAndAppendsToThem) {
  TempDir dir;
  std::vector<NewMember> members;
  for (int i = 0; i < 70000; ++i)
    members.push_back(FromBytes("m" + std::to_string(i), std::to_string(i)));
  ASSERT_TRUE(WriteArchive(dir.Join("many.zip"), members, {}).ok());
  ASSERT_TRUE(AppendToArchive(dir.Join("many.zip"), {FromBytes("last", "the end")}, {}).ok());
  auto d = ReadDir(dir.Join("many.zip"));
  ASSERT_TRUE(d.ok()) << d.status().message();
  ASSERT_EQ(d->entries.size(), 70001u);
  EXPECT_EQ(d->cd_offset + d->cd_size + 56 + 20 + 22, d->archive_size);  // ZIP64 end records
  const std::string out = RunPython(R"(
import zipfile, subprocess
a = ')" + dir.Join("many.zip") + R"('
with zipfile.ZipFile(a) as zf:
    names = zf.namelist()
    assert zf.testzip() is None
    print(len(names), zf.read('m69999').decode(), zf.read('last').decode())
r = subprocess.run(['unzip', '-tq', a], capture_output=True)
assert r.returncode == 0, r.stdout + r.stderr
)");
  EXPECT_EQ(out, "70001 69999 the end\n");
}

// The ZIP64 offset fields: a writer started beyond 4 GiB on a sparse file.
TEST(ArchiveWriter, ZipWriterUsesZip64ForOffsetsBeyondFourGiB) {
  TempDir dir;
  const std::string path = dir.Join("far.zip");
  {
    auto fd = OpenFile(path, O_RDWR | O_CREAT | O_TRUNC);
    ASSERT_TRUE(fd.ok());
    ZipWriter w(fd->get(), path, (uint64_t{5} << 30));
    ASSERT_TRUE(w.BeginMember("a.txt", {}).ok());
    ASSERT_TRUE(w.Write("alpha", 5).ok());
    ASSERT_TRUE(w.EndMember().ok());
    ZipMemberOptions deflate;
    deflate.compress_level = 9;
    deflate.size_hint = 3000;
    ASSERT_TRUE(w.BeginMember("b.txt", deflate).ok());
    ASSERT_TRUE(w.Write(std::string(3000, 'b').data(), 3000).ok());
    ASSERT_TRUE(w.EndMember().ok());
    ASSERT_TRUE(w.Finish("", 0, "far away").ok());
  }
  auto d = ReadDir(path);
  ASSERT_TRUE(d.ok()) << d.status().message();
  ASSERT_EQ(d->entries.size(), 2u);
  EXPECT_EQ(d->entries[0].local_header_offset, uint64_t{5} << 30);
  EXPECT_GT(d->cd_offset, uint64_t{5} << 30);
  EXPECT_EQ(d->comment, "far away");
  const std::string out = RunPython(R"(
import zipfile
with zipfile.ZipFile(')" + path + R"(') as zf:
    assert zf.testzip() is None
    print(zf.read('a.txt').decode(), len(zf.read('b.txt')), zf.comment.decode())
)");
  EXPECT_EQ(out, "alpha 3000 far away\n");
  int err = 0;
  zip_t* z = zip_open(path.c_str(), ZIP_RDONLY, &err);
  ASSERT_NE(z, nullptr) << err;
  zip_stat_t st;
  ASSERT_EQ(zip_stat(z, "b.txt", 0, &st), 0);
  EXPECT_EQ(st.size, 3000u);
  zip_discard(z);
}

// A 4.5 GiB member of zeros (a sparse source) deflated at level 1: ZIP64 sizes in the
// local and central headers, and a seek table. About 10-25 s on the reference machine.
TEST(ArchiveWriter, DeflatesAMemberLargerThanFourGiBWithZip64Sizes) {
  TempDir dir;
  const std::string src = dir.Join("zeros.bin");
  const uint64_t size = (uint64_t{9} << 29);  // 4.5 GiB
  {
    auto fd = OpenFile(src, O_RDWR | O_CREAT | O_TRUNC);
    ASSERT_TRUE(fd.ok());
    ASSERT_EQ(ftruncate(fd->get(), static_cast<off_t>(size)), 0);
  }
  auto fd = OpenFile(src, O_RDONLY);
  ASSERT_TRUE(fd.ok());
  WriteOptions options;
  options.compress_level = 1;
  ASSERT_TRUE(WriteArchive(dir.Join("big.npz"),
                           {FromFile("zeros.bin", *fd, src), FromBytes("tail.txt", "tail")},
                           options)
                  .ok());
  auto d = ReadDir(dir.Join("big.npz"));
  ASSERT_TRUE(d.ok()) << d.status().message();
  ASSERT_EQ(d->entries.size(), 2u);
  const ZipEntry& e = d->entries[0];
  EXPECT_EQ(e.uncompressed_size, size);
  EXPECT_LT(e.compressed_size, size / 100);
  EXPECT_EQ(e.data_offset, e.local_header_offset + 30 + e.name.size() + 20);  // ZIP64 room
  // CRC-32 of 4.5 GiB of zeros, computed independently: 512 MiB by doubling from
  // 1 MiB with crc32_combine, then nine of those.
  std::string zeros(1 << 20, '\0');
  uLong half_gib = crc32_z(0, reinterpret_cast<const Bytef*>(zeros.data()), zeros.size());
  for (int i = 0; i < 9; ++i) {
    half_gib = crc32_combine64(half_gib, half_gib, static_cast<z_off64_t>(1) << (20 + i));
  }
  uLong crc = 0;
  for (int i = 0; i < 9; ++i) crc = crc32_combine64(crc, half_gib, z_off64_t{1} << 29);
  EXPECT_EQ(e.crc32, static_cast<uint32_t>(crc));
  // Its seek table: the default chunk doubled until the chunks fit in one table (1 MiB, after
  // a first chunk of the default size), valid against the ZIP64 sizes; the chunks around the
  // 4 GiB mark and the last one inflate alone.
  auto table = ParseSeekTable(e.seek_table, e.compressed_size, e.uncompressed_size, e.crc32,
                              "big.npz: member zeros.bin");
  ASSERT_TRUE(table.ok()) << table.status().message();
  EXPECT_EQ(table->chunk_size(), 1u << 20);
  EXPECT_EQ(table->chunks().size(),
            SeekChunkCount(size, table->first_chunk_size(), table->chunk_size()));
  EXPECT_LE(table->chunks().size(), kMaxSeekChunks);
  auto archive_fd = OpenFile(dir.Join("big.npz"), O_RDONLY);
  ASSERT_TRUE(archive_fd.ok());
  for (size_t i : {size_t{4095}, size_t{4096}, table->chunks().size() - 1}) {
    const SeekChunk& c = table->chunks()[i];
    EXPECT_EQ(InflateChunk(archive_fd->get(), "big.npz", e, c), std::string(c.out_size, '\0'))
        << "chunk " << i;
  }
  int err = 0;
  zip_t* z = zip_open(dir.Join("big.npz").c_str(), ZIP_RDONLY | ZIP_CHECKCONS, &err);
  ASSERT_NE(z, nullptr) << err;
  zip_stat_t st;
  ASSERT_EQ(zip_stat_index(z, 0, 0, &st), 0);
  EXPECT_EQ(st.size, size);
  zip_discard(z);
  // The local header's ZIP64 sizes must agree too (what a streaming reader uses).
  const std::string out = RunPython(R"(
import struct
with open(')" + dir.Join("big.npz") +
                                    R"(', 'rb') as f:
    h = f.read(30 + 9 + 20)
sig, ver, flags, method, t, dt, crc, cs, us, nl, xl = struct.unpack('<IHHHHHIIIHH', h[:30])
xid, xsz, usize, csize = struct.unpack('<HHQQ', h[39:59])
print(ver, hex(cs), hex(us), xid, usize, csize)
)");
  EXPECT_EQ(out, "45 0xffffffff 0xffffffff 1 " + std::to_string(size) + " " +
                     std::to_string(e.compressed_size) + "\n");
}

TEST(ArchiveWriter, RefusesANameAlreadyInTheArchiveWithEexist) {
  TempDir dir;
  ASSERT_TRUE(WriteArchive(dir.Join("a.npz"), {FromBytes("x.npy", "old")}, {}).ok());
  const std::string before = ReadFileOrDie(dir.Join("a.npz"));
  Status s =
      AppendToArchive(dir.Join("a.npz"), {FromBytes("y.npy", "1"), FromBytes("x.npy", "new")}, {});
  EXPECT_EQ(s.code(), EEXIST);
  EXPECT_NE(s.message().find(dir.Join("a.npz")), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("x.npy"), std::string::npos) << s.message();
  EXPECT_EQ(ReadFileOrDie(dir.Join("a.npz")), before);
  EXPECT_EQ(ListDir(dir.path()), std::vector<std::string>{"a.npz"});

  // With the check off, the duplicate is appended (and numpy reads the last one).
  WriteOptions allow;
  allow.reject_existing_names = false;
  ASSERT_TRUE(AppendToArchive(dir.Join("a.npz"), {FromBytes("x.npy", "new")}, allow).ok());
  auto d = ReadDir(dir.Join("a.npz"));
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->entries.size(), 2u);
}

TEST(ArchiveWriter, RefusesTheSameNewNameTwice) {
  TempDir dir;
  Status s = WriteArchive(dir.Join("a.npz"), {FromBytes("x", "1"), FromBytes("x", "2")}, {});
  EXPECT_EQ(s.code(), EINVAL);
  EXPECT_NE(s.message().find("given twice"), std::string::npos) << s.message();
  EXPECT_TRUE(ListDir(dir.path()).empty());
}

TEST(ArchiveWriter, RefusesToAppendToAFileThatIsNotAZipAndLeavesItAlone) {
  TempDir dir;
  WriteFileOrDie(dir.Join("notes.npz"), "just some text\n");
  Status s = AppendToArchive(dir.Join("notes.npz"), {FromBytes("x.npy", "1")}, {});
  EXPECT_EQ(s.code(), EINVAL);
  EXPECT_NE(s.message().find(dir.Join("notes.npz") + ": not a zip archive"), std::string::npos)
      << s.message();
  EXPECT_EQ(ReadFileOrDie(dir.Join("notes.npz")), "just some text\n");
  EXPECT_EQ(ListDir(dir.path()), std::vector<std::string>{"notes.npz"});
}

TEST(ArchiveWriter, ASourceShorterThanClaimedFailsWithEioAndLeavesNoTempFile) {
  TempDir dir;
  ASSERT_TRUE(WriteArchive(dir.Join("a.npz"), {FromBytes("x.npy", "old")}, {}).ok());
  const std::string before = ReadFileOrDie(dir.Join("a.npz"));
  WriteFileOrDie(dir.Join("src.bin"), std::string(1000, 's'));
  auto fd = OpenFile(dir.Join("src.bin"), O_RDONLY);
  ASSERT_TRUE(fd.ok());
  for (int level : {-1, 6}) {
    NewMember m = FromFile("y.npy", *fd, dir.Join("src.bin"));
    m.pieces[0].length = 5000;
    if (level < 0) m.crc32 = 1234;  // the copy_file_range path
    WriteOptions options;
    options.compress_level = level;
    Status s = AppendToArchive(dir.Join("a.npz"), {m}, options);
    EXPECT_EQ(s.code(), EIO) << s.message();
    EXPECT_EQ(s.message().rfind(dir.Join("a.npz") + ": member y.npy: source " +
                                    dir.Join("src.bin") + ": unexpected end of file",
                                0),
              0u)
        << s.message();
    EXPECT_EQ(ReadFileOrDie(dir.Join("a.npz")), before);
    EXPECT_EQ(ListDir(dir.path()), (std::vector<std::string>{"a.npz", "src.bin"}));
  }
}

TEST(ArchiveWriter, AMissingOutputDirectoryIsAClearError) {
  TempDir dir;
  Status s = WriteArchive(dir.Join("no/such/dir/out.npz"), {FromBytes("x", "1")}, {});
  EXPECT_EQ(s.code(), ENOENT);
  EXPECT_EQ(s.message().rfind(dir.Join("no/such/dir/out.npz") + ": cannot create", 0), 0u)
      << s.message();
  EXPECT_NE(s.message().find("No such file or directory"), std::string::npos) << s.message();
}

TEST(ArchiveWriter, RejectsACompressionLevelOutOfRange) {
  TempDir dir;
  WriteOptions options;
  options.compress_level = 10;
  Status s = WriteArchive(dir.Join("out.npz"), {FromBytes("x", "1")}, options);
  EXPECT_EQ(s.code(), EINVAL);
  EXPECT_NE(s.message().find("compression level 10"), std::string::npos) << s.message();
}

TEST(ArchiveWriter, RunningOutOfSpaceFailsWithEnospcAndLeavesTheArchiveUntouched) {
  if (geteuid() != 0) NPZ_SKIP_UNLESS_CI("needs root to mount a small tmpfs");
  TempDir dir;
  ScopedTmpfs tmpfs(dir.Join("small"), "size=4m");
  ASSERT_TRUE(tmpfs.mounted()) << "mount failed";
  const std::string archive = dir.Join("small/a.npz");
  std::mt19937 rng(7);
  std::string random1(1 << 20, '\0'), random5(5 << 20, '\0');
  for (char& c : random1) c = static_cast<char>(rng());
  for (char& c : random5) c = static_cast<char>(rng());
  ASSERT_TRUE(WriteArchive(archive, {FromBytes("one.bin", random1)}, {}).ok());
  const std::string before = ReadFileOrDie(archive);

  for (int level : {-1, 1}) {
    WriteOptions options;
    options.compress_level = level;
    Status s = AppendToArchive(archive, {FromBytes("five.bin", random5)}, options);
    EXPECT_EQ(s.code(), ENOSPC) << s.message();
    EXPECT_NE(s.message().find("No space left on device"), std::string::npos) << s.message();
    EXPECT_EQ(s.message().rfind(archive, 0), 0u) << s.message();
    EXPECT_EQ(ReadFileOrDie(archive), before);
    EXPECT_EQ(ListDir(dir.Join("small")), std::vector<std::string>{"a.npz"});
  }
}

TEST(ArchiveWriter, AReadOnlyOutputDirectoryIsAClearError) {
  if (geteuid() != 0) NPZ_SKIP_UNLESS_CI("needs root to mount a read-only tmpfs");
  TempDir dir;
  ScopedTmpfs tmpfs(dir.Join("ro"), "ro");
  ASSERT_TRUE(tmpfs.mounted()) << "mount failed";
  Status s = WriteArchive(dir.Join("ro/out.npz"), {FromBytes("x", "1")}, {});
  EXPECT_EQ(s.code(), EROFS) << s.message();
  EXPECT_NE(s.message().find(dir.Join("ro/out.npz") + ": cannot create a temp file"),
            std::string::npos)
      << s.message();
  EXPECT_NE(s.message().find("Read-only file system"), std::string::npos) << s.message();
}

}  // namespace
}  // namespace npzfs
