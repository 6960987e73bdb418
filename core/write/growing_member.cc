// GrowingMember: an append-only .npy (or verbatim file) that readers can open while it grows.
//
// Design
// ------
// The spool file has exactly the bytes a reader would see if every byte received were
// visible: the canonical header, then the data. Three consequences drive the design:
//  * A visible offset is the spool-file offset of the same byte, so ReadAt is one pread and
//    finalize hands AppendToArchive a plain file range (copy_file_range, or no re-read at all
//    when the running CRC is known).
//  * The spool file is a valid .npy at every instant (its header never counts more frames
//    than follow it), so a SIGKILLed daemon leaves something np.load can read, and Resume only
//    has to recount frames from the file size and cut a partial tail.
//  * The writer's own header (np.save, cp) is never stored: its count is meaningless while
//    the file grows and its length may differ from the canonical one (older numpy pads to 16
//    bytes, not 64). We keep its length H_w and map the writer's stream offset o >= H_w to data
//    offset o - H_w.
// Rejected alternatives: storing the writer's raw stream and translating on read (Resume
// would need H_w from somewhere, and the spool file would not be a .npy); letting the kernel
// page cache hold written bytes (FACTS.md: it caches them at the writer's offsets, which are
// not the visible offsets — hence writer handles use direct_io in the daemon).
//
// What readers see is published in one short critical section after the data is on its way
// to disk: the header string (with the count of complete frames) and the visible size move
// together, so a reader never sees a count its size cannot hold. The header is served from
// memory; a trailing partial frame is simply beyond the visible size until it completes.
//
// Locking: io_mu_ serialises everything that writes (Write, Truncate, SetAttribute, Fsync,
// PrepareFinalize) and guards the write-only state (tail, running CRC). mu_ guards what
// readers look at (layout, header, sizes) and the writer bookkeeping; it is never held across
// a data pwrite, only across the single header pwrite of SetAttribute. Lock order: io_mu_
// then mu_. Data pwrites happen without mu_: the region beyond the visible size is written by
// the one writer holding io_mu_ and read by nobody.
//
// Writer coordinates: the first writer of a member that has received nothing writes in its
// own stream (header first, or raw frames at 0 for a declared layout). Every later writer (the
// first closed, or the daemon resumed) writes in visible coordinates: the canonical header
// length plus every data byte, including a held-back partial frame.
#include "core/write/growing_member.h"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <limits>

namespace npzfs {
namespace {

// A frame larger than this is not kept in memory while partial, so the running CRC is given
// up for such members (finalize then computes it while copying).
constexpr uint64_t kMaxTailBytes = 64ull << 20;
// A writer's header longer than this is refused before it is buffered.
constexpr size_t kMaxWriterHeaderBytes = NpyHeader::kMaxHeaderChars + 128;

uint32_t Crc32(uint32_t crc, const void* data, size_t n) {
  const auto* p = static_cast<const Bytef*>(data);
  uLong c = crc;
  while (n > 0) {
    uInt chunk = static_cast<uInt>(std::min<size_t>(n, 1u << 30));
    c = ::crc32(c, p, chunk);
    p += chunk;
    n -= chunk;
  }
  return static_cast<uint32_t>(c);
}

std::string_view AsChars(std::span<const std::byte> data) {
  return {reinterpret_cast<const char*>(data.data()), data.size()};
}

// "'<i2'" -> "<i2"; a structured literal stays as it is (ForFrames accepts both forms).
std::string DescrText(const NpyHeader& h) {
  const std::string& lit = h.descr_literal();
  if (lit.size() >= 2 && (lit.front() == '\'' || lit.front() == '"') && lit.back() == lit.front())
    return lit.substr(1, lit.size() - 2);
  return lit;
}

std::string ShapeText(const std::vector<uint64_t>& shape) {
  std::string out;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) out += ',';
    out += std::to_string(shape[i]);
  }
  return out;
}

Result<bool> ParseBoolText(std::string_view text) {
  if (text == "1" || text == "true" || text == "True") return true;
  if (text == "0" || text == "false" || text == "False") return false;
  return Status::Error(EINVAL, "'" + std::string(text) + "' is not a boolean (use 0 or 1)");
}

}  // namespace

bool IsNpyMemberName(std::string_view name) {
  return name.size() >= 4 && name.substr(name.size() - 4) == ".npy";
}

