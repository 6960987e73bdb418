// Finding a way into a deflate stream from its compressed bytes alone.
//
// Why. A reader that jumps far ahead of everything decoded so far (np.load of a frame at 60%
// of a member on a fresh mount) waits while one core inflates everything before its frame:
// deflate is sequential, each block's back-references reach into the 32 KiB before it. To
// put the second core on the same wait, it must start decoding in the middle, where it knows
// neither the bit offset of a block nor the window. This file finds both, as rapidgzip does:
//
//   1. A block start. Every bit offset is tried as the header of a dynamic-Huffman block
//      (what zlib writes for compressible data): BFINAL 0, BTYPE 2, at most 286 literal/length
//      and 30 distance codes, a complete code-length code, code lengths that decode without
//      overrun, an end-of-block code, and literal/length and distance codes that are complete
//      (or hold one code, as zlib allows). Cheap tests first: nearly every offset fails on its
//      first 13 bits. A random offset that passes all of them is rare, and then fails while
//      its "blocks" are decoded (step 2), so it costs a little time, never a wrong byte.
//   2. A known window. From the header found, blocks are decoded into 16-bit symbols: a byte,
//      or kUnknown for a byte copied from before the start (a back-reference reaching past
//      the output decoded so far, or copying such a symbol again). As soon as a block ends
//      with the last 32 KiB all bytes, the stream can go on from there with any inflater,
//      that window as dictionary: the resume point. Numpy's data needs a few hundred KiB.
//
// Only a guess. Nothing here proves that first_bit is a block boundary of the real stream
// (a run of valid-looking blocks can start at a false offset). The caller proves it: the
// decoder coming from the member's start must stop between two blocks exactly at first_bit,
// and again at resume_bit with `window` as its last 32 KiB (DeflatedMember::SkipFar), which
// checks this file's own decoder too. Until then nothing decoded from the guess is served.
//
// Bounds. Every loop reads inside a buffer read once (16 zero bytes of padding let a lookup
// read past the end, and every loop stops once the bit position passes the end); the output
// kept is a 64 Ki-symbol ring; decoding stops at warmup_bytes of output per candidate,
// twice that in all, and after `blocks` block headers in all (a crafted stream of empty
// blocks produces nothing and costs a header each), so any input costs bounded time and
// memory: the search over the whole buffer, then at most that much decoding.
#include "core/read/block_finder.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <memory>

#include "npzfs/file_util.h"

namespace npzfs {
namespace {

constexpr uint16_t kUnknown = 0x100;
// A read may start up to 71 bits past the end (a symbol's bits after the last check) and
// loads 8 bytes: 16 bytes of zeros cover it; 32 leave room.
constexpr size_t kPad = 32;

// Bits of an in-memory buffer, least significant first, as deflate packs them. Reads past
// the end give zeros (the buffer is padded); overrun() tells.
class Bits {
 public:
  Bits(const uint8_t* data, uint64_t size_bits) : data_(data), end_(size_bits) {}
  uint32_t Peek(unsigned n) const {  // n <= 32
    uint64_t v;
    std::memcpy(&v, data_ + (pos_ >> 3), sizeof v);
    return static_cast<uint32_t>((v >> (pos_ & 7)) & ((uint64_t{1} << n) - 1));
  }
  void Drop(unsigned n) { pos_ += n; }
  uint32_t Get(unsigned n) {
    const uint32_t v = Peek(n);
    pos_ += n;
    return v;
  }
  bool overrun() const { return pos_ > end_; }
  uint64_t pos() const { return pos_; }
  void Seek(uint64_t bit) { pos_ = bit; }
  const uint8_t* data() const { return data_; }

 private:
  const uint8_t* data_;
  uint64_t end_;
  uint64_t pos_ = 0;
};

// A canonical Huffman code: a lookup of the next kFast bits for short codes, then bit by bit.
class Huffman {
 public:
  static constexpr unsigned kFast = 10;
  static constexpr unsigned kMaxLen = 15;

