#include "npzfs/npy_header.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "tests/test_util.h"

namespace npzfs {
namespace {

// Builds a .npy header around `dict` (no padding added beyond a final newline).
std::string Wrap(const std::string& dict, int major = 1) {
  std::string out(NpyHeader::kMagic);
  out.push_back(static_cast<char>(major));
  out.push_back('\0');
  uint64_t len = dict.size() + 1;
  for (int i = 0; i < (major == 1 ? 2 : 4); ++i) out.push_back(static_cast<char>(len >> (8 * i)));
  return out + dict + "\n";
}

Status ParseError(const std::string& dict, int major = 1) {
  auto h = NpyHeader::Parse(Wrap(dict, major));
  EXPECT_FALSE(h.ok()) << dict;
  return h.status();
}

bool Contains(const Status& s, const std::string& what) {
  return s.message().find(what) != std::string::npos;
}

// Every case: a name, and a Python expression of the array np.save writes. The golden test
// parses numpy's header, formats it back and compares the bytes, and checks the item size,
// shape and order against what numpy reports.
struct GoldenCase {
  const char* name;
  const char* expr;
};

const GoldenCase kGoldenCases[] = {
    {"int16", "np.arange(6, dtype='<i2').reshape(2, 3)"},
    {"bool", "np.array([True, False, True])"},
    {"int8", "np.arange(5, dtype='i1')"},
    {"uint8", "np.arange(5, dtype='u1')"},
    {"uint64_be", "np.arange(4, dtype='>u8')"},
    {"float16", "np.ones(3, dtype='<f2')"},
    {"float32_be", "np.ones((2, 2), dtype='>f4')"},
    {"float64", "np.linspace(0, 1, 7)"},
    {"longdouble", "np.ones(2, dtype=np.longdouble)"},
    {"complex64", "np.ones(3, dtype='<c8')"},
    {"complex128_be", "np.ones(3, dtype='>c16')"},
    {"clongdouble", "np.ones(2, dtype=np.clongdouble)"},
    {"datetime_ms", "np.array([0, 1, 2], dtype='<M8[ms]')"},
    {"datetime_day", "np.array(['2020-01-01'], dtype='M8[D]')"},
    {"datetime_10ms", "np.zeros(2, dtype='M8[10ms]')"},
    {"datetime_generic", "np.zeros(2, dtype='M8')"},
    {"timedelta_ns_be", "np.zeros(2, dtype='>m8[ns]')"},
    {"bytes", "np.array([b'abc', b'hello'])"},
    {"unicode", "np.array(['ab', 'xyz'])"},
    {"unicode_be", "np.array(['ab', 'xyz'], dtype='>U3')"},
    {"void", "np.zeros(3, dtype='V8')"},
    {"object", "np.array([1, 'a', None], dtype=object)"},
    {"struct_subarray", "np.zeros(4, dtype=[('a', '<i4'), ('b', '<f8', (2,))])"},
    {"struct_nested",
     "np.zeros((2, 2), dtype=[('x', [('p', '<i2'), ('q', 'u1')]), ('y', '>f4', (2, 3))])"},
    {"struct_titles",
     "np.zeros(3, dtype={'names': ['a', 'b'], 'formats': ['<i4', '<f8'],"
     " 'titles': ['Title A', 'T b']})"},
    {"struct_padding",
     "np.zeros(3, dtype={'names': ['a', 'b'], 'formats': ['<i4', '<i2'], 'offsets': [0, 8],"
     " 'itemsize': 16})"},
    {"struct_aligned", "np.zeros(2, dtype=np.dtype([('a', 'u1'), ('b', '<i8')], align=True))"},
    {"struct_unicode_names", "np.zeros(2, dtype=[('größe', '<f4'), ('naïve', '<U2')])"},
    {"struct_non_latin1", "np.zeros(2, dtype=[('名前', '<i4'), ('x', 'u1')])"},
    {"struct_quotes", "np.zeros(2, dtype=[(\"it's\", '<i4'), ('back\\\\slash', 'u1')])"},
    {"struct_escaped_names",
     "np.zeros(1, dtype=[('a\\u00ad\\u200bb', 'u1'), ('\\U0001f600\\U000e0100', 'u1'),"
     " ('\\ue000\\u0600x', 'u1'), ('tab\\tnl\\n\\x7f', 'u1')])"},
    {"struct_object", "np.zeros(2, dtype=[('o', 'O'), ('v', '<i4')])"},
    {"zero_d", "np.array(5.0)"},
    {"zero_d_struct", "np.zeros((), dtype=[('a', '<i4'), ('b', 'u1')])"},
    {"empty", "np.zeros((0, 3), dtype='<i4')"},
    {"empty_inner", "np.zeros((4, 0), dtype='<i4')"},
    {"fortran", "np.asfortranarray(np.arange(60, dtype='<i2').reshape(3, 4, 5))"},
    {"large_3d", "np.zeros((300, 64, 48), dtype='<f4')"},
    {"one_d_long", "np.zeros(123457, dtype='u1')"},
};

class NpyHeaderGolden : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = std::make_unique<testing::TempDir>();
    std::ostringstream py;
    py << "import numpy as np, warnings, sys\n"
          "warnings.simplefilter('ignore')\n"
          "cases = {\n";
    for (const GoldenCase& c : kGoldenCases) py << "  '" << c.name << "': " << c.expr << ",\n";
    py << "}\n"
          "for name, a in cases.items():\n"
          "  np.save('"
       << dir_->path()
       << "/' + name + '.npy', a, allow_pickle=True)\n"
          "  f = a.flags.f_contiguous and not a.flags.c_contiguous\n"
          "  print(name, a.dtype.itemsize, int(f), ','.join(map(str, a.shape)) or '-')\n";
    output_ = testing::RunPython(py.str());
  }
  static void TearDownTestSuite() {
    dir_.reset();
    output_.clear();
  }
  static inline std::unique_ptr<testing::TempDir> dir_;
  static inline std::string output_;
};

