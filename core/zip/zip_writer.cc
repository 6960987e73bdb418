// Streaming ZIP writer.
//
// Layout choices, and why:
//   - Local header first, data next, then the CRC and sizes are patched into the local
//     header with pwrite. The output is always a seekable regular file (a temp file or a
//     deflated shadow we own, or the archive under its journal), so a data descriptor (flag
//     bit 3) would only make the archive harder for strict readers (libzip's consistency
//     check, some unzip builds) for no gain.
//   - The local header cannot grow once data follows it, so a ZIP64 extra (20 bytes) is
//     reserved up front when the member could reach 0xFFFFFFFF bytes: no size hint, or a
//     hint (deflate bound for compressed members) at or above the limit. If a member
//     nevertheless outgrows a header without the extra, EndMember fails rather than write
//     a truncated size.
//   - Central records carry a ZIP64 extra only for the fields that overflow, which is what
//     the APPNOTE asks and what zipfile, libzip and Info-ZIP all read. A deflated member's
//     central record also carries its seek table; the local header never does (it is
//     written before the data, and readers take extras from the central record).
//   - Deflate goes through ChunkedDeflater (independent chunks on the worker pool). The
//     deflater calls back into WriteOut on this thread, in stream order.
//   - Stored data with a caller-supplied CRC, and pre-deflated chunks, go through
//     CopyFileRange (core/zip/file_copy.h): copy_file_range where extents may be shared,
//     pread/pwrite elsewhere.
#include "core/zip/zip_writer.h"

#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <ctime>

#include "core/base/byte_codec.h"
#include "core/base/crc32.h"
#include "core/base/text_codec.h"
#include "core/zip/chunked_deflater.h"
#include "core/zip/file_copy.h"
#include "core/zip/zip_format.h"
#include "npzfs/file_util.h"

namespace npzfs {
namespace {

using zip::kMax32;
constexpr size_t kBufferSize = size_t{1} << 20;  // 1 MiB
constexpr uint32_t kRegularFileAttr = 0100644u << 16;
constexpr size_t kZip64LocalExtraSize = zip::kExtraHeaderSize + 16;  // both sizes
constexpr uint64_t kLocalCrcOffset = 14;  // CRC, then compressed and uncompressed size
// Raw deflate may exceed its input a little (stored blocks): room left under 4 GiB.
constexpr uint64_t kDeflateOverhead = 64;

uint32_t Clamp32(uint64_t v) {
  return v >= kMax32 ? static_cast<uint32_t>(kMax32) : static_cast<uint32_t>(v);
}

bool IsAscii(const std::string& s) {
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return static_cast<unsigned char>(c) < 0x80; });
}

// A non-ASCII name is written as UTF-8 (flag bit 11), which is what numpy and every reader
// decode it as. BeginMember refuses names that are not valid UTF-8, so the flag is never
// set over bytes that would make zipfile (and so numpy) and libzip refuse the archive.
uint16_t NameFlags(const std::string& name) { return IsAscii(name) ? 0 : zip::kFlagUtf8; }

}  // namespace

void UnixToDosDateTime(int64_t unix_seconds, uint16_t* dos_date, uint16_t* dos_time) {
  time_t t = static_cast<time_t>(unix_seconds);
  struct tm tm {};
  if (localtime_r(&t, &tm) == nullptr || tm.tm_year < 80) {
    *dos_date = (1 << 5) | 1;  // 1980-01-01 00:00:00
    *dos_time = 0;
    return;
  }
  if (tm.tm_year > 207) {
    *dos_date = static_cast<uint16_t>((127 << 9) | (12 << 5) | 31);
    *dos_time = static_cast<uint16_t>((23 << 11) | (59 << 5) | 29);
    return;
  }
  *dos_date = static_cast<uint16_t>(((tm.tm_year - 80) << 9) | ((tm.tm_mon + 1) << 5) | tm.tm_mday);
  *dos_time = static_cast<uint16_t>((tm.tm_hour << 11) | (tm.tm_min << 5) | (tm.tm_sec / 2));
}

ZipWriter::ZipWriter(int fd, std::string path, uint64_t start_offset)
    : fd_(fd), path_(std::move(path)), offset_(start_offset) {}

ZipWriter::~ZipWriter() = default;

