// Tests for the Python-literal parser and repr() behind .npy headers: the literals numpy
// writes parse and print back as Python prints them; hostile input is a clear EINVAL.
#include "core/npy/py_literal.h"

#include <gtest/gtest.h>

#include <string>

#include "tests/test_util.h"

namespace npzfs {
namespace {

std::string Repr(const PyValue& v) {
  std::string out;
  AppendPyRepr(out, v);
  return out;
}

std::string RoundTrip(const std::string& text) {
  auto v = ParsePyLiteral(text);
  EXPECT_TRUE(v.ok()) << text << ": " << v.status().message();
  return v.ok() ? Repr(*v) : "";
}

TEST(PyLiteral, ParsesTheLiteralsNumpyWritesAndPrintsThemAsPythonDoes) {
  const std::string literals[] = {
      "{'descr': '<i2', 'fortran_order': False, 'shape': (3, 4)}",
      "[('a', '<i4'), ('b', '<f8', (2,))]",
      "(7,)",
      "()",
      "None",
      "-12",
      "'it\\'s'",
      "\"it's\"",
      "'tab\\tnew\\nline'",
      "'\\x00\\x7f'",
      "'héllo 数组'",
  };
  std::string code = "import ast\n";
  for (const std::string& l : literals) {
    // Passed as hex, so that no quoting can change what Python parses.
    std::string hex;
    for (unsigned char c : l) {
      hex += "0123456789abcdef"[c >> 4];
      hex += "0123456789abcdef"[c & 15];
    }
    code += "print(repr(ast.literal_eval(bytes.fromhex('" + hex + "').decode())))\n";
  }
  std::string python = testing::RunPython(code);
  std::string ours;
  for (const std::string& l : literals) ours += RoundTrip(l) + "\n";
  EXPECT_EQ(ours, python);
}

TEST(PyLiteral, ParenthesesAloneAreNotATupleAndOldPrefixesAreAccepted) {
  auto v = ParsePyLiteral("(5)");
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->kind, PyValue::Kind::kInt);
  EXPECT_EQ(v->magnitude, 5u);
  EXPECT_EQ(RoundTrip("u'x'"), "'x'");
  EXPECT_EQ(RoundTrip("10L"), "10");
  EXPECT_STREQ(PyKindName(PyValue::Kind::kDict), "dict");
}

TEST(PyLiteral, MalformedAndHostileInputIsEinvalSayingWhere) {
  const char* bad[] = {"",
                       "{'a': 1",
                       "'unterminated",
                       "(1 2)",
                       "{'a' 1}",
                       "[1,] junk",
                       "'\\q'",
                       "'\\x4'",
                       "os.system",
                       "1e5",
                       "99999999999999999999999",
                       "'\\ud800'"};
  for (const char* text : bad) {
    auto v = ParsePyLiteral(text);
    EXPECT_EQ(v.status().code(), EINVAL) << text;
    EXPECT_NE(v.status().message().find("malformed header literal at character"), std::string::npos)
        << text << ": " << v.status().message();
  }
  // Nesting is bounded instead of recursing until the stack ends.
  std::string deep(100000, '[');
  EXPECT_EQ(ParsePyLiteral(deep).status().code(), EINVAL);
}

}  // namespace
}  // namespace npzfs
