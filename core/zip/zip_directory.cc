// Central directory parser.
//
// Why by hand: libzip has no API for a member's data offset, and the daemon serves
// stored members straight from the archive file at that offset. The parser is small
// because it only needs the end records, the central records and the fixed part of each
// local header.
//
// Trust order, following what readers in the field do:
//   - Sizes and CRC come from the central directory. numpy writes a local ZIP64 extra
//     with 0xFFFFFFFF in the fixed size fields and its own sizes, and pipe writers put
//     zeros in the local header and the real values in a trailing data descriptor; the
//     central record is the only place that is always right.
//   - The data offset comes from the local header: its name and extra lengths can differ
//     from the central record's (numpy's local ZIP64 extra is absent centrally).
//   - The central directory is walked by its byte size, like CPython's zipfile, and the
//     record count from the end record must agree (modulo 65536, for writers that let the
//     16-bit count wrap without writing a ZIP64 end record).
//
// Safety: every length is checked against the directory or file size before it is used,
// the entry count is bounded by cd_size / 46 (the smallest central record) before any
// allocation, and the directory itself is capped at kMaxCentralDirectorySize.
#include "npzfs/zip_directory.h"

#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <ctime>

#include "core/base/text_codec.h"
#include "core/zip/zip_format.h"
#include "npzfs/file_util.h"