Status ZipWriter::WriteOut(const void* data, size_t n) {
  NPZ_RETURN_IF_ERROR(PwriteAll(fd_, data, n, offset_, path_));
  offset_ += n;
  return Status::Ok();
}

Status ZipWriter::BeginMember(const std::string& name, const ZipMemberOptions& options) {
  if (open_) return Status::Error(EINVAL, path_ + ": member " + cur_.name + " is still open");
  if (name.empty() || name.size() > zip::kMax16) {
    return Status::Error(EINVAL,
                         path_ + ": invalid member name length " + std::to_string(name.size()));
  }
  if (!IsAscii(name) && !IsValidUtf8(name)) {
    return Status::Error(EINVAL, path_ + ": member \"" + PrintableName(name) +
                                     "\": its name is not valid UTF-8 (zip readers such as "
                                     "numpy could not read the archive)");
  }
  if (options.compress_level < -1 || options.compress_level > 9) {
    return Status::Error(
        EINVAL, path_ + ": member " + PrintableName(name) + ": compression level " +
                    std::to_string(options.compress_level) + " is not -1 (stored) or 0..9");
  }
  cur_ = Record{};
  cur_.name = name;
  cur_.method = options.compress_level < 0 ? zip::kMethodStored : zip::kMethodDeflated;
  cur_.local_header_offset = offset_;
  UnixToDosDateTime(options.mtime >= 0 ? options.mtime : static_cast<int64_t>(time(nullptr)),
                    &cur_.dos_date, &cur_.dos_time);
  cur_crc_given_ = options.crc32.has_value();
  cur_running_crc_ = 0;
  cur_.crc32 = options.crc32.value_or(0);

  if (!options.size_hint) {
    cur_zip64_local_ = true;
  } else if (cur_.method == zip::kMethodStored) {
    cur_zip64_local_ = *options.size_hint >= kMax32;
  } else {
    // compressBound slightly over-estimates raw deflate's worst case (stored blocks); each
    // chunk adds a flush marker.
    const uint64_t chunks = *options.size_hint / std::max<uint64_t>(options.chunk_size, 1) + 2;
    cur_zip64_local_ =
        *options.size_hint >= kMax32 ||
        ::compressBound(static_cast<uLong>(*options.size_hint)) + chunks * 8 + kDeflateOverhead >=
            kMax32;
  }

  deflater_.reset();
  if (cur_.method == zip::kMethodDeflated) {
    ChunkedDeflaterOptions d;
    d.level = options.compress_level;
    d.chunk_size = options.chunk_size;
    d.leading_chunk = options.leading_chunk;
    d.pool = pool_;
    d.sink = [this](std::string_view bytes) { return WriteOut(bytes.data(), bytes.size()); };
    d.copy_sink = [this](int fd, uint64_t offset, uint64_t length, const std::string& source) {
      if (fd == in_place_fd_ && fd >= 0) {
        if (offset != offset_) {
          return Status::Error(EIO, path_ + ": a deflated chunk of " + source + " at offset " +
                                        std::to_string(offset) + " is not in place (wanted " +
                                        std::to_string(offset_) + ")");
        }
        offset_ += length;
        return Status::Ok();
      }
      return CopyFileRange(fd, offset, fd_, offset_, length, source, path_,
                           [this](uint64_t n) { offset_ += n; });
    };
    d.progress = progress_;
    d.what = path_ + ": member " + name;
    deflater_ = std::make_unique<ChunkedDeflater>(std::move(d));
  }

  const uint64_t natural_size =
      zip::kLocalHeaderSize + name.size() + (cur_zip64_local_ ? kZip64LocalExtraSize : 0);
  uint64_t padding = 0;
  if (options.local_header_size > 0) {
    padding = options.local_header_size - std::min(options.local_header_size, natural_size);
    if (options.local_header_size < natural_size ||
        (padding > 0 && padding < zip::kExtraHeaderSize) ||
        padding + (cur_zip64_local_ ? kZip64LocalExtraSize : 0) > zip::kMaxExtraLength) {
      return Status::Error(EINVAL, path_ + ": member " + name + ": a local header of " +
                                       std::to_string(options.local_header_size) +
                                       " bytes cannot be made (it needs " +
                                       std::to_string(natural_size) + ")");
    }
  }
  std::string h;
  h.reserve(natural_size + padding);
  PutLe32(h, zip::kLocalHeaderSig);
  PutLe16(h, cur_zip64_local_ ? zip::kVersionZip64 : zip::kVersionDeflate);
  PutLe16(h, NameFlags(name));
  PutLe16(h, cur_.method);
  PutLe16(h, cur_.dos_time);
  PutLe16(h, cur_.dos_date);
  PutLe32(h, 0);  // CRC, patched in EndMember
  PutLe32(h, cur_zip64_local_ ? static_cast<uint32_t>(kMax32) : 0);
  PutLe32(h, cur_zip64_local_ ? static_cast<uint32_t>(kMax32) : 0);
  PutLe16(h, static_cast<uint16_t>(name.size()));
  PutLe16(h, static_cast<uint16_t>((cur_zip64_local_ ? kZip64LocalExtraSize : 0) + padding));
  h += name;
  if (cur_zip64_local_) {
    PutLe16(h, zip::kZip64ExtraId);
    PutLe16(h, 16);
    PutLe64(h, 0);
    PutLe64(h, 0);
  }
  if (padding > 0) {
    PutLe16(h, zip::kPaddingExtraId);
    PutLe16(h, static_cast<uint16_t>(padding - zip::kExtraHeaderSize));
    h.append(padding - zip::kExtraHeaderSize, '\0');
  }
  NPZ_RETURN_IF_ERROR(WriteOut(h.data(), h.size()));
  open_ = true;
  return Status::Ok();
}

