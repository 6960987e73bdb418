// The sidecar index file: encoding and the checks on load (layout: core/README.md).
#include "core/read/index_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "core/base/byte_codec.h"
#include "core/base/crc32.h"
#include "npzfs/file_util.h"

namespace npzfs {
namespace {

constexpr char kIndexMagic[8] = {'N', 'P', 'Z', 'F', 'S', 'I', 'D', 'X'};
constexpr uint32_t kIndexVersion = 2;
constexpr uint32_t kMaxStoredWindow = 1u << 16;  // a deflated 32 KiB window is far smaller
// Fixed bytes of one checkpoint (out, in, bits, header_bit, span_crc, window_size,
// window_bytes): bounds a record's checkpoint count by the bytes left before reserving.
constexpr uint64_t kCheckpointFixedBytes = 8 + 8 + 1 + 8 + 4 + 4 + 4;
constexpr size_t kTrailerBytes = 4;

uint32_t FileCrc(std::string_view bytes) { return Crc32(0, bytes.data(), bytes.size()); }

void EncodeCheckpoint(std::string& out, const Checkpoint& cp) {
  PutLe64(out, cp.out);
  PutLe64(out, cp.in);
  out.push_back(static_cast<char>(cp.bits));
  PutLe64(out, cp.header_bit);
  PutLe32(out, cp.span_crc);
  PutLe32(out, cp.window_size);
  PutLe32(out, static_cast<uint32_t>(cp.window.size()));
  out.append(cp.window);
}

void EncodeRecord(std::string& w, const ZipEntry& e, const IndexRecord& rec) {
  PutLe64(w, rec.entry_index);
  PutLe64(w, e.local_header_offset);
  PutLe64(w, e.data_offset);
  PutLe64(w, e.compressed_size);
  PutLe64(w, e.uncompressed_size);
  PutLe32(w, e.crc32);
  w.push_back(static_cast<char>(rec.kind));
  w.push_back(static_cast<char>(rec.kind == RecordKind::kStored || rec.complete ? 1 : 0));
  w.append(2, '\0');
  if (rec.kind == RecordKind::kStored) {
    PutLe32(w, kStoredChunkBytes);
    PutLe64(w, rec.chunk_crcs.size());
    for (uint32_t crc : rec.chunk_crcs) PutLe32(w, crc);
    return;
  }
  PutLe64(w, rec.checkpoints.size());
  for (const Checkpoint& cp : rec.checkpoints) EncodeCheckpoint(w, cp);
}

// One checkpoint's own bounds, and its order after `prev` (null for the first).
bool CheckpointConsistent(const Checkpoint& cp, const Checkpoint* prev, const ZipEntry& e) {
  if (prev == nullptr && (cp.out != 0 || cp.in != 0 || cp.bits != 0 || cp.header_bit != 0)) {
    return false;
  }
  if (prev != nullptr && (cp.out <= prev->out || cp.out - prev->out > kMaxSpanBytes ||
                          cp.bit() <= prev->bit() || cp.header_bit < prev->header_bit)) {
    return false;
  }
  return cp.out < std::max<uint64_t>(e.uncompressed_size, 1) && cp.in <= e.compressed_size &&
         cp.bits <= 7 && (cp.bits == 0 || cp.in > 0) && cp.header_bit <= cp.bit() &&
         cp.window_size == std::min<uint64_t>(kDeflateWindow, cp.out) &&
         (cp.window_size == 0) == cp.window.empty();
}

// Reads a deflated record's checkpoints and checks their order and bounds.
Status DecodeCheckpoints(ByteReader& r, const ZipEntry& e, const std::string& where,
                         IndexRecord* rec) {
  auto bad = [&](const std::string& why) { return Status::Error(EINVAL, where + ": " + why); };
  uint64_t count = 0;
  if (!r.U64(&count) || count == 0 || count > r.remaining() / kCheckpointFixedBytes) {
    return bad("bad checkpoint count");
  }
  std::vector<Checkpoint>& cps = rec->checkpoints;
  cps.resize(count);
  for (uint64_t k = 0; k < count; ++k) {
    Checkpoint& cp = cps[k];
    uint32_t wbytes = 0;
    if (!r.U64(&cp.out) || !r.U64(&cp.in) || !r.U8(&cp.bits) || !r.U64(&cp.header_bit) ||
        !r.U32(&cp.span_crc) || !r.U32(&cp.window_size) || !r.U32(&wbytes) ||
        wbytes > kMaxStoredWindow || !r.Bytes(wbytes, &cp.window)) {
      return bad("truncated checkpoint");
    }
    if (!CheckpointConsistent(cp, k == 0 ? nullptr : &cps[k - 1], e)) {
      return bad("inconsistent checkpoint " + std::to_string(k));
    }
  }
  if (!rec->complete) return Status::Ok();
  // Complete: the last span is bounded too, and the span CRCs add up to the entry's CRC-32.
  if (e.uncompressed_size - cps.back().out > kMaxSpanBytes) return bad("last span too long");
  uint32_t whole = 0;
  for (size_t k = 0; k < cps.size(); ++k) {
    const uint64_t end = k + 1 < cps.size() ? cps[k + 1].out : e.uncompressed_size;
    whole = Crc32Combine(whole, cps[k].span_crc, end - cps[k].out);
  }
  if (whole != e.crc32) return bad("span CRCs do not add up to the member's CRC-32");
  return Status::Ok();
}

// Reads a stored record's chunk CRCs: one per chunk, combining to the entry's CRC-32.
Status DecodeChunkCrcs(ByteReader& r, const ZipEntry& e, const std::string& where,
                       IndexRecord* rec) {
  auto bad = [&](const std::string& why) { return Status::Error(EINVAL, where + ": " + why); };
  uint32_t chunk_bytes = 0;
  uint64_t count = 0;
  if (!r.U32(&chunk_bytes) || !r.U64(&count)) return bad("truncated stored record");
  if (chunk_bytes != kStoredChunkBytes) return bad("unsupported chunk size");
  const uint64_t expected = (e.uncompressed_size + kStoredChunkBytes - 1) / kStoredChunkBytes;
  if (count != expected || count > r.remaining() / 4) return bad("bad chunk count");
  rec->chunk_crcs.resize(count);
  uint32_t whole = 0;
  for (uint64_t c = 0; c < count; ++c) {
    r.U32(&rec->chunk_crcs[c]);
    const uint64_t len =
        std::min<uint64_t>(kStoredChunkBytes, e.uncompressed_size - c * chunk_bytes);
    whole = Crc32Combine(whole, rec->chunk_crcs[c], len);
  }
  if (whole != e.crc32) return bad("chunk CRCs do not add up to the member's CRC-32");
  return Status::Ok();
}

// Reads one record: the entry's identity, then its kind's body.
Result<IndexRecord> DecodeRecord(ByteReader& r, const std::string& file,
                                 const std::vector<ZipEntry>& entries,
                                 const std::vector<uint8_t>& kinds) {
  auto bad = [&](const std::string& why) { return Status::Error(EINVAL, file + ": " + why); };
  uint64_t entry_index = 0, lho = 0, data_offset = 0, csize = 0, usize = 0;
  uint32_t crc = 0;
  uint8_t kind = 0, state = 0;
  if (!r.U64(&entry_index) || !r.U64(&lho) || !r.U64(&data_offset) || !r.U64(&csize) ||
      !r.U64(&usize) || !r.U32(&crc) || !r.U8(&kind) || !r.U8(&state) || !r.Skip(2)) {
    return bad("truncated member record");
  }
  if (entry_index >= entries.size() || kinds[entry_index] == 0 || kinds[entry_index] != kind) {
    return bad("record for entry " + std::to_string(entry_index) + " matches no member");
  }
  const ZipEntry& e = entries[entry_index];
  if (lho != e.local_header_offset || data_offset != e.data_offset || csize != e.compressed_size ||
      usize != e.uncompressed_size || crc != e.crc32 || state > 1) {
    return bad("record for " + e.name + " does not match the archive");
  }
  IndexRecord rec;
  rec.entry_index = entry_index;
  rec.kind = static_cast<RecordKind>(kind);
  rec.complete = state == 1;
  const std::string where = file + ": " + e.name;
  if (rec.kind == RecordKind::kStored) {
    if (state != 1) return bad("record for " + e.name + ": stored record not verified");
    NPZ_RETURN_IF_ERROR(DecodeChunkCrcs(r, e, where, &rec));
  } else {
    NPZ_RETURN_IF_ERROR(DecodeCheckpoints(r, e, where, &rec));
  }
  return rec;
}

}  // namespace

uint64_t CheckpointRecordBytes(const Checkpoint& cp) {
  return kCheckpointFixedBytes + cp.window.size();
}

uint64_t MinSpanLength(const Checkpoint& cp, uint64_t spacing) {
  return std::clamp<uint64_t>(CheckpointRecordBytes(cp) * kSpanBytesPerRecordByte, spacing,
                              kMaxSpacing);
}

std::string EncodeIndexFile(const IndexFingerprint& fingerprint,
                            const std::vector<ZipEntry>& entries,
                            const std::vector<IndexRecord>& records) {
  std::string w(kIndexMagic, sizeof kIndexMagic);
  PutLe32(w, kIndexVersion);
  PutLe32(w, 0);
  PutLe64(w, fingerprint.archive_size);
  PutLe64(w, static_cast<uint64_t>(fingerprint.archive_mtime_ns));
  PutLe32(w, fingerprint.cd_crc32);
  PutLe32(w, 0);
  PutLe64(w, fingerprint.entry_count);
  PutLe64(w, records.size());
  for (const IndexRecord& rec : records) EncodeRecord(w, entries[rec.entry_index], rec);
  PutLe32(w, FileCrc(w));
  return w;
}

Result<std::vector<IndexRecord>> DecodeIndexFile(std::string_view bytes, const std::string& file,
                                                 const IndexFingerprint& fingerprint,
                                                 const std::vector<ZipEntry>& entries,
                                                 const std::vector<uint8_t>& kinds) {
  auto bad = [&](const std::string& why) { return Status::Error(EINVAL, file + ": " + why); };
  if (bytes.size() < sizeof kIndexMagic + kTrailerBytes) return bad("truncated index file");
  const std::string_view body = bytes.substr(0, bytes.size() - kTrailerBytes);
  if (FileCrc(body) != GetLe32(bytes.data() + body.size())) {
    return bad("CRC-32 of the index file does not match (corrupt)");
  }
  ByteReader r(body);
  std::string magic;
  uint32_t version = 0, reserved = 0;
  IndexFingerprint found;
  uint64_t mtime = 0, count = 0;
  if (!r.Bytes(sizeof kIndexMagic, &magic) || std::memcmp(magic.data(), kIndexMagic, 8) != 0) {
    return bad("not an npzfs index file (bad magic)");
  }
  if (!r.U32(&version) || version != kIndexVersion) {
    return bad("unsupported index version " + std::to_string(version));
  }
  if (!r.U32(&reserved) || !r.U64(&found.archive_size) || !r.U64(&mtime) ||
      !r.U32(&found.cd_crc32) || !r.U32(&reserved) || !r.U64(&found.entry_count) ||
      !r.U64(&count)) {
    return bad("truncated header");
  }
  found.archive_mtime_ns = static_cast<int64_t>(mtime);
  if (!(found == fingerprint)) return bad("stale index: the archive changed since it was written");
  std::vector<IndexRecord> out;
  std::vector<bool> seen(entries.size(), false);
  for (uint64_t k = 0; k < count; ++k) {
    NPZ_ASSIGN_OR_RETURN(IndexRecord rec, DecodeRecord(r, file, entries, kinds));
    if (seen[rec.entry_index]) return bad("two records for one entry");
    seen[rec.entry_index] = true;
    out.push_back(std::move(rec));
  }
  if (r.remaining() != 0) return bad("trailing bytes");
  return out;
}

Result<std::vector<IndexRecord>> LoadIndexFile(const std::string& file, uint64_t max_bytes,
                                               const IndexFingerprint& fingerprint,
                                               const std::vector<ZipEntry>& entries,
                                               const std::vector<uint8_t>& kinds,
                                               const IndexTrust& trust) {
  Result<UniqueFd> opened = OpenRegularFile(file, O_RDONLY);
  if (!opened.ok()) {
    if (opened.status().code() == ENOENT) return std::vector<IndexRecord>();
    return opened.status();
  }
  struct stat st;
  if (::fstat(opened->get(), &st) != 0) return ErrnoStatus(errno, file, "fstat");
  if (st.st_uid != ::geteuid() && st.st_uid != 0 && st.st_uid != trust.archive_uid) {
    return Status::Error(EPERM, file + ": not trusted: owned by uid " + std::to_string(st.st_uid) +
                                    ", neither you, root nor the archive's owner");
  }
  if ((st.st_mode & 0022 & ~trust.archive_mode) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return Status::Error(EPERM, file + ": not trusted: mode " + mode +
                                    " lets others write it, who cannot write the archive");
  }
  NPZ_ASSIGN_OR_RETURN(uint64_t size, FileSize(opened->get(), file));
  if (size > max_bytes) return Status::Error(EINVAL, file + ": implausibly large index file");
  std::string bytes(size, '\0');
  NPZ_RETURN_IF_ERROR(PreadExact(opened->get(), bytes.data(), size, 0, file));
  return DecodeIndexFile(bytes, file, fingerprint, entries, kinds);
}

}  // namespace npzfs
