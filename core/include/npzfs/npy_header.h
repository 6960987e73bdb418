// The .npy header: parse it (versions 1.0, 2.0, 3.0) and format it byte-identical to
// numpy 1.24's np.save.
//
// A .npy file is a magic string, a version, a little-endian length field and a Python dict
// literal {'descr': ..., 'fortran_order': ..., 'shape': (...), } padded with spaces and a
// final '\n' so that the data starts on a 64-byte boundary. numpy >= 1.24 also leaves room
// for the growth axis to reach 21 digits, so rewriting the count in place never changes the
// header length. That property is what lets npzfs grow a .npy one frame at a time.
//
// Vocabulary: the growth axis is axis 0 for C order and the last axis for Fortran order. A
// frame is one step along it; frame_bytes is item_size times the product of the other axes.
//
// Parsing never evaluates anything: a small, bounds-checked parser reads the subset of
// Python literals numpy writes (dict, str, bool, int, tuple, list). Every error is EINVAL
// with a message saying what is wrong; callers add the file name with WithContext().
//
// NpyHeader is an immutable value: copyable, and safe to share between threads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "npzfs/status.h"

namespace npzfs {

struct NpyParseOptions {
  // numpy refuses headers longer than 10000 characters unless the caller trusts the file.
  bool allow_large_header = false;
};

class NpyHeader {
 public:
  // The magic string at the start of every .npy file.
  static constexpr std::string_view kMagic = "\x93NUMPY";
  // numpy's _MAX_HEADER_SIZE: the most header characters parsed without allow_large_header.
  static constexpr size_t kMaxHeaderChars = 10000;
  // numpy's GROWTH_AXIS_MAX_DIGITS and ARRAY_ALIGN.
  static constexpr size_t kGrowthAxisMaxDigits = 21;
  static constexpr size_t kAlignment = 64;

  // `bytes` starts at the magic and holds at least the whole header (extra bytes ignored).
  // EINVAL: not .npy, unknown version, too short, header over the limit, malformed literal,
  // missing or extra keys, bad descr, shape whose byte size overflows 64 bits.
  static Result<NpyHeader> Parse(std::string_view bytes, const NpyParseOptions& options = {});

  // Total header length (magic + version + length field + dict) from the first 12 bytes
  // (10 suffice for v1.0). EINVAL if the magic or version is wrong or `prefix` is too short.
  static Result<size_t> TotalLength(std::string_view prefix);

  // A header for frames. `descr` is a numpy descr string ("<i2", "|u1", "<M8[ms]") or the
  // Python literal of a structured descr ("[('a', '<i4'), ('b', '<f8', (2,))]");
  // `frame_shape` are the non-growth axes in file order; `count` the growth-axis length.
  // EINVAL for a malformed descr or an overflowing size.
  static Result<NpyHeader> ForFrames(std::string_view descr, std::vector<uint64_t> frame_shape,
                                     bool fortran_order, uint64_t count);

  // The canonical bytes, byte-identical to numpy 1.24's np.save for the same array.
  std::string Format() const;
  // == Format().size(); independent of the growth-axis count.
  size_t FormattedLength() const;
  // The same dict padded with spaces to exactly `total_length` bytes (keeping the version
  // numpy would pick, or moving to 2.0/3.0 if the length field needs it). Lets a writer
  // rewrite an older, differently padded header in place. EINVAL if it does not fit.
  Result<std::string> FormatPadded(size_t total_length) const;

  // The descr as Python's repr prints it: "'<i2'" or "[('a', '<i4')]".
  const std::string& descr_literal() const { return descr_literal_; }
  bool fortran_order() const { return fortran_order_; }
  const std::vector<uint64_t>& shape() const { return shape_; }
  uint64_t item_size() const { return item_size_; }
  // The version this header was parsed from (ForFrames: the one Format() writes).
  std::pair<int, int> version() const { return version_; }
  // Length of the header as parsed from the bytes (ForFrames: FormattedLength()).
  size_t parsed_length() const { return parsed_length_; }
  // True if the descr is a list of fields (numpy's structured dtype).
  bool structured() const { return structured_; }

  // False for object dtypes ('|O' anywhere, data is a pickle) and for 0-d arrays.
  bool frameable() const { return !has_object_ && !shape_.empty(); }
  bool has_object() const { return has_object_; }
  // Growth-axis length: shape[0] (C) or shape.back() (F). A 0-d array counts as 1 frame.
  uint64_t frame_count() const;
  // item_size times the product of the non-growth axes (0-d: item_size).
  uint64_t frame_bytes() const { return frame_bytes_; }
  // item_size times the product of the whole shape; checked for overflow.
  uint64_t data_bytes() const;
  // The non-growth axes, in file order.
  std::vector<uint64_t> frame_shape() const;

  // The same header with the growth axis set to `n`. A 0-d header is returned unchanged.
  // The caller keeps n * frame_bytes() within 64 bits (WithFrameCountChecked checks it).
  NpyHeader WithFrameCount(uint64_t n) const;
  Result<NpyHeader> WithFrameCountChecked(uint64_t n) const;
  // Same descr, order and non-growth axes (the count may differ).
  bool SameFrameLayout(const NpyHeader& other) const;

  bool operator==(const NpyHeader& other) const;

  // A placeholder (no descr, 0-d) so that holders can be default-constructed; assign a
  // parsed or built header before using it.
  NpyHeader() = default;

 private:
  std::string DictText() const;  // UTF-8 dict + growth padding, before wrapping.

  std::string descr_literal_;
  bool fortran_order_ = false;
  std::vector<uint64_t> shape_;
  uint64_t item_size_ = 0;
  uint64_t frame_bytes_ = 0;  // cached: computed (overflow-checked) by WithFrameCountChecked
  bool has_object_ = false;
  bool structured_ = false;
  std::pair<int, int> version_{1, 0};
  size_t parsed_length_ = 0;
};

}  // namespace npzfs