Result<std::vector<uint64_t>> ParseFrameShape(std::string_view text) {
  std::string t(text);
  // Tolerate Python tuple notation "(256, 1024)" / "(256,)" and spaces.
  t.erase(std::remove_if(t.begin(), t.end(), [](char c) { return c == ' ' || c == '\t'; }),
          t.end());
  if (t.size() >= 2 && t.front() == '(' && t.back() == ')') t = t.substr(1, t.size() - 2);
  if (!t.empty() && t.back() == ',') t.pop_back();
  std::vector<uint64_t> shape;
  if (t.empty()) return shape;
  size_t pos = 0;
  while (true) {
    const size_t sep = t.find_first_of(",x", pos);
    const std::string axis = t.substr(pos, sep == std::string::npos ? sep : sep - pos);
    uint64_t v = 0;
    for (char c : axis) {
      if (c < '0' || c > '9' || v > (std::numeric_limits<uint64_t>::max() - 9) / 10) {
        v = std::numeric_limits<uint64_t>::max();
        break;
      }
      v = v * 10 + static_cast<uint64_t>(c - '0');
    }
    if (axis.empty() || v == std::numeric_limits<uint64_t>::max()) {
      return Status::Error(EINVAL, "frame shape '" + std::string(text) + "': axis '" + axis +
                                       "' is not a non-negative integer (expected e.g. "
                                       "256,1024 or 256x1024)");
    }
    shape.push_back(v);
    if (sep == std::string::npos) break;
    pos = sep + 1;
  }
  return shape;
}

struct GrowingMember::State {
  enum class Coordinates {
    kUndecided,         // the active writer has not written yet
    kCollectingHeader,  // buffering a writer's .npy header (header_buf)
    kStream,            // data byte 0 is at writer offset `base` (first writer)
    kVisible,           // later writer: base is the canonical header length
  };

  // ---- guarded by mu_ (what readers see, and writer bookkeeping) ----
  std::optional<NpyHeader> layout;  // count 0; nullopt until known (.npy only)
  bool layout_declared = false;     // from Create/xattrs: survives a Truncate(0)
  bool header_from_writer = false;  // a writer's header was accepted
  std::string header;               // canonical header with the current count (visible)
  uint64_t frame_bytes = 0;
  uint64_t data_total = 0;  // data bytes in the spool file, incl. a partial frame
  uint64_t complete_frames = 0;
  std::optional<std::string> attr_descr, attr_shape, attr_fortran;  // as set by the user
  uint64_t active_token = 0;                                        // 0: no writer
  uint64_t next_token = 1;
  Coordinates coord = Coordinates::kUndecided;
  uint64_t base = 0;               // writer offset of data byte 0
  uint64_t rewritable_header = 0;  // length of the writer header it may rewrite at 0 (0: none)
  std::string header_buf;          // kCollectingHeader: the writer's bytes so far
  bool removed = false;

  // ---- guarded by io_mu_ (writers only) ----
  std::string tail;       // bytes of the trailing partial frame
  uint32_t crc = 0;       // CRC-32 of the complete frames (verbatim: of every byte)
  bool crc_valid = true;  // false after Resume or for huge frames
  bool dir_synced = false;

  uint64_t header_length() const { return layout ? header.size() : 0; }
  uint64_t visible_data() const { return layout ? complete_frames * frame_bytes : data_total; }
};

GrowingMember::GrowingMember(std::string name, std::string spool_path, UniqueFd fd, SpoolLogFn log)
    : s_(std::make_unique<State>()),
      name_(std::move(name)),
      spool_path_(std::move(spool_path)),
      is_npy_(IsNpyMemberName(name_)),
      fd_(std::move(fd)),
      log_(std::move(log)) {}

GrowingMember::~GrowingMember() = default;

void GrowingMember::Log(const std::string& line) const {
  if (log_) log_(line);
}