TEST_F(NpyHeaderGolden, FormatsEveryNumpyHeaderBackToNumpysExactBytes) {
  std::istringstream lines(output_);
  std::string name, shape_text;
  uint64_t item_size;
  int fortran;
  size_t checked = 0;
  while (lines >> name >> item_size >> fortran >> shape_text) {
    SCOPED_TRACE(name);
    std::string file = testing::ReadFileOrDie(dir_->Join(name + ".npy"));
    auto total = NpyHeader::TotalLength(file);
    ASSERT_TRUE(total.ok()) << total.status().message();
    auto h = NpyHeader::Parse(file);
    ASSERT_TRUE(h.ok()) << h.status().message();
    EXPECT_EQ(h->Format(), file.substr(0, *total));
    EXPECT_EQ(h->FormattedLength(), *total);
    EXPECT_EQ(h->parsed_length(), *total);
    EXPECT_EQ(h->item_size(), item_size);
    EXPECT_EQ(h->fortran_order(), fortran == 1);
    std::vector<uint64_t> shape;
    if (shape_text != "-") {
      std::istringstream dims(shape_text);
      std::string d;
      while (std::getline(dims, d, ',')) shape.push_back(std::stoull(d));
    }
    EXPECT_EQ(h->shape(), shape);
    bool object = name.find("object") != std::string::npos;
    EXPECT_EQ(h->has_object(), object);
    EXPECT_EQ(h->frameable(), !object && !shape.empty());
    if (!object) {
      uint64_t elements = 1;
      for (uint64_t d : shape) elements *= d;
      EXPECT_EQ(h->data_bytes(), elements * item_size);
      EXPECT_EQ(file.size(), *total + h->data_bytes());
    }
    ++checked;
  }
  EXPECT_EQ(checked, std::size(kGoldenCases));
}

