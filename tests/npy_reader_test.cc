#include "npzfs/npy_reader.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "tests/test_util.h"

namespace npzfs {
namespace {

std::string AsString(const std::vector<std::byte>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size());
}

bool Contains(const Status& s, const std::string& what) {
  return s.message().find(what) != std::string::npos;
}

TEST(NpyReader, ReadsTheSameFramesNumpySlices) {
  testing::TempDir dir;
  // For each array: the .npy, and the raw bytes numpy gives for frames [2, 5).
  testing::RunPython(
      "import numpy as np\n"
      "d = '" +
      dir.path() +
      "/'\n"
      "c = np.arange(7 * 3 * 4, dtype='>i4').reshape(7, 3, 4)\n"
      "f = np.asfortranarray(np.arange(2 * 3 * 6, dtype='<f8').reshape(2, 3, 6))\n"
      "s = np.zeros(6, dtype=[('a', '<i2'), ('b', 'u1', (3,))])\n"
      "s['a'] = np.arange(6); s['b'] = np.arange(18).reshape(6, 3)\n"
      "for name, a in [('c', c), ('f', f), ('s', s)]:\n"
      "  np.save(d + name + '.npy', a)\n"
      "  if name == 'f':\n"
      "    raw = b''.join(a[..., i].tobytes(order='F') for i in range(2, 5))\n"
      "  else:\n"
      "    raw = a[2:5].tobytes()\n"
      "  open(d + name + '.raw', 'wb').write(raw)\n");
  for (const char* name : {"c", "f", "s"}) {
    SCOPED_TRACE(name);
    auto reader = NpyReader::Open(dir.Join(std::string(name) + ".npy"));
    ASSERT_TRUE(reader.ok()) << reader.status().message();
    auto frames = reader->ReadFrames(2, 5);
    ASSERT_TRUE(frames.ok()) << frames.status().message();
    EXPECT_EQ(AsString(*frames), testing::ReadFileOrDie(dir.Join(std::string(name) + ".raw")));
    EXPECT_EQ(frames->size(), 3 * reader->header().frame_bytes());
  }
}

TEST(NpyReader, RejectsBadRangesNamingTheFile) {
  testing::TempDir dir;
  std::string path = dir.Join("a.npy");
  testing::RunPython("import numpy as np\nnp.save('" + path + "', np.zeros((4, 2), 'u1'))\n");
  auto reader = NpyReader::Open(path);
  ASSERT_TRUE(reader.ok()) << reader.status().message();
  auto backwards = reader->ReadFrames(3, 1);
  EXPECT_EQ(backwards.status().code(), EINVAL);
  EXPECT_TRUE(Contains(backwards.status(), path)) << backwards.status().message();
  auto past = reader->ReadFrames(1, 5);
  EXPECT_EQ(past.status().code(), ERANGE);
  EXPECT_TRUE(Contains(past.status(), path)) << past.status().message();
  EXPECT_TRUE(Contains(past.status(), "4 frames"));
  auto empty = reader->ReadFrames(4, 4);
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->empty());
  EXPECT_EQ(reader->ReadFrames(0, 4)->size(), 8u);
}

TEST(NpyReader, RefusesObjectArraysTruncatedFilesAndBadHeaders) {
  testing::TempDir dir;
  testing::RunPython(
      "import numpy as np\n"
      "np.save('" +
      dir.Join("o.npy") +
      "', np.array([1, None], dtype=object))\n"
      "np.save('" +
      dir.Join("t.npy") + "', np.zeros((10, 10), 'u1'))\n");
  auto object = NpyReader::Open(dir.Join("o.npy"));
  ASSERT_TRUE(object.ok()) << object.status().message();
  EXPECT_EQ(object->ReadFrames(0, 1).status().code(), EINVAL);
  EXPECT_TRUE(Contains(object->ReadFrames(0, 1).status(), "object"));

  std::string t = testing::ReadFileOrDie(dir.Join("t.npy"));
  testing::WriteFileOrDie(dir.Join("t.npy"), t.substr(0, t.size() - 1));
  auto truncated = NpyReader::Open(dir.Join("t.npy"));
  EXPECT_EQ(truncated.status().code(), EIO);
  EXPECT_TRUE(Contains(truncated.status(), dir.Join("t.npy"))) << truncated.status().message();

  testing::WriteFileOrDie(dir.Join("bad.npy"), "not a numpy file at all");
  auto bad = NpyReader::Open(dir.Join("bad.npy"));
  EXPECT_EQ(bad.status().code(), EINVAL);
  EXPECT_TRUE(Contains(bad.status(), dir.Join("bad.npy")));

  auto missing = NpyReader::Open(dir.Join("missing.npy"));
  EXPECT_EQ(missing.status().code(), ENOENT);
}

TEST(ReadFramesFrom, AsksTheSourceForExactlyTheBytesOfTheRange) {
  auto header = NpyHeader::ForFrames("<u2", {5}, false, 100).value();
  std::vector<std::pair<uint64_t, size_t>> calls;
  auto source = [&](uint64_t offset, std::span<std::byte> dest) {
    calls.emplace_back(offset, dest.size());
    for (size_t i = 0; i < dest.size(); ++i) dest[i] = static_cast<std::byte>((offset + i) & 0xFF);
    return Status::Ok();
  };
  auto frames = ReadFramesFrom(header, 128, 10, 13, source, "mem.npy");
  ASSERT_TRUE(frames.ok()) << frames.status().message();
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].first, 128u + 10 * 10);
  EXPECT_EQ(calls[0].second, 30u);
  EXPECT_EQ((*frames)[0], static_cast<std::byte>(228 & 0xFF));

  auto failing = [](uint64_t, std::span<std::byte>) {
    return Status::Error(EIO, "mem.npy: device on fire");
  };
  auto failed = ReadFramesFrom(header, 128, 0, 1, failing, "mem.npy");
  EXPECT_EQ(failed.status().code(), EIO);
  EXPECT_TRUE(Contains(failed.status(), "device on fire"));
  EXPECT_TRUE(Contains(ReadFramesFrom(header, 128, 0, 101, source, "mem.npy").status(), "mem.npy"));
}

}  // namespace
}  // namespace npzfs
