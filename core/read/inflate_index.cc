// Random access into deflated members: design essay.
//
// A deflate stream can only be decoded from its start: every block may copy bytes from
// the previous 32 KiB of output, and blocks do not start on byte boundaries. zlib's
// examples/zran.c shows the way out: at a block boundary, the decoder state is just
// (input position, the few unused bits of the current input byte, the last 32 KiB of
// output). Record that state every so often (a "checkpoint") during one sequential pass,
// and any later read inflates from the nearest checkpoint before it: at most one "span"
// of about `checkpoint_spacing` bytes (256 KiB by default: a random 512 KiB frame then needs
// about 768 KiB decoded, and the index of an int16 member is 0.85% of it; 512 KiB measured
// 0.46% but 30% slower frames, mostly for the kernel's read-around before each mmap fault,
// which lands at the end of the previous span). A checkpoint whose sparse window (below)
// is large starts a longer span, so that its record costs at most 0.9% of the span
// (MinSpanLength in index_file.h): the index stays under 1% whatever the data.
//
// Alternatives rejected:
//   - Inflating the whole member into memory or a temp file: unbounded memory or disk,
//     and the first byte waits for the last.
//   - zran's plain windows: 32 KiB per checkpoint is 3% of a 1 MiB span, and full windows
//     of noisy int16 data compress poorly. Too big for the sidecar target of 1% (and for
//     RAM with thousands of members).
//   - Restarting from the member's start for every far read (what libzip offers): O(n)
//     per read.
//
// Sparse windows. Only output within the first 32 KiB after a checkpoint can reference
// its window (deflate distances are at most 32768), and in numpy data it references only
// 0.1-15% of it. Which bytes? Inflate those first 32 KiB again with substitute windows.
// Every output byte is either a literal (the same whatever the window), or a copy whose
// chain of copies ends at one window position p. With window A[i] = i & 0xff and window
// B[i] = 0x80 | (i >> 8), a byte copied from p comes out as A[p] and B[p], so p is known.
// A literal byte r comes out as r in both, and looks like a copy of exactly one position
// ((r & 0x7f) << 8 | r, only if r >= 0x80 and the real window holds r there); keeping that
// position too is harmless. So two substitute passes give every referenced position (a third
// "complement" pass would only separate literals from copies, which the rule above does for
// free). The other window bytes are zeroed and the result deflated: about 3 KiB instead of
// 32 KiB for noisy int16 data (measured: the index of a 64 MiB member is 0.28% of it at
// 1 MiB spacing; 0.12% for a float32 random walk). A read from the checkpoint restores the
// sparse window with inflateSetDictionary; the zeroed bytes are never referenced, so the
// output is identical (tested byte for byte).
//
// The first pass needs the real output after a new checkpoint to make its sparse window,
// but that output belongs to the next span. The first-pass stream therefore inflates up to
// 32 KiB ahead into its lookahead (InflateStream::FillLookahead) as soon as it records a
// checkpoint; the lookahead is returned by the next Read, so nothing is inflated twice and
// the checkpoint is complete (sparse window included) the moment it is published. A
// parked first-pass stream that gets evicted loses only its lookahead.
//
// Huge blocks. A span normally ends at the first block boundary after `spacing` bytes, and
// numpy's blocks end every 10-200 KiB. But nothing bounds a deflate block: one fixed-Huffman
// block of length-258 matches can inflate to gigabytes. Waiting for its end would make one
// span (and its buffer, and every read of it) as large as the member. So the first pass cuts
// a block that runs past 2 * spacing at the code it is decoding: inflateMark tells how many
// bits back that literal or match started and how much of it was output already. That
// checkpoint also records where the block's header starts (header_bit); a restore decodes
// the header again with Z_TREES (inflate returns right after a header, which zlib documents
// for exactly this), empties the bit buffer (inflatePrime(-1)) and primes the code's bits.
// To know the header position at any time, the first pass inflates with Z_BLOCK throughout
// (a return at every block end: 2-5% slower than Z_NO_FLUSH, from zlib copying its window at
// each return). A stored block cannot be cut mid-way (zlib keeps its remaining length
// privately), but it is at most 65535 bytes. So every span, including those read from a
// sidecar (checked on load), is at most 2 * spacing + 65535 bytes: memory stays within the
// bound whatever the block sizes, the checkpoints inside a block persist like any other, and
// a 256 MiB single-block member reads with a peak of ~13 MiB above the start (measured, cache
// 16 MiB, huge_block_test).
//
// Live streams. Restoring from a checkpoint costs a window expansion and a dictionary copy;
// continuing a stream costs nothing. A sequential reader's stream is parked (StreamPool) at
// the span end it reached, keyed by (member, output offset), and the next span's producer
// takes it. The pool is bounded (each stream holds ~200 KiB: zlib state and window, the
// input buffer, the lookahead), so memory stays bounded whatever the number of members.
//
// Engines. This file is zlib's: finding checkpoints needs Z_BLOCK, and resuming inside a
// block needs Z_TREES and inflatePrime(-1). Spans from checkpoints at block starts are
// decoded by the fast engine (ISA-L, 1.55x zlib here) through DecodeStream
// (core/read/decode_stream.h), primed with the same (bits, sparse window). The first pass
// itself runs behind readers, not in front of them (core/read/deflated_member.h).
//
// What this file does not do: decide span boundaries, caching, CRC policy and locking live
// in core/read/deflated_member.cc and first_pass.cc; the sidecar format in
// core/read/index_file.cc.
#include "core/read/inflate_index.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <span>
#include <vector>

