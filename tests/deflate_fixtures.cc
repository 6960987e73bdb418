#include "tests/deflate_fixtures.h"

#include <gtest/gtest.h>
#include <zlib.h>

#include <algorithm>
#include <random>

#include "tests/test_util.h"
#include "tests/zip_bytes.h"

namespace npzfs::testing {
namespace {

// Writes deflate's bit stream: fields LSB first, Huffman codes MSB first.
class BitWriter {
 public:
  void Bits(uint32_t value, int count) {
    acc_ |= uint64_t{value} << nbits_;
    nbits_ += count;
    while (nbits_ >= 8) {
      out_.push_back(static_cast<char>(acc_ & 0xff));
      acc_ >>= 8;
      nbits_ -= 8;
    }
  }
  void Code(uint32_t code, int length) {
    uint32_t reversed = 0;
    for (int i = 0; i < length; ++i) reversed |= ((code >> i) & 1u) << (length - 1 - i);
    Bits(reversed, length);
  }
  // Fixed Huffman codes (RFC 1951, 3.2.6).
  void Literal(uint32_t v) {
    if (v < 144) {
      Code(0x30 + v, 8);
    } else if (v < 256) {
      Code(0x190 + v - 144, 9);
    } else if (v < 280) {
      Code(v - 256, 7);
    } else {
      Code(0xc0 + v - 280, 8);
    }
  }
  void Match(uint32_t length, uint32_t distance) {
    static const uint16_t kLenBase[] = {3,  4,  5,  6,   7,   8,   9,   10,  11, 13,
                                        15, 17, 19, 23,  27,  31,  35,  43,  51, 59,
                                        67, 83, 99, 115, 131, 163, 195, 227, 258};
    static const uint8_t kLenExtra[] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2,
                                        2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
    static const uint16_t kDistBase[] = {
        1,   2,   3,   4,   5,   7,    9,    13,   17,   25,   33,   49,   65,    97,    129,
        193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577};
    static const uint8_t kDistExtra[] = {0, 0, 0, 0, 1, 1, 2, 2,  3,  3,  4,  4,  5,  5,  6,
                                         6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};
    int l = 28;
    while (kLenBase[l] > length) --l;
    Literal(257 + static_cast<uint32_t>(l));
    Bits(length - kLenBase[l], kLenExtra[l]);
    int d = 29;
    while (kDistBase[d] > distance) --d;
    Code(static_cast<uint32_t>(d), 5);
    Bits(distance - kDistBase[d], kDistExtra[d]);
  }
  void FinishByte() {
    if (nbits_ > 0) Bits(0, 8 - nbits_);
  }
  int pending_bits() const { return nbits_; }
  std::string& out() { return out_; }

 private:
  std::string out_;
  uint64_t acc_ = 0;
  int nbits_ = 0;
};

}  // namespace

DeflateBlock NoisyFixedBlock(size_t size, uint32_t seed) {
  std::mt19937 rng(seed);
  DeflateBlock block;
  BitWriter w;
  w.Bits(1, 1);  // BFINAL
  w.Bits(1, 2);  // fixed Huffman
  std::string& plain = block.plain;
  while (plain.size() < size) {
    const size_t left = size - plain.size();
    if (plain.size() < 3 || left < 3 || rng() % 3 == 0) {
      const char c = static_cast<char>(rng() & 0xff);
      w.Literal(static_cast<uint8_t>(c));
      plain.push_back(c);
      continue;
    }
    const uint32_t length = static_cast<uint32_t>(std::min<size_t>(left, 3 + rng() % 256));
    const uint32_t distance =
        1 + static_cast<uint32_t>(rng() % std::min<size_t>(plain.size(), 32768));
    w.Match(length, distance);
    for (uint32_t i = 0; i < length; ++i) plain.push_back(plain[plain.size() - distance]);
  }
  w.Literal(256);
  w.FinishByte();
  block.raw = std::move(w.out());
  return block;
}

std::string ZerosFixedBlock(const std::string& prefix, uint64_t size) {
  BitWriter w;
  w.Bits(1, 1);
  w.Bits(1, 2);
  for (char c : prefix) w.Literal(static_cast<uint8_t>(c));
  uint64_t left = size - prefix.size();
  if (left > 0) {
    w.Literal(0);
    --left;
  }
  // 13-bit matches until the writer is byte-aligned; then 8 matches are exactly 13 bytes,
  // which repeat.
  while (left >= 258 && w.pending_bits() != 0) {
    w.Match(258, 1);
    left -= 258;
  }
  constexpr uint64_t kGroup = 8 * 258;
  if (left >= kGroup) {
    BitWriter group;
    for (int i = 0; i < 8; ++i) group.Match(258, 1);
    const uint64_t groups = left / kGroup;
    std::string& out = w.out();
    out.reserve(out.size() + groups * group.out().size() + 64);
    for (uint64_t g = 0; g < groups; ++g) out += group.out();
    left -= groups * kGroup;
  }
  while (left >= 258) {
    w.Match(258, 1);
    left -= 258;
  }
  for (; left > 0; --left) w.Literal(0);
  w.Literal(256);
  w.FinishByte();
  return std::move(w.out());
}

uint32_t ZerosCrc(const std::string& prefix, uint64_t size) {
  uLong crc =
      crc32(0, reinterpret_cast<const Bytef*>(prefix.data()), static_cast<uInt>(prefix.size()));
  const std::string zeros(1 << 20, '\0');
  for (uint64_t left = size - prefix.size(); left > 0;) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(left, zeros.size()));
    crc = crc32(crc, reinterpret_cast<const Bytef*>(zeros.data()), static_cast<uInt>(n));
    left -= n;
  }
  return static_cast<uint32_t>(crc);
}

void WriteRawDeflateZip(const std::string& path, const std::string& name, const std::string& raw,
                        uint32_t crc, uint64_t size) {
  ASSERT_LT(size, uint64_t{1} << 32);
  ASSERT_LT(raw.size(), size_t{1} << 32);
  WriteFileOrDie(path, BuildZip({{name, 8, raw, crc, size, ""}}));
}

}  // namespace npzfs::testing
