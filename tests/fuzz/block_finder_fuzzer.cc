// Fuzzes FindSpeculativeStart (core/read/block_finder.h): finding a dynamic-Huffman block
// header and a known window from compressed bytes alone, from any bit offset, with small
// limits.
//
// Input: one mode byte, the start bit (U32, taken modulo the data's bits + 64), the limits
// (search bytes 0..64 KiB, warm-up bytes 0..256 KiB, candidates 0..64) and the number of junk
// bytes before the data (0..63), then either
//   - (mode bit 0 clear) the recipe of a plaintext of up to 384 KiB (int16 signals, noise,
//     copies, runs, words), compressed here with a level, strategy, memLevel and flush
//     spacing taken from the input; or
//   - (mode bit 0 set) a raw deflate stream as is (anything).
// Checked: the call never fails on readable data; a start found is consistent in itself
// (bounds, window size, limits), searching again from it finds the same start, and where
// zlib, inflating the data from its start with Z_BLOCK, passes first_bit between two blocks
// (the design's condition for the guess to hold), resume_bit is a block boundary too, and
// out_between and the window are zlib's.
#include <zlib.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <string>

#include "core/read/block_finder.h"
#include "tests/fuzz/fuzz_util.h"

namespace npzfs::fuzz {
namespace {

constexpr size_t kMaxPlain = 384 << 10;
constexpr size_t kMaxInflated = 8 << 20;  // zlib's reference stops here
constexpr uint8_t kModeRaw = 1;

// Little-endian int16 samples: a triangle wave plus noise (integers only: the same bytes on
// every machine).
void AppendSignal(std::string* out, size_t samples, uint32_t amplitude, uint32_t period,
                  uint32_t noise, uint32_t& rng) {
  for (size_t i = 0; i < samples; ++i) {
    const uint32_t phase = static_cast<uint32_t>(i % period);
    const int64_t tri = static_cast<int64_t>(phase < period / 2 ? phase : period - phase);
    int64_t v = tri * 2 * amplitude / std::max<uint32_t>(1, period) - amplitude / 2;
    if (noise > 0) v += static_cast<int64_t>(XorShift(rng) % (2 * noise + 1)) - noise;
    const auto s = static_cast<uint16_t>(static_cast<int16_t>(v));
    out->push_back(static_cast<char>(s & 0xff));
    out->push_back(static_cast<char>(s >> 8));
  }
}

std::string MakePlaintext(FuzzInput& in) {
  static const char* kWords[] = {"frame ",  "adc ",     "sensor_", "0.125,", "npzfs ",
                                 "window ", "2024-03-", "\n",      "ok,",    "-17,"};
  const size_t target = in.Range(0, kMaxPlain);
  uint32_t rng = in.U32() | 1;
  std::string plain;
  plain.reserve(target + 2);
  while (plain.size() < target) {
    const size_t room = target - plain.size();
    if (in.empty()) {  // recipe used up: numpy-like samples to the end
      AppendSignal(&plain, (room + 1) / 2, 2000, 1000, 30, rng);
      break;
    }
    switch (in.U8() % 5) {
      case 0: {
        const size_t samples = std::min<size_t>(in.Range(1, 32768), (room + 1) / 2);
        const uint32_t amplitude = in.U16();
        const uint32_t period = static_cast<uint32_t>(in.Range(2, 4096));
        const uint32_t noise = in.U8();
        AppendSignal(&plain, samples, amplitude, period, noise, rng);
        break;
      }
      case 1:
        AppendNoise(in, room, rng, &plain);
        break;
      case 2:
        AppendBackCopy(in, room, &plain);
        break;
      case 3:
        AppendRun(in, room, &plain);
        break;
      default:  // words: text
        for (size_t n = in.Range(1, 4096); n > 0 && plain.size() < target; --n) {
          plain += kWords[XorShift(rng) % 10];
        }
    }
  }
  plain.resize(target);
  return plain;
}

std::string MakeStream(uint8_t mode, FuzzInput& in) {
  if (mode & kModeRaw) return in.Rest();
  static constexpr int kStrategies[] = {Z_DEFAULT_STRATEGY, Z_FILTERED, Z_HUFFMAN_ONLY, Z_RLE,
                                        Z_FIXED};
  const int level = static_cast<int>(in.Range(0, 9));
  const int strategy = kStrategies[in.Range(0, 4)];
  const int mem_level = static_cast<int>(in.Range(1, 9));
  const size_t flush_every = in.Bool() ? in.Range(1, 96 << 10) : 0;
  return RawDeflate(MakePlaintext(in), level, strategy, mem_level, flush_every);
}

// zlib's view of the stream from its start: every block boundary it passes (bit offset ->
// uncompressed offset) and the bytes, up to its end, its first error or kMaxInflated.
struct Truth {
  std::map<uint64_t, uint64_t> out_at;
  std::string plain;
};

Truth Inflate(const std::string& raw) {
  struct Inflater {
    z_stream s{};
    ~Inflater() { inflateEnd(&s); }
  };
  auto z = std::make_unique<Inflater>();
  z_stream* s = &z->s;
  if (inflateInit2(s, -15) != Z_OK) Fail(__FILE__, __LINE__, "inflateInit2");
  Truth t;
  t.out_at[0] = 0;
  t.plain.resize(kMaxInflated);
  s->next_in = reinterpret_cast<Bytef*>(const_cast<char*>(raw.data()));
  s->avail_in = static_cast<uInt>(raw.size());
  s->next_out = reinterpret_cast<Bytef*>(t.plain.data());
  s->avail_out = static_cast<uInt>(t.plain.size());
  while (inflate(s, Z_BLOCK) == Z_OK && s->avail_out > 0) {
    if ((s->data_type & 128) && !(s->data_type & 64)) {
      t.out_at[s->total_in * 8 - (s->data_type & 7)] = s->total_out;
    }
  }
  t.plain.resize(s->total_out);
  return t;
}

std::string Describe(const SpeculativeStart& st) {
  return "first_bit " + std::to_string(st.first_bit) + ", resume_bit " +
         std::to_string(st.resume_bit) + ", out_between " + std::to_string(st.out_between);
}

void Run(const uint8_t* data, size_t size) {
  FuzzInput in(data, size);
  const uint8_t mode = in.U8();
  const uint32_t from_draw = in.U32();
  SpeculationLimits limits;
  limits.search_bytes = in.Range(0, 64 << 10);
  limits.warmup_bytes = in.Range(0, 256 << 10);
  limits.candidates = in.Range(0, 64);
  const size_t junk = in.Range(0, 63);
  const std::string raw = MakeStream(mode, in);
  const uint64_t bits = uint64_t{raw.size()} * 8;
  const uint64_t from_bit = from_draw % (bits + 64);

  const UniqueFd fd = MemFileOrAbort(std::string(junk, '\x5a') + raw);
  const DeflateSource src{fd.get(), junk, raw.size(), "fuzz member"};
  auto got = FindSpeculativeStart(src, from_bit, limits);
  FUZZ_CHECK(got.ok(), "a readable source gave an error: " + got.status().message());
  if (!got->has_value()) return;
  const SpeculativeStart& st = **got;
  const std::string what = Describe(st) + " from bit " + std::to_string(from_bit);
  FUZZ_CHECK(st.window.size() == kDeflateWindow, what);
  FUZZ_CHECK(st.first_bit >= from_bit, what);
  FUZZ_CHECK(st.first_bit - from_bit < limits.search_bytes * 8, "past the search limit: " + what);
  FUZZ_CHECK(st.resume_bit > st.first_bit, what);
  FUZZ_CHECK(st.resume_bit <= bits, "past the end of the data: " + what);
  FUZZ_CHECK(st.out_between >= kDeflateWindow, what);
  FUZZ_CHECK(st.out_between <= limits.warmup_bytes, "past the warm-up limit: " + what);
  // Every code is at least one bit and writes at most 258 bytes.
  FUZZ_CHECK(st.out_between <= (st.resume_bit - st.first_bit) * 258, what);

  // From the start found, the same candidate decodes the same bits first.
  auto again = FindSpeculativeStart(src, st.first_bit, limits);
  FUZZ_CHECK(again.ok(), "searching again failed: " + again.status().message());
  FUZZ_CHECK(again->has_value(), "searching again from first_bit found nothing: " + what);
  const SpeculativeStart& st2 = **again;
  FUZZ_CHECK(st2.first_bit == st.first_bit && st2.resume_bit == st.resume_bit &&
                 st2.out_between == st.out_between && st2.window == st.window,
             "searching again from first_bit found " + Describe(st2) + ", first " + what);

  // Where zlib confirms first_bit, everything must hold.
  const Truth truth = Inflate(raw);
  const auto first = truth.out_at.find(st.first_bit);
  if (first == truth.out_at.end()) return;                   // a false start: the design allows it
  if (truth.out_at.rbegin()->first < st.resume_bit) return;  // zlib stopped before it
  const auto resume = truth.out_at.find(st.resume_bit);
  FUZZ_CHECK(resume != truth.out_at.end(),
             "first_bit is a true boundary, resume_bit is not: " + what);
  FUZZ_CHECK(resume->second - first->second == st.out_between,
             "zlib decodes " + std::to_string(resume->second - first->second) +
                 " bytes between them: " + what);
  FUZZ_CHECK(std::memcmp(st.window.data(), truth.plain.data() + resume->second - kDeflateWindow,
                         kDeflateWindow) == 0,
             "the window is not zlib's: " + what);
}

}  // namespace
}  // namespace npzfs::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  npzfs::fuzz::Run(data, size);
  return 0;
}
