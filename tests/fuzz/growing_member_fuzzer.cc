// Fuzzes the growing-member write protocol (core/write/growing_member.h) against a model.
//
// The input is a sequence of operations on one member (".npy" or a verbatim name, with or
// without a declared layout): writer sessions begun and ended (also a second, concurrent
// one, and O_APPEND ones), writes at the writer's position or elsewhere, a .npy header
// written first (whole, in pieces, padded differently, or damaged), layout xattrs,
// truncates, snapshots, finalize snapshots and a crash (the member dropped and resumed from
// its spool file). After every operation the member is read back whole and compared with
// the model. The rules checked are the documented ones:
//   - visible size: header + complete frames of a .npy (verbatim: every byte); a trailing
//     partial frame is held back; the header parses, counts exactly the complete frames and
//     has the member's layout; the data bytes are exactly the bytes written, in order;
//   - append-only: a write anywhere but the writer's position (or the visible end, which
//     moves the writer there) fails with EPERM (a rewrite of the writer's own header in
//     place aside) and changes nothing; a truncate other than
//     to the current size (or to 0 before any data) is EPERM; data cannot be removed;
//   - one writer: a second BeginWrite is EBUSY; a write through an ended session is EBADF;
//   - a .npy whose first bytes are neither a header nor declared raw frames gets EINVAL;
//   - the layout is fixed once data was written: an xattr may not change it;
//   - finalize data: header with the final count, data = the complete frames, CRC-32 of
//     header + data, the partial frame counted as dropped;
//   - resume after a crash keeps every complete frame and drops a partial one;
//   - a reader's snapshot header never counts more frames than the member holds, and has the
//     member's current layout (a snapshot taken before the layout changed follows the new
//     one: never an old dtype or shape over new data).
//   - a .npy header whose array cannot grow frame by frame (object dtype, 0-d) makes the
//     member verbatim, header included, unless a layout was declared;
// The model learns from the member only what the rules leave open (whether a header is
// acceptable, what layout a set of xattrs makes), and checks everything else.
// NPZFS_FUZZ_TRACE=1 prints one line per operation (to read a finding's input).
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core/npy/frame_layout.h"
#include "core/write/growing_member.h"
#include "npzfs/npy_header.h"
#include "tests/fuzz/fuzz_util.h"