// Checks that a layout can grow frame by frame.
static Status CheckGrowable(const NpyHeader& h, const std::string& name) {
  if (h.has_object()) {
    return Status::Error(EINVAL, name + ": object arrays (descr " + h.descr_literal() +
                                     ") are pickles and cannot grow frame by frame");
  }
  if (!h.frameable()) {
    return Status::Error(EINVAL, name + ": a 0-d array has no growth axis and cannot grow");
  }
  if (!h.WithFrameCountChecked(1).ok()) {
    return Status::Error(EINVAL, name + ": a frame of shape " + ShapeText(h.frame_shape()) +
                                     " does not fit in 64 bits");
  }
  if (h.frame_bytes() == 0) {
    return Status::Error(EINVAL, name + ": frames of zero bytes (shape " + ShapeText(h.shape()) +
                                     ") cannot be counted as they grow");
  }
  return Status::Ok();
}

Result<std::shared_ptr<GrowingMember>> GrowingMember::Create(std::string name,
                                                             std::string spool_path,
                                                             std::optional<NpyHeader> declared,
                                                             SpoolLogFn log) {
  if (declared && !IsNpyMemberName(name)) {
    return Status::Error(EINVAL, name + ": a frame layout can only be declared for .npy names");
  }
  if (declared) NPZ_RETURN_IF_ERROR(CheckGrowable(*declared, name));
  NPZ_ASSIGN_OR_RETURN(UniqueFd fd, OpenFile(spool_path, O_RDWR | O_CREAT | O_EXCL, 0644));
  std::shared_ptr<GrowingMember> m(
      new GrowingMember(std::move(name), std::move(spool_path), std::move(fd), std::move(log)));
  if (declared) {
    State& s = *m->s_;
    s.layout = declared->WithFrameCount(0);
    s.layout_declared = true;
    s.frame_bytes = s.layout->frame_bytes();
    s.header = s.layout->Format();
    Status st = PwriteAll(m->fd_.get(), s.header.data(), s.header.size(), 0, m->spool_path_);
    if (!st.ok()) {
      ::unlink(m->spool_path_.c_str());
      return st;
    }
  }
  return m;
}

Result<std::shared_ptr<GrowingMember>> GrowingMember::Resume(std::string name,
                                                             std::string spool_path,
                                                             SpoolLogFn log) {
  NPZ_ASSIGN_OR_RETURN(UniqueFd fd, OpenFile(spool_path, O_RDWR));
  NPZ_ASSIGN_OR_RETURN(uint64_t size, FileSize(fd.get(), spool_path));
  std::shared_ptr<GrowingMember> m(
      new GrowingMember(std::move(name), std::move(spool_path), std::move(fd), std::move(log)));
  State& s = *m->s_;
  const std::string& path = m->spool_path_;
  int f = m->fd_.get();
  if (!m->is_npy_) {
    s.data_total = size;
    s.crc_valid = size == 0;
    return m;
  }
  if (size == 0) return m;  // nothing was written, or only part of a writer's header

  std::string prefix(std::min<uint64_t>(size, 16), '\0');
  NPZ_RETURN_IF_ERROR(PreadExact(f, prefix.data(), prefix.size(), 0, path));
  auto total = NpyHeader::TotalLength(prefix);
  if (!total.ok()) return total.status().WithContext(path + ": not a spool .npy");
  if (*total > size) {
    // Only the header is ever written at offset 0 before data, in one pwrite: a file shorter
    // than its header was cut in that pwrite and holds no data yet.
    m->Log(path + ": header cut short by a crash (" + std::to_string(size) + " of " +
           std::to_string(*total) + " bytes); member " + m->name_ + " restarts empty");
    if (::ftruncate(f, 0) != 0) return ErrnoStatus(errno, path, "ftruncate failed");
    return m;
  }
  std::string header_bytes(*total, '\0');
  NPZ_RETURN_IF_ERROR(PreadExact(f, header_bytes.data(), header_bytes.size(), 0, path));
  NpyParseOptions opts;
  opts.allow_large_header = true;  // we wrote it ourselves
  auto parsed = NpyHeader::Parse(header_bytes, opts);
  if (!parsed.ok()) return parsed.status().WithContext(path);
  NPZ_RETURN_IF_ERROR(CheckGrowable(*parsed, path));
  if (parsed->FormattedLength() != *total) {
    return Status::Error(EINVAL, path + ": header is " + std::to_string(*total) +
                                     " bytes, not the canonical " +
                                     std::to_string(parsed->FormattedLength()));
  }
  const uint64_t fb = parsed->frame_bytes();
  const uint64_t data = size - *total;
  const uint64_t frames = data / fb;
  const uint64_t partial = data % fb;
  if (partial != 0) {
    if (::ftruncate(f, static_cast<off_t>(*total + frames * fb)) != 0) {
      return ErrnoStatus(errno, path, "ftruncate failed");
    }
    m->Log(path + ": dropped " + std::to_string(partial) + " bytes of a partial frame after " +
           std::to_string(frames) + " complete frames (member " + m->name_ + ")");
  }
  NPZ_ASSIGN_OR_RETURN(NpyHeader counted, parsed->WithFrameCountChecked(frames));
  s.layout = parsed->WithFrameCount(0);
  s.frame_bytes = fb;
  s.header = counted.Format();
  s.data_total = frames * fb;
  s.complete_frames = frames;
  s.crc_valid = s.data_total == 0;
  if (s.header != header_bytes) {
    NPZ_RETURN_IF_ERROR(PwriteAll(f, s.header.data(), s.header.size(), 0, path));
  }
  return m;
}