namespace npzfs {
namespace {

constexpr uint32_t kEndSig = 0x06054b50;           // "PK\5\6"
constexpr uint32_t kZip64EndSig = 0x06064b50;      // "PK\6\6"
constexpr uint32_t kZip64LocatorSig = 0x07064b50;  // "PK\6\7"
constexpr uint32_t kCentralSig = 0x02014b50;       // "PK\1\2"
constexpr uint32_t kLocalSig = 0x04034b50;         // "PK\3\4"
constexpr size_t kEndSize = 22;
constexpr size_t kZip64LocatorSize = 20;
constexpr size_t kZip64EndMinSize = 56;
constexpr size_t kCentralMinSize = 46;
constexpr size_t kLocalSize = 30;
constexpr size_t kMaxCommentLength = 0xFFFF;

uint16_t Le16(const unsigned char* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t Le32(const unsigned char* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}
uint64_t Le64(const unsigned char* p) {
  return static_cast<uint64_t>(Le32(p)) | (static_cast<uint64_t>(Le32(p + 4)) << 32);
}

Status Invalid(const std::string& path, const std::string& cause) {
  return Status::Error(EINVAL, path + ": " + cause);
}

struct EndInfo {
  uint64_t end_offset = 0;     // where the (classic) end record starts
  uint64_t records_start = 0;  // the ZIP64 end record if any, else end_offset
  uint64_t entry_count = 0;
  uint64_t cd_size = 0, cd_offset = 0;
  bool zip64 = false;
  std::string comment;
};

// Finds the end of central directory record in the last 64 KiB + 22 bytes. A candidate
// whose comment exactly reaches the end of the file is preferred; otherwise the last
// signature wins (trailing garbage after the comment is tolerated, as zipfile does).
Result<EndInfo> FindEnd(int fd, const std::string& path, uint64_t size) {
  if (size < kEndSize) {
    return Invalid(path, "not a zip archive (" + std::to_string(size) +
                             " bytes, too short for an end of central directory record)");
  }
  const uint64_t tail_len = std::min<uint64_t>(size, kEndSize + kMaxCommentLength);
  const uint64_t tail_start = size - tail_len;
  std::string tail(tail_len, '\0');
  NPZ_RETURN_IF_ERROR(PreadExact(fd, tail.data(), tail.size(), tail_start, path));
  const auto* t = reinterpret_cast<const unsigned char*>(tail.data());

  int64_t found = -1, fallback = -1;
  for (int64_t i = static_cast<int64_t>(tail_len - kEndSize); i >= 0; --i) {
    if (Le32(t + i) != kEndSig) continue;
    const uint16_t clen = Le16(t + i + 20);
    if (static_cast<uint64_t>(i) + kEndSize + clen == tail_len) {
      found = i;
      break;
    }
    if (fallback < 0) fallback = i;
  }
  if (found < 0) found = fallback;
  if (found < 0) {
    return Invalid(path, "not a zip archive (no end of central directory record)");
  }
  const unsigned char* e = t + found;
  EndInfo info;
  info.end_offset = tail_start + static_cast<uint64_t>(found);
  info.records_start = info.end_offset;
  const uint16_t disk = Le16(e + 4), cd_disk = Le16(e + 6);
  const uint16_t disk_entries = Le16(e + 8);
  info.entry_count = Le16(e + 10);
  info.cd_size = Le32(e + 12);
  info.cd_offset = Le32(e + 16);
  const uint64_t clen = Le16(e + 20);
  const uint64_t avail = tail_len - static_cast<uint64_t>(found) - kEndSize;
  info.comment.assign(tail.data() + found + kEndSize, std::min(clen, avail));

  // ZIP64: a locator right before the end record points at the ZIP64 end record.
  if (info.end_offset >= kZip64LocatorSize) {
    unsigned char loc[kZip64LocatorSize];
    NPZ_RETURN_IF_ERROR(PreadExact(fd, loc, sizeof loc, info.end_offset - kZip64LocatorSize, path));
    if (Le32(loc) == kZip64LocatorSig) {
      const uint64_t z64_offset = Le64(loc + 8);
      const uint32_t total_disks = Le32(loc + 16);
      if (Le32(loc + 4) != 0 || total_disks > 1) {
        return Invalid(path, "multi-disk zip archives are not supported");
      }
      if (z64_offset > info.end_offset - kZip64LocatorSize ||
          info.end_offset - kZip64LocatorSize - z64_offset < kZip64EndMinSize) {
        return Invalid(path, "ZIP64 end record offset " + std::to_string(z64_offset) +
                                 " is outside the archive");
      }
      unsigned char z[kZip64EndMinSize];
      NPZ_RETURN_IF_ERROR(PreadExact(fd, z, sizeof z, z64_offset, path));
      if (Le32(z) != kZip64EndSig) {
        return Invalid(path, "bad ZIP64 end of central directory record signature at offset " +
                                 std::to_string(z64_offset));
      }
      if (Le32(z + 16) != 0 || Le32(z + 20) != 0) {
        return Invalid(path, "multi-disk zip archives are not supported");
      }
      info.zip64 = true;
      info.records_start = z64_offset;
      info.entry_count = Le64(z + 32);
      info.cd_size = Le64(z + 40);
      info.cd_offset = Le64(z + 48);
      return info;
    }
  }
  if (disk != 0 || cd_disk != 0 || disk_entries != info.entry_count) {
    return Invalid(path, "multi-disk zip archives are not supported");
  }
  return info;
}

// Reads the ZIP64 extended information extra (0x0001) and the Info-ZIP extended
// timestamp (0x5455, "UT") out of a central record's extra field.
Status ParseCentralExtra(const unsigned char* x, size_t len, ZipEntry& e, bool need_usize,
                         bool need_csize, bool need_offset) {
  bool have_zip64 = false;
  std::string zip64_overrun;  // a ZIP64 block that runs past the extra area, for the message
  size_t pos = 0;
  while (pos + 4 <= len) {
    const uint16_t id = Le16(x + pos);
    const uint16_t sz = Le16(x + pos + 2);
    pos += 4;
    if (sz > len - pos) {  // a malformed trailing block: ignore like zipfile does
      if (id == 0x0001) {
        zip64_overrun = " (its ZIP64 extra field claims " + std::to_string(sz) +
                        " bytes, but the extra area has " + std::to_string(len - pos) + " left)";
      }
      break;
    }
    const unsigned char* d = x + pos;
    if (id == 0x0001) {
      have_zip64 = true;
      size_t need = 8 * (need_usize + need_csize + need_offset);
      if (sz < need) {
        return Status::Error(EINVAL, "ZIP64 extra field too short (" + std::to_string(sz) +
                                         " bytes, need " + std::to_string(need) + ")");
      }
      size_t q = 0;
      // Only the fields whose fixed value is 0xFFFFFFFF are present, in this order.
      if (need_usize) e.uncompressed_size = Le64(d + q), q += 8;
      if (need_csize) e.compressed_size = Le64(d + q), q += 8;
      if (need_offset) e.local_header_offset = Le64(d + q);
    } else if (id == 0x5455 && sz >= 5 && (d[0] & 1)) {
      e.mtime = static_cast<int64_t>(Le32(d + 1));
    } else if (id == zip::kSeekTableExtraId && e.seek_table.empty()) {
      e.seek_table.assign(reinterpret_cast<const char*>(d), sz);
    }
    pos += sz;
  }
  if ((need_usize || need_csize || need_offset) && !have_zip64) {
    return Status::Error(EINVAL,
                         "a size or offset is 0xFFFFFFFF but there is no ZIP64 extra "
                         "field" +
                             (zip64_overrun.empty() ? std::string() : zip64_overrun));
  }
  return Status::Ok();
}

// Local headers of small members sit close together: reading them through a 64 KiB
// window turns tens of thousands of 30-byte preads into a few hundred reads.
class LocalHeaderWindow {
 public:
  // The `len` bytes at `offset` (the caller checked offset + len <= limit, the start of the
  // central directory): the 30 fixed bytes of a local header, or its name. Valid until the
  // next call.
  Result<const unsigned char*> At(int fd, const std::string& path, uint64_t offset,
                                  uint64_t limit, size_t len = kLocalSize) {
    if (offset < start_ || offset + len > start_ + buf_.size()) {
      buf_.resize(std::min<uint64_t>(std::max<uint64_t>(kWindow, len), limit - offset));
      start_ = offset;
      NPZ_RETURN_IF_ERROR(PreadExact(fd, buf_.data(), buf_.size(), offset, path));
    }
    return reinterpret_cast<const unsigned char*>(buf_.data()) + (offset - start_);
  }

 private:
  static constexpr uint64_t kWindow = 64 * 1024;
  uint64_t start_ = 0;
  std::string buf_;
};

}  // namespace

int64_t DosDateTimeToUnix(uint16_t dos_date, uint16_t dos_time) {
  struct tm tm {};
  tm.tm_year = ((dos_date >> 9) & 0x7f) + 80;
  tm.tm_mon = std::clamp(((dos_date >> 5) & 0xf) - 1, 0, 11);
  tm.tm_mday = std::clamp(dos_date & 0x1f, 1, 31);
  tm.tm_hour = std::min(dos_time >> 11, 23);
  tm.tm_min = std::min((dos_time >> 5) & 0x3f, 59);
  tm.tm_sec = std::min((dos_time & 0x1f) * 2, 59);
  tm.tm_isdst = -1;
  return static_cast<int64_t>(mktime(&tm));
}

namespace {

// The end record's claims, checked against each other before anything is allocated.
Status CheckDirectoryBounds(const EndInfo& end, const std::string& path) {
  if (end.cd_offset > end.records_start || end.cd_size > end.records_start - end.cd_offset) {
    return Invalid(path, "central directory [" + std::to_string(end.cd_offset) + ", +" +
                             std::to_string(end.cd_size) + ") runs past its end record at " +
                             std::to_string(end.records_start) +
                             " (corrupt, or data was prepended to the archive)");
  }
  if (end.cd_size > kMaxCentralDirectorySize) {
    return Invalid(path, "central directory of " + std::to_string(end.cd_size) +
                             " bytes exceeds the limit of " +
                             std::to_string(kMaxCentralDirectorySize));
  }
  if (end.entry_count > end.cd_size / kCentralMinSize) {
    return Invalid(path, "end record claims " + std::to_string(end.entry_count) +
                             " entries but the central directory holds at most " +
                             std::to_string(end.cd_size / kCentralMinSize));
  }
  return Status::Ok();
}

// Walks the central directory records one by one.
class CentralRecordParser {
 public:
  CentralRecordParser(int fd, const std::string& path, const EndInfo& end,
                      const std::string& cd_bytes)
      : fd_(fd),
        path_(path),
        end_(end),
        cd_(reinterpret_cast<const unsigned char*>(cd_bytes.data())),
        cd_len_(cd_bytes.size()) {}

