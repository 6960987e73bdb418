// GrowingMember: an append-only .npy (or verbatim file) that readers can open while it grows.
//
// Design
// ------
// The spool file has exactly the bytes a reader would see if every byte received were
// visible: the canonical header, then the data. Three consequences drive the design:
//  * A visible offset is the spool-file offset of the same byte, so ReadAt is one pread and
//    finalize hands AppendToArchive a plain file range (copied as it is, with no CRC pass over
//    it when the running CRC is known).
//  * The spool file is a valid .npy at every instant (its header never counts more frames
//    than follow it), so a SIGKILLed daemon leaves something np.load can read, and Resume only
//    has to recount frames from the file size and cut a partial tail.
//  * The writer's own header (np.save, cp) is never stored: its count is meaningless while
//    the file grows and its length may differ from the canonical one (older numpy pads to 16
//    bytes, not 64). We keep its length H_w and map the writer's stream offset o >= H_w to data
//    offset o - H_w.
// Rejected alternatives: storing the writer's raw stream and translating on read (Resume
// would need H_w from somewhere, and the spool file would not be a .npy); letting the kernel
// page cache hold written bytes (the kernel caches a write at the writer's offset, which is
// not the visible offset of the same byte; hence writer handles use direct_io in the daemon).
//
// What readers see is published in one short critical section after the data is on its way
// to disk: the header string (with the count of complete frames) and the visible size move
// together, so a reader never sees a count its size cannot hold. The header is served from
// memory; a trailing partial frame is simply beyond the visible size until it completes.
// The count is rewritten in the spool file after that publication, so once the frames are
// published the write has succeeded: a failed rewrite only leaves the header on disk behind
// (header_stale, retried later; see the header file).
// Data bytes below the visible size never change again, so a read of the data region can be
// answered as a splice straight from the spool file (Read); the header region of the spool
// file is rewritten as the count grows, so it is never spliced.
//
// Early acknowledgement: a FUSE write is synchronous (the writer waits for the reply), and
// the pwrite into the spool file was most of the daemon's time on that path, while the
// writer sat idle. Write therefore lets its caller acknowledge a data write once every check
// has passed, just before the pwrite (WriteAcceptedFn): the writer's next write is read from
// /dev/fuse by another daemon thread meanwhile and waits for io_mu_. What that costs, and
// how it is kept honest: readers (and unlink's check) wait until every write acknowledged
// before they came is published or has failed (State::settled_seq), so no reader sees less
// than a returned write(); a pwrite that fails after the reply is kept in
// the writer's session and returned by its next Write, Fsync and close (the writer believes
// the bytes written, so nothing it sends later can be placed right); and a daemon killed in
// between loses that one write, which the durability contract allows (fsync, not write,
// makes frames survive a crash). Rejected: copying the request into a queue for a writer
// thread (a copy more per byte, and a queue to bound), and splicing /dev/fuse into the spool
// file (the kernel still copies pipe pages into the page cache, and the running CRC-32 would
// need the bytes read back).
//
// A rename keeps the object (MoveTo): the spool file is renamed and the name changed in
// place, under both locks, so the daemon's inode table and open handles never hold a
// member that a rename replaced.
//
// Every change of layout goes through State::SetLayout, which starts a new layout
// generation; a reader's snapshot records its generation, and Read serves the snapshot's
// header only in the same generation. (Its length cannot tell: two layouts' canonical
// headers often have the same length, e.g. '<u2' and '<i2' frames of one shape.)
//
// Locking: io_mu_ serialises everything that writes (Write, Truncate, SetAttribute, Fsync,
// MoveTo, PrepareFinalize) and guards the write-only state (tail, running CRC). mu_ guards
// what readers look at (layout, header, sizes, the name) and the writer bookkeeping; it is
// never held across a data pwrite, only across the single header pwrite of SetAttribute and
// the rename(2) of MoveTo. Lock order: io_mu_
// then mu_. Data pwrites happen without mu_: the region beyond the visible size is written by
// the one writer holding io_mu_ and read by nobody.
//
// Writer coordinates: the first writer of a member that has received nothing writes in its
// own stream (header first, or raw frames at 0 for a declared layout). Every later writer (the
// first closed, or the daemon resumed) writes in visible coordinates: the canonical header
// length plus every data byte, including a held-back partial frame; on a member whose layout
// did not come from a writer's header (declared, or resumed) a later writer may also go on in
// raw coordinates (its first write at the number of data bytes: a recorder of raw frames
// resuming where it stopped, `dd seek=N conv=notrunc`). And a write at the end in visible
// coordinates always continues the member, whatever coordinates the writer started in: a
// program that seeks to the end (lseek SEEK_END, or stat's size) writes there, and the
// header it sees is the canonical one, not its own (np.save's 80-byte header of old numpy,
// raw frames with a declared 128-byte header). Other offsets are EPERM: an overwrite or a gap
// in the writer's coordinates (raw coordinates make a raw writer's offset 800 the append
// point even where the visible file has data at 800: that is the raw contract).
#include "core/write/growing_member.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "core/base/crc32.h"
#include "core/npy/npy_file.h"

