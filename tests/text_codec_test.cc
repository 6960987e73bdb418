// Tests for the text codecs: UTF-8 encode/decode, latin1, and CP437 against Python's codec.
#include "core/base/text_codec.h"

#include <gtest/gtest.h>

#include <string>

#include "tests/test_util.h"

namespace npzfs {
namespace {

TEST(TextCodec, Cp437DecodesEveryByteAsPythonsCodecDoes) {
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  const std::string python = testing::RunPython(
      "import sys\nsys.stdout.buffer.write(bytes(range(256)).decode('cp437').encode())\n");
  EXPECT_EQ(Cp437ToUtf8(all), python);
  EXPECT_EQ(Cp437ToUtf8("plain/ascii.npy"), "plain/ascii.npy");
  EXPECT_EQ(Cp437ToUtf8("\x84rger.npy"), "\xc3\xa4rger.npy");  // "ärger.npy"
}

TEST(TextCodec, Utf8RoundTripsAndRejectsMalformedSequences) {
  std::string out;
  for (uint32_t cp : {0x41u, 0xE9u, 0x6570u, 0x1F600u}) AppendUtf8(out, cp);
  EXPECT_EQ(out, "A\xc3\xa9\xe6\x95\xb0\xf0\x9f\x98\x80");
  EXPECT_EQ(CountUtf8Chars(out), 4u);
  size_t pos = 0;
  EXPECT_EQ(*DecodeUtf8(out, pos), 0x41u);
  EXPECT_EQ(*DecodeUtf8(out, pos), 0xE9u);
  for (std::string bad : {std::string("\xc0\x80"), std::string("\xed\xa0\x80"),
                          std::string("\xe6\x95"), std::string("\xff")}) {
    size_t p = 0;
    EXPECT_FALSE(DecodeUtf8(bad, p).has_value()) << bad.size();
    EXPECT_EQ(p, 0u);
  }
  EXPECT_EQ(Latin1ToUtf8("\xe9t\xe9"), "\xc3\xa9t\xc3\xa9");
  EXPECT_EQ(*Utf8ToLatin1("\xc3\xa9t\xc3\xa9"), "\xe9t\xe9");
  EXPECT_FALSE(Utf8ToLatin1("\xe6\x95\xb0").has_value());
}

TEST(TextCodec, EscapeControlBytesWritesControlBytesAsEscapesAndKeepsEveryOtherByte) {
  EXPECT_EQ(EscapeControlBytes("plain \xc3\xa4 line"), "plain \xc3\xa4 line");
  EXPECT_EQ(EscapeControlBytes("a\nb\rc\td"), "a\\nb\\rc\\td");
  EXPECT_EQ(EscapeControlBytes("ctl\x1b[2J\x7f"), "ctl\\x1b[2J\\x7f");
  EXPECT_EQ(EscapeControlBytes(std::string("nul\0x.npy", 9)), "nul\\x00x.npy");
  EXPECT_EQ(EscapeControlBytes("k\xff"), "k\xff");  // not a control byte
}

TEST(TextCodec, PrintableNameEscapesControlAndInvalidBytesAndCutsLongNames) {
  EXPECT_EQ(PrintableName("group/\xc3\xa4rger.npy"), "group/\xc3\xa4rger.npy");
  EXPECT_EQ(PrintableName("ctl\x1b[31mRED\n.npy"), "ctl\\x1b[31mRED\\n.npy");
  EXPECT_EQ(PrintableName(std::string("nul\0x", 5)), "nul\\x00x");
  EXPECT_EQ(PrintableName("k\xff"), "k\\xff");
  EXPECT_EQ(PrintableName("\xe6\x95"), "\\xe6\\x95");  // a truncated sequence
  const std::string long_name(70000, 'a');
  EXPECT_EQ(PrintableName(long_name), std::string(200, 'a') + "\u2026 (70000 bytes)");
  // The cut never splits a character.
  std::string wide;
  for (int i = 0; i < 100; ++i) wide += "\xc3\xa4";
  wide += "x";
  EXPECT_EQ(PrintableName(wide, 5), "\xc3\xa4\xc3\xa4\u2026 (201 bytes)");
  EXPECT_EQ(PrintableName(wide, 1000), wide);
}

TEST(TextCodec, ShellWordQuotesOnlyWhatAShellWouldSplitOrExpand) {
  EXPECT_EQ(ShellWord("/data/run-7/a_b.npz"), "/data/run-7/a_b.npz");
  EXPECT_EQ(ShellWord("my spool"), "'my spool'");
  EXPECT_EQ(ShellWord("it's"), "'it'\\''s'");
  EXPECT_EQ(ShellWord("$HOME;*"), "'$HOME;*'");
  EXPECT_EQ(ShellWord(""), "''");
}

}  // namespace
}  // namespace npzfs