// ---- writers ----

Status GrowingMember::BeginWrite(WriterSession* session, bool append) {
  std::lock_guard lock(mu_);
  State& s = *s_;
  if (s.removed) return Status::Error(ENOENT, name_ + ": member was removed");
  if (s.active_token != 0) {
    return Status::Error(EBUSY, name_ +
                                    ": already open for writing by another handle "
                                    "(one writer per member at a time)");
  }
  s.active_token = s.next_token++;
  s.coord = State::Coordinates::kUndecided;
  s.header_buf.clear();
  session->token = s.active_token;
  session->append = append;
  return Status::Ok();
}

void GrowingMember::EndWrite(WriterSession* session) {
  std::lock_guard io(io_mu_);
  std::lock_guard lock(mu_);
  State& s = *s_;
  if (session->token != 0 && session->token == s.active_token) {
    if (s.coord == State::Coordinates::kCollectingHeader && !s.header_buf.empty()) {
      Log(name_ + ": writer closed after " + std::to_string(s.header_buf.size()) +
          " bytes of an incomplete .npy header; they were dropped");
    }
    s.header_buf.clear();
    s.coord = State::Coordinates::kUndecided;
    s.active_token = 0;
  }
  session->token = 0;
}

Result<size_t> GrowingMember::Write(WriterSession* session, uint64_t offset,
                                    std::span<const std::byte> data) {
  using C = State::Coordinates;
  std::lock_guard io(io_mu_);
  std::unique_lock lock(mu_);
  State& s = *s_;
  if (s.removed) return Status::Error(ENOENT, name_ + ": member was removed");
  if (session->token == 0 || session->token != s.active_token) {
    return Status::Error(EBADF, name_ + ": write through a handle that is not the writer");
  }

  if (s.coord == C::kUndecided) {
    if (data.empty()) return size_t{0};
    const bool fresh = s.data_total == 0 && !s.header_from_writer;
    const bool at_start = session->append || offset == 0;
    const bool magic = at_start && data.size() >= NpyHeader::kMagic.size() &&
                       AsChars(data).substr(0, NpyHeader::kMagic.size()) == NpyHeader::kMagic;
    if (!is_npy_) {
      s.coord = C::kVisible;
      s.base = 0;
      s.rewritable_header = 0;
    } else if (!fresh) {
      s.coord = C::kVisible;
      s.base = s.header_length();
      s.rewritable_header = s.header_length();
    } else if (s.layout && !magic) {
      s.coord = C::kStream;  // declared layout: raw frames from offset 0
      s.base = 0;
      s.rewritable_header = 0;
    } else {
      s.coord = C::kCollectingHeader;
    }
  }

  const uint64_t end =
      s.coord == C::kCollectingHeader ? s.header_buf.size() : s.base + s.data_total;
  const uint64_t at = session->append ? end : offset;
  if (at != end) {
    if (offset == 0 && s.coord != C::kCollectingHeader && s.rewritable_header != 0 &&
        data.size() == s.rewritable_header && s.layout) {
      // A rewrite of the writer's own header in place, e.g. a writer updating its count.
      auto h = NpyHeader::Parse(AsChars(data));
      if (h.ok() && h->SameFrameLayout(*s.layout)) return data.size();
      return Status::Error(EPERM,
                           name_ + ": rewrite of the header at offset 0 " +
                               (h.ok() ? "changes the frame layout"
                                       : "is not a valid header (" + h.status().message() + ")") +
                               "; new members are append-only");
    }
    return Status::Error(EPERM, name_ + ": write at offset " + std::to_string(offset) +
                                    " but the writer is at " + std::to_string(end) +
                                    ": new members are append-only");
  }
  if (data.empty()) return size_t{0};

  if (s.coord == C::kCollectingHeader) {
    std::string buf = s.header_buf;
    buf.append(AsChars(data));
    const size_t m = std::min(buf.size(), NpyHeader::kMagic.size());
    if (std::string_view(buf).substr(0, m) != NpyHeader::kMagic.substr(0, m)) {
      return Status::Error(
          EINVAL, name_ +
                      ": no frame layout: the first bytes written are not a .npy header. "
                      "Write a .npy header first (np.save, cp x.npy), or set the xattrs " +
                      std::string(kDescrAttribute) + " and " + std::string(kShapeAttribute) +
                      " (e.g. '<i2' and '256,1024') before writing, or mount with "
                      "-o frame=PATTERN:DTYPE:SHAPE");
    }
    size_t needed = 0;
    if (buf.size() >= 8) needed = static_cast<unsigned char>(buf[6]) == 1 ? 10 : 12;
    if (needed == 0 || buf.size() < needed) {
      s.header_buf = std::move(buf);
      return data.size();
    }
    auto total = NpyHeader::TotalLength(buf);
    if (!total.ok()) return total.status().WithContext(name_);
    if (*total > kMaxWriterHeaderBytes) {
      return Status::Error(EINVAL, name_ + ": .npy header of " + std::to_string(*total) +
                                       " bytes is longer than numpy's limit");
    }
    if (buf.size() < *total) {
      s.header_buf = std::move(buf);
      return data.size();
    }
    auto parsed = NpyHeader::Parse(std::string_view(buf).substr(0, *total));
    if (!parsed.ok()) return parsed.status().WithContext(name_);
    NPZ_RETURN_IF_ERROR(CheckGrowable(*parsed, name_));
    if (s.layout && s.layout_declared && !parsed->SameFrameLayout(*s.layout)) {
      return Status::Error(
          EINVAL, name_ + ": the header written (descr " + parsed->descr_literal() +
                      ", frame shape " + ShapeText(parsed->frame_shape()) +
                      ") does not match the declared layout (descr " + s.layout->descr_literal() +
                      ", frame shape " + ShapeText(s.layout->frame_shape()) + ")");
    }
    NpyHeader layout = parsed->WithFrameCount(0);
    std::string header = layout.Format();
    const size_t consumed_before = s.header_buf.size();
    lock.unlock();
    // No data yet: the file holds at most an earlier declared header. Replace it.
    NPZ_RETURN_IF_ERROR(PwriteAll(fd_.get(), header.data(), header.size(), 0, spool_path_));
    if (::ftruncate(fd_.get(), static_cast<off_t>(header.size())) != 0) {
      return ErrnoStatus(errno, spool_path_, "ftruncate failed");
    }
    lock.lock();
    s.layout = layout;
    s.frame_bytes = layout.frame_bytes();
    s.header = std::move(header);
    s.header_from_writer = true;
    // The header fixes the whole layout: attributes set before it (a partial declaration,
    // e.g. only user.npy.shape) describe nothing now, and SetAttribute must not combine
    // them with the new layout (setting the descr getfattr shows would fail otherwise).
    s.attr_descr.reset();
    s.attr_shape.reset();
    s.attr_fortran.reset();
    s.coord = C::kStream;
    s.base = *total;
    s.rewritable_header = *total;
    s.header_buf.clear();
    lock.unlock();
    std::string rest = buf.substr(*total);
    if (!rest.empty()) {
      Status st =
          AppendData(std::span(reinterpret_cast<const std::byte*>(rest.data()), rest.size()));
      // The header part of this write was taken: report a short write, so the writer retries
      // the data at the right offset.
      if (!st.ok()) {
        if (*total > consumed_before) return size_t{*total - consumed_before};
        return st;
      }
    }
    return data.size();
  }

  lock.unlock();
  NPZ_RETURN_IF_ERROR(AppendData(data));
  return data.size();
}

