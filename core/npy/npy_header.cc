// Parsing and formatting of .npy headers.
//
// Design notes.
//
// numpy reads the header dict with ast.literal_eval and writes it with repr(). We must do
// neither: the file may be hostile, and core has no Python. So this file holds a tiny
// recursive-descent parser for exactly the literals numpy writes (dict, str, bool, int,
// tuple, list; None too, so that odd descrs give a clear error rather than a parse error),
// with a depth limit and bounds checks on every read, and a repr() for the same values.
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
//
// One known approximation: Python's repr escapes characters that are not "printable" by
// its Unicode database. We carry the ranges of the non-printable categories (a short table
// taken from Python 3.11) but not the list of unassigned code points: an unassigned code
// point in a field name would be escaped by Python and printed verbatim here.
#include "npzfs/npy_header.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <utility>

namespace npzfs {
namespace {

constexpr size_t kMagicLen = 8;  // "\x93NUMPY" + major + minor
constexpr int kMaxDepth = 64;    // nesting limit for the literal parser

Status Invalid(std::string message) { return Status::Error(EINVAL, std::move(message)); }

// ---------------------------------------------------------------- UTF-8 helpers

void AppendUtf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// Decodes one code point at `pos`, advancing it. nullopt for malformed UTF-8 (overlongs,
// surrogates and truncated sequences included).
std::optional<uint32_t> DecodeUtf8(std::string_view s, size_t& pos) {
  auto b0 = static_cast<unsigned char>(s[pos]);
  if (b0 < 0x80) {
    ++pos;
    return b0;
  }
  int len;
  uint32_t cp;
  if ((b0 & 0xE0) == 0xC0) {
    len = 2;
    cp = b0 & 0x1F;
  } else if ((b0 & 0xF0) == 0xE0) {
    len = 3;
    cp = b0 & 0x0F;
  } else if ((b0 & 0xF8) == 0xF0) {
    len = 4;
    cp = b0 & 0x07;
  } else {
    return std::nullopt;
  }
  if (s.size() - pos < static_cast<size_t>(len)) return std::nullopt;
  for (int i = 1; i < len; ++i) {
    auto b = static_cast<unsigned char>(s[pos + static_cast<size_t>(i)]);
    if ((b & 0xC0) != 0x80) return std::nullopt;
    cp = (cp << 6) | (b & 0x3F);
  }
  static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < kMin[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return std::nullopt;
  pos += static_cast<size_t>(len);
  return cp;
}

std::string Latin1ToUtf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) AppendUtf8(out, static_cast<unsigned char>(c));
  return out;
}

// The latin1 bytes of valid UTF-8 `s`, or nullopt if a character is above U+00FF.
std::optional<std::string> Utf8ToLatin1(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t pos = 0;
  while (pos < s.size()) {
    auto cp = DecodeUtf8(s, pos);
    if (!cp || *cp > 0xFF) return std::nullopt;
    out.push_back(static_cast<char>(*cp));
  }
  return out;
}

// Number of code points in valid UTF-8.
size_t CountChars(std::string_view s) {
  size_t n = 0;
  for (char c : s) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return n;
}

// ---------------------------------------------------------------- Python literals

struct PyValue {
  enum class Kind { kStr, kInt, kBool, kNone, kTuple, kList, kDict };
  Kind kind = Kind::kNone;
  std::string str;         // kStr: UTF-8
  uint64_t magnitude = 0;  // kInt: absolute value
  bool negative = false;   // kInt
  bool boolean = false;    // kBool
  // kTuple/kList: the items; kDict: key, value, key, value, ...
  std::vector<PyValue> items;
};

const char* KindName(PyValue::Kind k) {
  switch (k) {
    case PyValue::Kind::kStr:
      return "str";
    case PyValue::Kind::kInt:
      return "int";
    case PyValue::Kind::kBool:
      return "bool";
    case PyValue::Kind::kNone:
      return "None";
    case PyValue::Kind::kTuple:
      return "tuple";
    case PyValue::Kind::kList:
      return "list";
    case PyValue::Kind::kDict:
      return "dict";
  }
  return "?";
}

// Recursive descent over UTF-8 text. Every read goes through Peek/At, which check bounds.
class LiteralParser {
 public:
  explicit LiteralParser(std::string_view text) : s_(text) {}

