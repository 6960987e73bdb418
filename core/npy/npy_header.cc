// Parsing and formatting of .npy headers.
//
// Design notes.
//
// numpy reads the header dict with ast.literal_eval and writes it with repr(). We do neither:
// core/npy/py_literal.h holds a small bounds-checked parser and a repr() for exactly the
// literals numpy writes. This file gives the parsed dict its meaning (descr, fortran_order,
// shape, item sizes) and wraps the dict text the way numpy's _wrap_header does.
//
// The descr is kept as its canonical repr text (descr_literal_), re-emitted from the parsed
// value, not copied from the file. A header written by numpy therefore formats back to the
// same bytes (the golden tests check it), and a hand-written, oddly spaced one formats to
// what numpy would have written for the same dtype. The alternative, keeping the original
// text, was rejected: ForFrames needs the canonical form anyway, and two files with the
// same dtype would otherwise compare unequal in SameFrameLayout.
//
// Text handling: versions 1.0 and 2.0 are latin1, 3.0 is UTF-8. Internally everything is
// UTF-8; latin1 input is widened on parse, and Format() narrows back to latin1 whenever
// every character fits (that is how numpy picks the version).
#include "npzfs/npy_header.h"

#include <algorithm>
#include <limits>
#include <optional>
#include <utility>

#include "core/base/byte_codec.h"
#include "core/base/text_codec.h"
#include "core/npy/frame_layout.h"
#include "core/npy/py_literal.h"