Status ZipWriter::Feed(const void* data, size_t n) {
  if (deflater_) return deflater_->Write(data, n);  // counts, CRC and progress in there
  if (!cur_crc_given_) {
    cur_running_crc_ = Crc32(cur_running_crc_, data, n);
  }
  cur_.uncompressed_size += n;
  NPZ_RETURN_IF_ERROR(WriteOut(data, n));
  cur_.compressed_size += n;
  if (progress_) progress_(n);
  return Status::Ok();
}

Status ZipWriter::Write(const void* data, size_t n) {
  if (!open_) return Status::Error(EINVAL, path_ + ": no member is open");
  const auto* p = static_cast<const char*>(data);
  while (n > 0) {
    const size_t chunk = std::min(n, kBufferSize);
    NPZ_RETURN_IF_ERROR(Feed(p, chunk));
    p += chunk;
    n -= chunk;
  }
  return Status::Ok();
}

Status ZipWriter::CopyFrom(int src_fd, uint64_t offset, uint64_t length,
                           const std::string& src_path) {
  if (!open_) return Status::Error(EINVAL, path_ + ": no member is open");
  auto short_source = [&](uint64_t at) {
    return UnexpectedEndOfFile(src_path, at, length, offset);
  };
  uint64_t done = 0;
  if (deflater_) {
    // Read straight into the deflater's chunk buffer: no copy on this thread.
    while (done < length) {
      NPZ_ASSIGN_OR_RETURN(std::span<char> space, deflater_->InputSpace());
      const size_t want = static_cast<size_t>(std::min<uint64_t>(length - done, space.size()));
      NPZ_ASSIGN_OR_RETURN(size_t got,
                           PreadFull(src_fd, space.data(), want, offset + done, src_path));
      if (got != want) return short_source(offset + done + got);
      NPZ_RETURN_IF_ERROR(deflater_->Commit(got));
      done += got;
    }
    return Status::Ok();
  }
  if (cur_crc_given_) {
    // Stored with a known CRC: nothing needs to pass through this process.
    NPZ_RETURN_IF_ERROR(
        CopyFileRange(src_fd, offset, fd_, offset_, length, src_path, path_, [&](uint64_t n) {
          offset_ += n;
          cur_.uncompressed_size += n;
          cur_.compressed_size += n;
          if (progress_) progress_(n);
        }));
    return Status::Ok();
  }
  std::string buf(static_cast<size_t>(std::min<uint64_t>(length - done, kBufferSize)), '\0');
  while (done < length) {
    const size_t want = static_cast<size_t>(std::min<uint64_t>(length - done, buf.size()));
    NPZ_ASSIGN_OR_RETURN(size_t got, PreadFull(src_fd, buf.data(), want, offset + done, src_path));
    if (got != want) return short_source(offset + done + got);
    NPZ_RETURN_IF_ERROR(Feed(buf.data(), got));
    done += got;
  }
  return Status::Ok();
}