  // Parses one value followed only by whitespace.
  Result<PyValue> ParseWhole() {
    NPZ_ASSIGN_OR_RETURN(PyValue v, ParseValue(0));
    SkipSpace();
    if (pos_ != s_.size()) return Error("unexpected text after the literal");
    return v;
  }

 private:
  Status Error(const std::string& what) const {
    return Invalid("malformed header literal at character " + std::to_string(pos_) + ": " + what);
  }
  bool AtEnd() const { return pos_ >= s_.size(); }
  char Peek() const { return AtEnd() ? '\0' : s_[pos_]; }
  void SkipSpace() {
    while (!AtEnd() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' ||
                        s_[pos_] == '\r' || s_[pos_] == '\f' || s_[pos_] == '\v')) {
      ++pos_;
    }
  }
  bool ConsumeWord(std::string_view w) {
    if (s_.substr(pos_, w.size()) != w) return false;
    size_t end = pos_ + w.size();
    if (end < s_.size() && (std::isalnum(static_cast<unsigned char>(s_[end])) || s_[end] == '_')) {
      return false;
    }
    pos_ = end;
    return true;
  }

  Result<PyValue> ParseValue(int depth) {
    if (depth > kMaxDepth) return Error("nested too deeply");
    SkipSpace();
    if (AtEnd()) return Error("unexpected end of header");
    char c = Peek();
    if (c == '{') return ParseDict(depth);
    if (c == '(') return ParseSequence(depth, PyValue::Kind::kTuple, ')');
    if (c == '[') return ParseSequence(depth, PyValue::Kind::kList, ']');
    if (c == '\'' || c == '"') return ParseString();
    if ((c == 'u' || c == 'U' || c == 'b' || c == 'B') && pos_ + 1 < s_.size() &&
        (s_[pos_ + 1] == '\'' || s_[pos_ + 1] == '"')) {
      ++pos_;  // Python 2 style u'' / b'' prefixes: the text is what matters
      return ParseString();
    }
    if (c == '-' || c == '+' || (c >= '0' && c <= '9')) return ParseInt();
    PyValue v;
    if (ConsumeWord("True")) {
      v.kind = PyValue::Kind::kBool;
      v.boolean = true;
      return v;
    }
    if (ConsumeWord("False")) {
      v.kind = PyValue::Kind::kBool;
      return v;
    }
    if (ConsumeWord("None")) return v;
    return Error(std::string("unexpected character '") + c + "'");
  }

  Result<PyValue> ParseInt() {
    PyValue v;
    v.kind = PyValue::Kind::kInt;
    if (Peek() == '-' || Peek() == '+') {
      v.negative = Peek() == '-';
      ++pos_;
      SkipSpace();
    }
    if (AtEnd() || Peek() < '0' || Peek() > '9') return Error("expected digits");
    while (!AtEnd() && Peek() >= '0' && Peek() <= '9') {
      uint64_t d = static_cast<uint64_t>(Peek() - '0');
      if (v.magnitude > (std::numeric_limits<uint64_t>::max() - d) / 10) {
        return Error("integer does not fit in 64 bits");
      }
      v.magnitude = v.magnitude * 10 + d;
      ++pos_;
    }
    if (Peek() == 'L' || Peek() == 'l') ++pos_;  // Python 2 long suffix (numpy filters it)
    if (v.magnitude == 0) v.negative = false;
    return v;
  }

  Result<uint32_t> ParseHex(int digits) {
    uint32_t cp = 0;
    for (int i = 0; i < digits; ++i) {
      if (AtEnd()) return Error("truncated escape");
      char h = Peek();
      uint32_t d;
      if (h >= '0' && h <= '9') {
        d = static_cast<uint32_t>(h - '0');
      } else if (h >= 'a' && h <= 'f') {
        d = static_cast<uint32_t>(h - 'a' + 10);
      } else if (h >= 'A' && h <= 'F') {
        d = static_cast<uint32_t>(h - 'A' + 10);
      } else {
        return Error("bad hex digit in escape");
      }
      cp = cp * 16 + d;
      ++pos_;
    }
    return cp;
  }