// Requires io_mu_ (not mu_). Data first, count second.
Status GrowingMember::AppendData(std::span<const std::byte> data) {
  State& s = *s_;
  uint64_t header_len, total, fb, frames;
  std::optional<NpyHeader> layout;
  {
    std::lock_guard lock(mu_);
    header_len = s.header_length();
    total = s.data_total;
    fb = s.frame_bytes;
    frames = s.complete_frames;
    layout = s.layout;
  }
  if (is_npy_ && !layout) return Status::Error(EINVAL, name_ + ": no frame layout");
  const uint64_t n = data.size();
  if (total > std::numeric_limits<uint64_t>::max() - header_len - n) {
    return Status::Error(EFBIG, name_ + ": member would exceed 2^64 bytes");
  }
  Status st = PwriteAll(fd_.get(), data.data(), n, header_len + total, spool_path_);
  if (!st.ok()) {
    // Cut what a failed pwrite may have added, so Resume never sees it as data.
    if (::ftruncate(fd_.get(), static_cast<off_t>(header_len + total)) != 0) {
      Log(spool_path_ + ": ftruncate after a failed write failed: " + std::strerror(errno));
    }
    return st.WithContext(name_);
  }

  const uint64_t new_total = total + n;
  if (!is_npy_) {
    if (s.crc_valid) s.crc = Crc32(s.crc, data.data(), n);
    std::lock_guard lock(mu_);
    s.data_total = new_total;
    return Status::Ok();
  }

  const uint64_t new_frames = new_total / fb;
  if (s.crc_valid) {
    if (new_frames > frames) {
      const uint64_t newly = (new_frames - frames) * fb;  // bytes that became complete
      const uint64_t from_data = newly - s.tail.size();
      s.crc = Crc32(s.crc, s.tail.data(), s.tail.size());
      s.crc = Crc32(s.crc, data.data(), from_data);
      s.tail.assign(AsChars(data.subspan(from_data)));
    } else {
      s.tail.append(AsChars(data));
    }
    if (fb > kMaxTailBytes) {
      s.crc_valid = false;
      s.tail.clear();
      s.tail.shrink_to_fit();
    }
  }
  std::string header;
  if (new_frames != frames) {
    auto counted = layout->WithFrameCountChecked(new_frames);
    if (!counted.ok()) return counted.status().WithContext(name_);
    header = counted->Format();
  }
  {
    std::lock_guard lock(mu_);
    s.data_total = new_total;
    s.complete_frames = new_frames;
    if (!header.empty()) s.header = header;
  }
  if (!header.empty()) {
    NPZ_RETURN_IF_ERROR(PwriteAll(fd_.get(), header.data(), header.size(), 0, spool_path_));
  }
  return Status::Ok();
}

