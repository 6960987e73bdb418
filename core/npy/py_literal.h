// A parser and repr() for the Python literals numpy writes in .npy headers: dict, str, bool,
// int, tuple, list (and None, so that odd descrs give a clear error rather than a parse
// error).
//
// numpy reads the header dict with ast.literal_eval and writes it with repr(). We must do
// neither: the file may be hostile, and core has no Python. So this is a small recursive
// descent parser with a depth limit and bounds checks on every read, and a repr() that
// prints what Python prints for the same values.
//
// One known approximation: Python's repr escapes characters that are not "printable" by its
// Unicode database. We carry the ranges of the non-printable categories (a short table taken
// from Python 3.11) but not the list of unassigned code points: an unassigned code point in a
// string would be escaped by Python and printed verbatim here.
//
// Plain functions over values: thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "npzfs/status.h"

namespace npzfs {

// One parsed literal.
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

// "str", "int", ...: the Python type name of a kind, for messages.
const char* PyKindName(PyValue::Kind kind);

// Parses one literal of UTF-8 `text` followed only by whitespace. EINVAL "malformed header
// literal at character N: <what>" (unterminated string, bad escape, nesting over 64 levels,
// an integer over 64 bits, unexpected text after the literal, ...).
Result<PyValue> ParsePyLiteral(std::string_view text);

// Appends repr(value) as Python 3 prints it (strings in UTF-8, quotes and escapes as repr).
void AppendPyRepr(std::string& out, const PyValue& value);

}  // namespace npzfs
