// Tests of seekable members: members npzfs deflated in independent chunks with a seek table
// in the central directory are random-access from the first read (no first pass, no
// sidecar), and a table that lies is either rejected or distrusted, never believed.
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <functional>
#include <mutex>
#include <random>
#include <string>
#include <thread>

#include "core/base/byte_codec.h"
#include "core/base/crc32.h"
#include "core/zip/chunked_deflater.h"
#include "npzfs/archive.h"
#include "npzfs/archive_writer.h"
#include "tests/test_util.h"
#include "tests/zip_bytes.h"

namespace npzfs {
namespace {

using testing::ReadFileOrDie;
using testing::TempDir;

std::string Noisy(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) {
    s[i] = static_cast<char>((i / 3 % 200) + (rng() % 5));  // compressible, not trivially
  }
  return s;
}

class SeekableTest : public ::testing::Test {
 protected:
  void SetUp() override {
    members_ = {{"adc.npy", Noisy(3'300'000, 1)},
                {"small.npy", Noisy(5000, 2)},
                {"empty.bin", ""},
                {"lead.npy", Noisy(700'000, 3)}};
    std::vector<NewMember> news;
    for (const auto& [name, bytes] : members_) {
      NewMember m;
      m.name = name;
      // A first chunk of its own, as a .npy header gets: a small chunk, whose decoder runs
      // out of input just after its last block.
      if (name == "lead.npy") m.leading_chunk = 128;
      m.pieces.push_back(MemberPiece{bytes});
      news.push_back(std::move(m));
    }
    WriteOptions wo;
    wo.compress_level = 6;
    wo.chunk_size = 256 << 10;
    ASSERT_TRUE(WriteArchive(Path(), news, wo).ok());
  }

  ArchiveOptions Options() {
    ArchiveOptions o;
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

  // Applies `edit` to the seek table data of `name` in the archive's central directory
  // (same length); with `fix_crc`, recomputes the table's own CRC-32 afterwards.
  void EditSeekTable(const std::string& name, bool fix_crc,
                     const std::function<void(std::string&)>& edit) {
    std::string zip = ReadFileOrDie(Path());
    for (size_t p = zip.find("PK\x01\x02"); p != std::string::npos;
         p = zip.find("PK\x01\x02", p + 4)) {
      const uint16_t name_len = GetLe16(zip.data() + p + 28);
      const uint16_t extra_len = GetLe16(zip.data() + p + 30);
      if (zip.compare(p + 46, name_len, name) != 0) continue;
      size_t e = p + 46 + name_len;
      const size_t end = e + extra_len;
      while (e + 4 <= end) {
        const uint16_t id = GetLe16(zip.data() + e), len = GetLe16(zip.data() + e + 2);
        if (id == 0x5a4e) {
          std::string data = zip.substr(e + 4, len);
          edit(data);
          if (fix_crc) SetLe32(data, data.size() - 4, Crc32(0, data.data(), data.size() - 4));
          zip.replace(e + 4, len, data);
          testing::WriteFileOrDie(Path(), zip);
          return;
        }
        e += 4 + len;
      }
    }
    FAIL() << "no seek table for " << name;
  }

  void ExpectEveryMemberReadsExactly(Archive& a) {
    for (const auto& [name, bytes] : members_) {
      auto r = a.OpenMember(*a.Find(name));
      ASSERT_TRUE(r.ok()) << r.status().message();
      std::mt19937_64 rng(7);
      for (int n = 0; n < 30 && !bytes.empty(); ++n) {
        const uint64_t off = rng() % bytes.size();
        std::string buf(std::min<size_t>(1 + rng() % 400000, bytes.size() - off), '\0');
        auto got = (*r)->ReadAt(off, std::as_writable_bytes(std::span(buf)));
        ASSERT_TRUE(got.ok()) << name << ": " << got.status().message();
        ASSERT_TRUE(buf == bytes.substr(off, buf.size())) << name << " at " << off;
      }
      std::string all(bytes.size() + 1, '\0');
      size_t done = 0;
      while (true) {
        auto got = (*r)->ReadAt(done, std::as_writable_bytes(std::span(all).subspan(done)));
        ASSERT_TRUE(got.ok()) << name << ": " << got.status().message();
        if (*got == 0) break;
        done += *got;
      }
      all.resize(done);
      ASSERT_TRUE(all == bytes) << name;
    }
  }

  std::string Path() const { return dir_.Join("seek.npz"); }

  TempDir dir_;
  std::vector<std::pair<std::string, std::string>> members_;
  std::mutex log_mu_;
  std::string log_;
};

TEST_F(SeekableTest, ASeekableMemberNeedsNoFirstPassAndNoSidecar) {
  auto a = Archive::Open(Path(), Options());
  ASSERT_TRUE(a.ok()) << a.status().message();
  const size_t adc = *(*a)->Find("adc.npy");
  EXPECT_EQ((*a)->index_state(adc), IndexState::kSeekable);
  EXPECT_EQ((*a)->index_state(*(*a)->Find("empty.bin")), IndexState::kSeekable);
  ExpectEveryMemberReadsExactly(**a);
  for (size_t i = 0; i < (*a)->members().size(); ++i) {
    EXPECT_EQ((*a)->first_pass_spans(i), 0u) << (*a)->members()[i].path;
    EXPECT_EQ((*a)->fast_chunks(i), 0u) << (*a)->members()[i].path;
  }
  EXPECT_FALSE((*a)->index_dirty());
  ASSERT_TRUE((*a)->SaveIndex().ok());
  EXPECT_FALSE(std::filesystem::exists((*a)->IndexPath())) << "a seekable member needs none";
  EXPECT_EQ(Log(), "");
}

TEST_F(SeekableTest, ATableWithAWrongSizeIsRejectedAndTheMemberReadAsPlainDeflate) {
  EditSeekTable("adc.npy", true, [](std::string& d) {
    SetLe32(d, 20, GetLe32(d.data() + 20) + 1);  // chunk 0's compressed size
  });
  auto a = Archive::Open(Path(), Options());
  ASSERT_TRUE(a.ok()) << a.status().message();
  EXPECT_NE(Log().find("the seek table is ignored"), std::string::npos) << Log();
  EXPECT_EQ((*a)->index_state(*(*a)->Find("adc.npy")), IndexState::kNone);
  ExpectEveryMemberReadsExactly(**a);
}

TEST_F(SeekableTest, ATableWithABadCrcIsRejected) {
  EditSeekTable("adc.npy", false, [](std::string& d) { d[20] ^= 1; });
  auto a = Archive::Open(Path(), Options());
  ASSERT_TRUE(a.ok());
  EXPECT_NE(Log().find("the seek table is ignored"), std::string::npos) << Log();
  ExpectEveryMemberReadsExactly(**a);
}

TEST_F(SeekableTest, ATableWithWrongOffsetsIsDistrustedAndNeverServesWrongBytes) {
  // Chunks 1 and 2 swap their compressed sizes: the sum (and every parse check) holds, but
  // chunk 2 starts at the wrong byte.
  EditSeekTable("adc.npy", true, [](std::string& d) {
    const uint32_t a = GetLe32(d.data() + 28), b = GetLe32(d.data() + 36);
    ASSERT_NE(a, b);
    SetLe32(d, 28, b);
    SetLe32(d, 36, a);
  });
  auto a = Archive::Open(Path(), Options());
  ASSERT_TRUE(a.ok());
  const size_t adc = *(*a)->Find("adc.npy");
  EXPECT_EQ((*a)->index_state(adc), IndexState::kSeekable);
  // First a read in chunk 2 itself (a stream that decoded chunk 1 would carry on into chunk
  // 2 correctly, whatever the table says).
  const uint64_t off = 2 * (256 << 10) + 100;
  std::string buf(1000, '\0');
  auto got = (*(*a)->OpenMember(adc))->ReadAt(off, std::as_writable_bytes(std::span(buf)));
  ASSERT_TRUE(got.ok()) << got.status().message();
  EXPECT_TRUE(buf == members_[0].second.substr(off, buf.size()));
  EXPECT_NE(Log().find("rebuilt from the data"), std::string::npos) << Log();
  EXPECT_NE((*a)->index_state(adc), IndexState::kSeekable) << "the table is no longer used";
  ExpectEveryMemberReadsExactly(**a);
}

TEST_F(SeekableTest, ForgedChunkCrcsThatStillAddUpAreCaughtChunkByChunk) {
  EditSeekTable("adc.npy", true, [](std::string& d) {
    const uint32_t delta = 0x1234abcd;
    const uint32_t chunk_size = GetLe32(d.data() + 8);  // chunk 1's size (not the last)
    SetLe32(d, 24, GetLe32(d.data() + 24) ^ delta);     // chunk 0's CRC
    SetLe32(d, 32, GetLe32(d.data() + 32) ^ Crc32Combine(delta, 0, chunk_size));
  });
  auto a = Archive::Open(Path(), Options());
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(Log().find("ignored"), std::string::npos) << "the forgery must pass the parse";
  ExpectEveryMemberReadsExactly(**a);
  EXPECT_NE(Log().find("CRC-32 mismatch"), std::string::npos) << Log();
  EXPECT_NE(Log().find("rebuilt from the data"), std::string::npos) << Log();
  // The rebuilt index is kept: the next open reads from it (and no longer from the table).
  ASSERT_TRUE((*a)->BuildIndex(*(*a)->Find("adc.npy")).ok());
  ASSERT_TRUE((*a)->SaveIndex().ok());
  auto b = Archive::Open(Path(), Options());
  ASSERT_TRUE(b.ok());
  EXPECT_EQ((*b)->index_state(*(*b)->Find("adc.npy")), IndexState::kComplete);
  ExpectEveryMemberReadsExactly(**b);
  EXPECT_EQ((*b)->first_pass_spans(*(*b)->Find("adc.npy")), 0u);
}

TEST_F(SeekableTest, AChunkWhoseDataIsDamagedIsEioAndNeverServedFromTheRebuiltIndex) {
  // Chunk 4's compressed sizes, from the table: entries of (size, CRC-32) from byte 20.
  uint64_t chunk4_start = 0, chunk4_size = 0;
  EditSeekTable("adc.npy", false, [&](std::string& d) {
    for (int k = 0; k < 4; ++k) chunk4_start += GetLe32(d.data() + 20 + 8 * k);
    chunk4_size = GetLe32(d.data() + 20 + 8 * 4);
  });
  uint64_t data_offset = 0;
  {
    auto a = Archive::Open(Path(), Options());
    ASSERT_TRUE(a.ok());
    data_offset = (*a)->members()[*(*a)->Find("adc.npy")].entry.data_offset;
  }
  std::string zip = ReadFileOrDie(Path());
  zip[data_offset + chunk4_start + chunk4_size / 2] ^= 0x10;
  testing::WriteFileOrDie(Path(), zip);

  auto a = Archive::Open(Path(), Options());
  ASSERT_TRUE(a.ok());
  const std::string& bytes = members_[0].second;
  auto r = (*a)->OpenMember(*(*a)->Find("adc.npy"));
  ASSERT_TRUE(r.ok());
  // Bytes of the damaged chunk, then bytes after it: the table's chunk CRC catches the damage,
  // and then neither the table nor the data can be believed until the member's CRC-32 says
  // which one is wrong (here the data: EIO). Before, the rebuilt index's fast path served
  // the damaged chunk's bytes.
  for (uint64_t off : {uint64_t{4} * (256 << 10), uint64_t{9} * (256 << 10) + 7}) {
    std::string buf(256 << 10, '\0');  // all of chunk 4, the damaged bytes among them
    auto got = (*r)->ReadAt(off, std::as_writable_bytes(std::span(buf)));
    if (got.ok()) {
      EXPECT_TRUE(buf.substr(0, *got) == bytes.substr(off, *got)) << "wrong bytes at " << off;
    } else {
      EXPECT_EQ(got.status().code(), EIO) << got.status().message();
    }
  }
  EXPECT_NE(Log().find("CRC-32 mismatch"), std::string::npos) << Log();
  EXPECT_FALSE((*r)->known_bad().ok()) << "the member is known bad once its CRC-32 was checked";
  // The chunks before the damage were served correctly and still are not served now.
  std::string head(1000, '\0');
  EXPECT_EQ((*r)->ReadAt(0, std::as_writable_bytes(std::span(head))).status().code(), EIO);

  // The index learned from the damaged data is not saved: a later mount would have served
  // the damaged chunk as a checked span (the seek table catches it again instead).
  ASSERT_TRUE((*a)->SaveIndex().ok());
  auto b = Archive::Open(Path(), Options());
  ASSERT_TRUE(b.ok());
  auto rb = (*b)->OpenMember(*(*b)->Find("adc.npy"));
  ASSERT_TRUE(rb.ok());
  std::string chunk(256 << 10, '\0');
  auto again = (*rb)->ReadAt(uint64_t{4} * (256 << 10), std::as_writable_bytes(std::span(chunk)));
  if (again.ok()) {
    EXPECT_TRUE(chunk.substr(0, *again) == bytes.substr(uint64_t{4} * (256 << 10), *again))
        << "wrong bytes from the saved index";
  } else {
    EXPECT_EQ(again.status().code(), EIO) << again.status().message();
  }
}

// Read-ahead of known spans takes at most a quarter of the cache, counted in the spans'
// real lengths. Here 4 MiB chunks meet an 8 MiB cache: an estimate from the checkpoint
// spacing (576 KiB a span) decoded three spans ahead of a slow reader, and they evicted each
// other before they were read (152 decodes for 10 spans).
// Four bytes that, appended to `prefix`, make its CRC-32 `target` (CRC-32 is affine over
// GF(2) in them, so a forger solves 32 linear equations).
std::string ForgeCrcTail(const std::string& prefix, uint32_t target) {
  auto crc_with = [&](uint32_t tail) {
    std::string s = prefix;
    for (int i = 0; i < 4; ++i) s.push_back(static_cast<char>(tail >> (8 * i)));
    return Crc32(0, s.data(), s.size());
  };
  const uint32_t base = crc_with(0);
  std::vector<std::pair<uint32_t, uint32_t>> basis(32, {0, 0});  // by top bit: (value, mask)
  for (int i = 0; i < 32; ++i) {
    uint32_t v = crc_with(uint32_t{1} << i) ^ base, m = uint32_t{1} << i;
    for (int bit = 31; bit >= 0 && v != 0; --bit) {
      if (((v >> bit) & 1) == 0) continue;
      if (basis[bit].first == 0) {
        basis[bit] = {v, m};
        break;
      }
      v ^= basis[bit].first;
      m ^= basis[bit].second;
    }
  }
  uint32_t want = target ^ base, tail = 0;
  for (int bit = 31; bit >= 0; --bit) {
    if (((want >> bit) & 1) == 0) continue;
    want ^= basis[bit].first;
    tail ^= basis[bit].second;
  }
  std::string out;
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>(tail >> (8 * i)));
  return out;
}

TEST(SeekableForgery, AChunkIsDecodedFromItsOwnBytesAloneAndMustEndWithThem) {
  // The deflate stream every zip reader inflates: a stored block holding D0, then D1. D0's
  // tail happens to be E, a deflate encoding of X1, which has D1's length and CRC-32. The
  // table says chunk 1 starts at E: every parse check holds (sizes add up, the chunk CRCs
  // combine to the member's). Decoded from E and stopped after X1's length, chunk 1 would
  // show X1 where the member holds D1; decoded to the end of its bytes it holds more, and
  // chunk 0 ends inside its stored block: the table is distrusted and the data read right.
  std::string d1;
  for (int i = 0; i < 1000; ++i) d1.push_back(static_cast<char>(i * 7 % 251));
  std::string x1;
  while (x1.size() < d1.size() - 4) x1 += "EVIL";
  x1.resize(d1.size() - 4);
  x1 += ForgeCrcTail(x1, Crc32(0, d1.data(), d1.size()));
  ASSERT_EQ(Crc32(0, x1.data(), x1.size()), Crc32(0, d1.data(), d1.size()));
  std::string e, c1;
  ASSERT_TRUE(DeflateChunk(6, x1, /*final=*/false, &e).ok());
  ASSERT_TRUE(DeflateChunk(6, d1, /*final=*/true, &c1).ok());
  const std::string d0 = std::string(68, 'h') + e;
  std::string stream = {'\x00'};  // a stored block, not the last
  PutLe16(stream, static_cast<uint16_t>(d0.size()));
  PutLe16(stream, static_cast<uint16_t>(~d0.size()));
  stream += d0 + c1;
  const std::string data = d0 + d1;

  const uint32_t s0 = static_cast<uint32_t>(5 + d0.size() - e.size());  // the lie
  std::string table = "NPZS";
  table += std::string("\x01\x00\x00\x00", 4);  // version 1, flags, reserved
  for (uint32_t v : {uint32_t{4096}, static_cast<uint32_t>(d0.size()), uint32_t{2}, s0,
                     Crc32(0, d0.data(), d0.size()), static_cast<uint32_t>(stream.size() - s0),
                     Crc32(0, d1.data(), d1.size())}) {
    PutLe32(table, v);
  }
  PutLe32(table, Crc32(0, table.data(), table.size()));
  std::string extra;
  PutLe16(extra, 0x5a4e);
  PutLe16(extra, static_cast<uint16_t>(table.size()));
  extra += table;
  TempDir dir;
  testing::WriteFileOrDie(
      dir.Join("forged.npz"),
      testing::BuildZip(
          {{"m.bin", 8, stream, Crc32(0, data.data(), data.size()), data.size(), extra}}));

  std::string log;
  ArchiveOptions o;
  o.index_enabled = false;
  o.log = [&](const std::string& line) { log += line + "\n"; };
  auto a = Archive::Open(dir.Join("forged.npz"), o);
  ASSERT_TRUE(a.ok()) << a.status().message();
  ASSERT_EQ((*a)->index_state(0), IndexState::kSeekable) << "the forgery passes every parse check";
  auto r = (*a)->OpenMember(0);
  ASSERT_TRUE(r.ok());
  std::string buf(d1.size(), '\0');
  auto got = (*r)->ReadAt(d0.size(), std::as_writable_bytes(std::span(buf)));
  ASSERT_TRUE(got.ok()) << got.status().message();
  EXPECT_TRUE(buf == d1) << (buf == x1 ? "served the forged bytes" : "served other bytes");
  EXPECT_NE(log.find("corrupt seek table"), std::string::npos) << log;
  EXPECT_NE((*a)->index_state(0), IndexState::kSeekable);
}

TEST(SeekableReadAhead, ReadAheadOfLongSpansStaysWithinAQuarterOfTheCache) {
  TempDir dir;
  const std::string bytes = Noisy(40 << 20, 3);
  NewMember m;
  m.name = "big.npy";
  m.pieces.push_back(MemberPiece{bytes});
  std::vector<NewMember> news;
  news.push_back(std::move(m));
  WriteOptions wo;
  wo.compress_level = 1;
  wo.chunk_size = 4 << 20;
  ASSERT_TRUE(WriteArchive(dir.Join("big.npz"), news, wo).ok());
  ArchiveOptions o;
  o.cache_bytes = 8 << 20;
  o.index_enabled = false;
  auto a = Archive::Open(dir.Join("big.npz"), o);
  ASSERT_TRUE(a.ok()) << a.status().message();
  ASSERT_EQ((*a)->index_state(0), IndexState::kSeekable);
  auto r = (*a)->OpenMember(0);
  ASSERT_TRUE(r.ok()) << r.status().message();
  std::string buf(128 << 10, '\0');
  for (size_t off = 0; off < bytes.size(); off += buf.size()) {
    auto got = (*r)->ReadAt(off, std::as_writable_bytes(std::span(buf)));
    ASSERT_TRUE(got.ok()) << got.status().message();
    ASSERT_EQ(*got, buf.size());
    ASSERT_TRUE(buf == bytes.substr(off, buf.size())) << "at " << off;
    // A reader slower than the decoding, so the spans decoded ahead wait in the cache.
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  EXPECT_EQ((*a)->stats().cache_misses, bytes.size() / wo.chunk_size)
      << "every span decoded once; hits " << (*a)->stats().cache_hits;
}

}  // namespace
}  // namespace npzfs