namespace npzfs {
namespace {

// A writer's header longer than this is refused before it is buffered.
constexpr size_t kMaxWriterHeaderBytes = NpyHeader::kMaxHeaderChars + 128;
// How far ahead of the writer the spool file's blocks are allocated (see Preallocate).
constexpr uint64_t kPreallocateAheadBytes = 16 << 20;
// Bytes of a .npy prefix that announce the header length: 10 for version 1.0, 12 for 2.0/3.0.
constexpr size_t kVersionByte = 6;
constexpr size_t kV1LengthPrefix = 10;
constexpr size_t kV2LengthPrefix = 12;

std::string_view AsChars(std::span<const std::byte> data) {
  return {reinterpret_cast<const char*>(data.data()), data.size()};
}

// For the start of a .npy header: nullopt unless `prefix` begins as the magic string does;
// else how many bytes must be there before the header's length can be read (12 while the
// version byte is not there yet).
std::optional<size_t> LengthPrefixNeeded(std::string_view prefix) {
  const size_t m = std::min(prefix.size(), NpyHeader::kMagic.size());
  if (prefix.substr(0, m) != NpyHeader::kMagic.substr(0, m)) return std::nullopt;
  const bool v1 =
      prefix.size() > kVersionByte && static_cast<unsigned char>(prefix[kVersionByte]) == 1;
  return v1 ? kV1LengthPrefix : kV2LengthPrefix;
}

Result<bool> ParseBoolText(std::string_view text) {
  if (text == "1" || text == "true" || text == "True") return true;
  if (text == "0" || text == "false" || text == "False") return false;
  return Status::Error(EINVAL, "'" + std::string(text) + "' is not a boolean (use 0 or 1)");
}

std::string NoLayoutMessage(const std::string& name) {
  return name +
         ": no frame layout: the first bytes written are not a .npy header. Write a .npy "
         "header first (np.save, cp x.npy), or set the xattrs " +
         std::string(kDescrAttribute) + " and " + std::string(kShapeAttribute) +
         " (e.g. '<i2' and '256x1024') before writing, or mount with "
         "-o frame=PATTERN:DTYPE:SHAPE";
}

// One reader handle (GrowingMember::OpenReader): the member plus the snapshot it opened with.
class GrowingReader : public MemberReader {
 public:
  GrowingReader(std::shared_ptr<const GrowingMember> member, GrowingView view)
      : member_(std::move(member)), view_(view), snapshot_(member_->TakeSnapshot()) {}

  uint64_t size() const override { return member_->visible_size(); }
  Result<size_t> ReadAt(uint64_t offset, std::span<std::byte> dest) override {
    if (view_ == GrowingView::kLive) return member_->ReadAt(offset, dest);
    return member_->ReadAt(snapshot_, offset, dest);
  }
  Result<ReadAnswer> Read(uint64_t offset, std::span<std::byte> dest) override {
    if (view_ == GrowingView::kLive) return member_->Read(member_->TakeSnapshot(), offset, dest);
    return member_->Read(snapshot_, offset, dest);
  }

 private:
  const std::shared_ptr<const GrowingMember> member_;
  const GrowingView view_;
  const ReaderSnapshot snapshot_;  // immutable after construction: shared by threads
};

}  // namespace

struct GrowingMember::State {
  enum class Coordinates {
    kUndecided,         // the active writer has not written yet
    kCollectingHeader,  // buffering a writer's .npy header (header_buf)
    kStream,            // data byte 0 is at writer offset `base` (first writer)
    kVisible,           // later writer: base is the canonical header length
  };

  // ---- guarded by mu_ (what readers see, and writer bookkeeping) ----
  std::optional<NpyHeader> layout;  // count 0; nullopt until known (.npy only)
  uint64_t layout_generation = 0;   // changes with the layout (SetLayout); never goes back
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
  // Writes acknowledged early (AppendData), and those of them settled: published, or failed.
  // A reader waits until every write acknowledged before it came is settled (not for later
  // ones: a writer that never pauses would keep it waiting).
  uint64_t acknowledged_seq = 0;
  uint64_t settled_seq = 0;

  // ---- guarded by io_mu_ (writers only) ----
  uint32_t crc = 0;         // CRC-32 of the complete frames (verbatim: of every byte)
  uint32_t tail_crc = 0;    // CRC-32 of the complete frames and the partial frame after them
  uint64_t tail_bytes = 0;  // bytes of that partial frame
  bool crc_valid = true;    // false after Resume (finalize computes the CRC-32 then)
  bool dir_synced = false;
  // The spool file's header counts fewer frames than `header`: its rewrite failed after the
  // frames were published (RewriteCount retries it).
  bool header_stale = false;
  // Blocks of the spool file are allocated up to here (a hint: every ftruncate frees them,
  // and a wrong value only costs speed). See Preallocate.
  uint64_t preallocated_end = 0;
  bool preallocate = true;  // false once fallocate failed (not supported, or no space)

