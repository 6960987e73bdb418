// Streaming ZIP writer.
//
// Layout choices, and why:
//   - Local header first, data next, then the CRC and sizes are patched into the local
//     header with pwrite. The output is always a seekable regular file (a temp file we
//     own), so a data descriptor (flag bit 3) would only make the archive harder for
//     strict readers (libzip's consistency check, some unzip builds) for no gain.
//   - The local header cannot grow once data follows it, so a ZIP64 extra (20 bytes) is
//     reserved up front when the member could reach 0xFFFFFFFF bytes: no size hint, or a
//     hint (deflate bound for compressed members) at or above the limit. If a member
//     nevertheless outgrows a header without the extra, EndMember fails rather than write
//     a truncated size.
//   - Central records carry a ZIP64 extra only for the fields that overflow, which is what
//     the APPNOTE asks and what zipfile, libzip and Info-ZIP all read.
//   - Stored data with a caller-supplied CRC goes through copy_file_range: on XFS/btrfs it
//     shares extents, elsewhere it still avoids copying through user space. Any error from
//     the first call that means "not supported here" falls back to pread/pwrite.
#include "core/zip/zip_writer.h"

#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <ctime>

#include "npzfs/file_util.h"

namespace npzfs {
namespace {

constexpr size_t kBufferSize = size_t{1} << 20;  // 1 MiB
constexpr uint64_t kMax32 = 0xFFFFFFFFu;
constexpr uint16_t kMadeByUnix = 3 << 8;
constexpr uint32_t kRegularFileAttr = 0100644u << 16;

void Put16(std::string& s, uint16_t v) {
  s.push_back(static_cast<char>(v & 0xff));
  s.push_back(static_cast<char>(v >> 8));
}
void Put32(std::string& s, uint32_t v) {
  for (int i = 0; i < 4; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void Put64(std::string& s, uint64_t v) {
  for (int i = 0; i < 8; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
uint32_t Clamp32(uint64_t v) {
  return v >= kMax32 ? static_cast<uint32_t>(kMax32) : static_cast<uint32_t>(v);
}

bool IsAscii(const std::string& s) {
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return static_cast<unsigned char>(c) < 0x80; });
}

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

// Owns one raw-deflate z_stream. Heap-allocated (through unique_ptr) so the z_stream
// never moves after deflateInit2, which zlib forbids.
struct ZipWriter::Deflater {
  z_stream zs{};
  bool initialized = false;
  int level = -1;
  std::string out = std::string(kBufferSize, '\0');
  ~Deflater() {
    if (initialized) deflateEnd(&zs);
  }
};

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
  if (name.empty() || name.size() > 0xFFFF) {
    return Status::Error(EINVAL,
                         path_ + ": invalid member name length " + std::to_string(name.size()));
  }
  if (options.compress_level < -1 || options.compress_level > 9) {
    return Status::Error(EINVAL, path_ + ": member " + name + ": compression level " +
                                     std::to_string(options.compress_level) +
                                     " is not -1 (stored) or 0..9");
  }
  cur_ = Record{};
  cur_.name = name;
  cur_.method = options.compress_level < 0 ? 0 : 8;
  cur_.local_header_offset = offset_;
  UnixToDosDateTime(options.mtime >= 0 ? options.mtime : static_cast<int64_t>(time(nullptr)),
                    &cur_.dos_date, &cur_.dos_time);
  cur_crc_given_ = options.crc32.has_value();
  cur_running_crc_ = 0;
  cur_.crc32 = options.crc32.value_or(0);

  if (!options.size_hint) {
    cur_zip64_local_ = true;
  } else if (cur_.method == 0) {
    cur_zip64_local_ = *options.size_hint >= kMax32;
  } else {
    // compressBound slightly over-estimates raw deflate's worst case (stored blocks).
    cur_zip64_local_ = *options.size_hint >= kMax32 ||
                       ::compressBound(static_cast<uLong>(*options.size_hint)) + 64 >= kMax32;
  }

  if (cur_.method == 8) {
    // One stream and one output buffer serve every member at the same level:
    // deflateReset is far cheaper than a fresh 1 MiB buffer and deflateInit2 per member.
    if (deflater_ && deflater_->level == options.compress_level) {
      if (deflateReset(&deflater_->zs) != Z_OK) deflater_.reset();
    } else {
      deflater_.reset();
    }
    if (!deflater_) {
      deflater_ = std::make_unique<Deflater>();
      int rc = deflateInit2(&deflater_->zs, options.compress_level, Z_DEFLATED, -MAX_WBITS, 8,
                            Z_DEFAULT_STRATEGY);
      if (rc != Z_OK) {
        deflater_.reset();
        return Status::Error(
            rc == Z_MEM_ERROR ? ENOMEM : EINVAL,
            path_ + ": member " + name + ": deflateInit2 failed (" + std::to_string(rc) + ")");
      }
      deflater_->initialized = true;
      deflater_->level = options.compress_level;
    }
  }

  std::string h;
  h.reserve(30 + name.size() + 20);
  Put32(h, 0x04034b50);
  Put16(h, cur_zip64_local_ ? 45 : 20);
  Put16(h, IsAscii(name) ? 0 : 0x800);
  Put16(h, cur_.method);
  Put16(h, cur_.dos_time);
  Put16(h, cur_.dos_date);
  Put32(h, 0);  // CRC, patched in EndMember
  Put32(h, cur_zip64_local_ ? static_cast<uint32_t>(kMax32) : 0);
  Put32(h, cur_zip64_local_ ? static_cast<uint32_t>(kMax32) : 0);
  Put16(h, static_cast<uint16_t>(name.size()));
  Put16(h, cur_zip64_local_ ? 20 : 0);
  h += name;
  if (cur_zip64_local_) {
    Put16(h, 0x0001);
    Put16(h, 16);
    Put64(h, 0);
    Put64(h, 0);
  }
  NPZ_RETURN_IF_ERROR(WriteOut(h.data(), h.size()));
  open_ = true;
  return Status::Ok();
}

Status ZipWriter::Feed(const void* data, size_t n) {
  if (!cur_crc_given_) {
    cur_running_crc_ =
        static_cast<uint32_t>(::crc32_z(cur_running_crc_, static_cast<const Bytef*>(data), n));
  }
  cur_.uncompressed_size += n;
  if (cur_.method == 0) {
    NPZ_RETURN_IF_ERROR(WriteOut(data, n));
    cur_.compressed_size += n;
  } else {
    z_stream& zs = deflater_->zs;
    const auto* p = static_cast<const unsigned char*>(data);
    size_t left = n;
    while (left > 0) {
      const size_t chunk = std::min(left, kBufferSize);
      zs.next_in = const_cast<Bytef*>(p);
      zs.avail_in = static_cast<uInt>(chunk);
      do {
        zs.next_out = reinterpret_cast<Bytef*>(deflater_->out.data());
        zs.avail_out = static_cast<uInt>(deflater_->out.size());
        int rc = deflate(&zs, Z_NO_FLUSH);
        if (rc != Z_OK && rc != Z_BUF_ERROR) {
          return Status::Error(EIO, path_ + ": member " + cur_.name + ": deflate failed (" +
                                        std::to_string(rc) + ")");
        }
        const size_t have = deflater_->out.size() - zs.avail_out;
        NPZ_RETURN_IF_ERROR(WriteOut(deflater_->out.data(), have));
        cur_.compressed_size += have;
      } while (zs.avail_out == 0 || zs.avail_in > 0);
      p += chunk;
      left -= chunk;
    }
  }
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
    return Status::Error(EIO, src_path + ": unexpected end of file at offset " +
                                  std::to_string(at) + " (wanted " + std::to_string(length) +
                                  " bytes from offset " + std::to_string(offset) + ")");
  };
  uint64_t done = 0;
  if (cur_.method == 0 && cur_crc_given_) {
    // Zero-copy path. Falls back to the buffered loop below when the kernel or the
    // filesystem pair cannot do it.
    while (done < length) {
      loff_t in = static_cast<loff_t>(offset + done);
      loff_t out = static_cast<loff_t>(offset_);
      const size_t want = static_cast<size_t>(std::min<uint64_t>(length - done, 64u << 20));
      ssize_t r = ::copy_file_range(src_fd, &in, fd_, &out, want, 0);
      if (r < 0) {
        if (errno == EINTR) continue;
        if (errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP ||
            errno == EBADF) {
          break;  // fall back to read/write for the rest
        }
        return ErrnoStatus(errno, path_, "copy from " + src_path + " failed");
      }
      if (r == 0) return short_source(offset + done);
      done += static_cast<uint64_t>(r);
      offset_ += static_cast<uint64_t>(r);
      cur_.uncompressed_size += static_cast<uint64_t>(r);
      cur_.compressed_size += static_cast<uint64_t>(r);
      if (progress_) progress_(static_cast<uint64_t>(r));
    }
  }
  if (done == length) return Status::Ok();
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

Status ZipWriter::EndMember() {
  if (!open_) return Status::Error(EINVAL, path_ + ": no member is open");
  if (cur_.method == 8) {
    z_stream& zs = deflater_->zs;
    zs.next_in = nullptr;
    zs.avail_in = 0;
    int rc;
    do {
      zs.next_out = reinterpret_cast<Bytef*>(deflater_->out.data());
      zs.avail_out = static_cast<uInt>(deflater_->out.size());
      rc = deflate(&zs, Z_FINISH);
      if (rc != Z_OK && rc != Z_STREAM_END && rc != Z_BUF_ERROR) {
        return Status::Error(
            EIO, path_ + ": member " + cur_.name + ": deflate failed (" + std::to_string(rc) + ")");
      }
      const size_t have = deflater_->out.size() - zs.avail_out;
      NPZ_RETURN_IF_ERROR(WriteOut(deflater_->out.data(), have));
      cur_.compressed_size += have;
    } while (rc != Z_STREAM_END);
  }
  if (!cur_crc_given_) cur_.crc32 = cur_running_crc_;

  if (!cur_zip64_local_ && (cur_.compressed_size >= kMax32 || cur_.uncompressed_size >= kMax32)) {
    return Status::Error(EIO, path_ + ": member " + cur_.name + " grew to " +
                                  std::to_string(cur_.uncompressed_size) +
                                  " bytes, beyond its size hint and the 4 GiB limit of a "
                                  "local header without ZIP64 room");
  }
  // Patch CRC and sizes (offset 14 of the local header), and the ZIP64 extra's sizes.
  std::string patch;
  Put32(patch, cur_.crc32);
  Put32(patch, cur_zip64_local_ ? static_cast<uint32_t>(kMax32)
                                : static_cast<uint32_t>(cur_.compressed_size));
  Put32(patch, cur_zip64_local_ ? static_cast<uint32_t>(kMax32)
                                : static_cast<uint32_t>(cur_.uncompressed_size));
  NPZ_RETURN_IF_ERROR(
      PwriteAll(fd_, patch.data(), patch.size(), cur_.local_header_offset + 14, path_));
  if (cur_zip64_local_) {
    std::string sizes;
    Put64(sizes, cur_.uncompressed_size);
    Put64(sizes, cur_.compressed_size);
    NPZ_RETURN_IF_ERROR(PwriteAll(fd_, sizes.data(), sizes.size(),
                                  cur_.local_header_offset + 30 + cur_.name.size() + 4, path_));
  }
  records_.push_back(std::move(cur_));
  cur_ = Record{};
  open_ = false;
  return Status::Ok();
}

Status ZipWriter::Finish(const std::string& prior_records, uint64_t prior_count,
                         const std::string& comment) {
  if (open_) return Status::Error(EINVAL, path_ + ": member " + cur_.name + " is still open");
  if (comment.size() > 0xFFFF) {
    return Status::Error(EINVAL, path_ + ": archive comment longer than 65535 bytes");
  }
  const uint64_t cd_offset = offset_;
  for (size_t i = 0; i < prior_records.size(); i += kBufferSize) {
    NPZ_RETURN_IF_ERROR(
        WriteOut(prior_records.data() + i, std::min(kBufferSize, prior_records.size() - i)));
  }
  std::string buf;
  buf.reserve(kBufferSize + 0x10000 + 100);
  for (const Record& r : records_) {
    const bool big_u = r.uncompressed_size >= kMax32;
    const bool big_c = r.compressed_size >= kMax32;
    const bool big_o = r.local_header_offset >= kMax32;
    const uint16_t extra_len = (big_u || big_c || big_o) ? 4 + 8 * (big_u + big_c + big_o) : 0;
    const uint16_t version = extra_len ? 45 : 20;
    Put32(buf, 0x02014b50);
    Put16(buf, kMadeByUnix | version);
    Put16(buf, version);
    Put16(buf, IsAscii(r.name) ? 0 : 0x800);
    Put16(buf, r.method);
    Put16(buf, r.dos_time);
    Put16(buf, r.dos_date);
    Put32(buf, r.crc32);
    Put32(buf, Clamp32(r.compressed_size));
    Put32(buf, Clamp32(r.uncompressed_size));
    Put16(buf, static_cast<uint16_t>(r.name.size()));
    Put16(buf, extra_len);
    Put16(buf, 0);  // comment length
    Put16(buf, 0);  // disk number start
    Put16(buf, 0);  // internal attributes
    Put32(buf, kRegularFileAttr);
    Put32(buf, Clamp32(r.local_header_offset));
    buf += r.name;
    if (extra_len) {
      Put16(buf, 0x0001);
      Put16(buf, static_cast<uint16_t>(extra_len - 4));
      if (big_u) Put64(buf, r.uncompressed_size);
      if (big_c) Put64(buf, r.compressed_size);
      if (big_o) Put64(buf, r.local_header_offset);
    }
    if (buf.size() >= kBufferSize) {
      NPZ_RETURN_IF_ERROR(WriteOut(buf.data(), buf.size()));
      buf.clear();
    }
  }
  const uint64_t count = prior_count + records_.size();
  const uint64_t cd_size = offset_ + buf.size() - cd_offset;
  const uint64_t end_start = cd_offset + cd_size;
  if (count >= 0xFFFF || cd_size >= kMax32 || cd_offset >= kMax32) {
    Put32(buf, 0x06064b50);  // ZIP64 end of central directory record
    Put64(buf, 44);
    Put16(buf, kMadeByUnix | 45);
    Put16(buf, 45);
    Put32(buf, 0);
    Put32(buf, 0);
    Put64(buf, count);
    Put64(buf, count);
    Put64(buf, cd_size);
    Put64(buf, cd_offset);
    Put32(buf, 0x07064b50);  // ZIP64 end of central directory locator
    Put32(buf, 0);
    Put64(buf, end_start);
    Put32(buf, 1);
  }
  Put32(buf, 0x06054b50);
  Put16(buf, 0);
  Put16(buf, 0);
  Put16(buf, static_cast<uint16_t>(std::min<uint64_t>(count, 0xFFFF)));
  Put16(buf, static_cast<uint16_t>(std::min<uint64_t>(count, 0xFFFF)));
  Put32(buf, Clamp32(cd_size));
  Put32(buf, Clamp32(cd_offset));
  Put16(buf, static_cast<uint16_t>(comment.size()));
  buf += comment;
  return WriteOut(buf.data(), buf.size());
}

}  // namespace npzfs