TEST_F(NpyHeaderGolden, PicksVersionThreeOnlyForNonLatin1Headers) {
  auto utf8 = NpyHeader::Parse(testing::ReadFileOrDie(dir_->Join("struct_non_latin1.npy")));
  ASSERT_TRUE(utf8.ok()) << utf8.status().message();
  EXPECT_EQ(utf8->version(), std::make_pair(3, 0));
  auto latin1 = NpyHeader::Parse(testing::ReadFileOrDie(dir_->Join("struct_unicode_names.npy")));
  ASSERT_TRUE(latin1.ok()) << latin1.status().message();
  EXPECT_EQ(latin1->version(), std::make_pair(1, 0));
  EXPECT_NE(latin1->descr_literal().find("größe"), std::string::npos);
}

TEST(NpyHeader, MatchesNumpyForHugeShapesAndVersionTwoHeaders) {
  testing::TempDir dir;
  // Headers only: np.save would need the data. _write_array_header is what np.save calls.
  std::string out = testing::RunPython(
      "import numpy as np, warnings\n"
      "from numpy.lib import format as F\n"
      "warnings.simplefilter('ignore')\n"
      "def hdr(name, d):\n"
      "  with open('" +
      dir.path() +
      "/' + name, 'wb') as f: F._write_array_header(f, d)\n"
      "hdr('huge', {'descr': '<f8', 'fortran_order': False,"
      " 'shape': (2**40, 1000, 3)})\n"
      "hdr('huge_f', {'descr': '|u1', 'fortran_order': True,"
      " 'shape': (1, 18446744073709551615)})\n"
      "dt = np.dtype([('field_%05d' % i, '<f4') for i in range(3000)])\n"
      "hdr('v2', {'descr': F.dtype_to_descr(dt), 'fortran_order': False, 'shape': (5,)})\n"
      "print(dt.itemsize)\n");
  auto huge = NpyHeader::Parse(testing::ReadFileOrDie(dir.Join("huge")));
  ASSERT_TRUE(huge.ok()) << huge.status().message();
  EXPECT_EQ(huge->Format(), testing::ReadFileOrDie(dir.Join("huge")));
  EXPECT_EQ(huge->frame_count(), uint64_t{1} << 40);
  EXPECT_EQ(huge->frame_bytes(), 8u * 3000);

  auto huge_f = NpyHeader::Parse(testing::ReadFileOrDie(dir.Join("huge_f")));
  ASSERT_TRUE(huge_f.ok()) << huge_f.status().message();
  EXPECT_EQ(huge_f->Format(), testing::ReadFileOrDie(dir.Join("huge_f")));
  EXPECT_EQ(huge_f->frame_count(), UINT64_MAX);
  EXPECT_EQ(huge_f->frame_bytes(), 1u);

  std::string v2_bytes = testing::ReadFileOrDie(dir.Join("v2"));
  auto refused = NpyHeader::Parse(v2_bytes);
  EXPECT_EQ(refused.status().code(), EINVAL);
  NpyParseOptions trust;
  trust.allow_large_header = true;
  auto v2 = NpyHeader::Parse(v2_bytes, trust);
  ASSERT_TRUE(v2.ok()) << v2.status().message();
  EXPECT_EQ(v2->version(), std::make_pair(2, 0));
  EXPECT_EQ(v2->Format(), v2_bytes);
  EXPECT_EQ(v2->item_size(), std::stoull(out));
}