  Result<PyValue> ParseString() {
    PyValue v;
    v.kind = PyValue::Kind::kStr;
    char quote = s_[pos_++];
    while (true) {
      if (AtEnd()) return Error("unterminated string");
      char c = s_[pos_];
      if (c == quote) {
        ++pos_;
        return v;
      }
      if (c == '\n') return Error("newline in string");
      if (c != '\\') {
        v.str.push_back(c);
        ++pos_;
        continue;
      }
      ++pos_;
      if (AtEnd()) return Error("unterminated string");
      char e = s_[pos_++];
      uint32_t cp;
      switch (e) {
        case '\\':
        case '\'':
        case '"':
          v.str.push_back(e);
          continue;
        case 'n':
          v.str.push_back('\n');
          continue;
        case 't':
          v.str.push_back('\t');
          continue;
        case 'r':
          v.str.push_back('\r');
          continue;
        case 'a':
          v.str.push_back('\a');
          continue;
        case 'b':
          v.str.push_back('\b');
          continue;
        case 'f':
          v.str.push_back('\f');
          continue;
        case 'v':
          v.str.push_back('\v');
          continue;
        case '0':
          v.str.push_back('\0');
          continue;
        case 'x': {
          NPZ_ASSIGN_OR_RETURN(cp, ParseHex(2));
          break;
        }
        case 'u': {
          NPZ_ASSIGN_OR_RETURN(cp, ParseHex(4));
          break;
        }
        case 'U': {
          NPZ_ASSIGN_OR_RETURN(cp, ParseHex(8));
          break;
        }
        default:
          return Error(std::string("unsupported escape '\\") + e + "'");
      }
      if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return Error("bad code point");
      AppendUtf8(v.str, cp);
    }
  }

  Result<PyValue> ParseSequence(int depth, PyValue::Kind kind, char close) {
    PyValue v;
    v.kind = kind;
    ++pos_;  // opening bracket
    bool saw_comma = false;
    while (true) {
      SkipSpace();
      if (AtEnd()) return Error("unterminated tuple or list");
      if (Peek() == close) {
        ++pos_;
        break;
      }
      if (!v.items.empty() && !saw_comma) return Error("expected ',' between items");
      NPZ_ASSIGN_OR_RETURN(PyValue item, ParseValue(depth + 1));
      v.items.push_back(std::move(item));
      SkipSpace();
      saw_comma = Peek() == ',';
      if (saw_comma) ++pos_;
    }
    // "(x)" is just x in Python; only "(x,)" is a one-tuple.
    if (kind == PyValue::Kind::kTuple && v.items.size() == 1 && !saw_comma) {
      return std::move(v.items[0]);
    }
    return v;
  }

  Result<PyValue> ParseDict(int depth) {
    PyValue v;
    v.kind = PyValue::Kind::kDict;
    ++pos_;  // '{'
    bool saw_comma = false;
    while (true) {
      SkipSpace();
      if (AtEnd()) return Error("unterminated dict");
      if (Peek() == '}') {
        ++pos_;
        return v;
      }
      if (!v.items.empty() && !saw_comma) return Error("expected ',' between dict items");
      NPZ_ASSIGN_OR_RETURN(PyValue key, ParseValue(depth + 1));
      SkipSpace();
      if (Peek() != ':') return Error("expected ':' after dict key");
      ++pos_;
      NPZ_ASSIGN_OR_RETURN(PyValue value, ParseValue(depth + 1));
      v.items.push_back(std::move(key));
      v.items.push_back(std::move(value));
      SkipSpace();
      saw_comma = Peek() == ',';
      if (saw_comma) ++pos_;
    }
  }

  std::string_view s_;
  size_t pos_ = 0;
};

// ---------------------------------------------------------------- repr()

