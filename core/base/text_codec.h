// Text encodings, one home each: UTF-8 encode/decode (the .npy header parser, repr, and
// archive member names all use it), latin1 (the text of .npy headers 1.0 and 2.0) and IBM
// code page 437 (ZIP names stored without the UTF-8 flag, which APPNOTE, Python's zipfile and
// so numpy's keys read as CP437).
//
// Plus the escaping of names that users chose (member paths, keys) before they reach a
// terminal or a log line.
//
// Plain functions over values: thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace npzfs {

// Appends code point `cp` (at most U+10FFFF) as UTF-8.
void AppendUtf8(std::string& out, uint32_t cp);

// Decodes one code point at `pos`, advancing it. nullopt for malformed UTF-8 (overlongs,
// surrogates and truncated sequences included); `pos` is then unchanged.
std::optional<uint32_t> DecodeUtf8(std::string_view s, size_t& pos);
// Whether all of `s` is well-formed UTF-8 (zip's UTF-8 flag may be set over it).
bool IsValidUtf8(std::string_view s);

// Every byte as the code point of the same value.
std::string Latin1ToUtf8(std::string_view s);

// The latin1 bytes of valid UTF-8 `s`, or nullopt if a character is above U+00FF.
std::optional<std::string> Utf8ToLatin1(std::string_view s);

// Number of code points in valid UTF-8.
size_t CountUtf8Chars(std::string_view s);

// IBM code page 437 as Python's "cp437" codec decodes it (bytes below 0x80 are ASCII), as
// UTF-8. ZIP names stored without the UTF-8 flag (bit 11) are CP437 by the APPNOTE, and that
// is how zipfile, and so numpy, name such members.
std::string Cp437ToUtf8(std::string_view s);

// A line carries names users chose (member paths, archive paths): a newline in one would
// start a forged line, an escape sequence would drive the terminal. Control bytes (below
// 0x20, and 0x7f) are written as \n, \r, \t or \xHH; every other byte as it is.
std::string EscapeControlBytes(std::string_view line);

// `word` as one word of a POSIX shell command line: as it is when it holds only letters,
// digits and _ . / : + , = @ % -; else in single quotes (a ' inside as '\'').
std::string ShellWord(std::string_view word);

// A name (member path, key) as a message shows it: control bytes as EscapeControlBytes
// writes them, bytes that are not part of valid UTF-8 as \xHH (so the message itself stays
// valid UTF-8 and shows which byte is wrong), and a name over `max_bytes` cut at a character
// boundary, followed by "… (N bytes)" with its full length.
inline constexpr size_t kShownNameBytes = 200;
std::string PrintableName(std::string_view name, size_t max_bytes = kShownNameBytes);

}  // namespace npzfs
