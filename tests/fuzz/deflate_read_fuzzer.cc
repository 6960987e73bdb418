// Fuzzes random-access reads of deflated members (Archive, DeflatedMember, the span cache,
// checkpoints and sparse windows) against plain zlib inflating the whole member.
//
// Input: one mode byte, then either
//   - (mode bit 0 clear) the recipe of a plaintext of up to 384 KiB (repeated units, noise,
//     far copies, runs), compressed here with a level, strategy, memLevel and flush spacing
//     taken from the input, so that block boundaries, stored blocks, fixed-Huffman blocks
//     and back references across checkpoints all occur; or
//   - (mode bit 0 set) a raw deflate stream as is. zlib's inflate is the reference: where
//     it accepts the stream, every read must match its output; where it rejects it (or the
//     output passes 8 MiB), the member is claimed longer than what zlib produced, reads
//     inside that output must match it, no byte past it may be served, and a read through
//     the whole member must fail.
// The member is read through readers of an Archive with a tiny span cache and the smallest
// checkpoint spacing, at offsets and lengths from the input, from two readers in turn. Mode
// bit 1 runs the whole first pass (BuildIndex) before the reads; mode bit 2 also saves the index
// and re-reads through a fresh Archive that loads it; mode bit 3 writes a wrong CRC into
// the directory, and a read of the whole member must then fail with EIO; mode bit 4 deflates
// the plaintext as npzfs's writer does, in independent chunks described by a seek table in
// the central entry, and bit 5 damages one byte of that table (it must be ignored, never
// trusted).
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/zip/chunked_deflater.h"
#include "core/zip/seek_table.h"
#include "npzfs/archive.h"
#include "tests/fuzz/fuzz_util.h"