#include "core/read/inflate_engine.h"
#include "npzfs/file_util.h"

namespace npzfs {
namespace {

constexpr size_t kInputBufferSize = 128 * 1024;

Status CorruptError(const DeflateSource& src, const std::string& what) {
  return Status::Error(EIO, src.name + ": corrupt deflate data: " + what);
}

std::string ZlibMessage(const z_stream& s, int ret) {
  if (s.msg != nullptr) return s.msg;
  return "zlib error " + std::to_string(ret);
}

// A reusable raw inflater/deflater per thread for the short side jobs (sparse-window
// passes, window expansion), so that they do not allocate zlib state for every checkpoint.
class ScratchInflater {
 public:
  ScratchInflater() : s_(std::make_unique<z_stream>()) {
    *s_ = z_stream{};
    ok_ = inflateInit2(s_.get(), -15) == Z_OK;
  }
  ~ScratchInflater() {
    if (ok_) inflateEnd(s_.get());
  }
  z_stream* get() { return ok_ ? s_.get() : nullptr; }

 private:
  std::unique_ptr<z_stream> s_;
  bool ok_ = false;
};

class ScratchDeflater {
 public:
  ScratchDeflater() : s_(std::make_unique<z_stream>()) {
    *s_ = z_stream{};
    // Z_RLE at level 1: a sparse window is runs of zeros between few literals; measured
    // both faster and ~6% smaller than the default strategy at level 6 or 9.
    ok_ = deflateInit2(s_.get(), 1, Z_DEFLATED, -15, 8, Z_RLE) == Z_OK;
  }
  ~ScratchDeflater() {
    if (ok_) deflateEnd(s_.get());
  }
  z_stream* get() { return ok_ ? s_.get() : nullptr; }