Status ZipWriter::AddDeflatedChunk(int src_fd, uint64_t offset, uint32_t compressed_size,
                                   uint64_t uncompressed_size, uint32_t crc32,
                                   const std::string& src_path) {
  if (!open_ || !deflater_) {
    return Status::Error(EINVAL, path_ + ": no deflated member is open");
  }
  return deflater_->AddDeflatedChunk(src_fd, offset, compressed_size, uncompressed_size, crc32,
                                     src_path);
}

Status ZipWriter::FinishDeflate() {
  NPZ_RETURN_IF_ERROR(deflater_->Finish());
  cur_.uncompressed_size = deflater_->uncompressed_size();
  cur_.compressed_size = deflater_->compressed_size();
  if (cur_crc_given_ && cur_.crc32 != deflater_->crc32()) {
    return Status::Error(EIO, path_ + ": member " + cur_.name +
                                  ": the data read does not match its expected CRC-32 (the "
                                  "source changed while it was being compressed)");
  }
  cur_.crc32 = deflater_->crc32();
  cur_crc_given_ = true;
  if (const SeekTableLayout* table = deflater_->seek_table()) {
    NPZ_ASSIGN_OR_RETURN(cur_.seek_table_extra, EncodeSeekTableExtra(*table));
  }
  deflater_.reset();
  return Status::Ok();
}

Status ZipWriter::EndMember() {
  if (!open_) return Status::Error(EINVAL, path_ + ": no member is open");
  if (deflater_) NPZ_RETURN_IF_ERROR(FinishDeflate());
  if (!cur_crc_given_) cur_.crc32 = cur_running_crc_;

  if (!cur_zip64_local_ && (cur_.compressed_size >= kMax32 || cur_.uncompressed_size >= kMax32)) {
    return Status::Error(EIO, path_ + ": member " + cur_.name + " grew to " +
                                  std::to_string(cur_.uncompressed_size) +
                                  " bytes, beyond its size hint and the 4 GiB limit of a "
                                  "local header without ZIP64 room");
  }
  // Patch CRC and sizes in the local header, and the ZIP64 extra's sizes.
  std::string patch;
  PutLe32(patch, cur_.crc32);
  PutLe32(patch, cur_zip64_local_ ? static_cast<uint32_t>(kMax32)
                                  : static_cast<uint32_t>(cur_.compressed_size));
  PutLe32(patch, cur_zip64_local_ ? static_cast<uint32_t>(kMax32)
                                  : static_cast<uint32_t>(cur_.uncompressed_size));
  NPZ_RETURN_IF_ERROR(PwriteAll(fd_, patch.data(), patch.size(),
                                cur_.local_header_offset + kLocalCrcOffset, path_));
  if (cur_zip64_local_) {
    std::string sizes;
    PutLe64(sizes, cur_.uncompressed_size);
    PutLe64(sizes, cur_.compressed_size);
    NPZ_RETURN_IF_ERROR(PwriteAll(
        fd_, sizes.data(), sizes.size(),
        cur_.local_header_offset + zip::kLocalHeaderSize + cur_.name.size() + zip::kExtraHeaderSize,
        path_));
  }
  records_.push_back(std::move(cur_));
  cur_ = Record{};
  open_ = false;
  return Status::Ok();
}