Status GrowingMember::Fsync() {
  std::lock_guard io(io_mu_);
  NPZ_RETURN_IF_ERROR(FsyncFd(fd_.get(), spool_path_));
  if (!s_->dir_synced) {
    NPZ_RETURN_IF_ERROR(FsyncParentDir(spool_path_));
    s_->dir_synced = true;
  }
  return Status::Ok();
}

Status GrowingMember::Truncate(uint64_t size) {
  std::lock_guard io(io_mu_);
  std::lock_guard lock(mu_);
  State& s = *s_;
  const uint64_t visible = s.header_length() + s.visible_data();
  const uint64_t full = s.header_length() + s.data_total;
  if (size == 0 && s.data_total == 0) {
    // O_TRUNC on a new file, or a writer starting over before any data.
    if (s.layout && !s.layout_declared) {
      if (::ftruncate(fd_.get(), 0) != 0) {
        return ErrnoStatus(errno, spool_path_, "ftruncate failed");
      }
      s.layout.reset();
      s.header.clear();
      s.frame_bytes = 0;
    }
    s.header_from_writer = false;
    s.header_buf.clear();
    s.coord = State::Coordinates::kUndecided;
    return Status::Ok();
  }
  if (size == visible || size == full) return Status::Ok();
  return Status::Error(EPERM, name_ + ": cannot truncate to " + std::to_string(size) +
                                  " bytes (size " + std::to_string(visible) +
                                  "): new members are append-only");
}

Status GrowingMember::CheckRemovable() const {
  std::lock_guard lock(mu_);
  if (s_->data_total > 0) {
    return Status::Error(EPERM, name_ + ": has " + std::to_string(s_->data_total) +
                                    " bytes of data: new members cannot be removed or renamed");
  }
  return Status::Ok();
}

