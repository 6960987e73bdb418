// The sidecar index file: encoding and the checks on load (layout: core/README.md).
#include "core/read/index_file.h"

#include <fcntl.h>
#include <zlib.h>

#include <cstring>
#include <unordered_map>

#include "core/base/byte_codec.h"
#include "npzfs/file_util.h"

namespace npzfs {
namespace {

constexpr char kIndexMagic[8] = {'N', 'P', 'Z', 'F', 'S', 'I', 'D', 'X'};
constexpr uint32_t kIndexVersion = 1;
constexpr uint32_t kMaxStoredWindow = 1u << 16;  // a deflated 32 KiB window is far smaller
// Fixed bytes of one checkpoint (out, in, bits, span_crc, window_size, window_bytes): bounds
// a record's checkpoint count by the bytes left before anything is reserved.
constexpr uint64_t kCheckpointFixedBytes = 8 + 8 + 1 + 4 + 4 + 4;
constexpr size_t kTrailerBytes = 4;

uint32_t Crc(std::string_view bytes) {
  return static_cast<uint32_t>(
      crc32_z(0, reinterpret_cast<const Bytef*>(bytes.data()), bytes.size()));
}

void EncodeCheckpoint(std::string& out, const Checkpoint& cp) {
  PutLe64(out, cp.out);
  PutLe64(out, cp.in);
  out.push_back(static_cast<char>(cp.bits));
  PutLe32(out, cp.span_crc);
  PutLe32(out, cp.window_size);
  PutLe32(out, static_cast<uint32_t>(cp.window.size()));
  out.append(cp.window);
}

// Reads record checkpoints and checks their order and bounds against the entry.
Status DecodeCheckpoints(ByteReader& r, uint64_t count, const ZipEntry& e, const std::string& where,
                         std::vector<Checkpoint>* out) {
  auto bad = [&](const std::string& why) { return Status::Error(EINVAL, where + ": " + why); };
  if (count == 0 || count > r.remaining() / kCheckpointFixedBytes) {
    return bad("bad checkpoint count");
  }
  std::vector<Checkpoint>& cps = *out;
  cps.resize(count);
  for (uint64_t k = 0; k < count; ++k) {
    Checkpoint& cp = cps[k];
    uint32_t wbytes = 0;
    if (!r.U64(&cp.out) || !r.U64(&cp.in) || !r.U8(&cp.bits) || !r.U32(&cp.span_crc) ||
        !r.U32(&cp.window_size) || !r.U32(&wbytes) || wbytes > kMaxStoredWindow ||
        !r.Bytes(wbytes, &cp.window)) {
      return bad("truncated checkpoint");
    }
    const bool first_ok = k > 0 || (cp.out == 0 && cp.in == 0 && cp.bits == 0);
    const bool order_ok = k == 0 || (cp.out > cps[k - 1].out && cp.in >= cps[k - 1].in);
    if (!first_ok || !order_ok || cp.out >= std::max<uint64_t>(e.uncompressed_size, 1) ||
        cp.in > e.compressed_size || cp.bits > 7 || (cp.bits != 0 && cp.in == 0) ||
        cp.window_size != std::min<uint64_t>(kDeflateWindow, cp.out) ||
        (cp.window_size == 0) != cp.window.empty()) {
      return bad("inconsistent checkpoint");
    }
  }
  return Status::Ok();
}

// For a complete record: the span CRCs must combine to the entry's CRC-32.
bool SpanCrcsAddUp(const std::vector<Checkpoint>& cps, const ZipEntry& e) {
  uint32_t whole = 0;
  for (size_t k = 0; k < cps.size(); ++k) {
    const uint64_t end = k + 1 < cps.size() ? cps[k + 1].out : e.uncompressed_size;
    whole = static_cast<uint32_t>(
        crc32_combine64(whole, cps[k].span_crc, static_cast<z_off64_t>(end - cps[k].out)));
  }
  return whole == e.crc32;
}

}  // namespace

std::string EncodeIndexFile(const IndexFingerprint& fingerprint,
                            const std::vector<ZipEntry>& entries,
                            const std::vector<DeflatedRecord>& records) {
  std::string w(kIndexMagic, sizeof kIndexMagic);
  PutLe32(w, kIndexVersion);
  PutLe32(w, 0);
  PutLe64(w, fingerprint.archive_size);
  PutLe64(w, static_cast<uint64_t>(fingerprint.archive_mtime_ns));
  PutLe32(w, fingerprint.cd_crc32);
  PutLe32(w, 0);
  PutLe64(w, fingerprint.entry_count);
  PutLe64(w, records.size());
  for (const DeflatedRecord& rec : records) {
    const ZipEntry& e = entries[rec.entry_index];
    PutLe64(w, rec.entry_index);
    PutLe64(w, e.local_header_offset);
    PutLe64(w, e.data_offset);
    PutLe64(w, e.compressed_size);
    PutLe64(w, e.uncompressed_size);
    PutLe32(w, e.crc32);
    w.push_back(static_cast<char>(rec.complete ? 1 : 0));
    w.append(3, '\0');
    PutLe64(w, rec.checkpoints.size());
    for (const Checkpoint& cp : rec.checkpoints) EncodeCheckpoint(w, cp);
  }
  PutLe32(w, Crc(w));
  return w;
}

Result<std::vector<DeflatedRecord>> DecodeIndexFile(std::string_view bytes, const std::string& file,
                                                    const IndexFingerprint& fingerprint,
                                                    const std::vector<ZipEntry>& entries,
                                                    const std::vector<bool>& is_deflated) {
  auto bad = [&](const std::string& why) { return Status::Error(EINVAL, file + ": " + why); };
  if (bytes.size() < sizeof kIndexMagic + kTrailerBytes) return bad("truncated index file");
  const std::string_view body = bytes.substr(0, bytes.size() - kTrailerBytes);
  if (Crc(body) != GetLe32(bytes.data() + body.size())) {
    return bad("CRC-32 of the index file does not match (corrupt)");
  }
  ByteReader r(body);
  std::string magic;
  uint32_t version = 0, reserved = 0;
  IndexFingerprint found;
  uint64_t mtime = 0, records = 0;
  if (!r.Bytes(sizeof kIndexMagic, &magic) || std::memcmp(magic.data(), kIndexMagic, 8) != 0) {
    return bad("not an npzfs index file (bad magic)");
  }
  if (!r.U32(&version) || version != kIndexVersion) return bad("unsupported index version");
  if (!r.U32(&reserved) || !r.U64(&found.archive_size) || !r.U64(&mtime) ||
      !r.U32(&found.cd_crc32) || !r.U32(&reserved) || !r.U64(&found.entry_count) ||
      !r.U64(&records)) {
    return bad("truncated header");
  }
  found.archive_mtime_ns = static_cast<int64_t>(mtime);
  if (!(found == fingerprint)) return bad("stale index: the archive changed since it was written");

  std::vector<DeflatedRecord> out;
  for (uint64_t rec = 0; rec < records; ++rec) {
    uint64_t entry_index = 0, lho = 0, data_offset = 0, csize = 0, usize = 0, count = 0;
    uint32_t crc = 0;
    uint8_t complete = 0;
    if (!r.U64(&entry_index) || !r.U64(&lho) || !r.U64(&data_offset) || !r.U64(&csize) ||
        !r.U64(&usize) || !r.U32(&crc) || !r.U8(&complete) || !r.Skip(3) || !r.U64(&count)) {
      return bad("truncated member record");
    }
    if (entry_index >= entries.size() || !is_deflated[entry_index]) {
      return bad("record for entry " + std::to_string(entry_index) + " matches no deflated member");
    }
    const ZipEntry& e = entries[entry_index];
    if (lho != e.local_header_offset || data_offset != e.data_offset ||
        csize != e.compressed_size || usize != e.uncompressed_size || crc != e.crc32 ||
        complete > 1) {
      return bad("record for " + e.name + " does not match the archive");
    }
    DeflatedRecord dr;
    dr.entry_index = entry_index;
    dr.complete = complete == 1;
    NPZ_RETURN_IF_ERROR(DecodeCheckpoints(r, count, e, file + ": " + e.name, &dr.checkpoints));
    if (dr.complete && !SpanCrcsAddUp(dr.checkpoints, e)) {
      return bad("span CRCs of " + e.name + " do not add up");
    }
    out.push_back(std::move(dr));
  }
  if (r.remaining() != 0) return bad("trailing bytes");
  return out;
}

Result<std::vector<DeflatedRecord>> LoadIndexFile(const std::string& file, uint64_t max_bytes,
                                                  const IndexFingerprint& fingerprint,
                                                  const std::vector<ZipEntry>& entries,
                                                  const std::vector<bool>& is_deflated) {
  Result<UniqueFd> opened = OpenFile(file, O_RDONLY);
  if (!opened.ok()) {
    if (opened.status().code() == ENOENT) return std::vector<DeflatedRecord>();
    return opened.status();
  }
  NPZ_ASSIGN_OR_RETURN(uint64_t size, FileSize(opened->get(), file));
  if (size > max_bytes) return Status::Error(EINVAL, file + ": implausibly large index file");
  std::string bytes(size, '\0');
  NPZ_RETURN_IF_ERROR(PreadExact(opened->get(), bytes.data(), size, 0, file));
  return DecodeIndexFile(bytes, file, fingerprint, entries, is_deflated);
}

}  // namespace npzfs