// Python's str.isprintable() for a non-ASCII code point: false for the categories Cc, Cf,
// Cs, Co, Zs, Zl, Zp (these ranges, from Python 3.11's unicodedata) and for the
// non-characters. Unassigned code points (Cn) are the approximation named in the essay.
bool IsPrintable(uint32_t cp) {
  static constexpr std::pair<uint32_t, uint32_t> kNotPrintable[] = {
      {0x80, 0xA0},       {0xAD, 0xAD},        {0x600, 0x605},     {0x61C, 0x61C},
      {0x6DD, 0x6DD},     {0x70F, 0x70F},      {0x890, 0x891},     {0x8E2, 0x8E2},
      {0x1680, 0x1680},   {0x180E, 0x180E},    {0x2000, 0x200F},   {0x2028, 0x202F},
      {0x205F, 0x206F},   {0x3000, 0x3000},    {0xD800, 0xF8FF},   {0xFDD0, 0xFDEF},
      {0xFEFF, 0xFEFF},   {0xFFF0, 0xFFFB},    {0x110BD, 0x110BD}, {0x110CD, 0x110CD},
      {0x13430, 0x13438}, {0x1BCA0, 0x1BCA3},  {0x1D173, 0x1D17A}, {0xE0001, 0xE0001},
      {0xE0020, 0xE007F}, {0xF0000, 0x10FFFF},
  };
  if ((cp & 0xFFFE) == 0xFFFE) return false;  // non-characters
  for (const auto& [lo, hi] : kNotPrintable) {
    if (cp >= lo && cp <= hi) return false;
  }
  return true;
}

void ReprString(std::string& out, const std::string& s) {
  bool has_single = s.find('\'') != std::string::npos;
  bool has_double = s.find('"') != std::string::npos;
  char quote = (has_single && !has_double) ? '"' : '\'';
  out.push_back(quote);
  size_t pos = 0;
  char buf[16];
  while (pos < s.size()) {
    size_t start = pos;
    auto cp_or = DecodeUtf8(s, pos);
    uint32_t cp = cp_or ? *cp_or : 0xFFFD;
    if (!cp_or) pos = start + 1;  // cannot happen for parsed text; be safe anyway
    if (cp == static_cast<unsigned char>(quote) || cp == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(cp));
    } else if (cp == '\t') {
      out += "\\t";
    } else if (cp == '\n') {
      out += "\\n";
    } else if (cp == '\r') {
      out += "\\r";
    } else if (cp < 0x20 || cp == 0x7F) {
      std::snprintf(buf, sizeof buf, "\\x%02x", cp);
      out += buf;
    } else if (cp < 0x7F || IsPrintable(cp)) {
      out.append(s, start, pos - start);
    } else if (cp <= 0xFF) {
      std::snprintf(buf, sizeof buf, "\\x%02x", cp);
      out += buf;
    } else if (cp <= 0xFFFF) {
      std::snprintf(buf, sizeof buf, "\\u%04x", cp);
      out += buf;
    } else {
      std::snprintf(buf, sizeof buf, "\\U%08x", cp);
      out += buf;
    }
  }
  out.push_back(quote);
}

void Repr(std::string& out, const PyValue& v) {
  switch (v.kind) {
    case PyValue::Kind::kStr:
      ReprString(out, v.str);
      return;
    case PyValue::Kind::kInt:
      if (v.negative) out.push_back('-');
      out += std::to_string(v.magnitude);
      return;
    case PyValue::Kind::kBool:
      out += v.boolean ? "True" : "False";
      return;
    case PyValue::Kind::kNone:
      out += "None";
      return;
    case PyValue::Kind::kTuple:
    case PyValue::Kind::kList: {
      bool tuple = v.kind == PyValue::Kind::kTuple;
      out.push_back(tuple ? '(' : '[');
      for (size_t i = 0; i < v.items.size(); ++i) {
        if (i > 0) out += ", ";
        Repr(out, v.items[i]);
      }
      if (tuple && v.items.size() == 1) out.push_back(',');
      out.push_back(tuple ? ')' : ']');
      return;
    }
    case PyValue::Kind::kDict:
      out.push_back('{');
      for (size_t i = 0; i + 1 < v.items.size(); i += 2) {
        if (i > 0) out += ", ";
        Repr(out, v.items[i]);
        out += ": ";
        Repr(out, v.items[i + 1]);
      }
      out.push_back('}');
      return;
  }
}

std::string ReprShape(const std::vector<uint64_t>& shape) {
  std::string out = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(shape[i]);
  }
  if (shape.size() == 1) out.push_back(',');
  out.push_back(')');
  return out;
}

// ---------------------------------------------------------------- descr semantics

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
    if (c < '0' || c > '9') return Invalid("descr '" + descr + "': bad size");
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
    return Invalid(what + ": shape must be a tuple of ints, got " + KindName(shape.kind));
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
      return Invalid(std::string("descr must be a str, list or tuple, got ") + KindName(v.kind));
  }
}

