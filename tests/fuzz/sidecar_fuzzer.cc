// Fuzzes the sidecar index loader (core/read/index_file.h: DecodeIndexFile) and what a
// reader makes of a sidecar the loader accepted (Archive::Open next to it, then reads of
// every member checked against the true bytes).
//
// The archive is built once per process (two deflated members with several blocks and one
// stored member, fixed bytes and mtime), and so is its true sidecar (first passes, a verify
// pass, SaveIndex). Random bytes almost never pass the sidecar's fingerprint and CRC-32, so
// the input says how to reach deeper (first byte, the mode):
//   - bit 0 clear: the true sidecar with up to 16 patches from the input (offset, bytes),
//     optionally truncated (bit 3): forged checkpoints, counts, windows, records;
//   - bit 0 set: the rest of the input is the sidecar; bit 2 copies the true fingerprint
//     (archive size, mtime, central directory CRC, entry count) over it;
//   - bit 1: the trailing CRC-32 is recomputed, so that the loader's later checks run;
//   - bit 4: after the reads, the index is saved and the archive reopened and read again.
// Promises checked: a decode error is EINVAL naming the file; what decodes names only
// entries of the right kind, once each, with ordered checkpoints inside the member, and
// encodes back to bytes that decode to the same records; and where the loader accepted a
// sidecar, every read of every member succeeds with the true bytes (a forged checkpoint is
// distrusted and rebuilt from the data; EIO is only for data that disagrees with its CRC).
// NPZFS_FUZZ_TRACE=1 prints the decoder's verdict on each input.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/read/index_file.h"
#include "npzfs/archive.h"
#include "tests/fuzz/fuzz_util.h"

