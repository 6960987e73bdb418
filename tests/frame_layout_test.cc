// Tests for the text forms of frame layouts: the one shape grammar (xattrs and -o frame=),
// shape and dtype text, .npy names, numpy dtype names and the growable check.
#include "core/npy/frame_layout.h"

#include <gtest/gtest.h>

#include "tests/test_util.h"

namespace npzfs {
namespace {

bool Contains(const Status& s, const std::string& what) {
  return s.message().find(what) != std::string::npos;
}

TEST(FrameShape, ParsesCommasXsAndTuples) {
  EXPECT_EQ(*ParseFrameShape("256,1024"), (std::vector<uint64_t>{256, 1024}));
  EXPECT_EQ(*ParseFrameShape("256x1024"), (std::vector<uint64_t>{256, 1024}));
  EXPECT_EQ(*ParseFrameShape("(3, 4)"), (std::vector<uint64_t>{3, 4}));
  EXPECT_EQ(*ParseFrameShape("(7,)"), (std::vector<uint64_t>{7}));
  EXPECT_EQ(ParseFrameShape("")->size(), 0u);
  EXPECT_EQ(ParseFrameShape("()")->size(), 0u);
  EXPECT_EQ(ParseFrameShape("3,,4").status().code(), EINVAL);
  EXPECT_EQ(ParseFrameShape("-3").status().code(), EINVAL);
  EXPECT_EQ(ParseFrameShape("99999999999999999999999").status().code(), EINVAL);
  EXPECT_NE(ParseFrameShape("a,b").status().message().find("a,b"), std::string::npos);
}

TEST(FrameShape, ZeroAxesAndTrailingSeparatorsAreRefusedNamingTheAxis) {
  Status zero = ParseFrameShape("4x0").status();
  EXPECT_EQ(zero.code(), EINVAL);
  EXPECT_TRUE(Contains(zero, "'0'")) << zero.message();
  EXPECT_TRUE(Contains(zero, "positive")) << zero.message();
  EXPECT_EQ(ParseFrameShape("256x").status().code(), EINVAL);
  EXPECT_EQ(ParseFrameShape("x256").status().code(), EINVAL);
  EXPECT_TRUE(Contains(ParseFrameShape("2x3y").status(), "'3y'"));
  EXPECT_EQ(*ParseFrameShape("2x3,4"), (std::vector<uint64_t>{2, 3, 4}));
}

TEST(FrameShape, TextFormsRoundTripThroughTheGrammar) {
  const std::vector<uint64_t> shape{256, 1024};
  EXPECT_EQ(ShapeText(shape), "(256, 1024)");
  EXPECT_EQ(ShapeText({7}), "(7,)");
  EXPECT_EQ(ShapeText({}), "()");
  EXPECT_EQ(AxesText(shape), "256,1024");
  EXPECT_EQ(AxesText({}), "");
  EXPECT_EQ(*ParseFrameShape(ShapeText(shape)), shape);
  EXPECT_EQ(*ParseFrameShape(AxesText(shape)), shape);
  EXPECT_EQ(*ParseFrameShape(ShapeText({7})), (std::vector<uint64_t>{7}));
}

TEST(NpyName, EveryNameEndingInDotNpyIsAnNpyMemberTheBareSuffixIncluded) {
  EXPECT_TRUE(IsNpyName("adc.npy"));
  EXPECT_TRUE(IsNpyName("a/b/c.npy"));
  EXPECT_TRUE(IsNpyName(".npy"));
  EXPECT_FALSE(IsNpyName("npy"));
  EXPECT_FALSE(IsNpyName("adc.npy.bak"));
  EXPECT_FALSE(IsNpyName("adc.NPY"));
  EXPECT_FALSE(IsNpyName("meta.json"));
}

TEST(Dtype, DtypeTextDropsTheQuotesOfASimpleDescrOnly) {
  EXPECT_EQ(DtypeText(*NpyHeader::ForFrames("<i2", {3}, false, 0)), "<i2");
  EXPECT_EQ(DtypeText(*NpyHeader::ForFrames("[('a', '<i4')]", {}, false, 0)), "[('a', '<i4')]");
}

TEST(Dtype, NumpyDtypeNamesBecomeTheDescrNumpyWrites) {
  // What np.dtype(name).str gives on this (little-endian) machine.
  const std::string names[] = {"bool",    "int8",    "uint8",     "int16",      "uint16",
                               "int32",   "uint32",  "int64",     "uint64",     "float16",
                               "float32", "float64", "complex64", "complex128", "double"};
  std::string code = "import numpy as np\n";
  for (const std::string& n : names) code += "print(np.dtype('" + n + "').str)\n";
  std::string numpy = testing::RunPython(code);
  std::string ours;
  for (const std::string& n : names) ours += DescrForDtypeName(n) + "\n";
  EXPECT_EQ(ours, numpy);
  // Descr strings and structured literals pass through for ForFrames to check.
  EXPECT_EQ(DescrForDtypeName(">f8"), ">f8");
  EXPECT_EQ(DescrForDtypeName("i9"), "i9");
  EXPECT_EQ(DescrForDtypeName("[('a', '<i4')]"), "[('a', '<i4')]");
}

TEST(Growable, ObjectZeroDimensionalAndZeroByteLayoutsCannotGrowAndSayWhy) {
  EXPECT_TRUE(CheckGrowable(*NpyHeader::ForFrames("<i2", {4}, false, 0), "x.npy").ok());
  Status object = CheckGrowable(*NpyHeader::ForFrames("|O", {4}, false, 0), "o.npy");
  EXPECT_EQ(object.code(), EINVAL);
  EXPECT_TRUE(Contains(object, "o.npy") && Contains(object, "pickle")) << object.message();
  const std::string dict = "{'descr': '<i2', 'fortran_order': False, 'shape': (), }\n";
  auto zero_d = NpyHeader::Parse(std::string(NpyHeader::kMagic) + std::string("\x01\x00", 2) +
                                 static_cast<char>(dict.size()) + std::string(1, '\0') + dict);
  ASSERT_TRUE(zero_d.ok()) << zero_d.status().message();
  EXPECT_TRUE(Contains(CheckGrowable(*zero_d, "z.npy"), "0-d"));
  Status empty = CheckGrowable(*NpyHeader::ForFrames("<i4", {0}, false, 0), "e.npy");
  EXPECT_TRUE(Contains(empty, "zero bytes")) << empty.message();
}

TEST(FrameLayout, NumpysKeyOfAMemberIsItsNameWithoutNpy) {
  EXPECT_EQ(NumpyKey("rx.npy"), "rx");
  EXPECT_EQ(NumpyKey("rx"), "rx");
  EXPECT_EQ(NumpyKey("d/ry.npy"), "d/ry");
  EXPECT_EQ(NumpyKey("t.npy.npy"), "t.npy");
  EXPECT_EQ(NumpyKey(".npy"), "");
}

}  // namespace
}  // namespace npzfs
