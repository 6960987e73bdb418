// Fuzzes the .npy header parser (NpyHeader::Parse, NpyHeader::TotalLength).
//
// The input is the start of a .npy file. Besides "no crash, no sanitizer report", every
// header that parses must keep the promises of npzfs/npy_header.h:
//   - TotalLength of the same bytes is the parsed length;
//   - Format() is a whole number of 64-byte blocks, FormattedLength() is its size, and it
//     parses back to an equal header (repr and the parser agree);
//   - FormatPadded(parsed length) either fails or is exactly that long and parses back;
//   - frame arithmetic: data_bytes() == frame_bytes() * frame_count();
//   - a frameable header rebuilt with ForFrames from its own descr, frame shape and order
//     is equal to it (the growing-member xattrs rely on this), and WithFrameCount moves
//     only the growth axis.
// The same bytes are parsed again with allow_large_header: a header that parses without
// it must parse identically with it.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "npzfs/npy_header.h"
#include "tests/fuzz/fuzz_util.h"

namespace npzfs::fuzz {
namespace {

void CheckParsed(const NpyHeader& h, std::string_view bytes) {
  auto total = NpyHeader::TotalLength(bytes);
  FUZZ_CHECK(total.ok(),
             "TotalLength fails on a header Parse accepted: " + total.status().message());
  FUZZ_CHECK(*total == h.parsed_length(), "TotalLength " + std::to_string(*total) +
                                              " != parsed_length " +
                                              std::to_string(h.parsed_length()));

  const std::string formatted = h.Format();
  FUZZ_CHECK(formatted.size() == h.FormattedLength(), "FormattedLength disagrees with Format");
  FUZZ_CHECK(formatted.size() % NpyHeader::kAlignment == 0,
             "Format() is " + std::to_string(formatted.size()) + " bytes, not 64-aligned");
  NpyParseOptions large;
  large.allow_large_header = true;
  auto again = NpyHeader::Parse(formatted, large);
  FUZZ_CHECK(again.ok(), "Format() output does not parse: " + again.status().message() +
                             "\nformatted: " + formatted);
  FUZZ_CHECK(*again == h, "Format() does not parse back to the same header:\n" + formatted);
  FUZZ_CHECK(again->Format() == formatted, "Format is not stable across a round trip");

  auto padded = h.FormatPadded(h.parsed_length());
  if (padded.ok()) {
    FUZZ_CHECK(padded->size() == h.parsed_length(), "FormatPadded returned the wrong length");
    auto p = NpyHeader::Parse(*padded, large);
    FUZZ_CHECK(p.ok() && *p == h, "FormatPadded output does not parse back to the header");
  }

  if (h.shape().empty()) return;  // 0-d: no growth axis
  FUZZ_CHECK(h.data_bytes() == h.frame_bytes() * h.frame_count(), "frame arithmetic");
  auto rebuilt =
      NpyHeader::ForFrames(h.descr_literal(), h.frame_shape(), h.fortran_order(), h.frame_count());
  FUZZ_CHECK(rebuilt.ok(), "ForFrames rejects the parsed descr " + h.descr_literal() + ": " +
                               rebuilt.status().message());
  FUZZ_CHECK(*rebuilt == h, "ForFrames(descr, frame shape, order) differs from the parse");
  FUZZ_CHECK(rebuilt->SameFrameLayout(h), "SameFrameLayout is false for an equal header");
  FUZZ_CHECK(rebuilt->Format() == formatted, "ForFrames formats differently from the parse");
  const NpyHeader zero = h.WithFrameCount(0);
  FUZZ_CHECK(
      zero.frame_count() == 0 && zero.SameFrameLayout(h) && zero.frame_shape() == h.frame_shape(),
      "WithFrameCount(0) changed more than the growth axis");
  FUZZ_CHECK(zero.FormattedLength() == h.FormattedLength(),
             "the header length depends on the frame count");
}

}  // namespace
}  // namespace npzfs::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace npzfs;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  (void)NpyHeader::TotalLength(bytes);
  auto h = NpyHeader::Parse(bytes);
  NpyParseOptions large;
  large.allow_large_header = true;
  auto h_large = NpyHeader::Parse(bytes, large);
  if (h.ok()) {
    FUZZ_CHECK(h_large.ok() && *h_large == *h, "allow_large_header changed the parse");
    fuzz::CheckParsed(*h, bytes);
  } else {
    FUZZ_CHECK(h.status().code() == EINVAL, "Parse error is not EINVAL: " + h.status().message());
    FUZZ_CHECK(!h.status().message().empty(), "Parse error without a message");
  }
  if (h_large.ok()) fuzz::CheckParsed(*h_large, bytes);
  return 0;
}