namespace npzfs::fuzz {
namespace {

constexpr size_t kMaxOps = 96;
constexpr size_t kMaxWrite = 700;
constexpr size_t kSessions = 2;

const char* const kDescrs[] = {
    "<i2", "|u1", "<f8", ">i4", "<c8", "|b1", "[('a', '<i4'), ('b', '|u1')]", "|O", "<U3", "bogus"};
const char* const kShapes[] = {"",
                               "()",
                               "3",
                               "2,5",
                               "2x5",
                               "(3,)",
                               "4,0",
                               "7,1,2",
                               "x",
                               "1,,2",
                               "99999999999999999999999",
                               "65536,65536,65536,65536"};
const char* const kBools[] = {"0", "1", "true", "False", "yes"};

struct Session {
  WriterSession ws;
  bool active = false;
  bool append = false;
  bool decided = false;     // the first non-empty write fixed its coordinates
  uint64_t end = 0;         // the writer's position in its own coordinates (once decided)
  bool collecting = false;  // writing a .npy header that is not complete yet
  bool data_only = false;   // every byte it writes is data
  std::string written;      // collecting: its stream so far
  uint64_t wrote = 0;       // bytes it wrote so far (to generate its next bytes)
  std::string header;       // the header it intends to write first (may be empty)
};

struct Model {
  bool name_npy = true;  // the member's name ends in .npy
  bool npy = true;       // frame-structured (false: verbatim)
  std::optional<NpyHeader> layout;
  bool declared = false;
  bool header_from_writer = false;
  std::string data;  // every data byte accepted, partial frame included
  Session s[kSessions];
  std::optional<ReaderSnapshot> snapshot;
  bool removed = false;
};

uint64_t FrameBytes(const Model& m) { return m.layout ? m.layout->frame_bytes() : 0; }
uint64_t HeaderLength(const Model& m) { return m.layout ? m.layout->FormattedLength() : 0; }
uint64_t CompleteData(const Model& m) {
  if (!m.npy) return m.data.size();
  if (!m.layout) return 0;
  return m.data.size() / FrameBytes(m) * FrameBytes(m);
}
bool Fresh(const Model& m) { return m.data.empty() && !m.header_from_writer; }

std::string Name(const std::string& what, uint64_t v) { return what + " " + std::to_string(v); }

// A .npy header a writer might write: numpy's layout, another padding, or damaged.
std::string WriterHeader(FuzzInput& in) {
  // One statement per value: the order of evaluation of function arguments is unspecified.
  const char* descr = kDescrs[in.Range(0, 8)];
  const char* shape = kShapes[in.Range(0, 7)];
  const bool fortran = in.Bool();
  const uint64_t count = in.Range(0, 1000);
  auto frame_shape = ParseFrameShape(shape);  // some shapes are refused (a zero axis)
  if (!frame_shape.ok()) return "";
  auto h = NpyHeader::ForFrames(descr, *frame_shape, fortran, count);
  if (!h.ok()) return "";
  std::string bytes = h->Format();
  switch (in.U8() % 4) {
    case 0: {  // padded longer, as an older writer or a hand-made file might
      auto p = h->FormatPadded(bytes.size() + 16 * in.Range(1, 8));
      if (p.ok()) bytes = *p;
      break;
    }
    case 1:  // damaged
      bytes[in.Range(0, bytes.size() - 1)] = static_cast<char>(in.U8());
      break;
    default:
      break;
  }
  return bytes;
}

// The bytes a writer writes at stream offset `pos`: its header, then a pattern.
std::string NextBytes(const Session& s, size_t n, uint8_t salt) {
  std::string out;
  for (uint64_t p = s.wrote; out.size() < n; ++p) {
    out.push_back(p < s.header.size() ? s.header[p] : static_cast<char>(p * 131 + salt + (p >> 8)));
  }
  return out;
}

class Harness {
 public:
  Harness(const uint8_t* data, size_t size) : in_(data, size) {}
  void Run();

 private:
  void Create();
  void CheckState(const std::string& after);
  void OpBegin(Session& s);
  void OpEnd(Session& s);
  void OpWrite(Session& s);
  void Decide(Session& s, const std::string& first_bytes);
  void HeaderBytesTaken(Session& s, const std::string& taken,
                        const std::optional<NpyHeader>& declared);
  void OpSetAttribute();
  void OpTruncate();
  void OpRemove();
  void OpSnapshot();
  void OpFinalize();
  void OpResume();
  void LearnLayout() { model_.layout = member_->layout(); }