  bool done() const { return pos_ >= cd_len_; }

  // Parses the record at the current position into *e (entry number `index`) and moves on.
  Status Next(size_t index, ZipEntry* e) {
    // Messages are built only on error: this runs once per member.
    auto where = [&] { return path_ + ": central directory entry " + std::to_string(index); };
    if (cd_len_ - pos_ < kCentralMinSize) {
      return Status::Error(EINVAL, where() + ": truncated record (" +
                                       std::to_string(cd_len_ - pos_) + " bytes left)");
    }
    const unsigned char* r = cd_ + pos_;
    if (Le32(r) != kCentralSig) {
      return Status::Error(
          EINVAL, where() + ": bad signature at offset " + std::to_string(end_.cd_offset + pos_));
    }
    e->version_made_by = Le16(r + 4);
    e->flags = Le16(r + 8);
    e->method = Le16(r + 10);
    e->dos_time = Le16(r + 12);
    e->dos_date = Le16(r + 14);
    e->crc32 = Le32(r + 16);
    e->compressed_size = Le32(r + 20);
    e->uncompressed_size = Le32(r + 24);
    const size_t name_len = Le16(r + 28), extra_len = Le16(r + 30), comment_len = Le16(r + 32);
    const uint16_t disk = Le16(r + 34);
    e->external_attr = Le32(r + 38);
    e->local_header_offset = Le32(r + 42);
    const size_t rec_len = kCentralMinSize + name_len + extra_len + comment_len;
    if (rec_len > cd_len_ - pos_) {
      return Status::Error(EINVAL, where() +
                                       ": name/extra/comment lengths run past the end of "
                                       "the central directory");
    }
    e->name.assign(reinterpret_cast<const char*>(r + kCentralMinSize), name_len);
    auto named = [&] { return where() + " (" + e->name + ")"; };
    e->mtime = MtimeOf(e->dos_date, e->dos_time);
    Status extra = ParseCentralExtra(
        r + kCentralMinSize + name_len, extra_len, *e, e->uncompressed_size == 0xFFFFFFFFu,
        e->compressed_size == 0xFFFFFFFFu, e->local_header_offset == 0xFFFFFFFFu);
    if (!extra.ok()) return extra.WithContext(named());
    if (disk != 0 && disk != 0xFFFF) {
      return Status::Error(EINVAL, named() + ": on disk " + std::to_string(disk) +
                                       " (multi-disk archives are not supported)");
    }
    NPZ_RETURN_IF_ERROR(FindData(e, named));
    pos_ += rec_len;
    return Status::Ok();
  }