void GrowingMember::MarkRemoved() {
  std::lock_guard lock(mu_);
  s_->removed = true;
}

// ---- attributes ----

Status GrowingMember::SetAttribute(std::string_view attr, std::string_view value) {
  if (attr != kDescrAttribute && attr != kShapeAttribute && attr != kFortranAttribute) {
    return Status::Error(ENOTSUP, name_ + ": unsupported attribute " + std::string(attr));
  }
  if (!is_npy_) {
    return Status::Error(ENOTSUP,
                         name_ + ": " + std::string(attr) + " applies to .npy members only");
  }
  std::lock_guard io(io_mu_);
  std::unique_lock lock(mu_);
  State& s = *s_;
  std::string v(value);
  while (!v.empty() && (v.back() == '\0' || v.back() == '\n')) v.pop_back();  // echo adds \n
  std::optional<std::string> descr = s.attr_descr, shape = s.attr_shape, fortran = s.attr_fortran;
  if (attr == kDescrAttribute) {
    if (v.empty()) return Status::Error(EINVAL, name_ + ": empty " + std::string(attr));
    descr = v;
  } else if (attr == kShapeAttribute) {
    auto parsed = ParseFrameShape(v);
    if (!parsed.ok()) return parsed.status().WithContext(name_);
    shape = v;
  } else {
    auto parsed = ParseBoolText(v);
    if (!parsed.ok()) return parsed.status().WithContext(name_ + ": " + std::string(attr));
    fortran = v;
  }

  // The layout these attributes describe, the missing parts taken from the current layout.
  std::optional<NpyHeader> candidate;
  std::optional<std::string> d = descr;
  std::optional<std::vector<uint64_t>> fs;
  if (shape) fs = *ParseFrameShape(*shape);
  bool fo = fortran ? *ParseBoolText(*fortran) : false;
  if (s.layout) {
    if (!d) d = DescrText(*s.layout);
    if (!fs) fs = s.layout->frame_shape();
    if (!fortran) fo = s.layout->fortran_order();
  }
  if (d && fs) {
    auto h = NpyHeader::ForFrames(*d, *fs, fo, 0);
    if (!h.ok()) return h.status().WithContext(name_ + ": " + std::string(attr));
    NPZ_RETURN_IF_ERROR(CheckGrowable(*h, name_));
    candidate = *h;
  }

  const bool fixed =
      s.data_total > 0 || s.header_from_writer || s.coord == State::Coordinates::kCollectingHeader;
  if (fixed) {
    if (candidate && s.layout && candidate->SameFrameLayout(*s.layout)) {
      s.attr_descr = descr;
      s.attr_shape = shape;
      s.attr_fortran = fortran;
      return Status::Ok();
    }
    if (!candidate && s.layout) {
      return Status::Ok();  // unreachable: a layout fills every missing part
    }
    return Status::Error(EPERM, name_ + ": the frame layout is fixed once data was written; " +
                                    std::string(attr) + " cannot change it");
  }
  if (candidate) {
    std::string header = candidate->Format();
    // The spool file holds only a header (or nothing) before data: replace it.
    NPZ_RETURN_IF_ERROR(PwriteAll(fd_.get(), header.data(), header.size(), 0, spool_path_));
    if (::ftruncate(fd_.get(), static_cast<off_t>(header.size())) != 0) {
      return ErrnoStatus(errno, spool_path_, "ftruncate failed");
    }
    s.layout = candidate;
    s.layout_declared = true;
    s.frame_bytes = candidate->frame_bytes();
    s.header = std::move(header);
    s.complete_frames = 0;
  }
  s.attr_descr = descr;
  s.attr_shape = shape;
  s.attr_fortran = fortran;
  return Status::Ok();
}

Result<std::string> GrowingMember::GetAttribute(std::string_view attr) const {
  std::lock_guard lock(mu_);
  const State& s = *s_;
  if (attr == kDescrAttribute) {
    if (s.layout) return DescrText(*s.layout);
    if (s.attr_descr) return *s.attr_descr;
  } else if (attr == kShapeAttribute) {
    if (s.layout) return ShapeText(s.layout->frame_shape());
    if (s.attr_shape) return ShapeText(*ParseFrameShape(*s.attr_shape));
  } else if (attr == kFortranAttribute) {
    if (s.layout) return std::string(s.layout->fortran_order() ? "1" : "0");
    if (s.attr_fortran) return std::string(*ParseBoolText(*s.attr_fortran) ? "1" : "0");
  }
  return Status::Error(ENODATA, name_ + ": no attribute " + std::string(attr));
}