namespace npzfs::fuzz {
namespace {

constexpr uint64_t kSpacing = 64 << 10;
constexpr uint64_t kCache = 96 << 10;
constexpr size_t kFingerprintOffset = 16, kFingerprintSize = 32;  // size, mtime, CRC, count
constexpr size_t kMaxPatches = 16;
constexpr uint8_t kModeWhole = 1, kModeFixCrc = 2, kModeFixFingerprint = 4, kModeTruncate = 8,
                  kModeSaveAgain = 16;

struct Fixture {
  std::string archive_path;
  std::string sidecar_path;
  std::string true_sidecar;
  std::vector<std::string> plain;  // member contents, in member order
  IndexFingerprint fingerprint;
  std::vector<ZipEntry> entries;
  std::vector<uint8_t> kinds;  // the record kind each entry may have
};

// Member contents: structured, compressible data with a block boundary every few KiB, so
// that the index has several checkpoints per member.
std::string MemberBytes(size_t size, uint32_t seed) {
  std::string s;
  s.reserve(size);
  uint32_t x = seed;
  for (size_t i = 0; i < size; ++i) {
    x = x * 1103515245u + 12345u;
    s.push_back(static_cast<char>((i / 7) ^ ((x >> 24) & 0x0f)));
  }
  return s;
}

Fixture MakeFixture() {
  Fixture f;
  const std::string dir = ScratchDir();
  f.archive_path = dir + "/fixed.npz";
  f.plain = {MemberBytes(300 << 10, 1), MemberBytes(5000, 2), MemberBytes(200 << 10, 3)};
  std::vector<ZipMemberSpec> specs = {
      {"a.npy", 8, RawDeflate(f.plain[0], 6, 0, 8, 24 << 10), Crc32(f.plain[0]), f.plain[0].size(),
       ""},
      {"s.npy", 0, f.plain[1], Crc32(f.plain[1]), f.plain[1].size(), ""},
      {"b/c.npy", 8, RawDeflate(f.plain[2], 1, 0, 8, 0), Crc32(f.plain[2]), f.plain[2].size(), ""},
  };
  WriteFileOrAbort(f.archive_path, BuildZip(specs));
  const struct timespec times[2] = {{1700000000, 0}, {1700000000, 0}};
  if (::utimensat(AT_FDCWD, f.archive_path.c_str(), times, 0) != 0) {
    Fail(__FILE__, __LINE__, "utimensat failed");
  }
  ArchiveOptions options;
  options.checkpoint_spacing = kSpacing;
  options.index_dir = dir;
  auto archive = Archive::Open(f.archive_path, options);
  FUZZ_CHECK(archive.ok(), "fixture archive: " + archive.status().message());
  for (size_t i = 0; i < (*archive)->members().size(); ++i) {
    Status st = (*archive)->VerifyMember(i);  // first passes, and the stored verify pass
    FUZZ_CHECK(st.ok(), "fixture index: " + st.message());
    const ZipEntry& e = (*archive)->members()[i].entry;
    f.kinds.push_back(
        static_cast<uint8_t>(e.method == 8 ? RecordKind::kDeflated : RecordKind::kStored));
  }
  f.entries = (*archive)->directory().entries;
  struct stat st_archive;
  FUZZ_CHECK(::stat(f.archive_path.c_str(), &st_archive) == 0, "stat of the fixture archive");
  f.fingerprint = {(*archive)->directory().archive_size,
                   int64_t{st_archive.st_mtim.tv_sec} * 1000000000 + st_archive.st_mtim.tv_nsec,
                   (*archive)->directory().cd_crc32, f.entries.size()};
  Status st = (*archive)->SaveIndex();
  FUZZ_CHECK(st.ok(), "fixture SaveIndex: " + st.message());
  f.sidecar_path = (*archive)->IndexPath();
  std::ifstream in(f.sidecar_path, std::ios::binary);
  f.true_sidecar.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  FUZZ_CHECK(f.true_sidecar.size() > kFingerprintOffset + kFingerprintSize + 4,
             "fixture sidecar is too short");
  return f;
}

const Fixture& GetFixture() {
  static const Fixture f = MakeFixture();
  return f;
}

std::string MakeSidecar(const Fixture& f, uint8_t mode, FuzzInput& in) {
  std::string s;
  if (mode & kModeWhole) {
    s = in.Rest();
    if ((mode & kModeFixFingerprint) && s.size() >= kFingerprintOffset + kFingerprintSize) {
      s.replace(kFingerprintOffset, kFingerprintSize, f.true_sidecar, kFingerprintOffset,
                kFingerprintSize);
    }
  } else {
    s = f.true_sidecar;
    for (size_t n = in.Range(0, kMaxPatches); n > 0 && !in.empty(); --n) {
      const size_t at = in.Range(0, s.size() - 1);
      const std::string bytes = in.Bytes(in.Range(1, 8));
      s.replace(at, std::min(bytes.size(), s.size() - at), bytes, 0,
                std::min(bytes.size(), s.size() - at));
    }
    if (mode & kModeTruncate) s.resize(in.Range(0, s.size()));
  }
  if ((mode & kModeFixCrc) && s.size() >= 4) {
    SetLe32(s, s.size() - 4, Crc32(std::string_view(s).substr(0, s.size() - 4)));
  }
  return s;
}

// The decoder on its own: its errors, what it accepts, and that this round-trips.
bool CheckDecode(const Fixture& f, const std::string& sidecar) {
  const std::string file = "fuzz.npzfs-index";
  auto records = DecodeIndexFile(sidecar, file, f.fingerprint, f.entries, f.kinds);
  if (std::getenv("NPZFS_FUZZ_TRACE") != nullptr) {
    std::fprintf(stderr, "sidecar of %zu bytes: %s\n", sidecar.size(),
                 records.ok() ? (std::to_string(records->size()) + " records").c_str()
                              : records.status().message().c_str());
  }
  if (!records.ok()) {
    FUZZ_CHECK(records.status().code() == EINVAL, "decode error is not EINVAL");
    FUZZ_CHECK(records.status().message().find(file) != std::string::npos,
               "decode error does not name the file: " + records.status().message());
    return false;
  }
  std::vector<bool> seen(f.entries.size(), false);
  for (const IndexRecord& r : *records) {
    FUZZ_CHECK(r.entry_index < f.entries.size() && !seen[r.entry_index],
               "a record names no entry, or an entry twice");
    seen[r.entry_index] = true;
    FUZZ_CHECK(static_cast<uint8_t>(r.kind) == f.kinds[r.entry_index], "record of another kind");
    const ZipEntry& e = f.entries[r.entry_index];
    for (size_t k = 0; k < r.checkpoints.size(); ++k) {
      const Checkpoint& cp = r.checkpoints[k];
      FUZZ_CHECK(
          k == 0 ? cp.out == 0 : cp.out > r.checkpoints[k - 1].out && cp.out < e.uncompressed_size,
          "checkpoints out of order or beyond the member");
      FUZZ_CHECK(cp.in <= e.compressed_size && cp.bits < 8,
                 "checkpoint input position beyond the member");
    }
  }
  const std::string again = EncodeIndexFile(f.fingerprint, f.entries, *records);
  auto decoded = DecodeIndexFile(again, file, f.fingerprint, f.entries, f.kinds);
  FUZZ_CHECK(decoded.ok(), "a re-encoded sidecar does not decode: " + decoded.status().message());
  FUZZ_CHECK(EncodeIndexFile(f.fingerprint, f.entries, *decoded) == again,
             "encode(decode(encode(x))) differs from encode(x)");
  return true;
}

// Reads every member in chunks whose sizes come from the input; checks the bytes.
void ReadAll(Archive& archive, const Fixture& f, FuzzInput& in) {
  FUZZ_CHECK(archive.members().size() == f.plain.size(), "member count changed");
  for (size_t i = 0; i < f.plain.size(); ++i) {
    auto reader = archive.OpenMember(i);
    FUZZ_CHECK(reader.ok(), "OpenMember: " + reader.status().message());
    const std::string& want = f.plain[i];
    // Start somewhere, wrap around: random first access, then the rest in order.
    const uint64_t start = in.Range(0, want.size());
    std::vector<std::byte> buf(48 << 10);
    for (uint64_t done = 0; done < want.size();) {
      const uint64_t off = (start + done) % want.size();
      // Chunk sizes from the input; whole buffers once it is used up.
      const size_t want_len = in.empty() ? buf.size() : in.Range(1, buf.size());
      const size_t len = std::min<uint64_t>(want_len, want.size() - off);
      auto n = (*reader)->ReadAt(off, std::span(buf.data(), len));
      FUZZ_CHECK(n.ok(),
                 "a read of a good member failed after a forged sidecar: " + n.status().message());
      FUZZ_CHECK(*n == len, "short read inside the member");
      FUZZ_CHECK(std::memcmp(buf.data(), want.data() + off, len) == 0,
                 "WRONG BYTES served for member " + std::to_string(i) + " at " +
                     std::to_string(off) + "+" + std::to_string(len));
      done += len;
    }
  }
}

void Run(const uint8_t* data, size_t size) {
  const Fixture& f = GetFixture();
  FuzzInput in(data, size);
  const uint8_t mode = in.U8();
  const std::string sidecar = MakeSidecar(f, mode, in);
  // A sidecar the decoder rejects is ignored by Archive (a log line): reading through one
  // would test nothing more, so the end-to-end part runs for the accepted ones.
  if (!CheckDecode(f, sidecar)) return;
  WriteFileOrAbort(f.sidecar_path, sidecar);
  ArchiveOptions options;
  options.checkpoint_spacing = kSpacing;
  options.cache_bytes = kCache;
  options.index_dir = ScratchDir();
  auto archive = Archive::Open(f.archive_path, options);
  FUZZ_CHECK(archive.ok(), "a sidecar made Open fail: " + archive.status().message());
  FuzzInput reads(data + size / 2, size - size / 2);
  ReadAll(**archive, f, reads);
  if (mode & kModeSaveAgain) {
    (void)(*archive)->SaveIndex();
    archive->reset();
    auto again = Archive::Open(f.archive_path, options);
    FUZZ_CHECK(again.ok(), "reopen failed: " + again.status().message());
    ReadAll(**again, f, reads);
  }
  ::unlink(f.sidecar_path.c_str());
}

}  // namespace
}  // namespace npzfs::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  npzfs::fuzz::Run(data, size);
  return 0;
}