namespace {

// One central directory record.
void AppendCentralRecord(std::string& buf, const std::string& name, uint16_t method,
                         uint16_t dos_time, uint16_t dos_date, uint32_t crc32, uint64_t compressed,
                         uint64_t uncompressed, uint64_t local_offset,
                         const std::string& extra_tail) {
  const bool big_u = uncompressed >= kMax32;
  const bool big_c = compressed >= kMax32;
  const bool big_o = local_offset >= kMax32;
  const size_t zip64_len =
      (big_u || big_c || big_o) ? zip::kExtraHeaderSize + 8 * (big_u + big_c + big_o) : 0;
  const uint16_t version = zip64_len ? zip::kVersionZip64 : zip::kVersionDeflate;
  PutLe32(buf, zip::kCentralHeaderSig);
  PutLe16(buf, zip::kMadeByUnix | version);
  PutLe16(buf, version);
  PutLe16(buf, NameFlags(name));
  PutLe16(buf, method);
  PutLe16(buf, dos_time);
  PutLe16(buf, dos_date);
  PutLe32(buf, crc32);
  PutLe32(buf, Clamp32(compressed));
  PutLe32(buf, Clamp32(uncompressed));
  PutLe16(buf, static_cast<uint16_t>(name.size()));
  PutLe16(buf, static_cast<uint16_t>(zip64_len + extra_tail.size()));
  PutLe16(buf, 0);  // comment length
  PutLe16(buf, 0);  // disk number start
  PutLe16(buf, 0);  // internal attributes
  PutLe32(buf, kRegularFileAttr);
  PutLe32(buf, Clamp32(local_offset));
  buf += name;
  if (zip64_len) {
    PutLe16(buf, zip::kZip64ExtraId);
    PutLe16(buf, static_cast<uint16_t>(zip64_len - zip::kExtraHeaderSize));
    if (big_u) PutLe64(buf, uncompressed);
    if (big_c) PutLe64(buf, compressed);
    if (big_o) PutLe64(buf, local_offset);
  }
  buf += extra_tail;
}

// The end records: ZIP64 end record and locator when needed, then the classic one.
void AppendEndRecords(std::string& buf, uint64_t count, uint64_t cd_offset, uint64_t cd_size,
                      const std::string& comment) {
  const uint64_t end_start = cd_offset + cd_size;
  if (count >= zip::kMax16 || cd_size >= kMax32 || cd_offset >= kMax32) {
    PutLe32(buf, zip::kZip64EndSig);
    PutLe64(buf, zip::kZip64EndSize - 12);  // size of the rest of the record
    PutLe16(buf, zip::kMadeByUnix | zip::kVersionZip64);
    PutLe16(buf, zip::kVersionZip64);
    PutLe32(buf, 0);
    PutLe32(buf, 0);
    PutLe64(buf, count);
    PutLe64(buf, count);
    PutLe64(buf, cd_size);
    PutLe64(buf, cd_offset);
    PutLe32(buf, zip::kZip64LocatorSig);
    PutLe32(buf, 0);
    PutLe64(buf, end_start);
    PutLe32(buf, 1);
  }
  PutLe32(buf, zip::kEndSig);
  PutLe16(buf, 0);
  PutLe16(buf, 0);
  PutLe16(buf, static_cast<uint16_t>(std::min<uint64_t>(count, zip::kMax16)));
  PutLe16(buf, static_cast<uint16_t>(std::min<uint64_t>(count, zip::kMax16)));
  PutLe32(buf, Clamp32(cd_size));
  PutLe32(buf, Clamp32(cd_offset));
  PutLe16(buf, static_cast<uint16_t>(comment.size()));
  buf += comment;
}

}  // namespace

Status ZipWriter::Finish(const std::string& prior_records, uint64_t prior_count,
                         const std::string& comment) {
  if (open_) return Status::Error(EINVAL, path_ + ": member " + cur_.name + " is still open");
  if (comment.size() > zip::kMaxCommentLength) {
    return Status::Error(EINVAL, path_ + ": archive comment longer than 65535 bytes");
  }
  const uint64_t cd_offset = offset_;
  for (size_t i = 0; i < prior_records.size(); i += kBufferSize) {
    NPZ_RETURN_IF_ERROR(
        WriteOut(prior_records.data() + i, std::min(kBufferSize, prior_records.size() - i)));
  }
  std::string buf;
  buf.reserve(kBufferSize + 2 * zip::kMaxExtraLength);
  for (const Record& r : records_) {
    AppendCentralRecord(buf, r.name, r.method, r.dos_time, r.dos_date, r.crc32, r.compressed_size,
                        r.uncompressed_size, r.local_header_offset, r.seek_table_extra);
    if (buf.size() >= kBufferSize) {
      NPZ_RETURN_IF_ERROR(WriteOut(buf.data(), buf.size()));
      buf.clear();
    }
  }
  const uint64_t count = prior_count + records_.size();
  const uint64_t cd_size = offset_ + buf.size() - cd_offset;
  AppendEndRecords(buf, count, cd_offset, cd_size, comment);
  return WriteOut(buf.data(), buf.size());
}

}  // namespace npzfs
