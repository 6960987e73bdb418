#include "core/base/byte_codec.h"

#include <gtest/gtest.h>

namespace npzfs {
namespace {

TEST(ByteCodec, ValuesRoundTripInLittleEndianOrder) {
  std::string out;
  PutLe16(out, 0x1234);
  PutLe32(out, 0x89abcdef);
  PutLe64(out, 0x0102030405060708ull);
  ASSERT_EQ(out.size(), 14u);
  EXPECT_EQ(static_cast<unsigned char>(out[0]), 0x34);
  EXPECT_EQ(static_cast<unsigned char>(out[2]), 0xef);
  EXPECT_EQ(static_cast<unsigned char>(out[6]), 0x08);
  EXPECT_EQ(GetLe16(out.data()), 0x1234);
  EXPECT_EQ(GetLe32(out.data() + 2), 0x89abcdefu);
  EXPECT_EQ(GetLe64(out.data() + 6), 0x0102030405060708ull);
  SetLe32(out, 2, 7);
  EXPECT_EQ(GetLe32(out.data() + 2), 7u);
}

TEST(ByteCodec, AReaderRefusesToRunPastTheEndAndConsumesNothingThen) {
  std::string in;
  PutLe32(in, 42);
  in.push_back('x');
  ByteReader r(in);
  uint64_t big = 0;
  EXPECT_FALSE(r.U64(&big));
  EXPECT_EQ(r.remaining(), 5u);
  uint32_t v = 0;
  ASSERT_TRUE(r.U32(&v));
  EXPECT_EQ(v, 42u);
  std::string rest;
  EXPECT_FALSE(r.Bytes(2, &rest));
  ASSERT_TRUE(r.Bytes(1, &rest));
  EXPECT_EQ(rest, "x");
  uint8_t b = 0;
  EXPECT_FALSE(r.U8(&b));
  EXPECT_EQ(r.remaining(), 0u);
}

}  // namespace
}  // namespace npzfs