  // False for an over-subscribed code, or an incomplete one where deflate (as zlib reads it)
  // does not allow it: the code-length code must be complete (`complete_only`); the others
  // may hold no code or a single code of one bit.
  bool Build(const uint8_t* lengths, unsigned n, bool complete_only) {
    count_.fill(0);
    for (unsigned i = 0; i < n; ++i) ++count_[lengths[i]];
    int left = 1;
    for (unsigned len = 1; len <= kMaxLen; ++len) {
      left = (left << 1) - count_[len];
      if (left < 0) return false;
    }
    const unsigned codes = n - count_[0];
    if (left > 0 && (complete_only || !(codes == 0 || (codes == 1 && count_[1] == 1)))) {
      return false;
    }
    std::array<uint16_t, kMaxLen + 2> offs{};
    for (unsigned len = 1; len <= kMaxLen; ++len) offs[len + 1] = offs[len] + count_[len];
    for (unsigned sym = 0; sym < n; ++sym) {
      if (lengths[sym] != 0) symbol_[offs[lengths[sym]]++] = static_cast<uint16_t>(sym);
    }
    fast_.fill(0);
    uint32_t code = 0;
    unsigned k = 0;
    for (unsigned len = 1; len <= kFast; ++len) {
      for (unsigned j = 0; j < count_[len]; ++j, ++code) {
        uint32_t rev = 0;
        for (unsigned b = 0; b < len; ++b) rev |= ((code >> b) & 1) << (len - 1 - b);
        for (uint32_t idx = rev; idx < (1u << kFast); idx += 1u << len) {
          fast_[idx] = static_cast<uint16_t>((len << 12) | symbol_[k + j]);
        }
      }
      k += count_[len];
      code <<= 1;
    }
    return true;
  }

  // The next symbol, or -1 for a bit pattern that is no code.
  int Decode(Bits& bits) const {
    const uint16_t e = fast_[bits.Peek(kFast)];
    if (e != 0) {
      bits.Drop(e >> 12);
      return e & 0xfff;
    }
    int code = 0, first = 0, index = 0;
    for (unsigned len = 1; len <= kMaxLen; ++len) {
      code |= static_cast<int>(bits.Get(1));
      const int count = count_[len];
      if (code - count < first) return symbol_[index + (code - first)];
      index += count;
      first = (first + count) << 1;
      code <<= 1;
    }
    return -1;
  }

