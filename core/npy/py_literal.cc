#include "core/npy/py_literal.h"

#include <cctype>
#include <cstdio>
#include <limits>
#include <optional>
#include <utility>

#include "core/base/text_codec.h"

namespace npzfs {
namespace {

constexpr int kMaxDepth = 64;  // nesting limit for the literal parser

Status Invalid(std::string message) { return Status::Error(EINVAL, std::move(message)); }

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

}  // namespace

const char* PyKindName(PyValue::Kind k) {
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

Result<PyValue> ParsePyLiteral(std::string_view text) { return LiteralParser(text).ParseWhole(); }

void AppendPyRepr(std::string& out, const PyValue& v) {
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
        AppendPyRepr(out, v.items[i]);
      }
      if (tuple && v.items.size() == 1) out.push_back(',');
      out.push_back(tuple ? ')' : ']');
      return;
    }
    case PyValue::Kind::kDict:
      out.push_back('{');
      for (size_t i = 0; i + 1 < v.items.size(); i += 2) {
        if (i > 0) out += ", ";
        AppendPyRepr(out, v.items[i]);
        out += ": ";
        AppendPyRepr(out, v.items[i + 1]);
      }
      out.push_back('}');
      return;
  }
}

}  // namespace npzfs