  uint64_t header_length() const { return layout ? header.size() : 0; }
  uint64_t visible_data() const { return layout ? complete_frames * frame_bytes : data_total; }
  uint64_t visible_size() const { return header_length() + visible_data(); }
  // Replaces the layout (nullopt: forgets it) and the header (count 0), in a new generation.
  void SetLayout(const std::optional<NpyHeader>& new_layout) {
    layout = new_layout ? std::optional(new_layout->WithFrameCount(0)) : std::nullopt;
    frame_bytes = layout ? layout->frame_bytes() : 0;
    header = layout ? layout->Format() : std::string();
    ++layout_generation;
  }
  // Forgets the content (a member that changed kind on a rename starts empty); the writer
  // session survives, and the layout generation moves on.
  void ResetContent() {
    const uint64_t active = active_token, next = next_token, generation = layout_generation;
    *this = State();
    active_token = active;
    next_token = next;
    layout_generation = generation;
    SetLayout(std::nullopt);
  }
};

GrowingMember::GrowingMember(std::string name, std::string spool_path, UniqueFd fd, SpoolLogFn log,
                             HeaderWriteFn write_header)
    : s_(std::make_unique<State>()),
      name_(std::move(name)),
      spool_path_(std::move(spool_path)),
      is_npy_(IsNpyName(name_)),
      fd_(std::move(fd)),
      log_(std::move(log)),
      write_header_(std::move(write_header)) {}

GrowingMember::~GrowingMember() = default;

void GrowingMember::Log(const std::string& line) const {
  if (log_) log_(line);
}

std::string GrowingMember::name() const {
  std::lock_guard lock(mu_);
  return name_;
}

std::string GrowingMember::spool_path() const {
  std::lock_guard lock(mu_);
  return spool_path_;
}

bool GrowingMember::is_npy() const {
  std::lock_guard lock(mu_);
  return is_npy_;
}

// Replaces the spool file's content by `header` alone: only while it holds no data (io_mu_).
// Emptied first: a crash (or a failure) in between leaves an empty file or a prefix of the
// new header, which Resume restarts empty. Writing over the old header first would leave,
// were the new one shorter, the old one's tail behind it, which Resume would count as data.
Status GrowingMember::WriteHeaderOnly(const std::string& header) const {
  if (::ftruncate(fd_.get(), 0) != 0) return ErrnoStatus(errno, spool_path_, "ftruncate failed");
  return PwriteAll(fd_.get(), header.data(), header.size(), 0, spool_path_);
}

Result<std::shared_ptr<GrowingMember>> GrowingMember::Create(std::string name,
                                                             std::string spool_path,
                                                             std::optional<NpyHeader> declared,
                                                             SpoolLogFn log,
                                                             HeaderWriteFn write_header) {
  if (declared && !IsNpyName(name)) {
    return Status::Error(EINVAL, name + ": a frame layout can only be declared for .npy names");
  }
  if (declared) NPZ_RETURN_IF_ERROR(CheckGrowable(*declared, name));
  NPZ_ASSIGN_OR_RETURN(UniqueFd fd, OpenFile(spool_path, O_RDWR | O_CREAT | O_EXCL, 0644));
  std::shared_ptr<GrowingMember> m(new GrowingMember(std::move(name), std::move(spool_path),
                                                     std::move(fd), std::move(log),
                                                     std::move(write_header)));
  if (declared) {
    State& s = *m->s_;
    s.SetLayout(*declared);
    s.layout_declared = true;
    Status st = m->WriteHeaderOnly(s.header);
    if (!st.ok()) {
      ::unlink(m->spool_path_.c_str());
      return st;
    }
  }
  return m;
}

Result<std::shared_ptr<GrowingMember>> GrowingMember::Resume(std::string name,
                                                             std::string spool_path, SpoolLogFn log,
                                                             HeaderWriteFn write_header) {
  NPZ_ASSIGN_OR_RETURN(UniqueFd fd, OpenFile(spool_path, O_RDWR));
  NPZ_ASSIGN_OR_RETURN(uint64_t size, FileSize(fd.get(), spool_path));
  std::shared_ptr<GrowingMember> m(new GrowingMember(std::move(name), std::move(spool_path),
                                                     std::move(fd), std::move(log),
                                                     std::move(write_header)));
  State& s = *m->s_;
  const std::string& path = m->spool_path_;
  const int f = m->fd_.get();
  if (!m->is_npy_) {
    s.data_total = size;
    s.crc_valid = size == 0;
    return m;
  }
  if (size == 0) return m;  // nothing was written, or only part of a writer's header

  // A header cut short even before its length field is complete (a few bytes of the magic
  // and version) cannot tell its length, but it is cut short all the same.
  std::string prefix(static_cast<size_t>(std::min<uint64_t>(size, kV2LengthPrefix)), '\0');
  NPZ_RETURN_IF_ERROR(PreadExact(f, prefix.data(), prefix.size(), 0, path));
  const std::optional<size_t> needed = LengthPrefixNeeded(prefix);
  size_t total = 0;
  if (needed.has_value() && size < *needed) {
    total = *needed;  // a lower bound, enough to take the branch below
  } else {
    NPZ_ASSIGN_OR_RETURN(total, ReadNpyHeaderLength(f, size, path));
  }
  if (total > size) {
    // Only the header is ever written at offset 0 before data, in one pwrite: a file shorter
    // than its header was cut in that pwrite and holds no data yet.
    m->Log(path + ": header cut short by a crash (" + std::to_string(size) + " of " +
           std::to_string(total) + " bytes); member " + m->name_ + " restarts empty");
    if (::ftruncate(f, 0) != 0) return ErrnoStatus(errno, path, "ftruncate failed");
    return m;
  }
  NpyParseOptions trusted;
  trusted.allow_large_header = true;  // we wrote it ourselves
  NPZ_ASSIGN_OR_RETURN(ParsedNpyHeader parsed, ReadNpyFileHeader(f, size, path, trusted));
  if (!CheckGrowable(parsed.header, path).ok()) {
    // Never a header this module wrote: a writer's array that cannot grow, kept verbatim
    // (KeepVerbatim).
    m->is_npy_ = false;
    s.data_total = size;
    s.crc_valid = false;
    return m;
  }
  if (parsed.header.FormattedLength() != parsed.length) {
    return Status::Error(EINVAL, path + ": header is " + std::to_string(parsed.length) +
                                     " bytes, not the canonical " +
                                     std::to_string(parsed.header.FormattedLength()));
  }
  NPZ_ASSIGN_OR_RETURN(NpyRepair repair, RepairNpyFile(f, parsed, size, path));
  if (repair.dropped_bytes != 0) {
    m->Log(path + ": dropped " + std::to_string(repair.dropped_bytes) +
           " bytes of a partial frame after " + std::to_string(repair.frames) +
           " complete frames (member " + m->name_ + ")");
  }
  s.SetLayout(parsed.header);
  s.header = repair.header.Format();
  s.data_total = repair.frames * s.frame_bytes;
  s.complete_frames = repair.frames;
  s.crc_valid = s.data_total == 0;
  return m;
}

// ---- writers ----

Status GrowingMember::BeginWrite(WriterSession* session, bool append,
                                 std::chrono::milliseconds wait_for_release) {
  std::unique_lock lock(mu_);
  State& s = *s_;
  session_ended_.wait_for(lock, wait_for_release, [&] { return s.active_token == 0 || s.removed; });
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
  session->lost_write = Status::Ok();
  return Status::Ok();
}

void GrowingMember::EndWrite(WriterSession* session) {
  std::lock_guard io(io_mu_);
  std::unique_lock lock(mu_);
  State& s = *s_;
  const bool was_writer = session->token != 0 && session->token == s.active_token;
  if (was_writer) {
    if (s.coord == State::Coordinates::kCollectingHeader && !s.header_buf.empty()) {
      Log(name_ + ": writer closed after " + std::to_string(s.header_buf.size()) +
          " bytes of an incomplete .npy header; they were dropped");
    }
    s.header_buf.clear();
    s.coord = State::Coordinates::kUndecided;
    s.active_token = 0;
    session_ended_.notify_all();
  }
  session->token = 0;
  lock.unlock();
  // Under io_mu_ only, so readers never wait for the ftruncate; a next writer's first
  // write waits for io_mu_.
  if (was_writer && s.preallocated_end != 0) GiveBackPreallocation(s);
  if (s.header_stale) (void)RewriteCount();  // logged by RewriteCount
}

// The coordinates of a writer's first non-empty write (see the essay). Requires both locks.
void GrowingMember::ChooseCoordinates(State& s, const WriterSession& session, uint64_t offset,
                                      std::span<const std::byte> data) const {
  using C = State::Coordinates;
  const bool fresh = s.data_total == 0 && !s.header_from_writer;
  const bool at_start = session.append || offset == 0;
  const bool magic = at_start && data.size() >= NpyHeader::kMagic.size() &&
                     AsChars(data).substr(0, NpyHeader::kMagic.size()) == NpyHeader::kMagic;
  if (!is_npy_) {
    s.coord = C::kVisible;
    s.base = 0;
    s.rewritable_header = 0;
  } else if (!fresh) {
    // A raw writer resuming at its own end (never a header-first member's writer: np.save's
    // offsets are visible ones).
    const bool raw_resume =
        s.layout && !s.header_from_writer && !session.append && offset == s.data_total;
    s.coord = raw_resume ? C::kStream : C::kVisible;
    s.base = raw_resume ? 0 : s.header_length();
    s.rewritable_header = raw_resume ? 0 : s.header_length();
  } else if (s.layout && !magic) {
    s.coord = C::kStream;  // declared layout: raw frames from offset 0
    s.base = 0;
    s.rewritable_header = 0;
  } else {
    s.coord = C::kCollectingHeader;
  }
}

// Places a write at `offset`: `false` when it continues the writer's stream (a write at the
// member's end in visible coordinates does too, and moves the writer's base there: see the
// essay); `true` for a same-length rewrite of the writer's own header with the same layout,
// accepted and ignored (done); EPERM for any other write elsewhere. Requires both locks.
Result<bool> GrowingMember::PlaceWrite(State& s, const WriterSession& session, uint64_t offset,
                                       std::span<const std::byte> data) const {
  using C = State::Coordinates;
  const uint64_t end =
      s.coord == C::kCollectingHeader ? s.header_buf.size() : s.base + s.data_total;
  const uint64_t at = session.append ? end : offset;
  if (at == end) return false;
  const uint64_t visible_end = s.header_length() + s.data_total;
  if (s.coord != C::kCollectingHeader && s.layout && offset == visible_end) {
    s.coord = C::kVisible;
    s.base = s.header_length();
    return false;
  }
  if (offset == 0 && s.coord != C::kCollectingHeader && s.rewritable_header != 0 &&
      data.size() == s.rewritable_header && s.layout) {
    auto h = NpyHeader::Parse(AsChars(data));
    if (h.ok() && h->SameFrameLayout(*s.layout)) return true;
    return Status::Error(EPERM,
                         name_ + ": rewrite of the header at offset 0 " +
                             (h.ok() ? "changes the frame layout"
                                     : "is not a valid header (" + h.status().message() + ")") +
                             "; new members are append-only");
  }
  // The size shown ends at the last complete frame: a writer that seeks there would write
  // over the partial frame.
  const uint64_t partial = s.layout ? s.data_total - s.complete_frames * s.frame_bytes : 0;
  if (partial != 0 && (offset + partial == end || offset + partial == visible_end)) {
    return Status::Error(
        EPERM, name_ + ": write at offset " + std::to_string(offset) +
                   ", the end of the last complete frame, but the " + std::to_string(partial) +
                   " bytes of an incomplete frame written before follow it (the size shown "
                   "leaves them out): continue at offset " +
                   std::to_string(end) + ", or open with O_APPEND; new members are append-only");
  }
  return Status::Error(EPERM, name_ + ": write at offset " + std::to_string(offset) +
                                  " but the writer is at " + std::to_string(end) +
                                  ": new members are append-only");
}

Result<size_t> GrowingMember::Write(WriterSession* session, uint64_t offset,
                                    std::span<const std::byte> data,
                                    const WriteAcceptedFn& accepted) {
  std::lock_guard io(io_mu_);
  if (!session->lost_write.ok()) return session->lost_write;
  std::unique_lock lock(mu_);
  State& s = *s_;
  if (s.removed) return Status::Error(ENOENT, name_ + ": member was removed");
  if (session->token == 0 || session->token != s.active_token) {
    return Status::Error(EBADF, name_ + ": write through a handle that is not the writer");
  }
  if (s.coord == State::Coordinates::kUndecided) {
    if (data.empty()) return size_t{0};
    ChooseCoordinates(s, *session, offset, data);
  }
  NPZ_ASSIGN_OR_RETURN(bool rewrite, PlaceWrite(s, *session, offset, data));
  if (rewrite) return data.size();
  if (data.empty()) return size_t{0};
  if (s.coord == State::Coordinates::kCollectingHeader) return CollectHeader(lock, data);
  lock.unlock();
  bool acknowledged = false;
  Status st = AppendData(data, accepted, &acknowledged);
  if (!st.ok() && acknowledged) {
    Log("a write of " + std::to_string(data.size()) + " bytes at offset " + std::to_string(offset) +
        " was acknowledged, then failed (" + st.message() +
        "): this writer's later writes, fsync and close fail; the member keeps what was "
        "written before it");
    session->lost_write =
        Status::Error(st.code(), name_ +
                                     ": an earlier write to this file was acknowledged, then "
                                     "failed (" +
                                     std::strerror(st.code()) +
                                     "): reopen it in append mode to go on from the frames it "
                                     "holds");
    return session->lost_write;
  }
  NPZ_RETURN_IF_ERROR(st);
  return data.size();
}

Status GrowingMember::WriterStatus(const WriterSession* session) const {
  std::lock_guard io(io_mu_);
  return session->lost_write;
}

// kCollectingHeader: buffers the writer's .npy header until it is complete, then adopts it
// and appends the data that followed it in the same write. Requires io_mu_ and `lock` (mu_),
// which it releases once the header is adopted.
Result<size_t> GrowingMember::CollectHeader(std::unique_lock<std::mutex>& lock,
                                            std::span<const std::byte> data) {
  State& s = *s_;
  std::string buf = s.header_buf;
  buf.append(AsChars(data));
  const std::optional<size_t> needed = LengthPrefixNeeded(buf);
  if (!needed.has_value()) return Status::Error(EINVAL, NoLayoutMessage(name_));
  auto total = buf.size() < *needed ? Result<size_t>(size_t{0}) : NpyHeader::TotalLength(buf);
  if (!total.ok()) return total.status().WithContext(name_);
  if (*total > kMaxWriterHeaderBytes) {
    return Status::Error(EINVAL, name_ + ": .npy header of " + std::to_string(*total) +
                                     " bytes is longer than numpy's limit of " +
                                     std::to_string(NpyHeader::kMaxHeaderChars) +
                                     " characters (np.load refuses it without max_header_size)");
  }
  if (*total == 0 || buf.size() < *total) {
    s.header_buf = std::move(buf);  // not complete yet
    return data.size();
  }
  auto parsed = NpyHeader::Parse(std::string_view(buf).substr(0, *total));
  if (!parsed.ok()) {
    return parsed.status().WithContext(
        name_ +
        ": the bytes written begin with the .npy magic string but are not a valid "
        ".npy header" +
        (s.layout_declared ? " (raw frames of a declared layout must not begin with it)" : ""));
  }
  if (Status growable = CheckGrowable(*parsed, name_); !growable.ok()) {
    if (s.layout_declared) return growable;
    return KeepVerbatim(lock, std::move(buf), growable, data.size());
  }
  if (s.layout && s.layout_declared && !parsed->SameFrameLayout(*s.layout)) {
    return Status::Error(EINVAL, name_ + ": the header written (descr " + parsed->descr_literal() +
                                     ", frame shape " + ShapeText(parsed->frame_shape()) +
                                     ") does not match the declared layout (descr " +
                                     s.layout->descr_literal() + ", frame shape " +
                                     ShapeText(s.layout->frame_shape()) + ")");
  }
  const size_t consumed_before = s.header_buf.size();
  NPZ_RETURN_IF_ERROR(AdoptWriterHeader(lock, *parsed, *total));
  const std::string rest = buf.substr(*total);
  if (!rest.empty()) {
    Status st = AppendData(std::span(reinterpret_cast<const std::byte*>(rest.data()), rest.size()));
    // The header part of this write was taken: report a short write, so the writer retries
    // the data at the right offset.
    if (!st.ok()) {
      if (*total > consumed_before) return size_t{*total - consumed_before};
      return st;
    }
  }
  return data.size();
}

// A complete .npy header whose array cannot grow frame by frame (a 0-d array, frames of zero
// bytes, an object array's pickle: np.save writes them too) makes the member verbatim: the
// writer's bytes are kept as written, its header included, and readers see them as they
// arrive (a whole array once the writer is done). `stream` is the writer's stream so far
// (the buffered header bytes and this write's). Requires io_mu_ and `lock` (mu_), which it
// releases. On a failed append the member is left collecting the header, as before (with no
// layout: an undeclared one is forgotten either way).
Result<size_t> GrowingMember::KeepVerbatim(std::unique_lock<std::mutex>& lock, std::string stream,
                                           const Status& why, size_t write_size) {
  State& s = *s_;
  std::string buffered = std::move(s.header_buf);
  s.header_buf.clear();
  // A layout known without a declaration (a resumed header-only member) is forgotten, as a
  // writer's new header replaces it (AdoptWriterHeader): the spool file holds no data yet.
  const bool had_layout = s.layout.has_value();
  if (had_layout) s.SetLayout(std::nullopt);
  is_npy_ = false;
  s.coord = State::Coordinates::kVisible;
  s.base = 0;
  s.rewritable_header = 0;
  lock.unlock();
  Status st = had_layout ? WriteHeaderOnly("") : Status::Ok();
  if (st.ok()) {
    st = AppendData(std::span(reinterpret_cast<const std::byte*>(stream.data()), stream.size()));
  }
  if (!st.ok()) {
    lock.lock();
    is_npy_ = true;
    s.header_buf = std::move(buffered);
    s.coord = State::Coordinates::kCollectingHeader;
    return st;
  }
  Log(why.message() + "; the file is kept verbatim, as written");
  return write_size;
}

// Makes a writer's header (of `writer_length` bytes in its stream) the member's layout: the
// spool file gets the canonical header. Requires io_mu_ and `lock`; returns with it released.
Status GrowingMember::AdoptWriterHeader(std::unique_lock<std::mutex>& lock, const NpyHeader& parsed,
                                        size_t writer_length) {
  State& s = *s_;
  NpyHeader layout = parsed.WithFrameCount(0);
  std::string header = layout.Format();
  lock.unlock();
  // No data yet: the file holds at most an earlier declared header. Replace it.
  NPZ_RETURN_IF_ERROR(WriteHeaderOnly(header));
  lock.lock();
  s.SetLayout(layout);
  s.header_from_writer = true;
  // The header fixes the whole layout: attributes set before it (a partial declaration,
  // e.g. only user.npy.shape) describe nothing now, and SetAttribute must not combine them
  // with the new layout (setting the descr getfattr shows would fail with EPERM otherwise).
  s.attr_descr.reset();
  s.attr_shape.reset();
  s.attr_fortran.reset();
  s.coord = State::Coordinates::kStream;
  s.base = writer_length;
  s.rewritable_header = writer_length;
  s.header_buf.clear();
  lock.unlock();
  return Status::Ok();
}

// Folds `data` (just written behind `frames_before` complete frames) into the running CRC-32
// of the complete frames. CRC-32 runs in order, so the partial frame needs no buffer: its
// bytes extend tail_crc, and the CRC-32 at a frame boundary is taken on the way. Appends
// never change written bytes, so the partial frame's CRC stays right. Requires io_mu_.
void GrowingMember::TrackCrc(State& s, std::span<const std::byte> data, uint64_t frames_before,
                             uint64_t frames_after, uint64_t frame_bytes) {
  if (!s.crc_valid) return;
  if (frames_after > frames_before) {
    const uint64_t newly = (frames_after - frames_before) * frame_bytes;  // became complete
    const uint64_t from_data = newly - s.tail_bytes;
    s.crc = Crc32(s.tail_crc, data.data(), from_data);
    s.tail_crc = Crc32(s.crc, data.data() + from_data, data.size() - from_data);
    s.tail_bytes = data.size() - from_data;
  } else {
    s.tail_crc = Crc32(s.tail_crc, data.data(), data.size());
    s.tail_bytes += data.size();
  }
}

// Allocates the spool file's blocks ahead of a writer that reaches `end`: as far again as
// the file already holds, at most kPreallocateAheadBytes, beyond the file's size
// (FALLOC_FL_KEEP_SIZE: readers, Resume and finalize never see them). On ext4 a buffered
// write into allocated blocks skips the delayed-allocation bookkeeping of each write (block
// reservation, quota, extent status): a dd of 1 GiB into a preallocated file took 140 ms
// against 215 ms, and the daemon's pwrite is on the writer's path (FUSE writes are
// synchronous). Small members preallocate no more than they hold, and EndWrite gives back
// what the writer did not use. A failure (a filesystem without fallocate, no space left:
// ext4 may then keep part of the range) gives back everything beyond the file's size at
// once and stops it for this member, so the write gets the filesystem's own answer with
// every free block available to it. Requires io_mu_.
void GrowingMember::Preallocate(State& s, uint64_t end) {
  if (!s.preallocate || end <= s.preallocated_end) return;
  const uint64_t target = end + std::min(end, kPreallocateAheadBytes);
  const uint64_t from = s.preallocated_end;
  if (target > static_cast<uint64_t>(std::numeric_limits<off_t>::max()) ||
      ::fallocate(fd_.get(), FALLOC_FL_KEEP_SIZE, static_cast<off_t>(from),
                  static_cast<off_t>(target - from)) != 0) {
    s.preallocate = false;
    GiveBackPreallocation(s);
    return;
  }
  s.preallocated_end = target;
}

// Gives back blocks allocated beyond the file's size (ftruncate to the same size frees
// them, checked on ext4 and tmpfs; the size does not change under io_mu_). Requires io_mu_.
void GrowingMember::GiveBackPreallocation(State& s) {
  s.preallocated_end = 0;
  struct stat st;
  if (::fstat(fd_.get(), &st) != 0 || ::ftruncate(fd_.get(), st.st_size) != 0) {
    Log(spool_path_ +
        ": could not give back the blocks allocated ahead of the writer: " + std::strerror(errno));
  }
}

// Requires io_mu_ (not mu_). Data first, count second.
Status GrowingMember::AppendData(std::span<const std::byte> data, const WriteAcceptedFn& accepted,
                                 bool* acknowledged) {
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
  // Every check before the pwrite, so that an acknowledged write fails only by its I/O.
  const uint64_t new_total = total + n;
  const uint64_t new_frames = is_npy_ ? new_total / fb : 0;
  std::string header;
  if (is_npy_ && new_frames != frames) {
    auto counted = layout->WithFrameCountChecked(new_frames);
    if (!counted.ok()) return counted.status().WithContext(name_);
    header = counted->Format();
  }
  // Settles an acknowledged write for the readers waiting for it: where its frames are
  // published (Locked under mu_, then Notify), or else when AppendData returns or unwinds.
  struct Settle {
    GrowingMember* self;
    uint64_t seq = 0;  // 0: nothing to settle
    void Locked(State& st) const {
      if (seq != 0) st.settled_seq = seq;
    }
    void Notify() {
      if (seq == 0) return;
      seq = 0;
      self->acknowledged_done_.notify_all();
    }
    ~Settle() {
      if (seq == 0) return;
      {
        std::lock_guard lock(self->mu_);
        Locked(*self->s_);
      }
      Notify();
    }
  } settle{this};
  if (accepted) {
    {
      std::lock_guard lock(mu_);
      settle.seq = ++s.acknowledged_seq;
    }
    *acknowledged = true;
    accepted(n);
  }

  Preallocate(s, header_len + total + n);
  Status st = PwriteAll(fd_.get(), data.data(), n, header_len + total, spool_path_);
  if (!st.ok()) {
    // Cut what a failed pwrite may have added, so Resume never sees it as data.
    if (::ftruncate(fd_.get(), static_cast<off_t>(header_len + total)) != 0) {
      Log(spool_path_ + ": ftruncate after a failed write failed: " + std::strerror(errno));
    }
    s.preallocated_end = 0;
    return st.WithContext(name_);
  }

  if (!is_npy_) {
    if (s.crc_valid) s.crc = Crc32(s.crc, data.data(), n);
    {
      std::lock_guard lock(mu_);
      s.data_total = new_total;
      settle.Locked(s);
    }
    settle.Notify();
    return Status::Ok();
  }
  TrackCrc(s, data, frames, new_frames, fb);
  {
    std::lock_guard lock(mu_);
    s.data_total = new_total;
    s.complete_frames = new_frames;
    if (!header.empty()) s.header = header;
    settle.Locked(s);
  }
  settle.Notify();
  // The frames are written and published (readers and finalize take the header from memory):
  // the write has succeeded. A failed count rewrite is logged and retried later.
  if (!header.empty() || s.header_stale) (void)RewriteCount();
  return Status::Ok();
}

Status GrowingMember::RewriteCount() {
  State& s = *s_;
  std::string header;
  uint64_t frames;
  {
    std::lock_guard lock(mu_);
    header = s.header;
    frames = s.complete_frames;
  }
  Status st = write_header_ ? write_header_(fd_.get(), header, spool_path_)
                            : PwriteAll(fd_.get(), header.data(), header.size(), 0, spool_path_);
  if (st.ok()) {
    if (s.header_stale) {
      Log(spool_path_ + ": header rewritten; it counts all " + std::to_string(frames) +
          " frames of member " + name_ + " again");
    }
    s.header_stale = false;
    return st;
  }
  if (!s.header_stale) {  // once, not at every retry
    Log(spool_path_ + ": could not rewrite the header's frame count (" + st.message() + "); the " +
        std::to_string(frames) + " frames of member " + name_ +
        " are written and visible, the header on disk counts fewer until a retry succeeds "
        "(next write, fsync or close)");
  }
  s.header_stale = true;
  return Status::Error(st.code(), name_ + ": the header of spool file " + spool_path_ +
                                      " still counts fewer than its " + std::to_string(frames) +
                                      " frames: " + st.message());
}

Status GrowingMember::Fsync(const WriterSession* session) {
  std::lock_guard io(io_mu_);
  // The frames are made durable even when their count cannot be (Resume counts them from the
  // file size), but the caller learns that the header on disk is behind.
  const Status header = s_->header_stale ? RewriteCount() : Status::Ok();
  NPZ_RETURN_IF_ERROR(FsyncFd(fd_.get(), spool_path_));
  if (!s_->dir_synced) {
    NPZ_RETURN_IF_ERROR(FsyncParentDir(spool_path_));
    s_->dir_synced = true;
  }
  if (session != nullptr && !session->lost_write.ok()) return session->lost_write;
  return header;
}

Status GrowingMember::Truncate(uint64_t size) {
  std::lock_guard io(io_mu_);
  std::lock_guard lock(mu_);
  State& s = *s_;
  const uint64_t visible = s.visible_size();
  const uint64_t full = s.header_length() + s.data_total;
  if (size == 0 && s.data_total == 0) {
    // O_TRUNC on a new file, or a writer starting over before any data.
    if (s.layout && !s.layout_declared) {
      if (::ftruncate(fd_.get(), 0) != 0) {
        return ErrnoStatus(errno, spool_path_, "ftruncate failed");
      }
      s.SetLayout(std::nullopt);
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

Status GrowingMember::CheckRemovableLocked() const {
  if (s_->data_total > 0) {
    return Status::Error(EPERM, name_ + ": has " + std::to_string(s_->data_total) +
                                    " bytes of data: new members cannot be removed or renamed");
  }
  return Status::Ok();
}

Status GrowingMember::CheckRemovable() const {
  std::unique_lock lock(mu_);
  AwaitAcknowledged(lock);  // an unlink after a returned write sees its data
  return CheckRemovableLocked();
}

void GrowingMember::MarkRemoved() {
  std::lock_guard lock(mu_);
  s_->removed = true;
  session_ended_.notify_all();  // a BeginWrite waiting for a release gives up (ENOENT)
}

Status GrowingMember::MoveTo(const std::string& new_name, const std::string& new_spool_path) {
  std::lock_guard io(io_mu_);
  std::lock_guard lock(mu_);
  State& s = *s_;
  if (s.removed) return Status::Error(ENOENT, name_ + ": member was removed");
  NPZ_RETURN_IF_ERROR(CheckRemovableLocked());
  const bool kind_changes = IsNpyName(new_name) != is_npy_;
  // A declared .npy header is not data of a verbatim file (a verbatim one holds no data).
  if (kind_changes && ::ftruncate(fd_.get(), 0) != 0) {
    return ErrnoStatus(errno, spool_path_, "ftruncate failed");
  }
  if (::rename(spool_path_.c_str(), new_spool_path.c_str()) != 0) {
    const int err = errno;
    if (kind_changes && s.layout) (void)WriteHeaderOnly(s.header);  // put it back
    return ErrnoStatus(err, spool_path_, "cannot rename spool file to " + new_spool_path);
  }
  name_ = new_name;
  spool_path_ = new_spool_path;
  s.dir_synced = false;  // the rename is durable after the next Fsync
  if (kind_changes) {
    is_npy_ = !is_npy_;
    s.ResetContent();
  }
  return Status::Ok();
}

// ---- attributes ----

Status GrowingMember::SetAttribute(std::string_view attr, std::string_view value) {
  std::lock_guard io(io_mu_);
  std::unique_lock lock(mu_);
  if (attr != kDescrAttribute && attr != kShapeAttribute && attr != kFortranAttribute) {
    return Status::Error(ENOTSUP, name_ + ": unsupported attribute " + std::string(attr));
  }
  if (!is_npy_) {
    return Status::Error(ENOTSUP,
                         name_ + ": " + std::string(attr) + " applies to .npy members only");
  }
  State& s = *s_;
  std::string v(value);
  while (!v.empty() && (v.back() == '\0' || v.back() == '\n')) v.pop_back();  // echo adds \n
  std::optional<std::string> descr = s.attr_descr, shape = s.attr_shape, fortran = s.attr_fortran;
  if (attr == kDescrAttribute) {
    if (v.empty()) return Status::Error(EINVAL, name_ + ": empty " + std::string(attr));
    // A numpy dtype name as -o frame= takes it ("int16"), checked now rather than when the
    // shape comes: frames of one item of it must be a layout that can grow.
    NPZ_ASSIGN_OR_RETURN(descr, GrowableDescr(v, name_ + ": " + std::string(attr)));
  } else if (attr == kShapeAttribute) {
    auto parsed = ParseFrameShape(v);
    if (!parsed.ok()) return parsed.status().WithContext(name_);
    shape = v;
  } else {
    auto parsed = ParseBoolText(v);
    if (!parsed.ok()) return parsed.status().WithContext(name_ + ": " + std::string(attr));
    fortran = v;
  }
  NPZ_ASSIGN_OR_RETURN(std::optional<NpyHeader> candidate,
                       LayoutFromAttributes(s, descr, shape, fortran, attr));
  // Fixed once the writer's bytes were taken: data, a header, or part of one (a header that
  // was refused took nothing, and fixes nothing).
  const bool fixed = s.data_total > 0 || s.header_from_writer ||
                     (s.coord == State::Coordinates::kCollectingHeader && !s.header_buf.empty());
  if (fixed) {
    // Setting what the layout already says is fine; changing it is not.
    if (!candidate || !s.layout || !candidate->SameFrameLayout(*s.layout)) {
      return Status::Error(
          EPERM, name_ +
                     ": the frame layout is fixed once the writer's header or data was written" +
                     (s.data_total == 0 ? " (a member with no frame yet starts over when "
                                          "truncated to 0)"
                                        : "") +
                     "; " + std::string(attr) + " cannot change it");
    }
  } else if (candidate) {
    // The spool file holds only a header (or nothing) before data: replace it.
    NPZ_RETURN_IF_ERROR(WriteHeaderOnly(candidate->Format()));
    s.SetLayout(candidate);
    s.layout_declared = true;
    s.complete_frames = 0;
  }
  s.attr_descr = descr;
  s.attr_shape = shape;
  s.attr_fortran = fortran;
  return Status::Ok();
}

// The layout the attributes describe, the missing parts taken from the current layout;
// nullopt while descr or shape is still unknown. Requires mu_.
Result<std::optional<NpyHeader>> GrowingMember::LayoutFromAttributes(
    const State& s, const std::optional<std::string>& descr,
    const std::optional<std::string>& shape, const std::optional<std::string>& fortran,
    std::string_view attr) const {
  std::optional<std::string> d = descr;
  std::optional<std::vector<uint64_t>> frame_shape;
  if (shape) frame_shape = *ParseFrameShape(*shape);
  bool fortran_order = fortran ? *ParseBoolText(*fortran) : false;
  if (s.layout) {
    if (!d) d = DtypeText(*s.layout);
    if (!frame_shape) frame_shape = s.layout->frame_shape();
    if (!fortran) fortran_order = s.layout->fortran_order();
  }
  if (!d || !frame_shape) return std::optional<NpyHeader>();
  auto h = NpyHeader::ForFrames(*d, *frame_shape, fortran_order, 0);
  if (!h.ok()) return h.status().WithContext(name_ + ": " + std::string(attr));
  NPZ_RETURN_IF_ERROR(CheckGrowable(*h, name_));
  return std::optional<NpyHeader>(*h);
}

Result<std::string> GrowingMember::GetAttribute(std::string_view attr) const {
  std::lock_guard lock(mu_);
  const State& s = *s_;
  if (attr == kDescrAttribute) {
    if (s.layout) return DtypeText(*s.layout);
    if (s.attr_descr) return *s.attr_descr;
  } else if (attr == kShapeAttribute) {
    if (s.layout) return AxesText(s.layout->frame_shape());
    if (s.attr_shape) return AxesText(*ParseFrameShape(*s.attr_shape));
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

void GrowingMember::AwaitAcknowledged(std::unique_lock<std::mutex>& lock) const {
  const uint64_t before_me = s_->acknowledged_seq;
  acknowledged_done_.wait(lock, [&] { return s_->settled_seq >= before_me; });
}

uint64_t GrowingMember::visible_size() const {
  std::unique_lock lock(mu_);
  AwaitAcknowledged(lock);
  return s_->visible_size();
}

ReaderSnapshot GrowingMember::TakeSnapshot() const {
  std::unique_lock lock(mu_);
  AwaitAcknowledged(lock);
  ReaderSnapshot snap;
  if (s_->layout) snap.header = s_->header;
  snap.size = s_->visible_size();
  snap.layout_generation = s_->layout_generation;
  return snap;
}

Result<size_t> GrowingMember::ReadAt(uint64_t offset, std::span<std::byte> out) const {
  return ReadAt(TakeSnapshot(), offset, out);
}

Result<size_t> GrowingMember::ReadAt(const ReaderSnapshot& snapshot, uint64_t offset,
                                     std::span<std::byte> out) const {
  NPZ_ASSIGN_OR_RETURN(ReadAnswer answer, Read(snapshot, offset, out));
  if (answer.splice_fd >= 0) {
    NPZ_RETURN_IF_ERROR(PreadExact(answer.splice_fd, out.data(), answer.length,
                                   answer.splice_offset, spool_path()));
  }
  return answer.length;
}

Result<ReadAnswer> GrowingMember::Read(const ReaderSnapshot& snapshot, uint64_t offset,
                                       std::span<std::byte> out) const {
  std::string current_header;
  uint64_t size;
  bool has_layout;
  {
    std::unique_lock lock(mu_);
    AwaitAcknowledged(lock);
    size = s_->visible_size();
    has_layout = s_->layout.has_value();
    // A snapshot of another layout generation (taken before the layout was known, or before
    // a Truncate(0), new attributes or renames changed it) has no usable header, whatever its
    // length: the reader follows the current layout, header and data alike.
    if (has_layout && snapshot.layout_generation != s_->layout_generation) {
      current_header = s_->header;
    }
  }
  // Without a layout (not known yet, or the member became a plain file on a rename) there is
  // no header at all: a snapshot's header would be copied over the first data bytes.
  static const std::string kNoHeader;
  const std::string& header =
      !has_layout ? kNoHeader : (current_header.empty() ? snapshot.header : current_header);
  if (offset >= size || out.empty()) return ReadAnswer{};
  const size_t n = static_cast<size_t>(std::min<uint64_t>(out.size(), size - offset));
  // Visible offsets are spool-file offsets, and data below the visible size is final.
  if (offset >= header.size()) return ReadAnswer::Spliced(n, fd_.get(), offset);
  const size_t from_header = std::min<size_t>(n, header.size() - offset);
  std::memcpy(out.data(), header.data() + offset, from_header);
  if (from_header < n) {
    NPZ_RETURN_IF_ERROR(PreadExact(fd_.get(), out.data() + from_header, n - from_header,
                                   offset + from_header, spool_path()));
  }
  return ReadAnswer::Copied(n);
}

std::shared_ptr<MemberReader> GrowingMember::OpenReader(GrowingView view) {
  return std::make_shared<GrowingReader>(shared_from_this(), view);
}

// ---- state ----

std::optional<NpyHeader> GrowingMember::layout() const {
  std::lock_guard lock(mu_);
  return s_->layout;
}

uint64_t GrowingMember::frame_count() const {
  std::unique_lock lock(mu_);
  AwaitAcknowledged(lock);
  return s_->complete_frames;
}

uint64_t GrowingMember::data_bytes() const {
  std::unique_lock lock(mu_);
  AwaitAcknowledged(lock);
  return s_->data_total;
}

Result<FinalizedMemberData> GrowingMember::PrepareFinalize() {
  std::lock_guard io(io_mu_);
  // Only for the spool file's sake (a crash before the archive is written): the header
  // finalize uses is formatted below from memory. Logged by RewriteCount.
  if (s_->header_stale) (void)RewriteCount();
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