 private:
  std::array<uint16_t, kMaxLen + 1> count_{};
  std::array<uint16_t, 288> symbol_{};
  std::array<uint16_t, 1u << kFast> fast_{};
};

constexpr uint16_t kLenBase[29] = {3,  4,  5,  6,  7,  8,  9,  10, 11,  13,  15,  17,  19,  23, 27,
                                   31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
constexpr uint8_t kLenExtra[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2,
                                   2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
constexpr uint16_t kDistBase[30] = {1,    2,    3,    4,    5,    7,    9,    13,    17,    25,
                                    33,   49,   65,   97,   129,  193,  257,  385,   513,   769,
                                    1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577};
constexpr uint8_t kDistExtra[30] = {0, 0, 0, 0, 1, 1, 2, 2,  3,  3,  4,  4,  5,  5,  6,
                                    6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};
constexpr uint8_t kCodeLengthOrder[19] = {16, 17, 18, 0, 8,  7, 9,  6, 10, 5,
                                          11, 4,  12, 3, 13, 2, 14, 1, 15};

// The cheap part of a dynamic header check, at the current position, consuming nothing:
// BFINAL 0, BTYPE 2, code counts in range, and a complete code-length code.
bool LooksLikeDynamicHeader(const Bits& bits) {
  const uint32_t head = bits.Peek(17);
  if ((head & 7) != 4) return false;  // BFINAL 0, BTYPE 2 (bits 1-2, least significant first)
  if (((head >> 3) & 31) > 29 || ((head >> 8) & 31) > 29) return false;
  const unsigned hclen = ((head >> 13) & 15) + 4;
  Bits probe = bits;
  probe.Drop(17);
  int left = 1;
  std::array<int, 8> count{};
  for (unsigned i = 0; i < hclen; ++i) ++count[probe.Get(3)];
  for (unsigned len = 1; len <= 7; ++len) {
    left = (left << 1) - count[len];
    if (left < 0) return false;
  }
  return left == 0;
}

// Decodes blocks into symbols (see the essay) from a candidate header on. One decoder tries
// every candidate in turn (its ring is 128 KiB).
class Decoder {
 public:
  enum class End { kClean, kStop };

  Decoder(Bits bits, uint64_t max_out, uint64_t max_blocks)
      : bits_(bits), max_out_(max_out), blocks_left_(max_blocks) {
    static const Huffman* fixed = [] {
      static Huffman tables[2];
      uint8_t lit[288];
      std::fill(lit, lit + 144, 8);
      std::fill(lit + 144, lit + 256, 9);
      std::fill(lit + 256, lit + 280, 7);
      std::fill(lit + 280, lit + 288, 8);
      uint8_t dist[32];
      std::fill(dist, dist + 32, 5);  // 30 and 31 are codes that Codes() refuses
      tables[0].Build(lit, 288, true);
      tables[1].Build(dist, 32, true);
      return tables;
    }();
    fixed_ = fixed;
  }

  // Starts over at bit `bit`: true when a whole valid dynamic header (not final) is there.
  bool Start(uint64_t bit) {
    if (blocks_left_ == 0) return false;
    --blocks_left_;
    bits_.Seek(bit);
    out_ = last_unknown_ = 0;
    return bits_.Get(3) == 4 && Dynamic() && !bits_.overrun();
  }

  // After Start: decodes the first block, then the next ones, until a block ends with a
  // known window (kClean), or anything else stops it: a bit pattern no valid stream has, the
  // final block, the end of the buffer, max_out.
  End Run() {
    if (!Codes(lit_, dist_) || bits_.overrun()) return End::kStop;
    while (!Clean()) {
      if (blocks_left_ == 0) return End::kStop;
      --blocks_left_;
      const uint32_t head = bits_.Get(3);
      if ((head & 1) != 0) return End::kStop;  // the final block: nothing to resume after it
      bool ok = false;
      switch (head >> 1) {
        case 0:
          ok = Stored();
          break;
        case 1:
          ok = Codes(fixed_[0], fixed_[1]);
          break;
        case 2:
          ok = Dynamic() && Codes(lit_, dist_);
          break;
        default:
          return End::kStop;
      }
      if (!ok || bits_.overrun()) return End::kStop;
    }
    return End::kClean;
  }

  uint64_t out() const { return out_; }
  uint64_t pos() const { return bits_.pos(); }
  std::vector<std::byte> Window() const {
    std::vector<std::byte> w(kDeflateWindow);
    for (uint64_t i = 0; i < kDeflateWindow; ++i) {
      w[i] = static_cast<std::byte>(ring_[(out_ - kDeflateWindow + i) & kMask]);
    }
    return w;
  }

 private:
  static constexpr uint64_t kMask = (1u << 16) - 1;

  bool Clean() const { return out_ >= kDeflateWindow && out_ - last_unknown_ >= kDeflateWindow; }

  void Put(uint16_t v) {
    ring_[out_ & kMask] = v;
    ++out_;
    if (v & kUnknown) last_unknown_ = out_;
  }

  bool Dynamic() {
    const unsigned hlit = bits_.Get(5) + 257, hdist = bits_.Get(5) + 1, hclen = bits_.Get(4) + 4;
    if (hlit > 286 || hdist > 30) return false;
    uint8_t cl[19] = {};
    for (unsigned i = 0; i < hclen; ++i)
      cl[kCodeLengthOrder[i]] = static_cast<uint8_t>(bits_.Get(3));
    Huffman clh;
    if (!clh.Build(cl, 19, true)) return false;
    uint8_t lengths[286 + 30] = {};
    unsigned i = 0;
    while (i < hlit + hdist) {
      if (bits_.overrun()) return false;
      const int sym = clh.Decode(bits_);
      if (sym < 0) return false;
      if (sym < 16) {
        lengths[i++] = static_cast<uint8_t>(sym);
        continue;
      }
      uint8_t value = 0;
      unsigned repeat = 0;
      if (sym == 16) {
        if (i == 0) return false;
        value = lengths[i - 1];
        repeat = 3 + bits_.Get(2);
      } else if (sym == 17) {
        repeat = 3 + bits_.Get(3);
      } else {
        repeat = 11 + bits_.Get(7);
      }
      if (i + repeat > hlit + hdist) return false;
      std::fill(lengths + i, lengths + i + repeat, value);
      i += repeat;
    }
    if (lengths[256] == 0) return false;
    return lit_.Build(lengths, hlit, false) && dist_.Build(lengths + hlit, hdist, false);
  }

  bool Codes(const Huffman& lit, const Huffman& dist) {
    while (true) {
      if (bits_.overrun() || out_ > max_out_) return false;
      const int sym = lit.Decode(bits_);
      if (sym < 0) return false;
      if (sym < 256) {
        Put(static_cast<uint16_t>(sym));
        continue;
      }
      if (sym == 256) return true;
      if (sym > 285) return false;
      const unsigned len = kLenBase[sym - 257] + bits_.Get(kLenExtra[sym - 257]);
      const int dsym = dist.Decode(bits_);
      if (dsym < 0 || dsym >= 30) return false;
      const uint64_t d = kDistBase[dsym] + bits_.Get(kDistExtra[dsym]);
      for (unsigned k = 0; k < len; ++k) Put(d > out_ ? kUnknown : ring_[(out_ - d) & kMask]);
    }
  }

  bool Stored() {
    bits_.Seek((bits_.pos() + 7) & ~uint64_t{7});
    const uint32_t len = bits_.Get(16), nlen = bits_.Get(16);
    if (len != (~nlen & 0xffff)) return false;
    if (bits_.overrun() || out_ + len > max_out_) return false;
    const uint8_t* p = bits_.data() + bits_.pos() / 8;
    bits_.Drop(len * 8);
    if (bits_.overrun()) return false;
    for (uint32_t k = 0; k < len; ++k) Put(p[k]);
    return true;
  }

  Bits bits_;
  const uint64_t max_out_;
  uint64_t blocks_left_;  // headers parsed, over every candidate: the bound on time
  const Huffman* fixed_ = nullptr;
  Huffman lit_, dist_;
  std::vector<uint16_t> ring_ = std::vector<uint16_t>(kMask + 1);
  uint64_t out_ = 0;
  uint64_t last_unknown_ = 0;  // one past the last kUnknown put (0: none)
};

}  // namespace

Result<std::optional<SpeculativeStart>> FindSpeculativeStart(const DeflateSource& source,
                                                             uint64_t from_bit,
                                                             const SpeculationLimits& limits) {
  const uint64_t from_byte = from_bit / 8;
  if (from_byte >= source.compressed_size) return std::optional<SpeculativeStart>();
  // The warm-up's compressed bytes: at most its output plus stored blocks' 5-byte headers.
  const uint64_t want =
      limits.search_bytes + limits.warmup_bytes + (limits.warmup_bytes >> 8) + (64 << 10);
  const size_t size = static_cast<size_t>(std::min(want, source.compressed_size - from_byte));
  std::unique_ptr<uint8_t[]> buf(new (std::nothrow) uint8_t[size + kPad]);
  if (buf == nullptr) return Status::Error(ENOMEM, source.name + ": out of memory");
  NPZ_RETURN_IF_ERROR(
      PreadExact(source.fd, buf.get(), size, source.data_offset + from_byte, source.name));
  std::memset(buf.get() + size, 0, kPad);

  const uint64_t end_bits = uint64_t{size} * 8;
  const uint64_t search_end =
      std::min(end_bits, (from_bit - from_byte * 8) + limits.search_bytes * 8);
  uint64_t tried = 0, decoded = 0;
  Bits bits(buf.get(), end_bits);
  Decoder dec(bits, limits.warmup_bytes, limits.blocks);
  for (uint64_t b = from_bit - from_byte * 8; b < search_end; ++b) {
    bits.Seek(b);
    if (!LooksLikeDynamicHeader(bits) || !dec.Start(b)) continue;
    if (++tried > limits.candidates || decoded > 2 * limits.warmup_bytes) break;
    const Decoder::End end = dec.Run();
    decoded += dec.out();
    if (end != Decoder::End::kClean) continue;
    SpeculativeStart start;
    start.first_bit = from_byte * 8 + b;
    start.resume_bit = from_byte * 8 + dec.pos();
    start.out_between = dec.out();
    start.window = dec.Window();
    return std::optional<SpeculativeStart>(std::move(start));
  }
  return std::optional<SpeculativeStart>();
}

}  // namespace npzfs