uint16_t LoadLe16(std::string_view b, size_t at) {
  return static_cast<uint16_t>(static_cast<unsigned char>(b[at]) |
                               (static_cast<unsigned char>(b[at + 1]) << 8));
}
uint32_t LoadLe32(std::string_view b, size_t at) {
  uint32_t v = 0;
  for (size_t i = 0; i < 4; ++i) v |= uint32_t{static_cast<unsigned char>(b[at + i])} << (8 * i);
  return v;
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
  for (size_t i = 0; i < field; ++i) out.push_back(static_cast<char>((stored >> (8 * i)) & 0xFF));
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
  uint64_t hlen = field == 2 ? LoadLe16(prefix, kMagicLen) : LoadLe32(prefix, kMagicLen);
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
    size_t pos = 0;
    while (pos < raw.size()) {
      if (!DecodeUtf8(raw, pos)) return Invalid("version 3.0 header is not valid UTF-8");
    }
    text = std::string(raw);
  } else {
    text = Latin1ToUtf8(raw);
  }
  size_t chars = CountChars(text);
  if (chars > kMaxHeaderChars && !options.allow_large_header) {
    return Invalid("header is " + std::to_string(chars) + " characters, over the safety limit of " +
                   std::to_string(kMaxHeaderChars) + " (allow_large_header to trust it)");
  }
  NPZ_ASSIGN_OR_RETURN(PyValue dict, LiteralParser(text).ParseWhole());
  if (dict.kind != PyValue::Kind::kDict) {
    return Invalid(std::string("header is not a dict but a ") + KindName(dict.kind));
  }
  const PyValue* descr = nullptr;
  const PyValue* fortran = nullptr;
  const PyValue* shape = nullptr;
  for (size_t i = 0; i + 1 < dict.items.size(); i += 2) {
    const PyValue& key = dict.items[i];
    std::string key_text;
    Repr(key_text, key);
    const PyValue** slot = nullptr;
    if (key.kind == PyValue::Kind::kStr) {
      if (key.str == "descr") slot = &descr;
      if (key.str == "fortran_order") slot = &fortran;
      if (key.str == "shape") slot = &shape;
    }
    if (slot == nullptr) return Invalid("header has an unexpected key " + key_text);
    if (*slot != nullptr) return Invalid("header repeats the key " + key_text);
    *slot = &dict.items[i + 1];
  }
  if (!descr) return Invalid("header lacks the key 'descr'");
  if (!fortran) return Invalid("header lacks the key 'fortran_order'");
  if (!shape) return Invalid("header lacks the key 'shape'");
  if (fortran->kind != PyValue::Kind::kBool) {
    return Invalid(std::string("fortran_order is not a bool but a ") + KindName(fortran->kind));
  }
  if (shape->kind != PyValue::Kind::kTuple) {
    return Invalid(std::string("shape is not a tuple but a ") + KindName(shape->kind));
  }
  NpyHeader h;
  for (const PyValue& d : shape->items) {
    if (d.kind != PyValue::Kind::kInt || d.negative) {
      std::string s;
      Repr(s, *shape);
      return Invalid("shape " + s + " must hold non-negative ints");
    }
    h.shape_.push_back(d.magnitude);
  }
  DescrInfo info;
  NPZ_RETURN_IF_ERROR(Descr(*descr, info, 0));
  Repr(h.descr_literal_, *descr);
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
    auto parsed = LiteralParser(trimmed).ParseWhole();
    if (!parsed.ok()) return parsed.status().WithContext("descr " + std::string(descr));
    value = std::move(parsed).value();
  } else {
    value.kind = PyValue::Kind::kStr;
    value.str = std::string(descr);
  }
  DescrInfo info;
  NPZ_RETURN_IF_ERROR(Descr(value, info, 0));
  NpyHeader h;
  Repr(h.descr_literal_, value);
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
                  ", 'shape': " + ReprShape(shape_) + ", }";
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
      return Invalid("shape " + ReprShape(shape_) + " of " + descr_literal_ +
                     ": frame byte size overflows 64 bits");
    }
  }
  uint64_t total;
  if (!shape_.empty() && MulOverflows(frame, n, &total)) {
    NpyHeader h = WithFrameCount(n);
    return Invalid("shape " + ReprShape(h.shape_) + " of " + descr_literal_ +
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
