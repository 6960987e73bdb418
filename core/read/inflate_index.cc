// Random access into deflated members: design essay.
//
// A deflate stream can only be decoded from its start: every block may copy bytes from
// the previous 32 KiB of output, and blocks do not start on byte boundaries. zlib's
// examples/zran.c shows the way out: at a block boundary, the decoder state is just
// (input position, the few unused bits of the current input byte, the last 32 KiB of
// output). Record that state every so often (a "checkpoint") during one sequential pass,
// and any later read inflates from the nearest checkpoint before it: at most one "span"
// of about `checkpoint_spacing` (1 MiB) bytes.
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
// free). The other window bytes are zeroed and the result deflated: about 3 KiB
// instead of 32 KiB for noisy int16 data (measured: the index of a 64 MiB member is 0.28%
// of it at 1 MiB spacing; 0.12% for a float32 random walk). A read from the checkpoint restores the
// sparse window with inflateSetDictionary; the zeroed bytes are never referenced, so the output is
// identical (tested byte for byte).
//
// The first pass needs the real output after a new checkpoint to make its sparse window,
// but that output belongs to the next span. The first-pass stream therefore inflates up to
// 32 KiB ahead into its lookahead (InflateStream::FillLookahead) as soon as it records a
// checkpoint; the lookahead is returned by the next Read, so nothing is inflated twice and
// the checkpoint is complete (sparse window included) the moment it is published. A
// parked first-pass stream that gets evicted loses only its lookahead.
//
// Live streams. Restoring from a checkpoint costs a window expansion and a dictionary copy;
// continuing a stream costs nothing. A sequential reader's stream is parked (StreamPool) at
// the span end it reached, keyed by (member, output offset), and the next span's producer
// takes it. The pool is bounded (each stream holds ~200 KiB: zlib state and window, the
// input buffer, the lookahead), so memory stays bounded whatever the number of members.
//
// What this file does not do: decide span boundaries, caching, CRC policy and locking live
// in core/read/member_reader.cc; the sidecar format in core/read/index_file.cc.
#include "core/read/inflate_index.h"

#include <algorithm>
#include <cstring>
#include <vector>

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

// Inflates exactly out.size() bytes (or up to the stream end) starting at checkpoint
// position `cp` with dictionary `dict`. Returns the number of bytes produced.
Result<size_t> InflateFrom(const DeflateSource& src, const Checkpoint& cp,
                           std::span<const std::byte> dict, std::span<std::byte> out) {
  z_stream* s = ThreadInflater().get();
  if (s == nullptr) return Status::Error(ENOMEM, src.name + ": inflateInit failed");
  inflateReset(s);
  thread_local std::vector<std::byte> in_buf(64 * 1024);
  uint64_t next = cp.in;
  if (cp.bits != 0) {
    if (cp.in == 0) return CorruptError(src, "checkpoint bits at offset 0");
    unsigned char byte = 0;
    NPZ_RETURN_IF_ERROR(PreadExact(src.fd, &byte, 1, src.data_offset + cp.in - 1, src.name));
    inflatePrime(s, cp.bits, byte >> (8 - cp.bits));
  }
  if (!dict.empty()) {
    int r = inflateSetDictionary(s, reinterpret_cast<const Bytef*>(dict.data()),
                                 static_cast<uInt>(dict.size()));
    if (r != Z_OK) return CorruptError(src, "inflateSetDictionary: " + ZlibMessage(*s, r));
  }
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

InflateStream::InflateStream(DeflateSource source, PassKey)
    : src_(std::move(source)), strm_(std::make_unique<z_stream>()) {
  *strm_ = z_stream{};
}

Result<std::unique_ptr<InflateStream>> InflateStream::Create(DeflateSource source) {
  auto s = std::make_unique<InflateStream>(std::move(source), PassKey());
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
  z_stream* s = strm_.get();
  inflateReset(s);
  s->avail_in = 0;
  s->next_in = nullptr;
  in_next_ = cp.in;
  out_pos_ = cp.out;
  ended_ = false;
  at_boundary_ = false;
  lookahead_len_ = lookahead_used_ = 0;
  if (cp.bits != 0) {
    if (cp.in == 0 || cp.bits > 7) return CorruptError(src_, "bad checkpoint bits");
    unsigned char byte = 0;
    NPZ_RETURN_IF_ERROR(PreadExact(src_.fd, &byte, 1, src_.data_offset + cp.in - 1, src_.name));
    inflatePrime(s, cp.bits, byte >> (8 - cp.bits));
  }
  if (cp.window_size > 0) {
    thread_local std::unique_ptr<std::byte[]> dict =
        std::make_unique_for_overwrite<std::byte[]>(kDeflateWindow);
    NPZ_RETURN_IF_ERROR(ExpandWindow(src_, cp, dict.get()));
    int r = inflateSetDictionary(s, reinterpret_cast<const Bytef*>(dict.get()), cp.window_size);
    if (r != Z_OK) return CorruptError(src_, "inflateSetDictionary: " + ZlibMessage(*s, r));
  }
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
    int r = inflate(s, stop_at_block ? Z_BLOCK : Z_NO_FLUSH);
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
    if (stop_at_block && (s->data_type & 128) && !(s->data_type & 64)) {
      at_boundary_ = true;
      break;
    }
  }
  return done;
}