TEST(NpyHeader, ForFramesWritesWhatNumpyWritesForTheSameArray) {
  testing::TempDir dir;
  testing::RunPython(
      "import numpy as np\n"
      "np.save('" +
      dir.Join("c.npy") +
      "', np.zeros((7, 3), dtype='<i2'))\n"
      "np.save('" +
      dir.Join("f.npy") +
      "', np.asfortranarray(np.zeros((2, 3, 9), dtype='>f8')))\n"
      "np.save('" +
      dir.Join("s.npy") + "', np.zeros((4, 2), dtype=[('a', '<i4'), ('b', '<f8', (2,))]))\n");
  auto total = [](const std::string& f) { return NpyHeader::TotalLength(f).value(); };
  std::string c = testing::ReadFileOrDie(dir.Join("c.npy"));
  auto hc = NpyHeader::ForFrames("<i2", {3}, false, 7);
  ASSERT_TRUE(hc.ok()) << hc.status().message();
  EXPECT_EQ(hc->Format(), c.substr(0, total(c)));

  std::string f = testing::ReadFileOrDie(dir.Join("f.npy"));
  auto hf = NpyHeader::ForFrames(">f8", {2, 3}, true, 9);
  ASSERT_TRUE(hf.ok()) << hf.status().message();
  EXPECT_EQ(hf->Format(), f.substr(0, total(f)));
  EXPECT_EQ(hf->frame_bytes(), 48u);

  // An oddly spelled structured literal is normalized the way repr() prints it.
  std::string s = testing::ReadFileOrDie(dir.Join("s.npy"));
  auto hs = NpyHeader::ForFrames("[ (\"a\",'<i4') ,('b', '<f8', (2 ,) ) ]", {2}, false, 4);
  ASSERT_TRUE(hs.ok()) << hs.status().message();
  EXPECT_EQ(hs->descr_literal(), "[('a', '<i4'), ('b', '<f8', (2,))]");
  EXPECT_EQ(hs->Format(), s.substr(0, total(s)));
  EXPECT_EQ(hs->item_size(), 20u);
  EXPECT_TRUE(hs->structured());
}

TEST(NpyHeader, KeepsTheSameLengthForEveryFrameCount) {
  auto h = NpyHeader::ForFrames("<u2", {256, 1024}, false, 0);
  ASSERT_TRUE(h.ok());
  size_t len = h->FormattedLength();
  EXPECT_EQ(len % NpyHeader::kAlignment, 0u);
  for (uint64_t n : {uint64_t{0}, uint64_t{9}, uint64_t{10}, uint64_t{123456789}, uint64_t{1} << 40,
                     uint64_t{UINT64_MAX / (512 * 1024)}}) {
    NpyHeader g = h->WithFrameCount(n);
    EXPECT_EQ(g.FormattedLength(), len) << n;
    auto back = NpyHeader::Parse(g.Format());
    ASSERT_TRUE(back.ok()) << back.status().message();
    EXPECT_EQ(back->frame_count(), n);
    EXPECT_TRUE(back->SameFrameLayout(*h));
    EXPECT_EQ(*back, g);
  }
}

TEST(NpyHeader, GrowsTheLastAxisInFortranOrder) {
  auto h = NpyHeader::ForFrames("|u1", {4, 5}, true, 3);
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->shape(), (std::vector<uint64_t>{4, 5, 3}));
  EXPECT_EQ(h->frame_count(), 3u);
  EXPECT_EQ(h->WithFrameCount(8).shape(), (std::vector<uint64_t>{4, 5, 8}));
  EXPECT_EQ(h->frame_shape(), (std::vector<uint64_t>{4, 5}));
  EXPECT_EQ(h->data_bytes(), 60u);
}

TEST(NpyHeader, SameFrameLayoutComparesDescrOrderAndNonGrowthAxes) {
  auto a = NpyHeader::ForFrames("<i2", {3}, false, 1).value();
  EXPECT_TRUE(a.SameFrameLayout(NpyHeader::ForFrames("<i2", {3}, false, 99).value()));
  EXPECT_FALSE(a.SameFrameLayout(NpyHeader::ForFrames(">i2", {3}, false, 1).value()));
  EXPECT_FALSE(a.SameFrameLayout(NpyHeader::ForFrames("<i2", {4}, false, 1).value()));
  EXPECT_FALSE(a.SameFrameLayout(NpyHeader::ForFrames("<i2", {3}, true, 1).value()));
  EXPECT_FALSE(a.SameFrameLayout(NpyHeader::ForFrames("<i2", {3, 1}, false, 1).value()));
}