std::vector<std::string> GrowingMember::ListAttributes() const {
  std::vector<std::string> out;
  for (std::string_view a : {kDescrAttribute, kShapeAttribute, kFortranAttribute}) {
    if (GetAttribute(a).ok()) out.emplace_back(a);
  }
  return out;
}

// ---- readers ----

uint64_t GrowingMember::visible_size() const {
  std::lock_guard lock(mu_);
  return s_->header_length() + s_->visible_data();
}

ReaderSnapshot GrowingMember::TakeSnapshot() const {
  std::lock_guard lock(mu_);
  ReaderSnapshot snap;
  if (s_->layout) snap.header = s_->header;
  snap.size = s_->header_length() + s_->visible_data();
  return snap;
}

Result<size_t> GrowingMember::ReadAt(uint64_t offset, std::span<std::byte> out) const {
  return ReadAt(TakeSnapshot(), offset, out);
}

Result<size_t> GrowingMember::ReadAt(const ReaderSnapshot& snapshot, uint64_t offset,
                                     std::span<std::byte> out) const {
  std::string current_header;
  uint64_t size;
  {
    std::lock_guard lock(mu_);
    size = s_->header_length() + s_->visible_data();
    // A snapshot taken before the layout was known (or before a Truncate(0) reset) has no
    // usable header: serve the current one.
    if (s_->layout && snapshot.header.size() != s_->header.size()) current_header = s_->header;
  }
  const std::string& header = current_header.empty() ? snapshot.header : current_header;
  if (offset >= size || out.empty()) return size_t{0};
  const size_t n = static_cast<size_t>(std::min<uint64_t>(out.size(), size - offset));
  size_t done = 0;
  if (offset < header.size()) {
    done = std::min<size_t>(n, header.size() - offset);
    std::memcpy(out.data(), header.data() + offset, done);
  }
  if (done < n) {
    NPZ_RETURN_IF_ERROR(
        PreadExact(fd_.get(), out.data() + done, n - done, offset + done, spool_path_));
  }
  return n;
}

// ---- state ----

std::optional<NpyHeader> GrowingMember::layout() const {
  std::lock_guard lock(mu_);
  return s_->layout;
}

uint64_t GrowingMember::frame_count() const {
  std::lock_guard lock(mu_);
  return s_->complete_frames;
}

uint64_t GrowingMember::data_bytes() const {
  std::lock_guard lock(mu_);
  return s_->data_total;
}

Result<FinalizedMemberData> GrowingMember::PrepareFinalize() {
  std::lock_guard io(io_mu_);
  std::lock_guard lock(mu_);
  const State& s = *s_;
  FinalizedMemberData f;
  f.name = name_;
  f.fd = fd_.get();
  if (!is_npy_) {
    f.data_offset = 0;
    f.data_length = s.data_total;
    if (s.crc_valid) f.crc32 = s.crc;
    return f;
  }
  if (!s.layout) {
    f.has_layout = false;
    if (!s.header_buf.empty()) f.dropped_partial_bytes = s.header_buf.size();
    return f;
  }
  NPZ_ASSIGN_OR_RETURN(NpyHeader counted, s.layout->WithFrameCountChecked(s.complete_frames));
  f.header = counted.Format();
  f.data_offset = f.header.size();
  f.data_length = s.complete_frames * s.frame_bytes;
  f.dropped_partial_bytes = s.data_total - f.data_length;
  if (f.dropped_partial_bytes > 0) {
    Log(name_ + ": dropped " + std::to_string(f.dropped_partial_bytes) +
        " bytes of a partial trailing frame at finalize (" + std::to_string(s.complete_frames) +
        " complete frames kept)");
  }
  if (s.crc_valid) {
    uint32_t header_crc = Crc32(0, f.header.data(), f.header.size());
    f.crc32 = static_cast<uint32_t>(
        ::crc32_combine64(header_crc, s.crc, static_cast<z_off64_t>(f.data_length)));
  }
  return f;
}

}  // namespace npzfs