 private:
  // mktime is slow (time zone lock); entries written together share their DOS time.
  int64_t MtimeOf(uint16_t dos_date, uint16_t dos_time) {
    const uint32_t dos = (static_cast<uint32_t>(dos_date) << 16) | dos_time;
    if (dos != last_dos_) {
      last_dos_ = dos;
      last_mtime_ = DosDateTimeToUnix(dos_date, dos_time);
    }
    return last_mtime_;
  }

  // The local header: where the data really starts, and that it fits the member area.
  template <typename Named>
  Status FindData(ZipEntry* e, const Named& named) {
    if (e->local_header_offset > end_.cd_offset ||
        end_.cd_offset - e->local_header_offset < kLocalSize) {
      return Status::Error(EINVAL, named() + ": local header offset " +
                                       std::to_string(e->local_header_offset) +
                                       " is beyond the member area (central directory at " +
                                       std::to_string(end_.cd_offset) + ")");
    }
    NPZ_ASSIGN_OR_RETURN(const unsigned char* lh,
                         local_headers_.At(fd_, path_, e->local_header_offset, end_.cd_offset));
    if (Le32(lh) != kLocalSig) {
      return Status::Error(EINVAL, named() + ": bad local header signature at offset " +
                                       std::to_string(e->local_header_offset));
    }
    const size_t local_name_len = Le16(lh + 26);
    e->data_offset = e->local_header_offset + kLocalSize + local_name_len + Le16(lh + 28);
    if (e->data_offset > end_.cd_offset || e->compressed_size > end_.cd_offset - e->data_offset) {
      return Status::Error(EINVAL, named() + ": data [" + std::to_string(e->data_offset) + ", +" +
                                       std::to_string(e->compressed_size) +
                                       ") runs beyond the member area (central directory at " +
                                       std::to_string(end_.cd_offset) + ")");
    }
    // The name there must be the entry's (zipfile, and so numpy, refuse the member if not).
    e->local_name_differs = local_name_len != e->name.size();
    if (!e->local_name_differs && local_name_len > 0) {
      NPZ_ASSIGN_OR_RETURN(const unsigned char* name,
                           local_headers_.At(fd_, path_, e->local_header_offset + kLocalSize,
                                             end_.cd_offset, local_name_len));
      e->local_name_differs = std::memcmp(name, e->name.data(), local_name_len) != 0;
    }
    return Status::Ok();
  }

