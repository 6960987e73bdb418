// Seek table encode, find and parse (format: core/README.md, "Seek table extra field").
//
// Why the layout is regular (a first chunk, then equal chunks) rather than a list of
// uncompressed sizes: it costs 8 bytes per chunk instead of 12, so 8000 chunks (8 GiB at
// the default 1 MiB) fit in one central entry, and a reader finds the chunk of an offset
// by division. The first chunk may differ so that a .npy header can be its own chunk: a
// finalize that changes the header's frame count recompresses 128 bytes, not the data.
//
// Why each chunk has a CRC-32: the member's CRC covers the whole member, so without them a
// random-access reader could only verify after reading everything. With them every chunk
// is checked before it is served; and because they must combine (crc32_combine) to the
// entry's CRC, a table copied from another member, or edited, is rejected at parse time.
#include "core/zip/seek_table.h"

#include <zlib.h>

#include <algorithm>

#include "core/base/byte_codec.h"
#include "core/zip/zip_format.h"

namespace npzfs {
namespace {

uint32_t Crc32Of(std::string_view bytes) {
  return static_cast<uint32_t>(
      ::crc32_z(0, reinterpret_cast<const Bytef*>(bytes.data()), bytes.size()));
}

Status Malformed(const std::string& what, const std::string& cause) {
  return Status::Error(EINVAL, what + ": seek table: " + cause);
}

}  // namespace

size_t SeekTable::ChunkIndexAt(uint64_t out) const {
  if (chunks_.size() <= 1 || out < first_chunk_size_) return 0;
  const uint64_t i = 1 + (out - first_chunk_size_) / chunk_size_;
  return static_cast<size_t>(std::min<uint64_t>(i, chunks_.size() - 1));
}

uint64_t SeekChunkCount(uint64_t uncompressed_size, uint64_t first_chunk_size,
                        uint64_t chunk_size) {
  const uint64_t first = std::min(first_chunk_size, uncompressed_size);
  const uint64_t rest = uncompressed_size - first;
  return 1 + rest / chunk_size + (rest % chunk_size != 0);
}

uint64_t SeekChunkSizeFor(uint64_t uncompressed_size, uint64_t first_chunk_size,
                          uint64_t preferred) {
  uint64_t size = std::max<uint64_t>(preferred, 1);
  while (SeekChunkCount(uncompressed_size, first_chunk_size, size) > kMaxSeekChunks) {
    size *= 2;
    if (size > kMaxSeekChunkSize) return 0;
  }
  return size <= kMaxSeekChunkSize ? size : 0;
}

bool CoarsenSeekTable(SeekTableLayout* layout, uint64_t uncompressed_size) {
  while (layout->compressed_sizes.size() > kMaxSeekChunks) {
    const uint64_t c = layout->chunk_size;
    if (2 * c > kMaxSeekChunkSize) return false;
    const size_t n = layout->compressed_sizes.size();
    std::vector<uint32_t> sizes = {layout->compressed_sizes[0]};
    std::vector<uint32_t> crcs = {layout->crc32s[0]};
    uint64_t at = std::min<uint64_t>(layout->first_chunk_size, uncompressed_size);
    for (size_t i = 1; i < n; i += 2) {
      at += std::min(c, uncompressed_size - at);
      uint64_t merged_size = layout->compressed_sizes[i];
      uLong merged_crc = layout->crc32s[i];
      if (i + 1 < n) {
        const uint64_t len = std::min(c, uncompressed_size - at);
        at += len;
        merged_size += layout->compressed_sizes[i + 1];
        merged_crc =
            ::crc32_combine64(merged_crc, layout->crc32s[i + 1], static_cast<z_off64_t>(len));
      }
      if (merged_size > 0xFFFFFFFFu) return false;
      sizes.push_back(static_cast<uint32_t>(merged_size));
      crcs.push_back(static_cast<uint32_t>(merged_crc));
    }
    layout->compressed_sizes = std::move(sizes);
    layout->crc32s = std::move(crcs);
    layout->chunk_size = static_cast<uint32_t>(2 * c);
  }
  return true;
}

Result<std::string> EncodeSeekTableExtra(const SeekTableLayout& layout) {
  const size_t n = layout.compressed_sizes.size();
  if (n == 0 || n > kMaxSeekChunks || layout.crc32s.size() != n || layout.chunk_size == 0) {
    return Status::Error(EINVAL, "seek table: cannot encode " + std::to_string(n) +
                                     " chunks with " + std::to_string(layout.crc32s.size()) +
                                     " CRCs and chunk size " + std::to_string(layout.chunk_size));
  }
  const size_t data_size = kSeekTableFixedSize + n * kSeekTableEntrySize + kSeekTableCrcSize;
  std::string out;
  out.reserve(zip::kExtraHeaderSize + data_size);
  PutLe16(out, zip::kSeekTableExtraId);
  PutLe16(out, static_cast<uint16_t>(data_size));
  out += kSeekTableSignature;
  out.push_back(static_cast<char>(kSeekTableVersion));
  out.push_back(0);  // flags
  PutLe16(out, 0);   // reserved
  PutLe32(out, layout.chunk_size);
  PutLe32(out, layout.first_chunk_size);
  PutLe32(out, static_cast<uint32_t>(n));
  for (size_t i = 0; i < n; ++i) {
    PutLe32(out, layout.compressed_sizes[i]);
    PutLe32(out, layout.crc32s[i]);
  }
  PutLe32(out, Crc32Of(std::string_view(out).substr(zip::kExtraHeaderSize)));
  return out;
}

std::string_view FindSeekTableData(std::string_view extra_area) {
  size_t pos = 0;
  while (extra_area.size() - pos >= zip::kExtraHeaderSize) {
    const uint16_t id = GetLe16(extra_area.data() + pos);
    const uint16_t size = GetLe16(extra_area.data() + pos + 2);
    pos += zip::kExtraHeaderSize;
    if (size > extra_area.size() - pos) break;
    if (id == zip::kSeekTableExtraId) return extra_area.substr(pos, size);
    pos += size;
  }
  return {};
}

Result<SeekTable> ParseSeekTable(std::string_view data, uint64_t compressed_size,
                                 uint64_t uncompressed_size, uint32_t crc32,
                                 const std::string& what) {
  ByteReader r(data);
  std::string signature;
  uint8_t version = 0, flags = 0;
  uint16_t reserved = 0;
  uint32_t chunk_size = 0, first = 0, count = 0;
  if (!r.Bytes(kSeekTableSignature.size(), &signature) || !r.U8(&version) || !r.U8(&flags) ||
      !r.U16(&reserved) || !r.U32(&chunk_size) || !r.U32(&first) || !r.U32(&count)) {
    return Malformed(what, "truncated (" + std::to_string(data.size()) + " bytes)");
  }
  if (signature != kSeekTableSignature) return Malformed(what, "bad signature");
  if (version != kSeekTableVersion) {
    return Malformed(what, "unsupported version " + std::to_string(version));
  }
  if (flags != 0 || reserved != 0) return Malformed(what, "unknown flags or reserved bytes set");
  if (count == 0 || count > kMaxSeekChunks) {
    return Malformed(what, "chunk count " + std::to_string(count) + " is not 1.." +
                               std::to_string(kMaxSeekChunks));
  }
  const size_t expected_size =
      kSeekTableFixedSize + size_t{count} * kSeekTableEntrySize + kSeekTableCrcSize;
  if (data.size() != expected_size) {
    return Malformed(what, std::to_string(data.size()) + " bytes for " + std::to_string(count) +
                               " chunks (expected " + std::to_string(expected_size) + ")");
  }
  const size_t crc_at = data.size() - kSeekTableCrcSize;
  if (GetLe32(data.data() + crc_at) != Crc32Of(data.substr(0, crc_at))) {
    return Malformed(what, "table CRC-32 mismatch");
  }
  if (chunk_size == 0) return Malformed(what, "chunk size 0");
  if (first > uncompressed_size || (first == 0 && uncompressed_size > 0)) {
    return Malformed(what, "first chunk of " + std::to_string(first) + " bytes in a member of " +
                               std::to_string(uncompressed_size));
  }
  const uint64_t want = SeekChunkCount(uncompressed_size, first, chunk_size);
  if (want != count) {
    return Malformed(what, std::to_string(count) + " chunks, but a member of " +
                               std::to_string(uncompressed_size) + " bytes has " +
                               std::to_string(want));
  }

  SeekTable table;
  table.chunk_size_ = chunk_size;
  table.first_chunk_size_ = first;
  table.chunks_.resize(count);
  uint64_t in = 0, out = 0;
  uLong combined = 0;
  for (uint32_t i = 0; i < count; ++i) {
    SeekChunk& c = table.chunks_[i];
    (void)r.U32(&c.in_size);  // the size check above guarantees the bytes are there
    (void)r.U32(&c.crc32);
    if (c.in_size == 0) return Malformed(what, "chunk " + std::to_string(i) + " is empty");
    c.in = in;
    c.out = out;
    c.out_size = static_cast<uint32_t>(
        i == 0 ? first : std::min<uint64_t>(chunk_size, uncompressed_size - out));
    in += c.in_size;
    out += c.out_size;
    combined = ::crc32_combine64(combined, c.crc32, static_cast<z_off64_t>(c.out_size));
  }
  if (in != compressed_size) {
    return Malformed(what, "chunks hold " + std::to_string(in) + " compressed bytes, the member " +
                               std::to_string(compressed_size));
  }
  if (static_cast<uint32_t>(combined) != crc32) {
    return Malformed(what, "chunk CRC-32s do not combine to the member's CRC-32");
  }
  return table;
}

}  // namespace npzfs