TEST(NpyHeader, ParsesHandWrittenHeadersInAnyKeyOrderAndSpacing) {
  auto h =
      NpyHeader::Parse(Wrap("{ \"shape\" : ( 4 , 2 ) ,'fortran_order':True,\t'descr':u'<f4'}   "));
  ASSERT_TRUE(h.ok()) << h.status().message();
  EXPECT_EQ(h->descr_literal(), "'<f4'");
  EXPECT_EQ(h->shape(), (std::vector<uint64_t>{4, 2}));
  EXPECT_TRUE(h->fortran_order());
  // Python 2 wrote longs with an L suffix; numpy still reads them.
  auto l = NpyHeader::Parse(Wrap("{'descr': '<i8', 'fortran_order': False, 'shape': (3L,), }"));
  ASSERT_TRUE(l.ok()) << l.status().message();
  EXPECT_EQ(l->shape(), std::vector<uint64_t>{3});
}

TEST(NpyHeader, TotalLengthReadsTheLengthFieldOfEachVersion) {
  EXPECT_EQ(NpyHeader::TotalLength(std::string("\x93NUMPY\x01\x00\x76\x00", 10)).value(), 128u);
  EXPECT_EQ(NpyHeader::TotalLength(std::string("\x93NUMPY\x02\x00\x34\x12\x01\x00", 12)).value(),
            12u + 0x11234u);
  EXPECT_EQ(NpyHeader::TotalLength(std::string("\x93NUMPY\x02\x00\x34", 9)).status().code(),
            EINVAL);
  EXPECT_EQ(NpyHeader::TotalLength("\x93NUM").status().code(), EINVAL);
}

TEST(NpyHeader, RejectsAHeaderLongerThanTheSafetyLimit) {
  std::string dict = "{'descr': '<i2', 'fortran_order': False, 'shape': (3,), }";
  dict.append(10001 - dict.size(), ' ');
  Status s = ParseError(dict, 2);
  EXPECT_EQ(s.code(), EINVAL);
  EXPECT_TRUE(Contains(s, "safety limit")) << s.message();
  NpyParseOptions trust;
  trust.allow_large_header = true;
  EXPECT_TRUE(NpyHeader::Parse(Wrap(dict, 2), trust).ok());
}

TEST(NpyHeader, RejectsBadMagicAndUnknownVersions) {
  std::string good = Wrap("{'descr': '<i2', 'fortran_order': False, 'shape': (3,), }");
  std::string v4 = good;
  v4[6] = 4;
  Status s = NpyHeader::Parse(v4).status();
  EXPECT_EQ(s.code(), EINVAL);
  EXPECT_TRUE(Contains(s, "version 4.0")) << s.message();
  std::string minor = good;
  minor[7] = 1;
  EXPECT_TRUE(Contains(NpyHeader::Parse(minor).status(), "version 1.1"));
  std::string magic = good;
  magic[1] = 'X';
  EXPECT_TRUE(Contains(NpyHeader::Parse(magic).status(), "magic"));
  EXPECT_TRUE(Contains(NpyHeader::Parse(good.substr(0, 30)).status(), "truncated"));
}