namespace npzfs::fuzz {
namespace {

constexpr size_t kMaxPlain = 384 << 10;
constexpr size_t kMaxInflated = 8 << 20;  // a raw stream may inflate this much at most
constexpr uint64_t kSpacing = 64 << 10;   // the smallest checkpoint spacing Archive allows
constexpr size_t kMaxReads = 24;
constexpr size_t kMaxReadLength = 96 << 10;
constexpr uint8_t kModeRaw = 1, kModeBuildIndex = 2, kModeSaveIndex = 4, kModeBadCrc = 8,
                  kModeChunked = 16, kModeBadTable = 32;

std::string MakePlaintext(FuzzInput& in) {
  const size_t target = in.Range(0, kMaxPlain);
  std::string unit = in.Bytes(in.Range(1, 64));
  if (unit.empty()) unit = "npzfs";
  uint32_t noise = in.U32() | 1;
  std::string plain;
  plain.reserve(target);
  while (plain.size() < target) {
    const size_t room = target - plain.size();
    if (in.empty()) {  // recipe used up: fill with the unit
      while (plain.size() < target)
        plain.append(unit, 0, std::min(unit.size(), target - plain.size()));
      break;
    }
    switch (in.U8() % 4) {
      case 0:  // the unit, repeated: long matches
        for (size_t r = in.Range(1, 256); r > 0 && plain.size() < target; --r) {
          plain.append(unit, 0, std::min(unit.size(), target - plain.size()));
        }
        break;
      case 1:
        AppendNoise(in, room, noise, &plain);
        break;
      case 2:  // references across checkpoints
        AppendBackCopy(in, room, &plain);
        break;
      default:
        AppendRun(in, room, &plain);
    }
  }
  return plain;
}

struct Member {
  std::string raw;            // the stored deflate stream
  std::string reference;      // what zlib made of it (all of it, or up to its error)
  bool valid = true;          // zlib inflated it to its end
  std::string central_extra;  // a seek table block, for a chunked member
};

// Deflates m->reference as npzfs's writer does, in independent chunks (core's DeflateChunk),
// and describes them in a seek table (core's EncodeSeekTableExtra). With bad_table, one byte
// of the table is changed: a reader must then ignore the table, never trust it.
struct ChunkPlan {
  uint64_t first = 0;  // first chunk's size (0: chunk_size), as a .npy header chunk is
  uint64_t chunk_size = 0;
  bool bad_table = false;
  uint16_t damage = 0;  // where and how the table is damaged
};

ChunkPlan MakeChunkPlan(uint8_t mode, FuzzInput& in) {
  ChunkPlan p;
  p.first = in.Range(0, 4096);
  p.chunk_size = in.Range(256, 160 << 10);
  p.bad_table = mode & kModeBadTable;
  p.damage = in.U16();
  return p;
}

void DeflateChunked(Member* m, int level, const ChunkPlan& plan) {
  const uint64_t first = plan.first, chunk_size = plan.chunk_size;
  const std::string& plain = m->reference;
  SeekTableLayout layout;
  layout.chunk_size = static_cast<uint32_t>(chunk_size);
  layout.first_chunk_size = static_cast<uint32_t>(
      plain.empty() ? 0 : std::min<uint64_t>(first == 0 ? chunk_size : first, plain.size()));
  m->raw.clear();
  for (uint64_t at = 0, n = layout.first_chunk_size; at < plain.size() || layout.crc32s.empty();
       at += n, n = chunk_size) {
    const std::string_view chunk = std::string_view(plain).substr(at, n);
    std::string out;
    Status st = DeflateChunk(level, chunk, at + chunk.size() >= plain.size(), &out);
    FUZZ_CHECK(st.ok(), "DeflateChunk: " + st.message());
    m->raw += out;
    layout.compressed_sizes.push_back(static_cast<uint32_t>(out.size()));
    layout.crc32s.push_back(Crc32(chunk));
  }
  if (layout.crc32s.size() > kMaxSeekChunks) return;  // the writer would coarsen it
  auto extra = EncodeSeekTableExtra(layout);
  FUZZ_CHECK(extra.ok(), "EncodeSeekTableExtra: " + extra.status().message());
  m->central_extra = *extra;
  if (plan.bad_table) {
    constexpr size_t kBlockHeader = 4;  // header id and data size: keep the block findable
    const size_t at = kBlockHeader + plan.damage % (m->central_extra.size() - kBlockHeader);
    m->central_extra[at] = static_cast<char>(m->central_extra[at] ^ (1 + plan.damage % 255));
  }
}

Member MakeMember(uint8_t mode, FuzzInput& in) {
  Member m;
  if (mode & kModeRaw) {
    m.raw = in.Rest();
    size_t consumed = 0;
    m.valid = RawInflate(m.raw, kMaxInflated, &m.reference, &consumed);
    if (m.reference.size() > kMaxInflated) m.reference.resize(kMaxInflated);
    return m;
  }
  static constexpr int kStrategies[] = {Z_DEFAULT_STRATEGY, Z_FILTERED, Z_HUFFMAN_ONLY, Z_RLE,
                                        Z_FIXED};
  const int level = static_cast<int>(in.Range(0, 9));
  const int strategy = kStrategies[in.Range(0, 4)];
  const int mem_level = static_cast<int>(in.Range(1, 9));
  const size_t flush_every = in.Bool() ? in.Range(1, 96 << 10) : 0;
  const ChunkPlan chunks = (mode & kModeChunked) ? MakeChunkPlan(mode, in) : ChunkPlan{};
  m.reference = MakePlaintext(in);
  if (mode & kModeChunked) {
    DeflateChunked(&m, level, chunks);
  } else {
    m.raw = RawDeflate(m.reference, level, strategy, mem_level, flush_every);
  }
  return m;
}

struct ReadPlan {
  uint64_t offset;
  size_t length;
  bool second_reader;
};

std::vector<ReadPlan> MakeReads(FuzzInput& in, uint64_t size) {
  std::vector<ReadPlan> reads;
  const size_t n = in.Range(1, kMaxReads);
  for (size_t i = 0; i < n; ++i) {
    reads.push_back({in.Range(0, size + 1024), in.Range(0, kMaxReadLength), in.Bool()});
  }
  return reads;
}

// One read; checks the bytes against the reference where the reference is known.
void CheckRead(MemberReader& reader, const Member& m, uint64_t claimed_size, const ReadPlan& r) {
  std::vector<std::byte> buf(r.length);
  auto n = reader.ReadAt(r.offset, std::span(buf));
  if (!n.ok()) {
    FUZZ_CHECK(n.status().code() == EIO || n.status().code() == ENOMEM,
               "read error is not EIO: " + n.status().message());
    FUZZ_CHECK(!m.valid || n.status().code() == ENOMEM,
               "read of a valid member failed at " + std::to_string(r.offset) + "+" +
                   std::to_string(r.length) + ": " + n.status().message());
    return;
  }
  const uint64_t expect =
      r.offset >= claimed_size ? 0 : std::min<uint64_t>(r.length, claimed_size - r.offset);
  FUZZ_CHECK(*n == expect, "read at " + std::to_string(r.offset) + "+" + std::to_string(r.length) +
                               " returned " + std::to_string(*n) + " bytes, expected " +
                               std::to_string(expect));
  const uint64_t known = m.reference.size();
  const uint64_t cmp = r.offset >= known ? 0 : std::min<uint64_t>(*n, known - r.offset);
  if (cmp > 0) {
    FUZZ_CHECK(std::memcmp(buf.data(), m.reference.data() + r.offset, cmp) == 0,
               "wrong bytes at " + std::to_string(r.offset) + "+" + std::to_string(cmp));
  }
  FUZZ_CHECK(m.valid || cmp == *n, "bytes past the point where zlib failed were served");
}

// Reads the whole member in order through one fresh reader; true if every read succeeded.
bool ReadThrough(Archive& archive) {
  auto reader = archive.OpenMember(0);
  if (!reader.ok()) return false;
  std::vector<std::byte> buf(64 << 10);
  for (uint64_t off = 0; off < (*reader)->size();) {
    auto n = (*reader)->ReadAt(off, std::span(buf));
    if (!n.ok()) return false;
    if (*n == 0) return false;  // short member: the size promised more
    off += *n;
  }
  return true;
}

void Run(const uint8_t* data, size_t size) {
  FuzzInput in(data, size);
  const uint8_t mode = in.U8();
  const uint64_t cache = in.Range(0, 256 << 10);
  const uint32_t crc_flip = in.U32() | 1;
  Member m = MakeMember(mode, in);
  // A stream zlib rejects is claimed one or more bytes longer than what zlib got out of it,
  // so that no reader can honestly serve all of it.
  const uint64_t claimed_size = m.reference.size() + (m.valid ? 0 : 1 + in.U8());
  const bool bad_crc = mode & kModeBadCrc;
  const uint32_t crc = Crc32(m.reference) ^ (bad_crc ? crc_flip : 0);
  // The reads are drawn from the input tail again (the recipe consumed it): a second view.
  FuzzInput read_input(data + size / 3, size - size / 3);
  const std::vector<ReadPlan> reads = MakeReads(read_input, claimed_size);

  const std::string path = ScratchDir() + "/deflate.zip";
  WriteFileOrAbort(path, BuildZip({{"m.npy", 8, m.raw, crc, claimed_size, m.central_extra}}));
  ArchiveOptions options;
  options.cache_bytes = cache;
  options.checkpoint_spacing = kSpacing;
  options.speculate_bytes = 64 << 10;  // far reads split with a helper (fast_path.cc)
  options.index_enabled = (mode & kModeSaveIndex) != 0;
  options.index_dir = ScratchDir();
  auto archive = Archive::Open(path, options);
  FUZZ_CHECK(archive.ok(),
             "a well-formed one-member archive did not open: " + archive.status().message());
  FUZZ_CHECK((*archive)->members().size() == 1, "member count");
  const bool valid = m.valid && !bad_crc;
  if (mode & kModeBuildIndex) {
    Status st = (*archive)->BuildIndex(0);
    FUZZ_CHECK(st.ok() || !valid, "BuildIndex failed on a valid member: " + st.message());
  }
  auto r1 = (*archive)->OpenMember(0);
  auto r2 = (*archive)->OpenMember(0);
  FUZZ_CHECK(r1.ok() && r2.ok(), "OpenMember of a deflated member failed");
  Member checked = m;
  checked.valid = valid;
  for (const ReadPlan& r : reads)
    CheckRead(r.second_reader ? **r2 : **r1, checked, claimed_size, r);
  // (An empty member is never read, so a wrong CRC of it cannot show.)
  const bool through = ReadThrough(**archive);
  FUZZ_CHECK(through == valid || claimed_size == 0,
             valid ? "a read through a valid member failed"
                   : "a read through a member with a wrong CRC or corrupt data succeeded");

  if (mode & kModeSaveIndex) {
    Status st = (*archive)->SaveIndex();
    FUZZ_CHECK(st.ok(), "SaveIndex failed: " + st.message());
    const std::string sidecar = (*archive)->IndexPath();
    archive->reset();
    auto again = Archive::Open(path, options);
    FUZZ_CHECK(again.ok(), "reopen failed: " + again.status().message());
    auto r3 = (*again)->OpenMember(0);
    FUZZ_CHECK(r3.ok(), "OpenMember after reopen failed");
    for (const ReadPlan& r : reads) CheckRead(**r3, checked, claimed_size, r);
    FUZZ_CHECK(ReadThrough(**again) == through, "read through after reopen disagrees");
    ::unlink(sidecar.c_str());
  }
}

}  // namespace
}  // namespace npzfs::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  npzfs::fuzz::Run(data, size);
  return 0;
}