namespace npzfs {
namespace {

constexpr size_t kMagicLen = 8;  // "\x93NUMPY" + major + minor
constexpr int kMaxDepth = 64;    // nesting limit for structured descrs

Status Invalid(std::string message) { return Status::Error(EINVAL, std::move(message)); }

bool MulOverflows(uint64_t a, uint64_t b, uint64_t* out) {
  return __builtin_mul_overflow(a, b, out);
}

struct DescrInfo {
  uint64_t item_size = 0;
  bool has_object = false;
  bool structured = false;
};

Result<uint64_t> ParseDigits(std::string_view s, const std::string& descr) {
  if (s.empty()) return Invalid("descr '" + descr + "': missing size");
  uint64_t n = 0;
  for (char c : s) {
    if (c < '0' || c > '9') {
      return Invalid("descr '" + descr + "' is not a numpy dtype (its size '" + std::string(s) +
                     "' is not a number)");
    }
    if (n > (std::numeric_limits<uint64_t>::max() - 9) / 10) {
      return Invalid("descr '" + descr + "': size too large");
    }
    n = n * 10 + static_cast<uint64_t>(c - '0');
  }
  return n;
}

// A simple (non-structured) descr string as numpy's dtype.str writes it.
Status SimpleDescr(const std::string& descr, DescrInfo& info) {
  std::string_view s = descr;
  auto bad = [&](const std::string& why) {
    return Invalid("descr '" + descr + "' is not a supported dtype: " + why);
  };
  if (!s.empty() && (s[0] == '<' || s[0] == '>' || s[0] == '|' || s[0] == '=')) {
    s.remove_prefix(1);
  }
  if (s.empty()) return bad("empty");
  char kind = s[0];
  std::string_view rest = s.substr(1);
  auto sized = [&](std::initializer_list<uint64_t> allowed) -> Status {
    NPZ_ASSIGN_OR_RETURN(uint64_t n, ParseDigits(rest, descr));
    if (std::find(allowed.begin(), allowed.end(), n) == allowed.end()) {
      return bad("unsupported size " + std::to_string(n));
    }
    info.item_size = n;
    return Status::Ok();
  };
  switch (kind) {
    case 'b':
      return sized({1});
    case '?':
      if (!rest.empty()) return bad("'?' takes no size");
      info.item_size = 1;
      return Status::Ok();
    case 'i':
    case 'u':
      return sized({1, 2, 4, 8});
    case 'f':
      return sized({2, 4, 8, 12, 16});
    case 'c':
      return sized({8, 16, 24, 32});
    case 'S':
    case 'a':
    case 'V': {
      if (rest.empty()) {
        info.item_size = 0;
        return Status::Ok();
      }
      NPZ_ASSIGN_OR_RETURN(info.item_size, ParseDigits(rest, descr));
      return Status::Ok();
    }
    case 'U': {
      uint64_t chars = 0;
      if (!rest.empty()) {
        NPZ_ASSIGN_OR_RETURN(chars, ParseDigits(rest, descr));
      }
      if (MulOverflows(chars, 4, &info.item_size)) return bad("size too large");
      return Status::Ok();
    }
    case 'O':
      if (!rest.empty() && rest != "8") return bad("object size must be 8");
      info.item_size = 8;
      info.has_object = true;
      return Status::Ok();
    case 'M':
    case 'm': {
      if (!rest.empty() && rest[0] == '8') rest.remove_prefix(1);
      if (!rest.empty()) {
        if (rest.front() != '[' || rest.back() != ']') return bad("bad datetime unit");
        std::string_view unit = rest.substr(1, rest.size() - 2);
        size_t digits = 0;
        while (digits < unit.size() && unit[digits] >= '0' && unit[digits] <= '9') ++digits;
        std::string_view base = unit.substr(digits);
        static constexpr std::string_view kUnits[] = {
            "Y", "M", "W", "D", "h", "m", "s", "ms", "us", "ns", "ps", "fs", "as", "generic"};
        if (std::find(std::begin(kUnits), std::end(kUnits), base) == std::end(kUnits)) {
          return bad("unknown datetime unit '" + std::string(unit) + "'");
        }
      }
      info.item_size = 8;
      return Status::Ok();
    }
    default:
      return bad(std::string("unknown type code '") + kind + "'");
  }
}

Result<uint64_t> ShapeProduct(const PyValue& shape, const std::string& what) {
  if (shape.kind == PyValue::Kind::kInt) {
    if (shape.negative) return Invalid(what + ": negative dimension");
    return shape.magnitude;
  }
  if (shape.kind != PyValue::Kind::kTuple) {
    return Invalid(what + ": shape must be a tuple of ints, got " + PyKindName(shape.kind));
  }
  uint64_t n = 1;
  for (const PyValue& d : shape.items) {
    if (d.kind != PyValue::Kind::kInt || d.negative) {
      return Invalid(what + ": shape must hold non-negative ints");
    }
    if (MulOverflows(n, d.magnitude, &n)) return Invalid(what + ": size overflows 64 bits");
  }
  return n;
}

Status Descr(const PyValue& v, DescrInfo& info, int depth);

Status Field(const PyValue& f, DescrInfo& info, int depth) {
  if ((f.kind != PyValue::Kind::kTuple && f.kind != PyValue::Kind::kList) ||
      (f.items.size() != 2 && f.items.size() != 3)) {
    return Invalid("structured descr: each field must be (name, type) or (name, type, shape)");
  }
  const PyValue& name = f.items[0];
  bool name_ok = name.kind == PyValue::Kind::kStr ||
                 (name.kind == PyValue::Kind::kTuple && name.items.size() == 2 &&
                  name.items[1].kind == PyValue::Kind::kStr);
  if (!name_ok) {
    return Invalid("structured descr: a field name must be a str or a (title, name) tuple");
  }
  DescrInfo sub;
  NPZ_RETURN_IF_ERROR(Descr(f.items[1], sub, depth + 1));
  uint64_t count = 1;
  if (f.items.size() == 3) {
    NPZ_ASSIGN_OR_RETURN(count, ShapeProduct(f.items[2], "structured descr field"));
  }
  uint64_t bytes;
  if (MulOverflows(sub.item_size, count, &bytes) ||
      __builtin_add_overflow(info.item_size, bytes, &info.item_size)) {
    return Invalid("structured descr: item size overflows 64 bits");
  }
  info.has_object |= sub.has_object;
  return Status::Ok();
}

Status Descr(const PyValue& v, DescrInfo& info, int depth) {
  if (depth > kMaxDepth) return Invalid("descr nested too deeply");
  switch (v.kind) {
    case PyValue::Kind::kStr:
      return SimpleDescr(v.str, info);
    case PyValue::Kind::kList: {
      info.structured = true;
      for (const PyValue& f : v.items) NPZ_RETURN_IF_ERROR(Field(f, info, depth));
      return Status::Ok();
    }
    case PyValue::Kind::kTuple: {  // (base, shape): a sub-array dtype
      if (v.items.size() != 2) return Invalid("descr tuple must be (type, shape)");
      DescrInfo sub;
      NPZ_RETURN_IF_ERROR(Descr(v.items[0], sub, depth + 1));
      NPZ_ASSIGN_OR_RETURN(uint64_t count, ShapeProduct(v.items[1], "descr sub-array"));
      if (MulOverflows(sub.item_size, count, &info.item_size)) {
        return Invalid("descr: item size overflows 64 bits");
      }
      info.has_object = sub.has_object;
      info.structured = sub.structured;
      return Status::Ok();
    }
    default:
      return Invalid(std::string("descr must be a str, list or tuple, got ") + PyKindName(v.kind));
  }
}

// Checks magic and version; returns the size of the length field (2 or 4).
Result<size_t> CheckMagic(std::string_view prefix, int* major) {
  if (prefix.size() < kMagicLen) {
    return Invalid("too short for a .npy header (" + std::to_string(prefix.size()) + " bytes)");
  }
  if (prefix.substr(0, 6) != NpyHeader::kMagic) return Invalid("not a .npy file (bad magic)");
  int ma = static_cast<unsigned char>(prefix[6]);
  int mi = static_cast<unsigned char>(prefix[7]);
  if (mi != 0 || ma < 1 || ma > 3) {
    return Invalid("unsupported .npy format version " + std::to_string(ma) + "." +
                   std::to_string(mi));
  }
  *major = ma;
  return size_t{ma == 1 ? 2u : 4u};
}

// Wraps UTF-8 dict text like numpy's _wrap_header for `major`, padded to `total` bytes if
// given. nullopt if the text cannot be encoded or the length does not fit the version.
std::optional<std::string> Wrap(const std::string& text, int major, std::optional<size_t> total) {
  std::string encoded;
  if (major == 3) {
    encoded = text;
  } else {
    auto latin1 = Utf8ToLatin1(text);
    if (!latin1) return std::nullopt;
    encoded = std::move(*latin1);
  }
  size_t field = major == 1 ? 2 : 4;
  size_t prefix = kMagicLen + field;
  size_t hlen = encoded.size() + 1;
  size_t padlen;
  if (total) {
    if (*total < prefix + hlen) return std::nullopt;
    padlen = *total - prefix - hlen;
  } else {
    padlen = NpyHeader::kAlignment - ((prefix + hlen) % NpyHeader::kAlignment);
  }
  uint64_t stored = hlen + padlen;
  if (stored > (major == 1 ? 0xFFFFu : 0xFFFFFFFFu)) return std::nullopt;
  std::string out(NpyHeader::kMagic);
  out.push_back(static_cast<char>(major));
  out.push_back('\0');
  if (field == 2) {
    PutLe16(out, static_cast<uint16_t>(stored));
  } else {
    PutLe32(out, static_cast<uint32_t>(stored));
  }
  out += encoded;
  out.append(padlen, ' ');
  out.push_back('\n');
  return out;
}

}  // namespace

// ---------------------------------------------------------------- NpyHeader

Result<size_t> NpyHeader::TotalLength(std::string_view prefix) {
  int major = 0;
  NPZ_ASSIGN_OR_RETURN(size_t field, CheckMagic(prefix, &major));
  if (prefix.size() < kMagicLen + field) {
    return Invalid("too short for a .npy header length field (" + std::to_string(prefix.size()) +
                   " bytes)");
  }
  const char* at = prefix.data() + kMagicLen;
  uint64_t hlen = field == 2 ? GetLe16(at) : GetLe32(at);
  return static_cast<size_t>(kMagicLen + field + hlen);
}

Result<NpyHeader> NpyHeader::Parse(std::string_view bytes, const NpyParseOptions& options) {
  int major = 0;
  NPZ_ASSIGN_OR_RETURN(size_t total, TotalLength(bytes));
  NPZ_RETURN_IF_ERROR(CheckMagic(bytes, &major).status());
  size_t dict_at = kMagicLen + (major == 1 ? 2 : 4);
  if (bytes.size() < total) {
    return Invalid("truncated .npy header: it needs " + std::to_string(total) + " bytes, only " +
                   std::to_string(bytes.size()) + " present");
  }
  std::string_view raw = bytes.substr(dict_at, total - dict_at);
  std::string text;
  if (major == 3) {
    if (!IsValidUtf8(raw)) return Invalid("version 3.0 header is not valid UTF-8");
    text = std::string(raw);
  } else {
    text = Latin1ToUtf8(raw);
  }
  size_t chars = CountUtf8Chars(text);
  if (chars > kMaxHeaderChars && !options.allow_large_header) {
    return Invalid("header is " + std::to_string(chars) + " characters, over the safety limit of " +
                   std::to_string(kMaxHeaderChars) + " (allow_large_header to trust it)");
  }
  NPZ_ASSIGN_OR_RETURN(PyValue dict, ParsePyLiteral(text));
  if (dict.kind != PyValue::Kind::kDict) {
    return Invalid(std::string("header is not a dict but a ") + PyKindName(dict.kind));
  }
  const PyValue* descr = nullptr;
  const PyValue* fortran = nullptr;
  const PyValue* shape = nullptr;
  for (size_t i = 0; i + 1 < dict.items.size(); i += 2) {
    const PyValue& key = dict.items[i];
    std::string key_text;
    AppendPyRepr(key_text, key);
    const PyValue** slot = nullptr;
    if (key.kind == PyValue::Kind::kStr) {
      if (key.str == "descr") slot = &descr;
      if (key.str == "fortran_order") slot = &fortran;
      if (key.str == "shape") slot = &shape;
    }
    if (slot == nullptr) return Invalid("header has an unexpected key " + key_text);
    *slot = &dict.items[i + 1];  // a repeated key: the last wins, as in numpy's dict literal
  }
  if (!descr) return Invalid("header lacks the key 'descr'");
  if (!fortran) return Invalid("header lacks the key 'fortran_order'");
  if (!shape) return Invalid("header lacks the key 'shape'");
  if (fortran->kind != PyValue::Kind::kBool) {
    return Invalid(std::string("fortran_order is not a bool but a ") + PyKindName(fortran->kind));
  }
  if (shape->kind != PyValue::Kind::kTuple) {
    return Invalid(std::string("shape is not a tuple but a ") + PyKindName(shape->kind));
  }
  NpyHeader h;
  for (const PyValue& d : shape->items) {
    if (d.kind != PyValue::Kind::kInt || d.negative) {
      std::string s;
      AppendPyRepr(s, *shape);
      return Invalid("shape " + s + " must hold non-negative ints");
    }
    h.shape_.push_back(d.magnitude);
  }
  DescrInfo info;
  NPZ_RETURN_IF_ERROR(Descr(*descr, info, 0));
  AppendPyRepr(h.descr_literal_, *descr);
  h.fortran_order_ = fortran->boolean;
  h.item_size_ = info.item_size;
  h.has_object_ = info.has_object;
  h.structured_ = info.structured;
  NPZ_ASSIGN_OR_RETURN(h, h.WithFrameCountChecked(h.frame_count()));
  h.version_ = {major, 0};
  h.parsed_length_ = total;
  return h;
}

Result<NpyHeader> NpyHeader::ForFrames(std::string_view descr, std::vector<uint64_t> frame_shape,
                                       bool fortran_order, uint64_t count) {
  PyValue value;
  std::string_view trimmed = descr;
  while (!trimmed.empty() && trimmed.front() == ' ') trimmed.remove_prefix(1);
  if (!trimmed.empty() &&
      (trimmed[0] == '[' || trimmed[0] == '(' || trimmed[0] == '\'' || trimmed[0] == '"')) {
    auto parsed = ParsePyLiteral(trimmed);
    if (!parsed.ok()) return parsed.status().WithContext("descr " + std::string(descr));
    value = std::move(parsed).value();
  } else {
    value.kind = PyValue::Kind::kStr;
    value.str = std::string(descr);
  }
  DescrInfo info;
  NPZ_RETURN_IF_ERROR(Descr(value, info, 0));
  NpyHeader h;
  AppendPyRepr(h.descr_literal_, value);
  h.fortran_order_ = fortran_order;
  h.item_size_ = info.item_size;
  h.has_object_ = info.has_object;
  h.structured_ = info.structured;
  h.shape_ = std::move(frame_shape);
  if (fortran_order) {
    h.shape_.push_back(count);
  } else {
    h.shape_.insert(h.shape_.begin(), count);
  }
  NPZ_ASSIGN_OR_RETURN(h, h.WithFrameCountChecked(count));
  std::string formatted = h.Format();
  h.version_ = {static_cast<unsigned char>(formatted[6]), 0};
  h.parsed_length_ = formatted.size();
  return h;
}

std::string NpyHeader::DictText() const {
  std::string t = "{'descr': " + descr_literal_ +
                  ", 'fortran_order': " + (fortran_order_ ? "True" : "False") +
                  ", 'shape': " + ShapeText(shape_) + ", }";
  if (!shape_.empty()) {
    uint64_t growth = fortran_order_ ? shape_.back() : shape_.front();
    t.append(kGrowthAxisMaxDigits - std::to_string(growth).size(), ' ');
  }
  return t;
}

std::string NpyHeader::Format() const {
  std::string text = DictText();
  for (int major : {1, 2, 3}) {
    if (auto out = Wrap(text, major, std::nullopt)) return *out;
  }
  return {};  // unreachable: a 4 GiB header cannot come from a 10000-character parse
}

size_t NpyHeader::FormattedLength() const { return Format().size(); }

Result<std::string> NpyHeader::FormatPadded(size_t total_length) const {
  std::string text = DictText();
  for (int major : {1, 2, 3}) {
    if (auto out = Wrap(text, major, total_length)) return *out;
  }
  return Invalid("the header needs " + std::to_string(FormattedLength()) +
                 " bytes and cannot be padded to " + std::to_string(total_length));
}

uint64_t NpyHeader::frame_count() const {
  if (shape_.empty()) return 1;
  return fortran_order_ ? shape_.back() : shape_.front();
}

std::vector<uint64_t> NpyHeader::frame_shape() const {
  if (shape_.empty()) return {};
  if (fortran_order_) return {shape_.begin(), shape_.end() - 1};
  return {shape_.begin() + 1, shape_.end()};
}

uint64_t NpyHeader::data_bytes() const { return frame_bytes() * frame_count(); }

NpyHeader NpyHeader::WithFrameCount(uint64_t n) const {
  NpyHeader h = *this;
  if (h.shape_.empty()) return h;
  (h.fortran_order_ ? h.shape_.back() : h.shape_.front()) = n;
  return h;
}

Result<NpyHeader> NpyHeader::WithFrameCountChecked(uint64_t n) const {
  uint64_t frame = item_size_;
  for (uint64_t d : frame_shape()) {
    if (MulOverflows(frame, d, &frame)) {
      return Invalid("shape " + ShapeText(shape_) + " of " + descr_literal_ +
                     ": frame byte size overflows 64 bits");
    }
  }
  uint64_t total;
  if (!shape_.empty() && MulOverflows(frame, n, &total)) {
    NpyHeader h = WithFrameCount(n);
    return Invalid("shape " + ShapeText(h.shape_) + " of " + descr_literal_ +
                   ": byte size overflows 64 bits");
  }
  NpyHeader h = WithFrameCount(n);
  h.frame_bytes_ = frame;
  return h;
}

bool NpyHeader::SameFrameLayout(const NpyHeader& other) const {
  return descr_literal_ == other.descr_literal_ && fortran_order_ == other.fortran_order_ &&
         shape_.size() == other.shape_.size() && !shape_.empty() &&
         frame_shape() == other.frame_shape();
}

bool NpyHeader::operator==(const NpyHeader& other) const {
  return descr_literal_ == other.descr_literal_ && fortran_order_ == other.fortran_order_ &&
         shape_ == other.shape_;
}

}  // namespace npzfs