  int fd_;
  const std::string& path_;
  const EndInfo& end_;
  const unsigned char* cd_;
  size_t cd_len_;
  size_t pos_ = 0;
  LocalHeaderWindow local_headers_;
  uint32_t last_dos_ = 0;
  int64_t last_mtime_ = DosDateTimeToUnix(0, 0);
};

}  // namespace

namespace {

// Whether the first central record (at `cd`) points at a local header where it says, and not
// `shift` bytes later: then the members did not move, and only the end record's directory
// offset is wrong (a prefix would have moved them all).
bool LocalHeadersUnshifted(int fd, const std::string& path, uint64_t cd, uint64_t shift) {
  constexpr size_t kLocalOffsetField = 42;  // in the central record's fixed part
  unsigned char record[kLocalOffsetField + 4], sig[4];
  if (!PreadExact(fd, record, sizeof record, cd, path).ok()) return false;
  const uint64_t local = Le32(record + kLocalOffsetField);
  if (local == 0xFFFFFFFFu) return false;  // in a ZIP64 extra: not worth parsing for a hint
  auto is_local_header = [&](uint64_t at) {
    return PreadExact(fd, sig, 4, at, path).ok() && Le32(sig) == kLocalSig;
  };
  return is_local_header(local) && !is_local_header(local + shift);
}

}  // namespace

Result<ZipDirectory> ReadZipDirectory(int fd, const std::string& path) {
  ZipDirectory dir;
  NPZ_ASSIGN_OR_RETURN(dir.archive_size, FileSize(fd, path));
  NPZ_ASSIGN_OR_RETURN(EndInfo end, FindEnd(fd, path, dir.archive_size));
  dir.comment = std::move(end.comment);
  dir.cd_offset = end.cd_offset;
  dir.cd_size = end.cd_size;
  NPZ_RETURN_IF_ERROR(CheckDirectoryBounds(end, path));

  dir.cd_bytes.resize(end.cd_size);
  NPZ_RETURN_IF_ERROR(
      PreadExact(fd, dir.cd_bytes.data(), dir.cd_bytes.size(), end.cd_offset, path));
  dir.cd_crc32 = static_cast<uint32_t>(
      ::crc32_z(0, reinterpret_cast<const Bytef*>(dir.cd_bytes.data()), dir.cd_bytes.size()));

  // Bytes put in front of a zip (a self-extracting stub, `cat stub x.zip`) shift every
  // offset: the directory then starts after where its end record says. Said plainly, as
  // "bad signature" alone does not tell it (zipfile copes; `zip -A` fixes the offsets).
  if (end.cd_size >= 4 &&
      Le32(reinterpret_cast<const unsigned char*>(dir.cd_bytes.data())) != kCentralSig) {
    const uint64_t actual = end.records_start - end.cd_size;
    unsigned char sig[4];
    if (actual > end.cd_offset && PreadExact(fd, sig, 4, actual, path).ok() &&
        Le32(sig) == kCentralSig) {
      const uint64_t shift = actual - end.cd_offset;
      if (LocalHeadersUnshifted(fd, path, actual, shift)) {
        return Invalid(path, "the end record says the central directory is at offset " +
                                 std::to_string(end.cd_offset) + ", but it is at " +
                                 std::to_string(actual) +
                                 " and the members' offsets are right: the end record is "
                                 "corrupt");
      }
      return Invalid(path,
                     "the central directory is at offset " + std::to_string(actual) + ", not at " +
                         std::to_string(end.cd_offset) +
                         " where its end record says: " + std::to_string(actual - end.cd_offset) +
                         " bytes were put in front of the archive (a self-extracting "
                         "stub?); npzfs reads such an archive once its offsets are "
                         "adjusted (zip -A)");
    }
  }

  dir.entries.reserve(end.entry_count);
  CentralRecordParser records(fd, path, end, dir.cd_bytes);
  while (!records.done()) {
    ZipEntry e;
    NPZ_RETURN_IF_ERROR(records.Next(dir.entries.size(), &e));
    dir.entries.push_back(std::move(e));
  }
  const uint64_t n = dir.entries.size();
  if (n != end.entry_count && (end.zip64 || n % 65536 != end.entry_count)) {
    return Invalid(path, "end record claims " + std::to_string(end.entry_count) +
                             " entries but the central directory holds " + std::to_string(n));
  }
  return dir;
}

// How much of another entry's name a reason quotes.
constexpr size_t kShownInReason = 80;

std::vector<std::string> EntryConflicts(const std::vector<ZipEntry>& entries) {
  std::vector<std::string> why(entries.size());
  for (size_t i = 0; i < entries.size(); ++i) {
    if (entries[i].local_name_differs) {
      why[i] =
          "its local header gives a different name from the central directory's (zipfile "
          "and numpy refuse the member)";
    }
  }
  std::vector<size_t> order(entries.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return entries[a].local_header_offset < entries[b].local_header_offset;
  });
  auto end_of = [&](size_t i) { return entries[i].data_offset + entries[i].compressed_size; };
  for (size_t j = 0; j < order.size(); ++j) {
    const ZipEntry& a = entries[order[j]];
    size_t next = j + 1;
    while (next < order.size() &&
           entries[order[next]].local_header_offset == a.local_header_offset) {
      const ZipEntry& same = entries[order[next]];
      if (same.data_offset != a.data_offset || same.compressed_size != a.compressed_size) {
        why[order[j]] = why[order[next]] = "another entry gives the same local header other sizes";
      }
      ++next;
    }
    if (next == order.size()) continue;
    const ZipEntry& b = entries[order[next]];
    if (b.local_header_offset < a.data_offset) {
      why[order[next]] = "its local header lies inside the local header of " +
                         PrintableName(a.name, kShownInReason);
    }
    if (end_of(order[j]) > b.local_header_offset) {
      why[order[j]] =
          "its data [" + std::to_string(a.data_offset) + ", " + std::to_string(end_of(order[j])) +
          ") runs into the local header of " + PrintableName(b.name, kShownInReason) + " at " +
          std::to_string(b.local_header_offset) + " (the central directory's sizes are wrong)";
    }
  }
  return why;
}

}  // namespace npzfs