Result<std::span<const std::byte>> InflateStream::FillLookahead() {
  // Only called right after a Read stopped at a boundary, with no lookahead pending.
  lookahead_len_ = lookahead_used_ = 0;
  std::byte* buf = lookahead_.get();
  Result<size_t> got = Read(buf, kDeflateWindow, /*stop_at_block=*/false);
  if (!got.ok()) return got.status();
  lookahead_len_ = *got;
  return std::span<const std::byte>(buf, lookahead_len_);
}

Checkpoint InflateStream::Position() const {
  Checkpoint cp;
  cp.out = out_pos_;
  cp.in = in_next_ - strm_->avail_in;
  cp.bits = static_cast<uint8_t>(strm_->data_type & 7);
  cp.window_size = static_cast<uint32_t>(std::min<uint64_t>(kDeflateWindow, out_pos_));
  return cp;
}

uint32_t InflateStream::Window(std::byte* buf) const {
  uInt len = 0;
  inflateGetDictionary(strm_.get(), reinterpret_cast<Bytef*>(buf), &len);
  return len;
}

Status ExpandWindow(const DeflateSource& src, const Checkpoint& cp, std::byte* buf) {
  if (cp.window_size == 0) return Status::Ok();
  if (cp.window_size > kDeflateWindow) return CorruptError(src, "checkpoint window too large");
  z_stream* s = ThreadInflater().get();
  if (s == nullptr) return Status::Error(ENOMEM, src.name + ": inflateInit failed");
  inflateReset(s);
  s->next_in = reinterpret_cast<Bytef*>(const_cast<char*>(cp.window.data()));
  s->avail_in = static_cast<uInt>(cp.window.size());
  s->next_out = reinterpret_cast<Bytef*>(buf);
  s->avail_out = cp.window_size;
  int r = inflate(s, Z_FINISH);
  if (r != Z_STREAM_END || s->avail_out != 0) {
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
  return packed;
}

std::unique_ptr<InflateStream> StreamPool::Take(uint64_t member, uint64_t pos) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = parked_.begin(); it != parked_.end(); ++it) {
    if (it->member == member && it->pos == pos) {
      std::unique_ptr<InflateStream> s = std::move(it->stream);
      parked_.erase(it);
      return s;
    }
  }
  return nullptr;
}

void StreamPool::Park(uint64_t member, std::unique_ptr<InflateStream> stream) {
  if (stream == nullptr || stream->ended() || capacity_ == 0) return;
  std::list<Parked> evicted;  // destroyed after the lock is released
  {
    std::lock_guard<std::mutex> lock(mu_);
    uint64_t pos = stream->resume_pos();
    parked_.push_front(Parked{member, pos, std::move(stream)});
    while (parked_.size() > capacity_) {
      evicted.splice(evicted.begin(), parked_, std::prev(parked_.end()));
    }
  }
}

size_t StreamPool::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return parked_.size();
}

uint64_t CheckpointBytes(const Checkpoint& cp) { return 8 + 8 + 1 + 4 + 4 + 4 + cp.window.size(); }

}  // namespace npzfs
