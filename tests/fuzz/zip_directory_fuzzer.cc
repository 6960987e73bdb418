// Fuzzes the ZIP central directory parser (ReadZipDirectory) and, on what it accepts, the
// member tree and readers built on it (Archive::Open, OpenMember, ReadAt).
//
// The input is a whole archive file, held in a memfd. Besides "no crash, no sanitizer
// report, no huge allocation", the promises of npzfs/zip_directory.h are checked:
//   - an error is EINVAL or EIO and its message names the file;
//   - an accepted directory lies inside the file: the central directory ends before the
//     end of the file, its bytes and CRC are the ones recorded, and every entry's local
//     header and data end before the central directory starts.
// A seek table (npzfs's extra field) that ParseSeekTable accepts covers the member with
// contiguous, non-empty chunks. Then the same file is opened as an Archive (no sidecar) and the
// start and a few other ranges of every openable member are read: a read either fails with an error
// or returns at most the bytes asked for, never more than the member's size.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/zip/seek_table.h"
#include "core/zip/zip_format.h"
#include "npzfs/archive.h"
#include "npzfs/zip_directory.h"
#include "tests/fuzz/fuzz_util.h"

namespace npzfs::fuzz {
namespace {

constexpr size_t kReadBytes = 4096;  // per read: enough to cross a .npy header

// A seek table that parses describes the whole member as contiguous chunks.
void CheckSeekTable(const ZipEntry& e) {
  const std::string what = "fuzz.zip: member " + e.name;
  auto table = ParseSeekTable(e.seek_table, e.compressed_size, e.uncompressed_size, e.crc32, what);
  if (!table.ok()) {
    FUZZ_CHECK(
        table.status().code() == EINVAL && table.status().message().find(what) != std::string::npos,
        "seek table error: " + table.status().message());
    return;
  }
  uint64_t in = 0, out = 0;
  const auto& chunks = table->chunks();
  FUZZ_CHECK(!chunks.empty() && chunks.size() <= kMaxSeekChunks, "seek table chunk count");
  for (size_t i = 0; i < chunks.size(); ++i) {
    FUZZ_CHECK(chunks[i].in == in && chunks[i].out == out && chunks[i].in_size > 0,
               "seek table chunks are not contiguous");
    FUZZ_CHECK(table->ChunkIndexAt(out) == i || chunks[i].out_size == 0,
               "ChunkIndexAt does not find the chunk at its own start");
    in += chunks[i].in_size;
    out += chunks[i].out_size;
  }
  FUZZ_CHECK(in == e.compressed_size && out == e.uncompressed_size,
             "seek table chunks do not cover the member");
}

void CheckDirectory(const ZipDirectory& dir, uint64_t file_size) {
  FUZZ_CHECK(dir.archive_size == file_size, "archive_size is not the file size");
  FUZZ_CHECK(dir.cd_offset <= file_size && dir.cd_size <= file_size - dir.cd_offset,
             "central directory runs past the end of the file");
  FUZZ_CHECK(dir.cd_bytes.size() == dir.cd_size, "cd_bytes is not cd_size long");
  FUZZ_CHECK(dir.cd_crc32 == Crc32(dir.cd_bytes), "cd_crc32 is not the CRC of cd_bytes");
  for (const ZipEntry& e : dir.entries) {
    if (!e.seek_table.empty()) CheckSeekTable(e);
    FUZZ_CHECK(e.local_header_offset <= dir.cd_offset &&
                   dir.cd_offset - e.local_header_offset >= zip::kLocalHeaderSize,
               "entry " + e.name + ": local header outside the member area");
    FUZZ_CHECK(e.data_offset >= e.local_header_offset + zip::kLocalHeaderSize,
               "entry " + e.name + ": data starts inside its local header");
    FUZZ_CHECK(e.data_offset <= dir.cd_offset && e.compressed_size <= dir.cd_offset - e.data_offset,
               "entry " + e.name + ": data runs into the central directory");
  }
}

void ReadMembers(const std::string& path, FuzzInput& in) {
  ArchiveOptions options;
  options.index_enabled = false;
  options.cache_bytes = 1 << 20;
  auto archive = Archive::Open(path, options);
  if (!archive.ok()) return;  // the member tree may refuse what the directory accepted
  std::string buf(kReadBytes, '\0');
  auto* dest = reinterpret_cast<std::byte*>(buf.data());
  for (size_t i = 0; i < (*archive)->members().size(); ++i) {
    auto reader = (*archive)->OpenMember(i);
    if (!reader.ok()) continue;
    const uint64_t size = (*reader)->size();
    for (uint64_t offset : {uint64_t{0}, in.Range(0, size), size}) {
      auto n = (*reader)->ReadAt(offset, std::span(dest, buf.size()));
      if (!n.ok()) {
        FUZZ_CHECK(n.status().code() > 0 && !n.status().message().empty(), "bad error value");
        continue;
      }
      FUZZ_CHECK(*n <= buf.size(), "ReadAt returned more than asked");
      FUZZ_CHECK(offset + *n <= size, "ReadAt returned bytes past the member's end");
    }
  }
}

}  // namespace
}  // namespace npzfs::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace npzfs;
  using namespace npzfs::fuzz;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  UniqueFd fd = MemFileOrAbort(bytes);
  const std::string path = "fuzz.zip";
  auto dir = ReadZipDirectory(fd.get(), path);
  if (!dir.ok()) {
    const int code = dir.status().code();
    FUZZ_CHECK(code == EINVAL || code == EIO, "unexpected errno " + std::to_string(code));
    FUZZ_CHECK(dir.status().message().find(path) != std::string::npos,
               "error does not name the file: " + dir.status().message());
    return 0;
  }
  CheckDirectory(*dir, size);
  // The readers take the bytes after the archive as the offsets to read at (input tail).
  FuzzInput offsets(data + size / 2, size - size / 2);
  ReadMembers("/proc/self/fd/" + std::to_string(fd.get()), offsets);
  return 0;
}