TEST(NpyHeader, RejectsMissingAndExtraKeysAndTakesTheLastOfARepeatedOneAsNumpyDoes) {
  EXPECT_TRUE(
      Contains(ParseError("{'descr': '<i2', 'shape': (3,)}"), "lacks the key 'fortran_order'"));
  EXPECT_TRUE(Contains(ParseError("{'descr': '<i2', 'fortran_order': False}"), "'shape'"));
  EXPECT_TRUE(
      Contains(ParseError("{'descr': '<i2', 'fortran_order': False, 'shape': (3,), 'extra': 1}"),
               "unexpected key 'extra'"));
  // numpy reads the dict with ast.literal_eval: a repeated key holds its last value.
  auto repeated = NpyHeader::Parse(
      Wrap("{'descr': '<i2', 'fortran_order': False, 'shape': (3,), 'shape': (4, 2)}"));
  ASSERT_TRUE(repeated.ok()) << repeated.status().message();
  EXPECT_EQ(repeated->shape(), (std::vector<uint64_t>{4, 2}));
  EXPECT_TRUE(Contains(ParseError("['descr']"), "not a dict"));
}

TEST(NpyHeader, RejectsAShapeWhoseByteSizeOverflows) {
  Status s = ParseError(
      "{'descr': '<i8', 'fortran_order': False, 'shape': (4294967296, "
      "4294967296), }");
  EXPECT_EQ(s.code(), EINVAL);
  EXPECT_TRUE(Contains(s, "overflows 64 bits")) << s.message();
  EXPECT_TRUE(Contains(ParseError("{'descr': '<i2', 'fortran_order': False, 'shape': "
                                  "(0, 9223372036854775807, 4), }"),
                       "overflows"));
  EXPECT_TRUE(Contains(ParseError("{'descr': '<i2', 'fortran_order': False, 'shape': "
                                  "(99999999999999999999999,), }"),
                       "64 bits"));
  EXPECT_FALSE(NpyHeader::ForFrames("<f8", {uint64_t{1} << 62}, false, 1).ok());
}

TEST(NpyHeader, RejectsBadValuesWithAClearMessage) {
  EXPECT_TRUE(Contains(ParseError("{'descr': '<i2', 'fortran_order': 0, 'shape': (3,)}"),
                       "fortran_order is not a bool"));
  EXPECT_TRUE(Contains(ParseError("{'descr': '<i2', 'fortran_order': False, 'shape': [3]}"),
                       "shape is not a tuple"));
  EXPECT_TRUE(Contains(ParseError("{'descr': '<i2', 'fortran_order': False, 'shape': (-3,)}"),
                       "non-negative"));
  EXPECT_TRUE(Contains(ParseError("{'descr': '<i3', 'fortran_order': False, 'shape': (3,)}"),
                       "descr '<i3'"));
  EXPECT_TRUE(Contains(ParseError("{'descr': '<x4', 'fortran_order': False, 'shape': (3,)}"),
                       "unknown type code"));
  EXPECT_TRUE(Contains(ParseError("{'descr': '<M8[fortnight]', 'fortran_order': False, "
                                  "'shape': (3,)}"),
                       "datetime unit"));
  EXPECT_TRUE(Contains(ParseError("{'descr': [('a',)], 'fortran_order': False, 'shape': (3,)}"),
                       "(name, type)"));
  EXPECT_TRUE(Contains(ParseError("{'descr': None, 'fortran_order': False, 'shape': (3,)}"),
                       "descr must be"));
}