  FuzzInput in_;
  const bool trace_ = std::getenv("NPZFS_FUZZ_TRACE") != nullptr;  // one line per operation
  Model model_;
  std::string path_;
  std::shared_ptr<GrowingMember> member_;
};

void Harness::Create() {
  static uint64_t counter = 0;
  path_ = ScratchDir() + "/spool-" + std::to_string(counter++);
  model_.npy = model_.name_npy = in_.U8() % 4 != 0;
  std::optional<NpyHeader> declared;
  if (model_.npy && in_.Bool()) {
    const char* descr = kDescrs[in_.Range(0, 8)];
    const char* shape = kShapes[in_.Range(0, 7)];
    const bool fortran = in_.Bool();
    auto frame_shape = ParseFrameShape(shape);
    auto h = frame_shape.ok() ? NpyHeader::ForFrames(descr, *frame_shape, fortran, 0)
                              : Result<NpyHeader>(frame_shape.status());
    if (h.ok()) declared = *h;
  }
  auto m = GrowingMember::Create(model_.name_npy ? "g.npy" : "g.bin", path_, declared);
  if (!m.ok()) {
    FUZZ_CHECK(declared && m.status().code() == EINVAL, "Create failed: " + m.status().message());
    return;  // a layout that cannot grow (0-d, object, zero-byte frames) is refused
  }
  member_ = *m;
  model_.layout = member_->layout();
  model_.declared = declared.has_value();
  FUZZ_CHECK(model_.layout.has_value() == declared.has_value(), "declared layout not taken");
}

void Harness::CheckState(const std::string& after) {
  const std::string ctx = " (after " + after + ")";
  FUZZ_CHECK(member_->data_bytes() == model_.data.size(),
             Name("data_bytes", member_->data_bytes()) + Name(" model", model_.data.size()) + ctx);
  const std::optional<NpyHeader> layout = member_->layout();
  FUZZ_CHECK(
      layout.has_value() == model_.layout.has_value() && (!layout || (*layout == *model_.layout)),
      "layout changed behind the model's back" + ctx);
  const uint64_t visible = member_->visible_size();
  const uint64_t expect = HeaderLength(model_) + CompleteData(model_);
  FUZZ_CHECK(visible == expect, Name("visible size", visible) + Name(" expected", expect) + ctx);
  if (model_.npy && model_.layout) {
    FUZZ_CHECK(member_->frame_count() == model_.data.size() / FrameBytes(model_),
               "frame_count" + ctx);
  }
  std::string bytes(visible + 64, '\0');
  auto n = member_->ReadAt(0, std::span(reinterpret_cast<std::byte*>(bytes.data()), bytes.size()));
  FUZZ_CHECK(n.ok(), "ReadAt failed: " + n.status().message() + ctx);
  FUZZ_CHECK(*n == visible, Name("ReadAt returned", *n) + Name(" visible", visible) + ctx);
  bytes.resize(*n);
  const uint64_t h = HeaderLength(model_);
  if (h > 0) {
    auto parsed = NpyHeader::Parse(bytes);
    FUZZ_CHECK(parsed.ok(), "visible header does not parse: " + parsed.status().message() + ctx);
    FUZZ_CHECK(parsed->parsed_length() == h, "visible header length" + ctx);
    FUZZ_CHECK(parsed->SameFrameLayout(*model_.layout), "visible header has another layout" + ctx);
    FUZZ_CHECK(parsed->frame_count() == CompleteData(model_) / FrameBytes(model_),
               Name("header counts", parsed->frame_count()) + ctx);
  }
  FUZZ_CHECK(bytes.compare(h, std::string::npos, model_.data, 0, CompleteData(model_)) == 0,
             "visible data differs from the bytes written" + ctx);
  const Status removable = member_->CheckRemovable();
  FUZZ_CHECK(removable.ok() == model_.data.empty() && (removable.ok() || removable.code() == EPERM),
             "CheckRemovable: " + removable.message() + ctx);
}

void Harness::OpBegin(Session& s) {
  // The input is consumed the same way whatever the outcome, so that a mutation of one
  // operation does not shift the meaning of every later byte.
  WriterSession ws;
  const bool append = in_.U8() % 4 == 0;
  const std::string header = in_.Bool() ? WriterHeader(in_) : "";
  Status st = member_->BeginWrite(&ws, append);
  bool other_active = false;
  for (const Session& o : model_.s) other_active |= o.active;
  if (model_.removed) {
    FUZZ_CHECK(st.code() == ENOENT, "BeginWrite on a removed member: " + st.message());
    return;
  }
  if (other_active) {
    FUZZ_CHECK(st.code() == EBUSY, "a second writer was not refused with EBUSY: " + st.message());
    return;
  }
  FUZZ_CHECK(st.ok(), "BeginWrite failed: " + st.message());
  s = Session{};
  s.ws = ws;
  s.active = true;
  s.append = append;
  s.header = header;
}

void Harness::OpEnd(Session& s) {
  member_->EndWrite(&s.ws);
  s.active = false;
}

// The first non-empty write decides the writer's coordinates (the documented rule: a fresh
// .npy starts at 0, with its header or, for a declared layout, raw frames; any later writer
// continues at the visible end, or, on a member whose layout did not come from a writer's
// header, in raw coordinates at the number of data bytes). The generator makes that write at
// that position.
void Harness::Decide(Session& s, const std::string& first_bytes) {
  s.decided = true;
  const bool fresh = model_.npy && Fresh(model_);
  s.end = fresh ? 0 : HeaderLength(model_) + model_.data.size();
  if (!fresh && model_.npy && model_.layout && !model_.header_from_writer && !s.append &&
      in_.Bool()) {
    s.end = model_.data.size();  // a raw writer resuming
  }
  const bool magic = first_bytes.compare(0, NpyHeader::kMagic.size(), NpyHeader::kMagic) == 0;
  s.collecting = fresh && !(model_.layout && !magic);
  s.data_only = !s.collecting;
}

// A collecting writer's bytes were accepted: they extend its header; once the header is
// complete the member has its layout, and what followed the header is data.
void Harness::HeaderBytesTaken(Session& s, const std::string& taken,
                               const std::optional<NpyHeader>& declared) {
  const uint64_t data_before = model_.data.size();
  s.written += taken;
  const size_t m = std::min(s.written.size(), NpyHeader::kMagic.size());
  FUZZ_CHECK(s.written.compare(0, m, NpyHeader::kMagic, 0, m) == 0,
             "bytes that are not a .npy header were accepted as one");
  auto total = NpyHeader::TotalLength(s.written);
  if (!total.ok() || s.written.size() < *total) {
    FUZZ_CHECK(member_->data_bytes() == data_before, "data appeared before the header ended");
    return;
  }
  auto parsed = NpyHeader::Parse(std::string_view(s.written).substr(0, *total));
  FUZZ_CHECK(parsed.ok(), "a header that does not parse was accepted");
  if (!CheckGrowable(*parsed, "g.npy").ok()) {
    // An array that cannot grow frame by frame: the member is verbatim from now on, and the
    // whole stream so far, header included, is its data.
    FUZZ_CHECK(!declared, "a header that cannot grow was accepted over a declared layout");
    FUZZ_CHECK(!member_->is_npy() && !member_->layout(), "an array that cannot grow has a layout");
    model_.npy = false;
    model_.layout.reset();  // a resumed member's undeclared layout is forgotten
    s.collecting = false;
    s.data_only = true;
    model_.data += s.written;
    return;
  }
  LearnLayout();
  FUZZ_CHECK(model_.layout && model_.layout->SameFrameLayout(*parsed),
             "the member's layout is not the header's");
  FUZZ_CHECK(!declared || declared->SameFrameLayout(*parsed),
             "a header with another layout than the declared one was accepted");
  model_.header_from_writer = true;
  s.collecting = false;
  s.data_only = true;
  model_.data += s.written.substr(*total);
}

void Harness::OpWrite(Session& s) {
  const size_t len = in_.Range(0, kMaxWrite);
  const bool stray = in_.U8() % 8 == 0 && s.decided;  // never the first write: see below
  const std::string bytes = NextBytes(s, len, static_cast<uint8_t>(model_.data.size()));
  if (!s.active) {
    WriterSession stale = s.ws;
    auto r = member_->Write(&stale, 0, std::as_bytes(std::span(bytes)));
    FUZZ_CHECK(!r.ok() && (r.status().code() == EBADF || r.status().code() == ENOENT),
               "a write through an ended session was not refused");
    return;
  }
  if (!s.decided && !bytes.empty()) Decide(s, bytes);
  uint64_t offset = stray ? in_.Range(0, s.end + 2 * kMaxWrite) : s.end;
  if (s.append && in_.Bool()) offset = in_.U16();  // O_APPEND: the offset does not matter
  // A write at the visible end (header + every data byte) continues any data writer.
  const bool rebase = !s.append && offset != s.end && s.data_only && model_.npy && model_.layout &&
                      offset == HeaderLength(model_) + model_.data.size();
  const bool at_end = s.append || offset == s.end || rebase;
  const uint64_t data_before = model_.data.size();
  const auto layout_before = model_.layout;
  const bool declared_before = model_.declared && layout_before;
  auto r = member_->Write(&s.ws, offset, std::as_bytes(std::span(bytes)));
  if (trace_) {
    std::fprintf(stderr, "  write %zu bytes at %llu (writer at %llu): %s\n", bytes.size(),
                 static_cast<unsigned long long>(offset), static_cast<unsigned long long>(s.end),
                 r.ok() ? std::to_string(*r).c_str() : r.status().message().c_str());
  }
  if (model_.removed) {
    FUZZ_CHECK(!r.ok() && r.status().code() == ENOENT, "write to a removed member");
    return;
  }
  if (!r.ok()) {
    const int code = r.status().code();
    FUZZ_CHECK(member_->data_bytes() == data_before, "a failed write changed the data");
    if (!at_end) {
      FUZZ_CHECK(code == EPERM,
                 "a write off the writer's position is not EPERM: " + r.status().message());
    } else {
      FUZZ_CHECK(!s.data_only,
                 "an append at the writer's position failed: " + r.status().message());
      FUZZ_CHECK(code == EINVAL, "a refused .npy header is not EINVAL: " + r.status().message());
    }
    return;
  }
  const size_t n = *r;
  FUZZ_CHECK(n <= bytes.size(), "Write returned more than it was given");
  if (!at_end) {
    // Only a rewrite of the writer's own header in place is accepted off the end.
    FUZZ_CHECK(offset == 0 && n == bytes.size() && model_.layout,
               Name("a write at", offset) + Name(" was accepted with the writer at", s.end));
    FUZZ_CHECK(member_->data_bytes() == data_before, "a header rewrite changed the data");
    return;
  }
  if (bytes.empty()) return;
  FUZZ_CHECK(n > 0, "a non-empty write accepted zero bytes");
  if (s.collecting) {
    HeaderBytesTaken(s, bytes.substr(0, n), declared_before ? layout_before : std::nullopt);
  } else {
    model_.data += bytes.substr(0, n);
    FUZZ_CHECK(n == bytes.size(), "a data write was cut short");
  }
  if (rebase) s.end = offset;
  s.end += n;
  s.wrote += n;
}

void Harness::OpSetAttribute() {
  static const std::string_view kAttrs[] = {kDescrAttribute, kShapeAttribute, kFortranAttribute,
                                            "user.other"};
  const std::string_view attr = kAttrs[in_.Range(0, 3)];
  std::string value;
  if (attr == kDescrAttribute) value = kDescrs[in_.Range(0, std::size(kDescrs) - 1)];
  if (attr == kShapeAttribute) value = kShapes[in_.Range(0, std::size(kShapes) - 1)];
  if (attr == kFortranAttribute) value = kBools[in_.Range(0, std::size(kBools) - 1)];
  if (in_.Bool()) value += "\n";  // as `setfattr -v "$(echo ...)"` leaves it
  bool collecting = false;
  for (const Session& s : model_.s) collecting |= s.active && s.collecting && !s.written.empty();
  const bool fixed = !model_.data.empty() || model_.header_from_writer || collecting;
  const auto before = model_.layout;
  Status st = member_->SetAttribute(attr, value);
  if (trace_) {
    std::fprintf(stderr, "  set %s=%s (fixed %d, collecting %d): %s\n", std::string(attr).c_str(),
                 value.c_str(), fixed, collecting, st.ok() ? "ok" : st.message().c_str());
  }
  LearnLayout();
  if (!model_.npy || attr == "user.other") {
    FUZZ_CHECK(st.code() == ENOTSUP, "an unsupported attribute was not ENOTSUP: " + st.message());
  }
  if (fixed) {
    FUZZ_CHECK(
        before.has_value() == model_.layout.has_value() && (!before || *before == *model_.layout),
        "an xattr changed the layout after data was written");
  }
  if (!st.ok()) {
    FUZZ_CHECK(st.code() == EPERM || st.code() == EINVAL || st.code() == ENOTSUP,
               "SetAttribute error: " + st.message());
  }
  if (model_.layout) {  // the attributes describe the layout, and setting one again is ok
    auto d = member_->GetAttribute(kDescrAttribute);
    auto sh = member_->GetAttribute(kShapeAttribute);
    auto fo = member_->GetAttribute(kFortranAttribute);
    FUZZ_CHECK(d.ok() && sh.ok() && fo.ok(), "a known layout has no attributes");
    auto shown = ParseFrameShape(*sh);
    FUZZ_CHECK(shown.ok(), "the shape getfattr shows does not parse: " + *sh);
    auto again = NpyHeader::ForFrames(*d, *shown, *fo == "1", 0);
    FUZZ_CHECK(again.ok() && again->SameFrameLayout(*model_.layout),
               "the attributes do not describe the layout");
    Status same = member_->SetAttribute(kDescrAttribute, *d);
    FUZZ_CHECK(same.ok(), "setting the current descr again failed: " + same.message());
    LearnLayout();
  }
  // Attributes set before any data declare the layout: a truncate to 0 keeps it.
  if (!fixed && model_.layout) model_.declared = true;
}

void Harness::OpTruncate() {
  const uint64_t visible = member_->visible_size();
  const uint64_t full = HeaderLength(model_) + model_.data.size();
  const size_t pick = in_.Range(0, 5);
  const uint64_t choices[] = {0, visible, full, visible + 1, visible ? visible - 1 : 0, in_.U16()};
  const uint64_t size = choices[pick];
  Status st = member_->Truncate(size);
  if (size == 0 && model_.data.empty()) {
    FUZZ_CHECK(st.ok(), "truncate to 0 before any data failed: " + st.message());
    if (!model_.declared) model_.layout.reset();
    model_.header_from_writer = false;
    for (Session& s : model_.s) {  // an active writer starts over
      s.decided = false;
      s.collecting = false;
      s.written.clear();
      s.wrote = 0;
    }
    return;
  }
  const bool same = size == visible || size == full;
  FUZZ_CHECK(st.ok() == same && (same || st.code() == EPERM),
             Name("truncate to", size) + Name(" with visible size", visible) + ": " + st.message());
}

void Harness::OpRemove() {
  if (!member_->CheckRemovable().ok()) return;
  member_->MarkRemoved();
  ::unlink(path_.c_str());  // as the daemon does
  model_.removed = true;
}

void Harness::OpSnapshot() {
  const bool take = in_.Bool();
  if (!model_.snapshot || take) {
    model_.snapshot = member_->TakeSnapshot();
    return;
  }
  // An old snapshot: its header has the current layout (even if it changed since), never
  // counts more frames than the member holds now, and the bytes run to the current visible
  // size.
  std::string bytes(member_->visible_size() + 64, '\0');
  auto n = member_->ReadAt(*model_.snapshot, 0,
                           std::span(reinterpret_cast<std::byte*>(bytes.data()), bytes.size()));
  FUZZ_CHECK(n.ok() && *n == member_->visible_size(), "snapshot read size");
  if (model_.layout && *n > 0) {
    auto h = NpyHeader::Parse(bytes.substr(0, *n));
    FUZZ_CHECK(h.ok(), "snapshot header does not parse: " + h.status().message());
    FUZZ_CHECK(h->SameFrameLayout(*model_.layout), "snapshot header has an old layout");
    FUZZ_CHECK(h->frame_count() <= member_->frame_count(),
               "snapshot header counts too many frames");
    FUZZ_CHECK(h->parsed_length() + h->frame_count() * FrameBytes(model_) <= *n,
               "snapshot header counts frames its size does not hold");
  }
}

void Harness::OpFinalize() {
  auto f = member_->PrepareFinalize();
  FUZZ_CHECK(f.ok(), "PrepareFinalize: " + f.status().message());
  if (model_.npy && !model_.layout) {
    FUZZ_CHECK(!f->has_layout, "finalize of a .npy without a layout");
    return;
  }
  std::string header;
  if (model_.npy) {
    const uint64_t frames = model_.data.size() / FrameBytes(model_);
    header = model_.layout->WithFrameCount(frames).Format();
  }
  FUZZ_CHECK(f->header == header, "finalize header is not the layout with the final count");
  FUZZ_CHECK(f->data_length == CompleteData(model_), "finalize data length");
  FUZZ_CHECK(f->dropped_partial_bytes == model_.data.size() - CompleteData(model_),
             "dropped bytes");
  std::string data(f->data_length, '\0');
  Status st = PreadExact(f->fd, data.data(), data.size(), f->data_offset, path_);
  FUZZ_CHECK(st.ok(), "pread of the finalize range: " + st.message());
  FUZZ_CHECK(data == model_.data.substr(0, data.size()), "finalize range holds other bytes");
  if (f->crc32) FUZZ_CHECK(*f->crc32 == Crc32(header + data), "finalize CRC-32");
}

void Harness::OpResume() {
  if (model_.removed) return;  // nothing left to resume
  member_.reset();             // the daemon died: only the spool file is left
  auto m = GrowingMember::Resume(model_.name_npy ? "g.npy" : "g.bin", path_);
  FUZZ_CHECK(m.ok(), "Resume of a spool file this module wrote failed: " + m.status().message());
  member_ = *m;
  const auto before = model_.layout;
  LearnLayout();
  FUZZ_CHECK(before.has_value() == model_.layout.has_value() &&
                 (!before || before->SameFrameLayout(*model_.layout)),
             "Resume lost or changed the layout");
  model_.data.resize(CompleteData(model_));  // a partial frame is dropped
  model_.declared = false;
  model_.header_from_writer = false;
  model_.snapshot.reset();
  for (Session& s : model_.s) s = Session{};
}

void Harness::Run() {
  Create();
  if (!member_) return;
  CheckState("Create");
  for (size_t i = 0; i < kMaxOps && !in_.empty(); ++i) {
    const uint8_t op = in_.U8();
    Session& s = model_.s[op & 1];
    std::string what;
    switch ((op >> 1) % 16) {
      case 0:
      case 1:
        what = "BeginWrite";
        OpBegin(s);
        break;
      case 2:
        what = "EndWrite";
        OpEnd(s);
        break;
      case 3:
      case 4:
      case 5:
      case 6:
      case 7:
      case 8:
        what = "Write";
        OpWrite(s);
        break;
      case 9:
      case 10:
        what = "SetAttribute";
        OpSetAttribute();
        break;
      case 11:
        what = "Truncate";
        OpTruncate();
        break;
      case 12:
        what = "Snapshot";
        OpSnapshot();
        break;
      case 13:
        what = "PrepareFinalize";
        OpFinalize();
        break;
      case 14:
        what = "Resume";
        OpResume();
        break;
      default:
        what = "Remove";
        OpRemove();
        break;
    }
    CheckState(what + Name(" op", i));
    if (trace_) {
      std::fprintf(stderr, "op %zu %s session %d: data %zu, visible %llu, layout %s\n", i,
                   what.c_str(), op & 1, model_.data.size(),
                   static_cast<unsigned long long>(member_->visible_size()),
                   model_.layout ? model_.layout->descr_literal().c_str() : "none");
    }
  }
  for (Session& s : model_.s) member_->EndWrite(&s.ws);
  member_.reset();
  ::unlink(path_.c_str());
}

}  // namespace
}  // namespace npzfs::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  npzfs::fuzz::Harness(data, size).Run();
  return 0;
}