 private:
  std::unique_ptr<z_stream> s_;
  bool ok_ = false;
};

ScratchInflater& ThreadInflater() {
  thread_local ScratchInflater inflater;
  return inflater;
}

// zlib decodes a block header by itself and, with Z_TREES, returns right after it. Used to
// resume inside a block: the header is read again, then the bit buffer is emptied and the
// input moved to the checkpoint (zlib.h documents Z_TREES for exactly this).
constexpr size_t kMaxBlockHeaderBytes = 1024;  // a dynamic header is at most ~300 bytes

// Feeds `bits` unused bits of the byte before `in` (a checkpoint's partial byte).
Status PrimeBits(z_stream* s, const DeflateSource& src, uint64_t in, uint8_t bits) {
  if (bits == 0) return Status::Ok();
  NPZ_ASSIGN_OR_RETURN(uint8_t byte, ByteBefore(src, in, bits));
  inflatePrime(s, bits, byte >> (8 - bits));
  return Status::Ok();
}

// Decodes the header of the block starting at bit `header_bit`, leaving `s` ready to decode
// the block's codes (its bit buffer empty: the caller primes the resume position).
Status DecodeBlockHeader(z_stream* s, const DeflateSource& src, uint64_t header_bit,
                         uint64_t limit_in) {
  const uint64_t in = (header_bit + 7) / 8;
  NPZ_RETURN_IF_ERROR(PrimeBits(s, src, in, static_cast<uint8_t>(in * 8 - header_bit)));
  const size_t n = static_cast<size_t>(
      std::min<uint64_t>(kMaxBlockHeaderBytes, std::min(limit_in, src.compressed_size) - in));
  unsigned char header[kMaxBlockHeaderBytes];
  NPZ_RETURN_IF_ERROR(PreadExact(src.fd, header, n, src.data_offset + in, src.name));
  unsigned char sink = 0;
  s->next_in = header;
  s->avail_in = static_cast<uInt>(n);
  s->next_out = &sink;
  s->avail_out = 1;
  const int r = inflate(s, Z_TREES);
  if ((r != Z_OK && r != Z_BUF_ERROR) || s->avail_out != 1 || !(s->data_type & 256)) {
    return CorruptError(src, "the block header of a checkpoint inside a block does not decode");
  }
  inflatePrime(s, -1, 0);  // forget the bits read past the header
  s->avail_in = 0;
  return Status::Ok();
}

// Resets `s` and positions it at `cp` with dictionary `dict`; returns the offset of the
// next compressed byte to feed.
Result<uint64_t> PositionAt(z_stream* s, const DeflateSource& src, const Checkpoint& cp,
                            std::span<const std::byte> dict) {
  inflateReset(s);
  s->avail_in = 0;
  s->next_in = nullptr;
  if (!cp.at_block_start()) {
    if (cp.header_bit > cp.bit()) return CorruptError(src, "checkpoint before its block header");
    NPZ_RETURN_IF_ERROR(DecodeBlockHeader(s, src, cp.header_bit, cp.in));
  }
  NPZ_RETURN_IF_ERROR(PrimeBits(s, src, cp.in, cp.bits));
  if (!dict.empty()) {
    int r = inflateSetDictionary(s, reinterpret_cast<const Bytef*>(dict.data()),
                                 static_cast<uInt>(dict.size()));
    if (r != Z_OK) return CorruptError(src, "inflateSetDictionary: " + ZlibMessage(*s, r));
  }
  return cp.in;
}

// This thread's fast engine, for short inflates that start from scratch (windows, the
// sparse-window passes); null with an error if it cannot be made.
Result<InflateEngine*> ThreadFastEngine() {
  thread_local std::unique_ptr<InflateEngine> engine;
  if (engine == nullptr) {
    NPZ_ASSIGN_OR_RETURN(engine, MakeFastEngine());
  }
  return engine.get();
}

// InflateFrom for a checkpoint at a block start, with the fast engine: the sparse-window
// passes are a fifth of a first pass's inflating (two 32 KiB inflates per 256 KiB span).
// Not a DecodeStream: that would allocate an engine and a 128 KiB input buffer twice per
// checkpoint, and restore the checkpoint's own window where these need substitutes.
Result<size_t> FastInflateFrom(const DeflateSource& src, const Checkpoint& cp,
                               std::span<const std::byte> dict, std::span<std::byte> out) {
  NPZ_ASSIGN_OR_RETURN(InflateEngine * engine, ThreadFastEngine());
  NPZ_ASSIGN_OR_RETURN(uint8_t byte, ByteBefore(src, cp.in, cp.bits));
  Status reset = engine->Reset(cp.bits, byte, dict);
  if (!reset.ok()) return CorruptError(src, reset.message());
  // 32 KiB of output takes about 27 KiB of int16 data: read in small pieces.
  thread_local std::vector<std::byte> in_buf(16 * 1024);
  uint64_t next = cp.in;
  size_t produced = 0, in_off = 0, in_avail = 0;
  while (produced < out.size()) {
    if (in_avail == 0) {
      if (next >= src.compressed_size) return CorruptError(src, "unexpected end of data");
      const size_t want =
          static_cast<size_t>(std::min<uint64_t>(in_buf.size(), src.compressed_size - next));
      NPZ_RETURN_IF_ERROR(
          PreadExact(src.fd, in_buf.data(), want, src.data_offset + next, src.name));
      next += want;
      in_off = 0;
      in_avail = want;
    }
    Result<InflateEngine::Step> step =
        engine->Inflate(std::span(in_buf.data() + in_off, in_avail), out.subspan(produced));
    if (!step.ok()) return CorruptError(src, step.status().message());
    in_off += step->consumed;
    in_avail -= step->consumed;
    produced += step->produced;
    if (step->ended) break;
    if (step->consumed == 0 && step->produced == 0 && in_avail > 0) {
      return CorruptError(src, "the decoder is stuck");
    }
  }
  return produced;
}

// Inflates exactly out.size() bytes (or up to the stream end) starting at checkpoint
// position `cp` with dictionary `dict`. Returns the number of bytes produced.
Result<size_t> InflateFrom(const DeflateSource& src, const Checkpoint& cp,
                           std::span<const std::byte> dict, std::span<std::byte> out) {
  if (FastEngineIsIsal() && cp.at_block_start()) return FastInflateFrom(src, cp, dict, out);
  z_stream* s = ThreadInflater().get();
  if (s == nullptr) return Status::Error(ENOMEM, src.name + ": inflateInit failed");
  thread_local std::vector<std::byte> in_buf(64 * 1024);
  NPZ_ASSIGN_OR_RETURN(uint64_t next, PositionAt(s, src, cp, dict));
  s->next_out = reinterpret_cast<Bytef*>(out.data());
  s->avail_out = static_cast<uInt>(out.size());
  s->avail_in = 0;
  while (s->avail_out > 0) {
    if (s->avail_in == 0 && next < src.compressed_size) {
      size_t want = std::min<uint64_t>(in_buf.size(), src.compressed_size - next);
      NPZ_RETURN_IF_ERROR(
          PreadExact(src.fd, in_buf.data(), want, src.data_offset + next, src.name));
      next += want;
      s->next_in = reinterpret_cast<Bytef*>(in_buf.data());
      s->avail_in = static_cast<uInt>(want);
    }
    int r = inflate(s, Z_NO_FLUSH);
    if (r == Z_STREAM_END) break;
    if (r == Z_BUF_ERROR && s->avail_in == 0) {
      if (next >= src.compressed_size) return CorruptError(src, "unexpected end of data");
      continue;
    }
    if (r != Z_OK) return CorruptError(src, ZlibMessage(*s, r));
  }
  return out.size() - s->avail_out;
}

}  // namespace

InflateStream::InflateStream(DeflateSource source, bool track_blocks, PassKey)
    : src_(std::move(source)), track_blocks_(track_blocks), strm_(std::make_unique<z_stream>()) {
  *strm_ = z_stream{};
}

Result<std::unique_ptr<InflateStream>> InflateStream::Create(DeflateSource source,
                                                             bool track_blocks) {
  auto s = std::make_unique<InflateStream>(std::move(source), track_blocks, PassKey());
  if (inflateInit2(s->strm_.get(), -15) != Z_OK) {
    return Status::Error(ENOMEM, s->src_.name + ": inflateInit failed");
  }
  s->initialized_ = true;
  s->in_buf_ = std::make_unique_for_overwrite<std::byte[]>(kInputBufferSize);
  s->lookahead_ = std::make_unique_for_overwrite<std::byte[]>(kDeflateWindow);
  return s;
}

InflateStream::~InflateStream() {
  if (initialized_) inflateEnd(strm_.get());
}

Status InflateStream::Restore(const Checkpoint& cp) {
  out_pos_ = cp.out;
  header_bit_ = cp.header_bit;
  ended_ = false;
  at_boundary_ = false;
  lookahead_len_ = lookahead_used_ = 0;
  thread_local std::unique_ptr<std::byte[]> dict =
      std::make_unique_for_overwrite<std::byte[]>(kDeflateWindow);
  if (cp.window_size > kDeflateWindow) return CorruptError(src_, "checkpoint window too large");
  NPZ_RETURN_IF_ERROR(ExpandWindow(src_, cp, dict.get()));
  NPZ_ASSIGN_OR_RETURN(
      in_next_,
      PositionAt(strm_.get(), src_, cp, std::span<const std::byte>(dict.get(), cp.window_size)));
  return Status::Ok();
}

Status InflateStream::Refill() {
  if (in_next_ >= src_.compressed_size) {
    return CorruptError(src_, "compressed data ends before the deflate stream does");
  }
  size_t want = std::min<uint64_t>(kInputBufferSize, src_.compressed_size - in_next_);
  NPZ_RETURN_IF_ERROR(
      PreadExact(src_.fd, in_buf_.get(), want, src_.data_offset + in_next_, src_.name));
  in_next_ += want;
  strm_->next_in = reinterpret_cast<Bytef*>(in_buf_.get());
  strm_->avail_in = static_cast<uInt>(want);
  return Status::Ok();
}

uint64_t InflateStream::BitPosition() const {
  // data_type holds the unused bits of the bit buffer (plus flags at 64 and up).
  return (in_next_ - strm_->avail_in) * 8 - static_cast<uint64_t>(strm_->data_type & 63);
}

Result<size_t> InflateStream::Read(std::byte* out, size_t n, bool stop_at_block) {
  size_t done = 0;
  if (lookahead_used_ < lookahead_len_) {
    done = std::min(n, lookahead_len_ - lookahead_used_);
    std::memcpy(out, lookahead_.get() + lookahead_used_, done);
    lookahead_used_ += done;
    if (lookahead_used_ == lookahead_len_) lookahead_len_ = lookahead_used_ = 0;
    if (done == n) return done;
  }
  at_boundary_ = false;
  z_stream* s = strm_.get();
  while (done < n && !ended_) {
    // Refill only when there is more: zlib may finish from its bit buffer alone.
    if (s->avail_in == 0 && in_next_ < src_.compressed_size) NPZ_RETURN_IF_ERROR(Refill());
    // zlib's avail_out is 32 bits; spans are far smaller, but stay correct regardless.
    uInt chunk = static_cast<uInt>(std::min<size_t>(n - done, 1u << 30));
    s->next_out = reinterpret_cast<Bytef*>(out + done);
    s->avail_out = chunk;
    int r = inflate(s, track_blocks_ ? Z_BLOCK : Z_NO_FLUSH);
    size_t produced = chunk - s->avail_out;
    done += produced;
    out_pos_ += produced;
    if (r == Z_STREAM_END) {
      ended_ = true;
      break;
    }
    if (r == Z_BUF_ERROR && s->avail_in == 0) {  // needs more input
      NPZ_RETURN_IF_ERROR(Refill());             // EIO when the data has run out
      continue;
    }
    if (r != Z_OK) return CorruptError(src_, ZlibMessage(*s, r));
    if (track_blocks_ && (s->data_type & 128) && !(s->data_type & 64)) {
      header_bit_ = BitPosition();  // the next block starts here
      if (stop_at_block) {
        at_boundary_ = true;
        break;
      }
    }
  }
  return done;
}

void InflateStream::Unread(const std::byte* bytes, size_t n) {
  // Callers guarantee an empty lookahead and n <= kDeflateWindow.
  std::memcpy(lookahead_.get(), bytes, n);
  lookahead_used_ = 0;
  lookahead_len_ = n;
  at_boundary_ = false;
}

Result<std::span<const std::byte>> InflateStream::FillLookahead() {
  // The lookahead is empty or starts with unread bytes; it is topped up to a full window.
  std::byte* buf = lookahead_.get();
  if (lookahead_used_ > 0) {
    std::memmove(buf, buf + lookahead_used_, lookahead_len_ - lookahead_used_);
    lookahead_len_ -= lookahead_used_;
    lookahead_used_ = 0;
  }
  const size_t have = lookahead_len_;
  lookahead_len_ = lookahead_used_ = 0;  // Read must not serve the lookahead into itself
  Result<size_t> got = Read(buf + have, kDeflateWindow - have, /*stop_at_block=*/false);
  if (!got.ok()) return got.status();
  lookahead_len_ = have + *got;
  return std::span<const std::byte>(buf, lookahead_len_);
}

Checkpoint InflateStream::Position() const {
  Checkpoint cp;
  cp.out = out_pos_;
  cp.in = in_next_ - strm_->avail_in;
  cp.bits = static_cast<uint8_t>(strm_->data_type & 7);
  cp.header_bit = cp.bit();
  cp.window_size = static_cast<uint32_t>(std::min<uint64_t>(kDeflateWindow, out_pos_));
  return cp;
}

std::optional<std::pair<Checkpoint, uint32_t>> InflateStream::CodePosition() const {
  // inflateMark: the high half is how many bits back the current code starts (-1 outside a
  // coded block or in a stored one), the low half how many of its bytes were output.
  const long mark = inflateMark(strm_.get());
  const long back = mark >> 16;
  if (!track_blocks_ || back < 0) return std::nullopt;
  const uint32_t emitted = static_cast<uint32_t>(mark & 0xffff);
  const uint64_t code_bit = BitPosition() - static_cast<uint64_t>(back);
  Checkpoint cp;
  cp.out = out_pos_ - emitted;
  cp.in = (code_bit + 7) / 8;
  cp.bits = static_cast<uint8_t>(cp.in * 8 - code_bit);
  cp.header_bit = header_bit_;
  cp.window_size = static_cast<uint32_t>(std::min<uint64_t>(kDeflateWindow, cp.out));
  return std::make_pair(cp, emitted);
}

uint32_t InflateStream::Window(std::byte* buf) const {
  uInt len = 0;
  inflateGetDictionary(strm_.get(), reinterpret_cast<Bytef*>(buf), &len);
  return len;
}

Result<uint8_t> ByteBefore(const DeflateSource& src, uint64_t in, uint8_t bits) {
  if (bits == 0) return uint8_t{0};
  if (in == 0 || bits > 7) return CorruptError(src, "bad checkpoint bits");
  uint8_t byte = 0;
  NPZ_RETURN_IF_ERROR(PreadExact(src.fd, &byte, 1, src.data_offset + in - 1, src.name));
  return byte;
}

Status ExpandWindow(const DeflateSource& src, const Checkpoint& cp, std::byte* buf) {
  if (cp.window_size == 0) return Status::Ok();
  if (cp.window_size > kDeflateWindow) return CorruptError(src, "checkpoint window too large");
  // The fast engine: every span decoded from a checkpoint expands its window first, and
  // zlib took 58 us a window against ISA-L's 20 (mostly runs of zeros), 6% of a `cat`.
  NPZ_ASSIGN_OR_RETURN(InflateEngine * engine, ThreadFastEngine());
  NPZ_RETURN_IF_ERROR(engine->Reset(0, 0, {}));
  Result<InflateEngine::Step> step =
      engine->Inflate(std::as_bytes(std::span(cp.window)), std::span(buf, cp.window_size));
  if (!step.ok() || !step->ended || step->produced != cp.window_size) {
    return Status::Error(EIO, src.name + ": corrupt checkpoint window in the index");
  }
  return Status::Ok();
}

Result<std::string> MakeSparseWindow(const DeflateSource& src, const Checkpoint& cp,
                                     std::span<const std::byte> window,
                                     std::span<const std::byte> after) {
  const size_t len = window.size();
  if (len == 0) return std::string();
  const size_t n = std::min<size_t>(after.size(), kDeflateWindow);
  // The substitute windows never change; a shorter window uses their first `len` bytes.
  static const std::vector<std::byte> low_bytes = [] {
    std::vector<std::byte> v(kDeflateWindow);
    for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<std::byte>(i & 0xff);
    return v;
  }();
  static const std::vector<std::byte> high_bytes = [] {
    std::vector<std::byte> v(kDeflateWindow);
    for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<std::byte>(0x80 | (i >> 8));
    return v;
  }();
  thread_local std::vector<std::byte> out_a(kDeflateWindow), out_b(kDeflateWindow),
      sparse(kDeflateWindow);
  thread_local std::vector<unsigned char> keep(kDeflateWindow);

  NPZ_ASSIGN_OR_RETURN(size_t got_a, InflateFrom(src, cp, std::span(low_bytes.data(), len),
                                                 std::span(out_a.data(), n)));
  NPZ_ASSIGN_OR_RETURN(size_t got_b, InflateFrom(src, cp, std::span(high_bytes.data(), len),
                                                 std::span(out_b.data(), n)));
  if (got_a != n || got_b != n) return CorruptError(src, "short output after a checkpoint");

  std::fill(keep.begin(), keep.begin() + len, 0);
  bool keep_all = false;
  const auto* w = reinterpret_cast<const unsigned char*>(window.data());
  const auto* r = reinterpret_cast<const unsigned char*>(after.data());
  const auto* a = reinterpret_cast<const unsigned char*>(out_a.data());
  const auto* b = reinterpret_cast<const unsigned char*>(out_b.data());
  for (size_t i = 0; i < n; ++i) {
    if (a[i] == r[i] && b[i] == r[i]) {
      // A literal, or a copy of the one position that would print as r[i] in both passes.
      if (r[i] & 0x80) {
        size_t p = (size_t{r[i] & 0x7fu} << 8) | r[i];
        if (p < len && w[p] == r[i]) keep[p] = 1;
      }
      continue;
    }
    size_t p = (size_t{b[i] & 0x7fu} << 8) | a[i];
    if (!(b[i] & 0x80) || p >= len) {
      keep_all = true;  // cannot happen with a sane zlib; stay correct anyway
      break;
    }
    keep[p] = 1;
  }
  for (size_t i = 0; i < len; ++i) {
    sparse[i] = (keep_all || keep[i]) ? window[i] : std::byte{0};
  }

  thread_local ScratchDeflater deflater;
  z_stream* d = deflater.get();
  if (d == nullptr) return Status::Error(ENOMEM, src.name + ": deflateInit failed");
  deflateReset(d);
  std::string packed(deflateBound(d, static_cast<uLong>(len)), '\0');
  d->next_in = reinterpret_cast<Bytef*>(sparse.data());
  d->avail_in = static_cast<uInt>(len);
  d->next_out = reinterpret_cast<Bytef*>(packed.data());
  d->avail_out = static_cast<uInt>(packed.size());
  if (deflate(d, Z_FINISH) != Z_STREAM_END) {
    return Status::Error(EIO, src.name + ": deflate of a checkpoint window failed");
  }
  packed.resize(packed.size() - d->avail_out);
  // Kept for the member's lifetime: give back the rest of the deflateBound buffer (without
  // this, each ~2.4 KB window held ~33 KiB: 66 MiB of RSS for a 1 GiB member's index).
  packed.shrink_to_fit();
  return packed;
}

}  // namespace npzfs