TEST(NpyHeader, RejectsMalformedLiteralsWithoutReadingPastTheEnd) {
  const char* bad[] = {
      "{'descr': '<i2', 'fortran_order': False, 'shape': (3,), ",   // unterminated dict
      "{'descr': '<i2, 'fortran_order': False, 'shape': (3,)}",     // quote
      "{'descr': '<i2' 'fortran_order': False, 'shape': (3,)}",     // missing comma
      "{'descr': '<i2', 'fortran_order': False, 'shape': (3,)} x",  // trailing junk
      "{'descr': '<i2', 'fortran_order': Fals, 'shape': (3,)}",     // bad word
      "{'descr': '\\q', 'fortran_order': False, 'shape': (3,)}",    // bad escape
      "{'descr': '\\x4', 'fortran_order': False, 'shape': (3,)}",   // short escape
      "{'descr' '<i2'}",                                            // missing colon
      "{'descr': '<i2', 'fortran_order': False, 'shape': (3,,)}",   // empty item
      "",                                                           // nothing
      "{'descr': '<i2', 'fortran_order': False, 'shape': (3",       // ends inside tuple
      "{'descr': '<i2', 'fortran_order': False, 'shape': -}",       // sign without digits
  };
  for (const char* dict : bad) {
    Status s = ParseError(dict);
    EXPECT_EQ(s.code(), EINVAL) << dict;
    EXPECT_TRUE(Contains(s, "malformed header literal")) << dict << " -> " << s.message();
  }
  std::string deep = "{'descr': " + std::string(500, '[') + std::string(500, ']') + "}";
  EXPECT_TRUE(Contains(ParseError(deep), "nested too deeply"));
  // Invalid UTF-8 in a 3.0 header.
  EXPECT_TRUE(
      Contains(ParseError("{'descr': '\xff', 'fortran_order': False, 'shape': (3,)}", 3), "UTF-8"));
}

TEST_F(NpyHeaderGolden, SurvivesRandomlyCorruptedHeadersWithoutCrashing) {
  // Every outcome is fine except a crash or a wrong error code (ASan/UBSan in CI watch the
  // reads); a header that still parses must format to bytes that parse back the same.
  std::mt19937 rng(7);
  static constexpr char kJunk[] = "{}()[]',:\"\\0aLTF -x\xff";
  int rejected = 0;
  for (const GoldenCase& c : kGoldenCases) {
    std::string file = testing::ReadFileOrDie(dir_->Join(std::string(c.name) + ".npy"));
    size_t total = NpyHeader::TotalLength(file).value();
    for (int round = 0; round < 200; ++round) {
      std::string bytes = file.substr(0, total);
      int edits = 1 + static_cast<int>(rng() % 3);
      for (int e = 0; e < edits; ++e) {
        size_t at = 10 + rng() % (total - 10);
        bytes[at] = kJunk[rng() % (sizeof kJunk - 1)];
      }
      if (rng() % 4 == 0) bytes.resize(rng() % total);
      auto h = NpyHeader::Parse(bytes);
      if (!h.ok()) {
        EXPECT_EQ(h.status().code(), EINVAL) << h.status().message();
        ++rejected;
        continue;
      }
      auto again = NpyHeader::Parse(h->Format());
      ASSERT_TRUE(again.ok()) << c.name << ": " << again.status().message();
      EXPECT_EQ(*again, *h);
    }
  }
  EXPECT_GT(rejected, 0);
}

TEST(NpyHeader, ObjectAndZeroDimensionalArraysAreNotFrameable) {
  auto obj = NpyHeader::ForFrames("|O", {2}, false, 3);
  ASSERT_TRUE(obj.ok());
  EXPECT_FALSE(obj->frameable());
  EXPECT_EQ(obj->item_size(), 8u);
  auto nested = NpyHeader::ForFrames("[('a', [('o', '|O')])]", {}, false, 3);
  ASSERT_TRUE(nested.ok());
  EXPECT_FALSE(nested->frameable());
  auto zero_d = NpyHeader::Parse(Wrap("{'descr': '<f8', 'fortran_order': False, 'shape': ()}"));
  ASSERT_TRUE(zero_d.ok());
  EXPECT_FALSE(zero_d->frameable());
  EXPECT_EQ(zero_d->data_bytes(), 8u);
}

TEST(NpyHeader, FormatPaddedFillsAGivenLengthOrSaysItCannot) {
  auto h = NpyHeader::ForFrames("<i2", {3}, false, 5).value();
  auto padded = h.FormatPadded(256);
  ASSERT_TRUE(padded.ok());
  EXPECT_EQ(padded->size(), 256u);
  auto back = NpyHeader::Parse(*padded);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, h);
  EXPECT_EQ(h.FormatPadded(40).status().code(), EINVAL);
}

}  // namespace
}  // namespace npzfs
